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

#define ITERS 10000000L

#if defined(__AVX512F__)
/* Twelve independent accumulator chains hide each instruction's latency. The twelve
 * instructions are written in asm: in C the compiler merges chains that compute the same
 * values (one chain then measures latency, not throughput) or adds register copies. */
#define X12(insn)                                                                                    \
    insn " %[c], %[b], %[a0]\n\t" insn " %[c], %[b], %[a1]\n\t" insn " %[c], %[b], %[a2]\n\t"          \
    insn " %[c], %[b], %[a3]\n\t" insn " %[c], %[b], %[a4]\n\t" insn " %[c], %[b], %[a5]\n\t"          \
    insn " %[c], %[b], %[a6]\n\t" insn " %[c], %[b], %[a7]\n\t" insn " %[c], %[b], %[a8]\n\t"          \
    insn " %[c], %[b], %[a9]\n\t" insn " %[c], %[b], %[a10]\n\t" insn " %[c], %[b], %[a11]"
#define KERNEL(name, insn, ops_per_insn)                                                             \
    static double name(void) {                                                                       \
        double t0 = now();                                                                           \
        float sink = 0;                                                                              \
        _Pragma("omp parallel reduction(+ : sink)") {                                                \
            __m512 a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11;                                 \
            __m512 b = _mm512_set1_ps(1e-3f), c = _mm512_set1_ps(1e-6f);                             \
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = _mm512_setzero_ps();       \
            for (long i = 0; i < ITERS; i++)                                                         \
                __asm__ volatile(X12(insn)                                                           \
                                 : [a0] "+v"(a0), [a1] "+v"(a1), [a2] "+v"(a2), [a3] "+v"(a3),       \
                                   [a4] "+v"(a4), [a5] "+v"(a5), [a6] "+v"(a6), [a7] "+v"(a7),       \
                                   [a8] "+v"(a8), [a9] "+v"(a9), [a10] "+v"(a10), [a11] "+v"(a11)    \
                                 : [b] "v"(b), [c] "v"(c));                                          \
            __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),    \
                                     _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));   \
            s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));     \
            float out[16];                                                                           \
            memcpy(out, &s, sizeof out);                                                             \
            sink += out[0];                                                                          \
        }                                                                                            \
        double t = now() - t0;                                                                       \
        if (sink == 12345.0f) printf(" ");                                                           \
        return 12.0 * ITERS * (double)(ops_per_insn)*threads() / t / 1e9;                            \
    }
KERNEL(peak_f32, "vfmadd231ps", 32)
#ifdef __AVX512BF16__
KERNEL(peak_bf16, "vdpbf16ps", 64)
#endif
#ifdef __AVX512VNNI__
KERNEL(peak_int8, "vpdpbusd", 128)
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
        /* every byte read, with the widest loads there are, into independent sums (one float
         * per 32 bytes, as this loop once did, measured 3.6-3.9 GB/s where AVX-512 loads of
         * every byte read 4.5-6 GB/s on the same machine: that is what the matmuls do) */
        double t0 = now();
        uint64_t sum = 0;
#if defined(__AVX512F__)
#pragma omp parallel reduction(+ : sum)
        {
            __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
#pragma omp for schedule(static)
            for (size_t i = 0; i < n; i += 64) {
                a0 = _mm512_add_epi32(a0, _mm512_loadu_si512(buf + i));
                a1 = _mm512_add_epi32(a1, _mm512_loadu_si512(buf + i + 16));
                a2 = _mm512_add_epi32(a2, _mm512_loadu_si512(buf + i + 32));
                a3 = _mm512_add_epi32(a3, _mm512_loadu_si512(buf + i + 48));
            }
            sum += (uint64_t)_mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)));
        }
#else
        const uint64_t *w = (const uint64_t *)buf;
        size_t nw = n * sizeof(float) / 8;
#pragma omp parallel for schedule(static) reduction(+ : sum)
        for (size_t i = 0; i < nw; i += 4) sum += (w[i] ^ w[i + 1]) + (w[i + 2] ^ w[i + 3]);
#endif
        double t = now() - t0, gbs = (double)n * sizeof(float) / t / 1e9;
        if (sum == 1) printf(" ");
        best = gbs > best ? gbs : best;
    }
    free(buf);
    return best;
}

/* best of five: on a shared machine a run can lose the CPU for part of its time */
static double best_of(double (*f)(void)) {
    double best = 0;
    for (int i = 0; i < 5; i++) {
        double v = f();
        best = v > best ? v : best;
    }
    return best;
}

int main(void) {
    printf("threads %d\n", threads());
#if defined(__AVX512F__)
    printf("f32_fma_gflops %.1f\n", best_of(peak_f32));
#ifdef __AVX512BF16__
    printf("bf16_dot_gflops %.1f\n", best_of(peak_bf16));
#endif
#ifdef __AVX512VNNI__
    printf("int8_dot_gops %.1f\n", best_of(peak_int8));
#endif
#endif
    printf("read_gbs %.1f\n", bandwidth());
    return 0;
}
