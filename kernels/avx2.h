/* kernels/avx2.h - the kernel contract (kernels.h) for x86-64 with AVX2 and FMA
 * (x86-64-v3: Haswell and later, Zen 1 and later), with AVX-VNNI where the compiler
 * targets it (Alder Lake and later, Zen 5): vpdpbusd in 256-bit form. Without it the int8
 * tiles use vpmaddubsw + vpmaddwd, with q8_0 multiplied as |q| x (x with q's sign) so that
 * the 16-bit pair sums cannot saturate.
 *
 * Provides the matmul tiles (all six weight types); softmax, layernorm, SiLU, the quantiser and attention are the
 * scalar references on these CPUs. */
#include <immintrin.h>

#define QA_AVX2 1 /* this family (for the tests) */

/* Rows per register tile, by activation kind. */
#define TILE_ROWS_Q8 4  /* 1 group (two halves) x 4 rows of int32 accumulators */
#define TILE_ROWS_F 4   /* 1 group (two halves) x 4 rows of float accumulators */

/* AVX2 (+FMA, and AVX-VNNI where present): a group of 16 rows is two 8-lane halves, one
 * group per tile (16 registers do not hold more), float sums of int8 tiles kept in memory. */
static inline void store8(float *o, __m256 v, const float *bias, int col, int epi, int n) {
    float tmp[8];
    _mm256_storeu_ps(tmp, v);
    for (int i = 0; i < n && i < 8; i++) store_out(o + i, tmp[i], bias, col + i, epi);
}

static void tile_f32_avx2(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt, int g0) {
    enum { R = TILE_ROWS_F };
    int K = W->cols;
    __m256 acc[R][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const float *x = (const float *)acts_tile(a, t0);
    if (W->dtype == DT_MF32) {
        const float *w = mf32_group(W, g0);
        for (int k = 0; k < K; k++, x += R, w += 16) {
            __m256 lo = _mm256_loadu_ps(w), hi = _mm256_loadu_ps(w + 8);
            for (int r = 0; r < R; r++) {
                __m256 xv = _mm256_broadcast_ss(x + r);
                acc[r][0] = _mm256_fmadd_ps(lo, xv, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(hi, xv, acc[r][1]);
            }
        }
    } else {
        const uint32_t *w = mbf16_group(W, g0);
        const __m256i mhi = _mm256_set1_epi32((int)0xffff0000u);
        for (int kp = 0; kp < K / 2; kp++, x += 2 * R, w += 16) {
            __m256i v0 = _mm256_loadu_si256((const __m256i *)w), v1 = _mm256_loadu_si256((const __m256i *)(w + 8));
            __m256 e0 = _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)), o0 = _mm256_castsi256_ps(_mm256_and_si256(v0, mhi));
            __m256 e1 = _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16)), o1 = _mm256_castsi256_ps(_mm256_and_si256(v1, mhi));
            for (int r = 0; r < R; r++) {
                __m256 xe = _mm256_broadcast_ss(x + r), xo = _mm256_broadcast_ss(x + R + r);
                acc[r][0] = _mm256_fmadd_ps(o0, xo, _mm256_fmadd_ps(e0, xe, acc[r][0]));
                acc[r][1] = _mm256_fmadd_ps(o1, xo, _mm256_fmadd_ps(e1, xe, acc[r][1]));
            }
        }
    }
    int valid = W->rows - g0 * 16;
    for (int r = 0; r < nt; r++) {
        store8(out + (size_t)(t0 + r) * ldo + g0 * 16, acc[r][0], bias, g0 * 16, epi, valid);
        store8(out + (size_t)(t0 + r) * ldo + g0 * 16 + 8, acc[r][1], bias, g0 * 16 + 8, epi, valid - 8);
    }
}

/* sum over 4 bytes per lane of unsigned w x signed x, added to acc */
static inline __m256i dot_u8s8(__m256i acc, __m256i w, __m256i x) {
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, w, x);
#else
    /* maddubs saturates at 16 bits: 255 * 127 * 2 would, so q8 tiles pass |q| and x*sign(q)
     * (see tile_q_avx2); q4 nibbles (<= 15) are safe as they are */
    __m256i p = _mm256_maddubs_epi16(w, x);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

static void tile_q_avx2(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt, int g0) {
    enum { R = TILE_ROWS_Q8 };
    int K = W->cols, nb = K / QBLOCK, q4 = W->dtype == DT_MQ4_1;
    size_t bbytes = mq_block_bytes(W->dtype), tb = acts_tile_blocks(a, t0);
    float acc[R][16];
    memset(acc, 0, sizeof acc);
    const uint32_t *x = acts_tile(a, t0);
    const float *xd = a->xdp + tb, *xs = a->xsp + tb;
    const int32_t *xc = a->xcp + tb;
    const uint8_t *blk = mq_block(W, g0, 0);
    const __m256i low4 = _mm256_set1_epi8(15);
    for (int b = 0; b < nb; b++, blk += bbytes, x += 8 * R, xd += R, xc += R, xs += R) {
        __m256i s[R][2];
        for (int r = 0; r < R; r++) s[r][0] = s[r][1] = _mm256_setzero_si256();
        for (int j = 0; j < 8; j++) {
            __m256i w[2];
            for (int h = 0; h < 2; h++) {
                if (q4) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(mq4_chunk(blk, j / 2) + 32 * h));
                    w[h] = (j % 2) ? _mm256_and_si256(_mm256_srli_epi16(v, 4), low4) : _mm256_and_si256(v, low4);
                } else {
                    w[h] = _mm256_loadu_si256((const __m256i *)(mq8_quad(blk, j) + 32 * h));
#if !defined(__AVXVNNI__)
                    w[h] = _mm256_xor_si256(w[h], _mm256_set1_epi8((char)0x80)); /* q = stored - 128, as s8 */
#endif
                }
            }
            for (int r = 0; r < R; r++) {
                __m256i xv = _mm256_set1_epi32((int)x[j * R + r]);
                for (int h = 0; h < 2; h++) {
#if !defined(__AVXVNNI__)
                    if (!q4) { /* |q| x (x * sign q): the products fit maddubs' 16 bits */
                        s[r][h] = dot_u8s8(s[r][h], _mm256_sign_epi8(w[h], w[h]), _mm256_sign_epi8(xv, w[h]));
                        continue;
                    }
#endif
                    s[r][h] = dot_u8s8(s[r][h], w[h], xv);
                }
            }
        }
        const float *d = q4 ? mq4_d(blk) : mq8_d(blk), *m = mq4_m(blk);
        for (int r = 0; r < R; r++) {
            for (int h = 0; h < 2; h++) {
                __m256i si = s[r][h];
#if defined(__AVXVNNI__)
                if (!q4) si = _mm256_add_epi32(si, _mm256_set1_epi32(xc[r])); /* undo the +128 */
#endif
                __m256 v = _mm256_loadu_ps(acc[r] + 8 * h);
                v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(si), _mm256_mul_ps(_mm256_loadu_ps(d + 8 * h), _mm256_set1_ps(xd[r])), v);
                if (q4) v = _mm256_fmadd_ps(_mm256_loadu_ps(m + 8 * h), _mm256_set1_ps(xs[r]), v);
                _mm256_storeu_ps(acc[r] + 8 * h, v);
            }
        }
    }
    for (int r = 0; r < nt; r++)
        for (int i = 0; i < 16 && g0 * 16 + i < W->rows; i++) store_out(out + (size_t)(t0 + r) * ldo + g0 * 16 + i, acc[r][i], bias, g0 * 16 + i, epi);
}

/* MQ8_256 / MQ4_256 (kernels.h): per block of up to 256 columns int32 sums only, then one
 * float step; MQ4_256's 32-column sums (nibbles q + 8, started at -8 sum x, so they fit 16
 * bits) are scaled by the row's s8 sub-scale with vpmaddwd (or vpdpwssd) on the way in. */
static void tile_q256_avx2(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt,
                           int g0) {
    enum { R = TILE_ROWS_Q8 };
    int K = W->cols, nb = q256_blocks(K), q4 = W->dtype == DT_MQ4_256;
    float acc[R][16];
    memset(acc, 0, sizeof acc);
    const uint32_t *x = acts_tile(a, t0);
    size_t tb = acts_tile_blocks(a, t0);
    const float *xd = a->xdp + tb;
    const int32_t *xc = a->xcp + tb, *xc4 = a->xc4p + acts_tile_subs(a, t0);
    const __m256i low4 = _mm256_set1_epi8(15), lo16 = _mm256_set1_epi32(0xffff);
    for (int b = 0; b < nb; b++, xd += R, xc += R) {
        int len = q256_len(K, b);
        const uint8_t *blk = q256_block(W, g0, b);
        __m256i s[R][2];
        for (int r = 0; r < R; r++) s[r][0] = s[r][1] = _mm256_setzero_si256();
        if (!q4) {
            for (int j = 0; j < len / 4; j++, x += R) {
                __m256i w[2];
                for (int h = 0; h < 2; h++) {
                    w[h] = _mm256_loadu_si256((const __m256i *)(q8_256_quad(blk, j) + 32 * h));
#if !defined(__AVXVNNI__)
                    w[h] = _mm256_xor_si256(w[h], _mm256_set1_epi8((char)0x80)); /* q = stored - 128, as s8 */
#endif
                }
                for (int r = 0; r < R; r++) {
                    __m256i xv = _mm256_set1_epi32((int)x[r]);
                    for (int h = 0; h < 2; h++) {
#if defined(__AVXVNNI__)
                        s[r][h] = dot_u8s8(s[r][h], w[h], xv);
#else
                        s[r][h] = dot_u8s8(s[r][h], _mm256_sign_epi8(w[h], w[h]), _mm256_sign_epi8(xv, w[h]));
#endif
                    }
                }
            }
#if defined(__AVXVNNI__)
            for (int r = 0; r < R; r++) /* undo the +128 */
                for (int h = 0; h < 2; h++) s[r][h] = _mm256_add_epi32(s[r][h], _mm256_set1_epi32(xc[r]));
#endif
        } else {
            for (int j = 0; j < len / QBLOCK; j++, xc4 += R) {
                __m256i u[R][2];
                for (int r = 0; r < R; r++) u[r][0] = u[r][1] = _mm256_set1_epi32(xc4[r]);
                for (int c = 4 * j; c < 4 * j + 4; c++, x += 2 * R)
                    for (int h = 0; h < 2; h++) { /* rows 8h..8h+7; low nibbles quad 2c, high quad 2c+1 */
                        __m256i v = _mm256_loadu_si256((const __m256i *)(q4_256_chunk(blk, c) + 32 * h));
                        __m256i wl = _mm256_and_si256(v, low4), wh = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
                        for (int r = 0; r < R; r++) {
                            u[r][h] = dot_u8s8(u[r][h], wl, _mm256_set1_epi32((int)x[r]));
                            u[r][h] = dot_u8s8(u[r][h], wh, _mm256_set1_epi32((int)x[R + r]));
                        }
                    }
                const int8_t *sc = q4_256_sc(blk, len, j);
                for (int h = 0; h < 2; h++) {
                    __m256i scv = _mm256_and_si256(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(sc + 8 * h))), lo16);
                    for (int r = 0; r < R; r++)
#if defined(__AVXVNNI__)
                        s[r][h] = _mm256_dpwssd_avx_epi32(s[r][h], u[r][h], scv);
#else
                        s[r][h] = _mm256_add_epi32(s[r][h], _mm256_madd_epi16(u[r][h], scv));
#endif
                }
            }
        }
        const float *d = q256_d(blk, W->dtype, len);
        for (int r = 0; r < R; r++)
            for (int h = 0; h < 2; h++) {
                __m256 v = _mm256_loadu_ps(acc[r] + 8 * h);
                v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[r][h]), _mm256_mul_ps(_mm256_loadu_ps(d + 8 * h), _mm256_set1_ps(xd[r])), v);
                _mm256_storeu_ps(acc[r] + 8 * h, v);
            }
    }
    for (int r = 0; r < nt; r++)
        for (int i = 0; i < 16 && g0 * 16 + i < W->rows; i++) store_out(out + (size_t)(t0 + r) * ldo + g0 * 16 + i, acc[r][i], bias, g0 * 16 + i, epi);
}

/* The contract's tile(): one group at a time. */
static int tile_avx2(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt, int g0,
                     int ng) {
    if (W->dtype == DT_MF32 || (W->dtype == DT_MBF16 && a->kind == ACT_F32)) {
        for (int g = g0; g < g0 + ng; g++) tile_f32_avx2(out, ldo, a, W, bias, epi, t0, nt, g);
        return 1;
    }
    if ((W->dtype == DT_MQ8_0 || W->dtype == DT_MQ4_1) && a->kind == ACT_Q8) {
        for (int g = g0; g < g0 + ng; g++) tile_q_avx2(out, ldo, a, W, bias, epi, t0, nt, g);
        return 1;
    }
    if ((W->dtype == DT_MQ8_256 || W->dtype == DT_MQ4_256) && a->kind == ACT_Q8_256) {
        for (int g = g0; g < g0 + ng; g++) tile_q256_avx2(out, ldo, a, W, bias, epi, t0, nt, g);
        return 1;
    }
    return 0;
}

static const Kernels kernels_avx2 = {
    .names = "scalar avx2"
#if defined(__AVXVNNI__)
             " avx-vnni"
#endif
             KERNELS_OPENMP,
    .tile_rows_f = TILE_ROWS_F,
    .tile_rows_q8 = TILE_ROWS_Q8,
    .tile = tile_avx2,
};
