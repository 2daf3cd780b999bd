"""The library (qalign.h) and the shape of the code around it.

  * build/test_api (tests/test_api.c, linked with libqalign.a only): batches, add/flush,
    videos, several contexts on one model in several threads, every documented error;
  * build/test_model (tests/test_model.c): the decoder's fast path (batches, prefix cache,
    last-row shortcut, MLP chunks) against a naive one-sequence twin;
  * examples/score prints the CLI's first column, linked statically and against libqalign.so;
  * the layout the README and PORTING.md describe: qalign.c has no intrinsics and no main,
    and reaches the model's forward passes in its first half; the command line, the server
    (serve.c; its parsers in serve_parse.c need nothing but serve.h and common.h's helpers) and the example include
    the public headers only.
"""
import re

import pytest

from conftest import PYTHON, ROOT, report, run

IMAGES = ["photo.jpg", "gray.jpg", "alpha.png", "progressive.jpg"]


@pytest.fixture(scope="module")
def tiny_f32(tiny_ref, workdir):
    p = workdir / "library_f32.qalign"
    r = run([PYTHON, ROOT / "export.py", "-q", tiny_ref / "checkpoint", p, "--dtype", "f32"])
    assert r.returncode == 0, r.stderr
    return p


def built(target):
    r = run(["make", "-C", ROOT, "-s", target])
    assert r.returncode == 0, r.stdout + r.stderr
    return ROOT / target


def checks(r, name):
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[-1].endswith(" 0 failed"), r.stdout + r.stderr
    fails = [line for line in lines if line.startswith("FAIL")]
    assert not fails, fails
    report(f"library: {name}: {lines[-1]}")
    return lines


def test_api(tiny_f32, tiny_ref):
    exe = built("build/test_api")
    checks(run([exe, tiny_f32, *[tiny_ref / "inputs" / i for i in IMAGES]]), "test_api (qalign.h only)")


def test_decoder_against_naive_twin(tiny_f32, tiny_ref):
    exe = built("build/test_model")
    lines = checks(run([exe, tiny_f32, *[tiny_ref / "inputs" / i for i in IMAGES[:3]]]), "test_model")
    worst = max(float(x) for line in lines for x in re.findall(r"level logits ([0-9.e+-]+)", line))
    report(f"library: decoder fast path vs naive twin: level logits within {worst:.1e}")


def test_example_prints_the_cli_score(tiny_f32, tiny_ref, qalign_bin):
    exe = built("examples/score")
    so = built("libqalign.so")
    dyn = ROOT / "build" / "score_dynamic"
    r = run(["cc", "-O2", "-I", ROOT, "-o", dyn, ROOT / "examples" / "score.c", f"-L{ROOT}", "-lqalign", "-lm"])
    assert r.returncode == 0, r.stderr
    env = {"LD_LIBRARY_PATH": str(so.parent), "OMP_WAIT_POLICY": "PASSIVE"}
    for name in IMAGES:
        img = tiny_ref / "inputs" / name
        cli = run([qalign_bin, tiny_f32, img])
        assert cli.returncode == 0, cli.stderr
        want = cli.stdout.split()[0]
        for prog in (exe, dyn):
            r = run([prog, tiny_f32, img], env=env)
            assert r.returncode == 0 and r.stdout == want + "\n", (prog, r.stdout, r.stderr, want)
    r = run([exe, tiny_f32, ROOT / "README.md"])
    assert r.returncode == 1 and "README.md" in r.stderr
    assert len((ROOT / "examples" / "score.c").read_text().splitlines()) <= 60
    report(f"library: examples/score (static and libqalign.so) = qalign's first column on {len(IMAGES)} images")


def test_code_layout():
    q = (ROOT / "qalign.c").read_text()
    code = re.sub(r"/\*.*?\*/", "", q, flags=re.S)
    assert not re.search(r"_mm\d*_|__m\d+|\bv[a-z]+q_[a-z0-9_]+\(|immintrin|arm_neon", code), "qalign.c has intrinsics"
    assert not re.search(r"\bint\s+main\s*\(", code), "qalign.c has a main()"
    lines = q.splitlines()
    half = len(lines) // 2
    for fn in ("vision_forward", "abstractor_forward", "decoder_layer", "decoder_forward", "score_batch"):
        at = next(i for i, line in enumerate(lines) if re.match(rf"static \w+ {fn}\(", line))
        assert at < half, f"{fn} starts at line {at + 1} of {len(lines)}"
    for src, allowed in (("cli.c", {"app.h", "image.h", "options.h", "qalign.h", "serve.h"}),
                         ("options.c", {"options.h", "common.h", "image.h", "qalign.h", "video.h"}),
                         ("options.h", {"serve.h", "sink.h"}), ("examples/score.c", {"image.h", "qalign.h"}),
                         ("serve.c", {"inputs.h", "results.h", "common.h", "image.h", "qalign.h", "serve.h", "serve_state.h"}),
                         ("serve_http.c", {"serve_state.h"}),
                         ("serve_state.h", {"common.h", "qalign.h", "results.h", "serve.h"}),
                         ("serve_parse.c", {"common.h", "serve.h"}),
                         ("serve.h", {"qalign.h"})):
        inc = set(re.findall(r'#include "([^"]+)"', (ROOT / src).read_text()))
        assert inc <= allowed, f"{src} includes {sorted(inc - allowed)}"
    fam = sorted(p.name for p in (ROOT / "kernels").glob("*.h"))
    report(f"library: qalign.c {len(lines)} lines, no intrinsics, forward passes before line {half}; "
           f"kernel families: {', '.join(fam)}")
