/* sink.c - everything a result goes to, in one object (sink.h): the results files (with
 * resume), the report and the evaluation. */
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
 * 7. sink */

struct Sink {
    SinkOptions o;
    char *task, *scale, *model, *prompt, *levels; /* copies of the options' strings */
    char *question, *decoding;
    ResultsFile *csv, *jsonl;
    RowSet *prev_csv, *prev_jsonl;
    Report *report;
    Labels *labels;
    char **paths;      /* successful rows of this run, for eval */
    double *scores;
    size_t n, cap;
    char **seen;       /* every path added in this run (owned) */
    size_t nseen, capseen;
    StrMap seen_map;
    size_t rows, failed;
    EvalResult ev;
    int have_ev;
};

/* like, as this run would write it: the sink's task, scale, setup; a video's max_frames. */
static ResultRow sink_like(const Sink *s, const ResultRow *like) {
    ResultRow r = *like;
    r.task = s->task;
    r.scale = s->scale;
    r.setup = s->o.setup;
    r.max_frames = like->kind && strcmp(like->kind, "video") == 0 ? s->o.max_frames : 0;
    r.question = s->o.answers ? s->o.question : NULL;
    r.decoding = s->o.answers ? s->o.decoding : NULL;
    return r;
}

/* A row (read from a file) made the way this run makes its rows. */
static int row_is_this_runs(const Sink *s, const ResultRow *r) {
    ResultRow me = sink_like(s, r);
    return same_str(r->task, me.task) && same_str(r->scale, me.scale) && r->setup.model && me.setup.model &&
           same_str(r->setup.model, me.setup.model) && same_str(r->setup.prompt, me.setup.prompt) &&
           (me.question || same_str(r->setup.levels, me.setup.levels)) && !r->setup.pad == !me.setup.pad &&
           !r->setup.precise == !me.setup.precise && r->max_frames == me.max_frames && !r->question == !me.question &&
           same_str(r->question, me.question) && same_str(r->decoding, me.decoding);
}

/* In what row r (of the same path and task) was made otherwise than like: the number of
 * differences, and the first of them in *what. */
static int how_changed(const ResultRow *r, const ResultRow *like, const char **what) {
    int n = 0;
    *what = "kind";
#define DIFF(cond, name) if (cond) { if (!n++) *what = name; }
    DIFF(!r->setup.model || !same_str(r->setup.model, like->setup.model), "model");
    DIFF(!same_str(r->setup.prompt, like->setup.prompt), "prompt");
    DIFF(!like->question && !same_str(r->setup.levels, like->setup.levels), "levels");
    DIFF(!r->setup.pad != !like->setup.pad, "pad");
    DIFF(!r->setup.precise != !like->setup.precise, "precise");
    DIFF(!like->question && !same_str(r->scale, like->scale), "scale");
    DIFF(r->max_frames != like->max_frames, "max_frames");
    DIFF(!r->question != !like->question || !same_str(r->question, like->question), "question");
    DIFF(!same_str(r->decoding, like->decoding), "decoding");
#undef DIFF
    return n;
}

static ResumeState resume_in(const RowSet *set, const ResultRow *like, char *why, size_t whylen) {
    const ResultRow *r = rowset_find_like(set, like);
    if (r) {
        if (!same_input(r, like)) {
            fail(why, whylen, "%s", !same_str(r->kind, like->kind) ? "kind" : "frames");
            return RESUME_CHANGED;
        }
        if (row_failed(r)) {
            fail(why, whylen, "failed");
            return RESUME_FAILED;
        }
        return RESUME_DONE;
    }
    if (!(r = rowset_find(set, like->path, like->question ? NULL : like->task))) return RESUME_NEW;
    /* say how the closest of its rows (fewest differences, the latest of those) was made otherwise */
    const char *what = "kind", *w;
    int best = 1 << 30;
    for (const ResultRow *q = r; q; q = rowset_earlier(set, q)) {
        int n = how_changed(q, like, &w);
        if (n < best) best = n, what = w;
    }
    fail(why, whylen, "%s", what);
    return RESUME_CHANGED;
}

ResumeState sink_resume(const Sink *s, const ResultRow *like, char *why, size_t whylen) {
    if (why && whylen) why[0] = 0;
    if (!s || !s->o.resume || !like->path) return RESUME_NEW;
    ResultRow me = sink_like(s, like);
    const RowSet *sets[2] = {s->prev_csv, s->prev_jsonl};
    for (int i = 0; i < 2; i++) {
        if (!sets[i]) continue;
        ResumeState st = resume_in(sets[i], &me, why, whylen);
        if (st != RESUME_DONE) return st;
    }
    if (!me.kind) { /* a row was reused for an input that cannot be read now: score it (an error) */
        fail(why, whylen, "kind");
        return RESUME_CHANGED;
    }
    return RESUME_DONE;
}

static char *copy_opt(const char *s, int *oom) {
    char *d = s ? strdup(s) : NULL;
    if (s && !d) *oom = 1;
    return d;
}

Sink *sink_open(const SinkOptions *o, char *err, size_t errlen) {
    Sink *s = calloc(1, sizeof *s);
    if (!s) {
        fail(err, errlen, "out of memory");
        return NULL;
    }
    s->o = *o;
    int oom = 0;
    s->task = copy_opt(o->task ? o->task : "quality", &oom);
    s->scale = copy_opt(o->scale ? o->scale : "1-5", &oom);
    s->model = copy_opt(o->setup.model, &oom);
    s->prompt = copy_opt(o->setup.prompt, &oom);
    s->levels = copy_opt(o->setup.levels, &oom);
    s->o.setup.model = s->model;
    s->o.setup.prompt = s->prompt;
    s->o.setup.levels = s->levels;
    s->question = copy_opt(o->question, &oom);
    s->decoding = copy_opt(o->decoding, &oom);
    s->o.question = s->question;
    s->o.decoding = s->decoding;
    s->o.csv_path = s->o.jsonl_path = s->o.report_path = s->o.title = NULL; /* not kept */
    s->o.levels = NULL, s->o.n_levels = 0;
    if (oom) goto oom;
    if (o->resume && !o->csv_path && !o->jsonl_path) {
        fail(err, errlen, "--resume needs --csv FILE or --jsonl FILE (the results to continue)");
        goto bad;
    }
    if (o->labels_path && !(s->labels = labels_load(o->labels_path, err, errlen))) goto bad;
    if (o->report_path) { /* before the results files: an unwritable report fails with nothing written */
        char title[256];
        if (o->title) snprintf(title, sizeof title, "%s", o->title);
        else snprintf(title, sizeof title, "qalign %s", s->task);
        if (!(s->report = report_new(o->report_path, title, err, errlen))) goto bad;
    }
    size_t dropped;
    char e2[512];
    if (o->csv_path) {
        if (o->resume && !(s->prev_csv = rowset_new())) goto oom;
        if (!(s->csv = results_open_levels(o->csv_path, o->answers ? RESULTS_CSV_ANSWERS : RESULTS_CSV, o->n_levels, o->levels,
                                           s->prev_csv, &dropped, e2, sizeof e2))) {
            fail(err, errlen, "%s", e2);
            goto bad;
        }
    }
    if (o->jsonl_path) {
        if (o->resume && !(s->prev_jsonl = rowset_new())) goto oom;
        if (!(s->jsonl = results_open(o->jsonl_path, RESULTS_JSONL, s->prev_jsonl, &dropped, e2, sizeof e2))) {
            fail(err, errlen, "%s", e2);
            goto bad;
        }
    }
    if (s->csv && s->jsonl && o->resume) {
        /* A run killed between the two writes of a row leaves it in one file only: copy it
         * over instead of scoring the input again, so both files are complete. */
        RowSet *sets[2] = {s->prev_csv, s->prev_jsonl};
        ResultsFile *files[2] = {s->jsonl, s->csv};
        for (int d = 0; d < 2; d++) {
            RowSet *from = sets[d], *to = sets[1 - d];
            size_t n0 = rowset_count(from);
            for (size_t i = 0; i < n0; i++) {
                const ResultRow *r = rowset_row(from, i);
                if (rowset_find_like(from, r) != r || row_failed(r) || !row_is_this_runs(s, r) || rowset_done_like(to, r))
                    continue;
                if (results_write(files[d], r, err, errlen) != 0) goto bad;
                if (rowset_add(to, r) != 0) goto oom;
            }
        }
    }
    return s;
oom:
    fail(err, errlen, "out of memory");
bad:
    sink_free(s);
    return NULL;
}

size_t sink_failures(const Sink *s) { return s ? s->failed : 0; }

static int sink_eval_push(Sink *s, const char *path, double score) {
    if (!s->labels) return 0;
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 256;
        char **np = realloc(s->paths, nc * sizeof *np);
        if (!np) return -1;
        s->paths = np;
        double *ns = realloc(s->scores, nc * sizeof *ns);
        if (!ns) return -1;
        s->scores = ns;
        s->cap = nc;
    }
    if (!(s->paths[s->n] = strdup(path))) return -1;
    s->scores[s->n++] = score;
    return 0;
}

/* A retry (resume) that fails as the row it retries did: that file gets no second row. */
static int same_failure_as_before(const RowSet *prev, const ResultRow *r) {
    const ResultRow *p = prev && row_failed(r) ? rowset_find_like(prev, r) : NULL;
    return p && row_failed(p) && same_str(p->error, r->error) && same_str(p->kind, r->kind);
}

int sink_add(Sink *s, const ResultRow *row, const Image *img, char *err, size_t errlen) {
    ResultRow r = *row;
    if (!r.task) r.task = s->task;
    if (!r.scale) r.scale = s->scale;
    if (!r.setup.model) r.setup = s->o.setup;
    if (!r.max_frames && r.kind && strcmp(r.kind, "video") == 0) r.max_frames = s->o.max_frames;
    int rc = 0;
    s->rows++;
    if (row_failed(&r)) s->failed++;
    if (s->csv && !same_failure_as_before(s->prev_csv, &r) && results_write(s->csv, &r, err, errlen) != 0) rc = -1;
    if (s->jsonl && !same_failure_as_before(s->prev_jsonl, &r) && results_write(s->jsonl, &r, err, errlen) != 0) rc = -1;
    if (s->report && report_add(s->report, &r, img, err, errlen) != 0) rc = -1;
    if (!row_failed(&r) && (!r.question || r.scored) && sink_eval_push(s, r.path, r.score) != 0)
        rc = fail(err, errlen, "out of memory");
    if (s->nseen == s->capseen) {
        size_t nc = s->capseen ? s->capseen * 2 : 256;
        char **ns = realloc(s->seen, nc * sizeof *ns);
        if (!ns) return fail(err, errlen, "out of memory");
        s->seen = ns;
        s->capseen = nc;
    }
    char *p = strdup(r.path);
    if (!p) return fail(err, errlen, "out of memory");
    s->seen[s->nseen++] = p;
    if (strmap_put(&s->seen_map, p, strlen(p), 1) != 0) return fail(err, errlen, "out of memory");
    return rc;
}

int sink_finish(Sink *s, FILE *msg, char *err, size_t errlen) {
    int rc = 0;
    char e2[512];
    /* rows of earlier runs, made the way this run makes them, that this run did not redo */
    const RowSet *p = s->prev_csv ? s->prev_csv : s->prev_jsonl;
    size_t n_prev_ok = 0, n_prev_bad = 0;
    for (size_t i = 0; p && i < rowset_count(p); i++) {
        const ResultRow *r = rowset_row(p, i);
        if (!row_is_this_runs(s, r) || rowset_find_like(p, r) != r) continue; /* another way, or superseded */
        if (strmap_get(&s->seen_map, r->path, strlen(r->path)) >= 0) continue;
        if (row_failed(r)) n_prev_bad++;
        else n_prev_ok++;
        if (s->report && report_add(s->report, r, NULL, e2, sizeof e2) != 0) rc = fail(err, errlen, "%s", e2);
        if (!row_failed(r) && sink_eval_push(s, r->path, r->score) != 0) rc = fail(err, errlen, "out of memory");
    }
    if (s->labels) {
        char why[256];
        size_t skipped = labels_skipped(s->labels, why, sizeof why);
        if (skipped && msg)
            fprintf(msg, "eval: %zu line%s of %s left out (%s)\n", skipped, skipped == 1 ? "" : "s", s->o.labels_path, why);
        if (eval_run(s->labels, (const char *const *)s->paths, s->scores, s->n, &s->ev, e2, sizeof e2) == 0) {
            s->have_ev = 1;
            if (msg) eval_print(msg, &s->ev, s->o.labels_path);
        } else rc = fail(err, errlen, "%s", e2);
    }
    if (s->report) {
        Buf sum = {0};
        size_t ok = s->rows - s->failed + n_prev_ok, bad = s->failed + n_prev_bad;
        buf_printf(&sum, "%zu scored, %zu failed - task %s, scale %s", ok, bad, s->task, s->scale);
        if (n_prev_ok + n_prev_bad) buf_printf(&sum, " - %zu from an earlier run", n_prev_ok + n_prev_bad);
        if (s->have_ev) {
            if (s->ev.matched >= 2 && !isnan(s->ev.srcc))
                buf_printf(&sum, " - SRCC %.4f, PLCC %.4f, KRCC %.4f on %zu labelled items", s->ev.srcc, s->ev.plcc,
                           s->ev.krcc, s->ev.matched);
            else buf_printf(&sum, " - %zu labelled items matched: correlations undefined", s->ev.matched);
        }
        if (report_write(s->report, sum.oom ? NULL : sum.p, e2, sizeof e2) != 0) rc = fail(err, errlen, "%s", e2);
        buf_free(&sum);
    }
    if (s->csv && results_close(s->csv, e2, sizeof e2) != 0) rc = fail(err, errlen, "%s", e2);
    s->csv = NULL;
    if (s->jsonl && results_close(s->jsonl, e2, sizeof e2) != 0) rc = fail(err, errlen, "%s", e2);
    s->jsonl = NULL;
    return rc;
}

int sink_eval(const Sink *s, EvalResult *out) {
    if (!s || !s->have_ev) return 0;
    *out = s->ev;
    return 1;
}

void sink_free(Sink *s) {
    if (!s) return;
    results_close(s->csv, NULL, 0);
    results_close(s->jsonl, NULL, 0);
    rowset_free(s->prev_csv);
    rowset_free(s->prev_jsonl);
    report_free(s->report);
    labels_free(s->labels);
    for (size_t i = 0; i < s->n; i++) free(s->paths[i]);
    free(s->paths);
    free(s->scores);
    for (size_t i = 0; i < s->nseen; i++) free(s->seen[i]);
    free(s->seen);
    strmap_free(&s->seen_map);
    free(s->task);
    free(s->scale);
    free(s->model);
    free(s->prompt);
    free(s->levels);
    free(s->question);
    free(s->decoding);
    free(s);
}
