/* kernels.c - which CPU family's kernels this build uses (kernels.h states the contract).
 *
 * Chosen at compile time from the compiler's target macros: -march=native picks what the
 * build machine has; -march=x86-64-v3, -march=armv8.2-a+dotprod, ... pick a family for
 * another machine. -DQA_SCALAR leaves every family out. Adding a family is one file in
 * kernels/ and one #elif here (PORTING.md). */
#include "kernels.h"

#if defined(QA_SCALAR)
/* the scalar references only */
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#include "kernels/avx512.h"
#define FAMILY kernels_avx512
#elif defined(__AVX2__) && defined(__FMA__)
#include "kernels/avx2.h"
#define FAMILY kernels_avx2
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include "kernels/neon.h"
#define FAMILY kernels_neon
#endif

#ifndef FAMILY
static const Kernels kernels_scalar = {.names = "scalar" KERNELS_OPENMP};
#define FAMILY kernels_scalar
#endif

const Kernels *kernels_cpu(void) { return &FAMILY; }
