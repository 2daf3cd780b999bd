"""spm.py - read a SentencePiece tokenizer.model without sentencepiece or protobuf.

A tokenizer.model file is one serialized protobuf message, ModelProto
(sentencepiece_model.proto). Only the parts a BPE *encoder* needs are read:

    ModelProto
      1  pieces           repeated SentencePiece { 1 piece: string, 2 score: float,
                                                   3 type: enum (default NORMAL=1) }
      2  trainer_spec     TrainerSpec { 3 model_type (UNIGRAM=1 default, BPE=2, WORD=3, CHAR=4),
                                        24 treat_whitespace_as_suffix, 35 byte_fallback,
                                        40 unk_id (0), 41 bos_id (1), 42 eos_id (2) }
      3  normalizer_spec  NormalizerSpec { 1 name, 2 precompiled_charsmap,
                                           3 add_dummy_prefix (true),
                                           4 remove_extra_whitespaces (true),
                                           5 escape_whitespaces (true) }

Usage:
    m = spm.load("tokenizer.model")
    m.check_supported()               # ValueError unless tokenizer.c can encode with it
    m.pieces, m.scores, m.types       # what export.py stores in the model file

The encoder itself is tokenizer.c, which qalign runs (also to find the level words' ids
when it loads a model); tests/test_tokenizer.py checks it id-for-id against sentencepiece.
"""
import struct
from dataclasses import dataclass, field

# ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# TrainerSpec.ModelType
MODEL_TYPES = {1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"}



# ---- protobuf wire format ------------------------------------------------------------

def _varint(buf, pos):
    """Decode one base-128 varint at buf[pos]; return (value, new_pos)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _signed(v):
    """int32/int64/enum fields are two's complement in 64 bits (-1 takes 10 bytes)."""
    return v - (1 << 64) if v >= (1 << 63) else v


def parse_fields(buf):
    """Split one protobuf message into [(field_number, wire_type, value)], in file order.
    value: int for varint (wire 0), bytes for fixed64 (1), length-delimited (2) and
    fixed32 (5). Groups (3, 4) are not used by sentencepiece and are rejected."""
    out = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {num})")
        if pos > len(buf):
            raise ValueError(f"truncated protobuf field {num}")
        out.append((num, wire, value))
    return out


# ---- the model -----------------------------------------------------------------------

@dataclass
class SpmModel:
    pieces: list = field(default_factory=list)   # [n] piece i as UTF-8 bytes
    scores: list = field(default_factory=list)   # [n] float (float32 value)
    types: list = field(default_factory=list)    # [n] NORMAL..BYTE
    model_type: int = 1                           # TrainerSpec.model_type (2 = BPE)
    byte_fallback: bool = False                   # unknown characters -> <0xXX> pieces
    treat_whitespace_as_suffix: bool = False      # "▁" appended instead of prepended
    unk_id: int = 0                               # TrainerSpec ids (sentencepiece defaults)
    bos_id: int = 1
    eos_id: int = 2
    normalizer_name: str = ""                     # "identity" for LLaMA
    precompiled_charsmap: bytes = b""             # normalisation rules; empty = none
    add_dummy_prefix: bool = True                 # prepend one "▁" to non-empty text
    remove_extra_whitespaces: bool = True         # squeeze/strip spaces (LLaMA: false)
    escape_whitespaces: bool = True               # ' ' -> "▁"

    # ---- what tokenizer.c implements ----

    def check_supported(self):
        """Raise ValueError naming the first setting tokenizer.c does not implement."""
        if self.model_type != 2:
            name = MODEL_TYPES.get(self.model_type, str(self.model_type))
            raise ValueError(f"tokenizer model_type is {name}; only BPE (LLaMA) is supported")
        if self.normalizer_name not in ("identity", "") or self.precompiled_charsmap:
            raise ValueError(f"tokenizer normalizer is {self.normalizer_name!r}; only 'identity' "
                             "(no NFKC / precompiled charsmap) is supported")
        if self.remove_extra_whitespaces:
            raise ValueError("tokenizer has remove_extra_whitespaces=true; only false (LLaMA) "
                             "is supported")
        if not self.escape_whitespaces:
            raise ValueError("tokenizer has escape_whitespaces=false; only true is supported")
        if self.treat_whitespace_as_suffix:
            raise ValueError("tokenizer has treat_whitespace_as_suffix=true; not supported")
        self._check_vocab()

    def _check_vocab(self):
        """The load-time checks of sentencepiece's ModelInterface::InitializePieces."""
        n = len(self.pieces)
        if n == 0:
            raise ValueError("tokenizer has no pieces")
        seen = ({}, {})   # (normal/user-defined/unused, unknown/control/byte)
        n_unk = 0
        n_bytes = 0
        for i, (p, t) in enumerate(zip(self.pieces, self.types)):
            if not p:
                raise ValueError(f"tokenizer piece {i} is empty")
            if t not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE):
                raise ValueError(f"tokenizer piece {i} has unknown type {t}")
            table = seen[0] if t in (NORMAL, USER_DEFINED, UNUSED) else seen[1]
            if p in table:
                raise ValueError(f"tokenizer piece {p!r} is defined twice ({table[p]}, {i})")
            table[p] = i
            if t == USER_DEFINED and not _is_utf8(p):
                raise ValueError(f"user-defined piece {p!r} is not valid UTF-8")
            n_unk += t == UNKNOWN
            if t == BYTE:
                if not self.byte_fallback:
                    raise ValueError(f"byte piece {p!r} found although byte_fallback is false")
                if _byte_of_piece(p) is None:
                    raise ValueError(f"byte piece {p!r} is not of the form <0xXX>")
                n_bytes += 1
        if n_unk != 1:
            raise ValueError(f"tokenizer has {n_unk} <unk> pieces, needs exactly 1")
        if self.byte_fallback and n_bytes != 256:
            raise ValueError(f"byte_fallback is true but there are {n_bytes} byte pieces, not 256")
        for name in ("unk_id", "bos_id", "eos_id"):
            v = getattr(self, name)
            if v >= n:
                raise ValueError(f"tokenizer {name}={v} is out of range (n={n})")
        if self.types[self.unk_id] != UNKNOWN:
            raise ValueError(f"tokenizer unk_id={self.unk_id} is not the <unk> piece")


def utf8_char_len(buf, pos):
    """Length of the well-formed UTF-8 character at buf[pos], or 0 if malformed
    (sentencepiece's DecodeUTF8: no overlongs, no surrogates, nothing above U+10FFFF)."""
    b0 = buf[pos]
    if b0 < 0x80:
        return 1
    rest = len(buf) - pos
    if b0 & 0xE0 == 0xC0:
        n, cp, lo = 2, b0 & 0x1F, 0x80
    elif b0 & 0xF0 == 0xE0:
        n, cp, lo = 3, b0 & 0x0F, 0x800
    elif b0 & 0xF8 == 0xF0:
        n, cp, lo = 4, b0 & 0x07, 0x10000
    else:
        return 0
    if rest < n:
        return 0
    for k in range(1, n):
        if buf[pos + k] & 0xC0 != 0x80:
            return 0
        cp = (cp << 6) | (buf[pos + k] & 0x3F)
    if cp < lo or 0xD800 <= cp < 0xE000 or cp > 0x10FFFF:
        return 0
    return n


def _is_utf8(b):
    pos = 0
    while pos < len(b):
        n = utf8_char_len(b, pos)
        if n == 0:
            return False
        pos += n
    return True


def _byte_of_piece(p):
    """<0xXX> (upper-case hex, as sentencepiece writes it) -> XX, else None."""
    if len(p) == 6 and p.startswith(b"<0x") and p.endswith(b">"):
        h = p[3:5]
        if all(c in b"0123456789ABCDEF" for c in h):
            return int(h, 16)
    return None


# ---- loading -------------------------------------------------------------------------

def loads(data):
    """Parse the bytes of a tokenizer.model into an SpmModel."""
    m = SpmModel()
    for num, wire, value in parse_fields(bytes(data)):
        if num == 1 and wire == 2:
            piece, score, typ = b"", 0.0, NORMAL
            for n2, w2, v2 in parse_fields(value):
                if n2 == 1 and w2 == 2:
                    piece = bytes(v2)
                elif n2 == 2 and w2 == 5:
                    score = struct.unpack("<f", v2)[0]
                elif n2 == 3 and w2 == 0:
                    typ = _signed(v2)
            m.pieces.append(piece)
            m.scores.append(score)
            m.types.append(typ)
        elif num == 2 and wire == 2:
            for n2, w2, v2 in parse_fields(value):
                if w2 != 0:
                    continue
                if n2 == 3:
                    m.model_type = _signed(v2)
                elif n2 == 24:
                    m.treat_whitespace_as_suffix = bool(v2)
                elif n2 == 35:
                    m.byte_fallback = bool(v2)
                elif n2 == 40:
                    m.unk_id = _signed(v2)
                elif n2 == 41:
                    m.bos_id = _signed(v2)
                elif n2 == 42:
                    m.eos_id = _signed(v2)
        elif num == 3 and wire == 2:
            for n2, w2, v2 in parse_fields(value):
                if n2 == 1 and w2 == 2:
                    m.normalizer_name = bytes(v2).decode("utf-8", "replace")
                elif n2 == 2 and w2 == 2:
                    m.precompiled_charsmap = bytes(v2)
                elif n2 == 3 and w2 == 0:
                    m.add_dummy_prefix = bool(v2)
                elif n2 == 4 and w2 == 0:
                    m.remove_extra_whitespaces = bool(v2)
                elif n2 == 5 and w2 == 0:
                    m.escape_whitespaces = bool(v2)
    return m


def load(path):
    """Read a tokenizer.model file into an SpmModel (call check_supported() before use)."""
    with open(path, "rb") as f:
        return loads(f.read())


if __name__ == "__main__":
    import sys
    model = load(sys.argv[1])
    model.check_supported()
    for arg in sys.argv[2:]:
        print(arg, model.encode(arg))
