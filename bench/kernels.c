/* bench/kernels.c - GFLOP/s of each matmul kernel and of attention, on one thread.
 *
 *   make build/bench_kernels && ./build/bench_kernels [seconds-per-case [types, e.g. q8_0,q8_256]]
 *
 * Times are CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID), so other work on a
 * shared machine slows the figures less than wall-clock time would. Shapes are the ones
 * one-align runs: ViT (1025 tokens), decoder prefill (77 new rows), LLaMA MLP; and one row, as a
 * decoding step has. */
#ifndef TESTING
#define TESTING
#endif
#include "../qalign.c"
#include "../kernels.c"

static void *xmalloc(size_t n) { /* 64-byte aligned, as qalign's buffers */
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 1) != 0) p = NULL;
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static double thread_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static Tensor filled_matrix(int dtype, int rows, int cols) {
    Tensor W = {NULL, dtype, rows, cols};
    size_t bytes = dtype_nbytes(dtype, (uint64_t)rows * cols, (uint64_t)rows, (uint64_t)cols);
    uint8_t *p = xmalloc(bytes);
    for (size_t i = 0; i < bytes; i++) p[i] = (uint8_t)(i * 2654435761u >> 24);
    if (dtype == DT_MF32)
        for (size_t i = 0; i < bytes / 4; i++) ((float *)p)[i] = 0.01f * (float)(i % 17);
    if (dtype == DT_MBF16)
        for (size_t i = 0; i < bytes / 2; i++) ((uint16_t *)p)[i] = f32_to_bf16(0.01f * (float)(i % 17));
    /* the quantised types' scales (d, m) as a model has them: small normal floats, not the
     * bit patterns of the bytes above (denormals, NaNs and huge values, whose float steps
     * take microcode assists and would time those instead of the kernels) */
    int groups = (rows + PACK_ROWS - 1) / PACK_ROWS;
    for (int g = 0; g < groups; g++) {
        if (dtype == DT_MQ8_0 || dtype == DT_MQ4_1)
            for (int b = 0; b < cols / QBLOCK; b++) {
                uint8_t *blk = p + ((size_t)g * (cols / QBLOCK) + b) * mq_block_bytes(dtype);
                float *d = (float *)(blk + (dtype == DT_MQ8_0 ? MQ8_D_OFFSET : MQ4_D_OFFSET));
                for (int r = 0; r < 16; r++) d[r] = 0.001f * (float)(1 + (g + b + r) % 7);
                if (dtype == DT_MQ4_1)
                    for (int r = 0; r < 16; r++) ((float *)(blk + MQ4_M_OFFSET))[r] = -0.008f * (float)(1 + r % 3);
            }
        if (dtype == DT_MQ8_256 || dtype == DT_MQ4_256)
            for (int b = 0; b < q256_blocks(cols); b++) {
                int len = q256_len(cols, b);
                uint8_t *blk = p + (size_t)g * q256_group_bytes(dtype, cols) + (size_t)b * q256_block_bytes(dtype, QBLOCK_256);
                float *d = (float *)(blk + q256_block_bytes(dtype, len) - 64);
                for (int r = 0; r < 16; r++) d[r] = 0.001f * (float)(1 + (g + b + r) % 7);
            }
    }
    W.data = p;
    return W;
}

/* GOP/s of vpdpbusd alone on this thread (12 independent chains), where the build has it */
static double int8_peak(void) {
#if defined(__AVX512VNNI__)
    __m512i a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, b = _mm512_set1_epi32(0x01010101), c = _mm512_set1_epi32(0x02020202);
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = _mm512_setzero_si512();
    long n = 5000000;
    double t0 = thread_seconds();
    for (long i = 0; i < n; i++)
        __asm__ volatile("vpdpbusd %[c], %[b], %[a0]\n\tvpdpbusd %[c], %[b], %[a1]\n\tvpdpbusd %[c], %[b], %[a2]\n\t"
                         "vpdpbusd %[c], %[b], %[a3]\n\tvpdpbusd %[c], %[b], %[a4]\n\tvpdpbusd %[c], %[b], %[a5]\n\t"
                         "vpdpbusd %[c], %[b], %[a6]\n\tvpdpbusd %[c], %[b], %[a7]\n\tvpdpbusd %[c], %[b], %[a8]\n\t"
                         "vpdpbusd %[c], %[b], %[a9]\n\tvpdpbusd %[c], %[b], %[a10]\n\tvpdpbusd %[c], %[b], %[a11]"
                         : [a0] "+v"(a0), [a1] "+v"(a1), [a2] "+v"(a2), [a3] "+v"(a3), [a4] "+v"(a4), [a5] "+v"(a5),
                           [a6] "+v"(a6), [a7] "+v"(a7), [a8] "+v"(a8), [a9] "+v"(a9), [a10] "+v"(a10), [a11] "+v"(a11)
                         : [b] "v"(b), [c] "v"(c));
    return 12.0 * (double)n * 128 / (thread_seconds() - t0) / 1e9;
#else
    return 0;
#endif
}

/* ./build/bench_kernels [seconds-per-case [weight types, e.g. q8_0,q8_256]] */
int main(int argc, char **argv) {
    double budget = argc > 1 ? atof(argv[1]) : 1.0;
    const char *only = argc > 2 ? argv[2] : NULL;
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
    printf("kernels: %s; one thread; CPU time of the thread\n", qalign_kernels());
    double pk0 = int8_peak();
    struct { const char *what; int T, N, K; } shapes[] = {
        {"vit qkv/o", 1025, 1024, 1024}, {"vit fc1", 1025, 4096, 1024}, {"vit fc2", 1025, 1024, 4096},
        {"llm q/k/v/o", 77, 4096, 4096}, {"llm gate/up", 77, 11008, 4096}, {"llm down", 77, 4096, 11008},
        {"llm4 q/k/v/o", 308, 4096, 4096}, {"llm4 gate/up", 308, 11008, 4096}, {"llm4 down", 308, 4096, 11008}, /* 4 images */
        {"decode q/k/v/o", 1, 4096, 4096}, /* one token (qalign --ask): the weights' bandwidth */
    };
    const int types[] = {DT_MF32, DT_MBF16, DT_MBF16, DT_MQ8_0, DT_MQ4_1, DT_MQ8_256, DT_MQ4_256};
    const int fast[] = {0, 0, 1, 0, 0, 0, 0};
    size_t cap = (size_t)1025 * 11008;
    float *x = xmalloc(cap * sizeof(float)), *out = xmalloc((size_t)1025 * 11008 * sizeof(float));
    for (size_t i = 0; i < cap; i++) x[i] = (float)((int)(i % 61) - 30) / 30.0f;
    /* matmul = preparing the activations (conversion, quantisation, interleaving) + the tiles;
     * "tiles" times the tiles alone on activations prepared once */
    printf("%-14s %-18s %10s %10s %10s %12s\n", "shape", "weights", "ms/call", "GFLOP/s", "prep ms", "tiles GFLOP/s");
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
            if (fast[ti] && !kernels_cpu()->bf16_acts) continue; /* no bf16 x bf16 tiles in this build */
            if (only && (!strcmp(only, "attention") || !strstr(only, DT_NAMES[types[ti]]))) continue;
            Acts a;
            size_t bytes = 0;
            if (acts_alloc(&a, cap, 11008, fast[ti], &bytes) != 0) return 2;
            Tensor W = filled_matrix(types[ti], shapes[si].N, shapes[si].K);
            int calls = 0, tcalls = 0;
            double t = 0, tt = 0;
            while (t + tt < 2 * budget) { /* alternately, so that both see the same machine */
                double t0 = thread_seconds();
                matmul(out, &a, x, shapes[si].T, &W, NULL, EPI_STORE);
                double t1 = thread_seconds();
                matmul_acts(out, W.rows, &a, &W, NULL, EPI_STORE); /* acts already prepared */
                t += t1 - t0, tt += thread_seconds() - t1;
                calls++, tcalls++;
            }
            double flop = 2.0 * shapes[si].T * shapes[si].N * (double)shapes[si].K;
            char name[32];
            snprintf(name, sizeof name, "%s%s", DT_NAMES[types[ti]], types[ti] == DT_MBF16 ? (fast[ti] ? " (bf16 act)" : " (f32 act)") : "");
            printf("%-14s %-18s %10.2f %10.1f %10.2f %12.1f\n", shapes[si].what, name, 1e3 * t / calls, flop * calls / t / 1e9,
                   1e3 * (t / calls - tt / tcalls), flop * tcalls / tt / 1e9);
            fflush(stdout);
            free((void *)W.data);
            acts_free(&a);
        }
    }
    double pk1 = int8_peak();
    if (pk0 > 0) printf("vpdpbusd peak on this thread: %.0f GOP/s before, %.0f after\n", pk0, pk1);
    if (only && strcmp(only, "attention")) return 0;
    /* attention ("attention" as the second argument: these rows alone): the mPLUG-Owl2 ViT's layer
     * (1025 tokens, 16 heads of 64), Q-ReAlign Mini's ViT layer at 1024 x 768 (3072 patches, 12
     * heads of 64) and the decoder (92 rows, 32 heads of 128) */
    struct { const char *what; int T, H, hd, causal; } att[] = {
        {"vit attention", 1025, 16, 64, 0}, {"qwen vit 3072", 3072, 12, 64, 0}, {"llm attention", 92, 32, 128, 1}};
    for (size_t i = 0; i < sizeof att / sizeof att[0]; i++) {
        int T = att[i].T, H = att[i].H, hd = att[i].hd, ld = H * hd;
        size_t stride = ATT_SCRATCH_ROWS * pad16((size_t)T);
        float *scratch = xmalloc(stride * sizeof(float)), *kt = xmalloc(2 * (size_t)ld * pad16((size_t)T) * sizeof(float));
        int calls = 0;
        double t0 = thread_seconds(), t;
        do {
            attention(out, x, ld, x + (size_t)T * ld, x + 2 * (size_t)T * ld, ld, T, T, H, H, hd, att[i].causal, 0, scratch, stride, kt);
            calls++;
            t = thread_seconds() - t0;
        } while (t < budget);
        double flop = 4.0 * H * (double)T * T * hd * (att[i].causal ? 0.5 : 1.0);
        printf("%-14s %-18s %10.2f %10.1f\n", att[i].what, "f32", 1e3 * t / calls, flop * calls / t / 1e9);
        const Kernels *k = kernels_cpu();
        if (!att[i].causal && k->attention_bf16) { /* the ViT's attention with bf16 products */
            calls = 0;
            t0 = thread_seconds();
            do {
                k->attention_bf16(out, x, ld, x + (size_t)T * ld, x + 2 * (size_t)T * ld, ld, T, T, H, H, hd, scratch, stride, kt);
                calls++;
                t = thread_seconds() - t0;
            } while (t < budget);
            printf("%-14s %-18s %10.2f %10.1f\n", att[i].what, "bf16", 1e3 * t / calls, flop * calls / t / 1e9);
        }
        if (!att[i].causal && k->attention_bf16_unit) { /* the same on the matrix unit (AMX) */
            calls = 0;
            t0 = thread_seconds();
            do {
                k->attention_bf16_unit(out, x, ld, x + (size_t)T * ld, x + 2 * (size_t)T * ld, ld, T, T, H, H, hd, scratch, stride,
                                       kt);
                calls++;
                t = thread_seconds() - t0;
            } while (t < budget);
            printf("%-14s %-18s %10.2f %10.1f\n", att[i].what, "bf16 unit", 1e3 * t / calls, flop * calls / t / 1e9);
        }
        free(scratch);
        free(kt);
    }
    /* the Gated DeltaNet's recurrence (delta_rule16): one head's 16 state columns through 231
     * tokens (Q-ReAlign Mini at 448 x 448), dk 128; GFLOP/s counts 7 flops per state value and
     * token (a_k and a_q: an FMA each; the decay: a multiply; the update: an FMA), four vector
     * instructions per 16 values: at 2 per cycle (two FMA ports) the kernel's ceiling */
    {
        int T = 231, dk = 128, ld = 3 * dk;
        float *st = xmalloc((size_t)dk * 16 * sizeof(float)), *dec = xmalloc((size_t)T * 3 * sizeof(float));
        for (int t = 0; t < T; t++) dec[t] = 0.95f, dec[T + t] = 0.5f, dec[2 * T + t] = 0.1f;
        int calls = 0;
        double t0 = thread_seconds(), t;
        do {
            memset(st, 0, (size_t)dk * 16 * sizeof(float));
            delta_rule16(out, 16, st, x, x + dk, ld, x + 2 * dk, ld, dec, dec + T, dec + 2 * T, T, dk, 16);
            calls++;
            t = thread_seconds() - t0;
        } while (t < budget);
        double flop = 7.0 * T * dk * 16;
        printf("%-14s %-18s %10.4f %10.1f\n", "delta rule", "f32 (16 columns)", 1e3 * t / calls, flop * calls / t / 1e9);
        free(st);
        free(dec);
    }
    return 0;
}
