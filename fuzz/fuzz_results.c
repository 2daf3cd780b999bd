/* fuzz_results.c - libFuzzer harness for the result-file reader that --resume relies on
 * (results.c: results_parse for CSV and JSONL, the RowSet and its lookups) and for the writer.
 *
 *   make fuzz            (builds build/fuzz_results, runs it on build/corpus/fuzz_results:
 *                         CSV and JSONL files that tests/test_fuzz.py makes with qalign)
 *
 * The input is read as a CSV of scores, a CSV of answers (--ask) and a JSONL results file. Every row the reader returns is
 * written back by the one writer (results_format_row) in both formats, and each of those
 * lines must read back as exactly one row with the same path, task, error, setup and score:
 * what qalign writes, it can resume from. A row read as a success has a finite score.
 * Crashes, sanitizer reports and leaks are bugs; the harness traps when the round trip or
 * the error contract fails.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"

/* the contract broken, said before the trap (libFuzzer then keeps the input) */
#define BROKEN(why) (fprintf(stderr, "fuzz_results: %s\n", why), __builtin_trap())

static int same(const char *a, const char *b) { return strcmp(a ? a : "", b ? b : "") == 0; }

/* A row with a score: a scoring row, or an answer with --score */
static int has_score(const ResultRow *r) { return !r->question || r->scored; }

static void roundtrip(const ResultRow *r) {
    for (int f = 0; f < 2; f++) {
        ResultsFormat fmt = f ? RESULTS_JSONL : r->question ? RESULTS_CSV_ANSWERS : RESULTS_CSV;
        char *line = results_format_row(fmt, r);
        if (!line) abort(); /* out of memory */
        const char *header = fmt == RESULTS_CSV ? results_csv_header() : fmt == RESULTS_CSV_ANSWERS ? results_answer_csv_header() : "";
        size_t hl = strlen(header), ll = strlen(line);
        char *text = malloc(hl + ll + 1);
        if (!text) abort();
        memcpy(text, header, hl);
        memcpy(text + hl, line, ll + 1);
        RowSet *s = rowset_new();
        int torn = -1;
        size_t bad = 99;
        char err[256];
        if (!s || results_parse(text, hl + ll, fmt, s, &torn, &bad, err, sizeof err) != 0) BROKEN("a written row is not a results file");
        if (rowset_count(s) != 1 || torn || bad) BROKEN("a written row does not read back as one row");
        const ResultRow *b = rowset_row(s, 0);
        if (!same(b->path, r->path) || (has_score(r) && !same(b->task, r->task)) || !same(b->kind, r->kind) ||
            b->frames != r->frames || !b->question != !r->question || !same(b->question, r->question) ||
            (r->question && r->setup.model && !same(b->decoding, r->decoding)) ||
            !same(b->error, r->error) || !same(b->setup.model, r->setup.model) ||
            !same(b->setup.prompt, r->setup.prompt) || (has_score(r) && !same(b->setup.levels, r->setup.levels)) ||
            (r->setup.model && (b->setup.pad != r->setup.pad || b->setup.precise != r->setup.precise)) ||
            b->max_frames != r->max_frames)
            BROKEN("a written row reads back with another path, task, kind, frames, error or setup");
        if (!(r->error && r->error[0]) && has_score(r) && !(fabs(b->score - r->score) <= 1e-6 && (isnan(r->std) ? isnan(b->std) : fabs(b->std - r->std) <= 1e-6)))
            BROKEN("a written row reads back with another score or std");
        if (!rowset_find(s, r->path, r->question ? NULL : r->task) || rowset_find_like(s, b) != (b->setup.model ? b : NULL)) BROKEN("a row read back is not found by its path or its setup");
        rowset_free(s);
        free(text);
        free(line);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (int f = 0; f < 3; f++) {
        ResultsFormat fmt = f == 0 ? RESULTS_CSV : f == 1 ? RESULTS_JSONL : RESULTS_CSV_ANSWERS;
        RowSet *s = rowset_new();
        if (!s) abort();
        int torn = -1;
        size_t bad = 0;
        char err[256] = "";
        if (results_parse((const char *)data, size, fmt, s, &torn, &bad, err, sizeof err) != 0) {
            if (!err[0] || strchr(err, '\n')) BROKEN("an error message that is empty or not one line");
        } else {
            if (torn != 0 && torn != 1) BROKEN("torn is not 0 or 1");
            for (size_t i = 0; i < rowset_count(s); i++) {
                const ResultRow *r = rowset_row(s, i);
                if (!r->path || !r->path[0]) BROKEN("a row without a path");
                if (!(r->error && r->error[0]) && has_score(r) && !(isfinite(r->score) && !isinf(r->std))) BROKEN("a row read as a success has a score that is not finite (std: NaN = no spread)");
                const ResultRow *last = rowset_find(s, r->path, r->question ? NULL : r->task);
                if (!last || !same(last->path, r->path)) BROKEN("a row is not found by its path");
                roundtrip(r);
            }
        }
        rowset_free(s);
    }
    return 0;
}
