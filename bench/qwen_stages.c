/* bench/qwen_stages.c - seconds per stage of a Qwen3.5 forward pass (qwen35.c), one image.
 *
 *   build/qwen_stages MODEL WIDTH HEIGHT [REPEATS] [precise] [recurrent] [cpu]
 *
 * The image size goes through smart_resize with the model's min/max pixels (as the CLI's
 * preprocessing does), the patch rows are random, the prompt is the hf form's length (the
 * chat template's 4 tokens, the image's visual tokens, vision_end, 30 text tokens). Runs the
 * forward REPEATS times (default 3) and prints the fastest run as one line of key=value:
 * visual tokens, decoder rows, then seconds per stage (QwenState.sec). White-box: it
 * includes qalign.c, as tests/test_qwen.c does.
 * cpu: the stages timed in CPU seconds of the process (all its threads; run it with
 * OMP_WAIT_POLICY=passive so that waiting threads do not count), not wall seconds: on a
 * machine shared with other work the figures then say what the stage costs, not what it got. */
#ifndef TESTING
#define TESTING
#endif
#define _DEFAULT_SOURCE 1 /* as qalign.c (kernels.c's syscall()), before the first system header */
#define now_seconds now_seconds_wall
#include "../common.h"
#undef now_seconds
static int stage_cpu_clock; /* the cpu option */
static double now_seconds(void) {
    if (!stage_cpu_clock) return now_seconds_wall();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
#include "../qalign.c"
#include "../kernels.c"

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: qwen_stages MODEL WIDTH HEIGHT [REPEATS] [precise] [recurrent]\n");
        return 2;
    }
    int w = atoi(argv[2]), h = atoi(argv[3]), reps = argc > 4 ? atoi(argv[4]) : 3;
    int precise = 0, recurrent = 0;
    for (int i = 5; i < argc; i++) {
        if (!strcmp(argv[i], "precise")) precise = 1;
        else if (!strcmp(argv[i], "recurrent")) recurrent = 1; /* the delta rule as written (qwen_gdn_recurrent) */
        else if (!strcmp(argv[i], "cpu")) stage_cpu_clock = 1;
        else {
            fprintf(stderr, "qwen_stages: unknown option %s (precise, recurrent, cpu)\n", argv[i]);
            return 2;
        }
    }
    if (w <= 0 || h <= 0 || reps <= 0) {
        fprintf(stderr, "qwen_stages: bad size or repeat count\n");
        return 2;
    }
    char err[QALIGN_ERR_LEN];
    qalign_open_options oo;
    memset(&oo, 0, sizeof oo);
    oo.no_prefetch = 1;
    qalign_model *m;
    if (qalign_open(argv[1], &oo, &m, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (!m->qwen) {
        fprintf(stderr, "qwen_stages: %s is not a Qwen3.5 model\n", argv[1]);
        return 1;
    }
    const Qwen35 *q = m->qwen;
    const QwenConfig *c = &q->c;
    int oh, ow, f = c->v_patch * c->v_merge;
    if (qwen_smart_resize(h, w, f, c->min_pixels, c->max_pixels, &oh, &ow, err, sizeof err)) {
        fprintf(stderr, "qwen_stages: %s\n", err);
        return 1;
    }
    int grid[1][2] = {{oh / c->v_patch, ow / c->v_patch}}, N = grid[0][0] * grid[0][1], tokens = N / 4;
    int S = 4 + tokens + 1 + 30;
    int *ids = malloc((size_t)S * sizeof *ids);
    float *px = malloc((size_t)N * c->v_in * sizeof *px);
    if (!ids || !px) return 1;
    int pre[4] = {248045, 846, 198, c->vision_start}, i = 0;
    for (int k = 0; k < 4; k++) ids[i++] = pre[k];
    for (int k = 0; k < tokens; k++) ids[i++] = c->image_token;
    ids[i++] = c->vision_end;
    for (int k = 0; k < 30; k++) ids[i++] = 1000 + k;
    uint32_t r = 12345;
    for (size_t k = 0; k < (size_t)N * c->v_in; k++) {
        r = r * 1664525u + 1013904223u;
        px[k] = (float)(r >> 8) / 8388608.0f - 1.0f;
    }
    int lv[5] = {1000, 2000, 3000, 4000, 5000};
    QwenState s;
    memset(&s, 0, sizeof s);
    s.gdn_recurrent = recurrent;
#ifdef _OPENMP
    int n_threads = omp_get_max_threads();
#else
    int n_threads = 1;
#endif
    if (qwen_state_alloc(&s, c, N, S, n_threads, precise)) {
        fprintf(stderr, "qwen_stages: out of memory\n");
        return 1;
    }
    double best = 1e30, best_cpu = 0, sec[QS_COUNT] = {0};
    float logits[5];
    const float *patches[1] = {px};
    for (int k = 0; k < reps; k++) {
        memset(s.sec, 0, sizeof s.sec);
        double t0 = now_seconds_wall(), c0 = (double)clock() / CLOCKS_PER_SEC;
        if (qwen_forward(q, &s, ids, S, patches, (const int(*)[2])grid, 1, lv, 5, logits, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        double t = now_seconds_wall() - t0;
        if (t < best) best = t, best_cpu = (double)clock() / CLOCKS_PER_SEC - c0, memcpy(sec, s.sec, sizeof sec);
    }
    static const char *names[QS_COUNT] = {"patch_embed", "vit_attention", "vit_mlp", "merger",
                                          "gdn", "attention", "mlp", "lm_head"};
    printf("size=%dx%d resized=%dx%d visual_tokens=%d rows=%d threads=%d clock=%s", w, h, ow, oh, tokens, S, n_threads,
           stage_cpu_clock ? "cpu" : "wall");
    for (int k = 0; k < QS_COUNT; k++) printf(" %s=%.4f", names[k], sec[k]);
    printf(" vision=%.4f decoder=%.4f total=%.4f cpu=%.4f\n", sec[QS_PATCH] + sec[QS_VIT_ATT] + sec[QS_VIT_MLP] + sec[QS_MERGER],
           sec[QS_GDN] + sec[QS_ATT] + sec[QS_MLP] + sec[QS_HEAD], best, best_cpu);
    qwen_state_free(&s);
    qalign_close(m);
    free(ids), free(px);
    return 0;
}
