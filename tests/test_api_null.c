/* test_api_null.c - every entry point of qalign.h with NULL where a pointer is expected
 * (linked with libqalign.a only, as an embedding program), driven by tests/test_harden3.py.
 *
 *   test_api_null MODEL
 *
 * Each call must return QALIGN_ERR_ARG with a message naming what is missing (or, for the
 * functions without a status, do nothing / return 0), never crash. One line per check
 * ("ok" / "FAIL"); exit status 1 if any failed. tests/test_harden3.py checks that every
 * function qalign.h declares is called here. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "qalign.h"

static int n_pass, n_fail;

static void check(int ok, const char *what) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (ok) n_pass++;
    else n_fail++;
}

static char err[QALIGN_ERR_LEN];

/* st is QALIGN_ERR_ARG and err names `needle` */
static void arg_error(int st, const char *needle, const char *what) {
    char line[700];
    snprintf(line, sizeof line, "%s -> %s: %s", what, qalign_status_name(st), err);
    check(st == QALIGN_ERR_ARG && strstr(err, needle) != NULL, line);
    err[0] = 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test_api_null MODEL\n");
        return 2;
    }
    qalign_model *m = NULL;
    qalign_ctx *c = NULL;
    uint8_t px[3 * 4] = {0};
    qalign_image img = {px, 2, 2};
    qalign_result r, rs[4];
    qalign_info info;
    qalign_ctx_info ci;
    qalign_timings t;

    /* the model */
    arg_error(qalign_open(argv[1], NULL, NULL, err, sizeof err), "out", "qalign_open(path, NULL, NULL)");
    arg_error(qalign_open(NULL, NULL, &m, err, sizeof err), "model path", "qalign_open(NULL, ...)");
    check(qalign_open(argv[1], NULL, &m, NULL, 0) == QALIGN_OK && m, "qalign_open(path, NULL, &m, NULL err)");
    if (!m) return 1;
    memset(&info, 0xAB, sizeof info);
    qalign_describe(NULL, &info);
    check(info.path == NULL && info.n_tensors == 0, "qalign_describe(NULL, &info) zeroes info");
    qalign_describe(m, NULL);
    check(1, "qalign_describe(m, NULL)");
    check(qalign_tokenize(NULL, "x", 1, NULL, 0) == -1 && qalign_tokenize(m, NULL, 1, NULL, 0) == -1,
          "qalign_tokenize(NULL model / NULL text) = -1");
    check(qalign_verify(NULL, err, sizeof err) == QALIGN_ERR_ARG && strstr(err, "model"), "qalign_verify(NULL)");
    check(qalign_checksums(NULL) == 0, "qalign_checksums(NULL) = 0");
    check(qalign_presets(NULL) != NULL && qalign_prompts(NULL) != NULL && qalign_preset_find(NULL) == NULL,
          "qalign_presets(NULL), qalign_prompts(NULL), qalign_preset_find(NULL)");
    check(qalign_tasks(NULL) != NULL && !strcmp(qalign_tasks(NULL)[0], "quality") && qalign_scales(NULL) != NULL &&
              !strcmp(qalign_scales(NULL)[0].name, "1-5") && qalign_scale_find(NULL) == NULL,
          "qalign_tasks(NULL), qalign_scales(NULL), qalign_scale_find(NULL)");
    check(qalign_kernels() != NULL && qalign_kernels_why() != NULL && strcmp(qalign_status_name(-1), "unknown status") == 0, "qalign_kernels, qalign_kernels_why, qalign_status_name(-1)");
    qalign_close(NULL);
    qalign_ctx_free(NULL);
    check(1, "qalign_close(NULL), qalign_ctx_free(NULL)");

    /* contexts */
    arg_error(qalign_ctx_new(m, NULL, NULL, err, sizeof err), "out", "qalign_ctx_new(m, NULL, NULL)");
    arg_error(qalign_ctx_new(NULL, NULL, &c, err, sizeof err), "model", "qalign_ctx_new(NULL, ...)");
    arg_error(qalign_ctx_new(m, &(qalign_ctx_options){.temperature = NAN}, &c, err, sizeof err), "temperature",
              "qalign_ctx_new(temperature = NAN)");
    arg_error(qalign_ctx_new(m, &(qalign_ctx_options){.temperature = INFINITY}, &c, err, sizeof err), "temperature",
              "qalign_ctx_new(temperature = inf)");
    arg_error(qalign_ctx_new(m, &(qalign_ctx_options){.n_anchors = 5}, &c, err, sizeof err), "anchors",
              "qalign_ctx_new(n_anchors 5, anchors NULL)");
    check(qalign_ctx_new(m, NULL, &c, err, sizeof err) == QALIGN_OK && c, "qalign_ctx_new(m, NULL options)");
    if (!c) return 1;
    const char *words[QALIGN_MAX_LEVELS];
    float lo = -7, hi = -7;
    check(qalign_ctx_levels(NULL, words, NULL, &lo, &hi) == 0 && lo == -7, "qalign_ctx_levels(NULL) = 0");
    check(qalign_ctx_levels(c, NULL, NULL, NULL, NULL) == 5, "qalign_ctx_levels(c, NULL...) = 5");
    memset(&ci, 0xAB, sizeof ci);
    qalign_ctx_describe(NULL, &ci);
    check(ci.prompt == NULL && ci.levels == NULL, "qalign_ctx_describe(NULL, &info) zeroes it");
    qalign_ctx_describe(c, NULL);
    check(qalign_ctx_notes(NULL) == NULL && qalign_ctx_notes(c) == NULL, "qalign_ctx_notes(NULL), (c) = NULL");
    check(qalign_ctx_batch(NULL) == 0 && qalign_ctx_threads(NULL) == 0 && qalign_ctx_bytes(NULL) == 0 &&
          qalign_pending(NULL) == 0, "qalign_ctx_batch/threads/bytes, qalign_pending (NULL) = 0");
    memset(&t, 0xAB, sizeof t);
    qalign_ctx_timings(NULL, &t);
    check(t.decoder == 0, "qalign_ctx_timings(NULL, &t) zeroes t");
    qalign_ctx_timings(c, NULL);
    qalign_ctx_set_stage_hook(NULL, NULL, NULL);
    qalign_video_cancel(NULL);
    check(1, "qalign_ctx_timings(c, NULL), qalign_ctx_set_stage_hook(NULL), qalign_video_cancel(NULL)");

    /* scoring */
    arg_error(qalign_score_images(NULL, &img, 1, &r, err, sizeof err), "context", "qalign_score_images(NULL, ...)");
    arg_error(qalign_score_images(c, NULL, 1, &r, err, sizeof err), "image", "qalign_score_images(c, NULL, 1)");
    arg_error(qalign_score_images(c, &img, 1, NULL, err, sizeof err), "image", "qalign_score_images(c, img, 1, NULL)");
    arg_error(qalign_score_prompt(NULL, &img, 1, &r, err, sizeof err), "context", "qalign_score_prompt(NULL, ...)");
    arg_error(qalign_score_prompt(c, NULL, 1, &r, err, sizeof err), "image", "qalign_score_prompt(c, NULL, ...)");
    arg_error(qalign_score_prompt(c, &img, 1, NULL, err, sizeof err), "image", "qalign_score_prompt(c, img, 1, NULL)");
    arg_error(qalign_score_video(NULL, &img, 1, &r, err, sizeof err), "context", "qalign_score_video(NULL, ...)");
    arg_error(qalign_score_video(c, NULL, 1, &r, err, sizeof err), "frame", "qalign_score_video(c, NULL, ...)");
    arg_error(qalign_score_video(c, &img, 1, NULL, err, sizeof err), "frame", "qalign_score_video(c, img, 1, NULL)");
    arg_error(qalign_add_image(NULL, &img, err, sizeof err), "context", "qalign_add_image(NULL, img)");
    arg_error(qalign_add_image(c, NULL, err, sizeof err), "image", "qalign_add_image(c, NULL)");
    arg_error(qalign_add_image(c, &(qalign_image){NULL, 2, 2}, err, sizeof err), "image", "qalign_add_image(c, rgb NULL)");
    arg_error(qalign_flush(NULL, rs, err, sizeof err), "context", "qalign_flush(NULL, ...)");
    check(qalign_add_image(c, &img, err, sizeof err) == QALIGN_OK, "qalign_add_image(c, img)");
    arg_error(qalign_flush(c, NULL, err, sizeof err), "result", "qalign_flush(c, NULL) with an image pending");
    check(qalign_flush(c, rs, err, sizeof err) == QALIGN_OK && rs[0].status == QALIGN_OK, "qalign_flush(c, rs) after");
    arg_error(qalign_video_begin(NULL, 1, err, sizeof err), "context", "qalign_video_begin(NULL, 1)");
    arg_error(qalign_video_frame(NULL, &img, err, sizeof err), "context", "qalign_video_frame(NULL, img)");
    arg_error(qalign_video_end(NULL, &r, err, sizeof err), "context", "qalign_video_end(NULL, ...)");
    arg_error(qalign_video_end_frames(NULL, &r, rs, err, sizeof err), "context", "qalign_video_end_frames(NULL, ...)");
    check(qalign_video_begin(c, 1, err, sizeof err) == QALIGN_OK, "qalign_video_begin(c, 1)");
    arg_error(qalign_video_frame(c, NULL, err, sizeof err), "image", "qalign_video_frame(c, NULL)");
    check(qalign_video_frame(c, &img, err, sizeof err) == QALIGN_OK, "qalign_video_frame(c, img)");
    arg_error(qalign_video_end(c, NULL, err, sizeof err), "result", "qalign_video_end(c, NULL)");
    check(qalign_video_end(c, &r, NULL, 0) == QALIGN_OK && r.status == QALIGN_OK, "qalign_video_end(c, &r, NULL err)");
    /* answers in words */
    {
        qalign_answer a;
        qalign_ask_item it = {&img, NULL, NULL};
        int np = -1;
        char tb[256];
        arg_error(qalign_ask_images(NULL, &img, 1, "q?", NULL, &a, err, sizeof err), "context", "qalign_ask_images(NULL ctx)");
        arg_error(qalign_ask_images(c, NULL, 1, "q?", NULL, &a, err, sizeof err), "image", "qalign_ask_images(NULL images)");
        arg_error(qalign_ask_images(c, &img, 1, NULL, NULL, &a, err, sizeof err), "question", "qalign_ask_images(NULL question)");
        arg_error(qalign_ask_prompt(NULL, &img, 1, "q?", NULL, &a, err, sizeof err), "context", "qalign_ask_prompt(NULL ctx)");
        arg_error(qalign_ask_prompt(c, &img, 1, "q?", NULL, NULL, err, sizeof err), "image", "qalign_ask_prompt(NULL out)");
        arg_error(qalign_ask_batch(NULL, &it, 1, &a, err, sizeof err), "item", "qalign_ask_batch(NULL ctx)");
        arg_error(qalign_ask_batch(c, NULL, 1, &a, err, sizeof err), "item", "qalign_ask_batch(NULL items)");
        qalign_answer_free(NULL);
        check(1, "qalign_answer_free(NULL)");
        check(qalign_ask_prompts(NULL) != NULL && qalign_ask_prompts(&np) != NULL && np > 0, "qalign_ask_prompts(NULL)");
        check(qalign_ask_template(NULL, 1, NULL, 100) == -2 && qalign_ask_template(NULL, 1, tb, sizeof tb) > 0,
              "qalign_ask_template(NULL out) = -2, (NULL prompt) = the default");
        check(qalign_kv_bytes_per_token(NULL) == 0, "qalign_kv_bytes_per_token(NULL) = 0");
        check(qalign_detokenize(NULL, NULL, 0, tb, sizeof tb) == -1, "qalign_detokenize(NULL model) = -1");
    }
    qalign_ctx_free(c);
    qalign_close(m);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
