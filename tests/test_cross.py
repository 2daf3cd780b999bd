"""The suite's target-dependent part on other CPUs, under qemu-user: `tests/cross.sh TARGET
quick` for AArch64 with NEON + sdot, AArch64 NEON without the dot-product extension, and
RISC-V 64 (scalar kernels). Each builds qalign and the test drivers with the target's cross
compiler (in build/cross/TARGET/) and runs, every target binary under qemu: the kernel
tests (the kernel set compiled in must be exactly the expected one), every fixture record
and stage, the weight types' accuracy bounds, other model shapes, the model file and CLI
checks, the tokenizer against sentencepiece, and the image fixtures' decode and resize.
The whole suite under emulation is `make test-aarch64` / `make test-riscv64` (PORTING.md).

Skipped, saying why, where a cross compiler or qemu is missing (.ci/run installs them) or
when QALIGN_SKIP_CROSS is set."""
import os
import shutil

import pytest

from conftest import EMULATED, ROOT, TARGET, report, run

TARGETS = {"aarch64": ("aarch64-linux-gnu-gcc", "qemu-aarch64", "gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"),
           "aarch64-nodot": ("aarch64-linux-gnu-gcc", "qemu-aarch64", "gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"),
           "riscv64": ("riscv64-linux-gnu-gcc", "qemu-riscv64", "gcc-riscv64-linux-gnu libc6-dev-riscv64-cross qemu-user")}


@pytest.mark.parametrize("target", list(TARGETS))
def test_cross_target(target):
    if EMULATED:
        pytest.skip(f"{TARGET} run: the cross runs are started from the native suite")
    if os.environ.get("QALIGN_SKIP_CROSS"):
        pytest.skip("QALIGN_SKIP_CROSS is set")
    cc, qemu, pkgs = TARGETS[target]
    for tool in (cc, qemu):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian: apt-get install {pkgs})")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "QALIGN_BIN", "QALIGN_TEST_APP"))}
    tmp = ROOT / "build" / "cross" / target / "tmp"   # the inner run's scratch (models, images)
    env["PYTEST_ADDOPTS"] = f"-p no:cacheprovider --basetemp={tmp}"
    r = run(["bash", ROOT / "tests" / "cross.sh", target, "quick"], env=env)
    out = r.stdout.splitlines()
    kernels = next((line.split(": ", 1)[1] for line in out if "kernels compiled in" in line), "?")
    summary = out[-1] if out else ""
    report(f"cross {target:13s} (qemu): {summary.strip('= ')}; {kernels}")
    assert r.returncode == 0 and " failed" not in summary, "\n".join(out[-80:]) + r.stderr[-3000:]
    shutil.rmtree(tmp, ignore_errors=True)   # kept when the run failed
