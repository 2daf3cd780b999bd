/* image.c - image loading, format sniffing, PNM decoding, and the
 * Q-Align preprocessing pipeline, bit-exact with Pillow 9.4.
 *
 * Contents (top-down):
 *   1. errors and checked size arithmetic, Image allocation
 *   2. loading files, sniffing the format, dispatching to a decoder
 *   3. PPM writer
 *   4. PNM decoder (P1..P6), following Pillow's PpmImagePlugin exactly
 *   5. preprocessing: expand2square or resize + centre-crop, Pillow's bicubic resampler,
 *      normalisation
 * The BMP decoder is image_bmp.c; PNG image_png.c; JPEG image_jpeg.c, image_jpeg_scan.c.
 *
 * Library code: never prints, exits or aborts; every failure returns -1 with a
 * one-line reason in err (see image.h).
 */
#include "common.h"
#include "image.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The resampling weights must round exactly as Pillow's (a plain x86-64 build,
 * no FMA): multiply-adds are never fused. GCC does not fuse in ISO C mode
 * (-std=c11); clang would within an expression unless told not to. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* ========================================================================== */
/* 1. errors, checked arithmetic, allocation                                  */
/* ========================================================================== */


int image_mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

/* The limits of the image_decode_max in progress on this thread (NULL: none). */
static _Thread_local const ImageLimits *t_limits;

int image_within_limit(long long w, long long h, char *err, size_t errlen) {
    const ImageLimits *L = t_limits;
    if (!L || w < 1 || h < 1) return 0;
    unsigned long long n = (unsigned long long)w * (unsigned long long)h;
    for (int k = 0; k < 2; k++) {
        size_t lim = k ? L->pixels2 : L->pixels;
        const char *name = k ? L->name2 : L->name;
        if (lim && n > lim)
            return fail(err, errlen, "image of %lldx%lld = %llu pixels, more than %s (%zu)", w, h, n, name ? name : "the limit", lim);
    }
    return 0;
}

/* Check w x h against the caps; 0 if acceptable. Used before any allocation,
 * also by decoders that want to refuse early (before reading pixel data). */
static int check_dims(long long w, long long h, char *err, size_t errlen) {
    if (w < 1 || h < 1) return fail(err, errlen, "invalid image size %lldx%lld", w, h);
    if (w > IMAGE_MAX_DIM || h > IMAGE_MAX_DIM)
        return fail(err, errlen, "image too large (%lldx%lld, limit %d per side)", w, h, IMAGE_MAX_DIM);
    if ((unsigned long long)w * (unsigned long long)h > (unsigned long long)IMAGE_MAX_PIXELS)
        return fail(err, errlen, "image too large (%lldx%lld, limit %zu pixels)", w, h,
                    (size_t)IMAGE_MAX_PIXELS);
    return image_within_limit(w, h, err, errlen);
}

int image_alloc(Image *img, int w, int h, char *err, size_t errlen) {
    size_t n;
    img->w = img->h = 0;
    img->rgb = NULL;
    if (check_dims(w, h, err, errlen)) return -1;
    if (!image_mul_size((size_t)w, (size_t)h, &n) || !image_mul_size(n, 3, &n))
        return fail(err, errlen, "image too large (%dx%d)", w, h);
    img->rgb = malloc(n);
    if (!img->rgb) return fail(err, errlen, "out of memory for a %dx%d image", w, h);
    img->w = w;
    img->h = h;
    return 0;
}

void image_free(Image *img) {
    if (!img) return;
    free(img->rgb);
    img->rgb = NULL;
    img->w = img->h = 0;
}

int image_from_rgb(const uint8_t *rgb, int w, int h, Image *out, char *err, size_t errlen) {
    if (!rgb) {
        out->w = out->h = 0;
        out->rgb = NULL;
        return fail(err, errlen, "no pixel data");
    }
    if (image_alloc(out, w, h, err, errlen)) return -1;
    memcpy(out->rgb, rgb, (size_t)w * (size_t)h * 3);
    return 0;
}

/* ========================================================================== */
/* 2. loading, sniffing, dispatch                                             */
/* ========================================================================== */

ImageFormat image_sniff(const uint8_t *buf, size_t len) {
    if (!buf) return IMG_UNKNOWN;
    /* PNG: the full 8-byte signature is checked by png_decode, so that a
     * damaged signature gets a PNG-specific message. */
    if (len >= 4 && buf[0] == 0x89 && buf[1] == 'P' && buf[2] == 'N' && buf[3] == 'G') return IMG_PNG;
    if (len >= 3 && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF) return IMG_JPEG;
    if (len >= 2 && buf[0] == 'B' && buf[1] == 'M') return IMG_BMP;
    if (len >= 2 && buf[0] == 'P' && buf[1] >= '1' && buf[1] <= '6') return IMG_PNM;
    /* headerless DIB (what Pillow opens as "DIB"): a BMP info header size */
    if (len >= 4 && buf[1] == 0 && buf[2] == 0 && buf[3] == 0 &&
        (buf[0] == 12 || buf[0] == 40 || buf[0] == 64 || buf[0] == 108 || buf[0] == 124))
        return IMG_BMP;
    return IMG_UNKNOWN;
}

const char *image_format_name(ImageFormat f) {
    switch (f) {
    case IMG_PNM: return "PNM";
    case IMG_BMP: return "BMP";
    case IMG_PNG: return "PNG";
    case IMG_JPEG: return "JPEG";
    default: return "unknown";
    }
}

int image_decode(const uint8_t *buf, size_t len, Image *out, char *err, size_t errlen) {
    return image_decode_warn(buf, len, out, NULL, 0, err, errlen);
}

int image_decode_warn(const uint8_t *buf, size_t len, Image *out, char *warn, size_t warnlen, char *err,
                      size_t errlen) {
    char why[256];
    int rc;
    ImageFormat f;

    out->w = out->h = 0;
    out->rgb = NULL;
    if (warn && warnlen) warn[0] = '\0';
    if (!buf || len == 0) return fail(err, errlen, "empty file");
    f = image_sniff(buf, len);
    why[0] = '\0';
    switch (f) {
    case IMG_PNM: rc = pnm_decode(buf, len, out, why, sizeof why); break;
    case IMG_BMP: rc = bmp_decode(buf, len, out, why, sizeof why); break;
    case IMG_PNG: rc = png_decode(buf, len, out, why, sizeof why); break;
    case IMG_JPEG: rc = jpeg_decode_warn(buf, len, out, warn, warnlen, why, sizeof why); break;
    default:
        return fail(err, errlen, "unrecognised image format (expected PNG, JPEG, BMP or PNM)");
    }
    if (rc == 0 && (!out->rgb || out->w < 1 || out->h < 1)) {
        image_free(out);
        rc = -1;
        snprintf(why, sizeof why, "decoder returned no image");
    }
    if (rc != 0) {
        image_free(out);
        return fail(err, errlen, "%s: %s", image_format_name(f), why[0] ? why : "decoding failed");
    }
    return 0;
}

int image_decode_max(const uint8_t *buf, size_t len, const ImageLimits *lim, Image *out, char *warn, size_t warnlen,
                     char *err, size_t errlen) {
    const ImageLimits *old = t_limits;
    t_limits = lim;
    int rc = image_decode_warn(buf, len, out, warn, warnlen, err, errlen);
    t_limits = old;
    return rc;
}

int image_load_max(const char *path, const ImageLimits *lim, Image *out, char *warn, size_t warnlen, char *err,
                   size_t errlen) {
    const ImageLimits *old = t_limits;
    t_limits = lim;
    int rc = image_load_warn(path, out, warn, warnlen, err, errlen);
    t_limits = old;
    return rc;
}

int image_load(const char *path, Image *out, char *err, size_t errlen) {
    return image_load_warn(path, out, NULL, 0, err, errlen);
}

int image_load_warn(const char *path, Image *out, char *warn, size_t warnlen, char *err, size_t errlen) {
    FILE *fp;
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    int rc;

    out->w = out->h = 0;
    out->rgb = NULL;
    if (warn && warnlen) warn[0] = '\0';
    if (!path) return fail(err, errlen, "no file name");
    fp = fopen(path, "rb");
    if (!fp) return fail(err, errlen, "cannot open: %s", strerror(errno));
    for (;;) {
        size_t got;
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : (size_t)1 << 16;
            uint8_t *nb;
            if (ncap < cap) { /* overflow */
                free(buf);
                fclose(fp);
                return fail(err, errlen, "file too large");
            }
            nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                fclose(fp);
                return fail(err, errlen, "out of memory reading the file");
            }
            buf = nb;
            cap = ncap;
        }
        got = fread(buf + len, 1, cap - len, fp);
        len += got;
        if (got == 0) break;
    }
    if (ferror(fp)) {
        int e = errno;
        free(buf);
        fclose(fp);
        return fail(err, errlen, "read error: %s", e ? strerror(e) : "unknown");
    }
    fclose(fp);
    if (len == 0) {
        free(buf);
        return fail(err, errlen, "empty file");
    }
    rc = image_decode_warn(buf, len, out, warn, warnlen, err, errlen);
    free(buf);
    return rc;
}

/* ========================================================================== */
/* 3. PPM writer                                                              */
/* ========================================================================== */

int image_write_ppm(const char *path, const Image *img, char *err, size_t errlen) {
    FILE *fp;
    size_t n;
    int ok;
    if (!img || !img->rgb || img->w < 1 || img->h < 1) return fail(err, errlen, "no image to write");
    n = (size_t)img->w * (size_t)img->h * 3;
    fp = fopen(path, "wb");
    if (!fp) return fail(err, errlen, "cannot create: %s", strerror(errno));
    ok = fprintf(fp, "P6\n%d %d\n255\n", img->w, img->h) > 0;
    ok = ok && fwrite(img->rgb, 1, n, fp) == n;
    if (fclose(fp) != 0) ok = 0;
    if (!ok) return fail(err, errlen, "write error: %s", strerror(errno));
    return 0;
}

/* ========================================================================== */
/* 4. PNM (PpmImagePlugin in Pillow 9.4)                                      */
/* ========================================================================== */
/* Header: a magic of up to 6 non-whitespace bytes, then width, height and
 * (except for bitmaps) maxval, each a token of at most 10 bytes; '#' starts a
 * comment that runs to CR/LF (and may sit in the middle of a token, which then
 * continues after the comment). One whitespace byte ends the last token; the
 * pixel data starts right after it.
 *
 * Pixel data, as Pillow decodes it:
 *   P4 ("1;I" raw): 1 bit/pixel, MSB first, rows padded to a byte, 1 = black.
 *   P5/P6 maxval 255: raw 8-bit L/RGB.
 *   P5 maxval 65535: raw big-endian 16-bit, mode I.
 *   other maxvals (PpmDecoder): 1 byte per sample if maxval < 256, else 2
 *       (big-endian); value = min(out_max, round_half_even(v / maxval * out_max))
 *       with out_max 65535 for P5 with maxval > 255 (mode I), else 255.
 *   P1/P2/P3 (PpmPlainDecoder): ASCII tokens, read in 1 MiB blocks (below).
 * convert("RGB"): mode 1 -> 0/255, L -> replicated, I -> clipped to 0..255. */

static int pnm_ws(int c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

/* Python's int() on a bytes token: [+-]digits, single '_' allowed between
 * digits. Tokens are at most 10 bytes, so the value fits in long long. */
static int py_int(const uint8_t *t, size_t n, long long *v) {
    size_t i = 0;
    int neg = 0, digits = 0, prev_us = 0;
    long long x = 0;
    if (n && (t[0] == '+' || t[0] == '-')) {
        neg = t[0] == '-';
        i = 1;
    }
    for (; i < n; i++) {
        if (t[i] >= '0' && t[i] <= '9') {
            x = x * 10 + (t[i] - '0');
            digits++;
            prev_us = 0;
        } else if (t[i] == '_' && digits && !prev_us) {
            prev_us = 1;
        } else {
            return -1;
        }
    }
    if (!digits || prev_us) return -1;
    *v = neg ? -x : x;
    return 0;
}

/* PpmImageFile._read_token: returns 0 and the token, or -1 with err. */
static int pnm_token(const uint8_t *p, size_t len, size_t *pos, uint8_t tok[11], size_t *toklen,
                     char *err, size_t errlen) {
    size_t n = 0;
    while (n <= 10) {
        int c;
        if (*pos >= len) break;
        c = p[(*pos)++];
        if (pnm_ws(c)) {
            if (n == 0) continue;
            break;
        }
        if (c == '#') { /* comment: up to and including CR or LF, or to EOF */
            while (*pos < len) {
                int d = p[(*pos)++];
                if (d == '\r' || d == '\n') break;
            }
            continue;
        }
        tok[n++] = (uint8_t)c;
    }
    if (n == 0) return fail(err, errlen, "header ends early");
    if (n > 10) return fail(err, errlen, "header token too long");
    *toklen = n;
    return 0;
}

/* Map a sample through Pillow's PpmDecoder scaling. */
static unsigned pnm_scale(unsigned v, unsigned maxval, unsigned out_max) {
    double q = (double)v / (double)maxval * (double)out_max;
    double r = nearbyint(q); /* round half to even, as Python's round() */
    return r >= (double)out_max ? out_max : (unsigned)r;
}

/* ---- plain (ASCII) formats: PpmPlainDecoder, emulated block by block ----
 * Pillow reads the data in 1 MiB blocks, strips comments per block and
 * carries a token cut by a block boundary over to the next block. Its quirks
 * are reproduced: the carried token is never cleared, so it is stitched in
 * again after a later block that ends in whitespace, and at EOF it is repeated
 * until the image is full (a file not ending in whitespace repeats its last
 * value); a comment continuing into a block that starts with LF and also
 * contains CR ends at that CR. */

#define PNM_BLOCK (1024 * 1024) /* ImageFile.SAFEBLOCK */

typedef struct {
    const uint8_t *p;  /* whole file */
    size_t len;        /* file length */
    size_t pos;        /* the decoder's file position */
    int comment_spans; /* a comment runs past the end of the previous block */
} PlainReader;

/* self._read_block(): the next raw block (may be empty at EOF). */
static size_t plain_read(PlainReader *r, const uint8_t **b) {
    size_t n = r->len - r->pos < PNM_BLOCK ? r->len - r->pos : PNM_BLOCK;
    *b = r->p + r->pos;
    r->pos += n;
    return n;
}

/* _find_comment_end: lowest non-negative index of LF/CR from start, computed
 * as Pillow does ("min(a, b) if a * b > 0 else max(a, b)"). */
static long plain_comment_end(const uint8_t *b, size_t n, size_t start) {
    long a = -1, c = -1;
    size_t i;
    for (i = start; i < n; i++)
        if (b[i] == '\n') { a = (long)i; break; }
    for (i = start; i < n; i++)
        if (b[i] == '\r') { c = (long)i; break; }
    if (a * c > 0) return a < c ? a : c;
    return a > c ? a : c;
}

/* _ignore_comments(block) -> dst (at most PNM_BLOCK bytes). */
static size_t plain_ignore_comments(PlainReader *r, const uint8_t *b, size_t n, uint8_t *dst) {
    size_t o = 0, i = 0;
    if (r->comment_spans) {
        while (n) {
            long e = plain_comment_end(b, n, 0);
            if (e != -1) {
                b += e + 1;
                n -= (size_t)e + 1;
                break;
            }
            n = plain_read(r, &b);
        }
    }
    r->comment_spans = 0;
    while (i < n) {
        if (b[i] == '#') {
            long e = plain_comment_end(b, n, i);
            if (e == -1) {
                r->comment_spans = 1;
                break;
            }
            i = (size_t)e + 1;
            continue;
        }
        dst[o++] = b[i++];
    }
    return o;
}

/* Store sample number i (of a 1- or 3-band image) into the RGB image. */
static void pnm_put(uint8_t *rgb, int bands, size_t i, uint8_t v) {
    if (bands == 3) rgb[i] = v;
    else rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = v;
}

/* P1 (_decode_bitonal): every non-whitespace byte is a pixel, '0' white,
 * '1' black; the whole block is validated before it is used. */
static int pnm_plain_bits(PlainReader *r, uint8_t *blk, uint8_t *rgb, size_t total, char *err, size_t errlen) {
    size_t have = 0;
    while (have != total) {
        const uint8_t *raw;
        size_t n = plain_read(r, &raw), i;
        if (n == 0) break;
        n = plain_ignore_comments(r, raw, n, blk);
        for (i = 0; i < n; i++)
            if (!pnm_ws(blk[i]) && blk[i] != '0' && blk[i] != '1')
                return fail(err, errlen, "invalid bitmap value in data");
        for (i = 0; i < n && have < total; i++)
            if (!pnm_ws(blk[i])) pnm_put(rgb, 1, have++, blk[i] == '0' ? 255 : 0);
    }
    if (have != total) return fail(err, errlen, "not enough image data");
    return 0;
}

/* One P2/P3 data token -> output byte. mode_i: P2 with maxval > 255 (image
 * mode I, where o32() of a negative value fails and the value is later
 * clipped to 255); otherwise o8() keeps the low byte. */
static int pnm_plain_value(const uint8_t *t, size_t n, unsigned maxval, int mode_i, uint8_t *v8, char *err,
                           size_t errlen) {
    long long v;
    unsigned out_max = mode_i ? 65535 : 255;
    if (n > 10) return fail(err, errlen, "data token too long");
    if (py_int(t, n, &v)) return fail(err, errlen, "invalid number in data");
    if (v > (long long)maxval) return fail(err, errlen, "sample value larger than maxval");
    if (v < 0) {
        if (mode_i) return fail(err, errlen, "negative sample value");
        *v8 = (uint8_t)((long long)nearbyint((double)v / (double)maxval * (double)out_max) & 255);
    } else {
        unsigned s = pnm_scale((unsigned)v, maxval, out_max);
        *v8 = (uint8_t)(s > 255 ? 255 : s);
    }
    return 0;
}

/* P2/P3 (_decode_blocks): decimal tokens of <= 10 bytes, each <= maxval,
 * scaled by round(v / maxval * out_max). */
static int pnm_plain_values(PlainReader *r, uint8_t *blk, unsigned maxval, int mode_i, int bands, uint8_t *rgb,
                            size_t total, char *err, size_t errlen) {
    uint8_t half[16]; /* the carried ("half") token */
    size_t hlen = 0;  /* its length; 0 = none yet */
    size_t have = 0;
    while (have != total) {
        const uint8_t *raw;
        size_t n = plain_read(r, &raw), i, end;
        uint8_t v = 0;
        if (n == 0) {
            if (!hlen) break;
            /* EOF with a carried token: every further round stitches it to
             * " " and yields it once more, until the image is full. */
            if (pnm_plain_value(half, hlen, maxval, mode_i, &v, err, errlen)) return -1;
            while (have != total) pnm_put(rgb, bands, have++, v);
            break;
        }
        n = plain_ignore_comments(r, raw, n, blk + hlen);
        memcpy(blk, half, hlen); /* block = half_token + block */
        n += hlen;
        end = n;
        if (n && !pnm_ws(blk[n - 1])) { /* the last token may continue in the next block */
            size_t s = n;
            while (s > 0 && !pnm_ws(blk[s - 1])) s--;
            if (n - s > 10) return fail(err, errlen, "data token too long");
            memcpy(half, blk + s, n - s);
            hlen = n - s;
            end = s;
        }
        i = 0;
        while (have != total) {
            size_t start;
            while (i < end && pnm_ws(blk[i])) i++;
            if (i >= end) break;
            start = i;
            while (i < end && !pnm_ws(blk[i])) i++;
            if (pnm_plain_value(blk + start, i - start, maxval, mode_i, &v, err, errlen)) return -1;
            pnm_put(rgb, bands, have++, v);
        }
    }
    if (have != total) return fail(err, errlen, "not enough image data");
    return 0;
}

int pnm_decode(const uint8_t *buf, size_t len, Image *out, char *err, size_t errlen) {
    uint8_t magic[6], tok[11];
    size_t mlen = 0, pos = 0, toklen = 0, npix, i;
    long long vals[3] = {0, 0, 0};
    int kind, bitmap, bands, ntok, ix;
    unsigned maxval = 255;

    out->w = out->h = 0;
    out->rgb = NULL;
    /* magic: up to 6 bytes, ended by whitespace (consumed) or EOF */
    while (mlen < 6 && pos < len) {
        uint8_t c = buf[pos++];
        if (pnm_ws(c)) break;
        magic[mlen++] = c;
    }
    if (mlen != 2 || magic[0] != 'P' || magic[1] < '1' || magic[1] > '6') {
        if ((mlen == 6 && !memcmp(magic, "P0CMYK", 6)) || (mlen == 3 && !memcmp(magic, "PyP", 3)) ||
            (mlen == 6 && (!memcmp(magic, "PyRGBA", 6) || !memcmp(magic, "PyCMYK", 6))))
            return fail(err, errlen, "unsupported variant");
        return fail(err, errlen, "bad magic number");
    }
    kind = magic[1] - '0';
    bitmap = kind == 1 || kind == 4;
    bands = (kind == 3 || kind == 6) ? 3 : 1;
    ntok = bitmap ? 2 : 3;
    for (ix = 0; ix < ntok; ix++) {
        if (pnm_token(buf, len, &pos, tok, &toklen, err, errlen)) return -1;
        if (py_int(tok, toklen, &vals[ix])) return fail(err, errlen, "invalid number in header");
        if (ix == 2 && (vals[2] < 1 || vals[2] > 65535))
            return fail(err, errlen, "maxval must be greater than 0 and less than 65536");
    }
    if (!bitmap) maxval = (unsigned)vals[2];
    if (check_dims(vals[0], vals[1], err, errlen)) return -1;
    npix = (size_t)vals[0] * (size_t)vals[1];

    if (kind >= 4) { /* binary: check the data size before allocating */
        size_t need, rowbytes = 0, avail = len - pos;
        const uint8_t *d = buf + pos;
        int in_bytes = maxval < 256 ? 1 : 2;
        if (kind == 4) {
            rowbytes = ((size_t)vals[0] + 7) / 8;
            need = rowbytes * (size_t)vals[1];
        } else {
            need = npix * (size_t)bands * (size_t)in_bytes;
        }
        if (avail < need) return fail(err, errlen, "truncated pixel data (%zu of %zu bytes)", avail, need);
        if (image_alloc(out, (int)vals[0], (int)vals[1], err, errlen)) return -1;
        if (kind == 4) {
            int x, y, w = out->w;
            for (y = 0; y < out->h; y++) {
                const uint8_t *row = d + (size_t)y * rowbytes;
                uint8_t *o = out->rgb + (size_t)y * (size_t)w * 3;
                for (x = 0; x < w; x++) {
                    uint8_t v = (row[x >> 3] & (0x80 >> (x & 7))) ? 0 : 255;
                    o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = v;
                }
            }
        } else if (maxval == 255) {
            if (bands == 3) {
                memcpy(out->rgb, d, npix * 3);
            } else {
                for (i = 0; i < npix; i++) out->rgb[3 * i] = out->rgb[3 * i + 1] = out->rgb[3 * i + 2] = d[i];
            }
        } else if (maxval == 65535 && bands == 1) { /* raw I;16B, then I -> RGB clips */
            for (i = 0; i < npix; i++) {
                unsigned v = ((unsigned)d[2 * i] << 8) | d[2 * i + 1];
                out->rgb[3 * i] = out->rgb[3 * i + 1] = out->rgb[3 * i + 2] = (uint8_t)(v > 255 ? 255 : v);
            }
        } else { /* PpmDecoder: scale every sample through a lookup table */
            unsigned out_max = (bands == 1 && maxval > 255) ? 65535 : 255;
            size_t nlut = in_bytes == 1 ? 256 : 65536, ns = npix * (size_t)bands;
            uint8_t *lut = malloc(nlut);
            if (!lut) {
                image_free(out);
                return fail(err, errlen, "out of memory");
            }
            for (i = 0; i < nlut; i++) {
                unsigned s = pnm_scale((unsigned)i, maxval, out_max);
                lut[i] = (uint8_t)(s > 255 ? 255 : s); /* mode I -> RGB clips */
            }
            for (i = 0; i < ns; i++) {
                unsigned v = in_bytes == 1 ? d[i] : (((unsigned)d[2 * i] << 8) | d[2 * i + 1]);
                uint8_t s = lut[v];
                if (bands == 3) out->rgb[i] = s;
                else out->rgb[3 * i] = out->rgb[3 * i + 1] = out->rgb[3 * i + 2] = s;
            }
            free(lut);
        }
        return 0;
    }

    /* plain (ASCII) formats */
    {
        PlainReader r;
        size_t total = npix * (size_t)bands;
        uint8_t *blk;
        int rc;
        if (kind == 1 && len - pos < total) return fail(err, errlen, "not enough image data");
        if (image_alloc(out, (int)vals[0], (int)vals[1], err, errlen)) return -1;
        memset(&r, 0, sizeof r);
        r.p = buf;
        r.len = len;
        r.pos = pos;
        /* a block never holds more than the data left, plus a carried token */
        blk = malloc((len - pos < PNM_BLOCK ? len - pos : PNM_BLOCK) + 16);
        if (!blk) {
            image_free(out);
            return fail(err, errlen, "out of memory");
        }
        if (kind == 1) rc = pnm_plain_bits(&r, blk, out->rgb, total, err, errlen);
        else rc = pnm_plain_values(&r, blk, maxval, kind == 2 && maxval > 255, bands, out->rgb, total, err, errlen);
        free(blk);
        if (rc) image_free(out);
        return rc;
    }
}

/* ========================================================================== */
/* 5. preprocessing                                                           */
/* ========================================================================== */

/* ---- a row source: an image, optionally padded onto a larger canvas ---- */

typedef struct {
    const Image *img;     /* the pixels */
    int w, h;             /* size of the (virtual) canvas */
    int ox, oy;           /* where img's top-left pixel sits on the canvas */
    uint8_t fill[3];      /* canvas colour outside img */
    uint8_t *fill_row;    /* one canvas row of fill (NULL if never needed) */
    uint8_t *scratch;     /* one canvas row, for rows with left/right padding */
} Source;

/* Pointer to canvas row y (w*3 bytes); valid until the next call. */
static const uint8_t *src_row(const Source *s, int y) {
    const Image *im = s->img;
    int iy = y - s->oy;
    if (iy < 0 || iy >= im->h) return s->fill_row;
    if (s->ox == 0 && im->w == s->w) return im->rgb + (size_t)iy * (size_t)im->w * 3;
    memcpy(s->scratch + (size_t)s->ox * 3, im->rgb + (size_t)iy * (size_t)im->w * 3, (size_t)im->w * 3);
    return s->scratch;
}

static int src_init(Source *s, const Image *img, int w, int h, int ox, int oy, const uint8_t fill[3],
                    char *err, size_t errlen) {
    size_t rowlen = (size_t)w * 3, x;
    memset(s, 0, sizeof *s);
    s->img = img;
    s->w = w;
    s->h = h;
    s->ox = ox;
    s->oy = oy;
    if (fill) memcpy(s->fill, fill, 3);
    if (ox == 0 && oy == 0 && img->w == w && img->h == h) return 0;
    s->fill_row = malloc(rowlen);
    s->scratch = malloc(rowlen);
    if (!s->fill_row || !s->scratch) {
        free(s->fill_row);
        free(s->scratch);
        s->fill_row = s->scratch = NULL;
        return fail(err, errlen, "out of memory");
    }
    for (x = 0; x < (size_t)w; x++) {
        memcpy(s->fill_row + 3 * x, s->fill, 3);
        memcpy(s->scratch + 3 * x, s->fill, 3);
    }
    return 0;
}

static void src_free(Source *s) {
    free(s->fill_row);
    free(s->scratch);
    s->fill_row = s->scratch = NULL;
}

/* ---- Pillow's resampling coefficients (Resample.c, precompute_coeffs) ---- */

#define PRECISION_BITS (32 - 8 - 2)

/* Keys' cubic with a = -0.5, support 2. */
static double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

typedef struct {
    int ksize;     /* coefficients stored per output sample */
    int *bounds;   /* [n][2]: first input sample, number of taps */
    int32_t *kk;   /* [n][ksize]: weights in 22-bit fixed point */
} Coeffs;

static void coeffs_free(Coeffs *c) {
    free(c->bounds);
    free(c->kk);
    c->bounds = NULL;
    c->kk = NULL;
}

/* Weights for resizing in_size samples to out_size (box = whole input). */
static int coeffs_init(Coeffs *c, int in_size, int out_size, char *err, size_t errlen) {
    double support, scale, filterscale, *k;
    size_t nk;
    int xx, x, ksize;

    memset(c, 0, sizeof *c);
    filterscale = scale = (double)in_size / out_size;
    if (filterscale < 1.0) filterscale = 1.0;
    support = 2.0 * filterscale;
    ksize = (int)ceil(support) * 2 + 1;
    if (!image_mul_size((size_t)out_size, (size_t)ksize, &nk) || nk > SIZE_MAX / sizeof(int32_t))
        return fail(err, errlen, "resize coefficients too large");
    c->ksize = ksize;
    c->bounds = malloc((size_t)out_size * 2 * sizeof(int));
    c->kk = malloc(nk * sizeof(int32_t));
    k = malloc((size_t)ksize * sizeof(double));
    if (!c->bounds || !c->kk || !k) {
        free(k);
        coeffs_free(c);
        return fail(err, errlen, "out of memory");
    }
    for (xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        int32_t *kq = c->kk + (size_t)xx * (size_t)ksize;
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (x = 0; x < xmax; x++) {
            double w = bicubic_filter((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        for (x = 0; x < ksize; x++) {
            double v = x < xmax ? k[x] : 0.0;
            kq[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS)) : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        c->bounds[2 * xx] = xmin;
        c->bounds[2 * xx + 1] = xmax;
    }
    free(k);
    return 0;
}

static inline uint8_t clip8(int32_t in) {
    if (in >= (1 << PRECISION_BITS << 8)) return 255;
    if (in <= 0) return 0;
    return (uint8_t)(in >> PRECISION_BITS);
}

/* Pillow sums, for one output sample, 2^21 + sum over taps of weight * input
 * in 32-bit integers (no overflow: |weights| sum to < 1.2 * 2^22). Over taps
 * that all read the padding colour f, that part of the sum is exactly
 * (sum of those weights) * f. Using this, the work below is proportional to
 * the image, not to the padded square, with every result unchanged (a
 * 1 x 16M strip would otherwise take hours, as in Pillow). */

/* One axis of the resampling, split into padding and image parts. */
typedef struct {
    Coeffs c;        /* Pillow's weights */
    int lo, hi;      /* the image occupies input samples [lo, hi) */
    int xa, xb;      /* output samples whose taps reach the image: [xa, xb) */
    int32_t *k_all;  /* [n]: sum of all weights of output sample i */
    int32_t *k_pad;  /* [n]: sum of the weights on padding (outside [lo, hi)) */
} Axis;

static void axis_free(Axis *a) {
    coeffs_free(&a->c);
    free(a->k_all);
    free(a->k_pad);
    a->k_all = a->k_pad = NULL;
}

static int axis_init(Axis *a, int in_size, int out_size, int lo, int hi, char *err, size_t errlen) {
    memset(a, 0, sizeof *a);
    if (coeffs_init(&a->c, in_size, out_size, err, errlen)) return -1;
    a->lo = lo;
    a->hi = hi;
    a->k_all = malloc((size_t)out_size * sizeof(int32_t));
    a->k_pad = malloc((size_t)out_size * sizeof(int32_t));
    if (!a->k_all || !a->k_pad) {
        axis_free(a);
        return fail(err, errlen, "out of memory");
    }
    a->xa = out_size;
    a->xb = 0;
    for (int i = 0; i < out_size; i++) {
        int xmin = a->c.bounds[2 * i], xmax = a->c.bounds[2 * i + 1];
        const int32_t *k = a->c.kk + (size_t)i * (size_t)a->c.ksize;
        int32_t all = 0, img = 0;
        for (int x = 0; x < xmax; x++) {
            all += k[x];
            if (xmin + x >= lo && xmin + x < hi) img += k[x];
        }
        a->k_all[i] = all;
        a->k_pad[i] = all - img;
        if (xmin < hi && xmin + xmax > lo) { /* contiguous: bounds are monotonic */
            if (i < a->xa) a->xa = i;
            a->xb = i + 1;
        }
    }
    if (a->xb < a->xa) a->xa = a->xb = 0;
    return 0;
}

/* Horizontal pass of image row `in` (w pixels, at canvas columns [lo, hi)) for
 * output samples [xa, xb) of row `out`, the padding counted as fill. */
static void resample_row_h(const Axis *a, const uint8_t *in, const uint8_t fill[3], uint8_t *out) {
    for (int xx = a->xa; xx < a->xb; xx++) {
        const int xmin = a->c.bounds[2 * xx], xend = xmin + a->c.bounds[2 * xx + 1];
        const int x0 = xmin > a->lo ? xmin : a->lo, x1 = xend < a->hi ? xend : a->hi;
        const int32_t *k = a->c.kk + (size_t)xx * (size_t)a->c.ksize + (x0 - xmin); /* weight of input x0 */
        const uint8_t *p = in + (size_t)(x0 - a->lo) * 3;
        const int32_t half = 1 << (PRECISION_BITS - 1), pad = a->k_pad[xx];
        int32_t s0 = half + pad * fill[0], s1 = half + pad * fill[1], s2 = half + pad * fill[2];
        for (int x = 0; x < x1 - x0; x++, p += 3) {
            s0 += p[0] * k[x];
            s1 += p[1] * k[x];
            s2 += p[2] * k[x];
        }
        out[3 * xx] = clip8(s0);
        out[3 * xx + 1] = clip8(s1);
        out[3 * xx + 2] = clip8(s2);
    }
}

/* Resize the canvas of s (an image on a fill-coloured canvas) to ow x oh with
 * exactly the results of Pillow's ImagingResampleInner: a horizontal pass on
 * the rows the vertical pass reads, clipped to uint8, then a vertical pass; a
 * pass is skipped when its dimension is unchanged; same size is a copy.
 *
 * Here the horizontal pass runs on image rows only (a fill row gives the same
 * row, fill_out, every time) and the vertical pass scatters each of those rows
 * into the accumulators of the output rows that read it, the fill rows being
 * added as (sum of their weights) * fill_out. Output columns whose taps never
 * reach the image equal fill_out in every row, hence a constant column. */
static int resample(const Source *s, int ow, int oh, Image *out, char *err, size_t errlen) {
    const Image *im = s->img;
    const int need_h = ow != s->w, need_v = oh != s->h;
    const size_t orow = (size_t)ow * 3;
    const int32_t half = 1 << (PRECISION_BITS - 1);
    Axis ax, ay;                    /* horizontal and vertical axes */
    int xa = 0, xb = ow;            /* output columns that depend on image pixels */
    int t0 = s->oy, t1 = s->oy + im->h; /* image rows the vertical pass reads */
    uint8_t *fill_out = NULL;       /* a fill row after the horizontal pass (NULL: no padding) */
    uint8_t *row = NULL;            /* one row after the horizontal pass */
    int32_t *acc = NULL;            /* [oh][(xb - xa) * 3] vertical accumulators */
    size_t ia, ib, width;           /* accumulated samples [ia, ib) of a row, width = ib - ia */
    int y, yy, lo_row = 0, hi_row = 0;

    memset(&ax, 0, sizeof ax);
    memset(&ay, 0, sizeof ay);
    if (image_alloc(out, ow, oh, err, errlen)) return -1;
    if (!need_h && !need_v) {
        for (y = 0; y < oh; y++) memcpy(out->rgb + (size_t)y * orow, src_row(s, y), orow);
        return 0;
    }
    if (need_h && axis_init(&ax, s->w, ow, s->ox, s->ox + im->w, err, errlen)) goto fail;
    if (need_v && axis_init(&ay, s->h, oh, s->oy, s->oy + im->h, err, errlen)) goto fail;
    row = malloc(orow);
    if (!row) goto oom;

    /* ---- the padding: a fill row after the horizontal pass ---- */
    if (s->fill_row) {
        fill_out = malloc(orow);
        if (!fill_out) goto oom;
        if (need_h) {
            for (int xx = 0; xx < ow; xx++)
                for (int c = 0; c < 3; c++) fill_out[3 * xx + c] = clip8(half + ax.k_all[xx] * s->fill[c]);
            xa = ax.xa;
            xb = ax.xb;
        } else {
            memcpy(fill_out, s->fill_row, orow);
        }
    }
    if (need_v) { /* rows the vertical pass reads at all */
        int first = ay.c.bounds[0], last = ay.c.bounds[2 * oh - 2] + ay.c.bounds[2 * oh - 1];
        if (t0 < first) t0 = first;
        if (t1 > last) t1 = last;
    }
    ia = (size_t)xa * 3;
    ib = (size_t)xb * 3;
    width = ib - ia;

    /* ---- no vertical pass: output rows are horizontal-pass rows ---- */
    if (!need_v) {
        for (y = 0; y < oh; y++) {
            uint8_t *o = out->rgb + (size_t)y * orow;
            if (fill_out) memcpy(o, fill_out, orow);
            if (y >= t0 && y < t1)
                resample_row_h(&ax, im->rgb + (size_t)(y - s->oy) * (size_t)im->w * 3, s->fill, o);
        }
        goto done;
    }

    /* ---- vertical pass: start every output row with its padding rows ---- */
    if (width) {
        size_t n;
        if (!image_mul_size((size_t)oh, width, &n) || n > SIZE_MAX / sizeof(int32_t)) {
            fail(err, errlen, "image too large");
            goto fail;
        }
        acc = malloc(n * sizeof(int32_t));
        if (!acc) goto oom;
    }
    for (yy = 0; yy < oh; yy++) {
        int32_t *ac = acc + (size_t)yy * width;
        for (size_t i = 0; i < width; i++) ac[i] = half + (fill_out ? ay.k_pad[yy] * fill_out[ia + i] : 0);
    }
    /* ... then add each image row to the output rows whose taps cover it */
    for (y = t0; y < t1 && width; y++) {
        const uint8_t *in;
        if (need_h) {
            resample_row_h(&ax, im->rgb + (size_t)(y - s->oy) * (size_t)im->w * 3, s->fill, row);
            in = row;
        } else {
            in = src_row(s, y);
        }
        while (lo_row < oh && ay.c.bounds[2 * lo_row] + ay.c.bounds[2 * lo_row + 1] <= y) lo_row++;
        while (hi_row < oh && ay.c.bounds[2 * hi_row] <= y) hi_row++;
        for (yy = lo_row; yy < hi_row; yy++) {
            const int32_t kv = ay.c.kk[(size_t)yy * (size_t)ay.c.ksize + (size_t)(y - ay.c.bounds[2 * yy])];
            int32_t *ac = acc + (size_t)yy * width;
            for (size_t i = 0; i < width; i++) ac[i] += in[ia + i] * kv;
        }
    }
    for (yy = 0; yy < oh; yy++) {
        uint8_t *o = out->rgb + (size_t)yy * orow;
        const int32_t *ac = acc + (size_t)yy * width;
        size_t i;
        if (fill_out) { /* columns that never see the image: all taps are fill_out */
            for (i = 0; i < ia; i++) o[i] = clip8(half + ay.k_all[yy] * fill_out[i]);
            for (i = ib; i < orow; i++) o[i] = clip8(half + ay.k_all[yy] * fill_out[i]);
        }
        for (i = 0; i < width; i++) o[ia + i] = clip8(ac[i]);
    }
done:
    free(acc);
    free(row);
    free(fill_out);
    axis_free(&ax);
    axis_free(&ay);
    return 0;
oom:
    fail(err, errlen, "out of memory");
fail:
    free(acc);
    free(row);
    free(fill_out);
    axis_free(&ax);
    axis_free(&ay);
    image_free(out);
    return -1;
}

/* ---- public preprocessing API ---- */

static int check_image(const Image *in, char *err, size_t errlen) {
    if (!in || !in->rgb || in->w < 1 || in->h < 1) return fail(err, errlen, "no input image");
    return 0;
}

/* Canvas geometry of expand2square. */
static void square_geometry(const Image *in, int *side, int *ox, int *oy) {
    if (in->w >= in->h) {
        *side = in->w;
        *ox = 0;
        *oy = (in->w - in->h) / 2;
    } else {
        *side = in->h;
        *ox = (in->h - in->w) / 2;
        *oy = 0;
    }
}

int image_expand2square(const Image *in, const uint8_t fill[3], Image *out, char *err, size_t errlen) {
    Source s;
    int side, ox, oy, y;
    out->w = out->h = 0;
    out->rgb = NULL;
    if (check_image(in, err, errlen)) return -1;
    square_geometry(in, &side, &ox, &oy);
    if (src_init(&s, in, side, side, ox, oy, fill, err, errlen)) return -1;
    if (image_alloc(out, side, side, err, errlen)) {
        src_free(&s);
        return -1;
    }
    for (y = 0; y < side; y++)
        memcpy(out->rgb + (size_t)y * (size_t)side * 3, src_row(&s, y), (size_t)side * 3);
    src_free(&s);
    return 0;
}

int image_resize_bicubic(const Image *in, int ow, int oh, Image *out, char *err, size_t errlen) {
    Source s;
    int rc;
    out->w = out->h = 0;
    out->rgb = NULL;
    if (check_image(in, err, errlen)) return -1;
    if (check_dims(ow, oh, err, errlen)) return -1;
    if (src_init(&s, in, in->w, in->h, 0, 0, NULL, err, errlen)) return -1;
    rc = resample(&s, ow, oh, out, err, errlen);
    src_free(&s);
    return rc;
}

/* Resize the short side to S (the long side int(S * long / short)), then cut the centred
 * S x S: CLIPImageProcessor's resize + center_crop (top = (h - S) / 2, left = (w - S) / 2). */
static int resize_crop(const Image *in, int S, Image *out, char *err, size_t errlen) {
    int w = in->w, h = in->h, shrt = w < h ? w : h, lng = w < h ? h : w;
    int nl = (int)((double)S * lng / shrt), nw = w <= h ? S : nl, nh = w <= h ? nl : S;
    Image rs = {0};
    if (image_resize_bicubic(in, nw, nh, &rs, err, errlen) != 0) return -1;
    if (image_alloc(out, S, S, err, errlen) != 0) {
        image_free(&rs);
        return -1;
    }
    int top = (nh - S) / 2, left = (nw - S) / 2;
    for (int y = 0; y < S; y++)
        memcpy(out->rgb + (size_t)y * S * 3, rs.rgb + ((size_t)(y + top) * nw + left) * 3, (size_t)S * 3);
    image_free(&rs);
    return 0;
}

int image_preprocess(const Image *in, ImagePrep mode, const uint8_t fill[3], int S, Image *out, char *err,
                     size_t errlen) {
    Source s;
    int side, ox, oy, rc;
    out->w = out->h = 0;
    out->rgb = NULL;
    if (check_image(in, err, errlen)) return -1;
    if (S < 1 || S > 65536) return fail(err, errlen, "invalid output size %d", S);
    if (mode == IMAGE_CROP) return resize_crop(in, S, out, err, errlen);
    square_geometry(in, &side, &ox, &oy);
    /* The padded square is never materialised: rows are produced on demand. */
    if (src_init(&s, in, side, side, ox, oy, fill, err, errlen)) return -1;
    rc = resample(&s, S, S, out, err, errlen);
    src_free(&s);
    return rc;
}

void image_normalize(const Image *img, const float mean[3], const float std[3], float *chw) {
    size_t n, i;
    int c;
    if (!img || !img->rgb || !chw) return;
    n = (size_t)img->w * (size_t)img->h;
    for (c = 0; c < 3; c++) {
        float m = mean[c], sd = std[c];
        float *o = chw + (size_t)c * n;
        for (i = 0; i < n; i++) {
            /* transformers: uint8 -> float64 * (1/255) -> float32; then float32 (x - mean) / std */
            float r = (float)((double)img->rgb[3 * i + c] * (1.0 / 255.0));
            o[i] = (r - m) / sd;
        }
    }
}

/* ---- thumbnails: an area-average downscale ---- */

/* Area-average weights of output cells over input cells along one axis. */
typedef struct {
    int *start, *count;
    float *w;     /* per output cell, count weights */
    int maxc;
} ThumbAxis;

static int thumb_axis_make(ThumbAxis *a, int in, int out) {
    double scale = (double)in / out;
    a->maxc = (int)ceil(scale) + 2;
    a->start = malloc((size_t)out * sizeof(int));
    a->count = malloc((size_t)out * sizeof(int));
    a->w = malloc((size_t)out * (size_t)a->maxc * sizeof(float));
    if (!a->start || !a->count || !a->w) return -1;
    for (int o = 0; o < out; o++) {
        double x0 = o * scale, x1 = (o + 1) * scale;
        int s = (int)floor(x0), e = (int)ceil(x1);
        if (e > in) e = in;
        if (s >= e) s = e - 1;
        int c = 0;
        double tot = 0;
        for (int i = s; i < e && c < a->maxc; i++) {
            double lo = i > x0 ? i : x0, hi = i + 1 < x1 ? i + 1 : x1;
            double wgt = hi - lo;
            if (wgt <= 0) wgt = 0;
            a->w[(size_t)o * a->maxc + c++] = (float)wgt;
            tot += wgt;
        }
        for (int k = 0; k < c; k++) a->w[(size_t)o * a->maxc + k] = tot > 0 ? (float)(a->w[(size_t)o * a->maxc + k] / tot) : 1.0f / c;
        a->start[o] = s;
        a->count[o] = c;
    }
    return 0;
}
static void thumb_axis_free(ThumbAxis *a) {
    free(a->start);
    free(a->count);
    free(a->w);
}

int thumb_downscale(const Image *in, int max_side, Image *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    if (!in || !in->rgb || in->w < 1 || in->h < 1) return fail(err, errlen, "no image");
    if (max_side < 1) max_side = 1;
    int w = in->w, h = in->h, tw, th;
    if (w >= h) {
        tw = w < max_side ? w : max_side;
        th = (int)llround((double)h * tw / w);
    } else {
        th = h < max_side ? h : max_side;
        tw = (int)llround((double)w * th / h);
    }
    if (tw < 1) tw = 1;
    if (th < 1) th = 1;
    if (image_alloc(out, tw, th, err, errlen) != 0) return -1;
    if (tw == w && th == h) {
        memcpy(out->rgb, in->rgb, (size_t)w * h * 3);
        return 0;
    }
    ThumbAxis ax = {0}, ay = {0};
    float *tmp = malloc((size_t)h * tw * 3 * sizeof(float));
    int rc = -1;
    if (!tmp || thumb_axis_make(&ax, w, tw) != 0 || thumb_axis_make(&ay, h, th) != 0) {
        fail(err, errlen, "out of memory");
        goto out;
    }
    for (int y = 0; y < h; y++) {
        const uint8_t *row = in->rgb + (size_t)y * w * 3;
        float *t = tmp + (size_t)y * tw * 3;
        for (int o = 0; o < tw; o++) {
            float s0 = 0, s1 = 0, s2 = 0;
            const float *wt = ax.w + (size_t)o * ax.maxc;
            const uint8_t *p = row + (size_t)ax.start[o] * 3;
            for (int k = 0; k < ax.count[o]; k++, p += 3) {
                s0 += wt[k] * p[0];
                s1 += wt[k] * p[1];
                s2 += wt[k] * p[2];
            }
            t[o * 3] = s0;
            t[o * 3 + 1] = s1;
            t[o * 3 + 2] = s2;
        }
    }
    for (int o = 0; o < th; o++) {
        const float *wt = ay.w + (size_t)o * ay.maxc;
        uint8_t *dst = out->rgb + (size_t)o * tw * 3;
        for (int x = 0; x < tw * 3; x++) {
            float s = 0;
            for (int k = 0; k < ay.count[o]; k++) s += wt[k] * tmp[((size_t)(ay.start[o] + k) * tw * 3) + x];
            int v = (int)(s + 0.5f);
            dst[x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
    rc = 0;
out:
    if (rc != 0) image_free(out);
    thumb_axis_free(&ax);
    thumb_axis_free(&ay);
    free(tmp);
    return rc;
}
