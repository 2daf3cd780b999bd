/* bench/matvec.c - decoding reads every decoder weight once per token: GB/s of one-row
 * matmuls (T = 1) over the weights of LLaMA-2-7B decoder layers (q, k, v, o 4096x4096;
 * gate, up 11008x4096; down 4096x11008: 205 MB a layer at q8_256, 111 MB at q4_256), as
 * many distinct layers as make 1.5 GB (past any last-level cache: a VM may show 480 MB),
 * through the family's matvec (what decoding runs) and through its tile() with one
 * real row (what it ran before matvec), per weight type, against bench/peak.c's figure.
 *
 *   make build/bench_matvec && ./build/bench_matvec [threads [seconds]]
 *
 * Wall-clock time, best pass of several (other work on a shared machine only slows a pass). */
#ifndef TESTING
#define TESTING
#endif
#include "../qalign.c"
#include "../kernels.c"

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The one-row product through tile() alone (nt = 1), threads over pairs of groups: the
 * driver's loop before matvec. */
static void matmul_by_tiles(float *out, Acts *a, const Tensor *W) {
    const Kernels *kern = kernels_cpu();
    int groups = (W->rows + PACK_ROWS - 1) / PACK_ROWS, pairs = (groups + 1) / 2;
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < pairs; i++) {
        int g0 = 2 * i, ng = groups - g0 < 2 ? groups - g0 : 2;
        if (!kern->tile || !kern->tile(out, W->rows, a, W, NULL, EPI_STORE, 0, 1, g0, ng))
            tile_ref(out, W->rows, a, W, NULL, EPI_STORE, 0, 1, g0, ng);
    }
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    double budget = argc > 2 ? atof(argv[2]) : 3.0;
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    printf("kernels: %s (%s); %d thread(s); wall clock, best pass\n", qalign_kernels(), kernels_family(), threads);
    const int shapes[7][2] = {{4096, 4096}, {4096, 4096}, {4096, 4096}, {4096, 4096}, {11008, 4096}, {11008, 4096}, {4096, 11008}};
    const int types[] = {DT_MQ8_0, DT_MQ8_256, DT_MQ4_256};
    float *x = malloc(11008 * sizeof(float)), *out = malloc(11008 * sizeof(float));
    for (int i = 0; i < 11008; i++) x[i] = (float)((i * 37) % 61 - 30) / 30.0f;
    printf("%-8s %10s %12s %12s %12s\n", "weights", "MB/layer", "tile GB/s", "matvec GB/s", "ms/layer");
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        enum { MAXW = 7 * 64 };
        static Tensor W[MAXW];
        size_t layer = 0, total = 0;
        for (int i = 0; i < 7; i++)
            layer += dtype_nbytes(types[ti], (uint64_t)shapes[i][0] * shapes[i][1], (uint64_t)shapes[i][0], (uint64_t)shapes[i][1]);
        int nw = 7 * (int)((1500000000 + layer - 1) / layer);
        for (int k = 0; k < nw; k++) {
            int i = k % 7;
            size_t bytes = dtype_nbytes(types[ti], (uint64_t)shapes[i][0] * shapes[i][1], (uint64_t)shapes[i][0], (uint64_t)shapes[i][1]);
            uint8_t *p = NULL;
            if (posix_memalign((void **)&p, 64, bytes) != 0) return 2;
            for (size_t j = 0; j < bytes; j++) p[j] = (uint8_t)(j * 2654435761u >> 24);
            W[k] = (Tensor){p, types[ti], shapes[i][0], shapes[i][1]};
            total += bytes;
        }
        Acts a;
        size_t abytes = 0;
        if (acts_alloc(&a, 11008, 11008, 0, &abytes) != 0) return 2;
        double best[2] = {1e30, 1e30};
        for (double t_start = wall(); wall() - t_start < budget;)
            for (int path = 0; path < 2; path++) {
                double t0 = wall();
                for (int i = 0; i < nw; i++) {
                    acts_set(&a, x, 1, W[i].cols);
                    acts_prepare(&a, act_kind_for(&a, W[i].dtype));
                    if (path) matmul_acts(out, W[i].rows, &a, &W[i], NULL, EPI_STORE);
                    else matmul_by_tiles(out, &a, &W[i]);
                }
                double t = wall() - t0;
                if (t < best[path]) best[path] = t;
            }
        printf("%-8s %10.1f %12.2f %12.2f %12.2f\n", DT_NAMES[types[ti]], layer / 1e6, total / best[0] / 1e9, total / best[1] / 1e9,
               1e3 * best[1] * 7 / nw);
        for (int i = 0; i < nw; i++) free((void *)W[i].data);
        acts_free(&a);
    }
    free(x), free(out);
    return 0;
}
