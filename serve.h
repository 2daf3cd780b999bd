/* serve.h - qalign as a service: `qalign --listen HOST:PORT MODEL` (HTTP/1.1) and
 * `qalign --stdio MODEL` (JSON lines), built on qalign.h, image.h and app.h's result rows.
 *
 * serve.c is the server: one thread per connection reads a request, puts its images on
 * one queue and waits; one worker thread owns the scoring contexts (one per task, made
 * when first asked for) and takes from the queue up to --batch images of one task per
 * decoder pass, waiting at most --batch-wait ms for company; the scores are the CLI's,
 * bit for bit, whatever the batch (qalign.h guarantees it). Images stay encoded until the
 * worker decodes them one at a time, so memory is the model, the run state, at most
 * --max-queue request bodies of at most --max-body bytes each, and the image being decoded
 * (--max-pixels, checked from its header first; --max-request-pixels per request).
 *
 * serve_parse.c holds the parsers of untrusted bytes, as plain functions of a buffer (no
 * sockets, no threads, no allocation beyond the request's item lists) so that the
 * libFuzzer harnesses in fuzz/ can call them: the HTTP request head, query parameters,
 * the JSON request bodies and base64.
 */
#ifndef QALIGN_SERVE_H
#define QALIGN_SERVE_H

#include <stddef.h>
#include <stdint.h>

#include "qalign.h"

/* ==== the server (serve.c) ============================================================ */

/* The server's options, parsed from the CLI's option table (options.c). */
typedef struct {
    const char *listen;      /* --listen HOST:PORT (HOST may be empty: 127.0.0.1), or NULL */
    int stdio;               /* --stdio */
    int batch_wait_ms;       /* --batch-wait MS: longest wait for company (default 10) */
    int64_t max_body;        /* --max-body BYTES: request body / stdin line (default 64 MB) */
    int max_queue;           /* --max-queue N: requests admitted at once (default 32) */
    int max_connections;     /* --max-connections N: open HTTP connections (default 128) */
    double timeout;          /* --timeout S: a request must arrive within S s (plus 1 s per MB
                                of body); also the idle keep-alive limit (default 10) */
    const char *api_key;     /* --api-key KEY, --api-key-file FILE (or $QALIGN_API_KEY):
                                Authorization: Bearer KEY */
    int verified;            /* qalign --verify checked the model file before serving (/health) */
    int64_t max_pixels;      /* --max-pixels N: an image's width x height, checked from its header
                                before it is decoded (default 40 M) */
    int64_t max_request_pixels; /* --max-request-pixels N: the decoded pixels of one request's
                                images (or video frames) together (default 400 M) */
} ServeOptions;

#define SERVE_MAX_PIXELS 40000000
#define SERVE_DEFAULTS {NULL, 0, 10, (int64_t)64 << 20, 32, 128, 10.0, NULL, 0, SERVE_MAX_PIXELS, 400000000}

/* Serve until EOF on stdin (--stdio) or SIGTERM/SIGINT, then answer what is in flight and
 * return 0; -1 with a reason in err when the server cannot start (bad options, the address
 * is in use, a context cannot be made). co: the scoring options of every context (its task
 * is the default task; the others are made with the same options when first asked for);
 * scale: the default --scale ("1-5", "0-1", "0-100"), or NULL for the score's own range. */
int serve_run(const ServeOptions *o, const qalign_model *m, const qalign_ctx_options *co, const char *scale, char *err,
              size_t errlen);

/* ==== the parsers (serve_parse.c) ===================================================== */

#define HTTP_MAX_HEAD 16384      /* request line + headers, bytes */
#define HTTP_MAX_HEADERS 100     /* header fields */
#define SERVE_MAX_IMAGES 1024    /* images in one JSON request */
#define SERVE_MAX_FRAMES 256     /* frames in one video request */

/* A parsed request head. The pointers point into the buffer given to http_parse_head. */
typedef struct {
    const char *method;      size_t method_len;
    const char *path;        size_t path_len;        /* the target up to '?' */
    const char *query;       size_t query_len;       /* after '?' (NULL: none) */
    int minor;               /* HTTP/1.minor: 0 or 1 */
    int64_t content_length;  /* -1: no Content-Length (one over INT64_MAX: 400 "out of range") */
    int chunked;             /* a Transfer-Encoding was given (the server refuses it: 411) */
    int keep_alive;          /* the client keeps the connection (1.1 default, 1.0 with keep-alive) */
    int expect_continue;     /* Expect: 100-continue */
    int json;                /* Content-Type: application/json */
    const char *authorization; size_t authorization_len; /* NULL if absent */
} HttpRequest;

/* Parse the head of an HTTP/1.x request from buf[0..len), the bytes received so far.
 * Returns the head's length in bytes (> 0: the body, if any, starts there) when it is
 * complete; 0 when more bytes are needed (and len < HTTP_MAX_HEAD); or -status (-400,
 * -417, -431, -501, -505) with a one-line reason in err for a request to refuse. Empty
 * lines before the request line are skipped; lines may end in CRLF or LF. */
int http_parse_head(const char *buf, size_t len, HttpRequest *req, char *err, size_t errlen);

/* The value of query parameter `name` in query[0..len), percent-decoded ('+' is a space),
 * into out[0..outlen) with a NUL. Returns 1 if found, 0 if absent, -1 if it is malformed,
 * longer than outlen - 1 or contains a NUL. */
int http_query_get(const char *query, size_t len, const char *name, char *out, size_t outlen);
/* 0 if every parameter of the query is one of the NULL-terminated names, each at most once,
 * else -1 with the first other or repeated one named in err. */
int http_query_check(const char *query, size_t len, const char *const *names, char *err, size_t errlen);

/* Decode base64 (RFC 4648 standard alphabet, padding optional) in place: s[0..len) becomes
 * the bytes. Returns their number, or -1 (with a reason) for anything else. */
int64_t serve_base64_decode(char *s, size_t len, char *err, size_t errlen);

/* Where one image comes from: bytes (HTTP, or "image" on stdin), or a file (stdin only). */
typedef struct {
    const uint8_t *data; size_t len;
    const char *path;        /* NUL-terminated, or NULL */
} ServeSource;

typedef enum { SERVE_IMAGES = 1, SERVE_VIDEO = 2 } ServeKind;

/* A parsed JSON request. Strings point into the text given to serve_parse_json, which is
 * rewritten in place (escapes and base64 decoded); item lists and id are malloc'ed. */
typedef struct {
    ServeKind kind;          /* SERVE_IMAGES: items are images; SERVE_VIDEO: the frames of one */
    int many;                /* HTTP "images": answer {"results": [...]} rather than one row */
    ServeSource *items;      /* n of them */
    int n;
    const char **names;      /* "names" (n of them, entries may be NULL) or "name" (1: an image's
                                or the video's), or NULL */
    int n_names;
    const char *task;        /* NULL: the server's default */
    const char *scale;       /* NULL: the server's default */
    char *id;                /* stdin: the "id" value as JSON text (malloc'ed), or NULL */
    const char *question;    /* "question": answer it (qalign --ask) instead of scoring; NULL: score */
    char decoding[5][40];    /* "max_tokens", "temperature", "top_p", "top_k", "seed" as given (JSON
                                numbers, as text; "" when absent) */
} ServeRequest;
/* The decoding keys of a request, in ServeRequest.decoding's order (also the query parameters
 * of POST /ask). */
extern const char *const SERVE_DECODING_KEYS[5];

/* Parse one JSON request in text[0..len) (modified in place).
 * HTTP (stdio = 0):   {"images": [B64, ...], "names": [S|null, ...]}  or  {"image": B64, "name": S}
 *                     or {"video": [B64 frame, ...], "name": S}; optional "task", "scale".
 * stdin (stdio = 1):  {"id": ANY, "path": S}  or  {"id": ANY, "image": B64, "name": S}
 *                     or {"id": ANY, "frames": [S, ...]}; optional "task", "scale".
 * Both: optional "question" (a string: the request is answered in words, as qalign --ask
 * does, instead of scored) and, with it, the numbers "max_tokens", "temperature", "top_p",
 * "top_k", "seed".
 * Unknown keys, duplicate keys, two sources and anything not JSON are refused. On failure
 * returns -1 with a reason in err; r->id is still set when the id could be read. */
int serve_parse_json(char *text, size_t len, int stdio, ServeRequest *r, char *err, size_t errlen);
void serve_request_free(ServeRequest *r);

#endif
