/* serve_state.h - the server's state, shared by serve.c (the queue, the worker, --stdio and
 * serve_run) and serve_http.c (--listen: connections, requests, answers). Internal to the
 * server: the CLI sees serve.h only.
 *
 * Threads and what they own are described at the top of serve.c; one mutex (Server.mu) guards
 * the queue, the counters and the metrics. */
#ifndef QALIGN_SERVE_STATE_H
#define QALIGN_SERVE_STATE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "qalign.h"
#include "results.h"
#include "serve.h"
/* ---- the server's state ---------------------------------------------------------------- */

#define N_TASKS 3      /* qalign_tasks()'s number (serve_run checks it); a context each */
#define TASK_NAME(k) (qalign_tasks(NULL)[k])

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
#define N_LATENCY 13        /* SERVE_LATENCY_BUCKETS */
extern const double SERVE_LATENCY_BUCKETS[N_LATENCY];

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

/* ---- serve.c's helpers for serve_http.c ---------------------------------------------------- */

/* t as a JSON string, escaped as the result rows are */
void buf_json(Buf *b, const char *t);
/* v as an integer in [lo, hi]: 0, or -1 */
int parse_long(const char *v, long lo, long hi, long *out);
/* a task's index (TASK_NAME), or -1; the messages for a task or scale not among the library's */
int find_task(const char *t);
int fail_task(char *err, size_t errlen);
int fail_scale(char *err, size_t errlen);
/* the name of a scale a request may ask for (a static string), or NULL */
const char *find_scale(const char *v);
/* A job from a parsed request: new (task and scale checked), ready (results and units made),
 * a question (answered in words instead of scored), queued (mu held), freed. */
Job *job_new(Server *s, const char *task, const char *scale, char *err, size_t errlen);
int job_ready(Server *s, Job *j, char *err, size_t errlen);
int job_question(Server *s, Job *j, const char *question, const char *const dec[5], char *err, size_t errlen);
void enqueue(Server *s, Job *j);
void job_free(Job *j);
/* result i of a finished job as its JSON row (malloc'ed), or NULL (out of memory) */
char *job_row(Server *s, const Job *j, int i);
/* give back a queue slot (and the body it allowed) */
void release_slot(Server *s);

/* ---- serve_http.c ---------------------------------------------------------------------------- */

/* --listen: accept connections until a byte arrives on sig_fd (a signal), then wait for the
 * connections in flight; 0, or -1 with a reason (the address cannot be bound). */
int serve_http(Server *s, int sig_fd, char *err, size_t errlen);

#endif
