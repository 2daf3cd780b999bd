/* progress.h - the progress line on stderr (only when stderr is a terminal).
 */
#ifndef QALIGN_PROGRESS_H
#define QALIGN_PROGRESS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>


/* ======================================================================================
 * 6. Progress line (stderr) */

typedef struct {
    int enabled;            /* stderr is a terminal and not quiet */
    size_t total;           /* items in the run */
    size_t done;            /* items finished, skipped ones included */
    size_t failed;          /* of those, failed */
    size_t skipped;         /* of those, skipped (already done); not counted in the rate */
    double t0;              /* start (monotonic seconds) */
    double last_draw;       /* when the line was last drawn (redraws are throttled) */
    double busy_t0;         /* when the current item started */
    size_t drawn_len;       /* length of the line on screen, 0 if none */
    char current[96];       /* file name of the current item */
} Progress;

/* total: items in the run. Enabled only if isatty(2) and !quiet (QALIGN_PROGRESS=1 forces it
 * on, for tests). */
void progress_start(Progress *p, size_t total, int quiet);
/* The item about to be processed (shown on the line). */
void progress_begin_item(Progress *p, const char *path);
/* One item finished (ok = 0 if it failed). Redraws at most 10 times a second. */
void progress_update(Progress *p, int ok);
/* One item skipped (already done in the results file); it does not count in the rate. */
void progress_skip(Progress *p);
/* Print a message line on stderr without garbling the progress line. */
void progress_note(Progress *p, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Erase the progress line (call before printing a result line on stdout when stdout and
 * stderr may be the same terminal); the next update draws it again. */
void progress_clear(Progress *p);
/* Final line (when enabled): totals and elapsed time. */
void progress_finish(Progress *p);
/* "12.3 s", "4 min 05 s", "1 h 02 min" */
void format_duration(double seconds, char *buf, size_t len);

#endif
