/* kernels.c - which CPU family's kernels this process uses (kernels.h states the contract).
 *
 * Two ways to build it:
 *   - the portable build (`make`, -DQA_DISPATCH): every family of this architecture is a
 *     translation unit of its own (kernels_family.c, compiled once per family with that
 *     family's -m flags; the Makefile's FAMILIES); the rest of the program, this file
 *     included, is built for the baseline (-march=x86-64 / armv8-a). On the first need
 *     (qalign_open, or the first kernel call) the CPU (cpuid + xgetbv on x86-64, getauxval
 *     on Linux/AArch64) and the OS say what may run, and the best family is taken, or the
 *     one QALIGN_KERNELS / qalign_open_options.kernels names. Once per process.
 *   - any other build (`make NATIVE=1`, cross builds, a plain `cc *.c`): the family is chosen
 *     at compile time from the compiler's target macros, as -march picks them; -DQA_SCALAR
 *     leaves every family out. Adding a family is one file in kernels/, one #elif here and
 *     in kernels_family.c, and one line in FAMILY_LIST (PORTING.md). */
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE 1 /* syscall() for arch_prctl */
#endif
#include "kernels.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>

#if !defined(QA_DISPATCH)
/* ---- one family, fixed at compile time ---------------------------------------------------- */
#if defined(QA_SCALAR)
#define FAMILY_SCALAR 1
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#include "kernels/avx512.h"
#define FAMILY kernels_avx512
#if defined(__AVX512BF16__) && defined(__AVX512VNNI__)
#define FAMILY_NAME "avx512-bf16"
#elif defined(__AVX512VNNI__)
#define FAMILY_NAME "avx512-vnni"
#else
#define FAMILY_NAME "avx512"
#endif
#elif defined(__AVX2__) && defined(__FMA__)
#include "kernels/avx2.h"
#define FAMILY kernels_avx2
#if defined(__AVXVNNI__)
#define FAMILY_NAME "avx2-vnni"
#else
#define FAMILY_NAME "avx2"
#endif
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include "kernels/neon.h"
#define FAMILY kernels_neon
#if defined(__ARM_FEATURE_DOTPROD)
#define FAMILY_NAME "neon-dotprod"
#else
#define FAMILY_NAME "neon"
#endif
#else
#define FAMILY_SCALAR 1
#endif
#ifdef FAMILY_SCALAR
static const Kernels kernels_scalar = {.names = "scalar" KERNELS_OPENMP};
#define FAMILY kernels_scalar
#define FAMILY_NAME "scalar"
#endif

#ifdef TESTING
static const Kernels *test_table; /* kernels_set_table() */
const Kernels *kernels_cpu(void) { return test_table ? test_table : &FAMILY; }
void kernels_set_table(const Kernels *k) { test_table = k; }
#else
const Kernels *kernels_cpu(void) { return &FAMILY; }
#endif
const char *kernels_family(void) { return FAMILY_NAME; }
const char *kernels_why(void) { return FAMILY_NAME ": fixed at compile time (a build without run-time dispatch)"; }
int kernels_choose(const char *want, char *err, size_t errlen) {
    const char *env = getenv("QALIGN_KERNELS");
    if (!want || !*want) want = env && *env ? env : NULL;
    if (want && strcmp(want, FAMILY_NAME) != 0 && strcmp(want, "auto") != 0) {
        snprintf(err, errlen, "kernel family %s requested, but this build has only %s (compiled without run-time "
                 "dispatch; build with plain `make` for that)", want, FAMILY_NAME);
        return -1;
    }
    return 0;
}
#ifdef TESTING
int kernels_set(const char *name) {
    if (strcmp(name, FAMILY_NAME) != 0) return -1;
    test_table = NULL;
    return 0;
}
const char *kernels_family_list(void) { return FAMILY_NAME; }
#endif

#else /* QA_DISPATCH */
/* ---- the best family this CPU and OS allow, chosen at run time ----------------------------- */
static const Kernels kernels_scalar = {.names = "scalar" KERNELS_OPENMP};

typedef struct {
    const char *name;
    const Kernels *(*get)(void);    /* kernels_family.c, built for this family */
    const char *needs;              /* CPU features it needs (names as in /proc/cpuinfo) */
} Family;

/* best first. AMX is AVX-512 BF16 plus tile-unit matmuls for q8_256 (kernels/amx.h), the
 * same bits, about 2x faster on the Sapphire Rapids measured (README "Kernel families"). */
#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
const Kernels *kernels_family_amx(void);
const Kernels *kernels_family_avx512_bf16(void);
const Kernels *kernels_family_avx512_vnni(void);
const Kernels *kernels_family_avx512(void);
const Kernels *kernels_family_avx2_vnni(void);
const Kernels *kernels_family_avx2(void);
#define V3 "avx2 fma f16c bmi1 bmi2 lzcnt movbe"
#define V4 V3 " avx512f avx512bw avx512cd avx512dq avx512vl"
static const Family families[] = {
    {"amx", kernels_family_amx, V4 " avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16"},
    {"avx512-bf16", kernels_family_avx512_bf16, V4 " avx512_vnni avx512_bf16"},
    {"avx512-vnni", kernels_family_avx512_vnni, V4 " avx512_vnni"},
    {"avx512", kernels_family_avx512, V4},
    {"avx2-vnni", kernels_family_avx2_vnni, V3 " avx_vnni"},
    {"avx2", kernels_family_avx2, V3},
    {"scalar", NULL, ""},
};
#elif defined(__aarch64__)
const Kernels *kernels_family_neon_dotprod(void);
const Kernels *kernels_family_neon(void);
static const Family families[] = {
    {"neon-dotprod", kernels_family_neon_dotprod, "asimd asimddp"},
    {"neon", kernels_family_neon, "asimd"},
    {"scalar", NULL, ""},
};
#else
static const Family families[] = {{"scalar", NULL, ""}};
#endif
enum { N_FAMILIES = sizeof families / sizeof families[0] };

/* What the CPU and the OS allow: a space-separated list of feature names (cpuinfo's). */
static char cpu_has[512];
static char os_note[160];   /* features the CPU has but the OS does not enable, if any */

static void add_feature(const char *name, int yes) {
    if (!yes) return;
    size_t n = strlen(cpu_has);
    snprintf(cpu_has + n, sizeof cpu_has - n, "%s%s", n ? " " : "", name);
}

#if defined(__x86_64__) || defined(_M_X64)
static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
static void detect_cpu(void) {
    unsigned a = 0, b = 0, c = 0, d = 0, max = __get_cpuid_max(0, NULL);
    unsigned c1 = 0, b7 = 0, c7 = 0, d7 = 0, a71 = 0, ce1 = 0;
    if (max >= 1) __cpuid(1, a, b, c1, d);
    if (max >= 7) __cpuid_count(7, 0, a, b7, c7, d7);
    if (max >= 7) __cpuid_count(7, 1, a71, b, c, d);
    if ((unsigned)__get_cpuid_max(0x80000000u, NULL) >= 0x80000001u) __cpuid(0x80000001u, a, b, ce1, d);
    /* the OS saves the registers (XCR0): ymm (bits 1, 2), zmm and mask registers (5, 6, 7),
     * AMX tile config and data (17, 18) */
    uint64_t xcr0 = (c1 >> 27 & 1) ? xgetbv0() : 0;
    int os_avx = (xcr0 & 0x6) == 0x6, os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0,
        os_amx = (xcr0 & 0x60000) == 0x60000;
    int cpu_avx = c1 >> 28 & 1, cpu_avx512 = b7 >> 16 & 1, cpu_amx = d7 >> 24 & 1;
    if (cpu_avx && !os_avx) snprintf(os_note, sizeof os_note, "the OS does not enable AVX state");
    else if (cpu_avx512 && !os_avx512) snprintf(os_note, sizeof os_note, "the OS does not enable AVX-512 state");
    else if (cpu_amx && !os_amx) snprintf(os_note, sizeof os_note, "the OS does not enable AMX tile state (XCR0)");
    add_feature("avx2", os_avx && (b7 >> 5 & 1));
    add_feature("fma", os_avx && (c1 >> 12 & 1));
    add_feature("f16c", os_avx && (c1 >> 29 & 1));
    add_feature("bmi1", b7 >> 3 & 1);
    add_feature("bmi2", b7 >> 8 & 1);
    add_feature("lzcnt", ce1 >> 5 & 1);
    add_feature("movbe", c1 >> 22 & 1);
    add_feature("avx_vnni", os_avx && (a71 >> 4 & 1));
    add_feature("avx512f", os_avx512 && cpu_avx512);
    add_feature("avx512dq", os_avx512 && (b7 >> 17 & 1));
    add_feature("avx512cd", os_avx512 && (b7 >> 28 & 1));
    add_feature("avx512bw", os_avx512 && (b7 >> 30 & 1));
    add_feature("avx512vl", os_avx512 && (b7 >> 31 & 1));
    add_feature("avx512_vnni", os_avx512 && (c7 >> 11 & 1));
    add_feature("avx512_bf16", os_avx512 && (a71 >> 5 & 1));
    add_feature("amx_bf16", os_amx && (d7 >> 22 & 1));
    add_feature("amx_tile", os_amx && cpu_amx);
    add_feature("amx_int8", os_amx && (d7 >> 25 & 1));
}
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
static void detect_cpu(void) {
    unsigned long hw = getauxval(AT_HWCAP);
    add_feature("asimd", hw >> 1 & 1);      /* HWCAP_ASIMD */
    add_feature("asimddp", hw >> 20 & 1);   /* HWCAP_ASIMDDP */
}
#else
static void detect_cpu(void) {}
#endif

/* Does the feature list have every name of needs? The first one missing into *missing. */
static int has_all(const char *needs, char *missing, size_t n) {
    const char *p = needs;
    while (*p) {
        size_t len = strcspn(p, " ");
        int found = 0;
        for (const char *h = cpu_has; *h;) {
            size_t hl = strcspn(h, " ");
            if (hl == len && !memcmp(h, p, len)) found = 1;
            h += hl;
            while (*h == ' ') h++;
        }
        if (!found) {
            if (missing) snprintf(missing, n, "%.*s", (int)len, p);
            return 0;
        }
        p += len;
        while (*p == ' ') p++;
    }
    return 1;
}

/* AMX: Linux hands out the tile data state only on request (arch_prctl), per process. */
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#include <errno.h>
static int amx_permission(char *why, size_t n) {
    long rc = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */);
    if (rc != 0) {
        snprintf(why, n, "the kernel refused AMX tile data (arch_prctl(ARCH_REQ_XCOMP_PERM): %s)", strerror(errno));
        return -1;
    }
    return 0;
}
#else
static int amx_permission(char *why, size_t n) {
    snprintf(why, n, "AMX needs Linux (arch_prctl)");
    return -1;
}
#endif

static pthread_mutex_t choose_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(const Kernels *) active;
static const char *active_name = "scalar";
static char active_why[768];
static char env_error[256];           /* a QALIGN_KERNELS the CPU cannot run, reported by every qalign_open */
static int detected;

static const Family *family_named(const char *name) {
    for (int i = 0; i < N_FAMILIES; i++)
        if (!strcmp(families[i].name, name)) return &families[i];
    return NULL;
}
static void family_names(char *out, size_t n) {
    out[0] = 0;
    for (int i = 0; i < N_FAMILIES; i++) {
        size_t used = strlen(out);
        snprintf(out + used, n - used, "%s%s", i ? ", " : "", families[i].name);
    }
}

/* Can family f run here? Its extra start-up steps (AMX: the OS permission, the self-check)
 * too. 0 or -1 with the reason in why. */
static int family_usable(const Family *f, char *why, size_t n) {
    char missing[32];
    if (!has_all(f->needs, missing, sizeof missing)) {
        snprintf(why, n, "this CPU lacks %s%s%s", missing, os_note[0] ? "; " : "", os_note);
        return -1;
    }
    if (!strcmp(f->name, "amx") && amx_permission(why, n) != 0) return -1;
    const Kernels *k = f->get ? f->get() : &kernels_scalar;
    if (k->self_check && k->self_check(why, n) != 0) return -1;
    return 0;
}

static void adopt(const Family *f, const char *why_fmt, const char *arg) {
    active_name = f->name;
    snprintf(active_why, sizeof active_why, why_fmt, arg);
    size_t used = strlen(active_why);
    snprintf(active_why + used, sizeof active_why - used, " (this CPU: %s)", cpu_has[0] ? cpu_has : "no SIMD extension used here");
    atomic_store_explicit(&active, f->get ? f->get() : &kernels_scalar, memory_order_release);
}

/* With choose_mu held: the family for want (NULL: QALIGN_KERNELS, else the best). */
static int choose_locked(const char *want, char *err, size_t errlen) {
    if (!detected) {
        detect_cpu();
        detected = 1;
    }
    const char *env = getenv("QALIGN_KERNELS");
    const char *source = want && *want ? "requested" : "QALIGN_KERNELS=";
    if (!want || !*want) want = env && *env ? env : "auto";
    if (atomic_load_explicit(&active, memory_order_acquire)) { /* chosen before: only the same may be asked for */
        if (!strcmp(want, "auto") || !strcmp(want, active_name)) return 0;
        snprintf(err, errlen, "kernel family %s requested, but this process already runs %s (the family is chosen once "
                 "per process)", want, active_name);
        return -1;
    }
    if (strcmp(want, "auto") != 0) {
        const Family *f = family_named(want);
        char why[256], names[256];
        if (!f) {
            family_names(names, sizeof names);
            snprintf(err, errlen, "unknown kernel family %s%s (this build has: %s)", !strcmp(source, "requested") ? "" : "QALIGN_KERNELS=",
                     want, names);
            return -1;
        }
        if (family_usable(f, why, sizeof why) != 0) {
            snprintf(err, errlen, "kernel family %s cannot run here: %s", want, why);
            return -1;
        }
        adopt(f, !strcmp(source, "requested") ? "%s: requested by the program" : "%s: QALIGN_KERNELS", f->name);
        return 0;
    }
    char refused[512] = "";
    for (int i = 0; i < N_FAMILIES; i++) {
        char why[256];
        if (family_usable(&families[i], why, sizeof why) == 0) {
            char fmt[700];
            snprintf(fmt, sizeof fmt, "%%s: the best this CPU allows%s%s", refused[0] ? "; " : "", refused);
            adopt(&families[i], fmt, families[i].name);
            return 0;
        }
        /* the CPU has it but its start-up failed (AMX's OS permission or self-check): say so */
        if (has_all(families[i].needs, NULL, 0)) {
            fprintf(stderr, "qalign: not using the %s kernels: %s\n", families[i].name, why);
            size_t used = strlen(refused);
            snprintf(refused + used, sizeof refused - used, "%snot %s: %s", used ? "; " : "", families[i].name, why);
        }
    }
    return 0; /* not reached: scalar is always usable */
}

int kernels_choose(const char *want, char *err, size_t errlen) {
    pthread_mutex_lock(&choose_mu);
    int rc = 0;
    if ((!want || !*want) && env_error[0]) {
        snprintf(err, errlen, "%s", env_error);
        rc = -1;
    } else {
        rc = choose_locked(want, err, errlen);
    }
    pthread_mutex_unlock(&choose_mu);
    return rc;
}

#ifdef TESTING
static const Kernels *test_table; /* kernels_set_table() */
void kernels_set_table(const Kernels *k) { test_table = k; }
#endif

const Kernels *kernels_cpu(void) {
#ifdef TESTING
    if (test_table) return test_table;
#endif
    const Kernels *k = atomic_load_explicit(&active, memory_order_acquire);
    if (k) return k;
    pthread_mutex_lock(&choose_mu);
    if (!atomic_load_explicit(&active, memory_order_acquire)) {
        /* the first kernel call before any qalign_open: QALIGN_KERNELS or the best; a
         * QALIGN_KERNELS that cannot run falls back to the best, and qalign_open reports it */
        if (choose_locked(NULL, env_error, sizeof env_error) != 0) choose_locked("auto", NULL, 0);
    }
    pthread_mutex_unlock(&choose_mu);
    return atomic_load_explicit(&active, memory_order_acquire);
}

const char *kernels_family(void) {
    kernels_cpu();
    return active_name;
}
const char *kernels_why(void) {
    kernels_cpu();
    return active_why;
}

#ifdef TESTING
/* The tests run every family this CPU has in one process: switch to family name (no
 * Acts may be alive across a switch). 0, or -1 if it cannot run here. */
int kernels_set(const char *name) {
    kernels_cpu();
    const Family *f = family_named(name);
    char why[256];
    if (!f || family_usable(f, why, sizeof why) != 0) return -1;
    test_table = f->get ? f->get() : &kernels_scalar;
    return 0;
}
/* the families of this build, best first, space-separated */
const char *kernels_family_list(void) {
    static char list[256];
    list[0] = 0;
    for (int i = 0; i < N_FAMILIES; i++) {
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%s", i ? " " : "", families[i].name);
    }
    return list;
}
#endif
#endif /* QA_DISPATCH */
