"""Portability checks that run in the native suite (the cross targets' whole-suite runs are
tests/cross.sh, `make test-aarch64` etc.; PORTING.md).

1. Compilers: every source compiles without a warning (-Wall -Wextra -Werror, -std=c11
   -pedantic) under gcc and clang, with and without OpenMP, for x86-64 (scalar, AVX2,
   AVX-512), AArch64 (with and without dotprod), RISC-V 64, s390x and 32-bit ARM; the
   build without OpenMP scores the tiny model like the reference.
2. Big-endian (s390x under qemu-s390x): qalign refuses the little-endian model file with
   a one-line message, while the image decoders and the tokenizer, which read their
   formats byte by byte, give exactly the native results.
3. 32-bit (armhf under qemu-arm): the tiny model scores the fixtures within 2e-4, and a
   model larger than the address space is refused with a clear message.
Each part skips (saying which package is missing) where its cross compiler or qemu is not
installed; .ci/run installs them. None of this runs inside an emulated run itself.
"""
import json
import os
import shutil
import struct

import numpy as np
import pytest

from conftest import EMULATED, PYTHON, ROOT, TARGET, report, run, logits

SRCS = ["qalign.c", "platform.c", "kernels.c", "kernels_family.c", "tokenizer.c", "bpe.c", "image.c", "image_bmp.c",
        "image_png.c", "image_jpeg.c", "image_jpeg_scan.c", "image_jpeg_enc.c", "image_qwen.c", "app_util.c", "inputs.c",
        "video.c", "results.c", "evaluate.c", "report.c",
        "progress.c", "sink.c", "cli.c", "options.c",
        "serve.c", "serve_http.c", "serve_parse.c", "examples/score.c"]
BINARY_SRCS = [s for s in SRCS if not s.startswith("examples/")]   # what ./qalign is made of
STD = ["-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Wno-unused-parameter"]
OUT = ROOT / "build" / "portability"

if EMULATED:
    pytest.skip(f"{TARGET or 'emulated'} run: the portability checks drive their own cross builds "
                "and run in the native suite", allow_module_level=True)

# name: (compiler command, flags, Debian package of the compiler)
CONFIGS = {
    "gcc-x86-64-scalar-noomp": (["gcc"], ["-O1"], "gcc"),
    "gcc-avx2-omp": (["gcc"], ["-O1", "-march=x86-64-v3", "-fopenmp"], "gcc"),
    "gcc-avx512-noomp": (["gcc"], ["-O1", "-march=x86-64-v4", "-mavx512vnni", "-mavx512bf16"], "gcc"),
    "clang-x86-64-scalar-noomp": (["clang"], ["-O0"], "clang"),
    "clang-avx2vnni-omp": (["clang"], ["-O0", "-march=x86-64-v3", "-mavxvnni", "-fopenmp"], "clang"),
    "clang-avx512-omp": (["clang"], ["-O0", "-march=x86-64-v4", "-mavx512vnni", "-mavx512bf16", "-fopenmp"], "clang"),
    # the portable build's dispatcher and its AMX family (kernels_family.c with the AMX flags)
    "gcc-dispatch-amx-omp": (["gcc"], ["-O1", "-DQA_DISPATCH", "-march=x86-64-v4", "-mavx512vnni", "-mavx512bf16",
                                       "-mamx-tile", "-mamx-int8", "-mamx-bf16", "-fopenmp"], "gcc"),
    "clang-dispatch-amx-noomp": (["clang"], ["-O0", "-DQA_DISPATCH", "-march=x86-64-v4", "-mavx512vnni", "-mavx512bf16",
                                             "-mamx-tile", "-mamx-int8", "-mamx-bf16"], "clang"),
    "gcc-aarch64-dotprod-omp": (["aarch64-linux-gnu-gcc"], ["-O1", "-march=armv8.2-a+dotprod", "-fopenmp"],
                                "gcc-aarch64-linux-gnu"),
    "clang-aarch64-noomp": (["clang", "--target=aarch64-linux-gnu"], ["-O0"], "gcc-aarch64-linux-gnu"),
    "clang-aarch64-dotprod-omp": (["clang", "--target=aarch64-linux-gnu"], ["-O0", "-march=armv8.2-a+dotprod", "-fopenmp"],
                                  "gcc-aarch64-linux-gnu"),
    "gcc-riscv64-noomp": (["riscv64-linux-gnu-gcc"], ["-O1"], "gcc-riscv64-linux-gnu"),
    "gcc-s390x-omp": (["s390x-linux-gnu-gcc"], ["-O1", "-fopenmp"], "gcc-s390x-linux-gnu"),
    "gcc-armhf-noomp": (["arm-linux-gnueabihf-gcc"], ["-O1", "-D_FILE_OFFSET_BITS=64"], "gcc-arm-linux-gnueabihf"),
}

S390X = {"cc": "s390x-linux-gnu-gcc", "qemu": ["qemu-s390x", "-L", "/usr/s390x-linux-gnu"],
         "pkgs": "gcc-s390x-linux-gnu libc6-dev-s390x-cross qemu-user"}
ARMHF = {"cc": "arm-linux-gnueabihf-gcc", "qemu": ["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"],
         "pkgs": "gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user"}


def need(*tools, pkgs):
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"{t} not installed (Debian: apt-get install {pkgs})")


def cross_build(t, name, flags, sources):
    need(t["cc"], t["qemu"][0], pkgs=t["pkgs"])
    exe = OUT / name
    exe.parent.mkdir(parents=True, exist_ok=True)
    r = run([t["cc"], *STD, "-O2", *flags, "-I", ROOT, "-o", exe, *[ROOT / s for s in sources], "-lm", "-lpthread"])
    assert r.returncode == 0, r.stderr
    return exe


# ---- 1. compilers ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_compiles_without_warnings(name):
    cc, flags, pkg = CONFIGS[name]
    need(cc[0], pkgs=pkg)
    if "--target=aarch64-linux-gnu" in cc:
        need("aarch64-linux-gnu-gcc", pkgs=pkg)   # clang uses its headers and libraries
    errors = []
    for src in SRCS:
        r = run([*cc, *STD, "-pedantic", "-Werror", *flags, "-I", ROOT, "-c", "-o", os.devnull, ROOT / src])
        if r.returncode != 0:
            errors.append(f"{src}:\n{r.stderr[-3000:]}")
    assert not errors, f"{' '.join(cc + flags)}:\n" + "\n".join(errors)


@pytest.fixture(scope="session")
def tiny_f32(tiny_ref, workdir):
    p = workdir / "portability_f32.qalign"
    if not p.exists():
        r = run([PYTHON, ROOT / "export.py", "-q", tiny_ref / "checkpoint", p, "--dtype", "f32"])
        assert r.returncode == 0, r.stderr
    return p


RECORDS = ["photo__quality", "alpha__aesthetics", "video__quality"]


def check_records(cmd, model, tiny_ref):
    """Score RECORDS with cmd (a binary, maybe behind an emulator); worst |d| of the level
    logits against the fixtures."""
    refj = json.loads((tiny_ref / "reference.json").read_text())
    worst = 0.0
    for name in RECORDS:
        rec = next(x for x in refj["records"] if x["name"] == name)
        args = ["--json", "-t", rec["task"]] + (["--video"] if rec["input_kind"] == "video" else [])
        r = run([*cmd, model, *args, *[tiny_ref / f for f in rec["input_files"]]])
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        d = max(abs(a - b) for a, b in zip(logits(out), rec["level_logits"]))
        assert d <= 2e-4, (name, logits(out), rec["level_logits"])
        worst = max(worst, d)
    return worst


def test_build_without_openmp(tiny_ref, tiny_f32):
    """The single-threaded build (no -fopenmp: the pragmas are ignored) scores the fixtures."""
    exe = OUT / "qalign-noomp"
    exe.parent.mkdir(parents=True, exist_ok=True)
    r = run(["cc", *STD, "-Werror", "-O2", "-march=native", "-I", ROOT, "-o", exe, *[ROOT / s for s in BINARY_SRCS],
             "-lm", "-lpthread"])
    assert r.returncode == 0, r.stderr
    assert "openmp" not in run([exe, "--timings", tiny_f32, tiny_ref / "inputs" / "photo.jpg"]).stderr
    worst = check_records([exe], tiny_f32, tiny_ref)
    report(f"portability: build without OpenMP: fixture logits max |d| {worst:.1e}")


# ---- 2. big-endian -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def s390x_qalign():
    return cross_build(S390X, "s390x/qalign", [], BINARY_SRCS)


def test_big_endian_host_refuses_model(s390x_qalign, tiny_f32, tiny_ref):
    r = run([*S390X["qemu"], s390x_qalign, tiny_f32, tiny_ref / "inputs" / "photo.jpg"])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, (r.returncode, r.stderr)
    assert "big-endian" in lines[0] and "little-endian" in lines[0], lines[0]
    report(f"portability: s390x (big-endian) refuses the model: {lines[0]}")


def bmp16(w, h, rng):
    """A 16-bit BI_RGB (5-5-5, little-endian) BMP, bottom-up; and its pixels as RGB."""
    px = rng.integers(0, 1 << 15, size=(h, w), dtype=np.uint16)
    stride = (2 * w + 3) // 4 * 4
    rows = b"".join(px[y].astype("<u2").tobytes().ljust(stride, b"\0") for y in range(h - 1, -1, -1))
    head = struct.pack("<2sIHHI", b"BM", 54 + len(rows), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 16, 0, len(rows), 2835, 2835, 0, 0)
    return head + info + rows


def endian_images(tiny_ref, d):
    """Image files whose formats have multi-byte fields: 16-bit samples (PNG, PNM, BMP),
    little-endian BMP headers, JPEG markers, and the fixture inputs."""
    from PIL import Image
    rng = np.random.default_rng(6)
    files = sorted(p for p in (tiny_ref / "inputs").iterdir() if p.suffix in (".jpg", ".png"))
    rgb = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    g16 = rng.integers(0, 65536, size=(29, 41), dtype=np.uint16)
    Image.fromarray(rgb).save(d / "rgb.png")
    Image.fromarray(g16.astype(np.int32)).convert("I;16").save(d / "gray16.png")
    Image.fromarray(rgb).convert("RGBA").save(d / "rgba.png")
    Image.fromarray(rgb).save(d / "rgb24.bmp")
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(d / "pal8.bmp")
    Image.fromarray(rgb).save(d / "q.jpg", quality=80)
    Image.fromarray(rgb).save(d / "p.jpg", quality=70, progressive=True, subsampling=2)
    (d / "rgb16.ppm").write_bytes(b"P6\n53 37\n65535\n" + rng.integers(0, 65536, size=(37, 53, 3)).astype(">u2").tobytes())
    (d / "gray16.pgm").write_bytes(b"P5 41 29 65535\n" + g16.astype(">u2").tobytes())
    (d / "bgr555.bmp").write_bytes(bmp16(31, 17, rng))
    return files + sorted(d.iterdir())


def test_big_endian_decoders_match_native(s390x_qalign, qalign_bin, tiny_ref, workdir):
    d = workdir / "endian_images"
    d.mkdir(exist_ok=True)
    files = endian_images(tiny_ref, d)
    same = 0
    for f in files:
        a, b = workdir / "endian_native.ppm", workdir / "endian_s390x.ppm"
        ra = run([qalign_bin, "--decode", f, a])
        rb = run([*S390X["qemu"], s390x_qalign, "--decode", f, b])
        assert ra.returncode == 0, (f, ra.stderr)
        assert rb.returncode == 0, (f, rb.stderr)
        assert a.read_bytes() == b.read_bytes(), f"{f.name}: s390x decode differs from the native one"
        same += 1
    report(f"portability: s390x (big-endian) decodes {same} images (PNG 8/16-bit, BMP 8/16/24-bit, "
           f"PNM 16-bit, JPEG) byte-identical to x86-64")


def test_big_endian_tokenizer_matches_native(real_tokenizer, workdir):
    import spm
    from test_tokenizer import make_strings, to_bytes, write_vocab
    src = ["tests/tok_driver.c", "tokenizer.c"]
    exe = cross_build(S390X, "s390x/tok_driver", ["-Werror"], src)
    native = OUT / "tok_driver_native"
    r = run(["cc", *STD, "-Werror", "-O2", "-I", ROOT, "-o", native, *[ROOT / s for s in src]])
    assert r.returncode == 0, r.stderr
    vocab = write_vocab(spm.load(real_tokenizer), workdir / "endian.tokvocab")
    strings = make_strings(11, 400, 100, fixed_and_long=False)
    data = b"".join(struct.pack("<II", mode, len(to_bytes(s))) + to_bytes(s) for s in strings for mode in (1, 2))
    a = run([native, vocab], input=data, text=False)
    b = run([*S390X["qemu"], exe, vocab], input=data, text=False)
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout.count(b"\n") == 2 * len(strings)
    assert a.stdout == b.stdout, "s390x tokenizer ids differ from the native ones"
    report(f"portability: s390x (big-endian) tokenizer gives the native ids for {2 * len(strings)} cases")



def test_big_endian_bpe_matches_native(workdir):
    """bpe.c (Qwen3.5's byte-level BPE) on s390x: the same ids, decodes, NFC and splits as
    native for the test tokenizer (the blob is little-endian on every host)."""
    import export
    from test_bpe import TOK_CONFIG, TOK_JSON, make_strings
    import random
    src = ["tests/bpe_driver.c"]
    exe = cross_build(S390X, "s390x/bpe_driver", ["-Werror", "-Wno-unused-function"], src)
    native = OUT / "bpe_driver_native"
    r = run(["cc", *STD, "-Werror", "-Wno-unused-function", "-O2", "-I", ROOT, "-o", native, *[ROOT / s for s in src]])
    assert r.returncode == 0, r.stderr
    blob = workdir / "endian.bpe"
    blob.write_bytes(export.bpe_blob_from_tokenizer_json(TOK_JSON, TOK_CONFIG))
    strings = [s.encode() for s in make_strings(600, random.Random(7))]
    rng = random.Random(8)
    recs = [(m, s) for s in strings for m in (0, 1, 4, 5)]
    recs += [(2, struct.pack(f"<{k}I", *[rng.randrange(4100) for _ in range(k)])) for k in range(60)]
    data = b"".join(struct.pack("<II", mode, len(b)) + b for mode, b in recs)
    a = run([native, blob], input=data, text=False)
    b = run([*S390X["qemu"], exe, blob], input=data, text=False)
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout.count(b"\n") == len(recs)
    assert a.stdout == b.stdout, "s390x byte-level BPE output differs from the native one"
    report(f"portability: s390x (big-endian) byte-level BPE gives the native output for {len(recs)} cases")

# ---- 3. 32-bit ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def armhf_qalign():
    return cross_build(ARMHF, "armhf/qalign", ["-D_FILE_OFFSET_BITS=64"], BINARY_SRCS)


def test_32bit_scores_fixtures(armhf_qalign, tiny_f32, tiny_ref):
    worst = check_records(ARMHF["qemu"] + [armhf_qalign], tiny_f32, tiny_ref)
    report(f"portability: armhf (32-bit) tiny model: fixture logits max |d| {worst:.1e}")


def test_32bit_refuses_model_beyond_address_space(armhf_qalign, tiny_ref, workdir):
    big = workdir / "five_gib.qalign"
    with open(big, "wb") as f:   # sparse: no disk space used
        f.truncate(5 << 30)
    try:
        r = run([*ARMHF["qemu"], armhf_qalign, big, tiny_ref / "inputs" / "photo.jpg"])
    finally:
        big.unlink()
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, (r.returncode, r.stderr)
    assert "address space" in lines[0], lines[0]
    report(f"portability: armhf (32-bit) refuses a 5 GiB model: {lines[0]}")


def test_switching_build_flavour_rebuilds(tmp_path):
    """`make NATIVE=1` then `make` (and back) in one tree rebuilds: the flavour (compiler,
    flags, kernel families) is a dependency of every object ($(OBJ)/flavour), so objects of
    the other flavour are never linked in. In a copy of the sources, one small object."""
    need_make = shutil.which("make") and shutil.which(os.environ.get("CC", "cc"))
    if not need_make:
        pytest.skip("make or cc not installed (Debian: apt-get install make gcc)")
    for p in ROOT.iterdir():
        if p.suffix in (".c", ".h", ".map") or p.name in ("Makefile", "kernels"):
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp_path / p.name)
    env = {k: v for k, v in os.environ.items() if k not in ("CFLAGS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    obj = "build/obj/kernels.o"

    def make(*args):
        return run(["nice", "make", "-C", tmp_path, "-s", *args], env=env)

    def up_to_date(*args):  # make -q: 0 up to date, 1 would rebuild
        return make("-q", *args, obj).returncode == 0

    assert make("NATIVE=1", obj).returncode == 0
    assert up_to_date("NATIVE=1")
    assert not up_to_date(), "the portable build would link the NATIVE=1 object"
    assert make(obj).returncode == 0
    assert up_to_date()
    assert not up_to_date("NATIVE=1"), "NATIVE=1 would link the portable object"
    assert make("NATIVE=1", obj).returncode == 0 and up_to_date("NATIVE=1")
    # a bare `make` (the README's build step) still means `all`: the stamp's rule must not
    # become the default goal (it did once: `make` then built nothing)
    # (the copy has no examples/, so `all` stops after qalign's line: the line is what counts)
    dry = make("-n", "NATIVE=1")
    assert "-o qalign " in dry.stdout, "bare `make` does not build qalign:\n" + dry.stdout[-2000:] + dry.stderr[-500:]
    report("portability: switching between NATIVE=1 and the portable build rebuilds (build/obj/flavour); bare make builds all")
