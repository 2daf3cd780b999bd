/* evaluate.h - scores against labels: PLCC, SRCC, KRCC, the labels file (path,mos) and how
 * results are matched to labels. Conventions as in app.h.
 *
 *  Eval       labels CSV: path,mos (header optional: a first row whose second field is
 *             not a number; a header may name the columns, e.g. "image,score,...").
 *             A result matches a label by its path as written (after normalisation),
 *             else by the longest tail of its path that is a label's path, else by
 *             file name when that name is unique among both the labels and the results;
 *             a label claimed by several results that way is left out. SRCC = Pearson
 *             of average ranks, PLCC = Pearson of the raw scores (no logistic fit), KRCC
 *             = Kendall tau-b (O(n log n), ties handled), all in double precision.
 *             Fewer than 2 pairs or a constant side -> NaN.
 */
#ifndef QALIGN_EVALUATE_H
#define QALIGN_EVALUATE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>


/* ======================================================================================
 * 4. Evaluation */

/* NaN when n < 2 or one side is constant. */
double stats_plcc(const double *x, const double *y, size_t n);
double stats_srcc(const double *x, const double *y, size_t n);
double stats_krcc(const double *x, const double *y, size_t n); /* Kendall tau-b */
/* Average ranks (1-based; ties share their mean rank). */
int stats_rank(const double *x, size_t n, double *rank);

typedef struct Labels Labels;
Labels *labels_load(const char *path, char *err, size_t errlen);
void labels_free(Labels *l);
size_t labels_count(const Labels *l);
/* Lines that were left out (no path, or a MOS that is not a finite number); why gets the
 * first of them ("line 3: MOS 'good' is not a number"). */
size_t labels_skipped(const Labels *l, char *why, size_t whylen);

typedef struct {
    size_t n_results;       /* results offered (successful rows) */
    size_t n_labels;        /* labels in the file */
    size_t matched;         /* = by_path + by_suffix + by_name */
    size_t by_path;         /* the result's path is a label's path */
    size_t by_suffix;       /* a label's path is a tail of it at a '/' (label jp2k/img1.bmp,
                               result /data/live/jp2k/img1.bmp); the longest such tail */
    size_t by_name;         /* same file name, unique among the labels and among the results */
    size_t ambiguous;       /* left out: several labels or several results could pair up */
    double srcc, plcc, krcc;/* NaN when undefined */
} EvalResult;

/* Match results (path, score) to labels and compute the three coefficients. */
int eval_run(const Labels *l, const char *const *paths, const double *scores, size_t n,
             EvalResult *out, char *err, size_t errlen);
/* Two lines for a human, e.g. "eval: 98 of 100 results matched labels (…)\n
 * eval: SRCC 0.8123  PLCC 0.8345  KRCC 0.6234  (n = 98)". */
void eval_print(FILE *f, const EvalResult *r, const char *labels_path);

#endif
