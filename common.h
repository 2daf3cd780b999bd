/* common.h - the two helpers every C file of qalign would otherwise repeat: writing a
 * one-line error message into the caller's buffer, and a monotonic clock. Internal: not
 * part of the API. */
#ifndef QALIGN_COMMON_H
#define QALIGN_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
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

/* Seconds on the monotonic clock. */
COMMON_HELPER static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
