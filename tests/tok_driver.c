/* tok_driver.c - batch driver for tests/test_tokenizer.py (built by the test itself,
 * linked with tokenizer.c only).
 *
 *   tok_driver VOCAB < records
 *
 * VOCAB (little-endian on every host, written by the test from spm.py):
 *   "TOKVOCAB"  int32 n, add_dummy_prefix, bos_id, eos_id, unk_id  uint32 blob_len
 *   blob[blob_len]  uint32 offsets[n+1]  float32 scores[n]  uint8 types[n]
 * stdin: records of  uint32 mode, uint32 len, bytes[len]; one output line each:
 *   mode 0  tokenizer_encode(add_bos=0)     ids separated by spaces
 *   mode 1  tokenizer_encode(add_bos=1)     ids
 *   mode 2  tokenize_prompt                 ids (the text is cut at its first NUL)
 *   mode 3  tokenizer_encode(add_bos=1)     "<count> <seconds>" (timing)
 *   mode 4  tokenizer_decode of the bytes read as int32 ids   the text in hex
 * Every call is made twice: first into a 3-id buffer with guard values after it
 * (checks the "returns the size needed, writes at most max_ids" contract), then
 * into a buffer of exactly the returned size. Exit 3 if tokenizer_init fails
 * (its message on stdout), 4 on a contract violation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer.h"

#define GUARD 0x5A5A5A5A
#define SMALL 3

/* Read n bytes into a new buffer with one spare byte after them. */
static void *read_exact(FILE *f, size_t n)
{
    char *p = malloc(n + 1);
    if (!p || fread(p, 1, n, f) != n) {
        fprintf(stderr, "tok_driver: short read\n");
        exit(2);
    }
    return p;
}

/* A little-endian u32 (the vocabulary file and the records are little-endian on any host). */
static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int call(const Tokenizer *t, int mode, const char *s, size_t len, int *ids, int max)
{
    if (mode == 2)
        return tokenize_prompt(t, s, ids, max);
    return tokenizer_encode(t, s, len, mode != 0, ids, max);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: tok_driver VOCAB < records\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    uint8_t head[32];
    int32_t hdr[5];
    if (fread(head, 1, 32, f) != 32 || memcmp(head, "TOKVOCAB", 8) != 0) {
        fprintf(stderr, "tok_driver: bad vocabulary file\n");
        return 2;
    }
    for (int k = 0; k < 5; k++)
        hdr[k] = (int32_t)le32(head + 8 + 4 * k);
    uint32_t blob_len = le32(head + 28);
    if (hdr[0] < 0) {
        fprintf(stderr, "tok_driver: bad vocabulary file\n");
        return 2;
    }
    int n = hdr[0];
    char *blob = read_exact(f, blob_len);
    uint32_t *offsets = read_exact(f, 4 * ((size_t)n + 1));
    float *scores = read_exact(f, 4 * (size_t)n);
    uint8_t *types = read_exact(f, (size_t)n);
    fclose(f);
    /* the file is little-endian; the tokenizer takes arrays in host order */
    for (size_t k = 0; k <= (size_t)n; k++)
        offsets[k] = le32((const uint8_t *)&offsets[k]);
    for (size_t k = 0; k < (size_t)n; k++) {
        uint32_t u = le32((const uint8_t *)&scores[k]);
        memcpy(&scores[k], &u, 4);
    }

    Tokenizer t;
    char err[256] = "";
    if (tokenizer_init(&t, n, blob, blob_len, offsets, scores, types, hdr[1], hdr[2], hdr[3],
                       hdr[4], err, sizeof err) != 0) {
        printf("INIT_ERROR: %s\n", err);
        return 3;
    }

    uint8_t rec[8];
    while (fread(rec, 1, 8, stdin) == 8) {
        int mode = (int)le32(rec);
        size_t len = le32(rec + 4);
        char *s = read_exact(stdin, len);
        s[len] = '\0';

        if (mode == 4) { /* tokenizer_decode of the record's int32 ids: the text as hex */
            int n_ids = (int)(len / 4), *dids = malloc(((size_t)n_ids + 1) * sizeof *dids);
            for (int k = 0; k < n_ids; k++)
                dids[k] = (int)le32((const uint8_t *)s + 4 * k);
            char tiny[4] = {'x', 'x', 'x', 'x'};
            int need = tokenizer_decode(&t, dids, n_ids, tiny, 3);
            if (need < 0) {
                printf("ERR\n");
            } else if (tiny[3] != 'x' || (need >= 3 && tiny[2] != 0) || (need < 3 && tiny[need] != 0)) {
                printf("CONTRACT: decode wrote past cap or without its NUL\n");
                return 4;
            } else {
                char *text = malloc((size_t)need + 1);
                int got = tokenizer_decode(&t, dids, n_ids, text, (size_t)need + 1);
                if (got != need || text[need] != 0 || memcmp(text, tiny, need < 2 ? (size_t)need : 2)) {
                    printf("CONTRACT: second decode differs\n");
                    return 4;
                }
                for (int k = 0; k < got; k++)
                    printf("%02x", (unsigned char)text[k]);
                putchar('\n');
                free(text);
            }
            free(dids);
            free(s);
            continue;
        }

        int small[SMALL + 4];
        for (int k = 0; k < SMALL + 4; k++)
            small[k] = GUARD;
        int need = call(&t, mode, s, len, small, SMALL);
        for (int k = SMALL; k < SMALL + 4; k++)
            if (small[k] != GUARD) {
                printf("CONTRACT: wrote past max_ids\n");
                return 4;
            }
        if (need < 0) {
            printf("ERR\n");
            free(s);
            continue;
        }
        if (mode != 2 && need > tokenizer_max_ids(len)) {
            printf("CONTRACT: %d ids > tokenizer_max_ids(%zu)\n", need, len);
            return 4;
        }
        int *ids = malloc(((size_t)need + 1) * sizeof *ids);
        ids[need] = GUARD;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int got = call(&t, mode, s, len, ids, need);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (got != need || ids[need] != GUARD ||
            memcmp(ids, small, (size_t)(need < SMALL ? need : SMALL) * sizeof *ids) != 0) {
            printf("CONTRACT: second call differs (%d vs %d ids)\n", got, need);
            return 4;
        }
        if (mode == 3) {
            printf("%d %.6f\n", got, (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
        } else {
            for (int k = 0; k < got; k++)
                printf(k ? " %d" : "%d", ids[k]);
            putchar('\n');
        }
        free(ids);
        free(s);
    }
    tokenizer_free(&t);
    free(blob);
    free(offsets);
    free(scores);
    free(types);
    return 0;
}
