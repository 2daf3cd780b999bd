"""An independent PyTorch re-statement of the Q-Align forward pass, for tests.

It works from a Hugging Face state dict (the upstream tensor names), follows
q_align/model/{visual_encoder,modeling_llama2,modeling_mplug_owl2}.py line by line, and
tokenizes with sentencepiece and preprocesses with Pillow, so it shares no code with
qalign.c, tokenizer.c, image.c or export.py. test_reference.py first checks it against the
fixtures that the ORIGINAL upstream code produced; it then serves as the oracle for
checkpoints of other dimensions that the tests generate (make_checkpoint below).

Computation is in float64 by default (the upstream fixtures are float32).
"""
import json
import math
import os

import numpy as np
import torch

IMAGE_TOKEN_INDEX = -200
LEVEL_WORDS = ["excellent", "good", "fair", "poor", "bad"]


# ---------------------------------------------------------------------------------------
# preprocessing (Pillow + transformers' CLIPImageProcessor semantics)

def expand2square(img, fill):
    from PIL import Image
    w, h = img.size
    if w == h:
        return img
    s = max(w, h)
    out = Image.new(img.mode, (s, s), fill)
    out.paste(img, ((s - w) // 2, (s - h) // 2))
    return out


def preprocess(img, size, mean, std):
    from PIL import Image
    img = img.convert("RGB")
    sq = expand2square(img, tuple(int(x * 255) for x in mean))
    rs = sq.resize((size, size), Image.BICUBIC) if sq.size != (size, size) else sq.copy()
    a = np.asarray(rs)
    x = (a.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return a, x.transpose(2, 0, 1).copy()


# ---------------------------------------------------------------------------------------
# tokenization (sentencepiece + tokenizer_image_token)

def prompt_ids(sp, task, input_):
    prompt = f"USER: How would you rate the {task} of this {input_}?\n<|image|>\nASSISTANT: The {task} of the {input_} is"
    chunks = [[sp.bos_id()] + sp.encode(c) if c else [] for c in prompt.split("<|image|>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == sp.bos_id():
        offset = 1
        ids.append(chunks[0][0])
    seps = []
    for i, c in enumerate(chunks):
        seps.append(c)
        if i + 1 < len(chunks):
            seps.append([IMAGE_TOKEN_INDEX] * (offset + 1))
    for x in seps:
        ids.extend(x[offset:])
    return ids


def level_ids(sp):
    return [([sp.bos_id()] + sp.encode(w))[1] for w in LEVEL_WORDS]


# ---------------------------------------------------------------------------------------
# the model

def layer_norm(x, w, b, eps):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)


def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


class Reference:
    def __init__(self, state, config, dtype=torch.float64):
        self.sd = {k: v.to(dtype) for k, v in state.items()}
        self.c = config
        self.dtype = dtype
        vm = config["visual_config"]["visual_model"]
        va = config["visual_config"]["visual_abstractor"]
        self.vm, self.va = vm, va

    def W(self, name):
        return self.sd[name]

    def vision(self, pixels):
        vm, W = self.vm, self.W
        p = "model.vision_model."
        D, H = vm["hidden_size"], vm["num_attention_heads"]
        hd, eps = D // H, vm.get("layer_norm_eps", 1e-6)
        x = torch.nn.functional.conv2d(pixels.to(self.dtype), W(p + "embeddings.patch_embed.weight"),
                                       stride=vm["patch_size"])
        x = x.flatten(2).transpose(1, 2)
        B = x.shape[0]
        cls = W(p + "embeddings.cls_token").expand(B, 1, -1)
        x = torch.cat([cls, x], 1)
        x = x + W(p + "embeddings.position_embedding")[:, : x.shape[1]]
        x = layer_norm(x, W(p + "embeddings.pre_layernorm.weight"), W(p + "embeddings.pre_layernorm.bias"), eps)
        stages = {"vision_embeddings": x}
        T = x.shape[1]
        for l in range(vm["num_hidden_layers"]):
            q_ = f"{p}encoder.layers.{l}."
            h = layer_norm(x, W(q_ + "input_layernorm.weight"), W(q_ + "input_layernorm.bias"), eps)
            qkv = h @ W(q_ + "self_attn.query_key_value.weight").T + W(q_ + "self_attn.query_key_value.bias")
            qkv = qkv.reshape(B, T, H, 3, hd).permute(3, 0, 2, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            a = torch.softmax(q @ k.transpose(-1, -2) * hd ** -0.5, -1)
            o = (a @ v).permute(0, 2, 1, 3).reshape(B, T, D)
            x = x + o @ W(q_ + "self_attn.dense.weight").T + W(q_ + "self_attn.dense.bias")
            h = layer_norm(x, W(q_ + "post_attention_layernorm.weight"), W(q_ + "post_attention_layernorm.bias"), eps)
            h = h @ W(q_ + "mlp.fc1.weight").T + W(q_ + "mlp.fc1.bias")
            h = h * torch.sigmoid(1.702 * h)
            x = x + h @ W(q_ + "mlp.fc2.weight").T + W(q_ + "mlp.fc2.bias")
            stages[f"vision_layer{l}"] = x
        x = layer_norm(x, W(p + "post_layernorm.weight"), W(p + "post_layernorm.bias"), eps)
        stages["vision_out"] = x
        return x, stages

    def abstractor(self, img):
        va, W = self.va, self.W
        p = "model.visual_abstractor."
        D, H = va["hidden_size"], va["num_attention_heads"]
        hd = D // H
        B = img.shape[0]
        q = W(p + "query_embeds").repeat(B, 1, 1)
        stages = {}
        for l in range(va["num_hidden_layers"]):
            c_ = f"{p}encoder.layers.{l}.crossattention."
            qn = layer_norm(q, W(c_ + "norm1.weight"), W(c_ + "norm1.bias"), 1e-5)
            kn = layer_norm(img, W(c_ + "normk.weight"), W(c_ + "normk.bias"), 1e-5)
            enc = torch.cat([qn, kn], 1)
            qpos, kpos = W(c_ + "attention.q_pos_embed"), W(c_ + "attention.k_pos_embed")
            pos = torch.cat([qpos, kpos], 0).unsqueeze(0)

            def heads(t):
                return t.view(B, t.shape[1], H, hd).permute(0, 2, 1, 3)
            K = heads((enc + pos) @ W(c_ + "attention.key.weight").T + W(c_ + "attention.key.bias"))
            V = heads(enc @ W(c_ + "attention.value.weight").T + W(c_ + "attention.value.bias"))
            Q = heads((qn + qpos.unsqueeze(0)) @ W(c_ + "attention.query.weight").T + W(c_ + "attention.query.bias"))
            a = torch.softmax(Q @ K.transpose(-1, -2) / math.sqrt(hd), -1)
            ctx = (a @ V).permute(0, 2, 1, 3).reshape(B, -1, D)
            x = qn + ctx @ W(c_ + "output.out_proj.weight").T + W(c_ + "output.out_proj.bias")
            y = layer_norm(x, W(c_ + "output.norm2.weight"), W(c_ + "output.norm2.bias"), 1e-5)
            m = c_ + "output.mlp."
            h = torch.nn.functional.silu(y @ W(m + "w1.weight").T + W(m + "w1.bias")) * (y @ W(m + "w3.weight").T + W(m + "w3.bias"))
            h = layer_norm(h, W(m + "ffn_ln.weight"), W(m + "ffn_ln.bias"), va.get("layer_norm_eps", 1e-6))
            q = x + h @ W(m + "w2.weight").T + W(m + "w2.bias")
            stages[f"abstractor_layer{l}"] = q
        out = q @ W(p + "visual_fc.weight").T + W(p + "visual_fc.bias")
        out = torch.cat([out, W(p + "vit_eos").repeat(B, 1, 1)], 1)
        stages["abstractor_out"] = out
        return out, stages

    def decoder(self, ids, visual):
        c, W = self.c, self.W
        D, H = c["hidden_size"], c["num_attention_heads"]
        KV = c.get("num_key_value_heads") or H
        hd, eps, theta = D // H, c.get("rms_norm_eps", 1e-6), c.get("rope_theta", 10000.0)
        rows, mod = [], []
        emb = W("model.embed_tokens.weight")
        # visual: one tensor for every marker (its frames' rows flattened), or a list with
        # one per marker, in order (several images in one prompt, as Compare2Score's)
        per_marker = list(visual) if isinstance(visual, (list, tuple)) else None
        for t in ids:
            if t == IMAGE_TOKEN_INDEX:
                v = (per_marker.pop(0) if per_marker is not None else visual).reshape(-1, D)
                rows.append(v)
                mod += [1] * v.shape[0]
            else:
                rows.append(emb[t:t + 1])
                mod.append(0)
        x = torch.cat(rows, 0)
        mod = torch.tensor(mod)
        n = x.shape[0]
        stages = {"llm_inputs_embeds": x, "modality_indicators": mod.numpy().astype(np.int64)}
        inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        f = torch.outer(torch.arange(n, dtype=torch.float64), inv)
        cos, sin = torch.cat([f, f], -1).cos().to(self.dtype), torch.cat([f, f], -1).sin().to(self.dtype)

        def rot(t):
            return torch.cat([-t[..., hd // 2:], t[..., : hd // 2]], -1)

        def multiway(name, h):
            out = torch.empty(h.shape[0], W(name.format(0)).shape[0], dtype=self.dtype)
            for m in (0, 1):
                sel = mod == m
                if sel.any():
                    out[sel] = h[sel] @ W(name.format(m)).T
            return out

        def norm_mw(name, h):
            out = torch.empty_like(h)
            for m in (0, 1):
                sel = mod == m
                if sel.any():
                    out[sel] = rms_norm(h[sel], W(name.format(m)), eps)
            return out

        mask = torch.full((n, n), float("-inf"), dtype=self.dtype).triu(1)
        for l in range(c["num_hidden_layers"]):
            p = f"model.layers.{l}."
            h = norm_mw(p + "input_layernorm.multiway.{}.weight", x)
            q = (h @ W(p + "self_attn.q_proj.weight").T).view(n, H, hd).transpose(0, 1)
            k = multiway(p + "self_attn.k_proj.multiway.{}.weight", h).view(n, KV, hd).transpose(0, 1)
            v = multiway(p + "self_attn.v_proj.multiway.{}.weight", h).view(n, KV, hd).transpose(0, 1)
            q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
            k, v = k.repeat_interleave(H // KV, 0), v.repeat_interleave(H // KV, 0)
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, -1)
            o = (a @ v).transpose(0, 1).reshape(n, D)
            x = x + o @ W(p + "self_attn.o_proj.weight").T
            h = norm_mw(p + "post_attention_layernorm.multiway.{}.weight", x)
            g = torch.nn.functional.silu(h @ W(p + "mlp.gate_proj.weight").T) * (h @ W(p + "mlp.up_proj.weight").T)
            x = x + g @ W(p + "mlp.down_proj.weight").T
            stages[f"llm_layer{l}"] = x
        x = rms_norm(x, W("model.norm.weight"), eps)
        stages["llm_final_norm"] = x
        stages["logits_last"] = x[-1] @ W("lm_head.weight").T
        return stages

    def score(self, pixels, ids, levels):
        v, s1 = self.vision(torch.from_numpy(pixels))
        a, s2 = self.abstractor(v)
        s3 = self.decoder(ids, a)
        st = {**s1, **s2, **s3}
        lv = st["logits_last"][levels]
        st["level_logits"] = lv
        st["score"] = (torch.softmax(lv, -1) @ torch.tensor([5.0, 4, 3, 2, 1], dtype=self.dtype)).reshape(1)
        return {k: (v.detach().numpy() if torch.is_tensor(v) else v) for k, v in st.items()}


# ---------------------------------------------------------------------------------------
# random checkpoints in the released layout (bf16 torch shards + index + configs)

def make_checkpoint(out_dir, tokenizer_model, dims, seed=0, shards=2, safetensors=False):
    """Write a random mPLUG-Owl2 checkpoint with `dims` (keys as in export.PRESETS) in the
    released Hugging Face layout. Weight init follows the fixtures' README."""
    os.makedirs(out_dir, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    D, Dl = dims["v_dim"], dims["l_dim"]
    P, S = dims["v_patch"], dims["v_image"]
    grid = S // P
    T = grid * grid + 1
    H, KV = dims["l_heads"], dims["l_kv_heads"]
    kvd = Dl // H * KV
    sd = {}

    def mat(name, o, i):
        sd[name] = torch.randn(o, i, generator=g) * (1.6 / math.sqrt(i))

    def vec(name, n, kind):
        if kind == "norm":
            sd[name] = 1 + 0.1 * torch.randn(n, generator=g)
        elif kind == "bias":
            sd[name] = 0.1 * torch.randn(n, generator=g)

    V = "model.vision_model."
    sd[V + "embeddings.patch_embed.weight"] = torch.randn(D, 3, P, P, generator=g) * (1.6 / math.sqrt(3 * P * P))
    sd[V + "embeddings.cls_token"] = torch.randn(1, 1, D, generator=g)
    sd[V + "embeddings.position_embedding"] = torch.randn(1, T, D, generator=g)
    vec(V + "embeddings.pre_layernorm.weight", D, "norm")
    vec(V + "embeddings.pre_layernorm.bias", D, "bias")
    for l in range(dims["v_layers"]):
        p = f"{V}encoder.layers.{l}."
        for nm in ("input_layernorm", "post_attention_layernorm"):
            vec(p + nm + ".weight", D, "norm")
            vec(p + nm + ".bias", D, "bias")
        mat(p + "self_attn.query_key_value.weight", 3 * D, D)
        vec(p + "self_attn.query_key_value.bias", 3 * D, "bias")
        mat(p + "self_attn.dense.weight", D, D)
        vec(p + "self_attn.dense.bias", D, "bias")
        mat(p + "mlp.fc1.weight", dims["v_mlp"], D)
        vec(p + "mlp.fc1.bias", dims["v_mlp"], "bias")
        mat(p + "mlp.fc2.weight", D, dims["v_mlp"])
        vec(p + "mlp.fc2.bias", D, "bias")
    vec(V + "post_layernorm.weight", D, "norm")
    vec(V + "post_layernorm.bias", D, "bias")

    A = "model.visual_abstractor."
    Q, AM = dims["a_queries"], dims["a_mlp"]
    sd[A + "query_embeds"] = torch.randn(1, Q, D, generator=g)
    qpos, kpos = _sincos(D, Q, grid)
    for l in range(dims["a_layers"]):
        p = f"{A}encoder.layers.{l}.crossattention."
        for nm in ("norm1", "normk", "output.norm2"):
            vec(p + nm + ".weight", D, "norm")
            vec(p + nm + ".bias", D, "bias")
        for nm in ("query", "key", "value"):
            mat(p + "attention." + nm + ".weight", D, D)
            vec(p + "attention." + nm + ".bias", D, "bias")
        sd[p + "attention.q_pos_embed"] = qpos.clone()
        sd[p + "attention.k_pos_embed"] = kpos.clone()
        mat(p + "output.out_proj.weight", D, D)
        vec(p + "output.out_proj.bias", D, "bias")
        for nm in ("w1", "w3"):
            mat(p + "output.mlp." + nm + ".weight", AM, D)
            vec(p + "output.mlp." + nm + ".bias", AM, "bias")
        vec(p + "output.mlp.ffn_ln.weight", AM, "norm")
        vec(p + "output.mlp.ffn_ln.bias", AM, "bias")
        mat(p + "output.mlp.w2.weight", D, AM)
        vec(p + "output.mlp.w2.bias", D, "bias")
    mat(A + "visual_fc.weight", Dl, D)
    vec(A + "visual_fc.bias", Dl, "bias")
    sd[A + "vit_eos"] = torch.randn(1, 1, Dl, generator=g)

    sd["model.embed_tokens.weight"] = torch.randn(32000, Dl, generator=g)
    for l in range(dims["l_layers"]):
        p = f"model.layers.{l}."
        for m in (0, 1):
            vec(p + f"input_layernorm.multiway.{m}.weight", Dl, "norm")
            vec(p + f"post_attention_layernorm.multiway.{m}.weight", Dl, "norm")
            mat(p + f"self_attn.k_proj.multiway.{m}.weight", kvd, Dl)
            mat(p + f"self_attn.v_proj.multiway.{m}.weight", kvd, Dl)
        mat(p + "self_attn.q_proj.weight", Dl, Dl)
        mat(p + "self_attn.o_proj.weight", Dl, Dl)
        mat(p + "mlp.gate_proj.weight", dims["l_mlp"], Dl)
        mat(p + "mlp.up_proj.weight", dims["l_mlp"], Dl)
        mat(p + "mlp.down_proj.weight", Dl, dims["l_mlp"])
    vec("model.norm.weight", Dl, "norm")
    mat("lm_head.weight", 32000, Dl)
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}

    names = sorted(sd)
    per = (len(names) + shards - 1) // shards
    weight_map = {}
    for i in range(shards):
        part = names[i * per:(i + 1) * per]
        if safetensors:
            fn = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            write_safetensors(os.path.join(out_dir, fn), {k: sd[k] for k in part})
        else:
            fn = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
            torch.save({k: sd[k] for k in part}, os.path.join(out_dir, fn))
        weight_map.update({k: fn for k in part})
    index = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
    with open(os.path.join(out_dir, index), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=1)
    config = {
        "model_type": "mplug_owl2", "hidden_size": Dl, "intermediate_size": dims["l_mlp"],
        "num_attention_heads": H, "num_key_value_heads": KV, "num_hidden_layers": dims["l_layers"],
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": None, "attention_bias": False,
        "hidden_act": "silu", "vocab_size": 32000, "max_position_embeddings": 2048,
        "visual_config": {
            "visual_model": {"hidden_size": D, "intermediate_size": dims["v_mlp"],
                             "num_hidden_layers": dims["v_layers"], "num_attention_heads": dims["v_heads"],
                             "image_size": S, "patch_size": P, "layer_norm_eps": 1e-6,
                             "hidden_act": "quick_gelu"},
            "visual_abstractor": {"hidden_size": D, "encoder_hidden_size": D,
                                  "num_hidden_layers": dims["a_layers"],
                                  "num_attention_heads": dims["a_heads"], "num_learnable_queries": Q,
                                  "intermediate_size": AM, "layer_norm_eps": 1e-6, "grid_size": grid},
        },
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    pre = {"size": S, "crop_size": S, "resample": 3, "do_resize": True, "do_center_crop": True,
           "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
           "image_std": [0.26862954, 0.26130258, 0.27577711]}
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=1)
    import shutil
    shutil.copy(tokenizer_model, os.path.join(out_dir, "tokenizer.model"))
    return config


def _sincos(D, Q, grid):
    def one(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float32)
        omega /= dim / 2.0
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    q = one(D, np.arange(Q, dtype=np.float32))
    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    k = np.concatenate([one(D // 2, gw), one(D // 2, gh)], axis=1)
    k = np.concatenate([np.zeros([1, D]), k], axis=0)
    return torch.from_numpy(q.astype(np.float32)), torch.from_numpy(k.astype(np.float32))


def write_safetensors(path, tensors):
    """Minimal safetensors writer (the format is a JSON header + raw little-endian data)."""
    names = sorted(tensors)
    header, blobs, off = {}, [], 0
    for k in names:
        t = tensors[k].contiguous()
        if t.dtype == torch.bfloat16:
            raw, dt = t.view(torch.int16).numpy().tobytes(), "BF16"
        elif t.dtype == torch.float16:
            raw, dt = t.numpy().tobytes(), "F16"
        else:
            raw, dt = t.to(torch.float32).numpy().tobytes(), "F32"
        header[k] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_state(ckpt_dir):
    """The checkpoint's state dict via torch.load (independent of export.py's reader)."""
    idx = os.path.join(ckpt_dir, "pytorch_model.bin.index.json")
    with open(idx) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    sd = {}
    for s in shards:
        sd.update(torch.load(os.path.join(ckpt_dir, s), map_location="cpu"))
    return {k: v.float() for k, v in sd.items()}


# ---------------------------------------------------------------------------------------
# scorer variants (for --prompt, --levels, --no-pad): other prompt templates, other level
# words and weights, and CLIPImageProcessor without expand2square

def prompt_ids_template(sp, template, task="quality", input_="image"):
    """tokenizer_image_token(template with {task}/{input} filled in): each chunk around
    <|image|> tokenized on its own with BOS, one BOS kept, IMAGE_TOKEN_INDEX in between."""
    prompt = template.replace("{task}", task).replace("{input}", input_)
    chunks = [[sp.bos_id()] + sp.encode(c) if c else [] for c in prompt.split("<|image|>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == sp.bos_id():
        offset = 1
        ids.append(chunks[0][0])
    for i, c in enumerate(chunks):
        ids.extend(c[offset:])
        if i + 1 < len(chunks):
            ids.extend(([IMAGE_TOKEN_INDEX] * (offset + 1))[offset:])
    return ids


def level_ids_words(sp, words):
    """[tokenizer(w).input_ids[1] for w in words], as the upstream scorers pick level tokens."""
    return [([sp.bos_id()] + sp.encode(w))[1] for w in words]


def clip_resize_crop(img, size):
    """CLIPImageProcessor (transformers 4.36) on an RGB PIL image, no padding: resize so the
    shortest edge is `size` (get_resize_output_image_size: long side int(size * long /
    short), Pillow bicubic), then center_crop: top = (h - size) // 2, left = (w - size) // 2.
    Returns the uint8 (size, size, 3) array."""
    from PIL import Image
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    nh, nw = (new_long, size) if w <= h else (size, new_long)
    a = np.asarray(img.resize((nw, nh), Image.BICUBIC))
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(a[top:top + size, left:left + size])


def preprocess_nopad(img, size, mean, std):
    """As preprocess() but without expand2square (Q-Instruct-style scorers, --no-pad)."""
    a = clip_resize_crop(img.convert("RGB"), size)
    x = (a.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return a, x.transpose(2, 0, 1).copy()


def score_levels(ref, pixels, ids, levels, weights):
    """Reference.score with other level tokens and weights: the level logits, softmax and
    the weighted score (float64)."""
    v, s1 = ref.vision(torch.from_numpy(pixels))
    a, s2 = ref.abstractor(v)
    st = {**s1, **s2, **ref.decoder(ids, a)}
    lv = st["logits_last"][levels]
    probs = torch.softmax(lv, -1)
    st["level_logits"], st["probs"] = lv, probs
    st["score"] = (probs @ torch.tensor(weights, dtype=lv.dtype)).reshape(1)
    return {k: (v.detach().numpy() if torch.is_tensor(v) else v) for k, v in st.items()}


# ---------------------------------------------------------------------------------------
# the rest of the family: synonyms averaged per level (Q-Instruct's boost), several images
# in one prompt and the Compare2Score fit, restated from the original scoring code

def score_prompt(ref, pixels_per_marker, ids, level_groups, weights, temperature=1.0):
    """One prompt with one image per marker (pixels_per_marker: a list of [3,S,S] arrays),
    each level the mean logit of its words' tokens (level_groups: lists of token ids, as
    boost_qa/model.py's logits.reshape(-1, 3, 3).mean(1)), probs = softmax(logits / T)."""
    visual = []
    for x in pixels_per_marker:
        v, _ = ref.vision(torch.from_numpy(np.asarray(x)[None]))
        a, _ = ref.abstractor(v)
        visual.append(a[0])
    st = ref.decoder(ids, visual)
    last = st["logits_last"]
    lv = torch.stack([last[g].mean() for g in level_groups])
    probs = torch.softmax(lv / temperature, -1)
    score = probs @ torch.tensor(weights, dtype=lv.dtype)
    return {"level_logits": lv.detach().numpy(), "probs": probs.detach().numpy(), "score": float(score),
            "input_ids": ids}


# Compare2Score: pyiqa/archs/q_align/cmp_modelling_mplug_owl2.py (IQA-PyTorch 01ae427) and
# Q-Future/Compare2Score q_align/model/modeling_mplug_owl2.py, restated (not copied)
C2S_ANCHOR_MATRIX = np.array(
    [[5.0000000e-01, 2.5912809e-01, 3.3130276e-04, 1.6087297e-06, 1.1803027e-09],
     [7.4087191e-01, 5.0000000e-01, 2.4985345e-01, 9.9954158e-02, 1.8675303e-08],
     [9.9966872e-01, 7.5014657e-01, 5.0000000e-01, 4.9968880e-01, 2.4852838e-01],
     [9.9999839e-01, 9.0004587e-01, 5.0031120e-01, 5.0000000e-01, 2.5400183e-01],
     [1.0000000e+00, 1.0000000e+00, 7.5147164e-01, 7.4599814e-01, 5.0000000e-01]], dtype=np.float32)
C2S_WORDS = ["inferior", "worse", "similar", "better", "superior"]
C2S_WEIGHTS = np.array([0., 0.25, 0.5, 0.75, 1.], dtype=np.float16)


def c2s_preference(level_logits):
    """The preference over one anchor: numpy, as the original: logits / 100 (here float32
    logits; the original's are fp16 from the GPU), exp / sum(exp), dot with fp16 weights."""
    x = np.asarray(level_logits, dtype=np.float32).reshape(1, -1) / 100
    p = np.exp(x) / np.sum(np.exp(x))
    return np.dot(p, C2S_WEIGHTS)


def c2s_matrix(prefs):
    """update_matrix: the anchors' 5 x 5 matrix with the image's row p and column 1 - p."""
    n = C2S_ANCHOR_MATRIX.shape[0]
    scores = np.squeeze(np.array(prefs))
    row, col = np.zeros((1, n)), np.zeros((n + 1, 1))
    row[0, np.arange(n)] = scores
    col[np.arange(n), 0] = 1 - scores
    m = np.hstack([np.vstack([C2S_ANCHOR_MATRIX, row]), col])
    m[n, n] = 0.5
    return m


def c2s_fit(matrix, steps=100, lr=0.1, cdf="normal"):
    """optimize_score_map_pytorch_cuda on the CPU, float32: seed 0, torch.rand start values,
    Adam, loss -(sum(c log max(F(s_i - s_j), 1e-6)) - sum(s^2) / 2), F the normal CDF (the
    HF/pyiqa code; the GitHub scorer.py has a sigmoid), min-max scaled to 0..100.
    Returns (score of the last image, start values)."""
    torch.manual_seed(0)
    c = torch.tensor(matrix, dtype=torch.float32)
    s = torch.rand(c.shape[0], requires_grad=True)
    start = s.detach().clone().numpy()
    opt = torch.optim.Adam([s], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        d = s[:, None] - s
        f = 0.5 * (1 + torch.erf(d / torch.sqrt(torch.tensor(2.0)))) if cdf == "normal" else torch.sigmoid(d)
        loss = -(torch.sum(c * torch.log(torch.maximum(f, torch.tensor(1e-6)))) - torch.sum(s ** 2) / 2)
        loss.backward()
        opt.step()
    out = s.detach().numpy()
    lo, hi = np.min(out), np.max(out)
    return float((100 * (out - lo) / (hi - lo))[-1]), start


# ---------------------------------------------------------------------------------------
# answers in words: the greedy loop of model.generate(..., do_sample=False) over the forward
# pass above, recomputed from the whole sequence at every step (no K/V cache: an oracle that
# shares nothing with qalign's cache), and the conv_mplug_owl2 prompt

ASK_PROMPT = "USER: <|image|>{question} ASSISTANT:"


def ask_prompt_ids(sp, question, template=ASK_PROMPT):
    """tokenizer_image_token(template with {question} filled in)."""
    return prompt_ids_template(sp, template.replace("{question}", question))


def greedy(ref, visual, ids, max_new, eos_id=2):
    """Greedy decoding after the prompt `ids` (IMAGE_TOKEN_INDEX where `visual` goes, as in
    Reference.decoder): next = argmax(lm_head(h[-1])) until EOS or max_new tokens. Returns
    (tokens without EOS, margins): margins[i] = top-1 minus top-2 logit at step i, how far the
    step is from a tie."""
    out, margins = [], []
    for _ in range(max_new):
        logits = ref.decoder(list(ids) + out, visual)["logits_last"]
        top = torch.topk(logits, 2)
        margins.append(float(top.values[0] - top.values[1]))
        nxt = int(torch.argmax(logits))
        if nxt == eos_id:
            break
        out.append(nxt)
    return out, margins


def visual_rows(ref, pixels):
    """The abstractor's output for images (N, 3, S, S): (N, Q+1, D)."""
    v, _ = ref.vision(torch.from_numpy(pixels))
    a, _ = ref.abstractor(v)
    return a
