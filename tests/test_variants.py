"""The other x86 builds: scalar only (SCALAR), AVX2+FMA, AVX2 with AVX-VNNI, AVX-512 with VNNI
and BF16, with VNNI only (Ice Lake), and without either (Skylake-SP/X: -march=x86-64-v4).
Each is also the native form of one family of the portable build (run-time dispatch, `make`):
the portable qalign under QALIGN_KERNELS=<that family> must print the same bytes (and the AMX
family, whose int8 tiles give the AVX-512 VNNI family's bits, the AVX-512 build's).

`make` picks one kernel set for the build machine (-march=native); these builds make sure
the others are right too. Each variant this CPU can run is built, its kernel tests run,
and its qalign scores fixture records against the upstream reference (f32 file, 2e-4).
On quantised files it must agree with the native build within the accuracy bounds of
test_accuracy.py, on the well-conditioned synthetic model: not exactly, because int8
rounding turns last-bit float differences (a layernorm summed in another order) into
whole quantisation steps now and then."""
import json
import os
import platform

import numpy as np
import pytest

from conftest import EMULATED, HARDWARE, PYTHON, ROOT, TARGET, report, run, logits

FLAGS = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
NEEDS = {"scalar": [], "avx2": ["avx2", "fma"], "avx2vnni": ["avx2", "fma", "avx_vnni"],
         "avx512": ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"],
         "avx512vnni": ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni"],
         "avx512-novnni": ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"]}
# the portable build's family (QALIGN_KERNELS) that is each of these builds' kernels; the AMX
# family's int8 tiles give the AVX-512 VNNI family's bits, the rest is that family's code
FAMILY = {"scalar": ["scalar"], "avx2": ["avx2"], "avx2vnni": ["avx2-vnni"], "avx512": ["avx512-bf16", "amx"],
          "avx512vnni": ["avx512-vnni"], "avx512-novnni": ["avx512"]}
RECORDS = ["photo__quality", "gray__aesthetics", "video__quality"]
KERNELS = {"scalar": set(), "avx2": {"avx2"}, "avx2vnni": {"avx2", "avx-vnni"},   # kernel_names() beyond
           "avx512": {"avx512", "avx512-vnni", "avx512-bf16"}, "avx512vnni": {"avx512", "avx512-vnni"},
           "avx512-novnni": {"avx512"}}  # "scalar", "openmp"
# the weight types each build multiplies with SIMD tiles (test_kernels' "simd tiles:" line): every
# x86 family has int8 tiles, also AVX-512 without VNNI (vpmaddubsw) and AVX2 without AVX-VNNI
ALL = {"f32", "bf16", "q8_0", "q4_1", "q8_256", "q4_256"}
TILES = {"scalar": set(), "avx2": ALL, "avx2vnni": ALL, "avx512": ALL, "avx512vnni": ALL, "avx512-novnni": ALL}


def can_run(variant):
    return platform.machine() in ("x86_64", "AMD64") and all(f" {f}" in FLAGS for f in NEEDS[variant])


SCORE_BOUND = {"q8_0": 1.2e-2, "q4_1": 0.2, "q8_256": 2e-2, "q4_256": 0.1}   # test_accuracy.py, synthetic model


@pytest.fixture(scope="session")
def variant_models(tiny_ref, workdir, real_tokenizer):
    out = {}
    p = workdir / "variant_f32.qalign"
    r = run([PYTHON, ROOT / "export.py", "-q", tiny_ref / "checkpoint", p, "--dtype", "f32"])
    assert r.returncode == 0, r.stderr
    out["f32"] = p
    for dt in SCORE_BOUND:
        p = workdir / f"variant_syn_{dt}.qalign"
        r = run([PYTHON, ROOT / "export.py", "-q", "--synthetic", "tiny", "--seed", "3", "--tokenizer", real_tokenizer,
                 "--dtype", dt, p])
        assert r.returncode == 0, r.stderr
        out[dt] = p
    return out


@pytest.mark.parametrize("variant", sorted(NEEDS))
def test_variant_build(variant, tiny_ref, variant_models, qalign_bin, workdir):
    if EMULATED:
        pytest.skip(f"{TARGET or 'emulated'} run: the x86 variant builds are tested by the native suite")
    if not can_run(variant):
        pytest.skip(f"{HARDWARE}: this CPU ({platform.machine()}) cannot run the {variant} build")
    r = run(["make", "-C", ROOT, "-s", f"build/qalign-{variant}", f"build/test_kernels-{variant}"])
    assert r.returncode == 0, r.stdout + r.stderr
    k = run([ROOT / "build" / f"test_kernels-{variant}"])
    assert k.returncode == 0 and " 0 failed" in k.stdout, k.stdout
    compiled = k.stdout.splitlines()[0]
    assert set(compiled.split(":", 1)[1].split()) - {"scalar", "openmp"} == KERNELS[variant], compiled
    tiles = next(line for line in k.stdout.splitlines() if line.startswith("simd tiles:"))
    assert set(tiles.split(":", 1)[1].split()) - {"none"} == TILES[variant], tiles
    binary = ROOT / "build" / f"qalign-{variant}"
    refj = json.loads((tiny_ref / "reference.json").read_text())
    worst, same = 0.0, 0
    # the families of the portable build (make NATIVE=1 has none) that this CPU runs
    portable = "compile time" not in run([qalign_bin, "--info", variant_models["f32"]]).stdout
    families = [f for f in FAMILY[variant] if portable and run([qalign_bin, "--info", variant_models["f32"]],
                                                               env={**os.environ, "QALIGN_KERNELS": f}).returncode == 0]
    for name in RECORDS:
        rec = next(x for x in refj["records"] if x["name"] == name)
        files = [tiny_ref / f for f in rec["input_files"]]
        ppms = []
        for f in files:  # Pillow's decode as PPM: this test is about the model kernels
            from PIL import Image
            rgb = np.asarray(Image.open(f).convert("RGB"))
            p = workdir / f"var_{variant}_{f.stem}.ppm"
            p.write_bytes(b"P6 %d %d 255\n" % (rgb.shape[1], rgb.shape[0]) + rgb.tobytes())
            ppms.append(p)
        args = ["--json", "-t", rec["task"]] + (["--video"] if rec["input_kind"] == "video" else [])
        out = json.loads(run([binary, variant_models["f32"], *args, *ppms]).stdout)
        d = max(abs(a - b) for a, b in zip(logits(out), rec["level_logits"]))
        worst = max(worst, d)
        assert d <= 2e-4, (variant, name, d)
        for dt in SCORE_BOUND:
            a = json.loads(run([binary, variant_models[dt], *args, *ppms]).stdout)
            b = json.loads(run([qalign_bin, variant_models[dt], *args, *ppms]).stdout)
            assert abs(a["score"] - b["score"]) <= SCORE_BOUND[dt], (variant, dt, name, a["score"], b["score"])
        # the portable build running this build's family: the same output, bit for bit
        for fam in families:
            for dt in ["f32", *SCORE_BOUND]:
                a = run([binary, variant_models[dt], *args, *ppms])
                b = run([qalign_bin, variant_models[dt], *args, *ppms], env={**os.environ, "QALIGN_KERNELS": fam})
                assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
                assert a.stdout == b.stdout, (variant, fam, dt, name, a.stdout, b.stdout)
                same += 1
    report(f"variant {variant:13s} ({compiled}; {tiles}): kernel tests pass; fixture logits max |d| {worst:.1e}; "
           f"portable build with QALIGN_KERNELS={'/'.join(families) or '-'}: {same} outputs identical")
