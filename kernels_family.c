/* kernels_family.c - one CPU family's kernel table, for the portable build's run-time
 * dispatch (kernels.c). The Makefile compiles this file once per family with that
 * family's target flags (FAMILY_FLAGS_*) and -DQA_FAMILY_FN=kernels_family_<name>; which
 * kernels/<family>.h it includes follows from the flags, as in a build for one CPU. Only
 * the function below is visible outside: everything in kernels/ is static. */
#include "kernels.h"

#if defined(__AMX_INT8__) && defined(__AMX_BF16__) && defined(__AMX_TILE__) && defined(__AVX512BF16__)
#include "kernels/avx512.h"
#include "kernels/amx.h"
#define TABLE kernels_amx
static inline const Kernels *avx512_table(void) { return &kernels_avx512; } /* (its entries are used one by one) */
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#include "kernels/avx512.h"
#define TABLE kernels_avx512
#elif defined(__AVX2__) && defined(__FMA__)
#include "kernels/avx2.h"
#define TABLE kernels_avx2
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include "kernels/neon.h"
#define TABLE kernels_neon
#else
static const Kernels kernels_none = {.names = "scalar" KERNELS_OPENMP};
#define TABLE kernels_none
#endif

#ifndef QA_FAMILY_FN
#define QA_FAMILY_FN kernels_family_default
#endif
const Kernels *QA_FAMILY_FN(void);
const Kernels *QA_FAMILY_FN(void) { return &TABLE; }
