/* inputs.c - what a run scores (inputs.h): content sniffing, the directory walk, @lists,
 * sorting and de-duplication, shards. */
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
