/* kernels/amx.h - q8_256 matmuls on Intel AMX (Sapphire Rapids and later): TDPBSUD over
 * whole rows of activations (the contract's tile_all_rows). Everything else - the other
 * weight types' tiles, the quantisers, softmax, layernorm, attention - is the AVX-512 BF16
 * family's (kernels/avx512.h, included before this file in the real build). Why only q8_256
 * (measured, bench/kernels.c, README "Kernel families"): its int32 sums leave the tiles once
 * per 256 columns, so the tile unit does most of the work; q8_0 and q4_1 need a float step
 * every 32 columns and q4_256 an integer multiply by its sub-scales every 32, which on AMX
 * made the vector unit the bottleneck (q4_256 ~270 GOP/s against AVX-512 VNNI's ~400; the
 * earlier AMX tiles of those types are in git history). bf16 weights: TDPBF16PS sums each
 * instruction's even and odd products apart (kernels/amx_emu.h), which on
 * tests/test_kernels.c's matmuls lands 2.06e-6 from the reference, over the kernel bound of
 * 2e-6; AVX-512 BF16's vdpbf16ps stays within 1e-7.
 *
 * The tile code is written against five tile operations (configure, load, dot product,
 * store, zero) that are, one for one, the _tile_* intrinsics in the real build and, with
 * QA_AMX_EMULATE, the C model of the tile unit in kernels/amx_emu.h: tests/test_kernels.c
 * runs this same code through the model on every machine, and through the unit where the
 * CPU has one.
 *
 * Operands. A (activations): the int8 rows in 64-column slices of 32 rows (Acts.xsl,
 * slice_rows), so a tile operand is 1 KB in one run; B (weights) needs the "VNNI" layout, K/4
 * rows of 16 output columns x 4 bytes - exactly how MQ8_256 stores a group of 16 rows
 * (kernels.h quads). So B is loaded from the model file as it is: no repacking, no memory.
 *
 * A step computes 32 rows x 2 groups x 64 columns: A0, A1 (rows 0-15, 16-31), B0, B1 (the
 * two groups), C00 C01 C10 C11 - the eight tile registers of palette 1. The int32 sums
 * leave the tiles once per 256-column block and take the AVX-512 family's float step
 * (acc = fma(float(s + c), d_w d_x, acc)), block after block, so the results are the AVX-512
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
#define AMX_GROUPS 4 /* groups of 16 outputs per call (tile_all_rows' ng): two pairs */

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
static inline void amx_scale(float (*acc)[AMX_GROUPS * 16], const int32_t (*s)[32], const int32_t *add, size_t add_stride,
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
static void amx_store_out(float *out, int ldo, const float (*acc)[AMX_GROUPS * 16], const Tensor *W, const float *bias, int epi, int t0,
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

/* Rows [t0, t0 + n) (n <= AMX_CHUNK) x groups [g0, g0 + ng) (ng <= AMX_GROUPS) of a q8_256
 * matrix, in the order block, row tile, pair of groups. So the tiles are configured once
 * per chunk, always for whole 32-row tiles (the slices are zero past T; those rows' sums
 * are unused); a block's weights (up to 4 x 4 KB) stay in L1 while the chunk's rows stream
 * past them, and the next block's are prefetched to L2 a share per item (the decoder's
 * weights come from memory); a row tile's activations (8 KB), read from L2 for the first
 * pair, are in L1 for the second (measured with bench/kernels.c: ViT fc1 1.26 -> 1.6 TOP/s,
 * the decoder's down projection at 308 rows 1.25 -> 1.6-1.8); and a tile store is
 * read by its float step one item later (a vector load right after a tile store waits for
 * it), so the float step of item i - 1 runs while the unit works on item i. Each output
 * takes its float steps block by block in order, as the AVX-512 family's tile does. */
#define AMX_CHUNK 128
static inline __attribute__((always_inline)) void rows_q8_256_amx(float *out, int ldo, const Acts *a, const Tensor *W,
                                                                   const float *bias, int epi, int t0, int n, int g0, int ng,
                                                                   const int P) {
    const int two = 1, R = (n + 31) / 32, K = W->cols, S = (K + 63) / 64, blocks = q256_blocks(K);
    size_t gbytes = q256_group_bytes(DT_MQ8_256, K);
    float acc[AMX_CHUNK][AMX_GROUPS * 16] __attribute__((aligned(64)));
    int32_t c[2][AMX_ROWS][32] __attribute__((aligned(64))); /* tile sums, alternating */
    uint8_t wp[AMX_GROUPS][16][64] __attribute__((aligned(64))); /* a last step of 32 columns */
    memset(acc, 0, (size_t)n * sizeof acc[0]);
    const int8_t *xs = a->xsl + (size_t)(t0 / 32) * S * 2048; /* the slices: (tile, S, 32, 64) */
    const float *xd = a->xd + (size_t)t0 * blocks;
    const int32_t *xc = a->xc + (size_t)t0 * blocks;
    amx_configure(16, 16, 64, ng > 1 ? 2 : 1);
    int ngs[AMX_GROUPS / 2]; /* each pair's groups */
    for (int p = 0; p < P; p++) ngs[p] = ng - 2 * p < 2 ? ng - 2 * p : 2;
    int items = blocks * R * P; /* item i: block i / (R P), row tile i / P % R, pair i % P */
    for (int i = 0; i <= items; i++) {
        if (i < items) {
            int b = i / (R * P), r = i / P % R, p = i % P, ngp = ngs[p], len = q256_len(K, b), k = 0;
            const uint8_t *b0 = q256_block(W, g0 + 2 * p, b), *b1 = ngp > 1 ? b0 + gbytes : b0;
            const int8_t *xb = xs + ((size_t)r * S + (size_t)4 * b) * 2048;
            if (b + 1 < blocks && P > 1) { /* the next block's weights to L2, a share of them each item (a stream per group) */
                int j = i % (R * P), nit = R * P, bl = (int)(q256_block_bytes(DT_MQ8_256, q256_len(K, b + 1)) / 64);
                for (int g = 0; g < ng; g++) {
                    const uint8_t *nb = q256_block(W, g0 + g, b + 1);
                    for (int l = j * bl / nit; l < (j + 1) * bl / nit; l++) __builtin_prefetch(nb + 64 * (size_t)l, 0, 2);
                }
            }
            { /* (AMX_STEP's and AMX_ZERO_C's ng: this pair's) */
                const int ng = ngp;
                AMX_ZERO_C();
                for (; k + 64 <= len; k += 64)
                    AMX_STEP(AMX_DP_I8, xb + (size_t)(k / 64) * 2048, 64, q8_256_quad(b0, k / 4), q8_256_quad(b1, k / 4));
                if (k < len) { /* 32 columns left: the slice is zero past them, the weights too (wp) */
                    if (r == 0) { /* once per block and pair */
                        memset(wp[2 * p], 0, 2 * sizeof wp[0]);
                        memcpy(wp[2 * p], q8_256_quad(b0, k / 4), 8 * 64);
                        if (ng > 1) memcpy(wp[2 * p + 1], q8_256_quad(b1, k / 4), 8 * 64);
                    }
                    AMX_STEP(AMX_DP_I8, xb + (size_t)(k / 64) * 2048, 64, &wp[2 * p][0][0], &wp[2 * p + 1][0][0]);
                }
            }
        }
        if (i > 0) { /* item u: + (-128 sum x) (the AVX-512 family's start value), then the float step */
            int u = i - 1, b = u / (R * P), m0 = 32 * (u / P % R), p = u % P, ngp = ngs[p];
            int nv = n - m0 < 32 ? n - m0 : 32, len = q256_len(K, b);
            const uint8_t *b0 = q256_block(W, g0 + 2 * p, b), *b1 = ngp > 1 ? b0 + gbytes : b0;
            amx_scale((float(*)[AMX_GROUPS * 16])&acc[m0][32 * p], (const int32_t(*)[32])c[u & 1], xc + (size_t)m0 * blocks + b,
                      (size_t)blocks, xd + (size_t)m0 * blocks + b, (size_t)blocks, q256_d(b0, DT_MQ8_256, len),
                      q256_d(b1, DT_MQ8_256, len), nv, ngp);
        }
        if (i < items) {
            const int ng = ngs[i % P];
            AMX_STORE_C(c[i & 1]);
        }
    }
    AMX_RELEASE();
    for (int r = 0; r < R; r++)
        amx_store_out(out, ldo, (const float(*)[AMX_GROUPS * 16])(acc + 32 * r), W, bias, epi, t0 + 32 * r,
                      n - 32 * r < 32 ? n - 32 * r : 32, g0, ng);
}

static int tile_all_rows_amx(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int g0, int ng) {
    if (W->dtype != DT_MQ8_256 || a->kind != ACT_Q8_256 || !a->xsl) return 0;
    for (int gi = g0; gi < g0 + ng; gi += AMX_GROUPS) {
        int gn = g0 + ng - gi < AMX_GROUPS ? g0 + ng - gi : AMX_GROUPS;
        for (int t0 = 0; t0 < a->T; t0 += AMX_CHUNK) {
            int nt = a->T - t0 < AMX_CHUNK ? a->T - t0 : AMX_CHUNK;
            if (gn > 2) rows_q8_256_amx(out, ldo, a, W, bias, epi, t0, nt, gi, gn, 2); /* (P a constant in each) */
            else rows_q8_256_amx(out, ldo, a, W, bias, epi, t0, nt, gi, gn, 1);
        }
    }
    return 1;
}

/* --- the start-up self-check -------------------------------------------------------------
 * Run once before the family is adopted: one TDPBSUD on fixed operands against its integer
 * result, then the q8_256 matmul on a small fixed problem (two groups, 21 rows: one partial
 * tile, K = 288: a short last block) against the same arithmetic written as plain loops: the
 * same integer sums and the same float steps, so the results must be equal bit for bit. Any
 * difference: the family is not used. */
static int amx_check_fail(char *why, size_t n, const char *what) {
    snprintf(why, n, "the AMX start-up self-check failed (%s)", what);
    return -1;
}

static int amx_self_check(char *why, size_t n) {
    enum { T = 21, K = 288, N = 32, NB = 2 /* q256 blocks */, S = (K + 63) / 64 };
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
    /* 2. the q8_256 matmul against the loops */
    static uint8_t wbuf[2 * 16 * K + 2 * 64 * NB] __attribute__((aligned(64)));
    static int8_t slices[S][AMX_ROWS][64] __attribute__((aligned(64)));
    int8_t xq[T * K];
    float xd[T * NB], out[T * N], want[T * N];
    int32_t xc[T * NB];
    uint32_t h = 12345;
#define AMX_RND() (h = h * 1103515245u + 12345u, (h >> 16) & 0x7fff)
    for (int i = 0; i < T * K; i++) xq[i] = (int8_t)((int)(AMX_RND() % 255) - 127);
    for (int i = 0; i < T * NB; i++) {
        xd[i] = (float)(AMX_RND() % 100 + 1) / 1024.0f;
        xc[i] = (int)(AMX_RND() % 2000) - 1000;
    }
    memset(slices, 0, sizeof slices);
    for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++) slices[k / 64][t][k % 64] = xq[t * K + k];
    Tensor W = {wbuf, DT_MQ8_256, N, K};
    for (size_t i = 0; i < sizeof wbuf; i++) wbuf[i] = (uint8_t)AMX_RND();
    for (int g = 0; g < 2; g++) /* the scales: small positive floats (the random bytes elsewhere are fine as q) */
        for (int b = 0; b < NB; b++) {
            float *d = (float *)(uintptr_t)q256_d(q256_block(&W, g, b), DT_MQ8_256, q256_len(K, b));
            for (int r = 0; r < 16; r++) d[r] = (float)(AMX_RND() % 64 + 1) / 4096.0f;
        }
#undef AMX_RND
    Acts a;
    memset(&a, 0, sizeof a);
    a.T = T, a.K = K, a.kind = ACT_Q8_256, a.xq = xq, a.xd = xd, a.xc = xc, a.xsl = &slices[0][0][0];
    for (int t = 0; t < T; t++)
        for (int o = 0; o < N; o++) {
            float v = 0.0f;
            for (int b = 0; b < NB; b++) {
                const uint8_t *blk = q256_block(&W, o / 16, b);
                int len = q256_len(K, b);
                int32_t sum = xc[t * NB + b];
                for (int k = 0; k < len; k++) sum += q8_256_quad(blk, k / 4)[4 * (o % 16) + k % 4] * xq[t * K + b * QBLOCK_256 + k];
                v = fmaf((float)sum, q256_d(blk, DT_MQ8_256, len)[o % 16] * xd[t * NB + b], v);
            }
            want[t * N + o] = v;
        }
    memset(out, 0, sizeof out);
    if (!tile_all_rows_amx(out, N, &a, &W, NULL, EPI_STORE, 0, 2) || memcmp(out, want, sizeof out) != 0)
        return amx_check_fail(why, n, "q8_256 matmul");
    return 0;
}

#include "amx_attention.h" /* attention_bf16 on the tile unit */

static const Kernels kernels_amx = {
    .names = AMX_NAMES KERNELS_OPENMP,
    .slice_rows = AMX_ROWS,
    .tile_all_rows = tile_all_rows_amx,
    .all_rows_dtypes = 1u << DT_MQ8_256,
    .self_check = amx_self_check,
#ifdef QA_AVX512 /* the other weight types: AVX-512's tiles (above: why) */
    .tile = tile_avx512,
    .tile_rows_f = TILE_ROWS_F,
    .tile_rows_q8 = TILE_ROWS_Q8,
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
#endif
    .attention_bf16_unit = attention_bf16_amx,
#ifdef QA_AVX512_BF16
    .attention_bf16 = attention_bf16_avx512,
    .bf16_acts = 1,
#endif
};
