"""A micro model: the tiny architecture shrunk to a few tens of kilobytes (32-wide, one layer
each, 8x8 images in 4x4 patches) with a 64-piece tokenizer trained here by sentencepiece, in
each weight type, written by export.py's own writer with random weights. Small enough for a
fuzzer to mutate (tests/test_fuzz.py seeds fuzz/fuzz_model.c with it); the level words are
pieces of their own, so it scores like a real model."""
import io

import export as ex

DIMS = dict(v_dim=32, v_layers=1, v_heads=2, v_mlp=64, v_image=8, v_patch=4,
            a_layers=1, a_heads=2, a_queries=4, a_mlp=64,
            l_dim=32, l_layers=1, l_heads=2, l_kv_heads=1, l_mlp=64)
WORDS = ["excellent", "good", "fair", "poor", "bad"]


def tokenizer(path):
    """A 64-piece BPE tokenizer with LLaMA's conventions (identity normalisation, dummy
    prefix, no whitespace folding, <unk> <s> </s> = 0 1 2)."""
    import sentencepiece as spm
    corpus = ("How would you rate the quality of this image?\nThe aesthetics of the video is\n"
              "USER: ASSISTANT: " + " ".join(WORDS) + "\n") * 20
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus.splitlines()), model_writer=out, vocab_size=64,
                                   model_type="bpe", byte_fallback=False, character_coverage=1.0,
                                   hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
                                   normalization_rule_name="identity", add_dummy_prefix=True,
                                   remove_extra_whitespaces=False, user_defined_symbols=["▁" + w for w in WORDS])
    path.write_bytes(out.getvalue())
    return path


def write(path, dtype, tok_path, seed=1):
    """The micro model in dtype (a key of export.py DTYPES: "f32", "bf16", "q8_0", ...) at path."""
    import sentencepiece as spm
    cfg = dict(DIMS, v_eps=1e-6, a_eps=1e-5, a_ffn_eps=1e-6, l_eps=1e-6, l_rope_theta=10000.0, l_max_pos=2048,
               l_vocab=spm.SentencePieceProcessor(model_file=str(tok_path)).get_piece_size(),
               fill=[122, 116, 104], mean=ex.CLIP_MEAN, std=ex.CLIP_STD, grid=DIMS["v_image"] // DIMS["v_patch"])
    ex.check_dims(cfg)
    ex.write_model(str(path), cfg, ex.DTYPES[dtype], str(tok_path), ex.SyntheticSource(cfg, seed), log=None)
    return path
