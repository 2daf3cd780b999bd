/* test_api.c - qalign.h as an embedding program sees it (linked with libqalign.a; no
 * internals), driven by tests/test_library.py.
 *
 *   test_api MODEL IMAGE...
 *
 * Checks, one line each ("ok" / "FAIL"), exit status 1 if any failed:
 *   - scores are the same bits whether images go one call at a time, in one batch, through
 *     add/flush, or with another thread count;
 *   - several contexts on one model, each in its own thread, at the same time: the same
 *     bits as alone (the model is read-only; contexts share nothing);
 *   - a video given as frames equals the streaming calls;
 *   - every documented error: bad options, calls out of order, unusable images, a missing
 *     model file; each with its status and a message, none of them fatal. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "qalign.h"

static int n_pass, n_fail;

static void check(int ok, const char *what) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (ok) n_pass++;
    else n_fail++;
}

static const char *model_path;
static qalign_image imgs[16];
static int n_imgs;
static qalign_result alone[16];

static int same(const qalign_result *a, const qalign_result *b) {
    return a->status == b->status && a->n_levels == b->n_levels && !memcmp(a->logits, b->logits, sizeof a->logits) &&
           !memcmp(&a->score, &b->score, sizeof a->score);
}

typedef struct {
    const qalign_model *m;
    int threads, batch, ok;
} Job;

/* score every image in a context of its own, compare with `alone` */
static void *worker(void *arg) {
    Job *j = arg;
    char err[QALIGN_ERR_LEN];
    qalign_ctx *c;
    j->ok = 0;
    if (qalign_ctx_new(j->m, &(qalign_ctx_options){.threads = j->threads, .batch = j->batch}, &c, err, sizeof err)) return NULL;
    qalign_result r[16];
    int ok = 1;
    for (int rep = 0; rep < 2; rep++) {
        if (qalign_score_images(c, imgs, n_imgs, r, err, sizeof err)) ok = 0;
        for (int i = 0; i < n_imgs; i++) ok = ok && same(&r[i], &alone[i]);
    }
    qalign_ctx_free(c);
    j->ok = ok;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 2 + 16) {
        fprintf(stderr, "usage: test_api MODEL IMAGE...\n");
        return 2;
    }
    model_path = argv[1];
    char err[QALIGN_ERR_LEN];
    Image dec[16];
    n_imgs = argc - 2;
    for (int i = 0; i < n_imgs; i++) {
        if (image_load(argv[2 + i], &dec[i], err, sizeof err)) return fprintf(stderr, "%s\n", err), 2;
        imgs[i] = (qalign_image){dec[i].rgb, dec[i].w, dec[i].h};
    }
    qalign_model *m;
    if (qalign_open(model_path, NULL, &m, err, sizeof err)) return fprintf(stderr, "%s\n", err), 2;
    qalign_info info;
    qalign_describe(m, &info);
    printf("model %s: %s, id %s, kernels %s\n", info.path, info.weight_type, info.model_id, qalign_kernels());

    /* one image per call, batch 1, one thread: the reference for everything below */
    qalign_ctx *c;
    if (qalign_ctx_new(m, &(qalign_ctx_options){.threads = 1, .batch = 1}, &c, err, sizeof err))
        return fprintf(stderr, "%s\n", err), 2;
    int ok = 1;
    for (int i = 0; i < n_imgs; i++) ok &= qalign_score_images(c, &imgs[i], 1, &alone[i], err, sizeof err) == QALIGN_OK;
    for (int i = 0; i < n_imgs; i++) ok &= alone[i].status == QALIGN_OK && alone[i].n_levels == 5 && alone[i].frames == 1;
    check(ok, "each image alone: scored");
    printf("scores:");
    for (int i = 0; i < n_imgs; i++) printf(" %.4f", alone[i].score);
    printf("\n");
    qalign_ctx_free(c);

    /* a batch of all, and add/flush by hand, with the default thread count */
    qalign_result r[16];
    qalign_ctx_new(m, &(qalign_ctx_options){.batch = n_imgs}, &c, err, sizeof err);
    ok = qalign_score_images(c, imgs, n_imgs, r, err, sizeof err) == QALIGN_OK;
    for (int i = 0; i < n_imgs; i++) ok = ok && same(&r[i], &alone[i]);
    check(ok, "one batch of all, all threads: the same bits as alone");
    for (int i = 0; i < n_imgs; i++) ok = ok && qalign_add_image(c, &imgs[i], err, sizeof err) == QALIGN_OK;
    ok = ok && qalign_pending(c) == n_imgs && qalign_flush(c, r, err, sizeof err) == QALIGN_OK && qalign_pending(c) == 0;
    for (int i = 0; i < n_imgs; i++) ok = ok && same(&r[i], &alone[i]);
    check(ok, "add_image/flush: the same bits");
    /* calls out of order */
    check(qalign_video_end(c, r, err, sizeof err) == QALIGN_ERR_STATE && err[0], "video_end without a video: QALIGN_ERR_STATE");
    check(qalign_video_frame(c, &imgs[0], err, sizeof err) == QALIGN_ERR_STATE, "video_frame without a video: QALIGN_ERR_STATE");
    qalign_add_image(c, &imgs[0], err, sizeof err);
    check(qalign_video_begin(c, 2, err, sizeof err) == QALIGN_ERR_STATE, "video_begin with pending images: QALIGN_ERR_STATE");
    qalign_flush(c, r, err, sizeof err);
    /* unusable images */
    qalign_image bad = {imgs[0].rgb, 0, 5};
    check(qalign_add_image(c, &bad, err, sizeof err) == QALIGN_ERR_INPUT && qalign_pending(c) == 0,
          "a 0x5 image: QALIGN_ERR_INPUT, nothing added");
    qalign_image none = {NULL, 4, 4};
    check(qalign_add_image(c, &none, err, sizeof err) == QALIGN_ERR_ARG, "no pixels: QALIGN_ERR_ARG");
    qalign_image mixed[3] = {imgs[0], bad, imgs[n_imgs - 1]};
    ok = qalign_score_images(c, mixed, 3, r, err, sizeof err) == QALIGN_OK;
    check(ok && same(&r[0], &alone[0]) && r[1].status == QALIGN_ERR_INPUT && r[1].error[0] && same(&r[2], &alone[n_imgs - 1]),
          "score_images with a bad image in the middle: its own error, the others as alone");
    qalign_ctx_free(c);

    /* a video: the whole-array call and the streaming calls agree */
    qalign_result v1, v2;
    qalign_ctx_new(m, NULL, &c, err, sizeof err);
    ok = qalign_score_video(c, imgs, n_imgs, &v1, err, sizeof err) == QALIGN_OK && v1.status == QALIGN_OK &&
         v1.frames == n_imgs;
    ok = ok && qalign_video_begin(c, n_imgs, err, sizeof err) == QALIGN_OK;
    for (int i = 0; i < n_imgs; i++) ok = ok && qalign_video_frame(c, &imgs[i], err, sizeof err) == QALIGN_OK;
    check(qalign_video_frame(c, &imgs[0], err, sizeof err) == QALIGN_ERR_STATE, "one frame too many: QALIGN_ERR_STATE");
    ok = ok && qalign_video_end(c, &v2, err, sizeof err) == QALIGN_OK;
    check(ok && same(&v1, &v2), "a video: score_video = video_begin/frame/end");
    check(qalign_score_video(c, mixed, 3, &v1, err, sizeof err) == QALIGN_OK && v1.status == QALIGN_ERR_INPUT &&
              strncmp(v1.error, "frame 1: ", 9) == 0,
          "a video with an unusable frame: its error names the frame");
    qalign_timings t;
    qalign_ctx_timings(c, &t);
    check(t.vision > 0 && t.abstractor > 0 && t.decoder > 0 && t.preprocess >= 0, "timings are counted");
    qalign_ctx_free(c);

    /* several contexts on one model, each in its own thread, at once */
    pthread_t th[3];
    Job jobs[3] = {{m, 1, 1, 0}, {m, 2, 3, 0}, {m, 1, 8, 0}};
    for (int i = 0; i < 3; i++) pthread_create(&th[i], NULL, worker, &jobs[i]);
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    check(jobs[0].ok && jobs[1].ok && jobs[2].ok, "3 contexts on one model in 3 threads at once: the same bits as alone");

    /* bad options: each refused with its status and a message naming it */
    struct { qalign_ctx_options o; int want; const char *word; } bads[] = {
        {{.task = "beauty"}, QALIGN_ERR_ARG, "task"},
        {{.batch = 65}, QALIGN_ERR_ARG, "batch"},
        {{.threads = -1}, QALIGN_ERR_ARG, "threads"},
        {{.prompt = "no marker"}, QALIGN_ERR_ARG, "<|image|>"},
        {{.prompt = "<|image|><|image|><|image|><|image|><|image|><|image|><|image|><|image|><|image|>"}, QALIGN_ERR_ARG,
         "1 to 8 times"},
        {{.levels = "good=1"}, QALIGN_ERR_ARG, "two words"},
        {{.levels = "good=1,good=0"}, QALIGN_ERR_ARG, "same token"},
        {{.levels = "good=x,bad=0"}, QALIGN_ERR_ARG, "not a number"},
        {{.levels = "good|high=1,poor|good=0"}, QALIGN_ERR_ARG, "same token"},
        {{.preset = "two-align"}, QALIGN_ERR_ARG, "one-align"},
        {{.prompt = "iaa_eval"}, QALIGN_ERR_ARG, "iaa-eval"},
        {{.preset = "deqa", .task = "aesthetics"}, QALIGN_ERR_ARG, "quality only"},
        {{.preset = "compare2score", .anchors = imgs, .n_anchors = 4}, QALIGN_ERR_ARG, "5 anchor images"},
        {{.anchors = imgs, .n_anchors = 5}, QALIGN_ERR_ARG, "two <|image|>"},
        {{.temperature = -1}, QALIGN_ERR_ARG, "temperature"},
    };
    ok = 1;
    for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
        err[0] = 0;
        qalign_ctx *x = (qalign_ctx *)1;
        int st = qalign_ctx_new(m, &bads[i].o, &x, err, sizeof err);
        if (st != bads[i].want || x != NULL || !strstr(err, bads[i].word)) {
            printf("  option %zu: status %d, message '%s'\n", i, st, err);
            ok = 0;
        }
    }
    check(ok, "15 bad options: QALIGN_ERR_ARG, each message names what is wrong");

    /* a prompt of two images: scored as one prompt; images one by one need it once */
    qalign_ctx *two;
    qalign_result tr;
    ok = qalign_ctx_new(m, &(qalign_ctx_options){.prompt = "USER: <|image|> then <|image|>\nASSISTANT: The quality is"}, &two,
                        err, sizeof err) == QALIGN_OK;
    ok = ok && qalign_add_image(two, &imgs[0], err, sizeof err) == QALIGN_ERR_ARG && strstr(err, "exactly once");
    ok = ok && qalign_score_images(two, imgs, 1, &tr, err, sizeof err) == QALIGN_ERR_ARG;
    ok = ok && qalign_score_prompt(two, imgs, 1, &tr, err, sizeof err) == QALIGN_ERR_ARG && strstr(err, "2 <|image|>");
    ok = ok && qalign_score_prompt(two, imgs, 2, &tr, err, sizeof err) == QALIGN_OK && tr.status == QALIGN_OK &&
         tr.frames == 2 && tr.n_levels == 5;
    qalign_ctx_free(two);
    check(ok, "a prompt with two <|image|>: qalign_score_prompt scores it; one-by-one calls refuse it (QALIGN_ERR_ARG)");

    /* per-frame results equal the frames scored as images */
    qalign_ctx *pf = NULL;
    qalign_result vres, fres[3], ires[3];
    ok = n_imgs >= 3 && qalign_ctx_new(m, NULL, &pf, err, sizeof err) == QALIGN_OK;
    ok = ok && qalign_video_begin(pf, 3, err, sizeof err) == QALIGN_OK;
    for (int i = 0; ok && i < 3; i++) ok = qalign_video_frame(pf, &imgs[i], err, sizeof err) == QALIGN_OK;
    ok = ok && qalign_video_end_frames(pf, &vres, fres, err, sizeof err) == QALIGN_OK && vres.frames == 3;
    ok = ok && qalign_score_images(pf, imgs, 3, ires, err, sizeof err) == QALIGN_OK;
    for (int i = 0; ok && i < 3; i++) ok = same(&fres[i], &ires[i]) && fres[i].frames == 1;
    qalign_ctx_free(pf);
    check(ok, "qalign_video_end_frames: each frame's result is the same bits as the frame scored as an image");
    qalign_ctx *lv;
    ok = qalign_ctx_new(m, &(qalign_ctx_options){.levels = " good = 1 , poor=0 "}, &lv, err, sizeof err) == QALIGN_OK;
    const char *words[QALIGN_MAX_LEVELS];
    float w[QALIGN_MAX_LEVELS], lo, hi;
    ok = ok && qalign_ctx_levels(lv, words, w, &lo, &hi) == 2 && !strcmp(words[0], "good") && !strcmp(words[1], "poor") &&
         w[0] == 1 && w[1] == 0 && lo == 0 && hi == 1;
    check(ok, "levels with blanks around words and numbers: good=1, poor=0");
    qalign_ctx_info ci;
    qalign_ctx_describe(lv, &ci);
    check(!strcmp(ci.levels, "good=1,poor=0") && ci.pad == 1 && ci.precise == 0 && strstr(ci.prompt, "<|image|>"),
          "qalign_ctx_describe: the levels as read, blanks trimmed (good=1,poor=0), padding, the prompt template");
    qalign_ctx_free(lv);
    ok = qalign_ctx_new(m, &(qalign_ctx_options){.levels = "good|fine = 1,bad=0.5", .temperature = 100, .no_pad = 1,
                                                 .prompt = "USER: <|image|>\nrate {task}"},
                        &lv, err, sizeof err) == QALIGN_OK;
    if (ok) qalign_ctx_describe(lv, &ci);
    check(ok && !strcmp(ci.levels, "good|fine=1,bad=0.5 /100") && ci.pad == 0 && !strcmp(ci.prompt, "USER: <|image|>\nrate {task}"),
          "qalign_ctx_describe: synonyms, a temperature, no padding, the given template");
    qalign_ctx_free(lv);
    ok = qalign_ctx_new(m, &(qalign_ctx_options){.preset = "q-align"}, &lv, err, sizeof err) == QALIGN_OK;
    if (ok) qalign_ctx_describe(lv, &ci);
    check(ok && !strcmp(ci.levels, "excellent=1,good=0.75,fair=0.5,poor=0.25,bad=0") && strstr(ci.prompt, "<|image|>"),
          "qalign_ctx_describe: a preset's own levels and prompt");
    qalign_ctx_free(lv);

    /* the model file */
    qalign_model *none_m = (qalign_model *)1;
    check(qalign_open("/nonexistent/model.qalign", NULL, &none_m, err, sizeof err) == QALIGN_ERR_IO && none_m == NULL &&
              strstr(err, "/nonexistent/model.qalign"),
          "a missing model: QALIGN_ERR_IO, the message names the file");
    check(qalign_open(argv[2], NULL, &none_m, err, sizeof err) == QALIGN_ERR_FORMAT && strstr(err, "export.py"),
          "an image given as the model: QALIGN_ERR_FORMAT, says to re-run export.py");
    check(!strcmp(qalign_status_name(QALIGN_ERR_STATE), "call out of order"), "status names");
    qalign_close(NULL);
    qalign_ctx_free(NULL);

    qalign_close(m);
    for (int i = 0; i < n_imgs; i++) image_free(&dec[i]);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
