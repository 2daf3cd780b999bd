/* image_bmp.c - the BMP decoder (and headerless DIB), following Pillow 9.4's BmpImagePlugin
 * exactly: bmp_decode (image.h) reads the headers, the pixel layout, the palette, then RLE or
 * raw rows into 8-bit RGB. Library code: never prints, exits or aborts; every failure returns
 * -1 with a one-line reason in err (see image.h). */
#include "common.h"
#include "image.h"

#include <stdlib.h>
#include <string.h>

/* The header is read as Pillow does (BmpImagePlugin, also for a headerless
 * DIB, which starts directly with the info header):
 *   - info header sizes 12 (OS/2 v1: 16-bit unsigned sizes, 3-byte palette
 *     entries, bottom-up), 40, 64, 108, 124; others are refused.
 *   - a height whose top byte is 0xFF means top-down with height 2^32 - value;
 *     any other height is unsigned and bottom-up; width is unsigned.
 *   - palette size = the colour count field, or 1 << bits when it is 0; if the
 *     data offset points right after the info header, 4 * colours is added.
 *   - bits 1/4/8: palette ("P"), unless every used palette entry is gray
 *     (i,i,i) (entries 0 and 255 for 2 colours): then the image is read as mode
 *     "1" (2 colours) or "L" - with 1 or 8 bits per pixel whatever the header
 *     says, as Pillow does. More than 256 entries is refused ("invalid palette
 *     size"); indices past the palette are gray (i,i,i).
 *   - 16 bits: BGR;15 (or BGR;16 with 565 bit fields), 24: BGR, 32: BGRX;
 *     BI_BITFIELDS only with the masks Pillow knows; alpha is dropped.
 *   - RLE8/RLE4 through Pillow's BmpRleDecoder, quirks included.
 *   - rows are 4-byte aligned; the last row's padding may be missing.
 * Where Pillow behaves differently for a file opened by name (memory-mapped
 * 8-bit rows) and from memory, the file-name behaviour is followed. */

typedef enum {
    RAW_1,      /* 1 bit per pixel, MSB first, set = white */
    RAW_L,      /* 8-bit gray */
    RAW_P1,     /* 1-bit palette index */
    RAW_P4,     /* 4-bit palette index */
    RAW_P8,     /* 8-bit palette index */
    RAW_BGR15,  /* 16-bit little-endian 5-5-5, blue in the low bits */
    RAW_BGR16,  /* 16-bit little-endian 5-6-5 */
    RAW_BGR,    /* B, G, R bytes */
    RAW_32      /* 4 bytes, channel byte positions in BmpInfo.pos */
} BmpRaw;

typedef struct {
    BmpRaw raw;          /* pixel layout */
    int pos[3];          /* RAW_32: byte offsets of R, G, B within a pixel */
    uint8_t pal[256][3]; /* RGB palette for RAW_P* (gray beyond its size) */
} BmpInfo;

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static unsigned le16(const uint8_t *p) { return (unsigned)p[0] | ((unsigned)p[1] << 8); }

static int raw_bits(BmpRaw r) {
    switch (r) {
    case RAW_1: case RAW_P1: return 1;
    case RAW_P4: return 4;
    case RAW_L: case RAW_P8: return 8;
    case RAW_BGR15: case RAW_BGR16: return 16;
    case RAW_BGR: return 24;
    default: return 32;
    }
}

/* One row of n pixels in layout bi->raw -> RGB. */
static void bmp_row(const BmpInfo *bi, const uint8_t *s, int n, uint8_t *d) {
    int x;
    for (x = 0; x < n; x++, d += 3) {
        unsigned v;
        switch (bi->raw) {
        case RAW_1: d[0] = d[1] = d[2] = (s[x >> 3] & (0x80 >> (x & 7))) ? 255 : 0; break;
        case RAW_L: d[0] = d[1] = d[2] = s[x]; break;
        case RAW_P1: memcpy(d, bi->pal[(s[x >> 3] >> (7 - (x & 7))) & 1], 3); break;
        case RAW_P4: memcpy(d, bi->pal[(s[x >> 1] >> ((x & 1) ? 0 : 4)) & 15], 3); break;
        case RAW_P8: memcpy(d, bi->pal[s[x]], 3); break;
        case RAW_BGR15:
            v = le16(s + 2 * x);
            d[0] = (uint8_t)(((v >> 10) & 31) * 255 / 31);
            d[1] = (uint8_t)(((v >> 5) & 31) * 255 / 31);
            d[2] = (uint8_t)((v & 31) * 255 / 31);
            break;
        case RAW_BGR16:
            v = le16(s + 2 * x);
            d[0] = (uint8_t)(((v >> 11) & 31) * 255 / 31);
            d[1] = (uint8_t)(((v >> 5) & 63) * 255 / 63);
            d[2] = (uint8_t)((v & 31) * 255 / 31);
            break;
        case RAW_BGR:
            d[0] = s[3 * x + 2];
            d[1] = s[3 * x + 1];
            d[2] = s[3 * x];
            break;
        case RAW_32:
            d[0] = s[4 * x + bi->pos[0]];
            d[1] = s[4 * x + bi->pos[1]];
            d[2] = s[4 * x + bi->pos[2]];
            break;
        }
    }
}

/* BmpRleDecoder: fills data (w*h bytes, zeroed by the caller) with index or
 * gray bytes in file row order, or returns -1. p = the tile offset in the file. */
static int bmp_rle(const uint8_t *buf, size_t len, size_t p, int w, int h, int rle4, uint8_t *data, char *err,
                   size_t errlen) {
    const size_t total = (size_t)w * (size_t)h;
    size_t L = 0; /* len(data): may run past total, the excess is never used */
    size_t x = 0;
#define EMIT(v)                                \
    do {                                       \
        if (L < total) data[L] = (uint8_t)(v); \
        L++;                                   \
    } while (0)
    while (L < total) {
        unsigned num, byte;
        if (p >= len) break;
        num = buf[p++];
        if (p >= len) break;
        byte = buf[p++];
        if (num) { /* encoded run, clipped to the row */
            unsigned i;
            if (x + num > (size_t)w) num = x < (size_t)w ? (unsigned)((size_t)w - x) : 0;
            for (i = 0; i < num; i++) EMIT(rle4 ? ((i & 1) ? (byte & 15) : (byte >> 4)) : byte);
            x += num;
        } else if (byte == 0) { /* end of line: zero-fill to a row boundary (data starts zeroed) */
            L += ((size_t)w - L % (size_t)w) % (size_t)w;
            x = 0;
        } else if (byte == 1) { /* end of bitmap */
            break;
        } else if (byte == 2) { /* delta: Pillow reads 2 bytes, ignores them, reads 2 more */
            size_t right, up;
            if (len - p < 2) break;
            p += 2;
            if (len - p < 2) return fail(err, errlen, "truncated RLE delta");
            right = buf[p];
            up = buf[p + 1];
            p += 2;
            L += right + up * (size_t)w; /* zeros (data starts zeroed) */
            x = L % (size_t)w;
        } else { /* absolute run of `byte` pixels */
            size_t want = rle4 ? byte / 2 : byte, got = len - p < want ? len - p : want, i;
            for (i = 0; i < got; i++) {
                if (rle4) {
                    EMIT(buf[p + i] >> 4);
                    EMIT(buf[p + i] & 15);
                } else {
                    EMIT(buf[p + i]);
                }
            }
            p += got;
            if (got < want) break;
            x += byte;
            if (p % 2 != 0) p++; /* word alignment, by absolute file position */
        }
    }
#undef EMIT
    if (L < total) return fail(err, errlen, "not enough image data");
    return 0;
}

/* A headerless DIB (Pillow's DibImageFile): starts with a known info header size. */
static int bmp_is_dib(const uint8_t *buf, size_t len) {
    uint32_t hs;
    if (len < 4) return 0;
    hs = le32(buf);
    return hs == 12 || hs == 40 || hs == 64 || hs == 108 || hs == 124;
}

/* What the file and info headers say (BmpImagePlugin._bitmap up to the palette). */
typedef struct {
    uint32_t hsize, compression, masks[4];
    uint64_t offset, colors, w, h;
    unsigned bits;
    int direction;  /* -1 bottom-up, 1 top-down */
    int padding;    /* bytes per palette entry: 3 (OS/2 v1) or 4 */
    size_t pos;     /* the file position after the info header (and bit field masks) */
    size_t base;    /* where the info header starts: 14, or 0 for a headerless DIB */
} BmpHeader;

/* The file header (or none, for a DIB) and the info header, checked against the limits. */
static int bmp_header(const uint8_t *buf, size_t len, BmpHeader *H, char *err, size_t errlen) {
    const uint8_t *hd;
    memset(H, 0, sizeof *H);
    H->direction = -1;
    if (len >= 2 && buf[0] == 'B' && buf[1] == 'M') { /* file header: magic, size, reserved, data offset */
        if (len < 14) return fail(err, errlen, "truncated header");
        H->offset = le32(buf + 10);
        H->base = 14;
    } else if (bmp_is_dib(buf, len)) { /* headerless DIB: pixels follow the palette */
        H->offset = 0;
        H->base = 0;
    } else {
        return fail(err, errlen, "bad magic number");
    }
    if (len - H->base < 4) return fail(err, errlen, "truncated header");
    H->hsize = le32(buf + H->base);
    if (H->hsize != 12 && H->hsize != 40 && H->hsize != 64 && H->hsize != 108 && H->hsize != 124)
        return fail(err, errlen, "unsupported header size (%u)", (unsigned)H->hsize);
    if (len - H->base - 4 < H->hsize - 4) return fail(err, errlen, "truncated header");
    hd = buf + H->base + 4;
    H->pos = H->base + (size_t)H->hsize;
    if (H->hsize == 12) {
        H->w = le16(hd);
        H->h = le16(hd + 2);
        H->bits = le16(hd + 6);
        H->padding = 3;
    } else {
        int y_flip = hd[7] == 0xFF;
        H->direction = y_flip ? 1 : -1;
        H->w = le32(hd);
        H->h = y_flip ? ((uint64_t)1 << 32) - le32(hd + 4) : le32(hd + 4);
        H->bits = le16(hd + 10);
        H->compression = le32(hd + 12);
        H->colors = le32(hd + 28); /* the colour count field (0: 1 << bits, below) */
        H->padding = 4;
        if (H->compression == 3) { /* BI_BITFIELDS */
            if (H->hsize - 4 >= 52) {
                for (int i = 0; i < 4; i++) H->masks[i] = le32(hd + 36 + 4 * i);
            } else {
                if (len - H->pos < 12) return fail(err, errlen, "truncated bit field masks");
                for (int i = 0; i < 3; i++) H->masks[i] = le32(buf + H->pos + 4 * i);
                H->pos += 12;
            }
        }
    }
    if (H->w == 0 || H->h == 0) return fail(err, errlen, "invalid image size");
    if (H->w > IMAGE_MAX_DIM || H->h > IMAGE_MAX_DIM || H->w * H->h > (uint64_t)IMAGE_MAX_PIXELS)
        return fail(err, errlen, "image too large (%llux%llu)", (unsigned long long)H->w, (unsigned long long)H->h);
    if (image_within_limit((long long)H->w, (long long)H->h, err, errlen)) return -1;
    if (!H->colors) H->colors = H->bits < 64 ? (uint64_t)1 << H->bits : 0;
    if (H->base && H->offset == 14 + (uint64_t)H->hsize && H->bits <= 8) H->offset += 4 * H->colors;
    return 0;
}

/* The pixel layout from the depth (BIT2MODE) and the bit field masks; *mode_p: a palette. */
static int bmp_layout(const BmpHeader *H, BmpInfo *bi, int *mode_p, char *err, size_t errlen) {
    *mode_p = 0;
    switch (H->bits) { /* BIT2MODE */
    case 1: bi->raw = RAW_P1; *mode_p = 1; break;
    case 4: bi->raw = RAW_P4; *mode_p = 1; break;
    case 8: bi->raw = RAW_P8; *mode_p = 1; break;
    case 16: bi->raw = RAW_BGR15; break;
    case 24: bi->raw = RAW_BGR; break;
    case 32: bi->raw = RAW_32; bi->pos[0] = 2; bi->pos[1] = 1; bi->pos[2] = 0; break;
    default: return fail(err, errlen, "unsupported pixel depth (%u)", H->bits);
    }
    if (H->compression == 3) {
        uint32_t r = H->masks[0], g = H->masks[1], b = H->masks[2], a = H->masks[3];
        if (H->bits == 32) {
            if (r == 0xFF0000 && g == 0xFF00 && b == 0xFF && (a == 0 || a == 0xFF000000u)) { /* BGRX / BGRA */
                bi->pos[0] = 2; bi->pos[1] = 1; bi->pos[2] = 0;
            } else if (r == 0xFF000000u && g == 0xFF0000 && b == 0xFF00 && (a == 0 || a == 0xFF)) { /* XBGR / ABGR */
                bi->pos[0] = 3; bi->pos[1] = 2; bi->pos[2] = 1;
            } else if (r == 0xFF && g == 0xFF00 && b == 0xFF0000 && a == 0xFF000000u) { /* RGBA */
                bi->pos[0] = 0; bi->pos[1] = 1; bi->pos[2] = 2;
            } else if (r == 0 && g == 0 && b == 0 && a == 0) { /* BGRA */
                bi->pos[0] = 2; bi->pos[1] = 1; bi->pos[2] = 0;
            } else {
                return fail(err, errlen, "unsupported bit field masks");
            }
        } else if (H->bits == 24 && r == 0xFF0000 && g == 0xFF00 && b == 0xFF) {
            bi->raw = RAW_BGR;
        } else if (H->bits == 16 && r == 0xF800 && g == 0x7E0 && b == 0x1F) {
            bi->raw = RAW_BGR16;
        } else if (H->bits == 16 && r == 0x7C00 && g == 0x3E0 && b == 0x1F) {
            bi->raw = RAW_BGR15;
        } else {
            return fail(err, errlen, "unsupported bit field masks");
        }
    } else if (H->compression != 0 && H->compression != 1 && H->compression != 2) {
        return fail(err, errlen, "unsupported compression (%u)", (unsigned)H->compression);
    }
    return 0;
}

/* The palette at *pos: padding * colors bytes (a short read is fine); an all-gray one makes
 * the image mode "1" or "L". *pos moves past what was read. */
static int bmp_palette(const uint8_t *buf, size_t len, const BmpHeader *H, size_t *pos, BmpInfo *bi, char *err,
                       size_t errlen) {
    uint64_t want, i, colors = H->colors;
    size_t got, entries, padding = (size_t)H->padding;
    const uint8_t *pal = buf + *pos;
    int gray = 1;
    if (colors == 0 || colors > 65536)
        return fail(err, errlen, "unsupported palette size (%llu)", (unsigned long long)colors);
    want = (uint64_t)padding * colors;
    got = len - *pos < want ? len - *pos : (size_t)want;
    *pos += got;
    for (i = 0; i < colors && gray; i++) {
        unsigned val = colors == 2 ? (i ? 255 : 0) : (unsigned)(i & 255);
        size_t at = (size_t)i * padding;
        if (at + 3 > got || pal[at] != val || pal[at + 1] != val || pal[at + 2] != val) gray = 0;
    }
    if (gray) {
        bi->raw = colors == 2 ? RAW_1 : RAW_L;
        return 0;
    }
    entries = got / padding; /* putpalette: len * 8 / bits of BGR(X) */
    if (entries > 256) return fail(err, errlen, "invalid palette size");
    for (i = 0; i < 256; i++) bi->pal[i][0] = bi->pal[i][1] = bi->pal[i][2] = (uint8_t)i;
    for (i = 0; i < entries; i++) {
        bi->pal[i][0] = pal[i * padding + 2];
        bi->pal[i][1] = pal[i * padding + 1];
        bi->pal[i][2] = pal[i * padding];
    }
    return 0;
}

/* RLE8/RLE4 pixels at offset (BmpRleDecoder) into out. */
static int bmp_rle_pixels(const uint8_t *buf, size_t len, const BmpHeader *H, uint64_t offset, BmpInfo *bi, Image *out,
                          char *err, size_t errlen) {
    uint64_t w = H->w, h = H->h;
    uint8_t *data;
    int y;
    if (bi->raw != RAW_L && bi->raw != RAW_P1 && bi->raw != RAW_P4 && bi->raw != RAW_P8)
        return fail(err, errlen, "RLE compression with %u bits per pixel is not supported", H->bits);
    if (bi->raw != RAW_L) bi->raw = RAW_P8;
    data = calloc((size_t)w * (size_t)h, 1);
    if (!data) return fail(err, errlen, "out of memory");
    if (offset > len || bmp_rle(buf, len, (size_t)offset, (int)w, (int)h, H->compression == 2, data, err, errlen) ||
        image_alloc(out, (int)w, (int)h, err, errlen)) {
        if (offset > len) fail(err, errlen, "not enough image data");
        free(data);
        return -1;
    }
    for (y = 0; y < out->h; y++) {
        int dy = H->direction < 0 ? out->h - 1 - y : y;
        bmp_row(bi, data + (size_t)y * (size_t)out->w, out->w, out->rgb + (size_t)dy * (size_t)out->w * 3);
    }
    free(data);
    return 0;
}

/* Raw rows at offset into out: stride from the header's bits, row size from the layout. */
static int bmp_raw_pixels(const uint8_t *buf, size_t len, const BmpHeader *H, uint64_t offset, const BmpInfo *bi,
                          Image *out, char *err, size_t errlen) {
    uint64_t w = H->w, h = H->h;
    uint64_t stride = ((w * H->bits + 31) >> 3) & ~(uint64_t)3;
    uint64_t rowbytes = (w * (uint64_t)raw_bits(bi->raw) + 7) / 8;
    int y;
    if (stride < rowbytes) {
        /* Only a 1/4-bit file with a gray palette read as 8-bit L gets here.
         * Pillow's raw decoder refuses it, but opened by file name Pillow
         * memory-maps it instead (when offset + h * stride fits in the file):
         * rows start stride bytes apart and overlap, and the last one may
         * run past the end of the file, where the mapping reads zeros. */
        uint8_t *row;
        if (bi->raw != RAW_L || offset > len || len - offset < stride * h)
            return fail(err, errlen, "rows too short for the pixel format");
        if (image_alloc(out, (int)w, (int)h, err, errlen)) return -1;
        row = calloc((size_t)rowbytes, 1);
        if (!row) {
            image_free(out);
            return fail(err, errlen, "out of memory");
        }
        for (y = 0; y < out->h; y++) {
            int dy = H->direction < 0 ? out->h - 1 - y : y;
            size_t at = (size_t)offset + (size_t)y * (size_t)stride, n = len - at < rowbytes ? len - at : rowbytes;
            memset(row, 0, (size_t)rowbytes);
            memcpy(row, buf + at, n);
            bmp_row(bi, row, out->w, out->rgb + (size_t)dy * (size_t)out->w * 3);
        }
        free(row);
        return 0;
    }
    if (offset > len || len - offset < stride * (h - 1) + rowbytes)
        return fail(err, errlen, "truncated pixel data");
    if (image_alloc(out, (int)w, (int)h, err, errlen)) return -1;
    for (y = 0; y < out->h; y++) {
        int dy = H->direction < 0 ? out->h - 1 - y : y;
        bmp_row(bi, buf + offset + (size_t)y * stride, out->w, out->rgb + (size_t)dy * (size_t)out->w * 3);
    }
    return 0;
}

int bmp_decode(const uint8_t *buf, size_t len, Image *out, char *err, size_t errlen) {
    BmpHeader H;
    BmpInfo bi;
    int mode_p;
    size_t pos;
    out->w = out->h = 0;
    out->rgb = NULL;
    memset(&bi, 0, sizeof bi);
    if (bmp_header(buf, len, &H, err, errlen) || bmp_layout(&H, &bi, &mode_p, err, errlen)) return -1;
    pos = H.pos;
    if (mode_p && bmp_palette(buf, len, &H, &pos, &bi, err, errlen)) return -1;
    uint64_t offset = H.offset ? H.offset : pos; /* offset or self.fp.tell() */
    if (H.compression == 1 || H.compression == 2) return bmp_rle_pixels(buf, len, &H, offset, &bi, out, err, errlen);
    return bmp_raw_pixels(buf, len, &H, offset, &bi, out, err, errlen);
}
