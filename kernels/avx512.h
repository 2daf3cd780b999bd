/* kernels/avx512.h - the kernel contract (kernels.h) for x86-64 with AVX-512 F/BW/DQ/VL.
 *
 * Included by kernels.c when the compiler targets AVX-512 (-march=native on such a CPU,
 * -march=x86-64-v4, -march=skylake-avx512, ...). Uses, where the compiler has them:
 *   AVX512-VNNI  vpdpbusd for the int8 tiles (q8_0 / q4_1); without it the same tiles use
 *                vpmaddubsw + vpmaddwd (AVX512-BW): 16-bit pair sums that cannot overflow,
 *                since q8_0 is multiplied as |q| x (x with q's sign) (Skylake-SP/X, ...)
 *   AVX512-BF16  vdpbf16ps for bf16 x bf16 tiles and the ViT's attention with bf16 products;
 *                without it bf16 weights meet f32 activations (widened in the tile)
 * Everything else (f32 tiles, softmax, layernorm, SiLU, the quantiser, f32 attention)
 * needs only AVX-512 F/BW/DQ/VL. */
#include <immintrin.h>

#define QA_AVX512 1 /* this family (for the tests) */

#if defined(__AVX512VNNI__)
#define QA_AVX512_VNNI 1
#endif
#if defined(__AVX512BF16__)
#define QA_AVX512_BF16 1
#endif

/* Rows per register tile, by activation kind. */
#define TILE_ROWS_Q8 6  /* 2 groups x 6 rows of int32 + float accumulators (4 was 40% slower) */
#define TILE_ROWS_F 8   /* 2 groups x 8 rows of float accumulators */
#define ATT_ROWS 6      /* query rows per work item in attention (<= ATT_SCRATCH_ROWS) */

/* exp(x) for 16 floats: x = n ln2 + r, |r| <= ln2/2, degree-7 Taylor polynomial for e^r,
 * 2^n by vscalefps (which also gives 0 and inf at the ends). Relative error < 2e-7. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f)); /* also turns -inf into a finite value */
    x = _mm512_min_ps(x, _mm512_set1_ps(89.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}
static inline __m512 quick_gelu512(__m512 x) {
    __m512 e = exp512(_mm512_mul_ps(x, _mm512_set1_ps(-1.702f)));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}
static inline __m512 silu512(__m512 x) {
    __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}
static inline __mmask16 tail_mask(int n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u); }

/* --- elementwise, softmax, layernorm, the quantiser ----------------------------------- */

static void add_avx512(float *x, const float *y, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_add_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    for (; i < n; i++) x[i] += y[i];
}

/* a = silu(a) * b, 16 values at a time (by_16: the tail the same way) */
static void silu_mul16_avx512(float *a, const float *b) {
    _mm512_storeu_ps(a, _mm512_mul_ps(silu512(_mm512_loadu_ps(a)), _mm512_loadu_ps(b)));
}
static void silu_mul_avx512(float *a, const float *b, size_t n) { by_16(a, b, n, silu_mul16_avx512); }
/* a = a * (1 / (1 + exp(-b))) */
static void sigmoid_mul16_avx512(float *a, const float *b) {
    __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_loadu_ps(b)));
    __m512 sg = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    _mm512_storeu_ps(a, _mm512_mul_ps(_mm512_loadu_ps(a), sg));
}
static void sigmoid_mul_avx512(float *a, const float *b, size_t n) { by_16(a, b, n, sigmoid_mul16_avx512); }
/* kernels.h conv_silu_row: 16 channels at a time, each tap a multiply then an add (not an
 * FMA: the plain loop's sum, bit for bit), the tail masked */
static void conv_silu_row_avx512(float *out, const float *in, size_t ldi, const float *w, int C, int K, int j0) {
    for (int c = 0; c < C; c += 16) {
        __mmask16 m = tail_mask(C - c);
        __m512 acc = _mm512_setzero_ps();
        for (int j = j0; j < K; j++) {
            __m512 x = _mm512_maskz_loadu_ps(m, in - (size_t)(K - 1 - j) * ldi + c);
            acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + (size_t)j * C + c), x));
        }
        _mm512_mask_storeu_ps(out + c, m, silu512(acc));
    }
}
static void gelu_tanh16_avx512(float *a, const float *unused) {
    __m512 x = _mm512_loadu_ps(a), x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    __m512 u = _mm512_mul_ps(_mm512_set1_ps(-1.5957691216057308f), _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), x3, x));
    _mm512_storeu_ps(a, _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), exp512(u))));
}
static void gelu_tanh_avx512(float *x, size_t n) { by_16(x, x, n, gelu_tanh16_avx512); }

static void softmax_avx512(float *x, int n) {
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
    if (i < n) vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(n - i), x + i));
    __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax)), vsum = _mm512_setzero_ps();
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), mx));
        _mm512_storeu_ps(x + i, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mx));
        _mm512_mask_storeu_ps(x + i, m, e);
        vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(m, e));
    }
    __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
    if (i < n) _mm512_mask_storeu_ps(x + i, tail_mask(n - i), _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(n - i), x + i), inv));
}

static void layernorm_avx512(float *out, const float *x, const float *w, const float *b, int T, int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C;
        float *ot = out + (size_t)t * C;
        /* two passes in 16 f32 lanes: mean, then the mean of squared deviations */
        __m512 s = _mm512_setzero_ps();
        int i = 0;
        for (; i + 16 <= C; i += 16) s = _mm512_add_ps(s, _mm512_loadu_ps(xt + i));
        if (i < C) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(tail_mask(C - i), xt + i));
        float mean = _mm512_reduce_add_ps(s) / (float)C;
        __m512 vm = _mm512_set1_ps(mean), v = _mm512_setzero_ps();
        for (i = 0; i + 16 <= C; i += 16) {
            __m512 d = _mm512_sub_ps(_mm512_loadu_ps(xt + i), vm);
            v = _mm512_fmadd_ps(d, d, v);
        }
        if (i < C) {
            __m512 d = _mm512_maskz_sub_ps(tail_mask(C - i), _mm512_maskz_loadu_ps(tail_mask(C - i), xt + i), vm);
            v = _mm512_fmadd_ps(d, d, v);
        }
        __m512 rstd = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(v) / (float)C + eps));
        for (i = 0; i < C; i += 16) {
            __mmask16 m = tail_mask(C - i);
            __m512 y = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xt + i), vm), rstd);
            y = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(m, w + i), _mm512_maskz_loadu_ps(m, b + i));
            _mm512_mask_storeu_ps(ot + i, m, y);
        }
    }
}

static void quantize_row_avx512(int8_t *q, float *d, int32_t *c, float *s, const float *x, int K) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int b = 0; b < K / QBLOCK; b++) {
        __m512 x0 = _mm512_loadu_ps(x + b * QBLOCK), x1 = _mm512_loadu_ps(x + b * QBLOCK + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, x0), _mm512_andnot_ps(sign, x1)));
        float db = amax / 127.0f, id = db > 0.0f ? 1.0f / db : 0.0f;
        __m512 vid = _mm512_set1_ps(id);
        /* cvtps rounds to nearest even, like nearbyintf; |x*id| <= 127 needs no clamp
         * except for rounding of amax*id itself, which the saturating pack handles */
        __m512 p0 = _mm512_mul_ps(x0, vid), p1 = _mm512_mul_ps(x1, vid);
        /* a NaN product becomes 0 and the block's scale NaN, as in the reference */
        __mmask16 n0 = _mm512_cmp_ps_mask(p0, p0, _CMP_UNORD_Q), n1 = _mm512_cmp_ps_mask(p1, p1, _CMP_UNORD_Q);
        __m512i q0 = _mm512_maskz_cvtps_epi32((__mmask16)~n0, p0), q1 = _mm512_maskz_cvtps_epi32((__mmask16)~n1, p1);
        if (n0 | n1) db = NAN;
        q0 = _mm512_max_epi32(_mm512_min_epi32(q0, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
        q1 = _mm512_max_epi32(_mm512_min_epi32(q1, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
        _mm_storeu_si128((__m128i *)(q + b * QBLOCK), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(q + b * QBLOCK + 16), _mm512_cvtepi32_epi8(q1));
        int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        d[b] = db;
        c[b] = -128 * sum;
        s[b] = db * (float)sum;
    }
}

/* The same in blocks of 256 (ACT_Q8_256), with the sum of each 32 values for MQ4_256. */
static void quantize_row_256_avx512(int8_t *q, float *d, int32_t *c, int32_t *c4, const float *x, int K) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int b = 0; b < q256_blocks(K); b++) {
        int k0 = b * QBLOCK_256, len = q256_len(K, b);
        __m512 vmax = _mm512_setzero_ps();
        for (int i = 0; i < len; i += 16) vmax = _mm512_max_ps(vmax, _mm512_andnot_ps(sign, _mm512_loadu_ps(x + k0 + i)));
        float amax = _mm512_reduce_max_ps(vmax);
        float db = amax / 127.0f, id = db > 0.0f ? 1.0f / db : 0.0f;
        __m512 vid = _mm512_set1_ps(id);
        int sum = 0, nan = 0;
        for (int j = 0; j < len / QBLOCK; j++) {
            const float *xj = x + k0 + j * QBLOCK;
            __m512 p0 = _mm512_mul_ps(_mm512_loadu_ps(xj), vid), p1 = _mm512_mul_ps(_mm512_loadu_ps(xj + 16), vid);
            __mmask16 n0 = _mm512_cmp_ps_mask(p0, p0, _CMP_UNORD_Q), n1 = _mm512_cmp_ps_mask(p1, p1, _CMP_UNORD_Q);
            __m512i q0 = _mm512_maskz_cvtps_epi32((__mmask16)~n0, p0), q1 = _mm512_maskz_cvtps_epi32((__mmask16)~n1, p1);
            nan |= n0 | n1; /* NaN products: 0, and the block's scale NaN, as in the reference */
            q0 = _mm512_max_epi32(_mm512_min_epi32(q0, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
            q1 = _mm512_max_epi32(_mm512_min_epi32(q1, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
            _mm_storeu_si128((__m128i *)(q + k0 + j * QBLOCK), _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(q + k0 + j * QBLOCK + 16), _mm512_cvtepi32_epi8(q1));
            int sub = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            c4[k0 / QBLOCK + j] = -8 * sub;
            sum += sub;
        }
        d[b] = nan ? NAN : db;
        c[b] = -128 * sum;
    }
}

/* --- matmul tiles -------------------------------------------------------------------- */

/* Store 16 outputs of a group (masked at the matrix's last row) with bias and epilogue. */
static inline void store16(float *o, __m512 v, const float *bias, int col, int epi, __mmask16 m) {
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + col));
    if (epi == EPI_GELU) v = quick_gelu512(v);
    if (epi == EPI_ADD) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, o));
    _mm512_mask_storeu_ps(o, m, v);
}

/* The accumulators of a tile: rows [t0, t0 + R) (only the first nt are real) x groups
 * g0.. (G of them). */
#define TILE_STORE(acc)                                                                                     \
    for (int g = 0; g < G; g++) {                                                                           \
        int col = (g0 + g) * PACK_ROWS;                                                                     \
        __mmask16 m = tail_mask(W->rows - col);                                                             \
        for (int r = 0; r < nt; r++) store16(out + (size_t)(t0 + r) * ldo + col, acc[g][r], bias, col, epi, m); \
    }

/* f32 activations x MF32 weights (a column of 16 rows per load) or MBF16 weights (a column
 * pair of 16 rows per load, widened to f32 by a shift and a mask). */
static inline __attribute__((always_inline)) void tile_f32_avx512(float *out, int ldo, const Acts *a, const Tensor *W,
                                                                  const float *bias, int epi, int t0, int nt, int g0,
                                                                  const int G) {
    enum { R = TILE_ROWS_F };
    int K = W->cols;
    __m512 acc[2][R];
    for (int g = 0; g < G; g++)
        for (int r = 0; r < R; r++) acc[g][r] = _mm512_setzero_ps();
    const float *x = (const float *)acts_tile(a, t0);
    if (W->dtype == DT_MF32) {
        const float *w0 = mf32_group(W, g0), *w1 = w0 + (size_t)K * PACK_ROWS;
        for (int k = 0; k < K; k++, x += R, w0 += PACK_ROWS, w1 += PACK_ROWS) {
            __m512 wv0 = _mm512_loadu_ps(w0), wv1 = G > 1 ? _mm512_loadu_ps(w1) : wv0;
            for (int r = 0; r < R; r++) {
                __m512 xv = _mm512_set1_ps(x[r]);
                acc[0][r] = _mm512_fmadd_ps(wv0, xv, acc[0][r]);
                if (G > 1) acc[1][r] = _mm512_fmadd_ps(wv1, xv, acc[1][r]);
            }
        }
    } else {
        const uint32_t *w0 = mbf16_group(W, g0), *w1 = w0 + (size_t)(K / 2) * PACK_ROWS;
        const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
        for (int kp = 0; kp < K / 2; kp++, x += 2 * R, w0 += PACK_ROWS, w1 += PACK_ROWS) {
            __m512i v0 = _mm512_loadu_si512(w0), v1 = G > 1 ? _mm512_loadu_si512(w1) : v0;
            __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), o0 = _mm512_castsi512_ps(_mm512_and_si512(v0, hi));
            __m512 e1 = _mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)), o1 = _mm512_castsi512_ps(_mm512_and_si512(v1, hi));
            for (int r = 0; r < R; r++) {
                /* interleaved f32 activations: column 2kp at x[r], 2kp+1 at x[R + r] */
                __m512 xe = _mm512_set1_ps(x[r]), xo = _mm512_set1_ps(x[R + r]);
                acc[0][r] = _mm512_fmadd_ps(o0, xo, _mm512_fmadd_ps(e0, xe, acc[0][r]));
                if (G > 1) acc[1][r] = _mm512_fmadd_ps(o1, xo, _mm512_fmadd_ps(e1, xe, acc[1][r]));
            }
        }
    }
    TILE_STORE(acc)
}

#ifdef QA_AVX512_BF16
/* bf16 activations x MBF16 weights: vdpbf16ps sums a column pair per instruction. */
static inline __attribute__((always_inline)) void tile_bf16_avx512(float *out, int ldo, const Acts *a, const Tensor *W,
                                                                   const float *bias, int epi, int t0, int nt, int g0,
                                                                   const int G) {
    enum { R = TILE_ROWS_F };
    int K = W->cols;
    __m512 acc[2][R];
    for (int g = 0; g < G; g++)
        for (int r = 0; r < R; r++) acc[g][r] = _mm512_setzero_ps();
    const uint32_t *x = acts_tile(a, t0);
    const uint32_t *w0 = mbf16_group(W, g0), *w1 = w0 + (size_t)(K / 2) * PACK_ROWS;
    for (int kp = 0; kp < K / 2; kp++, x += R, w0 += PACK_ROWS, w1 += PACK_ROWS) {
        __m512bh wv0 = (__m512bh)_mm512_loadu_si512(w0), wv1 = G > 1 ? (__m512bh)_mm512_loadu_si512(w1) : wv0;
        for (int r = 0; r < R; r++) {
            __m512bh xv = (__m512bh)_mm512_set1_epi32((int)x[r]);
            acc[0][r] = _mm512_dpbf16_ps(acc[0][r], wv0, xv);
            if (G > 1) acc[1][r] = _mm512_dpbf16_ps(acc[1][r], wv1, xv);
        }
    }
    TILE_STORE(acc)
}
#endif

/* s += per 32-bit lane, the dot product of 4 weight bytes w and 4 activation bytes x (s8).
 * With VNNI: vpdpbusd, w unsigned (MQ8_0's stored q + 128: the tile starts s at
 * -128 * sum(x) to undo it; MQ4_1's nibbles). Without: vpmaddubsw adds pairs of u8 x s8
 * products in 16 bits, which would saturate at 255 * 127 * 2, so MQ8_0 comes as q (s8) and
 * is multiplied as |q| x (x with q's sign), at most 127 * 127 * 2; nibbles are safe as
 * they are. Then vpmaddwd sums the pairs into the lane. */
#ifdef QA_AVX512_VNNI
#define Q8_SIGNED 0 /* MQ8_0 bytes go in as stored */
static inline __m512i dot4_avx512(__m512i s, __m512i w, __m512i x, const int q8) {
    (void)q8;
    return _mm512_dpbusd_epi32(s, w, x);
}
#else
#define Q8_SIGNED 1 /* MQ8_0 bytes go in as q = stored ^ 0x80 */
static inline __m512i dot4_avx512(__m512i s, __m512i w, __m512i x, const int q8) {
    if (q8) {
        x = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
        w = _mm512_abs_epi8(w);
    }
    return _mm512_add_epi32(s, _mm512_madd_epi16(_mm512_maddubs_epi16(w, x), _mm512_set1_epi16(1)));
}
#endif

/* int8 activations x MQ8_0 / MQ4_1 weights: per block of 32 columns, the int32 sums of the
 * 8 quads, scaled into the float accumulators (d_w d_x, and MQ4_1's m_w d_x sum x). */
static inline __attribute__((always_inline)) void tile_q_avx512(float *out, int ldo, const Acts *a, const Tensor *W,
                                                                const float *bias, int epi, int t0, int nt, int g0,
                                                                const int G, const int q4) {
    enum { R = TILE_ROWS_Q8 };
    int K = W->cols, nb = K / QBLOCK;
    size_t bbytes = mq_block_bytes(W->dtype);
    __m512 acc[2][R];
    for (int g = 0; g < G; g++)
        for (int r = 0; r < R; r++) acc[g][r] = _mm512_setzero_ps();
    const uint32_t *x = acts_tile(a, t0);
    size_t tb = acts_tile_blocks(a, t0);
    const float *xd = a->xdp + tb, *xs = a->xsp + tb;
    const int32_t *xc = a->xcp + tb;
    const uint8_t *b0 = mq_block(W, g0, 0), *b1 = b0 + (size_t)nb * bbytes;
    const __m512i low4 = _mm512_set1_epi8(15), top = _mm512_set1_epi8((char)0x80);
    for (int b = 0; b < nb; b++, b0 += bbytes, b1 += bbytes, x += 8 * R, xd += R, xc += R, xs += R) {
        __m512i s[2][R];
        for (int r = 0; r < R; r++) {
            __m512i c = q4 || Q8_SIGNED ? _mm512_setzero_si512() : _mm512_set1_epi32(xc[r]);
            s[0][r] = c;
            if (G > 1) s[1][r] = c;
        }
        for (int j = 0; j < 8; j++) { /* quad j: columns 4j..4j+3 of the block */
            __m512i w0, w1 = _mm512_setzero_si512();
            if (q4) {
                __m512i v0 = _mm512_loadu_si512(mq4_chunk(b0, j / 2));
                w0 = (j % 2) ? _mm512_and_si512(_mm512_srli_epi16(v0, 4), low4) : _mm512_and_si512(v0, low4);
                if (G > 1) {
                    __m512i v1 = _mm512_loadu_si512(mq4_chunk(b1, j / 2));
                    w1 = (j % 2) ? _mm512_and_si512(_mm512_srli_epi16(v1, 4), low4) : _mm512_and_si512(v1, low4);
                }
            } else {
                w0 = _mm512_loadu_si512(mq8_quad(b0, j));
                if (G > 1) w1 = _mm512_loadu_si512(mq8_quad(b1, j));
                if (Q8_SIGNED) w0 = _mm512_xor_si512(w0, top), w1 = _mm512_xor_si512(w1, top);
            }
            for (int r = 0; r < R; r++) {
                __m512i xv = _mm512_set1_epi32((int)x[j * R + r]);
                s[0][r] = dot4_avx512(s[0][r], w0, xv, !q4);
                if (G > 1) s[1][r] = dot4_avx512(s[1][r], w1, xv, !q4);
            }
        }
        __m512 d0 = _mm512_loadu_ps(q4 ? mq4_d(b0) : mq8_d(b0));
        __m512 d1 = G > 1 ? _mm512_loadu_ps(q4 ? mq4_d(b1) : mq8_d(b1)) : d0;
        for (int r = 0; r < R; r++) {
            __m512 dx = _mm512_set1_ps(xd[r]);
            acc[0][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[0][r]), _mm512_mul_ps(d0, dx), acc[0][r]);
            if (G > 1) acc[1][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[1][r]), _mm512_mul_ps(d1, dx), acc[1][r]);
        }
        if (q4) {
            __m512 m0 = _mm512_loadu_ps(mq4_m(b0)), m1 = G > 1 ? _mm512_loadu_ps(mq4_m(b1)) : m0;
            for (int r = 0; r < R; r++) {
                __m512 sx = _mm512_set1_ps(xs[r]);
                acc[0][r] = _mm512_fmadd_ps(m0, sx, acc[0][r]);
                if (G > 1) acc[1][r] = _mm512_fmadd_ps(m1, sx, acc[1][r]);
            }
        }
    }
    TILE_STORE(acc)
}

#if defined(__GNUC__) && !defined(__clang__)
#define UNROLL8 _Pragma("GCC unroll 8")
#else
#define UNROLL8
#endif
/* int8 activations x MQ8_256 / MQ4_256 weights: per block of up to 256 columns the int32
 * sums run without any float step; then one convert, d_w d_x and FMA per accumulator.
 * MQ4_256: per sub-block of 32 columns the sum (nibbles q + 8, started at -8 sum x so that
 * it is sum q x, which fits 16 bits: |q x| <= 8 x 127 x 32) is scaled by the row's s8
 * sub-scale into the block's int32 sum with one vpdpwssd (the sub-scale sign-extended to
 * 16 bits in the low half of each lane, zero in the high half). */
/* The tiles' q4_256 weight streams are prefetched this far ahead too: with a few rows a tile
 * (a batch of answers decoding together) they are as bound by reading as matvec is. */
#define TILE_AHEAD 1024
static inline __attribute__((always_inline)) void tile_q256_avx512(float *out, int ldo, const Acts *a, const Tensor *W,
                                                                  const float *bias, int epi, int t0, int nt, int g0,
                                                                  const int G, const int q4) {
    enum { R = TILE_ROWS_Q8 };
    int K = W->cols, nb = q256_blocks(K);
    size_t gbytes = q256_group_bytes(W->dtype, K);
    /* the float totals stay in memory (touched once per block): the registers hold the
     * int32 sums (and MQ4_256's sub-block sums) */
    float tot[2][R][16] __attribute__((aligned(64)));
    for (int g = 0; g < G; g++)
        for (int r = 0; r < R; r++) _mm512_store_ps(tot[g][r], _mm512_setzero_ps());
    const uint32_t *x = acts_tile(a, t0);
    size_t tb = acts_tile_blocks(a, t0);
    const float *xd = a->xdp + tb;
    const int32_t *xc = a->xcp + tb, *xc4 = a->xc4p + acts_tile_subs(a, t0);
    const __m512i low4 = _mm512_set1_epi8(15), top = _mm512_set1_epi8((char)0x80), lo16 = _mm512_set1_epi32(0xffff);
    for (int b = 0; b < nb; b++, xd += R, xc += R) {
        int len = q256_len(K, b);
        const uint8_t *b0 = q256_block(W, g0, b), *b1 = b0 + gbytes;
        __m512i s[2][R];
        for (int r = 0; r < R; r++) {
            __m512i c = q4 || Q8_SIGNED ? _mm512_setzero_si512() : _mm512_set1_epi32(xc[r]);
            s[0][r] = c;
            if (G > 1) s[1][r] = c;
        }
        if (!q4) {
            /* 32 columns per iteration: a fixed inner count keeps the sums in registers */
            for (int j0 = 0; j0 < len / 4; j0 += 8, x += 8 * R)
                UNROLL8 for (int j = 0; j < 8; j++) { /* quad j0 + j: columns 4(j0+j).. of the block */
                    __m512i w0 = _mm512_loadu_si512(q8_256_quad(b0, j0 + j)), w1 = _mm512_setzero_si512();
                    if (G > 1) w1 = _mm512_loadu_si512(q8_256_quad(b1, j0 + j));
                    if (Q8_SIGNED) w0 = _mm512_xor_si512(w0, top), w1 = _mm512_xor_si512(w1, top);
                    for (int r = 0; r < R; r++) {
                        __m512i xv = _mm512_set1_epi32((int)x[j * R + r]);
                        s[0][r] = dot4_avx512(s[0][r], w0, xv, 1);
                        if (G > 1) s[1][r] = dot4_avx512(s[1][r], w1, xv, 1);
                    }
                }
        } else {
            for (int j = 0; j < len / QBLOCK; j++, xc4 += R, x += 8 * R) { /* sub-block j: chunks 4j..4j+3 */
                __m512i u[2][R];
                for (int r = 0; r < R; r++) {
                    u[0][r] = _mm512_set1_epi32(xc4[r]);
                    if (G > 1) u[1][r] = u[0][r];
                }
                UNROLL8 for (int cc = 0; cc < 4; cc++) {
                    _mm_prefetch((const char *)q4_256_chunk(b0, 4 * j + cc) + TILE_AHEAD, _MM_HINT_T0);
                    if (G > 1) _mm_prefetch((const char *)q4_256_chunk(b1, 4 * j + cc) + TILE_AHEAD, _MM_HINT_T0);
                    __m512i v0 = _mm512_loadu_si512(q4_256_chunk(b0, 4 * j + cc)), v1 = _mm512_setzero_si512();
                    if (G > 1) v1 = _mm512_loadu_si512(q4_256_chunk(b1, 4 * j + cc));
                    UNROLL8 for (int h = 0; h < 2; h++) { /* low nibbles: quad 2cc, high: quad 2cc+1 */
                        __m512i w0 = h ? _mm512_and_si512(_mm512_srli_epi16(v0, 4), low4) : _mm512_and_si512(v0, low4);
                        __m512i w1 = h ? _mm512_and_si512(_mm512_srli_epi16(v1, 4), low4) : _mm512_and_si512(v1, low4);
                        for (int r = 0; r < R; r++) {
                            __m512i xv = _mm512_set1_epi32((int)x[(2 * cc + h) * R + r]);
                            u[0][r] = dot4_avx512(u[0][r], w0, xv, 0);
                            if (G > 1) u[1][r] = dot4_avx512(u[1][r], w1, xv, 0);
                        }
                    }
                }
                __m512i sc0 = _mm512_and_si512(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q4_256_sc(b0, len, j))), lo16);
                __m512i sc1 = G > 1 ? _mm512_and_si512(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q4_256_sc(b1, len, j))), lo16) : sc0;
                for (int r = 0; r < R; r++) {
#ifdef QA_AVX512_VNNI
                    s[0][r] = _mm512_dpwssd_epi32(s[0][r], u[0][r], sc0);
                    if (G > 1) s[1][r] = _mm512_dpwssd_epi32(s[1][r], u[1][r], sc1);
#else
                    s[0][r] = _mm512_add_epi32(s[0][r], _mm512_madd_epi16(u[0][r], sc0));
                    if (G > 1) s[1][r] = _mm512_add_epi32(s[1][r], _mm512_madd_epi16(u[1][r], sc1));
#endif
                }
            }
        }
        __m512 d0 = _mm512_loadu_ps(q256_d(b0, W->dtype, len)), d1 = G > 1 ? _mm512_loadu_ps(q256_d(b1, W->dtype, len)) : d0;
        for (int r = 0; r < R; r++) {
            __m512 dx = _mm512_set1_ps(xd[r]);
            _mm512_store_ps(tot[0][r], _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[0][r]), _mm512_mul_ps(d0, dx), _mm512_load_ps(tot[0][r])));
            if (G > 1)
                _mm512_store_ps(tot[1][r], _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[1][r]), _mm512_mul_ps(d1, dx), _mm512_load_ps(tot[1][r])));
        }
    }
    __m512 acc[2][R];
    for (int g = 0; g < G; g++)
        for (int r = 0; r < R; r++) acc[g][r] = _mm512_load_ps(tot[g][r]);
    TILE_STORE(acc)
}

/* The contract's tile(): G (1 or 2) and the weight type as constants for the compiler. */
static int tile_avx512(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt,
                       int g0, int ng) {
    if (W->dtype == DT_MF32 || (W->dtype == DT_MBF16 && a->kind == ACT_F32)) {
        if (ng == 2) tile_f32_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 2);
        else tile_f32_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 1);
        return 1;
    }
#ifdef QA_AVX512_BF16
    if (W->dtype == DT_MBF16 && a->kind == ACT_BF16) {
        if (ng == 2) tile_bf16_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 2);
        else tile_bf16_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 1);
        return 1;
    }
#endif
    if ((W->dtype == DT_MQ8_0 || W->dtype == DT_MQ4_1) && a->kind == ACT_Q8) {
        int q4 = W->dtype == DT_MQ4_1;
        if (ng == 2 && q4) tile_q_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 2, 1);
        else if (ng == 2) tile_q_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 2, 0);
        else if (q4) tile_q_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 1, 1);
        else tile_q_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 1, 0);
        return 1;
    }
    if ((W->dtype == DT_MQ8_256 || W->dtype == DT_MQ4_256) && a->kind == ACT_Q8_256) {
        int q4 = W->dtype == DT_MQ4_256;
        if (ng == 2 && q4) tile_q256_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 2, 1);
        else if (ng == 2) tile_q256_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 2, 0);
        else if (q4) tile_q256_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 1, 1);
        else tile_q256_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 1, 0);
        return 1;
    }
    return 0;
}

/* --- the gated delta rule on 16 state columns (kernels.h delta_rule16) -------------------
 * One pass over the state block per token: row i's update for token t (st = decay st +
 * k_i delta) is followed at once by its products for token t + 1 (a_k += k'_i st, a_q +=
 * q'_i st), so each row is loaded and stored once per token; four accumulators each (rows
 * i mod 4), added at the end; a_k, a_q for the first token by a pass of their own. */
static void delta_rule16_avx512(float *out, int ldo, float *st, const float *q, const float *k, int ldqk, const float *v,
                                int ldv, const float *decay, const float *beta, const float *qk, int T, int dk, int w) {
    if (T <= 0) return;
    __mmask16 mw = tail_mask(w);
    __m512 ak[4], aq[4];
    for (int u = 0; u < 4; u++) ak[u] = aq[u] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 4 <= dk; i += 4)
        for (int u = 0; u < 4; u++) {
            __m512 sr = _mm512_loadu_ps(st + (size_t)(i + u) * 16);
            ak[u] = _mm512_fmadd_ps(_mm512_set1_ps(k[i + u]), sr, ak[u]);
            aq[u] = _mm512_fmadd_ps(_mm512_set1_ps(q[i + u]), sr, aq[u]);
        }
    for (; i < dk; i++) {
        __m512 sr = _mm512_loadu_ps(st + (size_t)i * 16);
        ak[0] = _mm512_fmadd_ps(_mm512_set1_ps(k[i]), sr, ak[0]);
        aq[0] = _mm512_fmadd_ps(_mm512_set1_ps(q[i]), sr, aq[0]);
    }
    for (int t = 0; t < T; t++) {
        int next = t + 1 < T;
        const float *kt = k + (size_t)t * ldqk, *kn = next ? kt + ldqk : kt, *qn = next ? q + (size_t)(t + 1) * ldqk : q;
        __m512 dec = _mm512_set1_ps(decay[t]);
        __m512 sk = _mm512_add_ps(_mm512_add_ps(ak[0], ak[1]), _mm512_add_ps(ak[2], ak[3]));
        __m512 sq = _mm512_add_ps(_mm512_add_ps(aq[0], aq[1]), _mm512_add_ps(aq[2], aq[3]));
        __m512 vv = _mm512_maskz_loadu_ps(mw, v + (size_t)t * ldv);
        __m512 delta = _mm512_mul_ps(_mm512_fnmadd_ps(dec, sk, vv), _mm512_set1_ps(beta[t]));
        _mm512_mask_storeu_ps(out + (size_t)t * ldo, mw, _mm512_fmadd_ps(_mm512_set1_ps(qk[t]), delta, _mm512_mul_ps(dec, sq)));
        for (int u = 0; u < 4; u++) ak[u] = aq[u] = _mm512_setzero_ps();
        i = 0;
        for (; i + 4 <= dk; i += 4)
            for (int u = 0; u < 4; u++) {
                float *p = st + (size_t)(i + u) * 16;
                __m512 sr = _mm512_fmadd_ps(_mm512_set1_ps(kt[i + u]), delta, _mm512_mul_ps(dec, _mm512_loadu_ps(p)));
                _mm512_storeu_ps(p, sr);
                if (next) {
                    ak[u] = _mm512_fmadd_ps(_mm512_set1_ps(kn[i + u]), sr, ak[u]);
                    aq[u] = _mm512_fmadd_ps(_mm512_set1_ps(qn[i + u]), sr, aq[u]);
                }
            }
        for (; i < dk; i++) {
            float *p = st + (size_t)i * 16;
            __m512 sr = _mm512_fmadd_ps(_mm512_set1_ps(kt[i]), delta, _mm512_mul_ps(dec, _mm512_loadu_ps(p)));
            _mm512_storeu_ps(p, sr);
            if (next) {
                ak[0] = _mm512_fmadd_ps(_mm512_set1_ps(kn[i]), sr, ak[0]);
                aq[0] = _mm512_fmadd_ps(_mm512_set1_ps(qn[i]), sr, aq[0]);
            }
        }
    }
}

/* --- a few activation rows (decode: a token at a time, for one answer or a few) ----------
 * A tile multiplies TILE_ROWS_Q8 rows whatever nt is, so for one row it would do six times
 * the integer work and keep two weight streams, and for 8 rows (8 answers stepped together)
 * it would read every weight twice; decoding is bound by reading the weights, so
 * matvec_avx512 reads each group's weights once for all the rows (up to MATVEC_ROWS), G
 * groups' streams at once, and takes the rows' int8 values straight from xq (no interleaved
 * copy). The integer sums are exact and the float steps per block are the tile's (tot =
 * fma(float(s), d_w d_x, tot), then store16), so a row's outputs are the same bits as in a
 * tile of several rows, whatever the number of rows stepped together. */
/* Each group's weights are read in order, G streams at once; a software prefetch this many
 * bytes ahead in each stream made one-row matmuls 1.7-2.7x faster on the KVM Sapphire Rapids
 * this was written on (bench/matvec.c, q4_256, one thread, a shared machine: 2.7-4.9 GB/s
 * without, 8.4-9.1 with 1024): the hardware prefetchers alone did not keep four streams
 * going. With the kernel's present form (thread CPU time, best pass, load average 3.3-4.1),
 * one row q4_256 / q8_256: 1024 bytes 14.1-14.5 / 17.0 GB/s, 2048 14.9-15.3 / 17.7, 3072
 * 15.3 / 18.0, 4096 14.7 / 17.1; 8 rows 4.8 -> 5.2-5.3 / 10.1 -> 10.2-10.5. (T1, into L2 only,
 * was no better.) On the AMD EPYC Zen 5 KVM (2 cores shared, load average 5.7-6.7), q4_256
 * one thread: 2048 bytes 1 row 23.4-28.1 GB/s, 8 rows 12.9-15.8; 4096 20.7-29.6, 15.5-16.3:
 * no difference past the noise. (-DMATVEC_AHEAD=N to try another distance.) */
#ifndef MATVEC_AHEAD
#define MATVEC_AHEAD 2048
#endif
/* rows [0, R) x groups [g0, g0 + G); the int32 sums of every row and group stay in registers
 * (G R <= 16, see MATVEC_G: q8_256's block sums, MQ4_256's sub-block sums), MQ4_256's block
 * sums and the float totals in memory (touched once per sub-block, per block) */
static inline __attribute__((always_inline)) void matvec_q256_avx512(float *out, int ldo, const Acts *a, const Tensor *W,
                                                                    const float *bias, int epi, int g0, const int G,
                                                                    const int R, const int q4) {
    int K = W->cols, nb = q256_blocks(K);
    size_t gbytes = q256_group_bytes(W->dtype, K);
    const int8_t *xq = a->xq;
    const __m512i low4 = _mm512_set1_epi8(15), top = _mm512_set1_epi8((char)0x80), lo16 = _mm512_set1_epi32(0xffff);
    float tot[4][MATVEC_ROWS][16] __attribute__((aligned(64)));
    int32_t s4[4][MATVEC_ROWS][16] __attribute__((aligned(64))); /* MQ4_256: the block's int32 sums */
    for (int g = 0; g < G; g++)
        for (int r = 0; r < R; r++) _mm512_store_ps(tot[g][r], _mm512_setzero_ps());
    for (int b = 0; b < nb; b++) {
        int len = q256_len(K, b), k0 = b * QBLOCK_256;
        const uint8_t *blk[4];
        __m512i s[4][MATVEC_ROWS];
        for (int g = 0; g < G; g++) {
            blk[g] = q256_block(W, g0, b) + (size_t)g * gbytes;
            for (int r = 0; r < R; r++) {
                s[g][r] = q4 || Q8_SIGNED ? _mm512_setzero_si512() : _mm512_set1_epi32(a->xc[(size_t)r * nb + b]);
                if (q4) _mm512_store_si512(s4[g][r], s[g][r]);
            }
        }
        if (!q4) {
            for (int j = 0; j < len / 4; j++) { /* quad j: columns k0 + 4j .. */
                __m512i w[4];
                for (int g = 0; g < G; g++) {
                    _mm_prefetch((const char *)q8_256_quad(blk[g], j) + MATVEC_AHEAD, _MM_HINT_T0);
                    w[g] = _mm512_loadu_si512(q8_256_quad(blk[g], j));
                    if (Q8_SIGNED) w[g] = _mm512_xor_si512(w[g], top);
                }
                for (int r = 0; r < R; r++) {
                    int32_t xw;
                    memcpy(&xw, xq + (size_t)r * K + k0 + 4 * j, 4);
                    __m512i xv = _mm512_set1_epi32(xw);
                    for (int g = 0; g < G; g++) s[g][r] = dot4_avx512(s[g][r], w[g], xv, 1);
                }
            }
        } else {
            for (int j = 0; j < len / QBLOCK; j++) { /* sub-block j: chunks 4j..4j+3 */
                __m512i u[4][MATVEC_ROWS];
                for (int r = 0; r < R; r++) {
                    __m512i c = _mm512_set1_epi32(a->xc4[(size_t)r * (K / QBLOCK) + k0 / QBLOCK + j]);
                    for (int g = 0; g < G; g++) u[g][r] = c;
                }
                for (int g = 0; g < G; g++) /* the sub-block's 256 bytes, MATVEC_AHEAD further on */
                    for (int c = 0; c < 4; c++) _mm_prefetch((const char *)q4_256_chunk(blk[g], 4 * j + c) + MATVEC_AHEAD, _MM_HINT_T0);
                UNROLL8 for (int cc = 0; cc < 4; cc++) {
                    __m512i wl[4], wh[4];
                    for (int g = 0; g < G; g++) {
                        __m512i v = _mm512_loadu_si512(q4_256_chunk(blk[g], 4 * j + cc));
                        wl[g] = _mm512_and_si512(v, low4);
                        wh[g] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
                    }
                    for (int r = 0; r < R; r++) {
                        const int8_t *xr = xq + (size_t)r * K + k0 + QBLOCK * j + 8 * cc;
                        int32_t xl, xh;
                        memcpy(&xl, xr, 4), memcpy(&xh, xr + 4, 4);
                        __m512i vl = _mm512_set1_epi32(xl), vh = _mm512_set1_epi32(xh);
                        for (int g = 0; g < G; g++) {
                            u[g][r] = dot4_avx512(u[g][r], wl[g], vl, 0);
                            u[g][r] = dot4_avx512(u[g][r], wh[g], vh, 0);
                        }
                    }
                }
                for (int g = 0; g < G; g++) {
                    __m512i sc = _mm512_and_si512(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q4_256_sc(blk[g], len, j))), lo16);
                    for (int r = 0; r < R; r++) {
                        __m512i sm = _mm512_load_si512(s4[g][r]);
#ifdef QA_AVX512_VNNI
                        _mm512_store_si512(s4[g][r], _mm512_dpwssd_epi32(sm, u[g][r], sc));
#else
                        _mm512_store_si512(s4[g][r], _mm512_add_epi32(sm, _mm512_madd_epi16(u[g][r], sc)));
#endif
                    }
                }
            }
        }
        if (q4)
            for (int g = 0; g < G; g++)
                for (int r = 0; r < R; r++) s[g][r] = _mm512_load_si512(s4[g][r]);
        for (int g = 0; g < G; g++) {
            __m512 d = _mm512_loadu_ps(q256_d(blk[g], W->dtype, len));
            for (int r = 0; r < R; r++) {
                __m512 dx = _mm512_set1_ps(a->xd[(size_t)r * nb + b]);
                _mm512_store_ps(tot[g][r], _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[g][r]), _mm512_mul_ps(d, dx), _mm512_load_ps(tot[g][r])));
            }
        }
    }
    for (int g = 0; g < G; g++) {
        int col = (g0 + g) * PACK_ROWS;
        for (int r = 0; r < R; r++)
            store16(out + (size_t)r * ldo + col, _mm512_load_ps(tot[g][r]), bias, col, epi, tail_mask(W->rows - col));
    }
}

/* R rows (a constant for the compiler), groups [g0, g0 + ng) in runs of G: 16 int32 sums in
 * registers at most (G R <= 16; MQ4_256 has the unpacked nibbles besides, so G R <= 8 up to
 * 2 rows); G = 4 where that allows (four streams), else 2 (each x value loaded serves two
 * groups). With 8 rows MQ4_256 is bound by the dot products, not by reading: about 4.5-4.9
 * GB/s against 14.3-14.5 for one row (bench/matvec.c, one thread, the Sapphire Rapids KVM,
 * load average 1.4-2.4); keeping its block sums in memory and G = 2 made 5-8 rows ~8% faster. */
#define MATVEC_G(R, q4) ((q4) ? ((R) <= 2 ? 4 : 2) : ((R) <= 4 ? 4 : 2))
#define MATVEC_RUNS(R, q4)                                                                                        \
    for (int g = g0; g < g0 + ng;) {                                                                              \
        int left = g0 + ng - g;                                                                                   \
        if (left >= MATVEC_G(R, q4)) matvec_q256_avx512(out, ldo, a, W, bias, epi, g, MATVEC_G(R, q4), R, q4), g += MATVEC_G(R, q4); \
        else if (left >= 2 && MATVEC_G(R, q4) > 2) matvec_q256_avx512(out, ldo, a, W, bias, epi, g, 2, R, q4), g += 2; \
        else matvec_q256_avx512(out, ldo, a, W, bias, epi, g, 1, R, q4), g += 1;                                  \
    }
#define MATVEC_ROWS_CASE(R)                                                                                       \
    case R:                                                                                                       \
        if (q4) { MATVEC_RUNS(R, 1) } else { MATVEC_RUNS(R, 0) }                                                  \
        break;

/* The contract's matvec(): rows [0, a->T) (a->T <= MATVEC_ROWS), groups [g0, g0 + ng), ng <= 4. */
static int matvec_avx512(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int g0, int ng) {
    if (a->T < 1 || a->T > MATVEC_ROWS || a->kind != ACT_Q8_256 || (W->dtype != DT_MQ8_256 && W->dtype != DT_MQ4_256)) return 0;
    int q4 = W->dtype == DT_MQ4_256;
    switch (a->T) {
    MATVEC_ROWS_CASE(1)
    MATVEC_ROWS_CASE(2)
    MATVEC_ROWS_CASE(3)
    MATVEC_ROWS_CASE(4)
    MATVEC_ROWS_CASE(5)
    MATVEC_ROWS_CASE(6)
    MATVEC_ROWS_CASE(7)
    MATVEC_ROWS_CASE(8)
    default: return 0;
    }
    return 1;
}
#undef MATVEC_ROWS_CASE
#undef MATVEC_RUNS
#undef MATVEC_G

/* --- attention ------------------------------------------------------------------------ */

/* o[r][0..HC*16) = sum_j p[r][j] v[j]   for R rows of probabilities (stride ps) */
static inline __attribute__((always_inline)) void att_pv_avx512(float *o, int ldo, const float *p, size_t ps, const float *v,
                                                               int ldkv, int n, const int R, const int HC) {
    __m512 acc[8][8];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < HC; c++) acc[r][c] = _mm512_setzero_ps();
    for (int j = 0; j < n; j++) {
        __m512 vv[8];
        for (int c = 0; c < HC; c++) vv[c] = _mm512_loadu_ps(v + (size_t)j * ldkv + 16 * c);
        for (int r = 0; r < R; r++) {
            __m512 pj = _mm512_set1_ps(p[(size_t)r * ps + j]);
            for (int c = 0; c < HC; c++) acc[r][c] = _mm512_fmadd_ps(pj, vv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < HC; c++) _mm512_storeu_ps(o + (size_t)r * ldo + 16 * c, acc[r][c]);
}

/* PV for rows r0.. of the block, with constant row and column counts for the compiler */
#define PV_CALL(nr, hc) att_pv_avx512(o + (size_t)r0 * ldo, ldo, S + (size_t)r0 * Tk16, Tk16, vh, hd, nmax, nr, hc)
#define PV_ROWS(nr, hc)                                                                                      \
    switch (nr) {                                                                                            \
    case 1: PV_CALL(1, hc); break; case 2: PV_CALL(2, hc); break; case 3: PV_CALL(3, hc); break;             \
    case 4: PV_CALL(4, hc); break; case 5: PV_CALL(5, hc); break; default: PV_CALL(6, hc); break;            \
    }
#define PV_COLS(hc)                                                                                          \
    switch (hc) {                                                                                            \
    case 1: PV_CALL(1, 1); break; case 2: PV_CALL(1, 2); break; case 3: PV_CALL(1, 3); break;                 \
    case 5: PV_CALL(1, 5); break; case 6: PV_CALL(1, 6); break; default: PV_CALL(1, 7); break;               \
    }

static int attention_avx512(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv, int Tq, int Tk,
                            int H, int KVH, int hd, int causal, int q_offset, float *scratch, size_t scratch_stride,
                            float *kt) {
    if (hd % 16 || (hd > 128 && hd != 256)) return 0;
    /* keys transposed per kv head: kt[kh][d][j], j padded to 16, so that 16 keys' scores
     * for one query are one FMA chain over d */
    size_t Tk16 = pad16((size_t)Tk);
    /* and values packed per kv head, vp[kh][j][d], so a head's values are contiguous */
    float *vp = kt + (size_t)KVH * hd * Tk16;
#pragma omp parallel for schedule(static)
    for (int kh = 0; kh < KVH; kh++) {
        for (int j0 = 0; j0 < (int)Tk16; j0 += 16) /* 16 keys at a time: reads rows, writes lines */
            for (int d = 0; d < hd; d++) {
                float *row = kt + ((size_t)kh * hd + d) * Tk16 + j0;
                for (int jj = 0; jj < 16; jj++) row[jj] = j0 + jj < Tk ? k[(size_t)(j0 + jj) * ldkv + (size_t)kh * hd + d] : 0.0f;
            }
        for (int j = 0; j < Tk; j++) memcpy(vp + ((size_t)kh * Tk + j) * hd, v + (size_t)j * ldkv + (size_t)kh * hd, (size_t)hd * sizeof(float));
    }
    float scale = 1.0f / sqrtf((float)hd);
    int group = H / KVH, blocks = (Tq + ATT_ROWS - 1) / ATT_ROWS;
#pragma omp parallel for collapse(2) schedule(dynamic, 4)
    for (int h = 0; h < H; h++)
        for (int ib = 0; ib < blocks; ib++) {
            int i0 = ib * ATT_ROWS, R = Tq - i0 < ATT_ROWS ? Tq - i0 : ATT_ROWS, kh = h / group;
            int nmax = causal ? i0 + R - 1 + q_offset + 1 : Tk; /* keys any row of the block sees */
            float *S = scratch + (size_t)kernel_thread_id() * scratch_stride;
            const float *ktb = kt + (size_t)kh * hd * Tk16;
            /* scores: S[r][j] = (scale * q[i0+r]) . k[j]; the block's queries, scaled and
             * transposed to qt[d][r] (rows past R zero), are broadcast from one place, and
             * each d feeds ATT_ROWS x 64 keys of accumulators */
            float qt[256 * ATT_ROWS];
            for (int d = 0; d < hd; d++)
                for (int r = 0; r < ATT_ROWS; r++) qt[d * ATT_ROWS + r] = r < R ? q[(size_t)(i0 + r) * ldq + (size_t)h * hd + d] * scale : 0.0f;
            int j0 = 0;
            for (; j0 + 64 <= nmax; j0 += 64) {
                __m512 acc[ATT_ROWS][4];
                for (int r = 0; r < ATT_ROWS; r++)
                    for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
                for (int d = 0; d < hd; d++) {
                    const float *kd = ktb + (size_t)d * Tk16 + j0;
                    __m512 k0 = _mm512_loadu_ps(kd), k1 = _mm512_loadu_ps(kd + 16), k2 = _mm512_loadu_ps(kd + 32), k3 = _mm512_loadu_ps(kd + 48);
                    for (int r = 0; r < ATT_ROWS; r++) {
                        __m512 qv = _mm512_set1_ps(qt[d * ATT_ROWS + r]);
                        acc[r][0] = _mm512_fmadd_ps(qv, k0, acc[r][0]);
                        acc[r][1] = _mm512_fmadd_ps(qv, k1, acc[r][1]);
                        acc[r][2] = _mm512_fmadd_ps(qv, k2, acc[r][2]);
                        acc[r][3] = _mm512_fmadd_ps(qv, k3, acc[r][3]);
                    }
                }
                for (int r = 0; r < R; r++)
                    for (int c = 0; c < 4; c++) _mm512_storeu_ps(S + (size_t)r * Tk16 + j0 + 16 * c, acc[r][c]);
            }
            for (; j0 < nmax; j0 += 16) {
                __m512 acc[ATT_ROWS];
                for (int r = 0; r < ATT_ROWS; r++) acc[r] = _mm512_setzero_ps();
                for (int d = 0; d < hd; d++) {
                    __m512 kv = _mm512_loadu_ps(ktb + (size_t)d * Tk16 + j0);
                    for (int r = 0; r < ATT_ROWS; r++) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(qt[d * ATT_ROWS + r]), kv, acc[r]);
                }
                for (int r = 0; r < R; r++) _mm512_storeu_ps(S + (size_t)r * Tk16 + j0, acc[r]);
            }
            /* softmax per row over the keys it sees; zero the rest up to nmax */
            for (int r = 0; r < R; r++) {
                int n = causal ? i0 + r + q_offset + 1 : Tk;
                softmax_avx512(S + (size_t)r * Tk16, n);
                for (int j = n; j < nmax; j++) S[(size_t)r * Tk16 + j] = 0.0f;
            }
            /* out[i0+r, h] = sum_j S[r][j] v[j, kh] */
            const float *vh = vp + (size_t)kh * Tk * hd;
            float *o = out + (size_t)i0 * H * hd + (size_t)h * hd;
            int ldo = H * hd, HC = hd / 16;
            if (HC == 4) /* hd 64 (the ViT): 6 rows x 4 vectors of accumulators */
                for (int r0 = 0; r0 < R; r0 += 6) { PV_ROWS(R - r0 < 6 ? R - r0 : 6, 4) }
            else if (HC == 8) /* hd 128 (LLaMA): 3 rows x 8 vectors */
                for (int r0 = 0; r0 < R; r0 += 3) { PV_ROWS(R - r0 < 3 ? R - r0 : 3, 8) }
            else if (HC == 16) /* hd 256 (Qwen3.5's decoder): as hd 128, once per half of the columns */
                for (int c0 = 0; c0 < hd; c0 += 128, o += 128, vh += 128)
                    for (int r0 = 0; r0 < R; r0 += 3) { PV_ROWS(R - r0 < 3 ? R - r0 : 3, 8) }
            else
                for (int r0 = 0; r0 < R; r0++) { PV_COLS(HC) }
        }
    return 1;
}

/* --- the ViT's attention with bf16 products (AVX512-BF16) ------------------------------
 * vdpbf16ps: q.k summed over pairs of dimensions, p.v over pairs of keys, each product of
 * two bf16 (round to nearest even) added in f32; the softmax stays f32. Non-causal, hd a
 * multiple of 16 up to 64. Every conversion to bf16 is vcvtne(2)ps2bf16, the same rounding
 * as f32_to_bf16; the softmax's passes are fused: the row maximum is taken while the scores
 * are made, then one pass makes exp and the sum, one scales and rounds to bf16 pairs. */
#ifdef QA_AVX512_BF16
/* the bf16 pairs (x[2e], x[2e+1]) of n floats (n a multiple of 16, at most 64) into out[e] */
static inline void bf16_pairs512(uint32_t *out, const float *x, int n, float scale) {
    const __m512 sc = _mm512_set1_ps(scale);
    for (int d0 = 0; d0 < n; d0 += 32) {
        __m512 lo = _mm512_mul_ps(_mm512_loadu_ps(x + d0), sc);
        __m512 hi = d0 + 16 < n ? _mm512_mul_ps(_mm512_loadu_ps(x + d0 + 16), sc) : _mm512_setzero_ps();
        __m512i pr = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
        if (d0 + 16 < n) _mm512_storeu_si512(out + d0 / 2, pr);
        else _mm256_storeu_si256((__m256i *)(out + d0 / 2), _mm512_castsi512_si256(pr));
    }
}
/* 16 masks: lanes [0, n) of a 16-wide chunk, none when n <= 0 */
static inline __mmask16 lanes_below(int n) { return n <= 0 ? (__mmask16)0 : tail_mask(n); }

/* o[r][0..HC*16) = sum_i dot(p[r] pair i, v pair i), R rows of pairs (stride ps uint32) */
static inline __attribute__((always_inline)) void att_pv_bf16(float *o, int ldo, const uint32_t *p, size_t ps, const uint32_t *vp,
                                                             int hd, int npairs, const int R, const int HC) {
    __m512 acc[ATT_ROWS][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < HC; c++) acc[r][c] = _mm512_setzero_ps();
    for (int i = 0; i < npairs; i++) {
        __m512bh vv[4];
        for (int c = 0; c < HC; c++) vv[c] = (__m512bh)_mm512_loadu_si512(vp + (size_t)i * hd + 16 * c);
        for (int r = 0; r < R; r++) {
            __m512bh pi = (__m512bh)_mm512_set1_epi32((int)p[(size_t)r * ps + i]);
            for (int c = 0; c < HC; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], vv[c], pi);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < HC; c++) _mm512_storeu_ps(o + (size_t)r * ldo + 16 * c, acc[r][c]);
}

static int attention_bf16_avx512(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv, int Tq,
                                 int Tk, int H, int KVH, int hd, float *scratch, size_t scratch_stride, float *kt) {
    size_t Tk16 = pad16((size_t)Tk);
    int npairs = (Tk + 1) / 2, hp = hd / 2;
    /* the workspace kt (2 KVH hd Tk16 floats) holds kp, vp and qp */
    if (hd % 16 || hd > 64 || (size_t)Tq * H > (size_t)KVH * Tk16) return 0;
    /* kp[kh][e][j] = (k[j][2e], k[j][2e+1]) for j < Tk16 (zero past Tk): 16 keys' q.k per vector
     * vp[kh][i][d] = (v[2i][d], v[2i+1][d]) for i < npairs (zero past Tk): 16 dims' p.v per vector
     * qp[h][i][e] = (scale q[i][2e], scale q[i][2e+1]): a block's queries from one place
     * Each is made reading whole rows of q, k, v in order (a head's slice of a row is 256
     * bytes, and rows are 4 KB apart: read head by head, every slice is a fresh page). */
    uint32_t *kp = (uint32_t *)kt, *vp = kp + (size_t)KVH * hp * Tk16, *qp = vp + (size_t)KVH * npairs * hd;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int jb = 0; jb < (int)Tk16 / 16; jb++) /* 16 keys at a time: the lines of kp they fill */
            for (int j = 16 * jb; j < 16 * jb + 16; j++)
                for (int kh = 0; kh < KVH; kh++) {
                    uint32_t pr[32] = {0};
                    if (j < Tk) bf16_pairs512(pr, k + (size_t)j * ldkv + (size_t)kh * hd, hd, 1.0f);
                    uint32_t *kph = kp + (size_t)kh * hp * Tk16;
                    for (int e = 0; e < hp; e++) kph[(size_t)e * Tk16 + j] = pr[e];
                }
#pragma omp for schedule(static)
        for (int i = 0; i < npairs; i++)
            for (int kh = 0; kh < KVH; kh++) {
                const float *v0 = v + (size_t)(2 * i) * ldkv + (size_t)kh * hd, *v1 = 2 * i + 1 < Tk ? v0 + ldkv : NULL;
                uint32_t *row = vp + ((size_t)kh * npairs + i) * hd;
                for (int d = 0; d < hd; d += 16) { /* (v0[d], v1[d]): low and high halves of each lane */
                    __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(v0 + d)));
                    __m512i hi = v1 ? _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(v1 + d))) : _mm512_setzero_si512();
                    _mm512_storeu_si512(row + d, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
                }
            }
#pragma omp for schedule(static)
        for (int i = 0; i < Tq; i++)
            for (int h = 0; h < H; h++) bf16_pairs512(qp + ((size_t)h * Tq + i) * hp, q + (size_t)i * ldq + (size_t)h * hd, hd, scale);
    }
    int group = H / KVH, blocks = (Tq + ATT_ROWS - 1) / ATT_ROWS;
#pragma omp parallel for collapse(2) schedule(static)
    for (int h = 0; h < H; h++)
        for (int ib = 0; ib < blocks; ib++) {
            int i0 = ib * ATT_ROWS, R = Tq - i0 < ATT_ROWS ? Tq - i0 : ATT_ROWS, kh = h / group;
            float *S = scratch + (size_t)kernel_thread_id() * scratch_stride;
            const uint32_t *kph = kp + (size_t)kh * hp * Tk16;
            /* scores: S[r][j] = sum_e (scale q[i0+r] pair e) . (k[j] pair e), queries as pairs
             * qt[e][r] (rows past R zero), 6 rows x 64 keys of accumulators; each row's
             * maximum over the Tk real keys on the way */
            uint32_t qt[32 * ATT_ROWS];
            for (int r = 0; r < ATT_ROWS; r++)
                for (int e = 0; e < hp; e++) qt[e * ATT_ROWS + r] = r < R ? qp[((size_t)h * Tq + i0 + r) * hp + e] : 0u;
            __m512 vmax[ATT_ROWS];
            for (int r = 0; r < ATT_ROWS; r++) vmax[r] = _mm512_set1_ps(-INFINITY);
            int j0 = 0;
            for (; j0 + 64 <= (int)Tk16; j0 += 64) {
                __m512 acc[ATT_ROWS][4];
                for (int r = 0; r < ATT_ROWS; r++)
                    for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
                for (int e = 0; e < hp; e++) {
                    const uint32_t *ke = kph + (size_t)e * Tk16 + j0;
                    __m512bh k0 = (__m512bh)_mm512_loadu_si512(ke), k1 = (__m512bh)_mm512_loadu_si512(ke + 16);
                    __m512bh k2 = (__m512bh)_mm512_loadu_si512(ke + 32), k3 = (__m512bh)_mm512_loadu_si512(ke + 48);
                    for (int r = 0; r < ATT_ROWS; r++) {
                        __m512bh qv = (__m512bh)_mm512_set1_epi32((int)qt[e * ATT_ROWS + r]);
                        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], k0, qv);
                        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], k1, qv);
                        acc[r][2] = _mm512_dpbf16_ps(acc[r][2], k2, qv);
                        acc[r][3] = _mm512_dpbf16_ps(acc[r][3], k3, qv);
                    }
                }
                for (int r = 0; r < R; r++)
                    for (int c = 0; c < 4; c++) {
                        _mm512_storeu_ps(S + (size_t)r * Tk16 + j0 + 16 * c, acc[r][c]);
                        vmax[r] = _mm512_mask_max_ps(vmax[r], lanes_below(Tk - j0 - 16 * c), vmax[r], acc[r][c]);
                    }
            }
            for (; j0 < (int)Tk16; j0 += 16) {
                __m512 acc[ATT_ROWS];
                for (int r = 0; r < ATT_ROWS; r++) acc[r] = _mm512_setzero_ps();
                for (int e = 0; e < hp; e++) {
                    __m512bh kv = (__m512bh)_mm512_loadu_si512(kph + (size_t)e * Tk16 + j0);
                    for (int r = 0; r < ATT_ROWS; r++)
                        acc[r] = _mm512_dpbf16_ps(acc[r], kv, (__m512bh)_mm512_set1_epi32((int)qt[e * ATT_ROWS + r]));
                }
                for (int r = 0; r < R; r++) {
                    _mm512_storeu_ps(S + (size_t)r * Tk16 + j0, acc[r]);
                    vmax[r] = _mm512_mask_max_ps(vmax[r], lanes_below(Tk - j0), vmax[r], acc[r]);
                }
            }
            /* softmax per row (f32): exp(s - max) and its sum in one pass, then the row
             * scaled and rounded to bf16 pairs in place: pair i of row r lands in uint32 i
             * of the row, over floats already read (i < 2i) */
            for (int r = 0; r < R; r++) {
                float *row = S + (size_t)r * Tk16;
                __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax[r])), vsum = _mm512_setzero_ps();
                for (int j = 0; j < Tk; j += 16) {
                    __mmask16 m = tail_mask(Tk - j);
                    __m512 ev = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + j), mx));
                    _mm512_mask_storeu_ps(row + j, m, ev);
                    vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(m, ev));
                }
                __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
                for (int c = 0; 32 * c < Tk; c++) {
                    __m512 lo = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(Tk - 32 * c), row + 32 * c), inv);
                    __m512 hi = Tk - 32 * c > 16 ? _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(Tk - 32 * c - 16), row + 32 * c + 16), inv)
                                                 : _mm512_setzero_ps();
                    _mm512_storeu_si512(row + 16 * c, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
                }
            }
            /* out[i0+r, h] = sum_i (p[r] pair i) . (v pair i) */
            const uint32_t *P = (const uint32_t *)S, *vph = vp + (size_t)kh * npairs * hd;
            float *o = out + (size_t)i0 * H * hd + (size_t)h * hd;
            int ldo = H * hd, HC = hd / 16;
#define PVB(nr, hc) att_pv_bf16(o, ldo, P, Tk16, vph, hd, npairs, nr, hc)
#define PVB_ROWS(hc) switch (R) { case 1: PVB(1, hc); break; case 2: PVB(2, hc); break; case 3: PVB(3, hc); break; \
                                  case 4: PVB(4, hc); break; case 5: PVB(5, hc); break; default: PVB(6, hc); break; }
            switch (HC) {
            case 1: PVB_ROWS(1) break;
            case 2: PVB_ROWS(2) break;
            case 3: PVB_ROWS(3) break;
            default: PVB_ROWS(4) break;
            }
#undef PVB_ROWS
#undef PVB
        }
    return 1;
}
#endif /* QA_AVX512_BF16 */

/* --- the table ------------------------------------------------------------------------ */

static const Kernels kernels_avx512 = {
    .names = "scalar avx512"
#ifdef QA_AVX512_VNNI
             " avx512-vnni"
#endif
#ifdef QA_AVX512_BF16
             " avx512-bf16"
#endif
             KERNELS_OPENMP,
    .tile_rows_f = TILE_ROWS_F,
    .tile_rows_q8 = TILE_ROWS_Q8,
    .tile = tile_avx512,
    .matvec = matvec_avx512,
    .quantize_row = quantize_row_avx512,
    .quantize_row_256 = quantize_row_256_avx512,
    .softmax = softmax_avx512,
    .layernorm = layernorm_avx512,
    .silu_mul = silu_mul_avx512,
    .add = add_avx512,
    .gelu_tanh = gelu_tanh_avx512,
    .sigmoid_mul = sigmoid_mul_avx512,
    .conv_silu_row = conv_silu_row_avx512,
    .attention = attention_avx512,
    .delta_rule16 = delta_rule16_avx512,
#ifdef QA_AVX512_BF16
    .bf16_acts = 1,
    .attention_bf16 = attention_bf16_avx512,
#endif
};
