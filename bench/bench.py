#!/usr/bin/env python3
"""bench/bench.py - how fast qalign scores images with full-size one-align weights.

    make bench                                   (= python3 bench/bench.py)
    python3 bench/bench.py [--cache DIR] [--types q8_0,bf16,q4_1] [--batch 32] [--write]

1. Synthesizes full-size random-weight one-align model files once per weight type
   (export.py --synthetic one-align; about 16.4 / 9.3 / 6.2 GB for bf16 / q8_0 / q4_1) into
   --cache (default $QALIGN_BENCH_CACHE or ~/.cache/qalign/bench).
2. Measures this machine's peaks (bench/peak.c: f32 FMA, bf16 dot, int8 dot, read bandwidth).
3. Per type, with the file mapped (default) and read into memory (--no-mmap): seconds per
   stage and per image (steady state, page cache warm), GFLOP/s and % of the matching peak,
   first-image wall time, peak RSS against the file size; images/minute on a batch.
4. In the same run, PyTorch bf16 (Debian's python3-torch, 2 threads) on one LLaMA-2-7B decoder
   layer (90 tokens) and one ViT-L/14 layer (1025 tokens), to state our speed as a ratio
   (absolute times on a shared machine drift).
5. q8_0 / q4_1 vs bf16 score differences on a few images.
--write replaces bench/RESULTS.md with the table.
"""
import argparse
import json
import os
import platform
import re
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
LOADS = ["mmap", "--no-mmap"]


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
    for m in re.finditer(r"timings after \d+ inputs: preprocess ([\d.]+) s, vision ([\d.]+) s, "
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
    ap.add_argument("--types", default="q8_0,bf16,q4_1")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--images", type=int, default=3, help="images per type for the per-image figures")
    ap.add_argument("--batch", type=int, default=32, help="batch size for images/minute (q8_0); 0 skips")
    ap.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    a = ap.parse_args()
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    types = a.types.split(",")
    if sh(["make", "-C", ROOT, "-s", "qalign"]).returncode != 0:
        sys.exit("bench: make failed")
    (ROOT / "build").mkdir(exist_ok=True)
    sh(["cc", "-O2", "-march=native", "-fopenmp", ROOT / "bench" / "peak.c", "-o", ROOT / "build" / "peak"])

    lines = []
    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    out(f"# qalign benchmark, {time.strftime('%Y-%m-%d')}")
    out()
    out(f"CPU: {cpu}, {os.cpu_count()} logical CPUs; qalign threads: {a.threads}; "
        f"load average at start: {os.getloadavg()[0]:.2f}")
    peak = dict(l.split() for l in sh([ROOT / "build" / "peak"], env={**os.environ, "OMP_NUM_THREADS": a.threads}).stdout.splitlines())
    out(f"Measured peaks ({peak.get('threads')} threads): f32 FMA {peak.get('f32_fma_gflops')} GFLOP/s, "
        f"bf16 dot {peak.get('bf16_dot_gflops')} GFLOP/s, int8 dot {peak.get('int8_dot_gops')} GOP/s, "
        f"read {peak.get('read_gbs')} GB/s")
    out()
    out("Where the time goes and why the speed goals are not met yet: [ANALYSIS.md](ANALYSIS.md).")
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
    imgdir = cache / "images"
    imgdir.mkdir(exist_ok=True)
    images = make_images(imgdir, max(a.images, a.batch, 1))

    fl = flops_per_image()
    peak_for = {"q8_0": ("int8_dot_gops", "int8 dot"), "q4_1": ("int8_dot_gops", "int8 dot"),
                "bf16": ("bf16_dot_gflops", "bf16 dot"), "f32": ("f32_fma_gflops", "f32 FMA")}
    out("## Per image")
    out()
    out("One process scores 1 + N images one at a time (`--batch 1`); the per-image figures are the")
    out("stage times of images 2..N+1 (model pages mapped, prefix cached). *First image* is the wall")
    out("time of a fresh process scoring one image: it includes mapping (about 1 s per GB on first touch")
    out("on this virtual machine) or reading (`--no-mmap`) the model file.")
    out()
    out("| type | load | file GB | preprocess s | vision s | abstractor s | decoder s | **s / image** | GFLOP/s | % of peak | first image s | peak RSS GB | RSS - file GB |")
    out("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    results, rows_by_type = {}, {}
    for t, p in models.items():
        for load in LOADS:
            flags = ["--no-mmap"] if load == "--no-mmap" else []
            _, _, first_wall, _ = run_qalign(p, images[:1], a.threads, flags)
            rows, cum, wall, rss = run_qalign(p, images[:a.images + 1], a.threads, ["--batch", "1", *flags])
            per = {k: (cum[-1][k] - cum[0][k]) / a.images for k in STAGES}
            total = sum(per.values())
            gflops = sum(fl.values()) / total / 1e9
            key, _ = peak_for[t]
            pct = 100 * gflops / float(peak.get(key, "nan")) if key in peak else float("nan")
            size = p.stat().st_size
            results[t, load] = dict(per=per, total=total, gflops=gflops, pct=pct, rss=rss, size=size)
            rows_by_type.setdefault(t, rows)
            out(f"| {t} | {load} | {size / 1e9:.2f} | {per['preprocess']:.3f} | {per['vision']:.3f} | {per['abstractor']:.3f} | "
                f"{per['decoder']:.3f} | **{total:.2f}** | {gflops:.0f} | {pct:.0f}% ({peak_for[t][1]}) | {first_wall:.1f} | "
                f"{rss / 1e9:.2f} | {(rss - size) / 1e9:+.2f} |")
    out()
    out("*load*: `mmap` maps the file (the default); `--no-mmap` reads it into the process's own memory")
    out("in 2 MB pages, which on this virtual machine avoids the cost of 4 KB pages while the matmuls")
    out("stream the weights; its first image pays for fresh memory instead (bench/ANALYSIS.md).")
    out()
    for (t, load), r in results.items():
        dec_tok = (92 - 15) / r["per"]["decoder"]
        out(f"- {t}, {load}: vision {fl['vision'] / r['per']['vision'] / 1e9:.0f} GFLOP/s, decoder "
            f"{fl['decoder'] / r['per']['decoder'] / 1e9:.0f} GFLOP/s, decoder prefill {dec_tok:.1f} tokens/s "
            f"(77 new rows per image; {92 / r['per']['decoder']:.1f} counting the 15 cached prefix rows)")
    out()

    if a.batch and "q8_0" in models:
        out(f"## Batch: {a.batch} images at q8_0, `--batch 8`, one process")
        out()
        for load in LOADS:
            flags = ["--no-mmap"] if load == "--no-mmap" else []
            rows, cum, wall, _ = run_qalign(models["q8_0"], images[:a.batch], a.threads, ["--batch", "8", *flags])
            k0 = min(8, len(cum)) - 1
            steady = sum(cum[-1][k] - cum[k0][k] for k in STAGES) / max(1, len(cum) - 1 - k0)
            out(f"- {load}: {wall:.1f} s wall in all = **{60 * a.batch / wall:.1f} images/minute** (loading the model "
                f"and the first batch included); after the first batch {steady:.2f} s per image = "
                f"{60 / steady:.1f} images/minute.")
        out()

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

    if "bf16" in rows_by_type:
        base = {r["file"]: r["score"] for r in rows_by_type["bf16"]}
        for t in ("q8_0", "q4_1"):
            if t in rows_by_type:
                d = [abs(r["score"] - base[r["file"]]) for r in rows_by_type[t] if r["file"] in base]
                out(f"- score difference {t} vs bf16 on {len(d)} images (random full-size weights): "
                    f"max {max(d):.4f}, mean {np.mean(d):.4f}")
        out()
    if a.write:
        (ROOT / "bench" / "RESULTS.md").write_text("\n".join(lines) + "\n")
        print("bench: wrote bench/RESULTS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
