"""Golden values for the REAL Q-ReAlign weights (`make test-real`; not part of `make test`).

    QALIGN_REAL_QWEN_MODEL=~/.cache/qalign/Q-ReAlign-Mini-0.8B-<id>-q8_0.qalign make test-real

No published number carries enough digits to check a port against, so the golden value is
computed on your machine by an independent oracle: tests/qwen_ref.py, the PyTorch port of
Hugging Face transformers' Qwen3.5 modeling code (float32, torch 1.13 or later), loading the
checkpoint's own safetensors. For each image and for both prompt forms (the preset
q-realign-mini, as pyiqa's `qrealign`, and q-realign-swift, as Q-ReAlign's scorer.py), it
checks qalign's `--dump` of that image against oracles that share no code with qalign:

- pixel_values: equal, bit for bit, to the processor's Python ports (tests/test_qwen_image.py:
  transformers' / qwen_vl_utils' smart_resize with the checkpoint's min/max pixels, ATen's
  uint8 antialiased bicubic or Pillow's, the fused normalisation, HF's patch order);
- input_ids: equal to Hugging Face `tokenizers` (the Python package when installed, else the
  npm package of tests/node, installed there with `npm ci` on first use) on the checkpoint's
  chat template rendered with jinja2 as transformers renders it, one `<|image_pad|>` per
  merged patch, then the answer stem;
- level logits and score: within the bounds below of the oracle's on those same inputs.

Variables:
  QALIGN_REAL_QWEN_MODEL       the exported model file (required; unset: every test skips)
  QALIGN_REAL_QWEN_CHECKPOINT  the checkpoint it was exported from (default: the folder
                               run.sh downloads Mini into, $QALIGN_CACHE/Q-ReAlign-Mini-0.8B)
  QALIGN_REAL_QWEN_IMAGES      images to score, separated by ':' (default: Q-Align's
                               fig/singapore_flyer.jpg and fig/structure.png, fetched and
                               MD5-checked as tests/real_weights.py does)

The oracle needs about 4x the checkpoint's size in memory (float32 weights): ~8 GB for Mini.
The bounds per weight type are ESTIMATES (no machine this was written on had the weights):
report what it prints (README, "Checking the real Q-ReAlign weights") so that they can be set from
measurements.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, report, run

HERE = Path(__file__).resolve().parent
MODEL = os.environ.get("QALIGN_REAL_QWEN_MODEL")
CACHE = Path(os.environ.get("QALIGN_CACHE", Path.home() / ".cache" / "qalign"))
CHECKPOINT = Path(os.environ.get("QALIGN_REAL_QWEN_CHECKPOINT", CACHE / "Q-ReAlign-Mini-0.8B")).expanduser()
HOW = ("set QALIGN_REAL_QWEN_MODEL to a Q-ReAlign model file (./run.sh --preset q-realign-mini photo.jpg "
       "makes ~/.cache/qalign/Q-ReAlign-Mini-0.8B-<id>-q8_0.qalign next to the checkpoint it was exported from; "
       "QALIGN_REAL_QWEN_CHECKPOINT=DIR names another checkpoint) and run `make test-real`")
# |qalign - oracle| allowed per weight type and mode, on the level logits and on the score
# (ESTIMATES, see above). f32 arithmetic on f32 or widened bf16 weights stays near float32's
# own rounding: both are bounded. bf16 activations and quantised weights are approximations
# whose effect on the logits is not known for the real weights (a random model magnifies it:
# README): only the score, what a user reads, is bounded there; the logits are printed.
BOUNDS = {"f32": (2e-3, 1e-3), "bf16 --precise": (2e-3, 1e-3), "bf16": (None, 0.02),
          "q8_0": (None, 0.03), "q8_256": (None, 0.03), "q4_1": (None, 0.1), "q4_256": (None, 0.1)}
WEIGHTS = [1, 0.75, 0.5, 0.25, 0]
STEM = "The quality of the image is"
QUESTION = "Can you rate the quality of this picture?"   # pyiqa's TASKS and qalign/prompts.py's first


@pytest.fixture(scope="module")
def real_model():
    if not MODEL:
        pytest.skip(f"no real Q-ReAlign weights: {HOW}")
    p = Path(MODEL).expanduser()
    assert p.is_file(), f"QALIGN_REAL_QWEN_MODEL={MODEL}: no such file"
    assert (CHECKPOINT / "config.json").is_file(), \
        f"{CHECKPOINT}: no config.json; set QALIGN_REAL_QWEN_CHECKPOINT to the checkpoint {p.name} was exported from"
    r = run([ROOT / "qalign", "--info", p])
    assert r.returncode == 0, r.stderr
    info = r.stdout
    cfg = json.loads((CHECKPOINT / "config.json").read_text())
    tc, vc = cfg["text_config"], cfg["vision_config"]
    # the file is an export of this checkpoint's architecture, not of another size or family
    want = [f"vision      dim {vc['hidden_size']}, layers {vc['depth']}, heads {vc['num_heads']}, "
            f"mlp {vc['intermediate_size']},",
            f"decoder     dim {tc['hidden_size']}, layers {tc['num_hidden_layers']}, heads {tc['num_attention_heads']}, "
            f"kv heads {tc['num_key_value_heads']}, mlp {tc['intermediate_size']}, vocab {tc['vocab_size']},"]
    if "model       qwen3.5" not in info or not all(w in info for w in want):
        pytest.fail(f"{p} is not an export of {CHECKPOINT} (a Qwen3.5 checkpoint):\n{info}")
    wtype = next(line.split()[1] for line in info.splitlines() if line.startswith("weights"))
    return p, wtype, info


@pytest.fixture(scope="module")
def images():
    given = os.environ.get("QALIGN_REAL_QWEN_IMAGES")
    if given:
        out = [Path(x).expanduser() for x in given.split(":") if x]
        for f in out:
            assert f.is_file(), f"QALIGN_REAL_QWEN_IMAGES: {f}: no such file"
        return out
    import real_weights
    return list(real_weights.fetch_figures().values())


def hf_encode(tokenizer_json, texts):
    """Hugging Face tokenizers' ids (special tokens matched, nothing added) for each text."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        Tokenizer = None
    if Tokenizer is not None:
        tok = Tokenizer.from_file(str(tokenizer_json))
        return [tok.encode(t, add_special_tokens=False).ids for t in texts]
    node_dir = HERE / "node"
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.fail("the tokenizer oracle needs Hugging Face tokenizers: python3 -m pip install tokenizers, "
                    "or Node.js with npm (apt-get install nodejs npm)")
    if not (node_dir / "node_modules" / "tokenizers" / "package.json").is_file():
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=node_dir, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
        src.write_text(json.dumps(texts))
        r = subprocess.run(["node", node_dir / "bpe_oracle.mjs", tokenizer_json, "encode", src, dst],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return json.loads(dst.read_text())


def chat_text(ckpt, n_image_tokens, **kw):
    """The checkpoint's chat template for one user turn (an image, then the question) with the
    generation prompt, rendered as transformers' apply_chat_template renders it (a sandboxed
    jinja2 environment with trim_blocks and lstrip_blocks), the image placeholder then
    expanded as the processor does (one <|image_pad|> per merged 2 x 2 patch)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    f = ckpt / "chat_template.jinja"
    if f.is_file():
        tpl = f.read_text()
    else:
        tpl = json.loads((ckpt / "tokenizer_config.json").read_text())["chat_template"]

    def raise_exception(msg):
        raise ValueError(msg)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = env.from_string(tpl).render(messages=messages, add_generation_prompt=True, **kw)
    assert text.count("<|image_pad|>") == 1, text
    return text.replace("<|image_pad|>", "<|image_pad|>" * n_image_tokens)


def oracle_inputs(ckpt, image, swift):
    """pixel rows, grid and prompt ids of one image in one prompt form, from the oracles"""
    import numpy as np
    import test_qwen_image as tqi
    # the image processor's settings as transformers 5 reads them: processor_config.json's
    # "image_processor" first, else preprocessor_config.json, else the released values
    pp = {}
    if (ckpt / "processor_config.json").is_file():
        pp = json.loads((ckpt / "processor_config.json").read_text()).get("image_processor") or {}
    if not pp and (ckpt / "preprocessor_config.json").is_file():
        pp = json.loads((ckpt / "preprocessor_config.json").read_text())
    size = pp.get("size") or {}
    if swift:   # qwen_vl_utils: min 4 x 32^2 pixels, max 16384 x 32^2, Pillow's bicubic
        _, px, grid = tqi.oracle_pipeline(image, 1, "pil", "fused", 4096, 16777216)
    else:       # transformers' fast processor: the checkpoint's min/max pixels, ATen's uint8 bicubic
        _, px, grid = tqi.oracle_pipeline(image, 0, "torch", "fused", size.get("shortest_edge", 65536),
                                          size.get("longest_edge", 16777216))
    n = grid[1] * grid[2] // 4
    if swift:   # ms-swift's template with thinking off, then the ids of " " + stem appended
        a, b = hf_encode(ckpt / "tokenizer.json", [chat_text(ckpt, n, enable_thinking=False), " " + STEM])
        ids = a + b
    else:       # apply_chat_template(add_generation_prompt=True) + stem, one string
        (ids,) = hf_encode(ckpt / "tokenizer.json", [chat_text(ckpt, n) + STEM])
    return np.asarray(px), (1, grid[1], grid[2]), ids


def test_level_logits_against_the_pytorch_oracle(real_model, images, tmp_path):
    import numpy as np
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(HERE))
    import qwen_ref
    p, wtype, info = real_model
    levels = [ids[0] for ids in hf_encode(CHECKPOINT / "tokenizer.json",
                                          [" excellent", " good", " fair", " poor", " bad"])]
    modes = [("bf16 --precise", ["--precise"]), ("bf16", [])] if wtype == "bf16" else [(wtype, [])]
    lines = [f"real Q-ReAlign weights: {p} ({wtype}), checkpoint {CHECKPOINT}; kernels "
             + next((x.split(None, 1)[1] for x in info.splitlines() if x.startswith("kernels")), "?")]
    oracle = qwen_ref.Qwen35(str(CHECKPOINT), torch.float32)
    failures = []
    for image in images:
        for preset in ("q-realign-mini", "q-realign-swift"):
            px, grid, ids = oracle_inputs(CHECKPOINT, image, preset.endswith("swift"))
            with torch.no_grad():
                want = oracle.forward(ids, torch.from_numpy(px), [grid], levels).double().numpy()
            e = np.exp(want - want.max())
            want_score = float((e / e.sum()) @ np.array(WEIGHTS))
            for mode, extra in modes:
                dump = tmp_path / f"dump_{image.stem}_{preset}_{len(extra)}"
                r = run([ROOT / "qalign", p, "--preset", preset, "--json", "--dump", dump, *extra, image],
                        env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
                assert r.returncode == 0, r.stderr
                assert np.array_equal(np.load(dump / "pixel_values.npy"), px), f"{image.name} {preset}: pixel rows differ"
                assert np.load(dump / "input_ids.npy").reshape(-1).tolist() == ids, f"{image.name} {preset}: prompt ids differ"
                got = np.load(dump / "level_logits.npy").reshape(-1).astype(np.float64)
                score = json.loads(r.stdout)["score"]
                dl, ds = float(np.abs(got - want).max()), score - want_score
                bl, bs = BOUNDS.get(mode, (None, 0.1))
                lines.append(f"real Q-ReAlign weights: {mode:15s} {preset:16s} {image.name:20s} "
                             f"{grid[1] * grid[2] // 4} visual tokens, {len(ids)} ids: score qalign {score:.6f} "
                             f"oracle {want_score:.6f} ({ds:+.6f}, bound {bs}); level logits max |diff| {dl:.2e} "
                             f"(bound {bl or 'none'}); oracle logits {' '.join(f'{x:.4f}' for x in want)}")
                if (bl is not None and dl > bl) or abs(ds) > bs:
                    failures.append(f"{image.name} {preset} ({mode}): logits {dl:.2e}, score {ds:+.6f}")
    lines.append("real Q-ReAlign weights: please report the lines above (and `qalign --info` of the file) "
                 "in the issue tracker")
    for line in lines:
        report(line)
        print(line)
    assert not failures, "beyond the bounds: " + "; ".join(failures)
