/* results.h - result rows and the files that hold them: one row type (ResultRow) for stdout,
 * --csv, --jsonl, the report and the server; CSV and JSONL writers that append, readers for
 * --resume, and the RowStyle / RowSetup that say how a run makes its rows. Conventions as
 * in app.h. serve.c uses this header alone of the batch side.
 *
 *  Results    CSV columns / JSONL keys (always all of them, in this order):
 *               path,task,kind,frames,score,std,scale,p_excellent..p_bad,
 *               logit_excellent..logit_bad,error,model,prompt,levels,pad,precise,max_frames
 *             The last six say how the row was made (RowSetup; max_frames only on a video's
 *             row). A failed row has an empty score and probabilities (null in JSONL) and the
 *             message in error (error is empty / null on success). CSV is RFC 4180
 *             (fields with , " CR LF are quoted, quotes doubled), bytes as they are; true /
 *             false for pad and precise, as in JSON. JSONL is UTF-8; bytes of a path that are
 *             not valid UTF-8 are written as \udcXX (Python's surrogateescape:
 *             os.fsencode(json.loads(line)["path"]) gives the original bytes back). Each row
 *             is one write() on an O_APPEND descriptor, then fsync(): a killed run loses at
 *             most the row in flight.
 *  Appending  A results file is never truncated: rows are appended to what is there. An
 *             existing file must be qalign's (a CSV whose first line is this header; a JSONL
 *             with at least one row and nothing after its last newline that is not the start
 *             of a row), else it is refused untouched. A last row without its newline (the
 *             run was killed while writing it) is cut off; so is a CSV that holds nothing
 *             but the start of the header.
 *  Resume     With resume the rows already there are read. A row is reused for an input
 *             when it is the last row with the input's path, task, scale and setup (model,
 *             prompt, levels, pad, precise, and a video's max_frames), its kind is the
 *             input's, a frame set's frame count is the same, and it has no error - in every
 *             results file given. Otherwise the input is scored again: sink_resume() says
 *             whether it is new, failed before, or was scored another way (and how). A retry
 *             that fails with the same error as the row it retries adds no row. With both
 *             --csv and --jsonl, a reusable row found in one file only (killed between the
 *             two writes, or a file added later) is copied to the other, not scored again.
 */
#ifndef QALIGN_RESULTS_H
#define QALIGN_RESULTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "qalign.h"

/* ======================================================================================
 * 3. Result rows, files, resume */

#define APP_LEVELS 5
extern const char *const APP_LEVEL_NAMES[APP_LEVELS]; /* excellent good fair poor bad */
#define APP_MAX_LEVELS 16

/* How a result was made: each row records it, and --resume reuses only rows made the same
 * way. model == NULL: unknown (the six fields are written empty / null, and such a row is
 * never reused). */
typedef struct {
    const char *model;      /* qalign_describe().model_id */
    const char *prompt;     /* the prompt template (with <|image|>, {task}, {input}) */
    const char *levels;     /* "word=weight,..." */
    int pad;                /* 1: padded to a square (expand2square), 0: --no-pad */
    int precise;            /* 1: --precise */
} RowSetup;

/* One result, as every output writes it (stdout --json, --csv, --jsonl, the report): the
 * same field names everywhere. JSON: one flat object, keys in this order
 *   path task kind frames score std scale p_<word>... logit_<word>... error
 *   model prompt levels pad precise max_frames
 * (score, std, p_*, logit_* null and error a string on a failed row); CSV: the same columns,
 * for the five default level words. */
typedef struct {
    const char *path;
    const char *task;       /* "quality" or "aesthetics" */
    const char *kind;       /* "image", "video", "frames" (a --video/--frames set) or NULL */
    int frames;             /* frames scored: 1 for an image, n for a video, 0 on error */
    double score;           /* on `scale` */
    double std;             /* the spread of the level distribution, on `scale` */
    const char *scale;      /* "1-5" or "0-1" */
    double probs[APP_MAX_LEVELS]; /* per level word: excellent, good, fair, poor, bad by default */
    const char *error;      /* NULL (or "") on success; else why it failed (score unused) */
    const char *warning;    /* JSON only, when set: decoded with a warning (corrupt JPEG data), scored all the same */
    double logits[APP_MAX_LEVELS]; /* per level word; NaN where unknown */
    int n_levels;           /* 0: the five default words (APP_LEVEL_NAMES) */
    const char *const *levels; /* else the words (a CSV: its own words' columns, results_open_levels) */
    /* JSON only, and only when set (other rows are unchanged): */
    int per_frame;          /* 1: the row of one frame of a video (--per-frame): "frame": k after "frames" */
    int frame;              /* that frame, from 0 */
    int n_anchors;          /* > 0: a comparison scorer's row (Compare2Score): "anchor_prefs": [the
                               image's preference over each anchor] before "error" */
    const float *anchor_prefs;
    RowSetup setup;         /* what made it */
    int max_frames;         /* a video's --max-frames (0: none, and on other rows) */
    /* an answer (--ask): question != NULL. JSON: "question", "answer", "tokens", "finish" before
       "error" and "decoding" before "pad"; the score's keys (task, score, std, scale, p_*, logit_*,
       levels) only when scored (--ask with --score). Resume compares question and decoding too. */
    const char *question;
    const char *answer;     /* the decoded text (NULL on a failed row) */
    const int *tokens;      /* (n_tokens) the generated ids, EOS not included */
    int n_tokens;
    const char *finish;     /* "eos", "stop", "length" */
    const char *decoding;   /* how it was generated, e.g. "greedy max_tokens=256" */
    int scored;             /* 1: the score's fields are set too */
} ResultRow;

/* A failed row (error set and not empty). */
int row_failed(const ResultRow *r);
/* A row found for like is for the same input: same kind, and a frame set has as many frames. */
int same_input(const ResultRow *r, const ResultRow *like);
/* The row's probabilities and logits under the five default words, NaN where the row's
 * levels do not have the word: the columns of the CSV and the bars of the report. */
void default_columns(const ResultRow *r, double *probs, double *logits);

/* RESULTS_CSV_ANSWERS: the CSV of --ask, its own header (ANSWER columns, app.c) */
typedef enum { RESULTS_CSV = 0, RESULTS_JSONL = 1, RESULTS_CSV_ANSWERS = 2 } ResultsFormat;

/* Rows read back from a results file. Strings are owned by the set. */
typedef struct RowSet RowSet;
RowSet *rowset_new(void);
void rowset_free(RowSet *s);
size_t rowset_count(const RowSet *s);              /* rows, in file order */
const ResultRow *rowset_row(const RowSet *s, size_t i);
/* The row before r (a row of s) with the same task and path, or NULL. */
const ResultRow *rowset_earlier(const RowSet *s, const ResultRow *r);
/* The last row for (path, task), whatever made it, or NULL. */
const ResultRow *rowset_find(const RowSet *s, const char *path, const char *task);
/* The last row with like's path, task, scale, setup and max_frames, or NULL. */
const ResultRow *rowset_find_like(const RowSet *s, const ResultRow *like);
/* 1 iff that row exists, has no error, and has like's kind (and frame count if "frames"). */
int rowset_done_like(const RowSet *s, const ResultRow *like);
/* Add a copy of a row (used by the readers; handy for tests). */
int rowset_add(RowSet *s, const ResultRow *row);

typedef struct ResultsFile ResultsFile;

/* Open a results file for appending (created if missing; see "Appending" above). The rows
 * already there go into previous (may be NULL: checked, not kept). *dropped (may be NULL)
 * gets the number of bytes of a torn last row that were cut. */
ResultsFile *results_open(const char *path, ResultsFormat fmt, RowSet *previous, size_t *dropped, char *err,
                          size_t errlen);
/* Append one row, one write() + fsync(). */
/* The same for a run whose rows have these level words (n_levels 0: the five default ones):
 * a new CSV of scores gets p_/logit_ columns for them (for the five default words when the
 * run's are among those); an existing one must have a column for each of them. */
ResultsFile *results_open_levels(const char *path, ResultsFormat fmt, int n_levels, const char *const *levels,
                                 RowSet *previous, size_t *dropped, char *err, size_t errlen);
int results_write(ResultsFile *f, const ResultRow *row, char *err, size_t errlen);
int results_close(ResultsFile *f, char *err, size_t errlen);
/* Read a results file without opening it for writing (missing file = 0 rows). *torn: 1 if
 * the last row was incomplete. Rows that do not parse are skipped and counted in *bad. */
int results_read(const char *path, ResultsFormat fmt, RowSet *into, int *torn, size_t *bad,
                 char *err, size_t errlen);
/* The same on bytes in memory (the fuzz harness's entry): -1 for a file that is not a
 * results file of this format (reason in err) or out of memory. */
int results_parse(const char *data, size_t len, ResultsFormat fmt, RowSet *into, int *torn, size_t *bad,
                  char *err, size_t errlen);
/* Format one row (no file): CSV line or JSON line, with its '\n'. Returns malloc'ed text. */
char *results_format_row(ResultsFormat fmt, const ResultRow *row);
const char *results_csv_header(void); /* with its '\n' */
const char *results_answer_csv_header(void); /* RESULTS_CSV_ANSWERS's, with its '\n' */
/* s as a JSON string literal (quotes included), escaped as every row is: bytes that are not
 * UTF-8 become \udcXX (Python's surrogateescape). Malloc'ed; NULL if out of memory. */
char *json_quoted(const char *s);

/* How a run makes rows of its results: cli.c (stdout, result files) and serve.c (the
 * server's answers) both use it, so the server answers with the --json line's fields and
 * digits. Initialise it with the context's levels and score range (qalign_ctx_levels; 0-100
 * for a comparison scorer). */
typedef struct {
    const char *task;
    float lo, hi;           /* the score's own range: the smallest and largest level weight */
    int mapped;             /* --scale given: score and std mapped linearly from [lo, hi] */
    double to_lo, to_hi;    /* onto [to_lo, to_hi] */
    char scale[64];         /* "1-5", "0-1", "0-100" (--scale), or the own range ("1-5" by default) */
    int n_levels;
    const char *words[APP_MAX_LEVELS]; /* the level words (the context's strings) */
    RowSetup setup;         /* what makes the rows (every row records it; model NULL: unknown) */
} RowStyle;
/* scale: one of qalign_scales() (qalign_scale_find), or NULL for the score's own range. */
void row_style_init(RowStyle *s, const char *task, const qalign_scale *scale, int n_levels, const char *const *words,
                    float lo, float hi);
/* The row of a result r, or (error != NULL) of an input that failed (r unused). The row
 * points into s, path, kind and error. */
ResultRow row_from_result(const RowStyle *s, const char *path, const char *kind, const qalign_result *r,
                          const char *error);
/* The setup of a context's rows: the model's id (qalign_describe), the context's prompt
 * template and levels (qalign_ctx_describe), each one line (backslash, newline, CR, tab written as \\ \n \r \t,
 * so a CSV row stays one line and the text is exact), pad, precise. Strings malloc'ed (free
 * with row_setup_free); -1: out of memory. */
int row_setup_make(RowSetup *su, const char *model_id, const qalign_ctx_info *ci);
void row_setup_free(RowSetup *su);
/* The same from an opened model and a context (in the header, so that app.c needs nothing
 * of the library). */
static inline int row_setup_of(RowSetup *su, const qalign_model *m, const qalign_ctx *c) {
    qalign_info mi;
    qalign_ctx_info ci;
    qalign_describe(m, &mi);
    qalign_ctx_describe(c, &ci);
    return row_setup_make(su, mi.model_id, &ci);
}

#endif
