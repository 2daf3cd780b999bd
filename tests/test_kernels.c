/* test_kernels.c - every kernel of this build's CPU family (kernels.h, kernels/<family>.h)
 * against its scalar reference in qalign.c, on random data.
 *
 * Built by `make` as build/test_kernels (qalign.c and kernels.c included with -DTESTING,
 * so the static kernels are callable); run by tests/test_kernels.py. Prints one line per
 * check with the measured error and exits non-zero if any check fails. In a build without
 * a family the same checks run reference-against-reference (and trivially agree), which
 * still exercises the packed layouts. */
#ifndef TESTING
#define TESTING
#endif
#include "../qalign.c"
#include "../kernels.c"
/* the AMX family's tile code on the C model of the tile unit (kernels/amx_emu.h): runs on
 * every machine */
#define QA_AMX_EMULATE 1
#include "../kernels/amx.h"

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* Buffers for matmul inputs of up to cap values (rows of up to max_k) */
static void test_acts(Acts *a, size_t cap, size_t max_k, int bf16) {
    size_t bytes = 0;
    if (acts_alloc(a, cap, max_k, bf16, &bytes) != 0) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
}

/* The same product computed by the reference tile and quantiser only. */
static void matmul_ref(float *out, Acts *a, const float *x, int T, const Tensor *W, const float *bias, int epi) {
    acts_set(a, x, T, W->cols);
    acts_convert(a, act_kind_for(a, W->dtype));
    acts_interleave(a);
    int nb = acts_blocks(a->kind, a->K), ns = a->K / QBLOCK;
    for (int t = 0; t < T && (a->kind == ACT_Q8 || a->kind == ACT_Q8_256); t++) { /* the reference quantisers, to test the family's too */
        int8_t *q = a->xq + (size_t)t * a->K;
        if (a->kind == ACT_Q8)
            quantize_row_ref(q, a->xd + (size_t)t * nb, a->xc + (size_t)t * nb, a->xs + (size_t)t * nb, x + (size_t)t * a->K, a->K);
        else
            quantize_row_256_ref(q, a->xd + (size_t)t * nb, a->xc + (size_t)t * nb, a->xc4 + (size_t)t * ns, x + (size_t)t * a->K, a->K);
    }
    tile_ref(out, W->rows, a, W, bias, epi, 0, T, 0, (W->rows + PACK_ROWS - 1) / PACK_ROWS);
}

/* The family's version where it has one, else the reference (which then meets itself). */
static void quantize_row(int8_t *q, float *d, int32_t *c, float *s, const float *x, int K) {
    if (kernels_cpu()->quantize_row) kernels_cpu()->quantize_row(q, d, c, s, x, K);
    else quantize_row_ref(q, d, c, s, x, K);
}
static void quantize_row_256(int8_t *q, float *d, int32_t *c, int32_t *c4, const float *x, int K) {
    if (kernels_cpu()->quantize_row_256) kernels_cpu()->quantize_row_256(q, d, c, c4, x, K);
    else quantize_row_256_ref(q, d, c, c4, x, K);
}
static void softmax(float *x, int n) {
    if (kernels_cpu()->softmax) kernels_cpu()->softmax(x, n);
    else softmax_ref(x, n);
}

static int n_pass, n_fail;

static void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (ok) n_pass++;
    else n_fail++;
}

/* xorshift random numbers, fixed seed: the same data on every run */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}
static float frand(void) { return (float)rnd() / 4294967296.0f * 2.0f - 1.0f; } /* [-1, 1) */

static double max_abs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}
static double max_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d != d) return INFINITY;
        m = d > m ? d : m;
    }
    return m;
}

/* A random matrix [rows, cols] of `dtype`, directly in the packed layout. */
static Tensor random_matrix(int dtype, int rows, int cols) {
    Tensor W = {NULL, dtype, rows, cols};
    size_t groups = (size_t)(rows + 15) / 16, nb = (size_t)cols / QBLOCK;
    size_t bytes = dtype_nbytes(dtype, (uint64_t)rows * cols, (uint64_t)rows, (uint64_t)cols);
    uint8_t *p = xmalloc(bytes);
    if (dtype == DT_MF32) {
        for (size_t i = 0; i < bytes / 4; i++) ((float *)p)[i] = frand() * 0.2f;
    } else if (dtype == DT_MBF16) {
        for (size_t i = 0; i < bytes / 2; i++) ((uint16_t *)p)[i] = f32_to_bf16(frand() * 0.2f);
    } else if (dtype == DT_MQ8_256 || dtype == DT_MQ4_256) { /* per block: values, (sub-scales,) d */
        for (size_t g = 0; g < groups; g++)
            for (int b = 0; b < q256_blocks(cols); b++) {
                int len = q256_len(cols, b);
                uint8_t *blk = p + g * q256_group_bytes(dtype, cols) + (size_t)b * q256_block_bytes(dtype, QBLOCK_256);
                size_t vals = dtype == DT_MQ8_256 ? (size_t)16 * len : (size_t)8 * len;
                for (size_t i = 0; i < vals; i++) blk[i] = dtype == DT_MQ8_256 ? (uint8_t)(1 + rnd() % 255) : (uint8_t)rnd();
                if (dtype == DT_MQ4_256)
                    for (int i = 0; i < len / 2; i++) blk[vals + i] = (uint8_t)(int8_t)(rnd() % 255 - 127);
                float *d = (float *)(blk + q256_block_bytes(dtype, len) - 64);
                for (int r = 0; r < PACK_ROWS; r++) d[r] = (0.001f + 0.01f * (frand() + 1.0f)) * (dtype == DT_MQ4_256 ? 0.05f : 1.0f);
            }
    } else { /* the values (q + 128 bytes, or nibble pairs), then the scales: kernels.h */
        size_t bb = mq_block_bytes(dtype), vals = dtype == DT_MQ8_0 ? MQ8_D_OFFSET : MQ4_D_OFFSET;
        for (size_t g = 0; g < groups * nb; g++) {
            uint8_t *blk = p + g * bb;
            for (size_t i = 0; i < vals; i++) blk[i] = dtype == DT_MQ8_0 ? (uint8_t)(1 + rnd() % 255) : (uint8_t)rnd();
            for (int r = 0; r < PACK_ROWS; r++) {
                float *d = (float *)(blk + vals), *m = (float *)(blk + MQ4_M_OFFSET);
                d[r] = 0.001f + 0.01f * (frand() + 1.0f);
                if (dtype == DT_MQ4_1) m[r] = -0.1f * (frand() + 1.0f);
            }
        }
    }
    W.data = p;
    return W;
}

static void test_matmul(void) {
    const int types[] = {DT_MF32, DT_MBF16, DT_MQ8_0, DT_MQ4_1, DT_MQ8_256, DT_MQ4_256};
    /* 288 and 800: a shorter last block of 32 for MQ8_256 / MQ4_256 */
    const int shapes[][2] = {{16, 32}, {40, 64}, {33, 96}, {100, 256}, {24, 288}, {17, 800}, {64, 1024}, {1024, 64}, {48, 4096}, {32, 8192}};
    /* 161: AMX's whole-rows path in two chunks of rows (AMX_CHUNK), the second partial; and
     * at K 8192 in two blocks of rows (matmul_acts' ALL_ROWS_L2_BYTES: 96 + 65 rows) */
    const int Ts[] = {1, 2, 5, 7, 8, 9, 17, 33, 77, 161};
    int maxT = 161, maxK = 8192, maxN = 1024;
    float *x = xmalloc((size_t)maxT * maxK * sizeof(float));
    float *bias = xmalloc((size_t)maxN * sizeof(float));
    float *o1 = xmalloc((size_t)maxT * maxN * sizeof(float)), *o2 = xmalloc((size_t)maxT * maxN * sizeof(float));
    for (size_t i = 0; i < (size_t)maxN; i++) bias[i] = frand();
    for (int mode = 0; mode < 2; mode++) { /* 0: f32 activations for bf16 weights, 1: bf16 activations */
        Acts a;
        test_acts(&a, (size_t)maxT * maxK, (size_t)maxK, mode);
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
            if (mode == 1 && types[ti] != DT_MBF16) continue;
            double worst = 0;
            int cases = 0;
            for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
                int N = shapes[si][0], K = shapes[si][1];
                Tensor W = random_matrix(types[ti], N, K);
                for (size_t tj = 0; tj < sizeof Ts / sizeof Ts[0]; tj++) {
                    int T = Ts[tj];
                    for (size_t i = 0; i < (size_t)T * K; i++) x[i] = frand() * (i % 97 == 0 ? 8.0f : 1.0f);
                    for (int epi = EPI_STORE; epi <= EPI_GELU; epi++) {
                        const float *b = epi == EPI_STORE ? NULL : bias;
                        for (size_t i = 0; i < (size_t)T * N; i++) o1[i] = o2[i] = frand();
                        matmul(o1, &a, x, T, &W, b, epi);
                        matmul_ref(o2, &a, x, T, &W, b, epi);
                        double rel = max_diff(o1, o2, (size_t)T * N) / (max_abs(o2, (size_t)T * N) + 1e-30);
                        worst = rel > worst ? rel : worst;
                        cases++;
                    }
                }
                free((void *)W.data);
            }
            check(worst <= 2e-6, "matmul %-5s%s vs reference tile: %d cases, max relative error %.2e", DT_NAMES[types[ti]],
                  types[ti] == DT_MBF16 ? (mode ? " (bf16 activations)" : " (f32 activations)") : "", cases, worst);
        }
        acts_free(&a);
    }
    free(x);
    free(bias);
    free(o1);
    free(o2);
}

static void test_threads_deterministic(void) {
#ifdef _OPENMP
    const int types[] = {DT_MF32, DT_MBF16, DT_MQ8_0, DT_MQ4_1, DT_MQ8_256, DT_MQ4_256};
    int T = 37, N = 200, K = 544;
    float *x = xmalloc((size_t)T * K * sizeof(float)), *o1 = xmalloc((size_t)T * N * sizeof(float)),
          *o2 = xmalloc((size_t)T * N * sizeof(float)), *o3 = xmalloc((size_t)13 * N * sizeof(float));
    for (size_t i = 0; i < (size_t)T * K; i++) x[i] = frand();
    Acts a;
    test_acts(&a, (size_t)T * K, (size_t)K, 1);
    int same = 1;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        Tensor W = random_matrix(types[ti], N, K);
        omp_set_num_threads(1);
        matmul(o1, &a, x, T, &W, NULL, EPI_STORE);
        omp_set_num_threads(3);
        matmul(o2, &a, x, T, &W, NULL, EPI_STORE);
        /* rows 11..23 alone give the same numbers as inside the 37-row call */
        matmul(o3, &a, x + (size_t)11 * K, 13, &W, NULL, EPI_STORE);
        same &= memcmp(o1, o2, (size_t)T * N * sizeof(float)) == 0;
        same &= memcmp(o1 + (size_t)11 * N, o3, (size_t)13 * N * sizeof(float)) == 0;
        /* and row 11 alone (one row: the family's matvec, where it has one) */
        matmul(o3, &a, x + (size_t)11 * K, 1, &W, NULL, EPI_STORE);
        same &= memcmp(o1 + (size_t)11 * N, o3, (size_t)N * sizeof(float)) == 0;
        free((void *)W.data);
    }
    omp_set_num_threads(omp_get_num_procs());
    check(same, "matmul results bit-identical for 1 and 3 threads, for a row subset and for one row alone (%d weight types)",
          (int)(sizeof types / sizeof types[0]));
    acts_free(&a);
    free(x);
    free(o1);
    free(o2);
    free(o3);
#endif
}

/* A decode step of 1..MATVEC_ROWS answers: matmul_acts takes the family's matvec (each weight
 * read once for all the rows); every row must be the same bits as that row inside a big
 * call (the tiles, or AMX's tile_all_rows), for any row count, group tail (N not a multiple
 * of 64: runs of fewer than 4 groups, a last group of fewer than 16 outputs), short last
 * block (K = 288, 800, 4064) and epilogue. With the reference alone (no matvec) it holds
 * trivially; the message says whether the family's matvec ran. */
static void test_matvec_rows(void) {
    const int types[] = {DT_MF32, DT_MBF16, DT_MQ8_0, DT_MQ4_1, DT_MQ8_256, DT_MQ4_256};
    const int shapes[][2] = {{16, 32}, {40, 288}, {100, 800}, {200, 544}, {72, 4064}, {1040, 256}};
    int T = 23, same = 1, cases = 0, by_matvec = 0;
    uint64_t rng_saved = rng_state; /* the later tests see the numbers they saw without this one */
    const Kernels *kern = kernels_cpu();
    float *x = xmalloc((size_t)T * 4096 * sizeof(float)), *bias = xmalloc(1040 * sizeof(float));
    float *base = xmalloc((size_t)T * 1040 * sizeof(float)), *o1 = xmalloc((size_t)T * 1040 * sizeof(float)),
          *o2 = xmalloc((size_t)MATVEC_ROWS * 1040 * sizeof(float));
    for (int i = 0; i < 1040; i++) bias[i] = frand();
    Acts a;
    test_acts(&a, (size_t)T * 4096, 4096, 1);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            int N = shapes[si][0], K = shapes[si][1];
            Tensor W = random_matrix(types[ti], N, K);
            for (size_t i = 0; i < (size_t)T * K; i++) x[i] = frand() * (i % 97 == 0 ? 8.0f : 1.0f);
            for (size_t i = 0; i < (size_t)T * N; i++) base[i] = frand();
            for (int epi = EPI_STORE; epi <= EPI_GELU; epi++) {
                const float *b = epi == EPI_STORE ? NULL : bias;
                memcpy(o1, base, (size_t)T * N * sizeof(float));
                matmul(o1, &a, x, T, &W, b, epi); /* T > MATVEC_ROWS: the tiles */
                for (int n = 1; n <= MATVEC_ROWS; n++) {
                    int t0 = (3 * n) % (T - n + 1); /* rows t0 .. t0 + n - 1 of the big call */
                    memcpy(o2, base + (size_t)t0 * N, (size_t)n * N * sizeof(float));
                    acts_set(&a, x + (size_t)t0 * K, n, K);
                    acts_convert(&a, act_kind_for(&a, W.dtype));
                    if (kern->matvec && kern->matvec(o2, N, &a, &W, b, epi, 0, 0)) by_matvec++;
                    matmul(o2, &a, x + (size_t)t0 * K, n, &W, b, epi);
                    same &= memcmp(o2, o1 + (size_t)t0 * N, (size_t)n * N * sizeof(float)) == 0;
                    cases++;
                }
            }
            free((void *)W.data);
        }
    check(same, "matmul of 1..%d rows (a decode step of a few answers) bit-identical to those rows in a %d-row call: %d cases, %d through the family's matvec",
          MATVEC_ROWS, T, cases, by_matvec);
    /* two products of the same rows in one region (k and v, gate and up): each as alone */
    same = 1;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        Tensor W1 = random_matrix(types[ti], 200, 800), W2 = random_matrix(types[ti], 72, 800);
        for (size_t i = 0; i < (size_t)T * 800; i++) x[i] = frand();
        for (int n = 1; n <= 9; n += 4) { /* 9: past MATVEC_ROWS */
            acts_set(&a, x, n, 800);
            matmul_acts2(o2, 200, &W1, base, 72, &W2, &a);
            matmul(o1, &a, x, n, &W1, NULL, EPI_STORE);
            same &= memcmp(o1, o2, (size_t)n * 200 * sizeof(float)) == 0;
            matmul(o1, &a, x, n, &W2, NULL, EPI_STORE);
            same &= memcmp(o1, base, (size_t)n * 72 * sizeof(float)) == 0;
        }
        free((void *)W1.data), free((void *)W2.data);
    }
    check(same, "two products of the same 1, 5 and 9 rows in one parallel region (k and v; gate and up) bit-identical to each alone");
    if (kern->matvec) /* (the AVX-512 one, in the avx512 and amx families) */
        check(by_matvec == 2 * 6 * 3 * MATVEC_ROWS, "the family's matvec takes q8_256 and q4_256 at 1..%d rows (%d of %d cases)", MATVEC_ROWS,
              by_matvec, 2 * 6 * 3 * MATVEC_ROWS);
    acts_free(&a);
    free(x), free(bias), free(base), free(o1), free(o2);
    rng_state = rng_saved;
}

static void test_quantize(void) {
    int K = 4096, rows = 64, same = 1;
    float *x = xmalloc((size_t)K * sizeof(float));
    int8_t *q1 = xmalloc((size_t)K), *q2 = xmalloc((size_t)K);
    float d1[128], d2[128], s1[128], s2[128];
    int32_t c1[128], c2[128];
    for (int r = 0; r < rows; r++) {
        for (int i = 0; i < K; i++) x[i] = frand() * (r % 3 ? 1.0f : 1000.0f);
        if (r == 1) memset(x, 0, (size_t)K * sizeof(float));  /* zero blocks: d = 0, q = 0 */
        if (r == 2) for (int i = 0; i < K; i++) x[i] = (float)(i % 255 - 127) / 2.0f; /* exact halves */
        if (r == 5) x[7] = NAN, x[K - 1] = NAN; /* a broken model's activations: the block's scale */
        if (r == 6) x[40] = INFINITY;           /* becomes NaN (its q values are then unused) */
        quantize_row(q1, d1, c1, s1, x, K);
        quantize_row_ref(q2, d2, c2, s2, x, K);
        for (int b = 0; b < K / QBLOCK; b++)
            if (isnan(d1[b]) && isnan(d2[b])) memcpy(q1 + b * QBLOCK, q2 + b * QBLOCK, QBLOCK), c1[b] = c2[b];
        same &= !memcmp(q1, q2, (size_t)K) && !memcmp(d1, d2, sizeof d1) && !memcmp(c1, c2, sizeof c1) &&
                !memcmp(s1, s2, sizeof s1) && (r < 5 || r > 6 || (isnan(d1[0]) || isnan(d1[1])));
    }
    check(same, "int8 activation quantiser bit-identical to the reference, NaN/inf blocks with a NaN scale (%d rows of %d)",
          rows, K);
    /* blocks of 256 (the last one shorter for K = 4064) */
    for (int Kb = 4096; Kb >= 4064; Kb -= 32) {
        int32_t e1[128], e2[128];
        same = 1;
        for (int r = 0; r < rows; r++) {
            for (int i = 0; i < Kb; i++) x[i] = frand() * (r % 3 ? 1.0f : 1000.0f);
            if (r == 1) memset(x, 0, (size_t)Kb * sizeof(float));
            if (r == 2) for (int i = 0; i < Kb; i++) x[i] = (float)(i % 255 - 127) / 2.0f;
            if (r == 4) x[Kb - 1] = 1e4f; /* an outlier in the short last block */
            if (r == 5) x[300] = NAN, x[Kb - 1] = NAN;
            if (r == 6) x[3] = -INFINITY;
            memset(c1, 0, sizeof c1), memset(c2, 0, sizeof c2), memset(d1, 0, sizeof d1), memset(d2, 0, sizeof d2);
            quantize_row_256(q1, d1, c1, e1, x, Kb);
            quantize_row_256_ref(q2, d2, c2, e2, x, Kb);
            int nb = q256_blocks(Kb);
            for (int b = 0; b < nb; b++)
                if (isnan(d1[b]) && isnan(d2[b])) {
                    int k0 = b * QBLOCK_256, len = q256_len(Kb, b);
                    memcpy(q1 + k0, q2 + k0, (size_t)len), c1[b] = c2[b];
                    memcpy(e1 + k0 / QBLOCK, e2 + k0 / QBLOCK, (size_t)(len / QBLOCK) * sizeof e1[0]);
                }
            if (r == 5 || r == 6) same &= isnan(d1[r == 5 ? 1 : 0]) && isnan(d1[nb - 1]) == (r == 5);
            same &= !memcmp(q1, q2, (size_t)Kb) && !memcmp(d1, d2, (size_t)nb * sizeof d1[0]) &&
                    !memcmp(c1, c2, (size_t)nb * sizeof c1[0]) && !memcmp(e1, e2, (size_t)(Kb / QBLOCK) * sizeof e1[0]);
        }
        check(same, "int8 activation quantiser, blocks of 256, bit-identical to the reference (%d rows of %d)", rows, Kb);
    }
    free(x);
    free(q1);
    free(q2);
}

typedef struct { int Tq, Tk, H, KVH, hd, causal, q_offset; } AttCase;
static void test_attention_cases(const AttCase *cases, size_t n);
static void test_attention(void) {
    static const AttCase cases[] = {
        {17, 17, 4, 4, 16, 0, 0},     {1025, 1025, 2, 2, 64, 0, 0}, {9, 9 + 17, 4, 4, 16, 0, 0},
        {36, 36, 4, 4, 16, 1, 0},     {92, 92, 2, 2, 128, 1, 0},    {1, 92, 2, 2, 128, 1, 91},
        {77, 92, 4, 2, 32, 1, 15},    {30, 30, 3, 1, 48, 1, 0},     {20, 20, 2, 2, 8, 1, 0},
        {70, 70, 2, 2, 80, 0, 0},
    };
    test_attention_cases(cases, sizeof cases / sizeof cases[0]);
}
/* head_dim 256 (Qwen3.5's decoder: 8 query heads on 2 kv heads); run after the bf16 test,
 * whose random inputs stay the ones it was written with */
static void test_attention_hd256(void) {
    static const AttCase cases[] = {{200, 200, 8, 2, 256, 1, 0}, {1, 200, 8, 2, 256, 1, 199}, {33, 33, 2, 2, 256, 0, 0}};
    test_attention_cases(cases, sizeof cases / sizeof cases[0]);
}
/* head sizes the SIMD kernels do not take (Q-ReAlign Pro's ViT: 16 heads of 72): attention()
 * pads the heads to a multiple of 16 with zeros (qalign.c attention_padded); the same bound */
static void test_attention_padded(void) {
    static const AttCase cases[] = {{200, 200, 4, 4, 72, 0, 0}, {50, 50, 4, 2, 72, 1, 0}, {1, 60, 4, 2, 40, 1, 59},
                                    {33, 33, 2, 2, 24, 0, 0}};
    test_attention_cases(cases, sizeof cases / sizeof cases[0]);
}
static void test_attention_cases(const AttCase *cases, size_t ncases) {
    size_t maxsz = 1025 * 4 * 128;
    float *q = xmalloc(maxsz * sizeof(float)), *k = xmalloc(maxsz * sizeof(float)), *v = xmalloc(maxsz * sizeof(float));
    float *o1 = xmalloc(maxsz * sizeof(float)), *o2 = xmalloc(maxsz * sizeof(float));
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    size_t stride = ATT_SCRATCH_ROWS * pad16(1040);
    float *scratch = xmalloc((size_t)threads * stride * sizeof(float)), *kt = xmalloc(maxsz * sizeof(float));
    for (size_t c = 0; c < ncases; c++) {
        int Tq = cases[c].Tq, Tk = cases[c].Tk, H = cases[c].H, KVH = cases[c].KVH, hd = cases[c].hd;
        int ldq = H * hd, ldkv = KVH * hd;
        for (size_t i = 0; i < (size_t)Tq * ldq; i++) q[i] = frand() * 3;
        for (size_t i = 0; i < (size_t)Tk * ldkv; i++) k[i] = frand() * 3, v[i] = frand();
        attention(o1, q, ldq, k, v, ldkv, Tq, Tk, H, KVH, hd, cases[c].causal, cases[c].q_offset, scratch, stride, kt);
        attention_ref(o2, q, ldq, k, v, ldkv, Tq, Tk, H, KVH, hd, cases[c].causal, cases[c].q_offset, scratch, stride);
        double err = max_diff(o1, o2, (size_t)Tq * ldq) / max_abs(o2, (size_t)Tq * ldq);
        check(err <= 1e-5, "attention Tq %4d Tk %4d heads %d/%d hd %3d %s: max relative error %.2e", Tq, Tk, H, KVH, hd,
              cases[c].causal ? "causal" : "full  ", err);
    }
    free(q); free(k); free(v); free(o1); free(o2); free(scratch); free(kt);
}

/* attention_bf16's arithmetic in plain C: scores from bf16(q * scale) . bf16(k), f32 softmax,
 * bf16(p) . bf16(v), all sums in f32 (in a different order than the kernel's) */
static void attention_bf16_emulated(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv, int Tq,
                                    int Tk, int H, int KVH, int hd, float *s) {
    float scale = 1.0f / sqrtf((float)hd);
    for (int h = 0; h < H; h++)
        for (int i = 0; i < Tq; i++) {
            int kh = h / (H / KVH);
            for (int j = 0; j < Tk; j++) {
                float dot = 0.0f;
                for (int d = 0; d < hd; d++)
                    dot += bf16_to_f32(f32_to_bf16(q[(size_t)i * ldq + h * hd + d] * scale)) *
                           bf16_to_f32(f32_to_bf16(k[(size_t)j * ldkv + kh * hd + d]));
                s[j] = dot;
            }
            softmax_ref(s, Tk);
            for (int d = 0; d < hd; d++) {
                float acc = 0.0f;
                for (int j = 0; j < Tk; j++)
                    acc += bf16_to_f32(f32_to_bf16(s[j])) * bf16_to_f32(f32_to_bf16(v[(size_t)j * ldkv + kh * hd + d]));
                out[(size_t)i * H * hd + h * hd + d] = acc;
            }
        }
}

/* attention_bf16_unit's arithmetic in plain C (kernels/amx_attention.h): attention_bf16_emulated's
 * with the softmax's division after p v (o = (sum_j bf16(e_j) bf16(v_j)) / sum_j e_j, e_j =
 * exp(s_j - max)), each sum in the order of the tile unit (kernels/amx_emu.h TDPBF16PS, as
 * measured on the unit): per instruction of 16 pairs (32 dimensions of q.k, 32 keys of p.v)
 * the even and the odd products summed apart, then c += (even + odd) */
static void attention_bf16_unit_emulated(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv,
                                         int Tq, int Tk, int H, int KVH, int hd, float *s) {
    float scale = 1.0f / sqrtf((float)hd);
#define BF(x) bf16_to_f32(f32_to_bf16(x))
    for (int h = 0; h < H; h++)
        for (int i = 0; i < Tq; i++) {
            int kh = h / (H / KVH);
            const float *qi = q + (size_t)i * ldq + h * hd;
            for (int j = 0; j < Tk; j++) {
                const float *kj = k + (size_t)j * ldkv + kh * hd;
                float c = 0.0f;
                for (int d0 = 0; d0 < hd; d0 += 32) {
                    float e = 0.0f, o = 0.0f;
                    for (int d = d0; d < d0 + 32 && d < hd; d += 2)
                        e += BF(qi[d] * scale) * BF(kj[d]), o += BF(qi[d + 1] * scale) * BF(kj[d + 1]);
                    c += e + o;
                }
                s[j] = c;
            }
            float mx = s[0];
            for (int j = 1; j < Tk; j++) mx = s[j] > mx ? s[j] : mx;
            double sum = 0.0;
            for (int j = 0; j < Tk; j++) s[j] = expf(s[j] - mx), sum += s[j];
            float inv = (float)(1.0 / sum);
            for (int d = 0; d < hd; d++) {
                float c = 0.0f;
                for (int j0 = 0; j0 < Tk; j0 += 32) {
                    float e = 0.0f, o = 0.0f;
                    for (int j = j0; j < j0 + 32 && j < Tk; j += 2) {
                        e += BF(s[j]) * BF(v[(size_t)j * ldkv + kh * hd + d]);
                        if (j + 1 < Tk) o += BF(s[j + 1]) * BF(v[(size_t)(j + 1) * ldkv + kh * hd + d]);
                    }
                    c += e + o;
                }
                out[(size_t)i * H * hd + h * hd + d] = c * inv;
            }
        }
#undef BF
}

/* The ViT's bf16 attention: against the same arithmetic in plain C (tight), and against
 * f32 attention (the error bf16 costs, bounded for attention of ViT-like magnitudes). */
static void test_attention_bf16_fn(const char *what, int (*fn)(float *, const float *, int, const float *, const float *, int,
                                                                 int, int, int, int, int, float *, size_t, float *));
static void test_attention_bf16(void) {
    if (kernels_cpu()->attention_bf16) test_attention_bf16_fn("attention_bf16", kernels_cpu()->attention_bf16);
    else printf("skip attention_bf16: this family has none\n");
    if (kernels_cpu()->attention_bf16_unit) test_attention_bf16_fn("attention_bf16_unit", kernels_cpu()->attention_bf16_unit);
}
static void test_attention_bf16_fn(const char *what, int (*fn)(float *, const float *, int, const float *, const float *, int,
                                                                 int, int, int, int, int, float *, size_t, float *)) {
    struct { int Tq, Tk, H, hd; } cases[] = {{17, 17, 4, 16}, {1025, 1025, 2, 64}, {9, 26, 4, 16}, {33, 33, 2, 32},
                                             {1, 1, 1, 16}, {40, 63, 3, 48}, {65, 65, 2, 64}};
    size_t maxsz = 1025 * 4 * 128;
    float *q = xmalloc(maxsz * sizeof(float)), *k = xmalloc(maxsz * sizeof(float)), *v = xmalloc(maxsz * sizeof(float));
    float *o1 = xmalloc(maxsz * sizeof(float)), *o2 = xmalloc(maxsz * sizeof(float)), *o3 = xmalloc(maxsz * sizeof(float));
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    size_t stride = ATT_SCRATCH_ROWS * pad16(1040);
    float *scratch = xmalloc((size_t)threads * stride * sizeof(float)), *kt = xmalloc(maxsz * sizeof(float));
    float *srow = xmalloc(1040 * sizeof(float));
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int Tq = cases[c].Tq, Tk = cases[c].Tk, H = cases[c].H, hd = cases[c].hd, ld = H * hd;

        /* q.k/sqrt(hd) of a few units, as in the ViT */
        for (size_t i = 0; i < (size_t)Tq * ld; i++) q[i] = frand() * 2;
        for (size_t i = 0; i < (size_t)Tk * ld; i++) k[i] = frand() * 2, v[i] = frand();
        check(fn(o1, q, ld, k, v, ld, Tq, Tk, H, H, hd, scratch, stride, kt), "%s takes hd %d", what, hd);
        if (fn == kernels_cpu()->attention_bf16_unit) attention_bf16_unit_emulated(o2, q, ld, k, v, ld, Tq, Tk, H, H, hd, srow);
        else attention_bf16_emulated(o2, q, ld, k, v, ld, Tq, Tk, H, H, hd, srow);
        attention_ref(o3, q, ld, k, v, ld, Tq, Tk, H, H, hd, 0, 0, scratch, stride);
        double scale = max_abs(o3, (size_t)Tq * ld);
        double e_same = max_diff(o1, o2, (size_t)Tq * ld) / scale, e_f32 = max_diff(o1, o3, (size_t)Tq * ld) / scale;
        check(e_same <= 2e-4 && e_f32 <= 2e-2, "%s Tq %4d Tk %4d heads %d hd %2d: vs emulation %.2e, vs f32 %.2e", what,
              Tq, Tk, H, hd, e_same, e_f32);
    }
    /* one key far above the rest (a score of 160: exp would overflow without the true row
     * maximum) at each place a kernel may gather the maximum separately - the first block,
     * the middle of the row, the last (partial) block: the output is that key's value */
    {
        int Tq = 16, Tk = 200, hd = 64, places[] = {0, 70, 130, 199};
        for (size_t c = 0; c < sizeof places / sizeof places[0]; c++) {
            for (size_t i = 0; i < (size_t)Tq * hd; i++) q[i] = 1.0f;
            for (size_t i = 0; i < (size_t)Tk * hd; i++) k[i] = frand(), v[i] = frand();
            for (int d = 0; d < hd; d++) k[(size_t)places[c] * hd + d] = 20.0f;
            check(fn(o1, q, hd, k, v, hd, Tq, Tk, 1, 1, hd, scratch, stride, kt), "%s takes hd %d", what, hd);
            double e = 0;
            for (int i = 0; i < Tq; i++)
                for (int d = 0; d < hd; d++) {
                    double got = o1[(size_t)i * hd + d], want = v[(size_t)places[c] * hd + d];
                    e = isfinite(got) ? fmax(e, fabs(got - want)) : INFINITY;
                }
            check(e <= 1e-2, "%s: one key 160 above the rest at key %3d of %d: max |o - v_key| %.2e", what, places[c], Tk, e);
        }
    }
    free(q); free(k); free(v); free(o1); free(o2); free(o3); free(scratch); free(kt); free(srow);
}

/* delta_rule16 (the Gated DeltaNet's recurrence on 16 state columns) against the reference:
 * dk with a tail of the family's row unrolling, fewer than 16 columns, decays and betas as
 * the model makes them (0..1), unit-norm-sized q and k */
static void test_delta_rule(void) {
    struct { int T, dk, w; } cases[] = {{300, 128, 16}, {70, 16, 8}, {33, 30, 16}, {1, 7, 3}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int T = cases[c].T, dk = cases[c].dk, w = cases[c].w, ldqk = dk + 5, ldv = w + 2, ldo = w + 1;
        float *q = xmalloc((size_t)T * ldqk * sizeof(float)), *k = xmalloc((size_t)T * ldqk * sizeof(float));
        float *v = xmalloc((size_t)T * ldv * sizeof(float)), *o1 = xmalloc((size_t)T * ldo * sizeof(float));
        float *o2 = xmalloc((size_t)T * ldo * sizeof(float)), *dec = xmalloc((size_t)T * 3 * sizeof(float));
        float *beta = dec + T, *qk = dec + 2 * T, *s1 = xmalloc((size_t)dk * 16 * sizeof(float)), *s2 = xmalloc((size_t)dk * 16 * sizeof(float));
        float sc = 1.0f / sqrtf((float)dk);
        for (size_t i = 0; i < (size_t)T * ldqk; i++) q[i] = frand() * sc, k[i] = frand() * 2 * sc;
        for (size_t i = 0; i < (size_t)T * ldv; i++) v[i] = frand();
        for (int t = 0; t < T; t++) {
            dec[t] = 0.5f + 0.5f * fabsf(frand()), beta[t] = fabsf(frand()), qk[t] = 0.0f;
            for (int i = 0; i < dk; i++) qk[t] += q[(size_t)t * ldqk + i] * k[(size_t)t * ldqk + i];
        }
        memset(s1, 0, (size_t)dk * 16 * sizeof(float));
        memset(s2, 0, (size_t)dk * 16 * sizeof(float));
        memset(o1, 0, (size_t)T * ldo * sizeof(float));
        memset(o2, 0, (size_t)T * ldo * sizeof(float));
        delta_rule16(o1, ldo, s1, q, k, ldqk, v, ldv, dec, beta, qk, T, dk, w);
        delta_rule16_ref(o2, ldo, s2, q, k, ldqk, v, ldv, dec, beta, qk, T, dk, w);
        double eo = max_diff(o1, o2, (size_t)T * ldo) / max_abs(o2, (size_t)T * ldo);
        double es = max_diff(s1, s2, (size_t)dk * 16) / max_abs(s2, (size_t)dk * 16);
        int pad_zero = 1; /* columns past w of the state stay zero; outputs past w untouched */
        for (int i = 0; i < dk; i++)
            for (int j = w; j < 16; j++) pad_zero &= s1[i * 16 + j] == 0.0f;
        for (int t = 0; t < T; t++) pad_zero &= o1[(size_t)t * ldo + w] == 0.0f || w == ldo;
        check(eo <= 1e-5 && es <= 1e-5 && pad_zero, "delta_rule16 T %3d dk %3d w %2d: max relative error out %.2e, state %.2e", T,
              dk, w, eo, es);
        free(q), free(k), free(v), free(o1), free(o2), free(dec), free(s1), free(s2);
    }
}

static void test_elementwise(void) {
    int n = 4099;
    float *x = xmalloc((size_t)n * 8 * sizeof(float)), *y = xmalloc((size_t)n * 8 * sizeof(float));
    float *w = xmalloc((size_t)n * sizeof(float)), *b = xmalloc((size_t)n * sizeof(float));
    /* softmax */
    for (int i = 0; i < n; i++) x[i] = y[i] = frand() * 30;
    softmax(x, n);
    softmax_ref(y, n);
    double err = max_diff(x, y, (size_t)n) / max_abs(y, (size_t)n);
    check(err <= 1e-6, "softmax over %d values: max relative error %.2e", n, err);
    /* layernorm, rows of odd width, with a large mean */
    for (int i = 0; i < n * 8; i++) x[i] = frand() + 3.0f;
    for (int i = 0; i < n; i++) w[i] = 1 + frand() * 0.1f, b[i] = frand() * 0.1f;
    float *o1 = xmalloc((size_t)n * 8 * sizeof(float)), *o2 = xmalloc((size_t)n * 8 * sizeof(float));
    layernorm(o1, x, w, b, 8, n, 1e-6f);
    layernorm_ref(o2, x, w, b, 8, n, 1e-6f);
    err = max_diff(o1, o2, (size_t)n * 8) / max_abs(o2, (size_t)n * 8);
    check(err <= 1e-5, "layernorm 8 x %d: max relative error %.2e", n, err);
    /* silu * gate and QuickGELU against libm expf */
    double e1 = 0, e2 = 0;
    for (int i = 0; i < n; i++) x[i] = frand() * 20, y[i] = frand();
    memcpy(o1, x, (size_t)n * sizeof(float));
    silu_mul(o1, y, (size_t)n);
    for (int i = 0; i < n; i++) {
        double r = (double)silu1(x[i]) * y[i];
        e1 = fmax(e1, fabs(o1[i] - r) / (fabs(r) + 1e-6));
    }
    check(e1 <= 1e-5, "silu * gate: max relative error %.2e", e1);
    /* one row of the causal depthwise conv1d + SiLU (Qwen3.5's GDN; conv_silu_row) against the
     * plain loop: rows 0..5 of a width-4 conv (the first rows with fewer taps), 1000 channels
     * (a tail of 8), rows 1037 floats apart */
    {
        int C = 1000, K = 4, ldi = C + 37;
        float *in = xmalloc((size_t)6 * ldi * sizeof(float)), *wk = xmalloc((size_t)K * C * sizeof(float));
        double ec = 0;
        for (int i = 0; i < 6 * ldi; i++) in[i] = frand() * 4;
        for (int i = 0; i < K * C; i++) wk[i] = frand();
        for (int t = 0; t < 6; t++) {
            int j0 = t < K - 1 ? K - 1 - t : 0;
            o1[C] = 12345.0f; /* not written past C */
            conv_silu_row(o1, in + (size_t)t * ldi, (size_t)ldi, wk, C, K, j0);
            for (int c = 0; c < C; c++) {
                float acc = 0.0f;
                for (int j = j0; j < K; j++) acc += wk[j * C + c] * in[(size_t)(t - (K - 1) + j) * ldi + c];
                double r = (double)acc / (1.0 + exp(-(double)acc));
                ec = fmax(ec, fabs(o1[c] - r) / (fabs(r) + 1e-6));
            }
            ec = o1[C] == 12345.0f ? ec : 1.0;
        }
        check(ec <= 1e-5, "causal conv1d row + silu, 6 rows x %d channels: max relative error %.2e", C, ec);
        free(in), free(wk);
    }
    /* a * sigmoid(b) (Qwen3.5's attention gate) against its plain-C reference (libm expf); a
     * row's bits alone equal its bits at an offset */
    {
        double eg = 0;
        for (int i = 0; i < n; i++) w[i] = frand() * 40; /* gates far into both tails */
        memcpy(o1, y, (size_t)n * sizeof(float));
        sigmoid_mul(o1, w, (size_t)n);
        for (int i = 0; i < n; i++) {
            double r = (double)y[i] * (1.0f / (1.0f + expf(-w[i])));
            eg = fmax(eg, fabs(o1[i] - r) / (fabs(r) + 1e-6));
        }
        memcpy(o2, y + 5, 100 * sizeof(float));
        sigmoid_mul(o2, w + 5, 100);
        check(eg <= 1e-5 && !memcmp(o2, o1 + 5, 100 * sizeof(float)), "a * sigmoid(b): max relative error %.2e, bits by place",
              eg);
    }
    /* gelu_pytorch_tanh (the ViT of Q-ReAlign) against the tanh form in double, over a row
     * of inputs up to +-20; and a row's bits alone equal its bits at an offset */
    {
        double eg = 0;
        memcpy(o1, x, (size_t)n * sizeof(float));
        gelu_tanh_fast(o1, (size_t)n);
        for (int i = 0; i < n; i++) {
            double xv = x[i], r = 0.5 * xv * (1.0 + tanh(0.7978845608028654 * (xv + 0.044715 * xv * xv * xv)));
            eg = fmax(eg, fabs(o1[i] - r) / (fabs(r) + 1e-3));
        }
        memcpy(o2, x + 5, 100 * sizeof(float));
        gelu_tanh_fast(o2, 100);
        check(eg <= 1e-5 && !memcmp(o2, o1 + 5, 100 * sizeof(float)), "gelu_tanh: max relative error %.2e, bits by place", eg);
    }
    /* the same values at another place in a buffer (a row alone vs inside a batch) give
     * the same bits */
    {
        float *p = xmalloc(64 * sizeof(float)), *q = xmalloc(64 * sizeof(float)), *g = xmalloc(64 * sizeof(float));
        int same = 1;
        for (int i = 0; i < 64; i++) p[i] = frand() * 10, g[i] = frand();
        for (int off = 1; off < 20; off++) {
            memcpy(q, p, 64 * sizeof(float));
            silu_mul(q, g, 64);                 /* whole */
            float r[64];
            memcpy(r, p, 64 * sizeof(float));
            silu_mul(r, g, (size_t)off);        /* in two pieces */
            silu_mul(r + off, g + off, (size_t)(64 - off));
            same &= !memcmp(q, r, 64 * sizeof(float));
        }
        check(same, "silu * gate: a value's bits do not depend on its place in the buffer");
        free(p); free(q); free(g);
    }
#ifdef QA_AVX512
    for (int i = 0; i < n; i += 16) {
        float in[16], out[16];
        for (int j = 0; j < 16; j++) in[j] = frand() * 87;
        _mm512_storeu_ps(out, exp512(_mm512_loadu_ps(in)));
        for (int j = 0; j < 16; j++) {
            double r = exp((double)in[j]);
            e2 = fmax(e2, fabs(out[j] - r) / r);
        }
    }
    check(e2 <= 3e-7, "exp512 on [-87, 87]: max relative error %.2e", e2);
#endif
#ifdef QA_NEON
    e2 = 0;
    for (int i = 0; i < n; i += 4) {
        float in[4], out[4];
        for (int j = 0; j < 4; j++) in[j] = frand() * 87;
        vst1q_f32(out, exp_neon(vld1q_f32(in)));
        for (int j = 0; j < 4; j++) {
            double r = exp((double)in[j]);
            e2 = fmax(e2, fabs(out[j] - r) / r);
        }
    }
    check(e2 <= 3e-7, "exp_neon on [-87, 87]: max relative error %.2e", e2);
    {   /* the ends: underflow to (almost) 0, overflow to inf, -inf to 0, 0 to exactly 1 */
        float in[4] = {-INFINITY, -120.0f, 100.0f, 0.0f}, out[4];
        vst1q_f32(out, exp_neon(vld1q_f32(in)));
        check(out[0] >= 0 && out[0] < 1e-44f && out[1] >= 0 && out[1] < 1e-44f && isinf(out[2]) && out[3] == 1.0f,
              "exp_neon at -inf, -120, 100, 0: %g %g %g %g", out[0], out[1], out[2], out[3]);
    }
#endif
    (void)e2;
    /* softmax of short rows (the SIMD tails) and with -inf (masked) entries */
    {
        double worst = 0;
        for (int m = 1; m <= 21; m++) {
            float a[21], r[21];
            for (int i = 0; i < m; i++) a[i] = r[i] = (i % 5 == 3) ? -INFINITY : frand() * 50;
            a[m / 2] = r[m / 2] = 1.0f; /* at least one finite value */
            softmax(a, m);
            softmax_ref(r, m);
            worst = fmax(worst, max_diff(a, r, (size_t)m));
        }
        check(worst <= 1e-6, "softmax of 1..21 values, some -inf: max error %.2e", worst);
    }
    free(x); free(y); free(w); free(b); free(o1); free(o2);
}

/* Which weight types the family multiplies with its own tiles (not the reference): tested
 * by asking its tile() for one tile of each. */
static void test_tiles_present(void) {
    const Kernels *k = kernels_cpu();
    char line[128] = "";
    int types[] = {DT_MF32, DT_MBF16, DT_MQ8_0, DT_MQ4_1, DT_MQ8_256, DT_MQ4_256};
    Acts a;
    test_acts(&a, 16 * 64, 64, 1);
    float x[16 * 64], out[16 * 16];
    for (int i = 0; i < 16 * 64; i++) x[i] = frand();
    for (int i = 0; i < (int)(sizeof types / sizeof types[0]); i++) {
        Tensor W = random_matrix(types[i], 16, 64);
        acts_set(&a, x, 16, 64);
        acts_convert(&a, act_kind_for(&a, W.dtype));
        acts_interleave(&a);
        acts_slice(&a);
        if (k->tile && k->tile(out, 16, &a, &W, NULL, EPI_STORE, 0, a.R ? (a.R < 16 ? a.R : 16) : 4, 0, 1)) {
            size_t used = strlen(line);
            snprintf(line + used, sizeof line - used, " %s", DT_NAMES[types[i]]);
        } else if (k->tile_all_rows && k->tile_all_rows(out, 16, &a, &W, NULL, EPI_STORE, 0, 1)) {
            size_t used = strlen(line);
            snprintf(line + used, sizeof line - used, " %s (all rows)", DT_NAMES[types[i]]);
        }
        free((void *)W.data);
    }
    acts_free(&a);
    printf("simd tiles:%s\n", line[0] ? line : " none");
}

/* ---- the C model of the AMX tile unit (kernels/amx_emu.h) against hand-worked products ---- */

static void emu_config(int t, int rows, int colsb, AmxConfig *c) {
    c->palette = 1;
    c->rows[t] = (uint8_t)rows;
    c->colsb[t] = (uint16_t)colsb;
}

/* Does fn(), run in a child process, stop with the emulator's fault (SIGABRT)? */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static int emu_faults(void (*fn)(void)) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(3);
        fn();
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
}
static void bad_shape(void) { /* C.rows 3, A.rows 2 */
    AmxConfig c;
    memset(&c, 0, sizeof c);
    emu_config(0, 2, 8, &c), emu_config(1, 2, 12, &c), emu_config(2, 3, 12, &c);
    amx_emu_loadconfig(&c);
    amx_emu_dpbsud(2, 0, 1);
}
static void bad_k(void) { /* A.colsb 8 but B.rows 3 */
    AmxConfig c;
    memset(&c, 0, sizeof c);
    emu_config(0, 2, 8, &c), emu_config(1, 3, 12, &c), emu_config(2, 2, 12, &c);
    amx_emu_loadconfig(&c);
    amx_emu_dpbsud(2, 0, 1);
}
static void bad_rows(void) { /* 17 rows */
    AmxConfig c;
    memset(&c, 0, sizeof c);
    emu_config(0, 17, 64, &c);
    amx_emu_loadconfig(&c);
}
static void bad_unconfigured(void) {
    AmxConfig c;
    memset(&c, 0, sizeof c);
    emu_config(0, 2, 8, &c);
    amx_emu_loadconfig(&c);
    amx_emu_zero(3);
}
static void bad_same_tile(void) {
    AmxConfig c;
    memset(&c, 0, sizeof c);
    emu_config(0, 4, 16, &c), emu_config(1, 4, 16, &c);
    amx_emu_loadconfig(&c);
    amx_emu_dpbsud(0, 1, 1);
}

static void test_tile_unit_model(void) {
    AmxConfig c;
    /* TDPBSUD: A 3 x 8 s8 (K = 8), B 2 x 12 u8 (N = 3), C 3 x 12, A read with a stride of 20
     * bytes (garbage between), C stored with a stride of 16 into a buffer that must keep its
     * bytes past colsb; C starts from given values */
    {
        int8_t A[3][20];
        memset(A, 99, sizeof A);
        const int8_t a[3][8] = {{1, 2, 3, 4, -1, -2, -3, -4}, {0, 0, 0, 1, 5, 0, 0, 0}, {-128, 0, 0, 0, 0, 0, 0, 127}};
        for (int i = 0; i < 3; i++) memcpy(A[i], a[i], 8);
        const uint8_t B[2][12] = {{1, 1, 1, 1, 0, 1, 0, 2, 255, 0, 0, 0}, {1, 1, 1, 1, 2, 0, 0, 0, 0, 0, 0, 255}};
        int32_t C0[3][3] = {{0, 0, 0}, {100, 0, 0}, {0, 0, INT32_MAX}};
        /* by hand: row 0: 1+2+3+4-1-2-3-4 = 0; 2*1+4*2-1*2 = 8; 1*255-4*255 = -765
         *          row 1: 1+5 = 6 (+100); 1*2+5*2 = 12; 0
         *          row 2: -128+127 = -1; 0; -128*255+127*255 = -255 (+INT32_MAX: wraps) */
        const int32_t want[3][3] = {{0, 8, -765}, {106, 12, 0}, {-1, 0, (int32_t)((uint32_t)INT32_MAX - 255u)}};
        int32_t out[3][4];
        memset(out, 0x55, sizeof out);
        memset(&c, 0, sizeof c);
        emu_config(0, 3, 8, &c), emu_config(1, 2, 12, &c), emu_config(2, 3, 12, &c);
        amx_emu_loadconfig(&c);
        amx_emu_loadd(0, A, 20);
        amx_emu_loadd(1, B, 12);
        amx_emu_loadd(2, C0, 12);
        amx_emu_dpbsud(2, 0, 1);
        amx_emu_stored(2, out, 16);
        int ok = 1;
        for (int i = 0; i < 3; i++) {
            for (int j = 0; j < 3; j++) ok &= out[i][j] == want[i][j];
            ok &= out[i][3] == 0x55555555;
        }
        /* wrap-around: INT32_MAX + 1 * 1 */
        int32_t big = INT32_MAX, got = 0;
        int8_t one[4] = {1, 0, 0, 0};
        uint8_t uone[4] = {1, 0, 0, 0};
        memset(&c, 0, sizeof c);
        emu_config(0, 1, 4, &c), emu_config(1, 1, 4, &c), emu_config(2, 1, 4, &c);
        amx_emu_loadconfig(&c);
        amx_emu_loadd(2, &big, 4), amx_emu_loadd(0, one, 4), amx_emu_loadd(1, uone, 4);
        amx_emu_dpbsud(2, 0, 1);
        amx_emu_stored(2, &got, 4);
        ok &= got == INT32_MIN;
        check(ok, "tile unit model: tdpbsud 3x8 . 8x3 by hand (strided load, store keeps bytes past colsb, int32 wraps)");
    }
    /* TDPBF16PS: A 2 x 2 pairs, B 2 x 2 pairs; then the documented order (even product added,
     * rounded, then the odd one), denormal inputs as zero, and a full 16 x 64 tile */
    {
        const float af[2][4] = {{1.5f, 2, -1, 0.5f}, {3, 0, 0, 0}}, bf[2][4] = {{2, 1, 0, -4}, {1, 1, 8, 2}};
        uint16_t A[2][4], B[2][4];
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 4; j++) A[i][j] = f32_to_bf16(af[i][j]), B[i][j] = f32_to_bf16(bf[i][j]);
        /* by hand: C00 = 1.5*2 + 2*1 - 1*1 + 0.5*1 = 4.5; C01 = 1.5*0 + 2*-4 - 1*8 + 0.5*2 = -15;
         * C10 = 3*2 = 6; C11 = 0 */
        float out[2][2], want[2][2] = {{4.5f, -15}, {6, 0}};
        memset(&c, 0, sizeof c);
        emu_config(0, 2, 8, &c), emu_config(1, 2, 8, &c), emu_config(2, 2, 8, &c);
        amx_emu_loadconfig(&c);
        amx_emu_loadd(0, A, 8), amx_emu_loadd(1, B, 8);
        amx_emu_zero(2);
        amx_emu_dpbf16ps(2, 0, 1);
        amx_emu_stored(2, out, 8);
        int ok = !memcmp(out, want, sizeof out);
        /* C = 2^24, products 1 and 1: the pair's sum first, 2^24 + 2 (the manual's one at a
         * time would round 2^24 + 1 to 2^24, twice); a denormal input: 0 */
        float acc[2] = {16777216.0f, 0.0f}, res[2];
        uint16_t a1[2][2] = {{f32_to_bf16(1), f32_to_bf16(1)}, {0x0001, f32_to_bf16(1)}};
        uint16_t b1[2] = {f32_to_bf16(1), f32_to_bf16(0)};
        uint16_t b2[2] = {0x7f00 /* 2^127 */, 0};
        memset(&c, 0, sizeof c);
        emu_config(0, 1, 4, &c), emu_config(1, 1, 4, &c), emu_config(2, 1, 4, &c);
        amx_emu_loadconfig(&c);
        amx_emu_loadd(2, &acc[0], 4), amx_emu_loadd(0, a1[0], 4), amx_emu_loadd(1, (uint16_t[2]){f32_to_bf16(1), f32_to_bf16(1)}, 4);
        amx_emu_dpbf16ps(2, 0, 1);
        amx_emu_stored(2, &res[0], 4);
        amx_emu_loadd(2, &acc[1], 4), amx_emu_loadd(0, a1[1], 4), amx_emu_loadd(1, b2, 4);
        amx_emu_dpbf16ps(2, 0, 1);
        amx_emu_stored(2, &res[1], 4);
        ok &= res[0] == 16777218.0f && res[1] == 0.0f;
        (void)b1;
        check(ok, "tile unit model: tdpbf16ps 2x2 pairs by hand, the unit's order (2^24 + (1 + 1)), a denormal input 0");
    }
    /* a full tile (16 x 64) and a partial one (5 x 12 of A, 3 rows of B), against plain loops */
    {
        int ok = 1;
        for (int shape = 0; shape < 2; shape++) {
            int M = shape ? 5 : 16, KB = shape ? 12 : 64, N = shape ? 7 : 16;
            int8_t A[16][64];
            uint8_t B[16][64];
            int32_t C[16][16];
            for (int i = 0; i < 16; i++)
                for (int j = 0; j < 64; j++) A[i][j] = (int8_t)rnd(), B[i][j] = (uint8_t)rnd();
            memset(&c, 0, sizeof c);
            emu_config(0, M, KB, &c), emu_config(1, KB / 4, 4 * N, &c), emu_config(2, M, 4 * N, &c);
            amx_emu_loadconfig(&c);
            amx_emu_loadd(0, A, 64), amx_emu_loadd(1, B, 64);
            amx_emu_zero(2);
            amx_emu_dpbsud(2, 0, 1);
            memset(C, 0, sizeof C);
            amx_emu_stored(2, C, 64);
            for (int m = 0; m < 16; m++)
                for (int n = 0; n < 16; n++) {
                    int32_t w = 0;
                    if (m < M && n < N)
                        for (int k = 0; k < KB; k++) w += A[m][k] * B[k / 4][4 * n + k % 4];
                    ok &= C[m][n] == w;
                }
        }
        amx_emu_release();
        check(ok, "tile unit model: 16x64 . 64x16 and a partial 5x12 . 12x7 tile against plain loops");
    }
    check(emu_faults(bad_shape) && emu_faults(bad_k) && emu_faults(bad_rows) && emu_faults(bad_unconfigured) &&
              emu_faults(bad_same_tile),
          "tile unit model: faults (rows, K, > 16 rows, unconfigured tile, one tile twice) stop the program");
}

/* The model against the unit itself (where the CPU has one): random tiles through TDPBSUD
 * and TDPBF16PS, full and partial shapes, bit for bit. Compiled for AMX by function
 * attribute (the rest of this file is baseline x86-64); called only after kernels_set("amx")
 * succeeded (the CPU has it, the OS granted the tile state). */
#if (defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11) || (defined(__x86_64__) && defined(__clang__) && __clang_major__ >= 12)
#include <immintrin.h>
#define AMX_TARGET __attribute__((target("amx-tile,amx-int8,amx-bf16")))
AMX_TARGET static void real_tiles(const AmxConfig *c, const void *A, const void *B, void *C, int bf16) {
    _tile_loadconfig(c);
    _tile_loadd(0, A, 64);
    _tile_loadd(1, B, 64);
    _tile_loadd(2, C, 64);
    if (bf16) _tile_dpbf16ps(2, 0, 1);
    else _tile_dpbsud(2, 0, 1);
    _tile_stored(2, C, 64);
    _tile_release();
}
static void test_tile_unit_real(void) {
    int same_i8 = 1, same_bf16 = 1, trials = 0;
    for (int trial = 0; trial < 400; trial++) {
        int M = trial % 3 ? 16 : 1 + (int)(rnd() % 16), KB = trial % 3 ? 64 : 4 * (1 + (int)(rnd() % 16)), N = trial % 3 ? 16 : 1 + (int)(rnd() % 16);
        uint8_t A[16][64], B[16][64];
        uint32_t C1[16][16], C2[16][16];
        int bf16 = trial % 2;
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 64; j += 2) {
                if (bf16) { /* values of mixed magnitudes, some tiny, some cancelling */
                    float v = frand() * (rnd() % 4 == 0 ? 4096.0f : 1.0f) * (rnd() % 16 == 0 ? 1e-36f : 1.0f);
                    uint16_t h = f32_to_bf16(v), w = f32_to_bf16(frand() * 8.0f);
                    memcpy(&A[i][j], &h, 2), memcpy(&B[i][j], &w, 2);
                } else {
                    A[i][j] = (uint8_t)rnd(), A[i][j + 1] = (uint8_t)rnd(), B[i][j] = (uint8_t)rnd(), B[i][j + 1] = (uint8_t)rnd();
                }
            }
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) {
                float f = frand() * 100.0f;
                C1[i][j] = bf16 ? 0 : rnd();
                if (bf16) memcpy(&C1[i][j], &f, 4);
            }
        memcpy(C2, C1, sizeof C1);
        AmxConfig c;
        memset(&c, 0, sizeof c);
        emu_config(0, M, KB, &c), emu_config(1, KB / 4, 4 * N, &c), emu_config(2, M, 4 * N, &c);
        real_tiles(&c, A, B, C1, bf16);
        amx_emu_loadconfig(&c);
        amx_emu_loadd(0, A, 64), amx_emu_loadd(1, B, 64), amx_emu_loadd(2, C2, 64);
        if (bf16) amx_emu_dpbf16ps(2, 0, 1);
        else amx_emu_dpbsud(2, 0, 1);
        amx_emu_stored(2, C2, 64);
        amx_emu_release();
        int same = !memcmp(C1, C2, sizeof C1);
        if (bf16) same_bf16 &= same;
        else same_i8 &= same;
        trials++;
    }
    check(same_i8 && same_bf16, "tile unit model = the real unit, bit for bit: %d random tdpbsud / tdpbf16ps tiles "
          "(full and partial shapes)%s%s", trials, same_i8 ? "" : "; tdpbsud differs", same_bf16 ? "" : "; tdpbf16ps differs");
}
#else
static void test_tile_unit_real(void) { printf("skip the real tile unit: this compiler cannot target it\n"); }
#endif

/* Every int8 weight type (q8_256 alone with only_q8_256; and bf16 with bf16_exact) through
 * two families gives the same bits: the AMX family's float steps are the AVX-512 family's. */
static void compare_families(const Kernels *k1, const char *n1, const Kernels *k2, const char *n2, int bf16_exact,
                             int only_q8_256) {
    const int types[] = {DT_MQ8_0, DT_MQ4_1, DT_MQ8_256, DT_MQ4_256, DT_MBF16};
    const int shapes[][2] = {{40, 64}, {33, 96}, {24, 288}, {17, 800}, {64, 1024}, {48, 4096}};
    const int Ts[] = {1, 7, 16, 17, 33, 77, 161};
    int maxT = 161, maxK = 4096, maxN = 64;
    float *x = xmalloc((size_t)maxT * maxK * sizeof(float)), *bias = xmalloc((size_t)maxN * sizeof(float));
    float *o1 = xmalloc((size_t)maxT * maxN * sizeof(float)), *o2 = xmalloc((size_t)maxT * maxN * sizeof(float));
    for (int i = 0; i < maxN; i++) bias[i] = frand();
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        int same = 1, cases = 0;
        double worst = 0;
        if (types[ti] == DT_MBF16 && !bf16_exact) continue; /* the families differ in activation type */
        if (only_q8_256 && types[ti] != DT_MQ8_256) continue;  /* the emulated family: the reference for the others */
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            Tensor W = random_matrix(types[ti], shapes[si][0], shapes[si][1]);
            for (size_t tj = 0; tj < sizeof Ts / sizeof Ts[0]; tj++) {
                int T = Ts[tj], K = W.cols, N = W.rows;
                for (size_t i = 0; i < (size_t)T * K; i++) x[i] = frand() * (i % 97 == 0 ? 8.0f : 1.0f);
                for (int epi = EPI_STORE; epi <= EPI_ADD; epi++) {
                    for (size_t i = 0; i < (size_t)T * N; i++) o1[i] = o2[i] = frand();
                    for (int f = 0; f < 2; f++) {
                        Acts a;
                        kernels_set_table(f ? k2 : k1);
                        test_acts(&a, (size_t)T * K, (size_t)K, 1);
                        matmul(f ? o2 : o1, &a, x, T, &W, epi == EPI_ADD ? bias : NULL, epi);
                        acts_free(&a);
                    }
                    same &= !memcmp(o1, o2, (size_t)T * N * sizeof(float));
                    double rel = max_diff(o1, o2, (size_t)T * N) / (max_abs(o2, (size_t)T * N) + 1e-30);
                    worst = rel > worst ? rel : worst;
                    cases++;
                }
            }
            free((void *)W.data);
        }
        check(same, "matmul %-6s %s = %s bit for bit (%d cases; max relative difference %.1e)", DT_NAMES[types[ti]], n1, n2,
              cases, worst);
    }
    free(x), free(bias), free(o1), free(o2);
}

/* All of the checks above, on the family kernels_cpu() now returns. */
static void test_family(void) {
    rng_state = 0x9E3779B97F4A7C15ull; /* every family on the same data */
    test_tiles_present();
    test_quantize();
    test_matmul();
    test_threads_deterministic();
    test_matvec_rows();
    test_attention();
    test_attention_bf16();
    test_attention_hd256();
    test_attention_padded();
    test_elementwise();
    test_delta_rule();
}

/* Usage: test_kernels [FAMILY... | all]. Without arguments: the family this CPU gets, the
 * AMX family on the model of the tile unit ("amx-emulated"), and where the CPU has AMX, the
 * real unit against the model. With names: those families (each must run here); "all":
 * every family of the build this CPU can run. */
int main(int argc, char **argv) {
    printf("kernels compiled in: %s\n", qalign_kernels());
    printf("family: %s\n", kernels_why());
    int all = argc == 2 && !strcmp(argv[1], "all");
    char families[256];
    if (argc > 1 && !all) {
        families[0] = 0;
        for (int i = 1; i < argc; i++) {
            size_t used = strlen(families);
            snprintf(families + used, sizeof families - used, "%s%s", i > 1 ? " " : "", argv[i]);
        }
    } else {
        snprintf(families, sizeof families, "%s amx-emulated", all ? kernels_family_list() : kernels_family());
    }
    test_tile_unit_model();
    int real_amx = 0;
    for (char *tok = strtok(families, " "); tok; tok = strtok(NULL, " ")) {
        if (!strcmp(tok, "amx-emulated")) {
            kernels_set_table(&kernels_amx);
        } else if (kernels_set(tok) != 0) {
            if (all) {
                printf("family %s: not on this CPU\n", tok);
                continue;
            }
            check(0, "family %s: not in this build or not on this CPU", tok);
            continue;
        }
        real_amx |= !strcmp(tok, "amx");
        printf("family %s: %s\n", tok, qalign_kernels());
        if (kernels_cpu()->self_check) {
            char why[256] = "";
            check(kernels_cpu()->self_check(why, sizeof why) == 0, "%s start-up self-check %s", tok, why);
        }
        test_family();
    }
    /* the AMX family on the real unit against the same code on the model of it, and against
     * the AVX-512 family (int8: the same float steps, so the same bits) */
    if ((argc == 1 || real_amx) && kernels_set("amx") == 0) {
        const Kernels *real = kernels_cpu();
        test_tile_unit_real();
        compare_families(real, "amx", &kernels_amx, "amx-emulated", 0, 1);
        if (kernels_set("avx512-bf16") == 0) compare_families(real, "amx", kernels_cpu(), "avx512-bf16", 1, 0);
    } else if (argc == 1) {
        printf("skip amx on the real unit: this CPU or OS has none (%s)\n", kernels_why());
    }
    kernels_set_table(NULL);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
