/* kernels/neon.h - the kernel contract (kernels.h) for AArch64 (Advanced SIMD, part of
 * every AArch64 target), with the dot-product extension (sdot) where the compiler targets
 * it (-march=armv8.2-a+dotprod, or -mcpu= of a core that has it); without it the int8
 * tiles widen: smull + addp + sadalp. -DQA_SCALAR leaves this file out (the only way to
 * get the scalar kernels on AArch64). */
#include <arm_neon.h>

#define QA_NEON 1 /* this family (for the tests) */

#if defined(__ARM_FEATURE_DOTPROD)
#define QA_NEON_DOT 1
#endif

/* Rows per register tile: 4, so that a tile's 4 rows are the 4 lanes of one vector
 * (fmla / sdot by element): 1 group (4 vectors) x 4 rows of accumulators. */
#define TILE_ROWS_Q8 4
#define TILE_ROWS_F 4

/* exp(x) for 4 floats, as exp512: x = n ln2 + r, degree-7 polynomial for e^r, then 2^n
 * as two power-of-two factors 2^(n/2) 2^(n - n/2), so that n in [-150, 128] (x clamped to
 * [-104, 89]) needs no special cases: underflow gives denormals or 0, overflow inf. */
static inline float32x4_t exp_neon(float32x4_t x) {
    x = vmaxq_f32(x, vdupq_n_f32(-104.0f)); /* also turns -inf into a finite value */
    x = vminq_f32(x, vdupq_n_f32(89.0f));
    float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693145751953125f));
    r = vfmsq_f32(r, n, vdupq_n_f32(1.428606765330187e-06f));
    float32x4_t p = vdupq_n_f32(1.0f / 5040);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 720), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 120), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 24), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 6), p, r);
    p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    int32x4_t ni = vcvtq_s32_f32(n), n1 = vshrq_n_s32(ni, 1), n2 = vsubq_s32(ni, n1);
    float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n1, vdupq_n_s32(127)), 23));
    float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n2, vdupq_n_s32(127)), 23));
    return vmulq_f32(vmulq_f32(p, s1), s2);
}
static inline float32x4_t quick_gelu_neon(float32x4_t x) {
    float32x4_t e = exp_neon(vmulq_f32(x, vdupq_n_f32(-1.702f)));
    return vdivq_f32(x, vaddq_f32(vdupq_n_f32(1.0f), e));
}
static inline float32x4_t silu_neon(float32x4_t x) {
    return vdivq_f32(x, vaddq_f32(vdupq_n_f32(1.0f), exp_neon(vnegq_f32(x))));
}

/* --- elementwise, softmax, layernorm, the quantiser ----------------------------------- */

static void add_neon(float *x, const float *y, size_t n) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(x + i, vaddq_f32(vld1q_f32(x + i), vld1q_f32(y + i)));
    for (; i < n; i++) x[i] += y[i];
}

/* a = silu(a) * b, 16 values at a time (by_16: the tail the same way) */
static void silu_mul16_neon(float *a, const float *b) {
    for (int j = 0; j < 16; j += 4) vst1q_f32(a + j, vmulq_f32(silu_neon(vld1q_f32(a + j)), vld1q_f32(b + j)));
}
static void silu_mul_neon(float *a, const float *b, size_t n) { by_16(a, b, n, silu_mul16_neon); }

static void softmax_neon(float *x, int n) {
    float32x4_t vmax = vdupq_n_f32(-INFINITY);
    int i = 0;
    for (; i + 4 <= n; i += 4) vmax = vmaxq_f32(vmax, vld1q_f32(x + i));
    float mx = vmaxvq_f32(vmax);
    for (int j = i; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    float32x4_t vmx = vdupq_n_f32(mx), vsum = vdupq_n_f32(0.0f);
    for (i = 0; i + 4 <= n; i += 4) {
        float32x4_t e = exp_neon(vsubq_f32(vld1q_f32(x + i), vmx));
        vst1q_f32(x + i, e);
        vsum = vaddq_f32(vsum, e);
    }
    float sum = vaddvq_f32(vsum);
    if (i < n) { /* the last 1..3 values through the same exp */
        float tmp[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int j = i; j < n; j++) tmp[j - i] = x[j] - mx;
        vst1q_f32(tmp, exp_neon(vld1q_f32(tmp)));
        for (int j = i; j < n; j++) sum += (x[j] = tmp[j - i]);
    }
    float inv = 1.0f / sum;
    float32x4_t vinv = vdupq_n_f32(inv);
    for (i = 0; i + 4 <= n; i += 4) vst1q_f32(x + i, vmulq_f32(vld1q_f32(x + i), vinv));
    for (; i < n; i++) x[i] *= inv;
}

static void layernorm_neon(float *out, const float *x, const float *w, const float *b, int T, int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C;
        float *ot = out + (size_t)t * C;
        /* as the AVX-512 version, in 2 x 4 lanes */
        float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0;
        int i = 0;
        for (; i + 8 <= C; i += 8) s0 = vaddq_f32(s0, vld1q_f32(xt + i)), s1 = vaddq_f32(s1, vld1q_f32(xt + i + 4));
        float sum = vaddvq_f32(vaddq_f32(s0, s1));
        for (int j = i; j < C; j++) sum += xt[j];
        float mean = sum / (float)C;
        float32x4_t vm = vdupq_n_f32(mean), v0 = vdupq_n_f32(0.0f), v1 = v0;
        for (i = 0; i + 8 <= C; i += 8) {
            float32x4_t d0 = vsubq_f32(vld1q_f32(xt + i), vm), d1 = vsubq_f32(vld1q_f32(xt + i + 4), vm);
            v0 = vfmaq_f32(v0, d0, d0);
            v1 = vfmaq_f32(v1, d1, d1);
        }
        float var = vaddvq_f32(vaddq_f32(v0, v1));
        for (int j = i; j < C; j++) var += (xt[j] - mean) * (xt[j] - mean);
        float rstd = 1.0f / sqrtf(var / (float)C + eps);
        float32x4_t vr = vdupq_n_f32(rstd);
        for (i = 0; i + 4 <= C; i += 4) {
            float32x4_t y = vmulq_f32(vsubq_f32(vld1q_f32(xt + i), vm), vr);
            vst1q_f32(ot + i, vfmaq_f32(vld1q_f32(b + i), y, vld1q_f32(w + i)));
        }
        for (; i < C; i++) ot[i] = (xt[i] - mean) * rstd * w[i] + b[i];
    }
}

static void quantize_row_neon(int8_t *q, float *d, int32_t *c, float *s, const float *x, int K) {
    for (int b = 0; b < K / QBLOCK; b++) {
        float32x4_t v[8], m = vdupq_n_f32(0.0f);
        for (int i = 0; i < 8; i++) {
            v[i] = vld1q_f32(x + b * QBLOCK + 4 * i);
            m = vmaxnmq_f32(m, vabsq_f32(v[i])); /* maxnm ignores NaN, as fmaxf */
        }
        float amax = vmaxnmvq_f32(m);
        float db = amax / 127.0f, id = db > 0.0f ? 1.0f / db : 0.0f;
        /* fcvtns rounds to nearest even, like nearbyintf */
        int32x4_t vsum = vdupq_n_s32(0), lim = vdupq_n_s32(127), nlim = vdupq_n_s32(-127);
        uint32x4_t ok = vdupq_n_u32(~0u); /* lanes whose x * id is a number */
        int16x8_t h[4];
        for (int i = 0; i < 8; i += 2) {
            /* (fcvtns turns a NaN into 0, as the reference does; the scale then carries it) */
            float32x4_t p0 = vmulq_n_f32(v[i], id), p1 = vmulq_n_f32(v[i + 1], id);
            ok = vandq_u32(ok, vandq_u32(vceqq_f32(p0, p0), vceqq_f32(p1, p1)));
            int32x4_t q0 = vmaxq_s32(vminq_s32(vcvtnq_s32_f32(p0), lim), nlim);
            int32x4_t q1 = vmaxq_s32(vminq_s32(vcvtnq_s32_f32(p1), lim), nlim);
            vsum = vaddq_s32(vsum, vaddq_s32(q0, q1));
            h[i / 2] = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1));
        }
        vst1q_s8(q + b * QBLOCK, vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1])));
        vst1q_s8(q + b * QBLOCK + 16, vcombine_s8(vmovn_s16(h[2]), vmovn_s16(h[3])));
        int sum = vaddvq_s32(vsum);
        if (vminvq_u32(ok) == 0) db = NAN;
        d[b] = db;
        c[b] = -128 * sum;
        s[b] = db * (float)sum;
    }
}

/* --- matmul tiles -------------------------------------------------------------------- */

/* NEON (AArch64): a group of 16 rows is four 4-lane vectors, one group per tile (4 rows x 4
 * vectors of accumulators). The activations of a tile's 4 rows for one column (f32) or one
 * int8 quad are one 16-byte vector, so each row's value is a lane of it (fmla/sdot by
 * element): no broadcasts. */

/* Outputs [col, col + 16) of one tile row: bias, epilogue, store (the matrix's last group
 * may have fewer than 16 real rows: those go through the scalar store_out). */
static inline void store16_neon(float *o, const float32x4_t v[4], const float *bias, int col, int epi, int valid) {
    if (valid >= 16) {
        for (int c = 0; c < 4; c++) {
            float32x4_t y = v[c];
            if (bias) y = vaddq_f32(y, vld1q_f32(bias + col + 4 * c));
            if (epi == EPI_GELU) y = quick_gelu_neon(y);
            if (epi == EPI_ADD) y = vaddq_f32(y, vld1q_f32(o + 4 * c));
            vst1q_f32(o + 4 * c, y);
        }
    } else {
        float tmp[16];
        for (int c = 0; c < 4; c++) vst1q_f32(tmp + 4 * c, v[c]);
        for (int i = 0; i < valid; i++) store_out(o + i, tmp[i], bias, col + i, epi);
    }
}

/* acc[r][c] += w[c] * lane r of xv, for the 4 rows of a tile */
#define FMA_ROWS(acc, w, xv)                                                                       \
    do {                                                                                           \
        for (int c_ = 0; c_ < 4; c_++) {                                                           \
            acc[0][c_] = vfmaq_laneq_f32(acc[0][c_], w[c_], xv, 0);                                \
            acc[1][c_] = vfmaq_laneq_f32(acc[1][c_], w[c_], xv, 1);                                \
            acc[2][c_] = vfmaq_laneq_f32(acc[2][c_], w[c_], xv, 2);                                \
            acc[3][c_] = vfmaq_laneq_f32(acc[3][c_], w[c_], xv, 3);                                \
        }                                                                                          \
    } while (0)

/* f32 activations x f32 weights ([g][k][r]) or bf16 weights ([g][k/2][r][2], widened to
 * f32 by a shift / a mask) */
static void tile_f32_neon(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt, int g0) {
    enum { R = TILE_ROWS_F };
    int K = W->cols;
    float32x4_t acc[R][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = vdupq_n_f32(0.0f);
    const float *x = (const float *)acts_tile(a, t0);
    if (W->dtype == DT_MF32) {
        const float *w = mf32_group(W, g0);
        for (int k = 0; k < K; k++, x += R, w += 16) {
            float32x4_t wv[4] = {vld1q_f32(w), vld1q_f32(w + 4), vld1q_f32(w + 8), vld1q_f32(w + 12)};
            float32x4_t xv = vld1q_f32(x);
            FMA_ROWS(acc, wv, xv);
        }
    } else {
        const uint32_t *w = mbf16_group(W, g0);
        const uint32x4_t hi = vdupq_n_u32(0xffff0000u);
        for (int kp = 0; kp < K / 2; kp++, x += 2 * R, w += 16) {
            float32x4_t we[4], wo[4];
            for (int c = 0; c < 4; c++) {
                uint32x4_t v = vld1q_u32(w + 4 * c);
                we[c] = vreinterpretq_f32_u32(vshlq_n_u32(v, 16)); /* column 2kp */
                wo[c] = vreinterpretq_f32_u32(vandq_u32(v, hi));   /* column 2kp+1 */
            }
            /* packed f32 activations: column 2kp of the tile's rows at x, 2kp+1 at x + R */
            float32x4_t xe = vld1q_f32(x), xo = vld1q_f32(x + R);
            FMA_ROWS(acc, we, xe);
            FMA_ROWS(acc, wo, xo);
        }
    }
    for (int r = 0; r < nt; r++)
        store16_neon(out + (size_t)(t0 + r) * ldo + g0 * 16, acc[r], bias, g0 * 16, epi, W->rows - g0 * 16);
}

#if !defined(QA_NEON_DOT)
/* sdot by element without the dot-product extension: 4 lanes of sum_{i<4} w[4l+i] x[i]
 * for the quad x (broadcast in xq): widening multiplies, then two pairwise adds. The
 * 16-bit pair sums cannot overflow: |w| <= 128, |x| <= 127, 2 * 128 * 127 < 32768. */
static inline int32x4_t dot_quads_neon(int32x4_t acc, int8x16_t w, int8x16_t xq) {
    int16x8_t lo = vmull_s8(vget_low_s8(w), vget_low_s8(xq)), hi = vmull_high_s8(w, xq);
    return vpadalq_s16(acc, vpaddq_s16(lo, hi));
}
#define DOT_ROW(s, w, xv, r) dot_quads_neon(s, w, vreinterpretq_s8_u32(vdupq_laneq_u32(vreinterpretq_u32_s8(xv), r)))
#else
#define DOT_ROW(s, w, xv, r) vdotq_laneq_s32(s, w, xv, r)
#endif

/* int8 activations x q8_0 / q4_1 weights, signed x signed: q8_0's stored bytes (q + 128)
 * become q by flipping the top bit, q4_1's nibbles (0..15) are valid s8 as they are, so
 * no correction term is needed; per 32-block the int32 sums are scaled into floats. */
static void tile_q_neon(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt, int g0) {
    enum { R = TILE_ROWS_Q8 };
    int K = W->cols, nb = K / QBLOCK, q4 = W->dtype == DT_MQ4_1;
    size_t bbytes = mq_block_bytes(W->dtype), tb = acts_tile_blocks(a, t0);
    float32x4_t acc[R][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = vdupq_n_f32(0.0f);
    const uint32_t *x = acts_tile(a, t0);
    const float *xd = a->xdp + tb, *xs = a->xsp + tb;
    const uint8_t *blk = mq_block(W, g0, 0);
    const uint8x16_t low4 = vdupq_n_u8(15), top = vdupq_n_u8(0x80);
    for (int b = 0; b < nb; b++, blk += bbytes, x += 8 * R, xd += R, xs += R) {
        int32x4_t s[R][4];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < 4; c++) s[r][c] = vdupq_n_s32(0);
        for (int j = 0; j < 8; j++) {
            int8x16_t w[4];
            for (int c = 0; c < 4; c++) {
                if (q4) {
                    uint8x16_t v = vld1q_u8(mq4_chunk(blk, j / 2) + 16 * c);
                    w[c] = vreinterpretq_s8_u8((j % 2) ? vshrq_n_u8(v, 4) : vandq_u8(v, low4));
                } else {
                    w[c] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(mq8_quad(blk, j) + 16 * c), top));
                }
            }
            /* quad j of the tile's 4 rows: lane r is row r's 4 activation bytes */
            int8x16_t xv = vreinterpretq_s8_u32(vld1q_u32(x + j * R));
            for (int c = 0; c < 4; c++) {
                s[0][c] = DOT_ROW(s[0][c], w[c], xv, 0);
                s[1][c] = DOT_ROW(s[1][c], w[c], xv, 1);
                s[2][c] = DOT_ROW(s[2][c], w[c], xv, 2);
                s[3][c] = DOT_ROW(s[3][c], w[c], xv, 3);
            }
        }
        const float *d = q4 ? mq4_d(blk) : mq8_d(blk), *m = mq4_m(blk);
        for (int c = 0; c < 4; c++) {
            float32x4_t dc = vld1q_f32(d + 4 * c), mc = q4 ? vld1q_f32(m + 4 * c) : dc;
            for (int r = 0; r < R; r++) {
                acc[r][c] = vfmaq_f32(acc[r][c], vcvtq_f32_s32(s[r][c]), vmulq_n_f32(dc, xd[r]));
                if (q4) acc[r][c] = vfmaq_n_f32(acc[r][c], mc, xs[r]);
            }
        }
    }
    for (int r = 0; r < nt; r++)
        store16_neon(out + (size_t)(t0 + r) * ldo + g0 * 16, acc[r], bias, g0 * 16, epi, W->rows - g0 * 16);
}
/* int8 activations x q8_256 / q4_256 weights, signed x signed (q8_256's top bit flipped,
 * q4_256's nibbles minus 8): per block of up to 256 columns the int32 sums run on without a
 * float step; q4_256 scales each 32 columns' sums by the row's s8 sub-scale (mla). */
static void tile_q256_neon(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt,
                           int g0) {
    enum { R = TILE_ROWS_Q8 };
    int K = W->cols, nb = q256_blocks(K), q4 = W->dtype == DT_MQ4_256;
    float32x4_t acc[R][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = vdupq_n_f32(0.0f);
    const uint32_t *x = acts_tile(a, t0);
    const float *xd = a->xdp + acts_tile_blocks(a, t0);
    const uint8x16_t low4 = vdupq_n_u8(15), top = vdupq_n_u8(0x80);
    const int8x16_t eight = vdupq_n_s8(8);
    for (int b = 0; b < nb; b++, xd += R) {
        int len = q256_len(K, b);
        const uint8_t *blk = q256_block(W, g0, b);
        int32x4_t s[R][4];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < 4; c++) s[r][c] = vdupq_n_s32(0);
        for (int j = 0; j < len / QBLOCK; j++) { /* 32 columns: 8 quads */
            int32x4_t u[R][4];
            for (int r = 0; r < R; r++)
                for (int c = 0; c < 4; c++) u[r][c] = vdupq_n_s32(0);
            for (int i = 0; i < 8; i++, x += R) {
                int8x16_t w[4];
                for (int c = 0; c < 4; c++) {
                    if (q4) {
                        uint8x16_t v = vld1q_u8(q4_256_chunk(blk, 4 * j + i / 2) + 16 * c);
                        w[c] = vsubq_s8(vreinterpretq_s8_u8((i % 2) ? vshrq_n_u8(v, 4) : vandq_u8(v, low4)), eight);
                    } else {
                        w[c] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(q8_256_quad(blk, 8 * j + i) + 16 * c), top));
                    }
                }
                int8x16_t xv = vreinterpretq_s8_u32(vld1q_u32(x));
                for (int c = 0; c < 4; c++) {
                    u[0][c] = DOT_ROW(u[0][c], w[c], xv, 0);
                    u[1][c] = DOT_ROW(u[1][c], w[c], xv, 1);
                    u[2][c] = DOT_ROW(u[2][c], w[c], xv, 2);
                    u[3][c] = DOT_ROW(u[3][c], w[c], xv, 3);
                }
            }
            if (q4) { /* the row's sub-scale, widened to 32 bits, times the 32-column sums */
                int8x16_t sc8 = vld1q_s8(q4_256_sc(blk, len, j));
                int16x8_t lo = vmovl_s8(vget_low_s8(sc8)), hi = vmovl_high_s8(sc8);
                int32x4_t sc[4] = {vmovl_s16(vget_low_s16(lo)), vmovl_high_s16(lo), vmovl_s16(vget_low_s16(hi)), vmovl_high_s16(hi)};
                for (int r = 0; r < R; r++)
                    for (int c = 0; c < 4; c++) s[r][c] = vmlaq_s32(s[r][c], u[r][c], sc[c]);
            } else {
                for (int r = 0; r < R; r++)
                    for (int c = 0; c < 4; c++) s[r][c] = vaddq_s32(s[r][c], u[r][c]);
            }
        }
        const float *d = q256_d(blk, W->dtype, len);
        for (int c = 0; c < 4; c++) {
            float32x4_t dc = vld1q_f32(d + 4 * c);
            for (int r = 0; r < R; r++) acc[r][c] = vfmaq_f32(acc[r][c], vcvtq_f32_s32(s[r][c]), vmulq_n_f32(dc, xd[r]));
        }
    }
    for (int r = 0; r < nt; r++)
        store16_neon(out + (size_t)(t0 + r) * ldo + g0 * 16, acc[r], bias, g0 * 16, epi, W->rows - g0 * 16);
}
#undef DOT_ROW
#undef FMA_ROWS

/* The contract's tile(): one group at a time. */
static int tile_neon(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt, int g0,
                     int ng) {
    if (W->dtype == DT_MF32 || (W->dtype == DT_MBF16 && a->kind == ACT_F32)) {
        for (int g = g0; g < g0 + ng; g++) tile_f32_neon(out, ldo, a, W, bias, epi, t0, nt, g);
        return 1;
    }
    if ((W->dtype == DT_MQ8_0 || W->dtype == DT_MQ4_1) && a->kind == ACT_Q8) {
        for (int g = g0; g < g0 + ng; g++) tile_q_neon(out, ldo, a, W, bias, epi, t0, nt, g);
        return 1;
    }
    if ((W->dtype == DT_MQ8_256 || W->dtype == DT_MQ4_256) && a->kind == ACT_Q8_256) {
        for (int g = g0; g < g0 + ng; g++) tile_q256_neon(out, ldo, a, W, bias, epi, t0, nt, g);
        return 1;
    }
    return 0;
}

/* --- attention ------------------------------------------------------------------------ */

static int attention_neon(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv, int Tq, int Tk,
                          int H, int KVH, int hd, int causal, int q_offset, float *scratch, size_t scratch_stride,
                          float *kt) {
    (void)kt;
    if (hd % 4) return 0;
    /* one query row at a time: scores as 4-lane dot products over d, the NEON softmax,
     * then the output row in chunks of up to 8 vectors, each one FMA chain over keys */
    float scale = 1.0f / sqrtf((float)hd);
    int group = H / KVH;
#pragma omp parallel for collapse(2) schedule(static)
    for (int h = 0; h < H; h++) {
        for (int i = 0; i < Tq; i++) {
            float *s = scratch + (size_t)kernel_thread_id() * scratch_stride;
            const float *qi = q + (size_t)i * ldq + (size_t)h * hd;
            int kh = h / group, n = causal ? i + q_offset + 1 : Tk;
            for (int j = 0; j < n; j++) {
                const float *kj = k + (size_t)j * ldkv + (size_t)kh * hd;
                float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
                int d = 0;
                for (; d + 8 <= hd; d += 8) {
                    a0 = vfmaq_f32(a0, vld1q_f32(qi + d), vld1q_f32(kj + d));
                    a1 = vfmaq_f32(a1, vld1q_f32(qi + d + 4), vld1q_f32(kj + d + 4));
                }
                if (d < hd) a0 = vfmaq_f32(a0, vld1q_f32(qi + d), vld1q_f32(kj + d));
                s[j] = vaddvq_f32(vaddq_f32(a0, a1)) * scale;
            }
            softmax_neon(s, n);
            const float *vh = v + (size_t)kh * hd;
            float *oi = out + (size_t)i * H * hd + (size_t)h * hd;
            for (int d0 = 0; d0 < hd; d0 += 32) {
                int nc = (hd - d0) / 4 < 8 ? (hd - d0) / 4 : 8;
                float32x4_t acc[8];
                for (int c = 0; c < 8; c++) acc[c] = vdupq_n_f32(0.0f);
                if (nc == 8)
                    for (int j = 0; j < n; j++) {
                        const float *vj = vh + (size_t)j * ldkv + d0;
                        for (int c = 0; c < 8; c++) acc[c] = vfmaq_n_f32(acc[c], vld1q_f32(vj + 4 * c), s[j]);
                    }
                else
                    for (int j = 0; j < n; j++) {
                        const float *vj = vh + (size_t)j * ldkv + d0;
                        for (int c = 0; c < nc; c++) acc[c] = vfmaq_n_f32(acc[c], vld1q_f32(vj + 4 * c), s[j]);
                    }
                for (int c = 0; c < nc; c++) vst1q_f32(oi + d0 + 4 * c, acc[c]);
            }
        }
    }
    return 1;
}

static const Kernels kernels_neon = {
    .names = "scalar neon"
#ifdef QA_NEON_DOT
             " neon-dotprod"
#endif
             KERNELS_OPENMP,
    .tile_rows_f = TILE_ROWS_F,
    .tile_rows_q8 = TILE_ROWS_Q8,
    .tile = tile_neon,
    .quantize_row = quantize_row_neon,
    .softmax = softmax_neon,
    .layernorm = layernorm_neon,
    .silu_mul = silu_mul_neon,
    .add = add_neon,
    .attention = attention_neon,
};
