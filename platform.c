/* platform.c - mapping a model file read-only, or reading it into 2 MB-page memory, and the
 * helper thread that makes a mapping resident: the OS-specific part of qalign.c's loader
 * (platform.h). */
/* MAP_ANONYMOUS and madvise() are outside POSIX 2008; everything else is in it */
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE 1
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "platform.h"
#include "qalign.h"

/* The message to err[0..errlen); returns status. */
COMMON_PRINTF(4, 5) static int fail_status(char *err, size_t errlen, int status, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return status;
}

static size_t page_size(void) {
    long page = sysconf(_SC_PAGESIZE);
    return page > 0 ? (size_t)page : 4096;
}

/* Give back size bytes at p: a mapping or an anonymous copy, or a malloc'ed copy where
 * there is no anonymous mmap. */
static void release(const uint8_t *p, size_t size, int copied) {
    if (!p) return;
#if defined(MAP_ANONYMOUS)
    (void)copied;
    munmap((void *)p, size);
#else
    if (copied) free((void *)p);
    else munmap((void *)p, size);
#endif
}

/* copy = 1: the file read into this process's own memory, made read-only afterwards.
 * A file mapping costs a page fault per 4 KB page on first use and a TLB entry per 4 KB
 * while the matmuls stream through 7-15 GB of weights; anonymous memory can be backed by
 * 2 MB pages (MADV_HUGEPAGE, where the kernel has transparent huge pages). Touching every
 * page before read() fills it makes the kernel allocate the big pages up front instead of
 * faulting 4 KB at a time inside the copy. On our test VM this loads a cached 9 GB model in
 * 2 s when the memory was used before (fresh memory costs the hypervisor about 1 GB/s; a
 * mapping faults in at about 1 GB/s) and makes each image 20-40 % faster; see README. The
 * price: the copy is private to this process, not shared through the page cache. */
static int read_whole(int fd, size_t size, const uint8_t **out, char *err, size_t errlen) {
    uint8_t *buf;
#if defined(MAP_ANONYMOUS)
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return fail_status(err, errlen, QALIGN_ERR_NOMEM, "cannot allocate %zu bytes to read the model into: %s", size,
                    strerror(errno));
    buf = p;
#if defined(MADV_HUGEPAGE)
    madvise(p, size, MADV_HUGEPAGE); /* a hint: without THP it fails and nothing changes */
#endif
    size_t page = page_size();
#if defined(_OPENMP) /* the page touching on every thread (without OpenMP: on this one) */
#pragma omp parallel for schedule(static)
#endif
    for (size_t i = 0; i < size; i += page) buf[i] = 0;
#else
    buf = malloc(size);
    if (!buf) return fail_status(err, errlen, QALIGN_ERR_NOMEM, "cannot allocate %zu bytes to read the model into", size);
#endif
    for (size_t done = 0; done < size;) {
        size_t want = size - done < ((size_t)1 << 30) ? size - done : ((size_t)1 << 30);
        ssize_t got = read(fd, buf + done, want);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            int st = got < 0 ? fail_status(err, errlen, QALIGN_ERR_IO, "read failed: %s", strerror(errno))
                             : fail_status(err, errlen, QALIGN_ERR_FORMAT, "the file shrank while being read");
            release(buf, size, 1);
            return st;
        }
        done += (size_t)got;
    }
#if defined(MAP_ANONYMOUS)
    mprotect(buf, size, PROT_READ); /* weights stay read-only, as in the mapping */
#endif
    *out = buf;
    return QALIGN_OK;
}

/* Open a regular file without blocking on a FIFO or a device; its size in *size. */
static int open_regular(const char *path, int *fd, size_t *size, char *err, size_t errlen) {
    struct stat st;
    /* O_NONBLOCK: a FIFO or a device must not block the open; only regular files are read */
    if ((*fd = open(path, O_RDONLY | O_NONBLOCK)) < 0)
        return fail_status(err, errlen, QALIGN_ERR_IO, "cannot open model file: %s", strerror(errno));
    if (fstat(*fd, &st) != 0) return fail_status(err, errlen, QALIGN_ERR_IO, "cannot stat: %s", strerror(errno));
    if (!S_ISREG(st.st_mode)) return fail_status(err, errlen, QALIGN_ERR_IO, "not a regular file");
    fcntl(*fd, F_SETFL, fcntl(*fd, F_GETFL) & ~O_NONBLOCK);
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX)
        return fail_status(err, errlen, QALIGN_ERR_NOMEM, "the model (%lld bytes) does not fit in this machine's address "
                    "space (32-bit build?)", (long long)st.st_size);
    *size = (size_t)st.st_size;
    return QALIGN_OK;
}

int platform_map(const char *path, int copy, size_t min_size, MappedFile *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    int fd = -1;
    size_t size = 0;
    int st = open_regular(path, &fd, &size, err, errlen);
    if (!st && size < min_size)
        st = fail_status(err, errlen, QALIGN_ERR_FORMAT, "the file is %zu bytes, too small for a qalign model "
                         "(truncated?)", size);
    if (!st && copy) {
        st = read_whole(fd, size, &out->data, err, errlen);
        out->copied = 1;
    } else if (!st) {
        void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED)
            st = fail_status(err, errlen, QALIGN_ERR_IO, "cannot mmap %zu bytes: %s", size, strerror(errno));
        else out->data = map;
    }
    if (fd >= 0) close(fd);
    if (st) {
        memset(out, 0, sizeof *out);
        return st;
    }
    out->size = size;
    return QALIGN_OK;
}

/* The first image of a mapped model faults its pages in as the matmuls reach them: the
 * decoder's 4-15 GB on the critical path, read from disk when the page cache does not hold
 * them. The helper thread makes the caller's ranges resident while the vision tower runs:
 * madvise(MADV_POPULATE_READ) (Linux 5.14) in 32 MB chunks, one byte per page where the
 * call is missing. It only reads the mapping; platform_unmap stops it after its current
 * chunk before unmapping. bench/ANALYSIS.md has what it saves. */
static void *prefetch_main(void *arg) {
    MappedFile *f = arg;
    const size_t chunk = (size_t)32 << 20, page = page_size();
    for (int r = 0; r < f->n_ranges; r++) {
        size_t lo = f->ranges[r][0] / page * page, hi = f->ranges[r][1];
        for (size_t off = lo; off < hi && !atomic_load(&f->prefetch_stop); off += chunk) {
            size_t len = hi - off < chunk ? hi - off : chunk;
#if defined(MADV_POPULATE_READ)
            if (madvise((void *)(f->data + off), len, MADV_POPULATE_READ) == 0) continue;
#endif
            volatile uint8_t sink = 0;
            for (size_t i = 0; i < len; i += page) sink ^= f->data[off + i];
            (void)sink;
        }
    }
    return NULL;
}

void platform_prefetch(MappedFile *f, const size_t ranges[][2], int n) {
    if (!f->data || f->copied || f->prefetching || n < 1) return;
    f->n_ranges = n < 2 ? n : 2;
    for (int r = 0; r < f->n_ranges; r++) {
        f->ranges[r][0] = ranges[r][0];
        f->ranges[r][1] = ranges[r][1] < f->size ? ranges[r][1] : f->size;
    }
    atomic_store(&f->prefetch_stop, 0);
    f->prefetching = pthread_create(&f->prefetcher, NULL, prefetch_main, f) == 0; /* if not: faults as before */
}

void platform_unmap(MappedFile *f) {
    if (!f) return;
    if (f->prefetching) {
        atomic_store(&f->prefetch_stop, 1);
        pthread_join(f->prefetcher, NULL);
        f->prefetching = 0;
    }
    release(f->data, f->size, f->copied);
    f->data = NULL;
    f->size = 0;
}
