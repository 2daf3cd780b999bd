/* bench/q8loop.c - how fast can an int8 matmul inner loop go on this core, and what does
 * each part of it cost? One thread, all data in L1, so memory plays no part.
 *
 *   make build/q8loop && ./build/q8loop
 *
 * Every loop is a register tile of qalign's AVX-512 VNNI kind: R activation rows x G groups
 * of 16 output rows; per step one 64-byte weight load per group (4 columns of 16 rows),
 * one broadcast activation quad per row, R x G vpdpbusd into int32 sums. They differ in
 * what happens to those int32 sums, and how often:
 *
 *   int sums only       the sums are only added up (the ceiling of this tile)
 *   q8_0                per 32 columns: int32 -> float, d_w x d_x (a multiply), an FMA into
 *                       the float total: what q8_0 (weight and activation scales per 32) needs
 *   per 32, no mul      the same without the d_w x d_x multiply (one scale only per 32)
 *   per 128 / per 256   q8_0's three float steps, once per 128 / 256 columns: weight and
 *                       activation blocks of that size (llama.cpp's Q8_K has 256)
 *   per 32 int scale    per 32 a vpmulld by an integer sub-scale and a vpaddd into an int32
 *                       total; per 256 the float steps (8-bit weights with 8-bit sub-scales)
 *   q4_1                4-bit weights (two nibbles per byte, unpacked by and/shift per group),
 *                       per 32 the float steps and the minimum's FMA
 *   q4, per 256         4-bit weights, scale and minimum per 256 columns
 *   q4, per 32 dpwssd   4-bit weights as q + 8 (the sum starts at -8 sum x, so a 32-column
 *                       sum fits 16 bits), per 32 one vpdpwssd by a 16-bit sub-scale into the
 *                       int32 total; per 256 the float steps (4.375 bits per weight)
 *
 * It prints GOP/s (one multiply-add = 2 ops) and the share of the vpdpbusd peak, measured
 * with twelve independent register chains (in asm, so that the compiler adds no register
 * copies). bench/ANALYSIS.md explains what the figures mean. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
#include <immintrin.h>

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define K 1024          /* columns per pass: 2 (or 4) groups x 16 KB of 8-bit weights, in L1 (L2) */
#define NQ (K / 4)      /* weight quads (64 bytes: 4 columns of 16 rows) per group */

enum { F_SUMS, F_Q8_0, F_NOMUL, F_128, F_256, F_INTSUB, F_Q4_1, F_Q4_256, F_Q4_DPW, FORMS };
static const char *const FORM_NAMES[FORMS] = {"int sums only", "q8_0 (per 32)", "per 32, no mul", "per 128",
                                              "per 256", "per 32 int scale", "q4_1", "q4, per 256",
                                              "q4, per 32 dpwssd"};

/* One pass over K columns for a tile of R rows x G groups in the given form. w: G groups of
 * NQ quads (8-bit) or NQ/2 chunks (4-bit); x: NQ x R broadcast quads; d, m: per-block
 * scales (16 lanes); xd, xs, xc: per-block activation scale, sum, -8 sum; sc: sub-scales. */
#define UNROLL _Pragma("GCC unroll 16")
static inline __attribute__((always_inline)) __m512 pass(const uint8_t *w, const uint32_t *x, const float *d,
                                                         const float *xd, const float *xs, const int32_t *xc,
                                                         const uint8_t *sc, long passes, const int R, const int G,
                                                         const int form) {
    const int q4 = form == F_Q4_1 || form == F_Q4_256 || form == F_Q4_DPW;
    const int sub = form == F_SUMS ? K : form == F_128 ? 128 : form == F_256 || form == F_Q4_256 ? 256 : 32;
    const int sup = form == F_INTSUB || form == F_Q4_DPW ? 256 : sub;  /* float steps every sup columns */
    const size_t gstride = q4 ? (size_t)NQ * 32 : (size_t)NQ * 64;
    const __m512i low4 = _mm512_set1_epi8(15);
    __m512 acc[4][12];
    __m512i tot[4][12];
    for (int g = 0; g < G; g++)
        for (int r = 0; r < R; r++) acc[g][r] = _mm512_setzero_ps(), tot[g][r] = _mm512_setzero_si512();
    for (long p = 0; p < passes; p++) {
        for (int c0 = 0; c0 < K; c0 += sub) {
            __m512i s[4][12];
            UNROLL for (int g = 0; g < G; g++)
                UNROLL for (int r = 0; r < R; r++)
                    s[g][r] = form == F_Q4_DPW ? _mm512_set1_epi32(xc[(c0 / 32) * R + r]) : _mm512_setzero_si512();
            for (int j0 = c0 / 4; j0 < (c0 + sub) / 4; j0 += 8) /* 32 columns */
                UNROLL for (int j = j0; j < j0 + 8; j++) {
                    __m512i wv[4];
                    UNROLL for (int g = 0; g < G; g++) {
                        if (q4) {
                            __m512i v = _mm512_loadu_si512(w + g * gstride + (size_t)(j / 2) * 64);
                            wv[g] = j % 2 ? _mm512_and_si512(_mm512_srli_epi16(v, 4), low4) : _mm512_and_si512(v, low4);
                        } else {
                            wv[g] = _mm512_loadu_si512(w + g * gstride + (size_t)j * 64);
                        }
                    }
                    UNROLL for (int r = 0; r < R; r++) {
                        __m512i xv = _mm512_set1_epi32((int)x[(size_t)j * R + r]);
                        UNROLL for (int g = 0; g < G; g++) s[g][r] = _mm512_dpbusd_epi32(s[g][r], wv[g], xv);
                    }
                }
            int b = c0 / 32;
            if (form == F_SUMS) {
                UNROLL for (int g = 0; g < G; g++)
                    UNROLL for (int r = 0; r < R; r++) tot[g][r] = _mm512_add_epi32(tot[g][r], s[g][r]);
                continue;
            }
            if (form == F_INTSUB || form == F_Q4_DPW) {
                UNROLL for (int g = 0; g < G; g++) {
                    __m512i scv = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(sc + ((size_t)g * 64 + b) * 16)));
                    UNROLL for (int r = 0; r < R; r++)
                        tot[g][r] = form == F_INTSUB ? _mm512_add_epi32(tot[g][r], _mm512_mullo_epi32(s[g][r], scv))
                                                     : _mm512_dpwssd_epi32(tot[g][r], s[g][r], scv);
                }
                if ((c0 + sub) % sup) continue;
            }
            UNROLL for (int g = 0; g < G; g++) {
                __m512 dw = _mm512_loadu_ps(d + ((size_t)g * 64 + b) * 16);
                UNROLL for (int r = 0; r < R; r++) {
                    __m512i v = form == F_INTSUB || form == F_Q4_DPW ? tot[g][r] : s[g][r];
                    __m512 dx = _mm512_set1_ps(xd[b * R + r]);
                    if (form == F_NOMUL)
                        acc[g][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), dw, acc[g][r]);
                    else
                        acc[g][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_mul_ps(dw, dx), acc[g][r]);
                    if (form == F_Q4_1 || form == F_Q4_256)
                        acc[g][r] = _mm512_fmadd_ps(_mm512_loadu_ps(d + ((size_t)g * 64 + b) * 16 + 8), _mm512_set1_ps(xs[b * R + r]), acc[g][r]);
                    if (form == F_INTSUB || form == F_Q4_DPW) tot[g][r] = _mm512_setzero_si512();
                }
            }
        }
    }
    __m512 t = _mm512_setzero_ps();
    for (int g = 0; g < G; g++)
        for (int r = 0; r < R; r++) t = _mm512_add_ps(t, _mm512_add_ps(acc[g][r], _mm512_castsi512_ps(tot[g][r])));
    return t;
}

typedef __m512 (*PassFn)(const uint8_t *, const uint32_t *, const float *, const float *, const float *, const int32_t *,
                         const uint8_t *, long);
/* one function per tile shape and form, so that each is compiled with both fixed */
#define FN(R, G, f)                                                                                               \
    static __attribute__((noinline)) __m512 pass_##R##x##G##_##f(const uint8_t *w, const uint32_t *x, const float *d, \
                                                                 const float *xd, const float *xs, const int32_t *xc, \
                                                                 const uint8_t *sc, long passes) {              \
        return pass(w, x, d, xd, xs, xc, sc, passes, R, G, f);                                                      \
    }
#define ALL_FORMS(R, G)                                                                                            \
    FN(R, G, F_SUMS) FN(R, G, F_Q8_0) FN(R, G, F_NOMUL) FN(R, G, F_128) FN(R, G, F_256) FN(R, G, F_INTSUB)           \
    FN(R, G, F_Q4_1) FN(R, G, F_Q4_256) FN(R, G, F_Q4_DPW)
#define FORM_FNS(R, G)                                                                                              \
    {pass_##R##x##G##_F_SUMS, pass_##R##x##G##_F_Q8_0, pass_##R##x##G##_F_NOMUL, pass_##R##x##G##_F_128,               \
     pass_##R##x##G##_F_256, pass_##R##x##G##_F_INTSUB, pass_##R##x##G##_F_Q4_1, pass_##R##x##G##_F_Q4_256,           \
     pass_##R##x##G##_F_Q4_DPW}
ALL_FORMS(6, 2) /* qalign's q8_0 tile */
ALL_FORMS(8, 2)
ALL_FORMS(10, 2)
ALL_FORMS(4, 2)
ALL_FORMS(6, 4)
ALL_FORMS(4, 4)

/* GOP/s of vpdpbusd with twelve independent chains, over n x 12 instructions */
static double peak(long n) {
    __m512i a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, b = _mm512_set1_epi32(0x01010101), c = _mm512_set1_epi32(0x02020202);
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = _mm512_setzero_si512();
    double t0 = cpu_seconds();
    for (long i = 0; i < n; i++)
        __asm__ volatile("vpdpbusd %[c], %[b], %[a0]\n\tvpdpbusd %[c], %[b], %[a1]\n\tvpdpbusd %[c], %[b], %[a2]\n\t"
                         "vpdpbusd %[c], %[b], %[a3]\n\tvpdpbusd %[c], %[b], %[a4]\n\tvpdpbusd %[c], %[b], %[a5]\n\t"
                         "vpdpbusd %[c], %[b], %[a6]\n\tvpdpbusd %[c], %[b], %[a7]\n\tvpdpbusd %[c], %[b], %[a8]\n\t"
                         "vpdpbusd %[c], %[b], %[a9]\n\tvpdpbusd %[c], %[b], %[a10]\n\tvpdpbusd %[c], %[b], %[a11]"
                         : [a0] "+v"(a0), [a1] "+v"(a1), [a2] "+v"(a2), [a3] "+v"(a3), [a4] "+v"(a4), [a5] "+v"(a5),
                           [a6] "+v"(a6), [a7] "+v"(a7), [a8] "+v"(a8), [a9] "+v"(a9), [a10] "+v"(a10), [a11] "+v"(a11)
                         : [b] "v"(b), [c] "v"(c));
    double t = cpu_seconds() - t0;
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                                 _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
    s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)));
    if (_mm512_reduce_add_epi32(s) == 12345) printf(" ");
    return 12.0 * (double)n * 128 / t / 1e9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    static const struct { const char *name; PassFn fn[FORMS]; int R, G; } tiles[] = {
        {"6 rows x 2 groups", FORM_FNS(6, 2), 6, 2}, {"8 rows x 2 groups", FORM_FNS(8, 2), 8, 2},
        {"10 rows x 2 groups", FORM_FNS(10, 2), 10, 2}, {"4 rows x 2 groups", FORM_FNS(4, 2), 4, 2},
        {"6 rows x 4 groups", FORM_FNS(6, 4), 6, 4}, {"4 rows x 4 groups", FORM_FNS(4, 4), 4, 4}};
    double seconds = argc > 1 ? atof(argv[1]) : 0.05; /* per slice */
    uint8_t *w = aligned_alloc(64, 4 * NQ * 64);
    uint32_t *x = aligned_alloc(64, (size_t)NQ * 12 * sizeof(uint32_t));
    float *d = aligned_alloc(64, 4 * 64 * 16 * sizeof(float)), *xd = aligned_alloc(64, 64 * 12 * sizeof(float));
    float *xs = aligned_alloc(64, 64 * 12 * sizeof(float));
    int32_t *xc = aligned_alloc(64, 64 * 12 * sizeof(int32_t));
    uint8_t *sc = aligned_alloc(64, 4 * 64 * 16);
    if (!w || !x || !d || !xd || !xs || !xc || !sc) return 1;
    for (size_t i = 0; i < 4 * NQ * 64; i++) w[i] = (uint8_t)(i * 37u >> 3);
    for (size_t i = 0; i < (size_t)NQ * 12; i++) x[i] = (uint32_t)(i * 2654435761u);
    for (size_t i = 0; i < 4 * 64 * 16; i++) d[i] = 1e-3f, sc[i] = (uint8_t)(i & 63);
    for (size_t i = 0; i < 64 * 12; i++) xd[i] = 1e-3f, xs[i] = 1.0f, xc[i] = -(int32_t)i;
    /* The other CPU of this VM may share a core with this one (other tenants' builds
     * halve the vector throughput at times), so each figure is the median of 7 slices,
     * each timed right after a slice of the peak loop, as a share of that peak. */
    long pn = (long)(seconds * 3e8 / 12);
    double lo = 1e30, hi = 0;
    printf("share of the vpdpbusd peak (one thread, 12 register chains), median of 7 slices of %.0f ms\n", 1e3 * seconds);
    printf("%-20s", "tile");
    for (int f = 0; f < FORMS; f++) printf(" %17s", FORM_NAMES[f]);
    printf("\n");
    float sink = 0;
    for (size_t i = 0; i < sizeof tiles / sizeof tiles[0]; i++) {
        printf("%-20s", tiles[i].name);
        for (int f = 0; f < FORMS; f++) {
            PassFn fn = tiles[i].fn[f];
            long passes = 20;
            double share[7];
            sink += _mm512_reduce_add_ps(fn(w, x, d, xd, xs, xc, sc, passes)); /* warm-up */
            for (int k = 0; k < 7; k++) {
                double pk = peak(pn);
                lo = pk < lo ? pk : lo, hi = pk > hi ? pk : hi;
                double t0 = cpu_seconds(), t;
                long done = 0;
                do {
                    sink += _mm512_reduce_add_ps(fn(w, x, d, xd, xs, xc, sc, passes));
                    done += passes;
                    t = cpu_seconds() - t0;
                } while (t < seconds);
                share[k] = (double)done * K * 16 * tiles[i].R * tiles[i].G * 2 / t / 1e9 / pk;
            }
            qsort(share, 7, sizeof share[0], cmp_double);
            printf(" %13.0f%% %2.0f", 100 * share[3], 100 * (share[6] - share[0]) / 2);
            fflush(stdout);
        }
        printf("\n");
    }
    printf("(after each share: half its spread over the 7 slices, in points)\n");
    printf("peak over the run: %.0f-%.0f GOP/s\n", lo, hi);
    if (sink == 12345.0f) printf(" ");
    return 0;
}
#else
int main(void) {
    printf("q8loop: needs AVX-512 VNNI (build with -march=native on such a CPU)\n");
    return 0;
}
#endif
