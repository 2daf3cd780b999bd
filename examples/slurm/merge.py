#!/usr/bin/env python3
"""merge.py - put the result files of a split run (Slurm array tasks, GNU parallel jobs, ...)
together and check that every input of the list was scored exactly once. Standard library
only.

    python3 merge.py LIST PART... [-o OUT]

LIST is the list the parts were made from (qalign's @list: one path per line, blanks
around it trimmed, blank lines and lines starting with '#' skipped). PARTs are qalign
--jsonl or --csv files (by their suffix; all of one kind). OUT (default: stdout) gets one
row per input, each row exactly as its part holds it, in the order one qalign run over
LIST writes them (paths sorted bytewise, duplicates once); it is written as OUT.tmp and
renamed, and only when the check passes.

Each input must have rows in exactly one part. Within that part an input may have failed
rows before its result (a task that was requeued retries what failed: qalign --resume);
its result is its last row. Inputs that could not be scored are listed on stderr with
their errors. Exit status: 0 when every input has exactly one result (failed inputs
included); 1 when an input has no row, rows in two parts, two successful rows, rows made
another way (another model file, prompt, levels, task or scale) than the others, or a
row names a path that is not in LIST; 2 for a usage or read error.
"""
import argparse
import csv
import json
import os
import sys

# what makes two rows "made the same way" (qalign --resume compares the same fields)
HOW = ("task", "scale", "model", "prompt", "levels", "pad", "precise", "max_frames")


def read_list(path):
    paths = []
    with open(path, "rb") as f:
        for line in f:
            s = line.rstrip(b"\n").strip(b" \t\r")
            if s and not s.startswith(b"#"):
                paths.append(s)
    # as qalign: sorted by bytes, each path once
    return [os.fsdecode(p) for p in sorted(set(paths))]


def read_part(path):
    """[(input path, row dict, raw line)] and the CSV header line (None for JSONL)."""
    rows, header = [], None
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if path.endswith(".csv"):
        if not lines:
            return rows, header
        header = lines[0]
        names = next(csv.reader([os.fsdecode(header)]))
        if not names or names[0] != "path":
            raise ValueError(f"{path}: not a qalign CSV (the header does not start with 'path')")
        for k, raw in enumerate(lines[1:], 2):
            vals = next(csv.reader([os.fsdecode(raw)]), [])
            if len(vals) != len(names):
                raise ValueError(f"{path} line {k}: {len(vals)} fields, the header has {len(names)}")
            row = dict(zip(names, vals))
            row["error"] = row.get("error") or None
            rows.append((row["path"], row, raw))
    else:
        for k, raw in enumerate(lines, 1):
            try:
                row = json.loads(raw)
            except ValueError as e:
                raise ValueError(f"{path} line {k}: not a JSON row ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("path"), str):
                raise ValueError(f"{path} line {k}: not a qalign result row")
            rows.append((row["path"], row, raw))
    return rows, header


def main(argv=None):
    ap = argparse.ArgumentParser(description="Merge qalign result files of a split run and check that every "
                                             "input was scored exactly once.")
    ap.add_argument("list", help="the list of inputs the parts were made from")
    ap.add_argument("parts", nargs="+", help="qalign --jsonl (or --csv) files")
    ap.add_argument("-o", "--output", help="the merged file (default: stdout)")
    a = ap.parse_args(argv)

    kinds = {p.endswith(".csv") for p in a.parts}
    if len(kinds) > 1:
        print("merge: error: parts are all JSONL or all CSV, not both", file=sys.stderr)
        return 2
    try:
        inputs = read_list(a.list)
        parts = {p: read_part(p) for p in a.parts}
    except (OSError, ValueError) as e:
        print(f"merge: error: {e}", file=sys.stderr)
        return 2
    headers = {h for _, h in parts.values() if h is not None}
    if len(headers) > 1:
        print("merge: error: the CSV parts have different headers (other qalign versions or levels)", file=sys.stderr)
        return 2

    listed = set(inputs)
    seen = {}            # input -> {part: [rows]}
    unknown = []
    for part, (rows, _) in parts.items():
        for path, row, raw in rows:
            if path not in listed:
                unknown.append((part, path))
                continue
            seen.setdefault(path, {}).setdefault(part, []).append((row, raw))

    problems, final = [], {}
    for path in inputs:
        where = seen.get(path)
        if not where:
            problems.append(f"{path}: missing (no row in any part)")
            continue
        if len(where) > 1:
            problems.append(f"{path}: scored twice: rows in {' and '.join(sorted(where))}")
            continue
        (part, rows), = where.items()
        good = [k for k, (row, _) in enumerate(rows) if not row.get("error")]
        if len(good) > 1 or (good and good[0] != len(rows) - 1):
            problems.append(f"{path}: scored twice: {len(good)} results in {part}"
                            + (" (a failed row after its result)" if len(good) == 1 else ""))
            continue
        final[path] = rows[-1]
    for part, path in unknown[:20]:
        problems.append(f"{path}: in {part} but not in {a.list}")
    if len(unknown) > 20:
        problems.append(f"... and {len(unknown) - 20} more rows of paths not in {a.list}")
    ways = {}
    for path, (row, _) in final.items():
        ways.setdefault(tuple(str(row.get(k)) for k in HOW), []).append(path)
    if len(ways) > 1:
        for way, paths in sorted(ways.items(), key=lambda kv: -len(kv[1])):
            desc = ", ".join(f"{k}={v}" for k, v in zip(HOW, way) if k != "prompt")
            problems.append(f"{len(paths)} inputs (e.g. {paths[0]}) made with {desc}")
        problems.append("rows made in more than one way: merge the parts of one run only")

    failed = [(p, final[p][0]["error"]) for p in inputs if p in final and final[p][0].get("error")]
    for path, err in failed:
        print(f"merge: failed: {path}: {err}", file=sys.stderr)
    for p in problems:
        print(f"merge: error: {p}", file=sys.stderr)
    n_missing = sum(1 for p in inputs if p not in seen)
    if problems:
        print(f"merge: {len(inputs)} inputs in {a.list}: {len(final)} with one result, {n_missing} missing, "
              f"{len(problems) - n_missing} other problems; nothing written", file=sys.stderr)
        return 1

    header = next(iter(headers), None)
    out = b"".join(([header + b"\n"] if header is not None else []) + [final[p][1] + b"\n" for p in inputs])
    if a.output:
        tmp = a.output + ".tmp"
        with open(tmp, "wb") as f:
            f.write(out)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, a.output)
    else:
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    print(f"merge: {len(inputs)} inputs, each scored once: {len(inputs) - len(failed)} scored, {len(failed)} failed "
          f"(listed above); {sum(len(r) for r, _ in parts.values())} rows in {len(parts)} parts", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
