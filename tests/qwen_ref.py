"""An independent PyTorch re-statement of the Qwen3.5 forward pass (Q-ReAlign), for tests.

Ported from Hugging Face transformers, src/transformers/models/qwen3_5/modeling_qwen3_5.py
at commit 009e78d6e89fd6f3e68cf81ba95ccc682c8cdda9 (and src/transformers/vision_utils.py at
036266707c1cc7f759ee1970a502de15ee55a838 for the vision position ids and the bilinear
position-embedding interpolation), written for Debian's torch 1.13: no caches, eager
attention with an explicit causal mask, no hub kernels. It reads a checkpoint in the
released layout (config.json with text_config / vision_config, model.safetensors) with its
own safetensors reader, and shares no code with export.py or qwen35.c.

    python3 tests/qwen_ref.py DIR          writes a tiny random checkpoint and the outputs
                                           of every stage for a few records under DIR

Computation is in float64 by default (float32 on request); weights are whatever the
checkpoint holds (bf16 values are widened exactly).
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------
# safetensors (the format: u64 header length, JSON header, raw little-endian data)

_ST_TO_NP = {"F32": np.float32, "F64": np.float64, "I64": np.int64}


def write_safetensors(path, tensors):
    """tensors: name -> (np array, dtype) with dtype "BF16" (array of uint16 bit patterns),
    "F32" or ...; written in name order."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        arr, dt = tensors[name]
        b = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path, dtype=np.float64):
    """name -> torch tensor of dtype (float64 by default; bf16 widened exactly)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(n))
        base = 8 + n
        data = f.read()
    out = {}
    for name, info in meta.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[a:b]
        if info["dtype"] == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=_ST_TO_NP[info["dtype"]])
        out[name] = torch.from_numpy(arr.astype(dtype).reshape(info["shape"]))
    return out


def bf16_round(x):
    """float32 array -> (uint16 bf16 bits, float32 value), round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return bits, (bits.astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------------------------------
# the model


class Qwen35:
    def __init__(self, ckpt_dir, dtype=torch.float64):
        with open(os.path.join(ckpt_dir, "config.json")) as f:
            self.cfg = json.load(f)
        self.tc, self.vc = self.cfg["text_config"], self.cfg["vision_config"]
        sd = {}
        idx = os.path.join(ckpt_dir, "model.safetensors.index.json")
        files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
        for fn in files:
            sd.update(read_safetensors(os.path.join(ckpt_dir, fn), np.float32 if dtype == torch.float32 else np.float64))
        self.dtype = dtype
        self.w = {k: v.to(dtype) for k, v in sd.items()}
        tc = self.tc
        rp = tc.get("rope_parameters") or dict(tc.get("rope_scaling") or {}, rope_theta=tc.get("rope_theta"),
                                                  partial_rotary_factor=tc.get("partial_rotary_factor", 0.25))
        self.rope_theta = rp["rope_theta"]
        self.partial = rp.get("partial_rotary_factor", 1.0)
        self.mrope_section = rp.get("mrope_section", [11, 11, 10])
        self.head_dim = tc.get("head_dim") or tc["hidden_size"] // tc["num_attention_heads"]
        self.tied = self.cfg.get("tie_word_embeddings", tc.get("tie_word_embeddings", False))

    def W(self, name):
        return self.w[name]

    # ---- vision tower ----------------------------------------------------------------

    def vision(self, pixel_values, grid_thw, stages=None):
        """pixel_values (N, C*T*P*P) in the processor's order; grid_thw [(t, h, w)] per image.
        Returns the merged visual tokens (N/4, out_hidden)."""
        vc, p = self.vc, "model.visual."
        D, H = vc["hidden_size"], vc["num_heads"]
        hd, m = D // H, vc["spatial_merge_size"]
        x = pixel_values.to(self.dtype)
        # Qwen3_5VisionPatchEmbed: Conv3d with stride = kernel, as one matmul
        wpe = self.W(p + "patch_embed.proj.weight").reshape(D, -1)
        x = x @ wpe.T + self.W(p + "patch_embed.proj.bias")
        # pos_embeds = (self.pos_embed(interp_indices) * interp_weights[:, :, None]).sum(1)
        side = int(vc["num_position_embeddings"] ** 0.5)
        idx, wts = [], []
        for (t, h, w) in grid_thw:
            i_, w_ = interp_indices_weights(t, h, w, side, m)
            idx.append(i_)
            wts.append(w_)
        idx, wts = torch.cat(idx), torch.cat(wts).to(self.dtype)
        pos = (self.W(p + "pos_embed.weight")[idx] * wts[:, :, None]).sum(1)
        x = x + pos
        if stages is not None:
            stages["vit_embed"] = x
        # rotary: Qwen3_5VisionRotaryEmbedding (axial, head_dim // 2 spatial dims, theta 1e4)
        theta = (vc.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        spatial = hd // 2
        inv_freq = 1.0 / (theta ** (torch.arange(0, spatial, 2, dtype=torch.float32) / spatial))
        posid = torch.cat([vision_position_ids(t, h, w, m) for (t, h, w) in grid_thw])
        fr = posid[..., None].float() * inv_freq.float()        # (N, 2, hd/4) in float32
        cos, sin = fr.cos(), fr.sin()
        cos = torch.cat([cos[:, 0], cos[:, 1]], -1)
        sin = torch.cat([sin[:, 0], sin[:, 1]], -1)
        cos, sin = torch.cat([cos, cos], -1).to(self.dtype), torch.cat([sin, sin], -1).to(self.dtype)
        seqlens = [t * h * w for (t, h, w) in grid_thw]
        for i in range(vc["depth"]):
            b = f"{p}blocks.{i}."
            hn = F.layer_norm(x, (D,), self.W(b + "norm1.weight"), self.W(b + "norm1.bias"), 1e-6)
            qkv = (hn @ self.W(b + "attn.qkv.weight").T + self.W(b + "attn.qkv.bias")).reshape(-1, 3, H, hd)
            q, k, v = qkv.permute(1, 0, 2, 3).unbind(0)
            q = q * cos[:, None] + rotate_half(q) * sin[:, None]
            k = k * cos[:, None] + rotate_half(k) * sin[:, None]
            outs, s0 = [], 0
            for n in seqlens:   # each image attends within itself (cu_seqlens)
                qq, kk, vv = (z[s0:s0 + n].transpose(0, 1) for z in (q, k, v))
                a = torch.softmax((qq @ kk.transpose(1, 2)) * hd ** -0.5, -1)
                outs.append((a @ vv).transpose(0, 1).reshape(n, D))
                s0 += n
            att = torch.cat(outs)
            x = x + att @ self.W(b + "attn.proj.weight").T + self.W(b + "attn.proj.bias")
            hn = F.layer_norm(x, (D,), self.W(b + "norm2.weight"), self.W(b + "norm2.bias"), 1e-6)
            hmid = hn @ self.W(b + "mlp.linear_fc1.weight").T + self.W(b + "mlp.linear_fc1.bias")
            hmid = F.gelu(hmid, approximate="tanh")      # gelu_pytorch_tanh
            x = x + hmid @ self.W(b + "mlp.linear_fc2.weight").T + self.W(b + "mlp.linear_fc2.bias")
            if stages is not None:
                stages[f"vit_block{i}"] = x
        # Qwen3_5VisionPatchMerger (use_postshuffle_norm=False): LayerNorm per patch, 4 rows -> 1
        x = F.layer_norm(x, (D,), self.W(p + "merger.norm.weight"), self.W(p + "merger.norm.bias"), 1e-6)
        x = x.reshape(-1, D * m * m)
        x = x @ self.W(p + "merger.linear_fc1.weight").T + self.W(p + "merger.linear_fc1.bias")
        x = F.gelu(x)                                    # nn.GELU(): erf
        x = x @ self.W(p + "merger.linear_fc2.weight").T + self.W(p + "merger.linear_fc2.bias")
        if stages is not None:
            stages["vit_merger"] = x
        return x

    # ---- positions -------------------------------------------------------------------

    def rope_index(self, input_ids, grid_thw):
        """Qwen3_5Model.get_rope_index for one sequence of images: (3, S) positions."""
        m = self.vc["spatial_merge_size"]
        img = self.cfg["image_token_id"]
        types = [1 if t == img else 0 for t in input_ids]
        groups, s = [], 0
        while s < len(types):
            e = s
            while e < len(types) and types[e] == types[s]:
                e += 1
            groups.append((types[s], s, e))
            s = e
        cur, parts, grids = 0, [], iter(grid_thw)
        for typ, s, e in groups:
            if typ == 0:
                parts.append(torch.arange(e - s).view(1, -1).expand(3, -1) + cur)
                cur += e - s
            else:
                t, h, w = next(grids)
                lh, lw = h // m, w // m
                tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(lh) + cur, torch.arange(lw) + cur, indexing="ij")
                vp = torch.stack([tt, hh, ww]).reshape(3, -1).clone()
                vp[0] += cur
                parts.append(vp)
                cur += max(h, w) // m
        return torch.cat(parts, 1)

    # ---- decoder ---------------------------------------------------------------------

    def rms(self, x, w, eps):
        # Qwen3_5RMSNorm: x / rms * (1 + w)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w)

    def text_rope(self, positions):
        """Qwen3_5TextRotaryEmbedding + recomposition_frequencies: cos, sin (S, rot_dim)."""
        dim = int(self.head_dim * self.partial)
        inv_freq = 1.0 / (self.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        fr = positions[:, :, None].float() * inv_freq.float()[None, None, :]   # (3, S, dim/2) float32
        out = []
        for f in (fr.cos(), fr.sin()):
            thw = f[0].clone()
            for d, off in ((1, 1), (2, 2)):
                L = self.mrope_section[d] * 3
                thw[:, off:L:3] = f[d][:, off:L:3]
            out.append(torch.cat([thw, thw], -1).to(self.dtype))
        return out

    def attention_layer(self, x, cos, sin, b):
        tc = self.tc
        S, nh, nkv, hd, eps = x.shape[0], tc["num_attention_heads"], tc["num_key_value_heads"], self.head_dim, tc["rms_norm_eps"]
        qg = (x @ self.W(b + "q_proj.weight").T).view(S, nh, 2 * hd)
        q, gate = qg[..., :hd], qg[..., hd:].reshape(S, nh * hd)
        q = self.rms(q, self.W(b + "q_norm.weight"), eps)
        k = self.rms((x @ self.W(b + "k_proj.weight").T).view(S, nkv, hd), self.W(b + "k_norm.weight"), eps)
        v = (x @ self.W(b + "v_proj.weight").T).view(S, nkv, hd)
        rd = cos.shape[-1]

        def rot(z):
            zr, zp = z[..., :rd], z[..., rd:]
            return torch.cat([zr * cos[:, None] + rotate_half(zr) * sin[:, None], zp], -1)

        q, k = rot(q).transpose(0, 1), rot(k).transpose(0, 1)
        v = v.transpose(0, 1)
        rep = nh // nkv
        k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
        sc = (q @ k.transpose(1, 2)) * hd ** -0.5
        mask = torch.full((S, S), float("-inf"), dtype=sc.dtype).triu(1)
        a = torch.softmax(sc + mask, -1) @ v
        a = a.transpose(0, 1).reshape(S, nh * hd)
        a = a * torch.sigmoid(gate)
        return a @ self.W(b + "o_proj.weight").T

    def gdn_layer(self, x, b, stages=None, chunk=True):
        tc = self.tc
        S = x.shape[0]
        nk, nv = tc["linear_num_key_heads"], tc["linear_num_value_heads"]
        dk, dv = tc["linear_key_head_dim"], tc["linear_value_head_dim"]
        qkv = x @ self.W(b + "in_proj_qkv.weight").T                  # (S, 2 nk dk + nv dv)
        z = (x @ self.W(b + "in_proj_z.weight").T).reshape(S, nv, dv)
        bb = x @ self.W(b + "in_proj_b.weight").T
        aa = x @ self.W(b + "in_proj_a.weight").T
        cw = self.W(b + "conv1d.weight")                              # (conv_dim, 1, K)
        K = cw.shape[-1]
        c = F.conv1d(qkv.T[None], cw, None, padding=K - 1, groups=qkv.shape[1])[0, :, :S]
        c = F.silu(c).T
        q, k, v = torch.split(c, [nk * dk, nk * dk, nv * dv], -1)
        q, k, v = q.reshape(S, nk, dk), k.reshape(S, nk, dk), v.reshape(S, nv, dv)
        beta = torch.sigmoid(bb)
        g = -self.W(b + "A_log").exp() * F.softplus(aa + self.W(b + "dt_bias"))
        fn = chunk_gated_delta_rule if chunk else recurrent_gated_delta_rule
        o = fn(q[None], k[None], v[None], g[None], beta[None])[0]      # (S, nv, dv)
        # Qwen3_5RMSNormGated: weight * x / rms(x), times silu(z)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + tc["rms_norm_eps"])
        o = self.W(b + "norm.weight") * o
        o = o * F.silu(z)
        return o.reshape(S, nv * dv) @ self.W(b + "out_proj.weight").T

    def decoder(self, embeds, positions, stages=None, chunk=True):
        tc, p = self.tc, "model.language_model."
        cos, sin = self.text_rope(positions)
        x = embeds
        for i, lt in enumerate(tc["layer_types"]):
            b = f"{p}layers.{i}."
            h = self.rms(x, self.W(b + "input_layernorm.weight"), tc["rms_norm_eps"])
            if lt == "linear_attention":
                h = self.gdn_layer(h, b + "linear_attn.", chunk=chunk)
            else:
                h = self.attention_layer(h, cos, sin, b + "self_attn.")
            x = x + h
            h = self.rms(x, self.W(b + "post_attention_layernorm.weight"), tc["rms_norm_eps"])
            gt = h @ self.W(b + "mlp.gate_proj.weight").T
            up = h @ self.W(b + "mlp.up_proj.weight").T
            x = x + (F.silu(gt) * up) @ self.W(b + "mlp.down_proj.weight").T
            if stages is not None:
                stages[f"layer{i}"] = x
        return self.rms(x, self.W(p + "norm.weight"), tc["rms_norm_eps"])

    def lm_head(self):
        return self.W("model.language_model.embed_tokens.weight") if self.tied else self.W("lm_head.weight")

    def forward(self, input_ids, pixel_values, grid_thw, level_ids, stages=None, chunk=True):
        """The whole model on one prompt; returns the level logits; stages gets every stage."""
        st = stages if stages is not None else {}
        emb = self.W("model.language_model.embed_tokens.weight")[torch.tensor(input_ids)]
        if grid_thw:
            vis = self.vision(pixel_values, grid_thw, st)
            mask = torch.tensor([t == self.cfg["image_token_id"] for t in input_ids])
            assert int(mask.sum()) == vis.shape[0], (int(mask.sum()), vis.shape)
            emb = emb.clone()
            emb[mask] = vis
        st["embeds"] = emb
        pos = self.rope_index(input_ids, grid_thw)
        st["positions"] = pos
        h = self.decoder(emb, pos, st, chunk=chunk)
        st["final_norm"] = h[-1]
        logits = self.lm_head() @ h[-1]
        st["logits_last"] = logits
        lv = logits[torch.tensor(level_ids)]
        st["level_logits"] = lv
        return lv


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def vision_position_ids(t, h, w, m):
    """vision_utils.get_vision_position_ids: (t*h*w, 2) (row, col) in merge-block order."""
    hp, wp = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    shape = (h // m, m, w // m, m)
    hp = hp.reshape(shape).transpose(1, 2).flatten()
    wp = wp.reshape(shape).transpose(1, 2).flatten()
    return torch.stack([hp, wp], -1).repeat(t, 1)


def interp_indices_weights(t, h, w, side, m):
    """vision_utils.get_vision_interpolation_indices_and_weights for one image, bilinear,
    align_corners=True, merge-block order: (t*h*w, 4) indices and float32 weights."""
    n = h * w
    within = torch.arange(t * n) % n
    bw = w // m
    in_col, in_row = within % m, (within // m) % m
    bcol, brow = (within // (m * m)) % bw, within // (m * m * bw)
    row, col = brow * m + in_row, bcol * m + in_col

    def axis(index, size):
        index = index.to(torch.float32)
        src = index * (side - 1) / max(size - 1, 1)
        fl = torch.floor(src)
        off = torch.arange(0, 2)
        taps = (fl.long()[:, None] + off).clamp(0, side - 1)
        dist = (src[:, None] - fl[:, None] - off).abs()
        return taps, (1 - dist).clamp(min=0)

    ht, hw_ = axis(row, h)
    wt, ww = axis(col, w)
    idx = (ht[:, :, None] * side + wt[:, None, :]).reshape(-1, 4)
    wts = (hw_[:, :, None] * ww[:, None, :]).reshape(-1, 4)
    return idx, wts


def l2norm(x, eps=1e-6):
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def recurrent_gated_delta_rule(q, k, v, g, beta):
    """torch_recurrent_gated_delta_rule, use_qk_l2norm_in_kernel=True, no initial state.
    q, k (B, S, nk, dk); v (B, S, nv, dv); g, beta (B, S, nv). Returns (B, S, nv, dv)."""
    nv = v.shape[2]
    if k.shape[2] != nv:
        q, k = (z.repeat_interleave(nv // z.shape[2], dim=2) for z in (q, k))
    q, k, v, beta, g = (z.transpose(1, 2).contiguous() for z in (q, k, v, beta, g))
    q, k = l2norm(q), l2norm(k)
    q = q / (q.shape[-1] ** 0.5)
    B, H, S, dk = k.shape
    dv = v.shape[-1]
    state = torch.zeros(B, H, dk, dv, dtype=v.dtype)
    out = torch.zeros_like(v)
    for i in range(S):
        qt, kt, vt = q[:, :, i], k[:, :, i], v[:, :, i]
        state = state * g[:, :, i].exp()[..., None, None]
        kv_mem = (state * kt.unsqueeze(-1)).sum(-2)
        delta = (vt - kv_mem) * beta[:, :, i].unsqueeze(-1)
        state = state + kt.unsqueeze(-1) * delta.unsqueeze(-2)
        out[:, :, i] = (state * qt.unsqueeze(-1)).sum(-2)
    return out.transpose(1, 2).contiguous()


def chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64):
    """torch_chunk_gated_delta_rule, use_qk_l2norm_in_kernel=True, no initial state."""
    nv = v.shape[2]
    if k.shape[2] != nv:
        q, k = (z.repeat_interleave(nv // z.shape[2], dim=2) for z in (q, k))
    q, k, v, beta, g = (z.transpose(1, 2).contiguous() for z in (q, k, v, beta, g))
    q, k = l2norm(q), l2norm(k)
    q = q * q.shape[-1] ** -0.5
    B, H, S, dk = k.shape
    dv = v.shape[-1]
    pad = (chunk_size - S % chunk_size) % chunk_size
    q, k, v = (F.pad(z, (0, 0, 0, pad)) for z in (q, k, v))
    beta, g = F.pad(beta, (0, pad)), F.pad(g, (0, pad))
    n = (S + pad) // chunk_size
    v_beta, k_beta = v * beta.unsqueeze(-1), k * beta.unsqueeze(-1)
    q, k, k_beta, v_beta = (z.reshape(B, H, n, chunk_size, z.shape[-1]) for z in (q, k, k_beta, v_beta))
    g = g.reshape(B, H, n, chunk_size)
    upper = torch.ones(chunk_size, chunk_size, dtype=torch.bool).triu(1)
    cg = g.cumsum(-1)
    pair = (cg.unsqueeze(-1) - cg.unsqueeze(-2)).masked_fill(upper, float("-inf")).exp()
    ut = (k_beta @ k.transpose(-1, -2)) * pair
    intra = (q @ k.transpose(-1, -2)) * pair
    dkb = k_beta * cg.exp().unsqueeze(-1)
    newv = torch.linalg.solve_triangular(ut, v_beta, upper=False, unitriangular=True)
    kcum = torch.linalg.solve_triangular(ut, dkb, upper=False, unitriangular=True)
    state = torch.zeros(B, H, dk, dv, dtype=newv.dtype)
    out = torch.zeros_like(newv)
    q = q * cg.exp().unsqueeze(-1)
    k = k * (cg[..., -1:] - cg).exp().unsqueeze(-1)
    cdec = cg[..., -1].exp()[..., None, None]
    for i in range(n):
        vn = newv[:, :, i] - kcum[:, :, i] @ state
        out[:, :, i] = q[:, :, i] @ state + intra[:, :, i] @ vn
        state = state * cdec[:, :, i] + k[:, :, i].transpose(-1, -2) @ vn
    out = out.reshape(B, H, -1, dv)[:, :, :S]
    return out.transpose(1, 2).contiguous()


# ---------------------------------------------------------------------------------------
# a tiny random checkpoint in the released layout, and its records

TINY = dict(
    text_config=dict(
        model_type="qwen3_5_text", hidden_size=64, intermediate_size=96, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6, hidden_act="silu",
        layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention",
                     "full_attention", "linear_attention"],
        linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=24,
        linear_num_key_heads=2, linear_num_value_heads=4, attn_output_gate=True, vocab_size=4096,
        full_attention_interval=4, max_position_embeddings=262144,
        rope_parameters=dict(rope_type="default", rope_theta=10000000.0, partial_rotary_factor=0.5,
                             mrope_section=[3, 3, 2], mrope_interleaved=True),
    ),
    vision_config=dict(
        model_type="qwen3_5", depth=3, hidden_size=32, hidden_act="gelu_pytorch_tanh", intermediate_size=64,
        num_heads=2, in_channels=3, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
        out_hidden_size=64, num_position_embeddings=36, deepstack_visual_indexes=[], initializer_range=0.02,
    ),
    architectures=["Qwen3_5ForConditionalGeneration"], model_type="qwen3_5",
    # the ids of tests/data/qwen_tokenizer (4056 pieces, then the 33 added tokens as Qwen3.5's)
    image_token_id=4068, video_token_id=4069, vision_start_token_id=4065, vision_end_token_id=4066,
    tie_word_embeddings=True,
)
LEVEL_IDS = [101, 202, 303, 404, 505]


def tiny_tensors(cfg, rng):
    """Random weights named as in the released checkpoints: name -> float32 array."""
    tc, vc = cfg["text_config"], cfg["vision_config"]
    D, Dv = tc["hidden_size"], vc["hidden_size"]
    out = {}

    def mat(name, *shape, s=1.0):
        out[name] = (s * rng.standard_normal(shape) / math.sqrt(shape[-1] if len(shape) == 2 else np.prod(shape[1:]))).astype(np.float32)

    def vec(name, n, mean=0.0, s=0.1):
        out[name] = (mean + s * rng.standard_normal(n)).astype(np.float32)

    p = "model.visual."
    C, T, P, M = vc["in_channels"], vc["temporal_patch_size"], vc["patch_size"], vc["spatial_merge_size"]
    mat(p + "patch_embed.proj.weight", Dv, C, T, P, P)
    vec(p + "patch_embed.proj.bias", Dv, s=0.02)
    out[p + "pos_embed.weight"] = (0.5 * rng.standard_normal((vc["num_position_embeddings"], Dv))).astype(np.float32)
    for i in range(vc["depth"]):
        b = f"{p}blocks.{i}."
        vec(b + "norm1.weight", Dv, 1.0)
        vec(b + "norm1.bias", Dv, s=0.05)
        vec(b + "norm2.weight", Dv, 1.0)
        vec(b + "norm2.bias", Dv, s=0.05)
        mat(b + "attn.qkv.weight", 3 * Dv, Dv, s=1.5)
        vec(b + "attn.qkv.bias", 3 * Dv, s=0.05)
        mat(b + "attn.proj.weight", Dv, Dv)
        vec(b + "attn.proj.bias", Dv, s=0.02)
        mat(b + "mlp.linear_fc1.weight", vc["intermediate_size"], Dv)
        vec(b + "mlp.linear_fc1.bias", vc["intermediate_size"], s=0.05)
        mat(b + "mlp.linear_fc2.weight", Dv, vc["intermediate_size"])
        vec(b + "mlp.linear_fc2.bias", Dv, s=0.02)
    H4 = Dv * M * M
    vec(p + "merger.norm.weight", Dv, 1.0)
    vec(p + "merger.norm.bias", Dv, s=0.05)
    mat(p + "merger.linear_fc1.weight", H4, H4)
    vec(p + "merger.linear_fc1.bias", H4, s=0.05)
    mat(p + "merger.linear_fc2.weight", vc["out_hidden_size"], H4)
    vec(p + "merger.linear_fc2.bias", vc["out_hidden_size"], s=0.05)
    t = "model.language_model."
    out[t + "embed_tokens.weight"] = rng.standard_normal((tc["vocab_size"], D)).astype(np.float32)
    vec(t + "norm.weight", D)
    nh, nkv, hd = tc["num_attention_heads"], tc["num_key_value_heads"], tc["head_dim"]
    nk, nv, dk, dv = (tc[x] for x in ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                                      "linear_value_head_dim"))
    for i, lt in enumerate(tc["layer_types"]):
        b = f"{t}layers.{i}."
        vec(b + "input_layernorm.weight", D)
        vec(b + "post_attention_layernorm.weight", D)
        mat(b + "mlp.gate_proj.weight", tc["intermediate_size"], D)
        mat(b + "mlp.up_proj.weight", tc["intermediate_size"], D)
        mat(b + "mlp.down_proj.weight", D, tc["intermediate_size"])
        if lt == "linear_attention":
            a = b + "linear_attn."
            mat(a + "in_proj_qkv.weight", 2 * nk * dk + nv * dv, D)
            mat(a + "in_proj_z.weight", nv * dv, D)
            mat(a + "in_proj_b.weight", nv, D)
            mat(a + "in_proj_a.weight", nv, D)
            out[a + "conv1d.weight"] = (0.5 * rng.standard_normal((2 * nk * dk + nv * dv, 1, tc["linear_conv_kernel_dim"]))).astype(np.float32)
            out[a + "dt_bias"] = (1.0 + 0.3 * rng.standard_normal(nv)).astype(np.float32)
            out[a + "A_log"] = np.log(rng.uniform(0.05, 2.0, nv)).astype(np.float32)
            vec(a + "norm.weight", dv, 1.0)
            mat(a + "out_proj.weight", D, nv * dv)
        else:
            a = b + "self_attn."
            mat(a + "q_proj.weight", 2 * nh * hd, D)
            mat(a + "k_proj.weight", nkv * hd, D)
            mat(a + "v_proj.weight", nkv * hd, D)
            mat(a + "o_proj.weight", D, nh * hd)
            vec(a + "q_norm.weight", hd)
            vec(a + "k_norm.weight", hd)
    if not cfg["tie_word_embeddings"]:
        mat("lm_head.weight", tc["vocab_size"], D, s=4.0)
    return out


def write_checkpoint(d, cfg, seed=0, f32_names=("A_log", "dt_bias")):
    """config.json, model.safetensors (bf16, except f32_names in f32, as some releases
    keep them), preprocessor_config.json."""
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    tens = {}
    for name, arr in tiny_tensors(cfg, rng).items():
        if name.split(".")[-1] in f32_names:
            tens[name] = (arr, "F32")
        else:
            tens[name] = (bf16_round(arr)[0], "BF16")
    write_safetensors(os.path.join(d, "model.safetensors"), tens)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    pp = dict(image_processor_type="Qwen2VLImageProcessorFast", do_resize=True, do_rescale=True, do_normalize=True,
              image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], patch_size=16, temporal_patch_size=2,
              merge_size=2, size=dict(shortest_edge=65536, longest_edge=16777216))
    with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
        json.dump(pp, f, indent=2)
    tok = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "qwen_tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(tok, name)):
            with open(os.path.join(tok, name), "rb") as a, open(os.path.join(d, name), "wb") as b:
                b.write(a.read())


def records(cfg, seed=1):
    """A few prompts of token ids and random patch rows: (name, ids, pixel rows, grids)."""
    rng = np.random.default_rng(seed)
    vc = cfg["vision_config"]
    K = vc["in_channels"] * vc["temporal_patch_size"] * vc["patch_size"] ** 2
    m2 = vc["spatial_merge_size"] ** 2
    vs, ve, ip = cfg["vision_start_token_id"], cfg["vision_end_token_id"], cfg["image_token_id"]

    def text(n):
        return [int(x) for x in rng.integers(0, 4000, n)]

    def image(h, w):
        # still image: the two temporal copies of each patch are equal
        half = rng.uniform(-1, 1, (h * w, K // 2)).astype(np.float32).reshape(h * w, vc["in_channels"], 1, -1)
        return np.concatenate([half, half], 2).reshape(h * w, K), (1, h, w), h * w // m2

    out = []
    for name, shapes, pre, post in (("one_image", [(6, 4)], 5, 9), ("wide_image", [(4, 8)], 7, 6),
                                    ("two_images", [(6, 4), (10, 14)], 4, 11), ("text_only", [], 70, 0)):
        ids, px, grids = text(pre), [], []
        for (h, w) in shapes:
            rows, g, n = image(h, w)
            ids += [vs] + [ip] * n + [ve] + text(3)
            px.append(rows)
            grids.append(g)
        ids += text(post)
        out.append((name, ids, np.concatenate(px) if px else np.zeros((0, K), np.float32), grids))
    return out


def make_fixtures(d, cfg=None, seed=0):
    """The tiny checkpoint in d/checkpoint and each record's stages in d/ref/NAME/*.npy."""
    cfg = cfg or TINY
    write_checkpoint(os.path.join(d, "checkpoint"), cfg, seed)
    model = Qwen35(os.path.join(d, "checkpoint"), torch.float64)
    model32 = Qwen35(os.path.join(d, "checkpoint"), torch.float32)
    for name, ids, px, grids in records(cfg):
        st, st32 = {}, {}
        with torch.no_grad():
            model.forward(ids, torch.from_numpy(px), grids, LEVEL_IDS, st)
            model32.forward(ids, torch.from_numpy(px), grids, LEVEL_IDS, st32, chunk=False)
        rd = os.path.join(d, "ref", name)
        os.makedirs(rd, exist_ok=True)
        # the same model in float32 (recurrent delta rule): how far float32 itself lands
        # from float64 at each stage, the yardstick for the C code's float32 stages
        os.makedirs(os.path.join(d, "ref32", name), exist_ok=True)
        for k, v in st32.items():
            np.save(os.path.join(d, "ref32", name, k + ".npy"), v.numpy())
        np.save(os.path.join(rd, "input_ids.npy"), np.array(ids, np.int32))
        np.save(os.path.join(rd, "pixel_values.npy"), px.astype(np.float32))
        np.save(os.path.join(rd, "grid_thw.npy"), np.array(grids, np.int32).reshape(-1, 3))
        np.save(os.path.join(rd, "level_ids.npy"), np.array(LEVEL_IDS, np.int32))
        for k, v in st.items():
            np.save(os.path.join(rd, k + ".npy"), v.numpy())
        lv = st["level_logits"]
        p = torch.softmax(lv, 0)
        np.save(os.path.join(rd, "score.npy"), np.array((p * torch.tensor([1, 0.75, 0.5, 0.25, 0], dtype=p.dtype)).sum().item()))
    return d


if __name__ == "__main__":
    make_fixtures(sys.argv[1] if len(sys.argv) > 1 else "/tmp/qwen_tiny")
    print("ok")
