/* serve.c - qalign as a service (serve.h): the queue, the worker, `--stdio` (JSON lines) and
 * serve_run; the HTTP/1.1 side of `--listen HOST:PORT` is serve_http.c, the state both share
 * serve_state.h; built on qalign.h, image.h and the result rows (results.h).
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
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "inputs.h"
#include "results.h"
#include "common.h"
#include "image.h"
#include "qalign.h"
#include "serve.h"
#include "serve_state.h"

/* ---- small helpers ---------------------------------------------------------------------- */

/* t as a JSON string, escaped as the result rows are (app.c) */
void buf_json(Buf *b, const char *t) {
    char *q = json_quoted(t);
    if (!q) {
        b->oom = 1;
        return;
    }
    buf_adds(b, q);
    free(q);
}

/* the port of --listen (its options are parsed by options.c, the CLI's table) */
int parse_long(const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

const double SERVE_LATENCY_BUCKETS[N_LATENCY] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};

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

void job_free(Job *j) {
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

int find_task(const char *t) {
    for (int k = 0; k < N_TASKS; k++)
        if (!strcmp(t, TASK_NAME(k))) return k;
    return -1;
}

/* "task must be quality, aesthetics or aesthetic" */
int fail_task(char *err, size_t errlen) {
    char w[128];
    return fail(err, errlen, "task must be %s", words_or(w, sizeof w, qalign_tasks(NULL), sizeof(char *), N_TASKS));
}

/* "scale must be 1-5, 0-1 or 0-100" */
int fail_scale(char *err, size_t errlen) {
    int n;
    const qalign_scale *sc = qalign_scales(&n);
    char w[128];
    return fail(err, errlen, "scale must be %s", words_or(w, sizeof w, &sc[0].name, sizeof sc[0], n));
}

/* Queue every unit of job j (mu held). */
void enqueue(Server *s, Job *j) {
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
const char *find_scale(const char *v) {
    const qalign_scale *sc = qalign_scale_find(v);
    return sc ? sc->name : NULL;
}

Job *job_new(Server *s, const char *task, const char *scale, char *err, size_t errlen) {
    int t = task ? find_task(task) : s->default_task;
    if (t < 0) return fail_task(err, errlen), NULL;
    if (scale && !find_scale(scale)) return fail_scale(err, errlen), NULL;
    Job *j = calloc(1, sizeof *j);
    if (!j) return fail(err, errlen, "out of memory"), NULL;
    j->task = t;
    j->scale = scale ? find_scale(scale) : s->default_scale;
    return j;
}

int job_ready(Server *s, Job *j, char *err, size_t errlen) {
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
int job_question(Server *s, Job *j, const char *question, const char *const dec[5], char *err, size_t errlen) {
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
char *job_row(Server *s, const Job *j, int i) {
    RowStyle st;
    row_style_init(&st, TASK_NAME(j->task), qalign_scale_find(j->scale), s->levels.n_levels, s->levels.words, s->levels.lo, s->levels.hi);
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

/* ---- the worker ------------------------------------------------------------------------- */

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
        co.task = TASK_NAME(task);
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

/* Give back a queue slot (and the body it allowed). */
void release_slot(Server *s) {
    pthread_mutex_lock(&s->mu);
    s->admitted--;
    pthread_cond_broadcast(&s->done_cv);
    pthread_mutex_unlock(&s->mu);
}

/* ---- stdio ------------------------------------------------------------------------------ */

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

/* ---- run -------------------------------------------------------------------------------- */

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
    int n_tasks;
    qalign_tasks(&n_tasks);
    if (n_tasks != N_TASKS) return fail(err, errlen, "internal: serve.c knows %d tasks, qalign.h %d", N_TASKS, n_tasks);
    if (s->default_task < 0) return fail_task(err, errlen);
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
    row_style_init(&s->levels, TASK_NAME(s->default_task), qalign_scale_find(scale), nl, words, lo, hi);
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
