"""The image decoders over every JPEG / PNG / BMP / PNM file that a few cheap Debian
packages ship, against Pillow 9.4, pixel for pixel, built with AddressSanitizer + UBSan.

Corpus (installed by .ci/run; about 8,500 files):
  adwaita-icon-theme, tango-icon-theme   icons: PNG of every colour type, palettes, alpha
  python-matplotlib-data                 sample data and toolbar icons (PNG, JPEG)
  imagemagick-6-doc                      the documentation's example images (JPEG, PNG)
  golang-1.19-src                        Go's image/jpeg and image/png test data: JPEG
                                         4:1:0 / 4:1:1 / 4:2:0 / 4:2:2 / 4:4:0 / 4:4:4,
                                         progressive, CMYK, gray, a truncated file;
                                         PNG suite files (bit depths, interlace, palettes)
plus the JPEGs the arithmetic/corrupt-data tests make (tests/test_jpeg_ari.py) when run
in the same session is not assumed: this test stands alone.

Every file is decoded by a small C driver over image.c / image_png.c / image_jpeg*.c with
the sanitizer flags of `make sanitize` (one process for all files: launching qalign-san
per file would take minutes), and by np.asarray(Image.open(f).convert("RGB")). A file
passes when both decode it to identical pixels, or both refuse it.
"""
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, report, run

PACKAGES = ["adwaita-icon-theme", "tango-icon-theme", "python-matplotlib-data", "imagemagick-6-doc",
            "golang-1.19-src"]
EXTS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".pnm")

DRIVER = r"""
#include "image.h"
#include <stdio.h>
#include <string.h>
/* stdin: one path per line. stdout: per path "OK w h offset [warning]" or "ERR message";
   the pixels (RGB24) are appended to argv[1]. */
int main(int argc, char **argv) {
    char path[4096], err[512], warn[256];
    FILE *out = fopen(argv[1], "wb");
    long long off = 0;
    if (argc < 2 || !out) return 2;
    while (fgets(path, sizeof path, stdin)) {
        Image img;
        path[strcspn(path, "\n")] = 0;
        if (image_load_warn(path, &img, warn, sizeof warn, err, sizeof err) != 0) {
            printf("ERR %s\n", err);
        } else {
            size_t n = (size_t)img.w * img.h * 3;
            fwrite(img.rgb, 1, n, out);
            printf("OK %d %d %lld %s\n", img.w, img.h, off, warn);
            off += (long long)n;
            image_free(&img);
        }
        fflush(stdout);
    }
    fclose(out);
    return 0;
}
"""


def corpus_files():
    files = []
    for pkg in PACKAGES:
        r = run(["dpkg", "-L", pkg])
        if r.returncode != 0:
            pytest.skip(f"Debian package {pkg} not installed (apt-get install {' '.join(PACKAGES)})")
        files += [Path(p) for p in r.stdout.split("\n") if p.lower().endswith(EXTS) and Path(p).is_file()]
    return sorted(set(files))


def san_driver(tmp):
    src, exe = tmp / "corpus_driver.c", tmp / "corpus_driver"
    src.write_text(DRIVER)
    flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    r = run(["cc", "-std=c11", "-D_POSIX_C_SOURCE=200809L", *flags, "-I", ROOT, "-o", exe, src,
             ROOT / "image.c", ROOT / "image_bmp.c", ROOT / "image_png.c", ROOT / "image_jpeg.c",
             ROOT / "image_jpeg_scan.c", "-lm"])
    if r.returncode != 0:
        pytest.fail(r.stderr[-3000:])
    return exe


def test_debian_image_corpus(tmp_path):
    files = corpus_files()
    exe = san_driver(tmp_path)
    t0 = time.time()
    pix = tmp_path / "pixels.bin"
    r = subprocess.run([str(exe), str(pix)], input="\n".join(map(str, files)) + "\n", capture_output=True, text=True,
                       env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"})
    t_san = time.time() - t0
    assert r.returncode == 0 and "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-4000:]
    rows = r.stdout.split("\n")[:len(files)]
    assert len(rows) == len(files)
    data = np.memmap(pix, np.uint8, "r") if pix.stat().st_size else np.zeros(0, np.uint8)
    n = {"equal": 0, "refused by both": 0, "warned": 0}
    by_fmt = {}
    bad = []
    for f, row in zip(files, rows):
        try:
            ref = np.asarray(Image.open(f).convert("RGB"))
        except Exception as e:  # noqa: BLE001 - Pillow refuses
            ref, why = None, e
        fmt = f.suffix.lower().lstrip(".").replace("jpeg", "jpg")
        by_fmt[fmt] = by_fmt.get(fmt, 0) + 1
        if row.startswith("ERR"):
            if ref is None:
                n["refused by both"] += 1
            else:
                bad.append(f"{f}: Pillow decodes, qalign refuses: {row[4:]}")
            continue
        parts = row.split(" ", 4)
        w, h, off = int(parts[1]), int(parts[2]), int(parts[3])
        if len(parts) > 4 and parts[4]:
            n["warned"] += 1
        if ref is None:
            bad.append(f"{f}: Pillow refuses ({why}), qalign decodes")
            continue
        got = np.asarray(data[off:off + w * h * 3]).reshape(h, w, 3)
        if got.shape != ref.shape or (got != ref).any():
            bad.append(f"{f}: differs from Pillow ({'shape' if got.shape != ref.shape else int((got != ref).sum())})")
            continue
        n["equal"] += 1
    report(f"Debian image corpus ({', '.join(PACKAGES)}): {len(files)} files "
           f"({', '.join(f'{v} {k}' for k, v in sorted(by_fmt.items()))}): {n['equal']} pixel-identical to Pillow "
           f"({n['warned']} with a warning), {n['refused by both']} refused by both, {len(bad)} mismatches; "
           f"ASan+UBSan decode {t_san:.1f} s, total {time.time() - t0:.1f} s")
    assert not bad, "\n".join(bad[:30])
