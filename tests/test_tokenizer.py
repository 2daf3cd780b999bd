"""tokenizer.c against sentencepiece, id for id.

tokenizer.c is driven through tests/tok_driver.c (built here into build/tok_driver,
linked with tokenizer.c only): the vocabulary is read with spm.py and dumped in the
driver's format, then thousands of strings go through one process.

Vocabularies:
  real     the LLaMA-2 tokenizer.model (real_tokenizer fixture; skipped when absent)
  trained  a small BPE model trained here like LLaMA's (byte fallback, identity, no
           whitespace squeezing, dummy prefix), so the comparison runs anywhere
  user     a small BPE model with user-defined pieces and *no* byte fallback (<unk> runs)
  unused   the trained model with every 5th merged piece re-typed UNUSED (sentencepiece
           merges then splits those back: its resegmentation rule) and every 13th
           USER_DEFINED (matched first, never merged)

Decisions checked here:
  * NUL is an ordinary character: tokenizer_encode takes a length, so "a\\0b" encodes as
    sentencepiece does ("a", <0x00>, "b"). tokenize_prompt takes a C string and so stops
    at the first NUL (Q-Align prompts never contain one).
  * Malformed UTF-8 is compared byte for byte (sentencepiece's Python API takes bytes):
    every bad byte becomes U+FFFD, as in sentencepiece.
"""
import random
import struct
import subprocess
import sys
import time

import pytest

from conftest import ROOT, report, run

sys.path.insert(0, str(ROOT))
import spm  # noqa: E402

sentencepiece = pytest.importorskip("sentencepiece")

CC = ["cc", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror", "-O2"]
DRIVER_SRC = [ROOT / "tests" / "tok_driver.c", ROOT / "tokenizer.c"]
MARK = "<|image|>"
SEED = 20240611

# ---- Q-Align facts (docs/architecture.md sections 3.3 and 5.2) --------------------------

def qalign_prompt(task, what):
    return (f"USER: How would you rate the {task} of this {what}?\n<|image|>\n"
            f"ASSISTANT: The {task} of the {what} is")

EXPECTED_PROMPT_IDS = {
    ("quality", "image"): [1, 3148, 1001, 29901, 1128, 723, 366, 6554, 278, 11029, 310, 445,
                           1967, 29973, 13, -200, 29871, 13, 22933, 9047, 13566, 29901, 450,
                           11029, 310, 278, 1967, 338],
    ("aesthetics", "image"): [1, 3148, 1001, 29901, 1128, 723, 366, 6554, 278, 263, 342, 9188,
                              1199, 310, 445, 1967, 29973, 13, -200, 29871, 13, 22933, 9047,
                              13566, 29901, 450, 263, 342, 9188, 1199, 310, 278, 1967, 338],
    ("quality", "video"): [1, 3148, 1001, 29901, 1128, 723, 366, 6554, 278, 11029, 310, 445,
                           4863, 29973, 13, -200, 29871, 13, 22933, 9047, 13566, 29901, 450,
                           11029, 310, 278, 4863, 338],
}
LEVEL_IDS = {"excellent": 15129, "good": 1781, "fair": 6534, "poor": 6460, "bad": 4319}


# ---- building and driving tok_driver ------------------------------------------------------

@pytest.fixture(scope="session")
def driver():
    out = ROOT / "build" / "tok_driver"
    out.parent.mkdir(exist_ok=True)
    r = run(CC + ["-I", ROOT, "-o", out] + DRIVER_SRC)
    assert r.returncode == 0, "building tok_driver failed:\n" + r.stdout + r.stderr
    return out


@pytest.fixture(scope="session")
def driver_san():
    """The driver under AddressSanitizer + UBSan (skipped if the compiler lacks them)."""
    out = ROOT / "build" / "tok_driver_san"
    out.parent.mkdir(exist_ok=True)
    flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=undefined"]
    r = run(CC[:-1] + flags + ["-I", ROOT, "-o", out] + DRIVER_SRC)
    if r.returncode != 0:
        pytest.skip("no ASan/UBSan build possible here:\n" + r.stderr[-500:])
    return out


def write_vocab(model, path):
    """Dump an SpmModel in tok_driver's format (see tests/tok_driver.c)."""
    blob = b"".join(model.pieces)
    offsets = [0]
    for p in model.pieces:
        offsets.append(offsets[-1] + len(p))
    n = len(model.pieces)
    with open(path, "wb") as f:
        f.write(b"TOKVOCAB" + struct.pack("<5iI", n, int(model.add_dummy_prefix), model.bos_id,
                                          model.eos_id, model.unk_id, len(blob)))
        f.write(blob)
        f.write(struct.pack(f"<{n + 1}I", *offsets))
        f.write(struct.pack(f"<{n}f", *model.scores))
        f.write(bytes(model.types))
    return path


def drive(exe, vocab_path, records):
    """records: [(mode, bytes)] -> one list of ids per record (tok_driver modes 0-2),
    or [(count, seconds)] for mode 3."""
    data = b"".join(struct.pack("<II", mode, len(b)) + b for mode, b in records)
    r = subprocess.run([str(exe), str(vocab_path)], input=data, capture_output=True)
    out = r.stdout.decode()
    assert r.returncode == 0, f"tok_driver exited {r.returncode}: {out[-500:]} {r.stderr.decode()[-2000:]}"
    lines = out.split("\n")[:-1]
    assert len(lines) == len(records), f"{len(lines)} output lines for {len(records)} records"
    result = []
    for (mode, _), line in zip(records, lines):
        assert line != "ERR", "tokenizer returned -1"
        if mode == 3:
            count, secs = line.split()
            result.append((int(count), float(secs)))
        else:
            result.append([int(x) for x in line.split()])
    return result


def to_bytes(s):
    return s if isinstance(s, bytes) else s.encode("utf-8")


def compare(name, exe, vocab_path, sp, strings, modes=(1,)):
    """Encode every string with tok_driver and with sentencepiece; assert identical ids.
    Returns the number of (string, mode) cases compared."""
    records = [(mode, to_bytes(s)) for s in strings for mode in modes]
    got = drive(exe, vocab_path, records)
    bad = []
    for (mode, b), ids in zip(records, got):
        want = sp.EncodeAsIds(b, add_bos=(mode == 1))
        if ids != want:
            bad.append((b, ids, want))
    report(f"tokenizer[{name}]: {len(records)} encodings compared with sentencepiece, "
           f"{len(bad)} mismatches")
    assert not bad, (f"{len(bad)} mismatches, first: text={bad[0][0]!r}\n"
                     f"  tokenizer.c  {bad[0][1]}\n  sentencepiece {bad[0][2]}")
    return len(records)


# ---- test strings -------------------------------------------------------------------------

SCRIPTS = [  # (lo, hi) code point ranges
    (0x20, 0x7E), (0xA0, 0xFF), (0x100, 0x17F), (0x300, 0x36F),       # ASCII, Latin, combining
    (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF),   # Greek, Cyrillic, Hebrew, Arabic
    (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x3040, 0x30FF),  # Devanagari, Thai, Jamo, kana
    (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xE0FF), (0xFF00, 0xFFEF),  # CJK, Hangul, PUA, fullwidth
    (0x1F300, 0x1FAFF), (0x10000, 0x1007F), (0x1D400, 0x1D7FF), (0x20000, 0x2A6DF),  # emoji, astral
    (0x2000, 0x206F), (0x2190, 0x22FF), (0x2580, 0x259F),              # punctuation, arrows, blocks (▁)
]
WORDS = ("the quality of this image is excellent good fair poor bad aesthetics video USER "
         "ASSISTANT How would you rate a an and in on at of to for with without naïve café "
         "Zürich résumé über déjà coöperate 東京 北京 日本語 한국어 Москва Ελλάδα שלום مرحبا "
         "नमस्ते ไทย 😀 👍🏽 👨‍👩‍👧 🇫🇷 ∑ ∞ ≠ ½ ² ﬁ Å Å e\u0301 ñ n\u0303 ▁ ▁▁ \ufffd").split()
PIECES = [" ", "  ", "   ", "    ", "\n", "\n\n", "\t", "\t\t", " \n", "\r\n", "\u3000",
          "\u00a0", "\u200b", "\u200d", "\ufeff", "0", "7", "42", "2024", "3.14159", "-1e-9",
          "1,000,000", "0x1F", "100%", ".", ",", "!", "?", "...", "—", "–", "'", '"', "(",
          ")", "[", "]", "{", "}", "<", ">", "<s>", "</s>", "<unk>", "<0x0A>", "<|image|>",
          "#", "@", "$", "\\", "/", "|", "~", "`", "^", "&", "*", "_", "=", "+", ";", ":",
          "def f(x):\n    return x ** 2\n", "int main(void) { return 0; }",
          "for (i = 0; i < n; i++) {\n\tsum += a[i];\n}", "SELECT * FROM t WHERE id = 1;",
          "https://huggingface.co/q-future/one-align", "user@example.com", "C:\\Windows\\",
          "\x00", "\x01", "\x7f", "\x1b[0m"]


def natural_lines():
    """Deterministic natural text and code: the docs and this repo's Python sources."""
    text = ""
    for path in [ROOT.parent / "shared" / "docs" / "architecture.md", ROOT / "spm.py",
                 ROOT / "tests" / "conftest.py", ROOT / "tokenizer.h"]:
        if path.exists():
            text += path.read_text(encoding="utf-8", errors="replace")
    import textwrap  # stdlib source: always there
    with open(textwrap.__file__, encoding="utf-8") as f:
        text += f.read()
    return [line for line in text.split("\n")]


def random_char(rng):
    lo, hi = rng.choice(SCRIPTS)
    c = rng.randint(lo, hi)
    return chr(c) if not 0xD800 <= c < 0xE000 else "?"


def random_string(rng, lines):
    """Up to ~40 segments mixing words, characters of many scripts, whitespace runs,
    numbers, punctuation, code and natural text."""
    parts = []
    for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 21, 40])):
        k = rng.random()
        if k < 0.25:
            parts.append(rng.choice(WORDS))
        elif k < 0.45:
            parts.append("".join(random_char(rng) for _ in range(rng.randint(1, 6))))
        elif k < 0.65:
            parts.append(rng.choice(PIECES))
        elif k < 0.75:
            parts.append(" " * rng.randint(1, 20) if rng.random() < 0.7 else
                         "".join(rng.choice(" \n\t\r") for _ in range(rng.randint(1, 12))))
        elif k < 0.85:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 15))))
        else:
            parts.append(rng.choice(lines))
        if rng.random() < 0.5:
            parts.append(" ")
    return "".join(parts)


def random_bytes(rng):
    """Byte strings with malformed UTF-8: stray continuation bytes, truncated and overlong
    sequences, surrogates, > U+10FFFF, 0xC0/0xC1/0xF5-0xFF, mixed with valid text."""
    bad = [b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2", b"\xe0\x80\x80", b"\xe4\xb8",
           b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5",
           b"\xf8\x88\x80\x80\x80", b"\xfe", b"\xff", b"\xf0\x9f\x98", b"\xe2\x96", b"\xef\xbf\xbd"]
    parts = []
    for _ in range(rng.randint(1, 12)):
        k = rng.random()
        if k < 0.4:
            parts.append(rng.choice(bad))
        elif k < 0.6:
            parts.append(bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))))
        else:
            parts.append(rng.choice(WORDS + PIECES).encode())
    return b"".join(parts)


def prompt_strings():
    out = []
    for task in ["quality", "aesthetics", "aesthetic"]:
        for what in ["image", "video"]:
            p = qalign_prompt(task, what)
            out += [p] + p.split(MARK)
            out.append(p.replace("\n<|image|>\n", "\n<|image|> "))
    out += list(LEVEL_IDS) + [" " + w for w in LEVEL_IDS] + [w.capitalize() for w in LEVEL_IDS]
    return out


def make_strings(seed, n_random, n_bytes, fixed_and_long=True):
    rng = random.Random(seed)
    lines = natural_lines()
    fixed = ["", " ", "  ", "\n", "\t", " \n ", "a", " a", "a ", "  a  ", "\x00", "a\x00b",
             "\x00\x00 \x00", "▁", "▁▁", " ▁ ", "\ufffd", "😀", "👨‍👩‍👧‍👦", "e\u0301\u0302\u0303"]
    fixed += [" " * n for n in range(1, 40)] + ["\n" * n for n in range(1, 12)]
    fixed += ["x" + " " * n + "y" for n in range(1, 20)] + ["\t" * n + "x" for n in range(1, 9)]
    fixed += [" " * n + "x" + " " * m for n in range(0, 6) for m in range(0, 6)]
    fixed += lines[:300]
    strings = (fixed if fixed_and_long else []) + prompt_strings()
    strings += [random_string(rng, lines) for _ in range(n_random)]
    strings += [random_bytes(rng) for _ in range(n_bytes)]
    if fixed_and_long:   # a few long ones (5-50 KB)
        strings += ["".join(random_string(rng, lines) for _ in range(rng.randint(20, 120)))
                    for _ in range(6)]
        strings.append("\n".join(lines)[:50000])
    return strings


# ---- models -------------------------------------------------------------------------------

def training_text(rng):
    lines = natural_lines()
    """Natural lines plus word / whitespace / number soup (no random code points, so the
    few hundred pieces cover it; rare characters in the test strings then go to bytes)."""
    out = []
    for _ in range(3000):
        parts = []
        for _ in range(rng.randint(1, 30)):
            k = rng.random()
            parts.append(rng.choice(WORDS) if k < 0.5 else rng.choice(PIECES) if k < 0.7 else
                         " " * rng.randint(1, 8) if k < 0.8 else str(rng.randint(0, 99999)))
            parts.append(" " if rng.random() < 0.6 else "")
        out.append("".join(parts).replace("\n", " ").replace("\x00", " "))
    out += [line for line in lines if line.strip()]
    return "\n".join(out) + "\n"


@pytest.fixture(scope="session")
def corpus_file(workdir):
    path = workdir / "spm_train.txt"
    path.write_text(training_text(random.Random(SEED + 1)), encoding="utf-8")
    return path


def train(workdir, corpus_file, name, **kw):
    args = dict(input=str(corpus_file), model_prefix=str(workdir / name), model_type="bpe",
                vocab_size=600, byte_fallback=True, normalization_rule_name="identity",
                remove_extra_whitespaces=False, add_dummy_prefix=True, character_coverage=0.995,
                split_digits=True, allow_whitespace_only_pieces=True, num_threads=2,
                minloglevel=2)
    args.update(kw)
    sentencepiece.SentencePieceTrainer.train(**args)
    return workdir / f"{name}.model"


@pytest.fixture(scope="session")
def trained_model(workdir, corpus_file):
    return train(workdir, corpus_file, "bpe600")


@pytest.fixture(scope="session")
def user_model(workdir, corpus_file):
    return train(workdir, corpus_file, "bpe_user", vocab_size=500, byte_fallback=False,
                 character_coverage=0.98,
                 user_defined_symbols=["<|image|>", "ab", "abc", "qalign", "😀", "é", "▁the"],
                 control_symbols=["<ctl>"])


# -- a minimal protobuf writer, to craft models sentencepiece can load --

def _varint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _field(num, wire, value):
    if wire == 0:
        return _varint(num << 3) + _varint(value)
    if wire == 2:
        return _varint(num << 3 | 2) + _varint(len(value)) + value
    return _varint(num << 3 | wire) + value


def rewrite_model(data, piece_type=None, normalizer=None):
    """Re-serialize a ModelProto, changing piece types (piece_type(i, piece, type) -> type)
    and/or normalizer_spec varint fields (normalizer: {field: value})."""
    out = b""
    index = 0
    for num, wire, value in spm.parse_fields(data):
        if num == 1 and piece_type:
            fields = {n: (w, v) for n, w, v in spm.parse_fields(value)}
            typ = fields.get(3, (0, spm.NORMAL))[1]
            typ = piece_type(index, fields[1][1], typ)
            value = _field(1, 2, fields[1][1]) + _field(2, 5, fields[2][1]) + _field(3, 0, typ)
            index += 1
        elif num == 3 and normalizer:
            kept = [(n, w, v) for n, w, v in spm.parse_fields(value) if n not in normalizer]
            value = b"".join(_field(n, w, v) for n, w, v in kept)
            value += b"".join(_field(n, 0, int(v)) for n, v in normalizer.items())
        out += _field(num, wire, value)
    return out


@pytest.fixture(scope="session")
def unused_model(workdir, trained_model):
    """The trained model with every 5th merged (multi-character) normal piece re-typed
    UNUSED and every 13th USER_DEFINED (so user pieces also occur inside merges)."""
    def retype(i, piece, typ):
        if typ != spm.NORMAL or len(piece.decode()) < 2:
            return typ
        return spm.UNUSED if i % 5 == 0 else spm.USER_DEFINED if i % 13 == 0 else typ

    path = workdir / "bpe_unused.model"
    path.write_bytes(rewrite_model(trained_model.read_bytes(), piece_type=retype))
    m = spm.load(path)
    assert m.types.count(spm.UNUSED) > 20 and m.types.count(spm.USER_DEFINED) > 10
    return path


def processor(path):
    return sentencepiece.SentencePieceProcessor(model_file=str(path))


# ---- tests: tokenizer.c vs sentencepiece ------------------------------------------------------

def test_real_vocabulary(real_tokenizer, driver, workdir):
    t0 = time.time()
    sp = processor(real_tokenizer)
    model = spm.load(real_tokenizer)
    model.check_supported()
    vocab = write_vocab(model, workdir / "real.tokvocab")
    strings = make_strings(SEED, 3000, 800)
    n = compare("real LLaMA-2", driver, vocab, sp, strings)
    n += compare("real LLaMA-2, no BOS", driver, vocab, sp, strings[::7], modes=(0,))
    # LLaMA-2's vocabulary has "▁" and U+FFFD, so len + 2 ids always suffice (tokenizer.h)
    for s, ids in zip(strings, drive(driver, vocab, [(1, to_bytes(s)) for s in strings])):
        assert len(ids) <= len(to_bytes(s)) + 2, s
    report(f"tokenizer[real LLaMA-2]: {n} cases in {time.time() - t0:.1f} s")


def test_qalign_prompt_ids(real_tokenizer, driver, workdir):
    vocab = write_vocab(spm.load(real_tokenizer), workdir / "real.tokvocab")
    keys = list(EXPECTED_PROMPT_IDS)
    got = drive(driver, vocab, [(2, qalign_prompt(*k).encode()) for k in keys])
    for k, ids in zip(keys, got):
        assert ids == EXPECTED_PROMPT_IDS[k], f"{k}: {ids}"
    words = list(LEVEL_IDS)
    got = drive(driver, vocab, [(1, w.encode()) for w in words])
    assert [ids[1] for ids in got] == list(LEVEL_IDS.values()), got
    report(f"tokenizer: Q-Align prompts {keys} and level ids {list(LEVEL_IDS.values())} "
           "exactly as in architecture.md 3.3 / 5.2")


def test_trained_vocabulary(trained_model, driver, workdir):
    sp = processor(trained_model)
    model = spm.load(trained_model)
    model.check_supported()
    assert model.byte_fallback and model.normalizer_name == "identity"
    vocab = write_vocab(model, workdir / "trained.tokvocab")
    strings = make_strings(SEED + 2, 2500, 500)
    compare("trained BPE 600", driver, vocab, sp, strings, modes=(1,))
    compare("trained BPE 600, no BOS", driver, vocab, sp, strings[::5], modes=(0,))


def test_user_defined_and_unk(user_model, driver, workdir):
    sp = processor(user_model)
    model = spm.load(user_model)
    model.check_supported()
    assert not model.byte_fallback and spm.USER_DEFINED in model.types
    vocab = write_vocab(model, workdir / "user.tokvocab")
    extra = ["ab", "abc", "abcd", "aab", "xabcx", "qalign qalign", "<|image|>", "a<|image|>b",
             "😀😀", "éé", "the the", "▁the", " the", "漢字漢字 ∑∑", "\u0915\u094d\u0937"]
    strings = extra + make_strings(SEED + 3, 1500, 300)
    assert any(sp.unk_id() in sp.EncodeAsIds(to_bytes(s)) for s in strings)
    compare("user-defined, no byte fallback", driver, vocab, sp, strings)


def test_unused_pieces(unused_model, driver, workdir):
    sp = processor(unused_model)
    model = spm.load(unused_model)
    vocab = write_vocab(model, workdir / "unused.tokvocab")
    strings = make_strings(SEED + 4, 1500, 100)
    compare("UNUSED + USER_DEFINED retyped", driver, vocab, sp, strings)
    unused = {i for i, t in enumerate(model.types) if t == spm.UNUSED}
    assert not any(unused & set(sp.EncodeAsIds(to_bytes(s))) for s in strings)


def real_or_trained(request):
    """The real tokenizer.model if present, else the model trained here."""
    try:
        return request.getfixturevalue("real_tokenizer"), "real"
    except pytest.skip.Exception:
        return request.getfixturevalue("trained_model"), "trained"


@pytest.mark.parametrize("which", ["main", "user"])
def test_sanitizers(which, request, driver, driver_san, workdir, user_model):
    """Hostile byte strings through the ASan/UBSan build; same ids as the normal build.
    main: the real vocabulary (else the trained one); user: user-defined pieces, <unk>."""
    path, name = real_or_trained(request) if which == "main" else (user_model, "user")
    vocab = write_vocab(spm.load(path), workdir / f"san_{name}.tokvocab")
    rng = random.Random(SEED + 5)
    recs = [(rng.choice([0, 1, 2]), random_bytes(rng)) for _ in range(300)]
    recs += [(rng.choice([0, 1, 2]), bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))))
             for _ in range(300)]
    recs += [(rng.choice([0, 1, 2]), random_string(rng, natural_lines()).encode())
             for _ in range(200)]
    recs += [(2, b"<|image|>" * 5), (2, b""), (2, b"<|image|"), (0, b""), (1, b" " * 5000),
             (1, b"\xff" * 3000), (0, "😀".encode() * 500)]
    assert drive(driver_san, vocab, recs) == drive(driver, vocab, recs)
    report(f"tokenizer[{name}]: {len(recs)} hostile inputs under ASan+UBSan, identical ids")


def test_speed(request, driver, workdir):
    """100 KB inputs, including the worst cases for merging (one long tie run of spaces)."""
    path, name = real_or_trained(request)
    vocab = write_vocab(spm.load(path), workdir / f"speed_{name}.tokvocab")
    rng = random.Random(SEED + 6)
    lines = natural_lines()
    texts = {
        "natural text": "\n".join(lines).encode()[:100_000],
        "random mix": "".join(random_string(rng, lines) for _ in range(400)).encode()[:100_000],
        "spaces": b" " * 100_000,
        "one letter": b"a" * 100_000,
        "CJK": ("漢" * 40_000).encode()[:99_999],
        "random bytes": bytes(rng.randrange(256) for _ in range(100_000)),
    }
    sp = processor(path)
    got = drive(driver, vocab, [(3, t) for t in texts.values()])
    ids = drive(driver, vocab, [(1, t) for t in texts.values()])
    worst = 0.0
    for (kind, t), (count, secs), i in zip(texts.items(), got, ids):
        assert i == sp.EncodeAsIds(t, add_bos=True), kind
        assert secs < 0.5, f"{kind}: {secs:.3f} s for 100 KB"
        worst = max(worst, secs)
    report(f"tokenizer[{name}]: 100 KB inputs ({', '.join(texts)}) encode in <= {worst * 1000:.0f} ms, "
           "ids identical to sentencepiece")


# ---- tokenize_prompt ---------------------------------------------------------------------

def tokenizer_image_token(sp, prompt, image_token_index=-200):
    """Q-Align's mm_utils.tokenizer_image_token, with sentencepiece in place of the HF
    LlamaTokenizer (add_bos_token=True)."""
    prompt_chunks = [sp.EncodeAsIds(chunk, add_bos=True) if len(chunk) > 0 else []
                     for chunk in prompt.split(MARK)]

    def insert_separator(X, sep):
        return [ele for sublist in zip(X, [sep] * len(X)) for ele in sublist][:-1]

    input_ids = []
    offset = 0
    if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == sp.bos_id():
        offset = 1
        input_ids.append(prompt_chunks[0][0])
    for x in insert_separator(prompt_chunks, [image_token_index] * (offset + 1)):
        input_ids.extend(x[offset:])
    return input_ids


def prompt_cases(seed):
    rng = random.Random(seed)
    lines = natural_lines()
    p = qalign_prompt("quality", "image")
    cases = [p, p.replace(MARK, ""), MARK + p.replace(MARK, ""), p.replace(MARK, "") + MARK,
             p.replace(MARK, MARK + MARK), p.replace(MARK, MARK + " x " + MARK), MARK, MARK * 3,
             "", " ", " " + MARK + " ", "a" + MARK, MARK + "a", MARK + " a" + MARK + "b",
             "<|image|", "<|image|<|image|>>", "USER: <|image|>How would you rate the aesthetics "
             "of this image? ASSISTANT: The aesthetics of the image is"]
    for task in ["quality", "aesthetics", "aesthetic"]:
        for what in ["image", "video"]:
            cases.append(qalign_prompt(task, what))
    for _ in range(400):
        s = random_string(rng, lines).replace("\x00", "")
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            k = rng.randint(0, len(s))
            s = s[:k] + MARK + s[k:]
        cases.append(s)
    return cases


def check_prompts(name, driver, vocab, sp, cases):
    got = drive(driver, vocab, [(2, c.encode()) for c in cases])
    bad = [(c, g, tokenizer_image_token(sp, c)) for c, g in zip(cases, got)
           if g != tokenizer_image_token(sp, c)]
    report(f"tokenize_prompt[{name}]: {len(cases)} prompts vs Python tokenizer_image_token, "
           f"{len(bad)} mismatches")
    assert not bad, f"first mismatch: {bad[0]}"


def test_tokenize_prompt_real(real_tokenizer, driver, workdir):
    vocab = write_vocab(spm.load(real_tokenizer), workdir / "real.tokvocab")
    sp = processor(real_tokenizer)
    check_prompts("real", driver, vocab, sp, prompt_cases(SEED + 7))
    # the documented corner: a leading marker keeps every later chunk's BOS
    assert drive(driver, vocab, [(2, b"<|image|>good")])[0] == [-200, 1, 1781]


def test_tokenize_prompt_trained(trained_model, driver, workdir):
    vocab = write_vocab(spm.load(trained_model), workdir / "trained.tokvocab")
    check_prompts("trained", driver, vocab, processor(trained_model), prompt_cases(SEED + 8))


# ---- spm.py -------------------------------------------------------------------------------

def check_loaded(path):
    sp = processor(path)
    m = spm.load(path)
    n = sp.get_piece_size()
    assert len(m.pieces) == len(m.scores) == len(m.types) == n
    for i in range(n):
        assert m.pieces[i].decode() == sp.id_to_piece(i), i
        assert m.scores[i] == sp.get_score(i), i
        t = m.types[i]
        assert (t == spm.UNKNOWN) == sp.is_unknown(i), i
        assert (t == spm.CONTROL) == sp.is_control(i), i
        assert (t == spm.UNUSED) == sp.is_unused(i), i
        assert (t == spm.BYTE) == sp.is_byte(i), i
    assert (m.unk_id, m.bos_id, m.eos_id) == (sp.unk_id(), sp.bos_id(), sp.eos_id())
    return sp, m


def test_spm_real(real_tokenizer):
    check_loaded(real_tokenizer)
    m = spm.load(real_tokenizer)
    assert (m.add_dummy_prefix, m.remove_extra_whitespaces, m.normalizer_name, m.byte_fallback) \
        == (True, False, "identity", True)
    report("spm.py[real]: pieces/scores/types/ids identical to sentencepiece's")


def test_spm_trained(trained_model, user_model, unused_model):
    for path in (trained_model, user_model, unused_model):
        check_loaded(path)


def test_spm_rejects(workdir, corpus_file, trained_model):
    small = dict(vocab_size=500, character_coverage=0.98, input_sentence_size=2000,
                 shuffle_input_sentence=False)
    uni = train(workdir, corpus_file, "unigram", model_type="unigram", **small)
    nfkc = train(workdir, corpus_file, "nfkc", normalization_rule_name="nmt_nfkc", **small)
    squeeze = workdir / "squeeze.model"
    squeeze.write_bytes(rewrite_model(trained_model.read_bytes(), normalizer={4: 1}))
    assert processor(squeeze).EncodeAsPieces("a  b") == processor(trained_model).EncodeAsPieces("a b")
    for path, words in [(uni, "UNIGRAM"), (nfkc, "nmt_nfkc"), (squeeze, "remove_extra_whitespaces")]:
        with pytest.raises(ValueError, match=words):
            spm.load(path).check_supported()
    spm.load(trained_model).check_supported()


def test_init_rejects(driver, workdir, trained_model):
    """tokenizer_init refuses vocabularies sentencepiece would refuse to load."""
    base = spm.load(trained_model)

    def variant(**change):
        m = spm.loads(trained_model.read_bytes())
        for k, v in change.items():
            setattr(m, k, v)
        return m

    no_unk = variant(types=[spm.NORMAL if t == spm.UNKNOWN else t for t in base.types])
    partial_bytes = variant(types=[spm.NORMAL if p == b"<0x41>" else t
                                   for p, t in zip(base.pieces, base.types)])
    dup = variant(pieces=[base.pieces[-1] if i == len(base.pieces) - 2 else p
                          for i, p in enumerate(base.pieces)])
    empty = variant(pieces=[b"" if i == 300 else p for i, p in enumerate(base.pieces)])
    wrong_unk = variant(unk_id=1)
    bad_user = variant(pieces=[b"\xff\xfe" if i == 400 else p for i, p in enumerate(base.pieces)],
                       types=[spm.USER_DEFINED if i == 400 else t for i, t in enumerate(base.types)])
    for name, m in [("no unk", no_unk), ("255 byte pieces", partial_bytes),
                    ("duplicate piece", dup), ("empty piece", empty), ("unk_id", wrong_unk),
                    ("user-defined piece not UTF-8", bad_user)]:
        path = write_vocab(m, workdir / "bad.tokvocab")
        r = run([driver, path], input="")
        assert r.returncode == 3 and r.stdout.startswith("INIT_ERROR: tokenizer:"), \
            f"{name}: {r.returncode} {r.stdout}"
        with pytest.raises(ValueError):
            m.check_supported()
