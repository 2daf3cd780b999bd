"""bench/qwen.py - Q-ReAlign Mini (full-size, random weights) speed per image and per stage.

    python3 bench/qwen.py [--dir DIR] [--types q8,bf16] [--sizes 448x448,1024x768,1920x1080]
                          [--threads 2] [--repeats 3] [--torch-sizes 448x448,1024x768]

Exports the synthetic full-size Mini (`export.py --synthetic q-realign-mini`) into DIR once
per weight type (default $QALIGN_BENCH_CACHE or ~/.cache/qalign/bench), then for each image
size runs build/qwen_stages (qwen35.c's forward on random patch rows, the image size through
smart_resize, the hf prompt's length) REPEATS times and prints the fastest run: visual
tokens, decoder rows, seconds per stage (wall clock), and the run's CPU seconds (all
threads: on a shared machine the steadier figure). QALIGN_KERNELS picks the kernel family
(e.g. amx). Then the PyTorch oracle (bench/qwen_torch.py,
float32, the same number of threads) on --torch-sizes. Runs under `nice -n -5` where
permitted and with OMP_WAIT_POLICY=passive (on a machine shared with other jobs a spinning
OpenMP barrier waits for a thread that is not running; measured 2-2.5x slower). Prints the
CPU. `make bench` runs it."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench import cpu_description  # noqa: E402

STAGES = ["patch_embed", "vit_attention", "vit_mlp", "merger", "gdn", "attention", "mlp", "lm_head"]


def niced(cmd):
    try:
        subprocess.run(["nice", "-n", "-5", "true"], check=True, capture_output=True)
        return ["nice", "-n", "-5"] + cmd
    except (OSError, subprocess.CalledProcessError):
        return cmd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=os.environ.get("QALIGN_BENCH_CACHE", Path.home() / ".cache" / "qalign" / "bench"))
    ap.add_argument("--types", default="q8,bf16")
    ap.add_argument("--sizes", default="448x448,1024x768,1920x1080")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch-sizes", default="448x448,1024x768", help="sizes for the PyTorch oracle ('' skips it)")
    a = ap.parse_args()
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run(["make", "-s", "-C", str(ROOT), "build/qwen_stages"], check=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OMP_WAIT_POLICY="passive")
    cpu, flags = cpu_description()
    fam = os.environ.get("QALIGN_KERNELS", "") or "auto"
    print(f"# Q-ReAlign Mini (full size, random weights), {a.threads} threads, kernels {fam}, {cpu} [{flags}]")
    print(f"# load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"# qalign: best of {a.repeats} runs (1920x1080: 1), seconds per image and per stage")
    print("| type | image | visual tokens | decoder rows | " + " | ".join(STAGES) + " | vision | decoder | total | CPU s |")
    print("|---" * (len(STAGES) + 8) + "|")
    for t in a.types.split(","):
        model = d / f"q-realign-mini-{t}.qalign"
        if not model.exists():
            subprocess.run([sys.executable, str(ROOT / "export.py"), "--synthetic", "q-realign-mini", "--dtype", t,
                            str(model), "-q"], check=True)
        for size in a.sizes.split(","):
            w, h = size.split("x")
            reps = a.repeats if int(w) * int(h) <= 1024 * 768 else 1
            r = subprocess.run(niced([str(ROOT / "build" / "qwen_stages"), str(model), w, h, str(reps)]), env=env,
                               capture_output=True, text=True)
            if r.returncode:
                print(f"| {t} | {size} | failed: {r.stderr.strip()} |")
                continue
            kv = dict(x.split("=") for x in r.stdout.split())
            print(f"| {t} | {size} | {kv['visual_tokens']} | {kv['rows']} | " +
                  " | ".join(f"{float(kv[s]):.3f}" for s in STAGES) +
                  f" | {float(kv['vision']):.2f} | {float(kv['decoder']):.2f} | {float(kv['total']):.2f} | {float(kv['cpu']):.2f} |")
            sys.stdout.flush()
    print(f"# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if a.torch_sizes:
        print("# PyTorch oracle (tests/qwen_ref.py, float32), one run per size:")
        sys.stdout.flush()
        subprocess.run(niced([sys.executable, str(ROOT / "bench" / "qwen_torch.py"), str(d / "torch"), "--threads",
                              str(a.threads), "--sizes", a.torch_sizes]), check=False)


if __name__ == "__main__":
    main()
