/* fuzz_model.c - libFuzzer harness for the model loader (qalign_open: the header, the tensor
 * table, the tensors' types and shapes, the tokenizer tensors) and, for a file it accepts,
 * for the model it makes.
 *
 *   make fuzz            (builds build/fuzz_model, runs it on build/corpus/fuzz_model: micro
 *                         models of each weight type that tests/test_fuzz.py exports)
 *
 * The input is written to an in-memory file and opened by path, mapped and (for odd first
 * bytes of the tensor data) read into memory. Whatever the bytes, qalign_open either fails
 * with a one-line message or gives a model that: describes itself, tokenizes, makes a
 * context, and scores a small image to a result that is finite, or has status
 * QALIGN_ERR_NUMERIC with its message (never a "success" holding a NaN). Crashes, sanitizer
 * reports and leaks are bugs; the harness traps when the library breaks its contract. Only
 * qalign.h is used.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "qalign.h"

/* the contract broken, said before the trap (libFuzzer then keeps the input) */
#define BROKEN(why) (fprintf(stderr, "fuzz_model: %s\n", why), __builtin_trap())

static void check_message(const char *err) {
    size_t L = strlen(err);
    if (L == 0 || L >= QALIGN_ERR_LEN - 1 || strchr(err, '\n')) BROKEN("an error message that is empty, too long or not one line");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz_model", 0);
        if (fd < 0) abort();
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) abort();

    char err[QALIGN_ERR_LEN];
    qalign_model *m = NULL;
    qalign_open_options opt = {.no_mmap = size > 2000 && (data[2000] & 1)};
    err[0] = 0;
    if (qalign_open(path, &opt, &m, err, sizeof err) != QALIGN_OK) {
        if (m) BROKEN("a failed open returned a model");
        check_message(err);
        return 0;
    }
    qalign_info info;
    qalign_describe(m, &info);
    if (strlen(info.model_id) != 16 || info.file_bytes != size) BROKEN("qalign_describe: id or size");
    if (!(info.l_eps > 0) || !(info.l_rope_theta >= 1) || !isfinite(info.v_eps)) BROKEN("a model with eps <= 0, rope theta < 1 or a non-finite eps was accepted"); /* validated at load */
    int ids[64];
    int n = qalign_tokenize(m, "How would you rate the quality of this image?", 1, ids, 64);
    if (n < 1) BROKEN("tokenize gave no ids");
    for (int i = 0; i < n && i < 64; i++)
        if (ids[i] < 0 || ids[i] >= info.l_vocab) BROKEN("tokenize gave an id outside the vocabulary");

    /* a small model scores an image; a large one (from a mutated header) only opens */
    if ((uint64_t)info.v_image * info.v_image <= 64 * 64 && info.l_dim <= 256 && info.v_dim <= 256) {
        qalign_ctx *c = NULL;
        qalign_ctx_options co = {.threads = 1, .batch = 1};
        err[0] = 0;
        if (qalign_ctx_new(m, &co, &c, err, sizeof err) != QALIGN_OK) {
            check_message(err);
        } else {
            uint8_t rgb[5 * 3 * 3];
            for (size_t i = 0; i < sizeof rgb; i++) rgb[i] = (uint8_t)(data[i % size] + i * 37);
            qalign_image img = {rgb, 5, 3};
            qalign_result r;
            err[0] = 0;
            if (qalign_score_images(c, &img, 1, &r, err, sizeof err) != QALIGN_OK) check_message(err);
            else if (r.status == QALIGN_OK) {
                if (!isfinite(r.score) || !isfinite(r.std) || r.n_levels != 5) BROKEN("a result with status OK has a score that is not finite");
                for (int i = 0; i < r.n_levels; i++)
                    if (!isfinite(r.probs[i]) || !isfinite(r.logits[i])) BROKEN("a result with status OK has a probability or logit that is not finite");
            } else {
                check_message(r.error);
            }
            qalign_ctx_free(c);
        }
    }
    qalign_close(m);
    return 0;
}
