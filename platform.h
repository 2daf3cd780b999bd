/* platform.h - the operating-system side of loading a model file: map it read-only (or read
 * it into this process's memory, on 2 MB pages where the kernel allows), make mapped ranges
 * resident on a helper thread, and give the memory back. qalign.c asks for the bytes of a
 * file and never sees mmap, madvise or a thread of its own; everything here is POSIX 2008
 * plus what #if finds (MAP_ANONYMOUS, MADV_HUGEPAGE, MADV_POPULATE_READ).
 *
 * Functions that can fail return a qalign_status (qalign.h) and write a one-line reason,
 * without the file name (the caller adds it), to err[0..errlen).
 */
#ifndef QALIGN_PLATFORM_H
#define QALIGN_PLATFORM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const uint8_t *data;    /* (size) read-only: the file's mapping, or its copy (copied) */
    size_t size;
    int copied;             /* data is a private copy (read_whole), not a file mapping */
    /* the helper thread that makes ranges of a mapping resident (platform_prefetch) */
    pthread_t prefetcher;
    int prefetching;        /* it was started (and is joined by platform_unmap) */
    atomic_int prefetch_stop; /* set by platform_unmap: stop after the current chunk */
    size_t ranges[2][2];    /* [from, to) offsets, made resident in this order */
    int n_ranges;
} MappedFile;

/* Map the regular file at path read-only into out (copy = 1: read it into this process's
 * memory instead, made read-only afterwards). A file of fewer than min_size bytes is refused
 * as truncated (QALIGN_ERR_FORMAT), before anything is mapped. out is zeroed first; on
 * failure nothing is left to free. */
int platform_map(const char *path, int copy, size_t min_size, MappedFile *out, char *err, size_t errlen);

/* Start a helper thread that makes ranges[0..n) (n <= 2, offsets into a mapping) resident,
 * in order, while the caller computes. Does nothing for a copy, or if no thread can be
 * started (the pages then fault in on first use, as without it). */
void platform_prefetch(MappedFile *f, const size_t ranges[][2], int n);

/* Stop the prefetcher (after its current chunk) and unmap or free the bytes. */
void platform_unmap(MappedFile *f);

#endif
