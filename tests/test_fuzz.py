"""libFuzzer smoke runs: every fuzz/fuzz_*.c harness (ASan + UBSan) for QALIGN_FUZZ_SECONDS
(default 10; .ci/run uses 30): the image decoders, the server's HTTP request parser and its JSON
request parser. Seeded with the corpora the image tests write to build/corpus (when they ran
first), the seeds in fuzz/corpus/<harness> and the fixture images. A crash, leak, timeout or sanitizer report
fails the test; the executions per harness are printed."""
import os
import re
import shutil

import pytest

from conftest import CORPUS, REFERENCE, ROOT, report, run

SECONDS = int(os.environ.get("QALIGN_FUZZ_SECONDS", "10"))
HARNESSES = sorted(p.stem for p in (ROOT / "fuzz").glob("fuzz_*.c"))


@pytest.fixture(scope="session")
def fuzzers():
    if not shutil.which("clang"):
        pytest.skip("clang is not installed (apt-get install clang libclang-rt-14-dev)")
    r = run(["make", "-C", ROOT, "-s", "fuzz-build"])
    if r.returncode != 0 and "fuzzer" in (r.stdout + r.stderr):
        pytest.skip("clang has no libFuzzer runtime (apt-get install libclang-rt-14-dev)")
    assert r.returncode == 0, r.stdout + r.stderr
    return ROOT / "build"


@pytest.mark.parametrize("name", HARNESSES)
def test_fuzz_smoke(name, fuzzers, workdir):
    corpus = workdir / f"corpus_{name}"
    corpus.mkdir()
    for seeds in (CORPUS / name, ROOT / "fuzz" / "corpus" / name):   # written by the tests; kept in the repository
        if seeds.is_dir():
            for f in sorted(seeds.iterdir())[:200]:
                shutil.copy(f, corpus / f.name)
    inputs = REFERENCE / "tiny" / "inputs"
    if inputs.is_dir():
        for f in inputs.iterdir():
            if f.suffix in (".jpg", ".png"):
                shutil.copy(f, corpus / f.name)
    r = run([fuzzers / name, f"-max_total_time={SECONDS}", "-rss_limit_mb=4096", "-malloc_limit_mb=2048",
             "-timeout=20", "-print_final_stats=1", corpus], cwd=workdir)
    out = r.stdout + r.stderr
    execs = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
    assert r.returncode == 0, out[-3000:]
    assert "ERROR: AddressSanitizer" not in out and "runtime error" not in out, out[-3000:]
    report(f"fuzz {name}: {execs.group(1) if execs else '?'} executions in {SECONDS} s, no crash")
