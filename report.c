/* report.c - the HTML gallery (report.h): base64, spooled JPEG thumbnails, the page written
 * beside its target and renamed over it. The thumbnail's resampler and JPEG encoder are the
 * image library's (image.h). */
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
/* Base64 (RFC 4648, padded) */
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

/* ======================================================================================
 * The HTML report */

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
