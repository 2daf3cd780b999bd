#!/usr/bin/env python3
"""code_stats.py - size figures of the C sources, for before/after comparisons of a refactor.

Usage: tools/code_stats.py [FILE.c|FILE.h ...]   (default: every *.c and *.h at the top level)

Per file: lines, code lines (not blank, not only comment), comment lines, #if/#ifdef/#ifndef
count, functions and the longest function. Then totals: functions, median / p90 / max
function length (lines from the signature to the closing brace), the functions over 120
lines, #if count and the comment:code ratio. A function is recognised as the project writes
them: a line at column 0 that names it and ends in '{' (or is followed by a line '{'),
closed by a '}' at column 0. Generated tables (bpe_unicode.h) hold no functions, so they
do not enter the function figures.

The figures of issue 22's refactor are kept beside it: stats_before.txt / duplicates_before.txt
(main at fcf72d6, where the refactor started), stats_main_077ff3d.txt / duplicates_main_077ff3d.txt
(main with qwen-model and dispatch merged, the like-for-like base) and stats_after.txt /
duplicates_after.txt (the refactor branch with that main merged); stats_tidy_before_bc59fb5.txt /
stats_tidy_after.txt: stage 4 (the model file keeps the model; long functions and files), before and
after.
"""
import glob, os, re, statistics, sys

SIG = re.compile(r'^(?!typedef|struct\s+\w+\s*\{|enum|union|#|static\s+const|const)[A-Za-z_][\w\s\*]*?\b(\w+)\s*\([^;]*$')


def scan(path):
    text = open(path, encoding="utf-8", errors="replace").read().split("\n")
    if text and text[-1] == "":
        text.pop()
    code = comment = ifs = 0
    in_c = False
    funcs = []
    i = 0
    pending = None          # (name, start line) of a signature seen, body not yet opened
    for n, line in enumerate(text):
        s = line.strip()
        # comment/code classification (block comments, // comments)
        has_code = False
        j = 0
        while j < len(s):
            if in_c:
                k = s.find("*/", j)
                if k < 0:
                    j = len(s)
                else:
                    in_c = False
                    j = k + 2
                continue
            if s.startswith("/*", j):
                in_c = True
                j += 2
                continue
            if s.startswith("//", j):
                break
            if not s[j].isspace():
                has_code = True
            j += 1
        if has_code:
            code += 1
        elif s:
            comment += 1
        if re.match(r'#\s*if', s):
            ifs += 1
        # functions
        m = SIG.match(line)
        if m and not line.startswith(" "):
            pending = (m.group(1), n)
        opens = line.startswith("{") or (line.rstrip().endswith("{") and line[:1] not in (" ", "\t", "}"))
        opens = opens or (pending and line.rstrip().endswith(") {") and n - pending[1] <= 4)
        if pending and opens:
            if line.startswith("{") or pending[1] == n or n - pending[1] <= 4:
                start = pending[0], pending[1]
                pending = None
                depth_end = None
                for m2 in range(n, len(text)):
                    if text[m2].startswith("}"):
                        depth_end = m2
                        break
                if depth_end is not None:
                    funcs.append((start[0], depth_end - start[1] + 1, start[1] + 1))
        if line.rstrip().endswith(";") and not line.startswith((" ", "\t")):
            pending = None
    return dict(lines=len(text), code=code, comment=comment, ifs=ifs, funcs=funcs)


def main(argv):
    files = argv or sorted(glob.glob("*.c") + glob.glob("*.h"))
    rows = []
    allf = []
    for f in files:
        r = scan(f)
        rows.append((f, r))
        allf += [(f, name, ln, at) for name, ln, at in r["funcs"]]
    print(f"{'file':22} {'lines':>6} {'code':>6} {'cmt':>5} {'#if':>4} {'funcs':>5} {'longest':>22}")
    for f, r in rows:
        lg = max(r["funcs"], key=lambda x: x[1], default=None)
        lgs = f"{lg[0]} {lg[1]}" if lg else "-"
        print(f"{f:22} {r['lines']:6} {r['code']:6} {r['comment']:5} {r['ifs']:4} {len(r['funcs']):5} {lgs:>22}")
    lens = sorted(x[2] for x in allf)
    code = sum(r["code"] for _, r in rows)
    cmt = sum(r["comment"] for _, r in rows)
    print()
    print(f"files {len(rows)}  lines {sum(r['lines'] for _, r in rows)}  code {code}  comment {cmt}  comment:code {cmt / max(code, 1):.2f}  #if {sum(r['ifs'] for _, r in rows)}")
    if lens:
        p90 = lens[min(len(lens) - 1, int(0.9 * len(lens)))]
        print(f"functions {len(lens)}  median {statistics.median(lens):g}  p90 {p90}  max {lens[-1]}")
    big = sorted((x for x in allf if x[2] > 120), key=lambda x: -x[2])
    print(f"functions over 120 lines: {len(big)}")
    for f, name, ln, at in big:
        print(f"  {ln:5}  {f}:{at}  {name}")
    over = [(f, r['lines']) for f, r in rows if r['lines'] > 1500]
    print("files over 1500 lines: " + (", ".join(f"{f} {n}" for f, n in over) or "none"))


if __name__ == "__main__":
    main(sys.argv[1:])
