/* bpe_driver.c - batch driver for tests/test_bpe.py (built by the test itself). It
 * #includes bpe.c to reach the normalizer and the pre-tokenizer on their own (modes 4, 5).
 *
 *   bpe_driver BLOB < records
 *
 * BLOB: the tokenizer blob of export.py bpe_blob_from_tokenizer_json (layout in bpe.h).
 * stdin: records of  uint32 mode, uint32 len, bytes[len] (little-endian); one output line each:
 *   mode 0  bpe_encode(special=1)   ids separated by spaces, or "ERR <message>"
 *   mode 1  bpe_encode(special=0)   same
 *   mode 2  bpe_decode              bytes = uint32 ids; the text in hex
 *   mode 3  bpe_token_id            bytes = the token; its id
 *   mode 4  NFC only                the normalized text in hex (the text must be valid UTF-8)
 *   mode 5  split only (no NFC)     the byte lengths of the pre-tokenizer's pieces
 *   mode 6  timing                  bytes = uint32 repeat + text: "<ids> <seconds>" for
 *                                   repeat encodes of the text
 * Exit 3 if bpe_open fails (its message on stdout).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../bpe.c"

static uint8_t *read_all(FILE *f, size_t *n)
{
    size_t cap = 1 << 20, len = 0;
    uint8_t *p = malloc(cap);
    size_t k;
    while (p && (k = fread(p + len, 1, cap - len, f)) > 0) {
        len += k;
        if (len == cap)
            p = realloc(p, cap *= 2);
    }
    if (!p) {
        fprintf(stderr, "bpe_driver: out of memory\n");
        exit(2);
    }
    *n = len;
    return p;
}

static void hex(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        printf("%02x", s[i]);
    putchar('\n');
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: bpe_driver BLOB < records\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    size_t nb;
    uint8_t *blob = read_all(f, &nb);
    fclose(f);
    char err[256] = "";
    Bpe *b = bpe_open(blob, nb, err, sizeof err);
    free(blob); /* bpe_open copies what it keeps */
    if (!b) {
        printf("%s\n", err);
        return 3;
    }
    uint8_t head[8];
    while (fread(head, 1, 8, stdin) == 8) {
        uint32_t mode = rd32(head), len = rd32(head + 4);
        uint8_t *s = malloc(len + 1);
        if (!s || fread(s, 1, len, stdin) != len) {
            fprintf(stderr, "bpe_driver: short read\n");
            return 2;
        }
        s[len] = 0;
        if (mode <= 1) {
            int32_t *ids;
            size_t n;
            err[0] = 0;
            if (bpe_encode(b, (const char *)s, len, mode == 0, &ids, &n, err, sizeof err)) {
                if (ids || n || !err[0]) {
                    fprintf(stderr, "bpe_driver: failed encode left ids=%p n=%zu err=\"%s\"\n", (void *)ids, n, err);
                    return 4;
                }
                printf("ERR %s\n", err);
            } else {
                for (size_t i = 0; i < n; i++)
                    printf(i ? " %d" : "%d", ids[i]);
                putchar('\n');
                free(ids);
            }
        } else if (mode == 2) {
            size_t n = len / 4, out_len = 0;
            int32_t *ids = malloc((n + 1) * sizeof *ids);
            for (size_t i = 0; i < n; i++)
                ids[i] = (int32_t)rd32(s + 4 * i);
            char *t = bpe_decode(b, ids, n, &out_len);
            if (!t || strlen(t) > out_len || t[out_len] != 0) {
                fprintf(stderr, "bpe_driver: bad decode result\n");
                return 4;
            }
            hex((const uint8_t *)t, out_len);
            free(t);
            free(ids);
        } else if (mode == 3) {
            printf("%d\n", bpe_token_id(b, (const char *)s));
        } else if (mode == 4 || mode == 5) {
            uint32_t *cps = malloc((len + 1) * sizeof *cps), *norm = NULL;
            size_t bad;
            long m = utf8_decode(s, len, cps, &bad);
            if (m < 0) {
                printf("ERR invalid UTF-8\n");
                free(cps);
                free(s);
                continue;
            }
            if (mode == 4) {
                long k = nfc(cps, (size_t)m, &norm);
                uint8_t *o = malloc(4 * (size_t)k + 1);
                size_t nb2 = 0;
                for (long i = 0; i < k; i++)
                    nb2 += utf8_put(o + nb2, norm[i]);
                hex(o, nb2);
                free(o);
                if (norm != cps)
                    free(norm);
            } else {
                int first = 1;
                for (size_t i = 0; i < (size_t)m;) {
                    size_t l = match_at(cps, (size_t)m, i), bytes = 0;
                    uint8_t tmp[4];
                    for (size_t j = i; j < i + l; j++)
                        bytes += utf8_put(tmp, cps[j]);
                    printf(first ? "%zu" : " %zu", bytes);
                    first = 0;
                    i += l;
                }
                putchar('\n');
            }
            free(cps);
        } else if (mode == 6) {
            uint32_t rep = rd32(s);
            struct timespec t0, t1;
            size_t total = 0;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            for (uint32_t r = 0; r < rep; r++) {
                int32_t *ids;
                size_t n;
                if (bpe_encode(b, (const char *)s + 4, len - 4, 1, &ids, &n, err, sizeof err)) {
                    printf("ERR %s\n", err);
                    break;
                }
                total += n;
                free(ids);
            }
            clock_gettime(CLOCK_MONOTONIC, &t1);
            printf("%zu %.6f\n", total, (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
        } else {
            fprintf(stderr, "bpe_driver: bad mode %u\n", mode);
            return 2;
        }
        free(s);
        fflush(stdout);
    }
    bpe_free(b);
    return 0;
}
