"""Runs build/test_kernels (tests/test_kernels.c): every SIMD kernel against its scalar
reference on random data, thread-count determinism, and the activation quantiser."""
from conftest import ROOT, report, run


def test_kernels_against_reference():
    r = run(["make", "-C", ROOT, "-s", "build/test_kernels"])
    assert r.returncode == 0, r.stdout + r.stderr
    r = run([ROOT / "build" / "test_kernels"])
    for line in r.stdout.splitlines():
        if line.startswith(("kernels compiled", "FAIL")) or line.endswith(("passed, 0 failed",)):
            report("kernels: " + line)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout
