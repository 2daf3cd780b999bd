/* evaluate.c - scores against labels (evaluate.h): ranks, PLCC / SRCC / KRCC (tau-b), the
 * labels file and how results are matched to labels. */
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
 * 4. evaluation */

static int any_nan(const double *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 1;
    return 0;
}

double stats_plcc(const double *x, const double *y, size_t n) {
    if (n < 2 || any_nan(x, n) || any_nan(y, n)) return NAN;
    double mx = 0, my = 0;
    for (size_t i = 0; i < n; i++) { mx += x[i]; my += y[i]; }
    mx /= (double)n;
    my /= (double)n;
    double sxx = 0, syy = 0, sxy = 0;
    for (size_t i = 0; i < n; i++) {
        double a = x[i] - mx, b = y[i] - my;
        sxx += a * a;
        syy += b * b;
        sxy += a * b;
    }
    if (sxx <= 0 || syy <= 0) return NAN;
    double r = sxy / sqrt(sxx * syy);
    return r > 1 ? 1 : r < -1 ? -1 : r;
}

typedef struct {
    double v;
    size_t i;
} VI;
static int cmp_vi(const void *a, const void *b) {
    const VI *p = a, *q = b;
    if (p->v < q->v) return -1;
    if (p->v > q->v) return 1;
    return p->i < q->i ? -1 : p->i > q->i;
}

int stats_rank(const double *x, size_t n, double *rank) {
    VI *t = malloc((n ? n : 1) * sizeof *t);
    if (!t) return -1;
    for (size_t i = 0; i < n; i++) t[i] = (VI){x[i], i};
    qsort(t, n, sizeof *t, cmp_vi);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && t[j].v == t[i].v) j++;
        double r = 0.5 * (double)(i + 1 + j); /* mean of the 1-based ranks i+1 .. j */
        for (size_t k = i; k < j; k++) rank[t[k].i] = r;
        i = j;
    }
    free(t);
    return 0;
}

double stats_srcc(const double *x, const double *y, size_t n) {
    if (n < 2 || any_nan(x, n) || any_nan(y, n)) return NAN;
    double *rx = malloc(n * sizeof *rx), *ry = malloc(n * sizeof *ry);
    double r = NAN;
    if (rx && ry && stats_rank(x, n, rx) == 0 && stats_rank(y, n, ry) == 0) r = stats_plcc(rx, ry, n);
    free(rx);
    free(ry);
    return r;
}

typedef struct {
    double x, y;
} XY;
static int cmp_xy(const void *a, const void *b) {
    const XY *p = a, *q = b;
    if (p->x != q->x) return p->x < q->x ? -1 : 1;
    if (p->y != q->y) return p->y < q->y ? -1 : 1;
    return 0;
}

/* Merge sort of y counting strict inversions (pairs i < j with y[i] > y[j]). */
static uint64_t sort_count(double *y, double *tmp, size_t n) {
    if (n < 2) return 0;
    size_t h = n / 2;
    uint64_t s = sort_count(y, tmp, h) + sort_count(y + h, tmp, n - h);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        if (y[j] < y[i]) {
            s += h - i;
            tmp[k++] = y[j++];
        } else tmp[k++] = y[i++];
    }
    while (i < h) tmp[k++] = y[i++];
    while (j < n) tmp[k++] = y[j++];
    memcpy(y, tmp, n * sizeof *y);
    return s;
}

static uint64_t tie_pairs_run(uint64_t t) { return t * (t - 1) / 2; }

double stats_krcc(const double *x, const double *y, size_t n) {
    if (n < 2 || any_nan(x, n) || any_nan(y, n)) return NAN;
    XY *p = malloc(n * sizeof *p);
    double *ys = malloc(n * sizeof *ys), *tmp = malloc(n * sizeof *tmp);
    double r = NAN;
    if (!p || !ys || !tmp) goto out;
    for (size_t i = 0; i < n; i++) p[i] = (XY){x[i], y[i]};
    qsort(p, n, sizeof *p, cmp_xy);
    uint64_t n0 = (uint64_t)n * (n - 1) / 2, n1 = 0, n2 = 0, n3 = 0;
    for (size_t i = 0; i < n;) { /* ties in x, and in (x, y) */
        size_t j = i + 1;
        while (j < n && p[j].x == p[i].x) j++;
        n1 += tie_pairs_run(j - i);
        for (size_t a = i; a < j;) {
            size_t b = a + 1;
            while (b < j && p[b].y == p[a].y) b++;
            n3 += tie_pairs_run(b - a);
            a = b;
        }
        i = j;
    }
    for (size_t i = 0; i < n; i++) ys[i] = p[i].y;
    uint64_t swaps = sort_count(ys, tmp, n); /* = discordant pairs */
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && ys[j] == ys[i]) j++;
        n2 += tie_pairs_run(j - i);
        i = j;
    }
    if (n0 == n1 || n0 == n2) goto out;
    /* concordant - discordant = (pairs tied in neither) - 2 * discordant */
    double num = (double)(int64_t)(n0 - n1 - n2 + n3) - 2.0 * (double)swaps;
    r = num / sqrt((double)(n0 - n1) * (double)(n0 - n2));
    if (r > 1) r = 1;
    if (r < -1) r = -1;
out:
    free(p);
    free(ys);
    free(tmp);
    return r;
}

struct Labels {
    char **path;   /* normalised */
    double *mos;
    size_t n, cap;
    StrMap by_path;   /* path -> index (last wins) */
    StrMap by_name;   /* basename -> index, or -2 when several labels share it */
    size_t bad_rows;
    char first_bad[128];   /* why the first of them was left out */
};

static int ieq(const char *a, const char *b) {
    while (*a && *b && tolower((unsigned char)*a) == tolower((unsigned char)*b)) a++, b++;
    return !*a && !*b;
}

Labels *labels_load(const char *path, char *err, size_t errlen) {
    Buf b = {0};
    int rc = read_file(path, &b, err, errlen);
    if (rc == 1) {
        fail(err, errlen, "labels file %s: %s", path, strerror(ENOENT));
        return NULL;
    }
    if (rc != 0) return NULL;
    Labels *l = calloc(1, sizeof *l);
    if (!l) {
        buf_free(&b);
        fail(err, errlen, "out of memory");
        return NULL;
    }
    const char *s = b.p ? b.p : "";
    size_t len = b.n, pos = 0;
    if (len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) pos = 3; /* UTF-8 BOM */
    /* delimiter: the first of , \t ; on the first line */
    char delim = ',';
    const char *nl = memchr(s + pos, '\n', len - pos);
    size_t fl = nl ? (size_t)(nl - (s + pos)) : len - pos;
    if (!memchr(s + pos, ',', fl)) {
        if (memchr(s + pos, '\t', fl)) delim = '\t';
        else if (memchr(s + pos, ';', fl)) delim = ';';
    }
    Fields f = {0};
    int term, first = 1, r;
    size_t pc = 0, mc = 1;
    size_t line = 0, next_line = 1;
    while ((r = csv_record(s, len, &pos, delim, &f, &term)) == 1) {
        line = next_line;
        for (size_t i = 0; i < f.text.n; i++) next_line += f.text.p[i] == '\n'; /* quoted newlines */
        next_line++;
        if (f.n == 1 && !field(&f, 0)[0]) continue;
        if (first) {
            first = 0;
            double v;
            if (f.n < 2 || parse_double(field(&f, 1), &v) != 0) { /* a header */
                static const char *const pn[] = {"path", "file", "filename", "file_name", "name", "image", "image_name",
                                                 "img", "video", "video_name", "image_path", "video_path", "image_id",
                                                 "video_id", "filepath", NULL};
                static const char *const mn[] = {"mos", "dmos", "score", "mos_zscore", "label", "gt", "mean",
                                                 "rating", "quality", "value", NULL};
                int fp = -1, fm = -1;
                for (int a = 0; pn[a] && fp < 0; a++)
                    for (size_t i = 0; i < f.n; i++)
                        if (ieq(field(&f, i), pn[a])) { fp = (int)i; break; }
                for (int a = 0; mn[a] && fm < 0; a++)
                    for (size_t i = 0; i < f.n; i++)
                        if (ieq(field(&f, i), mn[a])) { fm = (int)i; break; }
                pc = fp >= 0 ? (size_t)fp : 0;
                mc = fm >= 0 ? (size_t)fm : 1;
                continue;
            }
        }
        double v;
        if (f.n <= pc || f.n <= mc || !field(&f, pc)[0] || parse_double(field(&f, mc), &v) != 0 || !isfinite(v)) {
            if (!l->bad_rows++) {
                if (f.n <= pc || f.n <= mc)
                    snprintf(l->first_bad, sizeof l->first_bad, "line %zu: %zu field%s, no column %zu", line, f.n,
                             f.n == 1 ? "" : "s", (pc > mc ? pc : mc) + 1);
                else if (!field(&f, pc)[0]) snprintf(l->first_bad, sizeof l->first_bad, "line %zu: no path", line);
                else
                    snprintf(l->first_bad, sizeof l->first_bad, "line %zu: the MOS '%.60s' is not a number", line,
                             field(&f, mc));
            }
            continue;
        }
        if (l->n == l->cap) {
            size_t nc = l->cap ? l->cap * 2 : 256;
            char **np = realloc(l->path, nc * sizeof *np);
            if (!np) { r = -1; break; }
            l->path = np;
            double *nm = realloc(l->mos, nc * sizeof *nm);
            if (!nm) { r = -1; break; }
            l->mos = nm;
            l->cap = nc;
        }
        char *p = path_normalize(field(&f, pc));
        if (!p) { r = -1; break; }
        l->path[l->n] = p;
        l->mos[l->n] = v;
        l->n++;
    }
    fields_free(&f);
    buf_free(&b);
    if (r < 0) {
        labels_free(l);
        fail(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < l->n; i++) {
        long same = strmap_get(&l->by_path, l->path[i], strlen(l->path[i]));
        if (same >= 0 && l->mos[same] != l->mos[i]) { /* one path, two labels: which would be used is a guess */
            fail(err, errlen, "labels file %s: %s has two different labels, %g and %g: keep one", path, l->path[i],
                 l->mos[same], l->mos[i]);
            labels_free(l);
            return NULL;
        }
        const char *bn = path_basename(l->path[i]);
        long prev = strmap_get(&l->by_name, bn, strlen(bn));
        if (strmap_put(&l->by_path, l->path[i], strlen(l->path[i]), (long)i) != 0 ||
            strmap_put(&l->by_name, bn, strlen(bn), prev >= 0 && strcmp(l->path[prev], l->path[i]) ? -2 :
                                                    prev == -2 ? -2 : (long)i) != 0) {
            labels_free(l);
            fail(err, errlen, "out of memory");
            return NULL;
        }
    }
    if (l->n == 0) {
        if (l->bad_rows)
            fail(err, errlen, "labels file %s: no usable row of the form path,mos (%s)", path, l->first_bad);
        else fail(err, errlen, "labels file %s: no rows of the form path,mos", path);
        labels_free(l);
        return NULL;
    }
    return l;
}

size_t labels_skipped(const Labels *l, char *why, size_t whylen) {
    if (why && whylen) snprintf(why, whylen, "%s", l && l->bad_rows ? l->first_bad : "");
    return l ? l->bad_rows : 0;
}

void labels_free(Labels *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) free(l->path[i]);
    free(l->path);
    free(l->mos);
    strmap_free(&l->by_path);
    strmap_free(&l->by_name);
    free(l);
}

size_t labels_count(const Labels *l) { return l ? l->n : 0; }

int eval_run(const Labels *l, const char *const *paths, const double *scores, size_t n, EvalResult *out, char *err,
             size_t errlen) {
    memset(out, 0, sizeof *out);
    out->srcc = out->plcc = out->krcc = NAN;
    out->n_results = n;
    out->n_labels = l->n;
    double *x = malloc((n ? n : 1) * sizeof *x), *y = malloc((n ? n : 1) * sizeof *y);
    char **norm = calloc(n ? n : 1, sizeof *norm);
    long *cand = malloc((n ? n : 1) * sizeof *cand);
    int *how = malloc((n ? n : 1) * sizeof *how);       /* 0 none, 1 path, 2 suffix, 3 name */
    long *claims = calloc(l->n ? l->n : 1, sizeof *claims);
    StrMap names = {0};
    int rc = -1;
    if (!x || !y || !norm || !cand || !how || !claims) goto oom;
    for (size_t i = 0; i < n; i++) {
        if (!(norm[i] = path_normalize(paths[i]))) goto oom;
        const char *bn = path_basename(norm[i]);
        long c = strmap_get(&names, bn, strlen(bn));
        if (strmap_put(&names, bn, strlen(bn), c < 0 ? 1 : c + 1) != 0) goto oom;
    }
    for (size_t i = 0; i < n; i++) {
        const char *p = norm[i];
        cand[i] = strmap_get(&l->by_path, p, strlen(p));
        how[i] = cand[i] >= 0;
        /* the longest tail "dir/.../name" of the path that is a label's path */
        for (const char *t = strchr(p, '/'); cand[i] < 0 && t; t = strchr(t + 1, '/'))
            if (t[1] && (cand[i] = strmap_get(&l->by_path, t + 1, strlen(t + 1))) >= 0) how[i] = 2;
        if (cand[i] < 0) { /* the same file name, when that name is unique on both sides */
            const char *bn = path_basename(p);
            long lj = strmap_get(&l->by_name, bn, strlen(bn));
            if (lj >= 0 && strmap_get(&names, bn, strlen(bn)) == 1) {
                cand[i] = lj;
                how[i] = 3;
            } else if (lj == -2 || (lj >= 0 && strmap_get(&names, bn, strlen(bn)) > 1)) how[i] = -1;
        }
        if (cand[i] >= 0) claims[cand[i]]++;
    }
    for (size_t i = 0; i < n; i++) {
        if (how[i] < 0) { out->ambiguous++; continue; }
        if (how[i] == 0) continue;
        if (how[i] > 1 && claims[cand[i]] > 1) { /* several results claim one label: none gets it */
            out->ambiguous++;
            continue;
        }
        if (how[i] == 1) out->by_path++;
        else if (how[i] == 2) out->by_suffix++;
        else out->by_name++;
        x[out->matched] = scores[i];
        y[out->matched] = l->mos[cand[i]];
        out->matched++;
    }
    out->srcc = stats_srcc(x, y, out->matched);
    out->plcc = stats_plcc(x, y, out->matched);
    out->krcc = stats_krcc(x, y, out->matched);
    rc = 0;
    goto done;
oom:
    fail(err, errlen, "out of memory");
done:
    if (norm)
        for (size_t i = 0; i < n; i++) free(norm[i]);
    free(norm);
    free(x);
    free(y);
    free(cand);
    free(how);
    free(claims);
    strmap_free(&names);
    return rc;
}

void eval_print(FILE *f, const EvalResult *r, const char *labels_path) {
    fprintf(f, "eval: %zu of %zu results matched the %zu labels in %s (%zu by path, %zu by path tail, %zu by file name",
            r->matched, r->n_results, r->n_labels, labels_path ? labels_path : "the labels file", r->by_path,
            r->by_suffix, r->by_name);
    if (r->ambiguous) fprintf(f, "; %zu left out: ambiguous", r->ambiguous);
    fprintf(f, ")\n");
    if (isnan(r->srcc) || isnan(r->plcc) || isnan(r->krcc))
        fprintf(f, "eval: SRCC, PLCC, KRCC undefined (n = %zu): %s\n", r->matched,
                r->matched < 2 ? "fewer than 2 matched items" : "the scores or the labels are all equal");
    else
        fprintf(f, "eval: SRCC %.4f  PLCC %.4f  KRCC %.4f  (n = %zu)\n", r->srcc, r->plcc, r->krcc, r->matched);
}
