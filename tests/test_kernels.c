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
    acts_prepare(a, act_kind_for(a, W->dtype));
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
    const int shapes[][2] = {{16, 32}, {40, 64}, {33, 96}, {100, 256}, {24, 288}, {17, 800}, {64, 1024}, {1024, 64}, {48, 4096}};
    const int Ts[] = {1, 2, 5, 7, 8, 9, 17, 33, 77};
    int maxT = 77, maxK = 4096, maxN = 1024;
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
        free((void *)W.data);
    }
    omp_set_num_threads(omp_get_num_procs());
    check(same, "matmul results bit-identical for 1 and 3 threads and for a row subset (%d weight types)",
          (int)(sizeof types / sizeof types[0]));
    acts_free(&a);
    free(x);
    free(o1);
    free(o2);
    free(o3);
#endif
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

#ifdef QA_AVX512_BF16
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
#endif

/* The ViT's bf16 attention: against the same arithmetic in plain C (tight), and against
 * f32 attention (the error bf16 costs, bounded for attention of ViT-like magnitudes). */
static void test_attention_bf16(void) {
#ifdef QA_AVX512_BF16
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
        check(kernels_cpu()->attention_bf16(o1, q, ld, k, v, ld, Tq, Tk, H, H, hd, scratch, stride, kt),
              "attention_bf16 takes hd %d", hd);
        attention_bf16_emulated(o2, q, ld, k, v, ld, Tq, Tk, H, H, hd, srow);
        attention_ref(o3, q, ld, k, v, ld, Tq, Tk, H, H, hd, 0, 0, scratch, stride);
        double scale = max_abs(o3, (size_t)Tq * ld);
        double e_same = max_diff(o1, o2, (size_t)Tq * ld) / scale, e_f32 = max_diff(o1, o3, (size_t)Tq * ld) / scale;
        check(e_same <= 2e-4 && e_f32 <= 2e-2, "attention_bf16 Tq %4d Tk %4d heads %d hd %2d: vs emulation %.2e, vs f32 %.2e",
              Tq, Tk, H, hd, e_same, e_f32);
    }
    free(q); free(k); free(v); free(o1); free(o2); free(o3); free(scratch); free(kt); free(srow);
#else
    printf("skip attention_bf16: this build has no AVX512-BF16 kernels\n");
#endif
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
        acts_prepare(&a, act_kind_for(&a, W.dtype));
        if (k->tile && k->tile(out, 16, &a, &W, NULL, EPI_STORE, 0, a.R ? a.R : 4, 0, 1)) {
            size_t used = strlen(line);
            snprintf(line + used, sizeof line - used, " %s", DT_NAMES[types[i]]);
        }
        free((void *)W.data);
    }
    acts_free(&a);
    printf("simd tiles:%s\n", line[0] ? line : " none");
}

int main(void) {
    printf("kernels compiled in: %s\n", qalign_kernels());
    test_tiles_present();
    test_quantize();
    test_matmul();
    test_threads_deterministic();
    test_attention();
    test_attention_bf16();
    test_attention_hd256();
    test_elementwise();
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
