"""Image decoding and preprocessing: bit-exact with Pillow 9.4.

(a) the tiny reference inputs: decoded PNGs equal Pillow's decode; preprocessing
    (pad to square with (122,116,104) + bicubic resize to 56) of every record equals
    resized_rgb.npy byte for byte, from PPMs of Pillow's decode and from the original
    PNGs; image_normalize equals pixel_values.npy bit for bit.
(b) a generated corpus: PNG (every colour type x bit depth, interlaced or not, every
    filter, stored/fixed/dynamic deflate blocks, split IDATs, PLTE/tRNS, ancillary
    chunks), BMP (1/4/8/16/24/32 bits, palettes, bit fields, top-down, OS/2 and V4/V5
    headers, RLE8/RLE4, headerless DIB) and PNM (P1-P6, maxval 1..65535, comments): `qalign --decode`
    equals Pillow's Image.open(f).convert("RGB").
(c) `qalign --preprocess-only --size S` equals Pillow's expand2square + resize((S,S),
    BICUBIC) for random sizes, and image_resize_bicubic equals Image.resize for
    arbitrary (also non-square, one-axis) sizes.

Seed files for the fuzzers are written to build/corpus/fuzz_{png,bmp,pnm}.
"""
import io
import os
import random
import struct
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import CORPUS, ROOT, report, run

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

FILL = (122, 116, 104)
JOBS = max(2, os.cpu_count() or 2)


# =====================================================================================
# helpers: binaries, PPM I/O, Pillow references
# =====================================================================================

@pytest.fixture(scope="session")
def qalign(image_driver):
    """./qalign (rebuilt if image.c & co changed). While qalign.c itself does not build,
    the image driver below stands in for it (same --decode / --preprocess-only CLI and
    error format), so the image library stays testable; this is reported."""
    r = run(["make", "-C", ROOT, "qalign"])
    if r.returncode == 0:
        return ROOT / "qalign"
    report("images: NOTE `make qalign` failed; image tests ran through the stand-in driver")
    return image_driver


DRIVER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "image.h"
/* --decode FILE OUT.ppm | --preprocess-only [--size N] FILE OUT.ppm   (as qalign)
 * resize OW OH IN.ppm OUT.ppm | normalize IN.ppm OUT.f32 | decode-many FILE...
 * time-preprocess S FILE */
int main(int argc, char **argv) {
    char err[256]; Image in, out;
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float sd[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    static const uint8_t fill[3] = {122, 116, 104};
    if (argc >= 4 && (!strcmp(argv[1], "--decode") || !strcmp(argv[1], "--preprocess-only"))) {
        int pre = !strcmp(argv[1], "--preprocess-only"), size = 448, k = 2;
        if (pre && argc == 6 && !strcmp(argv[2], "--size")) { size = atoi(argv[3]); k = 4; }
        if (argc != k + 2) return 2;
        if (image_load(argv[k], &in, err, sizeof err)) {
            fprintf(stderr, "qalign: error: %s: %s\n", argv[k], err); return 1;
        }
        if (pre) {
            if (image_preprocess(&in, IMAGE_PAD, fill, size, &out, err, sizeof err)) {
                fprintf(stderr, "qalign: error: %s: %s\n", argv[k], err); return 1;
            }
            image_free(&in); in = out;
        }
        if (image_write_ppm(argv[k + 1], &in, err, sizeof err)) {
            fprintf(stderr, "qalign: error: %s: %s\n", argv[k + 1], err); return 1;
        }
        image_free(&in); return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "time-preprocess")) { /* best of 3, seconds */
        double best = 1e9;
        int k, S = atoi(argv[2]);
        if (image_load(argv[3], &in, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
        for (k = 0; k < 3; k++) {
            struct timespec t0, t1;
            double dt;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            if (image_preprocess(&in, IMAGE_PAD, fill, S, &out, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
            clock_gettime(CLOCK_MONOTONIC, &t1);
            dt = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
            if (dt < best) best = dt;
            image_free(&out);
        }
        printf("%.4f\n", best);
        image_free(&in);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "decode-many")) { /* every file; 0 = all handled cleanly */
        int i, bad = 0;
        for (i = 2; i < argc; i++) {
            err[0] = 0;
            if (image_load(argv[i], &in, err, sizeof err) == 0) image_free(&in);
            else if (!err[0] || strchr(err, '\n')) bad = 1;
        }
        return bad;
    }
    if (argc == 6 && !strcmp(argv[1], "resize")) {
        if (image_load(argv[4], &in, err, sizeof err) ||
            image_resize_bicubic(&in, atoi(argv[2]), atoi(argv[3]), &out, err, sizeof err) ||
            image_write_ppm(argv[5], &out, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
        image_free(&in); image_free(&out); return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "normalize")) {
        FILE *f; float *chw;
        if (image_load(argv[2], &in, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
        chw = malloc(sizeof(float) * 3 * (size_t)in.w * (size_t)in.h);
        image_normalize(&in, mean, sd, chw);
        f = fopen(argv[3], "wb");
        fwrite(chw, sizeof(float), 3 * (size_t)in.w * (size_t)in.h, f);
        fclose(f); free(chw); image_free(&in); return 0;
    }
    return 2;
}
"""


@pytest.fixture(scope="session")
def image_driver(workdir):
    """A small C driver over the image library, for APIs the CLI does not expose."""
    return build_driver(workdir, "image_driver", [])


def build_driver(workdir, name, flags):
    src = workdir / "image_driver.c"
    exe = workdir / name
    src.write_text(DRIVER_C)
    r = run(["cc", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-O2", *flags, "-I", ROOT, "-o", exe, src,
             ROOT / "image.c", ROOT / "image_bmp.c", ROOT / "image_png.c", ROOT / "image_jpeg.c",
             ROOT / "image_jpeg_scan.c", "-lm"])
    assert r.returncode == 0, r.stderr
    return exe


def write_ppm(path, rgb):
    h, w, _ = rgb.shape
    Path(path).write_bytes(b"P6\n%d %d\n255\n" % (w, h) + np.ascontiguousarray(rgb, np.uint8).tobytes())


def read_ppm(path):
    """Read the binary PPM qalign writes (P6, maxval 255)."""
    d = Path(path).read_bytes()
    fields, pos = [], 0
    while len(fields) < 4:
        while d[pos:pos + 1].isspace():
            pos += 1
        start = pos
        while not d[pos:pos + 1].isspace():
            pos += 1
        fields.append(d[start:pos])
    pos += 1
    assert fields[0] == b"P6" and fields[3] == b"255", fields
    w, h = int(fields[1]), int(fields[2])
    return np.frombuffer(d, np.uint8, w * h * 3, pos).reshape(h, w, 3)


def pillow_rgb(src):
    """Pillow's decode as RGB of a file (path: opened by name, as qalign's users do - Pillow
    memory-maps some raw layouts then - or bytes), or None if Pillow refuses it."""
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            return np.asarray(im.convert("RGB"))
    except Exception:
        return None


def expand2square(im, fill=FILL):
    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    res = Image.new(im.mode, (side, side), fill)
    res.paste(im, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return res


def pillow_preprocess(rgb, S):
    return np.asarray(expand2square(Image.fromarray(rgb)).resize((S, S), Image.BICUBIC))


def qalign_decode_many(qalign, files, outdir, preprocess_size=None):
    """Run qalign --decode (or --preprocess-only --size S) on every file, in parallel.
    Returns [(returncode, stderr, rgb or None)]."""
    def one(i_f):
        i, f = i_f
        out = Path(outdir) / f"out_{i}.ppm"
        if out.exists():
            out.unlink()
        if preprocess_size is None:
            args = [qalign, "--decode", f, out]
        else:
            args = [qalign, "--preprocess-only", "--size", str(preprocess_size), f, out]
        r = run(args)
        rgb = read_ppm(out).copy() if r.returncode == 0 and out.exists() else None
        return r.returncode, r.stderr, rgb
    with ThreadPoolExecutor(JOBS) as ex:
        return list(ex.map(one, enumerate(files)))


def save_seeds(name, files, limit=40):
    """Copy some (small) corpus files into build/corpus/<name> as fuzzing seeds."""
    d = CORPUS / name
    d.mkdir(parents=True, exist_ok=True)
    small = sorted((f for f in files if f.stat().st_size <= 4096), key=lambda f: f.stat().st_size)
    step = max(1, len(small) // limit)
    for f in small[::step][:limit]:
        (d / f.name).write_bytes(f.read_bytes())


# =====================================================================================
# PNG writer (independent of Pillow's encoder, to cover what Pillow does not emit)
# =====================================================================================

CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
PNG_SIG = b"\x89PNG\r\n\x1a\n"


def png_chunk(ctype, data):
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)


def pack_samples(samples, depth):
    """One row of samples (ints) -> bytes, MSB first for depths < 8."""
    samples = np.asarray(samples).ravel()
    if depth == 8:
        return samples.astype(np.uint8).tobytes()
    if depth == 16:
        return samples.astype(">u2").tobytes()
    per = 8 // depth
    n = len(samples)
    padded = np.zeros(-(-n // per) * per, np.int64)
    padded[:n] = samples
    padded = padded.reshape(-1, per)
    out = np.zeros(len(padded), np.int64)
    for k in range(per):
        out |= padded[:, k] << (8 - depth * (k + 1))
    return out.astype(np.uint8).tobytes()


def filter_row(raw, prev, bpp, ftype):
    r = np.frombuffer(raw, np.uint8).astype(np.int64)
    b = np.frombuffer(prev, np.uint8).astype(np.int64)
    a = np.concatenate([np.zeros(bpp, np.int64), r[:-bpp]])[:len(r)]
    c = np.concatenate([np.zeros(bpp, np.int64), b[:-bpp]])[:len(r)]
    if ftype == 0:
        pred = np.zeros_like(r)
    elif ftype == 1:
        pred = a
    elif ftype == 2:
        pred = b
    elif ftype == 3:
        pred = (a + b) // 2
    else:
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return bytes(((r - pred) & 255).astype(np.uint8))


def zlib_stored(raw, rng, max_block=65535):
    """A zlib stream of stored blocks only, of random sizes (empty blocks included)."""
    out = bytearray(b"\x78\x01")
    pos = 0
    while True:
        n = min(len(raw) - pos, rng.choice([0, 1, 7, 100, 1000, max_block]))
        final = pos + n >= len(raw)
        out += bytes([1 if final else 0]) + struct.pack("<HH", n, n ^ 0xFFFF) + raw[pos:pos + n]
        pos += n
        if final:
            break
    return bytes(out + struct.pack(">I", zlib.adler32(raw) & 0xFFFFFFFF))


class BitWriter:
    """LSB-first bit packing, as deflate wants."""

    def __init__(self):
        self.out, self.acc, self.n = bytearray(), 0, 0

    def bits(self, value, count):
        self.acc |= value << self.n
        self.n += count
        while self.n >= 8:
            self.out.append(self.acc & 255)
            self.acc >>= 8
            self.n -= 8

    def code(self, code, length):  # Huffman codes are sent MSB first
        self.bits(int(format(code, f"0{length}b")[::-1], 2), length)

    def flush(self):
        if self.n:
            self.out.append(self.acc & 255)
        self.acc = self.n = 0
        return bytes(self.out)


LEN_BASE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163,
            195, 227, 258]
LEN_EXTRA = [0] * 8 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4 + [5] * 4 + [0]
DIST_BASE = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073,
             4097, 6145, 8193, 12289, 16385, 24577]
DIST_EXTRA = [0, 0, 0, 0] + [i // 2 for i in range(2, 28)]


def fixed_huffman(raw, rng):
    """A zlib stream of fixed-Huffman blocks from a hand-written greedy LZ77 (distances up to
    32768, lengths up to 258, sometimes 258 sent as code 284 + 31), split into several blocks."""
    bw = BitWriter()
    bw.bits(0x78, 8)
    bw.bits(0x01, 8)

    def sym(v):
        if v < 144:
            bw.code(0x30 + v, 8)
        elif v < 256:
            bw.code(0x190 + v - 144, 9)
        elif v < 280:
            bw.code(v - 256, 7)
        else:
            bw.code(0xC0 + v - 280, 8)

    last, i, n = {}, 0, len(raw)
    block_end = rng.randrange(n + 1)
    bw.bits(1 if block_end >= n else 0, 1)
    bw.bits(1, 2)
    while i < n:
        if i >= block_end and block_end < n:  # end this block, start another fixed one
            sym(256)
            block_end = n if rng.random() < 0.5 else rng.randrange(i, n + 1)
            bw.bits(1 if block_end >= n else 0, 1)
            bw.bits(1, 2)
        key = raw[i:i + 3]
        j = last.get(key)
        last[key] = i
        length = 0
        if j is not None and i - j <= 32768 and len(key) == 3:
            while length < 258 and i + length < n and raw[j + length] == raw[i + length]:
                length += 1
        if length >= 3:
            dist = i - j
            if length == 258 and rng.random() < 0.5:
                sym(284)
                bw.bits(31, 5)
            else:
                c = max(k for k in range(29) if LEN_BASE[k] <= length)
                sym(257 + c)
                bw.bits(length - LEN_BASE[c], LEN_EXTRA[c])
            d = max(k for k in range(30) if DIST_BASE[k] <= dist)
            bw.code(d, 5)
            bw.bits(dist - DIST_BASE[d], DIST_EXTRA[d])
            for k in range(1, length):
                last[raw[i + k:i + k + 3]] = i + k
            i += length
        else:
            sym(raw[i])
            i += 1
    sym(256)
    if block_end < n:  # the data ran out in a non-final block: add an empty final one
        bw.bits(1, 1)
        bw.bits(1, 2)
        sym(256)
    return bw.flush() + struct.pack(">I", zlib.adler32(raw) & 0xFFFFFFFF)


def deflate(raw, rng, how):
    if how == "stored":
        return zlib_stored(raw, rng)
    if how == "fixed":
        return fixed_huffman(raw, rng)
    level, strategy, wbits = how
    co = zlib.compressobj(level, zlib.DEFLATED, wbits, 9, strategy)
    cut = rng.randrange(len(raw) + 1)
    # a flush in the middle leaves an empty stored block and a byte-aligned restart
    return co.compress(raw[:cut]) + co.flush(zlib.Z_SYNC_FLUSH) + co.compress(raw[cut:]) + co.flush()


def make_png(samples, ctype, depth, rng, *, interlace=False, filters="random", how=(6, 0, 15),
             idat_chunks=1, plte=None, trns=None, before=(), after=(), ihdr_interlace=None):
    """samples: int array (h, w, channels). Returns PNG bytes."""
    h, w, ch = samples.shape
    assert ch == CHANNELS[ctype]
    bpp = max(1, ch * depth // 8)
    raw = bytearray()
    for (x0, y0, dx, dy) in (ADAM7 if interlace else [(0, 0, 1, 1)]):
        sub = samples[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        prev = bytes(len(pack_samples(sub[0], depth)))
        for i, row in enumerate(sub):
            rb = pack_samples(row, depth)
            ft = rng.randrange(5) if filters == "random" else (i % 5 if filters == "cycle" else filters)
            raw += bytes([ft]) + filter_row(rb, prev, bpp, ft)
            prev = rb
    comp = deflate(bytes(raw), rng, how)
    cuts = sorted(rng.randrange(len(comp) + 1) for _ in range(idat_chunks - 1))
    parts = [comp[i:j] for i, j in zip([0] + cuts, cuts + [len(comp)])]
    il = (1 if interlace else 0) if ihdr_interlace is None else ihdr_interlace
    out = PNG_SIG + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, il))
    out += b"".join(png_chunk(t, d) for t, d in before)
    if plte is not None:
        out += png_chunk(b"PLTE", plte)
    if trns is not None:
        out += png_chunk(b"tRNS", trns)
    out += b"".join(png_chunk(b"IDAT", p) for p in parts)
    out += b"".join(png_chunk(t, d) for t, d in after)
    return out + png_chunk(b"IEND", b"")


def random_samples(rng, h, w, ch, depth, smooth=None):
    """Random samples; sometimes smooth (compressible, exercises long matches)."""
    nprng = np.random.default_rng(rng.randrange(1 << 30))
    top = (1 << depth) - 1
    if smooth is None:
        smooth = rng.random() < 0.5
    if smooth:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (c + 1) * 3 + yy * (2 * c + 1)) for c in range(ch)], -1)
        return (base % (top + 1)).astype(np.int64)
    return nprng.integers(0, top + 1, (h, w, ch), dtype=np.int64)


SIZES = [(1, 1), (1, 7), (7, 1), (2, 2), (3, 5), (8, 8), (9, 9), (13, 6), (17, 33), (31, 2), (64, 40), (100, 3)]
DEPTHS = {0: [1, 2, 4, 8, 16], 2: [8, 16], 3: [1, 2, 4, 8], 4: [8, 16], 6: [8, 16]}
HOWS = ["stored", "fixed", (0, 0, 15), (1, 0, 15), (6, 0, 15), (9, 0, 15), (6, zlib.Z_FILTERED, 15),
        (6, zlib.Z_HUFFMAN_ONLY, 15), (6, zlib.Z_RLE, 15), (6, zlib.Z_FIXED, 15), (9, zlib.Z_FIXED, 9),
        (6, 0, 8 + 1)]


def gen_png_corpus(d, rng):
    """Write the PNG corpus into d; returns the list of files."""
    files = []

    def put(name, data):
        p = d / name
        p.write_bytes(data)
        files.append(p)

    # --- our writer: every colour type x depth, interlaced or not, all filters and block kinds
    n = 0
    for ctype, depths in DEPTHS.items():
        for depth in depths:
            for interlace in (False, True):
                for k in range(4):
                    h, w = SIZES[(n + k * 5) % len(SIZES)]
                    ch = CHANNELS[ctype]
                    s = random_samples(rng, h, w, ch, depth)
                    kw = dict(interlace=interlace, how=HOWS[n % len(HOWS)], idat_chunks=1 + n % 4,
                              filters=["random", "cycle", 0, 1, 2, 3, 4][n % 7])
                    if ctype == 3:
                        npal = rng.choice([1 << depth, max(1, (1 << depth) - 1), 1, 256 if depth == 8 else 2])
                        kw["plte"] = bytes(rng.randrange(256) for _ in range(3 * npal))
                        if k % 2:
                            kw["trns"] = bytes(rng.choice([0, 255, rng.randrange(256)]) for _ in range(min(npal, 1 + k)))
                    elif ctype in (0, 2) and k == 3:
                        top = (1 << depth) - 1
                        kw["trns"] = b"".join(struct.pack(">H", rng.randrange(top + 1)) for _ in range(CHANNELS[ctype]))
                    put(f"gen_c{ctype}_d{depth}_{'i' if interlace else 'n'}_{k}.png",
                        make_png(s, ctype, depth, rng, **kw))
                    n += 1

    # --- ancillary chunks before/after the image data, an empty IDAT, chunks Pillow parses
    s = random_samples(rng, 5, 7, 3, 8)
    text = (b"tEXt", b"Comment\x00hello")
    put("anc_before.png", make_png(s, 2, 8, rng, before=[text, (b"gAMA", struct.pack(">I", 45455)),
                                                        (b"pHYs", struct.pack(">IIB", 2835, 2835, 1)),
                                                        (b"sRGB", b"\x00"), (b"prVt", b"private")]))
    put("anc_after.png", make_png(s, 2, 8, rng, after=[text, (b"zTXt", b"k\x00\x00" + zlib.compress(b"v"))]))
    put("idat_many.png", make_png(s, 2, 8, rng, idat_chunks=9))
    put("idat_empty_first.png", make_png(s, 2, 8, rng, before=[]).replace(
        png_chunk(b"IHDR", struct.pack(">IIBBBBB", 7, 5, 8, 2, 0, 0, 0)),
        png_chunk(b"IHDR", struct.pack(">IIBBBBB", 7, 5, 8, 2, 0, 0, 0)) + png_chunk(b"IDAT", b""), 1))
    put("trailing_after_iend.png", make_png(s, 2, 8, rng) + b"garbage after IEND")
    # palette without PLTE (Pillow: gray default palette), indices past a short PLTE
    idx = random_samples(rng, 4, 9, 1, 8, smooth=False)
    put("p_no_plte.png", make_png(idx, 3, 8, rng))
    put("p_short_plte.png", make_png(idx, 3, 8, rng, plte=b"\x10\x20\x30\x40\x50\x60\x70"))
    put("p_trns_simple.png", make_png(idx, 3, 8, rng, plte=bytes(range(256)) * 3, trns=b"\xff\xff\x00\xff"))
    for k, trns in enumerate([b"\xff\x00\xff", b"\x00", b"\xff\xff", b"", b"\x10\x20"]):
        put(f"p_no_plte_trns{k}.png", make_png(idx, 3, 8, rng, trns=trns))  # some refused by Pillow
        put(f"p_empty_plte_trns{k}.png", make_png(idx, 3, 8, rng, plte=b"", trns=trns))
    put("p_trns_after_idat.png", make_png(idx, 3, 8, rng, after=[(b"tRNS", b"\x00")]))
    put("p_two_trns.png", make_png(idx, 3, 8, rng, before=[(b"tRNS", b"\x00")], trns=b"\xff"))
    # extra decompressed data after the last row (Pillow ignores it)
    good = make_png(s, 2, 8, rng)
    raw = b"".join(b"\x00" + bytes(r.astype(np.uint8).ravel()) for r in s) + b"\x00" * 50
    put("extra_rows.png", good[:33] + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))
    # bytes after the end of the zlib stream inside IDAT
    put("after_zlib_end.png", good[:33] + png_chunk(b"IDAT", zlib.compress(raw) + b"junk") + png_chunk(b"IEND", b""))
    # long distances: identical 32767-pixel rows (32768 bytes with the filter byte), unfiltered
    row = random_samples(rng, 1, 32767, 1, 8, smooth=False)
    for how in ("fixed", (9, 0, 15)):
        put(f"dist32768_{how if how == 'fixed' else 'zlib'}.png",
            make_png(np.concatenate([row, row, row[:, ::-1]]), 0, 8, rng, filters=0, how=how))
    big = random_samples(rng, 131, 257, 4, 16, smooth=True)
    put("big_rgba16_interlaced.png", make_png(big, 6, 16, rng, interlace=True, how="fixed", idat_chunks=7))
    put("big_rgba16.png", make_png(big, 6, 16, rng, how=(9, 0, 15), idat_chunks=3))
    # interlace method 2 is treated as Adam7 by Pillow
    put("interlace_2.png", make_png(s, 2, 8, rng, interlace=True, ihdr_interlace=2))

    # --- Pillow's own encoder: all modes, compress levels, optimize
    nprng = np.random.default_rng(7)
    for i, (mode, size) in enumerate([("1", (13, 7)), ("L", (20, 9)), ("LA", (9, 20)), ("RGB", (33, 17)),
                                      ("RGBA", (17, 33)), ("P", (25, 25)), ("I;16", (10, 11)), ("I", (6, 6)),
                                      ("RGB", (1, 1)), ("P", (3, 4))]):
        w, h = size
        if mode in ("I;16", "I"):
            arr = nprng.integers(0, 600 if i % 2 else 65536, (h, w)).astype(np.uint16 if mode == "I;16" else np.int32)
            im = Image.fromarray(arr, mode) if mode == "I;16" else Image.fromarray(arr.astype(np.int32), "I")
        else:
            base = Image.fromarray(nprng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
            im = base.convert(mode) if mode != "P" else base.convert("RGB").quantize(colors=3 if w < 5 else 200)
        for level in (range(10) if i in (3, 5) else (0, 1, 6, 9)):
            buf = io.BytesIO()
            opts = {"compress_level": level}
            if level == 9:
                opts["optimize"] = True
            if mode == "P" and level == 1:
                opts["transparency"] = 0
            im.save(buf, "PNG", **opts)
            put(f"pil_{i}_{mode.replace(';', '')}_{level}.png", buf.getvalue())
    return files


# =====================================================================================
# BMP writer
# =====================================================================================

def bmp_rows(rows_top_down, bits, w):
    """Pack rows (lists of ints: palette indices, 16-bit words, or (b,g,r[,x]) bytes) with
    4-byte row padding."""
    out = []
    stride = ((w * bits + 31) >> 5) * 4
    for row in rows_top_down:
        if bits < 8:
            rb = pack_samples(np.asarray(row), bits)
        elif bits == 8:
            rb = bytes(row)
        elif bits == 16:
            rb = struct.pack("<%dH" % len(row), *row)
        else:
            rb = bytes(np.asarray(row, np.uint8).ravel())
        out.append(rb + b"\x00" * (stride - len(rb)))
    return out


def make_bmp(w, h, bits, rows_top_down=None, *, palette=None, hsize=40, topdown=False, compression=0,
             masks=None, colors=None, offset=None, data=None, pal_entry=None):
    """A BMP file. palette: list of (r, g, b). data: raw pixel bytes (for RLE)."""
    if data is None:
        packed = bmp_rows(rows_top_down, bits, w)
        data = b"".join(packed if topdown else packed[::-1])
    pal_entry = pal_entry or (3 if hsize == 12 else 4)
    pal = b""
    if palette is not None:
        pal = b"".join(bytes([b, g, r]) + (b"\x00" if pal_entry == 4 else b"") for r, g, b in palette)
    extra = b""
    if hsize == 12:
        info = struct.pack("<IHHHH", 12, w, h, 1, bits)
    else:
        hfield = (1 << 32) - h if topdown else h
        info = struct.pack("<IIIHHIIiiII", hsize, w, hfield, 1, bits, compression, len(data), 2835, 2835,
                           len(palette) if (palette is not None and colors is None) else (colors or 0), 0)
        tail = bytearray(hsize - 40)
        if masks is not None:
            if hsize >= 56:
                tail[0:4 * len(masks)] = struct.pack("<%dI" % len(masks), *masks)
            else:
                extra = struct.pack("<3I", *masks[:3])
        info += bytes(tail)
    off = 14 + len(info) + len(extra) + len(pal) if offset is None else offset
    head = b"BM" + struct.pack("<IHHI", off + len(data), 0, 0, off)
    return head + info + extra + pal + data


def rle8_encode(rows_top_down, w, mode="mixed"):
    """RLE8 stream (bottom-up rows), with encoded runs, absolute runs, EOL and EOB."""
    out = bytearray()
    for row in rows_top_down[::-1]:
        i = 0
        while i < w:
            j = i
            while j < w and row[j] == row[i] and j - i < 255:
                j += 1
            if j - i >= 2 or mode == "encoded":
                out += bytes([j - i, row[i]])
                i = j
            else:
                j = min(w, i + rng_abs_len(i))
                if j - i < 3:
                    out += bytes([1, row[i]])
                    i += 1
                    continue
                chunk = bytes(row[i:j])
                out += bytes([0, len(chunk)]) + chunk + (b"\x00" if len(chunk) % 2 else b"")
                i = j
        out += b"\x00\x00"
    return bytes(out + b"\x00\x01")


def rng_abs_len(i):
    return 3 + (i * 7) % 40


def rle4_encode(rows_top_down, w):
    """RLE4 with encoded pairs and even-length absolute runs (what Pillow decodes right)."""
    out = bytearray()
    for row in rows_top_down[::-1]:
        i = 0
        while i < w:
            if i + 6 <= w and (i // 6) % 2 == 1:
                n = 6
                out += bytes([0, n]) + bytes((row[i + k] << 4) | row[i + k + 1] for k in range(0, n, 2))
                i += n
            else:
                n = min(w - i, 5)
                a, b = row[i], row[i + 1] if i + 1 < w else 0
                out += bytes([n, (a << 4) | b])
                # an encoded run alternates a, b: only exact when the row does so too
                i += n
        out += b"\x00\x00"
    return bytes(out + b"\x00\x01")


def gen_bmp_corpus(d, rng):
    files = []
    nprng = np.random.default_rng(11)

    def put(name, data):
        p = d / name
        p.write_bytes(data)
        files.append(p)

    def rgbrows(w, h, ch):
        return [list(map(tuple, nprng.integers(0, 256, (w, ch)))) for _ in range(h)]

    for w, h in [(1, 1), (3, 2), (5, 5), (17, 9), (33, 4), (64, 3)]:
        pal2 = [tuple(nprng.integers(0, 256, 3)) for _ in range(2)]
        pal16 = [tuple(nprng.integers(0, 256, 3)) for _ in range(16)]
        pal256 = [tuple(nprng.integers(0, 256, 3)) for _ in range(256)]
        idx = lambda k: [list(nprng.integers(0, k, w)) for _ in range(h)]  # noqa: E731
        tag = f"{w}x{h}"
        for td in (False, True):
            t = f"{tag}_{'td' if td else 'bu'}"
            put(f"b1_{t}.bmp", make_bmp(w, h, 1, idx(2), palette=pal2, topdown=td))
            put(f"b4_{t}.bmp", make_bmp(w, h, 4, idx(16), palette=pal16, topdown=td))
            put(f"b8_{t}.bmp", make_bmp(w, h, 8, idx(256), palette=pal256, topdown=td))
            put(f"b24_{t}.bmp", make_bmp(w, h, 24, rgbrows(w, h, 3), topdown=td))
            put(f"b32_{t}.bmp", make_bmp(w, h, 32, rgbrows(w, h, 4), topdown=td))
            put(f"b16_{t}.bmp", make_bmp(w, h, 16, [list(nprng.integers(0, 65536, w)) for _ in range(h)], topdown=td))
        # short palettes (indices past the palette are gray), colour count field
        put(f"b8_short_{tag}.bmp", make_bmp(w, h, 8, idx(256), palette=pal256[:10]))
        put(f"b4_colors5_{tag}.bmp", make_bmp(w, h, 4, idx(16), palette=pal16[:5]))
        # gray palettes: Pillow reads these as L / 1
        put(f"b8_gray_{tag}.bmp", make_bmp(w, h, 8, idx(256), palette=[(i, i, i) for i in range(256)]))
        put(f"b1_bw_{tag}.bmp", make_bmp(w, h, 1, idx(2), palette=[(0, 0, 0), (255, 255, 255)]))
        put(f"b8_bw_quirk_{tag}.bmp", make_bmp(w, h, 8, idx(2), palette=[(0, 0, 0), (255, 255, 255)]))
        put(f"b4_gray16_{tag}.bmp", make_bmp(w, h, 4, idx(16), palette=[(i, i, i) for i in range(16)]))
        # headers: OS/2 v1 (3-byte palette), OS/2 v2 (64), V4 (108), V5 (124)
        put(f"os2_8_{tag}.bmp", make_bmp(w, h, 8, idx(256), palette=pal256, hsize=12))
        put(f"os2_24_{tag}.bmp", make_bmp(w, h, 24, rgbrows(w, h, 3), hsize=12))
        for hs in (64, 108, 124):
            put(f"h{hs}_24_{tag}.bmp", make_bmp(w, h, 24, rgbrows(w, h, 3), hsize=hs))
            put(f"h{hs}_8_{tag}.bmp", make_bmp(w, h, 8, idx(256), palette=pal256, hsize=hs))
        # bit fields
        for hs in (40, 108):
            for m in [(0xFF0000, 0xFF00, 0xFF, 0), (0xFF000000, 0xFF0000, 0xFF00, 0),
                      (0xFF000000, 0xFF0000, 0xFF00, 0xFF), (0xFF, 0xFF00, 0xFF0000, 0xFF000000),
                      (0xFF0000, 0xFF00, 0xFF, 0xFF000000), (0, 0, 0, 0)]:
                if hs == 40 and m[3]:
                    continue
                put(f"bf32_{hs}_{m[0]:x}_{m[3]:x}_{tag}.bmp",
                    make_bmp(w, h, 32, rgbrows(w, h, 4), hsize=hs, compression=3, masks=m))
            put(f"bf16_565_{hs}_{tag}.bmp", make_bmp(w, h, 16, [list(nprng.integers(0, 65536, w)) for _ in range(h)],
                                                    hsize=hs, compression=3, masks=(0xF800, 0x7E0, 0x1F, 0)))
            put(f"bf16_555_{hs}_{tag}.bmp", make_bmp(w, h, 16, [list(nprng.integers(0, 65536, w)) for _ in range(h)],
                                                    hsize=hs, compression=3, masks=(0x7C00, 0x3E0, 0x1F, 0)))
            put(f"bf24_{hs}_{tag}.bmp", make_bmp(w, h, 24, rgbrows(w, h, 3), hsize=hs, compression=3,
                                                masks=(0xFF0000, 0xFF00, 0xFF, 0)))
        # data offset 0 (= right after the palette) and the "offset == 14 + header" rule
        put(f"off0_{tag}.bmp", make_bmp(w, h, 8, idx(256), palette=pal256, offset=0))
        put(f"off_hdr_{tag}.bmp", make_bmp(w, h, 8, idx(16), palette=pal256[:16], colors=16, offset=54))
        # RLE
        rows = idx(256)
        for r in rows[: h // 2]:
            r[: w // 2] = [7] * (w // 2)
        put(f"rle8_{tag}.bmp", make_bmp(w, h, 8, palette=pal256, compression=1, data=rle8_encode(rows, w)))
        put(f"rle8_enc_{tag}.bmp", make_bmp(w, h, 8, palette=pal256, compression=1,
                                            data=rle8_encode(rows, w, "encoded")))
        put(f"rle8_gray_{tag}.bmp", make_bmp(w, h, 8, palette=[(i, i, i) for i in range(256)], compression=1,
                                             data=rle8_encode(rows, w)))
        rows4 = idx(16)
        put(f"rle4_{tag}.bmp", make_bmp(w, h, 4, palette=pal16, compression=2, data=rle4_encode(rows4, w)))
    # RLE quirks: delta (Pillow reads 4 bytes), early end of bitmap padded by EOLs, odd RLE4 runs
    pal256 = [tuple(nprng.integers(0, 256, 3)) for _ in range(256)]
    w, h = 8, 4
    data = bytes([4, 9, 0, 2, 1, 1, 2, 0, 0, 0] + [8, 3, 0, 0] * 3 + [8, 5, 0, 1])
    put("rle8_delta.bmp", make_bmp(w, h, 8, palette=pal256, compression=1, data=data))
    data = bytes([0, 5, 1, 2, 3, 4, 5, 0, 3, 9, 0, 0] + [0, 8] + list(range(8)) + [0, 0] + [8, 1, 8, 2, 0, 1])
    put("rle8_abs.bmp", make_bmp(w, h, 8, palette=pal256, compression=1, data=data))
    data = bytes([0, 5, 0x12, 0x34, 0x56, 0, 3, 0xAB, 0, 0] + [8, 0x12, 0, 0] * 3)
    put("rle4_odd.bmp", make_bmp(w, h, 4, palette=pal256[:16], compression=2, data=data))

    # headerless DIBs (Pillow opens them too): the BMP files without their 14-byte header
    for f in [f for f in files if f.name.startswith(("b8_3x2_bu", "b24_5x5", "os2_8_3x2", "bf16_565_40_5x5",
                                                     "b4_colors5_17x9", "rle8_5x5", "h124_8_3x2"))]:
        put("dib_" + f.stem + ".dib", f.read_bytes()[14:])
    # Pillow's own encoder
    for mode in ("1", "L", "P", "RGB", "RGBA"):
        base = Image.fromarray(nprng.integers(0, 256, (7, 11, 3), dtype=np.uint8))
        im = base.convert(mode) if mode != "P" else base.quantize(colors=20)
        for fmt in ("BMP", "DIB"):
            buf = io.BytesIO()
            im.save(buf, fmt)
            put(f"pil_{mode}.{fmt.lower()}", buf.getvalue())
    return files


# =====================================================================================
# PNM writer
# =====================================================================================

def gen_pnm_corpus(d, rng):
    files = []
    nprng = np.random.default_rng(5)

    def put(name, data):
        p = d / name
        p.write_bytes(data)
        files.append(p)

    for w, h in [(1, 1), (3, 2), (9, 7), (40, 13)]:
        tag = f"{w}x{h}"
        for maxval in (1, 7, 100, 254, 255, 256, 1000, 4095, 65534, 65535):
            dt = ">u2" if maxval > 255 else np.uint8
            for kind, ch in ((5, 1), (6, 3)):
                # values may exceed maxval (Pillow clips after scaling)
                top = min(maxval * 2 if maxval < 30000 else 65535, 65535 if maxval > 255 else 255)
                arr = nprng.integers(0, top + 1, (h, w, ch)).astype(dt)
                put(f"p{kind}_{maxval}_{tag}.pnm", b"P%d\n%d %d\n%d\n" % (kind, w, h, maxval) + arr.tobytes())
            # plain formats (values must be <= maxval for Pillow)
            for kind, ch in ((2, 1), (3, 3)):
                arr = nprng.integers(0, maxval + 1, (h, w, ch))
                body = "\n".join(" ".join(str(v) for v in row.ravel()) for row in arr)
                put(f"p{kind}_{maxval}_{tag}.pnm", b"P%d\n%d %d\n%d\n" % (kind, w, h, maxval) + body.encode() + b"\n")
        bits = nprng.integers(0, 2, (h, w))
        put(f"p4_{tag}.pbm", b"P4\n%d %d\n" % (w, h) + b"".join(pack_samples(r, 1) for r in bits))
        put(f"p1_{tag}.pbm", b"P1\n%d %d\n" % (w, h) + "\n".join("".join(map(str, r)) for r in bits).encode())
    # header comments, unusual whitespace, a comment inside a token, comments in plain data
    arr = nprng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    put("hdr_comments.ppm", b"P6 # comment\n#another\n5\t4\r# c\r255\n" + arr.tobytes())
    put("hdr_tokcomment.ppm", b"P6\n5 4\n2#split\n55\n" + arr.tobytes())
    put("hdr_vt_ff.ppm", b"P6\x0b5\x0c4\x0d255 " + arr.tobytes())
    put("hdr_plus_underscore.ppm", b"P6\n+5 0_4\n2_55\n" + arr.tobytes())
    put("trailing.ppm", b"P6\n5 4\n255\n" + arr.tobytes() + b"trailing garbage")
    put("plain_comments.pgm", b"P2\n3 2\n255\n1 2#x\n3\r4 # y\n5 6\n")
    put("plain_no_final_ws.pgm", b"P2\n5 2\n255\n1 2 3")  # Pillow repeats the last value
    put("plain_negative.pgm", b"P2\n3 1\n255\n-1 -200 7\n")
    put("plain_tight.pbm", b"P1\n3 2\n010\n1 1 1")
    # Pillow's own encoder
    for mode in ("1", "L", "I", "RGB"):
        base = Image.fromarray(nprng.integers(0, 256, (6, 9, 3), dtype=np.uint8))
        im = base.convert(mode)
        buf = io.BytesIO()
        im.save(buf, "PPM")
        put(f"pil_{mode}.pnm", buf.getvalue())
    return files


# =====================================================================================
# corpus fixtures
# =====================================================================================

@pytest.fixture(scope="session")
def corpus(workdir):
    rng = random.Random(1234)
    out = {}
    for name, gen in (("png", gen_png_corpus), ("bmp", gen_bmp_corpus), ("pnm", gen_pnm_corpus)):
        d = workdir / f"corpus_{name}"
        d.mkdir(exist_ok=True)
        out[name] = gen(d, rng)
        save_seeds(f"fuzz_{name}", out[name])
    return out


# =====================================================================================
# (a) the tiny reference fixtures
# =====================================================================================

def test_reference_decode(qalign, tiny_ref, workdir):
    inputs = tiny_ref / "inputs"
    files = [inputs / "alpha.png"] + sorted(inputs.glob("video_frame_*.png"))
    res = qalign_decode_many(qalign, files, workdir)
    exact = 0
    for f, (rc, err, rgb) in zip(files, res):
        assert rc == 0, f"{f.name}: {err}"
        npy = inputs / (f.stem + "_decoded_rgb.npy")
        ref = np.load(npy) if npy.exists() else pillow_rgb(f)
        assert rgb.shape == ref.shape and np.array_equal(rgb, ref), f"{f.name} differs from Pillow"
        exact += 1
    report(f"images: reference PNG decode exact {exact}/{len(files)}")


def reference_records(tiny_ref):
    """(record name, frame index, resized_rgb [S,S,3], pixel_values [3,S,S], Pillow RGB, source file)."""
    inputs = tiny_ref / "inputs"
    out = []
    for rec in sorted((tiny_ref / "ref").iterdir()):
        name = rec.name.split("__")[0]
        rr = np.load(rec / "resized_rgb.npy")
        pv = np.load(rec / "pixel_values.npy")
        if name == "video":
            srcs = sorted(inputs.glob("video_frame_*.png"))
            rgbs = [pillow_rgb(f) for f in srcs]
        else:
            srcs = [next(inputs.glob(name + ".*[gG]"))]
            rgbs = [np.load(inputs / f"{name}_decoded_rgb.npy")]
        assert len(srcs) == rr.shape[0]
        for i in range(rr.shape[0]):
            out.append((rec.name, i, rr[i], pv[i], rgbs[i], srcs[i]))
    return out


def test_reference_preprocess(qalign, tiny_ref, workdir):
    recs = reference_records(tiny_ref)
    S = recs[0][2].shape[0]
    ppms = []
    for k, (rec, i, rr, pv, rgb, src) in enumerate(recs):
        p = workdir / f"ref_{k}.ppm"
        write_ppm(p, rgb)
        ppms.append(p)
    pngs = [(k, r[5]) for k, r in enumerate(recs) if r[5].suffix == ".png"]
    res_ppm = qalign_decode_many(qalign, ppms, workdir, preprocess_size=S)
    res_png = qalign_decode_many(qalign, [p for _, p in pngs], workdir, preprocess_size=S)
    exact, maxd = 0, 0
    for (rec, i, rr, pv, rgb, src), (rc, err, out) in zip(recs, res_ppm):
        assert rc == 0, f"{rec}[{i}]: {err}"
        maxd = max(maxd, int(np.abs(out.astype(int) - rr).max()))
        exact += np.array_equal(out, rr)
    for (k, src), (rc, err, out) in zip(pngs, res_png):
        assert rc == 0, f"{src.name}: {err}"
        maxd = max(maxd, int(np.abs(out.astype(int) - recs[k][2]).max()))
        exact += np.array_equal(out, recs[k][2])
    total = len(recs) + len(pngs)
    report(f"images: reference resized_rgb exact {exact}/{total} (max |d| {maxd})")
    assert exact == total


def test_reference_pixel_values(image_driver, tiny_ref, workdir):
    """image_normalize on resized_rgb equals pixel_values.npy bit for bit."""
    recs = reference_records(tiny_ref)
    exact, maxd = 0, 0.0
    for k, (rec, i, rr, pv, rgb, src) in enumerate(recs):
        p, o = workdir / f"pv_{k}.ppm", workdir / f"pv_{k}.f32"
        write_ppm(p, rr)
        r = run([image_driver, "normalize", p, o])
        assert r.returncode == 0, r.stderr
        got = np.fromfile(o, np.float32).reshape(pv.shape)
        maxd = max(maxd, float(np.abs(got - pv).max()))
        exact += np.array_equal(got.view(np.uint32), pv.view(np.uint32))
    report(f"images: reference pixel_values bit-exact {exact}/{len(recs)} (max |d| {maxd:.1e})")
    assert exact == len(recs)


def test_load_errors(qalign, workdir):
    """Missing, unreadable (a directory), empty and unknown files: exit 1, one clear line."""
    empty = workdir / "empty.png"
    empty.write_bytes(b"")
    text = workdir / "text.png"
    text.write_bytes(b"this is not an image\n")
    cases = [(workdir / "does_not_exist.png", "cannot open"), (workdir, "read error"), (empty, "empty file"),
             (text, "unrecognised image format")]
    for path, want in cases:
        r = run([qalign, "--decode", path, workdir / "never.ppm"])
        lines = r.stderr.splitlines()
        assert r.returncode == 1 and len(lines) == 1, (path, r.returncode, r.stderr)
        assert lines[0].startswith("qalign: error: ") and want in lines[0], lines[0]
    report(f"images: load errors (missing, directory, empty, unknown) clear: {len(cases)}/{len(cases)}")


# =====================================================================================
# (b) generated corpus vs Pillow
# =====================================================================================

@pytest.mark.parametrize("fmt", ["png", "bmp", "pnm"])
def test_corpus_decode(qalign, corpus, workdir, fmt):
    files = corpus[fmt]
    res = qalign_decode_many(qalign, files, workdir)
    exact, maxd, bad = 0, 0, []
    refused = 0
    for f, (rc, err, rgb) in zip(files, res):
        ref = pillow_rgb(f)
        if ref is None:  # a file Pillow refuses must be refused too
            refused += 1
            if rc == 0:
                bad.append(f"{f.name}: Pillow refuses it, qalign decoded it")
            else:
                exact += 1
            continue
        if rc != 0:
            bad.append(f"{f.name}: {err.strip()}")
            continue
        if rgb.shape != ref.shape:
            bad.append(f"{f.name}: shape {rgb.shape} vs {ref.shape}")
            continue
        d = int(np.abs(rgb.astype(int) - ref).max())
        maxd = max(maxd, d)
        if d == 0:
            exact += 1
        else:
            bad.append(f"{f.name}: max |d| {d}")
    report(f"images: {fmt.upper()} corpus exact {exact}/{len(files)} (max |d| {maxd}; "
           f"{refused} refused by both)")
    assert not bad, "\n".join(bad[:30])


# =====================================================================================
# (c) preprocessing vs Pillow
# =====================================================================================

def test_preprocess_random(qalign, workdir):
    rng = np.random.default_rng(99)
    cases = [(1, 1, 448), (448, 448, 448), (449, 448, 448), (640, 480, 448), (480, 640, 448), (48, 36, 56),
             (1000, 3, 448), (3, 1000, 448), (2, 1, 7), (300, 500, 224), (1200, 900, 448), (57, 56, 56),
             (1, 3000, 448), (3000, 1, 448), (2, 4001, 56), (4001, 3, 100), (5, 2999, 2999), (2999, 4, 3001)]
    for _ in range(24):
        cases.append((int(rng.integers(1, 1300)), int(rng.integers(1, 1300)),
                      int(rng.choice([1, 2, 14, 56, 224, 336, 448, 500, 1000]))))
    files = []
    for k, (w, h, S) in enumerate(cases):
        if rng.random() < 0.5:  # smooth content
            small = rng.integers(0, 256, (max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8)
            a = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
        else:
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        p = workdir / f"pre_{k}.{'ppm' if k % 2 else 'png'}"
        if k % 2:
            write_ppm(p, a)
        else:
            Image.fromarray(a).save(p, compress_level=1)
        files.append((p, a, S))
    exact, maxd, bad = 0, 0, []
    for S in sorted({c[2] for c in cases}):
        group = [(p, a) for p, a, s in files if s == S]
        res = qalign_decode_many(qalign, [p for p, _ in group], workdir, preprocess_size=S)
        for (p, a), (rc, err, out) in zip(group, res):
            assert rc == 0, f"{p.name}: {err}"
            ref = pillow_preprocess(a, S)
            d = int(np.abs(out.astype(int) - ref).max())
            maxd = max(maxd, d)
            if d == 0:
                exact += 1
            else:
                bad.append(f"{p.name} {a.shape[1]}x{a.shape[0]} -> {S}: max |d| {d}")
    report(f"images: preprocess (pad + bicubic) exact {exact}/{len(files)} (max |d| {maxd})")
    assert not bad, "\n".join(bad)


def test_resize_arbitrary(image_driver, workdir):
    """image_resize_bicubic = Image.resize((ow, oh), BICUBIC), also for one unchanged axis."""
    rng = np.random.default_rng(3)
    exact, total = 0, 0
    for k in range(30):
        w, h = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        ow, oh = int(rng.integers(1, 400)), int(rng.integers(1, 400))
        if k % 5 == 1:
            ow = w
        elif k % 5 == 2:
            oh = h
        elif k % 5 == 3:
            ow, oh = w, h
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        p, o = workdir / f"rs_{k}.ppm", workdir / f"rs_{k}_out.ppm"
        write_ppm(p, a)
        r = run([image_driver, "resize", ow, oh, p, o])
        assert r.returncode == 0, r.stderr
        ref = np.asarray(Image.fromarray(a).resize((ow, oh), Image.BICUBIC))
        total += 1
        exact += np.array_equal(read_ppm(o), ref)
    report(f"images: resize to arbitrary sizes exact {exact}/{total}")
    assert exact == total


def test_preprocess_strip(image_driver, workdir):
    """A 1 x 2^22 strip pads to a 4M x 4M square (Pillow would need terabytes for it): the
    work stays proportional to the image (smaller strips are compared with Pillow in
    test_preprocess_random)."""
    n = 1 << 22
    rng = np.random.default_rng(5)
    for name, shape in (("tall", (n, 1, 3)), ("wide", (1, n, 3))):
        p = workdir / f"strip_{name}.ppm"
        write_ppm(p, rng.integers(0, 256, shape, dtype=np.uint8))
        r = run([image_driver, "time-preprocess", "448", p], timeout=300)
        assert r.returncode == 0, r.stderr
        report(f"images: {shape[1]}x{shape[0]} strip -> pad + bicubic 448: {float(r.stdout):.2f} s")
        p.unlink()


def test_preprocess_speed(qalign, image_driver, workdir):
    """A 12-megapixel photo padded and resized to 448: exact, and the resize < 0.3 s
    (asserted < 0.6 s to leave room for a loaded machine)."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    a = np.asarray(Image.fromarray(small).resize((4000, 3000), Image.BILINEAR))
    p, o = workdir / "big.ppm", workdir / "big_out.ppm"
    write_ppm(p, a)
    r = run([qalign, "--preprocess-only", "--size", "448", p, o])
    assert r.returncode == 0, r.stderr
    assert np.array_equal(read_ppm(o), pillow_preprocess(a, 448))
    r = run([image_driver, "time-preprocess", "448", p])
    assert r.returncode == 0, r.stderr
    t = float(r.stdout)
    report(f"images: 4000x3000 -> pad + bicubic 448: {t:.3f} s (best of 3, driver built -O2)")
    assert t < 0.6
