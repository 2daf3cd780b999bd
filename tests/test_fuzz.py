"""libFuzzer smoke runs: every fuzz/fuzz_*.c harness (ASan + UBSan) for QALIGN_FUZZ_SECONDS
(default 10; .ci/run uses 20): the image decoders, the server's HTTP and JSON request parsers,
the model loader (fuzz_model), the CSV/JSONL reader --resume relies on (fuzz_results) and
Qwen3.5's byte-level BPE tokenizer (fuzz_bpe).
Seeded with the corpora the image tests write to build/corpus (when they ran first), the seeds
in fuzz/corpus/<harness>, the fixture images, and what this file makes: micro models in every
weight type for fuzz_model, and CSV/JSONL result files that qalign wrote for fuzz_results. A
crash, leak, timeout, sanitizer report or broken contract (the harnesses trap, saying which)
fails the test; the executions per harness are printed."""
import os
import re
import shutil

import pytest

import micro_model
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


@pytest.fixture(scope="session")
def seeds(workdir, qalign_bin, tiny_ref):
    """build/corpus/fuzz_model: the micro model in each weight type; build/corpus/fuzz_results:
    result files qalign wrote with it (scores, an error row, other levels, a frame set)."""
    d = workdir / "fuzz_seeds"
    d.mkdir()
    tok = micro_model.tokenizer(d / "micro.model")
    models = CORPUS / "fuzz_model"
    models.mkdir(parents=True, exist_ok=True)
    for dt in ("f32", "bf16", "q8_0", "q4_1", "q8_256", "q4_256"):
        micro_model.write(models / f"micro_{dt}.qalign", dt, tok)
    results = CORPUS / "fuzz_results"
    results.mkdir(parents=True, exist_ok=True)
    m = models / "micro_q8_0.qalign"
    imgs = [tiny_ref / "inputs" / n for n in ("photo.jpg", "alpha.png")]
    c, j = results / "scores.csv", results / "scores.jsonl"
    for f in (c, j):
        f.unlink(missing_ok=True)
    for extra in ([], ["--levels", "poor=0,good=1", "--scale", "0-1"], ["--no-pad", "-t", "aesthetics"]):
        r = run([qalign_bin, "-q", *extra, "--csv", c, "--jsonl", j, m, *imgs, d / "missing.jpg"])
        assert r.returncode == 1, r.stderr                      # the missing file: an error row
    r = run([qalign_bin, "-q", "--video", "--csv", c, "--jsonl", j, m, *imgs])
    assert r.returncode == 0, r.stderr
    ac, aj = results / "answers.csv", results / "answers.jsonl"  # --ask rows (their own CSV columns)
    for f in (ac, aj):
        f.unlink(missing_ok=True)
    for extra in (["--max-tokens", "3"], ["--max-tokens", "2", "--score", "--temperature", "0.5", "--seed", "1"]):
        r = run([qalign_bin, "-q", "--ask", "Why, \"really\"?\n", *extra, "--csv", ac, "--jsonl", aj, m, *imgs,
                 d / "missing.jpg"])
        assert r.returncode == 1, r.stderr
    return models, results


@pytest.mark.parametrize("name", HARNESSES)
def test_fuzz_smoke(name, fuzzers, seeds, workdir):
    corpus = workdir / f"corpus_{name}"
    corpus.mkdir()
    for seeded in (CORPUS / name, ROOT / "fuzz" / "corpus" / name):   # written by the tests; kept in the repository
        if seeded.is_dir():
            for f in sorted(seeded.iterdir())[:200]:
                shutil.copy(f, corpus / f.name)
    inputs = REFERENCE / "tiny" / "inputs"
    if inputs.is_dir() and name not in ("fuzz_model", "fuzz_results"):
        for f in inputs.iterdir():
            if f.suffix in (".jpg", ".png"):
                shutil.copy(f, corpus / f.name)
    assert any(corpus.iterdir()), f"no seeds for {name}"
    r = run([fuzzers / name, f"-max_total_time={SECONDS}", "-rss_limit_mb=4096", "-malloc_limit_mb=2048",
             "-timeout=20", "-print_final_stats=1", corpus], cwd=workdir)
    out = r.stdout + r.stderr
    execs = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
    assert r.returncode == 0, out[-3000:]
    assert "ERROR: AddressSanitizer" not in out and "runtime error" not in out, out[-3000:]
    report(f"fuzz {name}: {execs.group(1) if execs else '?'} executions in {SECONDS} s, no crash")
