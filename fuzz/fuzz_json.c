/* fuzz_json.c - libFuzzer harness for the server's JSON request parser and base64 decoder
 * (serve_parse.c; make fuzz). Each input is parsed as an HTTP body and as a stdin line, each
 * from its own copy of exactly its bytes, and base64-decoded. Traps if a parse breaks its
 * contract: a refusal without a one-line reason; an accepted request without items, with
 * more than the limits, with bytes, paths or names outside the buffer or not NUL-terminated
 * in it (the question too), decoding options without a question or not NUL-terminated,
 * with a source that is neither bytes nor a path; an id on an HTTP body; base64
 * output longer than 3/4 of its input. Seeds: fuzz/corpus/fuzz_json. */
#include <stdlib.h>
#include <string.h>

#include "serve.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void string_inside(const char *buf, size_t size, const char *s) {
    if (!s) return;
    if (s < buf || s >= buf + size) __builtin_trap();
    if (!memchr(s, 0, (size_t)(buf + size - s))) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[512];
    for (int stdio = 0; stdio < 2; stdio++) {
        char *buf = malloc(size ? size : 1);
        if (!buf) return 0;
        memcpy(buf, data, size);
        ServeRequest r;
        err[0] = 0;
        if (serve_parse_json(buf, size, stdio, &r, err, sizeof err) != 0) {
            if (!err[0] || strchr(err, '\n')) __builtin_trap();
        } else {
            if (r.n < 1 || r.n > SERVE_MAX_IMAGES || (r.kind == SERVE_VIDEO && r.n > SERVE_MAX_FRAMES)) __builtin_trap();
            if (r.kind != SERVE_IMAGES && r.kind != SERVE_VIDEO) __builtin_trap();
            if (!stdio && r.id) __builtin_trap();
            for (int i = 0; i < r.n; i++) {
                const ServeSource *s = &r.items[i];
                if (!!s->path == !!s->data) __builtin_trap(); /* bytes or a path, not both */
                if (s->path) string_inside(buf, size, s->path);
                else if (s->data && ((const char *)s->data < buf || (const char *)s->data + s->len > buf + size)) __builtin_trap();
                if (!stdio && s->path) __builtin_trap(); /* no file is read by path over HTTP */
            }
            if (r.names && r.n_names != (r.kind == SERVE_VIDEO ? 1 : r.n)) __builtin_trap();
            for (int i = 0; r.names && i < r.n_names; i++) string_inside(buf, size, r.names[i]);
            string_inside(buf, size, r.task);
            string_inside(buf, size, r.scale);
            string_inside(buf, size, r.question);
            for (int k = 0; k < 5; k++) { /* decoding numbers: only with a question, NUL-terminated */
                if (!memchr(r.decoding[k], 0, sizeof r.decoding[k])) __builtin_trap();
                if (r.decoding[k][0] && !r.question) __builtin_trap();
            }
            if (r.id && strlen(r.id) > size) __builtin_trap();
        }
        serve_request_free(&r);
        free(buf);
    }
    char *b = malloc(size ? size : 1);
    if (!b) return 0;
    memcpy(b, data, size);
    int64_t n = serve_base64_decode(b, size, err, sizeof err);
    if (n > (int64_t)(size / 4 * 3 + 3) || (n < 0 && (!err[0] || strchr(err, '\n')))) __builtin_trap();
    free(b);
    return 0;
}
