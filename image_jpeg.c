/* image_jpeg.c - baseline and progressive JPEG decoder (8-bit, Huffman or arithmetic).
 *
 * Goal: byte-for-byte the pixels of Pillow 9.4's Image.open(f).convert("RGB"),
 * i.e. of libjpeg-turbo 2.1.5 with its default decompression settings as
 * Pillow drives it:
 *   - accurate integer IDCT ("islow") with the exact integer behaviour of the
 *     x86 SIMD version libjpeg-turbo runs (16-bit wrap and saturation, which
 *     only shows with absurd coefficients);
 *   - "fancy" (triangular) chroma upsampling done separately from colour
 *     conversion: with do_fancy_upsampling on, libjpeg-turbo never picks its
 *     merged upsampler. h2v1 and h2v2 fall back to box replication when the
 *     chroma plane is at most 2 samples wide; other integral ratios are box
 *     replication (int_upsample); h1v2 is always fancy;
 *   - the YCbCr->RGB fixed-point tables of jdcolor.c (16-bit fraction);
 *   - colour space guessed as jdapimin.c does (JFIF, Adobe APP14 transform,
 *     component ids); 4-component files come out of libjpeg as CMYK (YCCK is
 *     converted first), then Pillow inverts them ("CMYK;I") and convert("RGB")
 *     applies its cmyk2rgb (x = k' - k'*c'/255 with rounding);
 *   - progressive files: coefficients of all scans are gathered, and when the
 *     scans leave some of the first 9 AC coefficients incomplete, libjpeg's
 *     inter-block smoothing (jdcoefct.c, 5x5 DC neighbourhood) is applied to
 *     the final output exactly as libjpeg-turbo does, edge quirks included;
 *   - standard Huffman tables stand in for missing DHT in sequential files
 *     (Motion-JPEG style), quantisation tables are latched at the first scan
 *     of each component, k > 63 in corrupt blocks lands on coefficient 63.
 *
 *   - arithmetic coding (SOF9 sequential, SOF10 progressive, DAC conditioning)
 *     as jdarith.c decodes it: Qe state machine of T.81 Table D.2, statistics
 *     bins reset per scan and per restart interval, zero data after a marker.
 *
 * Corrupt entropy data is decoded as libjpeg-turbo decodes it, with a warning
 * (Image.warning: the first one, and how many followed) instead of an error:
 *   - a bad Huffman code costs 17 bits and decodes as symbol 0 (jdhuff.c);
 *   - a marker inside a Huffman scan ("premature end of data segment"): the
 *     current MCU is finished with zero bits and the rest of the restart
 *     interval is left as it is (zero coefficients: flat grey in a single
 *     scan);
 *   - bytes of garbage before a marker are skipped; misnumbered or missing
 *     restart markers are resynchronised as jpeg_resync_to_restart does;
 *   - a progressive refinement code of size > 1 counts as size 1; scans out
 *     of progression order are decoded anyway (jdphuff.c only warns);
 *   - arithmetic data that decodes to an impossible value ends decoding of
 *     that restart interval (jdarith.c).
 * What Pillow refuses stays refused: a file that ends inside a scan, a
 * multi-scan file without EOI (Pillow: "image file is truncated"), DC
 * overflow in a progressive scan, bad tables or markers. A single-scan file
 * that ends (or ends inside a marker segment) after its scan is an image for
 * Pillow if libjpeg-turbo finished the scan without asking for bytes past the
 * end: decided by replaying its bit buffer and Pillow's 64 KB reads.
 * Refused with a one-line reason as well: lossless/hierarchical frames,
 * precision other than 8 bits, 2 or more than 4 components, fractional
 * sampling ratios, more than 10 blocks per MCU, sizes over 65500 or over the
 * image.h caps, and whatever else libjpeg itself rejects.
 * A well-formed file whose scans simply stop early (a component never sent, a
 * progression ending before the last refinement) decodes as libjpeg decodes
 * it, without a warning: missing coefficients are zero (then smoothed).
 * Pillow 9.4 itself cannot decode an arithmetic-coded file whose scan data
 * crosses its 64 KB read chunks ("broken data stream": jdarith.c cannot
 * suspend); those decode here as libjpeg-turbo's djpeg decodes them.
 *
 * Files: this one holds the tables -> errors -> markers -> Huffman tables ->
 * upsampling -> colour conversion -> driver; image_jpeg_scan.c the bit reader ->
 * entropy decoding (baseline, progressive, arithmetic) -> IDCT (plain and smoothed) ->
 * libjpeg-turbo's buffering replayed -> scan decoding; image_jpeg_dec.h the decoder
 * state they share.
 */
#include "image.h"
#include "image_jpeg.h"
#include "image_jpeg_dec.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ========================================================================== */
/* Tables                                                                     */
/* ========================================================================== */

/* Natural (row-major) position of the k-th zigzag coefficient. Entries 64..79
 * are 63, like libjpeg's jpeg_natural_order, so that a corrupt run length that
 * pushes k past 63 stores into coefficient 63 instead of outside the block. */
const uint8_t jpeg_zigzag[80] = {
    0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6,  7,  14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
    63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63};

/* The example Huffman tables of the JPEG standard (ITU T.81 K.3), which
 * libjpeg-turbo installs in slots 0 and 1 of a sequential file that defines
 * none there. Index 0 of the count arrays is unused. */
const uint8_t jpeg_std_dc_lum_bits[17] = {0, 0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0};
const uint8_t jpeg_std_dc_chr_bits[17] = {0, 0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0};
const uint8_t jpeg_std_dc_vals[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
const uint8_t jpeg_std_ac_lum_bits[17] = {0, 0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d};
const uint8_t jpeg_std_ac_lum_vals[162] = {
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
    0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52,
    0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25,
    0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45,
    0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64,
    0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
    0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
    0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6,
    0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3,
    0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8,
    0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa};
const uint8_t jpeg_std_ac_chr_bits[17] = {0, 0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77};
const uint8_t jpeg_std_ac_chr_vals[162] = {
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
    0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33,
    0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18,
    0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44,
    0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63,
    0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
    0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
    0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4,
    0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca,
    0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7,
    0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa};

/* ========================================================================== */
/* Errors                                                                     */
/* ========================================================================== */

_Noreturn void jpegd_fail(Dec *d, const char *fmt, ...) {
    if (d->err && d->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->err, d->errlen, fmt, ap);
        va_end(ap);
    }
    longjmp(d->jb, 1);
}

/* A libjpeg warning: corrupt data that is decoded anyway. The first message is kept. */
void jpegd_warn(Dec *d, const char *fmt, ...) {
    if (d->nwarn++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->warn, sizeof d->warn, fmt, ap);
        va_end(ap);
    }
}

static void *xcalloc(Dec *d, size_t a, size_t b, const char *what) {
    size_t n;
    void *p;
    if (!image_mul_size(a, b, &n)) jpegd_fail(d, "%s too large", what);
    p = calloc(n ? n : 1, 1);
    if (!p) jpegd_fail(d, "out of memory (%s, %zu bytes)", what, n);
    return p;
}

/* ========================================================================== */
/* Markers                                                                    */
/* ========================================================================== */

static unsigned rd16(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }

/* Find the next marker from *pos as libjpeg's next_marker does: skip any
 * non-FF bytes, FF fill bytes and FF00 pairs (counted in d->discarded: one
 * warning per marker). Returns the marker code with *pos just past it, or -1
 * at the end of the buffer. */
int jpegd_next_marker(Dec *d, size_t *pos) {
    size_t p = *pos;
    for (;;) {
        size_t q = p;
        while (p < d->len && d->buf[p] != 0xFF) p++;
        d->discarded += p - q;
        while (p < d->len && d->buf[p] == 0xFF) p++;
        if (p >= d->len) {
            *pos = p;
            return -1;
        }
        if (d->buf[p] != 0) {
            *pos = p + 1;
            if (d->discarded) {
                jpegd_warn(d, "corrupt JPEG data: %zu extraneous bytes before marker 0x%02X", d->discarded, d->buf[p]);
                d->discarded = 0;
            }
            return d->buf[p];
        }
        p++; /* FF 00: stuffed data outside a scan, discarded */
        d->discarded += 2;
    }
}

/* Read a marker segment's length; returns the payload start and sets *n to
 * the payload size. A length field below 2 is an error for table and frame
 * markers; for skipped markers libjpeg just skips nothing, and so do we. */
/* The file ends, or ends inside a marker segment, after the scans. libjpeg
 * then waits for more data. A multi-scan file has no image yet (Pillow:
 * "image file is truncated"); a single-scan file has all its rows, which Pillow
 * keeps, if libjpeg did not already wait for bytes past the end while decoding
 * the scan: exact for arithmetic scans (their reader is libjpeg's); a Huffman
 * file is decoded again with libjpeg-turbo's buffering to find out. */
#if defined(__GNUC__)
__attribute__((noreturn))
#endif
static void end_of_file(Dec *d, const char *what) {
    if (d->rows_done) {
        if (d->arith || d->emulate) longjmp(d->jb, 2);
        d->want_emulation = 1;
    }
    jpegd_fail(d, "truncated file (%s)", what);
}

/* A marker segment of length L at d->pos that the file cuts short: does
 * libjpeg's jdmarker.c meet an error in the bytes that are there (1), or run
 * out of data first and wait (0)? */
static int cut_segment_fails(const Dec *d, int marker, unsigned L) {
    const uint8_t *b = d->buf + d->pos;
    size_t have = d->len - d->pos, q = 2;
    long left = (long)L - 2;
    switch (marker) {
    case 0xC4: /* get_dht */
        while (left > 16) {
            if (have < q + 17) return 0;
            int index = b[q], count = 0;
            for (int i = 1; i <= 16; i++) count += b[q + i];
            left -= 17;
            if (count > 256 || count > left) return 1;
            if (have < q + 17 + (size_t)count) return 0;
            if ((index & 0x0F) >= 4 || (index & 0xE0)) return 1;
            q += 17 + (size_t)count;
            left -= count;
        }
        return left != 0;
    case 0xDB: /* get_dqt */
        while (left > 0) {
            if (have <= q) return 0;
            if ((b[q] & 15) >= 4) return 1;
            size_t need = 1 + ((b[q] >> 4) ? 128 : 64);
            if (have < q + need) return 0;
            q += need;
            left -= (long)need;
        }
        return left != 0;
    case 0xDD: return L != 4; /* get_dri */
    case 0xCC: /* get_dac */
        for (; left > 0; q += 2, left -= 2) {
            if (have < q + 2) return 0;
            if (b[q] >= 32 || (b[q] < 16 && (b[q + 1] & 15) > (b[q + 1] >> 4))) return 1;
        }
        return left != 0;
    case 0xDA: { /* get_sos: checks, then "expected EOI" for a second scan */
        if (have < 3) return 0;
        int ns = b[2];
        if (L != (unsigned)(ns * 2 + 6) || ns < 1 || ns > 4) return 1;
        for (int i = 0; i < ns; i++) {
            int ci;
            if (have < 5 + 2 * (size_t)i) return 0;
            for (ci = 0; ci < d->nc && ci < 4; ci++)
                if (d->comp[ci].id == b[3 + 2 * i]) break;
            if (ci >= d->nc || ci >= 4) return 1;
        }
        return have >= 6 + 2 * (size_t)ns;
    }
    default:
        if (marker >= 0xC0 && marker <= 0xCF) return have >= 8; /* get_sof: a second frame */
        return 0; /* APPn, COM, DNL: skipped */
    }
}

static const uint8_t *segment(Dec *d, int marker, size_t *n) {
    unsigned L;
    if (d->len - d->pos < 2) end_of_file(d, "in a marker segment");
    L = rd16(d->buf + d->pos);
    if (L < 2) {
        if (marker == 0xC4 || marker == 0xDB || marker == 0xCC) jpegd_fail(d, "bad marker length (marker 0x%02X)", marker);
        L = 2;
    }
    if (d->len - d->pos < L) {
        if (d->rows_done && cut_segment_fails(d, marker, L)) jpegd_fail(d, "corrupt marker segment 0x%02X", marker);
        end_of_file(d, "in a marker segment");
    }
    *n = L - 2;
    d->pos += L;
    return d->buf + d->pos - L + 2;
}

static void parse_dqt(Dec *d) {
    size_t n;
    const uint8_t *p = segment(d, 0xDB, &n);
    while (n > 0) {
        int t = p[0] & 15, prec = p[0] >> 4;
        size_t need = 1 + (prec ? 128 : 64);
        if (t >= 4) jpegd_fail(d, "bad DQT table index %d", t);
        if (n < need) jpegd_fail(d, "bad DQT marker length");
        for (int i = 0; i < 64; i++)
            d->qtab[t][jpeg_zigzag[i]] = (uint16_t)(prec ? rd16(p + 1 + 2 * i) : p[1 + i]);
        d->qdef[t] = 1;
        p += need;
        n -= need;
    }
}

static void parse_dht(Dec *d) {
    size_t n;
    const uint8_t *p = segment(d, 0xC4, &n);
    while (n > 16) {
        int index = p[0], count = 0;
        HuffSpec *hs;
        for (int l = 1; l <= 16; l++) count += p[l];
        if (count > 256 || (size_t)count > n - 17) jpegd_fail(d, "bad Huffman table (DHT)");
        if (index & 0x10) {
            index -= 0x10;
            if (index >= 4) jpegd_fail(d, "bad DHT table index %d", index);
            hs = &d->acs[index];
        } else {
            if (index >= 4) jpegd_fail(d, "bad DHT table index %d", index);
            hs = &d->dcs[index];
        }
        hs->bits[0] = 0;
        memcpy(hs->bits + 1, p + 1, 16);
        memset(hs->vals, 0, sizeof hs->vals);
        memcpy(hs->vals, p + 17, (size_t)count);
        hs->defined = 1;
        p += 17 + count;
        n -= 17 + (size_t)count;
    }
    if (n != 0) jpegd_fail(d, "bad DHT marker length");
}

static void parse_dri(Dec *d) {
    size_t n;
    const uint8_t *p = segment(d, 0xDD, &n);
    if (n != 2) jpegd_fail(d, "bad DRI marker length");
    d->restart_interval = rd16(p);
}

/* DAC (arithmetic conditioning) as libjpeg's get_dac: index 0..15 sets the
 * DC bounds L (low nibble) <= U (high nibble) of that slot, 16..31 the AC
 * threshold K of slot index-16. */
static void parse_dac(Dec *d) {
    size_t n;
    const uint8_t *p = segment(d, 0xCC, &n);
    if (n % 2) jpegd_fail(d, "bad DAC marker length");
    for (size_t i = 0; i < n; i += 2) {
        int index = p[i], val = p[i + 1];
        if (index >= 32) jpegd_fail(d, "bad DAC table index %d", index);
        if (index >= 16) {
            d->arith_K[index - 16] = (uint8_t)val;
        } else {
            if ((val & 15) > (val >> 4)) jpegd_fail(d, "bad DAC value 0x%02X", val);
            d->arith_L[index] = (uint8_t)(val & 15);
            d->arith_U[index] = (uint8_t)(val >> 4);
        }
    }
}

/* APPn / COM: only APP0 (JFIF) and APP14 (Adobe) matter for decoding. */
static void parse_app(Dec *d, int marker) {
    size_t n;
    const uint8_t *p = segment(d, marker, &n);
    if (marker == 0xE0 && n >= 14 && memcmp(p, "JFIF", 5) == 0) d->saw_jfif = 1;
    if (marker == 0xEE && n >= 12 && memcmp(p, "Adobe", 5) == 0) {
        d->saw_adobe = 1;
        d->adobe_transform = p[11];
    }
}

static void parse_sof(Dec *d, int marker) {
    size_t n;
    const uint8_t *p = segment(d, marker, &n);
    if (d->sof_seen) jpegd_fail(d, "more than one frame (duplicate SOF marker)");
    if (n < 6) jpegd_fail(d, "bad SOF marker length");
    int prec = p[0];
    d->H = (int)rd16(p + 1);
    d->W = (int)rd16(p + 3);
    d->nc = p[5];
    if (d->H == 0 || d->W == 0 || d->nc == 0) jpegd_fail(d, "empty image (zero size or no components in SOF)");
    if (n != 6 + 3 * (size_t)d->nc) jpegd_fail(d, "bad SOF marker length");
    if (prec != 8) jpegd_fail(d, "unsupported %d-bit precision (only 8-bit JPEG is supported)", prec);
    if (d->nc != 1 && d->nc != 3 && d->nc != 4) jpegd_fail(d, "unsupported number of components (%d)", d->nc);
    if (d->W > MAX_DIM || d->H > MAX_DIM)
        jpegd_fail(d, "image too large (%dx%d; JPEG limit is %d per side)", d->W, d->H, MAX_DIM);
    d->progressive = marker == 0xC2 || marker == 0xCA;
    d->arith = marker == 0xC9 || marker == 0xCA;
    d->maxh = d->maxv = 1;
    for (int i = 0; i < d->nc; i++) {
        Comp *c = &d->comp[i];
        c->id = p[6 + 3 * i];
        c->h = p[7 + 3 * i] >> 4;
        c->v = p[7 + 3 * i] & 15;
        c->tq = p[8 + 3 * i];
        if (c->h < 1 || c->h > 4 || c->v < 1 || c->v > 4) jpegd_fail(d, "bad sampling factors %dx%d", c->h, c->v);
        if (c->h > d->maxh) d->maxh = c->h;
        if (c->v > d->maxv) d->maxv = c->v;
    }
    d->sof_seen = 1;
}

/* ========================================================================== */
/* Huffman tables                                                             */
/* ========================================================================== */

static void std_table(HuffSpec *hs, const uint8_t *bits, const uint8_t *vals, int nvals) {
    if (hs->defined) return;
    memcpy(hs->bits, bits, 17);
    memset(hs->vals, 0, sizeof hs->vals);
    memcpy(hs->vals, vals, (size_t)nvals);
    hs->defined = 1;
}

/* Derive decoding tables and validate as jpeg_make_d_derived_tbl does. */
static void build_huff(Dec *d, HuffTable *t, const HuffSpec *hs, int is_dc, int slot) {
    uint8_t size[257];
    unsigned code[257];
    int p = 0, nsym;
    if (!hs->defined) jpegd_fail(d, "missing Huffman table (%s slot %d)", is_dc ? "DC" : "AC", slot);
    for (int l = 1; l <= 16; l++)
        for (int i = 0; i < hs->bits[l]; i++) size[p++] = (uint8_t)l;
    size[p] = 0;
    nsym = p;
    unsigned c = 0;
    int si = size[0];
    p = 0;
    while (size[p]) {
        while (size[p] == si) code[p++] = c++;
        if (c >= 1u << si) jpegd_fail(d, "bad Huffman table (code lengths overflow)");
        c <<= 1;
        si++;
    }
    p = 0;
    for (int l = 1; l <= 16; l++) {
        if (hs->bits[l]) {
            t->valoff[l] = p - (int32_t)code[p];
            p += hs->bits[l];
            t->maxcode[l] = (int32_t)code[p - 1];
        } else {
            t->maxcode[l] = -1;
            t->valoff[l] = 0;
        }
    }
    t->maxcode[17] = INT32_MAX;
    t->valoff[17] = 0;
    memcpy(t->vals, hs->vals, 256);
    if (is_dc)
        for (int i = 0; i < nsym; i++)
            if (hs->vals[i] > 15) jpegd_fail(d, "bad Huffman table (DC symbol %d)", hs->vals[i]);
    memset(t->fast, 0, sizeof t->fast);
    for (int i = 0; i < 256; i++) t->look8[i] = 9 << 8;
    for (int i = 0; i < nsym && size[i] <= 8; i++)
        for (unsigned j = 0; j < (1u << (8 - size[i])); j++)
            t->look8[(code[i] << (8 - size[i])) + j] = (uint16_t)(size[i] << 8 | hs->vals[i]);
    for (int i = 0; i < nsym; i++) {
        if (size[i] > FAST_BITS) break;
        int shift = FAST_BITS - size[i];
        unsigned base = code[i] << shift;
        for (unsigned j = 0; j < (1u << shift); j++)
            t->fast[base + j] = (uint16_t)(size[i] << 8 | hs->vals[i]);
    }
}

/* ========================================================================== */
/* Upsampling (jdsample.c, fancy upsampling on)                               */
/* ========================================================================== */

/* Return output row y of component c at full resolution (W samples). */
static const uint8_t *upsample_row(const Dec *d, const Comp *c, int y) {
    const uint8_t *p = c->plane;
    size_t st = c->stride;
    uint8_t *o = c->row;
    int W = d->W, dw = c->dw;
    switch (c->method) {
    case UP_FULL:
        return p + (size_t)y * st;
    case UP_H2V1: {
        const uint8_t *in = p + (size_t)y * st;
        for (int x = 0; x < W; x++) {
            int j = x >> 1, v3 = 3 * in[j];
            if (x & 1) o[x] = (uint8_t)((v3 + in[j + 1 < dw ? j + 1 : j] + 2) >> 2);
            else o[x] = (uint8_t)((v3 + in[j > 0 ? j - 1 : 0] + 1) >> 2);
        }
        return o;
    }
    case UP_H1V2: {
        int r = y >> 1, nb, bias;
        if (y & 1) {
            nb = r + 1 < c->dh ? r + 1 : r;
            bias = 2;
        } else {
            nb = r > 0 ? r - 1 : 0;
            bias = 1;
        }
        const uint8_t *a = p + (size_t)r * st, *b = p + (size_t)nb * st;
        for (int x = 0; x < W; x++) o[x] = (uint8_t)((3 * a[x] + b[x] + bias) >> 2);
        return o;
    }
    case UP_H2V2: {
        int r = y >> 1, nb = (y & 1) ? (r + 1 < c->dh ? r + 1 : r) : (r > 0 ? r - 1 : 0);
        const uint8_t *a = p + (size_t)r * st, *b = p + (size_t)nb * st;
        int prev = 3 * a[0] + b[0], cur = prev;
        for (int j = 0; 2 * j < W; j++) {
            int next = j + 1 < dw ? 3 * a[j + 1] + b[j + 1] : cur;
            o[2 * j] = (uint8_t)((3 * cur + prev + 8) >> 4);
            if (2 * j + 1 < W) o[2 * j + 1] = (uint8_t)((3 * cur + next + 7) >> 4);
            prev = cur;
            cur = next;
        }
        return o;
    }
    default: { /* UP_BOX: integral replication */
        const uint8_t *in = p + (size_t)(y / c->vexp) * st;
        int he = c->hexp;
        if (he == 1) return in;
        for (int x = 0; x < W; x++) o[x] = in[x / he];
        return o;
    }
    }
}

static void choose_upsampling(Dec *d, Comp *c) {
    int h = c->h, v = c->v, H = d->maxh, V = d->maxv;
    c->hexp = 1;
    c->vexp = 1;
    if (h == H && v == V) c->method = UP_FULL;
    else if (2 * h == H && v == V) {
        c->method = c->dw > 2 ? UP_H2V1 : UP_BOX;
        c->hexp = 2;
    } else if (h == H && 2 * v == V) c->method = UP_H1V2;
    else if (2 * h == H && 2 * v == V) {
        c->method = c->dw > 2 ? UP_H2V2 : UP_BOX;
        c->hexp = c->vexp = 2;
    } else if (H % h == 0 && V % v == 0) {
        c->method = UP_BOX;
        c->hexp = H / h;
        c->vexp = V / v;
    } else {
        jpegd_fail(d, "unsupported sampling factors (fractional ratio %dx%d to %dx%d)", h, v, H, V);
    }
}

/* ========================================================================== */
/* Colour conversion                                                          */
/* ========================================================================== */

static void build_ycc_tables(Dec *d) {
    const int64_t one_half = (int64_t)1 << 15;
    for (int i = 0; i < 256; i++) {
        int64_t x = i - 128;
        d->cr_r[i] = (int)((((int64_t)(1.40200 * 65536 + 0.5)) * x + one_half) >> 16);
        d->cb_b[i] = (int)((((int64_t)(1.77200 * 65536 + 0.5)) * x + one_half) >> 16);
        d->cr_g[i] = (int32_t)(-((int64_t)(0.71414 * 65536 + 0.5)) * x);
        d->cb_g[i] = (int32_t)(-((int64_t)(0.34414 * 65536 + 0.5)) * x + one_half);
    }
}

static inline uint8_t clamp255(int v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }

/* Pillow's MULDIV255: a*b/255 rounded. */
static inline int muldiv255(int a, int b) {
    int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
}

static void convert_rows(Dec *d) {
    const uint8_t *r[MAX_COMPS];
    int W = d->W;
    for (int y = 0; y < d->H; y++) {
        uint8_t *out = d->img.rgb + (size_t)y * W * 3;
        for (int i = 0; i < d->nc; i++) r[i] = upsample_row(d, &d->comp[i], y);
        switch (d->colorspace) {
        case CS_GRAY:
            for (int x = 0; x < W; x++) out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = r[0][x];
            break;
        case CS_RGB:
            for (int x = 0; x < W; x++) {
                out[3 * x] = r[0][x];
                out[3 * x + 1] = r[1][x];
                out[3 * x + 2] = r[2][x];
            }
            break;
        case CS_YCC:
            for (int x = 0; x < W; x++) {
                int Y = r[0][x], cb = r[1][x], cr = r[2][x];
                out[3 * x] = clamp255(Y + d->cr_r[cr]);
                out[3 * x + 1] = clamp255(Y + (int)((d->cb_g[cb] + d->cr_g[cr]) >> 16));
                out[3 * x + 2] = clamp255(Y + d->cb_b[cb]);
            }
            break;
        case CS_CMYK: /* libjpeg CMYK -> Pillow "CMYK;I" (inverted) -> cmyk2rgb */
            for (int x = 0; x < W; x++) {
                int k = r[3][x];
                for (int i = 0; i < 3; i++) out[3 * x + i] = (uint8_t)(k - muldiv255(255 - r[i][x], k));
            }
            break;
        default: /* CS_YCCK: jdcolor.c ycck_cmyk_convert, then as CMYK */
            for (int x = 0; x < W; x++) {
                int Y = r[0][x], cb = r[1][x], cr = r[2][x], k = r[3][x];
                /* 255 - libjpeg's clamp(255 - R) == clamp(R) */
                int R = clamp255(Y + d->cr_r[cr]);
                int G = clamp255(Y + (int)((d->cb_g[cb] + d->cr_g[cr]) >> 16));
                int B = clamp255(Y + d->cb_b[cb]);
                out[3 * x] = (uint8_t)(k - muldiv255(R, k));
                out[3 * x + 1] = (uint8_t)(k - muldiv255(G, k));
                out[3 * x + 2] = (uint8_t)(k - muldiv255(B, k));
            }
            break;
        }
    }
}

/* jdapimin.c default_decompress_parms: which colour space the data is in. */
static int guess_colorspace(const Dec *d) {
    if (d->nc == 1) return CS_GRAY;
    if (d->nc == 3) {
        if (d->saw_jfif) return CS_YCC;
        if (d->saw_adobe) return d->adobe_transform == 0 ? CS_RGB : CS_YCC;
        if (d->comp[0].id == 1 && d->comp[1].id == 2 && d->comp[2].id == 3) return CS_YCC;
        if (d->comp[0].id == 82 && d->comp[1].id == 71 && d->comp[2].id == 66) return CS_RGB;
        return CS_YCC;
    }
    if (d->saw_adobe) return d->adobe_transform == 0 ? CS_CMYK : CS_YCCK;
    return CS_CMYK;
}

/* ========================================================================== */
/* Driver                                                                     */
/* ========================================================================== */

static int ceil_div(long long a, long long b) { return (int)((a + b - 1) / b); }

/* At the first SOS: geometry, limits, buffers (libjpeg initial_setup). */
static void start_frame(Dec *d) {
    d->mcux = ceil_div(d->W, 8LL * d->maxh);
    d->mcuy = ceil_div(d->H, 8LL * d->maxv);
    d->multiscan = d->progressive || d->ns < d->nc;
    d->colorspace = guess_colorspace(d);
    if (image_alloc(&d->img, d->W, d->H, d->err, d->errlen)) longjmp(d->jb, 1);
    for (int i = 0; i < d->nc; i++) {
        Comp *c = &d->comp[i];
        c->dw = ceil_div((long long)d->W * c->h, d->maxh);
        c->dh = ceil_div((long long)d->H * c->v, d->maxv);
        c->bw = ceil_div(c->dw, 8);
        c->bh = ceil_div(c->dh, 8);
        c->bwp = d->mcux * c->h;
        c->bhp = d->mcuy * c->v;
        c->stride = (size_t)c->bw * 8;
        for (int k = 0; k < 64; k++) c->coef_bits[k] = -1;
        choose_upsampling(d, c);
        c->plane = xcalloc(d, c->stride, (size_t)c->bh * 8, "sample plane");
        c->row = xcalloc(d, (size_t)d->W + 16, 1, "row buffer");
        if (d->multiscan) {
            size_t nb;
            if (!image_mul_size((size_t)c->bwp, (size_t)c->bhp, &nb)) jpegd_fail(d, "image too large");
            c->coef = xcalloc(d, nb, 64 * sizeof(int16_t), "coefficient buffer");
        }
    }
    /* sequential files: libjpeg-turbo's jinit_huff_decoder fills empty slots
     * 0 and 1 with the standard tables */
    if (!d->progressive) {
        std_table(&d->dcs[0], jpeg_std_dc_lum_bits, jpeg_std_dc_vals, 12);
        std_table(&d->acs[0], jpeg_std_ac_lum_bits, jpeg_std_ac_lum_vals, 162);
        std_table(&d->dcs[1], jpeg_std_dc_chr_bits, jpeg_std_dc_vals, 12);
        std_table(&d->acs[1], jpeg_std_ac_chr_bits, jpeg_std_ac_chr_vals, 162);
    }
    build_ycc_tables(d);
    d->started = 1;
}

static void parse_sos(Dec *d) {
    size_t n;
    const uint8_t *p = segment(d, 0xDA, &n);
    if (!d->sof_seen) jpegd_fail(d, "SOS marker before SOF");
    if (n < 1) jpegd_fail(d, "bad SOS marker length");
    int ns = p[0];
    if (ns < 1 || ns > 4 || n != 4 + 2 * (size_t)ns) jpegd_fail(d, "bad SOS marker length");
    Comp *used[4] = {NULL, NULL, NULL, NULL}; /* indexed like libjpeg's cur_comp_info */
    for (int i = 0; i < ns; i++) {
        int cc = p[1 + 2 * i], t = p[2 + 2 * i], ci;
        /* libjpeg get_sos: first component (among the first 4) with this id
         * whose slot ci of cur_comp_info is still free */
        for (ci = 0; ci < d->nc && ci < 4; ci++)
            if (d->comp[ci].id == cc && !used[ci]) break;
        if (ci >= d->nc || ci >= 4) jpegd_fail(d, "bad component id %d in SOS", cc);
        Comp *c = &d->comp[ci];
        for (int j = 0; j < i; j++)
            if (d->sc[j] == c) jpegd_fail(d, "bad component id %d in SOS (repeated)", cc);
        used[i] = c;
        d->sc[i] = c;
        c->td = t >> 4;
        c->ta = t & 15;
    }
    d->ns = ns;
    d->Ss = p[1 + 2 * ns];
    d->Se = p[2 + 2 * ns];
    d->Ah = p[3 + 2 * ns] >> 4;
    d->Al = p[3 + 2 * ns] & 15;

    if (!d->started) start_frame(d);
    else if (!d->multiscan) jpegd_fail(d, "unexpected second scan in a single-scan file (EOI expected)");

    if (ns > 1) {
        int blocks = 0;
        for (int i = 0; i < ns; i++) blocks += d->sc[i]->h * d->sc[i]->v;
        if (blocks > MAX_MCU_BLKS) jpegd_fail(d, "too many blocks in an MCU (%d)", blocks);
    }
    /* latch quantisation tables (jdinput.c latch_quant_tables) */
    for (int i = 0; i < ns; i++) {
        Comp *c = d->sc[i];
        if (c->latched) continue;
        if (c->tq >= 4 || !d->qdef[c->tq]) jpegd_fail(d, "missing quantization table %d", c->tq);
        memcpy(c->qt, d->qtab[c->tq], sizeof c->qt);
        c->latched = 1;
    }
    if (d->progressive) jpegd_check_progression(d);
    /* derive the Huffman tables this scan uses */
    for (int i = 0; i < ns && !d->arith; i++) {
        Comp *c = d->sc[i];
        int need_dc = !d->progressive || (d->Ss == 0 && d->Ah == 0);
        int need_ac = !d->progressive || d->Ss != 0;
        if (need_dc) {
            if (c->td >= 4) jpegd_fail(d, "missing Huffman table (DC slot %d)", c->td);
            build_huff(d, &d->dct[c->td], &d->dcs[c->td], 1, c->td);
        }
        if (need_ac) {
            if (c->ta >= 4) jpegd_fail(d, "missing Huffman table (AC slot %d)", c->ta);
            build_huff(d, &d->act[c->ta], &d->acs[c->ta], 0, c->ta);
        }
    }
    jpegd_decode_scan(d);
    d->nscans++;
    if (!d->multiscan) d->rows_done = 1;
}

static void decode_all(Dec *d) {
    if (d->len < 2 || d->buf[0] != 0xFF || d->buf[1] != 0xD8) jpegd_fail(d, "not a JPEG file (no SOI marker)");
    d->pos = 2;
    for (int i = 0; i < 16; i++) { /* libjpeg's get_soi defaults */
        d->arith_L[i] = 0;
        d->arith_U[i] = 1;
        d->arith_K[i] = 5;
    }
    for (;;) {
        int m = jpegd_next_marker(d, &d->pos);
        if (m < 0) {
            if (d->nscans) end_of_file(d, "no EOI marker after the last scan");
            jpegd_fail(d, "truncated file (no image data)");
        }
        switch (m) {
        case 0xD8: jpegd_fail(d, "corrupt file (duplicate SOI marker)");
        case 0xC0: case 0xC1: case 0xC2: case 0xC9: case 0xCA: parse_sof(d, m); break;
        case 0xC3: case 0xC5: case 0xC6: case 0xC7: case 0xC8: case 0xCB: case 0xCD: case 0xCE: case 0xCF:
            jpegd_fail(d, "unsupported JPEG: lossless or hierarchical frame (SOF%d)", m - 0xC0);
        case 0xC4: parse_dht(d); break;
        case 0xDB: parse_dqt(d); break;
        case 0xDD: parse_dri(d); break;
        case 0xDA: parse_sos(d); break;
        case 0xD9:
            if (!d->nscans) jpegd_fail(d, d->sof_seen ? "no image data (EOI before any scan)" : "no image in file");
            return;
        case 0xCC: parse_dac(d); break;
        case 0xDC: case 0xFE: { /* DNL, COM: skipped */
            size_t n;
            (void)segment(d, m, &n);
            break;
        }
        case 0xD0: case 0xD1: case 0xD2: case 0xD3: case 0xD4: case 0xD5: case 0xD6: case 0xD7: case 0x01:
            break; /* parameterless, ignored as libjpeg does */
        default:
            if (m >= 0xE0 && m <= 0xEF) {
                parse_app(d, m);
                break;
            }
            jpegd_fail(d, "unsupported or corrupt marker 0x%02X", m);
        }
    }
}

static void free_dec(Dec *d) {
    for (int i = 0; i < MAX_COMPS; i++) {
        free(d->comp[i].coef);
        free(d->comp[i].plane);
        free(d->comp[i].row);
    }
}

int jpeg_decode(const uint8_t *buf, size_t len, Image *out, char *err, size_t errlen) {
    return jpeg_decode_warn(buf, len, out, NULL, 0, err, errlen);
}

static int decode_pass(const uint8_t *buf, size_t len, Image *out, char *warn, size_t warnlen, char *err,
                       size_t errlen, int emulate, int *want_emulation) {
    Dec *d;
    out->w = out->h = 0;
    out->rgb = NULL;
    if (warn && warnlen) warn[0] = '\0';
    if (!buf || len == 0) {
        if (err && errlen) snprintf(err, errlen, "empty file");
        return -1;
    }
    d = calloc(1, sizeof *d);
    if (!d) {
        if (err && errlen) snprintf(err, errlen, "out of memory");
        return -1;
    }
    d->buf = buf;
    d->len = len;
    d->err = err;
    d->errlen = errlen;
    d->emulate = emulate;
    d->lj_fed = len < 65536 ? len : 65536;
    switch (setjmp(d->jb)) {
    case 0:
        decode_all(d);
        break;
    case 2: /* the single scan is complete and the file ends: Pillow has the image */
        break;
    default:
        *want_emulation = d->want_emulation;
        image_free(&d->img);
        free_dec(d);
        free(d);
        return -1;
    }
    if (d->multiscan) {
        int smooth = jpegd_smoothing_wanted(d);
        for (int i = 0; i < d->nc; i++) {
            if (smooth) jpegd_idct_component_smooth(d, &d->comp[i]);
            else jpegd_idct_component(&d->comp[i]);
        }
    }
    convert_rows(d);
    if (warn && warnlen && d->nwarn > 1) snprintf(warn, warnlen, "%s (and %d more)", d->warn, d->nwarn - 1);
    else if (warn && warnlen && d->nwarn == 1) snprintf(warn, warnlen, "%s", d->warn);
    *out = d->img;
    free_dec(d);
    free(d);
    return 0;
}

/* Usually one pass; see end_of_file for the second. */
int jpeg_decode_warn(const uint8_t *buf, size_t len, Image *out, char *warn, size_t warnlen, char *err,
                     size_t errlen) {
    int again = 0;
    if (decode_pass(buf, len, out, warn, warnlen, err, errlen, 0, &again) == 0) return 0;
    if (!again) return -1;
    return decode_pass(buf, len, out, warn, warnlen, err, errlen, 1, &again);
}
