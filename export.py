#!/usr/bin/env python3
"""export.py - turn a Q-Align / OneAlign (mPLUG-Owl2) checkpoint into one qalign model file.

    python3 export.py CHECKPOINT_DIR OUT [--dtype f32|bf16|q8|q4|q8_0|q4_1|q8_256|q4_256]
    python3 export.py --synthetic one-align|tiny [--dtype T] [--seed N] OUT
    python3 export.py BASE_CHECKPOINT_DIR OUT --lora LORA_DIR [--dtype T]   (LoRA merged in)

CHECKPOINT_DIR is a Hugging Face model directory as released (q-future/one-align, or another
checkpoint of the family: q-future/q-align-*, zhiyuanyou/DeQA-Score-Mix3,
q-future/q-instruct-mplug-owl2, q-future/Compare2Score; the tensor list is checked against
the layout of config.json's dimensions, see check_layout):
config.json (with visual_config), preprocessor_config.json, tokenizer.model, and the
weights as pytorch_model.bin.index.json + pytorch_model-*.bin shards (PyTorch zip/pickle)
or model.safetensors[.index.json]. Only numpy is needed: the PyTorch and safetensors
readers below are written from the file formats, not imported. Tensors are read and
written one at a time, so exporting the 16 GB release needs about one tensor of memory.

The synthetic presets write a model with random weights (same layout, same tokenizer),
for tests and benchmarks without a checkpoint.

Model file layout (all little-endian; the C loader in qalign.c reads exactly this):
    [0, 1024)   header: 256 x uint32 slots, see HEADER_FIELDS (floats as float32 bits)
    [1024, ...) tensor table: n_tensors x 96-byte entries, see TABLE_ENTRY
    then        tensor data, each tensor starting at a multiple of 64 bytes, in table order;
    then        at the next multiple of 64, the checksum section (see write_sums), which
                ends the file. (Files exported before it was added end with the last
                tensor: they load as before, and `qalign --verify` says they have none.)
"""
import argparse
import json
import os
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict

try:
    import numpy as np
except ImportError:
    if __name__ != "__main__":
        raise
    print(f"export.py: error: numpy is not installed for {sys.executable}: use /usr/bin/python3 "
          "(Debian's, which has it) or apt-get install python3-numpy", file=sys.stderr)
    sys.exit(1)

MAGIC = 0x4E4C4151          # bytes "QALN" read as a little-endian uint32
# Format versions:
#   1: header of 256 u32 slots, 96-byte tensor table, 64-byte aligned data;
#      plain f32/u8/u32 tensors, matrices in 16-row groups as mf32/mbf16/mq8_0/mq4_1.
#   2: the five level words' token ids left out of the header (qalign tokenizes the
#      words itself when it loads the model); the slots after them move up.
#      Later, same version: matrix types mq8_256 (7) and mq4_256 (8). Files of the other
#      types are unchanged; a qalign that predates them refuses such a file with "unknown
#      weight type" / "unknown dtype" and the hint to re-export.
VERSION = 2
HEADER_BYTES = 1024
ALIGN = 64

# Tensor element types. Plain types (vectors, tables, the tokenizer) are stored row-major.
# Weight matrices use the M* types: their rows are grouped by 16 (zero rows pad the last
# group) and each group is laid out so that one 64-byte load gives the same k-slice of 16
# rows, which is what the SIMD kernels in qalign.c multiply with (see pack_matrix()).
DT_F32, DT_U8, DT_U32, DT_MF32, DT_MBF16, DT_MQ8_0, DT_MQ4_1, DT_MQ8_256, DT_MQ4_256 = range(9)
DTYPES = {"f32": DT_MF32, "bf16": DT_MBF16, "q8_0": DT_MQ8_0, "q4_1": DT_MQ4_1,
          "q8_256": DT_MQ8_256, "q4_256": DT_MQ4_256}
# Names to remember: the fastest 8-bit and 4-bit types (bench/ANALYSIS.md has the figures).
ALIASES = {"q8": "q8_256", "q4": "q4_256"}
QUANTISED = (DT_MQ8_0, DT_MQ4_1, DT_MQ8_256, DT_MQ4_256)
ROWS = 16                    # rows per group in matrix layouts
QBLOCK = 32                  # values per quantisation block (along a row); every quantised
                             # type needs rows of whole blocks of 32
QBLOCK_256 = 256             # columns per block of mq8_256 / mq4_256 (the last may be shorter)

# The header, slot by slot ("f" = float32 stored as its bits, else uint32). qalign.c has
# the same list as an enum; a test checks that the two agree.
HEADER_FIELDS = [
    ("magic", "u"), ("version", "u"), ("header_bytes", "u"), ("n_tensors", "u"), ("wtype", "u"),
    # vision tower (CLIP ViT)
    ("v_dim", "u"), ("v_layers", "u"), ("v_heads", "u"), ("v_mlp", "u"),
    ("v_image", "u"), ("v_patch", "u"), ("v_eps", "f"),
    # visual abstractor (its width equals v_dim)
    ("a_layers", "u"), ("a_heads", "u"), ("a_queries", "u"), ("a_mlp", "u"),
    ("a_eps", "f"), ("a_ffn_eps", "f"),
    # LLaMA-2 decoder
    ("l_dim", "u"), ("l_layers", "u"), ("l_heads", "u"), ("l_kv_heads", "u"), ("l_mlp", "u"),
    ("l_vocab", "u"), ("l_eps", "f"), ("l_rope_theta", "f"), ("l_max_pos", "u"),
    # tokenizer
    ("t_bos", "u"), ("t_eos", "u"), ("t_unk", "u"), ("t_dummy_prefix", "u"),
    # preprocessing: expand2square fill colour, CLIP mean and std
    ("fill_r", "u"), ("fill_g", "u"), ("fill_b", "u"),
    ("mean_r", "f"), ("mean_g", "f"), ("mean_b", "f"),
    ("std_r", "f"), ("std_g", "f"), ("std_b", "f"),
]

# One table entry: name (NUL padded), dtype, ndim, shape[4], offset, nbytes.
TABLE_ENTRY = struct.Struct("<56sII4IQQ")
assert TABLE_ENTRY.size == 96


def die(msg):
    print(f"export.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


# ----------------------------------------------------------------------------------------
# bf16 helpers (numpy has no bfloat16: bf16 values travel as their uint16 bit patterns)

def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(f32):
    """Round to nearest even, as torch's .to(torch.bfloat16); NaN stays NaN."""
    u = np.ascontiguousarray(f32, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f32)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


class Raw:
    """A tensor as read from a checkpoint: numpy data plus its source dtype.
    For bf16 sources `data` is the uint16 bit pattern (kept exact)."""

    def __init__(self, data, kind):
        self.data, self.kind = data, kind   # kind: "bf16", "f16", "f32"

    @property
    def shape(self):
        return tuple(self.data.shape)

    def f32(self):
        if self.kind == "bf16":
            return bf16_to_f32(self.data)
        return self.data.astype(np.float32)

    def reshape(self, *shape):
        return Raw(self.data.reshape(*shape), self.kind)

    def __getitem__(self, idx):
        return Raw(np.ascontiguousarray(self.data[idx]), self.kind)


# ----------------------------------------------------------------------------------------
# PyTorch checkpoint reader (torch.save zip format: <name>/data.pkl + <name>/data/<key>)
#
# data.pkl is a pickle of an OrderedDict name -> tensor, where each tensor is
# torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...) and each storage is a
# persistent id ('storage', torch.XStorage, key, location, numel) naming the file data/<key>.
# We unpickle with a restricted Unpickler that builds lazy references instead of tensors.

TORCH_STORAGE_DTYPES = {
    "BFloat16Storage": (np.uint16, "bf16"),
    "HalfStorage": (np.float16, "f16"),
    "FloatStorage": (np.float32, "f32"),
    "DoubleStorage": (np.float64, "f32"),
    "LongStorage": (np.int64, "i64"),
    "IntStorage": (np.int32, "i32"),
}


class _StorageType:
    def __init__(self, name):
        if name not in TORCH_STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unsupported tensor storage type torch.{name}")
        self.np_dtype, self.kind = TORCH_STORAGE_DTYPES[name]


class _LazyTensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def load(self):
        zf, path, st = self.storage
        buf = zf.read(path)
        arr = np.frombuffer(buf, dtype=st.np_dtype)
        item = arr.itemsize
        need = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1 if all(self.size) else 0
        if need > arr.size:
            raise ValueError(f"storage {path} too small for tensor")
        view = np.lib.stride_tricks.as_strided(
            arr[self.offset:], shape=self.size, strides=[s * item for s in self.stride])
        data = np.ascontiguousarray(view)
        kind = st.kind
        if kind in ("i64", "i32"):
            raise ValueError("integer tensors are not weights")
        return Raw(data.astype(np.float32) if st.np_dtype == np.float64 else data, kind)


def _rebuild_tensor_v2(storage, offset, size, stride, *args):
    return _LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data, *args):
    return data


class _TorchUnpickler(pickle.Unpickler):
    def __init__(self, fileobj, zf, prefix):
        super().__init__(fileobj)
        self.zf, self.prefix = zf, prefix

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, _numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("storage without a type")
        return (self.zf, f"{self.prefix}/data/{key}", storage_type)


def read_torch_zip(path):
    """Return {name: _LazyTensor} for a torch.save() zip file; data is read on .load()."""
    if not zipfile.is_zipfile(path):
        die(f"{path}: not a PyTorch zip checkpoint (the legacy pre-1.6 format is not supported; "
            "re-save it with a recent torch.save or convert it to safetensors)")
    zf = zipfile.ZipFile(path)
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkls) != 1:
        die(f"{path}: expected one data.pkl in the archive, found {len(pkls)}")
    prefix = pkls[0][: -len("/data.pkl")] if "/" in pkls[0] else ""
    with zf.open(pkls[0]) as f:
        try:
            state = _TorchUnpickler(f, zf, prefix).load()
        except pickle.UnpicklingError as e:
            die(f"{path}: {e}")
    if not isinstance(state, dict):
        die(f"{path}: the pickle is not a state dict")
    return {k: v for k, v in state.items() if isinstance(v, _LazyTensor)}


# ----------------------------------------------------------------------------------------
# safetensors reader: u64 header length, JSON header {name: {dtype, shape, data_offsets}}, data

SAFETENSORS_DTYPES = {"BF16": (np.uint16, "bf16"), "F16": (np.float16, "f16"), "F32": (np.float32, "f32")}


class _SafeTensor:
    def __init__(self, path, base, info):
        self.path, self.base, self.info = path, base, info

    def load(self):
        dt = self.info["dtype"]
        if dt not in SAFETENSORS_DTYPES:
            raise ValueError(f"unsupported safetensors dtype {dt}")
        np_dtype, kind = SAFETENSORS_DTYPES[dt]
        start, end = self.info["data_offsets"]
        with open(self.path, "rb") as f:
            f.seek(self.base + start)
            buf = f.read(end - start)
        if len(buf) != end - start:
            raise ValueError(f"{self.path}: truncated")
        arr = np.frombuffer(buf, dtype=np_dtype).reshape(self.info["shape"])
        return Raw(arr, kind)


def read_safetensors(path):
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            die(f"{path}: not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > 100 << 20:
            die(f"{path}: safetensors header of {n} bytes is not plausible")
        meta = json.loads(f.read(n))
    meta.pop("__metadata__", None)
    return {k: _SafeTensor(path, 8 + n, v) for k, v in meta.items()}


class Checkpoint:
    """All tensors of a HF checkpoint directory, read lazily shard by shard."""

    def __init__(self, d):
        self.dir = d
        self.files = {}       # shard file name -> {tensor name: lazy tensor} (opened on demand)
        self.where = {}       # tensor name -> shard file name
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            p = os.path.join(d, index)
            if os.path.exists(p):
                with open(p) as f:
                    self.where = dict(json.load(f)["weight_map"])
                break
        else:
            for single in ("model.safetensors", "pytorch_model.bin"):
                if os.path.exists(os.path.join(d, single)):
                    self.where = {k: single for k in self._open(single)}
                    break
            else:
                die(f"{d}: no pytorch_model.bin[.index.json] or model.safetensors[.index.json] found")
        for shard in sorted(set(self.where.values())):
            if not os.path.exists(os.path.join(d, shard)):
                die(f"{d}: shard {shard} named in the index is missing")

    def _open(self, shard):
        if shard not in self.files:
            p = os.path.join(self.dir, shard)
            self.files[shard] = read_safetensors(p) if shard.endswith(".safetensors") else read_torch_zip(p)
        return self.files[shard]

    def __contains__(self, name):
        return name in self.where

    def get(self, name):
        if name not in self.where:
            die(f"tensor {name} is not in the checkpoint (is this a Q-Align / mPLUG-Owl2 model?)")
        lazy = self._open(self.where[name]).get(name)
        if lazy is None:
            die(f"tensor {name} is missing from shard {self.where[name]}")
        try:
            return lazy.load()
        except ValueError as e:
            die(f"tensor {name}: {e}")


# ----------------------------------------------------------------------------------------
# Configuration: read config.json / preprocessor_config.json, refuse what we don't support

def read_config(d):
    def load(name):
        p = os.path.join(d, name)
        if not os.path.exists(p):
            die(f"{d}: {name} not found")
        with open(p) as f:
            return json.load(f)

    c = load("config.json")
    pp = load("preprocessor_config.json")
    if c.get("model_type") != "mplug_owl2":
        die(f"config.json: model_type is {c.get('model_type')!r}; only mplug_owl2 (Q-Align/OneAlign) is supported")
    vc = c.get("visual_config")
    if vc is None:
        # MPLUGOwl2Config(visual_config=None) takes DEFAULT_VISUAL_CONFIG, the defaults of
        # MplugOwlVisionConfig / MplugOwlVisualAbstractorConfig (Q-Future/Q-Align
        # q_align/model/configuration_mplug_owl2.py:L316-L327); the .get() defaults below are those
        vc = {"visual_model": {}, "visual_abstractor": {}}
        print("export.py: config.json has no visual_config: the mPLUG-Owl2 defaults (ViT-L/14 at 448, "
              "6-layer abstractor with 64 queries) apply, as in the original code", file=sys.stderr)
    vm, va = vc.get("visual_model"), vc.get("visual_abstractor")
    if vm is None or va is None:
        die("config.json: visual_config.visual_model / visual_abstractor missing")
    for key, bad in (("rope_scaling", None), ("attention_bias", False)):
        if c.get(key, bad) != bad:
            die(f"config.json: {key}={c.get(key)!r} is not supported")
    if c.get("hidden_act", "silu") != "silu":
        die(f"config.json: hidden_act {c.get('hidden_act')!r} is not supported (silu only)")
    if va.get("hidden_size", 1024) != vm.get("hidden_size", 1024) or \
            va.get("encoder_hidden_size", 1024) != vm.get("hidden_size", 1024):
        die("config.json: the abstractor width must equal the vision width (as upstream's normk requires)")

    def size_of(v):
        return v.get("shortest_edge", v.get("height")) if isinstance(v, dict) else v

    image = vm.get("image_size", 448)
    if size_of(pp.get("size", image)) != image or size_of(pp.get("crop_size", image)) != image:
        die(f"preprocessor_config.json: size/crop_size must equal the vision image_size {image}")
    if pp.get("resample", 3) != 3 or not pp.get("do_normalize", True) or not pp.get("do_resize", True):
        die("preprocessor_config.json: only bicubic resize with normalisation is supported")
    if abs(pp.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
        die("preprocessor_config.json: rescale_factor must be 1/255")
    mean = [float(x) for x in pp.get("image_mean", [0.48145466, 0.4578275, 0.40821073])]
    std = [float(x) for x in pp.get("image_std", [0.26862954, 0.26130258, 0.27577711])]

    cfg = dict(
        v_dim=vm.get("hidden_size", 1024), v_layers=vm.get("num_hidden_layers", 24),
        v_heads=vm.get("num_attention_heads", 16), v_mlp=vm.get("intermediate_size", 4096),
        v_image=image, v_patch=vm.get("patch_size", 14), v_eps=vm.get("layer_norm_eps", 1e-6),
        a_layers=va.get("num_hidden_layers", 6), a_heads=va.get("num_attention_heads", 16),
        a_queries=va.get("num_learnable_queries", 64), a_mlp=va.get("intermediate_size", 2816),
        a_eps=1e-5,  # norm1/normk/norm2 are nn.LayerNorm(hidden) with the default eps
        a_ffn_eps=va.get("layer_norm_eps", 1e-6),
        l_dim=c.get("hidden_size", 4096), l_layers=c.get("num_hidden_layers", 32),
        l_heads=c.get("num_attention_heads", 32),
        l_kv_heads=c.get("num_key_value_heads") or c.get("num_attention_heads", 32),
        l_mlp=c.get("intermediate_size", 11008), l_vocab=c.get("vocab_size", 32000),
        l_eps=c.get("rms_norm_eps", 1e-6), l_rope_theta=c.get("rope_theta", 10000.0),
        l_max_pos=c.get("max_position_embeddings", 2048),
        fill=[int(x * 255) for x in mean], mean=mean, std=std,
        grid=va.get("grid_size") or 32,
    )
    check_dims(cfg)
    return cfg


def check_dims(cfg):
    g = cfg["v_image"] // cfg["v_patch"]
    problems = []
    if cfg["v_image"] % cfg["v_patch"]:
        problems.append("image_size must be a multiple of patch_size")
    if cfg["grid"] != g:
        problems.append(f"abstractor grid_size {cfg['grid']} != image_size/patch_size {g}")
    for w, h in (("v_dim", "v_heads"), ("v_dim", "a_heads"), ("l_dim", "l_heads")):
        if cfg[w] % cfg[h]:
            problems.append(f"{w}={cfg[w]} is not divisible by {h}={cfg[h]}")
    if cfg["l_heads"] % cfg["l_kv_heads"]:
        problems.append("num_attention_heads must be a multiple of num_key_value_heads")
    if (cfg["l_dim"] // cfg["l_heads"]) % 2:
        problems.append("the decoder head size must be even (RoPE)")
    if cfg["v_dim"] % 4:
        problems.append("the vision width must be a multiple of 4 (2-D sin-cos positions)")
    for k in ("v_dim", "v_layers", "v_heads", "v_mlp", "a_layers", "a_queries", "a_mlp",
              "l_dim", "l_layers", "l_mlp", "l_vocab"):
        if not (1 <= cfg[k] < 1 << 24):
            problems.append(f"{k}={cfg[k]} is out of range")
    if problems:
        die("unsupported configuration: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------
# The tensor list: (file name, shape, kind, source) in file order. `kind` says how the
# tensor is stored: "mat" = a weight matrix (stored in the chosen weight type), "vec" =
# f32 always (norms, biases, embeddings that are added, position tables).
# `source` is a function returning the tensor as Raw, from a checkpoint or synthetic.

def tensor_plan(cfg):
    V, A, L = "model.vision_model.", "model.visual_abstractor.", "model."
    D, M, P = cfg["v_dim"], cfg["v_mlp"], cfg["v_patch"]
    T = (cfg["v_image"] // P) ** 2 + 1
    Q, AM = cfg["a_queries"], cfg["a_mlp"]
    Dl, H, KV, LM = cfg["l_dim"], cfg["l_heads"], cfg["l_kv_heads"], cfg["l_mlp"]
    kvd = Dl // H * KV
    plan = []

    def add(name, shape, kind, src, part=None):
        plan.append((name, tuple(shape), kind, src, part))

    # vision tower
    add("v.patch", (D, 3 * P * P), "mat", V + "embeddings.patch_embed.weight")
    add("v.cls", (D,), "vec", V + "embeddings.cls_token")
    add("v.pos", (T, D), "vec", V + "embeddings.position_embedding")
    add("v.pre_ln.w", (D,), "vec", V + "embeddings.pre_layernorm.weight")
    add("v.pre_ln.b", (D,), "vec", V + "embeddings.pre_layernorm.bias")
    for l in range(cfg["v_layers"]):
        p, n = f"{V}encoder.layers.{l}.", f"v.{l}."
        add(n + "ln1.w", (D,), "vec", p + "input_layernorm.weight")
        add(n + "ln1.b", (D,), "vec", p + "input_layernorm.bias")
        # the fused qkv is interleaved per head: rows [head][q,k,v][head_dim]
        for j, qkv in enumerate("qkv"):
            add(n + qkv + ".w", (D, D), "mat", p + "self_attn.query_key_value.weight", ("qkv", j))
            add(n + qkv + ".b", (D,), "vec", p + "self_attn.query_key_value.bias", ("qkv", j))
        add(n + "o.w", (D, D), "mat", p + "self_attn.dense.weight")
        add(n + "o.b", (D,), "vec", p + "self_attn.dense.bias")
        add(n + "ln2.w", (D,), "vec", p + "post_attention_layernorm.weight")
        add(n + "ln2.b", (D,), "vec", p + "post_attention_layernorm.bias")
        add(n + "fc1.w", (M, D), "mat", p + "mlp.fc1.weight")
        add(n + "fc1.b", (M,), "vec", p + "mlp.fc1.bias")
        add(n + "fc2.w", (D, M), "mat", p + "mlp.fc2.weight")
        add(n + "fc2.b", (D,), "vec", p + "mlp.fc2.bias")
    add("v.post_ln.w", (D,), "vec", V + "post_layernorm.weight")
    add("v.post_ln.b", (D,), "vec", V + "post_layernorm.bias")

    # visual abstractor
    add("a.query", (Q, D), "vec", A + "query_embeds")
    for l in range(cfg["a_layers"]):
        p, n = f"{A}encoder.layers.{l}.crossattention.", f"a.{l}."
        for nm in ("norm1", "normk"):
            add(n + nm + ".w", (D,), "vec", p + nm + ".weight")
            add(n + nm + ".b", (D,), "vec", p + nm + ".bias")
        for nm, src in (("q", "query"), ("k", "key"), ("v", "value")):
            add(n + nm + ".w", (D, D), "mat", p + "attention." + src + ".weight")
            add(n + nm + ".b", (D,), "vec", p + "attention." + src + ".bias")
        add(n + "q_pos", (Q, D), "vec", p + "attention.q_pos_embed", ("qpos",))
        add(n + "k_pos", (T, D), "vec", p + "attention.k_pos_embed", ("kpos",))
        add(n + "o.w", (D, D), "mat", p + "output.out_proj.weight")
        add(n + "o.b", (D,), "vec", p + "output.out_proj.bias")
        add(n + "norm2.w", (D,), "vec", p + "output.norm2.weight")
        add(n + "norm2.b", (D,), "vec", p + "output.norm2.bias")
        for nm in ("w1", "w3"):
            add(n + nm + ".w", (AM, D), "mat", p + "output.mlp." + nm + ".weight")
            add(n + nm + ".b", (AM,), "vec", p + "output.mlp." + nm + ".bias")
        add(n + "ffn_ln.w", (AM,), "vec", p + "output.mlp.ffn_ln.weight")
        add(n + "ffn_ln.b", (AM,), "vec", p + "output.mlp.ffn_ln.bias")
        add(n + "w2.w", (D, AM), "mat", p + "output.mlp.w2.weight")
        add(n + "w2.b", (D,), "vec", p + "output.mlp.w2.bias")
    add("a.fc.w", (Dl, D), "mat", A + "visual_fc.weight")
    add("a.fc.b", (Dl,), "vec", A + "visual_fc.bias")
    add("a.eos", (Dl,), "vec", A + "vit_eos")

    # LLaMA-2 decoder; ".0" = text rows, ".1" = visual rows (modality-adaptive parts)
    add("l.embed", (cfg["l_vocab"], Dl), "mat", L + "embed_tokens.weight")
    for l in range(cfg["l_layers"]):
        p, n = f"{L}layers.{l}.", f"l.{l}."
        for m in (0, 1):
            add(n + f"attn_norm.{m}", (Dl,), "vec", p + f"input_layernorm.multiway.{m}.weight")
        add(n + "q", (Dl, Dl), "mat", p + "self_attn.q_proj.weight")
        for m in (0, 1):
            add(n + f"k.{m}", (kvd, Dl), "mat", p + f"self_attn.k_proj.multiway.{m}.weight")
        for m in (0, 1):
            add(n + f"v.{m}", (kvd, Dl), "mat", p + f"self_attn.v_proj.multiway.{m}.weight")
        add(n + "o", (Dl, Dl), "mat", p + "self_attn.o_proj.weight")
        for m in (0, 1):
            add(n + f"mlp_norm.{m}", (Dl,), "vec", p + f"post_attention_layernorm.multiway.{m}.weight")
        add(n + "gate", (LM, Dl), "mat", p + "mlp.gate_proj.weight")
        add(n + "up", (LM, Dl), "mat", p + "mlp.up_proj.weight")
        add(n + "down", (Dl, LM), "mat", p + "mlp.down_proj.weight")
    add("l.norm", (Dl,), "vec", L + "norm.weight")
    add("l.head", (cfg["l_vocab"], Dl), "mat", "lm_head.weight")
    return plan


# Tensors a checkpoint of the family may hold that the model does not use: the rotary
# embedding's inv_freq buffers (older mPLUG-Owl2 conversions save them: Q-Future/Q-Align
# q_align/model/convert_mplug_owl2_weight_to_hf.py:L241); they are recomputed from rope_theta.
IGNORED_TENSORS = (".rotary_emb.inv_freq",)
KNOWN_LAYOUTS = ("q-future/one-align, q-future/q-align-* (Q-Align), zhiyuanyou/DeQA-Score-Mix3, "
                 "q-future/q-instruct-mplug-owl2 (mPLUG-Owl2 + Q-Instruct), q-future/Compare2Score")


def check_layout(names, cfg, log):
    """The checkpoint's tensor names against the mPLUG-Owl2 layout of cfg: every tensor the
    model needs must be there, and nothing else but IGNORED_TENSORS (a tensor we would not
    read is a part of a model we would not run)."""
    plan = tensor_plan(cfg)
    need = {src for _, _, _, src, part in plan if not (part and part[0] in ("qpos", "kpos"))}
    optional = {src for _, _, _, src, part in plan if part and part[0] in ("qpos", "kpos")}
    names = set(names)
    missing = sorted(need - names)
    ignored = sorted(n for n in names - need - optional if n.endswith(IGNORED_TENSORS))
    unknown = sorted(names - need - optional - set(ignored))

    def some(xs):
        return ", ".join(xs[:5]) + (f" and {len(xs) - 5} more" if len(xs) > 5 else "")
    if unknown:
        die(f"the checkpoint has {len(unknown)} tensors that are not part of the mPLUG-Owl2 layout export.py knows "
            f"({some(unknown)}): not a model of the Q-Align family this converter supports ({KNOWN_LAYOUTS})")
    if missing:
        die(f"the checkpoint lacks {len(missing)} tensors of the mPLUG-Owl2 layout of its config.json ({some(missing)}): "
            f"a damaged download, or a model export.py does not support ({KNOWN_LAYOUTS})")
    log(f"export.py: layout: mPLUG-Owl2 (vision {cfg['v_dim']}x{cfg['v_layers']} at {cfg['v_image']} px, abstractor "
        f"{cfg['a_layers']} layers, {cfg['a_queries']} queries, decoder {cfg['l_dim']}x{cfg['l_layers']}, vocabulary "
        f"{cfg['l_vocab']}): {len(names) - len(ignored)} tensors"
        + (f" ({len(ignored)} rotary inv_freq buffers ignored)" if ignored else "")
        + ("" if optional <= names else "; abstractor position tables computed (not in the checkpoint)"))


def sincos_1d(dim, pos):
    """Upstream get_1d_sincos_pos_embed_from_grid, in numpy float32 as upstream."""
    omega = np.arange(dim // 2, dtype=np.float32)
    omega /= dim / 2.0
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def abstractor_positions(cfg):
    """q_pos [Q,D] and k_pos [1+g*g, D] as upstream computes them (used when the checkpoint
    lacks the buffers; released checkpoints store bf16-rounded copies, which we prefer)."""
    D, g = cfg["v_dim"], cfg["v_image"] // cfg["v_patch"]
    q = sincos_1d(D, np.arange(cfg["a_queries"], dtype=np.float32))
    gw, gh = np.meshgrid(np.arange(g, dtype=np.float32), np.arange(g, dtype=np.float32))
    k = np.concatenate([sincos_1d(D // 2, gw), sincos_1d(D // 2, gh)], axis=1)
    k = np.concatenate([np.zeros([1, D]), k], axis=0)
    return q.astype(np.float32), k.astype(np.float32)


def fetch(ckpt, cfg, name, src, shape, part):
    """The tensor `name` from the checkpoint, reshaped to `shape` (with the per-head
    de-interleave of the vision qkv)."""
    if part and part[0] in ("qpos", "kpos") and src not in ckpt:
        q, k = abstractor_positions(cfg)
        return Raw(q if part[0] == "qpos" else k, "f32")
    raw = ckpt.get(src)
    if part and part[0] == "qkv":
        D, H = cfg["v_dim"], cfg["v_heads"]
        hd = D // H
        # upstream: qkv.reshape(B, S, H, 3, hd) -> rows ordered [head][q|k|v][d]
        if raw.data.ndim == 2:
            raw = raw.reshape(H, 3, hd, D)[:, part[1]].reshape(D, D)
        else:
            raw = raw.reshape(H, 3, hd)[:, part[1]].reshape(D)
    n_want = int(np.prod(shape))
    if raw.data.size != n_want:
        die(f"tensor {src}: has shape {raw.shape}, expected {n_want} elements for {shape} "
            "(does config.json match the weights?)")
    return raw.reshape(*shape)


# ----------------------------------------------------------------------------------------
# LoRA adapters (--lora DIR): Q-Align's lora_finetune checkpoints, e.g. q-future/q-align-
# maxwell-lora, which q_align/model/builder.py loads on top of the base (one-align):
#
#   non_lora_trainables = torch.load(DIR/non_lora_trainables.bin)
#   keys: "base_model." stripped; then, if any key starts with "model.model.", "model." too
#   model.load_state_dict(non_lora_trainables, strict=False)      # replaces base tensors
#   model = PeftModel.from_pretrained(model, DIR).merge_and_unload()
#
# and PEFT's merge of a LoRA Linear is  W += (lora_B @ lora_A) * scaling, scaling = lora_alpha
# / r (lora_alpha / sqrt(r) with use_rslora; rank_pattern / alpha_pattern override r and alpha
# per module). adapter_model.{safetensors,bin} names the weights after the PEFT wrapper:
#   base_model.model.<module>.lora_A.weight   [r, in]
#   base_model.model.<module>.lora_B.weight   [out, r]
# where <module> is the Linear's name in the base model, e.g. model.layers.0.self_attn.q_proj
# or, for the modality-adaptive projections, model.layers.0.self_attn.k_proj.multiway.0 (Q-Align
# targets every Linear outside vision_model and visual_abstractor by its full name; those two
# are trained fully and come in non_lora_trainables.bin).
#
# Here the same happens tensor by tensor as the model file is written: a base tensor is
# read, replaced if non_lora_trainables has it, and if a LoRA pair targets it, merged in
# float32; the result is rounded to the output type like any other tensor. Everything is
# checked (names, shapes, options) before the output is opened.

LORA_UNSUPPORTED_INIT = ("pissa", "olora", "corda", "loftq")   # these change the base weights


def _lazy_shape(lazy):
    """Shape of a lazy tensor from either reader, without reading its data."""
    return tuple(lazy.size) if isinstance(lazy, _LazyTensor) else tuple(lazy.info["shape"])


def _read_weights_file(path):
    return read_safetensors(path) if path.endswith(".safetensors") else read_torch_zip(path)


def _peft_matches(target, module):
    """PEFT's check_target_module_exists: a string is a regular expression that must match
    the whole module name; a list matches a module named exactly so or ending in .name."""
    import re
    if isinstance(target, str):
        return re.fullmatch(target, module) is not None
    return module in target or any(module.endswith("." + t) for t in target)


def _pattern_value(pattern, module, default):
    """rank_pattern / alpha_pattern: the first key that matches the end of the module name."""
    import re
    for key, value in (pattern or {}).items():
        if re.match(rf"(^|.*\.){key}$", module):
            return value
    return default


class LoraCheckpoint:
    """The base checkpoint with a Q-Align LoRA adapter merged in; same interface as
    Checkpoint (`name in ckpt`, ckpt.get(name) -> Raw)."""

    def __init__(self, base, lora_dir, log=print):
        self.base, self.dir = base, lora_dir
        self.replace = {}     # base tensor name -> lazy tensor (non_lora_trainables, other adapter keys)
        self.pairs = {}       # base weight name "<module>.weight" -> (lazy A, lazy B, scaling, module)
        self._last = None     # (name, Raw): fetch() reads the fused vision qkv three times
        cfg = self._config()
        shapes = self._base_shapes()
        self._check_targets(cfg, shapes)
        self._load_non_lora(shapes)
        self._load_adapter(cfg, shapes)
        ranks = sorted({int(_lazy_shape(a)[0]) for a, _b, _s, _m in self.pairs.values()})
        log(f"export.py: LoRA {lora_dir}: {len(self.pairs)} layers merged (rank {'/'.join(map(str, ranks)) or '-'}, "
            f"lora_alpha {cfg.get('lora_alpha')}), {len(self.replace)} tensors replaced")

    def _die(self, msg):
        die(f"--lora {self.dir}: {msg}")

    def _config(self):
        p = os.path.join(self.dir, "adapter_config.json")
        if not os.path.exists(p):
            self._die("adapter_config.json not found (is this a PEFT LoRA adapter directory?)")
        with open(p) as f:
            cfg = json.load(f)
        ptype = str(cfg.get("peft_type", "LORA")).upper()
        if ptype != "LORA":
            self._die(f"peft_type {cfg.get('peft_type')!r} is not supported (LoRA only)")
        if cfg.get("use_dora"):
            self._die("DoRA adapters (use_dora) are not supported: only plain LoRA can be merged")
        if cfg.get("lora_bias"):
            self._die("lora_bias adapters are not supported")
        if cfg.get("layer_replication"):
            self._die("layer_replication is not supported")
        if cfg.get("target_parameters"):
            self._die("target_parameters (LoRA on parameters) is not supported")
        init = cfg.get("init_lora_weights", True)
        if isinstance(init, str) and init.lower().startswith(LORA_UNSUPPORTED_INIT):
            self._die(f"init_lora_weights={init!r} changes the base weights; such adapters are not supported")
        if not isinstance(cfg.get("r"), int) or cfg["r"] < 1 or not isinstance(cfg.get("lora_alpha"), (int, float)):
            self._die("adapter_config.json needs an integer r >= 1 and a numeric lora_alpha")
        return cfg

    def _base_shapes(self):
        """name -> shape for every base tensor (from the shard headers, no data read)."""
        shapes = {}
        for shard in sorted(set(self.base.where.values())):
            for k, lazy in self.base._open(shard).items():
                if self.base.where.get(k) == shard:
                    shapes[k] = _lazy_shape(lazy)
        return shapes

    def _load_non_lora(self, shapes):
        found = [f for f in ("non_lora_trainables.bin", "non_lora_trainables.safetensors")
                 if os.path.exists(os.path.join(self.dir, f))]
        if not found:
            return   # builder.py would fetch it from the Hub; a local adapter without it replaces nothing
        path = os.path.join(self.dir, found[0])
        raw = _read_weights_file(path)
        keys = {(k[len("base_model."):] if k.startswith("base_model.") else k): v for k, v in raw.items()}
        if any(k.startswith("model.model.") for k in keys):
            keys = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in keys.items()}
        for k, lazy in keys.items():
            self._add_replacement(k, lazy, shapes, found[0])

    def _add_replacement(self, name, lazy, shapes, where):
        if name not in shapes:
            self._die(f"{where}: tensor {name} is not in the base checkpoint")
        if _lazy_shape(lazy) != shapes[name]:
            self._die(f"{where}: {name} has shape {list(_lazy_shape(lazy))}, the base has {list(shapes[name])}")
        self.replace[name] = lazy

    def _load_adapter(self, cfg, shapes):
        for f in ("adapter_model.safetensors", "adapter_model.bin"):
            if os.path.exists(os.path.join(self.dir, f)):
                where = f
                break
        else:
            self._die("no adapter_model.safetensors or adapter_model.bin")
        tensors = _read_weights_file(os.path.join(self.dir, where))
        halves = {}    # module -> {"A": lazy, "B": lazy}
        for key, lazy in tensors.items():
            k = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
            parts = k.split(".")
            if "lora_magnitude_vector" in parts:
                self._die("DoRA adapters (lora_magnitude_vector) are not supported: only plain LoRA can be merged")
            if "lora_embedding_A" in parts or "lora_embedding_B" in parts:
                self._die(f"{where}: {key}: LoRA on embeddings is not supported")
            which = [i for i, p in enumerate(parts) if p in ("lora_A", "lora_B")]
            if which:
                i = which[-1]
                rest = parts[i + 1:]
                # "<module>.lora_A.weight", or with the adapter name kept: ".lora_A.default.weight"
                if rest[-1:] == ["bias"]:
                    self._die(f"{where}: {key}: lora_bias adapters are not supported")
                if rest[-1:] != ["weight"] or len(rest) > 2:
                    self._die(f"{where}: {key}: unexpected LoRA tensor name")
                halves.setdefault(".".join(parts[:i]), {})[parts[i][-1]] = lazy
                continue
            if "modules_to_save" in parts:     # a fully trained copy of a module: replaces it
                i = parts.index("modules_to_save")
                k = ".".join(parts[:i] + parts[i + 1:])
                if k not in shapes:                           # ".modules_to_save.<adapter>.weight"
                    k = ".".join(parts[:i] + parts[i + 2:])
            self._add_replacement(k, lazy, shapes, where)   # e.g. biases saved with bias="all"
        for module, ab in sorted(halves.items()):
            if set(ab) != {"A", "B"}:
                self._die(f"{where}: {module} has lora_{next(iter(ab))} but no lora_{'B' if 'A' in ab else 'A'}")
            wname = module + ".weight"
            if wname not in shapes:
                self._die(f"{where}: the adapter targets {module}, which is not a layer of the base model")
            if module.endswith("embed_tokens") or len(shapes[wname]) != 2:
                self._die(f"{where}: {module} is not a Linear layer; only LoRA on Linear layers can be merged")
            target = cfg.get("target_modules")
            if target and target != "all-linear" and not _peft_matches(target, module):
                self._die(f"{where}: weights for {module}, which target_modules in adapter_config.json does not select")
            r = _pattern_value(cfg.get("rank_pattern"), module, cfg["r"])
            alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg["lora_alpha"])
            out_f, in_f = shapes[wname]
            sa, sb = _lazy_shape(ab["A"]), _lazy_shape(ab["B"])
            if sa != (r, in_f) or sb != (out_f, r):
                self._die(f"{where}: {module}: lora_A {list(sa)} and lora_B {list(sb)} do not fit the base weight "
                          f"{[out_f, in_f]} with rank {r} (expected lora_A {[r, in_f]}, lora_B {[out_f, r]})")
            scaling = alpha / (r ** 0.5 if cfg.get("use_rslora") else r)
            self.pairs[wname] = (ab["A"], ab["B"], float(scaling), module)

    def _check_targets(self, cfg, shapes):
        """As PEFT refuses to build the adapter: every entry of target_modules must match a
        module of the base model, and everything matched must be a Linear layer."""
        target = cfg.get("target_modules")
        if not target or target == "all-linear":   # PEFT's shorthand for every Linear but the output
            return
        modules = set()
        for name in shapes:
            parts = name.split(".")
            modules.update(".".join(parts[:i]) for i in range(1, len(parts)))
        matched = sorted(m for m in modules if _peft_matches(target, m))
        if isinstance(target, str):
            if not matched:
                self._die(f"target_modules {target!r} matches no module of the base model")
        else:
            for t in target:
                if not any(m == t or m.endswith("." + t) for m in matched):
                    self._die(f"target_modules entry {t!r} matches no module of the base model")
        for m in matched:
            w = shapes.get(m + ".weight")
            if w is None or len(w) != 2 or m.endswith("embed_tokens"):
                self._die(f"target_modules selects {m}, which is not a Linear layer "
                          "(e.g. a multiway k_proj/v_proj: target its .multiway.0 / .multiway.1)")

    def __contains__(self, name):
        return name in self.base

    def get(self, name):
        if self._last and self._last[0] == name:
            return self._last[1]
        if name in self.replace:
            try:
                raw = self.replace[name].load()
            except ValueError as e:
                self._die(f"tensor {name}: {e}")
        else:
            raw = self.base.get(name)
        if name in self.pairs:
            a, b, scaling, module = self.pairs[name]
            try:
                A, B = a.load().f32(), b.load().f32()
            except ValueError as e:
                self._die(f"{module}: {e}")
            delta = np.matmul(B, A, dtype=np.float32) * np.float32(scaling)
            raw = Raw((raw.f32() + delta).astype(np.float32), "f32")
        self._last = (name, raw)
        return raw


# ----------------------------------------------------------------------------------------
# Encoding tensors into the file's types

def tensor_dtype(kind, shape, wtype):
    """The dtype a tensor is stored in: vectors are f32; matrices take the file's weight
    type, except that quantised types need rows of whole 32-value blocks (else bf16, exact
    for released weights) and bf16 needs an even row length (else f32)."""
    if kind != "mat":
        return DT_F32
    cols = shape[-1]
    if wtype in QUANTISED and cols % QBLOCK:
        wtype = DT_MBF16
    if wtype == DT_MBF16 and cols % 2:
        wtype = DT_MF32
    return wtype


def quantize(x, dtype):
    """Blockwise quantisation of [rows, cols] f32 along rows, QBLOCK values per block.
    q8_0: d = max|x| / 127, q = round(x / d) in -127..127    (x ~ d q)
    q4_1: d = (max - min) / 15, m = min, q = round((x - m) / d) in 0..15   (x ~ d q + m)
    A zero d (a constant block) gives q = 0 (q8_0) or q = 0, x = m (q4_1), never NaN.
    Returns (q [rows, cols] integers, d [rows, blocks], m [rows, blocks] or None)."""
    rows, cols = x.shape
    b = x.reshape(rows, cols // QBLOCK, QBLOCK).astype(np.float32)
    if dtype == DT_MQ8_0:
        d = (np.abs(b).max(axis=2) / 127.0).astype(np.float32)
        inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0).astype(np.float32)
        q = np.clip(np.rint(b * inv[:, :, None]), -127, 127).astype(np.int16)
        return q.reshape(rows, cols), d, None
    lo, hi = b.min(axis=2), b.max(axis=2)
    d = ((hi - lo) / 15.0).astype(np.float32)
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.clip(np.rint((b - lo[:, :, None]) * inv[:, :, None]), 0, 15).astype(np.int16)
    return q.reshape(rows, cols), d, lo.astype(np.float32)


def pack_256(x, dtype):
    """mq8_256 / mq4_256 (kernels.h): per group of 16 rows, blocks of up to 256 columns
    (only the last one of a row shorter, a multiple of 32), each block:
      mq8_256: L/4 quads of [r][4] u8 = q + 128, then 16 x f32 d       value = d q
               d = max|x| / 127 over the row's block, q = round(x / d) in -127..127
      mq4_256: L/8 chunks of [r][4] u8 (low nibble = quad 2c, high = quad 2c+1, nibble =
               q + 8), then L/32 x 16 s8 sub-scales sc [j][r], then 16 x f32 d
               value = d sc_j q, q in -8..7. Per 32 columns the scale is q4_0's (the value
               of largest magnitude lands on -8), stored as an s8 multiple sc of one f32 d
               per block (d = max |scale| / 127); q is rounded with the stored d sc_j.
    x: float32 [rows, cols], rows a multiple of 16 (zero rows pad the last group)."""
    rows, cols = x.shape
    G = rows // ROWS
    parts = []      # per block: [G, bytes of the block] uint8
    for k0 in range(0, cols, QBLOCK_256):
        L = min(QBLOCK_256, cols - k0)
        b = x[:, k0:k0 + L]
        if dtype == DT_MQ8_256:
            d = (np.abs(b).max(axis=1) / 127.0).astype(np.float32)
            inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0).astype(np.float32)
            q = np.clip(np.rint(b * inv[:, None]), -127, 127).astype(np.int16)
            vals = (q + 128).astype(np.uint8).reshape(G, ROWS, L // 4, 4).transpose(0, 2, 1, 3).reshape(G, ROWS * L)
            scales = np.zeros((G, 0), np.uint8)
        else:
            sb = b.reshape(rows, L // QBLOCK, QBLOCK)
            ext = np.take_along_axis(sb, np.abs(sb).argmax(axis=2)[:, :, None], axis=2)[:, :, 0]
            dj = ext / np.float32(-8.0)                                   # [rows, L/32]
            d = (np.abs(dj).max(axis=1) / 127.0).astype(np.float32)
            sc = np.clip(np.rint(dj / np.where(d > 0, d, 1)[:, None]), -127, 127)
            dq = (sc * d[:, None]).astype(np.float32)
            inv = np.where(dq != 0, 1.0 / np.where(dq != 0, dq, 1), 0).astype(np.float32)
            q = np.clip(np.rint(sb * inv[:, :, None]), -8, 7).astype(np.int16).reshape(rows, L)
            nib = (q + 8).astype(np.uint8).reshape(G, ROWS, L // 8, 2, 4)  # [g][r][c][half][i]
            pairs = nib[:, :, :, 0, :] | (nib[:, :, :, 1, :] << 4)        # [g][r][c][i]
            vals = pairs.transpose(0, 2, 1, 3).reshape(G, ROWS * L // 2)
            scales = sc.astype(np.int8).reshape(G, ROWS, L // QBLOCK).transpose(0, 2, 1).reshape(G, L // 2).view(np.uint8)
        ds = np.ascontiguousarray(d.reshape(G, ROWS), dtype="<f4").view(np.uint8)
        parts += [vals, scales, ds]
    return np.ascontiguousarray(np.concatenate(parts, axis=1)).tobytes()


def pack_matrix(x, dtype):
    """A [rows, cols] matrix in its file layout, as kernels.h names it ("packed weight
    layouts"; the C code reads it through mf32_group, mbf16_group, mq_block, mq8_quad,
    mq8_d, mq4_chunk, mq4_d, mq4_m). Rows are padded with zeros to a multiple of
    PACK_ROWS = 16 and grouped; g is a group, r a row in it (0..15), k a column:
      MF32:  [g][k][r]                 f32       64 bytes = column k of 16 rows
      MBF16: [g][k/2][r][2]            bf16      64 bytes = a column pair of 16 rows
      MQ8_0: [g][block][ 8 quads of [r][4] u8 = q+128 (MQ8_D_OFFSET = 512 bytes),
                         16 x f32 d ] (MQ8_BLOCK_BYTES = 576)
             quad j of a block holds columns 4j..4j+3 of the 16 rows
      MQ4_1: [g][block][ 4 chunks of [r][4] u8 (MQ4_D_OFFSET = 256 bytes), 16 x f32 d,
                         16 x f32 m (MQ4_M_OFFSET = 320) ] (MQ4_BLOCK_BYTES = 384)
             byte (r,i) of chunk c: low nibble = quad 2c, high nibble = quad 2c+1
      MQ8_256, MQ4_256: blocks of up to 256 columns, see pack_256()
    `x` is a Raw (bf16 sources stay exact for mbf16) or a float32 array."""
    raw = x if isinstance(x, Raw) else Raw(np.asarray(x, dtype=np.float32), "f32")
    rows, cols = raw.shape
    G = (rows + ROWS - 1) // ROWS
    pad = G * ROWS - rows

    def padded(a):
        return np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a

    if dtype == DT_MF32:
        a = padded(raw.f32()).reshape(G, ROWS, cols).transpose(0, 2, 1)
        return np.ascontiguousarray(a).astype("<f4").tobytes()
    if dtype == DT_MBF16:
        u16 = raw.data if raw.kind == "bf16" else f32_to_bf16(raw.f32())
        a = padded(u16).reshape(G, ROWS, cols // 2, 2).transpose(0, 2, 1, 3)
        return np.ascontiguousarray(a).astype("<u2").tobytes()
    if dtype in (DT_MQ8_256, DT_MQ4_256):
        return pack_256(padded(raw.f32().astype(np.float32)), dtype)
    q, d, m = quantize(raw.f32(), dtype)
    q, d = padded(q), padded(d)
    nb = cols // QBLOCK
    quads = q.reshape(G, ROWS, nb, 8, 4).transpose(0, 2, 3, 1, 4)          # [g][b][j][r][i]
    scales = np.ascontiguousarray(d.reshape(G, ROWS, nb).transpose(0, 2, 1), dtype="<f4")  # [g][b][r]
    if dtype == DT_MQ8_0:
        vals = (quads + 128).astype(np.uint8).reshape(G, nb, 512)
        parts = [vals, scales.view(np.uint8).reshape(G, nb, 64)]
    else:
        nib = quads.astype(np.uint8)
        vals = (nib[:, :, 0::2] | (nib[:, :, 1::2] << 4)).reshape(G, nb, 256)
        mins = np.ascontiguousarray(padded(m).reshape(G, ROWS, nb).transpose(0, 2, 1), dtype="<f4")
        parts = [vals, scales.view(np.uint8).reshape(G, nb, 64), mins.view(np.uint8).reshape(G, nb, 64)]
    return np.ascontiguousarray(np.concatenate(parts, axis=2)).tobytes()


def tensor_nbytes(dtype, shape):
    n = int(np.prod(shape))
    if dtype in (DT_F32, DT_U32):
        return 4 * n
    if dtype == DT_U8:
        return n
    rows, cols = shape
    padded = (rows + ROWS - 1) // ROWS * ROWS * cols
    per_value = {DT_MF32: 4, DT_MBF16: 2}
    if dtype in per_value:
        return per_value[dtype] * padded
    if dtype == DT_MQ8_0:
        return padded + 4 * (padded // QBLOCK)
    if dtype == DT_MQ4_1:
        return padded // 2 + 8 * (padded // QBLOCK)
    if dtype in (DT_MQ8_256, DT_MQ4_256):
        groups, blocks = (rows + ROWS - 1) // ROWS, (cols + QBLOCK_256 - 1) // QBLOCK_256
        values = ROWS * cols if dtype == DT_MQ8_256 else ROWS * cols // 2 + cols // 2   # + s8 sub-scales
        return groups * (values + 4 * ROWS * blocks)
    raise ValueError(dtype)


def encode(raw, dtype):
    if dtype == DT_F32:
        return raw.f32().astype("<f4").tobytes()
    return pack_matrix(raw, dtype)


# ----------------------------------------------------------------------------------------
# Tokenizer: tokenizer.model (SentencePiece protobuf) via spm.py, no sentencepiece needed

def tokenizer_tensors(path):
    import spm
    try:
        sp = spm.load(path)
        sp.check_supported()
    except (ValueError, OSError) as e:
        die(f"{path}: {e}")
    blob = b"".join(sp.pieces)
    offsets = np.zeros(len(sp.pieces) + 1, dtype="<u4")
    offsets[1:] = np.cumsum([len(p) for p in sp.pieces])
    tensors = [
        ("tok.pieces", (len(blob),), DT_U8, np.frombuffer(blob, dtype=np.uint8).tobytes()),
        ("tok.offsets", (len(offsets),), DT_U32, offsets.tobytes()),
        ("tok.scores", (len(sp.pieces),), DT_F32, np.asarray(sp.scores, dtype="<f4").tobytes()),
        ("tok.types", (len(sp.pieces),), DT_U8, np.asarray(sp.types, dtype=np.uint8).tobytes()),
    ]
    info = dict(t_bos=sp.bos_id, t_eos=sp.eos_id, t_unk=sp.unk_id,
                t_dummy_prefix=int(sp.add_dummy_prefix), n_vocab=len(sp.pieces))
    return tensors, info


# ----------------------------------------------------------------------------------------
# Byte-level BPE tokenizer (Qwen3.5): tokenizer.json (+ tokenizer_config.json) -> the blob
# that bpe.c reads (bpe_open; layout in bpe.h). Stdlib only. The model-file writer stores
# the blob as one u8 tensor.
#
# What is written is the tokenizer transformers' Qwen3_5Tokenizer builds on load
# (src/transformers/models/qwen3_5/tokenization_qwen3_5.py, commit dd7a585c07f2): the
# vocabulary and merges of tokenizer.json inside a pipeline of its own - NFC, Split with
# QWEN35_SPLIT_PATTERN (whatever pattern the file declares: released files carry an older
# one without \p{M}), ByteLevel without prefix space or regex, BPE without unk token, byte
# fallback or ignore_merges, ByteLevel decoder - plus the added tokens of tokenizer.json
# and of tokenizer_config.json's added_tokens_decoder.

QWEN35_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                        r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
BPE_BLOB_VERSION = 2


def _byte_level_map():
    """GPT-2's bytes_to_unicode, inverted: character -> byte."""
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def bpe_blob_from_tokenizer_json(tokenizer_json, tokenizer_config_json=None):
    """Read a Qwen3.5 tokenizer.json (path) and, if given, its tokenizer_config.json (path),
    and return the tokenizer blob for bpe.c as bytes. Merges may be "a b" strings or
    [a, b] pairs. Exits with a one-line error (die) on what bpe.c cannot reproduce."""
    def load(path):
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            die(f"{path}: {e}")

    tj = load(tokenizer_json)
    model = tj.get("model") or {}
    if model.get("type", "BPE") != "BPE" or not isinstance(model.get("vocab"), dict):
        die(f"{tokenizer_json}: not a BPE tokenizer (model.type {model.get('type')!r})")
    byte_of = _byte_level_map()
    vocab = model["vocab"]
    n_vocab = 1 + max([-1] + [int(i) for i in vocab.values()])
    toks, types = {}, {}
    for s, i in vocab.items():
        i = int(i)
        try:
            toks[i] = bytes(byte_of[ch] for ch in s)
        except KeyError:
            die(f"{tokenizer_json}: vocabulary entry {s!r} is not byte-level (a character outside "
                "the 256 of ByteLevel)")
        types[i] = 1
    piece_id = {}
    for i, s in toks.items():
        if s in piece_id:
            die(f"{tokenizer_json}: vocabulary ids {piece_id[s]} and {i} are the same bytes")
        piece_id[s] = i
    merges = []
    for k, m in enumerate(model.get("merges") or []):
        pair = m.split(" ") if isinstance(m, str) else list(m)
        if len(pair) != 2 or pair[0] not in vocab or pair[1] not in vocab or pair[0] + pair[1] not in vocab:
            die(f"{tokenizer_json}: merge {k} ({m!r}) is malformed or names pieces not in the vocabulary")
        merges.append((int(vocab[pair[0]]), int(vocab[pair[1]]), int(vocab[pair[0] + pair[1]])))

    added = {}
    rows = [(int(a["id"]), a) for a in tj.get("added_tokens") or []]
    if tokenizer_config_json:
        tc = load(tokenizer_config_json)
        rows += [(int(i), a) for i, a in (tc.get("added_tokens_decoder") or {}).items()]
    for i, a in rows:
        content = a.get("content")
        if not isinstance(content, str) or not content:
            die(f"added token {i}: no content")
        if a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
            die(f"added token {i} ({content!r}): lstrip/rstrip/single_word are not supported")
        if i in added and added[i][0] != content:
            die(f"added token {i}: {added[i][0]!r} in one file, {content!r} in the other")
        special = bool(a.get("special")) or (i in added and added[i][1])
        # HF's AddedToken defaults normalized to "not special" when the field is absent
        normalized = bool(a.get("normalized", not special))
        if i in added and added[i][2] != normalized:
            die(f"added token {i} ({content!r}): normalized differs between the two files")
        added[i] = (content, special, normalized)
    # HF numbers added tokens itself (AddedVocabulary.add_tokens): in order, each after the
    # model's vocabulary and the added tokens before it; one whose text is a vocabulary entry
    # would take that entry's id. bpe.c takes the ids of the files, so they must be those.
    expect = len(vocab)
    for i in sorted(added):
        content = added[i][0]
        if content in vocab:
            die(f"added token {i} ({content!r}) is also vocabulary entry {vocab[content]}: not supported")
        if i != expect:
            die(f"added token {content!r} has id {i} in the files, but Hugging Face tokenizers would "
                f"give it {expect} (added tokens follow the vocabulary, in order, without gaps)")
        expect += 1
    for i, (content, special, _n) in added.items():
        # ByteLevel's decoder maps a token's characters back to bytes, or, if one of them is
        # not a byte-level character, keeps the token's UTF-8 as it is
        try:
            toks[i] = bytes(byte_of[ch] for ch in content)
        except KeyError:
            toks[i] = content.encode("utf-8")
        types[i] = 3 if special else 2
        n_vocab = max(n_vocab, i + 1)
    if n_vocab >= 1 << 24:
        die(f"{tokenizer_json}: {n_vocab} ids is more than bpe.c takes")

    pat = QWEN35_SPLIT_PATTERN.encode("utf-8")
    offsets = [0]
    blob_bytes = bytearray()
    type_arr = bytearray(n_vocab)
    for i in range(n_vocab):
        blob_bytes += toks.get(i, b"")
        offsets.append(len(blob_bytes))
        type_arr[i] = types.get(i, 0)
    out = bytearray(b"QBPE")
    out += struct.pack("<6I", BPE_BLOB_VERSION, n_vocab, len(merges), len(added), 0, len(pat))
    out += pat
    out += struct.pack(f"<{n_vocab + 1}I", *offsets)
    out += blob_bytes
    out += type_arr
    out += b"".join(struct.pack("<3I", *m) for m in merges)
    for i in sorted(added):
        c = added[i][0].encode("utf-8")
        out += struct.pack("<3I", i, len(c), int(added[i][2])) + c
    return bytes(out)


# ----------------------------------------------------------------------------------------
# Checksums: XXH64 in numpy, many equal-length messages at once

SUMS_MAGIC = 0x4D555351     # "QSUM"
SUMS_VERSION = 1
SUMS_PIECE = 4096           # a tensor's checksum is the XXH64 of its pieces' XXH64s
_U = np.uint64
_XP1, _XP2, _XP3, _XP4, _XP5 = (_U(0x9E3779B185EBCA87), _U(0xC2B2AE3D27D4EB4F), _U(0x165667B19E3779F9),
                                _U(0x85EBCA77C2B2AE63), _U(0x27D4EB2F165667C5))


def _rotl(x, r):
    return (x << _U(r)) | (x >> _U(64 - r))


def _xround(acc, x):
    return _rotl(acc + x * _XP2, 31) * _XP1


def xxh64_rows(a):
    """XXH64 (seed 0, the xxHash specification's algorithm) of each row of a uint8 array
    [B, L]: the rows' 32-byte stripes advance together, one numpy step per stripe."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    B, L = a.shape
    with np.errstate(over="ignore"):
        n = L // 32
        if n:
            w = np.ascontiguousarray(a[:, :32 * n]).view("<u8").reshape(B, n, 4)
            v = np.empty((B, 4), dtype=_U)
            v[:] = np.array([int(_XP1) + int(_XP2) & (2**64 - 1), int(_XP2), 0, 2**64 - int(_XP1)], dtype=_U)
            t = np.empty_like(v)
            s31, s33 = _U(31), _U(33)
            for i in range(n):        # v = rotl(v + x * P2, 31) * P1, in place
                np.multiply(w[:, i, :], _XP2, out=t)
                v += t
                np.left_shift(v, s31, out=t)
                v >>= s33
                v |= t
                v *= _XP1
            h = _rotl(v[:, 0], 1) + _rotl(v[:, 1], 7) + _rotl(v[:, 2], 12) + _rotl(v[:, 3], 18)
            for k in range(4):
                h = (h ^ _xround(_U(0), v[:, k])) * _XP1 + _XP4
        else:
            h = np.full(B, _XP5, dtype=_U)
        h = h + _U(L)
        off = 32 * n
        while L - off >= 8:
            k = np.ascontiguousarray(a[:, off:off + 8]).view("<u8")[:, 0]
            h = _rotl(h ^ _xround(_U(0), k), 27) * _XP1 + _XP4
            off += 8
        if L - off >= 4:
            k = np.ascontiguousarray(a[:, off:off + 4]).view("<u4")[:, 0].astype(_U)
            h = _rotl(h ^ k * _XP1, 23) * _XP2 + _XP3
            off += 4
        while off < L:
            h = _rotl(h ^ a[:, off].astype(_U) * _XP5, 11) * _XP1
            off += 1
        h = h ^ (h >> _U(33))
        h = h * _XP2
        h = h ^ (h >> _U(29))
        h = h * _XP3
        h = h ^ (h >> _U(32))
    return h


def xxh64(data):
    return int(xxh64_rows(np.frombuffer(bytes(data), dtype=np.uint8).reshape(1, -1))[0])


def tensor_sum(data):
    """A tensor's checksum (qalign.c tensor_sum): XXH64 of the little-endian XXH64s of its
    4096-byte pieces, the last one possibly shorter."""
    b = np.frombuffer(data, dtype=np.uint8)
    full = b.size // SUMS_PIECE
    digs = [xxh64_rows(b[:full * SUMS_PIECE].reshape(full, SUMS_PIECE))] if full else []
    if b.size % SUMS_PIECE:
        digs.append(xxh64_rows(b[full * SUMS_PIECE:].reshape(1, -1)))
    d = np.concatenate(digs).astype("<u8") if digs else np.zeros(0, "<u8")
    return xxh64(d.tobytes())


def write_sums(f, head_and_table, sums):
    """The checksum section, at the next multiple of 64: magic, version, n_tensors, piece
    size (u32 each), the XXH64 of the header and tensor table (u64), then each tensor's
    checksum (u64) in table order. It ends the file."""
    pad_to(f, ALIGN)
    f.write(struct.pack("<IIIIQ", SUMS_MAGIC, SUMS_VERSION, len(sums), SUMS_PIECE, xxh64(head_and_table)))
    f.write(np.array(sums, dtype="<u8").tobytes())


# ----------------------------------------------------------------------------------------
# Writer

def pad_to(f, align):
    pos = f.tell()
    if pos % align:
        f.write(b"\0" * (align - pos % align))


def write_model(out, cfg, wtype, tok_path, source, log=print):
    """source(name, src, shape, part) -> Raw. Writes header, table, then data, streaming."""
    tok_tensors, tok = tokenizer_tensors(tok_path)
    if tok["n_vocab"] != cfg["l_vocab"]:
        die(f"tokenizer has {tok['n_vocab']} pieces but the model's vocab_size is {cfg['l_vocab']}")
    plan = tensor_plan(cfg)
    entries = []    # (name, dtype, shape, nbytes)
    for name, shape, kind, _src, _part in plan:
        dt = tensor_dtype(kind, shape, wtype)
        entries.append((name, dt, shape, tensor_nbytes(dt, shape)))
    for name, shape, dt, data in tok_tensors:
        entries.append((name, dt, shape, len(data)))

    # offsets are known before any data is read: header, table, then aligned tensors
    offset = HEADER_BYTES + TABLE_ENTRY.size * len(entries)
    table = []
    for name, dt, shape, nbytes in entries:
        offset = (offset + ALIGN - 1) // ALIGN * ALIGN
        table.append((name, dt, shape, offset, nbytes))
        offset += nbytes
    total = offset

    vals = dict(cfg, magic=MAGIC, version=VERSION, header_bytes=HEADER_BYTES,
                n_tensors=len(entries), wtype=wtype, **tok)
    for i, c in enumerate("rgb"):
        vals[f"fill_{c}"], vals[f"mean_{c}"], vals[f"std_{c}"] = cfg["fill"][i], cfg["mean"][i], cfg["std"][i]
    header = bytearray(HEADER_BYTES)
    for i, (key, typ) in enumerate(HEADER_FIELDS):
        struct.pack_into("<f" if typ == "f" else "<I", header, 4 * i, vals[key])

    return _write_out(out, header, table, tok_tensors, plan, source, total, log)


def _write_out(out, header, table, tok_tensors, plan, source, total, log):
    """Write the model file as OUT.partial, then rename it to OUT: an interrupted export
    leaves no OUT behind. Returns the file's size."""
    tmp = out + ".partial"
    try:
        total = _write_file(tmp, header, table, tok_tensors, plan, source, total, log)
        os.replace(tmp, out)
    except OSError as e:    # unwritable place, disk full, ...: one line, and no OUT.partial left behind
        if e.filename and e.filename != tmp:
            raise           # reading the checkpoint failed: main's handler names the file
        die(f"cannot write {out}: {e.strerror or e}")
    finally:
        if os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass
    return total


def _write_file(tmp, header, table, tok_tensors, plan, source, total, log):
    with open(tmp, "wb") as f:
        head = bytearray(header)
        for name, dt, shape, off, nbytes in table:
            if len(name.encode()) >= 56 or len(shape) > 4:
                die(f"internal: tensor name/shape too long: {name}")
            dims = list(shape) + [1] * (4 - len(shape))
            head += TABLE_ENTRY.pack(name.encode(), dt, len(shape), *dims, off, nbytes)
        f.write(head)
        sums = []
        tok_data = {name: data for name, _s, _d, data in tok_tensors}
        srcs = {name: (src, shape, part) for name, shape, _k, src, part in plan}
        for i, (name, dt, shape, off, nbytes) in enumerate(table):
            pad_to(f, ALIGN)
            assert f.tell() == off, (name, f.tell(), off)
            if name in tok_data:
                data = tok_data[name]
            else:
                src, shp, part = srcs[name]
                data = encode(source(name, src, shp, part), dt)
            if len(data) != nbytes:
                die(f"internal: {name} encoded to {len(data)} bytes, expected {nbytes}")
            f.write(data)
            sums.append(tensor_sum(data))
            if log and (i % 50 == 0 or i == len(table) - 1):
                log(f"  [{i + 1}/{len(table)}] {name} {list(shape)} -> {f.tell() / 1e9:.2f} GB", )
        assert f.tell() == total
        write_sums(f, bytes(head), sums)
        total = f.tell()
        f.flush()
        os.fsync(f.fileno())
    return total


# ----------------------------------------------------------------------------------------
# Qwen3.5 (Q-ReAlign): model_type qwen3_5. A second family in the same file format
# (header of 256 u32 slots, 96-byte tensor table, 64-byte aligned data, the same weight
# types); its magic "QAQ5" is the family marker, so the loader knows which model it reads
# and the mPLUG-Owl2 loader refuses it. qwen35.c reads exactly this.

QWEN_MAGIC = 0x35514151      # bytes "QAQ5" read as a little-endian uint32
# Versions: 1: first (vision tower, hybrid Gated DeltaNet / gated attention decoder).
QWEN_VERSION = 1
QWEN_MAX_LAYERS = 128        # layer types live in header slots 128..255
QWEN_HEADER_FIELDS = [
    ("magic", "u"), ("version", "u"), ("header_bytes", "u"), ("n_tensors", "u"), ("wtype", "u"),
    # vision tower
    ("v_dim", "u"), ("v_layers", "u"), ("v_heads", "u"), ("v_mlp", "u"), ("v_patch", "u"),
    ("v_temporal", "u"), ("v_merge", "u"), ("v_npos", "u"), ("v_out", "u"), ("v_eps", "f"),
    ("v_rope_theta", "f"),
    # decoder
    ("l_dim", "u"), ("l_layers", "u"), ("l_heads", "u"), ("l_kv_heads", "u"), ("l_head_dim", "u"),
    ("l_mlp", "u"), ("l_vocab", "u"), ("l_eps", "f"), ("l_rope_theta", "f"), ("l_rot_dim", "u"),
    ("mrope_t", "u"), ("mrope_h", "u"), ("mrope_w", "u"), ("mrope_interleaved", "u"),
    ("g_k_heads", "u"), ("g_v_heads", "u"), ("g_k_dim", "u"), ("g_v_dim", "u"), ("g_conv", "u"),
    ("tied", "u"),
    # special token ids (0xFFFFFFFF: unknown)
    ("image_token", "u"), ("video_token", "u"), ("vision_start", "u"), ("vision_end", "u"),
    # the chat template's generation prompt by default: 1 opens a thinking block
    # ("<think>\n"), 0 closes it ("<think>\n\n</think>\n\n")
    ("think_open", "u"),
    # image processor: min/max pixels, mean, std
    ("min_pixels", "u"), ("max_pixels", "u"),
    ("mean_r", "f"), ("mean_g", "f"), ("mean_b", "f"), ("std_r", "f"), ("std_g", "f"), ("std_b", "f"),
]
QWEN_LAYER_SLOT = 128        # slot 128 + l: 0 = linear_attention (Gated DeltaNet), 1 = full_attention


def qwen_read_config(d):
    """config.json (+ the image processor's settings) of a qwen3_5 checkpoint -> flat cfg dict.
    The image processor's settings are read as transformers 5 reads them: the "image_processor"
    entry of processor_config.json (what its save_pretrained writes) first, else
    preprocessor_config.json (the older layout, as in Qwen's own repositories)."""
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    if c.get("model_type") != "qwen3_5":
        die(f"config.json: model_type is {c.get('model_type')!r}, not qwen3_5")
    pp = {}
    nested = os.path.join(d, "processor_config.json")
    if os.path.exists(nested):
        with open(nested) as f:
            pp = json.load(f).get("image_processor") or {}
    if not pp and os.path.exists(os.path.join(d, "preprocessor_config.json")):
        with open(os.path.join(d, "preprocessor_config.json")) as f:
            pp = json.load(f)
    return qwen_config(c, pp)


def qwen_config(c, pp):
    tc, vc = c.get("text_config"), c.get("vision_config")
    if tc is None or vc is None:
        die("config.json: text_config / vision_config missing")
    # rope: transformers 5 keeps it in rope_parameters; older files in rope_theta + rope_scaling
    rp = tc.get("rope_parameters") or dict(tc.get("rope_scaling") or {}, rope_theta=tc.get("rope_theta", 1e7),
                                           partial_rotary_factor=tc.get("partial_rotary_factor", 0.25))
    hd = tc.get("head_dim") or tc["hidden_size"] // tc["num_attention_heads"]
    rot = int(hd * rp.get("partial_rotary_factor", 1.0))
    sec = rp.get("mrope_section", [11, 11, 10])
    L = tc["num_hidden_layers"]
    lt = tc.get("layer_types") or ["full_attention" if (i + 1) % tc.get("full_attention_interval", 4) == 0
                                   else "linear_attention" for i in range(L)]
    problems = []
    if len(lt) != L or any(t not in ("linear_attention", "full_attention") for t in lt):
        problems.append("layer_types must list linear_attention / full_attention once per layer")
    if L > QWEN_MAX_LAYERS:
        problems.append(f"more than {QWEN_MAX_LAYERS} layers")
    if not tc.get("attn_output_gate", True):
        problems.append("attn_output_gate false is not supported")
    if tc.get("hidden_act", "silu") != "silu" or vc.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        problems.append("activations other than silu / gelu_pytorch_tanh are not supported")
    if vc.get("deepstack_visual_indexes"):
        problems.append("DeepStack (deepstack_visual_indexes) is not supported")
    if len(sec) != 3 or sum(sec) != rot // 2:
        problems.append(f"mrope_section {sec} must have 3 parts summing to rotary dims / 2 = {rot // 2}")
    if not rp.get("mrope_interleaved", True):
        problems.append("mrope_interleaved false is not supported")
    if rp.get("rope_type", rp.get("type", "default")) != "default":
        problems.append(f"rope_type {rp.get('rope_type')!r} is not supported")
    if tc.get("attention_bias", False):
        problems.append("attention_bias is not supported")
    npos = vc.get("num_position_embeddings", 2304)
    if int(round(npos ** 0.5)) ** 2 != npos:
        problems.append("num_position_embeddings must be a square")
    size = pp.get("size") or {}
    mean = [float(x) for x in pp.get("image_mean", [0.5, 0.5, 0.5])]
    std = [float(x) for x in pp.get("image_std", [0.5, 0.5, 0.5])]
    unk = 0xFFFFFFFF
    cfg = dict(
        v_dim=vc["hidden_size"], v_layers=vc["depth"], v_heads=vc["num_heads"], v_mlp=vc["intermediate_size"],
        v_patch=vc.get("patch_size", 16), v_temporal=vc.get("temporal_patch_size", 2),
        v_merge=vc.get("spatial_merge_size", 2), v_npos=npos, v_out=vc.get("out_hidden_size", tc["hidden_size"]),
        v_eps=1e-6, v_rope_theta=float((vc.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
        v_channels=vc.get("in_channels", 3),
        l_dim=tc["hidden_size"], l_layers=L, l_heads=tc["num_attention_heads"],
        l_kv_heads=tc["num_key_value_heads"], l_head_dim=hd, l_mlp=tc["intermediate_size"],
        l_vocab=tc["vocab_size"], l_eps=tc.get("rms_norm_eps", 1e-6), l_rope_theta=float(rp.get("rope_theta", 1e7)),
        l_rot_dim=rot, mrope_t=sec[0], mrope_h=sec[1], mrope_w=sec[2], mrope_interleaved=1,
        g_k_heads=tc["linear_num_key_heads"], g_v_heads=tc["linear_num_value_heads"],
        g_k_dim=tc["linear_key_head_dim"], g_v_dim=tc["linear_value_head_dim"],
        g_conv=tc.get("linear_conv_kernel_dim", 4),
        tied=int(bool(c.get("tie_word_embeddings", tc.get("tie_word_embeddings", False)))),
        image_token=c.get("image_token_id", unk), video_token=c.get("video_token_id", unk),
        vision_start=c.get("vision_start_token_id", unk), vision_end=c.get("vision_end_token_id", unk),
        think_open=1, min_pixels=int(size.get("shortest_edge", pp.get("min_pixels", 65536))),
        max_pixels=int(size.get("longest_edge", pp.get("max_pixels", 16777216))),
        mean=mean, std=std, layer_types=[int(t == "full_attention") for t in lt],
    )
    if cfg["v_channels"] != 3:
        problems.append("in_channels must be 3")
    if cfg["v_dim"] % cfg["v_heads"] or (cfg["v_dim"] // cfg["v_heads"]) % 4:
        problems.append("vision head size must be a multiple of 4 (2-D rotary)")
    if cfg["l_heads"] % cfg["l_kv_heads"] or cfg["g_v_heads"] % cfg["g_k_heads"]:
        problems.append("head counts must divide (GQA, value heads per key head)")
    if cfg["v_out"] != cfg["l_dim"]:
        problems.append("vision out_hidden_size must equal the text hidden_size")
    if rot % 2 or rot > hd:
        problems.append("bad rotary dims")
    if problems:
        die("unsupported Qwen3.5 configuration: " + "; ".join(problems))
    return cfg


def qwen_chat_think_open(d):
    """Whether the checkpoint's chat template, with add_generation_prompt and no
    enable_thinking, opens a thinking block: Qwen3.5's templates either test
    `enable_thinking is defined and enable_thinking is false` (thinking on by default) or
    `... is true` (off by default, as the 0.8B's). No template found: on (Qwen3.5's default)."""
    texts = []
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        p = os.path.join(d, name)
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                t = f.read()
            if name.endswith(".json"):
                try:
                    t = json.loads(t).get("chat_template") or ""
                except ValueError:
                    t = ""
                if isinstance(t, list):
                    t = " ".join(x.get("template", "") for x in t)
            texts.append(t)
    for t in texts:
        if "enable_thinking is false" in t:
            return 1
        if "enable_thinking is true" in t:
            return 0
    return 1


def qwen_tokenizer_tensor(d):
    """The tokenizer blob of bpe.c (export.py's bpe_blob_from_tokenizer_json) as a u8 tensor,
    or None when the checkpoint has no tokenizer.json."""
    tj = os.path.join(d, "tokenizer.json")
    if not os.path.exists(tj):
        return None
    make = globals().get("bpe_blob_from_tokenizer_json")
    if make is None:   # (the tokenizer's export lands from the qwen-tok branch)
        print("export.py: warning: this export.py cannot convert tokenizer.json yet: no tokenizer written",
              file=sys.stderr)
        return None
    tc = os.path.join(d, "tokenizer_config.json")
    blob = make(tj, tc if os.path.exists(tc) else None)
    return ("tok.bpe", (len(blob),), DT_U8, bytes(blob))


def qwen_tensor_plan(cfg):
    """(file name, shape, kind, [HF source names], how) in file order. Several HF matrices
    that read the same input are stacked into one ("rows": concatenated along the output
    dimension), so the C code runs one matmul: the Gated DeltaNet's qkv|z|b|a, the attention's
    q(+gate)|k|v, the MLP's gate|up."""
    V, T = "model.visual.", "model.language_model."
    D, Dl, P = cfg["v_dim"], cfg["l_dim"], cfg["v_patch"]
    K = 3 * cfg["v_temporal"] * P * P
    M4 = D * cfg["v_merge"] ** 2
    plan = [("v.patch", (D, K), "mat", [V + "patch_embed.proj.weight"], "flat"),
            ("v.patch.b", (D,), "vec", [V + "patch_embed.proj.bias"], None),
            ("v.pos", (cfg["v_npos"], D), "vec", [V + "pos_embed.weight"], None)]
    for i in range(cfg["v_layers"]):
        b, n = f"{V}blocks.{i}.", f"v.{i}."
        plan += [(n + "ln1.w", (D,), "vec", [b + "norm1.weight"], None), (n + "ln1.b", (D,), "vec", [b + "norm1.bias"], None),
                 (n + "qkv", (3 * D, D), "mat", [b + "attn.qkv.weight"], None),
                 (n + "qkv.b", (3 * D,), "vec", [b + "attn.qkv.bias"], None),
                 (n + "proj", (D, D), "mat", [b + "attn.proj.weight"], None),
                 (n + "proj.b", (D,), "vec", [b + "attn.proj.bias"], None),
                 (n + "ln2.w", (D,), "vec", [b + "norm2.weight"], None), (n + "ln2.b", (D,), "vec", [b + "norm2.bias"], None),
                 (n + "fc1", (cfg["v_mlp"], D), "mat", [b + "mlp.linear_fc1.weight"], None),
                 (n + "fc1.b", (cfg["v_mlp"],), "vec", [b + "mlp.linear_fc1.bias"], None),
                 (n + "fc2", (D, cfg["v_mlp"]), "mat", [b + "mlp.linear_fc2.weight"], None),
                 (n + "fc2.b", (D,), "vec", [b + "mlp.linear_fc2.bias"], None)]
    plan += [("v.merge.ln.w", (D,), "vec", [V + "merger.norm.weight"], None),
             ("v.merge.ln.b", (D,), "vec", [V + "merger.norm.bias"], None),
             ("v.merge.fc1", (M4, M4), "mat", [V + "merger.linear_fc1.weight"], None),
             ("v.merge.fc1.b", (M4,), "vec", [V + "merger.linear_fc1.bias"], None),
             ("v.merge.fc2", (Dl, M4), "mat", [V + "merger.linear_fc2.weight"], None),
             ("v.merge.fc2.b", (Dl,), "vec", [V + "merger.linear_fc2.bias"], None)]
    nk, nv, dk, dv = cfg["g_k_heads"], cfg["g_v_heads"], cfg["g_k_dim"], cfg["g_v_dim"]
    conv = 2 * nk * dk + nv * dv
    nh, nkv, hd = cfg["l_heads"], cfg["l_kv_heads"], cfg["l_head_dim"]
    for i, full in enumerate(cfg["layer_types"]):
        b, n = f"{T}layers.{i}.", f"l.{i}."
        plan.append((n + "in_norm", (Dl,), "vec", [b + "input_layernorm.weight"], None))
        if full:
            a = b + "self_attn."
            plan += [(n + "qkv", (2 * nh * hd + 2 * nkv * hd, Dl), "mat",
                      [a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"], "rows"),
                     (n + "q_norm", (hd,), "vec", [a + "q_norm.weight"], None),
                     (n + "k_norm", (hd,), "vec", [a + "k_norm.weight"], None),
                     (n + "o", (Dl, nh * hd), "mat", [a + "o_proj.weight"], None)]
        else:
            a = b + "linear_attn."
            plan += [(n + "in_proj", (conv + nv * dv + 2 * nv, Dl), "mat",
                      [a + "in_proj_qkv.weight", a + "in_proj_z.weight", a + "in_proj_b.weight", a + "in_proj_a.weight"], "rows"),
                     (n + "conv", (conv, cfg["g_conv"]), "vec", [a + "conv1d.weight"], "flat"),
                     (n + "dt_bias", (nv,), "vec", [a + "dt_bias"], None),
                     (n + "A_log", (nv,), "vec", [a + "A_log"], None),
                     (n + "norm", (dv,), "vec", [a + "norm.weight"], None),
                     (n + "out", (Dl, nv * dv), "mat", [a + "out_proj.weight"], None)]
        plan += [(n + "post_norm", (Dl,), "vec", [b + "post_attention_layernorm.weight"], None),
                 (n + "gate_up", (2 * cfg["l_mlp"], Dl), "mat", [b + "mlp.gate_proj.weight", b + "mlp.up_proj.weight"], "rows"),
                 (n + "down", (Dl, cfg["l_mlp"]), "mat", [b + "mlp.down_proj.weight"], None)]
    plan += [("l.norm", (Dl,), "vec", [T + "norm.weight"], None),
             ("l.embed", (cfg["l_vocab"], Dl), "mat", [T + "embed_tokens.weight"], None)]
    if not cfg["tied"]:
        plan.append(("l.head", (cfg["l_vocab"], Dl), "mat", ["lm_head.weight"], None))
    return plan


def qwen_fetch(get, name, shape, srcs, how):
    """The tensor `name` from the HF tensors srcs (get(hf_name) -> Raw), as Raw of `shape`."""
    parts = [get(s) for s in srcs]
    if how == "rows":
        kinds = {p.kind for p in parts}
        if kinds == {"bf16"}:
            data, kind = np.concatenate([p.data.reshape(p.shape[0], -1) for p in parts]), "bf16"
        else:
            data, kind = np.concatenate([p.f32().reshape(p.shape[0], -1) for p in parts]), "f32"
        r = Raw(data, kind)
    else:
        r = parts[0]
        if how == "flat" or r.shape != tuple(shape):
            r = Raw(r.data.reshape(-1), r.kind) if int(np.prod(r.shape)) == int(np.prod(shape)) else r
    if int(np.prod(r.shape)) != int(np.prod(shape)):
        die(f"tensor {srcs[0]} has shape {list(parts[0].shape)}, expected {list(shape)} from config.json; "
            "is this a Qwen3.5 checkpoint matching its config?")
    return Raw(r.data.reshape(shape), r.kind)


def qwen_write_model(out, cfg, wtype, get, tok=None, log=print, synthetic=None):
    plan = qwen_tensor_plan(cfg)
    wplan = [(name, shape, kind, (srcs, how), None) for name, shape, kind, srcs, how in plan]
    entries = [(name, tensor_dtype(kind, shape, wtype), shape, None) for name, shape, kind, _s, _h in plan]
    tok_tensors = [tok] if tok else []
    entries += [(name, dt, shape, len(data)) for name, shape, dt, data in tok_tensors]
    offset = HEADER_BYTES + TABLE_ENTRY.size * len(entries)
    table = []
    for name, dt, shape, nb in entries:
        offset = (offset + ALIGN - 1) // ALIGN * ALIGN
        nbytes = tensor_nbytes(dt, shape) if nb is None else nb
        table.append((name, dt, shape, offset, nbytes))
        offset += nbytes
    vals = dict(cfg, magic=QWEN_MAGIC, version=QWEN_VERSION, header_bytes=HEADER_BYTES,
                n_tensors=len(entries), wtype=wtype)
    for i, c in enumerate("rgb"):
        vals[f"mean_{c}"], vals[f"std_{c}"] = cfg["mean"][i], cfg["std"][i]
    header = bytearray(HEADER_BYTES)
    assert len(QWEN_HEADER_FIELDS) <= QWEN_LAYER_SLOT
    for i, (key, typ) in enumerate(QWEN_HEADER_FIELDS):
        v = vals[key]
        struct.pack_into("<f" if typ == "f" else "<I", header, 4 * i, v if typ == "f" else int(v) & 0xFFFFFFFF)
    for i, full in enumerate(cfg["layer_types"]):
        struct.pack_into("<I", header, 4 * (QWEN_LAYER_SLOT + i), full)
    source = lambda name, src, shape, part: qwen_fetch(get, name, shape, *src)  # noqa: E731
    if synthetic:
        source = lambda name, src, shape, part: synthetic(name, shape)  # noqa: E731
    return _write_out(out, header, table, tok_tensors, wplan, source, offset, log)


# Full-size configurations of Q-ReAlign's backbones (Qwen3.5-0.8B / 4B / 9B), for random
# models of the real shapes: numbers from docs/qwen35-configs.md (a
# survey of the released config.json files, two independent sources each).
QWEN_SYNTHETIC = {
    "q-realign-mini": dict(hidden=1024, mlp=3584, layers=24, heads=8, kv=2, gk=16, gv=16, vdepth=12, vdim=768,
                           vmlp=3072, vheads=12, tied=True),
    "q-realign-lite": dict(hidden=2560, mlp=9216, layers=32, heads=16, kv=4, gk=16, gv=32, vdepth=24, vdim=1024,
                           vmlp=4096, vheads=16, tied=True),
    "q-realign-pro": dict(hidden=4096, mlp=12288, layers=32, heads=16, kv=4, gk=16, gv=32, vdepth=27, vdim=1152,
                          vmlp=4304, vheads=16, tied=False),
}


def qwen_synthetic_config(name):
    p = QWEN_SYNTHETIC[name]
    c = dict(model_type="qwen3_5", tie_word_embeddings=p["tied"],
             image_token_id=248056, video_token_id=248057, vision_start_token_id=248053, vision_end_token_id=248054,
             text_config=dict(hidden_size=p["hidden"], intermediate_size=p["mlp"], num_hidden_layers=p["layers"],
                              num_attention_heads=p["heads"], num_key_value_heads=p["kv"], head_dim=256,
                              rms_norm_eps=1e-6, vocab_size=248320, linear_conv_kernel_dim=4,
                              linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=p["gk"],
                              linear_num_value_heads=p["gv"], full_attention_interval=4,
                              rope_parameters=dict(rope_type="default", rope_theta=1e7, partial_rotary_factor=0.25,
                                                   mrope_section=[11, 11, 10], mrope_interleaved=True)),
             vision_config=dict(depth=p["vdepth"], hidden_size=p["vdim"], intermediate_size=p["vmlp"],
                                num_heads=p["vheads"], patch_size=16, temporal_patch_size=2, spatial_merge_size=2,
                                out_hidden_size=p["hidden"], num_position_embeddings=2304))
    pp = dict(size=dict(shortest_edge=65536, longest_edge=16777216), image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return qwen_config(c, pp)


class QwenSyntheticSource:
    """Random weights by file tensor name: matrices N(0, (0.8/sqrt(fan_in))^2), norm weights
    near their identity (0 for the (1 + w) norms, 1 for LayerNorm / RMSNormGated), small
    biases, A_log = log U(1, 16), dt_bias 1; bf16 like the releases."""

    def __init__(self, cfg, seed):
        self.src = SyntheticSource(cfg, seed)      # its pool of normals
        self.rng, self.normals = self.src.rng, self.src.normals

    def __call__(self, name, shape):
        n, leaf = int(np.prod(shape)), name.split(".")[-1]
        if leaf in ("in_norm", "post_norm", "q_norm", "k_norm") or name == "l.norm":
            x = 0.05 * self.normals(n)
        elif leaf == "w" or leaf == "norm":
            x = 1.0 + 0.05 * self.normals(n)
        elif leaf == "b":
            x = 0.02 * self.normals(n)
        elif leaf == "A_log":
            x = np.log(self.rng.uniform(1.0, 16.0, n)).astype(np.float32)
        elif leaf == "dt_bias":
            x = np.ones(n, np.float32)
        elif leaf == "conv":
            x = 0.3 * self.normals(n)
        elif name == "v.pos":
            x = 0.5 * self.normals(n)
        elif name in ("l.embed", "l.head"):
            x = 0.02 * self.normals(n)
        else:
            x = (0.8 / np.sqrt(shape[-1])) * self.normals(n)
        return Raw(f32_to_bf16(x.reshape(shape)), "bf16")


def qwen_export_synthetic(name, out, wtype, seed, log):
    cfg = qwen_synthetic_config(name)
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", "data", "qwen_tokenizer")
    tok = qwen_tokenizer_tensor(here) if os.path.exists(os.path.join(here, "tokenizer.json")) else None
    if tok:
        # the small test tokenizer stands in for Qwen3.5's (its special ids, not the released ones)
        with open(os.path.join(here, "tokenizer.json"), encoding="utf-8") as f:
            added = {a["content"]: a["id"] for a in json.load(f).get("added_tokens", [])}
        cfg.update(image_token=added["<|image_pad|>"], video_token=added["<|video_pad|>"],
                   vision_start=added["<|vision_start|>"], vision_end=added["<|vision_end|>"])
    cfg["think_open"] = 1
    log(f"export.py: synthetic {name} (random weights, test tokenizer), {DT_NAMES_PY[wtype]} -> {out}")
    return qwen_write_model(out, cfg, wtype, None, tok=tok, log=log, synthetic=QwenSyntheticSource(cfg, seed))


DT_NAMES_PY = {v: k for k, v in DTYPES.items()}


def qwen_export(d, out, wtype, log):
    cfg = qwen_read_config(d)
    ckpt = Checkpoint(d)
    missing = [s for _n, _sh, _k, srcs, _h in qwen_tensor_plan(cfg) for s in srcs if s not in ckpt]
    if missing:
        die(f"{d}: {len(missing)} tensors the config needs are missing, e.g. {missing[0]} "
            "(is this a Qwen3.5 / Q-ReAlign checkpoint in the released layout?)")
    cfg["think_open"] = qwen_chat_think_open(d)
    tok = qwen_tokenizer_tensor(d)
    if tok is None:
        log(f"export.py: warning: {d} has no tokenizer.json: the model file can only be run with token ids")
    log(f"export.py: Qwen3.5 {d} -> {out}")
    return qwen_write_model(out, cfg, wtype, ckpt.get, tok=tok, log=log)


# ----------------------------------------------------------------------------------------
# Synthetic models (random weights; dims of a preset)

PRESETS = {
    "one-align": dict(v_dim=1024, v_layers=24, v_heads=16, v_mlp=4096, v_image=448, v_patch=14,
                      a_layers=6, a_heads=16, a_queries=64, a_mlp=2816,
                      l_dim=4096, l_layers=32, l_heads=32, l_kv_heads=32, l_mlp=11008),
    "tiny": dict(v_dim=64, v_layers=2, v_heads=4, v_mlp=256, v_image=56, v_patch=14,
                 a_layers=2, a_heads=4, a_queries=8, a_mlp=176,
                 l_dim=64, l_layers=2, l_heads=4, l_kv_heads=4, l_mlp=172),
}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def synthetic_config(preset):
    cfg = dict(PRESETS[preset])
    cfg.update(v_eps=1e-6, a_eps=1e-5, a_ffn_eps=1e-6, l_vocab=32000, l_eps=1e-6,
               l_rope_theta=10000.0, l_max_pos=2048, fill=[int(x * 255) for x in CLIP_MEAN],
               mean=CLIP_MEAN, std=CLIP_STD, grid=cfg["v_image"] // cfg["v_patch"])
    check_dims(cfg)
    return cfg


class SyntheticSource:
    """Random weights shaped like a trained model: matrices N(0, (s/sqrt(fan_in))^2),
    norm weights near 1, small biases, unit-scale embeddings. A pool of normals is drawn
    once and each tensor takes a random window of it (drawing 8e9 fresh normals would
    take minutes)."""

    def __init__(self, cfg, seed):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.pool = self.rng.standard_normal(1 << 24, dtype=np.float32)

    def normals(self, n):
        out = np.empty(n, dtype=np.float32)
        done = 0
        while done < n:
            start = int(self.rng.integers(0, self.pool.size))
            take = min(n - done, self.pool.size - start)
            out[done:done + take] = self.pool[start:start + take]
            done += take
        return out

    def __call__(self, name, src, shape, part):
        cfg, n = self.cfg, int(np.prod(shape))
        if part and part[0] in ("qpos", "kpos"):
            q, k = abstractor_positions(cfg)
            return Raw(f32_to_bf16(q if part[0] == "qpos" else k).reshape(shape), "bf16")
        leaf = name.split(".")[-2] if name.endswith((".w", ".b")) else name.split(".")[-1]
        if name.endswith(".b"):
            x = 0.02 * self.normals(n)
        elif "norm" in leaf or leaf.startswith(("ln", "pre_ln", "post_ln", "ffn_ln")):
            x = 1.0 + 0.05 * self.normals(n)
        elif leaf in ("cls", "pos", "query", "eos", "embed"):
            x = (0.02 if leaf == "embed" else 1.0) * self.normals(n)
        else:   # a weight matrix [out, in]
            x = (0.8 / np.sqrt(shape[-1])) * self.normals(n)
        return Raw(f32_to_bf16(x.reshape(shape)), "bf16")   # released weights are bf16


def find_tokenizer(explicit, ckpt_dir=None):
    here = os.path.dirname(os.path.abspath(__file__))
    cands = [explicit] if explicit else []
    if ckpt_dir:
        cands.append(os.path.join(ckpt_dir, "tokenizer.model"))
    cands += [os.environ.get("QALIGN_TOKENIZER"), os.path.join(here, "tokenizer.model"),
              os.path.join(here, "..", "shared", "data", "tokenizer.model")]
    for c in cands:
        if c and os.path.exists(c):
            return c
    die("tokenizer.model not found (give --tokenizer PATH or set QALIGN_TOKENIZER)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", help="Hugging Face checkpoint directory")
    ap.add_argument("out", nargs="?", help="output model file")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES) + sorted(ALIASES),
                    help="weight type of the matrices (default bf16 = the released values, exact); "
                         + ", ".join(f"{k} = {v}" for k, v in sorted(ALIASES.items())))
    ap.add_argument("--synthetic", choices=sorted(PRESETS) + sorted(QWEN_SYNTHETIC),
                    help="write random weights of this preset (q-realign-*: Qwen3.5 at full size)")
    ap.add_argument("--seed", type=int, default=0, help="random seed for --synthetic")
    ap.add_argument("--tokenizer", help="tokenizer.model (default: the checkpoint's, or $QALIGN_TOKENIZER)")
    ap.add_argument("--lora", metavar="DIR",
                    help="merge a Q-Align LoRA adapter (adapter_config.json, adapter_model.bin|.safetensors, "
                         "non_lora_trainables.bin) into the checkpoint, as q_align/model/builder.py does")
    ap.add_argument("--model", metavar="DIR",
                    help="a Qwen3.5 / Q-ReAlign checkpoint directory (config.json model_type qwen3_5, "
                         "*.safetensors [+ index]); OUT is then the only positional argument")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_intermixed_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    log = (lambda *x: None) if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    if a.dtype in ALIASES:
        a.dtype = ALIASES[a.dtype]
    wtype = DTYPES[a.dtype]

    qwen_dir = a.model
    if not qwen_dir and a.checkpoint and a.out and not a.synthetic and os.path.isdir(a.checkpoint):
        try:
            with open(os.path.join(a.checkpoint, "config.json")) as f:
                if json.load(f).get("model_type") == "qwen3_5":
                    qwen_dir = a.checkpoint
        except (OSError, ValueError):
            pass
    if qwen_dir:
        out = a.out or (a.checkpoint if qwen_dir != a.checkpoint else None)
        if not out or a.synthetic or a.lora:
            ap.error("usage: export.py --model QWEN35_DIR OUT [--dtype T]")
        if not os.path.isdir(qwen_dir):
            die(f"{qwen_dir}: not a directory")
        total = qwen_export(qwen_dir, out, wtype, log)
        log(f"export.py: wrote {out} ({total / 1e9:.3f} GB)")
        return

    if a.synthetic in QWEN_SYNTHETIC:
        out = a.out or a.checkpoint
        if not out or (a.out and a.checkpoint) or a.lora:
            ap.error("usage: export.py --synthetic PRESET [--dtype T] OUT")
        total = qwen_export_synthetic(a.synthetic, out, wtype, a.seed, log)
        log(f"export.py: wrote {out} ({total / 1e9:.3f} GB)")
        return
    if a.synthetic:
        if a.lora:
            ap.error("--lora needs a checkpoint (the base model), not --synthetic")
        out = a.out or a.checkpoint
        if not out or (a.out and a.checkpoint):
            ap.error("usage: export.py --synthetic PRESET [--dtype T] OUT")
        cfg = synthetic_config(a.synthetic)
        source = SyntheticSource(cfg, a.seed)
        tok = find_tokenizer(a.tokenizer)
        log(f"export.py: synthetic {a.synthetic} model, {a.dtype} -> {out}")
    else:
        if not a.checkpoint or not a.out:
            ap.error("usage: export.py CHECKPOINT_DIR OUT [--dtype T]")
        if not os.path.isdir(a.checkpoint):
            die(f"{a.checkpoint}: not a directory")
        out = a.out
        cfg = read_config(a.checkpoint)
        ckpt = Checkpoint(a.checkpoint)
        check_layout(ckpt.where, cfg, log)
        if a.lora:
            if not os.path.isdir(a.lora):
                die(f"--lora {a.lora}: not a directory")
            if all(os.path.exists(os.path.join(a.lora, f)) for f in ("config.json", "preprocessor_config.json")):
                # builder.py builds the model from the adapter's config: it must be the base's
                lcfg = read_config(a.lora)
                diff = sorted(k for k in cfg if lcfg.get(k) != cfg[k])
                if diff:
                    die(f"--lora {a.lora}: its config differs from the base checkpoint's in {', '.join(diff)}")
            ckpt = LoraCheckpoint(ckpt, a.lora, log=log)
        tok = find_tokenizer(a.tokenizer, a.checkpoint)
        source = lambda name, src, shape, part: fetch(ckpt, cfg, name, src, shape, part)  # noqa: E731
        log(f"export.py: {a.checkpoint} ({a.dtype}) -> {out}")
    total = write_model(out, cfg, wtype, tok, source, log=log)
    log(f"export.py: wrote {out} ({total / 1e9:.3f} GB)")


if __name__ == "__main__":
    try:
        main()
    except OSError as e:    # a file that cannot be read: one line, not a traceback
        die(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
    except KeyboardInterrupt:
        die("interrupted")
