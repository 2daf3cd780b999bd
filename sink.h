/* sink.h - everything a result goes to, in one object: the results files (appending, with
 * --resume), the HTML report and the evaluation against labels. Conventions as in app.h.
 */
#ifndef QALIGN_SINK_H
#define QALIGN_SINK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "evaluate.h"
#include "image.h"
#include "results.h"

/* ======================================================================================
 * 7. Sink: everything a result goes to, in one object */

typedef struct {
    const char *csv_path;    /* --csv FILE, or NULL */
    const char *jsonl_path;  /* --jsonl FILE, or NULL */
    const char *report_path; /* --report FILE, or NULL */
    const char *labels_path; /* --eval FILE, or NULL */
    int resume;              /* --resume (needs csv_path or jsonl_path) */
    const char *task;        /* "quality" / "aesthetics": resume and eval use rows of this task */
    const char *scale;       /* "1-5" / "0-1": shown in the report; resume compares it */
    const char *title;       /* report title (NULL: "qalign <task>") */
    RowSetup setup;          /* what makes this run's rows (rows added without one get it) */
    int max_frames;          /* --max-frames: videos' rows get it */
    int answers;             /* --ask: the rows are answers (the CSV has the answer columns) */
    const char *question;    /* --ask: the question and how answers are made (resume compares them) */
    const char *decoding;
    int n_levels;            /* the run's level words (0: the five default ones): a new CSV's p_ and */
    const char *const *levels; /* logit_ columns (results_open_levels); used by sink_open only */
} SinkOptions;               /* strings are copied, except labels_path: keep it until sink_finish */

typedef struct Sink Sink;
/* Open the files (appending) and load the labels; with resume, read the rows already written. */
Sink *sink_open(const SinkOptions *o, char *err, size_t errlen);

typedef enum {
    RESUME_NEW = 0,     /* no row for this path and task (or not resuming) */
    RESUME_DONE = 1,    /* a reusable row: skip the input */
    RESUME_FAILED = 2,  /* the last row made this way is an error: retry */
    RESUME_CHANGED = 3  /* rows made another way only (why says how) */
} ResumeState;
/* What --resume does with an input: like gives its path, kind ("image", "video", "frames",
 * NULL for an input that cannot be read) and, for "frames", the frame count; task, scale,
 * setup and max_frames are the sink's. why (may be NULL) gets, for RESUME_CHANGED, the
 * first difference as one word: "model", "prompt", "levels", "pad", "precise", "scale",
 * "max_frames", "kind" or "frames"; for RESUME_FAILED "failed". */
ResumeState sink_resume(const Sink *s, const ResultRow *like, char *why, size_t whylen);
/* Rows that failed in this run (for the exit status). */
size_t sink_failures(const Sink *s);
/* Record one result: results files, report (thumbnail from img if given), eval. A row with
 * task, scale or setup.model NULL gets the sink's. -1 means a results file could not be
 * written (disk full...): stop the run, the files hold everything up to the previous row. */
int sink_add(Sink *s, const ResultRow *row, const Image *img, char *err, size_t errlen);
/* End of run: add the earlier rows made the same way (resume) to eval and report, write the
 * report, print the eval summary to msg (if labels were given; msg may be NULL), close files. */
int sink_finish(Sink *s, FILE *msg, char *err, size_t errlen);
/* The evaluation computed by sink_finish (0 if there was none). */
int sink_eval(const Sink *s, EvalResult *out);
void sink_free(Sink *s);

#endif
