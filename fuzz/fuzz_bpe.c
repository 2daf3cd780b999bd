/* fuzz_bpe.c - libFuzzer harness for bpe.c (Qwen3.5's byte-level BPE; make fuzz). A small
 * vocabulary is built here (the 256 bytes, merges of a few English words and of "é", two
 * added tokens, one matched in the raw text, one in the NFC text). The first input byte picks what the rest is:
 *   0, 1  text for bpe_encode (special = 1 / 0): it must succeed exactly when the text is
 *         valid UTF-8 (checked here independently), fail with a one-line reason otherwise;
 *         the ids must be in range; their decode must be valid UTF-8 and, for ASCII text
 *         (NFC leaves it alone), the text itself
 *   2     ids for bpe_decode (any values): valid UTF-8 out, NUL-terminated
 *   3     a blob for bpe_open: refused with a one-line reason, or usable
 *   4     bytes XORed into the good blob, then as 3
 * Traps on a broken contract. Seeds: fuzz/corpus/fuzz_bpe. */
#include <stdlib.h>
#include <string.h>

#include "bpe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *WORDS[] = {"the", " the", " quality", " of", " image", " is", " excellent", " good",
                              " fair", " poor", " bad", "The", "\xc3\xa9", " caf\xc3\xa9", "  ", "\n\n"};
static const char PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *ADDED[] = {"<|im_start|>", "<think>"};

static uint8_t *blob;
static size_t blob_len;
static Bpe *good;

static void put32(uint8_t **p, size_t *n, size_t *cap, uint32_t v)
{
    if (*n + 4 > *cap)
        *p = realloc(*p, *cap = 2 * *cap + 64);
    for (int k = 0; k < 4; k++)
        (*p)[(*n)++] = (uint8_t)(v >> (8 * k));
}

static void putb(uint8_t **p, size_t *n, size_t *cap, const void *s, size_t len)
{
    while (*n + len > *cap)
        *p = realloc(*p, *cap = 2 * *cap + 64);
    memcpy(*p + *n, s, len);
    *n += len;
}

/* Pieces: 256 bytes, then every prefix (of length >= 2) of the words, merged left to right. */
static void build(void)
{
    char pieces[512][24];
    int np = 0, merges[512][3], nm = 0;
    for (int b = 0; b < 256; b++) {
        pieces[np][0] = (char)b;
        pieces[np++][1] = 0;
    }
    for (size_t w = 0; w < sizeof WORDS / sizeof *WORDS; w++) {
        int cur = (uint8_t)WORDS[w][0];
        for (size_t k = 1; WORDS[w][k]; k++) {
            int id = -1;
            for (int i = 256; i < np; i++)
                if (strlen(pieces[i]) == k + 1 && !memcmp(pieces[i], WORDS[w], k + 1))
                    id = i;
            if (id < 0) {
                memcpy(pieces[np], WORDS[w], k + 1);
                pieces[np][k + 1] = 0;
                id = np++;
                merges[nm][0] = cur, merges[nm][1] = (uint8_t)WORDS[w][k], merges[nm][2] = id, nm++;
            }
            cur = id;
        }
    }
    int nv = np + 2;
    size_t n = 0, cap = 0;
    uint8_t *p = NULL;
    putb(&p, &n, &cap, "QBPE", 4);
    put32(&p, &n, &cap, 2);
    put32(&p, &n, &cap, (uint32_t)nv);
    put32(&p, &n, &cap, (uint32_t)nm);
    put32(&p, &n, &cap, 2);
    put32(&p, &n, &cap, 0);
    put32(&p, &n, &cap, sizeof PATTERN - 1);
    putb(&p, &n, &cap, PATTERN, sizeof PATTERN - 1);
    uint32_t off = 0;
    put32(&p, &n, &cap, 0);
    for (int i = 0; i < nv; i++) {
        off += (uint32_t)(i < 256 ? 1 : i < np ? strlen(pieces[i]) : strlen(ADDED[i - np]));
        put32(&p, &n, &cap, off);
    }
    for (int i = 0; i < nv; i++) {
        if (i < 256)
            putb(&p, &n, &cap, pieces[i], 1);
        else if (i < np)
            putb(&p, &n, &cap, pieces[i], strlen(pieces[i]));
        else
            putb(&p, &n, &cap, ADDED[i - np], strlen(ADDED[i - np]));
    }
    for (int i = 0; i < nv; i++) {
        uint8_t t = i < np ? 1 : i == np ? 3 : 2;
        putb(&p, &n, &cap, &t, 1);
    }
    for (int k = 0; k < nm; k++)
        for (int j = 0; j < 3; j++)
            put32(&p, &n, &cap, (uint32_t)merges[k][j]);
    for (int k = 0; k < 2; k++) {
        put32(&p, &n, &cap, (uint32_t)(np + k));
        put32(&p, &n, &cap, (uint32_t)strlen(ADDED[k]));
        put32(&p, &n, &cap, (uint32_t)k); /* "<think>" is matched in the NFC text */
        putb(&p, &n, &cap, ADDED[k], strlen(ADDED[k]));
    }
    blob = p;
    blob_len = n;
    char err[256];
    good = bpe_open(blob, blob_len, err, sizeof err);
    if (!good)
        __builtin_trap();
}

/* Strict UTF-8 (RFC 3629), written independently of bpe.c's decoder. */
static int valid_utf8(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!len || i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
        if ((c == 0xE0 && s[i + 1] < 0xA0) || (c == 0xED && s[i + 1] > 0x9F) || (c == 0xF0 && s[i + 1] < 0x90) ||
            (c == 0xF4 && s[i + 1] > 0x8F))
            return 0;
        i += len;
    }
    return 1;
}

static void one_line(const char *err)
{
    if (!err[0] || strchr(err, '\n'))
        __builtin_trap();
}

static void use(const Bpe *b, const uint8_t *text, size_t n, int special)
{
    int32_t *ids;
    size_t k;
    char err[256] = "";
    int ok = bpe_encode(b, (const char *)text, n, special, &ids, &k, err, sizeof err) == 0;
    if (ok != valid_utf8(text, n))
        __builtin_trap();
    if (!ok) {
        if (ids || k)
            __builtin_trap();
        one_line(err);
        return;
    }
    int ascii = 1;
    for (size_t i = 0; i < n; i++)
        ascii &= text[i] < 0x80;
    for (size_t i = 0; i < k; i++)
        if (ids[i] < 0 || ids[i] >= bpe_n_vocab(b))
            __builtin_trap();
    size_t len;
    char *t = bpe_decode(b, ids, k, &len);
    if (!t || t[len] || !valid_utf8((const uint8_t *)t, len))
        __builtin_trap();
    if (b == good && ascii && (len != n || memcmp(t, text, n)))
        __builtin_trap();
    free(t);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!good)
        build();
    if (size < 1)
        return 0;
    int mode = data[0] % 5;
    data++, size--;
    if (mode <= 1) {
        uint8_t *text = malloc(size ? size : 1); /* exactly its bytes: ASan sees overreads */
        memcpy(text, data, size);
        use(good, text, size, mode == 0);
        free(text);
    } else if (mode == 2) {
        size_t n = size / 4;
        int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
        memcpy(ids, data, n * 4);
        size_t len;
        char *t = bpe_decode(good, ids, n, &len);
        if (!t || t[len] || !valid_utf8((const uint8_t *)t, len))
            __builtin_trap();
        free(t);
        free(ids);
    } else {
        uint8_t *b;
        size_t n;
        if (mode == 3) {
            n = size;
            b = malloc(n ? n : 1);
            memcpy(b, data, n);
        } else {
            n = blob_len;
            b = malloc(n);
            memcpy(b, blob, n);
            for (size_t i = 0; i + 2 < size; i += 3)
                b[((size_t)data[i] << 8 | data[i + 1]) % n] ^= data[i + 2];
        }
        char err[256] = "";
        Bpe *h = bpe_open(b, n, err, sizeof err);
        free(b);
        if (!h) {
            one_line(err);
            return 0;
        }
        use(h, (const uint8_t *)"The quality of the image is <think> caf\xc3\xa9 good", 44, 1);
        bpe_free(h);
    }
    return 0;
}
