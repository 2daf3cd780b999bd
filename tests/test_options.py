"""The option table (options.c): every row is parsed, listed in --help and named in the README;
an unknown option is one line and exit 1; the task and scale words are the library's.

The rows are read from options.c's source (the table the parser and --help iterate over),
so a row that --help or the README leaves out fails here; the task and scale words are
checked against Q-Align's own lists (quality/aesthetics in its prompts, pyiqa's 'aesthetic';
the 1-5 level weights and the 0-1 / 0-100 ranges its scorers print), written out below.
No model file is needed: every check ends before one is opened.
"""
import re

import pytest

from conftest import ROOT, report, run

TASKS = ["quality", "aesthetics", "aesthetic"]
SCALES = ["1-5", "0-1", "0-100"]


def table_rows():
    """(name, alias, arg, nargs, setter) of each row of OPTIONS in options.c."""
    src = (ROOT / "options.c").read_text()
    body = src[src.index("static const Option OPTIONS[] = {"):src.index("#define N_OPTIONS")]
    rows = re.findall(r'^\s*\{"(--[\w-]+)", (NULL|"-\w"), (NULL|"[^"]*"), (\d), (\w+),', body, re.M)
    out = [(n, None if a == "NULL" else a.strip('"'), None if g == "NULL" else g.strip('"'), int(k), s)
           for n, a, g, k, s in rows]
    assert len(out) == body.count('{"--'), "a row of OPTIONS that the pattern above does not read"
    return out


def qa(qalign_bin, *args, **kw):
    return run([qalign_bin, *map(str, args)], timeout=60, **kw)


def one_line(r, needle, code=1):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1 and needle in lines[0], (r.returncode, r.stderr)
    assert lines[0].startswith("qalign: error: "), lines[0]


def shown_arg(arg):
    return arg.replace("{tasks}", "|".join(TASKS)).replace("{scales}", "|".join(SCALES))


def test_every_row_in_help_and_readme(qalign_bin):
    rows = table_rows()
    assert len(rows) >= 50, len(rows)
    h = qa(qalign_bin, "--help").stdout
    readme = (ROOT / "README.md").read_text()
    for name, alias, arg, nargs, setter in rows:
        # --help: the name with its value's name, as one string (the commands by their synopsis)
        spelled = name + (" " + shown_arg(arg) if arg else "")
        assert re.search(rf"(^|\s|, ){re.escape(spelled)}(\s|$)", h, re.M) or f"qalign {name}" in h, spelled
        if alias:
            assert f"{alias}, {name}" in h, alias
        # the README: `--name` (alone or with its value) in a code span
        assert re.search(rf"`(qalign )?{re.escape(name)}[ `]", readme), f"{name} is not in README.md"
    # and nothing in --help's option columns that the table does not have
    names = {r[0] for r in rows} | {r[1] for r in rows if r[1]}
    listed = set(re.findall(r"^  (?:qalign )?(-[\w-]+)", h, re.M)) | set(re.findall(r"^  -\w, (--[\w-]+)", h, re.M))
    assert listed <= names, sorted(listed - names)
    report(f"options: {len(rows)} rows of options.c's table, each in --help and README.md")


def test_every_row_parses(qalign_bin):
    """Each row's option is recognised (a missing value is named, never 'unknown')."""
    n = 0
    for name, alias, arg, nargs, setter in table_rows():
        if setter in ("set_first", "set_elsewhere") or name == "--help":
            continue
        for spelled in [name] + ([alias] if alias else []):
            if nargs:
                one_line(qa(qalign_bin, "m.qalign", spelled), f"{spelled} needs a value (try --help)")
                n += 1
    assert n >= 30
    one_line(qa(qalign_bin, "m.qalign", "--size", "8"), "unknown option '--size' (try --help)")
    for first in ("--decode", "--preprocess-only"):
        one_line(qa(qalign_bin, "m.qalign", first), f"{first} must be the first argument")


def test_unknown_option(qalign_bin):
    for bad in ("--bogus", "-x", "--task=quality", "---"):
        one_line(qa(qalign_bin, "m.qalign", bad, "a.png"), f"unknown option '{bad}' (try --help)")
    r = qa(qalign_bin)
    assert r.returncode == 2 and r.stderr.startswith("usage: qalign"), r.stderr[:200]
    # after --, everything is a path
    r = qa(qalign_bin, "--", "--bogus")
    assert "unknown option" not in r.stderr


@pytest.mark.parametrize("opt,words,good", [("--task", TASKS, "aesthetic"), ("--scale", SCALES, "0-100")])
def test_task_and_scale_words(qalign_bin, opt, words, good):
    joined = ", ".join(words[:-1]) + " or " + words[-1]
    one_line(qa(qalign_bin, opt, "sharpness", "m.qalign", "a.png"), f"{opt} must be {joined}, got 'sharpness'")
    assert f"{opt} {'|'.join(words)}" in qa(qalign_bin, "--help").stdout
    # a good word passes the option's own check (the run then fails on the missing model)
    r = qa(qalign_bin, opt, good, "/nonexistent/m.qalign", "a.png")
    assert "must be" not in r.stderr and r.returncode == 1, r.stderr


def test_values_checked_by_their_row(qalign_bin):
    for args, needle in ((("--batch", "0"), "--batch expects an integer in [1, "),
                         (("--threads", "x"), "--threads expects an integer in [1, 4096], got 'x'"),
                         (("--max-frames", "0"), "--max-frames expects an integer in [1, "),
                         (("--ffmpeg-timeout", "-1"), "--ffmpeg-timeout expects an integer in [0, 1000000]"),
                         (("--top-p", "2"), "--top-p expects a number in [0, 1], got '2'"),
                         (("--temperature", "-1"), "--temperature expects a number in [0, inf), got '-1'"),
                         (("--seed", "-3"), "--seed expects an integer in [0, 2^64), got '-3'"),
                         (("--max-pixels", "0"), "--max-pixels expects a pixel count"),
                         (("--max-queue", "0"), "--max-queue expects an integer in [1, 100000], got '0'"),
                         (("--batch-wait", "x"), "--batch-wait expects milliseconds in [0, 60000], got 'x'"),
                         (("--max-body", "2T"), "--max-body expects a size from 1 to 1T bytes"),
                         (("--timeout", "0"), "--timeout expects seconds in [0.1, 86400], got '0'"),
                         (("--listen", "8080"), "--listen expects HOST:PORT"),
                         (("--api-key", ""), "--api-key is empty"),
                         (("--compare", "a", "b", "--compare", "c", "d"), "--compare given twice"),
                         (("--ask", "  "), "--ask: the question is empty")):
        one_line(qa(qalign_bin, *args, "m.qalign", "a.png"), needle)
    # the first decoding option given is the one named
    one_line(qa(qalign_bin, "--top-k", "3", "--seed", "1", "m.qalign", "a.png"), "--top-k goes with --ask QUESTION")
