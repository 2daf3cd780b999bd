"""Shared pytest fixtures: where the binary, the reference fixtures and the
real tokenizer are, and a session-wide scratch directory.

Paths (overridable by environment variables):
  QALIGN_BIN        the qalign binary                 (default: ./qalign, built by `make`)
  QALIGN_SHARED     the shared fixtures directory     (default: ../shared next to the repo)
  QALIGN_REFERENCE  the reference fixtures            (default: $QALIGN_SHARED/reference)
  QALIGN_TOKENIZER  the real LLaMA-2 tokenizer.model  (default: $QALIGN_SHARED/data/tokenizer.model)

CI=true (set by .ci/run): a test that would be skipped fails instead - for a missing tool,
package or fixture CI must install it - except for the skips this file allows: a CPU that
lacks an instruction set (reason "missing hardware: ...", e.g. the avx2vnni build on a CPU
without AVX-VNNI) and, in an emulated run, the tests that do not run under emulation
(reason "<target> run: ...", NOT_EMULATED below).

Cross-built runs (tests/cross.sh, `make test-aarch64`; see PORTING.md):
  QALIGN_RUNNER     emulator command line, e.g. "qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu
                    neoverse-n1": every executable the tests start that was built for another
                    architecture than this Python's is started through it (the tests' own
                    compile commands reach the cross compiler as `cc` first on PATH)
  QALIGN_TARGET     the cross target's name (for the figures and skip reasons)
  QALIGN_EXPECT_KERNELS  the SIMD kernel names the build must have compiled in, exactly
                    (test_kernels.py): "neon neon-dotprod", "neon", "none"
"""
import os
import shlex
import shutil
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


# ---- cross-built binaries under an emulator ------------------------------------------
RUNNER = shlex.split(os.environ.get("QALIGN_RUNNER", ""))
if RUNNER:   # an absolute path: some tests run programs with a reduced PATH
    RUNNER[0] = shutil.which(RUNNER[0]) or RUNNER[0]
TARGET = os.environ.get("QALIGN_TARGET", "")
EMULATED = bool(RUNNER)


def elf_id(path):
    """(class, data, machine) of an ELF file, None for anything else."""
    try:
        with open(path, "rb") as f:
            h = f.read(20)
    except OSError:
        return None
    if len(h) < 20 or h[:4] != b"\x7fELF":
        return None
    return h[4], h[5], int.from_bytes(h[18:20], "little" if h[5] == 1 else "big")


HOST_ELF = elf_id(os.path.realpath(sys.executable))


def foreign(path):
    """True for an executable built for another architecture than this Python's."""
    e = elf_id(path)
    return e is not None and e != HOST_ELF


if EMULATED:
    # Every way the tests start a program (run(), subprocess.run/Popen) ends in Popen:
    # a foreign executable is started through the emulator instead, so test files need
    # no changes. Kill and exit status pass through (qemu-user is the guest process).
    _popen_init = subprocess.Popen.__init__

    def _popen_init_emulated(self, args, *a, **kw):
        if isinstance(args, (list, tuple)) and args and foreign(os.path.join(str(kw.get("cwd") or ""), str(args[0]))):
            args = RUNNER + [str(x) for x in args]
        _popen_init(self, args, *a, **kw)

    subprocess.Popen.__init__ = _popen_init_emulated

# ---- CI=true: no skip but the allowed ones ---------------------------------------------
CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
HARDWARE = "missing hardware"   # skip reasons that start so are allowed under CI


def emulated_reason(reason):
    return f"{TARGET or 'emulated'} run: {reason}"


def skip_allowed(reason):
    return reason.startswith(HARDWARE) or (EMULATED and reason.startswith(emulated_reason("")))


def _skip_reason(longrepr):
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    else:
        text = str(longrepr)
    return text[len("Skipped: "):] if text.startswith("Skipped: ") else text


def _fail_skip(rep):
    reason = _skip_reason(rep.longrepr)
    if skip_allowed(reason):
        return
    rep.outcome = "failed"
    rep.longrepr = (f"CI=true: this would be skipped ({reason}); under CI nothing may be skipped for a missing "
                    f"tool, package or fixture - install it (.ci/run) - only for missing hardware")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if CI and rep.skipped and not hasattr(rep, "wasxfail"):
        _fail_skip(rep)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    if CI and rep.skipped:   # a whole module skipped (importorskip, allow_module_level)
        _fail_skip(rep)


def startable(binary, link):
    """binary as other programs (run.sh, GNU parallel) can start it, at the path `link`: a
    symbolic link to it, or in an emulated run a script that starts it through the emulator
    (only the tests' own Popen calls go through QALIGN_RUNNER)."""
    link = Path(link)
    if EMULATED:
        link.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in RUNNER + [str(binary)]) + ' "$@"\n')
        link.chmod(0o755)
    else:
        link.symlink_to(binary)
    return link


# Tests that do not run under emulation, and why. Everything they check is target-
# independent C and runs in the native suite.
SANITIZERS = "sanitizer builds are not run under emulation (LeakSanitizer fails under qemu-user; ASan runs take seconds each): the native suite runs them"
SPEED = "speed limits are for native code, not for an emulator"
MEMORY = "under qemu-user the process's peak memory is the emulator's"
NOT_EMULATED = {
    "test_images_hostile.py": SANITIZERS,
    "test_cli.py::test_batch_under_sanitizers_leaks_nothing": SANITIZERS,
    "test_jpeg.py::test_hostile": SANITIZERS,
    "test_tokenizer.py::test_sanitizers": SANITIZERS,
    "test_jpeg.py::test_speed_12mp": SPEED,
    "test_images.py::test_preprocess_speed": SPEED,
    "test_tokenizer.py::test_speed": SPEED,
    "test_app.py::test_video_memory_is_one_frame": MEMORY,
    "test_fuzz.py": "the libFuzzer harnesses are built by the host's clang, not for the target: the native suite runs them",
}


def pytest_collection_modifyitems(config, items):
    if not EMULATED:
        return
    for item in items:
        name = item.nodeid.split("/")[-1]
        for prefix, reason in NOT_EMULATED.items():
            if name == prefix or name.startswith((prefix + "::", prefix + "[")):
                item.add_marker(pytest.mark.skip(reason=emulated_reason(reason)))


def run(args, **kw):
    """Run a command, capture text output, never raise on non-zero exit."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run([str(a) for a in args], **kw)


# A result as qalign writes it (--json, --jsonl, the server): one flat object with
# p_<word> and logit_<word> for each level word, in the levels' order.
def levels(row):
    return [k[2:] for k in row if k.startswith("p_")]


def probs(row):
    return [row[k] for k in row if k.startswith("p_")]


def logits(row):
    return [row[k] for k in row if k.startswith("logit_")]


def chromium_dom(html, what, timeout=90):
    """The DOM of a local HTML file after headless Chromium has run its scripts, as
    (dom, stderr); skips the calling test, naming `what`, when Chromium is not installed."""
    import tempfile
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chrome:
        pytest.skip(f"chromium not installed (Debian: apt-get install -y chromium): {what} skipped")
    with tempfile.TemporaryDirectory() as prof:
        r = run([chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={prof}",
                 "--virtual-time-budget=3000", "--dump-dom", f"file://{html}"], timeout=timeout)
    return r.stdout, r.stderr


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
def oracle(tiny_ref):
    """The PyTorch oracle (tests/torch_ref.py) on the tiny checkpoint, with its tokenizer:
    (torch_ref.Reference, sentencepiece processor)."""
    import json
    import sentencepiece as spm
    import torch_ref as tr
    cfg = json.loads((tiny_ref / "checkpoint" / "config.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(tiny_ref / "checkpoint" / "tokenizer.model"))
    return tr.Reference(tr.load_state(tiny_ref / "checkpoint"), cfg), sp


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
    if EMULATED:
        pytest.skip(emulated_reason(SANITIZERS))
    san = ROOT / "qalign-san"
    r = run(["make", "-C", ROOT, "qalign-san"])
    if r.returncode != 0:
        pytest.fail("make qalign-san failed:\n" + r.stdout[-2000:] + r.stderr[-2000:])
    return san


CORPUS = ROOT / "build" / "corpus"   # fuzz seed corpora written by the tests (build/corpus/fuzz_<name>/)
