/* cli.c - the qalign command: options, what to score (files, directories, @lists, videos),
 * the batch loop, and where results go (stdout, result files, report, evaluation).
 *
 * The model is used through qalign.h only; app.h does inputs, videos, result files, the
 * report and the progress line; image.h decodes. This is the only place that exits:
 * usage and model errors end the program with one line on stderr and status 1 (2 for a
 * missing MODEL); an input that cannot be scored is an error line (and row), the others
 * are still scored, and the exit status is 1 if any failed. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "app.h"
#include "image.h"
#include "qalign.h"

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

static void usage(FILE *f) {
    fprintf(f,
            "usage: qalign [options] MODEL INPUT...\n"
            "Scores the quality or aesthetics of images and videos with a Q-Align / OneAlign model\n"
            "exported by export.py. INPUT: image files (JPEG, PNG, BMP, PPM/PGM), videos (with\n"
            "ffmpeg on PATH), directories (recursive) or @LIST (a file of paths). One line per\n"
            "input: the score (1-5) and the probabilities of excellent good fair poor bad.\n"
            "\n"
            "scoring:\n"
            "  -t, --task quality|aesthetics|aesthetic   what to rate (default quality; 'aesthetic'\n"
            "                          is pyiqa's wording of the aesthetics prompt)\n"
            "  --scale 1-5|0-1         score scale (default 1-5; 0-1 is (score-1)/4)\n"
            "  --video                 all INPUTs are the frames of ONE video, in order (1 per second)\n"
            "  --frames DIR            the images in DIR (natural order) are the frames of one video\n"
            "  --max-frames N          videos: take at most N of the 1-fps frames, evenly spaced\n"
            "                          (deviates from the original loader, which has no limit)\n"
            "  --prompt TEXT           prompt template with <|image|> and optional {task} {input}\n"
            "                          (default: one-align's score() prompt)\n"
            "  --levels W=X,...        level words and weights (default excellent=5,good=4,fair=3,\n"
            "                          poor=2,bad=1), e.g. good=1,average=0.5,poor=0 for Q-Instruct\n"
            "                          (with --no-pad and its prompt); --csv/--jsonl/--report take\n"
            "                          words among excellent good fair poor bad only\n"
            "  --no-pad                no expand2square: resize the short side and centre-crop\n"
            "  --precise               bf16 models: f32 activations (slower; reproduces the fp32\n"
            "                          reference to 1e-4) instead of bf16 ones\n"
            "output:\n"
            "  --json                  one JSON object per line on stdout (the --jsonl row)\n"
            "  --csv FILE, --jsonl FILE  append one row per input (flushed as it comes)\n"
            "  --resume                skip inputs already in the --csv/--jsonl file(s)\n"
            "  --shard I/N             score only the I-th of N deterministic slices of the inputs\n"
            "  --eval LABELS.csv       print SRCC/PLCC/KRCC against path,mos labels\n"
            "  --report FILE.html      a self-contained gallery sorted by score\n"
            "  --dump DIR              write every intermediate array as DIR/<name>.npy (one input)\n"
            "  --timings               seconds per stage on stderr, after each batch (cumulative)\n"
            "                          and at the end\n"
            "  -q, --quiet             no progress line\n"
            "  --threads N             OpenMP threads (default: all cores)\n"
            "  --batch N               images per decoder pass (default 8): each decoder weight is\n"
            "                          read once per batch; a killed run loses at most one batch\n"
            "  --no-mmap               read the model into this process's memory (2 MB pages where\n"
            "                          the kernel allows) instead of mapping the file: faster per\n"
            "                          image where page faults are slow (VMs), for long runs; the\n"
            "                          copy is not shared with other processes\n"
            "  -h, --help              this help\n"
            "other commands:\n"
            "  qalign --info MODEL                     the model's header and the compiled kernels\n"
            "  qalign --tokenize TEXT MODEL            TEXT's token ids (with BOS)\n"
            "  qalign --decode FILE OUT.ppm            decode an image to 8-bit RGB (binary PPM)\n"
            "  qalign --preprocess-only [--size N] FILE OUT.ppm\n"
            "                                          pad to square and resize as the model sees it\n");
}

typedef struct {
    const char *task;       /* "quality", "aesthetics" or "aesthetic" */
    const char *prompt;     /* template (--prompt), NULL: the default */
    const char *levels;     /* --levels spec, or NULL */
    int no_pad;             /* --no-pad */
    int video;              /* --video: inputs are frames of one video */
    const char *frames_dir; /* --frames DIR */
    int64_t max_frames;     /* --max-frames, 0 = no limit */
    int json;               /* JSON lines on stdout */
    int scale01;            /* scores on 0-1 */
    int quiet;              /* -q */
    int precise;            /* --precise */
    int no_mmap;            /* --no-mmap */
    int timings;            /* --timings */
    int threads;            /* --threads, 0 = default */
    const char *dump_dir;   /* --dump */
    SinkOptions sink;       /* --csv --jsonl --report --eval --resume */
    const char *shard;      /* --shard I/N */
    int batch;              /* --batch: images per decoder pass */
} Options;

typedef struct {
    Options o;
    qalign_model *m;
    qalign_ctx *ctx;
    int n_levels;
    const char *words[QALIGN_MAX_LEVELS];
    float lo, hi;           /* the levels' weight range: --scale 0-1 maps it to [0, 1] */
    char scale_name[64];    /* "1-5", "0-1", or the range of the --levels weights */
    Progress pg;
    Sink *sink;
    int dump_failed;        /* a --dump write failed */
    char dump_err[4200];
    int failures;           /* inputs that could not be scored */
    int batches;            /* decoder passes so far (for --timings) */
    const char *pending_path[QALIGN_MAX_BATCH]; /* the images waiting for the decoder */
    Image pending_thumb[QALIGN_MAX_BATCH];      /* their report thumbnails (if a report is written) */
} App;

/* ---- --dump: each stage of the computation as DIR/<name>.npy -------------------------- */

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
    size_t wrote = fwrite(st->data, elem, n, f);
    if (fclose(f) != 0 || wrote != n) {
        snprintf(app->dump_err, sizeof app->dump_err, "writing %s failed: %s", path, strerror(errno ? errno : EIO));
        app->dump_failed = 1;
    }
}

/* ---- results ---------------------------------------------------------------------------- */

static double scaled(const App *app, double score) {
    return app->o.scale01 && app->hi > app->lo ? (score - app->lo) / (app->hi - app->lo) : score;
}

/* The row of a result (or an error) as every output writes it. */
static ResultRow make_row(const App *app, const char *path, const char *kind, const qalign_result *r, const char *error) {
    ResultRow row = {.path = path, .task = app->o.task, .kind = kind, .scale = app->scale_name, .error = error,
                     .n_levels = app->n_levels, .levels = app->words};
    if (!error) {
        row.frames = r->frames;
        row.score = scaled(app, r->score);
        row.std = app->o.scale01 && app->hi > app->lo ? r->std / (app->hi - app->lo) : r->std;
        for (int i = 0; i < r->n_levels && i < APP_MAX_LEVELS; i++) {
            row.probs[i] = r->probs[i];
            row.logits[i] = r->logits[i];
        }
    }
    return row;
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
        for (int i = 0; i < app->n_levels; i++) printf(" %s=%.4f", app->words[i], row->probs[i]);
        printf("  %s\n", row->path);
    }
    fflush(stdout);
}

/* One input's result (r) or error: stdout, the result files / report / eval, the counters. */
static void record(App *app, const char *path, const char *kind, const qalign_result *r, const char *error,
                   const Image *thumb) {
    if (!error && r->status != QALIGN_OK) error = r->error;
    ResultRow row = make_row(app, path, kind, r, error);
    if (error) {
        app->failures++;
        progress_note(&app->pg, "qalign: error: %s: %s", path, error);
    }
    if (!error || app->o.json) print_row(app, &row);
    char err[512];
    if (app->sink && sink_add(app->sink, &row, thumb, err, sizeof err) != 0) die("%s", err);
    progress_update(&app->pg, error == NULL);
}

static void note_timings(App *app) {
    if (!app->o.timings) return;
    qalign_timings t;
    qalign_ctx_timings(app->ctx, &t);
    progress_note(&app->pg, "qalign: timings after %d batches: preprocess %.3f s, vision %.3f s, abstractor %.3f s, "
                  "decoder %.3f s", ++app->batches, t.preprocess, t.vision, t.abstractor, t.decoder);
}

/* ---- scoring ---------------------------------------------------------------------------- */

static qalign_image as_qimage(const Image *img) { return (qalign_image){img->rgb, img->w, img->h}; }

/* Score the images added so far as one decoder pass, then record them in order. */
static void flush_images(App *app) {
    int n = qalign_pending(app->ctx);
    if (n == 0) return;
    qalign_result res[QALIGN_MAX_BATCH];
    char err[QALIGN_ERR_LEN];
    if (qalign_flush(app->ctx, res, err, sizeof err) != QALIGN_OK) die("%s", err);
    for (int b = 0; b < n; b++) {
        record(app, app->pending_path[b], "image", &res[b], NULL, app->pending_thumb[b].rgb ? &app->pending_thumb[b] : NULL);
        image_free(&app->pending_thumb[b]);
    }
    note_timings(app);
}

/* Decode one image and add it to the batch; the decoder runs when the batch is full (or
 * at the end, or before a video or an error, so that results stay in input order). */
static void score_image(App *app, const char *path) {
    char err[QALIGN_ERR_LEN];
    Image img = {0};
    if (image_load(path, &img, err, sizeof err) != 0) {
        flush_images(app);
        record(app, path, "image", NULL, err, NULL);
        return;
    }
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

static void video_end(App *app, const char *name, const char *kind, const Image *thumb) {
    qalign_result r;
    char err[QALIGN_ERR_LEN];
    if (qalign_video_end(app->ctx, &r, err, sizeof err) != QALIGN_OK) die("%s", err);
    record(app, name, kind, &r, NULL, thumb);
    note_timings(app);
}

/* Frames given as image files (--video FRAME..., --frames DIR): one video. */
static void score_frame_files(App *app, const char *name, char **files, int n) {
    char err[QALIGN_ERR_LEN - 64], msg[QALIGN_ERR_LEN];
    if (video_begin(app, name, "frames", n) != 0) return;
    Image first = {0};
    for (int f = 0; f < n; f++) {
        Image img = {0};
        int rc = image_load(files[f], &img, err, sizeof err);
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
    video_end(app, name, "frames", &first);
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
    if (rc != 0 || plan.n == 0 || plan.n > QALIGN_MAX_FRAMES) {
        record(app, path, "video", NULL, err, NULL);
        video_plan_free(&plan);
        return;
    }
    if (video_begin(app, path, "video", plan.n) != 0) {
        video_plan_free(&plan);
        return;
    }
    progress_note(&app->pg, "qalign: %s: %lld frames (%.3f fps, %lld frames in the file)%s; buffers %.0f MB", path,
                  (long long)plan.n, plan.info.fps, (long long)plan.info.frame_count,
                  plan.subsampled ? ", subsampled by --max-frames (deviates from the original)" : "",
                  qalign_ctx_bytes(app->ctx) / 1e6);
    VideoCtx v = {app, {0}};
    if (video_read(&plan, video_frame, &v, err, sizeof err) != 0) {
        qalign_video_cancel(app->ctx);
        record(app, path, "video", NULL, err, NULL);
    } else {
        video_end(app, path, "video", v.thumb.rgb ? &v.thumb : NULL);
    }
    image_free(&v.thumb);
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

static int cmd_decode(int argc, char **argv, int preprocess) {
    int size = 448;
    const char *in = NULL, *out = NULL;
    for (int i = 0; i < argc; i++) {
        if (preprocess && strcmp(argv[i], "--size") == 0) {
            if (++i >= argc) die("--size needs a value");
            size = parse_int(argv[i], "--size", 1, 1 << 16);
        } else if (!in) in = argv[i];
        else if (!out) out = argv[i];
        else die("unexpected argument '%s' (try --help)", argv[i]);
    }
    if (!in || !out) die("usage: qalign %s FILE OUT.ppm", preprocess ? "--preprocess-only [--size N]" : "--decode");
    char err[256];
    Image img = {0}, res = {0};
    if (image_load(in, &img, err, sizeof err) != 0) die("%s: %s", in, err);
    Image *w = &img;
    if (preprocess) {
        static const uint8_t fill[3] = {122, 116, 104};
        if (image_preprocess(&img, fill, size, &res, err, sizeof err) != 0) die("%s: %s", in, err);
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
    printf("kernels     %s\n", qalign_kernels());
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

/* ---- main ------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--decode") == 0) return cmd_decode(argc - 2, argv + 2, 0);
    if (argc > 1 && strcmp(argv[1], "--preprocess-only") == 0) return cmd_decode(argc - 2, argv + 2, 1);

    static App app;
    Options *o = &app.o;
    *o = (Options){.task = "quality", .batch = 8};
    const char *tokenize_text = NULL, *model_path = NULL;
    int info = 0, only_positional = 0, n_inputs = 0;
    char **inputs = xmalloc((size_t)argc * sizeof(char *));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_positional || a[0] != '-' || !a[1]) {
            if (!model_path) model_path = a;
            else inputs[n_inputs++] = argv[i];
            continue;
        }
#define VALUE() (i + 1 < argc ? argv[++i] : (die("%s needs a value (try --help)", a), ""))
        if (!strcmp(a, "--")) only_positional = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            free(inputs);
            return 0;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--task")) {
            o->task = VALUE();
            if (strcmp(o->task, "quality") && strcmp(o->task, "aesthetics") && strcmp(o->task, "aesthetic"))
                die("--task must be quality, aesthetics or aesthetic, got '%s'", o->task);
        } else if (!strcmp(a, "--scale")) {
            const char *v = VALUE();
            if (!strcmp(v, "0-1")) o->scale01 = 1;
            else if (strcmp(v, "1-5")) die("--scale must be 1-5 or 0-1, got '%s'", v);
        }
        else if (!strcmp(a, "--video")) o->video = 1;
        else if (!strcmp(a, "--frames")) o->frames_dir = VALUE();
        else if (!strcmp(a, "--max-frames")) o->max_frames = parse_int(VALUE(), "--max-frames", 1, QALIGN_MAX_FRAMES);
        else if (!strcmp(a, "--prompt")) o->prompt = VALUE();
        else if (!strcmp(a, "--levels")) o->levels = VALUE();
        else if (!strcmp(a, "--no-pad")) o->no_pad = 1;
        else if (!strcmp(a, "--precise")) o->precise = 1;
        else if (!strcmp(a, "--json")) o->json = 1;
        else if (!strcmp(a, "--csv")) o->sink.csv_path = VALUE();
        else if (!strcmp(a, "--jsonl")) o->sink.jsonl_path = VALUE();
        else if (!strcmp(a, "--report")) o->sink.report_path = VALUE();
        else if (!strcmp(a, "--eval")) o->sink.labels_path = VALUE();
        else if (!strcmp(a, "--resume")) o->sink.resume = 1;
        else if (!strcmp(a, "--shard")) o->shard = VALUE();
        else if (!strcmp(a, "--batch")) o->batch = parse_int(VALUE(), "--batch", 1, QALIGN_MAX_BATCH);
        else if (!strcmp(a, "--dump")) o->dump_dir = VALUE();
        else if (!strcmp(a, "--timings")) o->timings = 1;
        else if (!strcmp(a, "--no-mmap")) o->no_mmap = 1;
        else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) o->quiet = 1;
        else if (!strcmp(a, "--threads")) o->threads = parse_int(VALUE(), "--threads", 1, 4096);
        else if (!strcmp(a, "--tokenize")) tokenize_text = VALUE();
        else if (!strcmp(a, "--info")) info = 1;
        else if (!strcmp(a, "--decode") || !strcmp(a, "--preprocess-only"))
            die("%s must be the first argument: qalign %s FILE OUT.ppm", a, a);
        else die("unknown option '%s' (try --help)", a);
#undef VALUE
    }
    if (!model_path) {
        usage(stderr);
        free(inputs);
        return 2;
    }
    if (o->sink.resume && !o->sink.csv_path && !o->sink.jsonl_path) die("--resume needs --csv or --jsonl");
    int shard_i = 0, shard_n = 0;
    char err[QALIGN_ERR_LEN];
    if (o->shard && shard_parse(o->shard, &shard_i, &shard_n, err, sizeof err) != 0) die("--shard: %s", err);
#ifndef _OPENMP
    if (o->threads > 1) fprintf(stderr, "qalign: warning: built without OpenMP, --threads %d ignored\n", o->threads);
#endif

    qalign_open_options oo = {.no_mmap = o->no_mmap, .no_prefetch = info || tokenize_text};
    if (qalign_open(model_path, &oo, &app.m, err, sizeof err)) die("%s", err);
    if (info || tokenize_text) {
        if (info) cmd_info(app.m);
        else cmd_tokenize(app.m, tokenize_text);
        qalign_close(app.m);
        free(inputs);
        return 0;
    }
    if (n_inputs == 0 && !o->frames_dir) die("no INPUT given (try --help)");
    if (o->dump_dir) o->batch = 1;
    qalign_ctx_options co = {.threads = o->threads, .batch = o->batch, .task = o->task, .prompt = o->prompt,
                             .levels = o->levels, .no_pad = o->no_pad, .precise = o->precise};
    int st = qalign_ctx_new(app.m, &co, &app.ctx, err, sizeof err);
    if (st) die("%s%s", st == QALIGN_ERR_ARG ? "--" : "", err); /* argument errors start with the option's name */
    app.n_levels = qalign_ctx_levels(app.ctx, app.words, NULL, &app.lo, &app.hi);
    if (o->scale01) snprintf(app.scale_name, sizeof app.scale_name, "0-1");
    else snprintf(app.scale_name, sizeof app.scale_name, "%g-%g", app.lo, app.hi);
    for (int i = 0; i < app.n_levels && (o->sink.csv_path || o->sink.jsonl_path || o->sink.report_path); i++) {
        int k = 0;
        while (k < APP_LEVELS && strcmp(app.words[i], APP_LEVEL_NAMES[k])) k++;
        if (k == APP_LEVELS)
            die("--levels: the --csv/--jsonl/--report results have probability columns for excellent good fair "
                "poor bad only, not '%s' (use --json for other words)", app.words[i]);
    }

    /* what to score: frames of one video, or a list of images/videos */
    ItemList items = {0};
    char **frames = NULL;
    int n_frames = 0;
    const char *frames_name = NULL;
    if (o->video || o->frames_dir) {
        if (o->frames_dir) {
            const char *dir = o->frames_dir;
            if (inputs_expand(&dir, 1, &(ExpandOptions){.natural_sort = 1}, &items, err, sizeof err) != 0) die("%s", err);
            frames_name = o->frames_dir;
        } else {
            if (n_inputs == 0) die("--video needs the frames as INPUTs");
            frames_name = inputs[0];
        }
        frames = xmalloc((items.n + (size_t)n_inputs + 1) * sizeof(char *));
        if (o->video) /* keep the command-line order: these are frames in time order */
            for (int i = 0; i < n_inputs; i++) frames[n_frames++] = inputs[i];
        else
            for (size_t i = 0; i < items.n; i++)
                if (items.items[i].kind == ITEM_IMAGE) frames[n_frames++] = items.items[i].path;
        if (n_frames == 0) die("%s: no frames", frames_name);
    } else {
        if (inputs_expand((const char *const *)inputs, (size_t)n_inputs, NULL, &items, err, sizeof err) != 0) die("%s", err);
        if (o->shard) items_shard(&items, shard_i, shard_n);
    }
    size_t n_items = frames ? 1 : items.n;
    if (o->dump_dir && n_items != 1) die("--dump takes one input (or the frames of one video)");
    if (o->dump_dir) { /* create DIR (one level) now, rather than fail after scoring */
        struct stat sb;
        if (mkdir(o->dump_dir, 0777) != 0 && errno != EEXIST) die("--dump %s: %s", o->dump_dir, strerror(errno));
        if (stat(o->dump_dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) die("--dump %s: not a directory", o->dump_dir);
        qalign_ctx_set_stage_hook(app.ctx, npy_stage, &app);
    }

    o->sink.task = o->task;
    o->sink.scale = app.scale_name;
    if (o->sink.csv_path || o->sink.jsonl_path || o->sink.report_path || o->sink.labels_path) {
        app.sink = sink_open(&o->sink, err, sizeof err);
        if (!app.sink) die("%s", err);
        if (sink_previous(app.sink)) fprintf(stderr, "qalign: resuming: %zu inputs already done\n", sink_previous(app.sink));
    }
    char why[512] = "";
    int have_ffmpeg = video_available(why, sizeof why);
    progress_start(&app.pg, n_items, o->quiet);

    if (frames) {
        if (app.sink && sink_done(app.sink, frames_name)) progress_skip(&app.pg); /* --resume: done */
        else score_frame_files(&app, frames_name, frames, n_frames);
    } else {
        for (size_t i = 0; i < items.n; i++) {
            const Item *it = &items.items[i];
            if (app.sink && sink_done(app.sink, it->path)) {
                progress_skip(&app.pg);
                continue;
            }
            progress_begin_item(&app.pg, it->path);
            if (it->kind == ITEM_ERROR) {
                flush_images(&app);
                record(&app, it->path, NULL, NULL, it->error, NULL);
            } else if (it->kind == ITEM_VIDEO) {
                flush_images(&app); /* before ffprobe: the images' rows do not wait for it */
                score_video(&app, it->path, have_ffmpeg, why);
            } else {
                score_image(&app, it->path);
            }
        }
    }
    flush_images(&app);
    progress_finish(&app.pg);
    if (app.dump_failed) die("--dump: %s", app.dump_err);
    if (app.sink) {
        if (sink_finish(app.sink, stderr, err, sizeof err) != 0) die("%s", err);
        sink_free(app.sink);
    }
    if (o->timings) {
        qalign_timings t;
        qalign_ctx_timings(app.ctx, &t);
        double total = t.preprocess + t.vision + t.abstractor + t.decoder;
        fprintf(stderr, "qalign: timings (%d threads, %s): preprocess %.3f s, vision %.3f s, abstractor %.3f s, "
                "decoder %.3f s, total %.3f s\n", qalign_ctx_threads(app.ctx), qalign_kernels(), t.preprocess, t.vision,
                t.abstractor, t.decoder, total);
    }
    free(inputs);
    free(frames);
    itemlist_free(&items);
    qalign_ctx_free(app.ctx);
    qalign_close(app.m);
    return app.failures ? 1 : 0;
}
