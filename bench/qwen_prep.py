#!/usr/bin/env python3
"""Time of the Qwen3.5 (Q-ReAlign) image processor in C (image_qwen.c) per image: smart_resize,
bicubic resize, normalisation and the patch rows, for both official pixel paths, one thread.

    python3 bench/qwen_prep.py [REPS]

Builds build/qwen_img_driver_bench (-O3 -march=native) from tests/qwen_img_driver.c, writes test
photos (PNG, smooth content + noise) and prints, per size and path, the resized size, the visual
tokens (merged patches) and milliseconds per image (decode not included). The CPU is named.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SIZES = [(448, 448), (1024, 768), (1920, 1080), (4000, 3000)]


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    exe = ROOT / "build" / "qwen_img_driver_bench"
    exe.parent.mkdir(exist_ok=True)
    src = [ROOT / "tests" / "qwen_img_driver.c"] + [ROOT / f for f in
                                                    ("image.c", "image_bmp.c", "image_png.c", "image_jpeg.c",
                                                     "image_jpeg_scan.c", "image_qwen.c")]
    subprocess.run(["cc", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-O3", "-march=native", "-I", str(ROOT),
                    "-o", str(exe), *map(str, src), "-lm"], check=True)
    rng = np.random.default_rng(0)
    print(f"Qwen3.5 image processor (image_qwen.c), one thread, {cpu_name()}, {reps} reps")
    print(f"{'input':>11} {'path':>6} {'resized':>11} {'tokens':>6} {'ms/image':>9}")
    with tempfile.TemporaryDirectory() as d:
        for w, h in SIZES:
            small = rng.integers(0, 256, (max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
            im = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR)).astype(np.int16)
            im = np.clip(im + rng.integers(-20, 21, im.shape), 0, 255).astype(np.uint8)
            p = Path(d) / f"{w}x{h}.png"
            Image.fromarray(im).save(p, compress_level=1)
            for path in ("hf", "swift"):
                n = max(2, reps // 10) if w * h > 4e6 else reps
                r = subprocess.run([str(exe), "time", str(p), path, str(n)], capture_output=True, text=True,
                                   check=True)
                iw, ih, ow, oh, sec = r.stdout.split()
                tokens = (int(ow) // 32) * (int(oh) // 32)
                print(f"{w:>5}x{h:<5} {path:>6} {ow:>5}x{oh:<5} {tokens:>6} {1000 * float(sec):>9.2f}")


if __name__ == "__main__":
    main()
