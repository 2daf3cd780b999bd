"""Shared pytest fixtures: where the binary, the reference fixtures and the
real tokenizer are, and a session-wide scratch directory.

Paths (overridable by environment variables):
  QALIGN_BIN        the qalign binary                 (default: ./qalign, built by `make`)
  QALIGN_SHARED     the shared fixtures directory     (default: ../shared next to the repo)
  QALIGN_REFERENCE  the reference fixtures            (default: $QALIGN_SHARED/reference)
  QALIGN_TOKENIZER  the real LLaMA-2 tokenizer.model  (default: $QALIGN_SHARED/data/tokenizer.model)
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("QALIGN_SHARED", ROOT.parent / "shared"))
REFERENCE = Path(os.environ.get("QALIGN_REFERENCE", SHARED / "reference"))
TOKENIZER = Path(os.environ.get("QALIGN_TOKENIZER", SHARED / "data" / "tokenizer.model"))
BIN = Path(os.environ.get("QALIGN_BIN", ROOT / "qalign"))
PYTHON = sys.executable
sys.path.insert(0, str(ROOT))   # tests import export.py and spm.py


def run(args, **kw):
    """Run a command, capture text output, never raise on non-zero exit."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run([str(a) for a in args], **kw)


@pytest.fixture(scope="session")
def qalign_bin():
    if not BIN.exists():
        r = run(["make", "-C", ROOT, "qalign"])
        assert r.returncode == 0, "make failed:\n" + r.stdout + r.stderr
    return BIN


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("qalign")


@pytest.fixture(scope="session")
def tiny_ref():
    d = REFERENCE / "tiny"
    if not (d / "reference.json").exists():
        pytest.skip(f"reference fixtures not found at {d} (set QALIGN_REFERENCE)")
    return d


@pytest.fixture(scope="session")
def real_tokenizer():
    if not TOKENIZER.exists():
        pytest.skip(f"real LLaMA-2 tokenizer.model not found at {TOKENIZER} (set QALIGN_TOKENIZER)")
    return TOKENIZER


# ---- figures shown at the end of the run ---------------------------------------------
# Tests call report("...") with measured figures (max errors, counts, timings); pytest
# prints them in a "qalign figures" section just before its summary line, even with -q.
_REPORT = []


_MAXES = {}


def report(line):
    _REPORT.append(str(line))


def report_max(label, value, fmt="{:.2e}"):
    """Keep the largest value seen under `label` (e.g. a stage's worst error over records)."""
    old = _MAXES.get(label)
    if old is None or value > old[0]:
        _MAXES[label] = (value, fmt)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _REPORT or _MAXES:
        terminalreporter.section("qalign figures")
        for line in _REPORT:
            terminalreporter.write_line(line)
        for label in sorted(_MAXES):
            value, fmt = _MAXES[label]
            terminalreporter.write_line(f"{label}: " + fmt.format(value))


@pytest.fixture(scope="session")
def qalign_san():
    """The ASan+UBSan build (make sanitize), built on first use."""
    san = ROOT / "qalign-san"
    r = run(["make", "-C", ROOT, "qalign-san"])
    if r.returncode != 0:
        pytest.fail("make qalign-san failed:\n" + r.stdout[-2000:] + r.stderr[-2000:])
    return san


CORPUS = ROOT / "build" / "corpus"   # fuzz seed corpora written by the tests (build/corpus/fuzz_<name>/)
