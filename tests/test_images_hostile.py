"""Hostile image files through the sanitizer build (ASan + UBSan).

For PNG, BMP and PNM: corpus files truncated at every 1/16th, ~50 random byte mutations
per format (fixed seed), absurd dimensions, a zero-length file and wrong magic numbers.
Every run must end with exit status 0 (a valid image, then equal to Pillow's decode) or 1
with exactly one line `qalign: error: FILE: reason` on stderr - never a crash, a hang or a
sanitizer report. BMP and PNM must also agree with Pillow on what is refused; a PNG may
be refused where Pillow is lenient (bad CRC after the first IDAT, bad Adler-32: a corrupt
file is an error here), which is counted in the report.
"""
import os
import random
import struct
import zlib

import numpy as np
import pytest

from conftest import ROOT, report, run
from test_images import (JOBS, PNG_SIG, build_driver, corpus, gen_bmp_corpus, gen_png_corpus,  # noqa: F401
                         gen_pnm_corpus, make_bmp, pillow_rgb, png_chunk, read_ppm)

# Leaks are checked once per format, in one process over all files (LeakSanitizer adds
# ~0.5 s to every process exit); the per-file CLI runs check everything else.
SAN_ENV = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=86",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87")
SAN_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:",
               "Sanitizer", "SUMMARY:")


@pytest.fixture(scope="session")
def san_driver(workdir):
    return build_driver(workdir, "image_driver_san",
                        ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                         "-fno-sanitize-recover=undefined"])


@pytest.fixture(scope="session")
def san_bin(workdir, san_driver):
    """./qalign-san (make sanitize); while qalign.c does not build, the image driver
    built with the same sanitizer flags stands in for it."""
    r = run(["make", "-C", ROOT, "qalign-san"])
    if r.returncode == 0:
        return ROOT / "qalign-san"
    report("images: NOTE `make qalign-san` failed; hostile tests ran through the sanitized stand-in driver")
    return san_driver


def mutants(files, rng, n_flips=50):
    """(name, bytes) hostile variants of corpus files."""
    out = []
    picks = [files[i] for i in sorted(rng.sample(range(len(files)), min(6, len(files))))]
    for f in picks:
        data = f.read_bytes()
        for k in range(1, 16):
            out.append((f"{f.stem}_trunc{k:02d}", data[: len(data) * k // 16]))
    for i in range(n_flips):
        f = rng.choice(files)
        data = bytearray(f.read_bytes())
        for _ in range(rng.choice([1, 1, 2, 3])):
            pos = rng.randrange(len(data))
            data[pos] = rng.choice([0, 255, data[pos] ^ (1 << rng.randrange(8)), rng.randrange(256)])
        out.append((f"{f.stem}_flip{i:02d}", bytes(data)))
    return out


def absurd_png():
    out = []
    for w, h in [(0x7FFFFFFF, 1), (1, 0x7FFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (1 << 24, 1 << 24), (0, 5), (20000, 20000)]:
        ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        out.append((f"png_dims_{w}x{h}", PNG_SIG + ihdr + png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) +
                    png_chunk(b"IEND", b"")))
    # a zlib bomb: tiny IDAT that inflates far beyond the image
    out.append(("png_bomb", PNG_SIG + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)) +
                png_chunk(b"IDAT", zlib.compress(b"\0" * (200 << 20), 9)) + png_chunk(b"IEND", b"")))
    out.append(("png_chunk_len", PNG_SIG + struct.pack(">I", 0xFFFFFFF0) + b"IHDR" + b"\0" * 20))
    return out


def absurd_bmp():
    out = []
    for w, h in [(0x7FFFFFFF, 1), (1, 0x7FFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (1 << 24, 1 << 24), (0, 3), (30000, 30000)]:
        d = bytearray(make_bmp(2, 2, 24, [[(1, 2, 3)] * 2] * 2))
        d[18:26] = struct.pack("<II", w, h)
        out.append((f"bmp_dims_{w}x{h}", bytes(d)))
    d = bytearray(make_bmp(2, 2, 8, [[1, 2]] * 2, palette=[(1, 2, 3)] * 4))
    d[46:50] = struct.pack("<I", 0xFFFFFFFF)  # colour count
    out.append(("bmp_colors", bytes(d)))
    d = bytearray(make_bmp(4, 4, 8, palette=[(5, 6, 7)] * 256, compression=1,
                           data=bytes([0, 2, 0, 0, 255, 255] * 3 + [0, 1])))
    d[18:26] = struct.pack("<II", 16000, 16000)  # RLE deltas over a huge image
    out.append(("bmp_rle_huge", bytes(d)))
    return out


def absurd_pnm():
    return [("pnm_dims_big", b"P6\n99999999 99999999\n255\n" + b"\0" * 64),
            ("pnm_dims_cap", b"P5\n16777217 1\n255\n" + b"\0" * 64),
            ("pnm_dims_many", b"P6\n20000 20000\n255\n" + b"\0" * 64),
            ("pnm_maxval0", b"P6\n2 2\n0\n" + b"\0" * 12),
            ("pnm_maxval_big", b"P6\n2 2\n65536\n" + b"\0" * 24),
            ("pnm_neg", b"P5\n-2 2\n255\n" + b"\0" * 4),
            ("pnm_token", b"P5\n12345678901 2\n255\n" + b"\0" * 4),
            ("pnm_plain_huge", b"P2\n20000 20000\n255\n1 2 3\n")]


def common_hostile():
    return [("empty", b""), ("one_byte", b"P"), ("magic_png", b"\x89PNX\r\n\x1a\n" + b"\0" * 40),
            ("magic_bmp", b"BX" + b"\0" * 60), ("magic_pnm", b"P7\n1 1\n255\n\0"),
            ("magic_text", b"hello world\n"), ("magic_gif", b"GIF89a" + b"\0" * 20),
            ("png_sig_only", PNG_SIG), ("bmp_head_only", b"BM" + b"\0" * 12)]


def run_hostile(san_bin, workdir, cases, tag):
    d = workdir / f"hostile_{tag}"
    d.mkdir(exist_ok=True)
    paths = []
    for name, data in cases:
        p = d / f"{name}.bin"
        p.write_bytes(data)
        paths.append(p)

    def one(p):
        out = p.with_suffix(".ppm")
        if out.exists():
            out.unlink()
        try:
            r = run([san_bin, "--decode", p, out], env=SAN_ENV, timeout=120)
        except Exception as e:  # timeout
            return p, -1, f"{e}", None
        rgb = read_ppm(out).copy() if r.returncode == 0 and out.exists() else None
        return p, r.returncode, r.stderr, rgb

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(JOBS) as ex:
        return list(ex.map(one, paths))


def leak_check(san_driver, paths):
    """Decode every file in one sanitized process with LeakSanitizer on."""
    env = dict(SAN_ENV, ASAN_OPTIONS="detect_leaks=1:exitcode=86")
    r = run([san_driver, "decode-many", *paths], env=env, timeout=600)
    return r.returncode, r.stderr


@pytest.mark.parametrize("fmt", ["png", "bmp", "pnm"])
def test_hostile(san_bin, san_driver, corpus, workdir, fmt):  # noqa: F811
    rng = random.Random({"png": 1, "bmp": 2, "pnm": 3}[fmt])
    cases = mutants(corpus[fmt], rng) + {"png": absurd_png, "bmp": absurd_bmp, "pnm": absurd_pnm}[fmt]()
    if fmt == "png":
        cases += common_hostile()
    results = run_hostile(san_bin, workdir, cases, fmt)
    problems, ok, refused, stricter, reasons = [], 0, 0, 0, {}
    for p, rc, err, rgb in results:
        lines = err.splitlines()
        if any(m in err for m in SAN_MARKERS) or rc not in (0, 1):
            problems.append(f"{p.name}: exit {rc}: {err[-1500:]}")
            continue
        if rc == 1:
            if len(lines) != 1 or not lines[0].startswith("qalign: error: "):
                problems.append(f"{p.name}: stderr is not one error line: {err[:500]!r}")
                continue
            refused += 1
        elif err:
            problems.append(f"{p.name}: exit 0 with stderr {err[:300]!r}")
            continue
        else:
            ok += 1
        # agreement with Pillow (skipped for files Pillow would need minutes or gigabytes for)
        if p.stat().st_size == 0 or "dims" in p.name or "huge" in p.name or "bomb" in p.name:
            continue
        ref = pillow_rgb(p)
        if rc == 0:
            if ref is None:
                problems.append(f"{p.name}: decoded, but Pillow refuses it")
            elif ref.shape != rgb.shape or not np.array_equal(ref, rgb):
                problems.append(f"{p.name}: decoded differently from Pillow")
        elif ref is not None:
            if fmt == "png":
                stricter += 1
                why = lines[0].split(": ")[-1]
                reasons[why] = reasons.get(why, 0) + 1
            else:
                problems.append(f"{p.name}: refused ({lines[0]}), but Pillow decodes it")
    rc, err = leak_check(san_driver, [p for p, *_ in results])
    if rc != 0 or any(m in err for m in SAN_MARKERS):
        problems.append(f"leak check (all files, one process): exit {rc}: {err[-2000:]}")
    report(f"images: hostile {fmt.upper()}: {len(results)} files, {ok} decoded (= Pillow), {refused} refused "
           f"with one error line, {stricter} refused where Pillow is lenient, "
           f"{len(problems)} problems (ASan+UBSan, leaks checked)")
    if reasons:
        report("images:   refused where Pillow is lenient: " +
               ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])))
    assert not problems, "\n".join(problems[:20])
