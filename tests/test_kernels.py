"""Runs build/test_kernels (tests/test_kernels.c): every SIMD kernel against its scalar
reference on random data, thread-count determinism, and the activation quantiser.

The kernels compiled in are reported; with QALIGN_EXPECT_KERNELS set (the cross runs,
tests/cross.sh) they must be exactly those, so that e.g. a NEON build that silently fell
back to the scalar kernels, or a "no dotprod" build that uses sdot, fails. With
QALIGN_RUNNER_LACKING (an emulated CPU without the extension the build targets, e.g. a
Cortex-A72 for the sdot build) the kernel tests must die of an illegal instruction there:
the extension's instructions are really in the kernels."""
import os
import shlex
import signal

from conftest import EMULATED, ROOT, RUNNER, TARGET, report, run

GENERIC = {"scalar", "openmp"}   # not SIMD kernel sets


def test_kernels_against_reference():
    r = run(["make", "-C", ROOT, "-s", "build/test_kernels"])
    assert r.returncode == 0, r.stdout + r.stderr
    r = run([ROOT / "build" / "test_kernels"])
    for line in r.stdout.splitlines():
        if line.startswith(("kernels compiled", "FAIL")) or line.endswith(("passed, 0 failed",)):
            report(("kernels: " if not TARGET else f"kernels ({TARGET}): ") + line)
    if EMULATED:
        report(f"kernels: emulated run, binaries started through: {' '.join(RUNNER)}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout
    expect = os.environ.get("QALIGN_EXPECT_KERNELS")
    if expect is not None:
        line = r.stdout.splitlines()[0]
        assert line.startswith("kernels compiled in: "), line
        compiled = set(line.split(":", 1)[1].split()) - GENERIC
        wanted = set(expect.split()) - {"none"}
        assert compiled == wanted, f"kernels compiled in {sorted(compiled)}, expected {sorted(wanted)}"
    lacking = shlex.split(os.environ.get("QALIGN_RUNNER_LACKING", ""))
    if lacking:
        r = run([*lacking, ROOT / "build" / "test_kernels"])
        assert r.returncode == -signal.SIGILL, (f"expected SIGILL on {' '.join(lacking)}, got exit {r.returncode}:\n"
                                                 + r.stdout[-2000:] + r.stderr[-2000:])
        report(f"kernels ({TARGET}): an illegal instruction on {' '.join(lacking)}, as it should be")
