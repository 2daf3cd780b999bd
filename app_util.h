/* app_util.h - the small helpers the batch side (inputs.c, video.c, results.c, evaluate.c,
 * report.c, sink.c) shares; internal to the program, not part of the library: whole-file
 * reads and writes, FNV-1a hashing, a string map, UTF-8, paths. Buf and fail() are
 * common.h's. */
#ifndef QALIGN_APP_UTIL_H
#define QALIGN_APP_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "app.h"
#include "common.h"

static inline int same_str(const char *a, const char *b) { return strcmp(a ? a : "", b ? b : "") == 0; }
static inline char *xstrdup0(const char *s) { return s ? strdup(s) : NULL; }

/* What a file that is not a regular one is, for messages ("a directory", ...). */
const char *file_kind(mode_t m);
/* Read everything from fd (up to max bytes; 0 = no limit); a child's pipe (child = 1) with
 * the --ffmpeg-timeout (read_child). 0, or -1 with errno set. */
int read_fd_all(int fd, Buf *b, size_t max, int child);
/* read() from a child's pipe, giving up after the --ffmpeg-timeout (video.c). */
ssize_t read_child(int fd, void *buf, size_t n);
/* Read a whole file. 0, 1 if it does not exist (b left empty), -1 with err. */
int read_file(const char *path, Buf *b, char *err, size_t errlen);
/* Write all of buf to fd (0, or -1 with errno). */
int write_all(int fd, const void *buf, size_t n);

/* FNV-1a, seeded with HASH_SEED */
uint64_t hash_bytes(const void *d, size_t n, uint64_t h);
#define HASH_SEED 14695981039346656037ull

/* A string -> long map (open addressing, keys are (pointer, length) owned by the caller
 * and must stay valid; values >= 0). */
typedef struct {
    const char **key;
    size_t *klen;
    long *val;
    size_t cap, n;
} StrMap;
long strmap_get(const StrMap *m, const char *k, size_t kl); /* -1: absent */
int strmap_put(StrMap *m, const char *k, size_t kl, long v);
void strmap_free(StrMap *m);

/* Length (1..4) of the valid UTF-8 sequence at s (n bytes available), 0 if invalid. */
int utf8_len(const unsigned char *s, size_t n);
/* Append code point cp as UTF-8. */
void utf8_put(Buf *b, unsigned cp);

/* Paths: the part after the last '/'; "//" -> "/", "./" segments and a trailing "/" dropped
 * (malloc'ed); dir + "/" + name (malloc'ed). */
const char *path_basename(const char *p);
char *path_normalize(const char *in);
char *path_join(const char *dir, const char *name);

/* CSV records (RFC 4180, lenient): results files and labels. */
typedef struct {
    Buf text;        /* field contents, each NUL-terminated */
    size_t *start;   /* offsets into text */
    size_t n, cap;
} Fields;
const char *field(const Fields *f, size_t i);
void fields_free(Fields *f);
/* Parse one record starting at *pos. Returns 1 if a record was parsed (terminated = it
 * ended with a newline outside quotes), 0 at the end of input, -1 out of memory. */
int csv_record(const char *s, size_t len, size_t *pos, char delim, Fields *f, int *terminated);
/* A whole field as a number (blanks after it allowed): 0, or -1. */
int parse_double(const char *s, double *v);

#endif
