/* image_png.c - PNG decoder with its own inflate (RFC 1950/1951), producing
 * exactly the 8-bit RGB that Pillow 9.4 gives for Image.open(f).convert("RGB").
 *
 * Contents (top-down):
 *   1. errors, CRC-32, Adler-32
 *   2. inflate: bit reader, canonical Huffman tables, stored/fixed/dynamic
 *      blocks, zlib wrapper (header and Adler-32 checked)
 *   3. PNG: chunk walk, IHDR/PLTE/tRNS, filters, Adam7, conversion to RGB
 *
 * Policy (Pillow where it is well defined, an error where the file is corrupt):
 *   - every chunk up to IEND must be complete and have a correct CRC (Pillow
 *     checks only the chunks before the first IDAT); anything after IEND is
 *     ignored. As in Pillow (PngImageFile.load_end), the file may end, or end
 *     inside a chunk, anywhere after the image data: a missing or cut IEND.
 *   - IHDR must come first. Image data is the first run of consecutive IDAT
 *     chunks (later IDATs are ignored, as Pillow does).
 *   - the zlib stream must be complete and its Adler-32 correct (Pillow stops
 *     reading after the last row). Decompressed data beyond what the image
 *     needs is ignored, as in Pillow, but still inflated and checksummed - up
 *     to 64 MiB of it, more is refused as a bomb; bytes after the end of the
 *     zlib stream are ignored. Too little data is an error.
 *   - pixel conversion as Pillow: 16-bit samples keep their high byte, except
 *     16-bit grayscale (mode I), which convert("RGB") clips to 0..255; 2/4-bit
 *     gray is scaled (x85, x17); palette entries missing from PLTE are gray
 *     (i,i,i); alpha and tRNS are dropped, never composited.
 *   - Pillow's refusals are kept: unknown depth/colour combination, filter
 *     method != 0, more than 256 PLTE entries, a palette image without PLTE
 *     but with a single-index tRNS, short IHDR/tRNS/gAMA/sRGB/pHYs/
 *     acTL/fcTL chunks, an empty iCCP or one without a NUL byte, zTXt with a
 *     non-zero compression method. A non-zero interlace method means Adam7, as
 *     in Pillow. The content of other ancillary chunks is not interpreted (no
 *     gamma, no ICC, no APNG frames: the IDAT image is decoded).
 */
#include "common.h"
#include "image.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ========================================================================== */
/* 1. errors and checksums                                                    */
/* ========================================================================== */


static uint32_t rd32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* CRC-32 (ISO-HDLC, as PNG and zlib), table built per decode (no globals). */
static void crc_table_init(uint32_t t[256]) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        t[n] = c;
    }
}

static uint32_t crc_update(const uint32_t t[256], uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = t[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

typedef struct {
    uint32_t a, b; /* the two Adler-32 sums */
} Adler;

static void adler_update(Adler *s, const uint8_t *p, size_t n) {
    uint32_t a = s->a, b = s->b;
    while (n) {
        size_t k = n < 5552 ? n : 5552; /* largest run before b can overflow */
        n -= k;
        while (k--) {
            a += *p++;
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    s->a = a;
    s->b = b;
}

/* ========================================================================== */
/* 2. inflate                                                                 */
/* ========================================================================== */

#define FAST_BITS 10          /* codes up to this length decode with one lookup */
#define WINDOW 32768          /* deflate's maximum distance */
#define MAX_EXCESS (64u << 20) /* decompressed bytes beyond the image we are willing to check */

typedef struct {
    uint16_t fast[1 << FAST_BITS]; /* by next FAST_BITS input bits: (len << 9) | symbol, 0 = slow path */
    uint16_t count[16];            /* number of codes of each length */
    uint16_t symbol[288];          /* symbols sorted by code (canonical order) */
} Huff;

typedef struct {
    const uint8_t *in; /* compressed data (the concatenated IDAT payloads) */
    size_t in_len;     /* its length */
    size_t pos;        /* next byte to load into the bit buffer */
    uint64_t bits;     /* bit buffer, next bit in bit 0 */
    int nbits;         /* valid bits in the buffer */
    uint8_t *out;      /* output: the first cap decompressed bytes */
    size_t cap;        /* bytes the image needs (size of out) */
    size_t total;      /* bytes produced so far, including excess beyond cap */
    uint8_t *ring;     /* the last WINDOW bytes produced beyond cap (NULL until needed) */
    Adler adler;       /* running checksum of the bytes beyond cap (out is summed at the end) */
    const char *why;   /* reason for a failure */
} Inflate;

static void refill(Inflate *z) {
    while (z->nbits <= 56 && z->pos < z->in_len) {
        z->bits |= (uint64_t)z->in[z->pos++] << z->nbits;
        z->nbits += 8;
    }
}

/* Take n (<= 32) bits; -1 if the input ends first. */
static long getbits(Inflate *z, int n) {
    long v;
    if (z->nbits < n) {
        refill(z);
        if (z->nbits < n) {
            z->why = "truncated image data";
            return -1;
        }
    }
    v = (long)(z->bits & ((1ull << n) - 1));
    z->bits >>= n;
    z->nbits -= n;
    return v;
}

/* Build a canonical Huffman table from code lengths. Follows zlib's rules:
 * an over-subscribed set is an error; an incomplete set is an error unless
 * incomplete_ok and the set is a single code of length 1; an empty set is
 * accepted (any use of it then fails to decode). */
static int huff_build(Huff *h, const uint8_t *lens, int n, int incomplete_ok) {
    uint16_t offs[16];
    int left = 1, max = 0;
    memset(h->count, 0, sizeof h->count);
    memset(h->fast, 0, sizeof h->fast);
    for (int i = 0; i < n; i++) h->count[lens[i]]++;
    h->count[0] = 0;
    for (int len = 1; len <= 15; len++) {
        left = (left << 1) - h->count[len];
        if (left < 0) return -1; /* over-subscribed */
        if (h->count[len]) max = len;
    }
    if (max == 0) return 0;
    if (left > 0 && !(incomplete_ok && max == 1)) return -1; /* incomplete */
    offs[1] = 0;
    for (int len = 1; len < 15; len++) offs[len + 1] = offs[len] + h->count[len];
    for (int i = 0; i < n; i++)
        if (lens[i]) h->symbol[offs[lens[i]]++] = (uint16_t)i;
    /* fast table: walk the canonical codes of length <= FAST_BITS */
    {
        int code = 0, idx = 0;
        for (int len = 1; len <= FAST_BITS; len++) {
            for (int k = 0; k < h->count[len]; k++, idx++, code++) {
                int rev = 0;
                for (int b = 0; b < len; b++) rev |= ((code >> b) & 1) << (len - 1 - b);
                for (int f = rev; f < (1 << FAST_BITS); f += 1 << len)
                    h->fast[f] = (uint16_t)((len << 9) | h->symbol[idx]);
            }
            code <<= 1;
        }
    }
    return 0;
}

/* Decode one symbol; -1 on an invalid code or end of input. */
static int huff_decode(Inflate *z, const Huff *h) {
    uint16_t e;
    int len, code = 0, first = 0, index = 0;
    if (z->nbits < 15) refill(z);
    e = h->fast[z->bits & ((1u << FAST_BITS) - 1)];
    if (e) {
        len = e >> 9;
        if (len > z->nbits) {
            z->why = "truncated image data";
            return -1;
        }
        z->bits >>= len;
        z->nbits -= len;
        return e & 511;
    }
    /* slow path: canonical decoding bit by bit (codes longer than FAST_BITS) */
    for (len = 1; len <= 15; len++) {
        int count = h->count[len];
        if (len > z->nbits) {
            z->why = "truncated image data";
            return -1;
        }
        code |= (int)((z->bits >> (len - 1)) & 1);
        if (code - count < first) {
            z->bits >>= len;
            z->nbits -= len;
            return h->symbol[index + (code - first)];
        }
        index += count;
        first += count;
        first <<= 1;
        code <<= 1;
    }
    z->why = "invalid Huffman code in image data";
    return -1;
}

/* ---- output: out[0..cap) then a ring of the last WINDOW bytes ---- */

static int out_excess_start(Inflate *z) {
    if (!z->ring) {
        z->ring = malloc(WINDOW);
        if (!z->ring) {
            z->why = "out of memory";
            return -1;
        }
        adler_update(&z->adler, z->out, z->cap); /* out is complete: sum it now */
    }
    return 0;
}

static int put_byte(Inflate *z, uint8_t v) {
    if (z->total < z->cap) {
        z->out[z->total++] = v;
        return 0;
    }
    if (out_excess_start(z)) return -1;
    if (z->total - z->cap >= MAX_EXCESS) {
        z->why = "far too much image data";
        return -1;
    }
    z->ring[z->total & (WINDOW - 1)] = v;
    adler_update(&z->adler, &v, 1);
    z->total++;
    return 0;
}

static uint8_t get_back(const Inflate *z, size_t dist) {
    size_t p = z->total - dist;
    return p < z->cap ? z->out[p] : z->ring[p & (WINDOW - 1)];
}

/* Copy len bytes from dist back (overlap allowed, byte by byte semantics). */
static int copy_match(Inflate *z, size_t dist, size_t len) {
    if (dist > z->total) {
        z->why = "invalid distance too far back in image data";
        return -1;
    }
    if (z->total + len <= z->cap) { /* fast path: all inside out */
        uint8_t *d = z->out + z->total, *s = d - dist;
        for (size_t i = 0; i < len; i++) d[i] = s[i];
        z->total += len;
        return 0;
    }
    for (size_t i = 0; i < len; i++)
        if (put_byte(z, get_back(z, dist))) return -1;
    return 0;
}

/* ---- blocks ---- */

static const uint16_t LEN_BASE[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59,
                                      67, 83, 99, 115, 131, 163, 195, 227, 258};
static const uint8_t LEN_EXTRA[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                      2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint16_t DIST_BASE[30] = {1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129,
                                       193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
static const uint8_t DIST_EXTRA[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6,
                                       6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

static int inflate_codes(Inflate *z, const Huff *lit, const Huff *dist) {
    for (;;) {
        int sym = huff_decode(z, lit);
        if (sym < 0) return -1;
        if (sym < 256) {
            if (z->total < z->cap) z->out[z->total++] = (uint8_t)sym;
            else if (put_byte(z, (uint8_t)sym)) return -1;
        } else if (sym == 256) {
            return 0;
        } else {
            long e, d;
            size_t len;
            int ds;
            sym -= 257;
            if (sym >= 29) {
                z->why = "invalid literal/length code in image data";
                return -1;
            }
            e = getbits(z, LEN_EXTRA[sym]);
            if (e < 0) return -1;
            len = LEN_BASE[sym] + (size_t)e;
            ds = huff_decode(z, dist);
            if (ds < 0) return -1;
            if (ds >= 30) {
                z->why = "invalid distance code in image data";
                return -1;
            }
            d = getbits(z, DIST_EXTRA[ds]);
            if (d < 0) return -1;
            if (copy_match(z, DIST_BASE[ds] + (size_t)d, len)) return -1;
        }
    }
}

static int inflate_stored(Inflate *z) {
    long len, nlen;
    /* drop to a byte boundary, then LEN and NLEN */
    z->bits >>= z->nbits & 7;
    z->nbits -= z->nbits & 7;
    len = getbits(z, 16);
    if (len < 0) return -1;
    nlen = getbits(z, 16);
    if (nlen < 0) return -1;
    if ((len ^ 0xFFFF) != nlen) {
        z->why = "invalid stored block lengths in image data";
        return -1;
    }
    /* bytes still in the bit buffer come first, then straight from the input */
    while (len > 0 && z->nbits >= 8) {
        uint8_t v = (uint8_t)(z->bits & 0xFF);
        z->bits >>= 8;
        z->nbits -= 8;
        if (put_byte(z, v)) return -1;
        len--;
    }
    if ((size_t)len > z->in_len - z->pos) {
        z->why = "truncated image data";
        return -1;
    }
    if (z->total + (size_t)len <= z->cap) {
        memcpy(z->out + z->total, z->in + z->pos, (size_t)len);
        z->total += (size_t)len;
        z->pos += (size_t)len;
    } else {
        while (len-- > 0)
            if (put_byte(z, z->in[z->pos++])) return -1;
    }
    return 0;
}

static int inflate_fixed(Inflate *z, Huff *lit, Huff *dist) {
    uint8_t lens[288];
    int i;
    for (i = 0; i < 144; i++) lens[i] = 8;
    for (; i < 256; i++) lens[i] = 9;
    for (; i < 280; i++) lens[i] = 7;
    for (; i < 288; i++) lens[i] = 8;
    huff_build(lit, lens, 288, 0);
    for (i = 0; i < 32; i++) lens[i] = 5;
    huff_build(dist, lens, 32, 0); /* codes 30/31 exist but are rejected when decoded */
    return inflate_codes(z, lit, dist);
}

static int inflate_dynamic(Inflate *z, Huff *lit, Huff *dist) {
    static const uint8_t ORDER[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
    uint8_t lens[288 + 32], cl[19];
    long hlit = getbits(z, 5), hdist, hclen;
    int nlen, ndist, i = 0;
    if (hlit < 0 || (hdist = getbits(z, 5)) < 0 || (hclen = getbits(z, 4)) < 0) return -1;
    nlen = (int)hlit + 257;
    ndist = (int)hdist + 1;
    if (nlen > 286 || ndist > 30) {
        z->why = "too many length or distance symbols in image data";
        return -1;
    }
    memset(cl, 0, sizeof cl);
    for (int k = 0; k < (int)hclen + 4; k++) {
        long v = getbits(z, 3);
        if (v < 0) return -1;
        cl[ORDER[k]] = (uint8_t)v;
    }
    if (huff_build(lit, cl, 19, 0)) {
        z->why = "invalid code lengths set in image data";
        return -1;
    }
    while (i < nlen + ndist) {
        int sym = huff_decode(z, lit), rep;
        long r;
        uint8_t v = 0;
        if (sym < 0) return -1;
        if (sym < 16) {
            lens[i++] = (uint8_t)sym;
            continue;
        }
        if (sym == 16) {
            if (i == 0) {
                z->why = "invalid bit length repeat in image data";
                return -1;
            }
            v = lens[i - 1];
            r = getbits(z, 2);
            rep = 3;
        } else if (sym == 17) {
            r = getbits(z, 3);
            rep = 3;
        } else {
            r = getbits(z, 7);
            rep = 11;
        }
        if (r < 0) return -1;
        rep += (int)r;
        if (i + rep > nlen + ndist) {
            z->why = "invalid bit length repeat in image data";
            return -1;
        }
        while (rep--) lens[i++] = v;
    }
    if (lens[256] == 0) {
        z->why = "invalid code -- missing end-of-block in image data";
        return -1;
    }
    if (huff_build(lit, lens, nlen, 1)) {
        z->why = "invalid literal/lengths set in image data";
        return -1;
    }
    if (huff_build(dist, lens + nlen, ndist, 1)) {
        z->why = "invalid distances set in image data";
        return -1;
    }
    return inflate_codes(z, lit, dist);
}

/* Inflate a zlib stream into out[0..cap). Returns the number of bytes the
 * stream produced (possibly more than cap, the excess checked and dropped),
 * or -1 with z->why. */
static int zlib_inflate(Inflate *z) {
    Huff *lit, *dist;
    int last = 0, rc = 0;
    long cmf, flg;
    Adler ad = {1, 0};
    uint8_t trailer[4];

    cmf = getbits(z, 8);
    flg = cmf < 0 ? -1 : getbits(z, 8);
    if (flg < 0) return -1;
    if ((cmf * 256 + flg) % 31 != 0) {
        z->why = "incorrect zlib header check in image data";
        return -1;
    }
    if ((cmf & 15) != 8) {
        z->why = "unknown compression method in image data";
        return -1;
    }
    if ((cmf >> 4) > 7) {
        z->why = "invalid window size in image data";
        return -1;
    }
    if (flg & 32) {
        z->why = "zlib preset dictionary in image data";
        return -1;
    }
    lit = malloc(sizeof *lit);
    dist = malloc(sizeof *dist);
    if (!lit || !dist) {
        free(lit);
        free(dist);
        z->why = "out of memory";
        return -1;
    }
    z->adler = ad;
    while (!last && rc == 0) {
        long hdr = getbits(z, 3);
        if (hdr < 0) {
            rc = -1;
            break;
        }
        last = (int)(hdr & 1);
        switch (hdr >> 1) {
        case 0: rc = inflate_stored(z); break;
        case 1: rc = inflate_fixed(z, lit, dist); break;
        case 2: rc = inflate_dynamic(z, lit, dist); break;
        default:
            z->why = "invalid block type in image data";
            rc = -1;
        }
    }
    free(lit);
    free(dist);
    if (rc) return -1;
    /* Adler-32 of the uncompressed data, big-endian, at the next byte boundary */
    z->bits >>= z->nbits & 7;
    z->nbits -= z->nbits & 7;
    for (int k = 0; k < 4; k++) {
        long v = getbits(z, 8);
        if (v < 0) {
            z->why = "truncated image data (missing zlib checksum)";
            return -1;
        }
        trailer[k] = (uint8_t)v;
    }
    if (!z->ring) adler_update(&z->adler, z->out, z->total); /* never went past cap */
    if (rd32(trailer) != ((z->adler.b << 16) | z->adler.a)) {
        z->why = "incorrect zlib checksum in image data";
        return -1;
    }
    return 0;
}

/* ========================================================================== */
/* 3. PNG                                                                     */
/* ========================================================================== */

typedef struct {
    int w, h;            /* size from IHDR */
    int depth;           /* bits per sample: 1, 2, 4, 8, 16 */
    int ctype;           /* colour type: 0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA */
    int channels;        /* samples per pixel */
    int interlaced;      /* Adam7 */
    uint8_t pal[256][3]; /* palette; entries not in PLTE are gray (i,i,i), as Pillow's default */
} Png;

/* Adam7 passes: x/y start and step. Pass 0 = the whole image when not interlaced. */
static const int A7_X0[7] = {0, 4, 0, 2, 0, 1, 0}, A7_Y0[7] = {0, 0, 4, 0, 2, 0, 1};
static const int A7_DX[7] = {8, 8, 4, 4, 2, 2, 1}, A7_DY[7] = {8, 8, 8, 4, 4, 2, 2};

static void pass_size(const Png *p, int pass, int *pw, int *ph) {
    if (!p->interlaced) {
        *pw = p->w;
        *ph = p->h;
        return;
    }
    *pw = p->w > A7_X0[pass] ? (p->w - A7_X0[pass] + A7_DX[pass] - 1) / A7_DX[pass] : 0;
    *ph = p->h > A7_Y0[pass] ? (p->h - A7_Y0[pass] + A7_DY[pass] - 1) / A7_DY[pass] : 0;
}

static size_t row_bytes(const Png *p, int pw) {
    return ((size_t)pw * (size_t)p->channels * (size_t)p->depth + 7) / 8;
}

/* Undo the filter of one row in place. prev = the unfiltered previous row of
 * the pass, or NULL for its first row. bpp = bytes per complete pixel (>= 1). */
static int unfilter(uint8_t *row, const uint8_t *prev, size_t n, size_t bpp, int type) {
    size_t i;
    switch (type) {
    case 0: break;
    case 1:
        for (i = bpp; i < n; i++) row[i] = (uint8_t)(row[i] + row[i - bpp]);
        break;
    case 2:
        if (prev)
            for (i = 0; i < n; i++) row[i] = (uint8_t)(row[i] + prev[i]);
        break;
    case 3:
        for (i = 0; i < n; i++) {
            unsigned a = i >= bpp ? row[i - bpp] : 0, b = prev ? prev[i] : 0;
            row[i] = (uint8_t)(row[i] + ((a + b) >> 1));
        }
        break;
    case 4:
        for (i = 0; i < n; i++) {
            int a = i >= bpp ? row[i - bpp] : 0, b = prev ? prev[i] : 0;
            int c = (i >= bpp && prev) ? prev[i - bpp] : 0;
            int pp = a + b - c, pa = abs(pp - a), pb = abs(pp - b), pc = abs(pp - c);
            int pred = (pa <= pb && pa <= pc) ? a : (pb <= pc ? b : c);
            row[i] = (uint8_t)(row[i] + pred);
        }
        break;
    default: return -1;
    }
    return 0;
}

/* Convert one unfiltered row of n pixels to RGB, writing every step-th pixel
 * of dst (step in pixels), as Pillow's unpacker + convert("RGB"). */
static void row_to_rgb(const Png *p, const uint8_t *row, int n, int step, uint8_t *dst) {
    size_t st = (size_t)step * 3;
    int x;
    if (p->depth < 8) { /* gray 1/2/4 or palette 1/2/4: packed MSB first */
        int d = p->depth, per = 8 / d, mask = (1 << d) - 1;
        int scale = d == 1 ? 255 : d == 2 ? 85 : 17;
        for (x = 0; x < n; x++, dst += st) {
            int v = (row[x / per] >> (8 - d - (x % per) * d)) & mask;
            if (p->ctype == 3) {
                memcpy(dst, p->pal[v], 3);
            } else {
                dst[0] = dst[1] = dst[2] = (uint8_t)(v * scale);
            }
        }
        return;
    }
    if (p->depth == 8) {
        switch (p->ctype) {
        case 0:
            for (x = 0; x < n; x++, dst += st) dst[0] = dst[1] = dst[2] = row[x];
            break;
        case 2:
            if (step == 1) memcpy(dst, row, (size_t)n * 3);
            else
                for (x = 0; x < n; x++, dst += st) memcpy(dst, row + 3 * x, 3);
            break;
        case 3:
            for (x = 0; x < n; x++, dst += st) memcpy(dst, p->pal[row[x]], 3);
            break;
        case 4:
            for (x = 0; x < n; x++, dst += st) dst[0] = dst[1] = dst[2] = row[2 * x];
            break;
        default: /* 6 */
            for (x = 0; x < n; x++, dst += st) memcpy(dst, row + 4 * x, 3);
            break;
        }
        return;
    }
    /* 16-bit, big-endian samples */
    switch (p->ctype) {
    case 0: /* I;16B -> I, then I -> RGB clips to 255 */
        for (x = 0; x < n; x++, dst += st) {
            unsigned v = ((unsigned)row[2 * x] << 8) | row[2 * x + 1];
            dst[0] = dst[1] = dst[2] = (uint8_t)(v > 255 ? 255 : v);
        }
        break;
    case 2: /* RGB;16B keeps the high bytes */
        for (x = 0; x < n; x++, dst += st) {
            dst[0] = row[6 * x];
            dst[1] = row[6 * x + 2];
            dst[2] = row[6 * x + 4];
        }
        break;
    case 4: /* LA;16B -> RGBA */
        for (x = 0; x < n; x++, dst += st) dst[0] = dst[1] = dst[2] = row[4 * x];
        break;
    default: /* 6: RGBA;16B */
        for (x = 0; x < n; x++, dst += st) {
            dst[0] = row[8 * x];
            dst[1] = row[8 * x + 2];
            dst[2] = row[8 * x + 4];
        }
        break;
    }
}

/* Chunk types as Pillow's is_cid (regex \w\w\w\w on bytes). */
static int is_cid(const uint8_t *t) {
    for (int i = 0; i < 4; i++) {
        uint8_t c = t[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return 0;
    }
    return 1;
}

static int is_type(const uint8_t *t, const char *name) { return memcmp(t, name, 4) == 0; }

/* Checks Pillow applies to ancillary chunks it parses (a short chunk raises). */
static int check_ancillary(const Png *p, const uint8_t *type, const uint8_t *d, uint32_t n, char *err,
                           size_t errlen) {
    if (is_type(type, "tRNS")) {
        if ((p->ctype == 0 && n < 2) || (p->ctype == 2 && n < 6))
            return fail(err, errlen, "truncated tRNS chunk");
    } else if (is_type(type, "gAMA")) {
        if (n < 4) return fail(err, errlen, "truncated gAMA chunk");
    } else if (is_type(type, "sRGB")) {
        if (n < 1) return fail(err, errlen, "truncated sRGB chunk");
    } else if (is_type(type, "pHYs")) {
        if (n < 9) return fail(err, errlen, "truncated pHYs chunk");
    } else if (is_type(type, "acTL")) {
        if (n < 8) return fail(err, errlen, "truncated acTL chunk");
    } else if (is_type(type, "fcTL")) {
        if (n < 26) return fail(err, errlen, "truncated fcTL chunk");
    } else if (is_type(type, "iCCP")) {
        /* profile name, NUL, compression method (Pillow reads s[s.find(b"\0")]) */
        const uint8_t *z = n ? memchr(d, 0, n) : NULL;
        if (n == 0) return fail(err, errlen, "truncated iCCP chunk");
        if ((z ? *z : d[n - 1]) != 0) return fail(err, errlen, "unknown compression method in iCCP chunk");
    } else if (is_type(type, "zTXt")) {
        const uint8_t *z = n ? memchr(d, 0, n) : NULL;
        if (z && z + 1 < d + n && z[1] != 0) return fail(err, errlen, "unknown compression method in zTXt chunk");
    }
    return 0;
}

/* IHDR: size, depth and colour type (only the combinations Pillow has a mode for). */
static int png_ihdr(Png *p, const uint8_t *data, uint32_t n, char *err, size_t errlen) {
    static const int OK[17][7] = {
        /* depth x colour type (0..6): 1 = Pillow has a mode for it */
        [1] = {1, 0, 0, 1, 0, 0, 0}, [2] = {1, 0, 0, 1, 0, 0, 0},  [4] = {1, 0, 0, 1, 0, 0, 0},
        [8] = {1, 0, 1, 1, 1, 0, 1}, [16] = {1, 0, 1, 0, 1, 0, 1},
    };
    uint32_t w, h;
    if (n < 13) return fail(err, errlen, "truncated IHDR chunk");
    w = rd32(data);
    h = rd32(data + 4);
    p->depth = data[8];
    p->ctype = data[9];
    if (p->depth > 16 || p->ctype > 6 || !OK[p->depth][p->ctype])
        return fail(err, errlen, "unsupported bit depth %d for colour type %d", data[8], data[9]);
    if (data[11] != 0) return fail(err, errlen, "unknown filter method");
    p->interlaced = data[12] != 0;
    if (w == 0 || h == 0) return fail(err, errlen, "invalid image size %ux%u", (unsigned)w, (unsigned)h);
    if (w > IMAGE_MAX_DIM || h > IMAGE_MAX_DIM || (uint64_t)w * h > (uint64_t)IMAGE_MAX_PIXELS)
        return fail(err, errlen, "image too large (%ux%u)", (unsigned)w, (unsigned)h);
    if (image_within_limit(w, h, err, errlen)) return -1; /* image_decode_max */
    p->w = (int)w;
    p->h = (int)h;
    p->channels = p->ctype == 0 || p->ctype == 3 ? 1 : p->ctype == 4 ? 2 : p->ctype == 2 ? 3 : 4;
    return 0;
}

/* Walk and verify every chunk up to IEND (or the end of the file after the image data, where
 * Pillow stops reading): the header and the palette into p, the size of the first run of
 * IDAT chunks into *idat_len. */
static int png_chunks(const uint8_t *buf, size_t len, Png *p, size_t *idat_len, char *err, size_t errlen) {
    uint32_t crct[256];
    size_t pos = 8;
    int seen_ihdr = 0, seen_iend = 0, idat_state = 0; /* 0 none yet, 1 in the first run, 2 after it */
    int have_plte = 0;  /* a PLTE chunk preceded the image data (palette images) */
    int trns_index = 0; /* Pillow's info["transparency"] is a palette index */
    crc_table_init(crct);
    *idat_len = 0;
    while (!seen_iend) {
        uint32_t n;
        const uint8_t *type, *data;
        if (len - pos < 8) {
            if (idat_state) break; /* after the image data: Pillow stops reading here */
            return fail(err, errlen, pos == len ? "missing IEND chunk (truncated file)" : "truncated chunk header");
        }
        n = rd32(buf + pos);
        type = buf + pos + 4;
        if (n > 0x7FFFFFFFu) return fail(err, errlen, "invalid chunk length");
        if (!is_cid(type)) return fail(err, errlen, "invalid chunk type");
        if (len - pos - 8 < (size_t)n + 4) {
            if (idat_state && !is_type(type, "IDAT")) break;
            return fail(err, errlen, "truncated %.4s chunk", (const char *)type);
        }
        data = buf + pos + 8;
        if (crc_update(crct, 0, type, 4 + (size_t)n) != rd32(data + n))
            return fail(err, errlen, "bad CRC in %.4s chunk", (const char *)type);
        if (!seen_ihdr && !is_type(type, "IHDR")) return fail(err, errlen, "missing IHDR chunk");

        if (is_type(type, "IHDR")) {
            if (seen_ihdr) return fail(err, errlen, "duplicate IHDR chunk");
            if (png_ihdr(p, data, n, err, errlen)) return -1;
            seen_ihdr = 1;
        } else if (is_type(type, "IDAT")) {
            if (idat_state == 0) idat_state = 1;
            if (idat_state == 1) {
                if (*idat_len + n < *idat_len) return fail(err, errlen, "image data too large");
                *idat_len += n;
            }
        } else {
            if (idat_state == 1) idat_state = 2;
            if (is_type(type, "IEND")) {
                seen_iend = 1;
            } else if (is_type(type, "PLTE")) {
                /* used for palette images when it precedes the image data */
                if (p->ctype == 3 && idat_state == 0) {
                    uint32_t k, cnt = n / 3;
                    if (cnt > 256) return fail(err, errlen, "invalid palette size");
                    for (k = 0; k < 256; k++) p->pal[k][0] = p->pal[k][1] = p->pal[k][2] = (uint8_t)k;
                    for (k = 0; k < cnt; k++) memcpy(p->pal[k], data + 3 * k, 3);
                    have_plte = 1;
                }
            } else if (is_type(type, "tRNS") && p->ctype == 3) {
                /* Pillow: exactly one 0 among 0xFF bytes = an index, anything
                 * else = per-entry alpha bytes; the last tRNS counts */
                uint32_t k, zeros = 0;
                for (k = 0; k < n; k++) zeros += data[k] == 0 ? 1 : (data[k] == 0xFF ? 0 : 2);
                trns_index = zeros == 1;
            } else if (check_ancillary(p, type, data, n, err, errlen)) {
                return -1;
            }
        }
        pos += 12 + (size_t)n;
    }
    if (idat_state == 0) return fail(err, errlen, "no image data (IDAT chunk)");
    /* convert("RGB") with an index transparency needs the palette: Pillow fails */
    if (p->ctype == 3 && !have_plte && trns_index)
        return fail(err, errlen, "palette image with transparency but no PLTE chunk");
    return 0;
}

/* Copy the payloads of the first run of IDAT chunks (idat_len bytes, as png_chunks counted
 * them in a verified file) into idat. */
static void png_gather_idat(const uint8_t *buf, uint8_t *idat, size_t idat_len) {
    size_t q = 8, o = 0;
    int state = 0;
    for (;;) {
        if (state == 1 && o == idat_len) break; /* the file may end right after the image data */
        uint32_t n = rd32(buf + q);
        const uint8_t *type = buf + q + 4;
        if (is_type(type, "IDAT")) {
            state = 1;
            memcpy(idat + o, buf + q + 8, n);
            o += n;
        } else if (state == 1 || is_type(type, "IEND")) {
            break;
        }
        q += 12 + (size_t)n;
    }
}

/* Unfilter the inflated rows (filter byte + row, pass by pass) and convert them into out
 * (allocated by the caller). */
static int png_unfilter_image(const Png *p, uint8_t *raw, Image *out, char *err, size_t errlen) {
    size_t bpp = ((size_t)p->channels * (size_t)p->depth + 7) / 8, off = 0;
    for (int pass = 0; pass < (p->interlaced ? 7 : 1); pass++) {
        int pw, ph, x0 = p->interlaced ? A7_X0[pass] : 0, y0 = p->interlaced ? A7_Y0[pass] : 0;
        int dx = p->interlaced ? A7_DX[pass] : 1, dy = p->interlaced ? A7_DY[pass] : 1;
        size_t rb;
        const uint8_t *prev = NULL;
        pass_size(p, pass, &pw, &ph);
        if (pw == 0 || ph == 0) continue;
        rb = row_bytes(p, pw);
        for (int y = 0; y < ph; y++) {
            uint8_t *row = raw + off + 1;
            if (unfilter(row, prev, rb, bpp, raw[off])) return fail(err, errlen, "invalid filter type %d", raw[off]);
            row_to_rgb(p, row, pw, dx, out->rgb + ((size_t)(y0 + y * dy) * (size_t)p->w + (size_t)x0) * 3);
            prev = row;
            off += 1 + rb;
        }
    }
    return 0;
}

int png_decode(const uint8_t *buf, size_t len, Image *out, char *err, size_t errlen) {
    static const uint8_t SIG[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    Png p;
    size_t idat_len = 0, need = 0;
    uint8_t *idat = NULL;
    Inflate z;
    int rc = -1;

    out->w = out->h = 0;
    out->rgb = NULL;
    memset(&p, 0, sizeof p);
    memset(&z, 0, sizeof z);
    if (len < 8 || memcmp(buf, SIG, 8) != 0) return fail(err, errlen, "bad signature");
    for (int i = 0; i < 256; i++) p.pal[i][0] = p.pal[i][1] = p.pal[i][2] = (uint8_t)i;
    if (png_chunks(buf, len, &p, &idat_len, err, errlen)) return -1;

    /* ---- expected decompressed size: filter byte + row for every pass row ---- */
    for (int pass = 0; pass < (p.interlaced ? 7 : 1); pass++) {
        int pw, ph;
        pass_size(&p, pass, &pw, &ph);
        if (pw == 0 || ph == 0) continue;
        need += (size_t)ph * (1 + row_bytes(&p, pw));
    }
    /* deflate expands at most 1032:1 - refuse before allocating for hopeless files */
    if (need / 1032 > idat_len + 16) return fail(err, errlen, "not enough image data");

    /* ---- gather the first run of IDAT payloads and inflate them ---- */
    idat = malloc(idat_len ? idat_len : 1);
    z.out = malloc(need);
    if (!idat || !z.out) {
        fail(err, errlen, "out of memory");
        goto done;
    }
    png_gather_idat(buf, idat, idat_len);
    z.in = idat;
    z.in_len = idat_len;
    z.cap = need;
    if (zlib_inflate(&z)) {
        fail(err, errlen, "%s", z.why ? z.why : "corrupt image data");
        goto done;
    }
    if (z.total < need) {
        fail(err, errlen, "not enough image data (%zu of %zu bytes)", z.total, need);
        goto done;
    }

    /* ---- unfilter and convert, pass by pass ---- */
    if (image_alloc(out, p.w, p.h, err, errlen)) goto done;
    if (png_unfilter_image(&p, z.out, out, err, errlen)) goto done;
    rc = 0;
done:
    free(idat);
    free(z.out);
    free(z.ring);
    if (rc) image_free(out);
    return rc;
}
