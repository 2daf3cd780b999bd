/* progress.c - the progress line on stderr (progress.h). */
/* realpath() (a --report that is a symbolic link) is XSI, outside plain POSIX 2008 */
#ifndef _XOPEN_SOURCE
#define _XOPEN_SOURCE 700
#endif
#include "app_util.h"
#include "common.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
/* ======================================================================================
 * 6. progress line */

void format_duration(double s, char *buf, size_t len) {
    if (!(s >= 0) || !isfinite(s)) {
        snprintf(buf, len, "?");
        return;
    }
    if (s < 60) snprintf(buf, len, "%.1f s", s);
    else if (s < 3600) {
        long t = lround(s);
        snprintf(buf, len, "%ld min %02ld s", t / 60, t % 60);
    } else {
        long t = lround(s / 60);
        snprintf(buf, len, "%ld h %02ld min", t / 60, t % 60);
    }
}

static int term_width(void) {
#ifdef TIOCGWINSZ
    struct winsize ws;
    if (ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 10) return ws.ws_col;
#endif
    const char *c = getenv("COLUMNS");
    int w = c ? atoi(c) : 0;
    return w > 10 ? w : 80;
}

static void progress_draw(Progress *p, int force) {
    if (!p->enabled) return;
    double t = now_seconds();
    if (!force && t - p->last_draw < 0.1) return;
    p->last_draw = t;
    size_t processed = p->done - p->skipped;
    size_t remaining = p->total > p->done ? p->total - p->done : 0;
    double el = t - p->t0;
    char line[512], rate[48] = "", eta[48] = "";
    if (remaining == 0) snprintf(rate, sizeof rate, "done");
    else if (processed > 0 && el > 0) {
        double r = (double)processed / el;
        if (r >= 1) snprintf(rate, sizeof rate, "%.2f items/s", r);
        else snprintf(rate, sizeof rate, "%.1f s/item", 1 / r);
        char d[32];
        format_duration((double)remaining / r, d, sizeof d);
        snprintf(eta, sizeof eta, "ETA %s", d);
    } else snprintf(rate, sizeof rate, "starting");
    int k = snprintf(line, sizeof line, "qalign: %zu/%zu (%.0f%%)  %s%s%s", p->done, p->total,
                     p->total ? 100.0 * (double)p->done / (double)p->total : 100.0, rate, eta[0] ? "  " : "", eta);
    if (p->failed && k > 0 && (size_t)k < sizeof line)
        k += snprintf(line + k, sizeof line - (size_t)k, "  %zu failed", p->failed);
    if (p->skipped && k > 0 && (size_t)k < sizeof line)
        k += snprintf(line + k, sizeof line - (size_t)k, "  %zu already done", p->skipped);
    if (p->current[0] && remaining && k > 0 && (size_t)k < sizeof line)
        snprintf(line + k, sizeof line - (size_t)k, "  %s", p->current);
    /* fit the terminal (cut on a UTF-8 boundary) so \r keeps working */
    size_t max = (size_t)term_width() - 1, L = strlen(line);
    if (L > max) {
        L = max;
        while (L > 0 && ((unsigned char)line[L] & 0xC0) == 0x80) L--;
        line[L] = 0;
    }
    fprintf(stderr, "\r%s\033[K", line);
    fflush(stderr);
    p->drawn_len = L;
}

void progress_start(Progress *p, size_t total, int quiet) {
    memset(p, 0, sizeof *p);
    p->total = total;
    const char *force = getenv("QALIGN_PROGRESS");
    p->enabled = !quiet && (force && *force ? atoi(force) != 0 : isatty(2));
    p->t0 = now_seconds();
    p->last_draw = -1;
}

void progress_begin_item(Progress *p, const char *path) {
    snprintf(p->current, sizeof p->current, "%s", path ? path_basename(path) : "");
    p->busy_t0 = now_seconds();
    progress_draw(p, p->done == 0);
}

void progress_update(Progress *p, int ok) {
    p->done++;
    if (!ok) p->failed++;
    progress_draw(p, p->done == p->total);
}

void progress_skip(Progress *p) {
    p->done++;
    p->skipped++; /* not counted in the rate: processed = done - skipped */
    progress_draw(p, p->done == p->total);
}

void progress_note(Progress *p, const char *fmt, ...) {
    va_list ap;
    if (p && p->enabled && p->drawn_len) fputs("\r\033[K", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (p && p->enabled && p->drawn_len) progress_draw(p, 1);
    fflush(stderr);
}

void progress_clear(Progress *p) {
    if (p && p->enabled && p->drawn_len) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        p->drawn_len = 0;
        p->last_draw = -1; /* redraw at the next update */
    }
}

void progress_finish(Progress *p) {
    if (!p->enabled) return;
    char d[32];
    format_duration(now_seconds() - p->t0, d, sizeof d);
    fprintf(stderr, "\r\033[Kqalign: %zu scored, %zu failed in %s\n", p->done - p->skipped - p->failed, p->failed, d);
    if (p->skipped) fprintf(stderr, "qalign: %zu skipped (already in the results file)\n", p->skipped);
    fflush(stderr);
}
