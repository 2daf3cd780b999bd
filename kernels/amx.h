/* kernels/amx.h - the int8 matmul tiles on Intel AMX (Sapphire Rapids and later): TDPBSUD
 * for q8_0, q4_1, q8_256 and q4_256. Everything else (f32 and bf16 tiles, the quantisers,
 * softmax, layernorm, attention) is the AVX-512 family's (kernels/avx512.h, included before
 * this file in the real build); why not TDPBF16PS for bf16 weights: at tile_amx().
 *
 * The tile code is written against five tile operations (configure, load, dot product,
 * store, zero) that are, one for one, the _tile_* intrinsics in the real build and, with
 * QA_AMX_EMULATE, the C model of the tile unit in kernels/amx_emu.h: tests/test_kernels.c
 * runs this same code through the model on every machine, and through the unit where the
 * CPU has one.
 *
 * Operands. A (activations) is read straight from the row-major int8 / bf16 buffers of Acts
 * (flat_rows: no interleaved copy), 16 rows per tile register with the row length as
 * stride. B (weights) needs the "VNNI" layout: K/4 rows of 16 output columns x 4 bytes (int8)
 * (or K/2 rows of 16 x a bf16 pair) - which is exactly how the packed formats already store a
 * group of 16 rows (kernels.h: MQ8_0 / MQ8_256 quads; MBF16 pairs). So B is loaded from the
 * model file as it is: no repacking and no extra memory. The 4-bit types are widened to one
 * byte per value into a small buffer per tile (MQ4_1 / MQ4_256 chunks: low nibbles one quad,
 * high nibbles the next).
 *
 * One call computes up to 32 rows x 2 groups: A0, A1 (rows 0-15, 16-31), B0, B1 (the two
 * groups), C00 C01 C10 C11 - the eight tile registers of palette 1. The int32 sums leave the
 * tiles once per quantisation block (q8_0, q4_1: 32 columns; q8_256: up to 256; q4_256:
 * per 32-column sub-block, for its sub-scales) and take the AVX-512 family's float steps in
 * the same order (acc = fma(float(s), d_w d_x, acc)), so the results are the AVX-512
 * family's bits. */

#include <stdio.h>

#ifdef QA_AMX_EMULATE
#include "amx_emu.h"
#define AMX_CONFIG(cfg) amx_emu_loadconfig(cfg)
#define AMX_LOAD(t, p, stride) amx_emu_loadd(t, p, stride)
#define AMX_STORED(t, p, stride) amx_emu_stored(t, p, stride)
#define AMX_TZERO(t) amx_emu_zero(t)
#define AMX_DP_I8(c, a, b) amx_emu_dpbsud(c, a, b)
#define AMX_DP_BF16(c, a, b) amx_emu_dpbf16ps(c, a, b)
#define AMX_RELEASE() amx_emu_release()
#define AMX_NAMES "scalar amx-emulated"
#else
#include <immintrin.h>
#define AMX_CONFIG(cfg) _tile_loadconfig(cfg)
#define AMX_LOAD(t, p, stride) _tile_loadd(t, p, stride)
#define AMX_STORED(t, p, stride) _tile_stored(t, p, stride)
#define AMX_TZERO(t) _tile_zero(t)
#define AMX_DP_I8(c, a, b) _tile_dpbsud(c, a, b)
#define AMX_DP_BF16(c, a, b) _tile_dpbf16ps(c, a, b)
#define AMX_RELEASE() _tile_release()
#define AMX_NAMES "scalar avx512 avx512-vnni avx512-bf16 amx"
#endif

#define AMX_ROWS 32 /* activation rows per call: two A tiles */

/* The tile registers (plain numbers: the intrinsics paste them into the instruction) */
#define TA0 0
#define TA1 1
#define TB0 2
#define TB1 3
#define TC00 4
#define TC01 5
#define TC10 6
#define TC11 7

/* LDTILECFG's 64 bytes */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} AmxConfig;

/* Configure for na (1, 2) A tiles of rows0 / rows1 rows and kb bytes a row, B tiles of
 * kb / 4 rows x 64 bytes (ng of them), and the C tiles. */
static void amx_configure(int rows0, int rows1, int kb, int ng) {
    AmxConfig c __attribute__((aligned(64)));
    memset(&c, 0, sizeof c);
    c.palette = 1;
    c.rows[TA0] = (uint8_t)rows0, c.colsb[TA0] = (uint16_t)kb;
    c.rows[TB0] = (uint8_t)(kb / 4), c.colsb[TB0] = 64;
    c.rows[TC00] = (uint8_t)rows0, c.colsb[TC00] = 64;
    if (ng > 1) {
        c.rows[TB1] = (uint8_t)(kb / 4), c.colsb[TB1] = 64;
        c.rows[TC01] = (uint8_t)rows0, c.colsb[TC01] = 64;
    }
    if (rows1) {
        c.rows[TA1] = (uint8_t)rows1, c.colsb[TA1] = (uint16_t)kb;
        c.rows[TC10] = (uint8_t)rows1, c.colsb[TC10] = 64;
        if (ng > 1) c.rows[TC11] = (uint8_t)rows1, c.colsb[TC11] = 64;
    }
    AMX_CONFIG(&c);
}

/* The products of one K step: A rows at a (stride lda; the second 16 at a + 16 lda), the
 * groups' B at b0, b1 (64-byte rows). two: rows past 16; ng: groups. */
#define AMX_STEP(DP, a, lda, b0, b1)                                                                          \
    do {                                                                                                      \
        AMX_LOAD(TA0, a, lda);                                                                               \
        AMX_LOAD(TB0, b0, 64);                                                                               \
        DP(TC00, TA0, TB0);                                                                                   \
        if (ng > 1) {                                                                                         \
            AMX_LOAD(TB1, b1, 64);                                                                           \
            DP(TC01, TA0, TB1);                                                                               \
        }                                                                                                     \
        if (two) {                                                                                            \
            AMX_LOAD(TA1, (const uint8_t *)(a) + 16 * (size_t)(lda), lda);                                   \
            DP(TC10, TA1, TB0);                                                                               \
            if (ng > 1) DP(TC11, TA1, TB1);                                                                   \
        }                                                                                                     \
    } while (0)
#define AMX_ZERO_C()                                                                                          \
    do {                                                                                                      \
        AMX_TZERO(TC00);                                                                                      \
        if (ng > 1) AMX_TZERO(TC01);                                                                          \
        if (two) {                                                                                            \
            AMX_TZERO(TC10);                                                                                  \
            if (ng > 1) AMX_TZERO(TC11);                                                                      \
        }                                                                                                     \
    } while (0)
/* C tiles to c[32][32] (4-byte values; row m, column 16 g + n) */
#define AMX_STORE_C(c)                                                                                        \
    do {                                                                                                      \
        AMX_STORED(TC00, &(c)[0][0], 128);                                                                    \
        if (ng > 1) AMX_STORED(TC01, &(c)[0][16], 128);                                                       \
        if (two) {                                                                                            \
            AMX_STORED(TC10, &(c)[16][0], 128);                                                               \
            if (ng > 1) AMX_STORED(TC11, &(c)[16][16], 128);                                                  \
        }                                                                                                     \
    } while (0)

/* acc[m][16g + n] = fma(float(s[m][16g + n] + add[m]), d_g[n] * dx[m], acc): the AVX-512
 * family's float step (fmaf rounds once, as vfmadd does) */
static inline void amx_scale(float (*acc)[32], const int32_t (*s)[32], const int32_t *add, size_t add_stride,
                             const float *dx, size_t dx_stride, const float *d0, const float *d1, int nt, int ng) {
#ifdef QA_AVX512 /* the same, 16 lanes at a time */
    const __m512 dv0 = _mm512_loadu_ps(d0), dv1 = ng > 1 ? _mm512_loadu_ps(d1) : dv0;
    for (int m = 0; m < nt; m++) {
        __m512 x = _mm512_set1_ps(dx[(size_t)m * dx_stride]);
        __m512i c = _mm512_set1_epi32(add ? add[(size_t)m * add_stride] : 0);
        __m512 v0 = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_load_si512(&s[m][0]), c));
        _mm512_storeu_ps(&acc[m][0], _mm512_fmadd_ps(v0, _mm512_mul_ps(dv0, x), _mm512_loadu_ps(&acc[m][0])));
        if (ng > 1) {
            __m512 v1 = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_load_si512(&s[m][16]), c));
            _mm512_storeu_ps(&acc[m][16], _mm512_fmadd_ps(v1, _mm512_mul_ps(dv1, x), _mm512_loadu_ps(&acc[m][16])));
        }
    }
    return;
#endif
    for (int m = 0; m < nt; m++) {
        float x = dx[(size_t)m * dx_stride];
        int32_t c = add ? add[(size_t)m * add_stride] : 0;
        for (int g = 0; g < ng; g++) {
            const float *d = g ? d1 : d0;
            for (int n = 0; n < 16; n++) acc[m][16 * g + n] = fmaf((float)(s[m][16 * g + n] + c), d[n] * x, acc[m][16 * g + n]);
        }
    }
}

/* out rows [t0, t0 + nt) x groups g0.. : the epilogue of each output (bias, GELU or +=),
 * the AVX-512 family's in the real build */
static void amx_store_out(float *out, int ldo, const float (*acc)[32], const Tensor *W, const float *bias, int epi, int t0,
                          int nt, int g0, int ng) {
    for (int g = 0; g < ng; g++) {
        int col = (g0 + g) * PACK_ROWS, n = W->rows - col < 16 ? W->rows - col : 16;
        for (int m = 0; m < nt; m++) {
            float *o = out + (size_t)(t0 + m) * ldo + col;
#ifdef QA_AVX512
            store16(o, _mm512_loadu_ps(&acc[m][16 * g]), bias, col, epi, tail_mask(n));
#else
            for (int i = 0; i < n; i++) store_out(o + i, acc[m][16 * g + i], bias, col + i, epi);
#endif
        }
    }
}

/* 4-bit chunks (4 x 64 bytes: low nibble quad 2c, high quad 2c + 1) as 8 quads of bytes,
 * plus off (MQ4_256 stores q + 8 and is undone by -8 sum x instead: off 0 for both) */
static inline void amx_widen4(uint8_t *dst /* [8][64] */, const uint8_t *chunks) {
#ifdef QA_AVX512
    const __m512i low4 = _mm512_set1_epi8(15);
    for (int c = 0; c < 4; c++) {
        __m512i v = _mm512_loadu_si512(chunks + 64 * c);
        _mm512_store_si512(dst + 128 * c, _mm512_and_si512(v, low4));
        _mm512_store_si512(dst + 128 * c + 64, _mm512_and_si512(_mm512_srli_epi16(v, 4), low4));
    }
    return;
#endif
    for (int c = 0; c < 4; c++)
        for (int i = 0; i < 64; i++) {
            uint8_t v = chunks[64 * c + i];
            dst[128 * c + i] = v & 15;
            dst[128 * c + 64 + i] = v >> 4;
        }
}

/* q4_256: the sub-block sums c of sub-block j (+ -8 sum x) times the rows' sub-scales, into s */
static inline void amx_q4_sub(int32_t (*s)[32], const int32_t (*c)[32], const int32_t *xc4, size_t stride, const int8_t *sc0,
                              const int8_t *sc1, int nt, int ng) {
#ifdef QA_AVX512
    __m512i scv0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)sc0)), scv1 = scv0;
    if (ng > 1) scv1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)sc1));
    for (int m = 0; m < nt; m++) {
        __m512i off = _mm512_set1_epi32(xc4[(size_t)m * stride]);
        _mm512_store_si512(&s[m][0], _mm512_add_epi32(_mm512_load_si512(&s[m][0]),
                                                      _mm512_mullo_epi32(_mm512_add_epi32(_mm512_load_si512(&c[m][0]), off), scv0)));
        if (ng > 1)
            _mm512_store_si512(&s[m][16], _mm512_add_epi32(_mm512_load_si512(&s[m][16]),
                                                           _mm512_mullo_epi32(_mm512_add_epi32(_mm512_load_si512(&c[m][16]), off), scv1)));
    }
#else
    for (int m = 0; m < nt; m++) {
        int32_t off = xc4[(size_t)m * stride];
        for (int n = 0; n < 16; n++) s[m][n] += (c[m][n] + off) * sc0[n];
        if (ng > 1)
            for (int n = 0; n < 16; n++) s[m][16 + n] += (c[m][16 + n] + off) * sc1[n];
    }
#endif
}

/* int8 activations x MQ8_0 / MQ4_1 / MQ8_256 / MQ4_256.
 * The sums of a block (or q4_256 sub-block) leave the tiles by a tile store, and a vector
 * load right after a tile store waits for it (measured: half of the time); so the float
 * step of each block runs one block late, while the unit works on the next: c[2] / s[2]
 * alternate, u is the step pending. */
static void tile_q_amx(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt,
                       int g0, int ng) {
    int K = W->cols, two = nt > 16, dt = W->dtype;
    int blocks = acts_blocks(a->kind, K), subs = K / QBLOCK;
    int q256 = dt == DT_MQ8_256 || dt == DT_MQ4_256, q4 = dt == DT_MQ4_1 || dt == DT_MQ4_256;
    int kb = dt == DT_MQ8_256 ? 64 : 32; /* bytes of A a row per step: q8_256 64, the others a 32-column block */
    float acc[AMX_ROWS][32] __attribute__((aligned(64)));
    int32_t s[AMX_ROWS][32] __attribute__((aligned(64)));         /* q4_256: the block's sum */
    int32_t c[2][AMX_ROWS][32] __attribute__((aligned(64)));      /* tile sums, alternating */
    uint8_t wb[2][2][8][64] __attribute__((aligned(64)));         /* widened nibbles, alternating */
    uint8_t wp[2][16][64] __attribute__((aligned(64)));           /* a padded last step */
    uint8_t ab[AMX_ROWS][64] __attribute__((aligned(64)));
    memset(acc, 0, sizeof acc);
    const int8_t *x = a->xq + (size_t)t0 * K;
    const float *xd = a->xd + (size_t)t0 * blocks;
    const int32_t *xc = a->xc + (size_t)t0 * blocks, *xc4 = a->xc4 + (size_t)t0 * subs;
    const float *xs = a->xs + (size_t)t0 * blocks;
    amx_configure(two ? 16 : nt, two ? nt - 16 : 0, kb, ng);
    if (!q256) { /* blocks of 32: one step each */
        size_t bb = mq_block_bytes(dt), gstride = (size_t)(K / QBLOCK) * bb;
        const uint8_t *base = mq_block(W, g0, 0);
        int nb = K / QBLOCK;
        for (int b = 0; b <= nb; b++) {
            if (b < nb) {
                const uint8_t *b0 = base + (size_t)b * bb, *w0 = b0, *w1 = b0 + gstride;
                if (q4) {
                    amx_widen4(&wb[b & 1][0][0][0], b0);
                    if (ng > 1) amx_widen4(&wb[b & 1][1][0][0], b0 + gstride);
                    w0 = &wb[b & 1][0][0][0], w1 = &wb[b & 1][1][0][0];
                }
                AMX_ZERO_C();
                AMX_STEP(AMX_DP_I8, x + (size_t)b * QBLOCK, K, w0, w1);
            }
            if (b > 0) { /* the float step of block u = b - 1 */
                int u = b - 1;
                const uint8_t *b0 = base + (size_t)u * bb, *b1 = b0 + gstride;
                amx_scale(acc, (const int32_t(*)[32])c[u & 1], q4 ? NULL : xc + u, (size_t)blocks, xd + u, (size_t)blocks,
                          q4 ? mq4_d(b0) : mq8_d(b0), q4 ? mq4_d(b1) : mq8_d(b1), nt, ng);
                if (q4) /* + m_w d_x sum x */
                    for (int m = 0; m < nt; m++)
                        for (int g = 0; g < ng; g++)
                            for (int n = 0; n < 16; n++)
                                acc[m][16 * g + n] = fmaf(mq4_m(g ? b1 : b0)[n], xs[(size_t)m * blocks + u], acc[m][16 * g + n]);
            }
            if (b < nb) AMX_STORE_C(c[b & 1]);
        }
    } else if (dt == DT_MQ8_256) { /* a block's int32 sums in the tiles, 64 columns a step */
        size_t gbytes = q256_group_bytes(dt, K);
        for (int b = 0; b <= blocks; b++) {
            if (b < blocks) {
                int len = q256_len(K, b), k0 = b * QBLOCK_256, k = 0;
                const uint8_t *b0 = q256_block(W, g0, b), *b1 = b0 + gbytes;
                AMX_ZERO_C();
                for (; k + 64 <= len; k += 64)
                    AMX_STEP(AMX_DP_I8, x + k0 + k, K, q8_256_quad(b0, k / 4), q8_256_quad(b1, k / 4));
                if (k < len) { /* 32 columns left: zero-padded to a whole step */
                    memset(ab, 0, sizeof ab);
                    memset(wp, 0, sizeof wp);
                    for (int m = 0; m < nt; m++) memcpy(ab[m], x + (size_t)m * K + k0 + k, 32);
                    memcpy(wp[0], q8_256_quad(b0, k / 4), 8 * 64);
                    if (ng > 1) memcpy(wp[1], q8_256_quad(b1, k / 4), 8 * 64);
                    AMX_STEP(AMX_DP_I8, &ab[0][0], 64, &wp[0][0][0], &wp[1][0][0]);
                }
            }
            if (b > 0) { /* block u: + (-128 sum x), the AVX-512 family's start value, then the float step */
                int u = b - 1, len = q256_len(K, u);
                const uint8_t *b0 = q256_block(W, g0, u), *b1 = b0 + gbytes;
                amx_scale(acc, (const int32_t(*)[32])c[u & 1], xc + u, (size_t)blocks, xd + u, (size_t)blocks,
                          q256_d(b0, dt, len), q256_d(b1, dt, len), nt, ng);
            }
            if (b < blocks) AMX_STORE_C(c[b & 1]);
        }
    } else { /* q4_256: per sub-block of 32 columns (nibbles q + 8, -8 sum x), times the row's sub-scale */
        size_t gbytes = q256_group_bytes(dt, K);
        memset(s, 0, sizeof s);
        for (int i = 0; i <= subs; i++) { /* sub-block i of the row: block i / 8, sub-block i % 8 of it */
            if (i < subs) {
                int b = i / 8, j = i % 8;
                const uint8_t *b0 = q256_block(W, g0, b);
                amx_widen4(&wb[i & 1][0][0][0], q4_256_chunk(b0, 4 * j));
                if (ng > 1) amx_widen4(&wb[i & 1][1][0][0], q4_256_chunk(b0 + gbytes, 4 * j));
                AMX_ZERO_C();
                AMX_STEP(AMX_DP_I8, x + (size_t)i * QBLOCK, K, &wb[i & 1][0][0][0], &wb[i & 1][1][0][0]);
            }
            if (i > 0) {
                int u = i - 1, b = u / 8, j = u % 8, len = q256_len(K, b);
                const uint8_t *b0 = q256_block(W, g0, b), *b1 = b0 + gbytes;
                amx_q4_sub(s, (const int32_t(*)[32])c[u & 1], xc4 + u, (size_t)subs, q4_256_sc(b0, len, j), q4_256_sc(b1, len, j), nt, ng);
                if (j == len / QBLOCK - 1) { /* the block's last sub-block: its float step */
                    amx_scale(acc, (const int32_t(*)[32])s, NULL, 0, xd + b, (size_t)blocks, q256_d(b0, dt, len), q256_d(b1, dt, len), nt, ng);
                    memset(s, 0, sizeof s);
                }
            }
            if (i < subs) AMX_STORE_C(c[i & 1]);
        }
    }
    AMX_RELEASE();
    amx_store_out(out, ldo, (const float(*)[32])acc, W, bias, epi, t0, nt, g0, ng);
}

static int tile_amx(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt, int g0,
                    int ng) {
    int dt = W->dtype;
    if (((dt == DT_MQ8_0 || dt == DT_MQ4_1) && a->kind == ACT_Q8) || ((dt == DT_MQ8_256 || dt == DT_MQ4_256) && a->kind == ACT_Q8_256)) {
        tile_q_amx(out, ldo, a, W, bias, epi, t0, nt, g0, ng);
        return 1;
    }
#ifdef QA_AVX512
    /* bf16 weights: AVX512-BF16's tile (vdpbf16ps). TDPBF16PS sums each instruction's even and
     * odd products apart (kernels/amx_emu.h), which on tests/test_kernels.c's matmuls lands
     * 2.06e-6 from the reference, over the kernel bound of 2e-6; vdpbf16ps stays within 1e-7.
     * f32 activations: the interleaved copies and AVX-512's f32 tile. */
    return tile_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, ng);
#else
    return 0;
#endif
}

/* --- the start-up self-check -------------------------------------------------------------
 * Run once before the family is adopted: the raw tile operations on fixed operands against
 * their integer / exactly representable results, then each int8 weight type's tile() on a small
 * fixed problem (two groups, rows 0..20, K = 288: a short last q256 block) against the same
 * arithmetic written as plain loops: the same integer sums and the same float steps, so the
 * results must be equal bit for bit. Any difference: the family is not used. */
static int amx_check_fail(char *why, size_t n, const char *what) {
    snprintf(why, n, "the AMX start-up self-check failed (%s)", what);
    return -1;
}

static int amx_self_check(char *why, size_t n) {
    enum { T = 21, K = 288, N = 32, NB = K / QBLOCK, NB2 = 2 };
    /* 1. one TDPBSUD, 16 x 16 x 64 bytes */
    {
        int8_t A[16][64];
        uint8_t B[16][64];
        int32_t C[16][16];
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 64; j++) {
                A[i][j] = (int8_t)((i * 37 + j * 11) % 255 - 127);
                B[i][j] = (uint8_t)((i * 13 + j * 29 + 7) % 256);
            }
        amx_configure(16, 0, 64, 1);
        AMX_TZERO(TC00);
        AMX_LOAD(TA0, A, 64);
        AMX_LOAD(TB0, B, 64);
        AMX_DP_I8(TC00, TA0, TB0);
        AMX_STORED(TC00, C, 64);
        AMX_RELEASE();
        for (int m = 0; m < 16; m++)
            for (int j = 0; j < 16; j++) {
                int32_t want = 0;
                for (int k = 0; k < 64; k++) want += A[m][k] * B[k / 4][4 * j + k % 4];
                if (C[m][j] != want) return amx_check_fail(why, n, "tdpbsud");
            }
    }
    /* 2. tile() per weight type against the loops */
    static const int types[] = {DT_MQ8_0, DT_MQ4_1, DT_MQ8_256, DT_MQ4_256};
    static uint8_t wbuf[2 * 16 * (K * 2 + 64 * NB)] __attribute__((aligned(64)));
    int8_t xq[T * K];
    uint16_t xb[T * K];
    float xd[T * NB], xs[T * NB], out[T * N], want[T * N];
    int32_t xc[T * NB], xc4[T * NB];
    float xf[T * K];
    uint32_t h = 12345;
#define AMX_RND() (h = h * 1103515245u + 12345u, (h >> 16) & 0x7fff)
    for (int i = 0; i < T * K; i++) {
        xq[i] = (int8_t)((int)(AMX_RND() % 255) - 127);
        xb[i] = f32_to_bf16((float)((int)(AMX_RND() % 64) - 32) / 16.0f);
        xf[i] = 0.0f;
    }
    for (int i = 0; i < T * NB; i++) {
        xd[i] = (float)(AMX_RND() % 100 + 1) / 1024.0f;
        xs[i] = (float)((int)(AMX_RND() % 200) - 100) / 64.0f;
        xc[i] = (int)(AMX_RND() % 2000) - 1000;
        xc4[i] = (int)(AMX_RND() % 200) - 100;
    }
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        int dt = types[ti], q256 = dt == DT_MQ8_256 || dt == DT_MQ4_256;
        Tensor W = {wbuf, dt, N, K};
        for (size_t i = 0; i < sizeof wbuf; i++) wbuf[i] = (uint8_t)AMX_RND();
        /* the scales: small positive floats (the random bytes elsewhere are fine as q) */
        for (int g = 0; g < 2; g++) {
            if (q256)
                for (int b = 0; b < NB2; b++) {
                    const uint8_t *blk = q256_block(&W, g, b);
                    float *d = (float *)(uintptr_t)q256_d(blk, dt, q256_len(K, b));
                    for (int r = 0; r < 16; r++) d[r] = (float)(AMX_RND() % 64 + 1) / 4096.0f;
                } else if (dt != DT_MBF16)
                for (int b = 0; b < NB; b++) {
                    uint8_t *blk = (uint8_t *)(uintptr_t)mq_block(&W, g, b);
                    float *d = (float *)(blk + (dt == DT_MQ8_0 ? MQ8_D_OFFSET : MQ4_D_OFFSET));
                    for (int r = 0; r < 16; r++) d[r] = (float)(AMX_RND() % 64 + 1) / 4096.0f;
                    if (dt == DT_MQ4_1)
                        for (int r = 0; r < 16; r++) ((float *)(blk + MQ4_M_OFFSET))[r] = -(float)(AMX_RND() % 64) / 256.0f;
                } else
                for (size_t i = 0; i < (size_t)16 * K; i++) /* bf16 weights: small exact values */
                    ((uint16_t *)(uintptr_t)mbf16_group(&W, g))[i] = f32_to_bf16((float)((int)(AMX_RND() % 16) - 8) / 8.0f);
        }
        Acts a;
        memset(&a, 0, sizeof a);
        a.x = xf, a.T = T, a.K = K, a.xq = xq, a.xb = xb, a.xd = xd, a.xc = xc, a.xs = xs, a.xc4 = xc4;
        a.kind = dt == DT_MBF16 ? ACT_BF16 : q256 ? ACT_Q8_256 : ACT_Q8;
        a.R = AMX_ROWS;
        int nbk = acts_blocks(a.kind, K);
        /* the same sums as plain loops (q8_256 / q4_256 with the family's float step per block) */
        for (int t = 0; t < T; t++)
            for (int o = 0; o < N; o++) {
                int g = o / 16, r = o % 16;
                float v = 0.0f;
                if (dt == DT_MBF16) {
                    const uint16_t *w = (const uint16_t *)mbf16_group(&W, g);
                    for (int k = 0; k < K; k++) v += bf16_to_f32(w[((size_t)(k / 2) * 16 + r) * 2 + k % 2]) * bf16_to_f32(xb[t * K + k]);
                } else if (!q256) {
                    for (int b = 0; b < NB; b++) {
                        const uint8_t *blk = mq_block(&W, g, b);
                        int32_t sum = dt == DT_MQ8_0 ? xc[t * nbk + b] : 0;
                        for (int k = 0; k < QBLOCK; k++)
                            sum += (dt == DT_MQ8_0 ? mq8_quad(blk, k / 4)[4 * r + k % 4] : mq4_q(blk, r, k)) * xq[t * K + b * QBLOCK + k];
                        v = fmaf((float)sum, (dt == DT_MQ8_0 ? mq8_d(blk) : mq4_d(blk))[r] * xd[t * nbk + b], v);
                        if (dt == DT_MQ4_1) v = fmaf(mq4_m(blk)[r], xs[t * nbk + b], v);
                    }
                } else {
                    for (int b = 0; b < NB2; b++) {
                        const uint8_t *blk = q256_block(&W, g, b);
                        int len = q256_len(K, b), k0 = b * QBLOCK_256;
                        int32_t sum = dt == DT_MQ8_256 ? xc[t * nbk + b] : 0;
                        if (dt == DT_MQ8_256)
                            for (int k = 0; k < len; k++) sum += q8_256_quad(blk, k / 4)[4 * r + k % 4] * xq[t * K + k0 + k];
                        else
                            for (int j = 0; j < len / QBLOCK; j++) {
                                int32_t sub = xc4[t * (K / QBLOCK) + k0 / QBLOCK + j];
                                for (int k = j * QBLOCK; k < (j + 1) * QBLOCK; k++) sub += (q4_256_q(blk, r, k) + 8) * xq[t * K + k0 + k];
                                sum += sub * q4_256_sc(blk, len, j)[r];
                            }
                        v = fmaf((float)sum, q256_d(blk, dt, len)[r] * xd[t * nbk + b], v);
                    }
                }
                want[t * N + o] = v;
            }
        memset(out, 0, sizeof out);
        for (int t0 = 0; t0 < T; t0 += AMX_ROWS)
            if (!tile_amx(out, N, &a, &W, NULL, EPI_STORE, t0, T - t0 < AMX_ROWS ? T - t0 : AMX_ROWS, 0, 2))
                return amx_check_fail(why, n, "a weight type without a tile");
        if (memcmp(out, want, sizeof out) != 0) {
            char what[64];
            snprintf(what, sizeof what, "%s tile", dt == DT_MQ8_0 ? "q8_0" : dt == DT_MQ4_1 ? "q4_1" : dt == DT_MQ8_256 ? "q8_256"
                                                   : dt == DT_MQ4_256 ? "q4_256" : "bf16");
            return amx_check_fail(why, n, what);
        }
    }
#undef AMX_RND
    return 0;
}

static const Kernels kernels_amx = {
    .names = AMX_NAMES KERNELS_OPENMP,
    .flat_rows = AMX_ROWS,
    .tile = tile_amx,
    .self_check = amx_self_check,
#ifdef QA_AVX512
    .tile_rows_f = TILE_ROWS_F,
    .tile_rows_q8 = TILE_ROWS_Q8,
    .matvec = matvec_avx512,
    .quantize_row = quantize_row_avx512,
    .quantize_row_256 = quantize_row_256_avx512,
    .softmax = softmax_avx512,
    .layernorm = layernorm_avx512,
    .silu_mul = silu_mul_avx512,
    .add = add_avx512,
    .attention = attention_avx512,
#endif
#ifdef QA_AVX512_BF16
    .attention_bf16 = attention_bf16_avx512,
    .bf16_acts = 1,
#endif
};
