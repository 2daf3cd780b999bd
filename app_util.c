/* app_util.c - the small helpers the batch side shares (app_util.h): files read and written
 * whole, a child's pipe, FNV-1a hashing, a string map, UTF-8, paths and byte matching. */
/* realpath() (a --report that is a symbolic link) is XSI, outside plain POSIX 2008 */
#ifndef _XOPEN_SOURCE
#define _XOPEN_SOURCE 700
#endif
#include "app_util.h"
#include "common.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
/* ======================================================================================
 * 0. helpers */


/* what a file that is not a regular one is, for messages */
const char *file_kind(mode_t m) {
    return S_ISDIR(m) ? "a directory" : S_ISBLK(m) ? "a block device" : S_ISSOCK(m) ? "a socket" : S_ISLNK(m) ? "a symbolic link"
                                                                                                       : "not a regular file";
}


/* Read everything from fd (up to max bytes; 0 = no limit); a child's pipe (child = 1) with
 * the --ffmpeg-timeout (read_child). 0, or -1 with errno set. */
int read_fd_all(int fd, Buf *b, size_t max, int child) {
    for (;;) {
        buf_reserve(b, 65536);
        if (b->oom) { errno = ENOMEM; return -1; }
        ssize_t k = child ? read_child(fd, b->p + b->n, b->cap - b->n - 1) : read(fd, b->p + b->n, b->cap - b->n - 1);
        if (k < 0) {
            if (errno == EINTR && !child) continue;
            return -1;
        }
        if (k == 0) break;
        b->n += (size_t)k;
        b->p[b->n] = 0;
        if (max && b->n > max) { errno = EFBIG; return -1; }
    }
    if (!b->p) buf_reserve(b, 0);
    if (b->p) b->p[b->n] = 0;
    return 0;
}

/* Read a whole file. 0, 1 if it does not exist (b left empty), -1 with err. */
int read_file(const char *path, Buf *b, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return 1;
        return fail(err, errlen, "cannot open %s: %s", path, strerror(errno));
    }
    int rc = read_fd_all(fd, b, 0, 0);
    int e = errno;
    close(fd);
    if (rc != 0) return fail(err, errlen, "cannot read %s: %s", path, strerror(e));
    return 0;
}

/* Write all of buf to fd. */
int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* FNV-1a */
uint64_t hash_bytes(const void *d, size_t n, uint64_t h) {
    const unsigned char *p = d;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}


static int strmap_grow(StrMap *m);
static size_t strmap_slot(const StrMap *m, const char *k, size_t kl) {
    size_t i = (size_t)hash_bytes(k, kl, HASH_SEED) & (m->cap - 1);
    while (m->key[i] && !(m->klen[i] == kl && memcmp(m->key[i], k, kl) == 0)) i = (i + 1) & (m->cap - 1);
    return i;
}
long strmap_get(const StrMap *m, const char *k, size_t kl) {
    if (!m->cap) return -1;
    size_t i = strmap_slot(m, k, kl);
    return m->key[i] ? m->val[i] : -1;
}
int strmap_put(StrMap *m, const char *k, size_t kl, long v) {
    if ((m->n + 1) * 2 > m->cap && strmap_grow(m) != 0) return -1;
    size_t i = strmap_slot(m, k, kl);
    if (!m->key[i]) {
        m->key[i] = k;
        m->klen[i] = kl;
        m->n++;
    }
    m->val[i] = v;
    return 0;
}
static int strmap_grow(StrMap *m) {
    size_t nc = m->cap ? m->cap * 2 : 64;
    StrMap n = {calloc(nc, sizeof(char *)), calloc(nc, sizeof(size_t)), calloc(nc, sizeof(long)), nc, 0};
    if (!n.key || !n.klen || !n.val) {
        free(n.key); free(n.klen); free(n.val);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++)
        if (m->key[i]) {
            size_t j = strmap_slot(&n, m->key[i], m->klen[i]);
            n.key[j] = m->key[i];
            n.klen[j] = m->klen[i];
            n.val[j] = m->val[i];
            n.n++;
        }
    free(m->key); free(m->klen); free(m->val);
    *m = n;
    return 0;
}
void strmap_free(StrMap *m) {
    free(m->key); free(m->klen); free(m->val);
    memset(m, 0, sizeof *m);
}

/* Length (1..4) of the valid UTF-8 sequence at s (n bytes available), 0 if invalid. */
int utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int len;
    unsigned min;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; min = 0x10000; }
    else return 0;
    if ((size_t)len > n) return 0;
    unsigned cp = c & (0x7Fu >> len);
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

void utf8_put(Buf *b, unsigned cp) {
    char t[4];
    if (cp < 0x80) { buf_addc(b, (char)cp); return; }
    if (cp < 0x800) {
        t[0] = (char)(0xC0 | (cp >> 6)); t[1] = (char)(0x80 | (cp & 0x3F));
        buf_add(b, t, 2);
    } else if (cp < 0x10000) {
        t[0] = (char)(0xE0 | (cp >> 12)); t[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); t[2] = (char)(0x80 | (cp & 0x3F));
        buf_add(b, t, 3);
    } else {
        t[0] = (char)(0xF0 | (cp >> 18)); t[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        t[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); t[3] = (char)(0x80 | (cp & 0x3F));
        buf_add(b, t, 4);
    }
}

const char *path_basename(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* "a//b/./c/" -> "a/b/c"; "./x" -> "x"; "" or "." -> "."; "/" stays. ".." is kept. */
char *path_normalize(const char *in) {
    size_t n = strlen(in);
    char *out = malloc(n + 2);
    if (!out) return NULL;
    size_t o = 0;
    int abs = in[0] == '/';
    if (abs) out[o++] = '/';
    const char *p = in;
    while (*p) {
        while (*p == '/') p++;
        if (!*p) break;
        const char *q = p;
        while (*q && *q != '/') q++;
        size_t L = (size_t)(q - p);
        if (!(L == 1 && p[0] == '.')) {
            if (o > (size_t)abs) out[o++] = '/';
            memcpy(out + o, p, L);
            o += L;
        }
        p = q;
    }
    if (o == 0) out[o++] = '.';
    out[o] = 0;
    return out;
}

char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *s = malloc(a + b + 2);
    if (!s) return NULL;
    if (strcmp(dir, ".") == 0) {
        memcpy(s, name, b + 1);
        return s;
    }
    memcpy(s, dir, a);
    size_t o = a;
    if (!a || dir[a - 1] != '/') s[o++] = '/';
    memcpy(s + o, name, b + 1);
    return s;
}

/* ---- CSV parsing (RFC 4180, lenient) ---- */


static int fields_push(Fields *f, size_t off) {
    if (f->n == f->cap) {
        size_t nc = f->cap ? f->cap * 2 : 16;
        size_t *ns = realloc(f->start, nc * sizeof *ns);
        if (!ns) return -1;
        f->start = ns;
        f->cap = nc;
    }
    f->start[f->n++] = off;
    return 0;
}
const char *field(const Fields *f, size_t i) { return f->text.p + f->start[i]; }
void fields_free(Fields *f) {
    buf_free(&f->text);
    free(f->start);
    memset(f, 0, sizeof *f);
}

/* Parse one record starting at *pos. Returns 1 if a record was parsed (terminated = it
 * ended with a newline outside quotes), 0 at the end of input, -1 out of memory. */
int csv_record(const char *s, size_t len, size_t *pos, char delim, Fields *f, int *terminated) {
    size_t i = *pos;
    if (i >= len) return 0;
    f->n = 0;
    f->text.n = 0;
    *terminated = 0;
    if (fields_push(f, 0) != 0) return -1;
    int inq = 0, was_quoted = 0;
    while (i < len) {
        char c = s[i];
        if (inq) {
            if (c == '"') {
                if (i + 1 < len && s[i + 1] == '"') { buf_addc(&f->text, '"'); i += 2; continue; }
                inq = 0;
                i++;
                continue;
            }
            buf_addc(&f->text, c);
            i++;
            continue;
        }
        if (c == '"' && !was_quoted && f->text.n == f->start[f->n - 1]) { inq = was_quoted = 1; i++; continue; }
        if (c == delim) {
            buf_addc(&f->text, 0);
            if (fields_push(f, f->text.n) != 0) return -1;
            was_quoted = 0;
            i++;
            continue;
        }
        if (c == '\n' || c == '\r') {
            if (c == '\r' && i + 1 < len && s[i + 1] != '\n') { buf_addc(&f->text, c); i++; continue; }
            if (c == '\r') i++;
            if (i < len && s[i] == '\n') { i++; *terminated = 1; break; }
            continue;
        }
        buf_addc(&f->text, c);
        i++;
    }
    buf_addc(&f->text, 0);
    if (f->text.oom) return -1;
    *pos = i;
    return 1;
}

int parse_double(const char *s, double *v) {
    if (!s || !*s) return -1;
    char *e;
    errno = 0;
    double x = strtod(s, &e);
    while (*e == ' ' || *e == '\t') e++;
    if (e == s || *e) return -1;
    *v = x;
    return 0;
}
