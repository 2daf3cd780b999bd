"""The Qwen3.5 (Q-ReAlign) image processor in C (image_qwen.c) against independent Python ports.

Oracles (none of them is our C code):
  - smart_resize: line-by-line ports of transformers' models/qwen2_vl/image_processing_qwen2_vl.py
    (5.x) and of qwen_vl_utils/vision_process.py (the rule ms-swift uses);
  - the PIL path: Pillow's Image.resize(BICUBIC) (what transformers' PIL backend and
    qwen_vl_utils.fetch_image call), on Image.open(f).convert("RGB");
  - the torch path: a numpy port, line by line, of ATen's uint8 antialiased bicubic
    (UpSampleKernel.cpp HelperInterpBase::_compute_index_ranges_weights /
    _compute_index_ranges_int16_weights, HelperInterpCubic::aa_filter, and the
    ImagingResample{Horizontal,Vertical}Convolution8u arithmetic), which is what torchvision's
    resize of a uint8 tensor runs on CPU (Debian's torch 1.13 has no uint8 kernel to call);
  - rescale + normalise: torch float32 ops exactly as transformers 5's TorchvisionBackend
    (mean and std * (1 / rescale_factor), then (x - m) / s), and numpy as its PilBackend;
  - patchify: the HF reshape / permute of image_processing_qwen2_vl.py.
Equality is exact everywhere: resized uint8 byte for byte, float rows bit for bit.

Images of every size class go through the whole pipeline (decode -> smart_resize -> resize ->
rows): tiny (hits min_pixels), ordinary, exact multiples (no resize), non-square, one axis only,
huge (hits max_pixels with the released bounds), grayscale / RGBA / palette / 16-bit / JPEG inputs,
odd sizes, half-way roundings, and the aspect-ratio error.
"""
import math
import os
import random
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, report, run

PIL = pytest.importorskip("PIL")
torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

DRIVER_SRC = [ROOT / "tests" / "qwen_img_driver.c", ROOT / "image.c", ROOT / "image_bmp.c", ROOT / "image_png.c",
              ROOT / "image_jpeg.c", ROOT / "image_jpeg_scan.c", ROOT / "image_qwen.c"]
MIN_HF, MIN_SWIFT, MAX_PX = 65536, 4096, 16777216
RULE = {"transformers": 0, "qwen_vl_utils": 1}
RESAMPLE = {"pil": 0, "torch": 1}
NORM = {"fused": 0, "numpy": 1}


@pytest.fixture(scope="module")
def driver():
    out = ROOT / "build" / "qwen_img_driver"
    out.parent.mkdir(exist_ok=True)
    r = run(["cc", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
             "-Werror", "-I", ROOT, "-o", out, *DRIVER_SRC, "-lm"])
    assert r.returncode == 0, "building qwen_img_driver failed:\n" + r.stdout + r.stderr
    return out


# =====================================================================================
# oracle 1: smart_resize, ported line by line
# =====================================================================================

def smart_resize_transformers(height, width, factor=28, min_pixels=56 * 56, max_pixels=14 * 14 * 4 * 1280):
    # transformers/models/qwen2_vl/image_processing_qwen2_vl.py (5.x)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _round_by_factor(number, factor):
    return round(number / factor) * factor


def _ceil_by_factor(number, factor):
    return math.ceil(number / factor) * factor


def _floor_by_factor(number, factor):
    return math.floor(number / factor) * factor


def smart_resize_qwen_vl_utils(height, width, factor, min_pixels, max_pixels):
    # qwen_vl_utils/vision_process.py (QwenLM/Qwen3-VL)
    assert max_pixels >= min_pixels
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = max(factor, _round_by_factor(height, factor))
    w_bar = max(factor, _round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = _floor_by_factor(height / beta, factor)
        w_bar = _floor_by_factor(width / beta, factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = _ceil_by_factor(height * beta, factor)
        w_bar = _ceil_by_factor(width * beta, factor)
    return h_bar, w_bar


def oracle_smart(rule, h, w, factor, mn, mx):
    f = smart_resize_transformers if rule == 0 else smart_resize_qwen_vl_utils
    try:
        return f(h, w, factor, mn, mx)
    except ValueError as e:
        return ("E", str(e))


# =====================================================================================
# oracle 2: ATen's uint8 antialiased bicubic, ported line by line
# =====================================================================================

def _cubic_convolution1(x, A):
    return ((A + 2) * x - (A + 3)) * x * x + 1


def _cubic_convolution2(x, A):
    return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A


def _aa_filter_cubic(x):
    # HelperInterpCubic::aa_filter<double, use_keys_cubic=true>: a = -0.5 with antialias
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return _cubic_convolution1(x, a)
    if x < 2.0:
        return _cubic_convolution2(x, a)
    return 0.0


def aten_weights(input_size, output_size):
    """HelperInterpBase::_compute_index_ranges_weights<double>, antialias=True:
    (xmin[], xsize[], double weights [out][max_interp_size], wt_max)"""
    interp_size = 4
    scale = input_size / output_size            # area_pixel_compute_scale<double>, align_corners=False
    support = (interp_size * 0.5) * scale if scale >= 1.0 else interp_size * 0.5
    max_interp_size = int(math.ceil(support)) * 2 + 1
    wts = np.zeros((output_size, max_interp_size), dtype=np.float64)
    xmins, xsizes = [], []
    wt_max = 0.0
    for i in range(output_size):
        # _compute_indices_min_size_weights_aa
        center = scale * (i + 0.5)
        total_w = 0.0
        invscale = 1.0 / scale if scale >= 1.0 else 1.0
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(int(center + support + 0.5), input_size) - xmin
        xsize = min(max(xsize, 0), max_interp_size)
        w = [0.0] * max_interp_size
        for j in range(xsize):
            w[j] = _aa_filter_cubic((j + xmin - center + 0.5) * invscale)
            total_w += w[j]
        wt_max_i = 0.0
        if total_w != 0.0:
            for j in range(xsize):
                w[j] /= total_w
                wt_max_i = max(wt_max_i, w[j])
        wt_max = max(wt_max, wt_max_i)
        wts[i] = w
        xmins.append(xmin)
        xsizes.append(xsize)
    return np.array(xmins), np.array(xsizes), wts, wt_max


def aten_int16_weights(input_size, output_size):
    """(xmin[], xsize[], int16 weights [out][max_interp_size], weights_precision)"""
    xmins, xsizes, wts, wt_max = aten_weights(input_size, output_size)
    # _compute_index_ranges_int16_weights
    weights_precision = 0
    while weights_precision < 22:
        next_value = int(0.5 + wt_max * (1 << (weights_precision + 1)))
        if next_value >= (1 << 15):
            break
        weights_precision += 1
    k16 = np.zeros(wts.shape, dtype=np.int64)
    for (i, j), w in np.ndenumerate(wts):
        v = w * (1 << weights_precision)
        k16[i, j] = int(-0.5 + v) if v < 0 else int(0.5 + v)
    return xmins, xsizes, k16, weights_precision


def _aten_pass(img, axis, out_size):
    """One separable pass over `axis` (0 rows, 1 columns) of a uint8 HxWx3 image:
    clamp((2^(p-1) + sum_j k_j * in[xmin + j]) >> p, 0, 255). (int32 sums cannot overflow:
    every |k| < 2^15 and k has at most a few dozen taps here.)"""
    xmin, xsize, k, p = aten_int16_weights(img.shape[axis], out_size)
    s = np.ascontiguousarray(np.moveaxis(img, axis, 0))     # [in][other][3]
    out = np.empty((out_size, s.shape[1], 3), np.uint8)
    step = max(1, (1 << 22) // max(1, out_size * 3))         # slices of the other axis (memory)
    for a in range(0, s.shape[1], step):
        part = s[:, a:a + step].astype(np.int32)
        acc = np.full((out_size, part.shape[1], 3), 1 << (p - 1), dtype=np.int32)
        for j in range(k.shape[1]):
            valid = j < xsize
            idx = np.where(valid, xmin + j, 0)
            kj = np.where(valid, k[:, j], 0).astype(np.int32)
            acc += kj[:, None, None] * part[idx]
        out[:, a:a + step] = np.clip(acc >> p, 0, 255)
    return np.moveaxis(out, 0, axis)


def aten_resize_uint8(img, ow, oh):
    # upsample_avx_bilinear_bicubic_uint8 / separable_upsample_generic_Nd_kernel_impl:
    # the horizontal pass first (if the width changes), then the vertical one
    h, w = img.shape[:2]
    if (ow, oh) == (w, h):
        return img.copy()
    if ow != w:
        img = _aten_pass(img, 1, ow)
    if oh != h:
        img = _aten_pass(img, 0, oh)
    return img


# =====================================================================================
# oracle 3: rescale + normalise + patchify as transformers 5
# =====================================================================================

def normalize_fused_torch(rgb, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), rescale_factor=1 / 255):
    # TorchvisionBackend._fuse_mean_std_and_rescale_factor + _rescale_and_normalize
    image_mean = torch.tensor(mean) * (1.0 / rescale_factor)
    image_std = torch.tensor(std) * (1.0 / rescale_factor)
    images = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]   # B C H W uint8
    images = images.to(dtype=torch.float32)
    # tvF.normalize: (image - mean) / std, per channel, float32
    images = images.sub_(image_mean[None, :, None, None]).div_(image_std[None, :, None, None])
    return images[0].numpy()


def normalize_numpy(rgb, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), scale=1 / 255):
    # image_transforms.rescale (float64 product, then float32) and image_transforms.normalize
    image = rgb.transpose(2, 0, 1)
    image = (image.astype(np.float64) * scale).astype(np.float32)
    mean = np.array(mean, dtype=image.dtype)
    std = np.array(std, dtype=image.dtype)
    return ((image.transpose(1, 2, 0) - mean) / std).transpose(2, 0, 1)


def patchify_hf(chw, patch_size=16, temporal_patch_size=2, merge_size=2):
    # image_processing_qwen2_vl.py Qwen2VLImageProcessor._preprocess (torchvision backend)
    patches = torch.from_numpy(np.ascontiguousarray(chw))[None]        # [B, C, H, W]
    resized_height, resized_width = patches.shape[-2:]
    if patches.ndim == 4:
        patches = patches.unsqueeze(1)
    if patches.shape[1] % temporal_patch_size != 0:
        repeats = patches[:, -1:].repeat(1, temporal_patch_size - 1, 1, 1, 1)
        patches = torch.cat([patches, repeats], dim=1)
    batch_size, grid_t_raw, channel = patches.shape[:3]
    grid_t = grid_t_raw // temporal_patch_size
    grid_h, grid_w = resized_height // patch_size, resized_width // patch_size
    patches = patches.view(batch_size, grid_t, temporal_patch_size, channel, grid_h // merge_size, merge_size,
                           patch_size, grid_w // merge_size, merge_size, patch_size)
    patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    flatten_patches = patches.reshape(batch_size, grid_t * grid_h * grid_w,
                                      channel * temporal_patch_size * patch_size * patch_size)
    return flatten_patches[0].numpy(), (grid_t, grid_h, grid_w)


def patch_rows_subset(chw, rows, patch_size=16, temporal_patch_size=2, merge_size=2):
    """The same rows as patchify_hf for the row numbers `rows` only (for images too large to
    permute whole): row r = ((by * gw/m + bx) * m + my) * m + mx, contents (c, t, y, x)."""
    C, H, W = chw.shape
    gh, gw, m, p = H // patch_size, W // patch_size, merge_size, patch_size
    out = np.empty((len(rows), C * temporal_patch_size * p * p), np.float32)
    for n, r in enumerate(rows):
        blk, inner = divmod(r, m * m)
        by, bx = divmod(blk, gw // m)
        my, mx = divmod(inner, m)
        py, px = by * m + my, bx * m + mx
        tile = chw[:, py * p:(py + 1) * p, px * p:(px + 1) * p]          # C p p
        out[n] = np.repeat(tile[:, None], temporal_patch_size, axis=1).reshape(-1)
    return out


# =====================================================================================
# the whole oracle pipeline and the C one
# =====================================================================================

PATHS = {
    # name: (rule, resample, norm, min_pixels, max_pixels)
    "hf": (0, "torch", "fused", MIN_HF, MAX_PX),
    "swift": (1, "pil", "fused", MIN_SWIFT, MAX_PX),
}


def oracle_pipeline(path, rule, resample, norm, mn, mx, rows_subset=None):
    rgb_img = Image.open(path).convert("RGB")
    w, h = rgb_img.size
    r = oracle_smart(rule, h, w, 32, mn, mx)
    if r[0] == "E":
        return r
    oh, ow = r
    if resample == "pil":
        resized = np.asarray(rgb_img.resize((ow, oh), Image.BICUBIC))
    else:
        resized = aten_resize_uint8(np.asarray(rgb_img), ow, oh)
    chw = normalize_fused_torch(resized) if norm == "fused" else normalize_numpy(resized)
    if rows_subset is None:
        rows, grid = patchify_hf(chw)
    else:
        rows, grid = patch_rows_subset(chw, rows_subset), (1, oh // 16, ow // 16)
    return resized, rows, grid


def c_pipeline(driver, path, out_base, pathname, rule, resample, norm, mn, mx, row_stride=1):
    env = dict(os.environ, QWEN_DRIVER_ROW_STRIDE=str(row_stride))
    r = run([driver, "prep", path, out_base, pathname, rule, RESAMPLE[resample], NORM[norm], mn, mx], env=env)
    if r.returncode == 1:
        return ("E", r.stderr)
    assert r.returncode == 0, f"driver exited {r.returncode}: {r.stderr}"
    gt, gh, gw, ow, oh = map(int, r.stdout.split())
    resized = np.fromfile(f"{out_base}.rgb", np.uint8).reshape(oh, ow, 3)
    rows = np.fromfile(f"{out_base}.f32", np.float32).reshape(len(range(0, gt * gh * gw, row_stride)), -1)
    os.unlink(f"{out_base}.rgb")
    os.unlink(f"{out_base}.f32")
    return resized, rows, (gt, gh, gw)


def smooth_noise(rng, h, w, ch):
    """Natural-ish content: smooth gradients plus noise, so that resampling has work to do."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = [(127 + 100 * np.sin(x / (3 + 7 * rng.random()) + 2 * c) * np.cos(y / (5 + 5 * rng.random())))
            for c in range(ch)]
    a = np.stack(base, -1) + rng.normal(0, 25, (h, w, ch))
    return np.clip(a, 0, 255).astype(np.uint8)


def make_image(d, name, w, h, mode="RGB", seed=0, fmt="png"):
    rng = np.random.default_rng(seed)
    if mode == "RGB":
        im = Image.fromarray(smooth_noise(rng, h, w, 3), "RGB")
    elif mode == "L":
        im = Image.fromarray(smooth_noise(rng, h, w, 1)[..., 0], "L")
    elif mode == "RGBA":
        im = Image.fromarray(smooth_noise(rng, h, w, 4), "RGBA")
    elif mode == "P":
        im = Image.fromarray(smooth_noise(rng, h, w, 3), "RGB").convert("P", palette=Image.ADAPTIVE, colors=200)
    elif mode == "I;16":
        a = (smooth_noise(rng, h, w, 1)[..., 0].astype(np.uint16) * 257)
        im = Image.fromarray(a, "I;16")
    else:
        raise ValueError(mode)
    p = d / f"{name}.{fmt}"
    if fmt == "jpg":
        im.save(p, quality=90)
    else:
        im.save(p)
    return p


# (name, w, h, mode, format): the size classes
CASES = [
    ("tiny_1x1", 1, 1, "RGB", "png"),          # min_pixels (both rules), 1 -> 256 / 64
    ("tiny_20x30", 20, 30, "RGB", "png"),      # min_pixels
    ("tiny_strip_2x300", 2, 300, "RGB", "png"),  # ratio 150, h' = 0 before the min branch
    ("small_200x150", 200, 150, "RGB", "png"),  # min_pixels for HF only (4096 < 30000 < 65536)
    ("ordinary_640x480", 640, 480, "RGB", "png"),  # exact multiples: no resize
    ("ordinary_448", 448, 448, "RGB", "png"),
    ("ordinary_500x375", 500, 375, "RGB", "png"),  # both axes change
    ("odd_333x517", 333, 517, "RGB", "png"),
    ("half_even_80x48", 80, 48, "RGB", "png"),   # 80/32 = 2.5 -> 2, 48/32 = 1.5 -> 2 (then min branch)
    ("half_even_1040x720", 1040, 720, "RGB", "png"),  # 32.5 -> 32, 22.5 -> 22: downscale both
    ("wide_1000x300", 1000, 300, "RGB", "png"),
    ("tall_17x1023", 17, 1023, "RGB", "png"),
    ("one_axis_1920x1080", 1920, 1080, "RGB", "png"),  # only the height changes (1080 -> 1088)
    ("gray_L_300x200", 300, 200, "L", "png"),
    ("gray16_301x211", 301, 211, "I;16", "png"),
    ("rgba_257x190", 257, 190, "RGBA", "png"),
    ("palette_350x260", 350, 260, "P", "png"),
    ("jpeg_613x411", 613, 411, "RGB", "jpg"),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen_img")
    return d, {name: make_image(d, name, w, h, mode, seed=i, fmt=fmt)
               for i, (name, w, h, mode, fmt) in enumerate(CASES)}


def _compare(c, o, label):
    assert not isinstance(c[0], str) and not isinstance(o[0], str), f"{label}: unexpected error: C {c!r:.300} oracle {o!r:.300}"
    (cr, crow, cg), (orr, orow, og) = c, o
    assert cg == og, f"{label}: grid C {cg} != oracle {og}"
    assert cr.shape == orr.shape, f"{label}: resized C {cr.shape} != oracle {orr.shape}"
    diff = int(np.count_nonzero(cr != orr))
    assert diff == 0, f"{label}: {diff} resized bytes differ (max {int(np.abs(cr.astype(int) - orr).max())})"
    assert crow.shape == orow.shape, f"{label}: rows {crow.shape} != {orow.shape}"
    assert np.array_equal(crow.view(np.uint32), orow.view(np.uint32)), \
        f"{label}: rows differ (max |d| {float(np.abs(crow - orow).max())})"


# =====================================================================================
# tests
# =====================================================================================

@pytest.mark.parametrize("path", ["hf", "swift"])
@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_pipeline_equals_oracle(driver, images, path, case):
    """decode -> smart_resize -> resize -> rescale/normalise -> rows, each official path with its
    released bounds: resized bytes equal, float rows bit-equal."""
    d, files = images
    rule, resample, norm, mn, mx = PATHS[path]
    o = oracle_pipeline(files[case], rule, resample, norm, mn, mx)
    c = c_pipeline(driver, files[case], d / f"out_{case}_{path}", path, rule, resample, norm, mn, mx)
    _compare(c, o, f"{case}/{path}")


@pytest.mark.parametrize("variant", [
    ("transformers", "pil", "numpy"),     # transformers' PIL backend (no torchvision installed)
    ("transformers", "pil", "fused"),
    ("qwen_vl_utils", "torch", "numpy"),
])
@pytest.mark.parametrize("case", ["tiny_20x30", "odd_333x517", "rgba_257x190", "one_axis_1920x1080"])
def test_other_combinations(driver, images, variant, case):
    """Every resampler with every rule and normalisation (e.g. the PIL backend of transformers:
    PIL resize + numpy rescale/normalise)."""
    d, files = images
    rule, resample, norm = RULE[variant[0]], variant[1], variant[2]
    mn = MIN_HF if rule == 0 else MIN_SWIFT
    o = oracle_pipeline(files[case], rule, resample, norm, mn, MAX_PX)
    c = c_pipeline(driver, files[case], d / f"out_{case}_v", "hf", rule, resample, norm, mn, MAX_PX)
    _compare(c, o, f"{case}/{variant}")


def test_max_pixels_small_bound(driver, images):
    """The max_pixels branch (downscale to fit) with a small bound, so that both axes shrink a
    lot and every row can be compared: 1000x300 under 60000 px, 613x411 under 50000 px."""
    d, files = images
    for case, mx in (("wide_1000x300", 60000), ("jpeg_613x411", 50000), ("odd_333x517", 33000)):
        for path, (rule, resample, norm, _, _) in PATHS.items():
            mn = 1024
            o = oracle_pipeline(files[case], rule, resample, norm, mn, mx)
            c = c_pipeline(driver, files[case], d / f"out_{case}_max", path, rule, resample, norm, mn, mx)
            _compare(c, o, f"{case}/{path}/max={mx}")
            assert o[0].shape[0] * o[0].shape[1] <= mx


@pytest.mark.parametrize("path", ["hf", "swift"])
def test_huge_hits_max_pixels(driver, tmp_path, path):
    """A 5000x3750 photo (18.75 MP) with the released max_pixels 16777216: smart_resize's floor
    branch gives 4704x3520; the resized image is compared whole, the float rows on a sample of
    ~700 rows (the whole would be 400 MB twice)."""
    rng = np.random.default_rng(99)   # content: a smooth field upscaled by Pillow, plus noise (fast)
    small = Image.fromarray(smooth_noise(rng, 94, 125, 3), "RGB").resize((5000, 3750), Image.BILINEAR)
    a = np.asarray(small).astype(np.int16) + rng.integers(-24, 25, (3750, 5000, 3), dtype=np.int16)
    p = tmp_path / "huge.ppm"
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB").save(p)
    rule, resample, norm, mn, mx = PATHS[path]
    c_res, c_rows, c_grid = c_pipeline(driver, p, tmp_path / "huge_out", path, rule, resample, norm, mn, mx,
                                       row_stride=97)
    assert c_res.shape == (3520, 4704, 3) and c_grid == (1, 220, 294)
    n = 220 * 294
    sample = list(range(0, n, 97))
    assert c_rows.shape[0] == len(sample)
    o_res, o_rows, o_grid = oracle_pipeline(p, rule, resample, norm, mn, mx, rows_subset=sample)
    _compare((c_res, c_rows, c_grid), (o_res, o_rows, o_grid), f"huge/{path}")


def test_aspect_ratio_error(driver, tmp_path):
    """max/min > 200 is refused with transformers' message, a one-line error and exit 1."""
    p = make_image(tmp_path, "strip", 1, 250, "RGB")
    for path in ("hf", "swift"):
        rule, resample, norm, mn, mx = PATHS[path]
        o = oracle_pipeline(p, rule, resample, norm, mn, mx)
        assert o[0] == "E" and "absolute aspect ratio must be smaller than 200" in o[1]
        c = c_pipeline(driver, p, tmp_path / "strip_out", path, rule, resample, norm, mn, mx)
        assert c[0] == "E" and "absolute aspect ratio must be smaller than 200" in c[1], c
        assert c[1].count("\n") == 1 and c[1].startswith("qwen_img_driver: error: ")


def test_smart_resize_many(driver):
    """smart_resize on ~150000 queries (random, small, huge, exact multiples, the .5 roundings, the
    floor/ceil branches at their boundaries, several factors and bounds), both rules."""
    rng = random.Random(1234)
    queries = []
    bounds = [(32, 65536, 16777216), (32, 4096, 16777216), (28, 3136, 1003520), (32, 1024, 60000),
              (16, 256, 1 << 20), (32, 65536, 65536 * 4)]
    sizes = set()
    for n in range(1, 70):
        for m in (1, 2, 3, 15, 16, 17, 31, 32, 33, 47, 48, 49, 80, 100, 255, 256, 257):
            sizes.add((n, m))
            sizes.add((m, n))
    for _ in range(8000):
        sizes.add((rng.randint(1, 9000), rng.randint(1, 9000)))
    for _ in range(2000):
        k = rng.randint(1, 300)
        sizes.add((32 * k + 16, rng.randint(1, 5000)))   # exact .5 roundings
    for s in (4096, 4160, 4095, 4097, 8192, 6000, 5000, 4000, 3750, 1080, 1920, 16000, 12000):
        for t in (1, 2, 3, 80, 100, 3750, 4096, 4160, 5000, 8000, 16000):
            sizes.add((s, t))
    sizes = sorted(sizes)
    for rule in (0, 1):
        for f, mn, mx in bounds:
            for h, w in sizes:
                queries.append((rule, h, w, f, mn, mx))
    inp = "".join(f"{q[0]} {q[1]} {q[2]} {q[3]} {q[4]} {q[5]}\n" for q in queries)
    r = subprocess.run([str(driver), "smart"], input=inp, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(queries)
    bad, errors, empty, branches = [], 0, 0, {"max": 0, "min": 0, "round": 0}
    for q, line in zip(queries, lines):
        o = oracle_smart(*q)
        if o[0] == "E":
            errors += 1
            if not line.startswith("E absolute aspect ratio must be smaller than 200"):
                bad.append((q, line, o))
            continue
        c = tuple(map(int, line.split())) if not line.startswith("E") else line
        if 0 in o:   # qwen_vl_utils' floor branch has no max(factor, .): the Python gives an empty
            empty += 1  # side (the processor then fails); the C refuses it with a message
            if not (isinstance(c, str) and "gives an empty image" in c):
                bad.append((q, line, o))
        elif c != o:
            bad.append((q, line, o))
        rule, h, w, f, mn, mx = q
        hr, wr = round(h / f) * f, round(w / f) * f
        branches["max" if hr * wr > mx else "min" if hr * wr < mn else "round"] += 1
    assert not bad, f"{len(bad)} of {len(queries)} differ, e.g. {bad[:5]}"
    assert min(branches.values()) > 1000 and errors > 100, branches
    report(f"qwen image: smart_resize equal on {len(queries)} queries ({branches}, {errors} refused for aspect ratio, "
           f"{empty} empty sides refused)")


def test_resize_torch_port_arbitrary(driver, images, tmp_path):
    """The ATen uint8 path at arbitrary sizes (up, down, one axis, factor 1/7, 40x): equal to the
    port; and, as evidence that the two official resamplers are near-identical, it is within two
    levels of Pillow everywhere (one per pass; ATen's comment: "compatibility with PIL")."""
    _, files = images
    rng = random.Random(7)
    src = files["jpeg_613x411"]
    rgb = np.asarray(Image.open(src).convert("RGB"))
    sizes = [(613, 411), (1, 1), (2, 3), (88, 411), (613, 59), (17, 1000), (1226, 822), (300, 200), (87, 58)]
    sizes += [(rng.randint(1, 1500), rng.randint(1, 1000)) for _ in range(12)]
    total = differ = differ2 = 0
    for ow, oh in sizes:
        out = tmp_path / "r.rgb"
        r = run([driver, "resize", src, ow, oh, 1, out])
        assert r.returncode == 0, r.stderr
        c = np.fromfile(out, np.uint8).reshape(oh, ow, 3)
        o = aten_resize_uint8(rgb, ow, oh)
        assert np.array_equal(c, o), f"{ow}x{oh}: {int(np.count_nonzero(c != o))} bytes differ"
        pil = np.asarray(Image.open(src).convert("RGB").resize((ow, oh), Image.BICUBIC))
        d = np.abs(pil.astype(int) - c.astype(int))
        # each pass rounds differently by at most 1; the second pass can carry the first one's
        # difference through its (over-unity, negative-lobed) weights: at most 2 in all
        assert d.max() <= 2, f"{ow}x{oh}: torch path {d.max()} levels from Pillow"
        total += d.size
        differ += int(np.count_nonzero(d))
        differ2 += int(np.count_nonzero(d == 2))
        r = run([driver, "resize", src, ow, oh, 0, out])
        assert r.returncode == 0 and np.array_equal(np.fromfile(out, np.uint8).reshape(oh, ow, 3), pil)
    report(f"qwen image: torch-uint8 vs Pillow bicubic ({len(sizes)} sizes): {100 * differ / total:.2f}% of values "
           f"differ, {100 * differ2 / total:.4f}% by 2, none by more")


def _float_pass(img, axis, out_size):
    xmin, xsize, w, _ = aten_weights(img.shape[axis], out_size)
    s = np.moveaxis(img.astype(np.float64), axis, 0)
    acc = np.zeros((out_size,) + s.shape[1:])
    for j in range(w.shape[1]):
        valid = j < xsize
        acc += np.where(valid, w[:, j], 0.0)[:, None, None] * s[np.where(valid, xmin + j, 0)]
    return np.moveaxis(acc, 0, axis)


def test_port_weights_against_torch_kernel(images):
    """Cross-check of the port's index ranges and weights against a torch kernel Debian can run:
    torch 1.13's float antialiased bicubic computes the same bounds and filter (in float32,
    without the uint8 rounding between and after the passes); applying the port's double weights
    the same way gives its output to float32 precision. (Rounding it does NOT give the uint8
    kernel: that is the `up to 5 levels` difference of Debian's torchvision 0.14, which casts to
    float; reported below.)"""
    _, files = images
    rgb = np.asarray(Image.open(files["odd_333x517"]).convert("RGB"))
    worst = frac = 0.0
    for ow, oh in ((160, 224), (640, 1024), (96, 512), (700, 300), (333, 600), (1, 1)):
        t = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float()
        f = torch.nn.functional.interpolate(t, size=(oh, ow), mode="bicubic", align_corners=False, antialias=True)
        f = f[0].numpy().transpose(1, 2, 0).astype(np.float64)
        x = rgb
        if ow != rgb.shape[1]:
            x = _float_pass(x, 1, ow)
        if oh != rgb.shape[0]:
            x = _float_pass(x, 0, oh)
        # float32 weights and sums in torch: ~1e-5 relative; a wrong bound or weight is >= 0.1 level
        assert np.abs(f - x).max() < 0.02, (ow, oh, float(np.abs(f - x).max()))
        u = aten_resize_uint8(rgb, ow, oh)
        r = np.clip(np.round(f), 0, 255)
        worst = max(worst, float(np.abs(r - u).max()))
        frac = max(frac, float(np.mean(r != u)))
    report(f"qwen image: torch float AA bicubic (Debian's torchvision 0.14 route) vs the uint8 kernel: up to "
           f"{worst:.0f} levels, on up to {100 * frac:.0f}% of values")


def test_frame_sampling(driver):
    """8 frames by numpy.linspace + Python round (half to even), and the long side to 448 by
    truncation, as Q-ReAlign's qalign/scorer.py sample_frames."""
    lines, expect = [], []
    for nf in list(range(0, 60)) + [99, 100, 101, 149, 150, 151, 239, 240, 241, 299, 300, 1000, 7201, 123457]:
        for n in (1, 2, 3, 8, 16):
            lines.append(f"i {nf} {n}")
            expect.append(" ".join(str(int(round(i))) for i in np.linspace(0, max(nf - 1, 0), n)))
    rng = random.Random(3)
    sizes = [(1920, 1080), (1080, 1920), (1280, 720), (448, 448), (449, 300), (640, 480), (3840, 2160), (720, 1280),
             (10000, 1), (1, 10000), (447, 1000)] + [(rng.randint(1, 5000), rng.randint(1, 5000)) for _ in range(300)]
    for w, h in sizes:
        lines.append(f"s {w} {h} 448")
        resize_long = 448
        if max(w, h) > resize_long:
            s = resize_long / max(w, h)
            expect.append(f"{max(1, int(w * s))} {max(1, int(h * s))}")
        else:
            expect.append(f"{w} {h}")
    r = subprocess.run([str(driver), "frames"], input="\n".join(lines) + "\n", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = r.stdout.splitlines()
    bad = [(q, g, e) for q, g, e in zip(lines, got, expect) if g != e]
    assert len(got) == len(expect) and not bad, bad[:5]
