"""JPEG arithmetic coding and libjpeg-turbo's tolerance of corrupt entropy data
(image_jpeg.c), against Pillow 9.4 / libjpeg-turbo 2.1.5 byte for byte.

Arithmetic files are made at test time by Debian's libjpeg-turbo-progs from images
the JPEG tests already generate: `cjpeg -arithmetic` (baseline and progressive;
4:4:4 / 4:2:2 / 4:2:0 / 4:1:1 / 4:4:0, grayscale, restart intervals in rows and
in MCUs, odd sizes, qualities 5..100) and `jpegtran -arithmetic` transcodes of
Pillow-written RGB, gray and CMYK (Adobe) JPEGs; plus copies with their DAC
conditioning values rewritten (L/U bounds, K thresholds: the same bytes then decode
to something else, in Pillow as here). Oracle: Pillow. Pillow 9.4 cannot decode an
arithmetic file whose scan data crosses its 64 KB read chunks ("broken data stream":
jdarith.c cannot suspend); for those the oracle is libjpeg-turbo's own djpeg, and
the test checks that Pillow does refuse them.

Corrupt data: small JPEGs (Huffman baseline / progressive / restart intervals /
arithmetic) with bytes flipped, replaced or cut in their entropy-coded data; every
variant Pillow decodes must decode to Pillow's pixels here with at most one warning
line on stderr; every variant Pillow refuses is refused here too. Files that end
early or badly after their scans: the same decision as Pillow on each. Specific cases check the
warning text against djpeg's.
"""
import os
import random
import shutil
import subprocess
import tempfile
import time

import numpy as np
import pytest
from PIL import Image

from conftest import CORPUS, report, run
from test_jpeg import (S411, S420, S422, S440, S444, Scan, content, full_progression, pillow_jpeg, read_ppm,
                       wjpeg)

PILLOW_CHUNK = 65536   # ImageFile.MAXBLOCK-sized reads (decodermaxblock)


def need(tool):
    if not shutil.which(tool):
        pytest.skip(f"{tool} not installed (apt-get install libjpeg-turbo-progs)")


def pnm_bytes(a):
    if a.ndim == 2:
        return b"P5\n%d %d\n255\n" % (a.shape[1], a.shape[0]) + a.tobytes()
    return b"P6\n%d %d\n255\n" % (a.shape[1], a.shape[0]) + a.tobytes()


def tool(args, data):
    r = subprocess.run(args, input=data, capture_output=True)
    assert r.returncode == 0, (args, r.stderr[-500:])
    return r.stdout


def cjpeg(a, *opts):
    return tool(["cjpeg", "-arithmetic", *opts], pnm_bytes(a))


def jpegtran(data, *opts):
    return tool(["jpegtran", "-arithmetic", *opts], data)


def photo(w, h, seed=0):
    """content() is noisy; mix in a smooth version so that quality matters."""
    a = content(w, h, seed).astype(np.float32)
    y, x = np.mgrid[0:h, 0:w]
    a[..., 1] = 0.5 * a[..., 1] + 60 * (1 + np.sin(x / 11.0 + y / 17.0))
    return np.clip(a, 0, 255).astype(np.uint8)


def set_dac(data, dc=None, ac=None):
    """Rewrite the values of every DAC entry: DC entries get `dc` (U << 4 | L), AC entries `ac` (K)."""
    b = bytearray(data)
    i = 2
    while i + 4 <= len(b) and b[i] == 0xFF:
        m, L = b[i + 1], b[i + 2] << 8 | b[i + 3]
        if m == 0xDA:
            break
        if m == 0xCC:
            for j in range(i + 4, i + 2 + L, 2):
                if b[j] < 16 and dc is not None:
                    b[j + 1] = dc
                elif b[j] >= 16 and ac is not None:
                    b[j + 1] = ac
        i += 2 + L
    return bytes(b)


def arith_corpus():
    """[(name, bytes)]"""
    C = []
    sizes = [(1, 1), (7, 5), (17, 33), (33, 17), (61, 47), (101, 67), (160, 120)]
    samp = {"4:4:4": "1x1", "4:2:2": "2x1", "4:2:0": "2x2", "4:1:1": "4x1", "4:4:0": "1x2"}
    for i, (w, h) in enumerate(sizes):
        a = photo(w, h, i)
        for j, (sn, s) in enumerate(samp.items()):
            q = [5, 30, 75, 95, 100][(i + j) % 5]
            C.append((f"cjpeg {sn} q{q} {w}x{h}", cjpeg(a, "-quality", str(q), "-sample", s)))
            C.append((f"cjpeg progressive {sn} q{q} {w}x{h}",
                      cjpeg(a, "-quality", str(q), "-sample", s, "-progressive")))
        C.append((f"cjpeg gray {w}x{h}", cjpeg(a, "-grayscale")))
        C.append((f"cjpeg gray progressive {w}x{h}", cjpeg(a, "-grayscale", "-progressive")))
        C.append((f"cjpeg gray pgm {w}x{h}", cjpeg(a[..., 1].copy())))
        for ri in ("1", "2B", "5B"):
            C.append((f"cjpeg restart {ri} 4:2:0 {w}x{h}", cjpeg(a, "-restart", ri)))
            C.append((f"cjpeg restart {ri} progressive 4:2:2 {w}x{h}",
                      cjpeg(a, "-restart", ri, "-progressive", "-sample", "2x1")))
    # transcodes of Pillow's files (RGB, gray, CMYK Adobe-inverted), with and without restarts
    for i, (w, h) in enumerate([(7, 5), (33, 17), (101, 67), (160, 120)]):
        for mode in ("RGB", "L", "CMYK"):
            src = pillow_jpeg(w, h, mode, seed=i, quality=85)
            C.append((f"jpegtran {mode} {w}x{h}", jpegtran(src)))
            C.append((f"jpegtran {mode} progressive {w}x{h}", jpegtran(src, "-progressive")))
            C.append((f"jpegtran {mode} restart 1B {w}x{h}", jpegtran(src, "-restart", "1B")))
        src = pillow_jpeg(w, h, seed=i, quality=60, subsampling=2, progressive=True)
        C.append((f"jpegtran Pillow progressive 4:2:0 {w}x{h}", jpegtran(src, "-progressive", "-restart", "3B")))
    # scan scripts (cjpeg -scans): sequential scans per component; progressive scripts that
    # stop early (DC only; AC never refined: libjpeg's block smoothing) or refine DC in steps
    scripts = {"sequential Y | Cb | Cr": "0; 1; 2;", "sequential Y | Cb Cr": "0; 1 2;",
               "sequential Cr | Y Cb": "2; 0 1;",
               "progressive DC only": "0 1 2: 0 0 0 0;",
               "progressive DC + AC 1-5 Al 1": "0 1 2: 0 0 0 0; 0: 1 5 0 1; 1: 1 5 0 1; 2: 1 5 0 1;",
               "progressive DC refined": "0 1 2: 0 0 0 2; 0 1 2: 0 0 2 1; 0 1 2: 0 0 1 0; 0: 1 63 0 1; 0: 1 63 1 0;"
                                         " 1: 1 63 0 0; 2: 1 63 0 0;"}
    for w, h in [(33, 17), (101, 67)]:
        a = photo(w, h, 5)
        for sn, script in scripts.items():
            sp = os.path.join(tempfile.gettempdir(), f"qalign_scans_{os.getpid()}.txt")
            with open(sp, "w") as f:
                f.write(script)
            try:
                C.append((f"cjpeg -scans {sn} {w}x{h}", cjpeg(a, "-scans", sp, "-sample", "2x2")))
            finally:
                os.unlink(sp)
    # DAC conditioning other than the defaults (data decodes differently, in Pillow too)
    for w, h in [(33, 17), (101, 67)]:
        a = photo(w, h, 7)
        for dc, ac in [(0x52, None), (0x10, 1), (0xF0, 63), (0xFF, 0), (None, 20), (0x31, 2)]:
            C.append((f"DAC dc={dc} ac={ac} {w}x{h}", set_dac(cjpeg(a), dc, ac)))
            C.append((f"DAC dc={dc} ac={ac} progressive {w}x{h}", set_dac(cjpeg(a, "-progressive"), dc, ac)))
    return C


@pytest.fixture(scope="module")
def ari(tmp_path_factory):
    need("cjpeg")
    need("jpegtran")
    t0 = time.time()
    d = tmp_path_factory.mktemp("jpeg_ari")
    items = []
    for i, (name, data) in enumerate(arith_corpus()):
        p = d / f"{i:04d}.jpg"
        p.write_bytes(data)
        items.append((name, p))
    report(f"jpeg arithmetic corpus: {len(items)} files made with cjpeg/jpegtran in {time.time() - t0:.1f} s")
    return items


def decode(binary, path, tmp, env=None):
    out = tmp / (path.name + ".ppm")
    r = run([binary, "--decode", path, out], env=env)
    if r.returncode != 0:
        return None, r.stderr.strip()
    return read_ppm(out), r.stderr.strip()


def pillow(path):
    try:
        return np.asarray(Image.open(path).convert("RGB")), ""
    except Exception as e:  # noqa: BLE001 - any refusal
        return None, str(e)


def djpeg_rgb(path):
    r = subprocess.run(["djpeg", "-pnm", str(path)], capture_output=True)
    assert r.returncode == 0, r.stderr
    parts = r.stdout.split(maxsplit=4)
    w, h = int(parts[1]), int(parts[2])
    a = np.frombuffer(r.stdout[len(r.stdout) - w * h * (3 if parts[0] == b"P6" else 1):], np.uint8)
    return np.repeat(a.reshape(h, w, 1), 3, 2) if parts[0] == b"P5" else a.reshape(h, w, 3)


def test_arithmetic_exact(ari, qalign_bin, tmp_path):
    bad, n_pil = [], 0
    for name, path in ari:
        ref, _ = pillow(path)
        assert ref is not None, f"{name}: Pillow refuses a {path.stat().st_size}-byte file"
        n_pil += 1
        got, err = decode(qalign_bin, path, tmp_path)
        if got is None:
            bad.append(f"{name}: {err}")
        elif got.shape != ref.shape or (got != ref).any():
            bad.append(f"{name}: {(got != ref).sum()} values differ")
        elif err and "DAC" not in name:
            bad.append(f"{name}: unexpected stderr {err!r}")
    report(f"jpeg arithmetic: {len(ari) - len(bad)}/{len(ari)} files exact vs Pillow")
    assert not bad, "\n".join(bad[:20])


def test_arithmetic_large(qalign_bin, tmp_path):
    """Large files: equal to Pillow where Pillow decodes them, and to libjpeg-turbo's djpeg
    always (Pillow 9.4 refuses some arithmetic files whose scans cross its 64 KB reads:
    "broken data stream", jdarith.c cannot suspend; qalign decodes them as djpeg does)."""
    need("cjpeg")
    need("djpeg")
    a = photo(900, 700, 3)
    noise = (np.random.RandomState(0).rand(600, 800, 3) * 255).astype(np.uint8)
    cases = [("4:2:0 q92", cjpeg(a, "-quality", "92")),
             ("4:4:4 progressive q95", cjpeg(a, "-quality", "95", "-sample", "1x1", "-progressive")),
             ("gray q100 restart 2", cjpeg(a, "-quality", "100", "-grayscale", "-restart", "2")),
             ("noise 4:2:0 q90", cjpeg(noise, "-quality", "90")),
             ("noise progressive q90", cjpeg(noise, "-quality", "90", "-progressive"))]
    n_pil = 0
    for name, data in cases:
        p = tmp_path / "big.jpg"
        p.write_bytes(data)
        assert len(data) > 2 * PILLOW_CHUNK, (name, len(data))
        got, err = decode(qalign_bin, p, tmp_path)
        assert got is not None, f"{name}: {err}"
        assert (got == djpeg_rgb(p)).all(), name
        ref, why = pillow(p)
        if ref is not None:
            n_pil += 1
            assert (got == ref).all(), name
        else:
            assert "broken data stream" in why, (name, why)
    report(f"jpeg arithmetic > 128 KB: {len(cases)} files equal to djpeg; Pillow decodes {n_pil} (equal), "
           f"refuses {len(cases) - n_pil}")


# ======================================================================================
# Corrupt entropy data
# ======================================================================================
def entropy_span(data):
    """(start, end) of the first scan's entropy-coded data."""
    i = 2
    while True:
        assert data[i] == 0xFF
        m, L = data[i + 1], data[i + 2] << 8 | data[i + 3]
        if m == 0xDA:
            s = i + 2 + L
            e = s
            while not (data[e] == 0xFF and data[e + 1] not in (0, 0xFF) and not 0xD0 <= data[e + 1] <= 0xD7):
                e += 1
            return s, e
        i += 2 + L


def corrupt_sources():
    src = [("baseline 4:2:0", pillow_jpeg(61, 47, seed=1, quality=80)),
           # large enough for libjpeg-turbo's fast path (>= 512 bytes per block left)
           ("baseline 320x240 q90", pillow_jpeg(320, 240, seed=1, quality=90)),
           ("baseline 4:4:4 gray-ish", pillow_jpeg(40, 24, seed=2, quality=50, subsampling=0)),
           ("progressive", pillow_jpeg(61, 47, seed=3, quality=80, progressive=True)),
           ("gray", pillow_jpeg(33, 17, "L", seed=4, quality=90)),
           ("DRI 2 4:2:0", wjpeg(61, 47, S420, seed=5, restart=2)),
           ("DRI 1 4:4:4", wjpeg(33, 17, S444, seed=6, restart=1)),
           ("progressive DRI 2", wjpeg(33, 17, S420, progressive=True, scans=full_progression(3), restart=2))]
    if shutil.which("cjpeg"):
        a = photo(61, 47, 8)
        src += [("arithmetic", cjpeg(a)), ("arithmetic progressive", cjpeg(a, "-progressive")),
                ("arithmetic restart 2B", cjpeg(a, "-restart", "2B"))]
    return src


def corrupt_variants(rng, data):
    s, e = entropy_span(data)
    out = []
    for k in range(28):
        b = bytearray(data)
        kind = k % 7
        p = rng.randrange(s, e)
        if kind == 0:
            b[p] ^= 1 << rng.randrange(8)
        elif kind == 1:
            b[p] = rng.randrange(256)
        elif kind == 2:      # 16 one bits: never a valid Huffman code
            b[p:p + 4] = b"\xFF\x00\xFF\x00"
        elif kind == 3:      # the scan cut short, EOI appended
            b = b[:p] + b"\xFF\xD9"
        elif kind == 4:      # garbage inserted
            b[p:p] = bytes(rng.randrange(1, 255) for _ in range(rng.randrange(1, 6)))
        elif kind == 5:      # a byte dropped
            del b[p]
        else:                # a marker inside the data (RSTn, EOI, DHT, COM, TEM, junk)
            b[p:p + 2] = bytes([0xFF, rng.choice([0xD3, 0xD9, 0xC4, 0xFE, 0x01, 0x80])])
        out.append((["flip", "byte", "FF00FF00", "cut+EOI", "insert", "drop", "marker"][kind], bytes(b)))
    return out


def test_corrupt_entropy(qalign_bin, tmp_path):
    rng = random.Random(2024)
    n = {"exact": 0, "warned": 0, "refused by both": 0}
    bad = []
    p = tmp_path / "c.jpg"
    for sname, data in corrupt_sources():
        for kind, var in corrupt_variants(rng, data):
            p.write_bytes(var)
            ref, why = pillow(p)
            got, err = decode(qalign_bin, p, tmp_path)
            tag = f"{sname} / {kind}"
            if ref is None:
                if got is not None:
                    bad.append(f"{tag}: Pillow refuses ({why}), qalign decodes")
                else:
                    n["refused by both"] += 1
                continue
            if got is None:
                bad.append(f"{tag}: Pillow decodes, qalign refuses: {err}")
                continue
            if got.shape != ref.shape or (got != ref).any():
                bad.append(f"{tag}: {(got != ref).sum()} values differ from Pillow")
                continue
            n["exact"] += 1
            lines = err.splitlines()
            if lines:
                n["warned"] += 1
                if len(lines) != 1 or not lines[0].startswith("qalign: warning: "):
                    bad.append(f"{tag}: stderr {err!r}")
    report("jpeg corrupt entropy data: " + ", ".join(f"{v} {k}" for k, v in n.items()))
    assert not bad, "\n".join(bad[:20])
    assert n["exact"] >= 100 and n["warned"] >= 50, n


def test_end_of_file(qalign_bin, tmp_path):
    """Files that end early or badly after their scans. Pillow keeps a single-scan image whose
    rows libjpeg finished before asking for bytes past the end (then waiting for EOI in vain),
    and refuses the rest as truncated; qalign must agree on every file, with Pillow's pixels."""
    srcs = [("33x17", pillow_jpeg(33, 17, quality=80)), ("64x48", pillow_jpeg(64, 48, seed=1, quality=90)),
            ("320x240", pillow_jpeg(320, 240, seed=1, quality=90)),
            ("900x700 q95", pillow_jpeg(900, 700, seed=2, quality=95)),
            ("gray 200x100", pillow_jpeg(200, 100, "L", seed=3, quality=70)),
            ("progressive", pillow_jpeg(64, 48, seed=1, quality=90, progressive=True)),
            ("DRI 2", wjpeg(61, 47, S420, restart=2)), ("DRI 1 4:4:4", wjpeg(100, 60, S444, restart=1))]
    if shutil.which("cjpeg"):
        srcs += [("arithmetic", cjpeg(photo(61, 47, 8))),
                 ("arithmetic progressive", cjpeg(photo(61, 47, 8), "-progressive"))]
    n = {"both refuse": 0, "equal": 0}
    bad = []
    p = tmp_path / "e.jpg"
    for sn, data in srcs:
        variants = [(f"last {k} bytes cut", data[:-k]) for k in (1, 2, 3, 4, 6, 9, 15)]
        variants += [("EOI -> COM longer than the file", data[:-2] + b"\xff\xfe\x40\x00abc"),
                     ("EOI -> unknown marker", data[:-2] + b"\xff\x80"),
                     ("EOI -> junk bytes", data[:-2] + b"abcdefgh"),
                     ("EOI -> DHT cut short", data[:-2] + b"\xff\xc4\x00\x20\x00")]
        for vn, v in variants:
            p.write_bytes(v)
            ref, why = pillow(p)
            got, err = decode(qalign_bin, p, tmp_path)
            if ref is None and got is None:
                n["both refuse"] += 1
            elif ref is None:
                bad.append(f"{sn} / {vn}: Pillow refuses ({why}), qalign decodes")
            elif got is None:
                bad.append(f"{sn} / {vn}: Pillow decodes, qalign refuses: {err}")
            elif got.shape != ref.shape or (got != ref).any():
                bad.append(f"{sn} / {vn}: differs from Pillow")
            else:
                n["equal"] += 1
    report(f"jpeg ends of file: {n['equal']} decoded as Pillow, {n['both refuse']} refused by both")
    assert not bad, "\n".join(bad)
    assert n["equal"] >= 10 and n["both refuse"] >= 30, n


def with_dri(w, h, ri):
    return wjpeg(w, h, S420, seed=11, restart=ri)


def warn_cases():
    base = with_dri(64, 48, 2)
    s, e = entropy_span(base)
    mid = (s + e) // 2
    rst = [i for i in range(s, e) if base[i] == 0xFF and 0xD0 <= base[i + 1] <= 0xD7]
    b = bytearray(base)
    b[rst[3] + 1] = 0xD0 + ((b[rst[3] + 1] - 0xD0 + 4) & 7)  # a restart marker renumbered: resync
    renumbered = bytes(b)
    b = bytearray(base)
    del b[rst[2]:rst[2] + 2]                                   # one restart marker missing
    missing = bytes(b)
    return [
        ("bad Huffman code", base[:mid] + b"\xFF\x00\xFF\x00" + base[mid + 4:], "bad Huffman code"),
        ("scan cut short, EOI appended", base[:mid] + b"\xFF\xD9", "premature end of data segment"),
        ("garbage before EOI", base[:-2] + b"garbage" + base[-2:], "extraneous bytes before marker 0xD9"),
        ("restart marker renumbered", renumbered, "instead of RST"),
        ("restart marker missing", missing, "extraneous bytes before marker"),
    ]


@pytest.mark.parametrize("case", warn_cases(), ids=lambda c: c[0])
def test_corrupt_warning(case, qalign_bin, tmp_path):
    """Pixels equal to Pillow's; one warning line, the one libjpeg-turbo's djpeg prints first."""
    need("djpeg")
    name, data, words = case
    p = tmp_path / "w.jpg"
    p.write_bytes(data)
    ref, why = pillow(p)
    assert ref is not None, why
    got, err = decode(qalign_bin, p, tmp_path)
    assert got is not None, err
    assert (got == ref).all()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"qalign: warning: {p}: corrupt JPEG data: "), err
    assert words.lower() in lines[0].lower(), lines[0]
    dj = subprocess.run(["djpeg", "-pnm", str(p)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).stderr.decode()
    assert words.split()[0].lower() in dj.lower(), dj


def test_corrupt_hostile(qalign_san, tmp_path):
    """Corrupt variants under ASan + UBSan: a decode or one line, never a sanitizer report."""
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    rng = random.Random(7)
    p = tmp_path / "h.jpg"
    problems, n = [], 0
    for sname, data in corrupt_sources():
        for kind, var in corrupt_variants(rng, data)[:12]:
            p.write_bytes(var)
            r = run([qalign_san, "--decode", p, tmp_path / "h.ppm"], env=env)
            n += 1
            if "Sanitizer" in r.stderr or "runtime error" in r.stderr or r.returncode < 0:
                problems.append(f"{sname} / {kind}: {r.stderr[-2000:]}")
            elif len(r.stderr.strip().splitlines()) > 1:
                problems.append(f"{sname} / {kind}: {r.stderr!r}")
    report(f"jpeg corrupt variants under ASan+UBSan: {n} files, {len(problems)} problems")
    assert not problems, "\n".join(problems[:5])


def test_write_fuzz_seeds(ari):
    out = CORPUS / "fuzz_jpeg"
    out.mkdir(parents=True, exist_ok=True)
    picks = [p for name, p in ari if p.stat().st_size < 8000 and
             any(k in name for k in ("progressive 4:2:0", "restart 2B", "jpegtran CMYK", "DAC dc=82", "gray 17"))]
    for i, p in enumerate(picks[:12]):
        (out / f"seed_arith_{i}.jpg").write_bytes(p.read_bytes())
    assert len(picks) >= 6
    report(f"jpeg arithmetic fuzz seeds: {min(len(picks), 12)} files written to {out}")
