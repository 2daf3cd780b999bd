/* app.c - batch inputs, videos via ffmpeg, result files with resume, evaluation, the HTML
 * gallery and the progress line. See app.h for the decisions and the API.
 *
 * Contents:
 *   0. small helpers: errors, growable buffers, files, hashing, UTF-8
 *   1. inputs: sniffing, directory walk, @lists, sorting, shards
 *   2. video: finding ffmpeg, spawning without a shell, ffprobe, frame selection, reading
 *   3. result rows: CSV / JSONL writing and reading, resume
 *   4. evaluation: ranks, PLCC / SRCC / KRCC (tau-b), labels, matching
 *   5. thumbnails: box downscale, baseline JPEG encoder, base64, the HTML report
 *   6. progress line
 *   7. sink
 */
/* realpath() (a --report that is a symbolic link) is XSI, outside plain POSIX 2008 */
#ifndef _XOPEN_SOURCE
#define _XOPEN_SOURCE 700
#endif
#include "app.h"
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



static char *xstrdup0(const char *s) { return s ? strdup(s) : NULL; }

/* what a file that is not a regular one is, for messages */
static const char *file_kind(mode_t m) {
    return S_ISDIR(m) ? "a directory" : S_ISBLK(m) ? "a block device" : S_ISSOCK(m) ? "a socket" : S_ISLNK(m) ? "a symbolic link"
                                                                                                       : "not a regular file";
}

static ssize_t read_child(int fd, void *buf, size_t n);

/* Read everything from fd (up to max bytes; 0 = no limit); a child's pipe (child = 1) with
 * the --ffmpeg-timeout (read_child). 0, or -1 with errno set. */
static int read_fd_all(int fd, Buf *b, size_t max, int child) {
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
static int read_file(const char *path, Buf *b, char *err, size_t errlen) {
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
static int write_all(int fd, const void *buf, size_t n) {
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
static uint64_t hash_bytes(const void *d, size_t n, uint64_t h) {
    const unsigned char *p = d;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}
#define HASH_SEED 14695981039346656037ull

/* A string -> long map (open addressing, keys are (pointer, length) owned by the caller
 * and must stay valid; values >= 0). */
typedef struct {
    const char **key;
    size_t *klen;
    long *val;
    size_t cap, n;
} StrMap;

static int strmap_grow(StrMap *m);
static size_t strmap_slot(const StrMap *m, const char *k, size_t kl) {
    size_t i = (size_t)hash_bytes(k, kl, HASH_SEED) & (m->cap - 1);
    while (m->key[i] && !(m->klen[i] == kl && memcmp(m->key[i], k, kl) == 0)) i = (i + 1) & (m->cap - 1);
    return i;
}
static long strmap_get(const StrMap *m, const char *k, size_t kl) {
    if (!m->cap) return -1;
    size_t i = strmap_slot(m, k, kl);
    return m->key[i] ? m->val[i] : -1;
}
static int strmap_put(StrMap *m, const char *k, size_t kl, long v) {
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
static void strmap_free(StrMap *m) {
    free(m->key); free(m->klen); free(m->val);
    memset(m, 0, sizeof *m);
}

/* Length (1..4) of the valid UTF-8 sequence at s (n bytes available), 0 if invalid. */
static int utf8_len(const unsigned char *s, size_t n) {
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

static void utf8_put(Buf *b, unsigned cp) {
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

static const char *path_basename(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* "a//b/./c/" -> "a/b/c"; "./x" -> "x"; "" or "." -> "."; "/" stays. ".." is kept. */
static char *path_normalize(const char *in) {
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

static char *path_join(const char *dir, const char *name) {
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

/* ======================================================================================
 * 1. inputs */

/* Extensions that make an unreadable/unknown file in a directory an error item rather than
 * a silently skipped one (case-insensitive). */
static const char *const MEDIA_EXTENSIONS[] = {
    "jpg", "jpeg", "jpe", "jfif", "png", "apng", "bmp", "dib", "ppm", "pgm", "pbm", "pnm", "gif", "webp", "tif",
    "tiff", "heic", "heif", "avif", "jxl", "jp2", "j2k", "mp4", "m4v", "mov", "qt", "mkv", "webm", "avi", "ts",
    "mts", "m2ts", "flv", "mpg", "mpeg", "m2v", "vob", "wmv", "asf", "ogv", "3gp", "3g2", "y4m", NULL};

static int has_media_extension(const char *path) {
    const char *base = path_basename(path);
    const char *dot = strrchr(base, '.');
    if (!dot || dot == base) return 0;
    for (int i = 0; MEDIA_EXTENSIONS[i]; i++) {
        const char *e = MEDIA_EXTENSIONS[i];
        size_t k = 0;
        while (e[k] && dot[1 + k] && tolower((unsigned char)dot[1 + k]) == e[k]) k++;
        if (!e[k] && !dot[1 + k]) return 1;
    }
    return 0;
}

static int memmem_small(const uint8_t *b, size_t n, const char *s, size_t len) {
    for (size_t i = 0; i + len <= n; i++)
        if (memcmp(b + i, s, len) == 0) return 1;
    return 0;
}

static int bytes_at(const uint8_t *b, size_t n, size_t off, const char *s, size_t len) {
    return n >= off + len && memcmp(b + off, s, len) == 0;
}

ItemKind sniff_bytes(const uint8_t *b, size_t n, const char **format, char *why, size_t whylen) {
    *format = NULL;
    if (why && whylen) why[0] = 0;
    if (n == 0) { fail(why, whylen, "empty file"); return ITEM_ERROR; }
    switch (image_sniff(b, n)) {
    case IMG_PNG: *format = "png"; return ITEM_IMAGE;
    case IMG_JPEG: *format = "jpeg"; return ITEM_IMAGE;
    case IMG_BMP: *format = "bmp"; return ITEM_IMAGE;
    case IMG_PNM: *format = "pnm"; return ITEM_IMAGE;
    default: break;
    }
    /* image formats Pillow opens but qalign does not decode */
    const char *unsup = NULL;
    if (bytes_at(b, n, 0, "GIF87a", 6) || bytes_at(b, n, 0, "GIF89a", 6)) unsup = "gif";
    else if (bytes_at(b, n, 0, "RIFF", 4) && bytes_at(b, n, 8, "WEBP", 4)) unsup = "webp";
    else if (bytes_at(b, n, 0, "II*\0", 4) || bytes_at(b, n, 0, "MM\0*", 4)) unsup = "tiff";
    else if (bytes_at(b, n, 0, "\0\0\0\x0CjP  \r\n\x87\n", 12) || bytes_at(b, n, 0, "\xFF\x4F\xFF\x51", 4)) unsup = "jpeg2000";
    else if (bytes_at(b, n, 0, "\xFF\x0A", 2) || bytes_at(b, n, 0, "\0\0\0\x0CJXL \r\n\x87\n", 12)) unsup = "jpegxl";
    else if (bytes_at(b, n, 4, "ftyp", 4) && n >= 12) {
        static const char *const heif[] = {"heic", "heix", "hevc", "hevx", "heim", "heis", "hevm", "hevs",
                                           "mif1", "mif2", "msf1", "avif", "avis", NULL};
        for (int i = 0; heif[i]; i++)
            if (memcmp(b + 8, heif[i], 4) == 0) unsup = "heif";
    }
    if (unsup) {
        *format = unsup;
        fail(why, whylen, "%s image: not supported (qalign decodes PNG, JPEG, BMP and PNM; convert it, e.g. "
                          "with ffmpeg -i FILE -frames:v 1 FILE.png)",
             strcmp(unsup, "heif") == 0 ? "HEIF/AVIF" : strcmp(unsup, "jpeg2000") == 0 ? "JPEG 2000"
             : strcmp(unsup, "jpegxl") == 0 ? "JPEG XL" : strcmp(unsup, "gif") == 0 ? "GIF"
             : strcmp(unsup, "webp") == 0 ? "WebP" : "TIFF");
        return ITEM_ERROR;
    }
    /* audio-only relatives of video containers: not media for qalign */
    if ((bytes_at(b, n, 4, "ftyp", 4) && (bytes_at(b, n, 8, "M4A ", 4) || bytes_at(b, n, 8, "M4B ", 4) ||
                                          bytes_at(b, n, 8, "M4P ", 4))) ||
        (bytes_at(b, n, 0, "RIFF", 4) && bytes_at(b, n, 8, "WAVE", 4)) ||
        (bytes_at(b, n, 0, "OggS", 4) && !memmem_small(b, n, "theora", 6) && !memmem_small(b, n, "fishead", 7))) {
        fail(why, whylen, "an audio file, not an image or video");
        return ITEM_ERROR;
    }
    /* video containers */
    if (bytes_at(b, n, 4, "ftyp", 4)) {
        *format = bytes_at(b, n, 8, "qt  ", 4) ? "mov" : "mp4";
        return ITEM_VIDEO;
    }
    static const char *const qt_atoms[] = {"moov", "mdat", "wide", "free", "skip", "pnot", NULL};
    for (int i = 0; qt_atoms[i]; i++)
        if (bytes_at(b, n, 4, qt_atoms[i], 4)) { *format = "mov"; return ITEM_VIDEO; }
    if (bytes_at(b, n, 0, "\x1A\x45\xDF\xA3", 4)) {
        *format = "mkv";
        for (size_t i = 4; i + 4 <= n && i < 64; i++)
            if (memcmp(b + i, "webm", 4) == 0) *format = "webm";
        return ITEM_VIDEO;
    }
    if (bytes_at(b, n, 0, "RIFF", 4) && bytes_at(b, n, 8, "AVI ", 4)) { *format = "avi"; return ITEM_VIDEO; }
    if (n > 188 && b[0] == 0x47 && b[188] == 0x47 && (n <= 376 || b[376] == 0x47)) { *format = "mpegts"; return ITEM_VIDEO; }
    if (n > 196 && b[4] == 0x47 && b[196] == 0x47 && (n <= 388 || b[388] == 0x47)) { *format = "m2ts"; return ITEM_VIDEO; }
    if (bytes_at(b, n, 0, "FLV\x01", 4)) { *format = "flv"; return ITEM_VIDEO; }
    if (bytes_at(b, n, 0, "\0\0\x01\xBA", 4) || bytes_at(b, n, 0, "\0\0\x01\xB3", 4)) { *format = "mpeg"; return ITEM_VIDEO; }
    if (bytes_at(b, n, 0, "\x30\x26\xB2\x75\x8E\x66\xCF\x11", 8)) { *format = "asf"; return ITEM_VIDEO; }
    if (bytes_at(b, n, 0, "OggS", 4)) { *format = "ogg"; return ITEM_VIDEO; }
    if (bytes_at(b, n, 0, "YUV4MPEG2", 9)) { *format = "y4m"; return ITEM_VIDEO; }
    fail(why, whylen, "not an image or video qalign can read (unknown format)");
    return ITEM_ERROR;
}

ItemKind sniff_path(const char *path, const char **format, char *why, size_t whylen) {
    struct stat st;
    *format = NULL;
    if (stat(path, &st) != 0) { fail(why, whylen, "%s", strerror(errno)); return ITEM_ERROR; }
    if (S_ISDIR(st.st_mode)) { fail(why, whylen, "is a directory"); return ITEM_ERROR; }
    if (!S_ISREG(st.st_mode)) { fail(why, whylen, "not a regular file"); return ITEM_ERROR; }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { fail(why, whylen, "cannot open: %s", strerror(errno)); return ITEM_ERROR; }
    uint8_t head[1024];
    size_t n = 0;
    while (n < sizeof head) {
        ssize_t k = read(fd, head + n, sizeof head - n);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            int e = errno;
            close(fd);
            fail(why, whylen, "cannot read: %s", strerror(e));
            return ITEM_ERROR;
        }
        if (k == 0) break;
        n += (size_t)k;
    }
    close(fd);
    return sniff_bytes(head, n, format, why, whylen);
}

static int add_item(ItemList *l, const char *path, ItemKind kind, const char *format, const char *error) {
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        Item *ni = realloc(l->items, nc * sizeof *ni);
        if (!ni) return -1;
        l->items = ni;
        l->cap = nc;
    }
    Item *it = &l->items[l->n];
    it->path = strdup(path);
    it->kind = kind;
    it->format = format;
    it->error = kind == ITEM_ERROR ? strdup(error && *error ? error : "cannot be scored") : NULL;
    if (!it->path || (kind == ITEM_ERROR && !it->error)) {
        free(it->path);
        free(it->error);
        return -1;
    }
    l->n++;
    return 0;
}

typedef struct Anc {
    dev_t dev;
    ino_t ino;
    const struct Anc *up;
} Anc;

static int walk_dir(ItemList *l, const char *dir, const struct stat *dst, const Anc *up, const ExpandOptions *opt);

/* A file found in a directory walk. */
static int walk_entry(ItemList *l, const char *path, const Anc *anc, const ExpandOptions *opt) {
    struct stat st;
    if (stat(path, &st) != 0) {
        if (has_media_extension(path)) return add_item(l, path, ITEM_ERROR, NULL, strerror(errno));
        l->n_skipped++;
        return 0;
    }
    if (S_ISDIR(st.st_mode)) {
        for (const Anc *a = anc; a; a = a->up)
            if (a->dev == st.st_dev && a->ino == st.st_ino) { /* a link back up: loop */
                l->n_skipped++;
                return 0;
            }
        return walk_dir(l, path, &st, anc, opt);
    }
    if (!S_ISREG(st.st_mode)) { l->n_skipped++; return 0; }
    const char *fmt;
    char why[256];
    ItemKind k = sniff_path(path, &fmt, why, sizeof why);
    if (k == ITEM_ERROR && !fmt && !has_media_extension(path)) { l->n_skipped++; return 0; }
    return add_item(l, path, k, fmt, why);
}

static int walk_dir(ItemList *l, const char *dir, const struct stat *dst, const Anc *up, const ExpandOptions *opt) {
    Anc me = {dst->st_dev, dst->st_ino, up};
    DIR *d = opendir(dir);
    if (!d) {
        char why[256];
        snprintf(why, sizeof why, "cannot read directory: %s", strerror(errno));
        return add_item(l, dir, ITEM_ERROR, NULL, why);
    }
    char **names = NULL;
    size_t nn = 0, cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        const char *nm = e->d_name;
        if (!strcmp(nm, ".") || !strcmp(nm, "..")) continue;
        if (nm[0] == '.' && !opt->include_hidden) { l->n_skipped++; continue; }
        if (nn == cap) {
            size_t nc = cap ? cap * 2 : 32;
            char **q = realloc(names, nc * sizeof *q);
            if (!q) { rc = -1; break; }
            names = q;
            cap = nc;
        }
        if (!(names[nn] = strdup(nm))) { rc = -1; break; }
        nn++;
    }
    closedir(d);
    for (size_t i = 0; i < nn; i++) {
        if (rc == 0) {
            char *p = path_join(dir, names[i]);
            if (!p) rc = -1;
            else {
                rc = walk_entry(l, p, &me, opt);
                free(p);
            }
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

/* A path named explicitly (argument or list line). */
static int add_explicit(ItemList *l, const char *raw, const ExpandOptions *opt) {
    char *path = path_normalize(raw);
    if (!path) return -1;
    struct stat st;
    int rc;
    if (stat(path, &st) != 0) rc = add_item(l, path, ITEM_ERROR, NULL, strerror(errno));
    else if (S_ISDIR(st.st_mode)) rc = walk_dir(l, path, &st, NULL, opt);
    else {
        const char *fmt;
        char why[256];
        ItemKind k = sniff_path(path, &fmt, why, sizeof why);
        rc = add_item(l, path, k, fmt, why);
    }
    free(path);
    return rc;
}

static int add_list(ItemList *l, const char *arg, const ExpandOptions *opt, char *err, size_t errlen) {
    Buf b = {0};
    const char *name = arg + 1;
    if (strcmp(name, "-") == 0) {
        if (read_fd_all(0, &b, 0, 0) != 0) {
            int e = errno;
            buf_free(&b);
            return fail(err, errlen, "cannot read the list from stdin: %s", strerror(e));
        }
    } else {
        int rc = read_file(name, &b, err, errlen);
        if (rc == 1) {
            buf_free(&b);
            return fail(err, errlen, "list file %s: %s", name, strerror(ENOENT));
        }
        if (rc != 0) { buf_free(&b); return -1; }
    }
    char *p = b.p ? b.p : "";
    char *end = p + b.n;
    int rc = 0;
    size_t lineno = 0;
    while (p < end && rc == 0) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        char *s = p, *t = le;
        lineno++;
        while (s < t && (*s == ' ' || *s == '\t' || *s == '\r')) s++;
        while (t > s && (t[-1] == ' ' || t[-1] == '\t' || t[-1] == '\r')) t--;
        if (t > s && *s == '#') { /* a comment; say so if it is also the name of a file */
            l->n_comments++;
            char save = *t;
            *t = 0;
            struct stat st;
            if (!l->warning && memchr(s, 0, (size_t)(t - s)) == NULL && stat(s, &st) == 0) {
                Buf w = {0};
                buf_printf(&w, "%s line %zu: '%s' is skipped as a comment, but a file of that name exists (write ./%s "
                               "to score it)", arg, lineno, s, s);
                l->warning = w.oom ? NULL : w.p;
                if (w.oom) buf_free(&w);
            }
            *t = save;
        } else if (t > s) {
            char save = *t;
            *t = 0;
            if (memchr(s, 0, (size_t)(t - s)) == NULL) rc = add_explicit(l, s, opt);
            *t = save;
            if (rc != 0) fail(err, errlen, "out of memory");
        }
        p = nl ? nl + 1 : end;
    }
    buf_free(&b);
    return rc;
}

static int natcmp(const char *a, const char *b) {
    while (*a && *b) {
        if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
            const char *a0 = a, *b0 = b;
            while (*a == '0') a++;
            while (*b == '0') b++;
            const char *ae = a, *be = b;
            while (isdigit((unsigned char)*ae)) ae++;
            while (isdigit((unsigned char)*be)) be++;
            size_t la = (size_t)(ae - a), lb = (size_t)(be - b);
            if (la != lb) return la < lb ? -1 : 1;
            int c = memcmp(a, b, la);
            if (c) return c < 0 ? -1 : 1;
            size_t za = (size_t)(a - a0), zb = (size_t)(b - b0);
            if (za != zb) return za < zb ? -1 : 1;
            a = ae;
            b = be;
        } else {
            if (*a != *b) return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
            a++;
            b++;
        }
    }
    if (*a == *b) return 0;
    return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
}
static int cmp_item_byte(const void *x, const void *y) {
    return strcmp(((const Item *)x)->path, ((const Item *)y)->path);
}
static int cmp_item_nat(const void *x, const void *y) {
    return natcmp(((const Item *)x)->path, ((const Item *)y)->path);
}

int inputs_expand(const char *const *args, size_t nargs, const ExpandOptions *opt, ItemList *out, char *err,
                  size_t errlen) {
    ExpandOptions dflt = {0};
    if (!opt) opt = &dflt;
    for (size_t i = 0; i < nargs; i++) {
        const char *a = args[i];
        int rc;
        if (a[0] == '@' && a[1]) rc = add_list(out, a, opt, err, errlen);
        else if (!a[0]) rc = add_item(out, a, ITEM_ERROR, NULL, "empty path");
        else {
            rc = add_explicit(out, a, opt);
            if (rc != 0) fail(err, errlen, "out of memory");
        }
        if (rc != 0) return -1;
    }
    if (out->n > 1) qsort(out->items, out->n, sizeof(Item), opt->natural_sort ? cmp_item_nat : cmp_item_byte);
    size_t w = 0;
    for (size_t r = 0; r < out->n; r++) {
        if (w > 0 && strcmp(out->items[w - 1].path, out->items[r].path) == 0) {
            free(out->items[r].path);
            free(out->items[r].error);
            continue;
        }
        out->items[w++] = out->items[r];
    }
    out->n = w;
    return 0;
}

void itemlist_free(ItemList *l) {
    free(l->warning);
    l->warning = NULL;
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].path);
        free(l->items[i].error);
    }
    free(l->items);
    memset(l, 0, sizeof *l);
}

int shard_parse(const char *s, int *index, int *count, char *err, size_t errlen) {
    char *e1, *e2;
    errno = 0;
    long i = strtol(s, &e1, 10);
    if (e1 == s || *e1 != '/' || errno) goto bad;
    long n = strtol(e1 + 1, &e2, 10);
    if (e2 == e1 + 1 || *e2 || errno) goto bad;
    if (n < 1 || n > 1000000) return fail(err, errlen, "--shard %s: N must be in 1..1000000", s);
    if (i < 1 || i > n)
        return fail(err, errlen, "--shard %s: shards are numbered 1..N (e.g. 1/%ld ... %ld/%ld)", s, n, n, n);
    *index = (int)i;
    *count = (int)n;
    return 0;
bad:
    return fail(err, errlen, "--shard expects I/N (e.g. 2/8), got '%s'", s);
}

void items_shard(ItemList *l, int index, int count) {
    if (count <= 1) return;
    size_t w = 0;
    for (size_t k = 0; k < l->n; k++) {
        if ((int)(k % (size_t)count) == index - 1) l->items[w++] = l->items[k];
        else {
            free(l->items[k].path);
            free(l->items[k].error);
        }
    }
    l->n = w;
}

/* ======================================================================================
 * 2. video */

static const char *prog_ffmpeg(void) {
    const char *s = getenv("QALIGN_FFMPEG");
    return s && *s ? s : "ffmpeg";
}
static const char *prog_ffprobe(void) {
    const char *s = getenv("QALIGN_FFPROBE");
    return s && *s ? s : "ffprobe";
}

/* Is `name` an executable file, directly (if it has a '/') or in a PATH directory? */
static int find_program(const char *name) {
    struct stat st;
    if (strchr(name, '/')) return access(name, X_OK) == 0 && stat(name, &st) == 0 && S_ISREG(st.st_mode);
    const char *path = getenv("PATH");
    if (!path) path = "/bin:/usr/bin";
    const char *p = path;
    for (;;) {
        const char *c = strchr(p, ':');
        size_t L = c ? (size_t)(c - p) : strlen(p);
        char *full = malloc(L + strlen(name) + 3);
        if (!full) return 0;
        if (L == 0) strcpy(full, ".");
        else {
            memcpy(full, p, L);
            full[L] = 0;
        }
        strcat(full, "/");
        strcat(full, name);
        int ok = access(full, X_OK) == 0 && stat(full, &st) == 0 && S_ISREG(st.st_mode);
        free(full);
        if (ok) return 1;
        if (!c) break;
        p = c + 1;
    }
    return 0;
}

int video_available(char *why, size_t whylen) {
    const char *a = prog_ffmpeg(), *b = prog_ffprobe();
    int fa = find_program(a), fb = find_program(b);
    if (fa && fb) return 1;
    fail(why, whylen, "%s%s%s not found%s", fa ? "" : a, (!fa && !fb) ? " and " : "", fb ? "" : b,
         getenv("QALIGN_FFMPEG") || getenv("QALIGN_FFPROBE") ? "" : " on PATH");
    return 0;
}

const char *video_unavailable_hint(void) {
    return "videos need ffmpeg and ffprobe on PATH (e.g. apt install ffmpeg; or set QALIGN_FFMPEG and "
           "QALIGN_FFPROBE); without them, extract one frame per second yourself and score them as one "
           "video with --video FRAME... or --frames DIR";
}

/* --ffmpeg-timeout: how long ffmpeg/ffprobe may stay silent (or take to exit) */
static double g_video_timeout = VIDEO_DEFAULT_TIMEOUT;
void video_set_timeout(double seconds) { g_video_timeout = seconds; }

/* Wait until fd has data (or EOF); 0, or -1 with errno (ETIMEDOUT after the timeout). */
static int wait_readable(int fd) {
    if (!(g_video_timeout > 0)) return 0;
    double ms = g_video_timeout * 1000;
    struct pollfd p = {fd, POLLIN, 0};
    for (;;) {
        int k = poll(&p, 1, ms > INT_MAX ? INT_MAX : (int)ms);
        if (k > 0) return 0;
        if (k == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (errno != EINTR) return -1;
    }
}

/* read() from a child's pipe, giving up after the timeout (errno ETIMEDOUT). */
static ssize_t read_child(int fd, void *buf, size_t n) {
    if (wait_readable(fd) != 0) return -1;
    ssize_t k;
    do k = read(fd, buf, n);
    while (k < 0 && errno == EINTR);
    return k;
}

/* waitpid with a limit (seconds <= 0: none); 0, or -1 when the child is still running. */
static int wait_child(pid_t pid, int *status, double seconds) {
    double end = now_seconds() + seconds;
    for (;;) {
        pid_t k = waitpid(pid, status, seconds > 0 ? WNOHANG : 0);
        if (k == pid) return 0;
        if (k < 0 && errno != EINTR) return 0; /* already reaped (cannot happen): nothing to wait for */
        if (k == 0) {
            if (now_seconds() >= end) return -1;
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
}

/* A child process: stdout on a pipe, stderr into an unlinked temporary file. */
typedef struct {
    pid_t pid;
    int out;
    FILE *errf;
} Child;

static int child_spawn(const char *const *argv, Child *c, char *err, size_t errlen) {
    int p[2];
    c->pid = -1;
    c->out = -1;
    c->errf = NULL;
    if (pipe(p) != 0) return fail(err, errlen, "pipe: %s", strerror(errno));
    fcntl(p[0], F_SETFD, FD_CLOEXEC);
    fcntl(p[1], F_SETFD, FD_CLOEXEC);
    c->errf = tmpfile(); /* NULL (no writable temp dir): the child's stderr goes to /dev/null */
    if (c->errf) fcntl(fileno(c->errf), F_SETFD, FD_CLOEXEC);
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    if (c->errf) posix_spawn_file_actions_adddup2(&fa, fileno(c->errf), 2);
    else posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    posix_spawnattr_init(&at);
    sigset_t def;
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    sigaddset(&def, SIGTERM);
    posix_spawnattr_setsigdefault(&at, &def);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    int rc = posix_spawnp(&c->pid, argv[0], &fa, &at, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(p[1]);
    if (rc != 0) {
        close(p[0]);
        if (c->errf) fclose(c->errf);
        c->errf = NULL;
        c->pid = -1;
        return fail(err, errlen, "cannot run %s: %s", argv[0], strerror(rc));
    }
    c->out = p[0];
    return 0;
}

/* Close stdout, optionally terminate, reap. Returns the exit status (128+signal if killed),
 * and the last non-empty stderr line in msg (with any "file:PATH: " prefix removed). */
static int child_finish(Child *c, int terminate, const char *path, char *msg, size_t msglen) {
    if (c->out >= 0) {
        close(c->out);
        c->out = -1;
    }
    int status = 0, code = -1, hung = 0;
    if (c->pid > 0) {
        if (terminate) kill(c->pid, SIGTERM);
        /* a child that does not exit (after SIGTERM: in 5 s; else within the timeout) is killed */
        if (wait_child(c->pid, &status, terminate ? 5 : g_video_timeout) != 0) {
            hung = !terminate;
            kill(c->pid, SIGKILL);
            wait_child(c->pid, &status, 0);
        }
        code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
        c->pid = -1;
    }
    if (msg && msglen) msg[0] = 0;
    if (c->errf) {
        if (msg && msglen) {
            Buf b = {0};
            fflush(c->errf);
            rewind(c->errf);
            char chunk[4096];
            size_t k;
            while ((k = fread(chunk, 1, sizeof chunk, c->errf)) > 0 && b.n < (1u << 20)) buf_add(&b, chunk, k);
            if (b.p) {
                char *last = NULL;
                for (char *s = strtok(b.p, "\r\n"); s; s = strtok(NULL, "\r\n"))
                    if (*s) last = s;
                if (last) {
                    char pre[4096];
                    snprintf(pre, sizeof pre, "file:%s: ", path ? path : "");
                    if (path && strncmp(last, pre, strlen(pre)) == 0) last += strlen(pre);
                    snprintf(msg, msglen, "%s", last);
                }
            }
            buf_free(&b);
        }
        fclose(c->errf);
        c->errf = NULL;
    }
    if (hung && msg && msglen)
        snprintf(msg, msglen, "it did not exit %g s after its output ended: killed (--ffmpeg-timeout)", g_video_timeout);
    return code;
}

/* "file:" + path: ffmpeg then never reads the name as an option or another protocol. */
static char *ff_input(const char *path) {
    char *s = malloc(strlen(path) + 6);
    if (s) {
        strcpy(s, "file:");
        strcat(s, path);
    }
    return s;
}

/* -fps_mode exists from ffmpeg 5.1; -vsync 0 before (and still accepted after). */
static int ffmpeg_has_fps_mode(void) {
    static int cached = -1;
    if (cached >= 0) return cached;
    cached = 0;
    const char *argv[] = {prog_ffmpeg(), "-hide_banner", "-version", NULL};
    Child c;
    if (child_spawn(argv, &c, NULL, 0) != 0) return cached;
    Buf b = {0};
    int rrc = read_fd_all(c.out, &b, 1 << 16, 1);
    child_finish(&c, rrc != 0, NULL, NULL, 0);
    const char *v = b.p ? strstr(b.p, "version ") : NULL;
    if (v) {
        v += 8;
        if (*v == 'n' && isdigit((unsigned char)v[1])) v++;
        if (isdigit((unsigned char)*v)) {
            char *e;
            long major = strtol(v, &e, 10), minor = *e == '.' ? strtol(e + 1, NULL, 10) : 0;
            cached = major > 5 || (major == 5 && minor >= 1);
        } else if (*v == 'N') cached = 1; /* a git snapshot: recent */
    }
    buf_free(&b);
    return cached;
}

static int parse_i64(const char *s, int64_t *v) {
    if (!s || !*s) return -1;
    char *e;
    errno = 0;
    long long x = strtoll(s, &e, 10);
    if (errno || *e) return -1;
    *v = x;
    return 0;
}

/* Look up key in a compact line "k=v|k=v|...", copying the value into val. */
static int kv_get(const char *line, const char *key, char *val, size_t vlen) {
    size_t kl = strlen(key);
    const char *p = line;
    while (p && *p) {
        const char *bar = strchr(p, '|');
        size_t L = bar ? (size_t)(bar - p) : strlen(p);
        if (L > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
            size_t vl = L - kl - 1;
            if (vl >= vlen) vl = vlen - 1;
            memcpy(val, p + kl + 1, vl);
            val[vl] = 0;
            return 0;
        }
        p = bar ? bar + 1 : NULL;
    }
    return -1;
}

int video_probe(const char *path, VideoInfo *vi, char *err, size_t errlen) {
    memset(vi, 0, sizeof *vi);
    vi->nb_frames = -1;
    vi->duration = -1;
    vi->stream = -1;
    char *in = ff_input(path);
    if (!in) return fail(err, errlen, "out of memory");
    const char *argv[] = {prog_ffprobe(), "-v", "error", "-count_packets", "-select_streams", "v",
                          "-show_entries",
                          "stream=index,codec_name,width,height,avg_frame_rate,nb_frames,nb_read_packets:"
                          "stream_disposition=attached_pic:format=duration",
                          "-of", "compact=p=0", in, NULL};
    Child c;
    if (child_spawn(argv, &c, err, errlen) != 0) {
        free(in);
        return -1;
    }
    Buf b = {0};
    int rrc = read_fd_all(c.out, &b, 1 << 20, 1), timed_out = rrc != 0 && errno == ETIMEDOUT;
    char msg[512];
    int code = child_finish(&c, rrc != 0, path, msg, sizeof msg);
    free(in);
    if (timed_out) {
        buf_free(&b);
        return fail(err, errlen, "ffprobe gave no answer in %g s: stopped it (--ffmpeg-timeout)", g_video_timeout);
    }
    if (code != 0 || rrc != 0) {
        buf_free(&b);
        return fail(err, errlen, "ffprobe failed: %s", msg[0] ? msg : "no output");
    }
    int found = 0;
    int64_t dur_us = -1;
    for (char *line = strtok(b.p ? b.p : "", "\r\n"); line; line = strtok(NULL, "\r\n")) {
        char v[128];
        if (kv_get(line, "index", v, sizeof v) != 0) { /* the format line */
            if (kv_get(line, "duration", v, sizeof v) == 0) {
                char *e;
                double d = strtod(v, &e);
                if (e != v && isfinite(d) && d >= 0) {
                    vi->duration = d;
                    dur_us = (int64_t)llround(d * 1e6);
                }
            }
            continue;
        }
        if (found) continue;
        if (kv_get(line, "disposition:attached_pic", v, sizeof v) == 0 && strcmp(v, "1") == 0) continue;
        int64_t x;
        vi->stream = kv_get(line, "index", v, sizeof v) == 0 && parse_i64(v, &x) == 0 ? (int)x : -1;
        if (vi->stream < 0) continue;
        found = 1;
        if (kv_get(line, "codec_name", v, sizeof v) == 0) snprintf(vi->codec, sizeof vi->codec, "%.31s", v);
        if (kv_get(line, "width", v, sizeof v) == 0 && parse_i64(v, &x) == 0) vi->width = (int)x;
        if (kv_get(line, "height", v, sizeof v) == 0 && parse_i64(v, &x) == 0) vi->height = (int)x;
        if (kv_get(line, "avg_frame_rate", v, sizeof v) == 0) {
            char *slash = strchr(v, '/');
            int64_t num = 0, den = 1;
            if (slash) {
                *slash = 0;
                if (parse_i64(v, &num) != 0 || parse_i64(slash + 1, &den) != 0) num = 0, den = 0;
            } else if (parse_i64(v, &num) != 0) num = 0;
            vi->fps_num = num;
            vi->fps_den = den;
        }
        if (kv_get(line, "nb_frames", v, sizeof v) == 0 && parse_i64(v, &x) == 0) vi->nb_frames = x;
        if (kv_get(line, "nb_read_packets", v, sizeof v) == 0 && parse_i64(v, &x) == 0) vi->frame_count = x;
    }
    buf_free(&b);
    if (!found) return fail(err, errlen, "no video stream");
    if (vi->fps_num <= 0 || vi->fps_den <= 0)
        return fail(err, errlen, "the video stream has no average frame rate (avg_frame_rate=%lld/%lld)",
                    (long long)vi->fps_num, (long long)vi->fps_den);
    /* decord: get_avg_fps() = avg_frame_rate.num / (double) den */
    vi->fps = (double)vi->fps_num / (double)vi->fps_den;
    if (vi->frame_count > 0) vi->count_source = "packets";
    else if (vi->nb_frames > 0) {
        vi->frame_count = vi->nb_frames;
        vi->count_source = "nb_frames";
    } else if (dur_us > 0) {
        /* decord's fallback: (double)num / den * fmt_ctx->duration / AV_TIME_BASE, truncated */
        double cnt = (double)vi->fps_num / (double)vi->fps_den * (double)dur_us / 1000000.0;
        vi->frame_count = cnt >= 1 && cnt < 9e18 ? (int64_t)cnt : 0;
        vi->count_source = "duration";
    }
    if (vi->frame_count < 1) return fail(err, errlen, "cannot determine the number of frames");
    return 0;
}

int64_t video_frame_indices(int64_t count, double fps, int64_t *idx, int64_t cap) {
    if (count < 0 || !(fps > 0) || !isfinite(fps)) return -1;
    /* Python: range(int(len(vr) / fps)), [int(fps * i) ...] - float64, truncation */
    double q = (double)count / fps;
    if (!(q < 9e18)) return -1;
    int64_t n = (int64_t)q;
    for (int64_t i = 0; i < n && i < cap; i++) idx[i] = (int64_t)(fps * (double)i);
    return n;
}

int64_t video_subsample(const int64_t *idx, int64_t n, int64_t max, int64_t *out) {
    if (n <= 0) return 0;
    if (max <= 0 || n <= max) {
        memmove(out, idx, (size_t)n * sizeof *out);
        return n;
    }
    for (int64_t j = 0; j < max; j++) {
        /* j * n may not fit for absurd sizes: split the product */
        int64_t q = (j / max) * n + ((j % max) * n) / max;
        out[j] = idx[q];
    }
    return max;
}

int video_plan(const char *path, int64_t max_frames, VideoPlan *plan, char *err, size_t errlen) {
    memset(plan, 0, sizeof *plan);
    if (video_probe(path, &plan->info, err, errlen) != 0) return -1;
    int64_t n = video_frame_indices(plan->info.frame_count, plan->info.fps, NULL, 0);
    if (n < 0) return fail(err, errlen, "invalid frame rate %g", plan->info.fps);
    if (n > ((int64_t)1 << 32))
        return fail(err, errlen, "implausible number of frames (%lld)", (long long)n);
    plan->n_original = n;
    plan->idx = malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    plan->path = strdup(path);
    if (!plan->idx || !plan->path) {
        video_plan_free(plan);
        return fail(err, errlen, "out of memory");
    }
    video_frame_indices(plan->info.frame_count, plan->info.fps, plan->idx, n);
    for (int64_t i = 0; i < n; i++)
        if (plan->idx[i] >= plan->info.frame_count) { /* cannot happen for finite fps; be safe */
            video_plan_free(plan);
            return fail(err, errlen, "frame index %lld beyond the %lld frames", (long long)plan->idx[i],
                        (long long)plan->info.frame_count);
        }
    plan->n = video_subsample(plan->idx, n, max_frames, plan->idx);
    plan->subsampled = plan->n < n;
    return 0;
}

void video_plan_free(VideoPlan *plan) {
    free(plan->idx);
    free(plan->path);
    memset(plan, 0, sizeof *plan);
}

/* select expression: a balanced if(lt(n,K),left,right) tree over runs of up to 8 eq(n,K)
 * terms, so each frame costs O(log n) comparisons and the text stays short. */
static void select_expr(Buf *b, const int64_t *u, size_t lo, size_t hi) {
    if (hi - lo <= 8) {
        for (size_t i = lo; i < hi; i++) buf_printf(b, "%seq(n,%lld)", i > lo ? "+" : "", (long long)u[i]);
        return;
    }
    size_t mid = lo + (hi - lo) / 2;
    buf_printf(b, "if(lt(n,%lld),", (long long)u[mid]);
    select_expr(b, u, lo, mid);
    buf_addc(b, ',');
    select_expr(b, u, mid, hi);
    buf_addc(b, ')');
}

#define SELECT_MAX_CHARS 100000 /* below Linux's 128 KiB limit for one argument */

char *video_select_filter(const int64_t *idx, int64_t n) {
    Buf b = {0};
    int64_t *u = malloc((size_t)(n > 0 ? n : 1) * sizeof *u);
    size_t m = 0;
    if (!u) return NULL;
    for (int64_t i = 0; i < n; i++)
        if (m == 0 || idx[i] != u[m - 1]) u[m++] = idx[i];
    buf_adds(&b, "select='");
    if (m) select_expr(&b, u, 0, m);
    else buf_adds(&b, "0");
    buf_adds(&b, "'");
    free(u);
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    return b.p;
}

/* Buffered reads from a pipe. */
typedef struct {
    int fd;
    uint8_t buf[1 << 16];
    size_t pos, len;
    int eof, error;
} Reader;

static int rd_getc(Reader *r) {
    if (r->pos == r->len) {
        if (r->eof) return -1;
        ssize_t k = read_child(r->fd, r->buf, sizeof r->buf);
        if (k <= 0) {
            r->eof = 1;
            if (k < 0) r->error = errno;
            return -1;
        }
        r->pos = 0;
        r->len = (size_t)k;
    }
    return r->buf[r->pos++];
}

static size_t rd_read(Reader *r, uint8_t *dst, size_t n) {
    size_t got = 0;
    size_t avail = r->len - r->pos;
    if (avail) {
        size_t t = avail < n ? avail : n;
        memcpy(dst, r->buf + r->pos, t);
        r->pos += t;
        got = t;
    }
    while (got < n && !r->eof) {
        ssize_t k = read_child(r->fd, dst + got, n - got);
        if (k <= 0) {
            r->eof = 1;
            if (k < 0) r->error = errno;
            break;
        }
        got += (size_t)k;
    }
    return got;
}

/* PPM (P6, maxval 255) header as ffmpeg writes it. 0 ok, 1 clean end of stream, -1 bad. */
static int rd_ppm_header(Reader *r, int *w, int *h) {
    int c = rd_getc(r);
    if (c < 0) return 1;
    if (c != 'P' || rd_getc(r) != '6') return -1;
    long v[3];
    for (int i = 0; i < 3; i++) {
        c = rd_getc(r);
        for (;;) {
            if (c == '#') {
                while (c >= 0 && c != '\n') c = rd_getc(r);
            } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') c = rd_getc(r);
            else break;
        }
        if (c < '0' || c > '9') return -1;
        long x = 0;
        while (c >= '0' && c <= '9') {
            x = x * 10 + (c - '0');
            if (x > (1L << 30)) return -1;
            c = rd_getc(r);
        }
        v[i] = x;
        if (i == 2 && !(c == ' ' || c == '\t' || c == '\n' || c == '\r')) return -1;
    }
    if (v[0] < 1 || v[1] < 1 || v[0] > IMAGE_MAX_DIM || v[1] > IMAGE_MAX_DIM || v[2] != 255) return -1;
    if ((uint64_t)v[0] * (uint64_t)v[1] > (uint64_t)IMAGE_MAX_PIXELS) return -1;
    *w = (int)v[0];
    *h = (int)v[1];
    return 0;
}

int video_read_frames(const char *path, const VideoInfo *vi, const int64_t *idx, int64_t n, VideoReadMode mode,
                      VideoFrameFn fn, void *user, char *err, size_t errlen) {
    if (n <= 0) return 0;
    if (idx[0] < 0) return fail(err, errlen, "negative frame index");
    for (int64_t i = 1; i < n; i++)
        if (idx[i] < idx[i - 1]) return fail(err, errlen, "frame indices must be non-decreasing");
    /* unique indices */
    int64_t *u = malloc((size_t)n * sizeof *u);
    if (!u) return fail(err, errlen, "out of memory");
    size_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (m == 0 || idx[i] != u[m - 1]) u[m++] = idx[i];
    Buf vf = {0};
    if (mode != VIDEO_READ_ALL) {
        char *f = video_select_filter(u, (int64_t)m);
        if (!f) {
            free(u);
            return fail(err, errlen, "out of memory");
        }
        if (mode == VIDEO_READ_AUTO && strlen(f) > SELECT_MAX_CHARS) {
            free(f);
            mode = VIDEO_READ_ALL;
        } else {
            vf.p = f;
            vf.n = vf.cap = strlen(f);
            mode = VIDEO_READ_SELECT;
        }
    }
    char *in = ff_input(path);
    char map[32];
    snprintf(map, sizeof map, "0:%d", vi ? vi->stream : 0);
    if (vi && vi->stream < 0) snprintf(map, sizeof map, "0:v:0");
    int fpsm = ffmpeg_has_fps_mode();
    const char *argv[32];
    int a = 0;
    argv[a++] = prog_ffmpeg();
    argv[a++] = "-nostdin";
    argv[a++] = "-hide_banner";
    argv[a++] = "-v";
    argv[a++] = "error";
    argv[a++] = "-i";
    argv[a++] = in;
    argv[a++] = "-map";
    argv[a++] = map;
    argv[a++] = "-an";
    argv[a++] = "-sn";
    argv[a++] = "-dn";
    if (mode == VIDEO_READ_SELECT) {
        argv[a++] = "-vf";
        argv[a++] = vf.p;
    }
    argv[a++] = fpsm ? "-fps_mode" : "-vsync";
    argv[a++] = fpsm ? "passthrough" : "0";
    argv[a++] = "-f";
    argv[a++] = "image2pipe";
    argv[a++] = "-c:v";
    argv[a++] = "ppm";
    argv[a++] = "-pix_fmt";
    argv[a++] = "rgb24";
    argv[a++] = "pipe:1";
    argv[a] = NULL;
    Child c;
    Reader *r = NULL;
    uint8_t *pix = NULL;
    size_t pixcap = 0;
    int rc = -1;
    char msg[512];
    if (!in) {
        fail(err, errlen, "out of memory");
        goto done;
    }
    if (child_spawn(argv, &c, err, errlen) != 0) goto done;
    r = malloc(sizeof *r);
    if (!r) {
        child_finish(&c, 1, NULL, NULL, 0);
        fail(err, errlen, "out of memory");
        goto done;
    }
    r->fd = c.out;
    r->pos = r->len = 0;
    r->eof = r->error = 0;
    size_t uk = 0;    /* next unique index wanted */
    int64_t k = 0;    /* next position in idx */
    int64_t decoded = 0; /* frames that came out of ffmpeg */
    int bad = 0;
    while (uk < m) {
        int w, h;
        int hr = rd_ppm_header(r, &w, &h);
        if (hr == 1) break;
        if (hr < 0) { bad = 1; break; }
        size_t need = (size_t)w * (size_t)h * 3;
        if (need > pixcap) {
            uint8_t *np = realloc(pix, need);
            if (!np) {
                child_finish(&c, 1, NULL, NULL, 0);
                fail(err, errlen, "out of memory for a %dx%d frame", w, h);
                goto done;
            }
            pix = np;
            pixcap = need;
        }
        if (rd_read(r, pix, need) != need) { bad = 1; break; }
        int64_t this_index;
        if (mode == VIDEO_READ_SELECT) this_index = u[uk];
        else {
            this_index = decoded;
            if (this_index != u[uk]) {
                decoded++;
                continue;
            }
        }
        decoded++;
        Image img = {w, h, pix};
        while (k < n && idx[k] == this_index) {
            char cerr[512] = "";
            if (fn && fn(user, k, this_index, &img, cerr, sizeof cerr) != 0) {
                child_finish(&c, 1, NULL, NULL, 0);
                fail(err, errlen, "%s", cerr[0] ? cerr : "stopped");
                goto done;
            }
            k++;
        }
        uk++;
    }
    if (uk == m) { /* everything wanted was delivered: ffmpeg may stop now */
        child_finish(&c, 1, NULL, NULL, 0);
        rc = 0;
        goto done;
    }
    if (r->error == ETIMEDOUT) {
        child_finish(&c, 1, NULL, NULL, 0);
        fail(err, errlen, "ffmpeg gave no frame for %g s (after %zu of %zu): stopped it (--ffmpeg-timeout)",
             g_video_timeout, uk, m);
        goto done;
    }
    int code = child_finish(&c, bad, path, msg, sizeof msg);
    if (code != 0 && !bad) fail(err, errlen, "ffmpeg failed%s%s", msg[0] ? ": " : "", msg);
    else if (bad) fail(err, errlen, "unexpected data from ffmpeg (truncated or malformed frame)%s%s", msg[0] ? ": " : "", msg);
    else if (mode == VIDEO_READ_SELECT)
        fail(err, errlen, "ffmpeg decoded only %zu of the %zu wanted frames (frame %lld missing; the stream has "
                          "fewer decodable frames than its %lld packets)",
             uk, m, (long long)u[uk], vi ? (long long)vi->frame_count : -1LL);
    else
        fail(err, errlen, "the video ended after %lld decoded frames; frame %lld was wanted (%lld packets)",
             (long long)decoded, (long long)u[uk], vi ? (long long)vi->frame_count : -1LL);
done:
    free(r);
    free(pix);
    free(u);
    free(in);
    buf_free(&vf);
    return rc;
}

int video_read(const VideoPlan *plan, VideoFrameFn fn, void *user, char *err, size_t errlen) {
    return video_read_frames(plan->path, &plan->info, plan->idx, plan->n, VIDEO_READ_AUTO, fn, user, err, errlen);
}

/* ======================================================================================
 * 3. result rows */

const char *const APP_LEVEL_NAMES[APP_LEVELS] = {"excellent", "good", "fair", "poor", "bad"};

static const char CSV_HEADER[] = "path,task,kind,frames,score,std,scale,p_excellent,p_good,p_fair,p_poor,p_bad,"
                                 "logit_excellent,logit_good,logit_fair,logit_poor,logit_bad,error,"
                                 "model,prompt,levels,pad,precise,max_frames\n";
#define CSV_FIELDS 24
static const char *const CSV_HEADERS[1] = {CSV_HEADER};
/* --ask's results (RESULTS_CSV_ANSWERS): the answer instead of the level columns; score, std,
 * scale and levels are empty unless --score is given too */
static const char ANSWER_CSV_HEADER[] = "path,task,kind,frames,score,std,scale,question,answer,tokens,finish,error,"
                                        "model,prompt,levels,decoding,pad,precise,max_frames\n";
#define ANSWER_CSV_FIELDS 19
/* the start of every JSONL row (a torn tail that starts otherwise is not ours) */
#define JSON_ROW_START "{\"path\": "

const char *results_csv_header(void) { return CSV_HEADER; }
const char *results_answer_csv_header(void) { return ANSWER_CSV_HEADER; }

static int row_failed(const ResultRow *r) { return r->error && r->error[0]; }
static int empty(const char *s) { return !s || !s[0]; }

static void csv_field(Buf *b, const char *s) {
    if (!s) return;
    if (!strpbrk(s, ",\"\r\n")) {
        buf_adds(b, s);
        return;
    }
    buf_addc(b, '"');
    for (const char *p = s; *p; p++) {
        if (*p == '"') buf_addc(b, '"');
        buf_addc(b, *p);
    }
    buf_addc(b, '"');
}

static void csv_num(Buf *b, double v) {
    if (isfinite(v)) buf_printf(b, "%.6f", v);
}

/* JSON string; bytes that are not UTF-8 become \udcXX (surrogateescape). */
static void json_str(Buf *b, const char *s) {
    if (!s) {
        buf_adds(b, "null");
        return;
    }
    buf_addc(b, '"');
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        if (c == '"' || c == '\\') { buf_addc(b, '\\'); buf_addc(b, (char)c); i++; }
        else if (c == '\n') { buf_adds(b, "\\n"); i++; }
        else if (c == '\r') { buf_adds(b, "\\r"); i++; }
        else if (c == '\t') { buf_adds(b, "\\t"); i++; }
        else if (c < 0x20 || c == 0x7F) { buf_printf(b, "\\u%04x", c); i++; }
        else if (c < 0x80) { buf_addc(b, (char)c); i++; }
        else {
            int L = utf8_len(p + i, n - i);
            if (L) { buf_add(b, p + i, (size_t)L); i += (size_t)L; }
            else { buf_printf(b, "\\udc%02x", c); i++; }
        }
    }
    buf_addc(b, '"');
}

char *json_quoted(const char *s) {
    Buf b = {0};
    json_str(&b, s);
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    return b.p;
}

/* A number, null when it is not finite: the JSON is valid whatever the value. */
static void json_num(Buf *b, double v) {
    if (isfinite(v)) buf_printf(b, "%.6f", v);
    else buf_adds(b, "null");
}

/* The row's probabilities and logits under the five default words, NaN where the row's
 * levels do not have the word: the columns of the CSV and the bars of the report. */
static void default_columns(const ResultRow *r, double *probs, double *logits) {
    for (int k = 0; k < APP_LEVELS; k++) {
        probs[k] = logits[k] = NAN;
        for (int i = 0; i < (r->n_levels ? r->n_levels : APP_LEVELS); i++)
            if (!r->n_levels ? i == k : !strcmp(r->levels[i], APP_LEVEL_NAMES[k])) probs[k] = r->probs[i], logits[k] = r->logits[i];
    }
}

/* A row that claims success has a finite score (else the writer makes it an error row).
 * std, probabilities and logits may be NaN: no spread (a comparison scorer's 0-100 score),
 * a word the row's levels do not have (empty / null). */
static int row_numbers_finite(const ResultRow *r) { return isfinite(r->score); }

/* The generated ids as text: "1 2 3" (CSV) or "[1, 2, 3]" (JSON) */
static void token_list(Buf *b, const ResultRow *r, int json) {
    if (json) buf_addc(b, '[');
    for (int i = 0; i < r->n_tokens; i++) buf_printf(b, i ? json ? ", %d" : " %d" : "%d", r->tokens[i]);
    if (json) buf_addc(b, ']');
}

/* An answer's row (--ask) in the CSV of answers */
static void format_answer_csv(Buf *b, const ResultRow *r, int bad, const char *error) {
    const RowSetup *su = &r->setup;
    int known = su->model != NULL, sc = r->scored && !bad;
    csv_field(b, r->path);
    buf_addc(b, ',');
    csv_field(b, r->scored ? r->task : NULL);
    buf_addc(b, ',');
    csv_field(b, r->kind);
    buf_printf(b, ",%d,", r->frames);
    if (sc) csv_num(b, r->score);
    buf_addc(b, ',');
    if (sc) csv_num(b, r->std);
    buf_addc(b, ',');
    csv_field(b, r->scored ? r->scale : NULL);
    buf_addc(b, ',');
    csv_field(b, r->question);
    buf_addc(b, ',');
    if (!bad) csv_field(b, r->answer);
    buf_addc(b, ',');
    if (!bad) token_list(b, r, 0);
    buf_addc(b, ',');
    if (!bad) csv_field(b, r->finish);
    buf_addc(b, ',');
    if (bad) csv_field(b, error);
    buf_addc(b, ',');
    if (known) {
        csv_field(b, su->model);
        buf_addc(b, ',');
        csv_field(b, su->prompt);
        buf_addc(b, ',');
        if (r->scored) csv_field(b, su->levels);
        buf_addc(b, ',');
        csv_field(b, r->decoding);
        buf_printf(b, ",%s,%s,", su->pad ? "true" : "false", su->precise ? "true" : "false");
    } else buf_adds(b, ",,,,,,");
    if (r->max_frames > 0) buf_printf(b, "%d", r->max_frames);
    buf_addc(b, '\n');
}

static void format_row(Buf *b, ResultsFormat fmt, const ResultRow *r) {
    int bad = row_failed(r), n = r->n_levels ? r->n_levels : APP_LEVELS, ans = r->question != NULL;
    int sc = !ans || r->scored; /* the row has a score */
    const char *error = r->error;
    if (ans && !bad && !r->answer) { /* never a success without an answer */
        bad = 1;
        error = "no answer";
    }
    if (fmt == RESULTS_CSV_ANSWERS) {
        if (sc && !bad && !row_numbers_finite(r)) bad = 1, error = "the model produced a value that is not finite";
        format_answer_csv(b, r, bad, error);
        return;
    }
    if (sc && !bad && !row_numbers_finite(r)) { /* never a success without a score */
        bad = 1;
        error = "the model produced a value that is not finite";
    }
    const char *const *words = r->n_levels ? r->levels : APP_LEVEL_NAMES;
    const RowSetup *su = &r->setup;
    int known = su->model != NULL;
    if (fmt == RESULTS_CSV) {
        csv_field(b, r->path);
        buf_addc(b, ',');
        csv_field(b, r->task);
        buf_addc(b, ',');
        csv_field(b, r->kind);
        buf_printf(b, ",%d,", r->frames);
        if (!bad) csv_num(b, r->score);
        buf_addc(b, ',');
        if (!bad) csv_num(b, r->std);
        buf_addc(b, ',');
        csv_field(b, r->scale);
        double p[APP_LEVELS], l[APP_LEVELS];
        default_columns(r, p, l);
        for (int i = 0; i < 2 * APP_LEVELS; i++) { /* the columns are the five default words' */
            buf_addc(b, ',');
            if (!bad) csv_num(b, i < APP_LEVELS ? p[i] : l[i - APP_LEVELS]);
        }
        buf_addc(b, ',');
        if (bad) csv_field(b, error);
        buf_addc(b, ',');
        if (known) {
            csv_field(b, su->model);
            buf_addc(b, ',');
            csv_field(b, su->prompt);
            buf_addc(b, ',');
            csv_field(b, su->levels);
            buf_printf(b, ",%s,%s,", su->pad ? "true" : "false", su->precise ? "true" : "false");
        } else buf_adds(b, ",,,,,");
        if (r->max_frames > 0) buf_printf(b, "%d", r->max_frames);
        buf_addc(b, '\n');
    } else {
        buf_adds(b, JSON_ROW_START);
        json_str(b, r->path);
        if (sc) {
            buf_adds(b, ", \"task\": ");
            json_str(b, r->task);
        }
        buf_adds(b, ", \"kind\": ");
        json_str(b, r->kind);
        buf_printf(b, ", \"frames\": %d", r->frames);
        if (r->per_frame) buf_printf(b, ", \"frame\": %d", r->frame);
        if (sc) {
        buf_adds(b, ", \"score\": ");
        json_num(b, bad ? NAN : r->score);
        buf_adds(b, ", \"std\": ");
        json_num(b, bad ? NAN : r->std);
        buf_adds(b, ", \"scale\": ");
        json_str(b, r->scale);
        for (int k = 0; k < 2; k++)
            for (int i = 0; i < n; i++) {
                Buf key = {0};
                buf_printf(&key, "%s_%s", k ? "logit" : "p", words[i]);
                buf_adds(b, ", ");
                json_str(b, key.oom ? "" : key.p);
                buf_adds(b, ": ");
                json_num(b, bad ? NAN : k ? r->logits[i] : r->probs[i]);
                buf_free(&key);
            }
        }
        if (ans) {
            buf_adds(b, ", \"question\": ");
            json_str(b, r->question);
            buf_adds(b, ", \"answer\": ");
            json_str(b, bad ? NULL : r->answer);
            buf_adds(b, ", \"tokens\": ");
            if (bad) buf_adds(b, "null");
            else token_list(b, r, 1);
            buf_adds(b, ", \"finish\": ");
            json_str(b, bad ? NULL : r->finish);
        }
        if (r->n_anchors > 0 && !bad) {
            buf_adds(b, ", \"anchor_prefs\": [");
            for (int i = 0; i < r->n_anchors; i++) {
                if (i) buf_adds(b, ", ");
                json_num(b, r->anchor_prefs[i]);
            }
            buf_addc(b, ']');
        }
        buf_adds(b, ", \"error\": ");
        json_str(b, bad ? error : NULL);
        buf_adds(b, ", \"model\": ");
        json_str(b, known ? su->model : NULL);
        buf_adds(b, ", \"prompt\": ");
        json_str(b, known ? su->prompt : NULL);
        if (sc) {
            buf_adds(b, ", \"levels\": ");
            json_str(b, known ? su->levels : NULL);
        }
        if (ans) {
            buf_adds(b, ", \"decoding\": ");
            json_str(b, known ? r->decoding : NULL);
        }
        buf_printf(b, ", \"pad\": %s, \"precise\": %s, \"max_frames\": ", known ? su->pad ? "true" : "false" : "null",
                   known ? su->precise ? "true" : "false" : "null");
        if (r->max_frames > 0) buf_printf(b, "%d}\n", r->max_frames);
        else buf_adds(b, "null}\n");
    }
}

char *results_format_row(ResultsFormat fmt, const ResultRow *row) {
    Buf b = {0};
    format_row(&b, fmt, row);
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    return b.p;
}

int row_style_init(RowStyle *s, const char *task, const char *scale, int n_levels, const char *const *words, float lo,
                   float hi) {
    static const struct { const char *name; double lo, hi; } scales[] = {{"1-5", 1, 5}, {"0-1", 0, 1}, {"0-100", 0, 100}};
    memset(s, 0, sizeof *s);
    s->task = task;
    s->lo = lo;
    s->hi = hi;
    s->n_levels = n_levels < APP_MAX_LEVELS ? n_levels : APP_MAX_LEVELS;
    for (int i = 0; i < s->n_levels; i++) s->words[i] = words[i];
    snprintf(s->scale, sizeof s->scale, "%g-%g", lo, hi);
    if (!scale) return 0;
    for (size_t k = 0; k < sizeof scales / sizeof scales[0]; k++)
        if (!strcmp(scale, scales[k].name)) {
            s->mapped = hi > lo;
            s->to_lo = scales[k].lo;
            s->to_hi = scales[k].hi;
            snprintf(s->scale, sizeof s->scale, "%s", scale);
            return 0;
        }
    return -1;
}

ResultRow row_from_result(const RowStyle *s, const char *path, const char *kind, const qalign_result *r,
                          const char *error) {
    ResultRow row = {.path = path, .task = s->task, .kind = kind, .scale = s->scale, .error = error,
                     .n_levels = s->n_levels, .levels = s->words, .setup = s->setup};
    if (!error) {
        double k = s->mapped ? (s->to_hi - s->to_lo) / (s->hi - s->lo) : 1; /* --scale: linear from [lo, hi] */
        row.frames = r->frames;
        row.score = s->mapped ? s->to_lo + ((double)r->score - s->lo) * k : r->score;
        row.std = r->std * k;
        for (int i = 0; i < r->n_levels && i < APP_MAX_LEVELS; i++) {
            row.probs[i] = r->probs[i];
            row.logits[i] = r->logits[i];
        }
        row.n_anchors = r->n_anchors;
        row.anchor_prefs = r->anchor_prefs;
    }
    return row;
}

/* The text as the rows record it: one line, with backslash, newline, CR and tab written as
 * \\ \n \r \t (so a CSV row stays one line and the recorded text is exact). */
static char *one_line(const char *s) {
    char *o = malloc(2 * strlen(s) + 1), *q = o;
    if (!o) return NULL;
    for (; *s; s++) {
        const char *e = *s == '\\' ? "\\\\" : *s == '\n' ? "\\n" : *s == '\r' ? "\\r" : *s == '\t' ? "\\t" : NULL;
        if (e) *q++ = e[0], *q++ = e[1];
        else *q++ = *s;
    }
    *q = 0;
    return o;
}

int row_setup_make(RowSetup *su, const char *model_id, const qalign_ctx_info *ci) {
    *su = (RowSetup){.model = strdup(model_id), .prompt = one_line(ci->prompt), .levels = one_line(ci->levels),
                     .pad = ci->pad, .precise = ci->precise};
    if (su->model && su->prompt && su->levels) return 0;
    row_setup_free(su);
    return -1;
}

void row_setup_free(RowSetup *su) {
    free((char *)su->model);
    free((char *)su->prompt);
    free((char *)su->levels);
    *su = (RowSetup){0};
}

/* ---- RowSet ---- */

struct RowSet {
    ResultRow *rows;
    size_t n, cap;
    StrMap index;   /* "task\0path" -> last row */
    StrMap like;    /* "task\0path\0scale\0setup...\0max_frames" -> last row */
    char **keys;    /* owned keys, two per row */
    long *earlier;  /* per row: the row before it with the same task and path, or -1 */
};

RowSet *rowset_new(void) { return calloc(1, sizeof(RowSet)); }

static void row_free_strings(ResultRow *r) {
    free((char *)r->path);
    free((char *)r->task);
    free((char *)r->kind);
    free((char *)r->scale);
    free((char *)r->error);
    free((char *)r->setup.model);
    free((char *)r->setup.prompt);
    free((char *)r->setup.levels);
    free((char *)r->question);
    free((char *)r->answer);
    free((char *)r->finish);
    free((char *)r->decoding);
}

void rowset_free(RowSet *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) {
        row_free_strings(&s->rows[i]);
        free(s->keys[2 * i]);
        free(s->keys[2 * i + 1]);
    }
    free(s->rows);
    free(s->keys);
    free(s->earlier);
    strmap_free(&s->index);
    strmap_free(&s->like);
    free(s);
}

size_t rowset_count(const RowSet *s) { return s ? s->n : 0; }
const ResultRow *rowset_row(const RowSet *s, size_t i) { return s && i < s->n ? &s->rows[i] : NULL; }

static void key_part(Buf *b, const char *s) {
    buf_adds(b, s ? s : "");
    buf_addc(b, 0);
}

/* The index keys of a row: (task, path), and everything resume compares but kind/frames.
 * A row whose setup is unknown gets a "like" key no run can have (an empty model). */
static char *make_key(const ResultRow *r, int like, size_t *klen) {
    Buf b = {0};
    key_part(&b, r->question ? NULL : r->task); /* (an answer's row: its question instead) */
    key_part(&b, r->path);
    if (like) {
        key_part(&b, r->question ? NULL : r->scale);
        key_part(&b, r->setup.model);
        if (r->setup.model) {
            key_part(&b, r->setup.prompt);
            key_part(&b, r->question ? NULL : r->setup.levels);
            buf_printf(&b, "%d%d", r->setup.pad != 0, r->setup.precise != 0);
            buf_addc(&b, 0);
        }
        if (r->question) { /* an answer: the same question, asked the same way */
            buf_addc(&b, 'Q');
            key_part(&b, r->question);
            key_part(&b, r->decoding);
        }
        buf_printf(&b, "%d", r->max_frames > 0 ? r->max_frames : 0);
    }
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    *klen = b.n;
    return b.p;
}

static char *dup_nonempty(const char *s, int *oom) {
    if (empty(s)) return NULL;
    char *d = strdup(s);
    if (!d) *oom = 1;
    return d;
}

int rowset_add(RowSet *s, const ResultRow *row) {
    if (empty(row->path)) return -1;
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        ResultRow *nr = realloc(s->rows, nc * sizeof *nr);
        if (!nr) return -1;
        s->rows = nr;
        char **nk = realloc(s->keys, 2 * nc * sizeof *nk);
        if (!nk) return -1;
        s->keys = nk;
        long *ne = realloc(s->earlier, nc * sizeof *ne);
        if (!ne) return -1;
        s->earlier = ne;
        s->cap = nc;
    }
    ResultRow r = *row;
    int oom = 0;
    r.n_anchors = 0, r.anchor_prefs = NULL; /* (not kept) */
    r.path = dup_nonempty(row->path, &oom);
    r.task = dup_nonempty(row->task, &oom);
    r.kind = dup_nonempty(row->kind, &oom);
    r.scale = dup_nonempty(row->scale, &oom);
    r.error = row_failed(row) ? dup_nonempty(row->error, &oom) : NULL;
    r.setup.model = dup_nonempty(row->setup.model, &oom);
    r.setup.prompt = r.setup.model ? dup_nonempty(row->setup.prompt, &oom) : NULL;
    r.setup.levels = r.setup.model ? dup_nonempty(row->setup.levels, &oom) : NULL;
    r.n_levels = 0; /* a stored row has the five default words' columns */
    r.levels = NULL;
    r.tokens = NULL, r.n_tokens = 0; /* (not kept) */
    r.question = row->question ? strdup(row->question) : NULL;
    r.answer = row->question && row->answer ? strdup(row->answer) : NULL;
    r.finish = row->question ? dup_nonempty(row->finish, &oom) : NULL;
    r.decoding = row->question ? dup_nonempty(row->decoding, &oom) : NULL;
    if ((row->question && !r.question) || (r.question && row->answer && !r.answer)) oom = 1;
    size_t kl, ll;
    char *key = oom ? NULL : make_key(&r, 0, &kl), *lkey = key ? make_key(&r, 1, &ll) : NULL;
    s->earlier[s->n] = key ? strmap_get(&s->index, key, kl) : -1;
    if (!lkey || strmap_put(&s->index, key, kl, (long)s->n) != 0 || strmap_put(&s->like, lkey, ll, (long)s->n) != 0) {
        /* (a key already put stays valid: it is freed with the set only if stored; drop both maps' entry by
         * failing the whole set - callers treat -1 as out of memory and free the set) */
        row_free_strings(&r);
        s->keys[2 * s->n] = key;
        s->keys[2 * s->n + 1] = lkey;
        s->rows[s->n] = (ResultRow){0};
        s->n++;
        return -1;
    }
    s->rows[s->n] = r;
    s->keys[2 * s->n] = key;
    s->keys[2 * s->n + 1] = lkey;
    s->n++;
    return 0;
}

const ResultRow *rowset_find(const RowSet *s, const char *path, const char *task) {
    if (!s || !path) return NULL;
    size_t kl;
    char *key = make_key(&(ResultRow){.path = path, .task = task}, 0, &kl);
    if (!key) return NULL;
    long i = strmap_get(&s->index, key, kl);
    free(key);
    return i >= 0 ? &s->rows[i] : NULL;
}

const ResultRow *rowset_find_like(const RowSet *s, const ResultRow *like) {
    if (!s || !like->path || !like->setup.model) return NULL;
    size_t kl;
    char *key = make_key(like, 1, &kl);
    if (!key) return NULL;
    long i = strmap_get(&s->like, key, kl);
    free(key);
    return i >= 0 ? &s->rows[i] : NULL;
}

static int same_str(const char *a, const char *b) { return strcmp(a ? a : "", b ? b : "") == 0; }

/* A row found for like is for the same input: same kind, and a frame set has as many frames. */
static int same_input(const ResultRow *r, const ResultRow *like) {
    if (!same_str(r->kind, like->kind)) return 0;
    return !like->kind || strcmp(like->kind, "frames") != 0 || r->frames == like->frames;
}

int rowset_done_like(const RowSet *s, const ResultRow *like) {
    const ResultRow *r = rowset_find_like(s, like);
    return r && !row_failed(r) && like->kind && same_input(r, like);
}

/* ---- CSV parsing (RFC 4180, lenient) ---- */

typedef struct {
    Buf text;        /* field contents, each NUL-terminated */
    size_t *start;   /* offsets into text */
    size_t n, cap;
} Fields;

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
static const char *field(const Fields *f, size_t i) { return f->text.p + f->start[i]; }
static void fields_free(Fields *f) {
    buf_free(&f->text);
    free(f->start);
    memset(f, 0, sizeof *f);
}

/* Parse one record starting at *pos. Returns 1 if a record was parsed (terminated = it
 * ended with a newline outside quotes), 0 at the end of input, -1 out of memory. */
static int csv_record(const char *s, size_t len, size_t *pos, char delim, Fields *f, int *terminated) {
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

static int parse_double(const char *s, double *v) {
    if (!s || !*s) return -1;
    char *e;
    errno = 0;
    double x = strtod(s, &e);
    while (*e == ' ' || *e == '\t') e++;
    if (e == s || *e) return -1;
    *v = x;
    return 0;
}

/* "true" / "false" -> 1 / 0; -1 otherwise */
static int parse_bool(const char *s) { return !strcmp(s, "true") ? 1 : !strcmp(s, "false") ? 0 : -1; }

/* A small non-negative integer. */
static int count_of(double x, int *v) {
    if (!(x >= 0 && x <= 1e9) || x != floor(x)) return -1;
    *v = (int)x;
    return 0;
}

/* The same from a CSV field ("" -> 0). */
static int parse_count(const char *s, int *v) {
    double x;
    if (!*s) { *v = 0; return 0; }
    return parse_double(s, &x) != 0 ? -1 : count_of(x, v);
}

static int csv_to_row(const Fields *f, ResultRow *r) {
    if (f->n != CSV_FIELDS) return -1;
    memset(r, 0, sizeof *r);
    r->path = field(f, 0);
    if (!r->path[0]) return -1;
    r->task = field(f, 1);
    r->kind = field(f, 2)[0] ? field(f, 2) : NULL;
    if (parse_count(field(f, 3), &r->frames) != 0) return -1;
    r->scale = field(f, 6);
    r->error = field(f, 17)[0] ? field(f, 17) : NULL;
    for (int i = 0; i < APP_MAX_LEVELS; i++) r->probs[i] = r->logits[i] = NAN;
    if (!r->error) {
        if (parse_double(field(f, 4), &r->score) != 0 || parse_double(field(f, 5), &r->std) != 0 ||
            !isfinite(r->score) || !isfinite(r->std))
            return -1;
        for (int i = 0; i < APP_LEVELS; i++) /* empty: a word the run's levels did not have */
            if ((field(f, 7 + i)[0] && parse_double(field(f, 7 + i), &r->probs[i]) != 0) ||
                (field(f, 12 + i)[0] && parse_double(field(f, 12 + i), &r->logits[i]) != 0))
                return -1;
    } else r->score = r->std = NAN;
    if (field(f, 18)[0]) { /* the setup: all of it, or none */
        r->setup.model = field(f, 18);
        r->setup.prompt = field(f, 19);
        r->setup.levels = field(f, 20);
        if ((r->setup.pad = parse_bool(field(f, 21))) < 0 || (r->setup.precise = parse_bool(field(f, 22))) < 0) return -1;
    } else if (field(f, 19)[0] || field(f, 20)[0] || field(f, 21)[0] || field(f, 22)[0]) return -1;
    if (parse_count(field(f, 23), &r->max_frames) != 0) return -1;
    return 0;
}

/* A row of the CSV of answers */
static int csv_to_answer_row(const Fields *f, ResultRow *r) {
    if (f->n != ANSWER_CSV_FIELDS) return -1;
    memset(r, 0, sizeof *r);
    r->path = field(f, 0);
    if (!r->path[0]) return -1;
    r->task = field(f, 1)[0] ? field(f, 1) : NULL;
    r->kind = field(f, 2)[0] ? field(f, 2) : NULL;
    if (parse_count(field(f, 3), &r->frames) != 0) return -1;
    r->scored = field(f, 4)[0] != 0;
    r->score = r->std = NAN;
    for (int i = 0; i < APP_MAX_LEVELS; i++) r->probs[i] = r->logits[i] = NAN;
    if (r->scored && (parse_double(field(f, 4), &r->score) != 0 || parse_double(field(f, 5), &r->std) != 0)) return -1;
    r->scale = field(f, 6)[0] ? field(f, 6) : NULL;
    r->question = field(f, 7);
    r->answer = field(f, 8);
    r->finish = field(f, 10)[0] ? field(f, 10) : NULL;
    r->error = field(f, 11)[0] ? field(f, 11) : NULL;
    if (field(f, 12)[0]) {
        r->setup.model = field(f, 12);
        r->setup.prompt = field(f, 13);
        r->setup.levels = field(f, 14)[0] ? field(f, 14) : NULL;
        r->decoding = field(f, 15);
        if ((r->setup.pad = parse_bool(field(f, 16))) < 0 || (r->setup.precise = parse_bool(field(f, 17))) < 0) return -1;
    }
    if (parse_count(field(f, 18), &r->max_frames) != 0) return -1;
    return 0;
}

/* ---- JSON (one flat object per line) ---- */

typedef struct {
    const char *p, *e;
} JP;

static void jp_ws(JP *j) {
    while (j->p < j->e && (*j->p == ' ' || *j->p == '\t' || *j->p == '\r' || *j->p == '\n')) j->p++;
}
static int hex4(const char *p, unsigned *v) {
    unsigned x = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        x <<= 4;
        if (c >= '0' && c <= '9') x |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') x |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') x |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *v = x;
    return 0;
}
/* A JSON string into out (appended, NUL-terminated). \udc80..\udcff alone -> that byte. */
static int jp_string(JP *j, Buf *out) {
    if (j->p >= j->e || *j->p != '"') return -1;
    j->p++;
    while (j->p < j->e && *j->p != '"') {
        unsigned char c = (unsigned char)*j->p;
        if (c < 0x20) return -1;
        if (c != '\\') { buf_addc(out, (char)c); j->p++; continue; }
        if (j->e - j->p < 2) return -1;
        char k = j->p[1];
        j->p += 2;
        switch (k) {
        case '"': buf_addc(out, '"'); break;
        case '\\': buf_addc(out, '\\'); break;
        case '/': buf_addc(out, '/'); break;
        case 'b': buf_addc(out, '\b'); break;
        case 'f': buf_addc(out, '\f'); break;
        case 'n': buf_addc(out, '\n'); break;
        case 'r': buf_addc(out, '\r'); break;
        case 't': buf_addc(out, '\t'); break;
        case 'u': {
            unsigned v, w;
            if (j->e - j->p < 4 || hex4(j->p, &v) != 0) return -1;
            j->p += 4;
            if (v >= 0xD800 && v <= 0xDBFF && j->e - j->p >= 6 && j->p[0] == '\\' && j->p[1] == 'u' &&
                hex4(j->p + 2, &w) == 0 && w >= 0xDC00 && w <= 0xDFFF) {
                j->p += 6;
                utf8_put(out, 0x10000 + ((v - 0xD800) << 10) + (w - 0xDC00));
            } else if (v >= 0xDC80 && v <= 0xDCFF) buf_addc(out, (char)(v - 0xDC00));
            else if (v >= 0xD800 && v <= 0xDFFF) utf8_put(out, 0xFFFD);
            else if (v == 0) return -1; /* NUL cannot be in a path */
            else utf8_put(out, v);
            break;
        }
        default: return -1;
        }
    }
    if (j->p >= j->e) return -1;
    j->p++;
    buf_addc(out, 0);
    return out->oom ? -1 : 0;
}

/* Parse {"k": v, ...} with string/number/null/bool values into r; strings in text. */
static int json_to_row(const char *s, size_t len, Buf *text, ResultRow *r) {
    JP j = {s, s + len};
    enum { K_PATH, K_TASK, K_KIND, K_SCALE, K_ERROR, K_MODEL, K_PROMPT, K_LEVELS, K_QUESTION, K_ANSWER, K_DECODING, K_N };
    static const char *const skeys[K_N] = {"path", "task", "kind", "scale", "error", "model", "prompt", "levels",
                                           "question", "answer", "decoding"};
    long soff[K_N];
    for (int i = 0; i < K_N; i++) soff[i] = -1;
    memset(r, 0, sizeof *r);
    r->score = r->std = NAN;
    for (int i = 0; i < APP_MAX_LEVELS; i++) r->probs[i] = r->logits[i] = NAN;
    int have_score = 0, pad = -1, precise = -1;
    text->n = 0;
    jp_ws(&j);
    if (j.p >= j.e || *j.p != '{') return -1;
    j.p++;
    jp_ws(&j);
    if (j.p < j.e && *j.p == '}') return -1;
    Buf key = {0};
    int rc = -1;
    for (;;) {
        jp_ws(&j);
        key.n = 0;
        if (jp_string(&j, &key) != 0) goto out;
        jp_ws(&j);
        if (j.p >= j.e || *j.p != ':') goto out;
        j.p++;
        jp_ws(&j);
        if (j.p >= j.e) goto out;
        int which = -1;
        for (int i = 0; i < K_N; i++)
            if (strcmp(key.p, skeys[i]) == 0) which = i;
        if (*j.p == '"') {
            size_t off = text->n;
            if (jp_string(&j, text) != 0) goto out;
            if (which >= 0) soff[which] = (long)off;
        } else if (j.e - j.p >= 4 && memcmp(j.p, "null", 4) == 0) j.p += 4;
        else if ((j.e - j.p >= 4 && memcmp(j.p, "true", 4) == 0) || (j.e - j.p >= 5 && memcmp(j.p, "false", 5) == 0)) {
            int v = *j.p == 't';
            j.p += v ? 4 : 5;
            if (strcmp(key.p, "pad") == 0) pad = v;
            else if (strcmp(key.p, "precise") == 0) precise = v;
        } else if (*j.p == '-' || (*j.p >= '0' && *j.p <= '9')) {
            char small[64], *num = small;
            size_t L = 0;
            while (j.p + L < j.e && j.p[L] && strchr("+-.eE0123456789", j.p[L])) L++;
            if (L >= sizeof small && !(num = malloc(L + 1))) goto out; /* %.6f of a large number is long */
            memcpy(num, j.p, L);
            num[L] = 0;
            j.p += L;
            double v;
            int bad_num = parse_double(num, &v) != 0;
            if (num != small) free(num);
            if (bad_num) goto out;
            if (strcmp(key.p, "score") == 0) { r->score = v; have_score = 1; }
            else if (strcmp(key.p, "std") == 0) r->std = v;
            else if (strcmp(key.p, "frames") == 0) { if (count_of(v, &r->frames) != 0) goto out; }
            else if (strcmp(key.p, "max_frames") == 0) { if (count_of(v, &r->max_frames) != 0) goto out; }
            else
                for (int i = 0; i < APP_LEVELS; i++) {
                    char pk[32], lk[32];
                    snprintf(pk, sizeof pk, "p_%s", APP_LEVEL_NAMES[i]);
                    snprintf(lk, sizeof lk, "logit_%s", APP_LEVEL_NAMES[i]);
                    if (strcmp(key.p, pk) == 0) r->probs[i] = v;
                    if (strcmp(key.p, lk) == 0) r->logits[i] = v;
                }
        } else if (*j.p == '[' && strcmp(key.p, "tokens") == 0) { /* an answer's ids: skipped */
            while (j.p < j.e && *j.p != ']' && (*j.p == '[' || *j.p == ',' || *j.p == ' ' || (*j.p >= '0' && *j.p <= '9')))
                j.p++;
            if (j.p >= j.e || *j.p != ']') goto out;
            j.p++;
        } else goto out; /* nested values are not ours */
        jp_ws(&j);
        if (j.p < j.e && *j.p == ',') { j.p++; continue; }
        if (j.p < j.e && *j.p == '}') { j.p++; break; }
        goto out;
    }
    jp_ws(&j);
    if (j.p != j.e || soff[K_PATH] < 0 || text->oom) goto out;
    r->path = text->p + soff[K_PATH];
    if (!r->path[0]) goto out;
#define STR(k) (soff[k] >= 0 && text->p[soff[k]] ? text->p + soff[k] : NULL)
    r->task = STR(K_TASK);
    r->kind = STR(K_KIND);
    r->scale = STR(K_SCALE);
    r->error = STR(K_ERROR);
    r->setup.model = STR(K_MODEL);
    r->setup.prompt = STR(K_PROMPT);
    r->setup.levels = STR(K_LEVELS);
    r->answer = soff[K_ANSWER] >= 0 ? text->p + soff[K_ANSWER] : NULL; /* (may be empty) */
    r->decoding = STR(K_DECODING);
    if (soff[K_QUESTION] >= 0) r->question = text->p + soff[K_QUESTION];
#undef STR
    r->scored = have_score;
    if (r->question) { /* an answer */
        if (r->setup.model && (pad < 0 || precise < 0)) goto out;
        r->setup.pad = pad > 0;
        r->setup.precise = precise > 0;
        if (!r->error && !r->answer && !(soff[K_ANSWER] >= 0)) goto out;
        rc = 0;
        goto out;
    }
    if (r->setup.model && (pad < 0 || precise < 0)) goto out;
    r->setup.pad = pad > 0;
    r->setup.precise = precise > 0;
    if (!r->error && (!have_score || !isfinite(r->score) || !isfinite(r->std))) goto out;
    rc = 0;
out:
    buf_free(&key);
    return rc;
}

/* What a results file holds, as parse_results finds it. */
typedef struct {
    size_t good;    /* bytes of complete rows: where a torn tail starts (cut it when appending) */
    int torn;       /* 1: there is such a tail */
    size_t bad;     /* complete lines that are not rows */
    size_t rows;
    int ours;       /* 1: a file of ours (or empty); 0: not, then why says so */
    char why[160];
} Parsed;

/* Parse a results file held in memory. -1 only when out of memory. */
static int parse_results(const char *s, size_t len, ResultsFormat fmt, RowSet *into, Parsed *P) {
    memset(P, 0, sizeof *P);
    P->ours = 1;
    if (fmt != RESULTS_JSONL) {
        const char *CSV_HEADER = fmt == RESULTS_CSV_ANSWERS ? ANSWER_CSV_HEADER : CSV_HEADERS[0];
        size_t hl = strlen(CSV_HEADER) - 1;
        if (len == 0) return 0;
        const char *nl = memchr(s, '\n', len);
        if (!nl) { /* a header torn by a kill: the start of ours (cut, then written again), else not ours */
            if ((len <= hl && memcmp(s, CSV_HEADER, len) == 0) ||
                (len == hl + 1 && memcmp(s, CSV_HEADER, hl) == 0 && s[hl] == '\r'))
                P->torn = 1;
            else {
                P->ours = 0;
                snprintf(P->why, sizeof P->why, "its first line is not qalign's CSV header");
            }
            return 0;
        }
        size_t first = (size_t)(nl - s);
        if (first && s[first - 1] == '\r') first--;
        if (first != hl || memcmp(s, CSV_HEADER, hl) != 0) {
            P->ours = 0;
            const char *other = fmt == RESULTS_CSV_ANSWERS ? CSV_HEADERS[0] : ANSWER_CSV_HEADER;
            if (first == strlen(other) - 1 && memcmp(s, other, first) == 0)
                snprintf(P->why, sizeof P->why, "it holds %s, not %s", fmt == RESULTS_CSV_ANSWERS ? "scores" : "answers (--ask)",
                         fmt == RESULTS_CSV_ANSWERS ? "answers (--ask)" : "scores");
            else if (first > 10 && memcmp(s, "path,task,", 10) == 0)
                snprintf(P->why, sizeof P->why, "its columns are those of another version of qalign");
            else snprintf(P->why, sizeof P->why, "its first line is not qalign's CSV header");
            return 0;
        }
        size_t pos = (size_t)(nl - s) + 1;
        P->good = pos;
        Fields f = {0};
        int term, rc;
        while ((rc = csv_record(s, len, &pos, ',', &f, &term)) == 1) {
            if (!term) { P->torn = 1; break; }
            P->good = pos;
            ResultRow r;
            if (f.n == 1 && field(&f, 0)[0] == 0) continue; /* blank line */
            if ((fmt == RESULTS_CSV_ANSWERS ? csv_to_answer_row(&f, &r) : csv_to_row(&f, &r)) != 0) { P->bad++; continue; }
            P->rows++;
            if (into && rowset_add(into, &r) != 0) { fields_free(&f); return -1; }
        }
        fields_free(&f);
        return rc < 0 ? -1 : 0;
    }
    Buf text = {0};
    size_t pos = 0;
    while (pos < len) {
        const char *nl = memchr(s + pos, '\n', len - pos);
        if (!nl) { /* a row torn by a kill starts as ours do */
            size_t L = len - pos, k = strlen(JSON_ROW_START), w = 0;
            while (w < L && strchr(" \t\r", s[pos + w])) w++;
            if (w == L || memcmp(s + pos, JSON_ROW_START, L < k ? L : k) == 0) P->torn = 1;
            else P->bad++, P->ours = -1;
            break;
        }
        size_t L = (size_t)(nl - (s + pos));
        const char *line = s + pos;
        pos += L + 1;
        P->good = pos;
        size_t t = L;
        while (t && (line[t - 1] == '\r' || line[t - 1] == ' ')) t--;
        if (t == 0) continue;
        ResultRow r;
        if (json_to_row(line, t, &text, &r) != 0) { P->bad++; continue; }
        P->rows++;
        if (into && rowset_add(into, &r) != 0) { buf_free(&text); return -1; }
    }
    buf_free(&text);
    if (P->ours < 0) { /* an unterminated last line that is not the start of a row */
        P->ours = 0;
        snprintf(P->why, sizeof P->why, "its last line is not a result row");
    } else if (P->rows == 0 && P->bad > 0) {
        P->ours = 0;
        snprintf(P->why, sizeof P->why, "no line is a result row");
    }
    return 0;
}

int results_parse(const char *data, size_t len, ResultsFormat fmt, RowSet *into, int *torn, size_t *bad, char *err,
                  size_t errlen) {
    Parsed P;
    if (parse_results(data ? data : "", len, fmt, into, &P) != 0) return fail(err, errlen, "out of memory");
    if (torn) *torn = P.torn;
    if (bad) *bad = P.bad;
    if (!P.ours) return fail(err, errlen, "not a qalign results %s (%s)", fmt != RESULTS_JSONL ? "CSV" : "JSONL", P.why);
    return 0;
}

int results_read(const char *path, ResultsFormat fmt, RowSet *into, int *torn, size_t *bad, char *err,
                 size_t errlen) {
    Buf b = {0};
    int rc = read_file(path, &b, err, errlen);
    if (torn) *torn = 0;
    if (bad) *bad = 0;
    if (rc == 1) rc = 0;
    else if (rc == 0) {
        char e2[256];
        if (results_parse(b.p, b.n, fmt, into, torn, bad, e2, sizeof e2) != 0) rc = fail(err, errlen, "%s: %s", path, e2);
    }
    buf_free(&b);
    return rc;
}

struct ResultsFile {
    int fd;
    ResultsFormat fmt;
    char *path;
};

ResultsFile *results_open(const char *path, ResultsFormat fmt, RowSet *previous, size_t *dropped, char *err,
                          size_t errlen) {
    if (dropped) *dropped = 0;
    ResultsFile *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        fail(err, errlen, "out of memory");
        return NULL;
    }
    f->fmt = fmt;
    int need_header = fmt != RESULTS_JSONL;
    const char *CSV_HEADER = fmt == RESULTS_CSV_ANSWERS ? ANSWER_CSV_HEADER : CSV_HEADERS[0];
    struct stat st;
    if (stat(path, &st) == 0 && (S_ISBLK(st.st_mode) || S_ISSOCK(st.st_mode))) { /* refused before it is opened */
        f->fd = -1;
        fail(err, errlen, "%s is %s: rows are appended to a regular file, or written into a FIFO or character device",
             path, file_kind(st.st_mode));
        goto bad;
    }
    /* O_NONBLOCK: a FIFO without a reader must not hang the open; cleared below */
    f->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK, 0644);
    if (f->fd < 0 && (errno == EACCES || errno == ENXIO || errno == EISDIR))
        f->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK, 0644); /* e.g. /dev/stdout */
    if (f->fd < 0 || fstat(f->fd, &st) != 0) {
        fail(err, errlen, "cannot open %s for appending: %s", path, strerror(errno));
        goto bad;
    }
    fcntl(f->fd, F_SETFL, fcntl(f->fd, F_GETFL) & ~O_NONBLOCK);
    if (S_ISDIR(st.st_mode)) {
        fail(err, errlen, "%s is a directory", path);
        goto bad;
    }
    if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode) && !S_ISCHR(st.st_mode)) { /* a block device, a socket */
        fail(err, errlen, "%s is %s: rows are appended to a regular file, or written into a FIFO or character device",
             path, file_kind(st.st_mode));
        goto bad;
    }
    if (S_ISREG(st.st_mode)) { /* what is there must be ours: then append after its last complete row */
        Buf b = {0};
        if (lseek(f->fd, 0, SEEK_SET) < 0 || read_fd_all(f->fd, &b, 0, 0) != 0) {
            fail(err, errlen, "cannot read %s: %s", path, strerror(errno));
            buf_free(&b);
            goto bad;
        }
        Parsed P;
        if (parse_results(b.p ? b.p : "", b.n, fmt, previous, &P) != 0) {
            buf_free(&b);
            fail(err, errlen, "out of memory");
            goto bad;
        }
        if (!P.ours) {
            buf_free(&b);
            fail(err, errlen, "%s is not a qalign results %s (%s): refusing to append to it (give a new file)", path,
                 fmt != RESULTS_JSONL ? "CSV" : "JSONL", P.why);
            goto bad;
        }
        if (P.torn) {
            if (ftruncate(f->fd, (off_t)P.good) != 0) {
                fail(err, errlen, "cannot cut the torn last row of %s: %s", path, strerror(errno));
                buf_free(&b);
                goto bad;
            }
            if (dropped) *dropped = b.n - P.good;
        }
        if (P.good > 0) need_header = 0;
        buf_free(&b);
    } else if (previous) {
        fail(err, errlen, "%s is not a regular file: --resume reads the rows already written", path);
        goto bad;
    }
    if (need_header && write_all(f->fd, CSV_HEADER, strlen(CSV_HEADER)) != 0) {
        fail(err, errlen, "cannot write %s: %s", path, strerror(errno));
        goto bad;
    }
    if (need_header && fsync(f->fd) != 0 && errno != EINVAL && errno != EROFS) {
        fail(err, errlen, "cannot sync %s: %s", path, strerror(errno));
        goto bad;
    }
    return f;
bad:
    if (f->fd >= 0) close(f->fd);
    free(f->path);
    free(f);
    return NULL;
}

int results_write(ResultsFile *f, const ResultRow *row, char *err, size_t errlen) {
    Buf b = {0};
    format_row(&b, f->fmt, row);
    if (b.oom) {
        buf_free(&b);
        return fail(err, errlen, "out of memory");
    }
    int rc = 0;
    if (write_all(f->fd, b.p, b.n) != 0) rc = fail(err, errlen, "cannot write %s: %s", f->path, strerror(errno));
    else if (fsync(f->fd) != 0 && errno != EINVAL && errno != EROFS)
        rc = fail(err, errlen, "cannot sync %s: %s", f->path, strerror(errno));
    buf_free(&b);
    return rc;
}

int results_close(ResultsFile *f, char *err, size_t errlen) {
    if (!f) return 0;
    int rc = 0;
    if (close(f->fd) != 0) rc = fail(err, errlen, "cannot close %s: %s", f->path, strerror(errno));
    free(f->path);
    free(f);
    return rc;
}

/* ======================================================================================
 * 4. evaluation */

static int any_nan(const double *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 1;
    return 0;
}

double stats_plcc(const double *x, const double *y, size_t n) {
    if (n < 2 || any_nan(x, n) || any_nan(y, n)) return NAN;
    double mx = 0, my = 0;
    for (size_t i = 0; i < n; i++) { mx += x[i]; my += y[i]; }
    mx /= (double)n;
    my /= (double)n;
    double sxx = 0, syy = 0, sxy = 0;
    for (size_t i = 0; i < n; i++) {
        double a = x[i] - mx, b = y[i] - my;
        sxx += a * a;
        syy += b * b;
        sxy += a * b;
    }
    if (sxx <= 0 || syy <= 0) return NAN;
    double r = sxy / sqrt(sxx * syy);
    return r > 1 ? 1 : r < -1 ? -1 : r;
}

typedef struct {
    double v;
    size_t i;
} VI;
static int cmp_vi(const void *a, const void *b) {
    const VI *p = a, *q = b;
    if (p->v < q->v) return -1;
    if (p->v > q->v) return 1;
    return p->i < q->i ? -1 : p->i > q->i;
}

int stats_rank(const double *x, size_t n, double *rank) {
    VI *t = malloc((n ? n : 1) * sizeof *t);
    if (!t) return -1;
    for (size_t i = 0; i < n; i++) t[i] = (VI){x[i], i};
    qsort(t, n, sizeof *t, cmp_vi);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && t[j].v == t[i].v) j++;
        double r = 0.5 * (double)(i + 1 + j); /* mean of the 1-based ranks i+1 .. j */
        for (size_t k = i; k < j; k++) rank[t[k].i] = r;
        i = j;
    }
    free(t);
    return 0;
}

double stats_srcc(const double *x, const double *y, size_t n) {
    if (n < 2 || any_nan(x, n) || any_nan(y, n)) return NAN;
    double *rx = malloc(n * sizeof *rx), *ry = malloc(n * sizeof *ry);
    double r = NAN;
    if (rx && ry && stats_rank(x, n, rx) == 0 && stats_rank(y, n, ry) == 0) r = stats_plcc(rx, ry, n);
    free(rx);
    free(ry);
    return r;
}

typedef struct {
    double x, y;
} XY;
static int cmp_xy(const void *a, const void *b) {
    const XY *p = a, *q = b;
    if (p->x != q->x) return p->x < q->x ? -1 : 1;
    if (p->y != q->y) return p->y < q->y ? -1 : 1;
    return 0;
}

/* Merge sort of y counting strict inversions (pairs i < j with y[i] > y[j]). */
static uint64_t sort_count(double *y, double *tmp, size_t n) {
    if (n < 2) return 0;
    size_t h = n / 2;
    uint64_t s = sort_count(y, tmp, h) + sort_count(y + h, tmp, n - h);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        if (y[j] < y[i]) {
            s += h - i;
            tmp[k++] = y[j++];
        } else tmp[k++] = y[i++];
    }
    while (i < h) tmp[k++] = y[i++];
    while (j < n) tmp[k++] = y[j++];
    memcpy(y, tmp, n * sizeof *y);
    return s;
}

static uint64_t tie_pairs_run(uint64_t t) { return t * (t - 1) / 2; }

double stats_krcc(const double *x, const double *y, size_t n) {
    if (n < 2 || any_nan(x, n) || any_nan(y, n)) return NAN;
    XY *p = malloc(n * sizeof *p);
    double *ys = malloc(n * sizeof *ys), *tmp = malloc(n * sizeof *tmp);
    double r = NAN;
    if (!p || !ys || !tmp) goto out;
    for (size_t i = 0; i < n; i++) p[i] = (XY){x[i], y[i]};
    qsort(p, n, sizeof *p, cmp_xy);
    uint64_t n0 = (uint64_t)n * (n - 1) / 2, n1 = 0, n2 = 0, n3 = 0;
    for (size_t i = 0; i < n;) { /* ties in x, and in (x, y) */
        size_t j = i + 1;
        while (j < n && p[j].x == p[i].x) j++;
        n1 += tie_pairs_run(j - i);
        for (size_t a = i; a < j;) {
            size_t b = a + 1;
            while (b < j && p[b].y == p[a].y) b++;
            n3 += tie_pairs_run(b - a);
            a = b;
        }
        i = j;
    }
    for (size_t i = 0; i < n; i++) ys[i] = p[i].y;
    uint64_t swaps = sort_count(ys, tmp, n); /* = discordant pairs */
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && ys[j] == ys[i]) j++;
        n2 += tie_pairs_run(j - i);
        i = j;
    }
    if (n0 == n1 || n0 == n2) goto out;
    /* concordant - discordant = (pairs tied in neither) - 2 * discordant */
    double num = (double)(int64_t)(n0 - n1 - n2 + n3) - 2.0 * (double)swaps;
    r = num / sqrt((double)(n0 - n1) * (double)(n0 - n2));
    if (r > 1) r = 1;
    if (r < -1) r = -1;
out:
    free(p);
    free(ys);
    free(tmp);
    return r;
}

struct Labels {
    char **path;   /* normalised */
    double *mos;
    size_t n, cap;
    StrMap by_path;   /* path -> index (last wins) */
    StrMap by_name;   /* basename -> index, or -2 when several labels share it */
    size_t bad_rows;
    char first_bad[128];   /* why the first of them was left out */
};

static int ieq(const char *a, const char *b) {
    while (*a && *b && tolower((unsigned char)*a) == tolower((unsigned char)*b)) a++, b++;
    return !*a && !*b;
}

Labels *labels_load(const char *path, char *err, size_t errlen) {
    Buf b = {0};
    int rc = read_file(path, &b, err, errlen);
    if (rc == 1) {
        fail(err, errlen, "labels file %s: %s", path, strerror(ENOENT));
        return NULL;
    }
    if (rc != 0) return NULL;
    Labels *l = calloc(1, sizeof *l);
    if (!l) {
        buf_free(&b);
        fail(err, errlen, "out of memory");
        return NULL;
    }
    const char *s = b.p ? b.p : "";
    size_t len = b.n, pos = 0;
    if (len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) pos = 3; /* UTF-8 BOM */
    /* delimiter: the first of , \t ; on the first line */
    char delim = ',';
    const char *nl = memchr(s + pos, '\n', len - pos);
    size_t fl = nl ? (size_t)(nl - (s + pos)) : len - pos;
    if (!memchr(s + pos, ',', fl)) {
        if (memchr(s + pos, '\t', fl)) delim = '\t';
        else if (memchr(s + pos, ';', fl)) delim = ';';
    }
    Fields f = {0};
    int term, first = 1, r;
    size_t pc = 0, mc = 1;
    size_t line = 0, next_line = 1;
    while ((r = csv_record(s, len, &pos, delim, &f, &term)) == 1) {
        line = next_line;
        for (size_t i = 0; i < f.text.n; i++) next_line += f.text.p[i] == '\n'; /* quoted newlines */
        next_line++;
        if (f.n == 1 && !field(&f, 0)[0]) continue;
        if (first) {
            first = 0;
            double v;
            if (f.n < 2 || parse_double(field(&f, 1), &v) != 0) { /* a header */
                static const char *const pn[] = {"path", "file", "filename", "file_name", "name", "image", "image_name",
                                                 "img", "video", "video_name", "image_path", "video_path", "image_id",
                                                 "video_id", "filepath", NULL};
                static const char *const mn[] = {"mos", "dmos", "score", "mos_zscore", "label", "gt", "mean",
                                                 "rating", "quality", "value", NULL};
                int fp = -1, fm = -1;
                for (int a = 0; pn[a] && fp < 0; a++)
                    for (size_t i = 0; i < f.n; i++)
                        if (ieq(field(&f, i), pn[a])) { fp = (int)i; break; }
                for (int a = 0; mn[a] && fm < 0; a++)
                    for (size_t i = 0; i < f.n; i++)
                        if (ieq(field(&f, i), mn[a])) { fm = (int)i; break; }
                pc = fp >= 0 ? (size_t)fp : 0;
                mc = fm >= 0 ? (size_t)fm : 1;
                continue;
            }
        }
        double v;
        if (f.n <= pc || f.n <= mc || !field(&f, pc)[0] || parse_double(field(&f, mc), &v) != 0 || !isfinite(v)) {
            if (!l->bad_rows++) {
                if (f.n <= pc || f.n <= mc)
                    snprintf(l->first_bad, sizeof l->first_bad, "line %zu: %zu field%s, no column %zu", line, f.n,
                             f.n == 1 ? "" : "s", (pc > mc ? pc : mc) + 1);
                else if (!field(&f, pc)[0]) snprintf(l->first_bad, sizeof l->first_bad, "line %zu: no path", line);
                else
                    snprintf(l->first_bad, sizeof l->first_bad, "line %zu: the MOS '%.60s' is not a number", line,
                             field(&f, mc));
            }
            continue;
        }
        if (l->n == l->cap) {
            size_t nc = l->cap ? l->cap * 2 : 256;
            char **np = realloc(l->path, nc * sizeof *np);
            if (!np) { r = -1; break; }
            l->path = np;
            double *nm = realloc(l->mos, nc * sizeof *nm);
            if (!nm) { r = -1; break; }
            l->mos = nm;
            l->cap = nc;
        }
        char *p = path_normalize(field(&f, pc));
        if (!p) { r = -1; break; }
        l->path[l->n] = p;
        l->mos[l->n] = v;
        l->n++;
    }
    fields_free(&f);
    buf_free(&b);
    if (r < 0) {
        labels_free(l);
        fail(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < l->n; i++) {
        long same = strmap_get(&l->by_path, l->path[i], strlen(l->path[i]));
        if (same >= 0 && l->mos[same] != l->mos[i]) { /* one path, two labels: which would be used is a guess */
            fail(err, errlen, "labels file %s: %s has two different labels, %g and %g: keep one", path, l->path[i],
                 l->mos[same], l->mos[i]);
            labels_free(l);
            return NULL;
        }
        const char *bn = path_basename(l->path[i]);
        long prev = strmap_get(&l->by_name, bn, strlen(bn));
        if (strmap_put(&l->by_path, l->path[i], strlen(l->path[i]), (long)i) != 0 ||
            strmap_put(&l->by_name, bn, strlen(bn), prev >= 0 && strcmp(l->path[prev], l->path[i]) ? -2 :
                                                    prev == -2 ? -2 : (long)i) != 0) {
            labels_free(l);
            fail(err, errlen, "out of memory");
            return NULL;
        }
    }
    if (l->n == 0) {
        if (l->bad_rows)
            fail(err, errlen, "labels file %s: no usable row of the form path,mos (%s)", path, l->first_bad);
        else fail(err, errlen, "labels file %s: no rows of the form path,mos", path);
        labels_free(l);
        return NULL;
    }
    return l;
}

size_t labels_skipped(const Labels *l, char *why, size_t whylen) {
    if (why && whylen) snprintf(why, whylen, "%s", l && l->bad_rows ? l->first_bad : "");
    return l ? l->bad_rows : 0;
}

void labels_free(Labels *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) free(l->path[i]);
    free(l->path);
    free(l->mos);
    strmap_free(&l->by_path);
    strmap_free(&l->by_name);
    free(l);
}

size_t labels_count(const Labels *l) { return l ? l->n : 0; }

int eval_run(const Labels *l, const char *const *paths, const double *scores, size_t n, EvalResult *out, char *err,
             size_t errlen) {
    memset(out, 0, sizeof *out);
    out->srcc = out->plcc = out->krcc = NAN;
    out->n_results = n;
    out->n_labels = l->n;
    double *x = malloc((n ? n : 1) * sizeof *x), *y = malloc((n ? n : 1) * sizeof *y);
    char **norm = calloc(n ? n : 1, sizeof *norm);
    long *cand = malloc((n ? n : 1) * sizeof *cand);
    int *how = malloc((n ? n : 1) * sizeof *how);       /* 0 none, 1 path, 2 suffix, 3 name */
    long *claims = calloc(l->n ? l->n : 1, sizeof *claims);
    StrMap names = {0};
    int rc = -1;
    if (!x || !y || !norm || !cand || !how || !claims) goto oom;
    for (size_t i = 0; i < n; i++) {
        if (!(norm[i] = path_normalize(paths[i]))) goto oom;
        const char *bn = path_basename(norm[i]);
        long c = strmap_get(&names, bn, strlen(bn));
        if (strmap_put(&names, bn, strlen(bn), c < 0 ? 1 : c + 1) != 0) goto oom;
    }
    for (size_t i = 0; i < n; i++) {
        const char *p = norm[i];
        cand[i] = strmap_get(&l->by_path, p, strlen(p));
        how[i] = cand[i] >= 0;
        /* the longest tail "dir/.../name" of the path that is a label's path */
        for (const char *t = strchr(p, '/'); cand[i] < 0 && t; t = strchr(t + 1, '/'))
            if (t[1] && (cand[i] = strmap_get(&l->by_path, t + 1, strlen(t + 1))) >= 0) how[i] = 2;
        if (cand[i] < 0) { /* the same file name, when that name is unique on both sides */
            const char *bn = path_basename(p);
            long lj = strmap_get(&l->by_name, bn, strlen(bn));
            if (lj >= 0 && strmap_get(&names, bn, strlen(bn)) == 1) {
                cand[i] = lj;
                how[i] = 3;
            } else if (lj == -2 || (lj >= 0 && strmap_get(&names, bn, strlen(bn)) > 1)) how[i] = -1;
        }
        if (cand[i] >= 0) claims[cand[i]]++;
    }
    for (size_t i = 0; i < n; i++) {
        if (how[i] < 0) { out->ambiguous++; continue; }
        if (how[i] == 0) continue;
        if (how[i] > 1 && claims[cand[i]] > 1) { /* several results claim one label: none gets it */
            out->ambiguous++;
            continue;
        }
        if (how[i] == 1) out->by_path++;
        else if (how[i] == 2) out->by_suffix++;
        else out->by_name++;
        x[out->matched] = scores[i];
        y[out->matched] = l->mos[cand[i]];
        out->matched++;
    }
    out->srcc = stats_srcc(x, y, out->matched);
    out->plcc = stats_plcc(x, y, out->matched);
    out->krcc = stats_krcc(x, y, out->matched);
    rc = 0;
    goto done;
oom:
    fail(err, errlen, "out of memory");
done:
    if (norm)
        for (size_t i = 0; i < n; i++) free(norm[i]);
    free(norm);
    free(x);
    free(y);
    free(cand);
    free(how);
    free(claims);
    strmap_free(&names);
    return rc;
}

void eval_print(FILE *f, const EvalResult *r, const char *labels_path) {
    fprintf(f, "eval: %zu of %zu results matched the %zu labels in %s (%zu by path, %zu by path tail, %zu by file name",
            r->matched, r->n_results, r->n_labels, labels_path ? labels_path : "the labels file", r->by_path,
            r->by_suffix, r->by_name);
    if (r->ambiguous) fprintf(f, "; %zu left out: ambiguous", r->ambiguous);
    fprintf(f, ")\n");
    if (isnan(r->srcc) || isnan(r->plcc) || isnan(r->krcc))
        fprintf(f, "eval: SRCC, PLCC, KRCC undefined (n = %zu): %s\n", r->matched,
                r->matched < 2 ? "fewer than 2 matched items" : "the scores or the labels are all equal");
    else
        fprintf(f, "eval: SRCC %.4f  PLCC %.4f  KRCC %.4f  (n = %zu)\n", r->srcc, r->plcc, r->krcc, r->matched);
}

/* ======================================================================================
 * 5. thumbnails and the report */

/* Area-average weights of output cells over input cells along one axis. */
typedef struct {
    int *start, *count;
    float *w;     /* per output cell, count weights */
    int maxc;
} Axis;

static int axis_make(Axis *a, int in, int out) {
    double scale = (double)in / out;
    a->maxc = (int)ceil(scale) + 2;
    a->start = malloc((size_t)out * sizeof(int));
    a->count = malloc((size_t)out * sizeof(int));
    a->w = malloc((size_t)out * (size_t)a->maxc * sizeof(float));
    if (!a->start || !a->count || !a->w) return -1;
    for (int o = 0; o < out; o++) {
        double x0 = o * scale, x1 = (o + 1) * scale;
        int s = (int)floor(x0), e = (int)ceil(x1);
        if (e > in) e = in;
        if (s >= e) s = e - 1;
        int c = 0;
        double tot = 0;
        for (int i = s; i < e && c < a->maxc; i++) {
            double lo = i > x0 ? i : x0, hi = i + 1 < x1 ? i + 1 : x1;
            double wgt = hi - lo;
            if (wgt <= 0) wgt = 0;
            a->w[(size_t)o * a->maxc + c++] = (float)wgt;
            tot += wgt;
        }
        for (int k = 0; k < c; k++) a->w[(size_t)o * a->maxc + k] = tot > 0 ? (float)(a->w[(size_t)o * a->maxc + k] / tot) : 1.0f / c;
        a->start[o] = s;
        a->count[o] = c;
    }
    return 0;
}
static void axis_free(Axis *a) {
    free(a->start);
    free(a->count);
    free(a->w);
}

int thumb_downscale(const Image *in, int max_side, Image *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    if (!in || !in->rgb || in->w < 1 || in->h < 1) return fail(err, errlen, "no image");
    if (max_side < 1) max_side = 1;
    int w = in->w, h = in->h, tw, th;
    if (w >= h) {
        tw = w < max_side ? w : max_side;
        th = (int)llround((double)h * tw / w);
    } else {
        th = h < max_side ? h : max_side;
        tw = (int)llround((double)w * th / h);
    }
    if (tw < 1) tw = 1;
    if (th < 1) th = 1;
    if (image_alloc(out, tw, th, err, errlen) != 0) return -1;
    if (tw == w && th == h) {
        memcpy(out->rgb, in->rgb, (size_t)w * h * 3);
        return 0;
    }
    Axis ax = {0}, ay = {0};
    float *tmp = malloc((size_t)h * tw * 3 * sizeof(float));
    int rc = -1;
    if (!tmp || axis_make(&ax, w, tw) != 0 || axis_make(&ay, h, th) != 0) {
        fail(err, errlen, "out of memory");
        goto out;
    }
    for (int y = 0; y < h; y++) {
        const uint8_t *row = in->rgb + (size_t)y * w * 3;
        float *t = tmp + (size_t)y * tw * 3;
        for (int o = 0; o < tw; o++) {
            float s0 = 0, s1 = 0, s2 = 0;
            const float *wt = ax.w + (size_t)o * ax.maxc;
            const uint8_t *p = row + (size_t)ax.start[o] * 3;
            for (int k = 0; k < ax.count[o]; k++, p += 3) {
                s0 += wt[k] * p[0];
                s1 += wt[k] * p[1];
                s2 += wt[k] * p[2];
            }
            t[o * 3] = s0;
            t[o * 3 + 1] = s1;
            t[o * 3 + 2] = s2;
        }
    }
    for (int o = 0; o < th; o++) {
        const float *wt = ay.w + (size_t)o * ay.maxc;
        uint8_t *dst = out->rgb + (size_t)o * tw * 3;
        for (int x = 0; x < tw * 3; x++) {
            float s = 0;
            for (int k = 0; k < ay.count[o]; k++) s += wt[k] * tmp[((size_t)(ay.start[o] + k) * tw * 3) + x];
            int v = (int)(s + 0.5f);
            dst[x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
    rc = 0;
out:
    if (rc != 0) image_free(out);
    axis_free(&ax);
    axis_free(&ay);
    free(tmp);
    return rc;
}

/* ---- baseline JPEG encoder ---- */

static const uint8_t JZZ[64] = { /* natural index of the k-th zigzag coefficient */
    0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,  12, 19, 26, 33, 40, 48,
    41, 34, 27, 20, 13, 6,  7,  14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23,
    30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63};
/* ITU-T T.81 Annex K tables */
static const uint8_t JQ_LUM[64] = {16, 11, 10, 16, 24,  40,  51,  61,  12, 12, 14, 19, 26,  58,  60,  55,
                                   14, 13, 16, 24, 40,  57,  69,  56,  14, 17, 22, 29, 51,  87,  80,  62,
                                   18, 22, 37, 56, 68,  109, 103, 77,  24, 35, 55, 64, 81,  104, 113, 92,
                                   49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99};
static const uint8_t JQ_CHR[64] = {17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
                                   24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
                                   99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
                                   99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99};
static const uint8_t JB_DC_LUM[16] = {0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0};
static const uint8_t JB_DC_CHR[16] = {0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0};
static const uint8_t JV_DC[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
static const uint8_t JB_AC_LUM[16] = {0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d};
static const uint8_t JV_AC_LUM[162] = {
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71,
    0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72,
    0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37,
    0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59,
    0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
    0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3,
    0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
    0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa};
static const uint8_t JB_AC_CHR[16] = {0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77};
static const uint8_t JV_AC_CHR[162] = {
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13, 0x22,
    0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1,
    0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36,
    0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58,
    0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
    0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a,
    0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba,
    0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
    0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa};

typedef struct {
    uint16_t code[256];
    uint8_t size[256];
} HuffCode;

/* Canonical codes (T.81 Annex C). */
static void huff_codes(HuffCode *h, const uint8_t bits[16], const uint8_t *vals) {
    memset(h, 0, sizeof *h);
    unsigned code = 0;
    int k = 0;
    for (int len = 1; len <= 16; len++) {
        for (int i = 0; i < bits[len - 1]; i++, k++) {
            h->code[vals[k]] = (uint16_t)code++;
            h->size[vals[k]] = (uint8_t)len;
        }
        code <<= 1;
    }
}

typedef struct {
    Buf *b;
    uint32_t acc;
    int n;
} BitW;

static void bw_put(BitW *w, unsigned code, int size) {
    w->acc = (w->acc << size) | (code & ((1u << size) - 1));
    w->n += size;
    while (w->n >= 8) {
        unsigned char byte = (unsigned char)(w->acc >> (w->n - 8));
        buf_addc(w->b, (char)byte);
        if (byte == 0xFF) buf_addc(w->b, 0);
        w->n -= 8;
    }
    w->acc &= (1u << w->n) - 1;
}

static int bit_size(int v) {
    unsigned a = (unsigned)(v < 0 ? -v : v);
    int n = 0;
    while (a) { n++; a >>= 1; }
    return n;
}

static void enc_block(BitW *w, const float blk[64], const float qdiv[64], int *dc_prev, const HuffCode *dc,
                      const HuffCode *ac) {
    static float C[8][8];
    static int init = 0;
    if (!init) {
        for (int u = 0; u < 8; u++)
            for (int x = 0; x < 8; x++)
                C[u][x] = (float)((u == 0 ? sqrt(0.125) : 0.5) * cos((2 * x + 1) * u * 3.14159265358979323846 / 16.0));
        init = 1;
    }
    float t[64], f[64];
    for (int y = 0; y < 8; y++) /* rows */
        for (int u = 0; u < 8; u++) {
            float s = 0;
            for (int x = 0; x < 8; x++) s += C[u][x] * blk[y * 8 + x];
            t[y * 8 + u] = s;
        }
    for (int u = 0; u < 8; u++) /* columns */
        for (int v = 0; v < 8; v++) {
            float s = 0;
            for (int y = 0; y < 8; y++) s += C[v][y] * t[y * 8 + u];
            f[v * 8 + u] = s;
        }
    int q[64];
    for (int k = 0; k < 64; k++) {
        float v = f[JZZ[k]] / qdiv[JZZ[k]];
        q[k] = (int)(v < 0 ? v - 0.5f : v + 0.5f);
    }
    int diff = q[0] - *dc_prev;
    *dc_prev = q[0];
    int s = bit_size(diff);
    bw_put(w, dc->code[s], dc->size[s]);
    if (s) bw_put(w, (unsigned)(diff < 0 ? diff + (1 << s) - 1 : diff), s);
    int run = 0;
    for (int k = 1; k < 64; k++) {
        if (q[k] == 0) { run++; continue; }
        while (run > 15) {
            bw_put(w, ac->code[0xF0], ac->size[0xF0]);
            run -= 16;
        }
        s = bit_size(q[k]);
        int sym = (run << 4) | s;
        bw_put(w, ac->code[sym], ac->size[sym]);
        bw_put(w, (unsigned)(q[k] < 0 ? q[k] + (1 << s) - 1 : q[k]), s);
        run = 0;
    }
    if (run) bw_put(w, ac->code[0], ac->size[0]);
}

static void put16(Buf *b, unsigned v) {
    buf_addc(b, (char)(v >> 8));
    buf_addc(b, (char)(v & 255));
}

int jpeg_encode(const Image *img, int quality, uint8_t **out, size_t *len, char *err, size_t errlen) {
    *out = NULL;
    *len = 0;
    if (!img || !img->rgb || img->w < 1 || img->h < 1 || img->w > 65535 || img->h > 65535)
        return fail(err, errlen, "jpeg_encode: bad image size");
    if (quality < 1) quality = 1;
    if (quality > 100) quality = 100;
    int scale = quality < 50 ? 5000 / quality : 200 - 2 * quality;
    uint8_t ql[64], qc[64];
    float dl[64], dcq[64];
    for (int i = 0; i < 64; i++) {
        int a = (JQ_LUM[i] * scale + 50) / 100, c = (JQ_CHR[i] * scale + 50) / 100;
        ql[i] = (uint8_t)(a < 1 ? 1 : a > 255 ? 255 : a);
        qc[i] = (uint8_t)(c < 1 ? 1 : c > 255 ? 255 : c);
        dl[i] = ql[i];
        dcq[i] = qc[i];
    }
    Buf b = {0};
    static const uint8_t head[] = {0xFF, 0xD8, 0xFF, 0xE0, 0, 16, 'J', 'F', 'I', 'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0};
    buf_add(&b, head, sizeof head);
    buf_add(&b, "\xFF\xDB", 2);
    put16(&b, 2 + 2 * 65);
    buf_addc(&b, 0);
    for (int k = 0; k < 64; k++) buf_addc(&b, (char)ql[JZZ[k]]);
    buf_addc(&b, 1);
    for (int k = 0; k < 64; k++) buf_addc(&b, (char)qc[JZZ[k]]);
    buf_add(&b, "\xFF\xC0", 2);
    put16(&b, 17);
    buf_addc(&b, 8);
    put16(&b, (unsigned)img->h);
    put16(&b, (unsigned)img->w);
    buf_addc(&b, 3);
    static const uint8_t comps[9] = {1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1};
    buf_add(&b, comps, 9);
    buf_add(&b, "\xFF\xC4", 2);
    put16(&b, 2 + (17 + 12) * 2 + (17 + 162) * 2);
    const uint8_t *tb[4] = {JB_DC_LUM, JB_AC_LUM, JB_DC_CHR, JB_AC_CHR};
    const uint8_t *tv[4] = {JV_DC, JV_AC_LUM, JV_DC, JV_AC_CHR};
    const int tn[4] = {12, 162, 12, 162}, tid[4] = {0x00, 0x10, 0x01, 0x11};
    for (int t = 0; t < 4; t++) {
        buf_addc(&b, (char)tid[t]);
        buf_add(&b, tb[t], 16);
        buf_add(&b, tv[t], (size_t)tn[t]);
    }
    static const uint8_t sos[] = {0xFF, 0xDA, 0, 12, 3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0};
    buf_add(&b, sos, sizeof sos);
    HuffCode hdl, hal, hdc, hac;
    huff_codes(&hdl, JB_DC_LUM, JV_DC);
    huff_codes(&hal, JB_AC_LUM, JV_AC_LUM);
    huff_codes(&hdc, JB_DC_CHR, JV_DC);
    huff_codes(&hac, JB_AC_CHR, JV_AC_CHR);
    BitW w = {&b, 0, 0};
    int pdc[3] = {0, 0, 0};
    for (int by = 0; by < img->h; by += 8)
        for (int bx = 0; bx < img->w; bx += 8) {
            float Y[64], Cb[64], Cr[64];
            for (int y = 0; y < 8; y++)
                for (int x = 0; x < 8; x++) {
                    int sx = bx + x < img->w ? bx + x : img->w - 1, sy = by + y < img->h ? by + y : img->h - 1;
                    const uint8_t *p = img->rgb + ((size_t)sy * img->w + sx) * 3;
                    float r = p[0], g = p[1], bb = p[2];
                    Y[y * 8 + x] = 0.299f * r + 0.587f * g + 0.114f * bb - 128.0f;
                    Cb[y * 8 + x] = -0.168736f * r - 0.331264f * g + 0.5f * bb;
                    Cr[y * 8 + x] = 0.5f * r - 0.418688f * g - 0.081312f * bb;
                }
            enc_block(&w, Y, dl, &pdc[0], &hdl, &hal);
            enc_block(&w, Cb, dcq, &pdc[1], &hdc, &hac);
            enc_block(&w, Cr, dcq, &pdc[2], &hdc, &hac);
        }
    if (w.n) bw_put(&w, (1u << (8 - w.n)) - 1, 8 - w.n);
    buf_add(&b, "\xFF\xD9", 2);
    if (b.oom) {
        buf_free(&b);
        return fail(err, errlen, "out of memory");
    }
    *out = (uint8_t *)b.p;
    *len = b.n;
    return 0;
}

char *base64_encode(const uint8_t *d, size_t n) {
    static const char T[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t ol = 4 * ((n + 2) / 3);
    char *o = malloc(ol + 1), *p = o;
    if (!o) return NULL;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];
        *p++ = T[v >> 18];
        *p++ = T[(v >> 12) & 63];
        *p++ = T[(v >> 6) & 63];
        *p++ = T[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < n ? (uint32_t)d[i + 1] << 8 : 0);
        *p++ = T[v >> 18];
        *p++ = T[(v >> 12) & 63];
        *p++ = i + 1 < n ? T[(v >> 6) & 63] : '=';
        *p++ = '=';
    }
    *p = 0;
    return o;
}

/* ---- report ---- */

#define THUMB_SIDE 160
#define THUMB_QUALITY 82

typedef struct {
    char *path, *kind, *error;
    int frames;
    double score;
    double probs[APP_LEVELS];
    long long off;  /* in the spool, -1 = none */
    size_t len;
    int lazy;       /* decode the image file for a thumbnail when writing */
} REntry;

struct Report {
    char *path, *title;
    char *target;   /* the regular file the page replaces (path, or where its symbolic link points) */
    int direct_fd;  /* a FIFO or character device: written in place, no rename (-1: none) */
    FILE *spool;
    REntry *e;
    size_t n, cap;
};

/* A new file beside `target` (in its directory) under a random name, created with
 * O_EXCL | O_NOFOLLOW: never an existing file, never through a symbolic link someone put
 * there. Its name goes to *tmp (malloc'ed). The fd, or -1 with errno set. */
static int temp_beside(const char *target, char **tmp) {
    size_t tl = strlen(target) + 32;
    *tmp = malloc(tl);
    if (!*tmp) {
        errno = ENOMEM;
        return -1;
    }
    static unsigned long long counter;
    for (int attempt = 0; attempt < 100; attempt++) {
        unsigned long long rnd = 0;
        int ufd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (ufd >= 0) {
            if (read(ufd, &rnd, sizeof rnd) != (ssize_t)sizeof rnd) rnd = 0;
            close(ufd);
        }
        rnd ^= (unsigned long long)time(NULL) * 0x9E3779B97F4A7C15ull ^ (unsigned long long)getpid() << 32 ^ ++counter;
        snprintf(*tmp, tl, "%s.%016llx.tmp", target, rnd);
        int fd = open(*tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd >= 0 || errno != EEXIST) {
            if (fd < 0) {
                int e = errno;
                free(*tmp);
                *tmp = NULL;
                errno = e;
            }
            return fd;
        }
    }
    free(*tmp);
    *tmp = NULL;
    errno = EEXIST;
    return -1;
}


Report *report_new(const char *path, const char *title, char *err, size_t errlen) {
    Report *r = calloc(1, sizeof *r);
    if (!r || !(r->path = strdup(path)) || !(r->title = strdup(title ? title : "qalign"))) {
        if (r) { free(r->path); free(r); }
        fail(err, errlen, "out of memory");
        return NULL;
    }
    r->direct_fd = -1;
    /* The page is written at the end to a new temporary file beside the target (random name,
     * O_EXCL | O_NOFOLLOW), then renamed over it. A symbolic link is followed once, here: its
     * target is replaced, the link stays. A FIFO or a character device is written in place
     * (opened now: a FIFO needs its reader already); anything else that is not a regular file
     * is refused. Whether the directory takes a new file is found out now, rather than after
     * every input was scored. */
    struct stat st, lst;
    const char *target = path;
    char *resolved = NULL;
    int exists = stat(path, &st) == 0; /* (through symbolic links: /dev/stdout is one) */
    if (!(exists && (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode))) && lstat(path, &lst) == 0 && S_ISLNK(lst.st_mode)) {
        if (!(resolved = realpath(path, NULL))) {
            fail(err, errlen, "cannot write the report %s: it is a symbolic link to %s", path,
                 errno == ENOENT ? "a file that does not exist" : strerror(errno));
            report_free(r);
            return NULL;
        }
        target = resolved;
    }
    if (exists && (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode))) {
        r->direct_fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (r->direct_fd < 0) {
            fail(err, errlen, "cannot write the report %s: %s", path,
                 errno == ENXIO ? "a FIFO that nobody reads (start its reader first)" : strerror(errno));
            free(resolved);
            report_free(r);
            return NULL;
        }
        fcntl(r->direct_fd, F_SETFL, fcntl(r->direct_fd, F_GETFL) & ~O_NONBLOCK);
    } else if (exists && !S_ISREG(st.st_mode)) {
        fail(err, errlen, "cannot write the report %s: it is %s (a report replaces a regular file, or is written into a "
             "FIFO or character device)", path, file_kind(st.st_mode));
        free(resolved);
        report_free(r);
        return NULL;
    } else {
        char *tmp = NULL;
        int fd = temp_beside(target, &tmp);
        if (fd < 0) {
            fail(err, errlen, "cannot write the report %s: %s", path, strerror(errno));
            free(resolved);
            report_free(r);
            return NULL;
        }
        close(fd);
        unlink(tmp);
        free(tmp);
    }
    r->target = resolved ? resolved : strdup(path);
    if (!r->target) {
        fail(err, errlen, "out of memory");
        report_free(r);
        return NULL;
    }
    r->spool = tmpfile();
    if (!r->spool) {
        fail(err, errlen, "cannot create a temporary file for thumbnails: %s", strerror(errno));
        report_free(r);
        return NULL;
    }
    fcntl(fileno(r->spool), F_SETFD, FD_CLOEXEC);
    return r;
}

void report_free(Report *r) {
    if (!r) return;
    for (size_t i = 0; i < r->n; i++) {
        free(r->e[i].path);
        free(r->e[i].kind);
        free(r->e[i].error);
    }
    free(r->e);
    free(r->target);
    if (r->direct_fd >= 0) close(r->direct_fd);
    if (r->spool) fclose(r->spool);
    free(r->path);
    free(r->title);
    free(r);
}

/* Thumbnail JPEG of img. */
static int make_thumb(const Image *img, uint8_t **jpg, size_t *len, char *err, size_t errlen) {
    Image t;
    if (thumb_downscale(img, THUMB_SIDE, &t, err, errlen) != 0) return -1;
    int rc = jpeg_encode(&t, THUMB_QUALITY, jpg, len, err, errlen);
    image_free(&t);
    return rc;
}

int report_add(Report *r, const ResultRow *row, const Image *img, char *err, size_t errlen) {
    if (r->n == r->cap) {
        size_t nc = r->cap ? r->cap * 2 : 64;
        REntry *ne = realloc(r->e, nc * sizeof *ne);
        if (!ne) return fail(err, errlen, "out of memory");
        r->e = ne;
        r->cap = nc;
    }
    REntry *e = &r->e[r->n];
    memset(e, 0, sizeof *e);
    e->off = -1;
    e->path = xstrdup0(row->path ? row->path : "");
    e->kind = xstrdup0(row->kind);
    e->error = row_failed(row) ? xstrdup0(row->error) : NULL;
    e->frames = row->frames;
    e->score = row->score;
    double logits[APP_LEVELS];
    default_columns(row, e->probs, logits);
    if (!e->path || (row->kind && !e->kind) || (row_failed(row) && !e->error)) {
        free(e->path); free(e->kind); free(e->error);
        return fail(err, errlen, "out of memory");
    }
    r->n++;
    if (img && img->rgb) {
        uint8_t *jpg;
        size_t len;
        char terr[128];
        if (make_thumb(img, &jpg, &len, terr, sizeof terr) == 0) {
            if (fseeko(r->spool, 0, SEEK_END) == 0) {
                off_t off = ftello(r->spool);
                if (off >= 0 && fwrite(jpg, 1, len, r->spool) == len) {
                    e->off = (long long)off;
                    e->len = len;
                }
            }
            free(jpg);
        }
    } else if (!row->kind || strcmp(row->kind, "image") == 0) e->lazy = 1;
    return 0;
}

/* HTML text: escapes, invalid UTF-8 -> U+FFFD. */
static void html_text(Buf *b, const char *s) {
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    size_t n = strlen((const char *)p);
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        switch (c) {
        case '&': buf_adds(b, "&amp;"); i++; continue;
        case '<': buf_adds(b, "&lt;"); i++; continue;
        case '>': buf_adds(b, "&gt;"); i++; continue;
        case '"': buf_adds(b, "&quot;"); i++; continue;
        case '\'': buf_adds(b, "&#39;"); i++; continue;
        default: break;
        }
        if (c < 0x20 && c != '\t') { buf_adds(b, "\xEF\xBF\xBD"); i++; continue; }
        if (c < 0x80) { buf_addc(b, (char)c); i++; continue; }
        int L = utf8_len(p + i, n - i);
        if (L) { buf_add(b, p + i, (size_t)L); i += (size_t)L; }
        else { buf_adds(b, "\xEF\xBF\xBD"); i++; }
    }
}

static const Report *g_sort_report; /* qsort has no context argument */
static int cmp_entry(const void *a, const void *b) {
    const REntry *p = &g_sort_report->e[*(const size_t *)a], *q = &g_sort_report->e[*(const size_t *)b];
    if (p->score != q->score) {
        if (isnan(p->score)) return 1;
        if (isnan(q->score)) return -1;
        return p->score > q->score ? -1 : 1;
    }
    return strcmp(p->path, q->path);
}
static int cmp_entry_path(const void *a, const void *b) {
    return strcmp(g_sort_report->e[*(const size_t *)a].path, g_sort_report->e[*(const size_t *)b].path);
}

static const char REPORT_CSS[] =
    "*{box-sizing:border-box}"
    "body{font:14px/1.35 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f3f3f1;color:#222}"
    "header{padding:14px 22px;background:#fff;border-bottom:1px solid #ddd;position:sticky;top:0;z-index:1}"
    "h1{font-size:19px;margin:0 0 3px}.summary{margin:0;color:#555}"
    "#filter{margin-top:8px;padding:4px 8px;width:min(420px,100%);font:inherit}"
    "#gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(196px,1fr));gap:12px;padding:16px 22px}"
    ".item{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;overflow:hidden}"
    ".thumbbox{height:164px;display:flex;align-items:center;justify-content:center;background:#e9e9e6;border-radius:4px}"
    ".thumb{max-width:100%;max-height:160px;display:block}.thumb.broken{display:none}"
    ".nothumb{color:#888;font-size:12px}"
    ".head{display:flex;justify-content:space-between;align-items:baseline;margin-top:6px}"
    ".score{font-size:20px;font-weight:650}.rank{color:#999;font-size:12px}"
    ".path{font-size:12px;color:#444;word-break:break-all;margin:2px 0 4px}.meta{font-size:11px;color:#777}"
    ".bar-row{display:flex;align-items:center;gap:4px;font-size:11px;color:#555}"
    ".lvl{width:56px}.bar{flex:1;height:8px;background:#eee;border-radius:2px;overflow:hidden}"
    ".fill{display:block;height:100%}.pct{width:38px;text-align:right}"
    ".fill[data-level=excellent]{background:#2e7d32}.fill[data-level=good]{background:#7cb342}"
    ".fill[data-level=fair]{background:#f9a825}.fill[data-level=poor]{background:#ef6c00}"
    ".fill[data-level=bad]{background:#c62828}"
    "#errors{padding:0 22px 24px}#errors table{border-collapse:collapse;background:#fff;width:100%}"
    "#errors td,#errors th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top;font-size:13px}"
    "#errors td.path{word-break:break-all;width:40%}.hidden{display:none}";

/* No network, no external URL: thumbnails are data: URIs; the script only marks thumbnails
 * that failed to decode and filters by path. */
static const char REPORT_JS[] =
    "(function(){"
    "function mark(){var ok=0,bad=0;document.querySelectorAll('img.thumb').forEach(function(i){"
    "if(i.complete&&i.naturalWidth>0)ok++;else{bad++;i.classList.add('broken');"
    "var s=document.createElement('span');s.className='nothumb';s.textContent='no preview';i.parentNode.appendChild(s);}});"
    "document.body.setAttribute('data-thumbs-ok',ok);document.body.setAttribute('data-thumbs-broken',bad);}"
    "if(document.readyState==='complete')mark();else window.addEventListener('load',mark);"
    "var f=document.getElementById('filter');if(f)f.addEventListener('input',function(){var q=f.value.toLowerCase();"
    "document.querySelectorAll('.item,.error-row').forEach(function(e){"
    "e.classList.toggle('hidden',q!==''&&e.getAttribute('data-path').toLowerCase().indexOf(q)<0);});});"
    "})();";

static int emit_thumb(Buf *b, FILE *spool, REntry *e) {
    uint8_t *jpg = NULL;
    size_t len = 0;
    int own = 0;
    if (e->off >= 0) {
        jpg = malloc(e->len);
        if (jpg && (fseeko(spool, (off_t)e->off, SEEK_SET) != 0 || fread(jpg, 1, e->len, spool) != e->len)) {
            free(jpg);
            jpg = NULL;
        }
        len = e->len;
        own = 1;
    } else if (e->lazy) {
        Image img;
        char terr[64];
        if (image_load(e->path, &img, terr, sizeof terr) == 0) {
            if (make_thumb(&img, &jpg, &len, terr, sizeof terr) != 0) jpg = NULL;
            image_free(&img);
            own = 1;
        }
    }
    if (!jpg) {
        buf_printf(b, "<span class=\"nothumb\">%s</span>", e->kind && strcmp(e->kind, "image") ? "video" : "no preview");
        return 0;
    }
    char *b64 = base64_encode(jpg, len);
    if (own) free(jpg);
    if (!b64) return -1;
    buf_adds(b, "<img class=\"thumb\" alt=\"\" loading=\"eager\" src=\"data:image/jpeg;base64,");
    buf_adds(b, b64);
    buf_adds(b, "\">");
    free(b64);
    return 0;
}

int report_write(Report *r, const char *summary, char *err, size_t errlen) {
    size_t *ok = malloc((r->n ? r->n : 1) * sizeof *ok), *bad = malloc((r->n ? r->n : 1) * sizeof *bad);
    size_t nok = 0, nbad = 0;
    if (!ok || !bad) {
        free(ok);
        free(bad);
        return fail(err, errlen, "out of memory");
    }
    for (size_t i = 0; i < r->n; i++) {
        if (r->e[i].error) bad[nbad++] = i;
        else ok[nok++] = i;
    }
    g_sort_report = r;
    qsort(ok, nok, sizeof *ok, cmp_entry);
    qsort(bad, nbad, sizeof *bad, cmp_entry_path);
    char *tmp = NULL;
    FILE *f = NULL;
    int rc = -1;
    /* a FIFO / character device in place; else a new temporary file renamed over the target */
    int fd = r->direct_fd >= 0 ? dup(r->direct_fd) : temp_beside(r->target, &tmp);
    if (fd < 0 || !(f = fdopen(fd, "wb"))) {
        fail(err, errlen, "cannot write the report %s: %s", r->path, strerror(errno));
        if (fd >= 0) close(fd);
        if (tmp) remove(tmp);
        goto out;
    }
    Buf b = {0};
    buf_adds(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                 "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>");
    html_text(&b, r->title);
    buf_printf(&b, "</title><style>%s</style></head>\n<body data-items=\"%zu\" data-errors=\"%zu\">\n<header><h1>",
               REPORT_CSS, nok, nbad);
    html_text(&b, r->title);
    buf_adds(&b, "</h1><p class=\"summary\">");
    if (summary) html_text(&b, summary);
    else buf_printf(&b, "%zu scored, %zu failed", nok, nbad);
    buf_adds(&b, "</p><input id=\"filter\" type=\"search\" placeholder=\"filter by path\" aria-label=\"filter by path\">"
                 "</header>\n<main id=\"gallery\">\n");
    for (size_t k = 0; k < nok; k++) {
        REntry *e = &r->e[ok[k]];
        buf_printf(&b, "<figure class=\"item\" data-rank=\"%zu\" data-score=\"%.6f\" data-path=\"", k + 1, e->score);
        html_text(&b, e->path);
        buf_adds(&b, "\"><div class=\"thumbbox\">");
        if (emit_thumb(&b, r->spool, e) != 0) b.oom = 1;
        buf_printf(&b, "</div><figcaption><div class=\"head\"><span class=\"score\">%.3f</span>"
                       "<span class=\"rank\">#%zu</span></div><div class=\"path\" title=\"", e->score, k + 1);
        html_text(&b, e->path);
        buf_adds(&b, "\">");
        html_text(&b, path_basename(e->path));
        buf_adds(&b, "</div>");
        if (e->kind && strcmp(e->kind, "image") != 0)
            buf_printf(&b, "<div class=\"meta\">%s, %d frame%s</div>", strcmp(e->kind, "video") == 0 ? "video" : "frames",
                       e->frames, e->frames == 1 ? "" : "s");
        buf_adds(&b, "<div class=\"bars\">");
        for (int i = 0; i < APP_LEVELS; i++) {
            double p = e->probs[i];
            if (!(p >= 0)) p = 0;
            if (p > 1) p = 1;
            buf_printf(&b, "<div class=\"bar-row\"><span class=\"lvl\">%s</span><span class=\"bar\"><span class=\"fill\" "
                           "data-level=\"%s\" data-p=\"%.6f\" style=\"width:%.1f%%\"></span></span>"
                           "<span class=\"pct\">%.1f%%</span></div>",
                       APP_LEVEL_NAMES[i], APP_LEVEL_NAMES[i], p, 100 * p, 100 * p);
        }
        buf_adds(&b, "</div></figcaption></figure>\n");
        if (b.n > (1u << 20)) { /* flush as we go: memory stays small */
            if (fwrite(b.p, 1, b.n, f) != b.n) b.oom = 1;
            b.n = 0;
        }
        if (b.oom) break;
    }
    buf_adds(&b, "</main>\n");
    if (nbad) {
        buf_printf(&b, "<section id=\"errors\"><h2>Failed (%zu)</h2><table><thead><tr><th>path</th><th>error</th></tr>"
                       "</thead><tbody>\n", nbad);
        for (size_t k = 0; k < nbad; k++) {
            REntry *e = &r->e[bad[k]];
            buf_adds(&b, "<tr class=\"error-row\" data-path=\"");
            html_text(&b, e->path);
            buf_adds(&b, "\"><td class=\"path\">");
            html_text(&b, e->path);
            buf_adds(&b, "</td><td class=\"msg\">");
            html_text(&b, e->error);
            buf_adds(&b, "</td></tr>\n");
        }
        buf_adds(&b, "</tbody></table></section>\n");
    }
    buf_printf(&b, "<script>%s</script>\n</body></html>\n", REPORT_JS);
    if (b.oom) {
        fail(err, errlen, "out of memory writing the report");
        buf_free(&b);
        fclose(f);
        if (tmp) remove(tmp);
        goto out;
    }
    if (fwrite(b.p, 1, b.n, f) != b.n || fflush(f) != 0 || (tmp && fsync(fileno(f)) != 0)) {
        fail(err, errlen, "cannot write %s: %s", tmp ? tmp : r->path, strerror(errno));
        buf_free(&b);
        fclose(f);
        if (tmp) remove(tmp);
        goto out;
    }
    buf_free(&b);
    if (fclose(f) != 0) {
        fail(err, errlen, "cannot write %s: %s", tmp ? tmp : r->path, strerror(errno));
        if (tmp) remove(tmp);
        goto out;
    }
    if (tmp && rename(tmp, r->target) != 0) {
        fail(err, errlen, "cannot rename %s to %s: %s", tmp, r->target, strerror(errno));
        remove(tmp);
        goto out;
    }
    rc = 0;
out:
    free(tmp);
    free(ok);
    free(bad);
    return rc;
}

/* ======================================================================================
 * 6. progress line */

void format_duration(double s, char *buf, size_t len) {
    if (!(s >= 0) || !isfinite(s)) {
        snprintf(buf, len, "?");
        return;
    }
    if (s < 60) snprintf(buf, len, "%.1f s", s);
    else if (s < 3600) {
        long t = lround(s);
        snprintf(buf, len, "%ld min %02ld s", t / 60, t % 60);
    } else {
        long t = lround(s / 60);
        snprintf(buf, len, "%ld h %02ld min", t / 60, t % 60);
    }
}

static int term_width(void) {
#ifdef TIOCGWINSZ
    struct winsize ws;
    if (ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 10) return ws.ws_col;
#endif
    const char *c = getenv("COLUMNS");
    int w = c ? atoi(c) : 0;
    return w > 10 ? w : 80;
}

static void progress_draw(Progress *p, int force) {
    if (!p->enabled) return;
    double t = now_seconds();
    if (!force && t - p->last_draw < 0.1) return;
    p->last_draw = t;
    size_t processed = p->done - p->skipped;
    size_t remaining = p->total > p->done ? p->total - p->done : 0;
    double el = t - p->t0;
    char line[512], rate[48] = "", eta[48] = "";
    if (remaining == 0) snprintf(rate, sizeof rate, "done");
    else if (processed > 0 && el > 0) {
        double r = (double)processed / el;
        if (r >= 1) snprintf(rate, sizeof rate, "%.2f items/s", r);
        else snprintf(rate, sizeof rate, "%.1f s/item", 1 / r);
        char d[32];
        format_duration((double)remaining / r, d, sizeof d);
        snprintf(eta, sizeof eta, "ETA %s", d);
    } else snprintf(rate, sizeof rate, "starting");
    int k = snprintf(line, sizeof line, "qalign: %zu/%zu (%.0f%%)  %s%s%s", p->done, p->total,
                     p->total ? 100.0 * (double)p->done / (double)p->total : 100.0, rate, eta[0] ? "  " : "", eta);
    if (p->failed && k > 0 && (size_t)k < sizeof line)
        k += snprintf(line + k, sizeof line - (size_t)k, "  %zu failed", p->failed);
    if (p->skipped && k > 0 && (size_t)k < sizeof line)
        k += snprintf(line + k, sizeof line - (size_t)k, "  %zu already done", p->skipped);
    if (p->current[0] && remaining && k > 0 && (size_t)k < sizeof line)
        snprintf(line + k, sizeof line - (size_t)k, "  %s", p->current);
    /* fit the terminal (cut on a UTF-8 boundary) so \r keeps working */
    size_t max = (size_t)term_width() - 1, L = strlen(line);
    if (L > max) {
        L = max;
        while (L > 0 && ((unsigned char)line[L] & 0xC0) == 0x80) L--;
        line[L] = 0;
    }
    fprintf(stderr, "\r%s\033[K", line);
    fflush(stderr);
    p->drawn_len = L;
}

void progress_start(Progress *p, size_t total, int quiet) {
    memset(p, 0, sizeof *p);
    p->total = total;
    const char *force = getenv("QALIGN_PROGRESS");
    p->enabled = !quiet && (force && *force ? atoi(force) != 0 : isatty(2));
    p->t0 = now_seconds();
    p->last_draw = -1;
}

void progress_begin_item(Progress *p, const char *path) {
    snprintf(p->current, sizeof p->current, "%s", path ? path_basename(path) : "");
    p->busy_t0 = now_seconds();
    progress_draw(p, p->done == 0);
}

void progress_update(Progress *p, int ok) {
    p->done++;
    if (!ok) p->failed++;
    progress_draw(p, p->done == p->total);
}

void progress_skip(Progress *p) {
    p->done++;
    p->skipped++; /* not counted in the rate: processed = done - skipped */
    progress_draw(p, p->done == p->total);
}

void progress_note(Progress *p, const char *fmt, ...) {
    va_list ap;
    if (p && p->enabled && p->drawn_len) fputs("\r\033[K", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (p && p->enabled && p->drawn_len) progress_draw(p, 1);
    fflush(stderr);
}

void progress_clear(Progress *p) {
    if (p && p->enabled && p->drawn_len) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        p->drawn_len = 0;
        p->last_draw = -1; /* redraw at the next update */
    }
}

void progress_finish(Progress *p) {
    if (!p->enabled) return;
    char d[32];
    format_duration(now_seconds() - p->t0, d, sizeof d);
    fprintf(stderr, "\r\033[Kqalign: %zu scored, %zu failed in %s\n", p->done - p->skipped - p->failed, p->failed, d);
    if (p->skipped) fprintf(stderr, "qalign: %zu skipped (already in the results file)\n", p->skipped);
    fflush(stderr);
}

/* ======================================================================================
 * 7. sink */

struct Sink {
    SinkOptions o;
    char *task, *scale, *model, *prompt, *levels; /* copies of the options' strings */
    char *question, *decoding;
    ResultsFile *csv, *jsonl;
    RowSet *prev_csv, *prev_jsonl;
    Report *report;
    Labels *labels;
    char **paths;      /* successful rows of this run, for eval */
    double *scores;
    size_t n, cap;
    char **seen;       /* every path added in this run (owned) */
    size_t nseen, capseen;
    StrMap seen_map;
    size_t rows, failed;
    EvalResult ev;
    int have_ev;
};

/* like, as this run would write it: the sink's task, scale, setup; a video's max_frames. */
static ResultRow sink_like(const Sink *s, const ResultRow *like) {
    ResultRow r = *like;
    r.task = s->task;
    r.scale = s->scale;
    r.setup = s->o.setup;
    r.max_frames = like->kind && strcmp(like->kind, "video") == 0 ? s->o.max_frames : 0;
    r.question = s->o.answers ? s->o.question : NULL;
    r.decoding = s->o.answers ? s->o.decoding : NULL;
    return r;
}

/* A row (read from a file) made the way this run makes its rows. */
static int row_is_this_runs(const Sink *s, const ResultRow *r) {
    ResultRow me = sink_like(s, r);
    return same_str(r->task, me.task) && same_str(r->scale, me.scale) && r->setup.model && me.setup.model &&
           same_str(r->setup.model, me.setup.model) && same_str(r->setup.prompt, me.setup.prompt) &&
           (me.question || same_str(r->setup.levels, me.setup.levels)) && !r->setup.pad == !me.setup.pad &&
           !r->setup.precise == !me.setup.precise && r->max_frames == me.max_frames && !r->question == !me.question &&
           same_str(r->question, me.question) && same_str(r->decoding, me.decoding);
}

/* In what row r (of the same path and task) was made otherwise than like: the number of
 * differences, and the first of them in *what. */
static int how_changed(const ResultRow *r, const ResultRow *like, const char **what) {
    int n = 0;
    *what = "kind";
#define DIFF(cond, name) if (cond) { if (!n++) *what = name; }
    DIFF(!r->setup.model || !same_str(r->setup.model, like->setup.model), "model");
    DIFF(!same_str(r->setup.prompt, like->setup.prompt), "prompt");
    DIFF(!like->question && !same_str(r->setup.levels, like->setup.levels), "levels");
    DIFF(!r->setup.pad != !like->setup.pad, "pad");
    DIFF(!r->setup.precise != !like->setup.precise, "precise");
    DIFF(!like->question && !same_str(r->scale, like->scale), "scale");
    DIFF(r->max_frames != like->max_frames, "max_frames");
    DIFF(!r->question != !like->question || !same_str(r->question, like->question), "question");
    DIFF(!same_str(r->decoding, like->decoding), "decoding");
#undef DIFF
    return n;
}

static ResumeState resume_in(const RowSet *set, const ResultRow *like, char *why, size_t whylen) {
    const ResultRow *r = rowset_find_like(set, like);
    if (r) {
        if (!same_input(r, like)) {
            fail(why, whylen, "%s", !same_str(r->kind, like->kind) ? "kind" : "frames");
            return RESUME_CHANGED;
        }
        if (row_failed(r)) {
            fail(why, whylen, "failed");
            return RESUME_FAILED;
        }
        return RESUME_DONE;
    }
    if (!(r = rowset_find(set, like->path, like->question ? NULL : like->task))) return RESUME_NEW;
    /* say how the closest of its rows (fewest differences, the latest of those) was made otherwise */
    const char *what = "kind", *w;
    int best = 1 << 30;
    for (long i = r - set->rows; i >= 0; i = set->earlier[i]) {
        int n = how_changed(&set->rows[i], like, &w);
        if (n < best) best = n, what = w;
    }
    fail(why, whylen, "%s", what);
    return RESUME_CHANGED;
}

ResumeState sink_resume(const Sink *s, const ResultRow *like, char *why, size_t whylen) {
    if (why && whylen) why[0] = 0;
    if (!s || !s->o.resume || !like->path) return RESUME_NEW;
    ResultRow me = sink_like(s, like);
    const RowSet *sets[2] = {s->prev_csv, s->prev_jsonl};
    for (int i = 0; i < 2; i++) {
        if (!sets[i]) continue;
        ResumeState st = resume_in(sets[i], &me, why, whylen);
        if (st != RESUME_DONE) return st;
    }
    if (!me.kind) { /* a row was reused for an input that cannot be read now: score it (an error) */
        fail(why, whylen, "kind");
        return RESUME_CHANGED;
    }
    return RESUME_DONE;
}

static char *copy_opt(const char *s, int *oom) {
    char *d = s ? strdup(s) : NULL;
    if (s && !d) *oom = 1;
    return d;
}

Sink *sink_open(const SinkOptions *o, char *err, size_t errlen) {
    Sink *s = calloc(1, sizeof *s);
    if (!s) {
        fail(err, errlen, "out of memory");
        return NULL;
    }
    s->o = *o;
    int oom = 0;
    s->task = copy_opt(o->task ? o->task : "quality", &oom);
    s->scale = copy_opt(o->scale ? o->scale : "1-5", &oom);
    s->model = copy_opt(o->setup.model, &oom);
    s->prompt = copy_opt(o->setup.prompt, &oom);
    s->levels = copy_opt(o->setup.levels, &oom);
    s->o.setup.model = s->model;
    s->o.setup.prompt = s->prompt;
    s->o.setup.levels = s->levels;
    s->question = copy_opt(o->question, &oom);
    s->decoding = copy_opt(o->decoding, &oom);
    s->o.question = s->question;
    s->o.decoding = s->decoding;
    s->o.csv_path = s->o.jsonl_path = s->o.report_path = s->o.title = NULL; /* not kept */
    if (oom) goto oom;
    if (o->resume && !o->csv_path && !o->jsonl_path) {
        fail(err, errlen, "--resume needs --csv FILE or --jsonl FILE (the results to continue)");
        goto bad;
    }
    if (o->labels_path && !(s->labels = labels_load(o->labels_path, err, errlen))) goto bad;
    if (o->report_path) { /* before the results files: an unwritable report fails with nothing written */
        char title[256];
        if (o->title) snprintf(title, sizeof title, "%s", o->title);
        else snprintf(title, sizeof title, "qalign %s", s->task);
        if (!(s->report = report_new(o->report_path, title, err, errlen))) goto bad;
    }
    size_t dropped;
    char e2[512];
    if (o->csv_path) {
        if (o->resume && !(s->prev_csv = rowset_new())) goto oom;
        if (!(s->csv = results_open(o->csv_path, o->answers ? RESULTS_CSV_ANSWERS : RESULTS_CSV, s->prev_csv, &dropped, e2, sizeof e2))) {
            fail(err, errlen, "%s", e2);
            goto bad;
        }
    }
    if (o->jsonl_path) {
        if (o->resume && !(s->prev_jsonl = rowset_new())) goto oom;
        if (!(s->jsonl = results_open(o->jsonl_path, RESULTS_JSONL, s->prev_jsonl, &dropped, e2, sizeof e2))) {
            fail(err, errlen, "%s", e2);
            goto bad;
        }
    }
    if (s->csv && s->jsonl && o->resume) {
        /* A run killed between the two writes of a row leaves it in one file only: copy it
         * over instead of scoring the input again, so both files are complete. */
        RowSet *sets[2] = {s->prev_csv, s->prev_jsonl};
        ResultsFile *files[2] = {s->jsonl, s->csv};
        for (int d = 0; d < 2; d++) {
            RowSet *from = sets[d], *to = sets[1 - d];
            size_t n0 = rowset_count(from);
            for (size_t i = 0; i < n0; i++) {
                const ResultRow *r = rowset_row(from, i);
                if (rowset_find_like(from, r) != r || row_failed(r) || !row_is_this_runs(s, r) || rowset_done_like(to, r))
                    continue;
                if (results_write(files[d], r, err, errlen) != 0) goto bad;
                if (rowset_add(to, r) != 0) goto oom;
            }
        }
    }
    return s;
oom:
    fail(err, errlen, "out of memory");
bad:
    sink_free(s);
    return NULL;
}

size_t sink_failures(const Sink *s) { return s ? s->failed : 0; }

static int sink_eval_push(Sink *s, const char *path, double score) {
    if (!s->labels) return 0;
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 256;
        char **np = realloc(s->paths, nc * sizeof *np);
        if (!np) return -1;
        s->paths = np;
        double *ns = realloc(s->scores, nc * sizeof *ns);
        if (!ns) return -1;
        s->scores = ns;
        s->cap = nc;
    }
    if (!(s->paths[s->n] = strdup(path))) return -1;
    s->scores[s->n++] = score;
    return 0;
}

/* A retry (resume) that fails as the row it retries did: that file gets no second row. */
static int same_failure_as_before(const RowSet *prev, const ResultRow *r) {
    const ResultRow *p = prev && row_failed(r) ? rowset_find_like(prev, r) : NULL;
    return p && row_failed(p) && same_str(p->error, r->error) && same_str(p->kind, r->kind);
}

int sink_add(Sink *s, const ResultRow *row, const Image *img, char *err, size_t errlen) {
    ResultRow r = *row;
    if (!r.task) r.task = s->task;
    if (!r.scale) r.scale = s->scale;
    if (!r.setup.model) r.setup = s->o.setup;
    if (!r.max_frames && r.kind && strcmp(r.kind, "video") == 0) r.max_frames = s->o.max_frames;
    int rc = 0;
    s->rows++;
    if (row_failed(&r)) s->failed++;
    if (s->csv && !same_failure_as_before(s->prev_csv, &r) && results_write(s->csv, &r, err, errlen) != 0) rc = -1;
    if (s->jsonl && !same_failure_as_before(s->prev_jsonl, &r) && results_write(s->jsonl, &r, err, errlen) != 0) rc = -1;
    if (s->report && report_add(s->report, &r, img, err, errlen) != 0) rc = -1;
    if (!row_failed(&r) && (!r.question || r.scored) && sink_eval_push(s, r.path, r.score) != 0)
        rc = fail(err, errlen, "out of memory");
    if (s->nseen == s->capseen) {
        size_t nc = s->capseen ? s->capseen * 2 : 256;
        char **ns = realloc(s->seen, nc * sizeof *ns);
        if (!ns) return fail(err, errlen, "out of memory");
        s->seen = ns;
        s->capseen = nc;
    }
    char *p = strdup(r.path);
    if (!p) return fail(err, errlen, "out of memory");
    s->seen[s->nseen++] = p;
    if (strmap_put(&s->seen_map, p, strlen(p), 1) != 0) return fail(err, errlen, "out of memory");
    return rc;
}

int sink_finish(Sink *s, FILE *msg, char *err, size_t errlen) {
    int rc = 0;
    char e2[512];
    /* rows of earlier runs, made the way this run makes them, that this run did not redo */
    const RowSet *p = s->prev_csv ? s->prev_csv : s->prev_jsonl;
    size_t n_prev_ok = 0, n_prev_bad = 0;
    for (size_t i = 0; p && i < rowset_count(p); i++) {
        const ResultRow *r = rowset_row(p, i);
        if (!row_is_this_runs(s, r) || rowset_find_like(p, r) != r) continue; /* another way, or superseded */
        if (strmap_get(&s->seen_map, r->path, strlen(r->path)) >= 0) continue;
        if (row_failed(r)) n_prev_bad++;
        else n_prev_ok++;
        if (s->report && report_add(s->report, r, NULL, e2, sizeof e2) != 0) rc = fail(err, errlen, "%s", e2);
        if (!row_failed(r) && sink_eval_push(s, r->path, r->score) != 0) rc = fail(err, errlen, "out of memory");
    }
    if (s->labels) {
        char why[256];
        size_t skipped = labels_skipped(s->labels, why, sizeof why);
        if (skipped && msg)
            fprintf(msg, "eval: %zu line%s of %s left out (%s)\n", skipped, skipped == 1 ? "" : "s", s->o.labels_path, why);
        if (eval_run(s->labels, (const char *const *)s->paths, s->scores, s->n, &s->ev, e2, sizeof e2) == 0) {
            s->have_ev = 1;
            if (msg) eval_print(msg, &s->ev, s->o.labels_path);
        } else rc = fail(err, errlen, "%s", e2);
    }
    if (s->report) {
        Buf sum = {0};
        size_t ok = s->rows - s->failed + n_prev_ok, bad = s->failed + n_prev_bad;
        buf_printf(&sum, "%zu scored, %zu failed - task %s, scale %s", ok, bad, s->task, s->scale);
        if (n_prev_ok + n_prev_bad) buf_printf(&sum, " - %zu from an earlier run", n_prev_ok + n_prev_bad);
        if (s->have_ev) {
            if (s->ev.matched >= 2 && !isnan(s->ev.srcc))
                buf_printf(&sum, " - SRCC %.4f, PLCC %.4f, KRCC %.4f on %zu labelled items", s->ev.srcc, s->ev.plcc,
                           s->ev.krcc, s->ev.matched);
            else buf_printf(&sum, " - %zu labelled items matched: correlations undefined", s->ev.matched);
        }
        if (report_write(s->report, sum.oom ? NULL : sum.p, e2, sizeof e2) != 0) rc = fail(err, errlen, "%s", e2);
        buf_free(&sum);
    }
    if (s->csv && results_close(s->csv, e2, sizeof e2) != 0) rc = fail(err, errlen, "%s", e2);
    s->csv = NULL;
    if (s->jsonl && results_close(s->jsonl, e2, sizeof e2) != 0) rc = fail(err, errlen, "%s", e2);
    s->jsonl = NULL;
    return rc;
}

int sink_eval(const Sink *s, EvalResult *out) {
    if (!s || !s->have_ev) return 0;
    *out = s->ev;
    return 1;
}

void sink_free(Sink *s) {
    if (!s) return;
    results_close(s->csv, NULL, 0);
    results_close(s->jsonl, NULL, 0);
    rowset_free(s->prev_csv);
    rowset_free(s->prev_jsonl);
    report_free(s->report);
    labels_free(s->labels);
    for (size_t i = 0; i < s->n; i++) free(s->paths[i]);
    free(s->paths);
    free(s->scores);
    for (size_t i = 0; i < s->nseen; i++) free(s->seen[i]);
    free(s->seen);
    strmap_free(&s->seen_map);
    free(s->task);
    free(s->scale);
    free(s->model);
    free(s->prompt);
    free(s->levels);
    free(s->question);
    free(s->decoding);
    free(s);
}
