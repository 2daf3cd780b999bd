/* bench/kernels.c - GFLOP/s of each matmul kernel and of attention, on one thread.
 *
 *   make build/bench_kernels && ./build/bench_kernels [seconds-per-case]
 *
 * Times are CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID), so other work on a
 * shared machine slows the figures less than wall-clock time would. Shapes are the ones
 * one-align runs: ViT (1025 tokens), decoder prefill (77 new rows), LLaMA MLP. */
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
    W.data = p;
    return W;
}

int main(int argc, char **argv) {
    double budget = argc > 1 ? atof(argv[1]) : 1.0;
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
    printf("kernels: %s; one thread; CPU time of the thread\n", qalign_kernels());
    struct { const char *what; int T, N, K; } shapes[] = {
        {"vit qkv/o", 1025, 1024, 1024}, {"vit fc1", 1025, 4096, 1024}, {"vit fc2", 1025, 1024, 4096},
        {"llm q/k/v/o", 77, 4096, 4096}, {"llm gate/up", 77, 11008, 4096}, {"llm down", 77, 4096, 11008},
    };
    const int types[] = {DT_MF32, DT_MBF16, DT_MBF16, DT_MQ8_0, DT_MQ4_1};
    const int fast[] = {0, 0, 1, 0, 0};
    size_t cap = (size_t)1025 * 11008;
    float *x = xmalloc(cap * sizeof(float)), *out = xmalloc((size_t)1025 * 11008 * sizeof(float));
    for (size_t i = 0; i < cap; i++) x[i] = (float)((int)(i % 61) - 30) / 30.0f;
    printf("%-14s %-18s %10s %10s\n", "shape", "weights", "ms/call", "GFLOP/s");
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
            if (fast[ti] && !kernels_cpu()->bf16_acts) continue; /* no bf16 x bf16 tiles in this build */
            Acts a;
            size_t bytes = 0;
            if (acts_alloc(&a, cap, 11008, fast[ti], &bytes) != 0) return 2;
            Tensor W = filled_matrix(types[ti], shapes[si].N, shapes[si].K);
            int calls = 0;
            double t0 = thread_seconds(), t;
            do {
                matmul(out, &a, x, shapes[si].T, &W, NULL, EPI_STORE);
                calls++;
                t = thread_seconds() - t0;
            } while (t < budget);
            double flop = 2.0 * shapes[si].T * shapes[si].N * (double)shapes[si].K;
            char name[32];
            snprintf(name, sizeof name, "%s%s", DT_NAMES[types[ti]], types[ti] == DT_MBF16 ? (fast[ti] ? " (bf16 act)" : " (f32 act)") : "");
            printf("%-14s %-18s %10.2f %10.1f\n", shapes[si].what, name, 1e3 * t / calls, flop * calls / t / 1e9);
            fflush(stdout);
            free((void *)W.data);
            acts_free(&a);
        }
    }
    /* attention: ViT layer (1025 tokens, 16 heads of 64) and decoder (92 rows, 32 heads of 128) */
    struct { const char *what; int T, H, hd, causal; } att[] = {{"vit attention", 1025, 16, 64, 0}, {"llm attention", 92, 32, 128, 1}};
    for (size_t i = 0; i < 2; i++) {
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
        free(scratch);
        free(kt);
    }
    return 0;
}
