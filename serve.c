/* serve.c - qalign as a service (serve.h): `--listen HOST:PORT` (HTTP/1.1) and `--stdio`
 * (JSON lines), on qalign.h, image.h and app.h's result rows.
 *
 * Threads and what they own:
 *   main       HTTP: accepts connections (one thread each) until SIGTERM/SIGINT; stdio: reads
 *              stdin lines until EOF or a signal. Then it waits for what is in flight.
 *   connection reads one request at a time (head, then the body into memory once a queue
 *              slot is free), queues its images, waits for them, writes the answer.
 *   worker     the only thread that decodes images and scores: one context per task, made
 *              when first asked for; per decoder pass it takes up to --batch images of the
 *              head request's task, in arrival order, waiting at most --batch-wait ms after
 *              that request arrived for others to join (the vision tower runs on each image
 *              as it is taken, so requests arriving meanwhile join the pass).
 * One mutex (Server.mu) guards the queue, the counters and the metrics.
 *
 * Memory: a request holds a queue slot from the end of its head to its answer, and its body
 * (at most --max-body bytes; base64 is decoded in place) only while it holds one, so the
 * bodies take at most --max-queue x --max-body; images are decoded one at a time by the
 * worker, each within --max-pixels and what is left of its request's --max-request-pixels
 * (both checked from the image's header, before it is decoded). A body over --max-body is
 * refused from its Content-Length, before it is read.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "inputs.h"
#include "results.h"
#include "common.h"
#include "image.h"
#include "qalign.h"
#include "serve.h"

/* ---- small helpers ---------------------------------------------------------------------- */

/* t as a JSON string, escaped as the result rows are (app.c) */
static void buf_json(Buf *b, const char *t) {
    char *q = json_quoted(t);
    if (!q) {
        b->oom = 1;
        return;
    }
    buf_adds(b, q);
    free(q);
}

/* ---- options ----------------------------------------------------------------------------- */

static int parse_long(const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

/* "64M", "100000", "1G", "512K", "1T" (1 byte to 1 TB) */
static int parse_size(const char *v, int64_t *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || !(x >= 0)) return -1;
    double mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1024, end++;
    else if (*end == 'M' || *end == 'm') mul = 1024.0 * 1024, end++;
    else if (*end == 'G' || *end == 'g') mul = 1024.0 * 1024 * 1024, end++;
    else if (*end == 'T' || *end == 't') mul = 1024.0 * 1024 * 1024 * 1024, end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end || x * mul < 1 || x * mul > (double)((int64_t)1 << 40)) return -1;
    *out = (int64_t)(x * mul);
    return 0;
}

/* "40M", "1G", "250000": pixels (K, M, G, T = 1e3, 1e6, 1e9, 1e12; 1 to 1e12) */
int serve_parse_pixels(const char *v, int64_t *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || !(x >= 0)) return -1;
    if (*end == 'K' || *end == 'k') x *= 1e3, end++;
    else if (*end == 'M' || *end == 'm') x *= 1e6, end++;
    else if (*end == 'G' || *end == 'g') x *= 1e9, end++;
    else if (*end == 'T' || *end == 't') x *= 1e12, end++;
    if (*end || x < 1 || x > 1e12) return -1;
    *out = (int64_t)x;
    return 0;
}

int serve_option(ServeOptions *o, int argc, char **argv, int i, char *err, size_t errlen) {
    const char *a = argv[i];
    static const char *const with_value[] = {"--listen", "--batch-wait", "--max-body", "--max-queue", "--max-connections",
                                             "--timeout", "--api-key", "--api-key-file", "--max-request-pixels", NULL};
    if (!strcmp(a, "--stdio")) {
        o->stdio = 1;
        return 1;
    }
    int k = 0;
    while (with_value[k] && strcmp(a, with_value[k])) k++;
    if (!with_value[k]) return 0;
    if (i + 1 >= argc) return fail(err, errlen, "%s needs a value (try --help)", a);
    const char *v = argv[i + 1];
    long x;
    if (!strcmp(a, "--listen")) {
        if (!strrchr(v, ':')) return fail(err, errlen, "--listen expects HOST:PORT (e.g. 127.0.0.1:8080), got '%s'", v);
        o->listen = v;
    } else if (!strcmp(a, "--batch-wait")) {
        if (parse_long(v, 0, 60000, &x)) return fail(err, errlen, "--batch-wait expects milliseconds in [0, 60000], got '%s'", v);
        o->batch_wait_ms = (int)x;
    } else if (!strcmp(a, "--max-body")) {
        if (parse_size(v, &o->max_body))
            return fail(err, errlen, "--max-body expects a size from 1 to 1T bytes, such as 64M, 1G or 1T, got '%s'", v);
    } else if (!strcmp(a, "--max-queue")) {
        if (parse_long(v, 1, 100000, &x)) return fail(err, errlen, "--max-queue expects an integer in [1, 100000], got '%s'", v);
        o->max_queue = (int)x;
    } else if (!strcmp(a, "--max-connections")) {
        if (parse_long(v, 1, 100000, &x))
            return fail(err, errlen, "--max-connections expects an integer in [1, 100000], got '%s'", v);
        o->max_connections = (int)x;
    } else if (!strcmp(a, "--timeout")) {
        char *end;
        double t = strtod(v, &end);
        if (end == v || *end || !(t >= 0.1 && t <= 86400)) return fail(err, errlen, "--timeout expects seconds in [0.1, 86400], got '%s'", v);
        o->timeout = t;
    } else if (!strcmp(a, "--max-request-pixels")) {
        if (serve_parse_pixels(v, &o->max_request_pixels))
            return fail(err, errlen, "--max-request-pixels expects a count such as 400M or 1G (1 to 1T), got '%s'", v);
    } else if (!strcmp(a, "--api-key-file")) {
        char key[4096];
        FILE *f = fopen(v, "r");
        if (!f) return fail(err, errlen, "--api-key-file %s: %s", v, strerror(errno));
        size_t n = fread(key, 1, sizeof key - 1, f);
        int bad = ferror(f);
        fclose(f);
        if (bad) return fail(err, errlen, "--api-key-file %s: cannot read it", v);
        key[n] = 0;
        key[strcspn(key, "\r\n")] = 0; /* the first line */
        for (size_t k = strlen(key); k > 0 && (key[k - 1] == ' ' || key[k - 1] == '\t'); k--) key[k - 1] = 0;
        if (!key[0]) return fail(err, errlen, "--api-key-file %s: the first line is empty", v);
        if (!(o->api_key = strdup(key))) return fail(err, errlen, "out of memory");
    } else {
        if (!v[0]) return fail(err, errlen, "--api-key is empty");
        /* a copy, then the argument blanked: /proc/PID/cmdline (ps) no longer shows it */
        if (!(o->api_key = strdup(v))) return fail(err, errlen, "out of memory");
        memset(argv[i + 1], 0, strlen(argv[i + 1]));
    }
    return 2;
}

/* ---- the server's state ---------------------------------------------------------------- */

enum { TASK_QUALITY, TASK_AESTHETICS, TASK_AESTHETIC, N_TASKS };
static const char *const TASK_NAMES[N_TASKS] = {"quality", "aesthetics", "aesthetic"};

typedef struct Job Job;

/* One image of a job, or its whole video: what the worker takes from the queue. */
typedef struct Unit {
    Job *job;
    int index;              /* the job's result (and source) index; the video: 0 */
    struct Unit *next;
} Unit;

struct Job {
    ServeRequest req;       /* sources point into body */
    char *body;             /* the request's bytes (owned) */
    char *name;             /* ?name= of a raw-body request (owned), or NULL */
    int task;
    const char *scale;      /* "1-5", "0-1", "0-100", or NULL: the score's own range */
    int n_res;              /* req.n images, or 1 (a video) */
    qalign_result *res;
    char (*warn)[160];      /* per result: the decoder's warning ("" if none): the row's "warning" */
    unsigned char *unread;  /* per result: 1 when the input is no image qalign reads (the row's kind is null) */
    Unit *units;
    int64_t pixels_left;    /* what is left of --max-request-pixels (the worker's) */
    int remaining;          /* units not scored yet */
    int done;
    double t_start;         /* when its head was complete */
    Job *next_done;
    /* a question (POST /ask, or "question" on stdin): answered in words instead of scored */
    int ask;
    const char *question;   /* req.question or qbuf */
    char *qbuf;             /* ?question= (owned) */
    qalign_ask_options ao;
    char decoding[192];     /* how, as rows record it */
    qalign_answer *ans;     /* n_res */
};

#define N_BATCH_BUCKETS 7   /* 1 2 4 8 16 32 64 */
static const double LATENCY_BUCKETS[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
#define N_LATENCY (sizeof LATENCY_BUCKETS / sizeof LATENCY_BUCKETS[0])

typedef struct Server {
    ServeOptions o;
    const qalign_model *m;
    qalign_ctx_options co;
    int default_task;
    const char *default_scale; /* --scale, or NULL */
    qalign_info info;
    const char *model_name; /* the file's name without its directory */
    RowStyle levels;        /* the levels (same in every context): words, lo, hi; the rows' setup */

    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* to the worker: units queued, or stop */
    pthread_cond_t done_cv; /* from the worker: a job done; from connections: one closed, a slot freed */
    Unit *qhead, *qtail;
    int queued;             /* units in the queue */
    int admitted;           /* requests holding a slot (<= max_queue) */
    int conns;              /* connection threads alive */
    int stopping;           /* a signal came: no new connections, no new stdin lines */
    int stop_worker;        /* nothing more will be queued */

    qalign_ctx *ctx[N_TASKS]; /* the worker's */

    /* metrics (mu) */
    uint64_t by_status[600];
    uint64_t images, videos, frames, batches, batch_hist[N_BATCH_BUCKETS], batch_images;
    uint64_t latency_hist[N_LATENCY], latency_count;
    double latency_sum, decode_seconds;
    qalign_timings timings[N_TASKS];
    uint64_t received, answered;
    uint64_t asked, gen_tokens, gen_passes, gen_sequences; /* answers, tokens generated, decoder passes */
    double gen_seconds;     /* wall time of the generation calls */
    char ask_template[256]; /* the question template rows record */

    int stop_pipe[2];       /* HTTP: the write end is closed when stopping: idle connections wake */
    pthread_mutex_t out_mu; /* stdio: answers are written one line at a time */
    int out_failed;
    Job *done_head, *done_tail; /* stdio: finished jobs for the writer thread (mu) */
    int stop_writer;
} Server;

static volatile sig_atomic_t g_signals;
static int g_sig_fd = -1;   /* the signal pipe's write end */

static void on_signal(int sig) {
    (void)sig;
    if (g_signals++ > 0) { /* a second signal: do not wait */
        static const char msg[] = "qalign: second signal: exiting without waiting\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(1);
    }
    if (g_sig_fd >= 0) {
        ssize_t w = write(g_sig_fd, "s", 1);
        (void)w;
    }
}

static void job_free(Job *j) {
    if (!j) return;
    serve_request_free(&j->req);
    free(j->body);
    free(j->name);
    free(j->res);
    free(j->warn);
    free(j->unread);
    free(j->units);
    for (int i = 0; j->ans && i < j->n_res; i++) qalign_answer_free(&j->ans[i]);
    free(j->ans);
    free(j->qbuf);
    free(j);
}

static void set_error(qalign_result *r, int status, const char *msg) {
    memset(r, 0, sizeof *r);
    r->status = status ? status : QALIGN_ERR_INPUT;
    snprintf(r->error, sizeof r->error, "%s", msg);
}

static int find_task(const char *t) {
    for (int k = 0; k < N_TASKS; k++)
        if (!strcmp(t, TASK_NAMES[k])) return k;
    return -1;
}

/* Queue every unit of job j (mu held). */
static void enqueue(Server *s, Job *j) {
    int nu = j->req.kind == SERVE_VIDEO ? 1 : j->req.n;
    j->remaining = nu;
    for (int i = 0; i < nu; i++) {
        Unit *u = &j->units[i];
        u->job = j;
        u->index = i;
        u->next = NULL;
        if (s->qtail) s->qtail->next = u;
        else s->qhead = u;
        s->qtail = u;
        s->queued++;
    }
    pthread_cond_signal(&s->work_cv);
}

/* A job ready to queue from a parsed request: results, units; task and scale checked. */
/* The name of a scale a request may ask for (a static string), or NULL. */
static const char *find_scale(const char *v) {
    static const char *const names[] = {"1-5", "0-1", "0-100"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
        if (!strcmp(v, names[k])) return names[k];
    return NULL;
}

static Job *job_new(Server *s, const char *task, const char *scale, char *err, size_t errlen) {
    int t = task ? find_task(task) : s->default_task;
    if (t < 0) return fail(err, errlen, "task must be quality, aesthetics or aesthetic"), NULL;
    if (scale && !find_scale(scale)) return fail(err, errlen, "scale must be 1-5, 0-1 or 0-100"), NULL;
    Job *j = calloc(1, sizeof *j);
    if (!j) return fail(err, errlen, "out of memory"), NULL;
    j->task = t;
    j->scale = scale ? find_scale(scale) : s->default_scale;
    return j;
}

static int job_ready(Server *s, Job *j, char *err, size_t errlen) {
    j->pixels_left = s->o.max_request_pixels;
    j->n_res = j->req.kind == SERVE_VIDEO ? 1 : j->req.n;
    j->res = calloc((size_t)j->n_res, sizeof *j->res);
    j->warn = calloc((size_t)j->n_res, sizeof *j->warn);
    j->unread = calloc((size_t)j->n_res, 1);
    j->units = calloc((size_t)j->n_res, sizeof *j->units);
    if (j->ask) j->ans = calloc((size_t)j->n_res, sizeof *j->ans);
    if (!j->res || !j->warn || !j->unread || !j->units || (j->ask && !j->ans)) return fail(err, errlen, "out of memory");
    return 0;
}

/* A question and its decoding options (text, "" when absent) into j: checked here so that a
 * bad request gets its 400 before it waits. */
static int job_question(Server *s, Job *j, const char *question, const char *const dec[5], char *err, size_t errlen) {
    const char *q = question;
    while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
    if (!*q) return fail(err, errlen, "the question is empty");
    if (strstr(question, "<|image|>")) return fail(err, errlen, "the question must not contain <|image|>");
    j->ask = 1;
    j->question = question;
    j->ao = (qalign_ask_options){.max_tokens = 256};
    for (int k = 0; k < 5; k++) {
        const char *v = dec[k];
        if (!v || !*v) continue;
        char *end;
        errno = 0;
        if (k == 0 || k == 3) { /* max_tokens, top_k */
            long x = strtol(v, &end, 10);
            long hi = k == 0 ? s->info.l_max_pos : 1000000;
            if (errno || *end || x < (k == 0 ? 1 : 0) || x > hi)
                return fail(err, errlen, "%s must be an integer in [%d, %ld], got '%s'", SERVE_DECODING_KEYS[k], k == 0, hi, v);
            if (k == 0) j->ao.max_tokens = (int)x;
            else j->ao.top_k = (int)x;
        } else if (k == 4) {
            unsigned long long x = strtoull(v, &end, 10);
            if (errno || *end || *v == '-') return fail(err, errlen, "seed must be an integer in [0, 2^64), got '%s'", v);
            j->ao.seed = x;
        } else {
            double x = strtod(v, &end);
            if (errno || *end || !isfinite(x) || x < 0 || (k == 2 && x > 1))
                return fail(err, errlen, "%s must be a number in [0, %s], got '%s'", SERVE_DECODING_KEYS[k], k == 2 ? "1" : "inf)", v);
            if (k == 1) j->ao.temperature = (float)x;
            else j->ao.top_p = (float)x;
        }
    }
    if (j->ao.temperature == 0) snprintf(j->decoding, sizeof j->decoding, "greedy max_tokens=%d", j->ao.max_tokens);
    else
        snprintf(j->decoding, sizeof j->decoding, "sample temperature=%g top_p=%g top_k=%d seed=%llu max_tokens=%d",
                 j->ao.temperature, j->ao.top_p, j->ao.top_k, (unsigned long long)j->ao.seed, j->ao.max_tokens);
    return 0;
}

/* The row of result i of job j, as `qalign --json` prints it (with its '\n'); malloc'ed. */
static char *job_row(Server *s, const Job *j, int i) {
    RowStyle st;
    row_style_init(&st, TASK_NAMES[j->task], j->scale, s->levels.n_levels, s->levels.words, s->levels.lo, s->levels.hi);
    st.setup = s->levels.setup; /* the same in every context: model, prompt template, levels, pad, precise */
    const qalign_result *r = &j->res[i];
    const char *path = NULL;
    if (j->req.names) path = j->req.names[i];
    else if (j->name) path = j->name;
    else if (j->req.items[i].path) path = j->req.items[i].path; /* stdin: the file (a video: its first frame) */
    const char *kind = j->req.kind == SERVE_VIDEO ? "frames" : j->unread[i] ? NULL : "image"; /* as the CLI's rows */
    const char *warning = j->req.kind != SERVE_VIDEO && j->warn[i][0] ? j->warn[i] : NULL;
    if (j->ask) { /* an answer: the row of qalign --ask --json */
        const qalign_answer *a = &j->ans[i];
        qalign_result none = {0};
        ResultRow row = row_from_result(&st, path, kind, &none, a->status == QALIGN_OK ? NULL : a->error);
        row.frames = a->status == QALIGN_OK ? a->frames : 0;
        row.setup.prompt = s->ask_template;
        row.question = j->question;
        row.decoding = j->decoding;
        if (a->status == QALIGN_OK) row.answer = a->text, row.tokens = a->tokens, row.n_tokens = a->n_tokens, row.finish = a->finish;
        return results_format_row(RESULTS_JSONL, &row);
    }
    ResultRow row = row_from_result(&st, path, kind, r, r->status == QALIGN_OK ? NULL : r->error);
    row.warning = warning;
    return results_format_row(RESULTS_JSONL, &row);
}

/* ---- the worker ---------------------------------------------------------------------------- */

/* Read a regular file (stdio requests) of at most max bytes and decode it. */
static int load_file(const char *path, int64_t max, const ImageLimits *lim, Image *img, char *warn, size_t warnlen,
                     char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* a FIFO must not block the worker */
    if (fd < 0) return fail(err, errlen, "%s", strerror(errno)); /* (the CLI's words: sniff_path) */
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return fail(err, errlen, "not a regular file");
    }
    if ((int64_t)sb.st_size > max) {
        close(fd);
        return fail(err, errlen, "%lld bytes: larger than --max-body", (long long)sb.st_size);
    }
    size_t n = (size_t)sb.st_size, got = 0;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        close(fd);
        return fail(err, errlen, "out of memory reading the file");
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    int rc = image_decode_max(buf, got, lim, img, warn, warnlen, err, errlen);
    free(buf);
    return rc;
}

/* Decode one image of job j (the worker): within --max-pixels and what is left of the
 * request's --max-request-pixels, both checked from the header before decoding. */
static int load_source(Server *s, Job *j, const ServeSource *src, Image *img, int index, char *err, size_t errlen) {
    double t0 = now_seconds();
    char *warn = index >= 0 ? j->warn[index] : NULL;
    size_t warnlen = index >= 0 ? sizeof j->warn[index] : 0;
    ImageLimits lim = {(size_t)s->o.max_pixels, "--max-pixels", (size_t)(j->pixels_left > 0 ? j->pixels_left : 0),
                       "what is left of the request's --max-request-pixels"};
    int rc = -1;
    if (j->pixels_left <= 0) fail(err, errlen, "the request's images used up its --max-request-pixels (%lld) before this one",
                                  (long long)s->o.max_request_pixels);
    else if (src->path) rc = load_file(src->path, s->o.max_body, &lim, img, warn, warnlen, err, errlen);
    else rc = image_decode_max(src->data, src->len, &lim, img, warn, warnlen, err, errlen);
    if (rc == 0) j->pixels_left -= (int64_t)img->w * img->h;
    else if (index >= 0 && j->pixels_left > 0) { /* no image at all: the row says what the CLI's says */
        const char *format;
        char why[256];
        ItemKind k = src->path ? sniff_path(src->path, &format, why, sizeof why)
                               : sniff_bytes((const uint8_t *)src->data, src->len, &format, why, sizeof why);
        if (k == ITEM_ERROR) {
            j->unread[index] = 1;
            fail(err, errlen, "%s", why);
        }
    }
    pthread_mutex_lock(&s->mu);
    s->decode_seconds += now_seconds() - t0;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static qalign_ctx *task_ctx(Server *s, int task, char *err, size_t errlen) {
    if (!s->ctx[task]) {
        qalign_ctx_options co = s->co;
        co.task = TASK_NAMES[task];
        if (qalign_ctx_new(s->m, &co, &s->ctx[task], err, errlen) != QALIGN_OK) s->ctx[task] = NULL;
    }
    return s->ctx[task];
}

/* Decode unit u's image and run the vision tower on it; -1 (its result is the error) if not. */
static int add_unit(Server *s, qalign_ctx *ctx, Unit *u) {
    Job *j = u->job;
    char err[QALIGN_ERR_LEN];
    Image img;
    if (load_source(s, j, &j->req.items[u->index], &img, u->index, err, sizeof err) != 0) {
        set_error(&j->res[u->index], QALIGN_ERR_INPUT, err);
        return -1;
    }
    qalign_image qi = {img.rgb, img.w, img.h};
    int st = qalign_add_image(ctx, &qi, err, sizeof err);
    image_free(&img);
    if (st != QALIGN_OK) {
        set_error(&j->res[u->index], st, err);
        return -1;
    }
    return 0;
}

static void score_video(Server *s, qalign_ctx *ctx, Job *j) {
    char err[QALIGN_ERR_LEN - 96], msg[QALIGN_ERR_LEN];
    qalign_result *r = &j->res[0];
    int n = j->req.n;
    int st = qalign_video_begin(ctx, n, err, sizeof err);
    if (st != QALIGN_OK) {
        set_error(r, st, err);
        return;
    }
    for (int f = 0; f < n; f++) {
        Image img;
        const ServeSource *src = &j->req.items[f];
        st = load_source(s, j, src, &img, -1, err, sizeof err) ? QALIGN_ERR_INPUT : QALIGN_OK;
        if (st == QALIGN_OK) {
            qalign_image qi = {img.rgb, img.w, img.h};
            st = qalign_video_frame(ctx, &qi, err, sizeof err);
            image_free(&img);
        }
        if (st != QALIGN_OK) {
            qalign_video_cancel(ctx);
            if (src->path) snprintf(msg, sizeof msg, "frame %.80s: %s", src->path, err);
            else snprintf(msg, sizeof msg, "frame %d: %s", f, err);
            set_error(r, st, msg);
            return;
        }
    }
    st = qalign_video_end(ctx, r, err, sizeof err);
    if (st != QALIGN_OK) set_error(r, st, err);
}

/* Unit u is scored (mu held). When it was its job's last, the job is done: an HTTP
 * connection thread waiting for it may free it at once, so the worker touches it no more;
 * a stdin job goes to the writer thread. */
static void unit_done(Server *s, Unit *u) {
    Job *j = u->job;
    if (--j->remaining > 0) return;
    if (s->o.stdio) {
        j->next_done = NULL;
        if (s->done_tail) s->done_tail->next_done = j;
        else s->done_head = j;
        s->done_tail = j;
    } else {
        j->done = 1;
    }
    pthread_cond_broadcast(&s->done_cv);
}

/* The first queued unit of task (images only) after the head, taken off the queue (mu held). */
static Unit *take_image(Server *s, int task) {
    Unit *prev = NULL;
    for (Unit *u = s->qhead; u; prev = u, u = u->next) {
        if (u->job->task != task || u->job->req.kind == SERVE_VIDEO || u->job->ask) continue;
        if (prev) prev->next = u->next;
        else s->qhead = u->next;
        if (s->qtail == u) s->qtail = prev;
        u->next = NULL;
        s->queued--;
        return u;
    }
    return NULL;
}

/* A batch waits for company: sleep until more work arrives or the deadline passes (mu held).
 * 0 when it should stop waiting (stopping, or the deadline passed). */
static int wait_for_company(Server *s, double deadline) {
    double wait = deadline - now_seconds();
    if (s->stop_worker || wait <= 0) return 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)wait;
    ts.tv_nsec += (long)((wait - floor(wait)) * 1e9);
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_cond_timedwait(&s->work_cv, &s->mu, &ts);
    return 1;
}

/* The first queued question about one image (of task) after the head, taken off the queue (mu held). */
static Unit *take_ask(Server *s, int task) {
    Unit *prev = NULL;
    for (Unit *u = s->qhead; u; prev = u, u = u->next) {
        if (u->job->task != task || u->job->req.kind == SERVE_VIDEO || !u->job->ask) continue;
        if (prev) prev->next = u->next;
        else s->qhead = u->next;
        if (s->qtail == u) s->qtail = prev;
        u->next = NULL;
        s->queued--;
        return u;
    }
    return NULL;
}

static void set_answer_error(qalign_answer *a, int status, const char *msg) {
    qalign_answer_free(a);
    memset(a, 0, sizeof *a);
    a->status = status ? status : QALIGN_ERR_INPUT;
    snprintf(a->error, sizeof a->error, "%s", msg);
}

/* Questions about images, several requests' at once: every answer generated in the same
 * decoder passes (each its own question, options, cache and stop). mu not held. */
static void ask_units(Server *s, qalign_ctx *ctx, Unit **batch, int nb) {
    Image img[QALIGN_MAX_BATCH];
    qalign_image qi[QALIGN_MAX_BATCH];
    qalign_ask_item items[QALIGN_MAX_BATCH];
    qalign_answer out[QALIGN_MAX_BATCH];
    Unit *who[QALIGN_MAX_BATCH];
    int k = 0;
    char err[QALIGN_ERR_LEN];
    for (int b = 0; b < nb; b++) {
        Job *j = batch[b]->job;
        if (load_source(s, j, &j->req.items[batch[b]->index], &img[k], batch[b]->index, err, sizeof err) != 0) {
            set_answer_error(&j->ans[batch[b]->index], QALIGN_ERR_INPUT, err);
            continue;
        }
        qi[k] = (qalign_image){img[k].rgb, img[k].w, img[k].h};
        items[k] = (qalign_ask_item){&qi[k], j->question, &j->ao};
        who[k++] = batch[b];
    }
    double t0 = now_seconds();
    int st = k ? qalign_ask_batch(ctx, items, k, out, err, sizeof err) : QALIGN_OK;
    double dt = now_seconds() - t0;
    uint64_t tokens = 0;
    int most = 0;
    for (int b = 0; b < k; b++) {
        Job *j = who[b]->job;
        if (st != QALIGN_OK) set_answer_error(&j->ans[who[b]->index], st, err);
        else j->ans[who[b]->index] = out[b], tokens += (uint64_t)out[b].n_tokens, most = out[b].n_tokens > most ? out[b].n_tokens : most;
        image_free(&img[b]);
    }
    pthread_mutex_lock(&s->mu);
    s->gen_tokens += tokens;
    s->gen_seconds += dt;
    s->gen_passes += (uint64_t)most;
    s->gen_sequences += (uint64_t)k;
    pthread_mutex_unlock(&s->mu);
}

/* A question about a video's frames (one prompt). mu not held. */
static void ask_video(Server *s, qalign_ctx *ctx, Job *j) {
    char err[QALIGN_ERR_LEN - 96], msg[QALIGN_ERR_LEN];
    int n = j->req.n, loaded = 0;
    Image *img = calloc((size_t)n, sizeof *img);
    qalign_image *qi = calloc((size_t)n, sizeof *qi);
    if (!img || !qi) {
        set_answer_error(&j->ans[0], QALIGN_ERR_NOMEM, "out of memory");
        free(img), free(qi);
        return;
    }
    for (; loaded < n; loaded++) {
        const ServeSource *src = &j->req.items[loaded];
        if (load_source(s, j, src, &img[loaded], -1, err, sizeof err) != 0) {
            if (src->path) snprintf(msg, sizeof msg, "frame %.80s: %s", src->path, err);
            else snprintf(msg, sizeof msg, "frame %d: %s", loaded, err);
            set_answer_error(&j->ans[0], QALIGN_ERR_INPUT, msg);
            break;
        }
        qi[loaded] = (qalign_image){img[loaded].rgb, img[loaded].w, img[loaded].h};
    }
    if (loaded == n) {
        double t0 = now_seconds();
        int st = qalign_ask_prompt(ctx, qi, n, j->question, &j->ao, &j->ans[0], err, sizeof err);
        if (st != QALIGN_OK) set_answer_error(&j->ans[0], st, err);
        pthread_mutex_lock(&s->mu);
        s->gen_tokens += (uint64_t)j->ans[0].n_tokens;
        s->gen_passes += (uint64_t)j->ans[0].n_tokens;
        s->gen_sequences++;
        s->gen_seconds += now_seconds() - t0;
        pthread_mutex_unlock(&s->mu);
    }
    for (int f = 0; f < loaded; f++) image_free(&img[f]);
    free(img), free(qi);
}

static void note_timings(Server *s) { /* mu held */
    for (int t = 0; t < N_TASKS; t++)
        if (s->ctx[t]) qalign_ctx_timings(s->ctx[t], &s->timings[t]);
}

static void *worker_main(void *arg) {
    Server *s = arg;
    char err[QALIGN_ERR_LEN];
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->qhead && !s->stop_worker) pthread_cond_wait(&s->work_cv, &s->mu);
        Unit *head = s->qhead;
        if (!head) break; /* stopping, and nothing left */
        int task = head->job->task;
        pthread_mutex_unlock(&s->mu);
        qalign_ctx *ctx = task_ctx(s, task, err, sizeof err);
        pthread_mutex_lock(&s->mu);
        if (!ctx || head->job->req.kind == SERVE_VIDEO) {
            s->qhead = head->next; /* the head is still first: only this thread takes units */
            if (!s->qhead) s->qtail = NULL;
            s->queued--;
            pthread_mutex_unlock(&s->mu);
            if (!ctx) {
                set_error(&head->job->res[head->index], QALIGN_ERR_NOMEM, err);
                if (head->job->ask) set_answer_error(&head->job->ans[head->index], QALIGN_ERR_NOMEM, err);
            } else if (head->job->ask) ask_video(s, ctx, head->job);
            else score_video(s, ctx, head->job);
            pthread_mutex_lock(&s->mu);
            if (ctx && head->job->ask) s->asked += head->job->ans[0].status == QALIGN_OK;
            else if (ctx && head->job->res[0].status == QALIGN_OK) s->videos++, s->frames += (uint64_t)head->job->req.n;
            note_timings(s);
            unit_done(s, head);
        } else if (head->job->ask) {
            /* questions about images: every request's that is queued, up to the batch size, share
               the decoder passes; waiting for company as the scoring batches do */
            Unit *batch[QALIGN_MAX_BATCH];
            int nb = 0, cap = qalign_ctx_batch(ctx);
            double deadline = head->job->t_start + s->o.batch_wait_ms / 1000.0;
            for (;;) {
                Unit *u = take_ask(s, task);
                if (u) {
                    batch[nb++] = u;
                    if (nb == cap) break;
                    continue;
                }
                if (nb == 0 || !wait_for_company(s, deadline)) break;
            }
            pthread_mutex_unlock(&s->mu);
            ask_units(s, ctx, batch, nb);
            pthread_mutex_lock(&s->mu);
            for (int b = 0; b < nb; b++) {
                s->asked += batch[b]->job->ans[batch[b]->index].status == QALIGN_OK;
                unit_done(s, batch[b]);
            }
            note_timings(s);
        } else {
            /* a batch: images of this task in arrival order, up to the context's batch size;
               wait for company until batch-wait after the head's request arrived */
            Unit *batch[QALIGN_MAX_BATCH];
            int nb = 0, cap = qalign_ctx_batch(ctx);
            double deadline = head->job->t_start + s->o.batch_wait_ms / 1000.0;
            for (;;) {
                Unit *u = take_image(s, task);
                if (u) {
                    pthread_mutex_unlock(&s->mu);
                    int ok = add_unit(s, ctx, u) == 0;
                    pthread_mutex_lock(&s->mu);
                    if (ok) batch[nb++] = u;
                    else unit_done(s, u);
                    if (nb == cap) break;
                    continue;
                }
                if (nb == 0 || !wait_for_company(s, deadline)) break;
            }
            if (nb) {
                qalign_result res[QALIGN_MAX_BATCH];
                pthread_mutex_unlock(&s->mu);
                int st = qalign_flush(ctx, res, err, sizeof err);
                for (int b = 0; b < nb; b++) {
                    qalign_result *dst = &batch[b]->job->res[batch[b]->index];
                    if (st != QALIGN_OK) set_error(dst, st, err);
                    else *dst = res[b];
                }
                pthread_mutex_lock(&s->mu);
                s->batches++;
                s->batch_images += (uint64_t)nb;
                for (int k = 0; k < N_BATCH_BUCKETS; k++)
                    if (nb <= 1 << k) s->batch_hist[k]++;
                for (int b = 0; b < nb; b++) {
                    if (batch[b]->job->res[batch[b]->index].status == QALIGN_OK) s->images++;
                    unit_done(s, batch[b]);
                }
                note_timings(s);
            }
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- HTTP ------------------------------------------------------------------------------------ */

typedef struct {
    Server *s;
    int fd;
    char *head;             /* HTTP_MAX_HEAD bytes: the request head (and whatever followed it) */
    size_t have;            /* bytes in head */
    int drain;              /* the client may still be sending a body we did not read */
} Conn;

static const char *reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 417: return "Expectation Failed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* Wait until fd can be read (1), the deadline passes (0) or stop_fd is readable first (-1). */
static int wait_fd(int fd, short events, int stop_fd, double deadline) {
    for (;;) {
        double left = deadline - now_seconds();
        if (left <= 0) return 0;
        struct pollfd p[2] = {{fd, events, 0}, {stop_fd, POLLIN, 0}};
        int n = poll(p, stop_fd >= 0 ? 2 : 1, (int)ceil(left * 1000));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return 0;
        if (p[0].revents) return 1; /* readable, or an error/hang-up the read will report */
        if (stop_fd >= 0 && p[1].revents) return -1;
    }
}

/* Read up to cap bytes by the deadline: the count, 0 at EOF, -1 on error, -2 on timeout. */
static ssize_t read_by(int fd, void *buf, size_t cap, double deadline) {
    for (;;) {
        if (wait_fd(fd, POLLIN, -1, deadline) == 0) return -2;
        ssize_t n = recv(fd, buf, cap, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
        return n;
    }
}

static int send_all(int fd, const char *d, size_t n, double deadline) {
    while (n) {
        if (wait_fd(fd, POLLOUT, -1, deadline) == 0) return -1;
        ssize_t w = send(fd, d, n, MSG_NOSIGNAL);
        if (w < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
        if (w <= 0) return -1;
        d += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Write a response; count it. keep: the connection stays open after it. */
static int respond(Conn *c, int status, const char *type, const char *body, size_t len, const char *extra, int keep) {
    Server *s = c->s;
    Buf h = {0};
    buf_printf(&h, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%sConnection: %s\r\n\r\n", status,
               reason(status), type, len, extra ? extra : "", keep ? "keep-alive" : "close");
    buf_add(&h, body, len);
    /* counted before the client can see the answer: a /metrics that follows it includes it */
    pthread_mutex_lock(&s->mu);
    if (status >= 100 && status < 600) s->by_status[status]++;
    pthread_mutex_unlock(&s->mu);
    int rc = h.oom ? -1 : send_all(c->fd, h.p, h.n, now_seconds() + s->o.timeout);
    free(h.p);
    if (rc == 0) {
        pthread_mutex_lock(&s->mu);
        s->answered++;
        pthread_mutex_unlock(&s->mu);
    }
    return rc;
}

static int respond_error(Conn *c, int status, const char *msg, const char *extra, int keep) {
    Buf b = {0};
    buf_adds(&b, "{\"error\": ");
    buf_json(&b, msg);
    buf_adds(&b, "}\n");
    int rc = respond(c, status, "application/json", b.oom ? "{}\n" : b.p, b.oom ? 3 : b.n, extra, keep);
    free(b.p);
    return rc;
}

static void count_received(Server *s) {
    pthread_mutex_lock(&s->mu);
    s->received++;
    pthread_mutex_unlock(&s->mu);
}

static void http_health(Conn *c, int keep) {
    Server *s = c->s;
    Buf b = {0};
    pthread_mutex_lock(&s->mu);
    int stopping = s->stopping, admitted = s->admitted, queued = s->queued;
    uint64_t images = s->images;
    pthread_mutex_unlock(&s->mu);
    buf_printf(&b, "{\"status\": \"%s\", \"model\": ", stopping ? "stopping" : "ok");
    buf_json(&b, s->model_name);
    buf_printf(&b, ", \"model_id\": \"%s\", \"checksums\": %s, \"verified\": %s", s->info.model_id,
               qalign_checksums(s->m) ? "true" : "false", s->o.verified ? "true" : "false");
    buf_printf(&b, ", \"weights\": \"%s\", \"queue\": %d, \"queued_images\": %d, \"max_queue\": %d, "
               "\"batch\": %d, \"images_scored\": %llu, \"kernels\": ", s->info.weight_type, admitted, queued,
               s->o.max_queue, s->co.batch, (unsigned long long)images);
    buf_json(&b, qalign_kernels_why()); /* the kernel family and why it runs */
    buf_adds(&b, "}\n");
    if (b.oom) respond_error(c, 500, "out of memory", NULL, 0);
    else respond(c, 200, "application/json", b.p, b.n, NULL, keep);
    free(b.p);
}

static void http_metrics(Conn *c, int keep) {
    Server *s = c->s;
    Buf b = {0};
    pthread_mutex_lock(&s->mu);
    buf_adds(&b, "# HELP qalign_requests_total HTTP requests answered, by status code.\n"
                 "# TYPE qalign_requests_total counter\n");
    for (int k = 100; k < 600; k++)
        if (s->by_status[k]) buf_printf(&b, "qalign_requests_total{code=\"%d\"} %llu\n", k, (unsigned long long)s->by_status[k]);
    buf_adds(&b, "# HELP qalign_request_errors_total HTTP requests answered with an error status (4xx, 5xx), by code.\n"
                 "# TYPE qalign_request_errors_total counter\n");
    for (int k = 400; k < 600; k++)
        if (s->by_status[k])
            buf_printf(&b, "qalign_request_errors_total{code=\"%d\"} %llu\n", k, (unsigned long long)s->by_status[k]);
    buf_printf(&b, "# HELP qalign_images_scored_total Images scored (frames of videos not included).\n"
                   "# TYPE qalign_images_scored_total counter\nqalign_images_scored_total %llu\n"
                   "# HELP qalign_videos_scored_total Videos scored.\n"
                   "# TYPE qalign_videos_scored_total counter\nqalign_videos_scored_total %llu\n"
                   "# HELP qalign_frames_scored_total Frames of the videos scored.\n"
                   "# TYPE qalign_frames_scored_total counter\nqalign_frames_scored_total %llu\n",
               (unsigned long long)s->images, (unsigned long long)s->videos, (unsigned long long)s->frames);
    buf_printf(&b, "# HELP qalign_answers_total Questions answered (POST /ask, or a question on stdin).\n"
                   "# TYPE qalign_answers_total counter\nqalign_answers_total %llu\n"
                   "# HELP qalign_generated_tokens_total Tokens generated in answers (EOS not counted).\n"
                   "# TYPE qalign_generated_tokens_total counter\nqalign_generated_tokens_total %llu\n"
                   "# HELP qalign_generation_seconds_total Wall time of the generation calls (prefill and decode).\n"
                   "# TYPE qalign_generation_seconds_total counter\nqalign_generation_seconds_total %.6f\n"
                   "# HELP qalign_generation_tokens_per_second Tokens generated per second of generation, since start.\n"
                   "# TYPE qalign_generation_tokens_per_second gauge\nqalign_generation_tokens_per_second %.3f\n"
                   "# HELP qalign_generation_sequences_per_pass Answers stepped together per decoder pass, on average.\n"
                   "# TYPE qalign_generation_sequences_per_pass gauge\nqalign_generation_sequences_per_pass %.3f\n",
               (unsigned long long)s->asked, (unsigned long long)s->gen_tokens, s->gen_seconds,
               s->gen_seconds > 0 ? (double)s->gen_tokens / s->gen_seconds : 0.0,
               s->gen_passes ? (double)s->gen_tokens / (double)s->gen_passes : 0.0);
    qalign_timings t = {0};
    for (int k = 0; k < N_TASKS; k++) {
        t.preprocess += s->timings[k].preprocess;
        t.vision += s->timings[k].vision;
        t.abstractor += s->timings[k].abstractor;
        t.decoder += s->timings[k].decoder;
    }
    buf_printf(&b, "# HELP qalign_stage_seconds_total Seconds spent in each stage (decode: image files to pixels).\n"
                   "# TYPE qalign_stage_seconds_total counter\n"
                   "qalign_stage_seconds_total{stage=\"decode\"} %.6f\nqalign_stage_seconds_total{stage=\"preprocess\"} %.6f\n"
                   "qalign_stage_seconds_total{stage=\"vision\"} %.6f\nqalign_stage_seconds_total{stage=\"abstractor\"} %.6f\n"
                   "qalign_stage_seconds_total{stage=\"decoder\"} %.6f\n",
               s->decode_seconds, t.preprocess, t.vision, t.abstractor, t.decoder);
    buf_printf(&b, "# HELP qalign_queue_length Requests admitted and not answered yet (receiving, waiting or scored).\n"
                   "# TYPE qalign_queue_length gauge\nqalign_queue_length %d\n"
                   "# HELP qalign_queue_images Images and videos waiting for the model.\n"
                   "# TYPE qalign_queue_images gauge\nqalign_queue_images %d\n"
                   "# HELP qalign_batch_size Images per decoder pass.\n# TYPE qalign_batch_size histogram\n",
               s->admitted, s->queued);
    for (int k = 0; k < N_BATCH_BUCKETS; k++)
        buf_printf(&b, "qalign_batch_size_bucket{le=\"%d\"} %llu\n", 1 << k, (unsigned long long)s->batch_hist[k]);
    buf_printf(&b, "qalign_batch_size_bucket{le=\"+Inf\"} %llu\nqalign_batch_size_sum %llu\nqalign_batch_size_count %llu\n",
               (unsigned long long)s->batches, (unsigned long long)s->batch_images, (unsigned long long)s->batches);
    buf_adds(&b, "# HELP qalign_score_seconds Seconds from a /score request's head to its answer.\n"
                 "# TYPE qalign_score_seconds histogram\n");
    for (size_t k = 0; k < N_LATENCY; k++)
        buf_printf(&b, "qalign_score_seconds_bucket{le=\"%g\"} %llu\n", LATENCY_BUCKETS[k], (unsigned long long)s->latency_hist[k]);
    buf_printf(&b, "qalign_score_seconds_bucket{le=\"+Inf\"} %llu\nqalign_score_seconds_sum %.6f\nqalign_score_seconds_count %llu\n",
               (unsigned long long)s->latency_count, s->latency_sum, (unsigned long long)s->latency_count);
    pthread_mutex_unlock(&s->mu);
    if (b.oom) respond_error(c, 500, "out of memory", NULL, 0);
    else respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", b.p, b.n, NULL, keep);
    free(b.p);
}

/* Constant-time comparison of the Authorization header with "Bearer KEY". */
static int authorized(const Server *s, const HttpRequest *rq) {
    if (!s->o.api_key) return 1;
    if (!rq->authorization || rq->authorization_len < 7) return 0;
    const char *a = rq->authorization;
    if (strncmp(a, "Bearer ", 7) && strncmp(a, "bearer ", 7)) return 0;
    const char *given = a + 7, *key = s->o.api_key;
    size_t gl = rq->authorization_len - 7, kl = strlen(key);
    unsigned diff = gl != kl;
    for (size_t i = 0; i < kl; i++) diff |= (unsigned)(unsigned char)key[i] ^ (unsigned)(unsigned char)(i < gl ? given[i] : 0);
    return diff == 0;
}

/* Give back a queue slot (and the body it allowed). */
static void release_slot(Server *s) {
    pthread_mutex_lock(&s->mu);
    s->admitted--;
    pthread_cond_broadcast(&s->done_cv);
    pthread_mutex_unlock(&s->mu);
}

/* The answer to a scored job. */
static void http_answer(Conn *c, Job *j, int keep) {
    Server *s = c->s;
    if (!j->req.many) {
        const qalign_result *r = &j->res[0];
        int st = j->ask ? j->ans[0].status : r->status;
        if (st != QALIGN_OK) {
            respond_error(c, st == QALIGN_ERR_INPUT || st == QALIGN_ERR_ARG ? 400 : 500, j->ask ? j->ans[0].error : r->error,
                          NULL, keep);
            return;
        }
        char *row = job_row(s, j, 0);
        if (!row) respond_error(c, 500, "out of memory", NULL, 0);
        else respond(c, 200, "application/json", row, strlen(row), NULL, keep);
        free(row);
        return;
    }
    Buf b = {0};
    buf_adds(&b, "{\"results\": [");
    for (int i = 0; i < j->n_res; i++) {
        char *row = job_row(s, j, i);
        if (!row) b.oom = 1;
        else buf_add(&b, row, strlen(row) - 1); /* without its '\n' */
        if (i + 1 < j->n_res) buf_adds(&b, ", ");
        free(row);
    }
    buf_adds(&b, "]}\n");
    if (b.oom) respond_error(c, 500, "out of memory", NULL, 0);
    else respond(c, 200, "application/json", b.p, b.n, NULL, keep);
    free(b.p);
}

/* POST /score once the head is read: checks, a slot, the body, the queue, the answer. Returns
 * whether the connection may serve another request. */
static int http_score(Conn *c, const HttpRequest *rq, size_t hl, int keep, double t0, int ask) {
    Server *s = c->s;
    char err[512], task[32], scale[16], name[4096], question[4096] = "", dec[5][40] = {"", "", "", "", ""};
    static const char *const params[] = {"task", "scale", "name", NULL};
    static const char *const ask_params[] = {"task", "scale", "name", "question", "max_tokens", "temperature", "top_p",
                                             "top_k", "seed", NULL};
    if (rq->chunked) {
        c->drain = 1;
        return respond_error(c, 411, "send the body with a Content-Length (chunked bodies are not accepted)", NULL, 0), 0;
    }
    if (rq->content_length < 0) {
        c->drain = 1;
        return respond_error(c, 411, "POST /score needs a Content-Length", NULL, 0), 0;
    }
    if (rq->content_length > s->o.max_body) {
        snprintf(err, sizeof err, "the body (%lld bytes) is larger than --max-body (%lld bytes)",
                 (long long)rq->content_length, (long long)s->o.max_body);
        c->drain = 1;
        return respond_error(c, 413, err, NULL, 0), 0;
    }
    int qt = 0, qs = 0, qn = 0, qq = 0;
    for (int k = 0; ask && k < 5 && qq >= 0; k++)
        if (http_query_get(rq->query, rq->query_len, SERVE_DECODING_KEYS[k], dec[k], sizeof dec[k]) < 0) qq = -1;
    if (ask && qq >= 0) qq = http_query_get(rq->query, rq->query_len, "question", question, sizeof question);
    if (qq < 0 || http_query_check(rq->query, rq->query_len, ask ? ask_params : params, err, sizeof err) != 0 ||
        (qt = http_query_get(rq->query, rq->query_len, "task", task, sizeof task)) < 0 ||
        (qs = http_query_get(rq->query, rq->query_len, "scale", scale, sizeof scale)) < 0 ||
        (qn = http_query_get(rq->query, rq->query_len, "name", name, sizeof name)) < 0) {
        if (qt < 0 || qs < 0 || qn < 0 || qq < 0) snprintf(err, sizeof err, "a malformed or too long query parameter");
        c->drain = 1;
        return respond_error(c, 400, err, NULL, 0), 0;
    }
    Job *j = job_new(s, qt ? task : NULL, qs ? scale : NULL, err, sizeof err);
    if (!j) {
        c->drain = 1;
        return respond_error(c, 400, err, NULL, 0), 0;
    }
    if (qn && !(j->name = strdup(name))) {
        job_free(j);
        c->drain = 1;
        return respond_error(c, 500, "out of memory", NULL, 0), 0;
    }
    pthread_mutex_lock(&s->mu);
    int admitted = s->admitted < s->o.max_queue;
    if (admitted) s->admitted++;
    pthread_mutex_unlock(&s->mu);
    if (!admitted) {
        job_free(j);
        c->drain = 1;
        snprintf(err, sizeof err, "busy: %d requests queued (--max-queue); retry later", s->o.max_queue);
        return respond_error(c, 503, err, "Retry-After: 1\r\n", 0), 0;
    }
    /* the body: what came with the head, then the rest */
    size_t len = (size_t)rq->content_length, in_head = c->have - hl, from_head = in_head < len ? in_head : len;
    j->body = malloc(len + 1);
    if (!j->body) {
        job_free(j);
        release_slot(s);
        c->drain = 1;
        return respond_error(c, 503, "out of memory for the body; retry later", "Retry-After: 1\r\n", 0), 0;
    }
    memcpy(j->body, c->head + hl, from_head);
    memmove(c->head, c->head + hl + from_head, in_head - from_head); /* a pipelined next request */
    c->have = in_head - from_head;
    if (from_head < len && rq->expect_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        send_all(c->fd, cont, sizeof cont - 1, now_seconds() + s->o.timeout);
    }
    double deadline = t0 + s->o.timeout + (double)len / (1 << 20);
    for (size_t got = from_head; got < len;) {
        ssize_t n = read_by(c->fd, j->body + got, len - got, deadline);
        if (n <= 0) {
            job_free(j);
            release_slot(s);
            if (n == -2) {
                snprintf(err, sizeof err, "the body was not received within %.3g s", deadline - t0);
                respond_error(c, 408, err, NULL, 0);
                c->drain = 1;
            } else if (n == 0) { /* the client closed its side early: it may still read the answer */
                snprintf(err, sizeof err, "the body ended after %zu of its %zu bytes (Content-Length)", got, len);
                respond_error(c, 400, err, NULL, 0);
            }
            return 0;
        }
        got += (size_t)n;
    }
    j->body[len] = 0;
    j->t_start = now_seconds();
    int rc;
    if (rq->json) {
        rc = serve_parse_json(j->body, len, 0, &j->req, err, sizeof err);
        /* a parameter in both the query string and the body must say the same */
        if (rc == 0 && qt && j->req.task && strcmp(task, j->req.task))
            rc = fail(err, sizeof err, "task is '%s' in the query string but '%.64s' in the JSON body", task, j->req.task);
        if (rc == 0 && qs && j->req.scale && strcmp(scale, j->req.scale))
            rc = fail(err, sizeof err, "scale is '%s' in the query string but '%.64s' in the JSON body", scale, j->req.scale);
        if (rc == 0 && qn && j->req.names && (j->req.n_names != 1 || !j->req.names[0] || strcmp(name, j->req.names[0])))
            rc = fail(err, sizeof err, "name is given in the query string and %s in the JSON body",
                      j->req.n_names == 1 ? "another one" : "names");
        if (rc == 0 && j->req.task && (j->task = find_task(j->req.task)) < 0)
            rc = fail(err, sizeof err, "task must be quality, aesthetics or aesthetic");
        if (rc == 0 && j->req.scale) {
            if (!find_scale(j->req.scale)) rc = fail(err, sizeof err, "scale must be 1-5, 0-1 or 0-100");
            else j->scale = find_scale(j->req.scale);
        }
    } else { /* the body is one image */
        j->req.kind = SERVE_IMAGES;
        j->req.n = 1;
        j->req.items = calloc(1, sizeof *j->req.items);
        rc = j->req.items ? 0 : fail(err, sizeof err, "out of memory");
        if (!rc) {
            j->req.items[0].data = (const uint8_t *)j->body;
            j->req.items[0].len = len;
        }
    }
    if (rc == 0 && !ask && j->req.question) rc = fail(err, sizeof err, "a question goes to POST /ask");
    if (rc == 0 && ask) { /* the question: in the query or in the JSON body, not both */
        if (qq && j->req.question) rc = fail(err, sizeof err, "the question is given twice (query and body)");
        else if (!qq && !j->req.question) rc = fail(err, sizeof err, "POST /ask needs a question (?question=... or \"question\")");
        else if (qq && !(j->qbuf = strdup(question))) rc = fail(err, sizeof err, "out of memory");
        for (int k = 0; rc == 0 && k < 5; k++)
            if (dec[k][0] && j->req.decoding[k][0]) rc = fail(err, sizeof err, "%s is given twice", SERVE_DECODING_KEYS[k]);
            else if (!j->req.decoding[k][0]) memcpy(j->req.decoding[k], dec[k], sizeof dec[k]);
        const char *dv[5];
        for (int k = 0; k < 5; k++) dv[k] = j->req.decoding[k];
        if (rc == 0) rc = job_question(s, j, j->qbuf ? j->qbuf : j->req.question, dv, err, sizeof err);
    }
    if (rc == 0) rc = job_ready(s, j, err, sizeof err);
    if (rc != 0) {
        job_free(j);
        release_slot(s);
        return respond_error(c, 400, err, NULL, keep) == 0 && keep;
    }
    pthread_mutex_lock(&s->mu);
    enqueue(s, j);
    while (!j->done) pthread_cond_wait(&s->done_cv, &s->mu);
    keep = keep && !s->stopping;
    pthread_mutex_unlock(&s->mu);
    http_answer(c, j, keep);
    job_free(j);
    double dt = now_seconds() - t0;
    pthread_mutex_lock(&s->mu);
    s->latency_count++;
    s->latency_sum += dt;
    for (size_t k = 0; k < N_LATENCY; k++)
        if (dt <= LATENCY_BUCKETS[k]) s->latency_hist[k]++;
    s->admitted--;
    pthread_cond_broadcast(&s->done_cv);
    pthread_mutex_unlock(&s->mu);
    return keep;
}

/* Serve one request on c; 1 if the connection stays open for another. */
static int http_one(Conn *c) {
    Server *s = c->s;
    if (c->have == 0 && wait_fd(c->fd, POLLIN, s->stop_pipe[0], now_seconds() + s->o.timeout) != 1)
        return 0; /* idle too long, or stopping: close */
    double t0 = now_seconds();
    HttpRequest rq;
    char err[256];
    int hl = 0, scanned_to = -1;
    for (;;) {
        /* parse again only when a line ended since the last try */
        if (scanned_to < 0 || c->have >= HTTP_MAX_HEAD || memchr(c->head + scanned_to, '\n', c->have - (size_t)scanned_to)) {
            hl = http_parse_head(c->head, c->have, &rq, err, sizeof err);
            if (hl != 0) break;
        }
        scanned_to = (int)c->have;
        ssize_t n = read_by(c->fd, c->head + c->have, HTTP_MAX_HEAD - c->have, t0 + s->o.timeout);
        if (n == -2) {
            count_received(s);
            snprintf(err, sizeof err, "the request head was not received within %g s", s->o.timeout);
            c->drain = 1;
            respond_error(c, 408, err, NULL, 0);
            return 0;
        }
        if (n <= 0) return 0; /* the client went away */
        c->have += (size_t)n;
    }
    count_received(s);
    if (hl < 0) {
        c->drain = 1;
        respond_error(c, -hl, err, NULL, 0);
        return 0;
    }
    pthread_mutex_lock(&s->mu);
    int keep = rq.keep_alive && !s->stopping;
    pthread_mutex_unlock(&s->mu);
    const char *p = rq.path;
    size_t pl = rq.path_len;
    int is_ask = pl == 4 && !memcmp(p, "/ask", 4);
    int is_score = (pl == 6 && !memcmp(p, "/score", 6)) || is_ask, is_health = pl == 7 && !memcmp(p, "/health", 7),
        is_metrics = pl == 8 && !memcmp(p, "/metrics", 8);
    int is_post = rq.method_len == 4 && !memcmp(rq.method, "POST", 4);
    int is_get = rq.method_len == 3 && !memcmp(rq.method, "GET", 3);
    int has_body = rq.chunked || rq.content_length > 0;
    if (!is_score && !is_health && !is_metrics) {
        c->drain = has_body;
        respond_error(c, 404, "not found: the endpoints are POST /score, POST /ask, GET /health and GET /metrics", NULL,
                      keep && !has_body);
    } else if (is_score ? !is_post : !is_get) {
        c->drain = has_body;
        respond_error(c, 405, is_ask ? "/ask takes POST" : is_score ? "/score takes POST" : "this endpoint takes GET",
                      is_score ? "Allow: POST\r\n" : "Allow: GET\r\n", keep && !has_body);
    } else if (!is_health && !authorized(s, &rq)) {
        c->drain = has_body;
        respond_error(c, 401, "missing or wrong API key (send Authorization: Bearer KEY)", "WWW-Authenticate: Bearer\r\n",
                      keep && !has_body);
    } else if (is_score) {
        return http_score(c, &rq, (size_t)hl, keep, t0, is_ask);
    } else {
        keep = keep && !has_body; /* a GET with a body: answer, do not read it, close */
        c->drain = has_body;
        if (is_health) http_health(c, keep);
        else http_metrics(c, keep);
    }
    if (c->drain) return 0;
    memmove(c->head, c->head + hl, c->have - (size_t)hl);
    c->have -= (size_t)hl;
    return keep;
}

static void *conn_main(void *arg) {
    Conn *c = arg;
    Server *s = c->s;
    c->head = malloc(HTTP_MAX_HEAD);
    while (c->head && http_one(c)) {
    }
    if (c->drain) { /* the client may still be sending: let it read our answer before the close */
        char sink[16384];
        shutdown(c->fd, SHUT_WR);
        double until = now_seconds() + 2;
        size_t total = 0;
        for (;;) {
            ssize_t n = read_by(c->fd, sink, sizeof sink, until);
            if (n <= 0 || (total += (size_t)n) > (64u << 20)) break;
        }
    }
    close(c->fd);
    free(c->head);
    free(c);
    pthread_mutex_lock(&s->mu);
    s->conns--;
    pthread_cond_broadcast(&s->done_cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Refuse a connection from the accepting thread (too many open): a short 503, then close. */
static void refuse_connection(Server *s, int fd) {
    static const char body[] = "{\"error\": \"busy: too many connections (--max-connections); retry later\"}\n";
    char msg[512];
    int n = snprintf(msg, sizeof msg, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s", sizeof body - 1, body);
    ssize_t w = send(fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)w;
    shutdown(fd, SHUT_WR);
    close(fd);
    pthread_mutex_lock(&s->mu);
    s->by_status[503]++;
    pthread_mutex_unlock(&s->mu);
}

static int is_loopback(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET) return (ntohl(((const struct sockaddr_in *)(const void *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
        static const uint8_t lo6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        return !memcmp(a->s6_addr, lo6, 16) || (!memcmp(a->s6_addr, mapped, 12) && a->s6_addr[12] == 127);
    }
    return 0;
}

/* Bind and listen on HOST:PORT; the socket, or -1. shown gets "http://addr:port". */
static int open_listener(const char *spec, char *shown, size_t shown_len, int *loopback, char *err, size_t errlen) {
    char host[256], port[16];
    const char *colon = strrchr(spec, ':');
    size_t hl = (size_t)(colon - spec);
    if (hl >= sizeof host || strlen(colon + 1) >= sizeof port || !colon[1])
        return fail(err, errlen, "--listen expects HOST:PORT, got '%s'", spec);
    memcpy(host, spec, hl);
    host[hl] = 0;
    snprintf(port, sizeof port, "%s", colon + 1);
    long pn;
    if (parse_long(port, 0, 65535, &pn)) return fail(err, errlen, "--listen: '%s' is not a port number (0-65535)", port);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') { /* [::1]:8080 */
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = 0;
    }
    if (!host[0]) snprintf(host, sizeof host, "127.0.0.1");
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai != 0) return fail(err, errlen, "--listen %s: %s", spec, gai_strerror(gai));
    int fd = -1, e = 0;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 128) != 0) {
            e = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0) return fail(err, errlen, "--listen %s: %s", spec, strerror(e));
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    memset(&ss, 0, sizeof ss);
    char addr[INET6_ADDRSTRLEN] = "?";
    int bound_port = 0;
    *loopback = 0;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        *loopback = is_loopback((struct sockaddr *)&ss);
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *in = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &in->sin_addr, addr, sizeof addr);
            bound_port = ntohs(in->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &in6->sin6_addr, addr, sizeof addr);
            bound_port = ntohs(in6->sin6_port);
        }
    }
    snprintf(shown, shown_len, ss.ss_family == AF_INET6 ? "http://[%s]:%d" : "http://%s:%d", addr, bound_port);
    return fd;
}

static void start_connection(Server *s, int fd) {
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pthread_mutex_lock(&s->mu);
    int ok = s->conns < s->o.max_connections;
    if (ok) s->conns++;
    pthread_mutex_unlock(&s->mu);
    Conn *c = ok ? calloc(1, sizeof *c) : NULL;
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, (size_t)1 << 20);
    if (c) {
        c->s = s;
        c->fd = fd;
    }
    if (!c || pthread_create(&t, &at, conn_main, c) != 0) {
        if (ok) {
            pthread_mutex_lock(&s->mu);
            s->conns--;
            pthread_mutex_unlock(&s->mu);
        }
        free(c);
        refuse_connection(s, fd);
    }
    pthread_attr_destroy(&at);
}

static int serve_http(Server *s, int sig_fd, char *err, size_t errlen) {
    char shown[128];
    int loopback = 0;
    int lfd = open_listener(s->o.listen, shown, sizeof shown, &loopback, err, errlen);
    if (lfd < 0) return -1;
    if (pipe(s->stop_pipe) != 0) {
        close(lfd);
        return fail(err, errlen, "pipe: %s", strerror(errno));
    }
    if (!loopback && !s->o.api_key)
        fprintf(stderr, "qalign: warning: listening on %s, not a loopback address, without --api-key: anyone who can "
                "reach it can use it\n", shown);
    fprintf(stderr, "qalign: listening on %s (%s, %s; batch %d, --batch-wait %d ms, --max-queue %d, --max-body %lld)\n",
            shown, s->model_name, s->info.weight_type, s->co.batch, s->o.batch_wait_ms, s->o.max_queue,
            (long long)s->o.max_body);
    fflush(stderr);
    for (;;) {
        struct pollfd p[2] = {{lfd, POLLIN, 0}, {sig_fd, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (p[1].revents) break;
        if (!(p[0].revents & POLLIN)) continue;
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                struct timespec ts = {0, 20000000};
                nanosleep(&ts, NULL); /* out of descriptors: let connections close */
            }
            continue;
        }
        start_connection(s, fd);
    }
    /* stop: no new connections; idle ones close; requests in flight are answered */
    close(lfd);
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    int in_flight = s->admitted;
    pthread_mutex_unlock(&s->mu);
    fprintf(stderr, "qalign: stopping: answering %d requests in flight\n", in_flight);
    close(s->stop_pipe[1]);
    pthread_mutex_lock(&s->mu);
    while (s->conns > 0) pthread_cond_wait(&s->done_cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    close(s->stop_pipe[0]);
    return 0;
}

/* ---- stdio ------------------------------------------------------------------------------------ */

/* One answer line on stdout (whole, under out_mu). */
static void out_line(Server *s, const char *line, size_t n) {
    pthread_mutex_lock(&s->out_mu);
    int ok = !s->out_failed && fwrite(line, 1, n, stdout) == n && fflush(stdout) == 0;
    if (!ok && !s->out_failed) s->out_failed = errno ? errno : EIO;
    pthread_mutex_unlock(&s->out_mu);
    pthread_mutex_lock(&s->mu);
    s->answered += (uint64_t)ok;
    pthread_mutex_unlock(&s->mu);
}

/* {"id": ID, "error": MSG} */
static void out_error(Server *s, const char *id, const char *msg) {
    Buf b = {0};
    buf_adds(&b, "{\"id\": ");
    buf_adds(&b, id ? id : "null");
    buf_adds(&b, ", \"error\": ");
    buf_json(&b, msg);
    buf_adds(&b, "}\n");
    if (!b.oom) out_line(s, b.p, b.n);
    free(b.p);
}

/* A finished stdin request: its row, with "id" first. */
static void stdio_answer(Server *s, Job *j) {
    char *row = job_row(s, j, 0);
    Buf b = {0};
    buf_adds(&b, "{\"id\": ");
    buf_adds(&b, j->req.id ? j->req.id : "null");
    if (row) {
        buf_adds(&b, ", ");
        buf_adds(&b, row + 1);
    }
    if (!row || b.oom) out_error(s, j->req.id, "out of memory");
    else out_line(s, b.p, b.n);
    free(row);
    free(b.p);
    job_free(j);
    release_slot(s);
}

/* The writer thread: answers in the order the worker finishes them, so that a slow reader
 * of stdout holds up this thread, not the model. */
static void *writer_main(void *arg) {
    Server *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->done_head && !s->stop_writer) pthread_cond_wait(&s->done_cv, &s->mu);
        Job *j = s->done_head;
        if (!j) break;
        s->done_head = j->next_done;
        if (!s->done_head) s->done_tail = NULL;
        pthread_mutex_unlock(&s->mu);
        stdio_answer(s, j);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* One line of stdin (owned: it becomes the job's body). */
static void stdio_line(Server *s, char *line, size_t n) {
    char err[512];
    size_t k = 0;
    while (k < n && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r')) k++;
    if (k == n) { /* a blank line */
        free(line);
        return;
    }
    pthread_mutex_lock(&s->mu);
    s->received++;
    pthread_mutex_unlock(&s->mu);
    ServeRequest req;
    Job *j = NULL;
    if (serve_parse_json(line, n, 1, &req, err, sizeof err) == 0)
        j = job_new(s, req.task, req.scale, err, sizeof err);
    if (!j) {
        out_error(s, req.id, err);
        serve_request_free(&req);
        free(line);
        return;
    }
    j->req = req;
    j->body = line;
    const char *dv[5];
    for (int k = 0; k < 5; k++) dv[k] = j->req.decoding[k];
    if ((req.question && job_question(s, j, j->req.question, dv, err, sizeof err) != 0) || job_ready(s, j, err, sizeof err) != 0) {
        out_error(s, req.id, err);
        job_free(j);
        return;
    }
    pthread_mutex_lock(&s->mu);
    while (s->admitted >= s->o.max_queue) { /* wait for room: stdin is not read meanwhile */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 100000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&s->done_cv, &s->mu, &ts);
    }
    s->admitted++;
    j->t_start = now_seconds();
    enqueue(s, j);
    pthread_mutex_unlock(&s->mu);
}

static int serve_stdio(Server *s, int sig_fd, char *err, size_t errlen) {
    size_t cap = 1 << 16, have = 0, scanned = 0;
    char *buf = malloc(cap);
    int skipping = 0; /* inside a line longer than --max-body: drop it up to its end */
    pthread_t writer;
    if (!buf) return fail(err, errlen, "out of memory");
    if (pthread_create(&writer, NULL, writer_main, s) != 0) {
        free(buf);
        return fail(err, errlen, "cannot start the writer thread");
    }
    for (;;) {
        char *nl = memchr(buf + scanned, '\n', have - scanned);
        if (nl) {
            size_t n = (size_t)(nl - buf);
            if (skipping) skipping = 0;
            else {
                char *line = malloc(n + 1);
                if (!line) out_error(s, NULL, "out of memory");
                else {
                    memcpy(line, buf, n);
                    line[n] = 0;
                    stdio_line(s, line, n);
                }
            }
            memmove(buf, nl + 1, have - n - 1);
            have -= n + 1;
            scanned = 0;
            continue;
        }
        scanned = have;
        if (have > (size_t)s->o.max_body) {
            if (!skipping) {
                pthread_mutex_lock(&s->mu);
                s->received++;
                pthread_mutex_unlock(&s->mu);
                out_error(s, NULL, "a request line longer than --max-body");
            }
            skipping = 1;
            have = scanned = 0;
        }
        if (have == cap) {
            size_t nc = cap * 2;
            char *nb = realloc(buf, nc);
            if (!nb) {
                out_error(s, NULL, "out of memory for a request line");
                skipping = 1;
                have = scanned = 0;
            } else {
                buf = nb;
                cap = nc;
            }
        }
        struct pollfd p[2] = {{0, POLLIN, 0}, {sig_fd, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (p[1].revents) break;
        ssize_t r = read(0, buf + have, cap - have);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (r <= 0) { /* EOF: a last line without its newline is still a request */
            if (have && !skipping) {
                char *line = malloc(have + 1);
                if (line) {
                    memcpy(line, buf, have);
                    line[have] = 0;
                    stdio_line(s, line, have);
                }
            }
            break;
        }
        have += (size_t)r;
    }
    free(buf);
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    while (s->admitted > 0) pthread_cond_wait(&s->done_cv, &s->mu);
    s->stop_writer = 1;
    pthread_cond_broadcast(&s->done_cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(writer, NULL);
    return 0;
}

/* ---- run -------------------------------------------------------------------------------------- */

int serve_run(const ServeOptions *o, const qalign_model *m, const qalign_ctx_options *co, const char *scale, char *err,
              size_t errlen) {
    if (!!o->listen + !!o->stdio != 1) return fail(err, errlen, "give one of --listen HOST:PORT and --stdio");
    static Server srv; /* one per process: the signal handler's pipe is global anyway */
    Server *s = &srv;
    memset(s, 0, sizeof *s);
    s->o = *o;
    if (!s->o.api_key && getenv("QALIGN_API_KEY") && getenv("QALIGN_API_KEY")[0]) s->o.api_key = getenv("QALIGN_API_KEY");
    s->m = m;
    s->co = *co;
    s->default_scale = scale;
    s->default_task = find_task(co->task ? co->task : "quality");
    if (s->default_task < 0) return fail(err, errlen, "--task must be quality, aesthetics or aesthetic");
    qalign_describe(m, &s->info);
    qalign_ask_template(NULL, 1, s->ask_template, sizeof s->ask_template);
    if (s->info.family && !strcmp(s->info.family, "qwen3.5")) snprintf(s->ask_template, sizeof s->ask_template, "%s", QALIGN_ASK_PROMPT_QWEN35);
    s->model_name = strrchr(s->info.path, '/') ? strrchr(s->info.path, '/') + 1 : s->info.path;

    /* the default task's context now: bad --levels or --prompt end the program here */
    int st = qalign_ctx_new(m, co, &s->ctx[s->default_task], err, errlen);
    if (st != QALIGN_OK) {
        if (st == QALIGN_ERR_ARG && errlen > 2) { /* argument errors start with the option's name */
            memmove(err + 2, err, strnlen(err, errlen - 3) + 1);
            err[0] = err[1] = '-';
        }
        return -1;
    }
    s->co.batch = qalign_ctx_batch(s->ctx[s->default_task]);
    if (qalign_ctx_notes(s->ctx[s->default_task])) fprintf(stderr, "qalign: note: %s\n", qalign_ctx_notes(s->ctx[s->default_task]));
    const char *words[QALIGN_MAX_LEVELS];
    float lo, hi;
    int nl = qalign_ctx_levels(s->ctx[s->default_task], words, NULL, &lo, &hi);
    row_style_init(&s->levels, TASK_NAMES[s->default_task], scale, nl, words, lo, hi);
    if (row_setup_of(&s->levels.setup, m, s->ctx[s->default_task]) != 0) {
        qalign_ctx_free(s->ctx[s->default_task]);
        return fail(err, errlen, "out of memory");
    }

    int sig_pipe[2];
    if (pipe(sig_pipe) != 0) {
        qalign_ctx_free(s->ctx[s->default_task]);
        row_setup_free(&s->levels.setup);
        return fail(err, errlen, "pipe: %s", strerror(errno));
    }
    fcntl(sig_pipe[1], F_SETFL, fcntl(sig_pipe[1], F_GETFL) | O_NONBLOCK);
    g_sig_fd = sig_pipe[1];
    struct sigaction sa, old_term, old_int, old_pipe;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGINT, &sa, &old_int);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, &old_pipe); /* a client that went away is an error return, not a signal */

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->out_mu, NULL);
    pthread_cond_init(&s->work_cv, &ca);
    pthread_cond_init(&s->done_cv, &ca);
    pthread_condattr_destroy(&ca);

    pthread_t worker;
    int rc = pthread_create(&worker, NULL, worker_main, s) != 0 ? fail(err, errlen, "cannot start the worker thread") : 0;
    if (rc == 0) {
        rc = o->stdio ? serve_stdio(s, sig_pipe[0], err, errlen) : serve_http(s, sig_pipe[0], err, errlen);
        pthread_mutex_lock(&s->mu);
        s->stop_worker = 1;
        pthread_cond_broadcast(&s->work_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(worker, NULL);
        if (rc == 0)
            fprintf(stderr, "qalign: stopped: %llu requests received, %llu answered, %llu images and %llu videos scored, "
                    "%llu questions answered\n", (unsigned long long)s->received, (unsigned long long)s->answered,
                    (unsigned long long)s->images, (unsigned long long)s->videos, (unsigned long long)s->asked);
    }
    if (rc == 0 && s->out_failed) rc = fail(err, errlen, "writing the answers to stdout failed: %s", strerror(s->out_failed));
    for (int t = 0; t < N_TASKS; t++) qalign_ctx_free(s->ctx[t]);
    row_setup_free(&s->levels.setup);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGPIPE, &old_pipe, NULL);
    g_sig_fd = -1;
    close(sig_pipe[0]);
    close(sig_pipe[1]);
    pthread_cond_destroy(&s->work_cv);
    pthread_cond_destroy(&s->done_cv);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->out_mu);
    return rc;
}
