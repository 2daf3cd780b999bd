/* video.c - videos through ffmpeg (video.h): finding ffmpeg/ffprobe, spawning them without
 * a shell, probing, Q-Align's frame choice, reading the chosen frames as PPM. */
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
ssize_t read_child(int fd, void *buf, size_t n) {
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

/* The distinct values of idx[0..n) (checked: non-negative, non-decreasing), malloc'ed. */
static int64_t *unique_indices(const int64_t *idx, int64_t n, size_t *m, char *err, size_t errlen) {
    if (idx[0] < 0) return fail(err, errlen, "negative frame index"), NULL;
    for (int64_t i = 1; i < n; i++)
        if (idx[i] < idx[i - 1]) return fail(err, errlen, "frame indices must be non-decreasing"), NULL;
    int64_t *u = malloc((size_t)n * sizeof *u);
    if (!u) return fail(err, errlen, "out of memory"), NULL;
    *m = 0;
    for (int64_t i = 0; i < n; i++)
        if (*m == 0 || idx[i] != u[*m - 1]) u[(*m)++] = idx[i];
    return u;
}

/* ffmpeg's command line: the stream `map`, the select filter vf (mode VIDEO_READ_SELECT),
 * every frame as it is stored (no frame rate conversion), PPM frames on stdout. */
static void frames_argv(const char **argv, const char *in, const char *map, const char *vf, VideoReadMode mode) {
    int fpsm = ffmpeg_has_fps_mode(), a = 0;
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
        argv[a++] = vf;
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
}

/* Reading frames from ffmpeg's pipe and handing the wanted ones out. */
typedef struct {
    Reader *r;
    uint8_t *pix;           /* the current frame's RGB */
    size_t pixcap;
    size_t uk;              /* next unique index wanted */
    int64_t k;              /* next position in idx */
    int64_t decoded;        /* frames that came out of ffmpeg */
    int bad;                /* a truncated or malformed frame */
} FrameRead;

/* Read frames until the m wanted ones u[0..m) were delivered to fn (each as often as idx has
 * it) or the pipe ends (fr->uk < m then, fr->bad if a frame was cut). -1 with the child
 * stopped if memory ran out or fn refused a frame. */
static int deliver_frames(FrameRead *fr, Child *c, const int64_t *u, size_t m, const int64_t *idx, int64_t n,
                          VideoReadMode mode, VideoFrameFn fn, void *user, char *err, size_t errlen) {
    while (fr->uk < m) {
        int w, h;
        int hr = rd_ppm_header(fr->r, &w, &h);
        if (hr == 1) break;
        if (hr < 0) { fr->bad = 1; break; }
        size_t need = (size_t)w * (size_t)h * 3;
        if (need > fr->pixcap) {
            uint8_t *np = realloc(fr->pix, need);
            if (!np) {
                child_finish(c, 1, NULL, NULL, 0);
                return fail(err, errlen, "out of memory for a %dx%d frame", w, h);
            }
            fr->pix = np;
            fr->pixcap = need;
        }
        if (rd_read(fr->r, fr->pix, need) != need) { fr->bad = 1; break; }
        int64_t this_index;
        if (mode == VIDEO_READ_SELECT) this_index = u[fr->uk];
        else {
            this_index = fr->decoded;
            if (this_index != u[fr->uk]) {
                fr->decoded++;
                continue;
            }
        }
        fr->decoded++;
        Image img = {w, h, fr->pix};
        while (fr->k < n && idx[fr->k] == this_index) {
            char cerr[512] = "";
            if (fn && fn(user, fr->k, this_index, &img, cerr, sizeof cerr) != 0) {
                child_finish(c, 1, NULL, NULL, 0);
                return fail(err, errlen, "%s", cerr[0] ? cerr : "stopped");
            }
            fr->k++;
        }
        fr->uk++;
    }
    return 0;
}

/* After the pipe ended early: why (the child is finished here). */
static void frames_missing(const FrameRead *fr, Child *c, const char *path, const VideoInfo *vi, const int64_t *u,
                           size_t m, VideoReadMode mode, char *err, size_t errlen) {
    char msg[512];
    if (fr->r->error == ETIMEDOUT) {
        child_finish(c, 1, NULL, NULL, 0);
        fail(err, errlen, "ffmpeg gave no frame for %g s (after %zu of %zu): stopped it (--ffmpeg-timeout)",
             g_video_timeout, fr->uk, m);
        return;
    }
    int code = child_finish(c, fr->bad, path, msg, sizeof msg);
    if (code != 0 && !fr->bad) fail(err, errlen, "ffmpeg failed%s%s", msg[0] ? ": " : "", msg);
    else if (fr->bad)
        fail(err, errlen, "unexpected data from ffmpeg (truncated or malformed frame)%s%s", msg[0] ? ": " : "", msg);
    else if (mode == VIDEO_READ_SELECT)
        fail(err, errlen, "ffmpeg decoded only %zu of the %zu wanted frames (frame %lld missing; the stream has "
                          "fewer decodable frames than its %lld packets)",
             fr->uk, m, (long long)u[fr->uk], vi ? (long long)vi->frame_count : -1LL);
    else
        fail(err, errlen, "the video ended after %lld decoded frames; frame %lld was wanted (%lld packets)",
             (long long)fr->decoded, (long long)u[fr->uk], vi ? (long long)vi->frame_count : -1LL);
}

int video_read_frames(const char *path, const VideoInfo *vi, const int64_t *idx, int64_t n, VideoReadMode mode,
                      VideoFrameFn fn, void *user, char *err, size_t errlen) {
    if (n <= 0) return 0;
    size_t m = 0;
    int64_t *u = unique_indices(idx, n, &m, err, errlen);
    if (!u) return -1;
    Buf vf = {0};
    if (mode != VIDEO_READ_ALL) { /* a select filter, unless (AUTO) it is too long: then decode all */
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
    const char *argv[32];
    frames_argv(argv, in, map, vf.p, mode);
    Child c;
    FrameRead fr = {0};
    int rc = -1;
    if (!in) {
        fail(err, errlen, "out of memory");
        goto done;
    }
    if (child_spawn(argv, &c, err, errlen) != 0) goto done;
    fr.r = malloc(sizeof *fr.r);
    if (!fr.r) {
        child_finish(&c, 1, NULL, NULL, 0);
        fail(err, errlen, "out of memory");
        goto done;
    }
    fr.r->fd = c.out;
    fr.r->pos = fr.r->len = 0;
    fr.r->eof = fr.r->error = 0;
    if (deliver_frames(&fr, &c, u, m, idx, n, mode, fn, user, err, errlen) != 0) goto done;
    if (fr.uk == m) { /* everything wanted was delivered: ffmpeg may stop now */
        child_finish(&c, 1, NULL, NULL, 0);
        rc = 0;
        goto done;
    }
    frames_missing(&fr, &c, path, vi, u, m, mode, err, errlen);
done:
    free(fr.r);
    free(fr.pix);
    free(u);
    free(in);
    buf_free(&vf);
    return rc;
}

int video_read(const VideoPlan *plan, VideoFrameFn fn, void *user, char *err, size_t errlen) {
    return video_read_frames(plan->path, &plan->info, plan->idx, plan->n, VIDEO_READ_AUTO, fn, user, err, errlen);
}
