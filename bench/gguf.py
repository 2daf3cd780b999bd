"""bench/gguf.py - a LLaMA-shaped model with random weights as a GGUF file, for timing
llama.cpp on the same decoder shape as qalign's (bench.py). Written from the GGUF format
(version 3): header, key/value metadata, tensor infos, then the data, each tensor at a
multiple of the alignment (32 bytes). numpy only.

    python3 bench/gguf.py OUT.gguf q8_0|q4_0|bf16 [--tiny]

The weights are random (the speed of a matmul does not depend on the values): a few MB of
random blocks written over and over. The tokenizer is the real LLaMA one (spm.py reads
tokenizer.model), so llama.cpp accepts the file; the benchmark feeds token ids directly.
"""
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# ggml tensor types and GGUF value types used here
GGML = {"f32": 0, "q4_0": 2, "q8_0": 8, "bf16": 30}
FILE_TYPE = {"q4_0": 2, "q8_0": 7, "bf16": 32}          # llama_ftype: MOSTLY_Q4_0, MOSTLY_Q8_0, MOSTLY_BF16
BLOCK = {"q4_0": (32, 18), "q8_0": (32, 34), "bf16": (1, 2), "f32": (1, 4)}   # values, bytes per block
U32, I32, F32, STRING, ARRAY = 4, 5, 6, 8, 9
ALIGN = 32

LLAMA2_7B = dict(dim=4096, layers=32, heads=32, kv_heads=32, mlp=11008, vocab=32000)
TINY = dict(dim=64, layers=2, heads=4, kv_heads=4, mlp=192, vocab=32000)


def gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, typ, value):
    out = gguf_str(key) + struct.pack("<I", typ)
    if typ == STRING:
        return out + gguf_str(value)
    if typ == ARRAY:
        etyp, items = value
        out += struct.pack("<IQ", etyp, len(items))
        if etyp == STRING:
            return out + b"".join(gguf_str(x) for x in items)
        return out + np.asarray(items, dtype={F32: "<f4", I32: "<i4", U32: "<u4"}[etyp]).tobytes()
    return out + struct.pack({U32: "<I", I32: "<i", F32: "<f"}[typ], value)


def tensors(c, wtype):
    """(name, ne (innermost first), ggml type name) in llama.cpp's naming."""
    D, F, V, kvd = c["dim"], c["mlp"], c["vocab"], c["dim"] // c["heads"] * c["kv_heads"]
    out = [("token_embd.weight", (D, V), wtype)]
    for i in range(c["layers"]):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (D,), "f32"), (p + "attn_q.weight", (D, D), wtype),
                (p + "attn_k.weight", (D, kvd), wtype), (p + "attn_v.weight", (D, kvd), wtype),
                (p + "attn_output.weight", (D, D), wtype), (p + "ffn_norm.weight", (D,), "f32"),
                (p + "ffn_gate.weight", (D, F), wtype), (p + "ffn_up.weight", (D, F), wtype),
                (p + "ffn_down.weight", (F, D), wtype)]
    return out + [("output_norm.weight", (D,), "f32"), ("output.weight", (D, V), wtype)]


def random_blocks(typ, nbytes, rng):
    """nbytes of valid random data of a ggml type: f16 scales of about 0.01 for the
    quantised blocks, values of about 0.02 for bf16, 1.0 for f32 (norm weights)."""
    if typ == "f32":
        return np.ones(nbytes // 4, "<f4").tobytes()
    if typ == "bf16":
        v = (rng.standard_normal(nbytes // 2) * 0.02).astype("<f4")
        return (v.view("<u4") >> 16).astype("<u2").tobytes()
    n, size = BLOCK[typ]
    blocks = np.frombuffer(rng.bytes(nbytes), np.uint8).reshape(-1, size).copy()
    blocks[:, :2] = np.frombuffer((rng.uniform(0.002, 0.01, len(blocks))).astype("<f2").tobytes(), np.uint8).reshape(-1, 2)
    return blocks.tobytes()


def write(out, wtype, shape=LLAMA2_7B, seed=0):
    import export
    import spm
    sp = spm.load(export.find_tokenizer(None))
    c = shape
    meta = [kv("general.architecture", STRING, "llama"), kv("general.name", STRING, "random LLaMA-2-7B shape"),
            kv("general.file_type", U32, FILE_TYPE[wtype]), kv("general.alignment", U32, ALIGN),
            kv("llama.context_length", U32, 4096), kv("llama.embedding_length", U32, c["dim"]),
            kv("llama.block_count", U32, c["layers"]), kv("llama.feed_forward_length", U32, c["mlp"]),
            kv("llama.rope.dimension_count", U32, c["dim"] // c["heads"]),
            kv("llama.attention.head_count", U32, c["heads"]), kv("llama.attention.head_count_kv", U32, c["kv_heads"]),
            kv("llama.attention.layer_norm_rms_epsilon", F32, 1e-5), kv("llama.vocab_size", U32, c["vocab"]),
            kv("tokenizer.ggml.model", STRING, "llama"),
            kv("tokenizer.ggml.tokens", ARRAY, (STRING, [p.decode("utf-8", "replace") for p in sp.pieces])),
            kv("tokenizer.ggml.scores", ARRAY, (F32, sp.scores)),
            kv("tokenizer.ggml.token_type", ARRAY, (I32, sp.types)),
            kv("tokenizer.ggml.bos_token_id", U32, sp.bos_id), kv("tokenizer.ggml.eos_token_id", U32, sp.eos_id),
            kv("tokenizer.ggml.unknown_token_id", U32, sp.unk_id)]
    infos, offset, sizes = [], 0, []
    for name, ne, typ in tensors(c, wtype):
        n, size = BLOCK[typ]
        nbytes = int(np.prod(ne)) // n * size
        infos.append(gguf_str(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
                     + struct.pack("<IQ", GGML[typ], offset))
        sizes.append((typ, nbytes))
        offset += (nbytes + ALIGN - 1) // ALIGN * ALIGN
    rng = np.random.default_rng(seed)
    pool = {t: random_blocks(t, (1 << 24) // BLOCK[t][1] * BLOCK[t][1], rng) for t in {typ for typ, _ in sizes}}  # 16 MB each
    tmp = Path(str(out) + ".partial")
    with open(tmp, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(meta)) + b"".join(meta) + b"".join(infos))
        f.write(b"\0" * (-f.tell() % ALIGN))
        for typ, nbytes in sizes:
            left = nbytes
            while left:
                chunk = pool[typ][:min(left, len(pool[typ]))]
                f.write(chunk)
                left -= len(chunk)
            f.write(b"\0" * (-nbytes % ALIGN))
    tmp.replace(out)


if __name__ == "__main__":
    write(sys.argv[1], sys.argv[2], TINY if "--tiny" in sys.argv else LLAMA2_7B)
