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

static const char CSV_HEADER[] = "path,task,kind,frames,score,std,scale,p_excellent,p_good,p_fair,p_poor,p_bad,"
                                 "logit_excellent,logit_good,logit_fair,logit_poor,logit_bad,error,"
                                 "model,prompt,levels,pad,precise,max_frames\n";
#define CSV_FIELDS 24
static const char *const CSV_HEADERS[1] = {CSV_HEADER};
/* --ask's results (RESULTS_CSV_ANSWERS): the answer instead of the level columns; score, std,
 * scale and levels are empty unless --score is given too */
static const char ANSWER_CSV_HEADER[] = "path,task,kind,frames,score,std,scale,question,answer,tokens,finish,error,"
                                        "model,prompt,levels,decoding,pad,precise,max_frames\n";
#define ANSWER_CSV_FIELDS 19
/* the start of every JSONL row (a torn tail that starts otherwise is not ours) */
#define JSON_ROW_START "{\"path\": "

const char *results_csv_header(void) { return CSV_HEADER; }
const char *results_answer_csv_header(void) { return ANSWER_CSV_HEADER; }

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

/* An answer's row (--ask) in the CSV of answers */
static void format_answer_csv(Buf *b, const ResultRow *r, int bad, const char *error) {
    const RowSetup *su = &r->setup;
    int known = su->model != NULL, sc = r->scored && !bad;
    csv_field(b, r->path);
    buf_addc(b, ',');
    csv_field(b, r->scored ? r->task : NULL);
    buf_addc(b, ',');
    csv_field(b, r->kind);
    buf_printf(b, ",%d,", r->frames);
    if (sc) csv_num(b, r->score);
    buf_addc(b, ',');
    if (sc) csv_num(b, r->std);
    buf_addc(b, ',');
    csv_field(b, r->scored ? r->scale : NULL);
    buf_addc(b, ',');
    csv_field(b, r->question);
    buf_addc(b, ',');
    if (!bad) csv_field(b, r->answer);
    buf_addc(b, ',');
    if (!bad) token_list(b, r, 0);
    buf_addc(b, ',');
    if (!bad) csv_field(b, r->finish);
    buf_addc(b, ',');
    if (bad) csv_field(b, error);
    buf_addc(b, ',');
    if (known) {
        csv_field(b, su->model);
        buf_addc(b, ',');
        csv_field(b, su->prompt);
        buf_addc(b, ',');
        if (r->scored) csv_field(b, su->levels);
        buf_addc(b, ',');
        csv_field(b, r->decoding);
        buf_printf(b, ",%s,%s,", su->pad ? "true" : "false", su->precise ? "true" : "false");
    } else buf_adds(b, ",,,,,,");
    if (r->max_frames > 0) buf_printf(b, "%d", r->max_frames);
    buf_addc(b, '\n');
}

static void format_row(Buf *b, ResultsFormat fmt, const ResultRow *r) {
    int bad = row_failed(r), n = r->n_levels ? r->n_levels : APP_LEVELS, ans = r->question != NULL;
    int sc = !ans || r->scored; /* the row has a score */
    const char *error = r->error;
    if (ans && !bad && !r->answer) { /* never a success without an answer */
        bad = 1;
        error = "no answer";
    }
    if (fmt == RESULTS_CSV_ANSWERS) {
        if (sc && !bad && !row_numbers_finite(r)) bad = 1, error = "the model produced a value that is not finite";
        format_answer_csv(b, r, bad, error);
        return;
    }
    if (sc && !bad && !row_numbers_finite(r)) { /* never a success without a score */
        bad = 1;
        error = "the model produced a value that is not finite";
    }
    const char *const *words = r->n_levels ? r->levels : APP_LEVEL_NAMES;
    const RowSetup *su = &r->setup;
    int known = su->model != NULL;
    if (fmt == RESULTS_CSV) {
        csv_field(b, r->path);
        buf_addc(b, ',');
        csv_field(b, r->task);
        buf_addc(b, ',');
        csv_field(b, r->kind);
        buf_printf(b, ",%d,", r->frames);
        if (!bad) csv_num(b, r->score);
        buf_addc(b, ',');
        if (!bad) csv_num(b, r->std);
        buf_addc(b, ',');
        csv_field(b, r->scale);
        double p[APP_LEVELS], l[APP_LEVELS];
        default_columns(r, p, l);
        for (int i = 0; i < 2 * APP_LEVELS; i++) { /* the columns are the five default words' */
            buf_addc(b, ',');
            if (!bad) csv_num(b, i < APP_LEVELS ? p[i] : l[i - APP_LEVELS]);
        }
        buf_addc(b, ',');
        if (bad) csv_field(b, error);
        buf_addc(b, ',');
        if (known) {
            csv_field(b, su->model);
            buf_addc(b, ',');
            csv_field(b, su->prompt);
            buf_addc(b, ',');
            csv_field(b, su->levels);
            buf_printf(b, ",%s,%s,", su->pad ? "true" : "false", su->precise ? "true" : "false");
        } else buf_adds(b, ",,,,,");
        if (r->max_frames > 0) buf_printf(b, "%d", r->max_frames);
        buf_addc(b, '\n');
    } else {
        buf_adds(b, JSON_ROW_START);
        json_str(b, r->path);
        if (sc) {
            buf_adds(b, ", \"task\": ");
            json_str(b, r->task);
        }
        buf_adds(b, ", \"kind\": ");
        json_str(b, r->kind);
        buf_printf(b, ", \"frames\": %d", r->frames);
        if (r->per_frame) buf_printf(b, ", \"frame\": %d", r->frame);
        if (sc) {
        buf_adds(b, ", \"score\": ");
        json_num(b, bad ? NAN : r->score);
        buf_adds(b, ", \"std\": ");
        json_num(b, bad ? NAN : r->std);
        buf_adds(b, ", \"scale\": ");
        json_str(b, r->scale);
        for (int k = 0; k < 2; k++)
            for (int i = 0; i < n; i++) {
                Buf key = {0};
                buf_printf(&key, "%s_%s", k ? "logit" : "p", words[i]);
                buf_adds(b, ", ");
                json_str(b, key.oom ? "" : key.p);
                buf_adds(b, ": ");
                json_num(b, bad ? NAN : k ? r->logits[i] : r->probs[i]);
                buf_free(&key);
            }
        }
        if (ans) {
            buf_adds(b, ", \"question\": ");
            json_str(b, r->question);
            buf_adds(b, ", \"answer\": ");
            json_str(b, bad ? NULL : r->answer);
            buf_adds(b, ", \"tokens\": ");
            if (bad) buf_adds(b, "null");
            else token_list(b, r, 1);
            buf_adds(b, ", \"finish\": ");
            json_str(b, bad ? NULL : r->finish);
        }
        if (r->n_anchors > 0 && !bad) {
            buf_adds(b, ", \"anchor_prefs\": [");
            for (int i = 0; i < r->n_anchors; i++) {
                if (i) buf_adds(b, ", ");
                json_num(b, r->anchor_prefs[i]);
            }
            buf_addc(b, ']');
        }
        buf_adds(b, ", \"error\": ");
        json_str(b, bad ? error : NULL);
        buf_adds(b, ", \"model\": ");
        json_str(b, known ? su->model : NULL);
        buf_adds(b, ", \"prompt\": ");
        json_str(b, known ? su->prompt : NULL);
        if (sc) {
            buf_adds(b, ", \"levels\": ");
            json_str(b, known ? su->levels : NULL);
        }
        if (ans) {
            buf_adds(b, ", \"decoding\": ");
            json_str(b, known ? r->decoding : NULL);
        }
        buf_printf(b, ", \"pad\": %s, \"precise\": %s, \"max_frames\": ", known ? su->pad ? "true" : "false" : "null",
                   known ? su->precise ? "true" : "false" : "null");
        if (r->max_frames > 0) buf_printf(b, "%d}\n", r->max_frames);
        else buf_adds(b, "null}\n");
    }
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

int row_style_init(RowStyle *s, const char *task, const char *scale, int n_levels, const char *const *words, float lo,
                   float hi) {
    static const struct { const char *name; double lo, hi; } scales[] = {{"1-5", 1, 5}, {"0-1", 0, 1}, {"0-100", 0, 100}};
    memset(s, 0, sizeof *s);
    s->task = task;
    s->lo = lo;
    s->hi = hi;
    s->n_levels = n_levels < APP_MAX_LEVELS ? n_levels : APP_MAX_LEVELS;
    for (int i = 0; i < s->n_levels; i++) s->words[i] = words[i];
    snprintf(s->scale, sizeof s->scale, "%g-%g", lo, hi);
    if (!scale) return 0;
    for (size_t k = 0; k < sizeof scales / sizeof scales[0]; k++)
        if (!strcmp(scale, scales[k].name)) {
            s->mapped = hi > lo;
            s->to_lo = scales[k].lo;
            s->to_hi = scales[k].hi;
            snprintf(s->scale, sizeof s->scale, "%s", scale);
            return 0;
        }
    return -1;
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
    r.n_anchors = 0, r.anchor_prefs = NULL; /* (not kept) */
    r.path = dup_nonempty(row->path, &oom);
    r.task = dup_nonempty(row->task, &oom);
    r.kind = dup_nonempty(row->kind, &oom);
    r.scale = dup_nonempty(row->scale, &oom);
    r.error = row_failed(row) ? dup_nonempty(row->error, &oom) : NULL;
    r.setup.model = dup_nonempty(row->setup.model, &oom);
    r.setup.prompt = r.setup.model ? dup_nonempty(row->setup.prompt, &oom) : NULL;
    r.setup.levels = r.setup.model ? dup_nonempty(row->setup.levels, &oom) : NULL;
    r.n_levels = 0; /* a stored row has the five default words' columns */
    r.levels = NULL;
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

static int csv_to_row(const Fields *f, ResultRow *r) {
    if (f->n != CSV_FIELDS) return -1;
    memset(r, 0, sizeof *r);
    r->path = field(f, 0);
    if (!r->path[0]) return -1;
    r->task = field(f, 1);
    r->kind = field(f, 2)[0] ? field(f, 2) : NULL;
    if (parse_count(field(f, 3), &r->frames) != 0) return -1;
    r->scale = field(f, 6);
    r->error = field(f, 17)[0] ? field(f, 17) : NULL;
    for (int i = 0; i < APP_MAX_LEVELS; i++) r->probs[i] = r->logits[i] = NAN;
    if (!r->error) {
        if (parse_double(field(f, 4), &r->score) != 0 || parse_double(field(f, 5), &r->std) != 0 ||
            !isfinite(r->score) || !isfinite(r->std))
            return -1;
        for (int i = 0; i < APP_LEVELS; i++) /* empty: a word the run's levels did not have */
            if ((field(f, 7 + i)[0] && parse_double(field(f, 7 + i), &r->probs[i]) != 0) ||
                (field(f, 12 + i)[0] && parse_double(field(f, 12 + i), &r->logits[i]) != 0))
                return -1;
    } else r->score = r->std = NAN;
    if (field(f, 18)[0]) { /* the setup: all of it, or none */
        r->setup.model = field(f, 18);
        r->setup.prompt = field(f, 19);
        r->setup.levels = field(f, 20);
        if ((r->setup.pad = parse_bool(field(f, 21))) < 0 || (r->setup.precise = parse_bool(field(f, 22))) < 0) return -1;
    } else if (field(f, 19)[0] || field(f, 20)[0] || field(f, 21)[0] || field(f, 22)[0]) return -1;
    if (parse_count(field(f, 23), &r->max_frames) != 0) return -1;
    return 0;
}

/* A row of the CSV of answers */
static int csv_to_answer_row(const Fields *f, ResultRow *r) {
    if (f->n != ANSWER_CSV_FIELDS) return -1;
    memset(r, 0, sizeof *r);
    r->path = field(f, 0);
    if (!r->path[0]) return -1;
    r->task = field(f, 1)[0] ? field(f, 1) : NULL;
    r->kind = field(f, 2)[0] ? field(f, 2) : NULL;
    if (parse_count(field(f, 3), &r->frames) != 0) return -1;
    r->scored = field(f, 4)[0] != 0;
    r->score = r->std = NAN;
    for (int i = 0; i < APP_MAX_LEVELS; i++) r->probs[i] = r->logits[i] = NAN;
    if (r->scored && (parse_double(field(f, 4), &r->score) != 0 || parse_double(field(f, 5), &r->std) != 0)) return -1;
    r->scale = field(f, 6)[0] ? field(f, 6) : NULL;
    r->question = field(f, 7);
    r->answer = field(f, 8);
    r->finish = field(f, 10)[0] ? field(f, 10) : NULL;
    r->error = field(f, 11)[0] ? field(f, 11) : NULL;
    if (field(f, 12)[0]) {
        r->setup.model = field(f, 12);
        r->setup.prompt = field(f, 13);
        r->setup.levels = field(f, 14)[0] ? field(f, 14) : NULL;
        r->decoding = field(f, 15);
        if ((r->setup.pad = parse_bool(field(f, 16))) < 0 || (r->setup.precise = parse_bool(field(f, 17))) < 0) return -1;
    }
    if (parse_count(field(f, 18), &r->max_frames) != 0) return -1;
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
static int json_to_row(const char *s, size_t len, Buf *text, ResultRow *r) {
    JP j = {s, s + len};
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
            else
                for (int i = 0; i < APP_LEVELS; i++) {
                    char pk[32], lk[32];
                    snprintf(pk, sizeof pk, "p_%s", APP_LEVEL_NAMES[i]);
                    snprintf(lk, sizeof lk, "logit_%s", APP_LEVEL_NAMES[i]);
                    if (strcmp(key.p, pk) == 0) r->probs[i] = v;
                    if (strcmp(key.p, lk) == 0) r->logits[i] = v;
                }
        } else if (*j.p == '[' && strcmp(key.p, "tokens") == 0) { /* an answer's ids: skipped */
            while (j.p < j.e && *j.p != ']' && (*j.p == '[' || *j.p == ',' || *j.p == ' ' || (*j.p >= '0' && *j.p <= '9')))
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
    if (!r->error && (!have_score || !isfinite(r->score) || !isfinite(r->std))) goto out;
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
} Parsed;

/* Parse a results file held in memory. -1 only when out of memory. */
static int parse_results(const char *s, size_t len, ResultsFormat fmt, RowSet *into, Parsed *P) {
    memset(P, 0, sizeof *P);
    P->ours = 1;
    if (fmt != RESULTS_JSONL) {
        const char *CSV_HEADER = fmt == RESULTS_CSV_ANSWERS ? ANSWER_CSV_HEADER : CSV_HEADERS[0];
        size_t hl = strlen(CSV_HEADER) - 1;
        if (len == 0) return 0;
        const char *nl = memchr(s, '\n', len);
        if (!nl) { /* a header torn by a kill: the start of ours (cut, then written again), else not ours */
            if ((len <= hl && memcmp(s, CSV_HEADER, len) == 0) ||
                (len == hl + 1 && memcmp(s, CSV_HEADER, hl) == 0 && s[hl] == '\r'))
                P->torn = 1;
            else {
                P->ours = 0;
                snprintf(P->why, sizeof P->why, "its first line is not qalign's CSV header");
            }
            return 0;
        }
        size_t first = (size_t)(nl - s);
        if (first && s[first - 1] == '\r') first--;
        if (first != hl || memcmp(s, CSV_HEADER, hl) != 0) {
            P->ours = 0;
            const char *other = fmt == RESULTS_CSV_ANSWERS ? CSV_HEADERS[0] : ANSWER_CSV_HEADER;
            if (first == strlen(other) - 1 && memcmp(s, other, first) == 0)
                snprintf(P->why, sizeof P->why, "it holds %s, not %s", fmt == RESULTS_CSV_ANSWERS ? "scores" : "answers (--ask)",
                         fmt == RESULTS_CSV_ANSWERS ? "answers (--ask)" : "scores");
            else if (first > 10 && memcmp(s, "path,task,", 10) == 0)
                snprintf(P->why, sizeof P->why, "its columns are those of another version of qalign");
            else snprintf(P->why, sizeof P->why, "its first line is not qalign's CSV header");
            return 0;
        }
        size_t pos = (size_t)(nl - s) + 1;
        P->good = pos;
        Fields f = {0};
        int term, rc;
        while ((rc = csv_record(s, len, &pos, ',', &f, &term)) == 1) {
            if (!term) { P->torn = 1; break; }
            P->good = pos;
            ResultRow r;
            if (f.n == 1 && field(&f, 0)[0] == 0) continue; /* blank line */
            if ((fmt == RESULTS_CSV_ANSWERS ? csv_to_answer_row(&f, &r) : csv_to_row(&f, &r)) != 0) { P->bad++; continue; }
            P->rows++;
            if (into && rowset_add(into, &r) != 0) { fields_free(&f); return -1; }
        }
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
        if (json_to_row(line, t, &text, &r) != 0) { P->bad++; continue; }
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
    if (parse_results(data ? data : "", len, fmt, into, &P) != 0) return fail(err, errlen, "out of memory");
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
};

ResultsFile *results_open(const char *path, ResultsFormat fmt, RowSet *previous, size_t *dropped, char *err,
                          size_t errlen) {
    if (dropped) *dropped = 0;
    ResultsFile *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        fail(err, errlen, "out of memory");
        return NULL;
    }
    f->fmt = fmt;
    int need_header = fmt != RESULTS_JSONL;
    const char *CSV_HEADER = fmt == RESULTS_CSV_ANSWERS ? ANSWER_CSV_HEADER : CSV_HEADERS[0];
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
            buf_free(&b);
            fail(err, errlen, "out of memory");
            goto bad;
        }
        if (!P.ours) {
            buf_free(&b);
            fail(err, errlen, "%s is not a qalign results %s (%s): refusing to append to it (give a new file)", path,
                 fmt != RESULTS_JSONL ? "CSV" : "JSONL", P.why);
            goto bad;
        }
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
    if (need_header && write_all(f->fd, CSV_HEADER, strlen(CSV_HEADER)) != 0) {
        fail(err, errlen, "cannot write %s: %s", path, strerror(errno));
        goto bad;
    }
    if (need_header && fsync(f->fd) != 0 && errno != EINVAL && errno != EROFS) {
        fail(err, errlen, "cannot sync %s: %s", path, strerror(errno));
        goto bad;
    }
    return f;
bad:
    if (f->fd >= 0) close(f->fd);
    free(f->path);
    free(f);
    return NULL;
}

int results_write(ResultsFile *f, const ResultRow *row, char *err, size_t errlen) {
    Buf b = {0};
    format_row(&b, f->fmt, row);
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
    free(f->path);
    free(f);
    return rc;
}
