/* bench/peak.c - what this machine can do at best, measured, so the benchmark can say how
 * far each stage is from it: f32 FMA, bf16 dot (vdpbf16ps), int8 dot (vpdpbusd) in
 * GFLOP/s (GOP/s: one multiply-add = 2), and read bandwidth in GB/s, on all threads.
 *
 *   cc -O2 -march=native -fopenmp bench/peak.c -o build/peak && ./build/peak
 * Prints one "name value" line per figure. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

#define ITERS 20000000L

#if defined(__AVX512F__)
/* 12 independent accumulator chains hide the latency of each instruction */
#define KERNEL(name, type, init, op, ops_per_insn)                                                   \
    static double name(void) {                                                                       \
        double t0 = now();                                                                           \
        float sink = 0;                                                                              \
        _Pragma("omp parallel reduction(+ : sink)") {                                                \
            type a0 = init, a1 = init, a2 = init, a3 = init, a4 = init, a5 = init;                   \
            type a6 = init, a7 = init, a8 = init, a9 = init, a10 = init, a11 = init;                 \
            type b = init, c = init;                                                                 \
            for (long i = 0; i < ITERS; i++) {                                                       \
                a0 = op(a0, b, c); a1 = op(a1, b, c); a2 = op(a2, b, c); a3 = op(a3, b, c);          \
                a4 = op(a4, b, c); a5 = op(a5, b, c); a6 = op(a6, b, c); a7 = op(a7, b, c);          \
                a8 = op(a8, b, c); a9 = op(a9, b, c); a10 = op(a10, b, c); a11 = op(a11, b, c);      \
                __asm__ volatile("" : "+v"(b), "+v"(c));                                             \
            }                                                                                        \
            type s = a0;                                                                             \
            s = op(s, a1, a2); s = op(s, a3, a4); s = op(s, a5, a6); s = op(s, a7, a8);              \
            s = op(s, a9, a10); s = op(s, a11, b);                                                   \
            float out[16];                                                                           \
            memcpy(out, &s, sizeof out);                                                             \
            sink += out[0];                                                                          \
        }                                                                                            \
        double t = now() - t0;                                                                       \
        if (sink == 12345.0f) printf(" ");                                                           \
        return 12.0 * ITERS * (double)(ops_per_insn)*threads() / t / 1e9;                            \
    }
#define FMA(a, b, c) _mm512_fmadd_ps(b, c, a)
KERNEL(peak_f32, __m512, _mm512_set1_ps(1e-9f), FMA, 32)
#ifdef __AVX512BF16__
#define DPBF16(a, b, c) _mm512_dpbf16_ps(a, (__m512bh)_mm512_castps_si512(b), (__m512bh)_mm512_castps_si512(c))
KERNEL(peak_bf16, __m512, _mm512_set1_ps(1e-9f), DPBF16, 64)
#endif
#ifdef __AVX512VNNI__
#define DPBUSD(a, b, c) _mm512_castsi512_ps(_mm512_dpbusd_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b), _mm512_castps_si512(c)))
KERNEL(peak_int8, __m512, _mm512_set1_ps(1e-9f), DPBUSD, 128)
#endif
#endif

static double bandwidth(void) {
    size_t n = (size_t)1 << 27; /* 1 GiB of floats... 512 MiB */
    float *buf = malloc(n * sizeof(float));
    if (!buf) return 0;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 7);
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now(), sum = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum)
        for (size_t i = 0; i < n; i += 16) sum += buf[i] + buf[i + 8];
        double t = now() - t0, gbs = (double)n * sizeof(float) / t / 1e9;
        if (sum == -1) printf(" ");
        best = gbs > best ? gbs : best;
    }
    free(buf);
    return best;
}

int main(void) {
    printf("threads %d\n", threads());
#if defined(__AVX512F__)
    printf("f32_fma_gflops %.1f\n", peak_f32());
#ifdef __AVX512BF16__
    printf("bf16_dot_gflops %.1f\n", peak_bf16());
#endif
#ifdef __AVX512VNNI__
    printf("int8_dot_gops %.1f\n", peak_int8());
#endif
#endif
    printf("read_gbs %.1f\n", bandwidth());
    return 0;
}
