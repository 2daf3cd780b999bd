#!/usr/bin/env python3
"""bench/bench.py - how fast qalign scores images with full-size one-align weights.

    make bench                                   (= python3 bench/bench.py)
    python3 bench/bench.py [--cache DIR] [--types q8_0,q8_256,bf16,q4_1,q4_256] [--loads mmap,--no-mmap]
                           [--batch 32] [--no-llamacpp] [--no-torch] [--write]

1. Prints the CPU (model, family/model, the SIMD flags that matter), then synthesizes
   full-size random-weight one-align model files once per weight type (export.py
   --synthetic one-align; about 16.4 / 9.3 / 8.4 / 6.2 / 4.5 GB for bf16 / q8_0 / q8_256 /
   q4_1 / q4_256) into --cache (default $QALIGN_BENCH_CACHE or ~/.cache/qalign/bench).
2. Measures this machine's peaks (bench/peak.c: f32 FMA, bf16 dot, int8 dot, read bandwidth).
3. Per type and load mode (the file mapped, the default; --loads adds --no-mmap): seconds per
   stage and per image (steady state, page cache warm), GFLOP/s and % of the matching peak,
   the wall time of a one-shot `qalign model one.jpg` with the file in the page cache and
   after evicting it (posix_fadvise DONTNEED on that file only), peak RSS against the file
   size; images/minute on a batch of 32 for --batch-types.
4. The accuracy each type costs on the full-size model: score and level-logit differences
   against the bf16 file on the same images.
5. llama.cpp on the same decoder shape (random LLaMA-2-7B weights written as GGUF by
   bench/gguf.py; 92- and 736-token prompts; the prebuilt llama.cpp of the npm package
   node-llama-cpp, pinned, installed with --ignore-scripts into the cache), when node and npm
   are installed; our decoder tokens/s over llama.cpp's at the same bits per weight.
6. In the same run, PyTorch bf16 (Debian's python3-torch, 2 threads) on one LLaMA-2-7B decoder
   layer (90 tokens) and one ViT-L/14 layer (1025 tokens), to state our speed as a ratio
   (absolute times on a shared machine drift).
--write replaces bench/RESULTS.md with the tables.
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
# one-align dimensions (export.py PRESETS["one-align"])
V_DIM, V_LAYERS, V_MLP, V_TOK, PATCH = 1024, 24, 4096, 1025, 14
A_LAYERS, A_Q, A_MLP = 6, 64, 2816
L_DIM, L_LAYERS, L_MLP, L_HEADS = 4096, 32, 11008, 32


def sh(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def flops_per_image(seq=92, prefix=15):
    """Multiply-adds x 2 that qalign performs for one image (prefix K/V cached, last
    decoder layer on one row), by stage."""
    T, D, M = V_TOK, V_DIM, V_MLP
    vit = 2 * (T - 1) * D * 3 * PATCH * PATCH + V_LAYERS * (2 * T * D * 4 * D + 2 * 2 * T * D * M + 4 * T * T * D)
    Q, E = A_Q, A_Q + T
    abst = A_LAYERS * (2 * 2 * E * D * D + 2 * 2 * Q * D * D + 3 * 2 * Q * D * A_MLP + 4 * Q * E * D) + 2 * Q * D * L_DIM
    r = seq - prefix
    per_layer = lambda rows, kv_rows: (2 * kv_rows * L_DIM * L_DIM * 2 + 2 * rows * L_DIM * L_DIM * 2 +
                                      3 * 2 * rows * L_DIM * L_MLP + 4 * rows * seq * L_DIM)
    dec = (L_LAYERS - 1) * per_layer(r, r) + per_layer(1, r)
    return {"vision": vit, "abstractor": abst, "decoder": dec}


def make_images(d, n, seed=0):
    """n test images of varied sizes: smooth gradients plus noise and edges, as PPM."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = [(640, 480), (1024, 768), (500, 281), (448, 448), (1920, 1080)][i % 5]
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([(x * 255 / w), (y * 255 / h), ((x + y) % 64) * 4], -1)
        img = img + rng.normal(0, 12, img.shape)
        img[h // 3: h // 2, w // 4: w // 2] = rng.integers(0, 255, 3)
        p = d / f"bench_{i:02d}.ppm"
        p.write_bytes(b"P6 %d %d 255\n" % (w, h) + np.clip(img, 0, 255).astype(np.uint8).tobytes())
        paths.append(p)
    return paths


STAGES = ["preprocess", "vision", "abstractor", "decoder"]
NODE_LLAMA_CPP = "3.21.1"     # the npm package whose prebuilt llama.cpp we time
GGUF_FOR = {"q8_0": "q8_0", "q8_256": "q8_0", "bf16": "bf16", "q4_1": "q4_0", "q4_256": "q4_0"}
GGUF_BITS = {"q8_0": 8.5, "q4_0": 4.5, "bf16": 16}
OUR_BITS = {"q8_0": 9.0, "q8_256": 8.125, "bf16": 16, "q4_1": 6.0, "q4_256": 4.375, "f32": 32}


def cpu_description():
    """The CPU as /proc/cpuinfo has it: model name, family/model/stepping (AMD's family 25 is
    Zen 3 and Zen 4, 26 Zen 5), and the flags the kernels depend on."""
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        return platform.processor() or platform.machine(), ""
    name = info.get("model name", platform.processor())
    fam, model = info.get("cpu family"), info.get("model")
    gen = ""
    if info.get("vendor_id") == "AuthenticAMD" and fam and model:
        f, m = int(fam), int(model)
        gen = {25: "Zen 4" if 0x10 <= m <= 0x1F or 0x60 <= m <= 0xAF else "Zen 3", 26: "Zen 5"}.get(f, "")
    flags = set(info.get("flags", "").split())
    wanted = ["avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
              "amx_int8", "amx_bf16", "asimddp", "sve"]
    desc = f"{name}" + (f", family {fam} model {model} stepping {info.get('stepping', '?')}" if fam else "") + \
           (f" ({gen})" if gen else "")
    return desc, " ".join(f for f in wanted if f in flags) or "none of " + " ".join(wanted)


def evict(path):
    """Drop one file's pages from the page cache (they must not be mapped by anyone)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def llamacpp_setup(cache):
    """node-llama-cpp, pinned, in cache/node: `npm install --ignore-scripts` (its postinstall
    step could download or build llama.cpp; skipped, the prebuilt binaries come as the
    optional package @node-llama-cpp/linux-x64). Returns the directory, or None and why."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None, f"no prebuilt node-llama-cpp binary picked for {platform.system()} {platform.machine()}"
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            return None, f"{tool} is not installed"
    d = Path(cache) / "node"
    d.mkdir(parents=True, exist_ok=True)
    pkg = d / "node_modules" / "node-llama-cpp" / "package.json"
    if not pkg.exists() or json.loads(pkg.read_text()).get("version") != NODE_LLAMA_CPP:
        if not (d / "package.json").exists():
            (d / "package.json").write_text('{"name": "qalign-bench-llamacpp", "private": true}\n')
        r = sh(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--omit=optional",
                f"node-llama-cpp@{NODE_LLAMA_CPP}", f"@node-llama-cpp/linux-x64@{NODE_LLAMA_CPP}"], cwd=d)
        if r.returncode != 0:
            return None, "npm install failed: " + r.stderr.strip().splitlines()[-1:][0] if r.stderr.strip() else "npm install failed"
    shutil.copy(ROOT / "bench" / "llamacpp.mjs", d / "llamacpp.mjs")   # resolved from there
    return d, ""


def llamacpp_run(node_dir, gguf, threads, lengths):
    r = sh(["node", node_dir / "llamacpp.mjs", gguf, threads, *lengths], cwd=node_dir)
    if r.returncode != 0:
        return None, (r.stderr.strip().splitlines() or ["node failed"])[-1]
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    return {"tps": {l["tokens"]: l["tokens_per_second"] for l in lines if "tokens" in l},
            "backend": next((l for l in lines if "backend" in l), {})}, ""





def run_qalign(model, images, threads, extra=()):
    """Scores images in one process under GNU time; returns (json rows, cumulative stage
    seconds after each input [dicts], wall seconds, peak RSS bytes)."""
    cmd = [ROOT / "qalign", model, "--json", "--timings", "-q", "--threads", threads, *extra, *images]
    timer = ["/usr/bin/time", "-f", "maxrss_kb %M"] if Path("/usr/bin/time").exists() else []
    t0 = time.time()
    r = sh(timer + cmd)
    wall = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"bench: qalign failed: {r.stderr[-2000:]}")
    cum = []
    for m in re.finditer(r"timings after \d+ batch(?:es)?: preprocess ([\d.]+) s, vision ([\d.]+) s, "
                         r"abstractor ([\d.]+) s, decoder ([\d.]+) s", r.stderr):
        cum.append(dict(zip(STAGES, map(float, m.groups()))))
    rss = re.search(r"maxrss_kb (\d+)", r.stderr)
    return [json.loads(l) for l in r.stdout.splitlines()], cum, wall, int(rss.group(1)) * 1024 if rss else 0


def torch_layers(threads):
    """Seconds for one LLaMA-2-7B decoder layer (90 tokens) and one ViT-L/14 layer (1025
    tokens) in PyTorch bf16, best of 3 after a warm-up; the ViT layer also without its
    attention (bf16 bmm + softmax, PyTorch 1.13's slow spot on CPU)."""
    code = r'''
import time, torch, sys
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
bf = torch.bfloat16
def best(f, n=3):
    f(); ts = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return min(ts)
D, F, H = 4096, 11008, 32
lin = lambda i, o: torch.nn.Linear(i, o, bias=False).to(bf)
q, k, v, o, g, u, d = lin(D, D), lin(D, D), lin(D, D), lin(D, D), lin(D, F), lin(D, F), lin(F, D)
x = torch.randn(1, 90, D, dtype=bf)
def llama_layer():
    with torch.inference_mode():
        h = x
        Q, K, V = q(h).view(1, 90, H, 128).transpose(1, 2), k(h).view(1, 90, H, 128).transpose(1, 2), v(h).view(1, 90, H, 128).transpose(1, 2)
        a = torch.softmax((Q @ K.transpose(-1, -2)) / 11.3 + torch.full((90, 90), -1e4, dtype=bf).triu(1), -1) @ V
        h = h + o(a.transpose(1, 2).reshape(1, 90, D))
        h = h + d(torch.nn.functional.silu(g(h)) * u(h))
Dv, Fv, Hv, T = 1024, 4096, 16, 1025
qkv, dense, fc1, fc2 = torch.nn.Linear(Dv, 3 * Dv).to(bf), torch.nn.Linear(Dv, Dv).to(bf), torch.nn.Linear(Dv, Fv).to(bf), torch.nn.Linear(Fv, Dv).to(bf)
ln1, ln2 = torch.nn.LayerNorm(Dv).to(bf), torch.nn.LayerNorm(Dv).to(bf)
y = torch.randn(1, T, Dv, dtype=bf)
def vit_layer(attend=True):
    with torch.inference_mode():
        h = ln1(y)
        Q, K, V = qkv(h).reshape(1, T, Hv, 3, 64).permute(3, 0, 2, 1, 4)
        a = torch.softmax(Q @ K.transpose(-1, -2) * 0.125, -1) @ V if attend else V
        h2 = y + dense(a.permute(0, 2, 1, 3).reshape(1, T, Dv))
        m = fc1(ln2(h2)); h2 = h2 + fc2(m * torch.sigmoid(1.702 * m))
print(best(llama_layer), best(vit_layer), best(lambda: vit_layer(False)))
'''
    r = sh([PY, "-c", code, threads])
    if r.returncode != 0:
        return None
    a, b, c = map(float, r.stdout.split())
    return {"llama_layer": a, "vit_layer": b, "vit_layer_no_attention": c}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=os.environ.get("QALIGN_BENCH_CACHE", Path.home() / ".cache" / "qalign" / "bench"))
    ap.add_argument("--types", default="q8_0,q8_256,bf16,q4_1,q4_256")
    ap.add_argument("--loads", default="mmap", help="mmap and/or --no-mmap, comma-separated")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--images", type=int, default=3, help="images per type for the per-image figures")
    ap.add_argument("--batch", type=int, default=32, help="batch size for images/minute; 0 skips")
    ap.add_argument("--batch-types", default="q8_0,q8_256", help="types of the batch run")
    ap.add_argument("--no-cold", action="store_true", help="skip the one-shot run after evicting the file")
    ap.add_argument("--no-llamacpp", action="store_true", help="skip llama.cpp")
    ap.add_argument("--keep-gguf", action="store_true", help="keep the GGUF files (else deleted after use: 4-14 GB each)")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    ap.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    a = ap.parse_args()
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    types = a.types.split(",")
    loads = a.loads.split(",")
    if sh(["make", "-C", ROOT, "-s", "qalign"]).returncode != 0:
        sys.exit("bench: make failed")
    (ROOT / "build").mkdir(exist_ok=True)
    sh(["cc", "-O2", "-march=native", "-fopenmp", ROOT / "bench" / "peak.c", "-o", ROOT / "build" / "peak"])

    lines = []
    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    cpu, flags = cpu_description()
    out(f"# qalign benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    out()
    out(f"CPU: {cpu}, {os.cpu_count()} logical CPUs; flags: {flags}; Linux {platform.release()}")
    out(f"qalign threads: {a.threads}; load average at start: {os.getloadavg()[0]:.2f} "
        f"(the other tenants of this machine compete for its {os.cpu_count()} CPUs)")
    peak = dict(l.split() for l in sh([ROOT / "build" / "peak"], env={**os.environ, "OMP_NUM_THREADS": a.threads}).stdout.splitlines())
    out(f"Measured peaks ({peak.get('threads')} threads): f32 FMA {peak.get('f32_fma_gflops')} GFLOP/s, "
        f"bf16 dot {peak.get('bf16_dot_gflops')} GFLOP/s, int8 dot {peak.get('int8_dot_gops')} GOP/s, "
        f"read {peak.get('read_gbs')} GB/s")
    out()
    out("Where the time goes and what stands in the way: [ANALYSIS.md](ANALYSIS.md).")
    out()

    models = {}
    for t in types:
        p = cache / f"one-align-{t}.qalign"
        if not p.exists() or sh([ROOT / "qalign", "--info", p]).returncode != 0:
            print(f"bench: synthesizing {p} (once; minutes)", file=sys.stderr)
            r = subprocess.run([PY, ROOT / "export.py", "-q", "--synthetic", "one-align", "--dtype", t, p])
            if r.returncode != 0:
                sys.exit("bench: export failed")
        models[t] = p
    kernels = next((l.split(None, 1)[1] for l in sh([ROOT / "qalign", "--info", next(iter(models.values()))]).stdout.splitlines()
                    if l.startswith("kernels")), "?")
    out(f"qalign kernels: {kernels}")
    out()
    imgdir = cache / "images"
    imgdir.mkdir(exist_ok=True)
    images = make_images(imgdir, max(a.images + 1, a.batch, 1))

    fl = flops_per_image()
    peak_for = {"q8_0": ("int8_dot_gops", "int8 dot"), "q4_1": ("int8_dot_gops", "int8 dot"),
                "q8_256": ("int8_dot_gops", "int8 dot"), "q4_256": ("int8_dot_gops", "int8 dot"),
                "bf16": ("bf16_dot_gflops", "bf16 dot"), "f32": ("f32_fma_gflops", "f32 FMA")}
    out("## Per image")
    out()
    out("One process scores 1 + N images one at a time (`--batch 1`); the per-image figures are the")
    out("stage times of images 2..N+1 (model pages mapped, prefix cached). *One-shot* is the wall")
    out("time of a fresh process scoring one image (`qalign model one.ppm`), loading included: with")
    out("the file in the page cache, and after evicting it (read from disk).")
    out()
    out("| type | load | file GB | preprocess s | vision s | abstractor s | decoder s | **s / image** | GFLOP/s | % of peak | one-shot s (cached) | one-shot s (from disk) | peak RSS GB | RSS - file GB |")
    out("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    results, rows_by_type = {}, {}
    for t, p in models.items():
        for load in loads:
            flags_ = ["--no-mmap"] if load == "--no-mmap" else []
            run_qalign(p, images[:1], a.threads, flags_)    # the file into the page cache
            _, _, first_wall, _ = run_qalign(p, images[:1], a.threads, flags_)
            cold = float("nan")
            if not a.no_cold:
                evict(p)
                _, _, cold, _ = run_qalign(p, images[:1], a.threads, flags_)
            rows, cum, wall, rss = run_qalign(p, images[:a.images + 1], a.threads, ["--batch", "1", *flags_])
            per = {k: (cum[-1][k] - cum[0][k]) / a.images for k in STAGES}
            total = sum(per.values())
            gflops = sum(fl.values()) / total / 1e9
            key, _ = peak_for[t]
            pct = 100 * gflops / float(peak.get(key, "nan")) if key in peak else float("nan")
            size = p.stat().st_size
            results[t, load] = dict(per=per, total=total, gflops=gflops, pct=pct, rss=rss, size=size, first=first_wall, cold=cold)
            rows_by_type.setdefault(t, rows)
            out(f"| {t} | {load} | {size / 1e9:.2f} | {per['preprocess']:.3f} | {per['vision']:.3f} | {per['abstractor']:.3f} | "
                f"{per['decoder']:.3f} | **{total:.2f}** | {gflops:.0f} | {pct:.0f}% ({peak_for[t][1]}) | {first_wall:.1f} | "
                f"{cold:.1f} | {rss / 1e9:.2f} | {(rss - size) / 1e9:+.2f} |")
    out()
    out("*load*: `mmap` maps the file (the default; a helper thread makes the decoder's pages resident")
    out("while the first image's vision tower runs); `--no-mmap` reads it into the process's own memory.")
    out()
    for (t, load), r in results.items():
        dec_tok = (92 - 15) / r["per"]["decoder"]
        out(f"- {t}, {load}: vision {fl['vision'] / r['per']['vision'] / 1e9:.0f} GFLOP/s, decoder "
            f"{fl['decoder'] / r['per']['decoder'] / 1e9:.0f} GFLOP/s, decoder prefill {dec_tok:.1f} tokens/s "
            f"(77 new rows per image; {92 / r['per']['decoder']:.1f} counting the 15 cached prefix rows)")
    out()

    if "bf16" in rows_by_type:
        out(f"## Accuracy on the full-size model: against the bf16 file, {a.images + 1} images, same run")
        out()
        out("| type | bits per weight | score max abs diff | score mean abs diff | level logit max abs diff |")
        out("|---|---|---|---|---|")
        base = {r["path"]: r for r in rows_by_type["bf16"]}
        for t in types:
            if t in rows_by_type and t != "bf16":
                rs = [(r, base[r["path"]]) for r in rows_by_type[t] if r["path"] in base]
                ds = [abs(r["score"] - b["score"]) for r, b in rs]
                dl = [abs(x - y) for r, b in rs for x, y in zip(level_logits(r), level_logits(b))]
                out(f"| {t} | {OUR_BITS.get(t, '?')} | {max(ds):.4f} | {np.mean(ds):.4f} | {max(dl):.4f} |")
        out()

    batch_tps = {}
    for bt in [t for t in a.batch_types.split(",") if t in models] if a.batch else []:
        out(f"## Batch: {a.batch} images at {bt}, `--batch 8`, one process")
        out()
        for load in loads:
            flags_ = ["--no-mmap"] if load == "--no-mmap" else []
            rows, cum, wall, _ = run_qalign(models[bt], images[:a.batch], a.threads, ["--batch", "8", *flags_])
            # one --timings line per batch of 8: the images after the first batch
            after = max(1, a.batch - 8)
            steady = sum(cum[-1][k] - cum[0][k] for k in STAGES) / after
            dec = (cum[-1]["decoder"] - cum[0]["decoder"]) / after
            batch_tps[bt, load] = 8 * (92 - 15) / (8 * dec)
            out(f"- {load}: {wall:.1f} s wall in all = **{60 * a.batch / wall:.1f} images/minute** (loading the model "
                f"and the first batch included); after the first batch {steady:.2f} s per image = "
                f"{60 / steady:.1f} images/minute; decoder {dec:.2f} s per image = {77 / dec:.1f} new rows/s "
                f"(8 sequences of 92 rows per call, 77 new each).")
        out()

    if not a.no_llamacpp:
        llamacpp_section(a, cache, types, results, batch_tps, out)

    if not a.no_torch:
        torch_section(a, results, out)
    if a.write:
        (ROOT / "bench" / "RESULTS.md").write_text("\n".join(lines) + "\n")
        print("bench: wrote bench/RESULTS.md", file=sys.stderr)


def level_logits(row):
    return [row[k] for k in sorted(row) if k.startswith("logit_") and row[k] is not None]


def llamacpp_section(a, cache, types, results, batch_tps, out):
    out(f"## Against llama.cpp (node-llama-cpp {NODE_LLAMA_CPP}'s prebuilt llama.cpp, {a.threads} threads, same run)")
    out()
    node_dir, why = llamacpp_setup(cache)
    if not node_dir:
        out(f"Skipped: {why}.")
        out()
        return
    import gguf
    wanted = sorted({GGUF_FOR[t] for t in types if t in GGUF_FOR}, key=list(GGUF_BITS).index)
    got, backend = {}, None
    for g in wanted:
        path = cache / f"llama2-7b-random-{g}.gguf"
        if not path.exists():
            print(f"bench: writing {path}", file=sys.stderr)
            gguf.write(path, g)
        res, why = llamacpp_run(node_dir, path, a.threads, [92, 736])
        if not a.keep_gguf:
            path.unlink()
        if not res:
            out(f"- {g}: llama.cpp failed: {why}")
            continue
        got[g] = res["tps"]
        backend = backend or res["backend"]
    if backend:
        out("llama.cpp's CPU backend: " + "; ".join(b.split(" from ")[-1].split("/")[-1] if "load_backend" in b else b
                                                     for b in backend.get("backend", [])))
        out()
    out("Random LLaMA-2-7B weights written as GGUF by bench/gguf.py; a prompt of 92 or 736 token ids,")
    out("evaluated without generation, best of 2 after a warm-up. Ours: the decoder of the per-image run")
    out("(92 rows, the 15-row text prefix cached, so 77 computed: tokens/s counted both ways) and of the")
    out("batch run (8 sequences of 92 rows per call = 736 rows, 616 computed).")
    out()
    out("| ours | bits/weight | llama.cpp | bits/weight | llama.cpp 92 tok/s | ours 92 (77 computed) tok/s | ratio | llama.cpp 736 tok/s | ours 736 (616 computed) tok/s | ratio |")
    out("|---|---|---|---|---|---|---|---|---|---|")
    for (t, load), r in results.items():
        g = GGUF_FOR.get(t)
        if g not in got or load != "mmap":
            continue
        ours92 = 92 / r["per"]["decoder"]
        l92, l736 = got[g].get(92, float("nan")), got[g].get(736, float("nan"))
        b = batch_tps.get((t, load))
        ours736 = b * 736 / 616 if b else float("nan")
        out(f"| {t} | {OUR_BITS[t]} | {g} | {GGUF_BITS[g]} | {l92:.1f} | {ours92:.1f} ({77 / r['per']['decoder']:.1f}) | "
            f"**{ours92 / l92:.2f}x** | {l736:.1f} | " + (f"{ours736:.1f} ({b:.1f}) | **{ours736 / l736:.2f}x** |" if b else "- | - |"))
    out()


def torch_section(a, results, out):
    tl = torch_layers(a.threads)
    if tl:
        out(f"## Against PyTorch {sh([PY, '-c', 'import torch; print(torch.__version__)']).stdout.strip()} bf16 "
            f"({a.threads} threads, same run)")
        out()
        torch_img = tl["vit_layer"] * V_LAYERS + tl["llama_layer"] * L_LAYERS
        out(f"PyTorch: one ViT-L/14 layer (1025 tokens) {tl['vit_layer'] * 1e3:.0f} ms, one LLaMA-2-7B layer "
            f"(90 tokens) {tl['llama_layer'] * 1e3:.0f} ms; x24 + x32 layers = {torch_img:.2f} s per image "
            f"(without the abstractor and preprocessing).")
        out()
        out("| type | load | our vision / layer ms | torch | ratio | our decoder / layer ms | torch | ratio | whole image vs torch |")
        out("|---|---|---|---|---|---|---|---|---|")
        for (t, load), r in results.items():
            v, d = r["per"]["vision"] / V_LAYERS, r["per"]["decoder"] / L_LAYERS
            out(f"| {t} | {load} | {v * 1e3:.0f} | {tl['vit_layer'] * 1e3:.0f} | {tl['vit_layer'] / v:.2f}x | {d * 1e3:.0f} | "
                f"{tl['llama_layer'] * 1e3:.0f} | {tl['llama_layer'] / d:.2f}x | **{torch_img / r['total']:.2f}x** |")
        out()
        va = tl["vit_layer_no_attention"]
        torch_lb = va * V_LAYERS + tl["llama_layer"] * L_LAYERS
        out(f"PyTorch's ViT layer is {100 * (1 - va / tl['vit_layer']):.0f}% attention (bf16 `Q @ K^T`, softmax, `@ V` on "
            f"16 x 1025 x 1025: {(tl['vit_layer'] - va) * 1e3:.0f} ms); without it the layer takes {va * 1e3:.0f} ms. "
            f"Even if PyTorch's attention cost nothing, one image would take {torch_lb:.2f} s: "
            + ", ".join(f"{t} ({load}) is {torch_lb / r['total']:.2f}x faster than that" for (t, load), r in results.items()) + ".")
        out()



if __name__ == "__main__":
    main()
