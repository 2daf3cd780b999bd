/* serve_http.c - the HTTP side of the server (serve.h, serve_state.h): `qalign --listen
 * HOST:PORT` accepts connections, one thread each; a connection reads one request at a time
 * (the head, then the body into memory once a queue slot is free), turns POST /score and
 * POST /ask into a job for the worker (serve.c), waits for it and writes the answer; GET
 * /health and GET /metrics are answered at once. The parsers of the request bytes are in
 * serve_parse.c; the queue, the worker and --stdio in serve.c.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "serve_state.h"

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
        buf_printf(&b, "qalign_score_seconds_bucket{le=\"%g\"} %llu\n", SERVE_LATENCY_BUCKETS[k], (unsigned long long)s->latency_hist[k]);
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

/* The query parameters of POST /score and POST /ask (given: 1 if present). */
typedef struct {
    char task[32], scale[16], name[4096], question[4096], dec[5][40];
    int qt, qs, qn, qq;     /* task, scale, name, question given */
} Query;

/* Read and check the query; 0, or -1 with a reason (a 400). */
static int http_query(const HttpRequest *rq, int ask, Query *q, char *err, size_t errlen) {
    static const char *const params[] = {"task", "scale", "name", NULL};
    static const char *const ask_params[] = {"task", "scale", "name", "question", "max_tokens", "temperature", "top_p",
                                             "top_k", "seed", NULL};
    memset(q, 0, sizeof *q);
    for (int k = 0; ask && k < 5 && q->qq >= 0; k++)
        if (http_query_get(rq->query, rq->query_len, SERVE_DECODING_KEYS[k], q->dec[k], sizeof q->dec[k]) < 0) q->qq = -1;
    if (ask && q->qq >= 0) q->qq = http_query_get(rq->query, rq->query_len, "question", q->question, sizeof q->question);
    if (q->qq < 0 || http_query_check(rq->query, rq->query_len, ask ? ask_params : params, err, errlen) != 0 ||
        (q->qt = http_query_get(rq->query, rq->query_len, "task", q->task, sizeof q->task)) < 0 ||
        (q->qs = http_query_get(rq->query, rq->query_len, "scale", q->scale, sizeof q->scale)) < 0 ||
        (q->qn = http_query_get(rq->query, rq->query_len, "name", q->name, sizeof q->name)) < 0) {
        if (q->qt < 0 || q->qs < 0 || q->qn < 0 || q->qq < 0) snprintf(err, errlen, "a malformed or too long query parameter");
        return -1;
    }
    return 0;
}

/* The body of j's request (Content-Length bytes): what came with the head, then the rest.
 * 0, or -1 after answering (the job freed, its slot given back). */
static int http_body(Conn *c, const HttpRequest *rq, size_t hl, Job *j, double t0) {
    Server *s = c->s;
    char err[512];
    size_t len = (size_t)rq->content_length, in_head = c->have - hl, from_head = in_head < len ? in_head : len;
    j->body = malloc(len + 1);
    if (!j->body) {
        job_free(j);
        release_slot(s);
        c->drain = 1;
        return respond_error(c, 503, "out of memory for the body; retry later", "Retry-After: 1\r\n", 0), -1;
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
            return -1;
        }
        got += (size_t)n;
    }
    j->body[len] = 0;
    return 0;
}

/* j's request from its body (JSON, or the bytes of one image) and the query q, checked
 * against each other; a question (ask: POST /ask) with its decoding. 0, or -1 (a 400). */
static int http_request(Server *s, Job *j, const HttpRequest *rq, const Query *q, int ask, char *err, size_t errlen) {
    size_t len = (size_t)rq->content_length;
    int rc;
    if (rq->json) {
        rc = serve_parse_json(j->body, len, 0, &j->req, err, errlen);
        /* a parameter in both the query string and the body must say the same */
        if (rc == 0 && q->qt && j->req.task && strcmp(q->task, j->req.task))
            rc = fail(err, errlen, "task is '%s' in the query string but '%.64s' in the JSON body", q->task, j->req.task);
        if (rc == 0 && q->qs && j->req.scale && strcmp(q->scale, j->req.scale))
            rc = fail(err, errlen, "scale is '%s' in the query string but '%.64s' in the JSON body", q->scale, j->req.scale);
        if (rc == 0 && q->qn && j->req.names &&
            (j->req.n_names != 1 || !j->req.names[0] || strcmp(q->name, j->req.names[0])))
            rc = fail(err, errlen, "name is given in the query string and %s in the JSON body",
                      j->req.n_names == 1 ? "another one" : "names");
        if (rc == 0 && j->req.task && (j->task = find_task(j->req.task)) < 0)
            rc = fail_task(err, errlen);
        if (rc == 0 && j->req.scale) {
            if (!find_scale(j->req.scale)) rc = fail_scale(err, errlen);
            else j->scale = find_scale(j->req.scale);
        }
    } else { /* the body is one image */
        j->req.kind = SERVE_IMAGES;
        j->req.n = 1;
        j->req.items = calloc(1, sizeof *j->req.items);
        rc = j->req.items ? 0 : fail(err, errlen, "out of memory");
        if (!rc) {
            j->req.items[0].data = (const uint8_t *)j->body;
            j->req.items[0].len = len;
        }
    }
    if (rc == 0 && !ask && j->req.question) rc = fail(err, errlen, "a question goes to POST /ask");
    if (rc == 0 && ask) { /* the question: in the query or in the JSON body, not both */
        if (q->qq && j->req.question) rc = fail(err, errlen, "the question is given twice (query and body)");
        else if (!q->qq && !j->req.question) rc = fail(err, errlen, "POST /ask needs a question (?question=... or \"question\")");
        else if (q->qq && !(j->qbuf = strdup(q->question))) rc = fail(err, errlen, "out of memory");
        for (int k = 0; rc == 0 && k < 5; k++)
            if (q->dec[k][0] && j->req.decoding[k][0]) rc = fail(err, errlen, "%s is given twice", SERVE_DECODING_KEYS[k]);
            else if (!j->req.decoding[k][0]) memcpy(j->req.decoding[k], q->dec[k], sizeof q->dec[k]);
        const char *dv[5];
        for (int k = 0; k < 5; k++) dv[k] = j->req.decoding[k];
        if (rc == 0) rc = job_question(s, j, j->qbuf ? j->qbuf : j->req.question, dv, err, errlen);
    }
    if (rc == 0) rc = job_ready(s, j, err, errlen);
    return rc;
}

/* POST /score (ask 0) and POST /ask (ask 1): the head is checked, a queue slot taken, the body
 * read, the job queued and waited for, the answer written. 1 if the connection stays open. */
static int http_score(Conn *c, const HttpRequest *rq, size_t hl, int keep, double t0, int ask) {
    Server *s = c->s;
    char err[512];
    Query q;
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
    if (http_query(rq, ask, &q, err, sizeof err) != 0) {
        c->drain = 1;
        return respond_error(c, 400, err, NULL, 0), 0;
    }
    Job *j = job_new(s, q.qt ? q.task : NULL, q.qs ? q.scale : NULL, err, sizeof err);
    if (!j) {
        c->drain = 1;
        return respond_error(c, 400, err, NULL, 0), 0;
    }
    if (q.qn && !(j->name = strdup(q.name))) {
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
    if (http_body(c, rq, hl, j, t0) != 0) return 0;
    j->t_start = now_seconds();
    if (http_request(s, j, rq, &q, ask, err, sizeof err) != 0) {
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
        if (dt <= SERVE_LATENCY_BUCKETS[k]) s->latency_hist[k]++;
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

int serve_http(Server *s, int sig_fd, char *err, size_t errlen) {
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

