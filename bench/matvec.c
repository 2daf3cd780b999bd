/* bench/matvec.c - decoding reads every decoder weight once per token: GB/s of few-row
 * matmuls (T = 1..8: one answer, or a few stepped together) over the weights of LLaMA-2-7B
 * decoder layers (q, k, v, o 4096x4096; gate, up 11008x4096; down 4096x11008: 205 MB a
 * layer at q8_256, 111 MB at q4_256), as many distinct layers as make 1.5 GB (past any
 * last-level cache: a VM may show 480 MB), per weight type and row count, through
 *   matvec  what decoding runs (matmul_acts: the family's matvec, each weight read once),
 *   tiles   the family's tile() over the rows (TILE_ROWS_Q8 at a time: 8 rows read the weights
 *           twice with AVX-512's 6-row tiles),
 *   amx     the family's tile_all_rows, where it has one for the type (AMX, q8_256),
 * against bench/peak.c's figure. GB/s is weight bytes read per second (the same bytes serve
 * all the rows); rows x that / bytes is tokens/s.
 *
 *   make build/bench_matvec && ./build/bench_matvec [threads [seconds [rows,... [MB [types]]]]]
 *
 * MB: the weights' total (default 1500: from memory); a few MB (less than a layer: that many
 * 4096 x 4096 q projections) stay in the last-level cache, which shows whether a kernel is bound by reading or by its
 * arithmetic. types: a comma-separated subset of q8_0,q8_256,q4_256 (default all).
 *
 * Best pass of several (other work on a shared machine only slows a pass); time is the
 * thread's CPU time with one thread (what other jobs on a shared machine disturb least),
 * else wall-clock time. */
#ifndef TESTING
#define TESTING
#endif
#include "../qalign.c"
#include "../kernels.c"

static int cpu_clock; /* one thread: CLOCK_THREAD_CPUTIME_ID */
static double wall(void) {
    struct timespec ts;
    clock_gettime(cpu_clock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The product through tile() alone, threads over pairs of groups, each walking the rows in
 * tiles (the driver's loop for more rows than matvec takes), or through tile_all_rows. */
static void matmul_by_tiles(float *out, Acts *a, const Tensor *W, int amx) {
    const Kernels *kern = kernels_cpu();
    int groups = (W->rows + PACK_ROWS - 1) / PACK_ROWS, pairs = (groups + 1) / 2, RT = a->R ? a->R : 4;
    if (amx) acts_slice(a);
    else acts_interleave(a);
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < pairs; i++) {
        int g0 = 2 * i, ng = groups - g0 < 2 ? groups - g0 : 2;
        if (amx) {
            CHECK(kern->tile_all_rows(out, W->rows, a, W, NULL, EPI_STORE, g0, ng));
            continue;
        }
        for (int t0 = 0; t0 < a->T; t0 += RT) {
            int nt = a->T - t0 < RT ? a->T - t0 : RT;
            if (!kern->tile || !kern->tile(out, W->rows, a, W, NULL, EPI_STORE, t0, nt, g0, ng))
                tile_ref(out, W->rows, a, W, NULL, EPI_STORE, t0, nt, g0, ng);
        }
    }
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    double budget = argc > 2 ? atof(argv[2]) : 3.0;
    int rows[MATVEC_ROWS], nrows = 0;
    for (const char *p = argc > 3 ? argv[3] : "1,8"; *p && nrows < MATVEC_ROWS; p++) {
        int r = atoi(p);
        if (r >= 1 && r <= MATVEC_ROWS) rows[nrows++] = r;
        while (p[1] && *p != ',') p++;
    }
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    double mb = argc > 4 ? atof(argv[4]) : 1500;
    const char *only = argc > 5 ? argv[5] : NULL;
    cpu_clock = threads == 1;
    const Kernels *kern = kernels_cpu();
    printf("kernels: %s (%s); %d thread(s); %s, best pass; GB/s of weights read\n", qalign_kernels(), kernels_family(), threads,
           cpu_clock ? "thread CPU time" : "wall clock");
    const int shapes[7][2] = {{4096, 4096}, {4096, 4096}, {4096, 4096}, {4096, 4096}, {11008, 4096}, {11008, 4096}, {4096, 11008}};
    const int types[] = {DT_MQ8_0, DT_MQ8_256, DT_MQ4_256};
    float *x = malloc((size_t)MATVEC_ROWS * 11008 * sizeof(float)), *out = malloc((size_t)MATVEC_ROWS * 11008 * sizeof(float));
    for (int i = 0; i < MATVEC_ROWS * 11008; i++) x[i] = (float)((i * 37) % 61 - 30) / 30.0f;
    printf("%-8s %4s %10s %10s %10s %10s %10s\n", "weights", "rows", "MB/layer", "tiles GB/s", "amx GB/s", "matvec GB/s", "ms/layer");
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        if (only && !strstr(only, DT_NAMES[types[ti]])) continue;
        enum { MAXW = 7 * 64 };
        static Tensor W[MAXW];
        size_t layer = 0, total = 0;
        for (int i = 0; i < 7; i++)
            layer += dtype_nbytes(types[ti], (uint64_t)shapes[i][0] * shapes[i][1], (uint64_t)shapes[i][0], (uint64_t)shapes[i][1]);
        int nw = 7 * (int)((mb * 1e6 + layer - 1) / layer);
        if (mb * 1e6 < layer) nw = (int)(mb * 1e6 * 7 / layer) + 1; /* a few q projections (4096 x 4096) */
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
        if (acts_alloc(&a, (size_t)MATVEC_ROWS * 11008, 11008, 0, &abytes) != 0) return 2;
        int amx = kern->tile_all_rows && (kern->all_rows_dtypes >> types[ti] & 1);
        for (int ri = 0; ri < nrows; ri++) {
            int T = rows[ri];
            double best[3] = {1e30, 1e30, 1e30};
            for (double t_start = wall(); wall() - t_start < budget;)
                for (int path = 0; path < 3; path++) {
                    if (path == 1 && !amx) continue;
                    double t0 = wall();
                    for (int i = 0; i < nw; i++) {
                        acts_set(&a, x, T, W[i].cols);
                        acts_convert(&a, act_kind_for(&a, W[i].dtype));
                        if (path == 2) matmul_acts(out, W[i].rows, &a, &W[i], NULL, EPI_STORE);
                        else matmul_by_tiles(out, &a, &W[i], path == 1);
                    }
                    double t = wall() - t0;
                    if (t < best[path]) best[path] = t;
                }
            char amxs[32] = "-";
            if (amx) snprintf(amxs, sizeof amxs, "%.2f", total / best[1] / 1e9);
            printf("%-8s %4d %10.1f %10.2f %10s %10.2f %10.2f\n", DT_NAMES[types[ti]], T, layer / 1e6, total / best[0] / 1e9, amxs,
                   total / best[2] / 1e9, 1e3 * best[2] * 7 / nw);
            fflush(stdout);
        }
        for (int i = 0; i < nw; i++) free((void *)W[i].data);
        acts_free(&a);
    }
    free(x), free(out);
    return 0;
}
