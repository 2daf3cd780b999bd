/* kernels.h - the kernel contract: the few functions a CPU family provides, the types
 * they work on, and the packed weight layouts, named once for everybody (qalign.c,
 * kernels/<family>.h, export.py's comments, the tests).
 *
 * qalign.c holds the scalar reference of every kernel: plain loops, the fallback on any
 * CPU and the oracle of tests/test_kernels.c. A CPU family (kernels/avx512.h,
 * kernels/avx2.h, kernels/neon.h) fills in a `Kernels` table with faster versions of
 * some of them; every entry it leaves NULL, and every call it declines (returns 0), runs
 * the reference instead. kernels.c picks the family at compile time from the -march
 * macros (one #elif per family). PORTING.md: how to add one.
 *
 * Rules every implementation follows (the tests check them):
 *   - same arithmetic as the reference, to float rounding: the kernel tests bound the
 *     difference; quantize_row must be bit-identical;
 *   - each output is computed in a fixed order that depends neither on the thread count
 *     nor on the other rows of the call, so a score is the same bits alone or in a batch;
 *   - OpenMP splits only the outermost independent loop; no allocation, no globals. */
#ifndef QALIGN_KERNELS_H
#define QALIGN_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#elif defined(__GNUC__) && !defined(__clang__)
/* without -fopenmp the `#pragma omp` lines are meant to be ignored (one thread) */
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#endif

/* ---- tensor element types (export.py DT_*) ------------------------------------------
 * Plain tensors (vectors, tables, the tokenizer) are row-major. Weight matrices are the
 * M* types: rows grouped by PACK_ROWS, laid out so that one 64-byte load holds the same
 * column slice of 16 rows (below). */
enum { DT_F32 = 0, DT_U8 = 1, DT_U32 = 2, DT_MF32 = 3, DT_MBF16 = 4, DT_MQ8_0 = 5, DT_MQ4_1 = 6, DT_MQ8_256 = 7,
       DT_MQ4_256 = 8, DT_COUNT };

/* A weight matrix [rows, cols] (PyTorch Linear layout: out x in), packed as its dtype. */
typedef struct {
    const void *data;       /* into the model file (read-only) */
    int dtype;              /* DT_MF32 / DT_MBF16 / DT_MQ8_0 / DT_MQ4_1 / DT_MQ8_256 / DT_MQ4_256 */
    int rows, cols;         /* out features, in features */
} Tensor;

/* ---- packed weight layouts ----------------------------------------------------------
 * Rows are padded with zeros to a multiple of PACK_ROWS and grouped; g is a group, r a row
 * in it (0..15), k a column.
 *   MF32   [g][k][r]                      f32: 64 bytes = column k of the group's 16 rows
 *   MBF16  [g][k/2][r][2]                 bf16: 64 bytes = columns 2k', 2k'+1 of 16 rows
 *   MQ8_0  [g][b][MQ8_BLOCK_BYTES]        block b = columns 32b..32b+31:
 *            quad j (j < 8, columns 4j..4j+3): 64 bytes, row r at 4r..4r+3, u8 = q + 128
 *            then 16 f32 scales d (row r: d[r]);    value = d[r] * q
 *   MQ4_1  [g][b][MQ4_BLOCK_BYTES]        block b = columns 32b..32b+31:
 *            chunk c (c < 4): 64 bytes, row r at 4r..4r+3; low nibble = quad 2c, high
 *            nibble = quad 2c+1 (0..15); then 16 f32 d, then 16 f32 m;
 *            value = d[r] * q + m[r]
 *   MQ8_256 [g][b][16 * L + 64]           block b = columns 256b..256b+L-1, L = min(256, K - 256b)
 *            (K a multiple of 32, so only the last block of a row can be shorter):
 *            quad j (j < L/4): 64 bytes, row r at 4r..4r+3, u8 = q + 128 (-127 <= q <= 127);
 *            then 16 f32 d;                         value = d[r] * q
 *   MQ4_256 [g][b][8.5 * L + 64]          block b as MQ8_256, in sub-blocks of 32 columns:
 *            chunk c (c < L/8): 64 bytes, row r at 4r..4r+3; low nibble = quad 2c, high
 *            nibble = quad 2c+1, nibble = q + 8 (-8 <= q <= 7); then per sub-block j
 *            (j < L/32) 16 s8 sub-scales sc (row r at 16j + r); then 16 f32 d;
 *            value = d[r] * sc[j][r] * q
 * MQ8_256 and MQ4_256 are the fast types: per 256 columns the tiles do 64 (or, for MQ4_256,
 * 8 x 8 plus 8 16-bit scalings of) integer dot products per accumulator before one float
 * step, where MQ8_0 / MQ4_1 need float arithmetic every 32 columns. */
#define PACK_ROWS 16   /* output rows per group */
#define QBLOCK 32      /* values per quantisation block, along a row (MQ8_0, MQ4_1; and the
                          sub-blocks of MQ4_256); every quantised type needs K % QBLOCK == 0 */
#define QBLOCK_256 256 /* columns per block of MQ8_256 / MQ4_256 (the last one may be shorter) */
enum {
    MQ8_QUAD_BYTES = 4 * PACK_ROWS,                   /* 64 */
    MQ8_D_OFFSET = 8 * MQ8_QUAD_BYTES,                /* 512 */
    MQ8_BLOCK_BYTES = MQ8_D_OFFSET + 4 * PACK_ROWS,   /* 576 */
    MQ4_CHUNK_BYTES = 4 * PACK_ROWS,                  /* 64 */
    MQ4_D_OFFSET = 4 * MQ4_CHUNK_BYTES,               /* 256 */
    MQ4_M_OFFSET = MQ4_D_OFFSET + 4 * PACK_ROWS,      /* 320 */
    MQ4_BLOCK_BYTES = MQ4_M_OFFSET + 4 * PACK_ROWS    /* 384 */
};

static inline size_t mq_block_bytes(int dtype) { return dtype == DT_MQ8_0 ? MQ8_BLOCK_BYTES : MQ4_BLOCK_BYTES; }
/* group g of an MF32 / MBF16 matrix (bf16 pairs as u32) */
static inline const float *mf32_group(const Tensor *W, int g) { return (const float *)W->data + (size_t)g * W->cols * PACK_ROWS; }
static inline const uint32_t *mbf16_group(const Tensor *W, int g) { return (const uint32_t *)W->data + (size_t)g * (W->cols / 2) * PACK_ROWS; }
/* block b of group g of an MQ8_0 / MQ4_1 matrix */
static inline const uint8_t *mq_block(const Tensor *W, int g, int b) {
    return (const uint8_t *)W->data + ((size_t)g * (W->cols / QBLOCK) + b) * mq_block_bytes(W->dtype);
}
static inline const uint8_t *mq8_quad(const uint8_t *blk, int j) { return blk + j * MQ8_QUAD_BYTES; }
static inline const float *mq8_d(const uint8_t *blk) { return (const float *)(blk + MQ8_D_OFFSET); }
static inline const uint8_t *mq4_chunk(const uint8_t *blk, int c) { return blk + c * MQ4_CHUNK_BYTES; }
static inline const float *mq4_d(const uint8_t *blk) { return (const float *)(blk + MQ4_D_OFFSET); }
static inline const float *mq4_m(const uint8_t *blk) { return (const float *)(blk + MQ4_M_OFFSET); }
/* MQ8_256 / MQ4_256: blocks per row, the columns of block b, a block's bytes, block b of group g */
static inline int q256_blocks(int K) { return (K + QBLOCK_256 - 1) / QBLOCK_256; }
static inline int q256_len(int K, int b) { return K - b * QBLOCK_256 < QBLOCK_256 ? K - b * QBLOCK_256 : QBLOCK_256; }
static inline size_t q256_block_bytes(int dtype, int len) {
    return dtype == DT_MQ8_256 ? (size_t)PACK_ROWS * len + 64 : (size_t)PACK_ROWS * len / 2 + (size_t)len / 2 + 64;
}
static inline size_t q256_group_bytes(int dtype, int K) {
    return (dtype == DT_MQ8_256 ? (size_t)PACK_ROWS * K : (size_t)PACK_ROWS * K / 2 + (size_t)K / 2) + 64 * (size_t)q256_blocks(K);
}
static inline const uint8_t *q256_block(const Tensor *W, int g, int b) {
    return (const uint8_t *)W->data + (size_t)g * q256_group_bytes(W->dtype, W->cols) +
           (size_t)b * q256_block_bytes(W->dtype, QBLOCK_256);
}
/* in a block of len columns: MQ8_256 quad j, MQ4_256 chunk c, sub-scales of sub-block j, d */
static inline const uint8_t *q8_256_quad(const uint8_t *blk, int j) { return blk + (size_t)j * 64; }
static inline const uint8_t *q4_256_chunk(const uint8_t *blk, int c) { return blk + (size_t)c * 64; }
static inline const int8_t *q4_256_sc(const uint8_t *blk, int len, int j) {
    return (const int8_t *)(blk + (size_t)len * PACK_ROWS / 2 + (size_t)j * PACK_ROWS);
}
static inline const float *q256_d(const uint8_t *blk, int dtype, int len) {
    return (const float *)(blk + q256_block_bytes(dtype, len) - 64);
}
/* q of row r, column k (0..len-1) of a block */
static inline int q8_256_q(const uint8_t *blk, int r, int k) { return (int)q8_256_quad(blk, k / 4)[4 * r + k % 4] - 128; }
static inline int q4_256_q(const uint8_t *blk, int r, int k) {
    uint8_t byte = q4_256_chunk(blk, k / 8)[4 * r + k % 4];
    return ((k / 4) % 2 ? byte >> 4 : byte & 15) - 8;
}

/* q of row r, column k (0..31) of a block */
static inline int mq8_q(const uint8_t *blk, int r, int k) { return (int)mq8_quad(blk, k / 4)[4 * r + k % 4] - 128; }
static inline int mq4_q(const uint8_t *blk, int r, int k) {
    uint8_t byte = mq4_chunk(blk, k / 8)[4 * r + k % 4];
    return (k / 4) % 2 ? byte >> 4 : byte & 15;
}

/* ---- activations, prepared once per matmul input ------------------------------------
 * A matmul multiplies activations x (T, K) by a weight matrix. For its weight type x is
 * used as f32, rounded to bf16, or quantised to int8 in blocks (d = max|x|/127,
 * q = round(x/d)): blocks of QBLOCK for MQ8_0 / MQ4_1 (ACT_Q8), of QBLOCK_256 (the last
 * one of a row shorter) for MQ8_256 / MQ4_256 (ACT_Q8_256). The preparation is made once
 * and shared by all the matmuls that read the same x (q/k/v, gate/up). A family with tiles
 * also gets copies interleaved in tiles of R rows (R = its tile_rows_f / tile_rows_q8), so
 * one pointer walks a tile: 4-byte groups (an f32, a bf16 pair or an int8 quad) as
 * (tiles, K/group, R), rows past T zero. */
typedef enum { ACT_NONE, ACT_F32, ACT_BF16, ACT_Q8, ACT_Q8_256 } ActKind;

typedef struct {
    const float *x;         /* (T, K) the activations */
    int T, K;               /* rows, row length */
    ActKind kind;           /* what the buffers below hold for x (ACT_NONE: nothing yet) */
    uint16_t *xb;           /* ACT_BF16: (T, K) x rounded to bf16 */
    int8_t *xq;             /* ACT_Q8, ACT_Q8_256: (T, K) round(x / d) in -127..127 */
    float *xd;              /* (T, nb) d of each block; nb = acts_blocks(): K/32 or ceil(K/256) */
    int32_t *xc;            /* (T, nb) -128 * sum of the block's xq (undoes MQ8_0's / MQ8_256's +128) */
    float *xs;              /* ACT_Q8: (T, K/32) d * sum of the block's xq (MQ4_1's m term) */
    int32_t *xc4;           /* ACT_Q8_256: (T, K/32) -8 * sum of each 32 values' xq (undoes MQ4_256's +8) */
    size_t cap;             /* T*K the buffers hold */
    int bf16_fast;          /* bf16 weights meet bf16 activations (the family has bf16 tiles, not --precise) */
    int R;                  /* rows per tile of the copies below (0: not made) */
    uint32_t *xp;           /* (tiles, K/4 | K/2 | K, R) int8 quads, bf16 pairs or f32 */
    float *xdp;             /* (tiles, nb, R) as xd */
    int32_t *xcp;           /* (tiles, nb, R) as xc */
    float *xsp;             /* ACT_Q8: (tiles, K/32, R) as xs */
    int32_t *xc4p;          /* ACT_Q8_256: (tiles, K/32, R) as xc4 */
    size_t pcap;            /* 4-byte groups xp holds */
    int8_t *xsl;            /* ACT_Q8, ACT_Q8_256 with a family's slice_rows S: xq as (tiles of S
                               rows, ceil(K/64) slices, S rows, 64 columns), zero past T and K */
    size_t slcap;           /* bytes xsl holds */
    int interleaved;        /* xp, xdp, ... hold the copies of the current kind */
    int sliced;             /* xsl holds them */
} Acts;

/* Quantisation blocks per row of K values for an int8 kind. */
static inline int acts_blocks(ActKind kind, int K) { return kind == ACT_Q8_256 ? q256_blocks(K) : K / QBLOCK; }
/* The interleaved tile holding row t0 (a multiple of a->R), and its per-block and per-32
 * records (xdp, xcp, xsp: acts_tile_blocks; xc4p: acts_tile_subs). */
static inline const uint32_t *acts_tile(const Acts *a, int t0) {
    int per = a->kind == ACT_Q8 || a->kind == ACT_Q8_256 ? 4 : a->kind == ACT_BF16 ? 2 : 1;
    return a->xp + (size_t)(t0 / a->R) * (size_t)(a->K / per) * a->R;
}
static inline size_t acts_tile_blocks(const Acts *a, int t0) { return (size_t)(t0 / a->R) * (size_t)acts_blocks(a->kind, a->K) * a->R; }
static inline size_t acts_tile_subs(const Acts *a, int t0) { return (size_t)(t0 / a->R) * (size_t)(a->K / QBLOCK) * a->R; }

/* ---- small scalar pieces every implementation shares -------------------------------- */

enum { EPI_STORE, EPI_ADD, EPI_GELU };  /* out = v, out += v, out = QuickGELU(v) */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* Round to nearest even, as vcvtneps2bf16 (NaN kept a quiet NaN). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static inline float quick_gelu1(float x) { return x / (1.0f + expf(-1.702f * x)); }
static inline float silu1(float x) { return x / (1.0f + expf(-x)); }
/* The matmul epilogue for one output: + bias, then QuickGELU or += the old value. */
static inline void store_out(float *o, float v, const float *bias, int col, int epi) {
    if (bias) v += bias[col];
    if (epi == EPI_GELU) v = quick_gelu1(v);
    if (epi == EPI_ADD) v += *o;
    *o = v;
}
static inline size_t pad16(size_t n) { return (n + 15) / 16 * 16; }

/* For elementwise SIMD kernels: fn(a + i, b + i) on each 16 values of a (n of them), the
 * tail through zero-padded copies, so that a value's bits never depend on where in the
 * buffer it sits (a row gives the same bits alone or inside a batch). */
static inline void by_16(float *a, const float *b, size_t n, void (*fn)(float *a16, const float *b16)) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) fn(a + i, b + i);
    if (i < n) {
        float ta[16] = {0}, tb[16] = {0};
        memcpy(ta, a + i, (n - i) * sizeof(float));
        memcpy(tb, b + i, (n - i) * sizeof(float));
        fn(ta, tb);
        memcpy(a + i, ta, (n - i) * sizeof(float));
    }
}
static inline int kernel_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Attention workspaces (sized by the run state for the longest key sequence Tk):
 * scratch: per thread ATT_SCRATCH_ROWS * pad16(Tk) floats; kt: 2 * KVH * hd * pad16(Tk). */
#define ATT_SCRATCH_ROWS 16 /* the AMX attention's tile of query rows (kernels/amx_attention.h) */

/* The most activation rows a family's matvec() takes (below): a decode step of that many
 * answers stepped together reads each weight once. */
#define MATVEC_ROWS 8

/* ---- the contract --------------------------------------------------------------------
 * What a family may provide. NULL (or a return value of 0) means: use the reference. */
#ifdef _OPENMP
#define KERNELS_OPENMP " openmp"
#else
#define KERNELS_OPENMP ""
#endif

typedef struct {
    const char *names;      /* "scalar", the instruction sets used, then KERNELS_OPENMP,
                               e.g. "scalar avx512 avx512-vnni openmp" (qalign --info) */
    int tile_rows_f;        /* activation rows per tile for f32/bf16 activations (<= 16) */
    int tile_rows_q8;       /* ... for int8 activations; 0 and 0: no tiles, no interleaved copies */
    int bf16_acts;          /* tile() multiplies bf16 weights by bf16 activations */

    /* out[t, col] for rows [t0, t0+nt) (t0 a multiple of the tile rows, nt <= them) and
     * the output columns of groups [g0, g0+ng) (ng <= 2; columns past W->rows are not
     * stored): epilogue(x[t] . W[col] + bias[col]). x comes from a (prepared for W's type,
     * interleaved). Returns 0 if it has no tile for this weight/activation type. */
    int (*tile)(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt,
                int g0, int ng);
    /* optional: the same for every row, [0, a->T), of groups [g0, g0+ng): bit for bit what
     * tile() gives called for each t0 in steps of the tile rows, so that a family can keep
     * state across rows (AMX: the tile configuration; a block of weights in L1 for many
     * rows). matmul_acts calls it for the weight types of all_rows_dtypes only, and for those
     * it must return 1; 0 for any other type. */
    int (*tile_all_rows)(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int g0, int ng);
    uint32_t all_rows_dtypes; /* the weight types tile_all_rows takes (bits 1 << DT_*): for them
                                 no interleaved copies are made */
    /* the same for a few activation rows (1 <= a->T <= MATVEC_ROWS: decoding a token of one
     * answer or of a few stepped together), rows [0, a->T) of groups [g0, g0+ng) (ng <= 4),
     * each group's weights read once for all the rows, x read from the row-major buffers (xq,
     * xd, xc, xc4); each row the same bits as that row inside tile(), whatever a->T. ng = 0:
     * nothing is written, the answer says whether it has one. Returns 0 if it has none for
     * this weight/activation type (then it wrote nothing). The reference: tile_ref per row. */
    int (*matvec)(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int g0, int ng);
    /* one row of K (a multiple of QBLOCK) values: q, d, c = -128 sum q, s = d sum q per block;
     * bit-identical to quantize_row_ref */
    void (*quantize_row)(int8_t *q, float *d, int32_t *c, float *s, const float *x, int K);
    /* the same in blocks of QBLOCK_256 (ACT_Q8_256): q, d and c per block, c4 = -8 sum q per
     * 32 values; bit-identical to quantize_row_256_ref */
    void (*quantize_row_256)(int8_t *q, float *d, int32_t *c, int32_t *c4, const float *x, int K);
    /* in place over n values, max-subtracted */
    void (*softmax)(float *x, int n);
    /* out (T, C) = LayerNorm(x) * w + b; out may equal x */
    void (*layernorm)(float *out, const float *x, const float *w, const float *b, int T, int C, float eps);
    /* a = silu(a) * b; a value's bits must not depend on its position in the buffer */
    void (*silu_mul)(float *a, const float *b, size_t n);
    /* x += y */
    void (*add)(float *x, const float *y, size_t n);
    /* x = gelu_pytorch_tanh(x) as x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3) (the
     * tanh form rewritten: 0.5 (1 + tanh u) = 1 / (1 + exp(-2u))); in place; a value's bits
     * must not depend on its position in the buffer */
    void (*gelu_tanh)(float *x, size_t n);
    /* a = a * (1 / (1 + exp(-b))) (a times sigmoid(b): Qwen3.5's attention output gate); the
     * same rule */
    void (*sigmoid_mul)(float *a, const float *b, size_t n);
    /* One row of a causal depthwise conv1d with SiLU (Qwen3.5's Gated DeltaNet): for c < C
     *   out[c] = silu(sum over taps j = j0..K-1 of w[j C + c] * in[c - (K-1-j) ldi])
     * (in: the row's own input; tap K-1 reads it, tap j the row K-1-j before it; j0: the first
     * tap with a row, max(0, K-1-t) for row t), each tap's product rounded then added, in tap
     * order, from 0 - the sum bit for bit the plain loop's; silu(x) = x / (1 + exp(-x)). */
    void (*conv_silu_row)(float *out, const float *in, size_t ldi, const float *w, int C, int K, int j0);
    /* out (Tq, H*hd) = softmax(q k^T / sqrt(hd) [+ causal mask]) v per head; q (Tq, ldq),
     * k, v (Tk, ldkv) with kv head h / (H/KVH); causal: query i sees keys j <= i + q_offset.
     * Returns 0 for a shape it does not handle. */
    int (*attention)(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv, int Tq, int Tk,
                     int H, int KVH, int hd, int causal, int q_offset, float *scratch, size_t scratch_stride, float *kt);
    /* the same, non-causal, with bf16 products and f32 sums (the ViT of non-f32 models) */
    int (*attention_bf16)(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv, int Tq,
                          int Tk, int H, int KVH, int hd, float *scratch, size_t scratch_stride, float *kt);
    /* attention_bf16 on a matrix unit (AMX: kernels/amx_attention.h): the same arithmetic, its
     * f32 sums in the unit's order, so not attention_bf16's bits. Both ViTs (mPLUG-Owl2's and
     * Qwen3.5's) take it where a family has it; the amx family's scores on non-f32 models are
     * therefore not the avx512-bf16 family's bits (tests/test_variants.py bounds them against
     * f32 as tests/test_accuracy.py does). */
    int (*attention_bf16_unit)(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv, int Tq,
                               int Tk, int H, int KVH, int hd, float *scratch, size_t scratch_stride, float *kt);
    /* The gated delta rule (Qwen3.5's Gated DeltaNet, qwen35.c) of one head on 16 columns of
     * its state: st (dk, 16) f32, updated in place, through T tokens; per token t
     *   a_k = k_t^T st,  a_q = q_t^T st   (each over i in order)
     *   delta = (v_t - decay_t a_k) beta_t;  out_t = decay_t a_q + qk_t delta
     *   st = decay_t st + k_t delta^T
     * q_t, k_t: dk values at q + t ldqk, k + t ldqk; v_t: w (<= 16) values at v + t ldv (the
     * columns past w are zero in st and stay zero); out_t: w values at out + t ldo; decay,
     * beta, qk (= q_t . k_t): T values. One thread. */
    void (*delta_rule16)(float *out, int ldo, float *st, const float *q, const float *k, int ldqk, const float *v, int ldv,
                         const float *decay, const float *beta, const float *qk, int T, int dk, int w);
    /* > 0: int8 activations are also copied in slices for tile_all_rows (Acts.xsl: AMX,
     * where a tile operand is then one contiguous run) */
    int slice_rows;
    /* run once before the family is adopted (kernels.c): a small fixed problem against the
     * same arithmetic in plain C; 0 if the results agree, else -1 with the reason in why */
    int (*self_check)(char *why, size_t n);
} Kernels;

/* The family this process uses (kernels.c): in the portable build the best one the CPU and
 * OS allow, or the one QALIGN_KERNELS / kernels_choose() names, chosen on the first call;
 * otherwise the one compiled in. A table of NULLs for the scalar family. */
const Kernels *kernels_cpu(void);
/* Its name ("scalar", "avx2", "avx512-bf16", "amx", "neon-dotprod", ...) and why it runs. */
const char *kernels_family(void);
const char *kernels_why(void);
/* Ask for a family by name (NULL or "": QALIGN_KERNELS if set, else the best; "auto": the
 * best). Once per process: asking later for another than the one running is an error.
 * 0, or -1 with a one-line message in err. */
int kernels_choose(const char *want, char *err, size_t errlen);

#endif
