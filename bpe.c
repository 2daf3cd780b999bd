/* bpe.c - byte-level BPE with Qwen3.5's pre-tokenizer, id for id with Hugging Face
 * tokenizers (see bpe.h for what runs in which order, and tests/test_bpe.py for the proof). */
#include "bpe.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe_unicode.h"

/* The split pattern transformers' Qwen3_5Tokenizer installs (tokenization_qwen3_5.py,
 * PRETOKENIZE_REGEX); bpe_split() below is this regex written out by hand. */
static const char QWEN35_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

enum { TY_NONE = 0, TY_BPE = 1, TY_ADDED = 2, TY_SPECIAL = 3 };

typedef struct {
    int32_t id;
    uint32_t len;
    const uint8_t *text; /* into Bpe.added_text */
    int special;
    int normalized;      /* matched in the NFC text (HF's normalized = true), else in the raw text */
} Added;

struct Bpe {
    int n_vocab;
    uint32_t *off;          /* (n_vocab + 1) */
    uint8_t *bytes;         /* token bytes (decoded) */
    uint8_t *type;          /* (n_vocab) TY_* */
    int ignore_merges;
    int32_t byte_id[256];   /* the BPE piece of one byte, or -1 */
    /* merges: open addressing on (left, right) -> merge index; rank = index */
    int32_t n_merges;
    int32_t *merge_res;     /* (n_merges) merged id */
    uint64_t *mkey;         /* (msize) (left << 32 | right) + 1, 0 = empty */
    int32_t *mval;          /* (msize) merge index */
    size_t msize;
    /* BPE pieces by bytes: open addressing, id + 1, 0 = empty */
    int32_t *tslot;
    size_t tsize;
    /* added tokens */
    int n_added;
    Added *added;
    uint8_t *added_text;
    uint8_t added_first[32]; /* bitset: first bytes of added tokens */
    int n_normalized;        /* added tokens matched after NFC */
};

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t hash_bytes(const uint8_t *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

/* Id of a BPE piece with these bytes, or -1. */
static int piece_id(const Bpe *b, const uint8_t *s, size_t n)
{
    size_t mask = b->tsize - 1;
    for (size_t h = hash_bytes(s, n) & mask;; h = (h + 1) & mask) {
        int32_t v = b->tslot[h];
        if (!v)
            return -1;
        v--;
        if (b->off[v + 1] - b->off[v] == n && !memcmp(b->bytes + b->off[v], s, n))
            return v;
    }
}

/* Merge index of the pair (l, r), or -1. */
static int merge_of(const Bpe *b, int32_t l, int32_t r)
{
    uint64_t key = ((uint64_t)(uint32_t)l << 32 | (uint32_t)r) + 1;
    size_t mask = b->msize - 1;
    for (size_t h = hash_u64(key) & mask;; h = (h + 1) & mask) {
        if (!b->mkey[h])
            return -1;
        if (b->mkey[h] == key)
            return b->mval[h];
    }
}

void bpe_free(Bpe *b)
{
    if (!b)
        return;
    free(b->off);
    free(b->bytes);
    free(b->type);
    free(b->merge_res);
    free(b->mkey);
    free(b->mval);
    free(b->tslot);
    free(b->added);
    free(b->added_text);
    free(b);
}

static size_t pow2_at_least(size_t n)
{
    size_t s = 16;
    while (s < n)
        s <<= 1;
    return s;
}

/* The blob being read: bytes [pos, n) are left; errors go to err. */
typedef struct {
    const uint8_t *blob;
    size_t n, pos;
    char *err;
    size_t errlen;
} Reader;

/* 0 if k more bytes are there, else -1 naming what was cut off */
static int need(Reader *r, size_t k, const char *what)
{
    if (k > r->n - r->pos) {
        seterr(r->err, r->errlen, "tokenizer blob truncated (%s)", what);
        return -1;
    }
    return 0;
}

static int oom(Reader *r)
{
    seterr(r->err, r->errlen, "out of memory");
    return -1;
}

/* The vocabulary: nv + 1 increasing offsets from 0, the tokens' bytes, their types. */
static int read_vocab(Bpe *b, Reader *r, uint32_t nv)
{
    const uint8_t *blob = r->blob;
    if (need(r, 4 * ((size_t)nv + 1), "offsets"))
        return -1;
    b->off = malloc(4 * ((size_t)nv + 1));
    if (!b->off)
        return oom(r);
    for (size_t i = 0; i <= nv; i++) {
        b->off[i] = rd32(blob + r->pos + 4 * i);
        if (i && b->off[i] < b->off[i - 1]) {
            seterr(r->err, r->errlen, "tokenizer blob: offsets not increasing at id %zu", i);
            return -1;
        }
    }
    r->pos += 4 * ((size_t)nv + 1);
    if (b->off[0] != 0) {
        seterr(r->err, r->errlen, "tokenizer blob: first offset is not 0");
        return -1;
    }
    if (need(r, b->off[nv], "token bytes"))
        return -1;
    b->bytes = malloc(b->off[nv] + 1);
    if (!b->bytes)
        return oom(r);
    memcpy(b->bytes, blob + r->pos, b->off[nv]);
    r->pos += b->off[nv];
    if (need(r, nv, "types"))
        return -1;
    b->type = malloc(nv);
    if (!b->type)
        return oom(r);
    memcpy(b->type, blob + r->pos, nv);
    r->pos += nv;
    for (uint32_t i = 0; i < nv; i++)
        if (b->type[i] > TY_SPECIAL) {
            seterr(r->err, r->errlen, "tokenizer blob: bad token type %u at id %u", b->type[i], i);
            return -1;
        }
    return 0;
}

/* The BPE pieces by their bytes (an open-addressing table), and the one-byte pieces. */
static int index_pieces(Bpe *b, Reader *r, uint32_t nv)
{
    b->tsize = pow2_at_least(2 * (size_t)nv);
    b->tslot = calloc(b->tsize, sizeof *b->tslot);
    if (!b->tslot)
        return oom(r);
    for (int i = 0; i < 256; i++)
        b->byte_id[i] = -1;
    for (uint32_t i = 0; i < nv; i++) {
        if (b->type[i] != TY_BPE)
            continue;
        const uint8_t *s = b->bytes + b->off[i];
        size_t len = b->off[i + 1] - b->off[i];
        if (len == 0) {
            seterr(r->err, r->errlen, "tokenizer blob: BPE piece %u is empty", i);
            return -1;
        }
        if (piece_id(b, s, len) >= 0) {
            seterr(r->err, r->errlen, "tokenizer blob: BPE piece %u duplicates piece %d", i, piece_id(b, s, len));
            return -1;
        }
        size_t mask = b->tsize - 1, h = hash_bytes(s, len) & mask;
        while (b->tslot[h])
            h = (h + 1) & mask;
        b->tslot[h] = (int32_t)i + 1;
        if (len == 1)
            b->byte_id[s[0]] = (int32_t)i;
    }
    return 0;
}

/* nm merges (left, right, result), ranked in order, in a table keyed by the pair. */
static int read_merges(Bpe *b, Reader *r, uint32_t nm, uint32_t nv)
{
    if (need(r, 12 * (size_t)nm, "merges"))
        return -1;
    b->n_merges = (int32_t)nm;
    b->merge_res = malloc(4 * ((size_t)nm + 1));
    b->msize = pow2_at_least(2 * (size_t)nm + 2);
    b->mkey = calloc(b->msize, sizeof *b->mkey);
    b->mval = malloc(b->msize * sizeof *b->mval);
    if (!b->merge_res || !b->mkey || !b->mval)
        return oom(r);
    for (uint32_t k = 0; k < nm; k++) {
        const uint8_t *p = r->blob + r->pos + 12 * (size_t)k;
        uint32_t l = rd32(p), rt = rd32(p + 4), m = rd32(p + 8);
        if (l >= nv || rt >= nv || m >= nv || b->type[l] != TY_BPE || b->type[rt] != TY_BPE ||
            b->type[m] != TY_BPE) {
            seterr(r->err, r->errlen, "tokenizer blob: merge %u names a token that is not a BPE piece", k);
            return -1;
        }
        uint64_t key = ((uint64_t)l << 32 | rt) + 1;
        size_t mask = b->msize - 1, h = hash_u64(key) & mask;
        while (b->mkey[h] && b->mkey[h] != key)
            h = (h + 1) & mask;
        /* a repeated pair takes its last rank: HF collects the merges into a map in order */
        b->mkey[h] = key;
        b->mval[h] = (int32_t)k;
        b->merge_res[k] = (int32_t)m;
    }
    r->pos += 12 * (size_t)nm;
    return 0;
}

/* na added tokens, entries of `entry` bytes (id, length[, flags]) each followed by its text:
 * sized in a first pass, copied into one buffer in a second. */
static int read_added(Bpe *b, Reader *r, uint32_t na, uint32_t nv, size_t entry)
{
    const uint8_t *blob = r->blob;
    b->n_added = (int)na;
    b->added = calloc(na + 1, sizeof *b->added);
    if (!b->added)
        return oom(r);
    size_t p0 = r->pos, total = 0;
    for (uint32_t k = 0; k < na; k++) {
        if (need(r, entry, "added tokens"))
            return -1;
        uint32_t len = rd32(blob + r->pos + 4);
        r->pos += entry;
        if (need(r, len, "added token text"))
            return -1;
        r->pos += len;
        total += len;
    }
    b->added_text = malloc(total + 1);
    if (!b->added_text)
        return oom(r);
    size_t pos = p0;
    total = 0;
    for (uint32_t k = 0; k < na; k++) {
        uint32_t id = rd32(blob + pos), len = rd32(blob + pos + 4);
        uint32_t aflags = entry == 12 ? rd32(blob + pos + 8) : 0;
        pos += entry;
        if (id >= nv || (b->type[id] != TY_ADDED && b->type[id] != TY_SPECIAL) || len == 0 || aflags > 1) {
            seterr(r->err, r->errlen, "tokenizer blob: added token %u is malformed", k);
            return -1;
        }
        memcpy(b->added_text + total, blob + pos, len);
        b->added[k] = (Added){(int32_t)id, len, b->added_text + total, b->type[id] == TY_SPECIAL, (int)aflags};
        b->n_normalized += (int)aflags;
        b->added_first[blob[pos] >> 3] |= (uint8_t)(1u << (blob[pos] & 7));
        pos += len;
        total += len;
    }
    return 0;
}

/* The blob: "QBPE", version, vocab / merge / added counts, flags, the split pattern, then
 * the vocabulary, the merges and the added tokens, and nothing after them. */
Bpe *bpe_open(const uint8_t *blob, size_t n, char *err, size_t errlen)
{
    Reader r = {blob, n, 0, err, errlen};
    Bpe *b = calloc(1, sizeof *b);
    if (!b) {
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    if (!blob || n < 32 || memcmp(blob, "QBPE", 4) != 0) {
        seterr(err, errlen, "not a byte-level BPE tokenizer blob (bad magic)");
        goto fail;
    }
    uint32_t version = rd32(blob + 4);
    if (version != 1 && version != 2) {
        seterr(err, errlen, "tokenizer blob version %u is not supported (1 and 2 are): re-export the model",
               version);
        goto fail;
    }
    size_t entry = version == 1 ? 8 : 12; /* version 2: added tokens carry flags */
    uint32_t nv = rd32(blob + 8), nm = rd32(blob + 12), na = rd32(blob + 16), flags = rd32(blob + 20);
    uint32_t plen = rd32(blob + 24);
    r.pos = 28;
    if (nv == 0 || nv > (1u << 24) || nm > (1u << 24) || na > nv) {
        seterr(err, errlen, "tokenizer blob: implausible sizes (vocab %u, merges %u, added %u)", nv, nm, na);
        goto fail;
    }
    b->n_vocab = (int)nv;
    b->ignore_merges = flags & 1;
    if (need(&r, plen, "pattern"))
        goto fail;
    if (plen != sizeof QWEN35_PATTERN - 1 || memcmp(blob + r.pos, QWEN35_PATTERN, plen) != 0) {
        seterr(err, errlen, "tokenizer: unsupported pre-tokenizer split pattern (only Qwen3.5's is implemented)");
        goto fail;
    }
    r.pos += plen;
    if (read_vocab(b, &r, nv) || index_pieces(b, &r, nv) || read_merges(b, &r, nm, nv) ||
        read_added(b, &r, na, nv, entry))
        goto fail;
    if (r.pos != n) {
        seterr(err, errlen, "tokenizer blob: %zu bytes left over at its end", n - r.pos);
        goto fail;
    }
    return b;
fail:
    bpe_free(b);
    return NULL;
}

int bpe_n_vocab(const Bpe *b) { return b->n_vocab; }

int bpe_token_id(const Bpe *b, const char *token)
{
    size_t n = strlen(token);
    for (int k = 0; k < b->n_added; k++)
        if (b->added[k].len == n && !memcmp(b->added[k].text, token, n))
            return b->added[k].id;
    return n ? piece_id(b, (const uint8_t *)token, n) : -1;
}

/* ---------------------------------------------------------------------------------------
 * Growable arrays */

typedef struct {
    int32_t *v;
    size_t n, cap;
} Ids;

static int ids_push(Ids *a, int32_t x)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 64;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v)
            return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Unicode: classes, UTF-8, NFC */

static unsigned uc_flags(uint32_t c)
{
    return c < 0x110000 ? bpe_uc_flags_blocks[(size_t)bpe_uc_flags_stage1[c >> 8] * 256 + (c & 255)] : 0;
}

static unsigned uc_ccc(uint32_t c)
{
    return c < 0x110000 ? bpe_uc_ccc_blocks[(size_t)bpe_uc_ccc_stage1[c >> 8] * 256 + (c & 255)] : 0;
}

/* Decode strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF) into cps. Returns the
 * number of code points, or -1 with the offset of the first bad byte in *bad. */
static long utf8_decode(const uint8_t *s, size_t n, uint32_t *cps, size_t *bad)
{
    size_t i = 0, k = 0;
    while (i < n) {
        uint32_t c = s[i];
        size_t len;
        uint32_t min;
        if (c < 0x80) {
            cps[k++] = c;
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, min = 0x80, c &= 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, min = 0x800, c &= 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, min = 0x10000, c &= 0x07;
        } else {
            *bad = i;
            return -1;
        }
        if (n - i < len) {
            *bad = i;
            return -1;
        }
        for (size_t j = 1; j < len; j++) {
            if ((s[i + j] & 0xC0) != 0x80) {
                *bad = i;
                return -1;
            }
            c = c << 6 | (s[i + j] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c < 0xE000)) {
            *bad = i;
            return -1;
        }
        cps[k++] = c;
        i += len;
    }
    return (long)k;
}

static size_t utf8_put(uint8_t *o, uint32_t c)
{
    if (c < 0x80) {
        o[0] = (uint8_t)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (uint8_t)(0xC0 | c >> 6);
        o[1] = (uint8_t)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (uint8_t)(0xE0 | c >> 12);
        o[1] = (uint8_t)(0x80 | (c >> 6 & 0x3F));
        o[2] = (uint8_t)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | c >> 18);
    o[1] = (uint8_t)(0x80 | (c >> 12 & 0x3F));
    o[2] = (uint8_t)(0x80 | (c >> 6 & 0x3F));
    o[3] = (uint8_t)(0x80 | (c & 0x3F));
    return 4;
}

enum { H_SBASE = 0xAC00, H_LBASE = 0x1100, H_VBASE = 0x1161, H_TBASE = 0x11A7,
       H_LCOUNT = 19, H_VCOUNT = 21, H_TCOUNT = 28, H_NCOUNT = 588, H_SCOUNT = 11172 };

/* Full canonical decomposition of c into o (at most 4 code points for Unicode 9.0's
 * data; the generator's longest is checked by BPE_MAX_DECOMP). Returns the count. */
#define BPE_MAX_DECOMP 18
static size_t decompose(uint32_t c, uint32_t *o)
{
    if (c >= H_SBASE && c < H_SBASE + H_SCOUNT) {
        uint32_t s = c - H_SBASE;
        o[0] = H_LBASE + s / H_NCOUNT;
        o[1] = H_VBASE + (s % H_NCOUNT) / H_TCOUNT;
        if (s % H_TCOUNT) {
            o[2] = H_TBASE + s % H_TCOUNT;
            return 3;
        }
        return 2;
    }
    size_t lo = 0, hi = sizeof bpe_uc_decomp / sizeof bpe_uc_decomp[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (bpe_uc_decomp[mid].cp < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < sizeof bpe_uc_decomp / sizeof bpe_uc_decomp[0] && bpe_uc_decomp[lo].cp == c) {
        const BpeDecomp *d = &bpe_uc_decomp[lo];
        memcpy(o, bpe_uc_decomp_pool + d->off, d->len * sizeof *o);
        return d->len;
    }
    o[0] = c;
    return 1;
}

/* Primary composite of (a, b), or 0. */
static uint32_t compose(uint32_t a, uint32_t b)
{
    if (a >= H_LBASE && a < H_LBASE + H_LCOUNT && b >= H_VBASE && b < H_VBASE + H_VCOUNT)
        return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
    if (a >= H_SBASE && a < H_SBASE + H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0 && b > H_TBASE &&
        b < H_TBASE + H_TCOUNT)
        return a + (b - H_TBASE);
    size_t lo = 0, hi = sizeof bpe_uc_comp / sizeof bpe_uc_comp[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const BpeComp *m = &bpe_uc_comp[mid];
        if (m->first < a || (m->first == a && m->second < b))
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < sizeof bpe_uc_comp / sizeof bpe_uc_comp[0] && bpe_uc_comp[lo].first == a &&
        bpe_uc_comp[lo].second == b)
        return bpe_uc_comp[lo].composite;
    return 0;
}

/* NFC of cps[0..n) in place into *out (malloc'd, may be cps itself when unchanged).
 * Returns the new length, or -1 when out of memory. */
static long nfc(uint32_t *cps, size_t n, uint32_t **out)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (uc_flags(cps[i]) & BPE_UC_NFC)
            break;
    if (i == n) {
        *out = cps;
        return (long)n;
    }
    /* decompose */
    size_t cap = n + 16, m = 0;
    uint32_t *d = malloc(cap * sizeof *d);
    if (!d)
        return -1;
    for (i = 0; i < n; i++) {
        uint32_t tmp[BPE_MAX_DECOMP];
        size_t k = decompose(cps[i], tmp);
        if (m + k > cap) {
            cap = 2 * cap + k;
            uint32_t *nd = realloc(d, cap * sizeof *nd);
            if (!nd) {
                free(d);
                return -1;
            }
            d = nd;
        }
        memcpy(d + m, tmp, k * sizeof *tmp);
        m += k;
    }
    /* canonical ordering: stable sort of each run of non-starters by combining class
     * (insertion sort for short runs, a counting sort for long ones: no quadratic case) */
    for (i = 0; i < m;) {
        if (!uc_ccc(d[i])) {
            i++;
            continue;
        }
        size_t e = i;
        while (e < m && uc_ccc(d[e]))
            e++;
        if (e - i <= 32) {
            for (size_t a = i + 1; a < e; a++) {
                uint32_t c = d[a];
                unsigned cc = uc_ccc(c);
                size_t j = a;
                while (j > i && uc_ccc(d[j - 1]) > cc) {
                    d[j] = d[j - 1];
                    j--;
                }
                d[j] = c;
            }
        } else {
            size_t start[257] = {0};
            uint32_t *tmp = malloc((e - i) * sizeof *tmp);
            if (!tmp) {
                free(d);
                return -1;
            }
            for (size_t a = i; a < e; a++)
                start[uc_ccc(d[a]) + 1]++;
            for (int k = 1; k <= 256; k++)
                start[k] += start[k - 1];
            for (size_t a = i; a < e; a++)
                tmp[start[uc_ccc(d[a])]++] = d[a];
            memcpy(d + i, tmp, (e - i) * sizeof *tmp);
            free(tmp);
        }
        i = e;
    }
    /* canonical composition */
    if (m) {
        size_t starter = 0, o = 1;
        unsigned last = uc_ccc(d[0]);
        int have_starter = last == 0;
        if (!have_starter)
            last = 256;
        for (i = 1; i < m; i++) {
            uint32_t c = d[i];
            unsigned cc = uc_ccc(c);
            if (have_starter && (last < cc || last == 0)) {
                uint32_t comp = compose(d[starter], c);
                if (comp) {
                    d[starter] = comp;
                    continue;
                }
            }
            if (cc == 0) {
                starter = o;
                have_starter = 1;
            }
            last = cc;
            d[o++] = c;
        }
        m = o;
    }
    *out = d;
    return (long)m;
}

/* ---------------------------------------------------------------------------------------
 * The pre-tokenizer: Qwen3.5's split pattern over code points (QWEN35_PATTERN above).
 * Alternatives are tried in order at each position, as Oniguruma does; the pattern matches
 * at every position (every character is a letter/mark, number, space or other), so
 * Isolated splitting yields exactly the matches. */

static int is_lm(uint32_t c) { return (uc_flags(c) & BPE_UC_LM) != 0; }
static int is_n(uint32_t c) { return (uc_flags(c) & BPE_UC_N) != 0; }
static int is_ws(uint32_t c) { return (uc_flags(c) & BPE_UC_WS) != 0; }
static int is_crlf(uint32_t c) { return c == '\r' || c == '\n'; }

/* Case-insensitive ASCII letter match as Oniguruma's (?i) does for these letters: 's'
 * also matches U+017F LATIN SMALL LETTER LONG S (its case fold is 's'). */
static int ci(uint32_t c, char lower)
{
    if (c == (uint32_t)lower || c == (uint32_t)(lower - 32))
        return 1;
    return lower == 's' && c == 0x17F;
}

/* Length (in code points) of the match at i, i < n. */
static size_t match_at(const uint32_t *c, size_t n, size_t i)
{
    /* (?i:'s|'t|'re|'ve|'m|'ll|'d) */
    if (c[i] == '\'' && i + 1 < n) {
        uint32_t a = c[i + 1];
        if (ci(a, 's') || ci(a, 't') || ci(a, 'm') || ci(a, 'd'))
            return 2;
        if (i + 2 < n) {
            uint32_t z = c[i + 2];
            if ((ci(a, 'r') && ci(z, 'e')) || (ci(a, 'v') && ci(z, 'e')) || (ci(a, 'l') && ci(z, 'l')))
                return 3;
        }
    }
    /* [^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+ */
    if (is_lm(c[i])) {
        size_t j = i + 1;
        while (j < n && is_lm(c[j]))
            j++;
        return j - i;
    }
    if (!is_crlf(c[i]) && !is_n(c[i]) && i + 1 < n && is_lm(c[i + 1])) {
        size_t j = i + 2;
        while (j < n && is_lm(c[j]))
            j++;
        return j - i;
    }
    /* \p{N} */
    if (is_n(c[i]))
        return 1;
    /* ' ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*' (c[i] is not a letter, mark or number here) */
    {
        size_t j = i;
        if (c[j] == ' ' && j + 1 < n && !is_ws(c[j + 1]) && !is_lm(c[j + 1]) && !is_n(c[j + 1]))
            j++;
        if (!is_ws(c[j])) {
            while (j < n && !is_ws(c[j]) && !is_lm(c[j]) && !is_n(c[j]))
                j++;
            while (j < n && is_crlf(c[j]))
                j++;
            return j - i;
        }
    }
    /* c[i] is white space from here on */
    size_t e = i;
    while (e < n && is_ws(c[e]))
        e++;
    /* \s*[\r\n]+ : up to the last CR/LF of the run */
    for (size_t k = e; k > i; k--)
        if (is_crlf(c[k - 1]))
            return k - i;
    /* \s+(?!\S) */
    if (e == n)
        return e - i;
    if (e - i >= 2)
        return e - 1 - i;
    /* \s+ */
    return e - i;
}

/* ---------------------------------------------------------------------------------------
 * BPE of one piece (its bytes) */

typedef struct {
    int32_t rank, pos, left, right; /* candidate merge of symbols pos and next(pos) */
} Cand;

typedef struct {
    Cand *h;
    size_t n, cap;
} Heap;

static int cand_less(const Cand *a, const Cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static int heap_push(Heap *q, Cand c)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? 2 * q->cap : 64;
        Cand *h = realloc(q->h, cap * sizeof *h);
        if (!h)
            return -1;
        q->h = h;
        q->cap = cap;
    }
    size_t i = q->n++;
    while (i > 0 && cand_less(&c, &q->h[(i - 1) / 2])) {
        q->h[i] = q->h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    q->h[i] = c;
    return 0;
}

static Cand heap_pop(Heap *q)
{
    Cand top = q->h[0], last = q->h[--q->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const Cand *mc = &last;
        if (l < q->n && cand_less(&q->h[l], mc))
            m = l, mc = &q->h[l];
        if (r < q->n && cand_less(&q->h[r], mc))
            m = r;
        if (m == i)
            break;
        q->h[i] = q->h[m];
        i = m;
    }
    if (q->n)
        q->h[i] = last;
    return top;
}

typedef struct {
    int32_t *id, *prev, *next;
    size_t cap;
    Heap heap;
} Work;

static int push_pair(const Bpe *b, Work *w, int32_t p)
{
    int32_t q = w->next[p];
    if (q < 0)
        return 0;
    int k = merge_of(b, w->id[p], w->id[q]);
    if (k < 0)
        return 0;
    return heap_push(&w->heap, (Cand){k, p, w->id[p], w->id[q]});
}

static int bpe_word(const Bpe *b, Work *w, const uint8_t *s, size_t n, Ids *out)
{
    if (b->ignore_merges) {
        int id = piece_id(b, s, n);
        if (id >= 0)
            return ids_push(out, id);
    }
    if (n > w->cap) {
        size_t cap = n < 64 ? 64 : n;
        int32_t *a = realloc(w->id, cap * sizeof *a), *p = a ? realloc(w->prev, cap * sizeof *p) : NULL,
                *q = p ? realloc(w->next, cap * sizeof *q) : NULL;
        if (a)
            w->id = a;
        if (p)
            w->prev = p;
        if (q)
            w->next = q;
        if (!a || !p || !q)
            return -1;
        w->cap = cap;
    }
    /* one symbol per byte that has a piece (HF drops the others: no unk token) */
    int32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = b->byte_id[s[i]];
        if (id < 0)
            continue;
        w->id[m] = id;
        w->prev[m] = m - 1;
        w->next[m] = m + 1;
        m++;
    }
    if (!m)
        return 0;
    w->next[m - 1] = -1;
    w->heap.n = 0;
    for (int32_t p = 0; p + 1 < m; p++)
        if (push_pair(b, w, p))
            return -1;
    while (w->heap.n) {
        Cand c = heap_pop(&w->heap);
        int32_t q = w->next[c.pos];
        /* stale: a symbol was merged away or changed since this candidate was made */
        if (w->id[c.pos] != c.left || q < 0 || w->id[q] != c.right)
            continue;
        w->id[c.pos] = b->merge_res[c.rank];
        w->id[q] = -1;
        w->next[c.pos] = w->next[q];
        if (w->next[q] >= 0)
            w->prev[w->next[q]] = c.pos;
        if (w->prev[c.pos] >= 0 && push_pair(b, w, w->prev[c.pos]))
            return -1;
        if (push_pair(b, w, c.pos))
            return -1;
    }
    for (int32_t p = 0; p >= 0; p = w->next[p])
        if (ids_push(out, w->id[p]))
            return -1;
    return 0;
}

/* The added token that matches at s[0..n) (the longest), or -1. Only tokens matched in
 * this pass: the raw text's (normalized = 0) or the NFC text's (normalized = 1). */
static int added_at(const Bpe *b, const uint8_t *s, size_t n, int special, int normalized)
{
    if (!(b->added_first[s[0] >> 3] & (1u << (s[0] & 7))))
        return -1;
    int best = -1;
    for (int k = 0; k < b->n_added; k++) {
        const Added *a = &b->added[k];
        if (a->len <= n && a->normalized == normalized && (special || !a->special) &&
            !memcmp(a->text, s, a->len) && (best < 0 || a->len > b->added[best].len))
            best = k;
    }
    return best;
}

/* Split and BPE of normalized code points. buf: room for 4 * k bytes. */
static int encode_pieces(const Bpe *b, Work *w, const uint32_t *cps, size_t k, uint8_t *buf, Ids *out)
{
    for (size_t i = 0; i < k;) {
        size_t len = match_at(cps, k, i), nb = 0;
        for (size_t j = i; j < i + len; j++)
            nb += utf8_put(buf + nb, cps[j]);
        if (bpe_word(b, w, buf, nb, out))
            return -1;
        i += len;
    }
    return 0;
}

/* Encode one segment between raw-text added tokens: NFC, then (as HF's AddedVocabulary)
 * the added tokens that are matched in normalized text, then split and BPE. */
static int encode_text(const Bpe *b, Work *w, const uint8_t *s, size_t n, int special, Ids *out,
                       char *err, size_t errlen, size_t base)
{
    if (!n)
        return 0;
    if (n > (SIZE_MAX - 1) / 4 / sizeof(uint32_t)) {
        seterr(err, errlen, "text too long");
        return -1;
    }
    uint32_t *cps = malloc(n * sizeof *cps), *norm = NULL;
    uint8_t *buf = NULL, *nbuf = NULL;
    size_t *start = NULL;
    int rc = -1;
    if (!cps)
        goto oom;
    size_t bad = 0;
    long m = utf8_decode(s, n, cps, &bad);
    if (m < 0) {
        seterr(err, errlen, "invalid UTF-8 at byte %zu of the text", base + bad);
        goto done;
    }
    long k = nfc(cps, (size_t)m, &norm);
    if (k < 0)
        goto oom;
    buf = malloc(4 * (size_t)k + 1);
    if (!buf)
        goto oom;
    if (!b->n_normalized) {
        if (encode_pieces(b, w, norm, (size_t)k, buf, out))
            goto oom;
    } else {
        /* the NFC text as UTF-8, with the byte offset of each code point */
        nbuf = malloc(4 * (size_t)k + 1);
        start = malloc(((size_t)k + 1) * sizeof *start);
        if (!nbuf || !start)
            goto oom;
        size_t nb = 0;
        for (size_t i = 0; i < (size_t)k; i++) {
            start[i] = nb;
            nb += utf8_put(nbuf + nb, norm[i]);
        }
        start[k] = nb;
        size_t from = 0;
        for (size_t i = 0; i < (size_t)k; i++) {
            int a = added_at(b, nbuf + start[i], nb - start[i], special, 1);
            if (a < 0)
                continue;
            if (encode_pieces(b, w, norm + from, i - from, buf, out) || ids_push(out, b->added[a].id))
                goto oom;
            size_t end = start[i] + b->added[a].len, j = i;
            while (start[j] < end) /* a match of valid UTF-8 ends on a character boundary */
                j++;
            from = j;
            i = j - 1;
        }
        if (encode_pieces(b, w, norm + from, (size_t)k - from, buf, out))
            goto oom;
    }
    rc = 0;
    goto done;
oom:
    seterr(err, errlen, "out of memory");
done:
    if (norm != cps)
        free(norm);
    free(cps);
    free(buf);
    free(nbuf);
    free(start);
    return rc;
}

int bpe_encode(const Bpe *b, const char *utf8, size_t len, int special, int32_t **ids, size_t *n,
               char *err, size_t errlen)
{
    const uint8_t *s = (const uint8_t *)utf8;
    Ids out = {0};
    Work w = {0};
    *ids = NULL;
    *n = 0;
    size_t start = 0, i = 0;
    while (i < len) {
        int k = added_at(b, s + i, len - i, special, 0);
        if (k < 0) {
            i++;
            continue;
        }
        if (encode_text(b, &w, s + start, i - start, special, &out, err, errlen, start) ||
            ids_push(&out, b->added[k].id))
            goto fail;
        i += b->added[k].len;
        start = i;
    }
    if (encode_text(b, &w, s + start, len - start, special, &out, err, errlen, start))
        goto fail;
    if (!out.v && !(out.v = malloc(sizeof *out.v)))
        goto fail;
    free(w.id);
    free(w.prev);
    free(w.next);
    free(w.heap.h);
    *ids = out.v;
    *n = out.n;
    return 0;
fail:
    if (err && errlen && !err[0])
        seterr(err, errlen, "out of memory");
    free(out.v);
    free(w.id);
    free(w.prev);
    free(w.next);
    free(w.heap.h);
    return -1;
}

/* ---------------------------------------------------------------------------------------
 * Decoding */

/* Length of the valid UTF-8 sequence at s[0..n), or 0 with *skip = the length of the
 * maximal invalid prefix to replace by one U+FFFD (Rust's from_utf8_lossy rule: a
 * truncated but so far valid sequence counts as one error; any other bad byte alone). */
static size_t utf8_valid(const uint8_t *s, size_t n, size_t *skip)
{
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
    } else {
        *skip = 1;
        return 0;
    }
    size_t i = 1;
    for (; i < len; i++) {
        if (i >= n) {
            *skip = i;
            return 0;
        }
        uint8_t t = s[i];
        uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (t < l || t > h) {
            *skip = i;
            return 0;
        }
    }
    return len;
}

char *bpe_decode(const Bpe *b, const int32_t *ids, size_t n, size_t *len)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < b->n_vocab)
            total += b->off[ids[i] + 1] - b->off[ids[i]];
    if (total > (SIZE_MAX - 1) / 3)
        return NULL;
    uint8_t *raw = malloc(total + 1);
    if (!raw)
        return NULL;
    size_t p = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < b->n_vocab) {
            size_t l = b->off[ids[i] + 1] - b->off[ids[i]];
            memcpy(raw + p, b->bytes + b->off[ids[i]], l);
            p += l;
        }
    /* from_utf8_lossy: each invalid part becomes U+FFFD (3 bytes, at most 3x growth) */
    uint8_t *out = malloc(3 * total + 1);
    if (!out) {
        free(raw);
        return NULL;
    }
    size_t o = 0;
    for (size_t i = 0; i < total;) {
        size_t skip = 0, v = utf8_valid(raw + i, total - i, &skip);
        if (v) {
            memcpy(out + o, raw + i, v);
            o += v;
            i += v;
        } else {
            out[o++] = 0xEF, out[o++] = 0xBF, out[o++] = 0xBD;
            i += skip;
        }
    }
    out[o] = 0;
    free(raw);
    if (len)
        *len = o;
    return (char *)out;
}
