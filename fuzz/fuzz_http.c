/* fuzz_http.c - libFuzzer harness for the server's HTTP request-head parser and its query
 * parameters (serve_parse.c; make fuzz). Traps if the parser breaks its contract: a
 * refusal without a one-line reason or with another status than the documented ones, a
 * complete head longer than the input or with pointers outside it, a head found complete
 * in a shorter prefix, a query value longer than its buffer. Seeds: fuzz/corpus/fuzz_http. */
#include <stdlib.h>
#include <string.h>

#include "serve.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void inside(const char *buf, size_t size, const char *p, size_t n) {
    if (n && (!p || p < buf || p + n > buf + size)) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256], out[64];
    HttpRequest rq;
    char *buf = malloc(size ? size : 1); /* exactly size bytes: ASan sees a read past the end */
    if (!buf) return 0;
    memcpy(buf, data, size);
    err[0] = 0;
    int rc = http_parse_head(buf, size, &rq, err, sizeof err);
    if (rc < 0) {
        if (rc != -400 && rc != -417 && rc != -431 && rc != -501 && rc != -505) __builtin_trap();
        if (!err[0] || strchr(err, '\n')) __builtin_trap();
    } else if (rc == 0) {
        if (size >= HTTP_MAX_HEAD) __builtin_trap(); /* a full buffer must be decided */
    } else {
        if ((size_t)rc > size || rc > HTTP_MAX_HEAD) __builtin_trap();
        inside(buf, (size_t)rc, rq.method, rq.method_len);
        inside(buf, (size_t)rc, rq.path, rq.path_len);
        inside(buf, (size_t)rc, rq.query, rq.query_len);
        inside(buf, (size_t)rc, rq.authorization, rq.authorization_len);
        if (!rq.method_len || !rq.path_len || rq.path[0] != '/') __builtin_trap();
        if (rq.minor < 0 || rq.minor > 1 || rq.content_length < -1) __builtin_trap();
        HttpRequest shorter;
        if (http_parse_head(buf, (size_t)rc - 1, &shorter, err, sizeof err) > 0) __builtin_trap();
        static const char *const names[] = {"task", "scale", "name", NULL};
        for (const char *const *n = names; *n; n++) {
            int q = http_query_get(rq.query, rq.query_len, *n, out, sizeof out);
            if (q < -1 || q > 1 || (q == 1 && strlen(out) >= sizeof out)) __builtin_trap();
        }
        err[0] = 0;
        if (http_query_check(rq.query, rq.query_len, names, err, sizeof err) != 0 && (!err[0] || strchr(err, '\n')))
            __builtin_trap();
    }
    free(buf);
    return 0;
}
