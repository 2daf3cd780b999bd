/* image_qwen.c - the Qwen3.5 (Q-ReAlign) image processor: smart_resize, the two bicubic
 * resamplers the official paths use, rescale + normalise, and the patchify into vision rows.
 * See image_qwen.h for the API and the two pixel paths; docs/qwen35-prompts.md for the
 * sources and the evidence.
 *
 * Contents (top-down):
 *   1. the released defaults
 *   2. smart_resize (transformers' and qwen_vl_utils' rules)
 *   3. ATen's uint8 antialiased bicubic (torchvision's resize of a uint8 tensor on CPU)
 *   4. resize / prepare
 *   5. normalise + patchify
 *   6. video frame sampling helpers
 *
 * Library code: never prints, exits or aborts; every failure returns -1 (or NULL) with a
 * one-line reason in err.
 */
#include "common.h"
#include "image_qwen.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Weights must round as the C++/Python they reproduce: no fused multiply-adds (GCC does not
 * contract in ISO C mode; clang would, within an expression, unless told not to). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* ========================================================================== */
/* 1. the released defaults                                                   */
/* ========================================================================== */

void qwen_prep_init(QwenVisionPrep *p, QwenPixelPath path) {
    memset(p, 0, sizeof *p);
    p->patch = 16;     /* preprocessor_config.json: patch_size */
    p->merge = 2;      /* merge_size */
    p->temporal = 2;   /* temporal_patch_size */
    for (int c = 0; c < 3; c++) p->mean[c] = p->std[c] = 0.5f; /* image_mean, image_std */
    p->max_pixels = 16777216; /* size.longest_edge; qwen_vl_utils: IMAGE_MAX_TOKEN_NUM 16384 * 32^2 */
    p->norm = QWEN_NORM_FUSED;
    if (path == QWEN_PATH_SWIFT) {
        p->min_pixels = 4096; /* qwen_vl_utils: IMAGE_MIN_TOKEN_NUM 4 * 32^2 */
        p->rule = QWEN_SMART_QWEN_VL_UTILS;
        p->resample = QWEN_RESAMPLE_PIL;
    } else {
        p->min_pixels = 65536; /* size.shortest_edge */
        p->rule = QWEN_SMART_TRANSFORMERS;
        p->resample = QWEN_RESAMPLE_TORCH;
    }
}

/* ========================================================================== */
/* 2. smart_resize                                                            */
/* ========================================================================== */

/* transformers, models/qwen2_vl/image_processing_qwen2_vl.py (5.x):
 *     if max(height, width) / min(height, width) > 200: raise ValueError(...)
 *     h_bar = round(height / factor) * factor
 *     w_bar = round(width / factor) * factor
 *     if h_bar * w_bar > max_pixels:
 *         beta = math.sqrt((height * width) / max_pixels)
 *         h_bar = max(factor, math.floor(height / beta / factor) * factor)
 *         w_bar = max(factor, math.floor(width / beta / factor) * factor)
 *     elif h_bar * w_bar < min_pixels:
 *         beta = math.sqrt(min_pixels / (height * width))
 *         h_bar = math.ceil(height * beta / factor) * factor
 *         w_bar = math.ceil(width * beta / factor) * factor
 * qwen_vl_utils/vision_process.py: h_bar = max(factor, round_by_factor(height, factor)) and the
 * floor branch is floor_by_factor(height / beta, factor) (no max). Python's round() of a float
 * rounds half to even: rint() in the default rounding mode. int / int in Python is the
 * correctly rounded quotient, as the double division of the (exact) converted integers. */
int qwen_smart_resize_rule(QwenSmartRule rule, int h, int w, int factor, long min_px, long max_px,
                           int *oh, int *ow, char *err, size_t errlen) {
    double hb, wb, beta;
    if (h < 1 || w < 1) return fail(err, errlen, "invalid image size %dx%d", w, h);
    if (factor < 1 || factor > 4096) return fail(err, errlen, "invalid resize factor %d", factor);
    if (min_px < 1 || max_px < 1 || min_px > max_px || max_px > 1073741824L)
        return fail(err, errlen, "invalid pixel bounds [%ld, %ld]", min_px, max_px);
    {
        double ratio = (double)(h > w ? h : w) / (double)(h > w ? w : h);
        if (ratio > 200.0)
            return fail(err, errlen, "absolute aspect ratio must be smaller than 200, got %g (%dx%d)", ratio, w,
                        h);
    }
    hb = rint((double)h / factor) * factor;
    wb = rint((double)w / factor) * factor;
    if (rule == QWEN_SMART_QWEN_VL_UTILS) {
        if (hb < factor) hb = factor;
        if (wb < factor) wb = factor;
    }
    if (hb * wb > (double)max_px) {
        beta = sqrt((double)((long long)h * w) / (double)max_px);
        hb = floor((double)h / beta / factor) * factor;
        wb = floor((double)w / beta / factor) * factor;
        if (rule == QWEN_SMART_TRANSFORMERS) {
            if (hb < factor) hb = factor;
            if (wb < factor) wb = factor;
        }
    } else if (hb * wb < (double)min_px) {
        beta = sqrt((double)min_px / (double)((long long)h * w));
        hb = ceil((double)h * beta / factor) * factor;
        wb = ceil((double)w * beta / factor) * factor;
    }
    if (hb < 1 || wb < 1) return fail(err, errlen, "smart_resize of %dx%d gives an empty image", w, h);
    if (hb > IMAGE_MAX_DIM || wb > IMAGE_MAX_DIM || hb * wb > (double)IMAGE_MAX_PIXELS)
        return fail(err, errlen, "smart_resize of %dx%d gives %.0fx%.0f: too large", w, h, wb, hb);
    *oh = (int)hb;
    *ow = (int)wb;
    return 0;
}

int qwen_smart_resize(int h, int w, int factor, long min_px, long max_px, int *oh, int *ow, char *err,
                      size_t errlen) {
    return qwen_smart_resize_rule(QWEN_SMART_TRANSFORMERS, h, w, factor, min_px, max_px, oh, ow, err, errlen);
}

/* ========================================================================== */
/* 3. ATen's antialiased bicubic on uint8                                     */
/* ========================================================================== */

/* torchvision.transforms.v2.functional.resize_image: for a uint8 tensor on CPU with BICUBIC,
 * _do_native_uint8_resize_on_cpu() is true, so the uint8 tensor goes to
 * torch.nn.functional.interpolate(mode="bicubic", antialias=True, align_corners=False) unconverted:
 * aten/src/ATen/native/cpu/UpSampleKernel.cpp, upsample_bicubic2d_aa_kernel_impl ->
 * upsample_avx_bilinear_bicubic_uint8 (AVX2, C <= 4) or separable_upsample_generic_Nd_kernel_impl
 * (otherwise); both compute the same integers:
 *   weights (HelperInterpBase::_compute_index_ranges_weights<double>, antialias=True):
 *     scale = input_size / output_size; support = (interp_size * 0.5) * scale if scale >= 1 else
 *     interp_size * 0.5 (interp_size 4); max_interp_size = ceil(support) * 2 + 1
 *     center = scale * (i + 0.5); invscale = scale >= 1 ? 1 / scale : 1
 *     xmin = max(int64(center - support + 0.5), 0)
 *     xsize = clamp(min(int64(center + support + 0.5), input_size) - xmin, 0, max_interp_size)
 *     w_j = aa_filter((j + xmin - center + 0.5) * invscale), normalised by their sum (if != 0)
 *     aa_filter: Keys' cubic with a = -0.5 ("compatibility with PIL")
 *   int16 (_compute_index_ranges_int16_weights), with wt_max the largest weight of the axis:
 *     for (precision = 0; precision < 22; ++precision)
 *         if ((int)(0.5 + wt_max * (1 << (precision + 1))) >= (1 << 15)) break;
 *     k_j = v < 0 ? (int)(-0.5 + v) : (int)(0.5 + v), v = w_j * (1 << precision)
 *   each pass (ImagingResampleHorizontal/VerticalConvolution8u, basic_loop_aa_*<uint8_t>):
 *     out = clamp((2^(precision-1) + sum_j k_j * in[xmin + j]) >> precision, 0, 255)
 *   horizontal pass first (only if the width changes) into a uint8 image, then vertical.
 * The weights are Pillow's (same filter, bounds and normalisation, evaluated in the same double
 * operations); only their fixed point differs: Pillow keeps 22 bits in int32. */

static double aten_cubic_aa_filter(double x) {
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0) return ((a + 2) * x - (a + 3)) * x * x + 1;          /* cubic_convolution1 */
    if (x < 2.0) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;     /* cubic_convolution2 */
    return 0.0;
}

typedef struct {
    int ksize;           /* max_interp_size */
    int precision;       /* weights_precision */
    int *xmin, *xsize;   /* [out] */
    int16_t *k;          /* [out][ksize] */
} AtenAxis;

static void aten_axis_free(AtenAxis *a) {
    free(a->xmin);
    free(a->xsize);
    free(a->k);
    memset(a, 0, sizeof *a);
}

static int aten_axis_init(AtenAxis *a, int in_size, int out_size, char *err, size_t errlen) {
    const double scale = (double)in_size / (double)out_size;
    const double support = scale >= 1.0 ? (4 * 0.5) * scale : 4 * 0.5;
    const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
    double *w = NULL, wt_max = 0.0;
    size_t nk;
    int p;

    memset(a, 0, sizeof *a);
    a->ksize = (int)ceil(support) * 2 + 1;
    if (!image_mul_size((size_t)out_size, (size_t)a->ksize, &nk) || nk > SIZE_MAX / sizeof(double))
        return fail(err, errlen, "resize weights too large");
    a->xmin = malloc((size_t)out_size * sizeof(int));
    a->xsize = malloc((size_t)out_size * sizeof(int));
    a->k = malloc(nk * sizeof(int16_t));
    w = malloc(nk * sizeof(double));
    if (!a->xmin || !a->xsize || !a->k || !w) {
        free(w);
        aten_axis_free(a);
        return fail(err, errlen, "out of memory");
    }
    for (int i = 0; i < out_size; i++) {
        const double center = scale * (i + 0.5);
        double total = 0.0, *wi = w + (size_t)i * (size_t)a->ksize;
        long long xmin = (long long)(center - support + 0.5), xsize;
        int j;
        if (xmin < 0) xmin = 0;
        xsize = (long long)(center + support + 0.5);
        if (xsize > in_size) xsize = in_size;
        xsize -= xmin;
        if (xsize < 0) xsize = 0;
        if (xsize > a->ksize) xsize = a->ksize;
        for (j = 0; j < xsize; j++) {
            double v = aten_cubic_aa_filter((j + xmin - center + 0.5) * invscale);
            wi[j] = v;
            total += v;
        }
        if (total != 0.0)
            for (j = 0; j < xsize; j++) {
                wi[j] /= total;
                if (wi[j] > wt_max) wt_max = wi[j];
            }
        for (; j < a->ksize; j++) wi[j] = 0.0;
        a->xmin[i] = (int)xmin;
        a->xsize[i] = (int)xsize;
    }
    for (p = 0; p < 22; ++p) {
        int next = (int)(0.5 + wt_max * (1 << (p + 1)));
        if (next >= (1 << 15)) break;
    }
    if (p < 1) { /* ATen asserts weights_precision > 0; cannot happen for normalised weights */
        free(w);
        aten_axis_free(a);
        return fail(err, errlen, "resize weights out of range");
    }
    a->precision = p;
    for (size_t q = 0; q < nk; q++) {
        double v = w[q] * (1 << p);
        a->k[q] = (int16_t)(v < 0 ? (int)(-0.5 + v) : (int)(0.5 + v));
    }
    free(w);
    return 0;
}

static inline uint8_t aten_clip(int32_t s, int precision) {
    if (s <= 0) return 0; /* (s >> precision) < 0 is clamped to 0 as well */
    s >>= precision;
    return s > 255 ? 255 : (uint8_t)s;
}

/* One horizontal pass: rows [0, h) of in (w_in pixels) to out (w_out pixels). */
static void aten_pass_h(const AtenAxis *a, const uint8_t *in, int w_in, int h, uint8_t *out, int w_out) {
    const int32_t half = 1 << (a->precision - 1);
    for (int y = 0; y < h; y++) {
        const uint8_t *row = in + (size_t)y * (size_t)w_in * 3;
        uint8_t *o = out + (size_t)y * (size_t)w_out * 3;
        for (int xx = 0; xx < w_out; xx++) {
            const int16_t *k = a->k + (size_t)xx * (size_t)a->ksize;
            const uint8_t *p = row + (size_t)a->xmin[xx] * 3;
            int32_t s0 = half, s1 = half, s2 = half;
            for (int j = 0; j < a->xsize[xx]; j++, p += 3) {
                s0 += p[0] * k[j];
                s1 += p[1] * k[j];
                s2 += p[2] * k[j];
            }
            o[3 * xx] = aten_clip(s0, a->precision);
            o[3 * xx + 1] = aten_clip(s1, a->precision);
            o[3 * xx + 2] = aten_clip(s2, a->precision);
        }
    }
}

/* One vertical pass: w pixels per row, h_out output rows. */
static void aten_pass_v(const AtenAxis *a, const uint8_t *in, int w, uint8_t *out, int h_out, int32_t *acc) {
    const int32_t half = 1 << (a->precision - 1);
    const size_t n = (size_t)w * 3;
    for (int yy = 0; yy < h_out; yy++) {
        const int16_t *k = a->k + (size_t)yy * (size_t)a->ksize;
        uint8_t *o = out + (size_t)yy * n;
        for (size_t i = 0; i < n; i++) acc[i] = half;
        for (int j = 0; j < a->xsize[yy]; j++) {
            const uint8_t *row = in + (size_t)(a->xmin[yy] + j) * n;
            const int32_t kj = k[j];
            for (size_t i = 0; i < n; i++) acc[i] += row[i] * kj;
        }
        for (size_t i = 0; i < n; i++) o[i] = aten_clip(acc[i], a->precision);
    }
}

static int resize_aten(const Image *in, int ow, int oh, Image *out, char *err, size_t errlen) {
    const int need_h = ow != in->w, need_v = oh != in->h;
    AtenAxis ax, ay;
    Image mid = {0, 0, NULL};
    int32_t *acc = NULL;

    memset(&ax, 0, sizeof ax);
    memset(&ay, 0, sizeof ay);
    out->w = out->h = 0;
    out->rgb = NULL;
    if (need_h && aten_axis_init(&ax, in->w, ow, err, errlen)) goto fail;
    if (need_v && aten_axis_init(&ay, in->h, oh, err, errlen)) goto fail;
    if (image_alloc(out, ow, oh, err, errlen)) goto fail;
    if (!need_h && !need_v) {
        memcpy(out->rgb, in->rgb, (size_t)ow * (size_t)oh * 3);
    } else if (!need_v) {
        aten_pass_h(&ax, in->rgb, in->w, in->h, out->rgb, ow);
    } else {
        const Image *src = in;
        if (need_h) {
            if (image_alloc(&mid, ow, in->h, err, errlen)) goto fail;
            aten_pass_h(&ax, in->rgb, in->w, in->h, mid.rgb, ow);
            src = &mid;
        }
        acc = malloc((size_t)ow * 3 * sizeof(int32_t));
        if (!acc) {
            fail(err, errlen, "out of memory");
            goto fail;
        }
        aten_pass_v(&ay, src->rgb, ow, out->rgb, oh, acc);
    }
    free(acc);
    image_free(&mid);
    aten_axis_free(&ax);
    aten_axis_free(&ay);
    return 0;
fail:
    free(acc);
    image_free(&mid);
    image_free(out);
    aten_axis_free(&ax);
    aten_axis_free(&ay);
    return -1;
}

/* ========================================================================== */
/* 4. resize / prepare                                                        */
/* ========================================================================== */

int qwen_resize(const Image *in, int ow, int oh, QwenResample r, Image *out, char *err, size_t errlen) {
    out->w = out->h = 0;
    out->rgb = NULL;
    if (!in || !in->rgb || in->w < 1 || in->h < 1) return fail(err, errlen, "no input image");
    if (ow < 1 || oh < 1) return fail(err, errlen, "invalid output size %dx%d", ow, oh);
    if (r == QWEN_RESAMPLE_PIL) return image_resize_bicubic(in, ow, oh, out, err, errlen);
    if (r == QWEN_RESAMPLE_TORCH) return resize_aten(in, ow, oh, out, err, errlen);
    return fail(err, errlen, "unknown resampler %d", (int)r);
}

static int check_prep(const QwenVisionPrep *p, char *err, size_t errlen) {
    if (!p) return fail(err, errlen, "no image processor parameters");
    if (p->patch < 1 || p->patch > 256 || p->merge < 1 || p->merge > 16 || p->temporal < 1 || p->temporal > 16)
        return fail(err, errlen, "invalid patch geometry (patch %d, merge %d, temporal %d)", p->patch, p->merge,
                    p->temporal);
    for (int c = 0; c < 3; c++)
        if (!(p->std[c] != 0.0f) || !isfinite(p->std[c]) || !isfinite(p->mean[c]))
            return fail(err, errlen, "invalid image mean/std");
    return 0;
}

int qwen_prepare(const Image *in, const QwenVisionPrep *p, Image *out, char *err, size_t errlen) {
    int oh, ow;
    out->w = out->h = 0;
    out->rgb = NULL;
    if (check_prep(p, err, errlen)) return -1;
    if (!in || !in->rgb || in->w < 1 || in->h < 1) return fail(err, errlen, "no input image");
    if (qwen_smart_resize_rule(p->rule, in->h, in->w, p->patch * p->merge, p->min_pixels, p->max_pixels, &oh,
                               &ow, err, errlen))
        return -1;
    return qwen_resize(in, ow, oh, p->resample, out, err, errlen);
}

/* ========================================================================== */
/* 5. normalise + patchify                                                    */
/* ========================================================================== */

/* The normalised value of every uint8 level, per channel.
 * QWEN_NORM_FUSED, transformers 5 TorchvisionBackend._rescale_and_normalize:
 *     image_mean = torch.tensor(image_mean) * (1.0 / rescale_factor)   # float32 tensor
 *     image_std = torch.tensor(image_std) * (1.0 / rescale_factor)
 *     images = tvF.normalize(images.to(torch.float32), image_mean, image_std)  # (x - m) / s
 *   1.0 / (1/255) in double is 255 within 1 ulp, 255.0f once converted for the float32 product.
 * QWEN_NORM_NUMPY, PilBackend (image_transforms.rescale / normalize):
 *     image = (image.astype(np.float64) * scale).astype(np.float32)
 *     image = (image - np.float32(mean)) / np.float32(std) */
static void norm_table(const QwenVisionPrep *p, float table[3][256]) {
    for (int c = 0; c < 3; c++) {
        if (p->norm == QWEN_NORM_NUMPY) {
            const float m = p->mean[c], s = p->std[c];
            for (int v = 0; v < 256; v++) {
                float r = (float)((double)v * (1.0 / 255.0));
                table[c][v] = (r - m) / s;
            }
        } else {
            const float k = (float)(1.0 / (1.0 / 255.0));
            const float m = p->mean[c] * k, s = p->std[c] * k;
            for (int v = 0; v < 256; v++) table[c][v] = ((float)v - m) / s;
        }
    }
}

/* HF (image_processing_qwen2_vl.py, torchvision backend; the PIL backend is the same in numpy):
 *     patches = patches.view(B, grid_t, temporal_patch_size, C, grid_h // merge_size, merge_size,
 *                            patch_size, grid_w // merge_size, merge_size, patch_size)
 *     patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
 *     flatten_patches = patches.reshape(B, grid_t * grid_h * grid_w, C * temporal * patch * patch)
 * after a single image was repeated to temporal_patch_size frames. */
float *qwen_patchify(const Image *resized, const QwenVisionPrep *p, int *gt, int *gh, int *gw, char *err,
                     size_t errlen) {
    float table[3][256];
    int P, M, T, GH, GW;
    size_t rowlen, nrows, n, r;
    float *rows;

    if (check_prep(p, err, errlen)) return NULL;
    if (!resized || !resized->rgb || resized->w < 1 || resized->h < 1) {
        fail(err, errlen, "no input image");
        return NULL;
    }
    P = p->patch;
    M = p->merge;
    T = p->temporal;
    if (resized->w % (P * M) || resized->h % (P * M)) {
        fail(err, errlen, "image %dx%d is not a multiple of %d on both sides", resized->w, resized->h, P * M);
        return NULL;
    }
    GH = resized->h / P;
    GW = resized->w / P;
    rowlen = (size_t)3 * (size_t)T * (size_t)P * (size_t)P;
    nrows = (size_t)GH * (size_t)GW;
    if (!image_mul_size(nrows, rowlen, &n) || n > SIZE_MAX / sizeof(float)) {
        fail(err, errlen, "too many patches (%dx%d)", GW, GH);
        return NULL;
    }
    rows = malloc(n * sizeof(float));
    if (!rows) {
        fail(err, errlen, "out of memory (%zu patch values)", n);
        return NULL;
    }
    norm_table(p, table);
    r = 0;
    for (int by = 0; by < GH / M; by++)
        for (int bx = 0; bx < GW / M; bx++)
            for (int my = 0; my < M; my++)
                for (int mx = 0; mx < M; mx++, r++) {
                    const int py = by * M + my, px = bx * M + mx;
                    float *row = rows + r * rowlen;
                    for (int c = 0; c < 3; c++) {
                        float *dst = row + (size_t)c * (size_t)T * (size_t)P * (size_t)P;
                        for (int y = 0; y < P; y++) {
                            const uint8_t *src =
                                resized->rgb + ((size_t)(py * P + y) * (size_t)resized->w + (size_t)px * P) * 3 + c;
                            float *d = dst + (size_t)y * P;
                            for (int x = 0; x < P; x++) d[x] = table[c][src[3 * x]];
                        }
                        for (int t = 1; t < T; t++) /* the still image, repeated over the temporal pair */
                            memcpy(dst + (size_t)t * P * P, dst, (size_t)P * P * sizeof(float));
                    }
                }
    *gt = 1;
    *gh = GH;
    *gw = GW;
    return rows;
}

float *qwen_pixel_rows(const uint8_t *rgb, int w, int h, const QwenVisionPrep *p, int *gt, int *gh, int *gw,
                       char *err, size_t errlen) {
    Image in = {w, h, (uint8_t *)rgb}, resized;
    float *rows;
    if (!rgb || w < 1 || h < 1) {
        fail(err, errlen, "no input image");
        return NULL;
    }
    if (qwen_prepare(&in, p, &resized, err, errlen)) return NULL;
    rows = qwen_patchify(&resized, p, gt, gh, gw, err, errlen);
    image_free(&resized);
    return rows;
}

/* ========================================================================== */
/* 6. video frames                                                            */
/* ========================================================================== */

/* qalign/scorer.py sample_frames:
 *     idx = [int(round(i)) for i in np.linspace(0, max(nframes - 1, 0), n_frames)]
 * numpy.linspace: step = (stop - start) / (num - 1); y = arange(num) * step + start, the last
 * element set to stop (if the step is 0, y = arange(num) / div * delta, all 0 here). */
void qwen_frame_indices(long nframes, int n, long *idx) {
    const double stop = nframes > 1 ? (double)(nframes - 1) : 0.0;
    if (n < 1) return;
    if (n == 1) {
        idx[0] = 0;
        return;
    }
    {
        const double step = stop / (double)(n - 1);
        for (int i = 0; i < n; i++) {
            double y = (step == 0.0) ? 0.0 : (double)i * step + 0.0;
            if (i == n - 1) y = stop;
            idx[i] = (long)rint(y);
        }
    }
}

/*     if max(w, h) > resize_long:
 *         s = resize_long / max(w, h)
 *         img = img.resize((max(1, int(w * s)), max(1, int(h * s)))) */
void qwen_frame_size(int w, int h, int long_side, int *ow, int *oh) {
    const int m = w > h ? w : h;
    *ow = w;
    *oh = h;
    if (m > long_side) {
        const double s = (double)long_side / (double)m;
        int a = (int)((double)w * s), b = (int)((double)h * s);
        *ow = a < 1 ? 1 : a;
        *oh = b < 1 ? 1 : b;
    }
}
