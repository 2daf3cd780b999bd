"""The other x86 builds: scalar only (SCALAR), AVX2+FMA, AVX2 with AVX-VNNI, AVX-512 with VNNI
and BF16, with VNNI only (Ice Lake), and without either (Skylake-SP/X: -march=x86-64-v4).
Each is also the native form of one family of the portable build (run-time dispatch, `make`):
the portable qalign under QALIGN_KERNELS=<that family> must print the same bytes. The AMX
family's int8 tiles give the AVX-512 VNNI family's bits, but its ViT attention runs on the tile
unit (kernels/amx_attention.h: bf16 products, f32 sums in the unit's order): it prints the
AVX-512 build's bytes for f32 files and with --precise (no bf16 attention there), and otherwise
must agree with the f32 file of the same weights within test_accuracy.py's bounds for the type.

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
from test_accuracy import BOUNDS as ACCURACY_BOUNDS

FLAGS = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
NEEDS = {"scalar": [], "avx2": ["avx2", "fma"], "avx2vnni": ["avx2", "fma", "avx_vnni"],
         "avx512": ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"],
         "avx512vnni": ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni"],
         "avx512-novnni": ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"]}
# the portable build's family (QALIGN_KERNELS) that is each of these builds' kernels; the AMX
# family's int8 tiles give the AVX-512 VNNI family's bits, the rest is that family's code
# except the ViT attention of UNIT_ATTENTION's families (bf16 on a matrix unit, not bit for bit)
FAMILY = {"scalar": ["scalar"], "avx2": ["avx2"], "avx2vnni": ["avx2-vnni"], "avx512": ["avx512-bf16", "amx"],
          "avx512vnni": ["avx512-vnni"], "avx512-novnni": ["avx512"]}
UNIT_ATTENTION = {"amx"}
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


# (level-logit bound, score bound) vs the f32 file: test_accuracy.py's, synthetic model
BOUNDS = {dt: ACCURACY_BOUNDS["synthetic"][dt] for dt in ("q8_0", "q4_1", "q8_256", "q4_256")}
SCORE_BOUND = {dt: b[1] for dt, b in BOUNDS.items()}


@pytest.fixture(scope="session")
def variant_models(tiny_ref, workdir, real_tokenizer):
    out = {}
    p = workdir / "variant_f32.qalign"
    r = run([PYTHON, ROOT / "export.py", "-q", tiny_ref / "checkpoint", p, "--dtype", "f32"])
    assert r.returncode == 0, r.stderr
    out["f32"] = p
    for dt in ["f32", *SCORE_BOUND]:
        p = workdir / f"variant_syn_{dt}.qalign"
        r = run([PYTHON, ROOT / "export.py", "-q", "--synthetic", "tiny", "--seed", "3", "--tokenizer", real_tokenizer,
                 "--dtype", dt, p])
        assert r.returncode == 0, r.stderr
        out[dt if dt != "f32" else "syn_f32"] = p
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
    worst, same, unit_err = 0.0, 0, {}
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
        # the portable build running this build's family: the same output, bit for bit (for a
        # family with the ViT attention on a matrix unit: with --precise, and f32 files)
        for fam in families:
            env = {**os.environ, "QALIGN_KERNELS": fam}
            unit = fam in UNIT_ATTENTION
            for dt in ["f32", *SCORE_BOUND]:
                mode = ["--precise"] if unit and dt != "f32" else []
                a = run([binary, variant_models[dt], *args, *mode, *ppms])
                b = run([qalign_bin, variant_models[dt], *args, *mode, *ppms], env=env)
                assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
                assert a.stdout == b.stdout, (variant, fam, dt, name, mode, a.stdout, b.stdout)
                same += 1
            if unit:  # its own bf16 ViT attention: within test_accuracy's bounds of the f32 file
                ref = json.loads(run([qalign_bin, variant_models["syn_f32"], *args, *ppms], env=env).stdout)
                for dt in SCORE_BOUND:
                    got = json.loads(run([qalign_bin, variant_models[dt], *args, *ppms], env=env).stdout)
                    el = max(abs(x - y) for x, y in zip(logits(got), logits(ref)))
                    es = abs(got["score"] - ref["score"])
                    unit_err[dt] = max(unit_err.get(dt, (0, 0))[0], el), max(unit_err.get(dt, (0, 0))[1], es)
                    assert el <= BOUNDS[dt][0] and es <= BOUNDS[dt][1], (fam, dt, name, el, es, BOUNDS[dt])
    report(f"variant {variant:13s} ({compiled}; {tiles}): kernel tests pass; fixture logits max |d| {worst:.1e}; "
           f"portable build with QALIGN_KERNELS={'/'.join(families) or '-'}: {same} outputs identical" +
           "".join(f"; {'/'.join(sorted(UNIT_ATTENTION & set(families)))} (unit ViT attention) vs f32 {dt}: level "
                   f"logits {e[0]:.1e} (bound {BOUNDS[dt][0]}), score {e[1]:.1e} (bound {BOUNDS[dt][1]})"
                   for dt, e in unit_err.items()))
