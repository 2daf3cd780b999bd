/* results.c - result rows and the files that hold them (results.h): the CSV and JSONL
 * writers, their readers, the RowSet that --resume looks rows up in, row styles and setups. */
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
#include <pthread.h>
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
 * 3. result rows */

const char *const APP_LEVEL_NAMES[APP_LEVELS] = {"excellent", "good", "fair", "poor", "bad"};

/* the start of every JSONL row (a torn tail that starts otherwise is not ours) */
#define JSON_ROW_START "{\"path\": "

int row_failed(const ResultRow *r) { return r->error && r->error[0]; }
static int empty(const char *s) { return !s || !s[0]; }

static void csv_field(Buf *b, const char *s) {
    if (!s) return;
    if (!strpbrk(s, ",\"\r\n")) {
        buf_adds(b, s);
        return;
    }
    buf_addc(b, '"');
    for (const char *p = s; *p; p++) {
        if (*p == '"') buf_addc(b, '"');
        buf_addc(b, *p);
    }
    buf_addc(b, '"');
}

static void csv_num(Buf *b, double v) {
    if (isfinite(v)) buf_printf(b, "%.6f", v);
}

/* JSON string; bytes that are not UTF-8 become \udcXX (surrogateescape). */
static void json_str(Buf *b, const char *s) {
    if (!s) {
        buf_adds(b, "null");
        return;
    }
    buf_addc(b, '"');
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        if (c == '"' || c == '\\') { buf_addc(b, '\\'); buf_addc(b, (char)c); i++; }
        else if (c == '\n') { buf_adds(b, "\\n"); i++; }
        else if (c == '\r') { buf_adds(b, "\\r"); i++; }
        else if (c == '\t') { buf_adds(b, "\\t"); i++; }
        else if (c < 0x20 || c == 0x7F) { buf_printf(b, "\\u%04x", c); i++; }
        else if (c < 0x80) { buf_addc(b, (char)c); i++; }
        else {
            int L = utf8_len(p + i, n - i);
            if (L) { buf_add(b, p + i, (size_t)L); i += (size_t)L; }
            else { buf_printf(b, "\\udc%02x", c); i++; }
        }
    }
    buf_addc(b, '"');
}

char *json_quoted(const char *s) {
    Buf b = {0};
    json_str(&b, s);
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    return b.p;
}

/* A number, null when it is not finite: the JSON is valid whatever the value. */
static void json_num(Buf *b, double v) {
    if (isfinite(v)) buf_printf(b, "%.6f", v);
    else buf_adds(b, "null");
}

/* The row's probabilities and logits under the five default words, NaN where the row's
 * levels do not have the word: the columns of the CSV and the bars of the report. */
void default_columns(const ResultRow *r, double *probs, double *logits) {
    for (int k = 0; k < APP_LEVELS; k++) {
        probs[k] = logits[k] = NAN;
        for (int i = 0; i < (r->n_levels ? r->n_levels : APP_LEVELS); i++)
            if (!r->n_levels ? i == k : !strcmp(r->levels[i], APP_LEVEL_NAMES[k])) probs[k] = r->probs[i], logits[k] = r->logits[i];
    }
}

/* A row that claims success has a finite score (else the writer makes it an error row).
 * std, probabilities and logits may be NaN: no spread (a comparison scorer's 0-100 score),
 * a word the row's levels do not have (empty / null). */
static int row_numbers_finite(const ResultRow *r) { return isfinite(r->score); }

/* The generated ids as text: "1 2 3" (CSV) or "[1, 2, 3]" (JSON) */
static void token_list(Buf *b, const ResultRow *r, int json) {
    if (json) buf_addc(b, '[');
    for (int i = 0; i < r->n_tokens; i++) buf_printf(b, i ? json ? ", %d" : " %d" : "%d", r->tokens[i]);
    if (json) buf_addc(b, ']');
}

/* ---- the row schema ----
 * One table of columns, in the order every format writes them. The CSV writer, the JSON
 * writer, the CSV header and both readers go through it. A column is in some of the three
 * formats (F_*); JSON writes a key only when its condition (W_*) holds, a CSV always has
 * the column (empty when there is nothing to say). C_P and C_LOGIT stand for one column
 * per level word: p_<word>, logit_<word> - the row's own words in JSON, the file's words in
 * a CSV (the five default words unless the run's levels have another word). */
enum { F_CSV = 1, F_ANS = 2, F_JSON = 4 };
enum { W_ALWAYS, W_SCORED, W_ANSWER, W_FRAME, W_ANCHORS, W_WARNING };
typedef enum {
    C_PATH, C_TASK, C_KIND, C_FRAMES, C_FRAME, C_SCORE, C_STD, C_SCALE, C_P, C_LOGIT, C_QUESTION, C_ANSWER, C_TOKENS,
    C_FINISH, C_PREFS, C_WARNING, C_ERROR, C_MODEL, C_PROMPT, C_LEVELS, C_DECODING, C_PAD, C_PRECISE, C_MAX_FRAMES, C_N
} ColId;
static const struct Column {
    ColId id;
    const char *name;  /* C_P, C_LOGIT: the prefix of the per-word names */
    int formats;
    int when;          /* JSON */
} COLUMNS[C_N] = {
    {C_PATH, "path", F_CSV | F_ANS | F_JSON, W_ALWAYS},
    {C_TASK, "task", F_CSV | F_ANS | F_JSON, W_SCORED},
    {C_KIND, "kind", F_CSV | F_ANS | F_JSON, W_ALWAYS},
    {C_FRAMES, "frames", F_CSV | F_ANS | F_JSON, W_ALWAYS},
    {C_FRAME, "frame", F_JSON, W_FRAME},                 /* --per-frame: the frame, from 0 */
    {C_SCORE, "score", F_CSV | F_ANS | F_JSON, W_SCORED},
    {C_STD, "std", F_CSV | F_ANS | F_JSON, W_SCORED},
    {C_SCALE, "scale", F_CSV | F_ANS | F_JSON, W_SCORED},
    {C_P, "p_", F_CSV | F_JSON, W_SCORED},
    {C_LOGIT, "logit_", F_CSV | F_JSON, W_SCORED},
    {C_QUESTION, "question", F_ANS | F_JSON, W_ANSWER},
    {C_ANSWER, "answer", F_ANS | F_JSON, W_ANSWER},
    {C_TOKENS, "tokens", F_ANS | F_JSON, W_ANSWER},
    {C_FINISH, "finish", F_ANS | F_JSON, W_ANSWER},
    {C_PREFS, "anchor_prefs", F_JSON, W_ANCHORS},        /* a comparison scorer's preferences */
    {C_WARNING, "warning", F_JSON, W_WARNING},           /* decoded with a warning (corrupt JPEG data) */
    {C_ERROR, "error", F_CSV | F_ANS | F_JSON, W_ALWAYS},
    {C_MODEL, "model", F_CSV | F_ANS | F_JSON, W_ALWAYS},
    {C_PROMPT, "prompt", F_CSV | F_ANS | F_JSON, W_ALWAYS},
    {C_LEVELS, "levels", F_CSV | F_ANS | F_JSON, W_SCORED},
    {C_DECODING, "decoding", F_ANS | F_JSON, W_ANSWER},
    {C_PAD, "pad", F_CSV | F_ANS | F_JSON, W_ALWAYS},
    {C_PRECISE, "precise", F_CSV | F_ANS | F_JSON, W_ALWAYS},
    {C_MAX_FRAMES, "max_frames", F_CSV | F_ANS | F_JSON, W_ALWAYS},
};

static int format_flag(ResultsFormat fmt) { return fmt == RESULTS_CSV ? F_CSV : fmt == RESULTS_CSV_ANSWERS ? F_ANS : F_JSON; }

/* The level words of a CSV: n words (0: the five default ones). */
typedef struct {
    int n;
    const char *const *words;
} Words;
static Words words_or_default(Words w) { return w.n ? w : (Words){APP_LEVELS, APP_LEVEL_NAMES}; }

/* The header of a CSV of format fmt with level words w, with its '\n' (malloc'ed). */
static char *csv_header(ResultsFormat fmt, Words w) {
    Buf b = {0};
    w = words_or_default(w);
    int first = 1;
    for (int c = 0; c < C_N; c++) {
        if (!(COLUMNS[c].formats & format_flag(fmt))) continue;
        int per_word = COLUMNS[c].id == C_P || COLUMNS[c].id == C_LOGIT;
        for (int i = 0; i < (per_word ? w.n : 1); i++) {
            if (!first) buf_addc(&b, ',');
            first = 0;
            if (!per_word) buf_adds(&b, COLUMNS[c].name);
            else {
                Buf name = {0};
                buf_printf(&name, "%s%s", COLUMNS[c].name, w.words[i]);
                csv_field(&b, name.oom ? "" : name.p);
                buf_free(&name);
            }
        }
    }
    buf_addc(&b, '\n');
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    return b.p;
}

/* A value of a row's column, as both writers write it. */
typedef enum { V_NULL, V_STR, V_NUM, V_INT, V_BOOL, V_TOKENS, V_PREFS } ValType;
typedef struct {
    ValType t;
    const char *s;
    double x;
    int i;
} Val;

/* What a row says, worked out once for all its columns. */
typedef struct {
    const ResultRow *r;
    int bad;               /* written as a failed row */
    const char *error;
    int sc;                /* the row has a score (--ask without --score: not) */
    int ans;               /* an answer's row (--ask) */
    int known;             /* its setup is known */
    double p[APP_MAX_LEVELS], l[APP_MAX_LEVELS]; /* a CSV: per file word, NaN where the row has no such word */
} RowView;

static RowView row_view(ResultsFormat fmt, const ResultRow *r, Words fw) {
    RowView v = {.r = r, .bad = row_failed(r), .error = r->error, .ans = r->question != NULL, .known = r->setup.model != NULL};
    v.sc = fmt == RESULTS_CSV_ANSWERS ? r->scored : !v.ans || r->scored;
    if (v.ans && !v.bad && !r->answer) v.bad = 1, v.error = "no answer"; /* never a success without an answer */
    if ((!v.ans || r->scored) && !v.bad && !row_numbers_finite(r)) /* never a success without a score */
        v.bad = 1, v.error = "the model produced a value that is not finite";
    if (fmt == RESULTS_CSV) { /* the file's words: a row's values under them */
        fw = words_or_default(fw);
        const char *const *rw = r->n_levels ? r->levels : APP_LEVEL_NAMES;
        for (int k = 0; k < fw.n; k++) {
            v.p[k] = v.l[k] = NAN;
            for (int i = 0; i < (r->n_levels ? r->n_levels : APP_LEVELS); i++)
                if (!strcmp(rw[i], fw.words[k])) v.p[k] = r->probs[i], v.l[k] = r->logits[i];
        }
    }
    return v;
}

/* Column c (word k of a per-word column) of the row; NULL / NaN written as empty (CSV) or null. */
static Val col_value(const RowView *v, ResultsFormat fmt, ColId c, int k) {
    const ResultRow *r = v->r;
    const RowSetup *su = &r->setup;
    int json = fmt == RESULTS_JSONL;
#define STR(x) (Val){.t = (x) ? V_STR : V_NULL, .s = (x)}
    switch (c) {
    case C_PATH: return STR(r->path);
    case C_TASK: return STR(v->sc ? r->task : NULL);
    case C_KIND: return STR(r->kind);
    case C_FRAMES: return (Val){.t = V_INT, .i = r->frames};
    case C_FRAME: return (Val){.t = V_INT, .i = r->frame};
    case C_SCORE: return (Val){.t = V_NUM, .x = v->sc && !v->bad ? r->score : NAN};
    case C_STD: return (Val){.t = V_NUM, .x = v->sc && !v->bad ? r->std : NAN};
    case C_SCALE: return STR(v->sc ? r->scale : NULL);
    case C_P:
    case C_LOGIT: {
        double x = v->bad ? NAN : !json ? (c == C_P ? v->p[k] : v->l[k]) : c == C_P ? r->probs[k] : r->logits[k];
        return (Val){.t = V_NUM, .x = x};
    }
    case C_QUESTION: return STR(r->question);
    case C_ANSWER: return STR(v->bad ? NULL : r->answer);
    case C_TOKENS: return (Val){.t = v->bad ? V_NULL : V_TOKENS};
    case C_FINISH: return STR(v->bad ? NULL : r->finish);
    case C_PREFS: return (Val){.t = V_PREFS};
    case C_WARNING: return STR(r->warning);
    case C_ERROR: return STR(v->bad ? v->error : NULL);
    case C_MODEL: return STR(v->known ? su->model : NULL);
    case C_PROMPT: return STR(v->known ? su->prompt : NULL);
    case C_LEVELS: return STR(v->known && v->sc ? su->levels : NULL);
    case C_DECODING: return STR(v->known ? r->decoding : NULL);
    case C_PAD: return (Val){.t = v->known ? V_BOOL : V_NULL, .i = su->pad};
    case C_PRECISE: return (Val){.t = v->known ? V_BOOL : V_NULL, .i = su->precise};
    case C_MAX_FRAMES: return (Val){.t = r->max_frames > 0 ? V_INT : V_NULL, .i = r->max_frames};
    default: return (Val){.t = V_NULL};
    }
#undef STR
}

static void put_val(Buf *b, const Val *x, const ResultRow *r, int json) {
    switch (x->t) {
    case V_NULL: if (json) buf_adds(b, "null"); break;
    case V_STR: if (json) json_str(b, x->s); else csv_field(b, x->s); break;
    case V_NUM: if (json) json_num(b, x->x); else csv_num(b, x->x); break;
    case V_INT: buf_printf(b, "%d", x->i); break;
    case V_BOOL: buf_adds(b, x->i ? "true" : "false"); break;
    case V_TOKENS: token_list(b, r, json); break;
    case V_PREFS:
        buf_addc(b, '[');
        for (int i = 0; i < r->n_anchors; i++) {
            if (i) buf_adds(b, ", ");
            json_num(b, r->anchor_prefs[i]);
        }
        buf_addc(b, ']');
        break;
    }
}

/* Does JSON write column c for this row? */
static int json_has(const RowView *v, int when) {
    const ResultRow *r = v->r;
    switch (when) {
    case W_SCORED: return v->sc;
    case W_ANSWER: return v->ans;
    case W_FRAME: return r->per_frame;
    case W_ANCHORS: return r->n_anchors > 0 && !v->bad;
    case W_WARNING: return r->warning && r->warning[0];
    default: return 1;
    }
}

/* A row in format fmt; fw: a CSV's level words. */
static void format_row_words(Buf *b, ResultsFormat fmt, const ResultRow *r, Words fw) {
    RowView v = row_view(fmt, r, fw);
    int json = fmt == RESULTS_JSONL, first = 1;
    const char *const *words = r->n_levels ? r->levels : APP_LEVEL_NAMES;
    int n_words = json ? (r->n_levels ? r->n_levels : APP_LEVELS) : words_or_default(fw).n;
    if (!json) words = words_or_default(fw).words;
    for (int c = 0; c < C_N; c++) {
        const struct Column *col = &COLUMNS[c];
        if (!(col->formats & format_flag(fmt)) || (json && !json_has(&v, col->when))) continue;
        int per_word = col->id == C_P || col->id == C_LOGIT;
        for (int i = 0; i < (per_word ? n_words : 1); i++) {
            if (json) {
                buf_adds(b, first ? "{" : ", ");
                if (!per_word) json_str(b, col->name);
                else {
                    Buf key = {0};
                    buf_printf(&key, "%s%s", col->name, words[i]);
                    json_str(b, key.oom ? "" : key.p);
                    buf_free(&key);
                }
                buf_adds(b, ": ");
            } else if (!first) buf_addc(b, ',');
            first = 0;
            Val x = col_value(&v, fmt, col->id, i);
            put_val(b, &x, r, json);
        }
    }
    buf_adds(b, json ? "}\n" : "\n");
}

static void format_row(Buf *b, ResultsFormat fmt, const ResultRow *r) { format_row_words(b, fmt, r, (Words){0}); }

/* The two default headers, made from the table once. */
static pthread_once_t headers_once = PTHREAD_ONCE_INIT;
static char *default_headers[2];
static void make_headers(void) {
    default_headers[0] = csv_header(RESULTS_CSV, (Words){0});
    default_headers[1] = csv_header(RESULTS_CSV_ANSWERS, (Words){0});
}
const char *results_csv_header(void) {
    pthread_once(&headers_once, make_headers);
    return default_headers[0] ? default_headers[0] : "";
}
const char *results_answer_csv_header(void) {
    pthread_once(&headers_once, make_headers);
    return default_headers[1] ? default_headers[1] : "";
}

char *results_format_row(ResultsFormat fmt, const ResultRow *row) {
    Buf b = {0};
    format_row(&b, fmt, row);
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    return b.p;
}

void row_style_init(RowStyle *s, const char *task, const qalign_scale *scale, int n_levels, const char *const *words,
                    float lo, float hi) {
    memset(s, 0, sizeof *s);
    s->task = task;
    s->lo = lo;
    s->hi = hi;
    s->n_levels = n_levels < APP_MAX_LEVELS ? n_levels : APP_MAX_LEVELS;
    for (int i = 0; i < s->n_levels; i++) s->words[i] = words[i];
    snprintf(s->scale, sizeof s->scale, "%g-%g", lo, hi);
    if (!scale) return;
    s->mapped = hi > lo;
    s->to_lo = scale->lo;
    s->to_hi = scale->hi;
    snprintf(s->scale, sizeof s->scale, "%s", scale->name);
}

ResultRow row_from_result(const RowStyle *s, const char *path, const char *kind, const qalign_result *r,
                          const char *error) {
    ResultRow row = {.path = path, .task = s->task, .kind = kind, .scale = s->scale, .error = error,
                     .n_levels = s->n_levels, .levels = s->words, .setup = s->setup};
    if (!error) {
        double k = s->mapped ? (s->to_hi - s->to_lo) / (s->hi - s->lo) : 1; /* --scale: linear from [lo, hi] */
        row.frames = r->frames;
        row.score = s->mapped ? s->to_lo + ((double)r->score - s->lo) * k : r->score;
        row.std = r->std * k;
        for (int i = 0; i < r->n_levels && i < APP_MAX_LEVELS; i++) {
            row.probs[i] = r->probs[i];
            row.logits[i] = r->logits[i];
        }
        row.n_anchors = r->n_anchors;
        row.anchor_prefs = r->anchor_prefs;
    }
    return row;
}

/* The text as the rows record it: one line, with backslash, newline, CR and tab written as
 * \\ \n \r \t (so a CSV row stays one line and the recorded text is exact). */
static char *one_line(const char *s) {
    char *o = malloc(2 * strlen(s) + 1), *q = o;
    if (!o) return NULL;
    for (; *s; s++) {
        const char *e = *s == '\\' ? "\\\\" : *s == '\n' ? "\\n" : *s == '\r' ? "\\r" : *s == '\t' ? "\\t" : NULL;
        if (e) *q++ = e[0], *q++ = e[1];
        else *q++ = *s;
    }
    *q = 0;
    return o;
}

int row_setup_make(RowSetup *su, const char *model_id, const qalign_ctx_info *ci) {
    *su = (RowSetup){.model = strdup(model_id), .prompt = one_line(ci->prompt), .levels = one_line(ci->levels),
                     .pad = ci->pad, .precise = ci->precise};
    if (su->model && su->prompt && su->levels) return 0;
    row_setup_free(su);
    return -1;
}

void row_setup_free(RowSetup *su) {
    free((char *)su->model);
    free((char *)su->prompt);
    free((char *)su->levels);
    *su = (RowSetup){0};
}

/* ---- RowSet ---- */

struct RowSet {
    ResultRow *rows;
    size_t n, cap;
    StrMap index;   /* "task\0path" -> last row */
    StrMap like;    /* "task\0path\0scale\0setup...\0max_frames" -> last row */
    char **keys;    /* owned keys, two per row */
    long *earlier;  /* per row: the row before it with the same task and path, or -1 */
};

RowSet *rowset_new(void) { return calloc(1, sizeof(RowSet)); }

static void row_free_strings(ResultRow *r) {
    free((char *)r->path);
    free((char *)r->task);
    free((char *)r->kind);
    free((char *)r->scale);
    free((char *)r->error);
    free((char *)r->setup.model);
    free((char *)r->setup.prompt);
    free((char *)r->setup.levels);
    free((char *)r->question);
    free((char *)r->answer);
    free((char *)r->finish);
    free((char *)r->decoding);
    for (int i = 0; i < r->n_levels; i++) free((char *)r->levels[i]);
    free((void *)r->levels);
}

void rowset_free(RowSet *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) {
        row_free_strings(&s->rows[i]);
        free(s->keys[2 * i]);
        free(s->keys[2 * i + 1]);
    }
    free(s->rows);
    free(s->keys);
    free(s->earlier);
    strmap_free(&s->index);
    strmap_free(&s->like);
    free(s);
}

size_t rowset_count(const RowSet *s) { return s ? s->n : 0; }
const ResultRow *rowset_row(const RowSet *s, size_t i) { return s && i < s->n ? &s->rows[i] : NULL; }

static void key_part(Buf *b, const char *s) {
    buf_adds(b, s ? s : "");
    buf_addc(b, 0);
}

/* The index keys of a row: (task, path), and everything resume compares but kind/frames.
 * A row whose setup is unknown gets a "like" key no run can have (an empty model). */
static char *make_key(const ResultRow *r, int like, size_t *klen) {
    Buf b = {0};
    key_part(&b, r->question ? NULL : r->task); /* (an answer's row: its question instead) */
    key_part(&b, r->path);
    if (like) {
        key_part(&b, r->question ? NULL : r->scale);
        key_part(&b, r->setup.model);
        if (r->setup.model) {
            key_part(&b, r->setup.prompt);
            key_part(&b, r->question ? NULL : r->setup.levels);
            buf_printf(&b, "%d%d", r->setup.pad != 0, r->setup.precise != 0);
            buf_addc(&b, 0);
        }
        if (r->question) { /* an answer: the same question, asked the same way */
            buf_addc(&b, 'Q');
            key_part(&b, r->question);
            key_part(&b, r->decoding);
        }
        buf_printf(&b, "%d", r->max_frames > 0 ? r->max_frames : 0);
    }
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    *klen = b.n;
    return b.p;
}

static char *dup_nonempty(const char *s, int *oom) {
    if (empty(s)) return NULL;
    char *d = strdup(s);
    if (!d) *oom = 1;
    return d;
}

int rowset_add(RowSet *s, const ResultRow *row) {
    if (empty(row->path)) return -1;
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        ResultRow *nr = realloc(s->rows, nc * sizeof *nr);
        if (!nr) return -1;
        s->rows = nr;
        char **nk = realloc(s->keys, 2 * nc * sizeof *nk);
        if (!nk) return -1;
        s->keys = nk;
        long *ne = realloc(s->earlier, nc * sizeof *ne);
        if (!ne) return -1;
        s->earlier = ne;
        s->cap = nc;
    }
    ResultRow r = *row;
    int oom = 0;
    r.n_anchors = 0, r.anchor_prefs = NULL, r.warning = NULL; /* (not kept) */
    r.path = dup_nonempty(row->path, &oom);
    r.task = dup_nonempty(row->task, &oom);
    r.kind = dup_nonempty(row->kind, &oom);
    r.scale = dup_nonempty(row->scale, &oom);
    r.error = row_failed(row) ? dup_nonempty(row->error, &oom) : NULL;
    r.setup.model = dup_nonempty(row->setup.model, &oom);
    r.setup.prompt = r.setup.model ? dup_nonempty(row->setup.prompt, &oom) : NULL;
    r.setup.levels = r.setup.model ? dup_nonempty(row->setup.levels, &oom) : NULL;
    r.n_levels = 0, r.levels = NULL; /* the row's own level words (none: the five default ones) */
    const char **words = row->n_levels > 0 ? calloc((size_t)row->n_levels, sizeof *words) : NULL;
    if (row->n_levels > 0 && !words) oom = 1;
    for (int i = 0; words && i < row->n_levels && i < APP_MAX_LEVELS; i++)
        if ((words[r.n_levels++] = strdup(row->levels[i])) == NULL) oom = 1;
    r.levels = words;
    r.tokens = NULL, r.n_tokens = 0; /* (not kept) */
    r.question = row->question ? strdup(row->question) : NULL;
    r.answer = row->question && row->answer ? strdup(row->answer) : NULL;
    r.finish = row->question ? dup_nonempty(row->finish, &oom) : NULL;
    r.decoding = row->question ? dup_nonempty(row->decoding, &oom) : NULL;
    if ((row->question && !r.question) || (r.question && row->answer && !r.answer)) oom = 1;
    size_t kl, ll;
    char *key = oom ? NULL : make_key(&r, 0, &kl), *lkey = key ? make_key(&r, 1, &ll) : NULL;
    s->earlier[s->n] = key ? strmap_get(&s->index, key, kl) : -1;
    if (!lkey || strmap_put(&s->index, key, kl, (long)s->n) != 0 || strmap_put(&s->like, lkey, ll, (long)s->n) != 0) {
        /* (a key already put stays valid: it is freed with the set only if stored; drop both maps' entry by
         * failing the whole set - callers treat -1 as out of memory and free the set) */
        row_free_strings(&r);
        s->keys[2 * s->n] = key;
        s->keys[2 * s->n + 1] = lkey;
        s->rows[s->n] = (ResultRow){0};
        s->n++;
        return -1;
    }
    s->rows[s->n] = r;
    s->keys[2 * s->n] = key;
    s->keys[2 * s->n + 1] = lkey;
    s->n++;
    return 0;
}

const ResultRow *rowset_find(const RowSet *s, const char *path, const char *task) {
    if (!s || !path) return NULL;
    size_t kl;
    char *key = make_key(&(ResultRow){.path = path, .task = task}, 0, &kl);
    if (!key) return NULL;
    long i = strmap_get(&s->index, key, kl);
    free(key);
    return i >= 0 ? &s->rows[i] : NULL;
}

const ResultRow *rowset_find_like(const RowSet *s, const ResultRow *like) {
    if (!s || !like->path || !like->setup.model) return NULL;
    size_t kl;
    char *key = make_key(like, 1, &kl);
    if (!key) return NULL;
    long i = strmap_get(&s->like, key, kl);
    free(key);
    return i >= 0 ? &s->rows[i] : NULL;
}

/* A row found for like is for the same input: same kind, and a frame set has as many frames. */
int same_input(const ResultRow *r, const ResultRow *like) {
    if (!same_str(r->kind, like->kind)) return 0;
    return !like->kind || strcmp(like->kind, "frames") != 0 || r->frames == like->frames;
}

const ResultRow *rowset_earlier(const RowSet *s, const ResultRow *r) {
    long i = s->earlier[r - s->rows];
    return i >= 0 ? &s->rows[i] : NULL;
}

int rowset_done_like(const RowSet *s, const ResultRow *like) {
    const ResultRow *r = rowset_find_like(s, like);
    return r && !row_failed(r) && like->kind && same_input(r, like);
}

/* "true" / "false" -> 1 / 0; -1 otherwise */
static int parse_bool(const char *s) { return !strcmp(s, "true") ? 1 : !strcmp(s, "false") ? 0 : -1; }

/* A small non-negative integer. */
static int count_of(double x, int *v) {
    if (!(x >= 0 && x <= 1e9) || x != floor(x)) return -1;
    *v = (int)x;
    return 0;
}

/* The same from a CSV field ("" -> 0). */
static int parse_count(const char *s, int *v) {
    double x;
    if (!*s) { *v = 0; return 0; }
    return parse_double(s, &x) != 0 ? -1 : count_of(x, v);
}

/* A CSV record of format fmt (level words fw) as a row: the fields are taken in the
 * table's order; strings point into f. */
static int csv_to_row(const Fields *f, ResultsFormat fmt, Words fw, ResultRow *r) {
    const char *v[C_N] = {0}, *pv[APP_MAX_LEVELS], *lv[APP_MAX_LEVELS];
    Words w = words_or_default(fw);
    size_t k = 0;
    for (int c = 0; c < C_N; c++) {
        const struct Column *col = &COLUMNS[c];
        if (!(col->formats & format_flag(fmt))) continue;
        int per_word = col->id == C_P || col->id == C_LOGIT;
        for (int i = 0; i < (per_word ? w.n : 1); i++, k++) {
            if (k >= f->n) return -1;
            if (!per_word) v[col->id] = field(f, k);
            else (col->id == C_P ? pv : lv)[i] = field(f, k);
        }
    }
    if (k != f->n) return -1;
#define OPT(c) (v[c][0] ? v[c] : NULL)
    memset(r, 0, sizeof *r);
    r->path = v[C_PATH];
    if (!r->path[0]) return -1;
    r->task = OPT(C_TASK);
    r->kind = OPT(C_KIND);
    if (parse_count(v[C_FRAMES], &r->frames) != 0) return -1;
    r->scale = OPT(C_SCALE);
    r->error = OPT(C_ERROR);
    r->score = r->std = NAN;
    for (int i = 0; i < APP_MAX_LEVELS; i++) r->probs[i] = r->logits[i] = NAN;
    r->n_levels = fw.n;
    r->levels = fw.n ? fw.words : NULL;
    if (fmt == RESULTS_CSV_ANSWERS) {
        r->scored = v[C_SCORE][0] != 0;
        if (r->scored && (parse_double(v[C_SCORE], &r->score) != 0 || (v[C_STD][0] && parse_double(v[C_STD], &r->std) != 0)))
            return -1; /* (std empty: no spread) */
        r->question = v[C_QUESTION];
        r->answer = v[C_ANSWER];
        r->finish = OPT(C_FINISH);
    } else if (!r->error) {
        if (parse_double(v[C_SCORE], &r->score) != 0 || !isfinite(r->score) || /* std empty: no spread (Compare2Score) */
            (v[C_STD][0] && (parse_double(v[C_STD], &r->std) != 0 || !isfinite(r->std))))
            return -1;
        for (int i = 0; i < w.n; i++) /* empty: a word the run's levels did not have */
            if ((pv[i][0] && parse_double(pv[i], &r->probs[i]) != 0) || (lv[i][0] && parse_double(lv[i], &r->logits[i]) != 0))
                return -1;
    }
    if (v[C_MODEL][0]) { /* the setup: all of it, or none */
        r->setup.model = v[C_MODEL];
        r->setup.prompt = v[C_PROMPT];
        r->setup.levels = fmt == RESULTS_CSV_ANSWERS ? OPT(C_LEVELS) : v[C_LEVELS];
        if (fmt == RESULTS_CSV_ANSWERS) r->decoding = v[C_DECODING];
        if ((r->setup.pad = parse_bool(v[C_PAD])) < 0 || (r->setup.precise = parse_bool(v[C_PRECISE])) < 0) return -1;
    } else if (fmt == RESULTS_CSV && (v[C_PROMPT][0] || v[C_LEVELS][0] || v[C_PAD][0] || v[C_PRECISE][0])) return -1;
    if (parse_count(v[C_MAX_FRAMES], &r->max_frames) != 0) return -1;
#undef OPT
    return 0;
}

/* The level words of a CSV header (fields h): those of its p_ columns, when the header is
 * exactly the one fmt writes for them. 0, or -1 (not such a header). */
static int csv_header_words(ResultsFormat fmt, const char *line, size_t len, const Fields *h, Words *out,
                            const char **store) {
    int n = 0;
    if (fmt == RESULTS_CSV) {
        size_t at = 0; /* the first p_ column */
        for (int c = 0; c < C_N && COLUMNS[c].id != C_P; c++) at += (COLUMNS[c].formats & F_CSV) != 0;
        while (at + (size_t)n < h->n && !strncmp(field(h, at + (size_t)n), "p_", 2) && n < APP_MAX_LEVELS) {
            store[n] = field(h, at + (size_t)n) + 2;
            n++;
        }
        if (n == 0) return -1;
    }
    Words w = {n, store};
    if (n == APP_LEVELS) { /* the five default words: as rows of today's files have them */
        int same = 1;
        for (int i = 0; i < n; i++) same &= !strcmp(store[i], APP_LEVEL_NAMES[i]);
        if (same) w.n = 0, w.words = NULL;
    }
    char *want = csv_header(fmt, n ? (Words){n, store} : (Words){0});
    if (!want) return -1;
    size_t wl = strlen(want) - 1;
    int ok = len == wl && memcmp(line, want, wl) == 0;
    free(want);
    if (!ok) return -1;
    *out = w;
    return 0;
}

/* ---- JSON (one flat object per line) ---- */

typedef struct {
    const char *p, *e;
} JP;

static void jp_ws(JP *j) {
    while (j->p < j->e && (*j->p == ' ' || *j->p == '\t' || *j->p == '\r' || *j->p == '\n')) j->p++;
}
static int hex4(const char *p, unsigned *v) {
    unsigned x = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        x <<= 4;
        if (c >= '0' && c <= '9') x |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') x |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') x |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *v = x;
    return 0;
}
/* A JSON string into out (appended, NUL-terminated). \udc80..\udcff alone -> that byte. */
static int jp_string(JP *j, Buf *out) {
    if (j->p >= j->e || *j->p != '"') return -1;
    j->p++;
    while (j->p < j->e && *j->p != '"') {
        unsigned char c = (unsigned char)*j->p;
        if (c < 0x20) return -1;
        if (c != '\\') { buf_addc(out, (char)c); j->p++; continue; }
        if (j->e - j->p < 2) return -1;
        char k = j->p[1];
        j->p += 2;
        switch (k) {
        case '"': buf_addc(out, '"'); break;
        case '\\': buf_addc(out, '\\'); break;
        case '/': buf_addc(out, '/'); break;
        case 'b': buf_addc(out, '\b'); break;
        case 'f': buf_addc(out, '\f'); break;
        case 'n': buf_addc(out, '\n'); break;
        case 'r': buf_addc(out, '\r'); break;
        case 't': buf_addc(out, '\t'); break;
        case 'u': {
            unsigned v, w;
            if (j->e - j->p < 4 || hex4(j->p, &v) != 0) return -1;
            j->p += 4;
            if (v >= 0xD800 && v <= 0xDBFF && j->e - j->p >= 6 && j->p[0] == '\\' && j->p[1] == 'u' &&
                hex4(j->p + 2, &w) == 0 && w >= 0xDC00 && w <= 0xDFFF) {
                j->p += 6;
                utf8_put(out, 0x10000 + ((v - 0xD800) << 10) + (w - 0xDC00));
            } else if (v >= 0xDC80 && v <= 0xDCFF) buf_addc(out, (char)(v - 0xDC00));
            else if (v >= 0xD800 && v <= 0xDFFF) utf8_put(out, 0xFFFD);
            else if (v == 0) return -1; /* NUL cannot be in a path */
            else utf8_put(out, v);
            break;
        }
        default: return -1;
        }
    }
    if (j->p >= j->e) return -1;
    j->p++;
    buf_addc(out, 0);
    return out->oom ? -1 : 0;
}

/* Parse {"k": v, ...} with string/number/null/bool values into r; strings in text. */
/* The index of level word w among the n found so far (offsets into text), added if new; -1
 * when there are too many. */
static int json_word(Buf *text, long *woff, int *n, const char *w) {
    for (int i = 0; i < *n; i++)
        if (!strcmp(text->p + woff[i], w)) return i;
    if (*n == APP_MAX_LEVELS) return -1;
    woff[*n] = (long)text->n;
    buf_adds(text, w);
    buf_addc(text, 0);
    return text->oom ? -1 : (*n)++;
}

static int json_to_row(const char *s, size_t len, Buf *text, const char **words, ResultRow *r) {
    JP j = {s, s + len};
    long woff[APP_MAX_LEVELS];
    int nw = 0;
    enum { K_PATH, K_TASK, K_KIND, K_SCALE, K_ERROR, K_MODEL, K_PROMPT, K_LEVELS, K_QUESTION, K_ANSWER, K_DECODING, K_N };
    static const char *const skeys[K_N] = {"path", "task", "kind", "scale", "error", "model", "prompt", "levels",
                                           "question", "answer", "decoding"};
    long soff[K_N];
    for (int i = 0; i < K_N; i++) soff[i] = -1;
    memset(r, 0, sizeof *r);
    r->score = r->std = NAN;
    for (int i = 0; i < APP_MAX_LEVELS; i++) r->probs[i] = r->logits[i] = NAN;
    int have_score = 0, pad = -1, precise = -1;
    text->n = 0;
    jp_ws(&j);
    if (j.p >= j.e || *j.p != '{') return -1;
    j.p++;
    jp_ws(&j);
    if (j.p < j.e && *j.p == '}') return -1;
    Buf key = {0};
    int rc = -1;
    for (;;) {
        jp_ws(&j);
        key.n = 0;
        if (jp_string(&j, &key) != 0) goto out;
        jp_ws(&j);
        if (j.p >= j.e || *j.p != ':') goto out;
        j.p++;
        jp_ws(&j);
        if (j.p >= j.e) goto out;
        int which = -1;
        for (int i = 0; i < K_N; i++)
            if (strcmp(key.p, skeys[i]) == 0) which = i;
        if (*j.p == '"') {
            size_t off = text->n;
            if (jp_string(&j, text) != 0) goto out;
            if (which >= 0) soff[which] = (long)off;
        } else if (j.e - j.p >= 4 && memcmp(j.p, "null", 4) == 0) j.p += 4;
        else if ((j.e - j.p >= 4 && memcmp(j.p, "true", 4) == 0) || (j.e - j.p >= 5 && memcmp(j.p, "false", 5) == 0)) {
            int v = *j.p == 't';
            j.p += v ? 4 : 5;
            if (strcmp(key.p, "pad") == 0) pad = v;
            else if (strcmp(key.p, "precise") == 0) precise = v;
        } else if (*j.p == '-' || (*j.p >= '0' && *j.p <= '9')) {
            char small[64], *num = small;
            size_t L = 0;
            while (j.p + L < j.e && j.p[L] && strchr("+-.eE0123456789", j.p[L])) L++;
            if (L >= sizeof small && !(num = malloc(L + 1))) goto out; /* %.6f of a large number is long */
            memcpy(num, j.p, L);
            num[L] = 0;
            j.p += L;
            double v;
            int bad_num = parse_double(num, &v) != 0;
            if (num != small) free(num);
            if (bad_num) goto out;
            if (strcmp(key.p, "score") == 0) { r->score = v; have_score = 1; }
            else if (strcmp(key.p, "std") == 0) r->std = v;
            else if (strcmp(key.p, "frames") == 0) { if (count_of(v, &r->frames) != 0) goto out; }
            else if (strcmp(key.p, "max_frames") == 0) { if (count_of(v, &r->max_frames) != 0) goto out; }
            else if (!strncmp(key.p, "p_", 2) || !strncmp(key.p, "logit_", 6)) { /* the row's level words */
                int p = key.p[0] == 'p', i = json_word(text, woff, &nw, key.p + (p ? 2 : 6));
                if (i < 0) goto out;
                (p ? r->probs : r->logits)[i] = v;
            }
        } else if (*j.p == '[' && (strcmp(key.p, "tokens") == 0 || strcmp(key.p, "anchor_prefs") == 0)) {
            /* an answer's ids, a comparison scorer's preferences: flat lists of numbers, skipped */
            int prefs = key.p[0] == 'a';
            while (j.p < j.e && *j.p != ']' && (*j.p == '[' || *j.p == ',' || *j.p == ' ' || (*j.p >= '0' && *j.p <= '9') ||
                                                 (prefs && strchr("+-.eEnul", *j.p))))
                j.p++;
            if (j.p >= j.e || *j.p != ']') goto out;
            j.p++;
        } else goto out; /* nested values are not ours */
        jp_ws(&j);
        if (j.p < j.e && *j.p == ',') { j.p++; continue; }
        if (j.p < j.e && *j.p == '}') { j.p++; break; }
        goto out;
    }
    jp_ws(&j);
    if (j.p != j.e || soff[K_PATH] < 0 || text->oom) goto out;
    r->path = text->p + soff[K_PATH];
    if (!r->path[0]) goto out;
    int default_words = nw == APP_LEVELS;
    for (int i = 0; i < nw; i++) {
        words[i] = text->p + woff[i];
        default_words &= i < APP_LEVELS && !strcmp(words[i], APP_LEVEL_NAMES[i]);
    }
    r->n_levels = default_words ? 0 : nw; /* (none: the five default words, as a CSV's row) */
    r->levels = default_words || !nw ? NULL : words;
#define STR(k) (soff[k] >= 0 && text->p[soff[k]] ? text->p + soff[k] : NULL)
    r->task = STR(K_TASK);
    r->kind = STR(K_KIND);
    r->scale = STR(K_SCALE);
    r->error = STR(K_ERROR);
    r->setup.model = STR(K_MODEL);
    r->setup.prompt = STR(K_PROMPT);
    r->setup.levels = STR(K_LEVELS);
    r->answer = soff[K_ANSWER] >= 0 ? text->p + soff[K_ANSWER] : NULL; /* (may be empty) */
    r->decoding = STR(K_DECODING);
    if (soff[K_QUESTION] >= 0) r->question = text->p + soff[K_QUESTION];
#undef STR
    r->scored = have_score;
    if (r->question) { /* an answer */
        if (r->setup.model && (pad < 0 || precise < 0)) goto out;
        r->setup.pad = pad > 0;
        r->setup.precise = precise > 0;
        if (!r->error && !r->answer && !(soff[K_ANSWER] >= 0)) goto out;
        rc = 0;
        goto out;
    }
    if (r->setup.model && (pad < 0 || precise < 0)) goto out;
    r->setup.pad = pad > 0;
    r->setup.precise = precise > 0;
    if (!r->error && (!have_score || !isfinite(r->score) || isinf(r->std))) goto out; /* std null: no spread (Compare2Score) */
    rc = 0;
out:
    buf_free(&key);
    return rc;
}

/* What a results file holds, as parse_results finds it. */
typedef struct {
    size_t good;    /* bytes of complete rows: where a torn tail starts (cut it when appending) */
    int torn;       /* 1: there is such a tail */
    size_t bad;     /* complete lines that are not rows */
    size_t rows;
    int ours;       /* 1: a file of ours (or empty); 0: not, then why says so */
    char why[160];
    int n_words;    /* a CSV of scores: its level words (0: the five default ones), malloc'ed */
    char *words[APP_MAX_LEVELS];
} Parsed;

static void parsed_free(Parsed *P) {
    for (int i = 0; i < P->n_words; i++) free(P->words[i]);
    P->n_words = 0;
}

/* Parse a results file held in memory. -1 only when out of memory. */
static int parse_results(const char *s, size_t len, ResultsFormat fmt, RowSet *into, Parsed *P) {
    memset(P, 0, sizeof *P);
    P->ours = 1;
    if (fmt != RESULTS_JSONL) {
        const char *CSV_HEADER = fmt == RESULTS_CSV_ANSWERS ? results_answer_csv_header() : results_csv_header();
        size_t hl = strlen(CSV_HEADER) - 1, pl = strlen("path,task,kind,frames,score,std,scale,p_");
        if (len == 0) return 0;
        const char *nl = memchr(s, '\n', len);
        if (!nl) { /* a header torn by a kill: the start of ours (cut, then written again), else not ours */
            if ((len <= hl && memcmp(s, CSV_HEADER, len) == 0) ||
                (len == hl + 1 && memcmp(s, CSV_HEADER, hl) == 0 && s[hl] == '\r') ||
                (fmt == RESULTS_CSV && len > pl && memcmp(s, CSV_HEADER, pl) == 0)) /* other level words */
                P->torn = 1;
            else {
                P->ours = 0;
                snprintf(P->why, sizeof P->why, "its first line is not qalign's CSV header");
            }
            return 0;
        }
        size_t first = (size_t)(nl - s);
        if (first && s[first - 1] == '\r') first--;
        Fields hf = {0};
        size_t hpos = 0;
        int hterm;
        Words fw = {0};
        const char *store[APP_MAX_LEVELS];
        if (csv_record(s, first, &hpos, ',', &hf, &hterm) != 1 || csv_header_words(fmt, s, first, &hf, &fw, store) != 0) {
            fields_free(&hf);
            P->ours = 0;
            const char *other = fmt == RESULTS_CSV_ANSWERS ? results_csv_header() : results_answer_csv_header();
            if (first == strlen(other) - 1 && memcmp(s, other, first) == 0)
                snprintf(P->why, sizeof P->why, "it holds %s, not %s", fmt == RESULTS_CSV_ANSWERS ? "scores" : "answers (--ask)",
                         fmt == RESULTS_CSV_ANSWERS ? "answers (--ask)" : "scores");
            else if (first > 10 && memcmp(s, "path,task,", 10) == 0)
                snprintf(P->why, sizeof P->why, "its columns are those of another version of qalign");
            else snprintf(P->why, sizeof P->why, "its first line is not qalign's CSV header");
            return 0;
        }
        for (int i = 0; i < fw.n; i++)
            if (!(P->words[P->n_words++] = strdup(fw.words[i]))) { fields_free(&hf); return -1; }
        size_t pos = (size_t)(nl - s) + 1;
        P->good = pos;
        Fields f = {0};
        int term, rc;
        while ((rc = csv_record(s, len, &pos, ',', &f, &term)) == 1) {
            if (!term) { P->torn = 1; break; }
            P->good = pos;
            ResultRow r;
            if (f.n == 1 && field(&f, 0)[0] == 0) continue; /* blank line */
            if (csv_to_row(&f, fmt, fw, &r) != 0) { P->bad++; continue; }
            P->rows++;
            if (into && rowset_add(into, &r) != 0) { fields_free(&f); fields_free(&hf); return -1; }
        }
        fields_free(&hf);
        fields_free(&f);
        return rc < 0 ? -1 : 0;
    }
    Buf text = {0};
    size_t pos = 0;
    while (pos < len) {
        const char *nl = memchr(s + pos, '\n', len - pos);
        if (!nl) { /* a row torn by a kill starts as ours do */
            size_t L = len - pos, k = strlen(JSON_ROW_START), w = 0;
            while (w < L && strchr(" \t\r", s[pos + w])) w++;
            if (w == L || memcmp(s + pos, JSON_ROW_START, L < k ? L : k) == 0) P->torn = 1;
            else P->bad++, P->ours = -1;
            break;
        }
        size_t L = (size_t)(nl - (s + pos));
        const char *line = s + pos;
        pos += L + 1;
        P->good = pos;
        size_t t = L;
        while (t && (line[t - 1] == '\r' || line[t - 1] == ' ')) t--;
        if (t == 0) continue;
        ResultRow r;
        const char *words[APP_MAX_LEVELS];
        if (json_to_row(line, t, &text, words, &r) != 0) { P->bad++; continue; }
        P->rows++;
        if (into && rowset_add(into, &r) != 0) { buf_free(&text); return -1; }
    }
    buf_free(&text);
    if (P->ours < 0) { /* an unterminated last line that is not the start of a row */
        P->ours = 0;
        snprintf(P->why, sizeof P->why, "its last line is not a result row");
    } else if (P->rows == 0 && P->bad > 0) {
        P->ours = 0;
        snprintf(P->why, sizeof P->why, "no line is a result row");
    }
    return 0;
}

int results_parse(const char *data, size_t len, ResultsFormat fmt, RowSet *into, int *torn, size_t *bad, char *err,
                  size_t errlen) {
    Parsed P;
    int prc = parse_results(data ? data : "", len, fmt, into, &P);
    parsed_free(&P);
    if (prc != 0) return fail(err, errlen, "out of memory");
    if (torn) *torn = P.torn;
    if (bad) *bad = P.bad;
    if (!P.ours) return fail(err, errlen, "not a qalign results %s (%s)", fmt != RESULTS_JSONL ? "CSV" : "JSONL", P.why);
    return 0;
}

int results_read(const char *path, ResultsFormat fmt, RowSet *into, int *torn, size_t *bad, char *err,
                 size_t errlen) {
    Buf b = {0};
    int rc = read_file(path, &b, err, errlen);
    if (torn) *torn = 0;
    if (bad) *bad = 0;
    if (rc == 1) rc = 0;
    else if (rc == 0) {
        char e2[256];
        if (results_parse(b.p, b.n, fmt, into, torn, bad, e2, sizeof e2) != 0) rc = fail(err, errlen, "%s: %s", path, e2);
    }
    buf_free(&b);
    return rc;
}

struct ResultsFile {
    int fd;
    ResultsFormat fmt;
    char *path;
    int n_words;    /* a CSV of scores: its level columns' words (0: the five default ones) */
    char *words[APP_MAX_LEVELS];
};

static void results_free(ResultsFile *f) {
    for (int i = 0; i < f->n_words; i++) free(f->words[i]);
    free(f->path);
    free(f);
}

static int has_word(Words w, const char *word) {
    w = words_or_default(w);
    for (int i = 0; i < w.n; i++)
        if (!strcmp(w.words[i], word)) return 1;
    return 0;
}

/* A new CSV's level columns: the five default words when the run's are among them (the files
 * of every run before the column table), else the run's own. */
static int file_words(ResultsFile *f, Words run) {
    int all_default = 1;
    for (int i = 0; i < run.n; i++) all_default &= has_word((Words){0}, run.words[i]);
    if (all_default) return 0;
    for (int i = 0; i < run.n; i++)
        if (!(f->words[f->n_words++] = strdup(run.words[i]))) return -1;
    return 0;
}

ResultsFile *results_open(const char *path, ResultsFormat fmt, RowSet *previous, size_t *dropped, char *err,
                          size_t errlen) {
    return results_open_levels(path, fmt, 0, NULL, previous, dropped, err, errlen);
}

ResultsFile *results_open_levels(const char *path, ResultsFormat fmt, int n_levels, const char *const *levels,
                                 RowSet *previous, size_t *dropped, char *err, size_t errlen) {
    Words run = {n_levels, levels};
    if (dropped) *dropped = 0;
    ResultsFile *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        fail(err, errlen, "out of memory");
        return NULL;
    }
    f->fmt = fmt;
    int need_header = fmt != RESULTS_JSONL;
    struct stat st;
    if (stat(path, &st) == 0 && (S_ISBLK(st.st_mode) || S_ISSOCK(st.st_mode))) { /* refused before it is opened */
        f->fd = -1;
        fail(err, errlen, "%s is %s: rows are appended to a regular file, or written into a FIFO or character device",
             path, file_kind(st.st_mode));
        goto bad;
    }
    /* O_NONBLOCK: a FIFO without a reader must not hang the open; cleared below */
    f->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK, 0644);
    if (f->fd < 0 && (errno == EACCES || errno == ENXIO || errno == EISDIR))
        f->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK, 0644); /* e.g. /dev/stdout */
    if (f->fd < 0 || fstat(f->fd, &st) != 0) {
        fail(err, errlen, "cannot open %s for appending: %s", path, strerror(errno));
        goto bad;
    }
    fcntl(f->fd, F_SETFL, fcntl(f->fd, F_GETFL) & ~O_NONBLOCK);
    if (S_ISDIR(st.st_mode)) {
        fail(err, errlen, "%s is a directory", path);
        goto bad;
    }
    if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode) && !S_ISCHR(st.st_mode)) { /* a block device, a socket */
        fail(err, errlen, "%s is %s: rows are appended to a regular file, or written into a FIFO or character device",
             path, file_kind(st.st_mode));
        goto bad;
    }
    if (S_ISREG(st.st_mode)) { /* what is there must be ours: then append after its last complete row */
        Buf b = {0};
        if (lseek(f->fd, 0, SEEK_SET) < 0 || read_fd_all(f->fd, &b, 0, 0) != 0) {
            fail(err, errlen, "cannot read %s: %s", path, strerror(errno));
            buf_free(&b);
            goto bad;
        }
        Parsed P;
        if (parse_results(b.p ? b.p : "", b.n, fmt, previous, &P) != 0) {
            parsed_free(&P);
            buf_free(&b);
            fail(err, errlen, "out of memory");
            goto bad;
        }
        if (!P.ours) {
            parsed_free(&P);
            buf_free(&b);
            fail(err, errlen, "%s is not a qalign results %s (%s): refusing to append to it (give a new file)", path,
                 fmt != RESULTS_JSONL ? "CSV" : "JSONL", P.why);
            goto bad;
        }
        if (fmt == RESULTS_CSV && P.good > 0) { /* the file's level columns must hold the run's words */
            for (int i = 0; i < P.n_words; i++) f->words[f->n_words++] = P.words[i];
            P.n_words = 0;
            Words fw = {f->n_words, (const char *const *)f->words}, rw = words_or_default(run);
            for (int i = 0; i < rw.n; i++)
                if (!has_word(fw, rw.words[i])) {
                    fail(err, errlen, "%s has level columns for other words than this run's (no p_%s): give a new file",
                         path, rw.words[i]);
                    buf_free(&b);
                    goto bad;
                }
        }
        parsed_free(&P);
        if (P.torn) {
            if (ftruncate(f->fd, (off_t)P.good) != 0) {
                fail(err, errlen, "cannot cut the torn last row of %s: %s", path, strerror(errno));
                buf_free(&b);
                goto bad;
            }
            if (dropped) *dropped = b.n - P.good;
        }
        if (P.good > 0) need_header = 0;
        buf_free(&b);
    } else if (previous) {
        fail(err, errlen, "%s is not a regular file: --resume reads the rows already written", path);
        goto bad;
    }
    if (need_header && fmt == RESULTS_CSV && file_words(f, run) != 0) {
        fail(err, errlen, "out of memory");
        goto bad;
    }
    char *header = need_header ? csv_header(fmt, (Words){f->n_words, (const char *const *)f->words}) : NULL;
    if (need_header && !header) {
        fail(err, errlen, "out of memory");
        goto bad;
    }
    if (need_header && write_all(f->fd, header, strlen(header)) != 0) {
        free(header);
        fail(err, errlen, "cannot write %s: %s", path, strerror(errno));
        goto bad;
    }
    free(header);
    if (need_header && fsync(f->fd) != 0 && errno != EINVAL && errno != EROFS) {
        fail(err, errlen, "cannot sync %s: %s", path, strerror(errno));
        goto bad;
    }
    return f;
bad:
    if (f->fd >= 0) close(f->fd);
    results_free(f);
    return NULL;
}

int results_write(ResultsFile *f, const ResultRow *row, char *err, size_t errlen) {
    Buf b = {0};
    format_row_words(&b, f->fmt, row, (Words){f->n_words, (const char *const *)f->words});
    if (b.oom) {
        buf_free(&b);
        return fail(err, errlen, "out of memory");
    }
    int rc = 0;
    if (write_all(f->fd, b.p, b.n) != 0) rc = fail(err, errlen, "cannot write %s: %s", f->path, strerror(errno));
    else if (fsync(f->fd) != 0 && errno != EINVAL && errno != EROFS)
        rc = fail(err, errlen, "cannot sync %s: %s", f->path, strerror(errno));
    buf_free(&b);
    return rc;
}

int results_close(ResultsFile *f, char *err, size_t errlen) {
    if (!f) return 0;
    int rc = 0;
    if (close(f->fd) != 0) rc = fail(err, errlen, "cannot close %s: %s", f->path, strerror(errno));
    results_free(f);
    return rc;
}
