"""The README's exact-output example is what qalign prints (docs must not drift)."""
import re

from conftest import PYTHON, ROOT, REFERENCE, report, run


def test_readme_quick_check(qalign_bin, tiny_ref, workdir):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Check your build in a minute"):]
    blocks = re.findall(r"```(?:sh)?\n(.*?)```", section, re.S)
    commands, expected = blocks[0], blocks[1].strip()
    lines = [l for l in commands.splitlines() if l.strip()]
    assert lines[0].startswith("python3 export.py") and lines[1].startswith("./qalign")
    shared = str(REFERENCE.parent)  # the README says ../shared; use where the fixtures are
    model = workdir / "readme_tiny.qalign"
    exp_args = lines[0].split()[2:]
    exp_args = [a.replace("../shared", shared).replace("tiny.qalign", str(model)) for a in exp_args]
    r = run([PYTHON, ROOT / "export.py", "-q", *exp_args])
    assert r.returncode == 0, r.stderr
    q_args = [a.replace("../shared", shared).replace("tiny.qalign", str(model)) for a in lines[1].split()[1:]]
    r = run([qalign_bin, *q_args])
    assert r.returncode == 0, r.stderr
    got = r.stdout.strip().replace(shared, "../shared")
    assert got == expected, f"README says\n{expected}\nqalign prints\n{got}"
    report("README: the exact-output example matches")
