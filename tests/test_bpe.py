"""bpe.c (Qwen3.5's byte-level BPE) against Hugging Face tokenizers, id for id.

The oracle is the npm package `tokenizers` 0.23.2 (the official Rust binding; pinned in
tests/node/package.json, installed here with `npm ci` when missing) driven by
tests/node/bpe_oracle.mjs. Both sides load the same tokenizer: tests/data/qwen_tokenizer/
tokenizer.json, trained with that library in Qwen3.5's layout (make_tokenizer.py there), which
carries the split pattern with \\p{M} that transformers' Qwen3_5Tokenizer installs - the one
export.py writes whatever the file declares (test_export_*). bpe.c runs through
tests/bpe_driver.c (built here; it #includes bpe.c to reach NFC and the pre-tokenizer alone).

  * encode: > 5,000 generated strings (ASCII, contractions in both cases, CJK, kana,
    Hangul jamo, emoji with variation selectors / skin tones / ZWJ / flags / keycaps,
    digit runs, whitespace runs with \\r\\n and trailing spaces, Hindi, Thai, Arabic with
    harakat, Hebrew with niqqud, decomposed Latin that NFC composes, combining marks out of
    canonical order, the 33 added tokens inside text, random code points of every plane),
    with added special tokens matched (HF's default) and read as text (the oracle then loads
    the same file without its special added tokens);
  * decode: the ids of every string, and random id sequences (byte pieces that make invalid
    UTF-8, which both sides replace by U+FFFD);
  * Unicode tables, exhaustively: the pre-tokenizer on probes of every code point (letter/
    mark, number, white space, contraction case folding) and NFC on every code point, every
    pair of combining marks and every canonical composition - HF's regex classes are
    Unicode 16.0 and its NFC tables Unicode 9.0 (tools/gen_unicode.py).
Invalid UTF-8 cannot reach HF tokenizers (its API takes strings): bpe_encode refuses it with
a message naming the byte offset.
"""
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import unicodedata

import pytest

from conftest import ROOT, report, run

sys.path.insert(0, str(ROOT))
import export  # noqa: E402

NODE_DIR = ROOT / "tests" / "node"
TOK_DIR = ROOT / "tests" / "data" / "qwen_tokenizer"
TOK_JSON = TOK_DIR / "tokenizer.json"
TOK_CONFIG = TOK_DIR / "tokenizer_config.json"
CC = ["cc", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror", "-O2",
      "-Wno-unused-function"]
SEED = 20260307
LEVELS = [" excellent", " good", " fair", " poor", " bad"]


# ---- fixtures: the oracle, the blob, the driver ---------------------------------------------

@pytest.fixture(scope="session")
def hf():
    """The npm `tokenizers` oracle, installed from tests/node/package-lock.json if missing."""
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (Debian: apt-get install -y nodejs npm): HF oracle unavailable")
    if not (NODE_DIR / "node_modules" / "tokenizers" / "package.json").is_file():
        r = run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR)
        assert r.returncode == 0, "npm ci in tests/node failed:\n" + r.stdout[-1000:] + r.stderr[-2000:]
    return NODE_DIR / "bpe_oracle.mjs"


def oracle(script, tokjson, mode, items, tmp):
    inp, out = tmp / f"oracle_in_{mode}.json", tmp / f"oracle_out_{mode}.json"
    inp.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    r = run(["node", script, tokjson, mode, inp, out], cwd=NODE_DIR)
    assert r.returncode == 0, f"bpe_oracle.mjs {mode} failed: {r.stderr[-2000:]}"
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("bpe")


@pytest.fixture(scope="session")
def blob(tmp):
    b = export.bpe_blob_from_tokenizer_json(TOK_JSON, TOK_CONFIG)
    p = tmp / "qwen.bpe"
    p.write_bytes(b)
    return p


@pytest.fixture(scope="session")
def nospecial_json(tmp):
    """The test tokenizer whose special added tokens can never match (their content starts
    with U+E000, which the test strings do not hold): HF's encode of text in which special
    tokens are plain text (bpe_encode special=0; HF's encode_special_tokens, which the node
    binding does not expose). They stay in the list because HF numbers added tokens by their
    order after the model's vocabulary."""
    tj = json.loads(TOK_JSON.read_text(encoding="utf-8"))
    for a in tj["added_tokens"]:
        if a["special"]:
            a["content"] = "\ue000" + a["content"]
    p = tmp / "nospecial.json"
    p.write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def driver_san():
    """The driver under AddressSanitizer + UBSan (skipped if the compiler lacks them)."""
    out = ROOT / "build" / "bpe_driver_san"
    out.parent.mkdir(exist_ok=True)
    flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    r = run(CC[:-2] + flags + ["-Wno-unused-function", "-I", ROOT, "-o", out, ROOT / "tests" / "bpe_driver.c"])
    if r.returncode != 0:
        pytest.skip("no ASan/UBSan build possible here:\n" + r.stderr[-500:])
    return out


@pytest.fixture(scope="session")
def driver():
    out = ROOT / "build" / "bpe_driver"
    out.parent.mkdir(exist_ok=True)
    r = run(CC + ["-I", ROOT, "-o", out, ROOT / "tests" / "bpe_driver.c"])
    assert r.returncode == 0, "building bpe_driver failed:\n" + r.stdout + r.stderr
    return out


def drive(exe, blob_path, records, expect_rc=0):
    """records: [(mode, bytes)] -> output lines (see tests/bpe_driver.c)."""
    data = b"".join(struct.pack("<II", mode, len(b)) + b for mode, b in records)
    r = subprocess.run([str(exe), str(blob_path)], input=data, capture_output=True)
    out = r.stdout.decode()
    assert r.returncode == expect_rc, f"bpe_driver exited {r.returncode}: {out[-500:]} {r.stderr.decode()[-2000:]}"
    lines = out.split("\n")[:-1]
    assert len(lines) == len(records), f"{len(lines)} output lines for {len(records)} records"
    return lines


def ids_of(line):
    assert not line.startswith("ERR"), line
    return [int(x) for x in line.split()]


# ---- the strings ---------------------------------------------------------------------------

ADDED = [a["content"] for a in json.loads(TOK_JSON.read_text(encoding="utf-8"))["added_tokens"]]
WORDS = ("the quality of image is excellent good fair poor bad How would you rate this photo "
         "aesthetics video The A I It We They camera blur noise 2024 x86_64 naïve café").split()
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'vE", "'M", "'LL",
                "'lL", "'D", "'ſ", "'ſt", "'x", "'", "''", "'re'", "don't", "DON'T", "I'M", "she'LL"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n", "\n ", "  \r\n  ", "\u00a0", "\u3000",
          "\u2009", "\u0085", "\u000b", "\u000c", "\u2028", "\u200b", "\ufeff", "\u001c", "\u001f", " \t\n"]
CJK = "的一是不了人我在有他这中大来上国个到说们为图像质量优秀良好一般较差很非常清晰模糊画面色彩漢字𠀀𪚥"
EMOJI = ["😀", "👍", "👍🏽", "❤️", "❤", "☺️", "✌🏿", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇸🇬🇧", "📷", "🖼️", "✨",
         "1️⃣", "#️⃣", "🧑🏻‍💻", "👩‍❤️‍💋‍👨", "\ufe0f", "\u200d", "🫠", "🪿"]
MARKED = ["नमस्ते", "गुणवत्ता", "क्षत्रिय", "हिन्दी", "ि", "्", "ภาษาไทย", "คุณภาพ", "ดีมาก", "ั",
          "الْعَرَبِيَّة", "جَوْدَة", "مُمْتَازَة", "\u064e", "שָׁלוֹם", "עִבְרִית", "বাংলা", "தமிழ்", "ଓଡ଼ିଆ",
          "e\u0301", "E\u0301", "a\u030a", "A\u030a\u0301", "o\u0308\u0304", "d\u0307\u0323", "d\u0323\u0307",
          "q\u0307\u0323", "\u0301", "\u0301\u0301", "1\u0301", " \u0301", "!\u0301", "\u1100\u1161",
          "\u1100\u1161\u11a8", "\uac00\u11a8", "\u212b", "\u2126", "\u0344", "\u0958", "\u0b47\u0b3e",
          "\u0345\u0301", "a\u05b0\u0301\u0316", "\u0f73", "\u1e9b\u0323", "\u07fd", "a\u07fd\u0301",
          "\u0627\u0653", "\u09c7\u09be", "\u0cc6\u0cc2", "\u3099", "か\u3099", "ｶ\u3099", "\u0338", "=\u0338",
          "<\u0338", "\u0928\u093c"]
NUMS = ["0", "7", "42", "2024", "3.14159", "1,000,000", "0x1F", "١٢٣", "۴۵", "५६", "๗", "Ⅻ", "½", "²", "①", "𝟘"]
PUNCT = list(".,!?;:()[]{}<>@#$%^&*-_=+|\\/~`\"") + ["...", "--", "——", "，", "。", "！", "「」", "…",
                                                      "«»", "€", "£", "°", "±", "×", "→", "∑", "√"]


def random_cp(rng):
    """A random Unicode scalar value, weighted towards the interesting planes."""
    r = rng.random()
    if r < 0.5:
        c = rng.randrange(0x80, 0x3000)
    elif r < 0.8:
        c = rng.randrange(0x3000, 0x10000)
    elif r < 0.97:
        c = rng.randrange(0x10000, 0x20000)
    else:
        c = rng.randrange(0x20000, 0x110000)
    return chr(0xFFFD if 0xD800 <= c < 0xE000 else c)


def fragment(rng):
    k = rng.randrange(12)
    if k == 0:
        return rng.choice(WORDS)
    if k == 1:
        return rng.choice(CONTRACTIONS)
    if k == 2:
        return rng.choice(SPACES) * rng.randint(1, 3)
    if k == 3:
        return "".join(rng.choice(CJK) for _ in range(rng.randint(1, 6)))
    if k == 4:
        return rng.choice(EMOJI)
    if k == 5:
        return rng.choice(MARKED)
    if k == 6:
        return rng.choice(NUMS) if rng.random() < 0.5 else str(rng.randrange(10 ** rng.randint(1, 12)))
    if k == 7:
        return "".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 3)))
    if k == 8:
        t = rng.choice(ADDED)
        return t if rng.random() < 0.8 else t[:rng.randrange(1, len(t))]
    if k == 9:
        return "".join(random_cp(rng) for _ in range(rng.randint(1, 4)))
    if k == 10:  # combining marks in random order after a base
        marks = ["\u0301", "\u0316", "\u0323", "\u0308", "\u0345", "\u05b0", "\u0334", "\u093c", "\u094d",
                 "\u0e38", "\u064e", "\u0651", "\u1dce", "\u0f71", "\u07fd", "\U0001e944"]
        return rng.choice("aeEoOuAIdsk\u0915\u0e01\u0628 ") + "".join(rng.choice(marks) for _ in range(rng.randint(1, 4)))
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 '\t\n\r!.,")
                   for _ in range(rng.randint(1, 10)))


def make_strings(n, rng):
    out = ["", " ", "  ", "\n", "\r\n", "a", "The quality of the image is", " The quality of the image is",
           "The quality of the image is excellent", "   trailing   ", "\n\n\nx\n\n\n", "a  b   c\t\td",
           "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How would you rate the quality of "
           "this image?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nThe quality of the image is",
           "<|im_start|><|im_start|>", "<|im_start", "<|<|im_end|>|>", "<think>\u0338", "\u0000a\u0000",
           "'S'LL'll'Re", "’s"] + LEVELS
    marks = ["\u0345", "\u0301", "\u0316", "\u0334", "\u05b0", "\u093c", "\u0308", "\u0323", "\u0f71"]
    for k in (33, 40, 100, 500):  # runs of combining marks long enough for bpe.c's counting sort
        out.append("a" + "".join(rng.choice(marks) for _ in range(k)) + " e\u0301")
    while len(out) < n:
        out.append("".join(fragment(rng) for _ in range(rng.randint(1, 12))))
    return out


# ---- encode, decode -------------------------------------------------------------------------

def test_level_words_and_prompt(hf, blob, driver, tmp):
    """The five level words' first tokens and Q-ReAlign's prompt: what scoring depends on."""
    prompt = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How would you rate the "
              "quality of this image?<|im_end|>\n<|im_start|>assistant\n<think>\nThe quality of the image is")
    strings = LEVELS + ["The quality of the image is", prompt]
    want = oracle(hf, TOK_JSON, "encode", strings, tmp)
    got = [ids_of(x) for x in drive(driver, blob, [(0, s.encode()) for s in strings])]
    assert got == want
    for w, ids in zip(LEVELS, want[:5]):
        assert len(ids) == 1, f"{w!r} is {ids} in the test tokenizer: it should be one piece"
    lines = drive(driver, blob, [(3, t.encode()) for t in LEVELS + ["<|image_pad|>", "<think>", "Ġgood", "nope!"]])
    vocab = json.loads(TOK_JSON.read_text(encoding="utf-8"))["model"]["vocab"]
    added = {a["content"]: a["id"] for a in json.loads(TOK_JSON.read_text(encoding="utf-8"))["added_tokens"]}
    assert [int(x) for x in lines[:5]] == [vocab["Ġ" + w[1:]] for w in LEVELS]
    assert int(lines[5]) == added["<|image_pad|>"] and int(lines[6]) == added["<think>"]
    assert added["<|image_pad|>"] in want[-1] and added["<think>"] in want[-1]
    assert int(lines[7]) == -1 and int(lines[8]) == -1


def test_encode_matches_hf(hf, blob, nospecial_json, driver, tmp):
    rng = random.Random(SEED)
    strings = make_strings(6000, rng)
    want_sp = oracle(hf, TOK_JSON, "encode", strings, tmp)
    want_tx = oracle(hf, nospecial_json, "encode", strings, tmp)
    lines = drive(driver, blob, [(m, s.encode()) for s in strings for m in (0, 1)])
    bad = []
    for k, s in enumerate(strings):
        for m, want in ((0, want_sp[k]), (1, want_tx[k])):
            got = ids_of(lines[2 * k + m])
            if got != want:
                bad.append((m, s, got, want))
    n_ids = sum(len(x) for x in want_sp)
    report(f"bpe: {2 * len(strings)} encodings ({n_ids} ids with special tokens) compared with HF "
           f"tokenizers 0.23.2, {len(bad)} mismatches")
    assert not bad, "first mismatches (mode, text, bpe.c, HF):\n" + "\n".join(repr(b) for b in bad[:5])


def test_decode_matches_hf(hf, blob, driver, tmp):
    rng = random.Random(SEED + 1)
    strings = make_strings(1500, rng)
    ids = [ids_of(x) for x in drive(driver, blob, [(0, s.encode()) for s in strings])]
    n_vocab = 1 + max(a["id"] for a in json.loads(TOK_JSON.read_text(encoding="utf-8"))["added_tokens"])
    # random sequences, many of them single bytes >= 0x80 (invalid or truncated UTF-8)
    for _ in range(1500):
        seq = []
        for _ in range(rng.randint(0, 12)):
            r = rng.random()
            seq.append(rng.randrange(256) if r < 0.5 else rng.randrange(n_vocab))
        ids.append(seq)
    want = oracle(hf, TOK_JSON, "decode", ids, tmp)
    lines = drive(driver, blob, [(2, struct.pack(f"<{len(x)}I", *x)) for x in ids])
    got = [bytes.fromhex(x).decode("utf-8") for x in lines]
    bad = [(i, g, w) for i, g, w in zip(ids, got, want) if g != w]
    assert not bad, "first mismatches (ids, bpe.c, HF):\n" + "\n".join(repr(b) for b in bad[:5])
    # round trip: text that is already NFC decodes back to itself
    nfc = oracle(hf, TOK_JSON, "nfc", strings, tmp)
    trips = [(s, g) for s, n, g in zip(strings, nfc, got) if s == n and "\ufffd" not in s]
    assert len(trips) > 800
    assert all(s == g for s, g in trips)
    # ids out of range are skipped, as HF does
    line = drive(driver, blob, [(2, struct.pack("<4i", -1, 10 ** 7, n_vocab, vocab_id_of_a()))])[0]
    assert bytes.fromhex(line) == b"a"
    report(f"bpe: {len(ids)} decodes compared with HF tokenizers, {len(trips)} NFC texts round-trip")


def vocab_id_of_a():
    return json.loads(TOK_JSON.read_text(encoding="utf-8"))["model"]["vocab"]["a"]


def test_invalid_utf8(driver, blob):
    """HF's API cannot receive invalid UTF-8; bpe_encode refuses it, naming the offset."""
    cases = [b"\xff", b"ab\x80", b"\xc3", b"abc\xe2\x82", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
             b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"<|im_start|>\xfe", b"ok<think>\xc3("]
    lines = drive(driver, blob, [(0, c) for c in cases])
    for c, line in zip(cases, lines):
        assert line.startswith("ERR invalid UTF-8 at byte "), (c, line)
    assert lines[1] == "ERR invalid UTF-8 at byte 2 of the text"
    assert lines[9] == "ERR invalid UTF-8 at byte 12 of the text"
    assert lines[10] == "ERR invalid UTF-8 at byte 9 of the text"


# ---- the Unicode tables, exhaustively --------------------------------------------------------

def all_scalars():
    return [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]


def chunks(probes, size):
    return ["".join(probes[i:i + size]) for i in range(0, len(probes), size)]


def test_unicode_classes_match_hf(hf, blob, driver, tmp):
    """The pre-tokenizer (no normalizer) on probes of every code point c: "a"+c (letter or
    mark joins), c+c (a number stands alone), c+"!" (white space), and the contractions'
    case-insensitive letters ("'"+c, "'"+c+"e", "'"+c+"l", "'r"+c, "'l"+c)."""
    cps = all_scalars()
    kinds = ["a{}\n", "{0}{0}\n", "{}!\n", "'{}\n", "'{}e\n", "'{}l\n", "'r{}\n", "'l{}\n"]
    texts = []
    for k in kinds:  # case folding to an ASCII letter: only from the BMP (U+017F, U+212A)
        texts += chunks([k.format(c) for c in (cps if k[0] != "'" else cps[:0xF800])], 4000)
    want = oracle(hf, TOK_JSON, "split", texts, tmp)
    lines = drive(driver, blob, [(5, t.encode()) for t in texts])
    bad = [t for t, line, w in zip(texts, lines, want) if [int(x) for x in line.split()] != w]
    report(f"bpe: pre-tokenizer on {len(kinds)} probes of each of {len(cps)} code points: "
           f"{len(texts) - len(bad)}/{len(texts)} chunks equal to HF")
    if bad:
        t = bad[0]
        pieces = [t[i:i + 8] for i in range(0, len(t), 8)]
        small = oracle(hf, TOK_JSON, "split", pieces, tmp)
        mine = drive(driver, blob, [(5, p.encode()) for p in pieces])
        diff = [(p, m, w) for p, m, w in zip(pieces, mine, small) if [int(x) for x in m.split()] != w]
        pytest.fail(f"{len(bad)} chunks differ; first differences (text, bpe.c, HF): {diff[:5]}")


def test_unicode_nfc_matches_hf(hf, blob, driver, tmp):
    """NFC of every code point alone and before U+0323 / U+0345 (decomposition, reordering),
    of every pair of combining marks after a base (combining classes), and of every
    canonical composition pair Python's Unicode 14 knows (HF's are Unicode 9.0)."""
    cps = all_scalars()
    probes = [c + "\n" for c in cps] + [c + "\u0323\n" for c in cps] + [c + "\u0345\n" for c in cps]
    r = run(["node", "-e", "let o=[];for(let c=0;c<0x110000;c++){if(c>=0xD800&&c<0xE000)continue;"
             "if(/\\p{M}/u.test(String.fromCodePoint(c)))o.push(c)}console.log(JSON.stringify(o))"])
    marks = sorted(set(json.loads(r.stdout)) | {ord(c) for c in cps if unicodedata.combining(c)})
    assert len(marks) > 2000
    ccc_marks = [chr(c) for c in marks if unicodedata.combining(chr(c))] + \
                [chr(c) for c in marks if not unicodedata.combining(chr(c))][::7]
    probes += ["a" + x + y + "\n" for x in ccc_marks for y in ccc_marks]
    for c in cps:
        d = unicodedata.decomposition(c)
        if d and not d.startswith("<"):
            parts = [chr(int(x, 16)) for x in d.split()]
            probes.append("".join(parts) + "\n")
            probes.append(parts[0] + "\u0316" + "".join(parts[1:]) + "\n")
    probes += [chr(0x1100 + l) + chr(0x1161 + v) + t + "\n" for l in range(19) for v in range(21)
               for t in ("", "\u11a8", "\u11c2", "\u11a7", "\u11c3")]
    texts = chunks(probes, 3000)
    want = oracle(hf, TOK_JSON, "nfc", texts, tmp)
    lines = drive(driver, blob, [(4, t.encode()) for t in texts])
    bad = [k for k, (line, w) in enumerate(zip(lines, want)) if bytes.fromhex(line).decode() != w]
    report(f"bpe: NFC on {len(probes)} probes (every code point, {len(ccc_marks)}^2 mark pairs, "
           f"compositions): {len(texts) - len(bad)}/{len(texts)} chunks equal to HF")
    if bad:
        t = texts[bad[0]]
        small = t.split("\n")
        w = oracle(hf, TOK_JSON, "nfc", small, tmp)
        m = [bytes.fromhex(x).decode() for x in drive(driver, blob, [(4, p.encode()) for p in small])]
        diff = [(p, a, b) for p, a, b in zip(small, m, w) if a != b]
        pytest.fail(f"{len(bad)} chunks differ; first differences (text, bpe.c, HF): {diff[:5]}")


# ---- export.py: what it writes, and what bpe_open refuses ------------------------------------

def test_export_merge_formats_and_pattern(tmp, driver):
    """Merges as "a b" strings give the same blob as pairs; the blob carries transformers'
    pattern (with \\p{M}) whatever the file declares, as Qwen3_5Tokenizer does on load."""
    tj = json.loads(TOK_JSON.read_text(encoding="utf-8"))
    want = export.bpe_blob_from_tokenizer_json(TOK_JSON, TOK_CONFIG)
    assert export.QWEN35_SPLIT_PATTERN.encode() in want
    old = json.loads(json.dumps(tj))
    old["model"]["merges"] = [" ".join(m) for m in tj["model"]["merges"]]
    old["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    p = tmp / "strings_merges.json"
    p.write_text(json.dumps(old, ensure_ascii=False), encoding="utf-8")
    assert export.bpe_blob_from_tokenizer_json(p, TOK_CONFIG) == want
    # the config's added tokens alone give the same blob
    noadd = json.loads(json.dumps(tj))
    noadd["added_tokens"] = []
    p2 = tmp / "noadded.json"
    p2.write_text(json.dumps(noadd, ensure_ascii=False), encoding="utf-8")
    assert export.bpe_blob_from_tokenizer_json(p2, TOK_CONFIG) == want
    # a merge naming a missing piece is refused
    bad = json.loads(json.dumps(tj))
    bad["model"]["merges"].append(["zz", "qq"])
    p3 = tmp / "badmerge.json"
    p3.write_text(json.dumps(bad, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(SystemExit):
        export.bpe_blob_from_tokenizer_json(p3)


def test_hostile_blobs(tmp, blob, driver):
    """Truncated or corrupted blobs: bpe_open refuses them with a message, never a crash."""
    b = blob.read_bytes()
    rng = random.Random(SEED + 2)
    cases = [b[:k] for k in (0, 3, 4, 27, 28, 100, len(b) // 3, len(b) - 1)]
    for _ in range(40):
        m = bytearray(b)
        for _ in range(rng.randint(1, 4)):
            m[rng.randrange(200 if rng.random() < 0.5 else len(m))] ^= 1 << rng.randrange(8)
        cases.append(bytes(m))
    cases.append(b + b"\0")
    refused = 0
    for k, c in enumerate(cases):
        p = tmp / f"hostile{k}.bpe"
        p.write_bytes(c)
        r = subprocess.run([str(driver), str(p)], input=struct.pack("<II", 0, 5) + b"hello", capture_output=True)
        assert r.returncode in (0, 3), (k, r.returncode, r.stderr[-500:])
        if r.returncode == 3:
            refused += 1
            assert r.stdout.decode().strip(), "refused without a message"
    assert refused >= 10
    report(f"bpe: {len(cases)} hostile blobs, {refused} refused with a message, none crashed")


def test_speed(blob, driver):
    """A figure: encode speed on English + CJK text (no oracle; reported, not asserted)."""
    rng = random.Random(SEED + 3)
    text = " ".join(make_strings(400, rng)).encode()
    line = drive(driver, blob, [(6, struct.pack("<I", 20) + text)])[0]
    n, secs = line.split()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    report(f"bpe: encode {20 * len(text) / float(secs) / 1e6:.1f} MB/s, {int(n) / float(secs) / 1e6:.2f} M ids/s "
           f"({cpu}, one thread)")


def test_sanitized(blob, driver, driver_san, tmp):
    """Encode, decode and hostile blobs under AddressSanitizer + UBSan: same output, no report."""
    rng = random.Random(SEED + 4)
    strings = make_strings(1500, rng)
    recs = [(m, s.encode()) for s in strings for m in (0, 1)]
    recs += [(2, struct.pack(f"<{k}I", *[rng.randrange(5000) for _ in range(k)])) for k in range(0, 40)]
    recs += [(0, c) for c in (b"\xff", b"ab\xc3", b"\xed\xa0\x80x")]
    marks = ["\u0345", "\u0301", "\u0316", "\u0334", "\u05b0", "\u093c"]
    recs += [(0, ("\n" * 3 + " " * 5000 + "x" + "\u0301" * 3000 + "a" * 20000).encode()),
             (0, ("e" + "".join(marks[k % 6] for k in range(200000))).encode()),
             (0, ("o" + "".join(rng.choice(marks) for k in range(300)) + "\u0308").encode())]
    assert drive(driver_san, blob, recs) == drive(driver, blob, recs)
    b = blob.read_bytes()
    for k in range(0, len(b), max(1, len(b) // 60)):
        p = tmp / "san_trunc.bpe"
        p.write_bytes(b[:k])
        r = subprocess.run([str(driver_san), str(p)], input=struct.pack("<II", 0, 5) + b"hello", capture_output=True)
        assert r.returncode == 3 and b"ERROR" not in r.stderr and b"runtime error" not in r.stderr, (k, r.stderr[-800:])


def test_committed_tokenizer_is_what_the_script_makes(hf, tmp):
    """tests/data/qwen_tokenizer is reproducible: make_tokenizer.py (HF's trainer) rebuilds it
    byte for byte."""
    out = tmp / "remade"
    out.mkdir()
    r = run([sys.executable, TOK_DIR / "make_tokenizer.py", "--out", out])
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / f).read_bytes() == (TOK_DIR / f).read_bytes(), f"{f} differs from what make_tokenizer.py makes"
