/* test_app.c - driver for tests/test_app.py: calls the batch side (app.h) directly (built by the Makefile
 * rule build/%: with -DTESTING, linked with the batch side, image*.c and tokenizer.c).
 *
 *   test_app indices COUNT NUM DEN [MAX]     n, then the indices (one line), then the
 *                                            --max-frames subsample if MAX
 *   test_app indices-batch                   stdin "COUNT NUM DEN" lines -> "n: idx..." lines
 *   test_app selectexpr                      stdin indices -> video_select_filter()
 *   test_app sniff FILE...                   KIND<TAB>FORMAT<TAB>REASON per file
 *   test_app expand [--hidden] [--natural] [--shard I/N] ARG...
 *                                            KIND<TAB>FORMAT<TAB>PATH<TAB>ERROR, then "# skipped N"
 *   test_app probe VIDEO                     key=value lines (VideoInfo)
 *   test_app frames VIDEO OUTDIR [MAX [MODE]] plan + read; OUTDIR/K.ppm per delivered frame,
 *                                            prints plan, "frame K INDEX WxH" lines and the
 *                                            driver's own peak RSS (ffmpeg not included)
 *   test_app stats                           stdin "x y" lines -> srcc plcc krcc krcc_bruteforce
 *   test_app eval LABELS                     stdin "HEXPATH SCORE" lines -> EvalResult
 *   test_app write FORMAT OUT [--resume] [MODEL]
 *                                            stdin "HEXPATH SCORE HEXERROR|-" rows (appended,
 *                                            made by MODEL, default "m1"); with --resume prints
 *                                            the rows that are reused ("skip HEXPATH")
 *   test_app read FORMAT FILE                rows as "HEXPATH SCORE HEXERROR|-", then torn/bad
 *   test_app thumb IN OUT.jpg OUT.ppm [SIDE [QUALITY]]
 *                                            decode, downscale, write the thumbnail (PPM) and
 *                                            its JPEG; prints PSNR of jpeg_decode(JPEG) vs PPM
 *   test_app base64                          stdin bytes -> base64
 *   test_app progress N                      drives the progress line (stderr) over N items
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "app.h"
#include "image.h"

static int die(const char *fmt, const char *a) {
    fprintf(stderr, "test_app: ");
    fprintf(stderr, fmt, a);
    fprintf(stderr, "\n");
    return 2;
}

static char *unhex(const char *h) {
    size_t n = strlen(h);
    char *s = malloc(n / 2 + 1);
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        s[i] = (char)v;
    }
    s[n / 2] = 0;
    return s;
}

static void puthex(const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) printf("%02x", *p);
}

static const char *kind_name(ItemKind k) {
    return k == ITEM_IMAGE ? "image" : k == ITEM_VIDEO ? "video" : "error";
}

/* ---- indices ---- */
static int cmd_indices(int argc, char **argv) {
    if (argc < 3) return die("%s", "indices COUNT NUM DEN [MAX]");
    long long count = atoll(argv[0]), num = atoll(argv[1]), den = atoll(argv[2]);
    double fps = (double)num / (double)den;
    int64_t n = video_frame_indices(count, fps, NULL, 0);
    printf("%lld\n", (long long)n);
    if (n < 0) return 0;
    int64_t *idx = malloc((size_t)(n ? n : 1) * sizeof *idx);
    video_frame_indices(count, fps, idx, n);
    for (int64_t i = 0; i < n; i++) printf(i ? " %lld" : "%lld", (long long)idx[i]);
    printf("\n");
    if (argc > 3) {
        int64_t max = atoll(argv[3]);
        int64_t *o = malloc((size_t)(n ? n : 1) * sizeof *o);
        int64_t m = video_subsample(idx, n, max, o);
        for (int64_t i = 0; i < m; i++) printf(i ? " %lld" : "%lld", (long long)o[i]);
        printf("\n");
        free(o);
    }
    free(idx);
    return 0;
}

/* stdin "COUNT NUM DEN" lines -> "n: indices" lines (one process for many cases) */
static int cmd_indices_batch(void) {
    long long count, num, den;
    int64_t *idx = NULL;
    size_t cap = 0;
    while (scanf("%lld %lld %lld", &count, &num, &den) == 3) {
        double fps = (double)num / (double)den;
        int64_t n = video_frame_indices(count, fps, NULL, 0);
        printf("%lld:", (long long)n);
        if (n > 0) {
            if ((size_t)n > cap) {
                cap = (size_t)n;
                idx = realloc(idx, cap * sizeof *idx);
            }
            video_frame_indices(count, fps, idx, n);
            for (int64_t i = 0; i < n; i++) printf(" %lld", (long long)idx[i]);
        }
        printf("\n");
    }
    free(idx);
    return 0;
}

/* stdin: indices (non-decreasing) -> the select filter */
static int cmd_selectexpr(void) {
    size_t n = 0, cap = 1024;
    int64_t *idx = malloc(cap * sizeof *idx);
    long long v;
    while (scanf("%lld", &v) == 1) {
        if (n == cap) idx = realloc(idx, (cap *= 2) * sizeof *idx);
        idx[n++] = v;
    }
    char *f = video_select_filter(idx, (int64_t)n);
    printf("%s\n", f);
    free(f);
    free(idx);
    return 0;
}

static int cmd_sniff(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        const char *fmt;
        char why[256];
        ItemKind k = sniff_path(argv[i], &fmt, why, sizeof why);
        printf("%s\t%s\t%s\n", kind_name(k), fmt ? fmt : "-", k == ITEM_ERROR ? why : "");
    }
    return 0;
}

static int cmd_expand(int argc, char **argv) {
    ExpandOptions o = {0};
    int si = 0, sn = 0;
    char err[256];
    int i = 0;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--hidden")) o.include_hidden = 1;
        else if (!strcmp(argv[i], "--natural")) o.natural_sort = 1;
        else if (!strcmp(argv[i], "--shard") && i + 1 < argc) {
            if (shard_parse(argv[++i], &si, &sn, err, sizeof err) != 0) {
                printf("shard error: %s\n", err);
                return 1;
            }
        } else break;
    }
    ItemList l = {0};
    if (inputs_expand((const char *const *)argv + i, (size_t)(argc - i), &o, &l, err, sizeof err) != 0) {
        printf("expand error: %s\n", err);
        return 1;
    }
    if (sn) items_shard(&l, si, sn);
    for (size_t k = 0; k < l.n; k++)
        printf("%s\t%s\t%s\t%s\n", kind_name(l.items[k].kind), l.items[k].format ? l.items[k].format : "-",
               l.items[k].path, l.items[k].error ? l.items[k].error : "");
    printf("# skipped %zu\n", l.n_skipped);
    itemlist_free(&l);
    return 0;
}

static int cmd_probe(int argc, char **argv) {
    if (argc < 1) return die("%s", "probe VIDEO");
    VideoInfo vi;
    char err[512];
    if (video_probe(argv[0], &vi, err, sizeof err) != 0) {
        printf("error=%s\n", err);
        return 1;
    }
    printf("stream=%d\nwidth=%d\nheight=%d\ncodec=%s\nfps_num=%lld\nfps_den=%lld\nfps=%.17g\nframe_count=%lld\n"
           "count_source=%s\nnb_frames=%lld\nduration=%.6f\n",
           vi.stream, vi.width, vi.height, vi.codec, (long long)vi.fps_num, (long long)vi.fps_den, vi.fps,
           (long long)vi.frame_count, vi.count_source, (long long)vi.nb_frames, vi.duration);
    return 0;
}

typedef struct {
    const char *dir;
    int64_t last_k;
    int stop_after;
} FramesCtx;

static int on_frame(void *user, int64_t k, int64_t index, const Image *frame, char *err, size_t errlen) {
    FramesCtx *c = user;
    if (k != c->last_k + 1) {
        snprintf(err, errlen, "frames out of order: %lld after %lld", (long long)k, (long long)c->last_k);
        return 1;
    }
    c->last_k = k;
    char path[4096];
    snprintf(path, sizeof path, "%s/%lld.ppm", c->dir, (long long)k);
    char e[256];
    if (image_write_ppm(path, frame, e, sizeof e) != 0) {
        snprintf(err, errlen, "%s", e);
        return 1;
    }
    printf("frame %lld %lld %dx%d\n", (long long)k, (long long)index, frame->w, frame->h);
    if (c->stop_after >= 0 && k + 1 >= c->stop_after) {
        snprintf(err, errlen, "stopped by the callback after %d frames", c->stop_after);
        return 1;
    }
    return 0;
}

static int cmd_frames(int argc, char **argv) {
    if (argc < 2) return die("%s", "frames VIDEO OUTDIR [MAX [MODE [STOP]]]");
    int64_t max = argc > 2 ? atoll(argv[2]) : 0;
    int mode = argc > 3 ? atoi(argv[3]) : 0;
    char err[512];
    VideoPlan plan;
    if (video_plan(argv[0], max, &plan, err, sizeof err) != 0) {
        printf("error=%s\n", err);
        return 1;
    }
    printf("count=%lld fps=%.17g n=%lld original=%lld subsampled=%d\nidx", (long long)plan.info.frame_count,
           plan.info.fps, (long long)plan.n, (long long)plan.n_original, plan.subsampled);
    for (int64_t i = 0; i < plan.n; i++) printf(" %lld", (long long)plan.idx[i]);
    printf("\n");
    FramesCtx c = {argv[1], -1, argc > 4 ? atoi(argv[4]) : -1};
    int rc = video_read_frames(plan.path, &plan.info, plan.idx, plan.n, (VideoReadMode)mode, on_frame, &c, err,
                               sizeof err);
    /* Peak RSS of this process image only: VmHWM (Linux). ru_maxrss would also count the
     * memory of whatever exec'd us (Python), and ffmpeg is a separate process either way. */
    long hwm = -1;
    FILE *st = fopen("/proc/self/status", "r");
    if (st) {
        char line[256];
        while (fgets(line, sizeof line, st))
            if (sscanf(line, "VmHWM: %ld", &hwm) == 1) break;
        fclose(st);
    }
    if (hwm < 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        hwm = ru.ru_maxrss;
    }
    if (rc != 0) printf("error=%s\n", err);
    else printf("delivered=%lld maxrss_kb=%ld\n", (long long)(c.last_k + 1), hwm);
    video_plan_free(&plan);
    return rc ? 1 : 0;
}

/* Kendall tau-b by counting all pairs: the reference for the O(n log n) version. */
static double tau_b_brute(const double *x, const double *y, size_t n) {
    double c = 0, d = 0, tx = 0, ty = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++) {
            double a = x[i] - x[j], b = y[i] - y[j];
            if (a == 0 && b == 0) continue;
            if (a == 0) tx++;
            else if (b == 0) ty++;
            else if ((a > 0) == (b > 0)) c++;
            else d++;
        }
    double den = sqrt((c + d + tx) * (c + d + ty));
    return den > 0 ? (c - d) / den : NAN;
}

static int cmd_stats(void) {
    size_t n = 0, cap = 1024;
    double *x = malloc(cap * sizeof *x), *y = malloc(cap * sizeof *y);
    double a, b;
    while (scanf("%lf %lf", &a, &b) == 2) {
        if (n == cap) {
            cap *= 2;
            x = realloc(x, cap * sizeof *x);
            y = realloc(y, cap * sizeof *y);
        }
        x[n] = a;
        y[n] = b;
        n++;
    }
    printf("%.17g %.17g %.17g %.17g\n", stats_srcc(x, y, n), stats_plcc(x, y, n), stats_krcc(x, y, n),
           n <= 3000 ? tau_b_brute(x, y, n) : NAN);
    free(x);
    free(y);
    return 0;
}

static int cmd_eval(int argc, char **argv) {
    if (argc < 1) return die("%s", "eval LABELS");
    char err[512];
    Labels *l = labels_load(argv[0], err, sizeof err);
    if (!l) {
        printf("error=%s\n", err);
        return 1;
    }
    char hex[8192];
    double s;
    size_t n = 0;
    char **paths = malloc(100000 * sizeof *paths);
    double *scores = malloc(100000 * sizeof *scores);
    while (scanf("%8191s %lf", hex, &s) == 2 && n < 100000) {
        paths[n] = unhex(hex);
        scores[n++] = s;
    }
    EvalResult r;
    if (eval_run(l, (const char *const *)paths, scores, n, &r, err, sizeof err) != 0) {
        printf("error=%s\n", err);
        return 1;
    }
    printf("labels=%zu results=%zu matched=%zu by_path=%zu by_suffix=%zu by_name=%zu ambiguous=%zu\n", r.n_labels,
           r.n_results, r.matched, r.by_path, r.by_suffix, r.by_name, r.ambiguous);
    printf("%.17g %.17g %.17g\n", r.srcc, r.plcc, r.krcc);
    eval_print(stdout, &r, argv[0]);
    for (size_t i = 0; i < n; i++) free(paths[i]);
    free(paths);
    free(scores);
    labels_free(l);
    return 0;
}

static void print_row(const ResultRow *r) {
    if (!r->path) { /* a row that made the reader fail (cannot happen for rows it returns) */
        printf("-\n");
        return;
    }
    puthex(r->path);
    printf(" %.6f ", r->error ? NAN : r->score);
    if (r->error) puthex(r->error);
    else printf("-");
    printf(" %s %s %s %d", r->task ? r->task : "(null)", r->kind ? r->kind : "(null)", r->scale ? r->scale : "(null)",
           r->frames);
    for (int i = 0; i < APP_LEVELS; i++) printf(" %.6f", r->error ? NAN : r->probs[i]);
    for (int i = 0; i < APP_LEVELS; i++) printf(" %.6f", r->error ? NAN : r->logits[i]);
    printf(" model=%s levels=%s pad=%d precise=%d max_frames=%d\n", r->setup.model ? r->setup.model : "(null)",
           r->setup.levels ? r->setup.levels : "(null)", r->setup.pad, r->setup.precise, r->max_frames);
}

static int cmd_write(int argc, char **argv) {
    if (argc < 2) return die("%s", "write csv|jsonl OUT [--resume] [MODEL]");
    ResultsFormat fmt = strcmp(argv[0], "jsonl") == 0 ? RESULTS_JSONL : RESULTS_CSV;
    int resume = argc > 2 && strcmp(argv[2], "--resume") == 0;
    const char *model = argc > 2 + resume ? argv[2 + resume] : "m1";
    RowSetup setup = {model, "USER: <|image|>\nrate it", "excellent=5,good=4,fair=3,poor=2,bad=1", 1, 0};
    char err[512];
    RowSet *prev = rowset_new();
    size_t dropped;
    ResultsFile *f = results_open(argv[1], fmt, resume ? prev : NULL, &dropped, err, sizeof err);
    if (!f) {
        printf("error=%s\n", err);
        rowset_free(prev);
        return 1;
    }
    printf("previous=%zu dropped=%zu\n", rowset_count(prev), dropped);
    char hp[8192], he[8192];
    double s;
    while (scanf("%8191s %lf %8191s", hp, &s, he) == 3) {
        char *path = unhex(hp), *e = strcmp(he, "-") ? unhex(he) : NULL;
        ResultRow r = {.path = path, .task = "quality", .kind = "image", .frames = e ? 0 : 1, .score = s, .std = 0.5,
                       .scale = "1-5", .probs = {0.1, 0.2, 0.3, 0.25, 0.15}, .error = e,
                       .logits = {-1.5, 0.25, 1, 0.5, -0.125}, .setup = setup};
        if (resume && rowset_done_like(prev, &r)) {
            printf("skip ");
            puthex(path);
            printf("\n");
        } else if (results_write(f, &r, err, sizeof err) != 0) {
            printf("error=%s\n", err);
            return 1;
        }
        free(path);
        free(e);
    }
    rowset_free(prev);
    return results_close(f, err, sizeof err) ? 1 : 0;
}

static int cmd_read(int argc, char **argv) {
    if (argc < 2) return die("%s", "read csv|jsonl FILE");
    ResultsFormat fmt = strcmp(argv[0], "jsonl") == 0 ? RESULTS_JSONL : RESULTS_CSV;
    RowSet *s = rowset_new();
    int torn;
    size_t bad;
    char err[512];
    if (results_read(argv[1], fmt, s, &torn, &bad, err, sizeof err) != 0) {
        printf("error=%s\n", err);
        rowset_free(s);
        return 1;
    }
    for (size_t i = 0; i < rowset_count(s); i++) print_row(rowset_row(s, i));
    printf("torn=%d bad=%zu\n", torn, bad);
    rowset_free(s);
    return 0;
}

static double psnr(const Image *a, const Image *b) {
    if (a->w != b->w || a->h != b->h) return -1;
    double se = 0;
    size_t n = (size_t)a->w * a->h * 3;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a->rgb[i] - b->rgb[i];
        se += d * d;
    }
    if (se == 0) return 99;
    return 10 * log10(255.0 * 255.0 / (se / (double)n));
}

static int cmd_thumb(int argc, char **argv) {
    if (argc < 3) return die("%s", "thumb IN OUT.jpg OUT.ppm [SIDE [QUALITY]]");
    int side = argc > 3 ? atoi(argv[3]) : 160, q = argc > 4 ? atoi(argv[4]) : 82;
    char err[256];
    Image in, t, back;
    if (image_load(argv[0], &in, err, sizeof err) != 0) {
        printf("error=%s\n", err);
        return 1;
    }
    if (thumb_downscale(&in, side, &t, err, sizeof err) != 0) {
        printf("error=%s\n", err);
        return 1;
    }
    uint8_t *jpg;
    size_t len;
    if (jpeg_encode(&t, q, &jpg, &len, err, sizeof err) != 0) {
        printf("error=%s\n", err);
        return 1;
    }
    FILE *f = fopen(argv[1], "wb");
    fwrite(jpg, 1, len, f);
    fclose(f);
    image_write_ppm(argv[2], &t, err, sizeof err);
    double p = -1;
    if (jpeg_decode(jpg, len, &back, err, sizeof err) == 0) {
        p = psnr(&t, &back);
        image_free(&back);
    } else printf("decode error=%s\n", err);
    printf("thumb %dx%d jpeg %zu bytes psnr_own_decoder %.2f\n", t.w, t.h, len, p);
    free(jpg);
    image_free(&in);
    image_free(&t);
    return 0;
}

static int cmd_base64(void) {
    unsigned char buf[65536];
    size_t n = fread(buf, 1, sizeof buf, stdin);
    char *s = base64_encode(buf, n);
    printf("%s\n", s);
    free(s);
    return 0;
}

static int cmd_progress(int argc, char **argv) {
    int n = argc > 0 ? atoi(argv[0]) : 5;
    Progress p;
    progress_start(&p, (size_t)n, 0);
    for (int i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "dir/item_%03d.jpg", i);
        if (i == 1) {
            progress_skip(&p);
            continue;
        }
        progress_begin_item(&p, name);
        struct timespec ts = {0, 30 * 1000000L};
        nanosleep(&ts, NULL);
        if (i == 2) progress_note(&p, "qalign: error: %s: %s", name, "a message in the middle");
        progress_update(&p, i != 2);
    }
    progress_finish(&p);
    printf("enabled=%d done=%zu failed=%zu skipped=%zu\n", p.enabled, p.done, p.failed, p.skipped);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return die("%s", "usage: test_app COMMAND ...");
    const char *c = argv[1];
    argc -= 2;
    argv += 2;
    if (!strcmp(c, "indices")) return cmd_indices(argc, argv);
    if (!strcmp(c, "indices-batch")) return cmd_indices_batch();
    if (!strcmp(c, "selectexpr")) return cmd_selectexpr();
    if (!strcmp(c, "sniff")) return cmd_sniff(argc, argv);
    if (!strcmp(c, "expand")) return cmd_expand(argc, argv);
    if (!strcmp(c, "probe")) return cmd_probe(argc, argv);
    if (!strcmp(c, "frames")) return cmd_frames(argc, argv);
    if (!strcmp(c, "stats")) return cmd_stats();
    if (!strcmp(c, "eval")) return cmd_eval(argc, argv);
    if (!strcmp(c, "write")) return cmd_write(argc, argv);
    if (!strcmp(c, "read")) return cmd_read(argc, argv);
    if (!strcmp(c, "thumb")) return cmd_thumb(argc, argv);
    if (!strcmp(c, "base64")) return cmd_base64();
    if (!strcmp(c, "progress")) return cmd_progress(argc, argv);
    return die("unknown command %s", c);
}
