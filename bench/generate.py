#!/usr/bin/env python3
"""bench/generate.py - answers in words: how fast `qalign --ask` prefills and decodes.

    python3 bench/generate.py MODEL.qalign [MODEL ...] [--tokens 32] [--threads N] [--batch 1,8]

For each model file (full-size: `python3 export.py --synthetic one-align --dtype q4_256 F`,
or the files bench.py caches in ~/.cache/qalign/bench): one warm-up answer, then the best of
two of `qalign --ask Q --max-tokens N --timings` on one image (greedy; a random-weight model
never says EOS, so every answer is N tokens), and the same with --batch B images at once
(B answers stepped together: tokens/s of all of them). It prints prefill rows/s (the prompt:
65 visual rows + the text), decode tokens/s, the bytes of decoder weights each decode step
reads (the text rows' k/v projections, q/o, the MLP and lm_head, at the file's bytes per
weight: an estimate) and the GB/s that makes, against bench/peak.c's read bandwidth (decode
is memory bound: that is the physical limit). Figures name the CPU.

With --llamacpp, llama.cpp's generation speed on the same decoder shape, same threads, in the
same run: bench/gguf.py writes a random LLaMA-2-7B GGUF at the nearest type (q8_0 for q8_0 and
q8_256, q4_0 for q4_256), and bench/llamacpp.mjs times tg{tokens} (llama-bench's tg128: that
many tokens decoded one at a time) through node-llama-cpp's prebuilt llama.cpp, installed as
bench.py installs it (npm, --ignore-scripts) in the cache. Its tokens/s goes next to ours.

With --cpu-time, every figure (ours and llama.cpp's) is timed by the process's CPU time
divided by the threads instead of wall-clock time (ours through QALIGN_CLOCK=cpu): on a
machine shared with other jobs, wall-clock time counts their work too. Threads waiting at a
barrier spin (both programs' defaults), so with several threads it stays close to what the
wall-clock time would be on an idle machine.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


CPU_TIME = False  # --cpu-time


def sh(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def info(model):
    txt = sh([ROOT / "qalign", "--info", model]).stdout
    g = lambda pat: [int(x) for x in re.search(pat, txt).groups()]  # noqa: E731
    size = int(re.search(r"\((\d+) bytes", txt).group(1))
    wtype = re.search(r"weights\s+(\S+)", txt).group(1)
    vd, vl, vm, vt = g(r"vision\s+dim (\d+), layers (\d+), heads \d+, mlp (\d+), image \d+, patch \d+, tokens (\d+)")
    al, aq, am = g(r"abstractor\s+layers (\d+), heads \d+, queries (\d+), mlp (\d+)")
    D, L, H, KV, F, V = g(r"decoder\s+dim (\d+), layers (\d+), heads (\d+), kv heads (\d+), mlp (\d+), vocab (\d+)")
    kvd = D // H * KV
    vit = vl * (4 * vd * vd + 2 * vd * vm) + vt * vd
    abst = al * (4 * vd * vd + 3 * vd * am) + vd * D
    dec_all = L * (2 * D * D + 4 * kvd * D + 3 * D * F) + 2 * V * D
    per_token = L * (2 * D * D + 2 * kvd * D + 3 * D * F) + V * D   # text rows: multiway[0] k/v; lm_head
    bpw = size / (vit + abst + dec_all)
    return {"type": wtype, "bytes": size, "per_token": per_token * bpw, "kv": 2 * L * kvd * 4}


def load():
    return "%.1f %.1f %.1f" % os.getloadavg()


def cpu():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def run(model, image, n, tokens, threads, batch):
    args = [ROOT / "qalign", "--ask", "Describe the quality of this image.", "--max-tokens", tokens, "--timings", "-q",
            "--json", "--batch", batch, "--threads", threads, model, *([image] * 1)]
    if n > 1:  # n copies of the image (distinct paths: inputs are deduplicated)
        d = Path(tempfile.mkdtemp(prefix="qalign-gen-"))
        paths = []
        for i in range(n):
            p = d / f"img{i}.jpg"
            if not p.exists():
                os.symlink(image, p)
            paths.append(p)
        args = args[:-1] + paths
    r = sh(args, env={**os.environ, "QALIGN_CLOCK": "cpu"} if CPU_TIME else None)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    gens = [re.search(r"prefill (\d+) rows in ([\d.]+) s .* decode (\d+) tokens in ([\d.]+) s", l)
            for l in r.stderr.splitlines() if "generation:" in l]
    rows, pre, toks, dec = (float(x) for x in gens[0].groups())
    # answers of a batch are stepped together: the batch's decode time is the longest one
    dec_all = max(float(g.group(4)) for g in gens)
    if CPU_TIME:  # process CPU time over the threads: the wall-clock time the threads would take alone
        pre, dec_all = pre / int(threads), dec_all / int(threads)
    steps = sum(float(g.group(3)) - 1 for g in gens)
    return {"prefill_rows_per_s": rows / pre, "decode_tokens_per_s": steps / dec_all, "rows": int(rows),
            "tokens": int(toks), "answers": len(gens)}


GGUF_TYPE = {"q8_0": "q8_0", "q8_256": "q8_0", "q4_256": "q4_0", "q4_1": "q4_0", "bf16": "bf16"}


def llamacpp_tg(node_dir, cache, wtype, threads, tokens, keep):
    """llama.cpp's tokens/s generating `tokens` tokens on a random LLaMA-2-7B GGUF of the type
    nearest to wtype, as a table cell ("n/a (why)" when it cannot run)."""
    import gguf
    g = GGUF_TYPE.get(wtype)
    if not g:
        return "n/a"
    path = cache / f"llama2-7b-random-{g}.gguf"
    if not path.exists():
        gguf.write(path, g)
    try:
        r = sh(["node", node_dir / "llamacpp.mjs", path, threads, f"tg{tokens}"], cwd=node_dir)
    finally:
        if not keep:
            path.unlink(missing_ok=True)
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    tps = [l["tokens_per_cpu_second"] * int(threads) if CPU_TIME else l["tokens_per_second"]
           for l in lines if "generate" in l]
    if r.returncode != 0 or not tps:
        return "n/a (" + ((r.stderr.strip().splitlines() or ["node failed"])[-1])[:60] + ")"
    return f"{tps[0]:.2f} ({g})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--from-cache", action="store_true",
                    help="the full-size files bench.py made (one-align-{q8_0,q8_256,q4_256}.qalign in its cache)")
    ap.add_argument("--cache", default=os.environ.get("QALIGN_BENCH_CACHE", Path.home() / ".cache" / "qalign" / "bench"))
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", default="1,8", help="answers stepped together, e.g. 1,8")
    ap.add_argument("--image", default=str(ROOT / "bench" / "gen.ppm"))
    ap.add_argument("--llamacpp", action="store_true", help="llama.cpp's tg on the same shape (see above)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time ours and llama.cpp's by process CPU time / threads (QALIGN_CLOCK=cpu), not "
                         "wall-clock: on a shared machine wall-clock time counts the other jobs' work")
    ap.add_argument("--keep-gguf", action="store_true", help="keep the GGUF files (else deleted after use: 4-7 GB each)")
    a = ap.parse_args()
    global CPU_TIME
    CPU_TIME = a.cpu_time
    if a.from_cache:
        a.models += [str(p) for t in ("q8_0", "q8_256", "q4_256") for p in [Path(a.cache) / f"one-align-{t}.qalign"]
                     if p.exists()]
    if not a.models:
        raise SystemExit("generate.py: no model file (give some, or --from-cache after bench.py made them)")
    if not Path(a.image).exists():
        import numpy as np
        rng = np.random.default_rng(0)
        img = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        Path(a.image).write_bytes(b"P6 640 480 255\n" + img.tobytes())
    (ROOT / "build").mkdir(exist_ok=True)
    sh(["cc", "-O2", "-march=native", "-fopenmp", ROOT / "bench" / "peak.c", "-o", ROOT / "build" / "peak"])
    peak = dict(l.split() for l in sh([ROOT / "build" / "peak"], env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
                .stdout.splitlines())
    read = float(peak.get("read_gbs", "nan"))
    print(f"CPU: {cpu()}, {a.threads} threads; read bandwidth (bench/peak.c) {read:.1f} GB/s; "
          f"{'CPU time / threads' if CPU_TIME else 'wall-clock time'}; load average {load()}")
    node_dir = None
    if a.llamacpp:
        import bench as bench_py  # its pinned node-llama-cpp install
        node_dir, why = bench_py.llamacpp_setup(Path(a.cache))
        if not node_dir:
            print(f"(no llama.cpp figures: {why})")
    print("| type | file GB | answers at once | prompt rows | prefill rows/s | decode tokens/s | weights read / step GB | "
          "decode GB/s | % of read peak | K/V MB per token | llama.cpp tg tokens/s (type) | load average |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m in a.models:
        inf = info(m)
        tg = ""
        if node_dir:
            tg = llamacpp_tg(node_dir, Path(a.cache), inf["type"], a.threads, a.tokens, a.keep_gguf)
        for b in [int(x) for x in a.batch.split(",")]:
            run(m, a.image, b, 4, a.threads, b)  # warm-up: the page cache, the buffers
            best = max((run(m, a.image, b, a.tokens, a.threads, b) for _ in range(2)),
                       key=lambda r: r["decode_tokens_per_s"])
            steps_per_s = best["decode_tokens_per_s"] / b
            gbs = inf["per_token"] * steps_per_s / 1e9
            print(f"| {inf['type']} | {inf['bytes'] / 1e9:.1f} | {b} | {best['rows']} | {best['prefill_rows_per_s']:.1f} | "
                  f"{best['decode_tokens_per_s']:.2f} | {inf['per_token'] / 1e9:.2f} | {gbs:.1f} | "
                  f"{100 * gbs / read:.0f}% | {inf['kv'] / 2**20:.2f} | {tg if b == 1 else ''} | {load()} |",
                  flush=True)


if __name__ == "__main__":
    main()
