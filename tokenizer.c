/* tokenizer.c - the LLaMA SentencePiece-BPE encoder, id-for-id identical to
 * sentencepiece (v0.1.97: normalizer.cc, bpe_model.cc, sentencepiece_processor.cc)
 * for BPE models with the identity normaliser, plus Q-Align's
 * tokenizer_image_token (tokenize_prompt).
 *
 * Encoding one text, top-down (tokenizer_encode):
 *   1. normalize  identity rules: every malformed UTF-8 byte becomes U+FFFD,
 *                 every ' ' becomes "▁" (U+2581), and non-empty text gets one
 *                 "▁" in front (add_dummy_prefix). Nothing else changes: no
 *                 NFKC, runs of spaces and newlines are kept as they are.
 *   2. split      the normalized text into symbols: one per UTF-8 character,
 *                 except that a user-defined piece (longest match) is one
 *                 frozen symbol that never merges.
 *   3. merge      repeatedly merge the adjacent pair whose concatenation is a
 *                 piece with the highest score; equal scores go to the leftmost
 *                 pair. Candidates sit in a max-heap; a candidate made stale by
 *                 an earlier merge is recognised and dropped when popped.
 *   4. emit       a merged UNUSED piece is split back into the two halves it
 *                 was last queued from; a symbol that is no piece becomes
 *                 <unk> (a run of them one <unk>) or, with byte fallback, one
 *                 <0xXX> piece per UTF-8 byte.
 *
 * Lookup: sentencepiece keeps two maps, "normal" pieces (NORMAL, USER_DEFINED,
 * UNUSED: the only ones merges can produce) and "reserved" pieces (UNKNOWN,
 * CONTROL, BYTE), and the same string may sit in both. Here one open-addressing
 * hash table holds every id and a lookup names the class it wants.
 */
#include "tokenizer.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==================================================================================
 * Pieces and the hash table
 * ================================================================================== */

static int piece_len(const Tokenizer *t, int id)
{
    return (int)(t->offsets[id + 1] - t->offsets[id]);
}

static const char *piece_ptr(const Tokenizer *t, int id)
{
    return t->blob + t->offsets[id];
}

/* NORMAL, USER_DEFINED and UNUSED pieces form sentencepiece's pieces_ map. */
static int is_normal_class(int type)
{
    return type == SP_NORMAL || type == SP_USER_DEFINED || type == SP_UNUSED;
}

/* 64-bit FNV-1a. */
static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Id of the piece s[0..n) in the normal (normal=1) or reserved (normal=0) class, or -1. */
static int lookup(const Tokenizer *t, const char *s, size_t n, int normal)
{
    size_t mask = t->hash_size - 1;
    for (size_t h = (size_t)hash_bytes(s, n) & mask;; h = (h + 1) & mask) {
        int id = t->hash[h];
        if (id < 0)
            return -1;
        if (is_normal_class(t->types[id]) == normal && (size_t)piece_len(t, id) == n &&
            memcmp(piece_ptr(t, id), s, n) == 0)
            return id;
    }
}

/* sentencepiece's PieceToId: reserved pieces first, then normal ones, else <unk>. */
static int piece_to_id(const Tokenizer *t, const char *s, size_t n)
{
    int id = lookup(t, s, n, 0);
    if (id < 0)
        id = lookup(t, s, n, 1);
    return id < 0 ? t->unk_id : id;
}

int tokenizer_piece_id(const Tokenizer *t, const char *piece, size_t len)
{
    if (!t || !t->hash || (!piece && len))
        return -1;
    int id = lookup(t, piece, len, 0);
    return id >= 0 ? id : lookup(t, piece, len, 1);
}

/* Length of the longest user-defined piece that s[0..n) starts with, 0 if none. */
static size_t user_match(const Tokenizer *t, const char *s, size_t n)
{
    if (t->n_user_lens == 0 || n == 0)
        return 0;
    unsigned char c = (unsigned char)s[0];
    if (!(t->user_first[c >> 3] & (1u << (c & 7))))
        return 0;
    for (int k = 0; k < t->n_user_lens; k++) {
        size_t len = (size_t)t->user_lens[k];
        if (len > n)
            continue;
        int id = lookup(t, s, len, 1);
        if (id >= 0 && t->types[id] == SP_USER_DEFINED)
            return len;
    }
    return 0;
}

/* Length of the well-formed UTF-8 character at s[0..n), or 0 if it is malformed:
 * truncated, a stray continuation byte, an overlong form, a surrogate or above
 * U+10FFFF (sentencepiece's DecodeUTF8 rules). */
static size_t utf8_char_len(const unsigned char *s, size_t n)
{
    unsigned b0 = s[0];
    size_t len;
    uint32_t cp, min;
    if (b0 < 0x80)
        return 1;
    if ((b0 & 0xE0) == 0xC0) {
        len = 2, cp = b0 & 0x1F, min = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
        len = 3, cp = b0 & 0x0F, min = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
        len = 4, cp = b0 & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[k] & 0x3F);
    }
    if (cp < min || (cp >= 0xD800 && cp < 0xE000) || cp > 0x10FFFF)
        return 0;
    return len;
}

/* 1 if s[0..n) is well-formed UTF-8. User-defined pieces must be: they are copied
 * into the normalized text unchanged, which must stay well-formed. */
static int valid_utf8(const char *s, size_t n)
{
    for (size_t i = 0, k; i < n; i += k)
        if (!(k = utf8_char_len((const unsigned char *)s + i, n - i)))
            return 0;
    return 1;
}

/* ==================================================================================
 * Setup
 * ================================================================================== */

static int init_fail(Tokenizer *t, char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    tokenizer_free(t);
    return -1;
}

/* "<0xXX>" with upper-case hex (sentencepiece's ByteToPiece spelling) -> XX, else -1. */
static int byte_of_piece(const char *p, int n)
{
    static const char HEX[] = "0123456789ABCDEF";
    if (n != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>')
        return -1;
    const char *hi = memchr(HEX, p[3], 16), *lo = memchr(HEX, p[4], 16);
    return hi && lo ? (int)((hi - HEX) * 16 + (lo - HEX)) : -1;
}

/* Remember a user-defined piece: its length (distinct lengths, longest first) and
 * its first byte. */
static int add_user_piece(Tokenizer *t, const char *p, int n, int cap)
{
    t->user_first[(unsigned char)p[0] >> 3] |= (uint8_t)(1u << ((unsigned char)p[0] & 7));
    int k = 0;
    while (k < t->n_user_lens && t->user_lens[k] > n)
        k++;
    if (k < t->n_user_lens && t->user_lens[k] == n)
        return 0;
    if (!t->user_lens) {
        t->user_lens = malloc((size_t)cap * sizeof *t->user_lens);
        if (!t->user_lens)
            return -1;
    }
    memmove(t->user_lens + k + 1, t->user_lens + k, (size_t)(t->n_user_lens - k) * sizeof(int));
    t->user_lens[k] = n;
    t->n_user_lens++;
    return 0;
}

int tokenizer_init(Tokenizer *t, int n_vocab, const char *blob, size_t blob_len,
                   const uint32_t *offsets, const float *scores, const uint8_t *types,
                   int add_dummy_prefix, int bos_id, int eos_id, int unk_id,
                   char *err, size_t errlen)
{
    if (!t) {
        if (err && errlen)
            snprintf(err, errlen, "tokenizer: no Tokenizer given");
        return -1;
    }
    memset(t, 0, sizeof *t);
    for (int b = 0; b < 256; b++)
        t->byte_id[b] = -1;
    if (n_vocab <= 0 || !offsets || !scores || !types || (!blob && blob_len))
        return init_fail(t, err, errlen, "tokenizer: empty or missing vocabulary");
    for (int i = 0; i < n_vocab; i++)
        if (offsets[i] > offsets[i + 1])
            return init_fail(t, err, errlen, "tokenizer: piece %d has decreasing offsets", i);
    if (offsets[n_vocab] > blob_len)
        return init_fail(t, err, errlen, "tokenizer: piece offsets run past the %zu-byte blob",
                         blob_len);
    t->n_vocab = n_vocab;
    t->blob = blob;
    t->offsets = offsets;
    t->scores = scores;
    t->types = types;
    t->add_dummy_prefix = add_dummy_prefix != 0;
    t->bos_id = bos_id;
    t->eos_id = eos_id;
    t->unk_id = unk_id;

    t->hash_size = 16;
    while (t->hash_size < 2 * (size_t)n_vocab)
        t->hash_size *= 2;
    t->hash = malloc(t->hash_size * sizeof *t->hash);
    if (!t->hash)
        return init_fail(t, err, errlen, "tokenizer: out of memory");
    memset(t->hash, 0xFF, t->hash_size * sizeof *t->hash);   /* all -1 */

    int n_unk = 0, unk = -1, n_bytes = 0, n_user = 0;
    for (int i = 0; i < n_vocab; i++)
        n_user += types[i] == SP_USER_DEFINED;
    for (int i = 0; i < n_vocab; i++) {
        if (offsets[i + 1] - offsets[i] > (uint32_t)INT_MAX / 4)
            return init_fail(t, err, errlen, "tokenizer: piece %d is too long", i);
        int type = types[i], len = piece_len(t, i);
        const char *p = piece_ptr(t, i);
        if (len == 0)
            return init_fail(t, err, errlen, "tokenizer: piece %d is empty", i);
        if (type < SP_NORMAL || type > SP_BYTE)
            return init_fail(t, err, errlen, "tokenizer: piece %d has unknown type %d", i, type);
        if (isnan(scores[i]))
            return init_fail(t, err, errlen, "tokenizer: piece %d has a NaN score", i);
        int dup = lookup(t, p, (size_t)len, is_normal_class(type));
        if (dup >= 0)
            return init_fail(t, err, errlen, "tokenizer: pieces %d and %d are the same", dup, i);
        size_t h = (size_t)hash_bytes(p, (size_t)len) & (t->hash_size - 1);
        while (t->hash[h] >= 0)
            h = (h + 1) & (t->hash_size - 1);
        t->hash[h] = i;

        if (is_normal_class(type) && len > t->max_piece_len)
            t->max_piece_len = len;
        if (type == SP_UNUSED)
            t->n_unused++;
        if (type == SP_USER_DEFINED && !valid_utf8(p, (size_t)len))
            return init_fail(t, err, errlen, "tokenizer: user-defined piece %d is not UTF-8", i);
        if (type == SP_USER_DEFINED && add_user_piece(t, p, len, n_user) != 0)
            return init_fail(t, err, errlen, "tokenizer: out of memory");
        if (type == SP_UNKNOWN) {
            n_unk++;
            unk = i;
        }
        if (type == SP_BYTE) {
            int b = byte_of_piece(p, len);
            if (b < 0)
                return init_fail(t, err, errlen, "tokenizer: byte piece %d is not <0xXX>", i);
            t->byte_id[b] = i;
            n_bytes++;
        }
    }
    if (n_unk != 1)
        return init_fail(t, err, errlen, "tokenizer: %d <unk> pieces, need exactly 1", n_unk);
    if (unk_id != unk)
        return init_fail(t, err, errlen, "tokenizer: unk_id %d is not the <unk> piece %d",
                         unk_id, unk);
    if (n_bytes != 0 && n_bytes != 256)
        return init_fail(t, err, errlen, "tokenizer: %d byte pieces, byte fallback needs 256",
                         n_bytes);
    t->byte_fallback = n_bytes == 256;
    if (bos_id < -1 || bos_id >= n_vocab || eos_id < -1 || eos_id >= n_vocab)
        return init_fail(t, err, errlen, "tokenizer: bos_id %d / eos_id %d out of range",
                         bos_id, eos_id);
    return 0;
}

void tokenizer_free(Tokenizer *t)
{
    if (!t)
        return;
    free(t->hash);
    free(t->user_lens);
    t->hash = NULL;
    t->user_lens = NULL;
    t->hash_size = 0;
    t->n_user_lens = 0;
}

/* ==================================================================================
 * Step 1: normalize
 * ================================================================================== */

/* Write the normalized form of in[0..len) to out (room for 3*len + 3 bytes needed);
 * return its length. A user-defined piece at the current position is copied as one
 * unit, as sentencepiece's normaliser does (its spaces are still escaped). */
static size_t normalize(const Tokenizer *t, const char *in, size_t len, char *out)
{
    static const char SPACE_UTF8[3] = {'\xE2', '\x96', '\x81'};        /* "▁" U+2581 */
    static const char REPLACEMENT_UTF8[3] = {'\xEF', '\xBF', '\xBD'};  /* U+FFFD */
    size_t o = 0;
    if (len == 0)
        return 0;
    if (t->add_dummy_prefix) {
        memcpy(out, SPACE_UTF8, 3);
        o = 3;
    }
    for (size_t i = 0; i < len;) {
        size_t n = user_match(t, in + i, len - i);
        if (!n)
            n = utf8_char_len((const unsigned char *)in + i, len - i);
        if (!n) {                          /* malformed: one byte -> U+FFFD */
            memcpy(out + o, REPLACEMENT_UTF8, 3);
            o += 3;
            i += 1;
            continue;
        }
        for (size_t k = 0; k < n; k++) {
            if (in[i + k] == ' ') {
                memcpy(out + o, SPACE_UTF8, 3);
                o += 3;
            } else {
                out[o++] = in[i + k];
            }
        }
        i += n;
    }
    return o;
}

/* ==================================================================================
 * Steps 2-3: split into symbols and merge
 * ================================================================================== */

typedef struct {
    int start;         /* byte offset of the symbol in the normalized text */
    int len;           /* length in bytes; 0 once merged into its left neighbour */
    int prev, next;    /* live neighbours (symbol indices), -1 at either end */
    int frozen;        /* 1 for a user-defined piece: never merged */
} Symbol;

typedef struct {
    float score;       /* score of the merged piece (higher merges first) */
    int left, right;   /* the two adjacent symbols (indices) */
    int len;           /* merged length in bytes when queued; a different sum of
                          the two symbols' lengths later means the pair is stale */
} Pair;

typedef struct {
    const Tokenizer *t;
    const char *text;  /* (text_len) the normalized text */
    Symbol *sym;       /* (n_sym) symbols in text order, linked by prev/next */
    int n_sym;
    Pair *heap;        /* (n_heap, capacity cap_heap) max-heap of candidate merges */
    int n_heap, cap_heap;
    int *split;        /* (n_vocab) or NULL: for an UNUSED piece, the length of the
                          left half it was last queued with (0 = never queued) */
    int oom;           /* 1 if a heap allocation failed */
} Merger;

/* Heap order: higher score first, then smaller left index (sentencepiece's
 * SymbolPairComparator). */
static int pair_before(const Pair *a, const Pair *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(Merger *m, Pair p)
{
    if (m->n_heap == m->cap_heap) {
        int cap = m->cap_heap < INT_MAX / 2 ? m->cap_heap * 2 : INT_MAX;
        Pair *h = cap > m->n_heap ? realloc(m->heap, (size_t)cap * sizeof *h) : NULL;
        if (!h) {
            m->oom = 1;
            return;
        }
        m->heap = h;
        m->cap_heap = cap;
    }
    int i = m->n_heap++;
    while (i > 0 && pair_before(&p, &m->heap[(i - 1) / 2])) {
        m->heap[i] = m->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    m->heap[i] = p;
}

static Pair heap_pop(Merger *m)
{
    Pair top = m->heap[0], last = m->heap[--m->n_heap];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= m->n_heap)
            break;
        if (c + 1 < m->n_heap && pair_before(&m->heap[c + 1], &m->heap[c]))
            c++;
        if (!pair_before(&m->heap[c], &last))
            break;
        m->heap[i] = m->heap[c];
        i = c;
    }
    m->heap[i] = last;
    return top;
}

/* Queue the merge of symbols left and right if their concatenation is a piece. */
static void queue_pair(Merger *m, int left, int right)
{
    if (left < 0 || right < 0 || m->sym[left].frozen || m->sym[right].frozen)
        return;
    const Symbol *l = &m->sym[left];
    int len = l->len + m->sym[right].len;     /* the two are contiguous in the text */
    if (len > m->t->max_piece_len)
        return;
    int id = lookup(m->t, m->text + l->start, (size_t)len, 1);
    if (id < 0)
        return;
    heap_push(m, (Pair){m->t->scores[id], left, right, len});
    if (m->split && m->t->types[id] == SP_UNUSED)
        m->split[id] = l->len;
}

/* Split text[0..text_len) into symbols (step 2). */
static void split_symbols(Merger *m, size_t text_len)
{
    static const unsigned char ONE_CHAR_LEN[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    int n = 0;
    for (size_t pos = 0; pos < text_len; n++) {
        size_t len = user_match(m->t, m->text + pos, text_len - pos);
        m->sym[n].frozen = len > 0;
        if (!len) {
            len = ONE_CHAR_LEN[(unsigned char)m->text[pos] >> 4];
            if (len > text_len - pos)
                len = text_len - pos;
        }
        m->sym[n].start = (int)pos;
        m->sym[n].len = (int)len;
        m->sym[n].prev = n - 1;
        m->sym[n].next = n + 1;
        pos += len;
    }
    m->sym[n - 1].next = -1;
    m->n_sym = n;
}

/* Merge until no adjacent pair forms a piece (step 3). */
static void merge_symbols(Merger *m)
{
    for (int i = 1; i < m->n_sym; i++)
        queue_pair(m, i - 1, i);
    while (m->n_heap > 0 && !m->oom) {
        Pair p = heap_pop(m);
        Symbol *l = &m->sym[p.left], *r = &m->sym[p.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != p.len)
            continue;                        /* stale */
        l->len = p.len;
        l->next = r->next;
        if (r->next >= 0)
            m->sym[r->next].prev = p.left;
        r->len = 0;
        queue_pair(m, l->prev, p.left);
        queue_pair(m, p.left, l->next);
    }
}

/* ==================================================================================
 * Step 4: emit ids
 * ================================================================================== */

typedef struct {
    int *ids;          /* (max_ids) destination */
    int max_ids;
    int n;             /* ids produced so far, written or not */
    int prev_unk;      /* the last piece emitted was <unk> */
} Out;

static void put_id(Out *o, int id)
{
    if (o->n < o->max_ids)
        o->ids[o->n] = id;
    o->n++;
}

/* One final piece s[0..n) with id: bytes for an unknown piece under byte fallback,
 * else the id, except that a run of unknown pieces gives one <unk>. */
static void emit_piece(Out *o, const Tokenizer *t, const char *s, int n, int id)
{
    int is_unk = t->types[id] == SP_UNKNOWN;
    if (is_unk && t->byte_fallback) {
        for (int k = 0; k < n; k++)
            put_id(o, t->byte_id[(unsigned char)s[k]]);
    } else if (!(is_unk && o->prev_unk)) {
        put_id(o, id);
    }
    o->prev_unk = is_unk;
}

/* Emit symbol text[start..start+len), splitting UNUSED pieces back into the halves
 * recorded when they were queued (sentencepiece's resegment), left half first.
 * stack has room for len + 1 entries (every pending part is at least one byte). */
static void emit_symbol(const Merger *m, Out *o, int start, int len, int (*stack)[2])
{
    const Tokenizer *t = m->t;
    int sp = 0;
    stack[sp][0] = start;
    stack[sp++][1] = len;
    while (sp > 0) {
        sp--;
        int s = stack[sp][0], n = stack[sp][1];
        int id = piece_to_id(t, m->text + s, (size_t)n);
        int k = m->split && t->types[id] == SP_UNUSED ? m->split[id] : 0;
        if (k <= 0 || k >= n) {
            emit_piece(o, t, m->text + s, n, id);
            continue;
        }
        stack[sp][0] = s + k;            /* right half, done second */
        stack[sp++][1] = n - k;
        stack[sp][0] = s;                /* left half, done first */
        stack[sp++][1] = k;
    }
}

/* ==================================================================================
 * Public entry points
 * ================================================================================== */

int tokenizer_max_ids(size_t len)
{
    return len <= (size_t)(INT_MAX - 4) / 3 ? (int)(3 * len + 4) : -1;
}

int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int add_bos,
                     int *ids, int max_ids)
{
    if (!t || !t->hash || (!text && len) || max_ids < 0 || (!ids && max_ids > 0))
        return -1;
    if (tokenizer_max_ids(len) < 0)
        return -1;
    Out o = {ids, max_ids, 0, 0};
    if (add_bos && t->bos_id >= 0)
        put_id(&o, t->bos_id);
    if (len == 0)
        return o.n;

    Merger m = {0};
    m.t = t;
    char *norm = malloc(3 * len + 3);
    size_t text_len = norm ? normalize(t, text, len, norm) : 0;
    m.text = norm;
    /* one symbol per character at most, and every input byte gives at most one
     * character ("▁", U+FFFD or itself), plus the dummy prefix */
    m.sym = norm ? malloc((len + 1) * sizeof *m.sym) : NULL;
    m.cap_heap = (int)len + 16;
    m.heap = m.sym ? malloc((size_t)m.cap_heap * sizeof *m.heap) : NULL;
    int stack_len = (t->max_piece_len > 4 ? t->max_piece_len : 4) + 1;
    int (*stack)[2] = m.heap ? malloc((size_t)stack_len * sizeof *stack) : NULL;
    if (stack && t->n_unused > 0)
        m.split = calloc((size_t)t->n_vocab, sizeof *m.split);
    int ok = stack && (t->n_unused == 0 || m.split);

    if (ok) {
        split_symbols(&m, text_len);
        merge_symbols(&m);
        ok = !m.oom;
    }
    for (int i = 0; ok && i != -1; i = m.sym[i].next)
        emit_symbol(&m, &o, m.sym[i].start, m.sym[i].len, stack);

    free(m.split);
    free(stack);
    free(m.heap);
    free(m.sym);
    free(norm);
    return ok ? o.n : -1;
}

int tokenize_prompt(const Tokenizer *t, const char *prompt, int *ids, int max_ids)
{
    static const char IMAGE_MARKER[] = "<|image|>";
    const size_t mark_len = sizeof IMAGE_MARKER - 1;
    if (!t || !t->hash || !prompt || max_ids < 0 || (!ids && max_ids > 0))
        return -1;
    /* Python keeps only the first chunk's BOS if that chunk is non-empty ("offset 1");
     * if the prompt starts with the marker, every chunk keeps its own BOS. */
    int first_bos_only = strncmp(prompt, IMAGE_MARKER, mark_len) != 0 && *prompt != '\0' &&
                         t->bos_id >= 0;
    int n = 0;
    const char *chunk = prompt;
    for (;;) {
        const char *end = strstr(chunk, IMAGE_MARKER);
        size_t len = end ? (size_t)(end - chunk) : strlen(chunk);
        if (len > 0) {
            int bos = chunk == prompt || !first_bos_only;
            int room = n < max_ids ? max_ids - n : 0;
            int r = tokenizer_encode(t, chunk, len, bos, room ? ids + n : NULL, room);
            if (r < 0 || r > INT_MAX - 1 - n)
                return -1;
            n += r;
        }
        if (!end)
            return n;
        if (n < max_ids)
            ids[n] = TOKEN_IMAGE_MARKER;
        n++;
        chunk = end + mark_len;
    }
}

/* ==================================================================================
 * Decoding ids to text (sentencepiece's DecodeIds)
 * ================================================================================== */

/* Appends n bytes to out[0..cap) at *len (counting what does not fit). */
static void put_bytes(char *out, size_t cap, size_t *len, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++, (*len)++)
        if (*len + 1 < cap)
            out[*len] = s[i];
}

/* A run of byte pieces: well-formed UTF-8 characters are copied, every other byte
 * becomes U+FFFD on its own, as sentencepiece's decoder does. */
static void put_byte_run(char *out, size_t cap, size_t *len, const unsigned char *b, size_t n)
{
    for (size_t i = 0, k; i < n; i += k) {
        k = utf8_char_len(b + i, n - i);
        if (k)
            put_bytes(out, cap, len, (const char *)b + i, k);
        else
            put_bytes(out, cap, len, "\xEF\xBF\xBD", 3), k = 1;
    }
}

int tokenizer_decode(const Tokenizer *t, const int *ids, int n, char *out, size_t cap)
{
    static const char SPACE[] = "\xE2\x96\x81"; /* U+2581, sentencepiece's space */
    size_t len = 0;
    if (!t || n < 0 || (n > 0 && !ids) || (cap > 0 && !out))
        return -1;
    unsigned char run[64];
    size_t run_n = 0;
    int bos_ws = 1; /* the first surface piece loses the space of its dummy prefix */
    for (int i = 0; i <= n; i++) {
        int id = i < n ? ids[i] : -1, type = id >= 0 && id < t->n_vocab ? t->types[id] : 0;
        if (i < n && (id < 0 || id >= t->n_vocab))
            return -1;
        if (type == SP_BYTE) {
            int b = byte_of_piece(piece_ptr(t, id), piece_len(t, id));
            if (run_n == sizeof run) { /* a long run: flush its whole characters first */
                size_t keep = 0;
                while (keep < 3 && keep < run_n && (run[run_n - 1 - keep] & 0xC0) == 0x80)
                    keep++;
                if (keep < run_n && run[run_n - 1 - keep] >= 0xC0)
                    keep++;
                else
                    keep = 0;
                put_byte_run(out, cap, &len, run, run_n - keep);
                memmove(run, run + run_n - keep, keep);
                run_n = keep;
            }
            run[run_n++] = (unsigned char)(b < 0 ? 0 : b);
            bos_ws = 0;
            continue;
        }
        if (run_n) {
            put_byte_run(out, cap, &len, run, run_n);
            run_n = 0;
        }
        if (i == n || type == SP_CONTROL)
            continue;
        if (type == SP_UNKNOWN) {
            put_bytes(out, cap, &len, " \xE2\x81\x87 ", 5); /* " ⁇ " */
            bos_ws = 0;
            continue;
        }
        const char *p = piece_ptr(t, id);
        int pl = piece_len(t, id);
        if (bos_ws && t->add_dummy_prefix && pl >= 3 && !memcmp(p, SPACE, 3))
            p += 3, pl -= 3;
        for (int k = 0; k < pl;) {
            if (k + 3 <= pl && !memcmp(p + k, SPACE, 3))
                put_bytes(out, cap, &len, " ", 1), k += 3;
            else
                put_bytes(out, cap, &len, p + k, 1), k++;
        }
        bos_ws = 0;
    }
    if (cap > 0)
        out[len + 1 < cap ? len : cap - 1] = '\0';
    return len > INT_MAX - 1 ? -1 : (int)len;
}
