/* common.h - helpers the C files of qalign would otherwise each repeat: writing a one-line
 * error message into the caller's buffer, a monotonic clock, and a growable byte buffer.
 * Internal: not part of the API. */
#ifndef QALIGN_COMMON_H
#define QALIGN_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__GNUC__)
#define COMMON_HELPER __attribute__((unused))
#define COMMON_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define COMMON_HELPER
#define COMMON_PRINTF(f, a)
#endif

/* Write the message to err[0..errlen) (err may be NULL); returns -1, the failure value of
 * the image.h and app.h functions. */
COMMON_HELPER COMMON_PRINTF(3, 4) static int fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Seconds on the monotonic clock; with QALIGN_CLOCK=cpu in the environment, the process's
 * CPU time instead (all its threads): what bench/generate.py --cpu-time times, since on a
 * shared machine wall-clock time counts the other jobs' work. */
COMMON_HELPER static double now_seconds(void) {
    static int cpu = -1; /* (set once; a race sets it to the same value) */
    if (cpu < 0) cpu = getenv("QALIGN_CLOCK") && !strcmp(getenv("QALIGN_CLOCK"), "cpu");
    struct timespec ts;
    clock_gettime(cpu ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Growable byte buffer, always NUL-terminated; `oom` latches allocation failure. */
typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} Buf;

COMMON_HELPER static void buf_reserve(Buf *b, size_t extra) {
    if (b->oom) return;
    if (extra > SIZE_MAX - b->n - 1) { b->oom = 1; return; }
    if (b->n + extra + 1 <= b->cap) return;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->n + extra + 1) {
        if (nc > SIZE_MAX / 2) { b->oom = 1; return; }
        nc *= 2;
    }
    char *q = realloc(b->p, nc);
    if (!q) { b->oom = 1; return; }
    b->p = q;
    b->cap = nc;
}
COMMON_HELPER static void buf_add(Buf *b, const void *d, size_t n) {
    buf_reserve(b, n);
    if (b->oom) return;
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
    b->p[b->n] = 0;
}
COMMON_HELPER static void buf_addc(Buf *b, char c) { buf_add(b, &c, 1); }
COMMON_HELPER static void buf_adds(Buf *b, const char *s) { buf_add(b, s, strlen(s)); }
COMMON_HELPER COMMON_PRINTF(2, 3) static void buf_printf(Buf *b, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (k < 0) { b->oom = 1; return; }
    if ((size_t)k < sizeof small) { buf_add(b, small, (size_t)k); return; }
    buf_reserve(b, (size_t)k);
    if (b->oom) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)k + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)k;
}
COMMON_HELPER static void buf_free(Buf *b) { free(b->p); b->p = NULL; b->n = b->cap = 0; b->oom = 0; }

/* The words of a list as a sentence, "a, b or c" (for messages; cut at len). The k-th word
 * is *(const char *const *)((const char *)first + k * stride): a list of strings (stride
 * sizeof(char *)) or the name fields of a table of structs. */
COMMON_HELPER static const char *words_or(char *out, size_t len, const void *first, size_t stride, int n) {
    size_t u = 0;
    out[0] = 0;
    for (int k = 0; k < n && u < len; k++) {
        const char *w = *(const char *const *)((const char *)first + (size_t)k * stride);
        int m = snprintf(out + u, len - u, "%s%s", k == 0 ? "" : k == n - 1 ? " or " : ", ", w);
        if (m < 0) break;
        u += (size_t)m;
    }
    return out;
}

#endif
