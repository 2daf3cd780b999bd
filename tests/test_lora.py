"""export.py --lora DIR: a Q-Align LoRA adapter merged into the base checkpoint.

The adapter is made here with torch in the layout Q-Align's LoRA training writes (PEFT's
adapter_config.json + adapter_model.bin|.safetensors, and non_lora_trainables.bin with the
fully trained tensors under the PEFT wrapper's "base_model.model." names), for the tiny
reference checkpoint. It adapts a plain Linear (q_proj), both halves of a multiway k_proj,
a multiway v_proj half, an MLP projection with its own rank and alpha (rank_pattern /
alpha_pattern), an abstractor Linear that non_lora_trainables also replaces (replace first,
then merge, as builder.py does), and the fused vision qkv (merged before export.py splits it
per head); non_lora_trainables also replaces a decoder norm, an abstractor matrix and a
vision bias.

Checked against a merge computed here with torch (W += (B @ A) * alpha / r on the
replaced base, float32):
  (a) every tensor of the exported f32 file equals the torch-merged state dict (untouched
      tensors bit-exactly, merged ones to float32 rounding), bf16 files to 1 bf16 ulp;
  (b) qalign's level logits and score on a fixture image equal tests/torch_ref.py run on
      the torch-merged state dict within 2e-4 (and differ clearly from the base model's);
  (c) adapters that cannot be merged faithfully are refused with one clear line: DoRA,
      lora_bias, other PEFT types, unknown or non-Linear targets, shape mismatches.
"""
import json
import math
import os
import shutil
import struct

import numpy as np
import pytest

from conftest import PYTHON, ROOT, report, run, logits

torch = pytest.importorskip("torch")

EXPORT = ROOT / "export.py"
LOGIT_ABS = 2e-4
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]

R, ALPHA = 4, 8
LORA_MODULES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.1.self_attn.k_proj.multiway.0",
    "model.layers.1.self_attn.k_proj.multiway.1",
    "model.layers.0.self_attn.v_proj.multiway.1",
    "model.layers.1.mlp.down_proj",                                         # rank 2, alpha 6
    "model.visual_abstractor.encoder.layers.0.crossattention.attention.query",  # also replaced
    "model.vision_model.encoder.layers.1.self_attn.query_key_value",        # fused, per-head split
]
RANK_PATTERN, ALPHA_PATTERN = {"mlp.down_proj": 2}, {"mlp.down_proj": 6}
NON_LORA = [
    "model.layers.1.post_attention_layernorm.multiway.1.weight",
    "model.visual_abstractor.encoder.layers.1.crossattention.output.mlp.w2.weight",
    "model.visual_abstractor.encoder.layers.0.crossattention.attention.query.weight",
    "model.vision_model.encoder.layers.0.mlp.fc1.bias",
]


def rank_alpha(module):
    return (2, 6) if module.endswith("mlp.down_proj") else (R, ALPHA)


# ---------------------------------------------------------------------------------------
# the adapter, and the merge done with torch

def adapter_config(**over):
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "q-future/one-align",
           "r": R, "lora_alpha": ALPHA, "lora_dropout": 0.05, "target_modules": list(LORA_MODULES),
           "rank_pattern": RANK_PATTERN, "alpha_pattern": ALPHA_PATTERN, "bias": "none",
           "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
           "modules_to_save": None, "inference_mode": True}
    cfg.update(over)
    return cfg


def make_adapter(d, base, fmt="bin", seed=3):
    """Write an adapter dir for the base state dict `base`; returns (lora, non_lora) tensors
    as written, keyed by the PEFT/Q-Align names."""
    import torch_ref as tr
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    dtype = torch.bfloat16 if fmt == "bin" else torch.float32
    lora = {}
    for m in LORA_MODULES:
        out_f, in_f = base[m + ".weight"].shape
        r, _ = rank_alpha(m)
        lora[f"base_model.model.{m}.lora_A.weight"] = (torch.randn(r, in_f, generator=g) / math.sqrt(in_f)).to(dtype)
        lora[f"base_model.model.{m}.lora_B.weight"] = (0.3 * torch.randn(out_f, r, generator=g)).to(dtype)
    non_lora = {}
    for n in NON_LORA:
        w = base[n]
        non_lora["base_model.model." + n] = (w + 0.2 * w.abs().mean() * torch.randn(w.shape, generator=g)).to(torch.bfloat16)
    (d / "adapter_config.json").write_text(json.dumps(adapter_config(), indent=1))
    if fmt == "bin":
        torch.save(lora, d / "adapter_model.bin")
    else:
        tr.write_safetensors(d / "adapter_model.safetensors", lora)
    torch.save(non_lora, d / "non_lora_trainables.bin")
    return lora, non_lora


def torch_merge(base, lora, non_lora):
    """builder.py + PEFT merge_and_unload, in float32 torch."""
    sd = dict(base)
    for k, v in non_lora.items():
        k = k[len("base_model."):]
        k = k[len("model."):] if k.startswith("model.model.") else k
        assert k in sd and sd[k].shape == v.shape
        sd[k] = v.float()
    for m in LORA_MODULES:
        A = lora[f"base_model.model.{m}.lora_A.weight"].float()
        B = lora[f"base_model.model.{m}.lora_B.weight"].float()
        r, alpha = rank_alpha(m)
        sd[m + ".weight"] = sd[m + ".weight"] + (B @ A) * (alpha / r)
    return sd


# ---------------------------------------------------------------------------------------
# reading a model file back (from the layout described in export.py's docstring)

def read_model(path):
    """{name: float32 array} for the f32/bf16 tensors of a qalign model file."""
    buf = path.read_bytes()
    n = struct.unpack_from("<I", buf, 12)[0]
    out = {}
    for i in range(n):
        name, dt, ndim, s0, s1, s2, s3, off, nbytes = struct.unpack_from("<56sII4IQQ", buf, 1024 + 96 * i)
        name = name.rstrip(b"\0").decode()
        shape = (s0, s1, s2, s3)[:ndim]
        raw = buf[off:off + nbytes]
        if dt == 0:                                   # f32, row-major
            out[name] = np.frombuffer(raw, "<f4").reshape(shape)
        elif dt in (3, 4):                            # mf32 [g][k][16], mbf16 [g][k/2][16][2]
            rows, cols = shape
            G = (rows + 15) // 16
            if dt == 3:
                a = np.frombuffer(raw, "<f4").reshape(G, cols, 16).transpose(0, 2, 1)
            else:
                u = np.frombuffer(raw, "<u2").reshape(G, cols // 2, 16, 2).transpose(0, 2, 1, 3)
                a = (u.astype(np.uint32) << 16).view(np.float32)
            out[name] = np.ascontiguousarray(a).reshape(G * 16, cols)[:rows]
    return out


def expected_tensors(sd, cfg):
    """File name -> expected float32 array, from a HF state dict (export.py's plan maps the
    names; the per-head split of the fused vision qkv is restated here)."""
    import export as ex
    exp = {}
    D, H = cfg["v_dim"], cfg["v_heads"]
    for name, shape, _kind, src, part in ex.tensor_plan(cfg):
        t = sd[src].float().numpy()
        if part and part[0] == "qkv":
            t = t.reshape(H, 3, D // H, -1)[:, part[1]] if t.ndim == 2 else t.reshape(H, 3, D // H)[:, part[1]]
        exp[name] = t.reshape(shape).astype(np.float32)
    return exp


# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base(tiny_ref):
    import torch_ref as tr
    return tr.load_state(tiny_ref / "checkpoint")


@pytest.fixture(scope="module")
def cfg_json(tiny_ref):
    return json.loads((tiny_ref / "checkpoint" / "config.json").read_text())


def export(ckpt, out, *extra):
    return run([PYTHON, EXPORT, "-q", ckpt, out, *extra])


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_lora_merge_matches_torch(fmt, tiny_ref, base, cfg_json, qalign_bin, workdir):
    import export as ex
    import sentencepiece as spm
    import torch_ref as tr
    from PIL import Image
    d = workdir / f"lora_{fmt}"
    lora, non_lora = make_adapter(d / "adapter", base, fmt)
    merged = torch_merge(base, lora, non_lora)
    ckpt = tiny_ref / "checkpoint"
    model = d / "merged_f32.qalign"
    r = export(ckpt, model, "--dtype", "f32", "--lora", d / "adapter")
    assert r.returncode == 0, r.stderr

    # (a) the exported tensors are the torch merge
    cfg = ex.read_config(str(ckpt))
    got, want, base_exp = read_model(model), expected_tensors(merged, cfg), expected_tensors(base, cfg)
    assert set(want) <= set(got)
    changed, worst = [], 0.0
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape, name
        if np.array_equal(w, base_exp[name]):
            assert np.array_equal(g, w), f"{name}: not touched by the adapter, yet differs from the base"
            continue
        changed.append(name)
        err = float(np.abs(g - w).max() / np.abs(w).max())
        worst = max(worst, err)
        assert err <= 1e-6, f"{name}: merged tensor differs from torch's merge by {err:.3g} (relative)"
    # q_proj, 2 k halves, v half, down_proj, abstractor query, vision q/k/v split (3), and the
    # replaced norm, abstractor w2, vision fc1 bias
    assert len(changed) == 12, changed

    # bf16 file: the same merge, rounded once to bf16 (at most one ulp from torch's rounding)
    model16 = d / "merged_bf16.qalign"
    r = export(ckpt, model16, "--dtype", "bf16", "--lora", d / "adapter")
    assert r.returncode == 0, r.stderr
    got16 = read_model(model16)
    for name in changed:
        w = want[name]
        assert np.all(np.abs(got16[name] - w) <= np.abs(w) * 2.0 ** -8 + 1e-30), name

    # (b) qalign on the merged file = the torch oracle on the merged state dict
    ref = tr.Reference(merged, cfg_json)
    ref_base = tr.Reference(base, cfg_json)
    sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    levels = tr.level_ids(sp)
    img = tiny_ref / "inputs" / "photo.jpg"
    _, x = tr.preprocess(Image.open(img), cfg["v_image"], MEAN, STD)
    diffs = []
    for task in ("quality", "aesthetics"):
        st = ref.score(x[None], tr.prompt_ids(sp, task, "image"), levels)
        st0 = ref_base.score(x[None], tr.prompt_ids(sp, task, "image"), levels)
        r = run([qalign_bin, model, "--json", "-t", task, img], env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        d_logits = max(abs(a - b) for a, b in zip(logits(out), st["level_logits"]))
        diffs.append(max(d_logits, abs(out["score"] - float(st["score"][0]))))
        assert diffs[-1] <= LOGIT_ABS, (task, logits(out), list(st["level_logits"]))
        # the adapter matters: the base model's logits are far from these
        assert np.abs(np.asarray(st0["level_logits"]) - np.asarray(st["level_logits"])).max() > 0.05
    report(f"export --lora ({fmt} adapter): {len(changed)} tensors changed, max rel diff vs torch merge "
           f"{worst:.1e}; qalign level logits/score vs torch_ref on the merged weights {max(diffs):.1e}")


def test_lora_adapter_without_non_lora_trainables(tiny_ref, base, workdir):
    """A plain PEFT adapter (no non_lora_trainables.bin) merges its LoRA layers only."""
    import export as ex
    d = workdir / "lora_plain"
    lora, _ = make_adapter(d / "adapter", base, "bin", seed=11)
    (d / "adapter" / "non_lora_trainables.bin").unlink()
    merged = torch_merge(base, lora, {})
    model = d / "m.qalign"
    r = export(tiny_ref / "checkpoint", model, "--dtype", "f32", "--lora", d / "adapter")
    assert r.returncode == 0, r.stderr
    cfg = ex.read_config(str(tiny_ref / "checkpoint"))
    got, want = read_model(model), expected_tensors(merged, cfg)
    for name, w in want.items():
        assert np.abs(got[name] - w).max() <= 1e-6 * np.abs(w).max(), name


# ---------------------------------------------------------------------------------------
# refused adapters

def _edit_config(d, **over):
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(over)
    (d / "adapter_config.json").write_text(json.dumps(cfg))


def _edit_weights(d, fn, name="adapter_model.bin"):
    sd = torch.load(d / name)
    fn(sd)
    torch.save(sd, d / name)


Q = "base_model.model.model.layers.0.self_attn.q_proj"
BAD = {
    "dora": (lambda d: _edit_config(d, use_dora=True), "DoRA"),
    "dora_magnitude": (lambda d: _edit_weights(d, lambda sd: sd.update(
        {Q + ".lora_magnitude_vector": torch.ones(64)})), "DoRA"),
    "lora_bias": (lambda d: _edit_weights(d, lambda sd: sd.update({Q + ".lora_B.bias": torch.zeros(64)})), "lora_bias"),
    "ia3": (lambda d: _edit_config(d, peft_type="IA3"), "'IA3' is not supported"),
    "pissa": (lambda d: _edit_config(d, init_lora_weights="pissa"), "changes the base weights"),
    "unknown_target": (lambda d: _edit_config(d, target_modules=LORA_MODULES + ["foo_proj"]),
                       "'foo_proj' matches no module"),
    "multiway_module": (lambda d: _edit_config(d, target_modules=["q_proj", "k_proj"]), "not a Linear layer"),
    "unknown_layer": (lambda d: _edit_weights(d, lambda sd: sd.update({
        "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight": torch.zeros(4, 64),
        "base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight": torch.zeros(64, 4)})),
        "not a layer of the base model"),
    "not_targeted": (lambda d: _edit_weights(d, lambda sd: sd.update({
        "base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight": torch.zeros(4, 64),
        "base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight": torch.zeros(64, 4)})),
        "target_modules in adapter_config.json does not select"),
    "shape_mismatch": (lambda d: _edit_weights(d, lambda sd: sd.update({Q + ".lora_A.weight": torch.zeros(4, 63)})),
                       "do not fit the base weight"),
    "rank_mismatch": (lambda d: _edit_config(d, r=8), "with rank 8"),
    "half_pair": (lambda d: _edit_weights(d, lambda sd: sd.pop(Q + ".lora_B.weight")), "no lora_B"),
    "embedding": (lambda d: _edit_weights(d, lambda sd: sd.update(
        {"base_model.model.model.embed_tokens.lora_embedding_A": torch.zeros(4, 32000)})), "embeddings"),
    "non_lora_shape": (lambda d: _edit_weights(d, lambda sd: sd.update(
        {"base_model.model.model.norm.weight": torch.ones(65)}), "non_lora_trainables.bin"), "has shape [65]"),
    "non_lora_unknown": (lambda d: _edit_weights(d, lambda sd: sd.update(
        {"base_model.model.model.extra.weight": torch.ones(3)}), "non_lora_trainables.bin"), "not in the base checkpoint"),
    "no_config": (lambda d: (d / "adapter_config.json").unlink(), "adapter_config.json not found"),
    "no_weights": (lambda d: (d / "adapter_model.bin").unlink(), "no adapter_model"),
}


@pytest.fixture(scope="module")
def good_adapter(base, workdir):
    d = workdir / "lora_good"
    make_adapter(d, base, "bin", seed=5)
    return d


@pytest.mark.parametrize("case", sorted(BAD))
def test_lora_refused(case, good_adapter, tiny_ref, workdir):
    d = workdir / f"lora_bad_{case}"
    shutil.copytree(good_adapter, d)
    edit, needle = BAD[case]
    edit(d)
    out = workdir / f"lora_bad_{case}.qalign"
    r = export(tiny_ref / "checkpoint", out, "--lora", d)
    assert r.returncode == 1, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("export.py: error: --lora"), r.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists() and not (workdir / f"lora_bad_{case}.qalign.partial").exists()


def test_lora_needs_a_checkpoint(workdir):
    r = run([PYTHON, EXPORT, "-q", "--synthetic", "tiny", workdir / "x.qalign", "--lora", workdir])
    assert r.returncode != 0 and "--lora needs a checkpoint" in r.stderr
