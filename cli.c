/* cli.c - the qalign command: what to score (files, directories, @lists, videos), the batch
 * loop, and where results go (stdout, result files, report, evaluation). main parses the
 * options (the table in options.c), checks which go together (check_options) and runs one
 * command: score (or --ask), --compare, --info / --tokenize, --verify, --listen / --stdio
 * (serve.c), --decode / --preprocess-only.
 *
 * The model is used through qalign.h only; app.h does inputs, videos, result files, the
 * report and the progress line; image.h decodes. This is the only place that exits:
 * usage and model errors end the program with one line on stderr and status 1 (2 for a
 * missing MODEL); an input that cannot be scored is an error line (and row), the others
 * are still scored, and the exit status is 1 if any failed. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "app.h"
#include "image.h"
#include "options.h"
#include "qalign.h"
#include "serve.h"

static void die(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2), noreturn))
#endif
    ;
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    fprintf(stderr, "qalign: error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(EXIT_FAILURE);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory (allocating %zu bytes)", n);
    return p;
}

/* s with newlines shown as \n, between quotes */
static void print_quoted(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '\n') fputs("\\n", f);
        else fputc(*s, f);
    }
    fputc('"', f);
}

/* --help: what qalign does, the option table section by section (options.c), the presets and
 * the named prompts. */
static void usage(FILE *f) {
    fprintf(f,
            "usage: qalign [options] MODEL INPUT...\n"
            "       qalign --compare MODEL_A MODEL_B [options] INPUT...\n"
            "Scores the quality or aesthetics of images and videos with a model of the Q-Align family\n"
            "(OneAlign, Q-Align, DeQA-Score, Q-Instruct, Compare2Score) exported by export.py. INPUT:\n"
            "image files (JPEG, PNG, BMP, PPM/PGM), videos (with ffmpeg on PATH), directories\n"
            "(recursive) or @LIST (a file of paths). One line per input: the score and the\n"
            "probabilities of the levels (excellent good fair poor bad with the default preset).\n"
            "\n");
    for (int sec = SEC_SCORING; sec <= SEC_COMMANDS; sec++) options_help(f, sec);
    fprintf(f, "\nINPUT lists: @LIST has one path per line, relative to the current directory; blanks\n"
               "around a line are trimmed; blank lines and lines starting with # are skipped. Outputs that\n"
               "are the same file as an input, the model, the labels or another output are refused.\n");
    fprintf(f, "\npresets (prompt, levels = word=weight, padding; where the original has them):\n");
    int n;
    const qalign_preset *pr = qalign_presets(&n);
    for (int i = 0; i < n; i++) {
        const qalign_named_prompt *np = NULL;
        int k, nk;
        const qalign_named_prompt *all = qalign_prompts(&nk);
        for (k = 0; k < nk; k++)
            if (!strcmp(all[k].name, pr[i].prompt)) np = &all[k];
        fprintf(f, "  %-17s %s\n", pr[i].name, pr[i].checkpoint);
        fprintf(f, "      prompt   %s: ", pr[i].prompt);
        print_quoted(f, np ? np->text : pr[i].prompt);
        fprintf(f, "\n      levels   %s%s\n", pr[i].levels,
                pr[i].temperature != 1.0f ? " (logits divided by 100 before the softmax)" : "");
        fprintf(f, "      image    %s; tasks: %s%s%s\n",
                !strncmp(pr[i].name, "q-realign", 9) ? "Qwen3.5 model files: smart_resize to multiples of 32"
                : pr[i].no_pad ? "no padding (resize, centre-crop)" : "expand2square",
                pr[i].tasks, pr[i].video ? "; videos" : "; images only",
                pr[i].n_anchors ? "; needs --anchors (5 images), score 0-100 from a maximum-likelihood fit" : "");
        fprintf(f, "      source   %s\n", pr[i].source);
    }
    int nk;
    const qalign_named_prompt *all = qalign_prompts(&nk);
    fprintf(f, "\nprompts by name (--prompt NAME; {task} and {input} are filled in):\n");
    for (int k = 0; k < nk; k++) {
        fprintf(f, "  %-14s ", all[k].name);
        print_quoted(f, all[k].text);
        fprintf(f, "\n                 %s\n", all[k].source);
    }
    fprintf(f, "The aesthetics prompt in the three ways the originals word it: -t aesthetics (Hugging Face\n"
               "score(), the default), -t aesthetic (pyiqa), --prompt iaa-eval -t aesthetics (Q-Align's\n"
               "iaa_eval.py: the image first).\n");
    options_help(f, SEC_SERVING);
}

/* --compare: one model's scores, by input */
typedef struct {
    char **path;
    double *score;
    int *ok;
    size_t n, cap;
} Collected;

typedef struct {
    Options o;
    qalign_model *m;
    qalign_ctx *ctx;
    RowStyle rs;            /* task, scale, levels, the score's own range: how results become rows (app.h) */
    Progress pg;
    Sink *sink;
    int dump_failed;        /* a --dump write failed */
    char dump_err[4200];
    int failures;           /* inputs that could not be scored */
    int batches;            /* decoder passes so far (for --timings) */
    const char *pending_path[QALIGN_MAX_BATCH]; /* the images waiting for the decoder */
    char pending_warn[QALIGN_MAX_BATCH][160];   /* their decoders' warnings ("" if none) */
    const char *row_warning;                    /* the warning of the row being recorded (NULL: none) */
    Image pending_thumb[QALIGN_MAX_BATCH];      /* their report thumbnails (if a report is written) */
    Collected *collect;     /* --compare: results go here instead of stdout and files */
    /* --ask */
    Image asked[QALIGN_MAX_BATCH]; /* images waiting for their answers (paths in pending_path) */
    int n_asked;
    int stream;             /* stdout is a terminal (and not --json): print answers as they come */
    int streamed;           /* some of the current answer is on stdout */
    char ask_template[1024];/* the question template for one image, as rows record it */
    char decoding[4096];    /* how answers are generated (and, with --score, how scored), as rows record it */
    int shard_i, shard_n;   /* --shard I/N */
} App;

/* ---- --dump: each stage of the computation as DIR/<name>.npy ---------------------------- */

static void npy_stage(void *user, const qalign_stage *st) {
    App *app = user;
    if (app->dump_failed) return;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", app->o.dump_dir, st->name);
    FILE *f = fopen(path, st->frame <= 0 ? "wb" : "ab"); /* later frames append to the array */
    if (!f) {
        snprintf(app->dump_err, sizeof app->dump_err, "cannot write %s: %s", path, strerror(errno));
        app->dump_failed = 1;
        return;
    }
    size_t elem = st->type == 'f' ? 4 : st->type == 'i' ? 8 : 1, n = 1;
    for (int i = st->frame >= 0 ? 1 : 0; i < st->ndim; i++) n *= (size_t)st->shape[i];
    if (st->frame <= 0) { /* the header, with the whole array's shape */
        char hdr[256], sh[160] = "";
        for (int i = 0; i < st->ndim; i++) {
            size_t used = strlen(sh);
            snprintf(sh + used, sizeof sh - used, "%lld,%s", (long long)st->shape[i], i + 1 < st->ndim ? " " : "");
        }
        if (st->ndim > 1) sh[strlen(sh) - 1] = 0; /* (3,) for 1-D, (1, 2, 3) otherwise */
        const char *descr = st->type == 'f' ? "<f4" : st->type == 'i' ? "<i8" : "|u1";
        int len = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, sh);
        int pad = (64 - (10 + len + 1) % 64) % 64; /* magic + version + length, header, '\n': a multiple of 64 */
        uint16_t hlen = (uint16_t)(len + pad + 1);
        uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(hlen & 255), (uint8_t)(hlen >> 8)};
        fwrite(pre, 1, sizeof pre, f);
        fwrite(hdr, 1, (size_t)len, f);
        for (int i = 0; i < pad; i++) fputc(' ', f);
        fputc('\n', f);
    }
    errno = 0;
    size_t wrote = fwrite(st->data, elem, n, f);
    int e = wrote != n || ferror(f) ? errno : 0; /* the reason of a failed write (disk full...) */
    if (fflush(f) != 0 && !e) e = errno ? errno : EIO;
    if (fclose(f) != 0 && !e) e = errno ? errno : EIO;
    if (e || wrote != n) {
        snprintf(app->dump_err, sizeof app->dump_err, "writing %s failed: %s", path, strerror(e ? e : EIO));
        app->dump_failed = 1;
    }
}

/* ---- results ---------------------------------------------------------------------------- */

/* The row of a result (or an error) as every output writes it. */
static ResultRow make_row(const App *app, const char *path, const char *kind, const qalign_result *r, const char *error) {
    ResultRow row = row_from_result(&app->rs, path, kind, r, error);
    row.max_frames = kind && !strcmp(kind, "video") ? (int)app->o.max_frames : 0;
    return row;
}

/* A failed write to stdout ends the run at once (the results would be lost), with the reason. */
static void check_stdout(void) {
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) die("cannot write to stdout: %s", strerror(errno ? errno : EIO));
}

static void print_row(App *app, const ResultRow *row) {
    progress_clear(&app->pg);
    if (app->o.json) {
        char *line = results_format_row(RESULTS_JSONL, row);
        if (!line) die("out of memory");
        fputs(line, stdout);
        free(line);
    } else if (!row->error) {
        printf("%.4f ", row->score);
        for (int i = 0; i < app->rs.n_levels; i++) printf(" %s=%.4f", app->rs.words[i], row->probs[i]);
        if (row->per_frame) printf("  %s [frame %d]\n", row->path, row->frame);
        else printf("  %s\n", row->path);
    }
    check_stdout();
}

/* At exit: stdout flushed and closed without an error, and nothing lost on stderr; else 1
 * (with the reason, where stderr still works). */
static int close_outputs(int status) {
    errno = 0;
    int bad = fflush(stdout) != 0 || ferror(stdout), e = errno;
    if (fclose(stdout) != 0 && !bad) bad = 1, e = errno;
    if (bad) {
        fprintf(stderr, "qalign: error: cannot write to stdout: %s\n", strerror(e ? e : EIO));
        status = 1;
    }
    if (fflush(stderr) != 0 || ferror(stderr)) status = 1;
    return status;
}

static void collect(App *app, const char *path, double score, int ok) {
    Collected *c = app->collect;
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->path = realloc(c->path, c->cap * sizeof *c->path);
        c->score = realloc(c->score, c->cap * sizeof *c->score);
        c->ok = realloc(c->ok, c->cap * sizeof *c->ok);
        if (!c->path || !c->score || !c->ok) die("out of memory");
    }
    if (!(c->path[c->n] = strdup(path))) die("out of memory");
    c->score[c->n] = score;
    c->ok[c->n++] = ok;
}

/* One input's result (r) or error: stdout, the result files / report / eval, the counters. */
static void record(App *app, const char *path, const char *kind, const qalign_result *r, const char *error,
                   const Image *thumb) {
    if (!error && r->status != QALIGN_OK) error = r->error;
    ResultRow row = make_row(app, path, kind, r, error);
    row.warning = app->row_warning;
    if (error) {
        app->failures++;
        progress_note(&app->pg, "qalign: error: %s: %s", path, error);
    }
    if (app->collect) {
        collect(app, path, error ? NAN : row.score, !error);
    } else {
        char err[512]; /* the files first: if stdout then fails, the row is kept */
        if (app->sink && sink_add(app->sink, &row, thumb, err, sizeof err) != 0) die("%s", err);
        if (!error || app->o.json) print_row(app, &row);
    }
    progress_update(&app->pg, error == NULL);
}

/* --per-frame: frame k of a video, scored as an image; stdout only */
static void record_frame(App *app, const char *path, int k, const qalign_result *r) {
    const char *error = r->status != QALIGN_OK ? r->error : NULL;
    ResultRow row = make_row(app, path, "frame", r, error);
    row.per_frame = 1;
    row.frame = k;
    if (error) {
        app->failures++;
        progress_note(&app->pg, "qalign: error: %s [frame %d]: %s", path, k, error);
    }
    if (!error || app->o.json) print_row(app, &row);
}

static void note_timings(App *app) {
    if (!app->o.timings) return;
    qalign_timings t;
    qalign_ctx_timings(app->ctx, &t);
    ++app->batches;
    progress_note(&app->pg, "qalign: timings after %d batch%s: preprocess %.3f s, vision %.3f s, abstractor %.3f s, "
                  "decoder %.3f s", app->batches, app->batches == 1 ? "" : "es", t.preprocess, t.vision, t.abstractor,
                  t.decoder);
}

/* ---- scoring ---------------------------------------------------------------------------- */

static qalign_image as_qimage(const Image *img) { return (qalign_image){img->rgb, img->w, img->h}; }

static double wall_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* An image file, within --max-pixels when given (checked from its header, before decoding). */
static size_t g_max_pixels;
static int load_image(const char *path, Image *img, char *warn, size_t warnlen, char *err, size_t errlen) {
    ImageLimits lim = {g_max_pixels, "--max-pixels", 0, NULL};
    return image_load_max(path, &lim, img, warn, warnlen, err, errlen);
}

/* Score the images added so far as one decoder pass, then record them in order. */
static void flush_images(App *app) {
    int n = qalign_pending(app->ctx);
    if (n == 0) return;
    qalign_result res[QALIGN_MAX_BATCH];
    char err[QALIGN_ERR_LEN];
    if (qalign_flush(app->ctx, res, err, sizeof err) != QALIGN_OK) die("%s", err);
    for (int b = 0; b < n; b++) {
        app->row_warning = app->pending_warn[b][0] ? app->pending_warn[b] : NULL; /* the row says it too */
        record(app, app->pending_path[b], "image", &res[b], NULL, app->pending_thumb[b].rgb ? &app->pending_thumb[b] : NULL);
        app->row_warning = NULL;
        image_free(&app->pending_thumb[b]);
    }
    note_timings(app);
}

/* Decode one image and add it to the batch; the decoder runs when the batch is full (or
 * at the end, or before a video or an error, so that results stay in input order). */
static void score_image(App *app, const char *path) {
    char err[QALIGN_ERR_LEN];
    char warn[160];
    Image img = {0};
    if (load_image(path, &img, warn, sizeof warn, err, sizeof err) != 0) {
        flush_images(app);
        record(app, path, "image", NULL, err, NULL);
        return;
    }
    if (warn[0]) fprintf(stderr, "qalign: warning: %s: %s\n", path, warn); /* decoded as Pillow decodes it */
    int b = qalign_pending(app->ctx);
    qalign_image qi = as_qimage(&img);
    int st = qalign_add_image(app->ctx, &qi, err, sizeof err);
    if (st == QALIGN_ERR_INPUT) {
        flush_images(app);
        record(app, path, "image", NULL, err, NULL);
        image_free(&img);
        return;
    }
    if (st != QALIGN_OK) die("%s", err);
    app->pending_path[b] = path;
    snprintf(app->pending_warn[b], sizeof app->pending_warn[b], "%s", warn);
    app->pending_thumb[b] = (Image){0};
    if (app->sink) thumb_downscale(&img, 160, &app->pending_thumb[b], err, sizeof err); /* for the report */
    image_free(&img);
    if (qalign_pending(app->ctx) == qalign_ctx_batch(app->ctx)) flush_images(app);
}

/* Start a video of n frames (after the pending images); 0, or -1 after recording why not. */
static int video_begin(App *app, const char *name, const char *kind, int64_t n) {
    char err[QALIGN_ERR_LEN];
    flush_images(app);
    int st = qalign_video_begin(app->ctx, (int)n, err, sizeof err);
    if (st == QALIGN_ERR_NOMEM || st == QALIGN_ERR_ARG) { /* too long for this machine: that video fails */
        record(app, name, kind, NULL, err, NULL);
        return -1;
    }
    if (st != QALIGN_OK) die("%s", err);
    return 0;
}

static void video_end(App *app, const char *name, const char *kind, int n, const Image *thumb) {
    qalign_result r, *frames = app->o.per_frame ? xmalloc((size_t)n * sizeof *frames) : NULL;
    char err[QALIGN_ERR_LEN];
    if (qalign_video_end_frames(app->ctx, &r, frames, err, sizeof err) != QALIGN_OK) die("%s", err);
    record(app, name, kind, &r, NULL, thumb);
    for (int k = 0; frames && k < n; k++) record_frame(app, name, k, &frames[k]);
    free(frames);
    note_timings(app);
}

/* --one-prompt: the files are the images of one prompt, in order. */
static void score_one_prompt(App *app, char **files, int n) {
    char err[QALIGN_ERR_LEN - 64], msg[QALIGN_ERR_LEN], name[4096] = "";
    for (int i = 0; i < n; i++) /* the row's name: "a.png + b.png" */
        snprintf(name + strlen(name), sizeof name - strlen(name), "%s%s", i ? " + " : "", files[i]);
    Image *img = xmalloc((size_t)n * sizeof *img);
    qalign_image *qi = xmalloc((size_t)n * sizeof *qi);
    int loaded = 0;
    for (; loaded < n; loaded++) {
        img[loaded] = (Image){0};
        if (load_image(files[loaded], &img[loaded], NULL, 0, err, sizeof err) != 0) break;
        qi[loaded] = as_qimage(&img[loaded]);
    }
    qalign_result r;
    if (loaded < n) {
        snprintf(msg, sizeof msg, "%s: %s", files[loaded], err);
        record(app, name, "prompt", NULL, msg, NULL);
    } else {
        char e[QALIGN_ERR_LEN];
        int st = qalign_score_prompt(app->ctx, qi, n, &r, e, sizeof e);
        if (st == QALIGN_ERR_ARG) die("--one-prompt: %s", e);
        if (st != QALIGN_OK) die("%s", e);
        record(app, name, "prompt", &r, NULL, &img[n - 1]);
    }
    for (int i = 0; i < loaded; i++) image_free(&img[i]);
    free(img);
    free(qi);
}

/* Frames given as image files (--video FRAME..., --frames DIR): one video. */
static void score_frame_files(App *app, const char *name, char **files, int n) {
    char err[QALIGN_ERR_LEN - 64], msg[QALIGN_ERR_LEN];
    if (video_begin(app, name, "frames", n) != 0) return;
    Image first = {0};
    for (int f = 0; f < n; f++) {
        Image img = {0};
        int rc = load_image(files[f], &img, NULL, 0, err, sizeof err);
        if (rc == 0) {
            qalign_image qi = as_qimage(&img);
            rc = qalign_video_frame(app->ctx, &qi, err, sizeof err);
        }
        if (rc != 0) {
            qalign_video_cancel(app->ctx);
            snprintf(msg, sizeof msg, "frame %s: %s", files[f], err);
            record(app, name, "frames", NULL, msg, NULL);
            image_free(&img);
            image_free(&first);
            return;
        }
        if (f == 0) first = img;
        else image_free(&img);
    }
    video_end(app, name, "frames", n, &first);
    image_free(&first);
}

typedef struct {
    App *app;
    Image thumb;            /* a copy of frame 0 for the report */
} VideoCtx;

static int video_frame(void *user, int64_t k, int64_t index, const Image *frame, char *err, size_t errlen) {
    VideoCtx *v = user;
    (void)index;
    if (k == 0 && v->app->sink) image_from_rgb(frame->rgb, frame->w, frame->h, &v->thumb, err, errlen);
    qalign_image qi = as_qimage(frame);
    return qalign_video_frame(v->app->ctx, &qi, err, errlen) != QALIGN_OK;
}

static void score_video(App *app, const char *path, int have_ffmpeg, const char *why) {
    char err[QALIGN_ERR_LEN] = "", msg[QALIGN_ERR_LEN + 64];
    if (!have_ffmpeg) {
        snprintf(msg, sizeof msg, "%s; %s", why, video_unavailable_hint());
        record(app, path, "video", NULL, msg, NULL);
        return;
    }
    VideoPlan plan = {0};
    int rc = video_plan(path, app->o.max_frames, &plan, err, sizeof err);
    if (rc == 0 && plan.n == 0) snprintf(err, sizeof err, "shorter than one second: the original loader takes no frame");
    if (rc == 0 && plan.n > QALIGN_MAX_FRAMES)
        snprintf(err, sizeof err, "%lld frames is more than qalign takes (use --max-frames)", (long long)plan.n);
    if (rc == 0 && g_max_pixels && (size_t)plan.info.width * (size_t)plan.info.height > g_max_pixels) /* before ffmpeg */
        rc = -1, snprintf(err, sizeof err, "frames of %dx%d = %zu pixels, more than --max-pixels (%zu)", plan.info.width,
                          plan.info.height, (size_t)plan.info.width * (size_t)plan.info.height, g_max_pixels);
    if (rc != 0 || plan.n == 0 || plan.n > QALIGN_MAX_FRAMES) {
        record(app, path, "video", NULL, err, NULL);
        video_plan_free(&plan);
        return;
    }
    if (video_begin(app, path, "video", plan.n) != 0) {
        video_plan_free(&plan);
        return;
    }
    progress_note(&app->pg, "qalign: %s: %lld frame%s (%.3f fps, %lld in the file)%s; buffers %.0f MB", path,
                  (long long)plan.n, plan.n == 1 ? "" : "s", plan.info.fps, (long long)plan.info.frame_count,
                  plan.subsampled ? ", subsampled by --max-frames (deviates from the original)" : "",
                  qalign_ctx_bytes(app->ctx) / 1e6);
    VideoCtx v = {app, {0}};
    if (video_read(&plan, video_frame, &v, err, sizeof err) != 0) {
        qalign_video_cancel(app->ctx);
        record(app, path, "video", NULL, err, NULL);
    } else {
        video_end(app, path, "video", (int)plan.n, v.thumb.rgb ? &v.thumb : NULL);
    }
    image_free(&v.thumb);
    video_plan_free(&plan);
}

/* ---- --ask: answers in words ------------------------------------------------------------ */

/* Streaming to a terminal: each token's text as it comes (one answer at a time). */
static void print_token(void *user, int seq, int id, const char *text) {
    App *app = user;
    (void)seq, (void)id;
    if (!*text) return;
    if (!app->streamed) { /* the answer is stripped as upstream strips it: no leading blanks */
        while (*text == ' ' || *text == '\n' || *text == '\t' || *text == '\r') text++;
        if (!*text) return;
        progress_clear(&app->pg);
    }
    fputs(text, stdout);
    fflush(stdout);
    app->streamed = 1;
}

/* One answer (a, and the score r with --score) or an error: stdout, result files, counters. */
static void record_answer(App *app, const char *path, const char *kind, int frames, const qalign_answer *a,
                          const qalign_result *r, const char *error) {
    if (!error && a && a->status != QALIGN_OK) error = a->error;
    if (!error && r && r->status != QALIGN_OK) error = r->error;
    ResultRow row;
    if (r && !error) {
        row = make_row(app, path, kind, r, NULL);
        row.scored = 1;
    } else {
        row = make_row(app, path, kind, NULL, error ? error : "");
        row.error = error;
        row.scored = app->o.score;
    }
    row.frames = error ? 0 : frames;
    row.setup.prompt = app->ask_template;
    row.question = app->o.ask;
    row.decoding = app->decoding;
    if (!error) row.answer = a->text, row.tokens = a->tokens, row.n_tokens = a->n_tokens, row.finish = a->finish;
    if (error) {
        app->failures++;
        if (app->streamed) fputc('\n', stdout), app->streamed = 0;
        progress_note(&app->pg, "qalign: error: %s: %s", path, error);
    }
    char err[512];
    if (app->o.timings && !error) /* prefill and decode speeds of this answer (decode: shared with its batch) */
        progress_note(&app->pg, "qalign: generation: %s: prefill %d rows in %.3f s (%.1f rows/s), decode %d tokens in "
                      "%.3f s (%.2f tokens/s)", path, a->prompt_rows, a->prefill_seconds,
                      a->prefill_seconds > 0 ? a->prompt_rows / a->prefill_seconds : 0.0, a->n_tokens, a->decode_seconds,
                      a->decode_seconds > 0 ? (a->n_tokens - 1) / a->decode_seconds : 0.0);
    if (app->sink && sink_add(app->sink, &row, NULL, err, sizeof err) != 0) die("%s", err);
    if (app->o.json) {
        progress_clear(&app->pg);
        char *line = results_format_row(RESULTS_JSONL, &row);
        if (!line) die("out of memory");
        fputs(line, stdout);
        free(line);
    } else if (!error) {
        progress_clear(&app->pg);
        if (!app->streamed) {
            if (row.scored) printf("%.4f  ", row.score);
            fputs(a->text, stdout);
        }
        printf("  %s\n", path);
    }
    app->streamed = 0;
    check_stdout();
    progress_update(&app->pg, error == NULL);
}

static qalign_ask_options ask_options_of(App *app, int stream, qalign_result *scores) {
    const Options *o = &app->o;
    return (qalign_ask_options){.max_tokens = o->max_tokens, .temperature = o->temperature, .top_p = o->top_p,
                                .top_k = o->top_k, .seed = o->seed, .prompt = o->prompt,
                                .on_token = stream ? print_token : NULL, .user = app, .scores = scores};
}

/* Answer the images loaded so far (one call: they are generated together). */
static void ask_flush(App *app) {
    int n = app->n_asked;
    if (n == 0) return;
    qalign_image qi[QALIGN_MAX_BATCH];
    qalign_answer ans[QALIGN_MAX_BATCH];
    qalign_result res[QALIGN_MAX_BATCH];
    for (int i = 0; i < n; i++) qi[i] = as_qimage(&app->asked[i]);
    qalign_ask_options ao = ask_options_of(app, app->stream, app->o.score ? res : NULL);
    char err[QALIGN_ERR_LEN];
    if (qalign_ask_images(app->ctx, qi, n, app->o.ask, &ao, ans, err, sizeof err) != QALIGN_OK) die("--ask: %s", err);
    for (int i = 0; i < n; i++) {
        record_answer(app, app->pending_path[i], "image", 1, &ans[i], app->o.score ? &res[i] : NULL, NULL);
        qalign_answer_free(&ans[i]);
        image_free(&app->asked[i]);
    }
    app->n_asked = 0;
    note_timings(app);
}

static void ask_image(App *app, const char *path) {
    char err[QALIGN_ERR_LEN];
    Image img = {0};
    if (image_load(path, &img, err, sizeof err) != 0) {
        ask_flush(app);
        record_answer(app, path, "image", 0, NULL, NULL, err);
        return;
    }
    app->pending_path[app->n_asked] = path;
    app->asked[app->n_asked++] = img;
    if (app->n_asked == (app->stream ? 1 : qalign_ctx_batch(app->ctx))) ask_flush(app);
}

/* Several images as one prompt: a video's frames (one <|image|>) or --one-prompt's images. */
static void ask_images_prompt(App *app, const char *name, const char *kind, Image *img, int n) {
    qalign_image *qi = xmalloc((size_t)n * sizeof *qi);
    for (int i = 0; i < n; i++) qi[i] = as_qimage(&img[i]);
    qalign_answer a;
    qalign_result r;
    qalign_ask_options ao = ask_options_of(app, app->stream, app->o.score ? &r : NULL);
    char tmpl[1024], err[QALIGN_ERR_LEN];
    if (!app->o.one_prompt) { /* the frames stand for one <|image|> */
        if (qalign_ask_template(app->o.prompt, 1, tmpl, sizeof tmpl) < 0) die("--prompt: unknown template");
        ao.prompt = tmpl;
    }
    int st = qalign_ask_prompt(app->ctx, qi, n, app->o.ask, &ao, &a, err, sizeof err);
    if (st == QALIGN_ERR_NOMEM) record_answer(app, name, kind, 0, NULL, NULL, err);
    else if (st != QALIGN_OK) die("--ask: %s", err);
    else record_answer(app, name, kind, n, &a, app->o.score ? &r : NULL, NULL);
    if (st == QALIGN_OK) qalign_answer_free(&a);
    free(qi);
    note_timings(app);
}

/* Image files as one prompt (--one-prompt) or the frames of one video (--video, --frames). */
static void ask_files(App *app, const char *name, char **files, int n) {
    const char *kind = app->o.one_prompt ? "prompt" : "frames";
    char err[QALIGN_ERR_LEN - 64], msg[QALIGN_ERR_LEN];
    Image *img = xmalloc((size_t)n * sizeof *img);
    int loaded = 0;
    for (; loaded < n; loaded++) {
        img[loaded] = (Image){0};
        if (image_load(files[loaded], &img[loaded], err, sizeof err) != 0) break;
    }
    if (loaded < n) {
        snprintf(msg, sizeof msg, "%s: %s", files[loaded], err);
        record_answer(app, name, kind, 0, NULL, NULL, msg);
    } else ask_images_prompt(app, name, kind, img, n);
    for (int i = 0; i < loaded; i++) image_free(&img[i]);
    free(img);
}

typedef struct {
    Image *frames;
    int64_t n;
} FrameStore;

static int keep_frame(void *user, int64_t k, int64_t index, const Image *frame, char *err, size_t errlen) {
    FrameStore *fs = user;
    (void)index;
    if (image_from_rgb(frame->rgb, frame->w, frame->h, &fs->frames[k], err, errlen) != 0) return 1;
    fs->n = k + 1;
    return 0;
}

/* A video file: its frames as Q-Align samples them, all in one prompt. */
static void ask_video(App *app, const char *path, int have_ffmpeg, const char *why) {
    char err[QALIGN_ERR_LEN] = "", msg[QALIGN_ERR_LEN + 64];
    if (!have_ffmpeg) {
        snprintf(msg, sizeof msg, "%s; %s", why, video_unavailable_hint());
        record_answer(app, path, "video", 0, NULL, NULL, msg);
        return;
    }
    VideoPlan plan = {0};
    int rc = video_plan(path, app->o.max_frames, &plan, err, sizeof err);
    if (rc == 0 && plan.n == 0) snprintf(err, sizeof err, "shorter than one second: the original loader takes no frame");
    if (rc == 0 && plan.n > QALIGN_MAX_FRAMES)
        snprintf(err, sizeof err, "%lld frames is more than qalign takes (use --max-frames)", (long long)plan.n);
    if (rc != 0 || plan.n == 0 || plan.n > QALIGN_MAX_FRAMES) {
        record_answer(app, path, "video", 0, NULL, NULL, err);
        video_plan_free(&plan);
        return;
    }
    FrameStore fs = {xmalloc((size_t)plan.n * sizeof(Image)), 0};
    if (video_read(&plan, keep_frame, &fs, err, sizeof err) != 0) record_answer(app, path, "video", 0, NULL, NULL, err);
    else ask_images_prompt(app, path, "video", fs.frames, (int)fs.n);
    for (int64_t k = 0; k < fs.n; k++) image_free(&fs.frames[k]);
    free(fs.frames);
    video_plan_free(&plan);
}

/* ---- the other commands ----------------------------------------------------------------- */

static int parse_int(const char *s, const char *flag, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) die("%s expects an integer in [%ld, %ld], got '%s'", flag, lo, hi, s);
    return (int)v;
}

/* --decode FILE OUT.ppm, --preprocess-only [--size N] [--no-pad] [--model MODEL] FILE OUT.ppm:
 * the decoded RGB, or the S x S image the model sees (image_preprocess: padded with the
 * model's fill, or resized and centre-cropped with --no-pad; fill and S from MODEL). */
static int cmd_decode(int argc, char **argv, int preprocess) {
    int size = 0;
    ImagePrep mode = IMAGE_PAD;
    uint8_t fill[3] = IMAGE_OWL2_FILL;
    const char *in = NULL, *out = NULL, *model = NULL;
    for (int i = 0; i < argc; i++) {
        if (preprocess && (!strcmp(argv[i], "--size") || !strcmp(argv[i], "--model"))) {
            if (i + 1 >= argc) die("%s needs a value", argv[i]);
            if (!strcmp(argv[i], "--size")) size = parse_int(argv[i + 1], "--size", 1, 1 << 16);
            else model = argv[i + 1];
            i++;
        } else if (preprocess && !strcmp(argv[i], "--no-pad")) mode = IMAGE_CROP;
        else if (preprocess && !strcmp(argv[i], "--pad")) mode = IMAGE_PAD;
        else if (!strncmp(argv[i], "--", 2)) die("unknown option '%s' (try --help)", argv[i]);
        else if (!in) in = argv[i];
        else if (!out) out = argv[i];
        else die("unexpected argument '%s' (try --help)", argv[i]);
    }
    if (!in || !out)
        die("usage: qalign %s FILE OUT.ppm",
            preprocess ? "--preprocess-only [--size N] [--no-pad] [--model MODEL]" : "--decode");
    if (model) { /* the model's fill colour and input size */
        char err[QALIGN_ERR_LEN];
        qalign_model *m;
        qalign_info c;
        if (qalign_open(model, &(qalign_open_options){.no_prefetch = 1}, &m, err, sizeof err)) die("%s", err);
        qalign_describe(m, &c);
        if (c.v_image <= 0) /* (Q-ReAlign's: smart_resize, each image at about its own size) */
            die("%s: this model sees each image at its own size, not as a fixed square: --preprocess-only shows "
                "the square ones", model);
        memcpy(fill, c.fill, sizeof fill);
        if (!size) size = c.v_image;
        qalign_close(m);
    }
    if (!size) size = IMAGE_OWL2_SIZE;
    struct stat si, so;
    if (stat(in, &si) == 0 && stat(out, &so) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino)
        die("%s is the input file: refusing to write over it", out);
    char err[256];
    Image img = {0}, res = {0};
    char warn[160];
    if (load_image(in, &img, warn, sizeof warn, err, sizeof err) != 0) die("%s: %s", in, err);
    if (warn[0]) fprintf(stderr, "qalign: warning: %s: %s\n", in, warn); /* decoded as Pillow decodes it */
    Image *w = &img;
    if (preprocess) {
        if (image_preprocess(&img, mode, fill, size, &res, err, sizeof err) != 0) die("%s: %s", in, err);
        w = &res;
    }
    if (image_write_ppm(out, w, err, sizeof err) != 0) die("%s: %s", out, err);
    image_free(&img);
    image_free(&res);
    return 0;
}

static void cmd_info(const qalign_model *m) {
    qalign_info c;
    qalign_describe(m, &c);
    printf("file        %s (%llu bytes, %d tensors, format version %d, id %s)\n", c.path, (unsigned long long)c.file_bytes,
           c.n_tensors, c.format_version, c.model_id);
    printf("weights     %s\n", c.weight_type);
    printf("model       %s%s\n", c.family, c.l_linear_layers ? " (decoder: Gated DeltaNet and attention layers)" : "");
    printf("kernels     %s\n", qalign_kernels());
    printf("family      %s\n", qalign_kernels_why());
    printf("vision      dim %d, layers %d, heads %d, mlp %d, image %d, patch %d, tokens %d, eps %g\n", c.v_dim, c.v_layers,
           c.v_heads, c.v_mlp, c.v_image, c.v_patch, c.v_tokens, c.v_eps);
    printf("abstractor  layers %d, heads %d, queries %d, mlp %d, eps %g, ffn eps %g\n", c.a_layers, c.a_heads, c.a_queries,
           c.a_mlp, c.a_eps, c.a_ffn_eps);
    printf("decoder     dim %d, layers %d, heads %d, kv heads %d, mlp %d, vocab %d, eps %g, rope theta %g\n", c.l_dim,
           c.l_layers, c.l_heads, c.l_kv_heads, c.l_mlp, c.l_vocab, c.l_eps, c.l_rope_theta);
    printf("tokenizer   bos %d, eos %d, unk %d, dummy prefix %d\n", c.bos_id, c.eos_id, c.unk_id, c.dummy_prefix);
    printf("levels      excellent=%d good=%d fair=%d poor=%d bad=%d\n", c.level_ids[0], c.level_ids[1], c.level_ids[2],
           c.level_ids[3], c.level_ids[4]);
    printf("preprocess  fill %d,%d,%d mean %.8g,%.8g,%.8g std %.8g,%.8g,%.8g\n", c.fill[0], c.fill[1], c.fill[2], c.mean[0],
           c.mean[1], c.mean[2], c.std[0], c.std[1], c.std[2]);
}

static void cmd_tokenize(const qalign_model *m, const char *text) {
    int n = qalign_tokenize(m, text, 1, NULL, 0);
    if (n < 0) die("tokenizing failed");
    int *ids = xmalloc((size_t)n * sizeof(int));
    if (qalign_tokenize(m, text, 1, ids, n) != n) die("tokenizing failed");
    for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    free(ids);
}

/* ---- outputs that would write over inputs ----------------------------------------------- */

/* A file qalign writes: an existing regular file is known by device and inode; one still to
 * be made by its directory's device and inode and its name. Other things (a terminal,
 * /dev/null, a pipe) are not compared. */
typedef struct {
    const char *what, *path;
    int kind;               /* 0: not compared, 1: exists, 2: to be made */
    dev_t dev;
    ino_t ino;
    char base[256];
} OutFile;

static OutFile out_file(const char *what, const char *path) {
    OutFile f = {what, path, 0, 0, 0, ""};
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISREG(st.st_mode)) f.kind = 1, f.dev = st.st_dev, f.ino = st.st_ino;
        return f;
    }
    if (errno != ENOENT) return f;
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    char dir[4096];
    if (!slash) snprintf(dir, sizeof dir, ".");
    else snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    if (!*base || strlen(base) >= sizeof f.base || stat(dir, &st) != 0) return f;
    f.kind = 2, f.dev = st.st_dev, f.ino = st.st_ino;
    snprintf(f.base, sizeof f.base, "%s", base);
    return f;
}

static int same_out(const OutFile *a, const OutFile *b) {
    return a->kind && a->kind == b->kind && a->dev == b->dev && a->ino == b->ino &&
           (a->kind == 1 || strcmp(a->base, b->base) == 0);
}

static void name_out(const OutFile *f, char *buf, size_t len) {
    if (!strcmp(f->what, "stdout")) snprintf(buf, len, "stdout");
    else snprintf(buf, len, "%s %s", f->what, f->path);
}

/* Refuse to start when an output is another output, or an existing file that is read as
 * input (what: "the model", "the input", ...). */
static void check_outputs(const OutFile *out, int n_out, const char *const *in_what, const char *const *in_path,
                          size_t n_in) {
    char a[4200], b[4200];
    for (int i = 0; i < n_out; i++)
        for (int j = i + 1; j < n_out; j++)
            if (same_out(&out[i], &out[j])) {
                name_out(&out[i], a, sizeof a);
                name_out(&out[j], b, sizeof b);
                die("%s and %s are the same file: refusing to start", a, b);
            }
    for (size_t k = 0; k < n_in; k++) {
        struct stat st;
        if (stat(in_path[k], &st) != 0) continue;
        for (int i = 0; i < n_out; i++)
            if (out[i].kind == 1 && out[i].dev == st.st_dev && out[i].ino == st.st_ino) {
                name_out(&out[i], a, sizeof a);
                die("%s is %s %s: refusing to write over it", a, in_what[k], in_path[k]);
            }
    }
}

static OutFile stdout_file(void) {
    OutFile f = {"stdout", "stdout", 0, 0, 0, ""};
    struct stat st;
    if (fstat(1, &st) == 0 && S_ISREG(st.st_mode)) f.kind = 1, f.dev = st.st_dev, f.ino = st.st_ino;
    return f;
}

/* ---- --resume: what is reused, what is scored again and why ----------------------------- */

static const char *const CHANGE_WORDS[] = {"model", "prompt", "levels", "pad", "precise", "scale", "max_frames", "kind",
                                           "frames", "question", "decoding"};
#define N_CHANGE (sizeof CHANGE_WORDS / sizeof CHANGE_WORDS[0])

typedef struct {
    size_t total, done, fresh, failed, changed, video_sets;
    size_t why[N_CHANGE];
} ResumeTally;

/* The state of one input; done ones are skipped. */
static ResumeState resume_state(App *app, ResumeTally *t, const char *path, const char *kind, int frames) {
    char why[32];
    ResultRow like = {.path = path, .kind = kind, .frames = frames};
    ResumeState st = sink_resume(app->sink, &like, why, sizeof why);
    if (st == RESUME_DONE && app->o.video) { /* a --video row is named after its first frame only */
        st = RESUME_CHANGED;
        t->video_sets++;
    } else if (st == RESUME_CHANGED)
        for (size_t i = 0; i < N_CHANGE; i++)
            if (!strcmp(why, CHANGE_WORDS[i])) t->why[i]++;
    t->total++;
    if (st == RESUME_DONE) t->done++;
    else if (st == RESUME_FAILED) t->failed++;
    else if (st == RESUME_CHANGED) t->changed++;
    else t->fresh++;
    return st;
}

static void resume_say(const ResumeTally *t) {
    char line[2048]; /* at most about 400 characters are written */
    int n = snprintf(line, sizeof line, "qalign: resume: %zu of %zu input%s done before (rows reused)", t->done, t->total,
                     t->total == 1 ? "" : "s");
    size_t todo = t->total - t->done;
    if (todo) {
        n += snprintf(line + n, sizeof line - (size_t)n, "; %zu to score:", todo);
        const char *sep = "";
        if (t->fresh) n += snprintf(line + n, sizeof line - (size_t)n, "%s %zu new", sep, t->fresh), sep = ",";
        if (t->failed)
            n += snprintf(line + n, sizeof line - (size_t)n, "%s %zu failed before (retried)", sep, t->failed), sep = ",";
        if (t->changed - t->video_sets) {
            n += snprintf(line + n, sizeof line - (size_t)n, "%s %zu with rows made another way only (", sep,
                          t->changed - t->video_sets);
            const char *s2 = "";
            for (size_t i = 0; i < N_CHANGE; i++)
                if (t->why[i]) n += snprintf(line + n, sizeof line - (size_t)n, "%sother %s: %zu", s2, CHANGE_WORDS[i], t->why[i]), s2 = ", ";
            n += snprintf(line + n, sizeof line - (size_t)n, ")"), sep = ",";
        }
        if (t->video_sets)
            snprintf(line + n, sizeof line - (size_t)n, "%s a --video set (scored again: its row is named after its "
                     "first frame only)", sep);
    }
    fprintf(stderr, "%s\n", line);
}

/* ---- the scoring context: the model file, --anchors ------------------------------------- */

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* --anchors DIR: say which of its files are not taken as anchor images, and why (one line). */
static void anchors_skipped(const char *dir, const ItemList *L) {
    char line[2048] = "";
    size_t n = 0;
    for (size_t i = 0; i < L->n; i++)
        if (L->items[i].kind != ITEM_IMAGE) {
            size_t u = strlen(line);
            snprintf(line + u, sizeof line - u, "%s%s (%s)", n++ ? ", " : "", base_name(L->items[i].path),
                     L->items[i].kind == ITEM_VIDEO ? "a video" : L->items[i].error ? L->items[i].error : "not an image");
        }
    DIR *d = L->n_skipped ? opendir(dir) : NULL; /* files the walk left out: not media, hidden, special */
    for (struct dirent *e; d && (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *full = malloc(strlen(dir) + strlen(e->d_name) + 2);
        struct stat sb;
        int is_dir = 0;
        if (full) {
            sprintf(full, "%s/%s", dir, e->d_name);
            is_dir = stat(full, &sb) == 0 && S_ISDIR(sb.st_mode); /* (walked: its files are listed) */
            free(full);
        }
        if (is_dir) continue;
        int listed = 0;
        for (size_t i = 0; i < L->n && !listed; i++) listed = !strcmp(base_name(L->items[i].path), e->d_name);
        size_t u = strlen(line);
        if (!listed) snprintf(line + u, sizeof line - u, "%s%s (not an image)", n++ ? ", " : "", e->d_name);
    }
    if (d) closedir(d);
    if (n) fprintf(stderr, "qalign: warning: --anchors %s: %zu file%s skipped: %s\n", dir, n, n == 1 ? "" : "s", line);
}

/* Open a model file and make the scoring context of the options (decoding --anchors). */
static void open_scorer(App *app, const char *model_path) {
    Options *o = &app->o;
    char err[QALIGN_ERR_LEN];
    if (qalign_open(model_path, &(qalign_open_options){.no_mmap = o->no_mmap}, &app->m, err, sizeof err)) die("%s", err);
    Image anchor_img[QALIGN_MAX_ANCHORS];
    qalign_image anchors[QALIGN_MAX_ANCHORS];
    int n_anchors = 0;
    if (o->anchors_dir) {
        ItemList L = {0};
        const char *dir = o->anchors_dir;
        struct stat sb;
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) die("--anchors %s: not a directory", dir);
        if (inputs_expand(&dir, 1, &(ExpandOptions){.natural_sort = 1}, &L, err, sizeof err) != 0) die("%s", err);
        anchors_skipped(dir, &L);
        for (size_t i = 0; i < L.n; i++) {
            if (L.items[i].kind != ITEM_IMAGE) continue;
            if (n_anchors == QALIGN_MAX_ANCHORS) die("--anchors %s: more than %d images", dir, QALIGN_MAX_ANCHORS);
            if (load_image(L.items[i].path, &anchor_img[n_anchors], NULL, 0, err, sizeof err) != 0)
                die("--anchors: %s: %s", L.items[i].path, err);
            anchors[n_anchors] = as_qimage(&anchor_img[n_anchors]);
            n_anchors++;
        }
        itemlist_free(&L);
        if (n_anchors == 0) die("--anchors %s: no images", dir);
    }
    qalign_ctx_options co = {.threads = o->threads, .batch = o->batch, .task = o->task, .prompt = o->ask ? NULL : o->prompt,
                             .levels = o->levels, .no_pad = o->no_pad, .precise = o->precise, .preset = o->preset,
                             .anchors = n_anchors ? anchors : NULL, .n_anchors = n_anchors};
    int st = qalign_ctx_new(app->m, &co, &app->ctx, err, sizeof err);
    for (int i = 0; i < n_anchors; i++) image_free(&anchor_img[i]);
    if (st) die("%s%s", st == QALIGN_ERR_ARG ? "--" : "", err); /* argument errors start with the option's name */
    static int noted;
    if (qalign_ctx_notes(app->ctx) && !noted++) fprintf(stderr, "qalign: note: %s\n", qalign_ctx_notes(app->ctx));
    const qalign_preset *pr = qalign_preset_find(o->preset ? o->preset : "one-align");
    if (pr && pr->n_anchors && !n_anchors && !o->one_prompt && !o->ask)
        die("--preset %s compares each image with %d anchor images: give --anchors DIR (./run.sh --preset %s fetches "
            "the official ones), or score one comparison with --one-prompt ANCHOR IMAGE", pr->name, pr->n_anchors, pr->name);
    const char *words[QALIGN_MAX_LEVELS];
    float lo, hi;
    int n_levels = qalign_ctx_levels(app->ctx, words, NULL, &lo, &hi);
    row_style_init(&app->rs, o->task, qalign_scale_find(o->scale), n_levels, words, lo, hi); /* (options.c checked it) */
    if (o->scale && !(hi > lo))
        die("--scale %s maps the levels' weights onto %s, so they must not all be equal (the levels give them all %g)",
            o->scale, o->scale, lo);
}

static void close_scorer(App *app) {
    qalign_ctx_free(app->ctx);
    qalign_close(app->m);
    app->ctx = NULL;
    app->m = NULL;
}

/* Score the items (or the frames / images of one item) with app's context. */
/* skip (may be NULL): per item (or for the frames), 1 when --resume reuses its row. */
static void score_inputs(App *app, const ItemList *items, char **frames, int n_frames, const char *frames_name,
                         const unsigned char *skip) {
    char why[512] = "";
    int have_ffmpeg = video_available(why, sizeof why);
    progress_start(&app->pg, frames ? 1 : items->n, app->o.quiet);
    if (app->o.ask) { /* answers in words */
        if (frames) {
            if (skip && skip[0]) progress_skip(&app->pg);
            else ask_files(app, frames_name, frames, n_frames);
        }
        for (size_t i = 0; !frames && i < items->n; i++) {
            const Item *it = &items->items[i];
            if (skip && skip[i]) {
                progress_skip(&app->pg);
                continue;
            }
            progress_begin_item(&app->pg, it->path);
            if (it->kind == ITEM_ERROR) {
                ask_flush(app);
                record_answer(app, it->path, NULL, 0, NULL, NULL, it->error);
            } else if (it->kind == ITEM_VIDEO) {
                ask_flush(app);
                ask_video(app, it->path, have_ffmpeg, why);
            } else ask_image(app, it->path);
        }
        ask_flush(app);
    } else if (frames) {
        if (skip && skip[0]) progress_skip(&app->pg); /* --resume: done */
        else if (app->o.one_prompt) score_one_prompt(app, frames, n_frames);
        else score_frame_files(app, frames_name, frames, n_frames);
    } else {
        for (size_t i = 0; i < items->n; i++) {
            const Item *it = &items->items[i];
            if (skip && skip[i]) {
                progress_skip(&app->pg);
                continue;
            }
            progress_begin_item(&app->pg, it->path);
            if (it->kind == ITEM_ERROR) {
                flush_images(app);
                record(app, it->path, NULL, NULL, it->error, NULL);
            } else if (it->kind == ITEM_VIDEO) {
                flush_images(app); /* before ffprobe: the images' rows do not wait for it */
                score_video(app, it->path, have_ffmpeg, why);
            } else {
                score_image(app, it->path);
            }
        }
    }
    flush_images(app);
    progress_finish(&app->pg);
}

/* --compare: the two models' scores side by side, then how far apart they are. */
static void print_comparison(const App *app, Collected *c) {
    Collected *a = &c[0], *b = &c[1];
    size_t n = 0, worst = 0;
    double *x = xmalloc((a->n + 1) * sizeof *x), *y = xmalloc((a->n + 1) * sizeof *y), maxd = 0, sumd = 0;
    printf("%10s %10s %10s  %s\n", "A", "B", "B - A", "path");
    for (size_t i = 0; i < a->n && i < b->n; i++) {
        if (strcmp(a->path[i], b->path[i])) die("internal: the two runs scored different inputs");
        if (!a->ok[i] || !b->ok[i]) {
            printf("%10s %10s %10s  %s\n", a->ok[i] ? "" : "error", b->ok[i] ? "" : "error", "", a->path[i]);
            continue;
        }
        double d = b->score[i] - a->score[i];
        printf("%10.4f %10.4f %+10.4f  %s\n", a->score[i], b->score[i], d, a->path[i]);
        if (fabs(d) > maxd || n == 0) maxd = fabs(d), worst = i;
        sumd += fabs(d);
        x[n] = a->score[i], y[n++] = b->score[i];
    }
    if (n == 0) {
        printf("compare: no input was scored by both models\n");
    } else {
        int flat_a = 1, flat_b = 1;
        for (size_t i = 1; i < n; i++) flat_a = flat_a && x[i] == x[0], flat_b = flat_b && y[i] == y[0];
        const char *why = n == 1   ? " (one input: no correlation)"
                          : flat_a && flat_b ? " (nan: every score of A and of B is the same)"
                          : flat_a ? " (nan: every score of A is the same)"
                          : flat_b ? " (nan: every score of B is the same)"
                          : n == 2 ? " (of 2 inputs: always +1 or -1)" : "";
        printf("compare: %zu inputs scored by both (scale %s): max |B - A| %.4f (%s), mean |B - A| %.4f, "
               "SRCC %.4f, PLCC %.4f%s\n", n, app->rs.scale, maxd, a->path[worst], sumd / (double)n,
               stats_srcc(x, y, n), stats_plcc(x, y, n), why);
    }
    free(x);
    free(y);
}

/* ---- check: which options go together --------------------------------------------------- */

/* The options as a whole (each value was checked when parsed): one line and exit 1 when they
 * do not go together; then the settings that are global to the run. */
static void check_options(App *app) {
    Options *o = &app->o;
    int n_inputs = o->n_inputs;
    char **inputs = o->inputs;
    if (o->sink.resume && !o->sink.csv_path && !o->sink.jsonl_path) die("--resume needs --csv or --jsonl");
    if (o->decoding_flag && !o->ask) die("%s goes with --ask QUESTION", o->decoding_flag);
    if (o->score && !o->ask) die("--score goes with --ask QUESTION (scoring is what qalign does without --ask)");
    if (o->ask && (o->compare[0] || o->dump_dir || o->per_frame || o->anchors_dir || o->info || o->tokenize_text))
        die("--ask does not go with --compare, --dump, --per-frame, --anchors, --info or --tokenize");
    if (o->ask && !o->score && (o->sink.report_path || o->sink.labels_path))
        die("--report and --eval need scores: give --score with --ask");
    if (o->ask && o->sink.report_path) die("--report shows scores, not answers: use --json, --jsonl or --csv with --ask");
    if (!o->max_tokens) o->max_tokens = 256;
    if (o->compare[0] && (o->json || o->sink.csv_path || o->sink.jsonl_path || o->sink.report_path || o->sink.labels_path ||
                          o->dump_dir || o->per_frame || o->info || o->tokenize_text))
        die("--compare prints a table of both models' scores: --json, --csv, --jsonl, --report, --eval, --dump, "
            "--per-frame, --info and --tokenize do not go with it");
    if (o->one_prompt && (o->video || o->frames_dir)) die("--one-prompt, --video and --frames exclude each other");
    if (o->video && o->frames_dir) die("--video and --frames exclude each other (--video: the INPUTs are the frames)");
    if (o->frames_dir && n_inputs) die("--frames DIR takes the frames from DIR: no other INPUT (got '%s')", inputs[0]);
    if (o->shard && (o->video || o->frames_dir || o->one_prompt))
        die("--shard splits a list of inputs; with --%s all %s are one input",
            o->video ? "video" : o->frames_dir ? "frames" : "one-prompt", o->one_prompt ? "images" : "frames");
    if (o->per_frame && o->dump_dir) die("--per-frame and --dump do not go together (--dump shows one computation)");
    char err[QALIGN_ERR_LEN];
    if (o->shard && shard_parse(o->shard, &app->shard_i, &app->shard_n, err, sizeof err) != 0) die("%s", err); /* (names --shard) */
    if (o->frames_dir) {
        struct stat sb;
        if (stat(o->frames_dir, &sb) != 0) die("--frames %s: %s", o->frames_dir, strerror(errno));
        if (!S_ISDIR(sb.st_mode)) die("--frames %s: not a directory", o->frames_dir);
    }
    video_set_timeout(o->ffmpeg_timeout);
    g_max_pixels = (size_t)o->max_pixels;
    if (o->max_pixels) o->srv.max_pixels = o->max_pixels;
#ifndef _OPENMP
    if (o->threads > 1) fprintf(stderr, "qalign: warning: built without OpenMP, --threads %d ignored\n", o->threads);
#endif
}

/* ---- the commands on a model file: verify, info, tokenize, serve ------------------------ */

/* qalign --verify MODEL */
static int cmd_verify(App *app) {
    const Options *o = &app->o;
    char err[QALIGN_ERR_LEN];
    if (o->n_inputs || o->info || o->tokenize_text) die("--verify takes the MODEL only (or goes with --listen / --stdio)");
    qalign_open_options oo = {.no_mmap = o->no_mmap, .no_prefetch = 1};
    if (qalign_open(o->model_path, &oo, &app->m, err, sizeof err)) die("%s", err);
    qalign_info inf;
    qalign_describe(app->m, &inf);
    double t0 = wall_seconds();
    if (qalign_verify(app->m, err, sizeof err) != QALIGN_OK) die("%s", err);
    printf("%s: the header, the table and all %d tensors match their checksums (%.2f GB in %.1f s)\n", o->model_path,
           qalign_checksums(app->m), inf.file_bytes / 1e9, wall_seconds() - t0);
    qalign_close(app->m);
    return 0;
}

/* qalign --info MODEL, qalign --tokenize TEXT MODEL */
static int cmd_model(App *app) {
    const Options *o = &app->o;
    char err[QALIGN_ERR_LEN];
    qalign_open_options oo = {.no_mmap = o->no_mmap, .no_prefetch = 1}; /* (nothing is scored) */
    if (qalign_open(o->model_path, &oo, &app->m, err, sizeof err)) die("%s", err);
    const char *what = "the model";
    OutFile so = stdout_file();
    check_outputs(&so, 1, &what, &o->model_path, 1);
    if (o->info) cmd_info(app->m);
    else cmd_tokenize(app->m, o->tokenize_text);
    qalign_close(app->m);
    return 0;
}

/* qalign --listen HOST:PORT MODEL, qalign --stdio MODEL: requests instead of INPUTs (serve.c) */
static int cmd_serve(App *app) {
    Options *o = &app->o;
    char err[QALIGN_ERR_LEN];
    if (o->n_inputs || o->video || o->frames_dir || o->one_prompt || o->dump_dir || o->shard || o->compare[0] ||
        o->per_frame || o->sink.csv_path || o->sink.jsonl_path || o->sink.report_path || o->sink.labels_path)
        die("--listen and --stdio take requests, not INPUTs, --video, --frames, --one-prompt, --dump, --shard, "
            "--compare, --per-frame, --csv, --jsonl, --report or --eval");
    if (qalign_open(o->model_path, &(qalign_open_options){.no_mmap = o->no_mmap}, &app->m, err, sizeof err)) die("%s", err);
    if (o->verify) { /* before serving: a damaged file does not start */
        if (qalign_verify(app->m, err, sizeof err) != QALIGN_OK) die("%s", err);
        o->srv.verified = 1;
    }
    qalign_ctx_options co = {.threads = o->threads, .batch = o->batch, .task = o->task, .prompt = o->prompt,
                             .levels = o->levels, .no_pad = o->no_pad, .precise = o->precise, .preset = o->preset};
    if (serve_run(&o->srv, app->m, &co, o->scale, err, sizeof err) != 0) die("%s", err);
    qalign_close(app->m);
    return 0;
}

/* ---- the commands on INPUTs: score (or ask), compare ------------------------------------ */

/* What to score: the frames of one video or the images of one prompt (frames), or a list of
 * images and videos (items). */
typedef struct {
    ItemList items;
    char **frames;
    int n_frames;
    const char *frames_name;
    size_t n_items;         /* 1 (frames) or items.n */
} Work;

static void gather_inputs(App *app, Work *w) {
    const Options *o = &app->o;
    char err[QALIGN_ERR_LEN];
    if (o->video || o->frames_dir || o->one_prompt) {
        if (o->frames_dir) {
            const char *dir = o->frames_dir;
            if (inputs_expand(&dir, 1, &(ExpandOptions){.natural_sort = 1}, &w->items, err, sizeof err) != 0) die("%s", err);
            w->frames_name = o->frames_dir;
        } else {
            if (o->n_inputs == 0) die("%s needs the images as INPUTs", o->video ? "--video" : "--one-prompt");
            w->frames_name = o->inputs[0];
        }
        w->frames = xmalloc((w->items.n + (size_t)o->n_inputs + 1) * sizeof(char *));
        if (o->video || o->one_prompt) /* keep the command-line order: frames in time order, images in prompt order */
            for (int i = 0; i < o->n_inputs; i++) w->frames[w->n_frames++] = o->inputs[i];
        else /* every media file of DIR is a frame: one that cannot be read fails the set */
            for (size_t i = 0; i < w->items.n; i++) w->frames[w->n_frames++] = w->items.items[i].path;
        if (w->n_frames == 0)
            die("--frames %s: no image in it (%zu other file%s skipped)", w->frames_name, w->items.n_skipped,
                w->items.n_skipped == 1 ? "" : "s");
    } else {
        ItemList *items = &w->items;
        if (inputs_expand((const char *const *)o->inputs, (size_t)o->n_inputs, NULL, items, err, sizeof err) != 0)
            die("%s", err);
        if (items->warning) fprintf(stderr, "qalign: warning: %s\n", items->warning);
        size_t n_listed = items->n;
        if (items->n == 0) {
            char more[160] = "";
            if (items->n_skipped)
                snprintf(more, sizeof more, " (%zu file%s in directories skipped: not images or videos)", items->n_skipped,
                         items->n_skipped == 1 ? "" : "s");
            if (items->n_comments)
                snprintf(more + strlen(more), sizeof more - strlen(more), " (%zu list line%s skipped as comments: #)",
                         items->n_comments, items->n_comments == 1 ? "" : "s");
            die("nothing to score: no image or video among the INPUTs%s", more);
        }
        if (o->shard) items_shard(items, app->shard_i, app->shard_n);
        size_t n_images = 0, n_videos = 0;
        for (size_t i = 0; i < items->n; i++) n_images += items->items[i].kind == ITEM_IMAGE, n_videos += items->items[i].kind == ITEM_VIDEO;
        if (o->per_frame && n_images)
            fprintf(stderr, "qalign: warning: --per-frame scores the frames of videos; %s%zu image%s among the inputs %s "
                    "scored once, as %s\n", n_videos ? "the " : "", n_images, n_images == 1 ? "" : "s",
                    n_images == 1 ? "is" : "are", n_images == 1 ? "an image" : "images");
        if (o->shard && items->n == 0)
            fprintf(stderr, "qalign: shard %d/%d has no input (%zu in all)\n", app->shard_i, app->shard_n, n_listed);
    }
    w->n_items = w->frames ? 1 : w->items.n;
    if (o->dump_dir && w->n_items != 1) die("--dump takes one input (or the frames of one video)");
}

/* Nothing may write over what is read, nor two outputs into one file. */
static void check_overwrites(const App *app, const Work *w) {
    const Options *o = &app->o;
    OutFile out[5];
    int n_out = 0;
    if (o->sink.csv_path) out[n_out++] = out_file("--csv", o->sink.csv_path);
    if (o->sink.jsonl_path) out[n_out++] = out_file("--jsonl", o->sink.jsonl_path);
    if (o->sink.report_path) /* (its temporary file is new: made with O_EXCL under a random name) */
        out[n_out++] = out_file("--report", o->sink.report_path);
    out[n_out++] = stdout_file();
    size_t n_in = 3 + (size_t)o->n_inputs + (w->frames ? (size_t)w->n_frames : w->items.n), k = 0;
    const char **in_what = xmalloc(n_in * sizeof *in_what), **in_path = xmalloc(n_in * sizeof *in_path);
    if (o->model_path) in_what[k] = "the model", in_path[k++] = o->model_path;
    for (int m = 0; m < 2; m++)
        if (o->compare[m]) in_what[k] = "the model", in_path[k++] = o->compare[m];
    if (o->sink.labels_path) in_what[k] = "the --eval labels", in_path[k++] = o->sink.labels_path;
    for (int i = 0; i < o->n_inputs; i++)
        if (o->inputs[i][0] == '@' && strcmp(o->inputs[i], "@-")) in_what[k] = "the list", in_path[k++] = o->inputs[i] + 1;
    if (w->frames)
        for (int i = 0; i < w->n_frames; i++) in_what[k] = "the frame", in_path[k++] = w->frames[i];
    else
        for (size_t i = 0; i < w->items.n; i++) in_what[k] = "the input", in_path[k++] = w->items.items[i].path;
    check_outputs(out, n_out, in_what, in_path, k);
    free(in_what);
    free(in_path);
}

/* qalign --compare A B INPUT...: each model in turn over the same inputs (one model in memory
 * at a time), then the table. */
static int cmd_compare(App *app, Work *w) {
    const Options *o = &app->o;
    Collected col[2] = {{0}};
    for (int k = 0; k < 2; k++) {
        open_scorer(app, o->compare[k]);
        qalign_info inf;
        qalign_describe(app->m, &inf);
        fprintf(stderr, "qalign: %s = %s (%s, id %s)\n", k ? "B" : "A", o->compare[k], inf.weight_type, inf.model_id);
        app->collect = &col[k];
        score_inputs(app, &w->items, w->frames, w->n_frames, w->frames_name, NULL);
        close_scorer(app);
    }
    print_comparison(app, col);
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < col[k].n; i++) free(col[k].path[i]);
        free(col[k].path), free(col[k].score), free(col[k].ok);
    }
    return app->failures ? 1 : 0;
}

/* The prompt and --ask's template and decoding, checked against the model file and the
 * context (after open_scorer). */
static void check_prompt(App *app, const Work *w) {
    Options *o = &app->o;
    int nk;
    const qalign_named_prompt *named = qalign_prompts(&nk);
    const char *ptext = NULL;
    const qalign_preset *pr = qalign_preset_find(o->preset ? o->preset : "one-align");
    const char *pname = o->prompt ? o->prompt : pr->prompt;
    for (int k = 0; k < nk && !strstr(pname, "<|image|>"); k++)
        if (!strcmp(named[k].name, pname)) ptext = named[k].text;
    if (!ptext) ptext = pname;
    if (o->ask) { /* the question template, the decoding, and the limits of the model file */
        qalign_info inf;
        qalign_describe(app->m, &inf);
        int nk2, n_img = o->one_prompt ? w->n_frames : 1;
        if (qalign_ask_template(o->prompt, n_img, app->ask_template, sizeof app->ask_template) < 0) {
            const qalign_named_prompt *ap = qalign_ask_prompts(&nk2);
            char names[128] = "";
            for (int k = 0; k < nk2; k++) snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", k ? ", " : "", ap[k].name);
            die("--prompt: '%s' is neither a template with <|image|> nor one of %s", o->prompt, names);
        }
        if (inf.family && !strcmp(inf.family, "qwen3.5")) { /* Qwen3.5: its chat template, thinking closed (qwen35.c qwen_ask) */
            if (o->prompt) die("--prompt: a Qwen3.5 model asks with its chat template (no --prompt with --ask)");
            snprintf(app->ask_template, sizeof app->ask_template, "%s", QALIGN_ASK_PROMPT_QWEN35);
        }
        if (o->max_tokens > inf.l_max_pos)
            die("--max-tokens %d is more than the context length in the model file (%d)", o->max_tokens, inf.l_max_pos);
        if (o->temperature == 0) snprintf(app->decoding, sizeof app->decoding, "greedy max_tokens=%d", o->max_tokens);
        else
            snprintf(app->decoding, sizeof app->decoding, "sample temperature=%g top_p=%g top_k=%d seed=%llu max_tokens=%d",
                     o->temperature, o->top_p, o->top_k, (unsigned long long)o->seed, o->max_tokens);
        if (o->score) { /* the row's prompt is the question's: the scoring setup goes here, so --resume compares it */
            size_t used = strlen(app->decoding);
            int n = snprintf(app->decoding + used, sizeof app->decoding - used, "; scored task=%s scale=%s levels=%s prompt=%s",
                             o->task, app->rs.scale, app->rs.setup.levels, app->rs.setup.prompt);
            if (n < 0 || (size_t)n >= sizeof app->decoding - used) die("--score: the scoring prompt is too long to record (%zu bytes at most)", sizeof app->decoding - used - 64);
        }
        app->stream = !o->json && isatty(1);
        o->sink.answers = 1;
        o->sink.question = o->ask;
        o->sink.decoding = app->decoding;
    }
    if (!o->ask && o->task_given && strcmp(o->task, "quality") && !strstr(ptext, "{task}"))
        die("--task %s: the prompt has no {task} to put it in (it rates what it says)", o->task);
    if (!o->one_prompt && !o->ask) { /* several <|image|>: only as a comparison (anchors) or with --one-prompt */
        int markers = 0;
        for (const char *q = strstr(ptext, "<|image|>"); q; q = strstr(q + 1, "<|image|>")) markers++;
        if (markers != 1 && !o->anchors_dir)
            die("--prompt: it must contain <|image|> exactly once to score images one by one (it has %d: use "
                "--one-prompt for the images of one prompt, or --anchors)", markers);
    }
}

/* The result files, report and labels (--csv --jsonl --report --eval), then --resume: which
 * inputs have a row to reuse (skip, per item), and why the others are scored. */
static unsigned char *open_sink(App *app, const Work *w) {
    Options *o = &app->o;
    char err[QALIGN_ERR_LEN];
    o->sink.task = o->task;
    o->sink.scale = app->rs.scale;
    o->sink.setup = app->rs.setup;
    if (o->ask) o->sink.setup.prompt = app->ask_template; /* answers' rows record the question template */
    o->sink.max_frames = (int)o->max_frames;
    o->sink.n_levels = app->rs.n_levels; /* a CSV's level columns */
    o->sink.levels = app->rs.words;
    if (o->sink.csv_path || o->sink.jsonl_path || o->sink.report_path || o->sink.labels_path) {
        app->sink = sink_open(&o->sink, err, sizeof err);
        if (!app->sink) die("%s", err);
    }
    unsigned char *skip = xmalloc(w->n_items ? w->n_items : 1);
    memset(skip, 0, w->n_items ? w->n_items : 1);
    if (o->sink.resume) {
        ResumeTally t = {0};
        if (w->frames) skip[0] = resume_state(app, &t, w->frames_name, "frames", w->n_frames) == RESUME_DONE;
        else
            for (size_t i = 0; i < w->items.n; i++) {
                const Item *it = &w->items.items[i];
                const char *kind = it->kind == ITEM_IMAGE ? "image" : it->kind == ITEM_VIDEO ? "video" : NULL;
                skip[i] = resume_state(app, &t, it->path, kind, 0) == RESUME_DONE;
            }
        resume_say(&t);
    }
    return skip;
}

/* qalign MODEL INPUT... (and with --ask QUESTION) */
static int cmd_score(App *app, Work *w) {
    Options *o = &app->o;
    char err[QALIGN_ERR_LEN];
    open_scorer(app, o->model_path);
    if (row_setup_of(&app->rs.setup, app->m, app->ctx) != 0) die("out of memory");
    check_prompt(app, w);
    for (int i = 0; i < app->rs.n_levels && (!o->ask || o->score) && o->sink.report_path; i++) {
        int k = 0;
        while (k < APP_LEVELS && strcmp(app->rs.words[i], APP_LEVEL_NAMES[k])) k++;
        if (k == APP_LEVELS)
            die("--levels: the --report shows probability bars for excellent good fair poor bad only, not '%s' "
                "(--csv, --jsonl and --json take any words)", app->rs.words[i]);
    }
    if (o->dump_dir) { /* create DIR (one level) now, rather than fail after scoring */
        struct stat sb;
        if (mkdir(o->dump_dir, 0777) != 0 && errno != EEXIST) die("--dump %s: %s", o->dump_dir, strerror(errno));
        if (stat(o->dump_dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) die("--dump %s: not a directory", o->dump_dir);
        qalign_ctx_set_stage_hook(app->ctx, npy_stage, app);
    }
    unsigned char *skip = open_sink(app, w);
    score_inputs(app, &w->items, w->frames, w->n_frames, w->frames_name, skip);
    free(skip);
    if (app->dump_failed) die("--dump: %s", app->dump_err);
    if (app->sink) {
        if (sink_finish(app->sink, stderr, err, sizeof err) != 0) die("%s", err);
        sink_free(app->sink);
    }
    if (o->timings) {
        qalign_timings t;
        qalign_ctx_timings(app->ctx, &t);
        double total = t.preprocess + t.vision + t.abstractor + t.decoder;
        fprintf(stderr, "qalign: timings (%d threads, %s): preprocess %.3f s, vision %.3f s, abstractor %.3f s, "
                "decoder %.3f s, total %.3f s\n", qalign_ctx_threads(app->ctx), qalign_kernels(), t.preprocess, t.vision,
                t.abstractor, t.decoder, total);
    }
    row_setup_free(&app->rs.setup);
    close_scorer(app);
    return app->failures ? 1 : 0;
}

/* The INPUTs, listed and checked, then scored (or compared). */
static int cmd_inputs(App *app) {
    Options *o = &app->o;
    if (o->n_inputs == 0 && !o->frames_dir) die("no INPUT given (try --help)");
    if (o->dump_dir) o->batch = 1;
    Work w = {0};
    gather_inputs(app, &w);
    check_overwrites(app, &w);
    int status = o->compare[0] ? cmd_compare(app, &w) : cmd_score(app, &w);
    free(w.frames);
    itemlist_free(&w.items);
    return status;
}

/* ---- main: parse, check, run one command ------------------------------------------------ */

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--decode") == 0) return close_outputs(cmd_decode(argc - 2, argv + 2, 0));
    if (argc > 1 && strcmp(argv[1], "--preprocess-only") == 0) return close_outputs(cmd_decode(argc - 2, argv + 2, 1));

    static App app;
    Options *o = &app.o;
    char err[QALIGN_ERR_LEN];
    options_init(o);
    if (options_parse(o, argc, argv, err, sizeof err) != 0) die("%s", err);
    int status;
    if (o->help) usage(stdout), status = 0;
    else if (!o->model_path && !o->compare[0]) usage(stderr), status = 2;
    else {
        check_options(&app);
        if (o->verify && !o->srv.listen && !o->srv.stdio) status = cmd_verify(&app);
        else if (o->info || o->tokenize_text) status = cmd_model(&app);
        else if (o->srv.listen || o->srv.stdio) status = cmd_serve(&app);
        else status = cmd_inputs(&app);
    }
    options_free(o);
    return close_outputs(status);
}
