/* serve_parse.c - the parsers of what a client sends the server: the HTTP request head,
 * query parameters, base64 and the JSON request bodies (serve.h). Pure functions of a
 * buffer, strict about the grammar, and never reading outside [buf, buf + len): the
 * libFuzzer harnesses fuzz/fuzz_http.c and fuzz/fuzz_json.c run them under ASan/UBSan. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "serve.h"

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

static int ieq(const char *a, size_t n, const char *lit) { /* a[0..n) == lit, ASCII case-insensitive */
    size_t m = strlen(lit);
    if (n != m) return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)a[i]) != lit[i]) return 0;
    return 1;
}

/* RFC 9110 tchar: the characters of a method or a header name */
static int is_tchar(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* ---- the request head ------------------------------------------------------------------ */

#define HEAD_FAIL(status, ...) (fail(err, errlen, __VA_ARGS__), -(status))

/* One header field (name[0..nl), value[0..vl) trimmed) into req. */
static int head_field(HttpRequest *req, const char *name, size_t nl, const char *v, size_t vl, int *seen_host,
                      char *err, size_t errlen) {
    if (ieq(name, nl, "content-length")) {
        if (vl == 0) return HEAD_FAIL(400, "empty Content-Length");
        int64_t n = 0;
        for (size_t i = 0; i < vl; i++) {
            if (v[i] < '0' || v[i] > '9') return HEAD_FAIL(400, "Content-Length is not a number");
            int d = v[i] - '0';
            if (n > (INT64_MAX - d) / 10) return HEAD_FAIL(400, "Content-Length out of range");
            n = n * 10 + d;
        }
        if (req->content_length >= 0 && req->content_length != n) return HEAD_FAIL(400, "two different Content-Length headers");
        req->content_length = n;
    } else if (ieq(name, nl, "transfer-encoding")) {
        req->chunked = 1;
    } else if (ieq(name, nl, "connection")) {
        for (size_t i = 0; i < vl;) { /* comma-separated tokens */
            while (i < vl && (v[i] == ',' || v[i] == ' ' || v[i] == '\t')) i++;
            size_t s = i;
            while (i < vl && v[i] != ',' && v[i] != ' ' && v[i] != '\t') i++;
            if (ieq(v + s, i - s, "close")) req->keep_alive = -1;
            else if (ieq(v + s, i - s, "keep-alive") && req->keep_alive == 0) req->keep_alive = 2;
        }
    } else if (ieq(name, nl, "expect")) {
        if (!ieq(v, vl, "100-continue")) return HEAD_FAIL(417, "the only expectation understood is 100-continue");
        req->expect_continue = 1;
    } else if (ieq(name, nl, "content-type")) {
        size_t e = 0;
        while (e < vl && v[e] != ';' && v[e] != ' ' && v[e] != '\t') e++;
        req->json = ieq(v, e, "application/json");
    } else if (ieq(name, nl, "authorization")) {
        if (req->authorization) return HEAD_FAIL(400, "two Authorization headers");
        req->authorization = v;
        req->authorization_len = vl;
    } else if (ieq(name, nl, "host")) {
        if (++*seen_host > 1) return HEAD_FAIL(400, "two Host headers");
    }
    return 0;
}

static int request_line(HttpRequest *req, const char *l, size_t n, char *err, size_t errlen) {
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)l[i])) i++;
    if (i == 0 || i >= n || l[i] != ' ') return HEAD_FAIL(400, "malformed request line");
    if (i > 15) return HEAD_FAIL(501, "unknown method");
    req->method = l;
    req->method_len = i;
    size_t t = ++i;
    while (i < n && (unsigned char)l[i] > 0x20 && (unsigned char)l[i] < 0x7F) i++;
    if (i == t || i >= n || l[i] != ' ') return HEAD_FAIL(400, "malformed request target");
    const char *target = l + t;
    size_t tl = i - t;
    /* absolute-form (http://host/path), as a proxy may send it: keep the path */
    size_t skip = tl >= 7 && ieq(target, 7, "http://") ? 7 : tl >= 8 && ieq(target, 8, "https://") ? 8 : 0;
    if (skip) {
        size_t k = skip;
        while (k < tl && target[k] != '/' && target[k] != '?') k++;
        target += k;
        tl -= k;
        if (tl == 0 || target[0] != '/') return HEAD_FAIL(400, "absolute request target without a path");
    } else if (target[0] != '/') {
        return HEAD_FAIL(400, "request target must start with /");
    }
    const char *q = memchr(target, '?', tl);
    req->path = target;
    req->path_len = q ? (size_t)(q - target) : tl;
    if (q) {
        req->query = q + 1;
        req->query_len = tl - req->path_len - 1;
    }
    const char *ver = l + i + 1;
    size_t vl = n - i - 1;
    if (vl != 8 || memcmp(ver, "HTTP/", 5) != 0 || ver[5] < '0' || ver[5] > '9' || ver[6] != '.' || ver[7] < '0' ||
        ver[7] > '9')
        return HEAD_FAIL(400, "malformed HTTP version");
    if (ver[5] != '1' || (ver[7] != '0' && ver[7] != '1')) return HEAD_FAIL(505, "only HTTP/1.0 and HTTP/1.1 are served");
    req->minor = ver[7] - '0';
    return 0;
}

int http_parse_head(const char *buf, size_t len, HttpRequest *req, char *err, size_t errlen) {
    memset(req, 0, sizeof *req);
    req->content_length = -1;
    size_t pos = 0, limit = len < HTTP_MAX_HEAD ? len : HTTP_MAX_HEAD;
    while (pos < limit && (buf[pos] == '\n' || (buf[pos] == '\r' && pos + 1 < limit && buf[pos + 1] == '\n')))
        pos += buf[pos] == '\r' ? 2 : 1; /* empty lines before the request line */
    int lines = 0, seen_host = 0;
    for (;;) {
        const char *nl = pos < limit ? memchr(buf + pos, '\n', limit - pos) : NULL;
        if (!nl) {
            if (len >= HTTP_MAX_HEAD) return HEAD_FAIL(431, "request head larger than %d bytes", HTTP_MAX_HEAD);
            return 0;
        }
        const char *l = buf + pos;
        size_t n = (size_t)(nl - l);
        pos = (size_t)(nl - buf) + 1;
        if (n && l[n - 1] == '\r') n--;
        for (size_t i = 0; i < n; i++) /* no control characters but HT, no bare CR */
            if (((unsigned char)l[i] < 0x20 && l[i] != '\t') || l[i] == 0x7F) return HEAD_FAIL(400, "control character in the request head");
        if (lines == 0) {
            int rc = request_line(req, l, n, err, errlen);
            if (rc) return rc;
        } else if (n == 0) {
            break; /* the blank line: end of the head */
        } else {
            if (lines > HTTP_MAX_HEADERS) return HEAD_FAIL(431, "more than %d header fields", HTTP_MAX_HEADERS);
            if (l[0] == ' ' || l[0] == '\t') return HEAD_FAIL(400, "folded header line");
            size_t c = 0;
            while (c < n && is_tchar((unsigned char)l[c])) c++;
            if (c == 0 || c >= n || l[c] != ':') return HEAD_FAIL(400, "malformed header field");
            size_t vs = c + 1, ve = n;
            while (vs < ve && (l[vs] == ' ' || l[vs] == '\t')) vs++;
            while (ve > vs && (l[ve - 1] == ' ' || l[ve - 1] == '\t')) ve--;
            int rc = head_field(req, l, c, l + vs, ve - vs, &seen_host, err, errlen);
            if (rc) return rc;
        }
        lines++;
    }
    if (req->chunked && req->content_length >= 0) return HEAD_FAIL(400, "both Content-Length and Transfer-Encoding");
    if (req->minor == 1 && !seen_host) return HEAD_FAIL(400, "HTTP/1.1 request without a Host header");
    req->keep_alive = req->keep_alive == -1 ? 0 : req->minor == 1 ? 1 : req->keep_alive == 2;
    return (int)pos;
}

/* ---- query parameters -------------------------------------------------------------------- */

static int hexval(int c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Percent-decode s[0..n) into out[0..cap) with a NUL; the decoded length, or -1 (malformed,
 * a NUL, or longer than cap - 1). */
static int pct_decode(const char *s, size_t n, char *out, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '+') c = ' ';
        else if (c == '%') {
            if (i + 2 >= n) return -1;
            int h = hexval((unsigned char)s[i + 1]), l = hexval((unsigned char)s[i + 2]);
            if (h < 0 || l < 0) return -1;
            c = h * 16 + l;
            i += 2;
        }
        if (c == 0 || o + 1 >= cap) return -1;
        out[o++] = (char)c;
    }
    if (cap == 0) return -1;
    out[o] = 0;
    return (int)o;
}

/* Calls fn for each key=value pair of the query; stops at the first non-zero return. */
typedef int (*PairFn)(void *user, const char *k, size_t kl, const char *v, size_t vl);
static int each_pair(const char *q, size_t len, PairFn fn, void *user) {
    for (size_t i = 0; q && i < len;) {
        size_t s = i;
        while (i < len && q[i] != '&') i++;
        if (i > s) {
            const char *eq = memchr(q + s, '=', i - s);
            size_t kl = eq ? (size_t)(eq - (q + s)) : i - s;
            const char *v = eq ? eq + 1 : q + i;
            int rc = fn(user, q + s, kl, v, (size_t)(q + i - v));
            if (rc) return rc;
        }
        i++;
    }
    return 0;
}

typedef struct {
    const char *name;
    char *out;
    size_t cap;
    int found;
} GetCtx;

static int get_pair(void *user, const char *k, size_t kl, const char *v, size_t vl) {
    GetCtx *g = user;
    char key[64];
    if (pct_decode(k, kl, key, sizeof key) < 0 || strcmp(key, g->name) != 0) return 0;
    g->found = pct_decode(v, vl, g->out, g->cap) < 0 ? -1 : 1;
    return 1;
}

int http_query_get(const char *query, size_t len, const char *name, char *out, size_t outlen) {
    GetCtx g = {name, out, outlen, 0};
    each_pair(query, len, get_pair, &g);
    return g.found;
}

typedef struct {
    const char *const *names;
    char *err;
    size_t errlen;
    unsigned seen;          /* the names met so far (bit k: names[k]) */
} CheckCtx;

static int check_pair(void *user, const char *k, size_t kl, const char *v, size_t vl) {
    CheckCtx *c = user;
    char key[64];
    if (pct_decode(k, kl, key, sizeof key) >= 0)
        for (int i = 0; c->names[i]; i++)
            if (!strcmp(key, c->names[i])) {
                if (i < 32 && (c->seen >> i & 1)) return fail(c->err, c->errlen, "query parameter '%s' given twice", key);
                if (i < 32) c->seen |= 1u << i;
                return 0;
            }
    char shown[40];
    size_t m = 0;
    for (size_t i = 0; i < kl && m + 1 < sizeof shown; i++) /* printable characters only */
        shown[m++] = k[i] > 0x20 && k[i] < 0x7F && k[i] != '\'' ? k[i] : '?';
    shown[m] = 0;
    return fail(c->err, c->errlen, "unknown query parameter '%s'", shown);
}

int http_query_check(const char *query, size_t len, const char *const *names, char *err, size_t errlen) {
    CheckCtx c = {names, err, errlen, 0};
    return each_pair(query, len, check_pair, &c) ? -1 : 0;
}

/* ---- base64 ------------------------------------------------------------------------------ */

static int b64val(int c) {
    return c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' + 26 : c >= '0' && c <= '9' ? c - '0' + 52
         : c == '+' ? 62 : c == '/' ? 63 : -1;
}

int64_t serve_base64_decode(char *s, size_t len, char *err, size_t errlen) {
    size_t i = 0, o = 0;
    if (len > 5 && !memcmp(s, "data:", 5)) { /* a data: URL: the part after ";base64," */
        const char *m = NULL;
        for (size_t k = 5; k + 8 <= len && s[k] != ','; k++)
            if (!memcmp(s + k, ";base64,", 8)) { m = s + k + 8; break; }
        if (!m) return fail(err, errlen, "a data: URL that is not base64");
        i = (size_t)(m - s);
    }
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    size_t nchar = 0;
    for (; i < len; i++) {
        int c = (unsigned char)s[i];
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
        if (c == '=') {
            pad++;
            continue;
        }
        int v = b64val(c);
        if (v < 0) return fail(err, errlen, "invalid base64 (character %zu)", i);
        if (pad) return fail(err, errlen, "invalid base64 (data after '=')");
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        nchar++;
        if (bits >= 8) {
            bits -= 8;
            s[o++] = (char)((acc >> bits) & 0xFF); /* o < i: the output never overtakes the input */
        }
    }
    if (nchar % 4 == 1) return fail(err, errlen, "invalid base64 (truncated)");
    if (pad && (pad > 2 || (nchar + (size_t)pad) % 4 != 0)) return fail(err, errlen, "invalid base64 padding");
    return (int64_t)o;
}

/* ---- JSON requests ------------------------------------------------------------------------ */

typedef struct {
    char *p, *end, *start;
    char *err;
    size_t errlen;
} Json;

#define JSON_MAX_DEPTH 64

static int jfail(Json *j, const char *what) {
    return fail(j->err, j->errlen, "bad JSON: %s at byte %zu", what, (size_t)(j->p - j->start));
}

static void jws(Json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval((unsigned char)p[k]);
        if (h < 0) return -1;
        v = v * 16 + (unsigned)h;
    }
    *out = v;
    return 0;
}

/* A string at j->p ('"'). decode: unescape it in place (the text shrinks; a NUL ends it)
 * and set *out / *outlen; else only check it. Lone \udc80..\udcff stand for the bytes
 * 0x80..0xff (Python's surrogateescape, as qalign writes paths that are not UTF-8). */
static int jstring(Json *j, int decode, char **out, size_t *outlen) {
    if (j->p >= j->end || *j->p != '"') return jfail(j, "expected a string");
    char *w = ++j->p, *o = w;
    while (j->p < j->end && *j->p != '"') {
        unsigned char c = (unsigned char)*j->p;
        if (c < 0x20) return jfail(j, "control character in a string");
        if (c != '\\') {
            if (decode) *o++ = (char)c;
            j->p++;
            continue;
        }
        if (j->end - j->p < 2) return jfail(j, "unterminated string");
        static const char esc[] = "\"\\/bfnrt", val[] = "\"\\/\b\f\n\r\t";
        char e = j->p[1];
        const char *simple = e ? strchr(esc, e) : NULL;
        if (simple) {
            if (decode) *o++ = val[simple - esc];
            j->p += 2;
            continue;
        }
        if (e != 'u') return jfail(j, "bad escape in a string");
        unsigned u;
        if (j->end - j->p < 6 || hex4(j->p + 2, &u)) return jfail(j, "bad \\u escape");
        j->p += 6;
        if (u == 0) return jfail(j, "\\u0000 in a string");
        if (u >= 0xD800 && u < 0xDC00) { /* a high surrogate: a low one must follow */
            unsigned lo;
            if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' || hex4(j->p + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                return jfail(j, "unpaired surrogate");
            j->p += 6;
            u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
        } else if (u >= 0xDC00 && u < 0xE000) {
            if (u < 0xDC80 || u > 0xDCFF) return jfail(j, "unpaired surrogate");
            if (decode) *o++ = (char)(u - 0xDC00); /* surrogateescape: the byte itself */
            continue;
        }
        if (!decode) continue;
        if (u < 0x80) *o++ = (char)u;
        else if (u < 0x800) {
            *o++ = (char)(0xC0 | (u >> 6));
            *o++ = (char)(0x80 | (u & 0x3F));
        } else if (u < 0x10000) {
            *o++ = (char)(0xE0 | (u >> 12));
            *o++ = (char)(0x80 | ((u >> 6) & 0x3F));
            *o++ = (char)(0x80 | (u & 0x3F));
        } else {
            *o++ = (char)(0xF0 | (u >> 18));
            *o++ = (char)(0x80 | ((u >> 12) & 0x3F));
            *o++ = (char)(0x80 | ((u >> 6) & 0x3F));
            *o++ = (char)(0x80 | (u & 0x3F));
        }
    }
    if (j->p >= j->end) return jfail(j, "unterminated string");
    j->p++; /* the closing quote (o is at or before it) */
    if (decode) {
        *o = 0;
        *out = w;
        *outlen = (size_t)(o - w);
    }
    return 0;
}

static int jdigits(Json *j) {
    char *s = j->p;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    return j->p > s ? 0 : jfail(j, "bad number");
}

static int jnumber(Json *j) {
    if (j->p < j->end && *j->p == '-') j->p++;
    if (j->p < j->end && *j->p == '0') j->p++;
    else if (jdigits(j)) return -1;
    if (j->p < j->end && *j->p == '.') {
        j->p++;
        if (jdigits(j)) return -1;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
        if (jdigits(j)) return -1;
    }
    return 0;
}

static int jliteral(Json *j, const char *lit) {
    size_t n = strlen(lit);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n)) return jfail(j, "unexpected character");
    j->p += n;
    return 0;
}

/* Check (and step over) any value, without changing it. */
static int jskip(Json *j, int depth) {
    jws(j);
    if (j->p >= j->end) return jfail(j, "unexpected end");
    if (depth > JSON_MAX_DEPTH) return jfail(j, "nested too deep");
    char c = *j->p;
    if (c == '"') return jstring(j, 0, NULL, NULL);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->p++;
        jws(j);
        if (j->p < j->end && *j->p == close) {
            j->p++;
            return 0;
        }
        for (;;) {
            if (c == '{') {
                jws(j);
                if (jstring(j, 0, NULL, NULL)) return -1;
                jws(j);
                if (j->p >= j->end || *j->p != ':') return jfail(j, "expected ':'");
                j->p++;
            }
            if (jskip(j, depth + 1)) return -1;
            jws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            if (j->p < j->end && *j->p == close) {
                j->p++;
                return 0;
            }
            return jfail(j, c == '{' ? "expected ',' or '}'" : "expected ',' or ']'");
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) return jnumber(j);
    if (c == 't') return jliteral(j, "true");
    if (c == 'f') return jliteral(j, "false");
    return jliteral(j, "null");
}

/* A string value, decoded (null allowed when *out may stay NULL: nullable). */
static int jstr_value(Json *j, const char *key, int nullable, char **out, size_t *len) {
    jws(j);
    *out = NULL;
    *len = 0;
    if (nullable && j->p < j->end && *j->p == 'n') return jliteral(j, "null");
    if (j->p >= j->end || *j->p != '"') return fail(j->err, j->errlen, "%s must be a string", key);
    return jstring(j, 1, out, len);
}

static int push_item(ServeRequest *r, int *cap, int max, const char *key, char *err, size_t errlen) {
    if (r->n >= max) return fail(err, errlen, "'%s': more than %d entries", key, max);
    if (r->n == *cap) {
        int nc = *cap ? *cap * 2 : 8;
        ServeSource *ni = realloc(r->items, (size_t)nc * sizeof *ni);
        if (!ni) return fail(err, errlen, "out of memory");
        r->items = ni;
        *cap = nc;
    }
    r->items[r->n++] = (ServeSource){0};
    return 0;
}

/* A base64 string into a source's bytes; label names it in messages. */
static int b64_item(Json *j, const char *label, ServeSource *s) {
    char *v;
    size_t n;
    char why[96];
    if (jstr_value(j, label, 0, &v, &n)) return -1;
    int64_t got = serve_base64_decode(v, n, why, sizeof why);
    if (got < 0) return fail(j->err, j->errlen, "%s: %s", label, why);
    s->data = (const uint8_t *)v;
    s->len = (size_t)got;
    return 0;
}

/* An array of strings: base64 images (b64 = 1) or paths, into r->items; or names. */
static int jarray(Json *j, ServeRequest *r, const char *key, int what, int max) {
    jws(j);
    if (j->p >= j->end || *j->p != '[') return fail(j->err, j->errlen, "'%s' must be an array", key);
    j->p++;
    jws(j);
    int cap = 0, n_names = 0, names_cap = 0;
    if (j->p < j->end && *j->p == ']') {
        j->p++;
        return fail(j->err, j->errlen, "'%s' is empty", key);
    }
    for (int i = 0;; i++) {
        char label[48];
        snprintf(label, sizeof label, "%s[%d]", key, i);
        if (what == 2) { /* names */
            if (n_names >= SERVE_MAX_IMAGES) return fail(j->err, j->errlen, "'names': more than %d entries", SERVE_MAX_IMAGES);
            if (n_names == names_cap) {
                names_cap = names_cap ? names_cap * 2 : 8;
                const char **nn = realloc(r->names, (size_t)names_cap * sizeof *nn);
                if (!nn) return fail(j->err, j->errlen, "out of memory");
                r->names = nn;
            }
            char *v;
            size_t n;
            if (jstr_value(j, label, 1, &v, &n)) return -1;
            r->names[n_names++] = v;
        } else {
            if (push_item(r, &cap, max, key, j->err, j->errlen)) return -1;
            ServeSource *s = &r->items[r->n - 1];
            if (what == 1) {
                if (b64_item(j, label, s)) return -1;
            } else {
                char *v;
                size_t n;
                if (jstr_value(j, label, 0, &v, &n)) return -1;
                if (n == 0) return fail(j->err, j->errlen, "%s: an empty path", label);
                s->path = v;
            }
        }
        jws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            continue;
        }
        if (j->p < j->end && *j->p == ']') {
            j->p++;
            break;
        }
        return jfail(j, "expected ',' or ']'");
    }
    if (what == 2) r->n_names = n_names;
    return 0;
}

enum { K_ID, K_IMAGES, K_IMAGE, K_VIDEO, K_NAMES, K_NAME, K_TASK, K_SCALE, K_PATH, K_FRAMES, K_QUESTION, K_DEC0, K_COUNT = K_DEC0 + 5 };
static const char *const KEYS[K_COUNT] = {"id", "images", "image", "video", "names", "name", "task", "scale", "path", "frames",
                                          "question", "max_tokens", "temperature", "top_p", "top_k", "seed"};
const char *const SERVE_DECODING_KEYS[5] = {"max_tokens", "temperature", "top_p", "top_k", "seed"};
#define ASK_KEYS (1u << K_QUESTION | 31u << K_DEC0)
/* the keys of each mode: HTTP, stdin */
static const unsigned MODE_KEYS[2] = {
    1u << K_IMAGES | 1u << K_IMAGE | 1u << K_VIDEO | 1u << K_NAMES | 1u << K_NAME | 1u << K_TASK | 1u << K_SCALE | ASK_KEYS,
    1u << K_ID | 1u << K_IMAGE | 1u << K_NAME | 1u << K_TASK | 1u << K_SCALE | 1u << K_PATH | 1u << K_FRAMES | ASK_KEYS};

static int member(Json *j, ServeRequest *r, int k) {
    char *v;
    size_t n;
    int cap = 0;
    switch (k) {
    case K_ID: {
        jws(j);
        char *s = j->p;
        if (jskip(j, 1)) return -1;
        r->id = malloc((size_t)(j->p - s) + 1);
        if (!r->id) return fail(j->err, j->errlen, "out of memory");
        memcpy(r->id, s, (size_t)(j->p - s));
        r->id[j->p - s] = 0;
        return 0;
    }
    case K_IMAGES:
    case K_VIDEO:
        r->many = k == K_IMAGES;
        r->kind = k == K_VIDEO ? SERVE_VIDEO : SERVE_IMAGES;
        return jarray(j, r, KEYS[k], 1, k == K_VIDEO ? SERVE_MAX_FRAMES : SERVE_MAX_IMAGES);
    case K_FRAMES:
        r->kind = SERVE_VIDEO;
        return jarray(j, r, KEYS[k], 0, SERVE_MAX_FRAMES);
    case K_IMAGE:
        r->kind = SERVE_IMAGES;
        if (push_item(r, &cap, 1, "image", j->err, j->errlen)) return -1;
        return b64_item(j, "image", &r->items[0]);
    case K_PATH:
        r->kind = SERVE_IMAGES;
        if (push_item(r, &cap, 1, "path", j->err, j->errlen)) return -1;
        if (jstr_value(j, "path", 0, &v, &n)) return -1;
        if (n == 0) return fail(j->err, j->errlen, "'path' is empty");
        r->items[0].path = v;
        return 0;
    case K_NAMES:
    case K_NAME:
        if (r->names) return fail(j->err, j->errlen, "'name' and 'names' together");
        if (k == K_NAMES) return jarray(j, r, "names", 2, SERVE_MAX_IMAGES);
        if (jstr_value(j, "name", 1, &v, &n)) return -1;
        r->names = malloc(sizeof *r->names);
        if (!r->names) return fail(j->err, j->errlen, "out of memory");
        r->names[0] = v;
        r->n_names = 1;
        return 0;
    case K_QUESTION:
        if (jstr_value(j, "question", 0, &v, &n)) return -1;
        r->question = v;
        return 0;
    case K_TASK:
    case K_SCALE:
        if (jstr_value(j, KEYS[k], 0, &v, &n)) return -1;
        if (k == K_TASK) r->task = v;
        else r->scale = v;
        return 0;
    default: { /* a decoding number */
        jws(j);
        char *s = j->p;
        if (j->p >= j->end || !(*j->p == '-' || (*j->p >= '0' && *j->p <= '9')))
            return fail(j->err, j->errlen, "'%s' must be a number", KEYS[k]);
        if (jskip(j, 1)) return -1;
        size_t L = (size_t)(j->p - s);
        if (L >= sizeof r->decoding[0]) return fail(j->err, j->errlen, "'%s': too long a number", KEYS[k]);
        memcpy(r->decoding[k - K_DEC0], s, L);
        r->decoding[k - K_DEC0][L] = 0;
        return 0;
    }
    }
}

int serve_parse_json(char *text, size_t len, int stdio, ServeRequest *r, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    Json j = {text, text + len, text, err, errlen};
    unsigned seen = 0;
    jws(&j);
    if (j.p >= j.end || *j.p != '{') return jfail(&j, "expected an object");
    j.p++;
    jws(&j);
    if (j.p < j.end && *j.p == '}') j.p++;
    else
        for (;;) {
            char *key;
            size_t kl;
            jws(&j);
            if (j.p >= j.end || *j.p != '"') return jfail(&j, "expected a key");
            if (jstring(&j, 1, &key, &kl)) return -1;
            jws(&j);
            if (j.p >= j.end || *j.p != ':') return jfail(&j, "expected ':'");
            j.p++;
            int k = 0;
            while (k < K_COUNT && strcmp(key, KEYS[k])) k++;
            if (k == K_COUNT || !(MODE_KEYS[stdio != 0] & (1u << k))) {
                char shown[40];
                size_t m = 0;
                for (size_t i = 0; i < kl && m + 1 < sizeof shown; i++)
                    shown[m++] = (unsigned char)key[i] >= 0x20 && key[i] != 0x7F && key[i] != '\'' ? key[i] : '?';
                shown[m] = 0;
                return fail(err, errlen, "unknown key '%s' (expected %s)", shown,
                                stdio ? "id, path, image, name, frames, task, scale, question, max_tokens, "
                                        "temperature, top_p, top_k, seed"
                                      : "images, names, image, name, video, task, scale, question, max_tokens, "
                                        "temperature, top_p, top_k, seed");
            }
            if (seen & (1u << k)) return fail(err, errlen, "'%s' given twice", KEYS[k]);
            unsigned sources = 1u << K_IMAGES | 1u << K_IMAGE | 1u << K_VIDEO | 1u << K_PATH | 1u << K_FRAMES;
            if ((sources & (1u << k)) && (seen & sources))
                return fail(err, errlen, "one request scores one of %s", stdio ? "path, image, frames" : "images, image, video");
            seen |= 1u << k;
            if (member(&j, r, k)) return -1;
            jws(&j);
            if (j.p < j.end && *j.p == ',') {
                j.p++;
                continue;
            }
            if (j.p < j.end && *j.p == '}') {
                j.p++;
                break;
            }
            return jfail(&j, "expected ',' or '}'");
        }
    jws(&j);
    if (j.p != j.end) return jfail(&j, "text after the object");
    if (!r->n)
        return fail(err, errlen, "nothing to score: give %s", stdio ? "\"path\", \"image\" or \"frames\"" : "\"images\", \"image\" or \"video\"");
    if ((seen & (1u << K_NAMES)) && !(seen & (1u << K_IMAGES))) return fail(err, errlen, "'names' goes with 'images'");
    if ((seen & (1u << K_NAME)) && !(seen & (1u << K_IMAGE | 1u << K_VIDEO)))
        return fail(err, errlen, "'name' goes with %s", stdio ? "'image'" : "'image' or 'video'");
    if ((seen & (31u << K_DEC0)) && !r->question) return fail(err, errlen, "the decoding options go with 'question'");
    if (r->names && r->n_names != (r->kind == SERVE_VIDEO ? 1 : r->n)) /* a video has one name */
        return fail(err, errlen, "%d names for %d images", r->n_names, r->n);
    return 0;
}

void serve_request_free(ServeRequest *r) {
    free(r->items);
    free(r->names);
    free(r->id);
    memset(r, 0, sizeof *r);
}
