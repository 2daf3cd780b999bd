/* bench/q8loop.c - how fast can the q8_0 inner loop go on this core, and what does each part
 * of it cost? One thread, all data in L1, so memory plays no part.
 *
 *   make build/q8loop && ./build/q8loop
 *
 * The loop is qalign's AVX-512 VNNI tile (R activation rows x G groups of 16 output columns,
 * 8 vpdpbusd per accumulator per 32-block), in three forms that add one cost at a time:
 *
 *   int sums       weights loaded (G per step), activations broadcast from memory (R per
 *                  step), vpdpbusd; per 32-block the int32 sums are only added up
 *   + cvt, fma     per 32-block: int32 sums -> float, times the weight scale, into the total
 *   + mul (real)   per 32-block also the activation scale: d_w * d_x, which is what q8_0 needs
 *
 * It prints GOP/s (one multiply-add = 2 ops) and the share of the vpdpbusd peak, measured with
 * twelve independent register chains (in asm, so that the compiler adds no register copies). bench/ANALYSIS.md explains what the figures mean. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
#include <immintrin.h>

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define NB 32          /* 32-blocks per pass: K = 1024, 2 x 18 KB of weights, in L1 */
#define BLOCK 576      /* bytes of one packed q8_0 block: 16 columns x 32 int8 + 16 f32 scales */
enum { SUMS, SCALE_W, SCALE_WX, FORMS };
static const char *const FORM_NAMES[FORMS] = {"int sums", "+ cvt, fma", "+ mul (real)"};

/* One pass over NB blocks for a tile of R rows x G groups, in the given form. */
#define DEFINE_TILE(R, G, form)                                                                   \
    static __attribute__((noinline)) __m512 tile_##R##x##G##_##form(const uint8_t *w, const uint32_t *x, \
                                                                   const float *xd, long passes) { \
        __m512 acc[G][R];                                                                         \
        for (int g = 0; g < G; g++)                                                               \
            for (int r = 0; r < R; r++) acc[g][r] = _mm512_setzero_ps();                          \
        for (long p = 0; p < passes; p++) {                                                       \
            for (int b = 0; b < NB; b++) {                                                        \
                const uint8_t *wb = w + (size_t)b * BLOCK;                                        \
                const uint32_t *xb = x + (size_t)b * 8 * R;                                       \
                __m512i s[G][R];                                                                  \
                for (int g = 0; g < G; g++)                                                       \
                    for (int r = 0; r < R; r++) s[g][r] = _mm512_setzero_si512();                 \
                for (int j = 0; j < 8; j++) {                                                     \
                    __m512i wv[G];                                                                \
                    for (int g = 0; g < G; g++)                                                   \
                        wv[g] = _mm512_loadu_si512(wb + (size_t)g * NB * BLOCK + j * 64);                       \
                    for (int r = 0; r < R; r++) {                                                 \
                        __m512i xv = _mm512_set1_epi32((int)xb[j * R + r]);                            \
                        for (int g = 0; g < G; g++) s[g][r] = _mm512_dpbusd_epi32(s[g][r], wv[g], xv); \
                    }                                                                             \
                }                                                                                 \
                for (int g = 0; g < G; g++) {                                                     \
                    __m512 dw = _mm512_loadu_ps((const float *)(wb + (size_t)g * NB * BLOCK + 512)); \
                    for (int r = 0; r < R; r++) {                                                 \
                        if (form == SCALE_WX)                                                     \
                            acc[g][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[g][r]),              \
                                                        _mm512_mul_ps(dw, _mm512_set1_ps(xd[b * R + r])), acc[g][r]); \
                        else if (form == SCALE_W)                                                 \
                            acc[g][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[g][r]), dw, acc[g][r]); \
                        else                                                                      \
                            acc[g][r] = _mm512_add_ps(acc[g][r], _mm512_castsi512_ps(s[g][r]));   \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        __m512 t = _mm512_setzero_ps();                                                           \
        for (int g = 0; g < G; g++)                                                               \
            for (int r = 0; r < R; r++) t = _mm512_add_ps(t, acc[g][r]);                          \
        return t;                                                                                 \
    }
/* one function per tile shape and form, so that each is compiled with its form fixed */
#define DEFINE_FORMS(R, G) DEFINE_TILE(R, G, SUMS) DEFINE_TILE(R, G, SCALE_W) DEFINE_TILE(R, G, SCALE_WX)
DEFINE_FORMS(6, 2) /* qalign's tile */
DEFINE_FORMS(5, 2)
DEFINE_FORMS(4, 2)
DEFINE_FORMS(8, 1)
#define FORM_FNS(R, G) {tile_##R##x##G##_SUMS, tile_##R##x##G##_SCALE_W, tile_##R##x##G##_SCALE_WX}

static double peak(void) {
    __m512i a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, b = _mm512_set1_epi32(0x01010101), c = _mm512_set1_epi32(0x02020202);
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = _mm512_setzero_si512();
    long n = 20000000;
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

typedef __m512 (*TileFn)(const uint8_t *, const uint32_t *, const float *, long);

int main(void) {
    static const struct { const char *name; TileFn fn[FORMS]; int R, G; } tiles[] = {
        {"6 rows x 2 groups (qalign)", FORM_FNS(6, 2), 6, 2}, {"5 rows x 2 groups", FORM_FNS(5, 2), 5, 2},
        {"4 rows x 2 groups", FORM_FNS(4, 2), 4, 2}, {"8 rows x 1 group", FORM_FNS(8, 1), 8, 1}};
    uint8_t *w = aligned_alloc(64, 2 * NB * BLOCK);
    uint32_t *x = aligned_alloc(64, (size_t)NB * 8 * 8 * sizeof(uint32_t));
    float *xd = aligned_alloc(64, (size_t)NB * 8 * sizeof(float));
    if (!w || !x || !xd) return 1;
    for (size_t i = 0; i < 2 * NB * BLOCK; i++) w[i] = (uint8_t)(i * 37u >> 3);
    for (size_t i = 0; i < (size_t)NB * 8 * 8; i++) x[i] = (uint32_t)(i * 2654435761u);
    for (size_t i = 0; i < (size_t)NB * 8; i++) xd[i] = 1e-3f;
    double pk = peak();
    printf("vpdpbusd peak, one thread, 12 register chains: %.0f GOP/s\n", pk);
    printf("%-28s", "tile");
    for (int f = 0; f < FORMS; f++) printf(" %15s", FORM_NAMES[f]);
    printf("\n");
    float sink = 0;
    for (size_t i = 0; i < sizeof tiles / sizeof tiles[0]; i++) {
        printf("%-28s", tiles[i].name);
        for (int f = 0; f < FORMS; f++) {
            long passes = 20000000L / (NB * 8 * tiles[i].R * tiles[i].G) * 8;
            tiles[i].fn[f](w, x, xd, passes / 10); /* warm-up */
            double t0 = cpu_seconds();
            __m512 r = tiles[i].fn[f](w, x, xd, passes);
            double t = cpu_seconds() - t0, gops = (double)passes * NB * 8 * tiles[i].R * tiles[i].G * 128 / t / 1e9;
            sink += _mm512_reduce_add_ps(r);
            printf(" %7.0f (%3.0f%%)", gops, 100 * gops / pk);
        }
        printf("\n");
    }
    if (sink == 12345.0f) printf(" ");
    return 0;
}
#else
int main(void) {
    printf("q8loop: needs AVX-512 VNNI (build with -march=native on such a CPU)\n");
    return 0;
}
#endif
