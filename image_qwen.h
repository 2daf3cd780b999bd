/* image_qwen.h - the Qwen2-VL/Qwen3-VL/Qwen3.5 image processor (Q-ReAlign), on top of image.h.
 *
 * What the released processor computes for one image (preprocessor_config.json of Qwen3.5:
 * patch 16, merge 2, temporal 2, min_pixels 65536, max_pixels 16777216, mean = std = 0.5):
 *
 *   1. smart_resize: a size (oh, ow), both multiples of factor = patch * merge = 32, with
 *      oh * ow within [min_pixels, max_pixels] and the aspect ratio kept as well as possible;
 *   2. a bicubic resize of the uint8 RGB image to ow x oh;
 *   3. rescale by 1/255 and normalise with mean/std (float32);
 *   4. patchify: rows of C * T * P * P = 3 * 2 * 16 * 16 = 1536 floats, one per 16 x 16 patch,
 *      the patches of each 2 x 2 merge block consecutive, a still image repeated over the
 *      temporal pair; grid (t, h, w) = (1, oh / 16, ow / 16).
 *
 * Two official paths differ in steps 1-2 (see docs/qwen35-prompts.md, section 3):
 *   QWEN_PATH_HF     transformers 5 AutoProcessor (README Quick Run, pyiqa `qrealign`):
 *                    transformers' smart_resize with min/max from preprocessor_config, then
 *                    torchvision's resize of a uint8 tensor (BICUBIC, antialias=True), which on
 *                    CPU is ATen's `_upsample_bicubic2d_aa` uint8 kernel: Pillow's filter and
 *                    support, but int16 weights at a per-axis precision (QWEN_RESAMPLE_TORCH).
 *   QWEN_PATH_SWIFT  Q-ReAlign's qalign/scorer.py (ms-swift): qwen_vl_utils.fetch_image's
 *                    smart_resize (min 4 * 32^2 = 4096, max 16384 * 32^2 = 16777216) and Pillow's
 *                    Image.resize(BICUBIC) (QWEN_RESAMPLE_PIL, bit-exact with Pillow 9.x); the
 *                    processor then runs with do_resize=False.
 * Both then normalise as transformers 5's torchvision backend does: mean and std are scaled by
 * 255 (float32) and each value is (x - 255 mean) / (255 std) in float32 (QWEN_NORM_FUSED).
 * QWEN_NORM_NUMPY is the PIL backend's arithmetic instead: float32(x * (1/255) in float64),
 * then (r - mean) / std in float32 (the two differ by at most 1 ulp).
 *
 * Every function returns 0 (or a pointer) on success and -1 (or NULL) on failure with a one-line
 * reason in err[0..errlen); nothing here prints, exits or aborts.
 */
#ifndef QALIGN_IMAGE_QWEN_H
#define QALIGN_IMAGE_QWEN_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"

typedef enum {
    QWEN_RESAMPLE_PIL = 0,   /* Pillow Image.resize(BICUBIC): 22-bit fixed point (image_resize_bicubic) */
    QWEN_RESAMPLE_TORCH = 1  /* ATen _upsample_bicubic2d_aa on uint8: int16 weights, per-axis precision */
} QwenResample;

typedef enum {
    QWEN_SMART_TRANSFORMERS = 0, /* transformers' models/qwen2_vl smart_resize */
    QWEN_SMART_QWEN_VL_UTILS = 1 /* qwen_vl_utils.vision_process.smart_resize (used by ms-swift) */
} QwenSmartRule;

typedef enum {
    QWEN_NORM_FUSED = 0, /* (x - 255 mean) / (255 std) in float32 (transformers 5, torchvision backend) */
    QWEN_NORM_NUMPY = 1  /* float32(x * (1/255)) then (r - mean) / std in float32 (PIL backend) */
} QwenNorm;

typedef enum { QWEN_PATH_HF = 0, QWEN_PATH_SWIFT = 1 } QwenPixelPath;

typedef struct {
    int patch;        /* patch_size: 16 */
    int merge;        /* merge_size (spatial_merge_size): 2 */
    int temporal;     /* temporal_patch_size: 2 (a still image is repeated this many times) */
    long min_pixels;  /* size.shortest_edge: 65536 (HF) / 4096 (swift) */
    long max_pixels;  /* size.longest_edge: 16777216 */
    float mean[3];    /* image_mean: 0.5 0.5 0.5 */
    float std[3];     /* image_std: 0.5 0.5 0.5 */
    QwenSmartRule rule;
    QwenResample resample;
    QwenNorm norm;
} QwenVisionPrep;

/* Fill *p with the released Qwen3.5 values for one of the two official paths (above). */
void qwen_prep_init(QwenVisionPrep *p, QwenPixelPath path);

/* smart_resize (transformers' rule), in the same double arithmetic as the Python:
 *   h' = round(h / f) * f (round half to even), w' likewise;
 *   if h' * w' > max_px: b = sqrt(h * w / max_px), h' = max(f, floor(h / b / f) * f), w' likewise;
 *   else if h' * w' < min_px: b = sqrt(min_px / (h * w)), h' = ceil(h * b / f) * f, w' likewise.
 * Fails (as the Python raises) when max(h, w) / min(h, w) > 200, and on a result that is empty or
 * larger than IMAGE_MAX_DIM / IMAGE_MAX_PIXELS. Results in *oh, *ow. */
int qwen_smart_resize(int h, int w, int factor, long min_px, long max_px, int *oh, int *ow,
                      char *err, size_t errlen);
/* The same for either rule (QWEN_SMART_QWEN_VL_UTILS: h' = max(f, round(h / f) * f) first, and
 * the floor branch without max(f, .)). */
int qwen_smart_resize_rule(QwenSmartRule rule, int h, int w, int factor, long min_px, long max_px,
                           int *oh, int *ow, char *err, size_t errlen);

/* Resize to ow x oh with either resampler. Same size is a copy. */
int qwen_resize(const Image *in, int ow, int oh, QwenResample r, Image *out, char *err, size_t errlen);

/* Steps 1-2: smart_resize with p's rule and bounds (factor = patch * merge), then p's resampler. */
int qwen_prepare(const Image *in, const QwenVisionPrep *p, Image *out, char *err, size_t errlen);

/* Steps 3-4 on an image already of the smart size (both sides multiples of patch * merge):
 * returns malloc'ed rows [gt * gh * gw][3 * temporal * patch * patch] (free() them), grid in
 * *gt (= 1), *gh = h / patch, *gw = w / patch. Row order: merge block (by, bx) row-major over
 * (gh / merge, gw / merge), inside a block (my, mx) row-major; inside a row the index is
 * ((c * temporal + t) * patch + y) * patch + x, the same pixels for every t. */
float *qwen_patchify(const Image *resized, const QwenVisionPrep *p, int *gt, int *gh, int *gw,
                     char *err, size_t errlen);

/* All four steps on raw RGB24 pixels (h rows of w * 3 bytes). */
float *qwen_pixel_rows(const uint8_t *rgb, int w, int h, const QwenVisionPrep *p, int *gt, int *gh,
                       int *gw, char *err, size_t errlen);

/* --- video frames as Q-ReAlign samples them (qalign/scorer.py sample_frames) ------------- */

/* idx[i] = round(linspace(0, max(nframes - 1, 0), n)[i]) with numpy's linspace (i * step + 0,
 * step = (nframes - 1) / (n - 1), the last one exactly nframes - 1) and Python's round (half to
 * even). n >= 1; for n == 1 idx[0] = 0. */
void qwen_frame_indices(long nframes, int n, long *idx);

/* The frame size after the long-side cap: unchanged if max(w, h) <= long_side, else
 * s = long_side / max(w, h) and (max(1, int(w * s)), max(1, int(h * s))) (truncation). */
void qwen_frame_size(int w, int h, int long_side, int *ow, int *oh);

#endif
