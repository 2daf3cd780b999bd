"""bench/qwen_torch.py - the PyTorch oracle (tests/qwen_ref.py) on a full-size random Qwen3.5
model, for the speed comparison of README "Q-ReAlign (Qwen3.5)".

    python3 bench/qwen_torch.py DIR [--threads 2] [--sizes 448x448,1024x768]

Writes a random Q-ReAlign-Mini-shaped checkpoint (bf16 safetensors, the released layout) to
DIR once, then times the oracle's vision tower and decoder in float32 per image size (random
pixels, the prompt's length of the hf form) with torch.set_num_threads(threads). Prints one
line per size and the CPU model."""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import qwen_ref  # noqa: E402

MINI = dict(
    text_config=dict(qwen_ref.TINY["text_config"], hidden_size=1024, intermediate_size=3584, num_hidden_layers=24,
                     num_attention_heads=8, num_key_value_heads=2, head_dim=256, linear_key_head_dim=128,
                     linear_value_head_dim=128, linear_num_key_heads=16, linear_num_value_heads=16, vocab_size=248320,
                     layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 6,
                     rope_parameters=dict(rope_type="default", rope_theta=1e7, partial_rotary_factor=0.25,
                                          mrope_section=[11, 11, 10], mrope_interleaved=True)),
    vision_config=dict(qwen_ref.TINY["vision_config"], depth=12, hidden_size=768, intermediate_size=3072, num_heads=12,
                       out_hidden_size=1024, num_position_embeddings=2304),
    architectures=["Qwen3_5ForConditionalGeneration"], model_type="qwen3_5", image_token_id=248056,
    video_token_id=248057, vision_start_token_id=248053, vision_end_token_id=248054, tie_word_embeddings=True)


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="448x448,1024x768")
    a = ap.parse_args()
    ck = os.path.join(a.dir, "checkpoint")
    if not os.path.exists(os.path.join(ck, "model.safetensors")):
        qwen_ref.write_checkpoint(ck, MINI, seed=0)
    torch.set_num_threads(a.threads)
    m = qwen_ref.Qwen35(ck, torch.float32)
    print(f"# PyTorch {torch.__version__} float32, {a.threads} threads, {cpu_model()}")
    rng = np.random.default_rng(0)
    for size in a.sizes.split(","):
        w, h = (int(x) for x in size.split("x"))
        gh, gw = h // 16 // 2 * 2, w // 16 // 2 * 2      # (smart_resize: multiples of 32 near the size)
        n = gh * gw
        px = torch.from_numpy(rng.uniform(-1, 1, (n, 1536)).astype(np.float32))
        ids = [248045, 846, 198, 248053] + [248056] * (n // 4) + [248054] + list(range(1000, 1030))
        with torch.no_grad():
            t0 = time.time()
            vis = m.vision(px, [(1, gh, gw)])
            t1 = time.time()
            emb = m.W("model.language_model.embed_tokens.weight")[torch.tensor(ids)].clone()
            emb[torch.tensor([t == 248056 for t in ids])] = vis
            pos = m.rope_index(ids, [(1, gh, gw)])
            h_ = m.decoder(emb, pos, chunk=True)
            t2 = time.time()
        print(f"{w}x{h}: {n // 4} visual tokens, {len(ids)} decoder rows: vision {t1 - t0:.2f} s, decoder {t2 - t1:.2f} s, "
              f"total {t2 - t0:.2f} s")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
