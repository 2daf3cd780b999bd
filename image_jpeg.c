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
 * Layout (top-down): tables -> decoder state -> markers -> Huffman tables ->
 * bit reader -> entropy decoding (baseline, progressive, arithmetic) -> IDCT (plain and
 * smoothed) -> libjpeg-turbo's buffering replayed -> scan decoding -> upsampling ->
 * colour conversion -> driver.
 */
#include "image.h"
#include "image_jpeg.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COMPS    4      /* Pillow handles 1, 3 and 4 components */
#define MAX_DIM      65500  /* libjpeg's JPEG_MAX_DIMENSION */
#define MAX_MCU_BLKS 10     /* libjpeg's D_MAX_BLOCKS_IN_MCU */
#define FAST_BITS    9      /* Huffman look-up table width */

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
/* Decoder state                                                              */
/* ========================================================================== */

/* A Huffman table as defined by DHT (or a standard table). */
typedef struct {
    int defined;            /* set by DHT or by the standard-table fallback */
    uint8_t bits[17];       /* bits[l] = number of codes of length l (1..16) */
    uint8_t vals[256];      /* symbols in order of increasing code */
} HuffSpec;

/* A Huffman table ready for decoding (canonical codes + a look-up table). */
typedef struct {
    int32_t maxcode[18];    /* largest code of length l, -1 if none; [17] is a sentinel */
    int32_t valoff[18];     /* index into vals = code + valoff[l] */
    uint16_t fast[1 << FAST_BITS]; /* peeked FAST_BITS bits -> (length << 8 | symbol), 0 = longer code */
    uint16_t look8[256];    /* libjpeg-turbo's own 8-bit look-up: (length << 8 | symbol), 9 << 8 = longer */
    uint8_t vals[256];      /* symbols, copied from the spec */
} HuffTable;

/* Upsampling method of a component (libjpeg jdsample.c's choice). */
enum { UP_FULL, UP_H2V1, UP_H1V2, UP_H2V2, UP_BOX };

/* One image component (colour channel) from SOF. */
typedef struct {
    int id;                 /* component identifier Ci */
    int h, v;               /* sampling factors, 1..4 */
    int tq;                 /* quantisation table slot named in SOF */
    int td, ta;             /* DC and AC Huffman table slots of the current scan */
    int dw, dh;             /* downsampled size in samples: ceil(W*h/maxh) x ceil(H*v/maxv) */
    int bw, bh;             /* size in blocks of its own samples: ceil(dw/8) x ceil(dh/8) */
    int bwp, bhp;           /* size in blocks including interleaved-MCU padding */
    int latched;            /* qt was copied at the first scan containing the component */
    uint16_t qt[64];        /* latched quantisation table, natural order */
    int pred;               /* DC predictor of the current scan */
    int dc_ctx;             /* arithmetic: DC conditioning context (0, 4, 8, 12, 16) */
    int coef_bits[64];      /* progressive: Al of the last scan per zigzag index, -1 = never coded */
    int16_t *coef;          /* multi-scan files: bwp*bhp blocks of 64 coefficients (natural order) */
    uint8_t *plane;         /* decoded samples: bh*8 rows of stride bw*8 */
    size_t stride;          /* bytes per plane row (bw*8) */
    int method;             /* UP_* upsampling method */
    int hexp, vexp;         /* expansion factors maxh/h, maxv/v (UP_BOX) */
    uint8_t *row;           /* one upsampled output row (W bytes + slack) */
} Comp;

/* Entropy-coded segment reader (Huffman). */
typedef struct {
    size_t pos;             /* next byte to load (at a marker: its first FF) */
    uint64_t acc;           /* bit accumulator, next bit in the most significant position */
    int n;                  /* number of valid bits in acc; the bits below are zero */
    int stop;               /* a marker or the end of the buffer was reached: no more data bytes */
    int marker;             /* the marker code that stopped the reader, -1 = end of the buffer */
} BitReader;

/* Arithmetic decoder registers (jdarith.c: C, A, CT). */
typedef struct {
    int64_t c;              /* code register + bit buffer */
    int64_t a;              /* interval size */
    int ct;                 /* bits left in the buffer part of c; -16 = start, -1 = gave up */
    size_t pos;             /* next byte to read (at a marker: its first FF) */
    int marker;             /* a marker was met: zero data from now on */
} ArithReader;

/* Colour space of the JPEG data (jdapimin.c default_decompress_parms). */
enum { CS_GRAY, CS_YCC, CS_RGB, CS_CMYK, CS_YCCK };

/* The whole decoder; calloc'ed, freed by jpeg_decode on every exit path. */
typedef struct {
    const uint8_t *buf;     /* the whole file */
    size_t len;             /* its length */
    size_t pos;             /* parse position (marker level) */
    char *err;              /* caller's error buffer */
    size_t errlen;          /* its size */
    jmp_buf jb;             /* error exit */

    /* tables and header state */
    uint16_t qtab[4][64];   /* DQT slots, natural order */
    int qdef[4];            /* slot defined */
    HuffSpec dcs[4], acs[4]; /* DHT slots */
    HuffTable dct[4], act[4]; /* derived tables of the current scan */
    unsigned restart_interval; /* DRI value (MCUs per restart interval, 0 = none) */
    int saw_jfif;           /* an APP0 "JFIF\0" marker of at least 14 bytes was seen */
    int saw_adobe;          /* an APP14 "Adobe" marker of at least 12 bytes was seen */
    uint8_t arith_L[16], arith_U[16], arith_K[16]; /* DAC conditioning (defaults 0, 1, 5) */
    int adobe_transform;    /* its transform byte (last one seen) */

    /* frame */
    int sof_seen;           /* SOF parsed */
    int progressive;        /* SOF2, SOF10 */
    int arith;              /* SOF9, SOF10: arithmetic coding */
    int W, H;               /* image size */
    int nc;                 /* number of components (1, 3 or 4) */
    Comp comp[MAX_COMPS];   /* components in SOF order */
    int maxh, maxv;         /* largest sampling factors */
    int mcux, mcuy;         /* interleaved MCUs per row / column */
    int started;            /* the first SOS was seen and buffers allocated */
    int multiscan;          /* coefficients are buffered (progressive or first scan not all components) */
    int nscans;             /* scans decoded */
    int colorspace;         /* CS_* of the JPEG data */

    /* current scan */
    int ns;                 /* components in scan */
    Comp *sc[4];            /* those components, in scan order */
    int Ss, Se, Ah, Al;     /* spectral selection and successive approximation */
    BitReader br;           /* entropy data reader */
    unsigned eobrun;        /* progressive AC: blocks left in the current end-of-band run */
    unsigned restarts_left; /* MCUs left before the next restart marker */
    int next_rst;           /* number (0..7) of the next expected RSTn */
    int insufficient;       /* Huffman: a marker cut this segment short; MCUs are skipped until a restart */
    int insufficient_mcu;   /* Huffman: the current MCU is skipped */
    int rows_done;          /* a single-scan file's scan is complete: Pillow has every row */
    /* libjpeg-turbo's sequential Huffman decoder reproduced with its input buffering */
    int emulate;            /* decode sequential Huffman scans this way */
    int want_emulation;     /* the first pass stopped because that is needed */
    uint64_t lj_gb;         /* get_buffer */
    int lj_bl;              /* bits_left */
    size_t lj_nib;          /* next_input_byte */
    int lj_um;              /* unread_marker */
    size_t lj_fed;          /* end of what Pillow has handed libjpeg so far (64 KB reads) */
    jmp_buf mcu_jb;         /* suspension: the MCU starts over with more data */
    uint64_t lj_s_gb;       /* the state at the start of the MCU */
    int lj_s_bl, lj_s_pred[4];
    size_t lj_s_nib;
    ArithReader ar;         /* arithmetic decoder */
    uint8_t dc_stats[16][64], ac_stats[16][256]; /* arithmetic statistics bins per table slot */
    uint8_t fixed_bin;      /* the fixed-probability bin (state 113) */

    /* warnings (libjpeg's WARNMS): the first message and how many there were */
    size_t discarded;       /* bytes skipped before the next marker */
    int nwarn;
    char warn[112];

    /* YCbCr -> RGB tables (jdcolor.c build_ycc_rgb_table) */
    int cr_r[256];          /* round(1.402 * (cr - 128)) */
    int cb_b[256];          /* round(1.772 * (cb - 128)) */
    int32_t cr_g[256];      /* -0.71414 * (cr - 128), 16-bit fraction */
    int32_t cb_g[256];      /* -0.34414 * (cb - 128) + 1/2, 16-bit fraction */

    Image img;              /* output being built */
} Dec;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3), noreturn))
#endif
static void fail(Dec *d, const char *fmt, ...) {
    if (d->err && d->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->err, d->errlen, fmt, ap);
        va_end(ap);
    }
    longjmp(d->jb, 1);
}

/* A libjpeg warning: corrupt data that is decoded anyway. The first message is kept. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void warn(Dec *d, const char *fmt, ...) {
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
    if (!image_mul_size(a, b, &n)) fail(d, "%s too large", what);
    p = calloc(n ? n : 1, 1);
    if (!p) fail(d, "out of memory (%s, %zu bytes)", what, n);
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
static int next_marker(Dec *d, size_t *pos) {
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
                warn(d, "corrupt JPEG data: %zu extraneous bytes before marker 0x%02X", d->discarded, d->buf[p]);
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
    fail(d, "truncated file (%s)", what);
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
        if (marker == 0xC4 || marker == 0xDB || marker == 0xCC) fail(d, "bad marker length (marker 0x%02X)", marker);
        L = 2;
    }
    if (d->len - d->pos < L) {
        if (d->rows_done && cut_segment_fails(d, marker, L)) fail(d, "corrupt marker segment 0x%02X", marker);
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
        if (t >= 4) fail(d, "bad DQT table index %d", t);
        if (n < need) fail(d, "bad DQT marker length");
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
        if (count > 256 || (size_t)count > n - 17) fail(d, "bad Huffman table (DHT)");
        if (index & 0x10) {
            index -= 0x10;
            if (index >= 4) fail(d, "bad DHT table index %d", index);
            hs = &d->acs[index];
        } else {
            if (index >= 4) fail(d, "bad DHT table index %d", index);
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
    if (n != 0) fail(d, "bad DHT marker length");
}

static void parse_dri(Dec *d) {
    size_t n;
    const uint8_t *p = segment(d, 0xDD, &n);
    if (n != 2) fail(d, "bad DRI marker length");
    d->restart_interval = rd16(p);
}

/* DAC (arithmetic conditioning) as libjpeg's get_dac: index 0..15 sets the
 * DC bounds L (low nibble) <= U (high nibble) of that slot, 16..31 the AC
 * threshold K of slot index-16. */
static void parse_dac(Dec *d) {
    size_t n;
    const uint8_t *p = segment(d, 0xCC, &n);
    if (n % 2) fail(d, "bad DAC marker length");
    for (size_t i = 0; i < n; i += 2) {
        int index = p[i], val = p[i + 1];
        if (index >= 32) fail(d, "bad DAC table index %d", index);
        if (index >= 16) {
            d->arith_K[index - 16] = (uint8_t)val;
        } else {
            if ((val & 15) > (val >> 4)) fail(d, "bad DAC value 0x%02X", val);
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
    if (d->sof_seen) fail(d, "more than one frame (duplicate SOF marker)");
    if (n < 6) fail(d, "bad SOF marker length");
    int prec = p[0];
    d->H = (int)rd16(p + 1);
    d->W = (int)rd16(p + 3);
    d->nc = p[5];
    if (d->H == 0 || d->W == 0 || d->nc == 0) fail(d, "empty image (zero size or no components in SOF)");
    if (n != 6 + 3 * (size_t)d->nc) fail(d, "bad SOF marker length");
    if (prec != 8) fail(d, "unsupported %d-bit precision (only 8-bit JPEG is supported)", prec);
    if (d->nc != 1 && d->nc != 3 && d->nc != 4) fail(d, "unsupported number of components (%d)", d->nc);
    if (d->W > MAX_DIM || d->H > MAX_DIM)
        fail(d, "image too large (%dx%d; JPEG limit is %d per side)", d->W, d->H, MAX_DIM);
    d->progressive = marker == 0xC2 || marker == 0xCA;
    d->arith = marker == 0xC9 || marker == 0xCA;
    d->maxh = d->maxv = 1;
    for (int i = 0; i < d->nc; i++) {
        Comp *c = &d->comp[i];
        c->id = p[6 + 3 * i];
        c->h = p[7 + 3 * i] >> 4;
        c->v = p[7 + 3 * i] & 15;
        c->tq = p[8 + 3 * i];
        if (c->h < 1 || c->h > 4 || c->v < 1 || c->v > 4) fail(d, "bad sampling factors %dx%d", c->h, c->v);
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
    if (!hs->defined) fail(d, "missing Huffman table (%s slot %d)", is_dc ? "DC" : "AC", slot);
    for (int l = 1; l <= 16; l++)
        for (int i = 0; i < hs->bits[l]; i++) size[p++] = (uint8_t)l;
    size[p] = 0;
    nsym = p;
    unsigned c = 0;
    int si = size[0];
    p = 0;
    while (size[p]) {
        while (size[p] == si) code[p++] = c++;
        if (c >= 1u << si) fail(d, "bad Huffman table (code lengths overflow)");
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
            if (hs->vals[i] > 15) fail(d, "bad Huffman table (DC symbol %d)", hs->vals[i]);
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
/* Bit reader                                                                 */
/* ========================================================================== */

/* Load bytes into the accumulator until it holds more than 56 bits or a
 * marker / the end of the buffer is met (the reader then stops: at a marker
 * br->pos is left on an FF before it and br->marker holds its code; at the
 * end of the buffer br->marker is -1). FF 00 is a data FF; FF fill bytes
 * before 00 are swallowed as libjpeg does. */
static void br_fill(Dec *d) {
    BitReader *br = &d->br;
    const uint8_t *buf = d->buf;
    size_t len = d->len, p = br->pos;
    uint64_t acc = br->acc;
    int n = br->n;
    if (br->stop) return;
    while (n <= 56) {
        unsigned b;
        if (p >= len) {
            br->stop = 1;
            br->marker = -1;
            break;
        }
        b = buf[p];
        if (b == 0xFF) {
            size_t q = p + 1;
            while (q < len && buf[q] == 0xFF) q++;
            if (q >= len) { /* the file ends inside FF fill bytes */
                br->stop = 1;
                br->marker = -1;
                break;
            }
            if (buf[q] != 0) { /* a marker: the data is over */
                br->stop = 1;
                br->marker = buf[q];
                p = q - 1;
                break;
            }
            p = q + 1;
        } else {
            p++;
        }
        acc |= (uint64_t)b << (56 - n);
        n += 8;
    }
    br->pos = p;
    br->acc = acc;
    br->n = n;
}

/* Bits are needed that the segment does not hold. At the end of the file
 * Pillow has no more data to give libjpeg: refused as truncated. At a marker
 * libjpeg-turbo's jpeg_fill_bit_buffer warns once and supplies zero bits; the
 * MCU is finished with them and the rest of the segment is skipped. (Its
 * sequential fast path, decode_mcu_fast, feeds zero bytes in place of the
 * marker, then decodes the MCU again with the slow path: the same values.) */
static void out_of_bits(Dec *d) {
    BitReader *br = &d->br;
    if (br->marker < 0) fail(d, "truncated file (premature end of entropy-coded data)");
    if (!d->insufficient) {
        warn(d, "corrupt JPEG data: premature end of data segment");
        d->insufficient = 1;
    }
    br->n = 64; /* zero bits (those below the valid ones are zero) */
}

static inline unsigned get_bits(Dec *d, int s) {
    BitReader *br = &d->br;
    unsigned v;
    if (s == 0) return 0;
    if (br->n < s) {
        br_fill(d);
        if (br->n < s) out_of_bits(d);
    }
    v = (unsigned)(br->acc >> (64 - s));
    br->acc <<= s;
    br->n -= s;
    return v;
}

static inline int extend(unsigned v, int s) {
    return s == 0 ? 0 : (v < (1u << (s - 1)) ? (int)v - (int)((1u << s) - 1) : (int)v);
}

/* One Huffman symbol. A code that matches no table entry (jpeg_huff_decode
 * reaching length 17) costs 17 bits and stands for symbol 0 (DC: difference
 * 0; AC: end of block), as libjpeg-turbo substitutes. */
static inline int huff_decode(Dec *d, const HuffTable *t) {
    BitReader *br = &d->br;
    if (br->n < 17) br_fill(d);
    unsigned e = t->fast[br->acc >> (64 - FAST_BITS)];
    if (e) {
        int l = (int)(e >> 8);
        if (l > br->n) out_of_bits(d);
        br->acc <<= l;
        br->n -= l;
        return (int)(e & 255);
    }
    unsigned peek = (unsigned)(br->acc >> 48);
    int l;
    int32_t code = 0;
    for (l = FAST_BITS + 1; l <= 16; l++) {
        code = (int32_t)(peek >> (16 - l));
        if (code <= t->maxcode[l]) break;
    }
    if (l > br->n) out_of_bits(d); /* zero bits were peeked: the same code */
    if (l > 16) {
        br->acc <<= 17;
        br->n -= 17;
        warn(d, "corrupt JPEG data: bad Huffman code");
        return 0;
    }
    br->acc <<= l;
    br->n -= l;
    return t->vals[(code + t->valoff[l]) & 255];
}

/* jdmarker.c read_restart_marker + jpeg_resync_to_restart. `um` is a marker
 * already met by the entropy decoder (0: look for one from *p). Returns the
 * marker left unread (0: it was the expected RSTn or was given up, and data
 * resumes at *p; else the next segment is treated as empty). */
static int restart_marker(Dec *d, int um, size_t *p) {
    int want = d->next_rst;
    if (um == 0) {
        um = next_marker(d, p);
        if (um < 0) fail(d, "truncated file (missing restart marker)");
    }
    if (um == 0xD0 + want) {
        um = 0;
    } else {
        warn(d, "corrupt JPEG data: found marker 0x%02X instead of RST%d", um, want);
        for (;;) {
            int action;
            if (um < 0xC0) action = 2;                     /* invalid marker: look further */
            else if (um < 0xD0 || um > 0xD7) action = 3;  /* a real marker: leave it */
            else if (um == 0xD0 + ((want + 1) & 7) || um == 0xD0 + ((want + 2) & 7)) action = 3;
            else if (um == 0xD0 + ((want + 7) & 7) || um == 0xD0 + ((want + 6) & 7)) action = 2;
            else action = 1;                               /* the wanted one, or too far away */
            if (action == 1) {
                um = 0;
                break;
            }
            if (action == 3) break;
            um = next_marker(d, p);
            if (um < 0) fail(d, "truncated file (missing restart marker)");
        }
    }
    d->next_rst = (d->next_rst + 1) & 7;
    return um;
}

/* At a restart point of a Huffman scan: drop the remaining bits, read the
 * marker, reset predictions (jdhuff.c / jdphuff.c process_restart). */
static void process_restart(Dec *d) {
    BitReader *br = &d->br;
    size_t p;
    int um = 0;
    if (!d->insufficient) d->discarded += (size_t)br->n / 8;
    if (br->stop && br->marker < 0) fail(d, "truncated file (missing restart marker)");
    if (br->stop) {
        um = br->marker;
        p = br->pos;
        while (d->buf[p] == 0xFF) p++;
        p++; /* just past the marker code */
    } else {
        p = br->pos;
    }
    um = restart_marker(d, um, &p);
    br->acc = 0;
    br->n = 0;
    if (um) { /* left unread: the reader stays stopped in front of it */
        br->stop = 1;
        br->marker = um;
        br->pos = p - 2;
    } else {
        br->stop = 0;
        br->marker = 0;
        br->pos = p;
        d->insufficient = 0;
    }
    for (int i = 0; i < d->ns; i++) d->sc[i]->pred = 0;
    d->eobrun = 0;
    d->restarts_left = d->restart_interval;
}

/* ========================================================================== */
/* Entropy decoding: baseline / extended sequential                           */
/* ========================================================================== */

/* One block; zero coefficients are not written, so the block must be zeroed
 * beforehand (or hold an earlier scan's data, which libjpeg also keeps). */
static void decode_block_seq(Dec *d, Comp *c, int16_t *blk) {
    const HuffTable *dc = &d->dct[c->td], *ac = &d->act[c->ta];
    int s = huff_decode(d, dc);
    int diff = extend(get_bits(d, s), s);
    c->pred = (int)((unsigned)c->pred + (unsigned)diff);
    blk[0] = (int16_t)c->pred;
    for (int k = 1; k < 64; k++) {
        int rs = huff_decode(d, ac);
        int r = rs >> 4;
        s = rs & 15;
        if (s) {
            k += r;
            blk[jpeg_zigzag[k]] = (int16_t)extend(get_bits(d, s), s);
        } else {
            if (r != 15) break;
            k += 15;
        }
    }
}

/* ========================================================================== */
/* Entropy decoding: progressive                                              */
/* ========================================================================== */

static void decode_dc_first(Dec *d, Comp *c, int16_t *blk) {
    int s = huff_decode(d, &d->dct[c->td]);
    int diff = extend(get_bits(d, s), s);
    if ((c->pred >= 0 && diff > INT32_MAX - c->pred) || (c->pred < 0 && diff < INT32_MIN - c->pred))
        fail(d, "corrupt data (DC coefficient overflow)");
    c->pred += diff;
    blk[0] = (int16_t)(uint16_t)((unsigned)c->pred << d->Al);
}

static void decode_dc_refine(Dec *d, int16_t *blk) {
    if (get_bits(d, 1)) blk[0] = (int16_t)(blk[0] | (1 << d->Al));
}

static void decode_ac_first(Dec *d, Comp *c, int16_t *blk) {
    const HuffTable *t = &d->act[c->ta];
    if (d->eobrun > 0) {
        d->eobrun--;
        return;
    }
    for (int k = d->Ss; k <= d->Se; k++) {
        int rs = huff_decode(d, t);
        int r = rs >> 4, s = rs & 15;
        if (s) {
            k += r;
            blk[jpeg_zigzag[k]] = (int16_t)(extend(get_bits(d, s), s) * (1 << d->Al));
        } else if (r == 15) {
            k += 15;
        } else {
            d->eobrun = (1u << r) + get_bits(d, r) - 1;
            break;
        }
    }
}

/* Add one correction bit to an already-nonzero coefficient. */
static inline void refine_coef(Dec *d, int16_t *coef, int p1) {
    if (get_bits(d, 1) && (*coef & p1) == 0) *coef = (int16_t)(*coef >= 0 ? *coef + p1 : *coef - p1);
}

static void decode_ac_refine(Dec *d, Comp *c, int16_t *blk) {
    const HuffTable *t = &d->act[c->ta];
    int p1 = 1 << d->Al;
    int k = d->Ss;
    if (d->eobrun == 0) {
        for (; k <= d->Se; k++) {
            int rs = huff_decode(d, t);
            int r = rs >> 4, s = rs & 15, val = 0;
            if (s) {
                if (s != 1) warn(d, "corrupt JPEG data: bad Huffman code"); /* jdphuff.c: taken as size 1 */
                val = get_bits(d, 1) ? p1 : -p1;
            } else if (r != 15) {
                d->eobrun = (1u << r) + get_bits(d, r);
                break;
            }
            /* skip r zero coefficients (refining the nonzero ones on the way) */
            do {
                int16_t *coef = blk + jpeg_zigzag[k];
                if (*coef != 0) {
                    refine_coef(d, coef, p1);
                } else {
                    if (--r < 0) break;
                }
                k++;
            } while (k <= d->Se);
            if (val) blk[jpeg_zigzag[k]] = (int16_t)val;
        }
    }
    if (d->eobrun > 0) {
        for (; k <= d->Se; k++) {
            int16_t *coef = blk + jpeg_zigzag[k];
            if (*coef != 0) refine_coef(d, coef, p1);
        }
        d->eobrun--;
    }
}

/* Validate a progressive scan and update coef_bits (jdphuff.c / jdarith.c
 * start_pass: bad parameters are errors, scans out of order only warnings). */
static void check_progression(Dec *d) {
    int dc = d->Ss == 0, bad = 0;
    if (dc) {
        if (d->Se != 0) bad = 1;
    } else {
        if (d->Ss > d->Se || d->Se > 63) bad = 1;
        if (d->ns != 1) bad = 1;
    }
    if (d->Ah != 0 && d->Al != d->Ah - 1) bad = 1;
    if (d->Al > 13) bad = 1;
    if (bad) fail(d, "invalid progressive scan (Ss=%d Se=%d Ah=%d Al=%d)", d->Ss, d->Se, d->Ah, d->Al);
    for (int i = 0; i < d->ns; i++) {
        int *cb = d->sc[i]->coef_bits;
        int ci = (int)(d->sc[i] - d->comp);
        if (!dc && cb[0] < 0) warn(d, "corrupt JPEG data: AC scan of component %d before its DC scan", ci);
        for (int k = d->Ss; k <= d->Se; k++) {
            int expected = cb[k] < 0 ? 0 : cb[k];
            if (d->Ah != expected)
                warn(d, "corrupt JPEG data: component %d coefficient %d refined out of order", ci, k);
            cb[k] = d->Al;
        }
    }
}

/* ========================================================================== */
/* Inverse DCT                                                                */
/* ========================================================================== */

/* libjpeg-turbo's accurate integer IDCT ("islow", jidctint.c: 13-bit
 * constants, 2 extra bits between passes) as its x86 SIMD version
 * (jsimd_idct_islow_avx2 / _sse2), which is what Pillow actually runs, computes
 * it: coefficient*quantiser products and the sums in0+in4, in0-in4, in7+in3,
 * in5+in1 wrap to 16 bits, each pass saturates its results to 16 bits, and the
 * final samples saturate to -128..127 before the +128 level shift. The
 * products and the rest of the butterfly are exact 32-bit arithmetic (bounded
 * well below 2^31 for 16-bit inputs). For every real-world stream this equals
 * the plain C jpeg_idct_islow; it differs only for absurd coefficients (e.g.
 * 16-bit quantisers), where matching Pillow needs the SIMD behaviour. */

static inline int32_t wrap16(int32_t v) { return (int16_t)(uint16_t)(uint32_t)v; }
static inline int16_t sat16(int32_t v) { return (int16_t)(v < -32768 ? -32768 : v > 32767 ? 32767 : v); }

/* One 8-point pass: x[0..7] in, o[0..7] out (descaled by `shift`, saturated). */
static inline void idct_1d(const int32_t *x, int16_t *o, int shift) {
    const int32_t rnd = (int32_t)1 << (shift - 1);
    int32_t t0 = wrap16(x[0] + x[4]) * 8192;
    int32_t t1 = wrap16(x[0] + wrap16(-x[4])) * 8192;
    int32_t t3 = x[2] * 10703 + x[6] * 4433;   /* FIX(0.541196100 + 0.765366865), FIX(0.541196100) */
    int32_t t2 = x[2] * 4433 - x[6] * 10704;   /* FIX(0.541196100), FIX(0.541196100 - 1.847759065) */
    int32_t t10 = t0 + t3, t13 = t0 - t3, t11 = t1 + t2, t12 = t1 - t2;
    int32_t z3 = wrap16(x[7] + x[3]), z4 = wrap16(x[5] + x[1]);
    int32_t z3p = z3 * -6436 + z4 * 9633;      /* z3*(1.175875602 - 1.961570560) + z4*1.175875602 */
    int32_t z4p = z4 * 6437 + z3 * 9633;       /* z4*(1.175875602 - 0.390180644) + z3*1.175875602 */
    int32_t o0 = x[7] * -4927 + x[1] * -7373 + z3p;   /* 0.298631336-0.899976223, -0.899976223 */
    int32_t o1 = x[5] * -4176 + x[3] * -20995 + z4p;  /* 2.053119869-2.562915447, -2.562915447 */
    int32_t o2 = x[5] * -20995 + x[3] * 4177 + z3p;   /* -2.562915447, 3.072711026-2.562915447 */
    int32_t o3 = x[7] * -7373 + x[1] * 4926 + z4p;    /* -0.899976223, 1.501321110-0.899976223 */
    o[0] = sat16((t10 + o3 + rnd) >> shift);
    o[7] = sat16((t10 - o3 + rnd) >> shift);
    o[1] = sat16((t11 + o2 + rnd) >> shift);
    o[6] = sat16((t11 - o2 + rnd) >> shift);
    o[2] = sat16((t12 + o1 + rnd) >> shift);
    o[5] = sat16((t12 - o1 + rnd) >> shift);
    o[3] = sat16((t13 + o0 + rnd) >> shift);
    o[4] = sat16((t13 - o0 + rnd) >> shift);
}

/* Dequantise (qm: the table as libjpeg's 16-bit ISLOW_MULT_TYPE) and
 * transform one block into 8x8 samples at out (row stride `stride`). */
static void idct_islow(const int16_t *in, const int16_t *qm, uint8_t *out, size_t stride) {
    int16_t ws[64], o[8];
    int32_t x[8];
    int ac = 0;
    for (int i = 8; i < 64; i++) ac |= in[i];
    if (!ac) {
        /* rows 1..7 all zero: each column is its DC << PASS1_BITS (16-bit) */
        for (int c = 0; c < 8; c++) {
            int16_t dc = (int16_t)wrap16(wrap16((int32_t)in[c] * qm[c]) * 4);
            for (int r = 0; r < 8; r++) ws[r * 8 + c] = dc;
        }
    } else {
        for (int c = 0; c < 8; c++) {
            const int16_t *col = in + c;
            if (!(col[8] | col[16] | col[24] | col[32] | col[40] | col[48] | col[56])) {
                /* what the full pass gives for a column without AC terms */
                int16_t dc = sat16(wrap16((int32_t)col[0] * qm[c]) * 4);
                for (int r = 0; r < 8; r++) ws[r * 8 + c] = dc;
                continue;
            }
            for (int r = 0; r < 8; r++) x[r] = wrap16((int32_t)in[r * 8 + c] * qm[r * 8 + c]);
            idct_1d(x, o, 11);
            for (int r = 0; r < 8; r++) ws[r * 8 + c] = o[r];
        }
    }
    for (int r = 0; r < 8; r++) {
        uint8_t *dst = out + (size_t)r * stride;
        const int16_t *w = ws + r * 8;
        if (!(w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])) {
            /* what the full pass gives for a row without AC terms */
            int v = (w[0] + 16) >> 5;
            memset(dst, v < -128 ? 0 : v > 127 ? 255 : v + 128, 8);
            continue;
        }
        for (int c = 0; c < 8; c++) x[c] = w[c];
        idct_1d(x, o, 18);
        for (int c = 0; c < 8; c++) dst[c] = (uint8_t)((o[c] < -128 ? -128 : o[c] > 127 ? 127 : o[c]) + 128);
    }
}

static void comp_qm(const Comp *c, int16_t qm[64]) {
    for (int i = 0; i < 64; i++) qm[i] = c->latched ? (int16_t)c->qt[i] : 0;
}

/* Plain output pass of a buffered component. */
static void idct_component(Comp *c) {
    int16_t qm[64];
    comp_qm(c, qm);
    for (int by = 0; by < c->bh; by++)
        for (int bx = 0; bx < c->bw; bx++)
            idct_islow(c->coef + ((size_t)by * c->bwp + bx) * 64, qm, c->plane + (size_t)by * 8 * c->stride + bx * 8,
                       c->stride);
}

/* --- progressive block smoothing (libjpeg-turbo jdcoefct.c) ---------------- */

/* Quantiser positions (natural order) of zigzag coefficients 0..9. */
static const int SMOOTH_POS[10] = {0, 1, 8, 16, 9, 2, 3, 10, 17, 24};

/* libjpeg's smoothing_ok(): used for the final output when every component
 * has its DC (partly) coded and non-zero quantisers there, and some of the
 * first nine AC coefficients of some component are not fully known. */
static int smoothing_wanted(const Dec *d) {
    int useful = 0;
    if (!d->progressive) return 0;
    for (int i = 0; i < d->nc; i++) {
        const Comp *c = &d->comp[i];
        if (!c->latched) return 0;
        for (int k = 0; k < 10; k++)
            if (c->qt[SMOOTH_POS[k]] == 0) return 0;
        if (c->coef_bits[0] < 0) return 0;
        for (int k = 1; k < 10; k++)
            if (c->coef_bits[k] != 0) useful = 1;
    }
    return useful;
}

/* Estimate of one AC coefficient from a weighted sum of DC values. */
static int16_t smooth_pred(int64_t q00, int64_t qk, int64_t sum, int Al) {
    int64_t num = q00 * sum;
    int pred;
    if (num >= 0) {
        pred = (int)(((qk << 7) + num) / (qk << 8));
        if (Al > 0 && pred >= (1 << Al)) pred = (1 << Al) - 1;
    } else {
        pred = (int)(((qk << 7) - num) / (qk << 8));
        if (Al > 0 && pred >= (1 << Al)) pred = (1 << Al) - 1;
        pred = -pred;
    }
    return (int16_t)pred;
}

static void idct_component_smooth(const Dec *d, Comp *c) {
    const int *cb = c->coef_bits;
    int16_t qm[64], ws[64];
    int64_t Q00 = c->qt[0], Q01 = c->qt[1], Q10 = c->qt[8], Q20 = c->qt[16], Q11 = c->qt[9], Q02 = c->qt[2];
    int64_t Q03 = c->qt[3], Q12 = c->qt[10], Q21 = c->qt[17], Q30 = c->qt[24];
    int v = c->v;
    int last_imcu = (d->mcuy > 0 ? d->mcuy : 1) - 1;
    int change_dc = 1;
    for (int k = 1; k < 10; k++)
        if (cb[k] != -1) change_dc = 0;
    comp_qm(c, qm);
    for (int g = 0; g < c->bh; g++) {
        /* libjpeg walks iMCU rows of v block rows; its neighbour choice at
         * iMCU-row boundaries is reproduced literally */
        int imcu = g / v, br = g % v;
        int block_rows = v;
        if (imcu == last_imcu) {
            block_rows = c->bh % v;
            if (block_rows == 0) block_rows = v;
        }
        int prev = (br > 0 || imcu > 0) ? g - 1 : g;
        int prev2 = (br > 1 || imcu > 1) ? g - 2 : prev;
        int next = (br < block_rows - 1 || imcu < last_imcu) ? g + 1 : g;
        int next2 = (br < block_rows - 2 || imcu + 1 < last_imcu) ? g + 2 : next;
        const int16_t *rows[5];
        rows[0] = c->coef + (size_t)prev2 * c->bwp * 64;
        rows[1] = c->coef + (size_t)prev * c->bwp * 64;
        rows[2] = c->coef + (size_t)g * c->bwp * 64;
        rows[3] = c->coef + (size_t)next * c->bwp * 64;
        rows[4] = c->coef + (size_t)next2 * c->bwp * 64;
        /* DC[r][j]: DC of row r (0 = two above .. 4 = two below), column
         * j (0 = two left .. 4 = two right) — a sliding register as in libjpeg */
        int DC[5][5];
        for (int r = 0; r < 5; r++)
            for (int j = 0; j < 5; j++) DC[r][j] = rows[r][0];
        int last_col = c->bw - 1;
        for (int b = 0; b < c->bw; b++) {
            const int16_t *cur = rows[2] + (size_t)b * 64;
            memcpy(ws, cur, sizeof ws);
            if (b == 0 && b < last_col)
                for (int r = 0; r < 5; r++) DC[r][3] = rows[r][(size_t)(b + 1) * 64];
            if (b + 1 < last_col)
                for (int r = 0; r < 5; r++) DC[r][4] = rows[r][(size_t)(b + 2) * 64];
#define D(n) ((int64_t)DC[((n) - 1) / 5][((n) - 1) % 5])
            int Al;
            if ((Al = cb[1]) != 0 && ws[1] == 0)
                ws[1] = smooth_pred(Q00, Q01,
                    change_dc ? (-D(1) - D(2) + D(4) + D(5) - 3 * D(6) + 13 * D(7) - 13 * D(9) + 3 * D(10) -
                                 3 * D(11) + 38 * D(12) - 38 * D(14) + 3 * D(15) - 3 * D(16) + 13 * D(17) -
                                 13 * D(19) + 3 * D(20) - D(21) - D(22) + D(24) + D(25))
                              : (-7 * D(11) + 50 * D(12) - 50 * D(14) + 7 * D(15)), Al);
            if ((Al = cb[2]) != 0 && ws[8] == 0)
                ws[8] = smooth_pred(Q00, Q10,
                    change_dc ? (-D(1) - 3 * D(2) - 3 * D(3) - 3 * D(4) - D(5) - D(6) + 13 * D(7) + 38 * D(8) +
                                 13 * D(9) - D(10) + D(16) - 13 * D(17) - 38 * D(18) - 13 * D(19) + D(20) +
                                 D(21) + 3 * D(22) + 3 * D(23) + 3 * D(24) + D(25))
                              : (-7 * D(3) + 50 * D(8) - 50 * D(18) + 7 * D(23)), Al);
            if ((Al = cb[3]) != 0 && ws[16] == 0)
                ws[16] = smooth_pred(Q00, Q20,
                    change_dc ? (D(3) + 2 * D(7) + 7 * D(8) + 2 * D(9) - 5 * D(12) - 14 * D(13) - 5 * D(14) +
                                 2 * D(17) + 7 * D(18) + 2 * D(19) + D(23))
                              : (-D(3) + 13 * D(8) - 24 * D(13) + 13 * D(18) - D(23)), Al);
            if ((Al = cb[4]) != 0 && ws[9] == 0)
                ws[9] = smooth_pred(Q00, Q11,
                    change_dc ? (-D(1) + D(5) + 9 * D(7) - 9 * D(9) - 9 * D(17) + 9 * D(19) + D(21) - D(25))
                              : (D(10) + D(16) - 10 * D(17) + 10 * D(19) - D(2) - D(20) + D(22) - D(24) + D(4) -
                                 D(6) + 10 * D(7) - 10 * D(9)), Al);
            if ((Al = cb[5]) != 0 && ws[2] == 0)
                ws[2] = smooth_pred(Q00, Q02,
                    change_dc ? (2 * D(7) - 5 * D(8) + 2 * D(9) + D(11) + 7 * D(12) - 14 * D(13) + 7 * D(14) +
                                 D(15) + 2 * D(17) - 5 * D(18) + 2 * D(19))
                              : (-D(11) + 13 * D(12) - 24 * D(13) + 13 * D(14) - D(15)), Al);
            if (change_dc) {
                if ((Al = cb[6]) != 0 && ws[3] == 0)
                    ws[3] = smooth_pred(Q00, Q03, D(7) - D(9) + 2 * D(12) - 2 * D(14) + D(17) - D(19), Al);
                if ((Al = cb[7]) != 0 && ws[10] == 0)
                    ws[10] = smooth_pred(Q00, Q12, D(7) - 3 * D(8) + D(9) - D(17) + 3 * D(18) - D(19), Al);
                if ((Al = cb[8]) != 0 && ws[17] == 0)
                    ws[17] = smooth_pred(Q00, Q21, D(7) - D(9) - 3 * D(12) + 3 * D(14) + D(17) - D(19), Al);
                if ((Al = cb[9]) != 0 && ws[24] == 0)
                    ws[24] = smooth_pred(Q00, Q30, D(7) + 2 * D(8) + D(9) - D(17) - 2 * D(18) - D(19), Al);
                /* the DC itself is re-estimated (no clamp: Al < 0 here) */
                ws[0] = smooth_pred(Q00, Q00,
                    -2 * D(1) - 6 * D(2) - 8 * D(3) - 6 * D(4) - 2 * D(5) - 6 * D(6) + 6 * D(7) + 42 * D(8) +
                    6 * D(9) - 6 * D(10) - 8 * D(11) + 42 * D(12) + 152 * D(13) + 42 * D(14) - 8 * D(15) -
                    6 * D(16) + 6 * D(17) + 42 * D(18) + 6 * D(19) - 6 * D(20) - 2 * D(21) - 6 * D(22) -
                    8 * D(23) - 6 * D(24) - 2 * D(25), 0);
            }
#undef D
            idct_islow(ws, qm, c->plane + (size_t)g * 8 * c->stride + (size_t)b * 8, c->stride);
            for (int r = 0; r < 5; r++) {
                DC[r][0] = DC[r][1];
                DC[r][1] = DC[r][2];
                DC[r][2] = DC[r][3];
                DC[r][3] = DC[r][4];
            }
        }
    }
}

static int16_t *coef_block(Comp *c, int by, int bx) { return c->coef + ((size_t)by * c->bwp + bx) * 64; }

/* ========================================================================== */
/* Entropy decoding: arithmetic (T.81 Annex D and F.1.4.4 / G.1.3.3)         */
/* ========================================================================== */

/* T.81 Table D.2, one entry per state: Qe, next state after an LPS (bit 7 set
 * where the MPS sense switches), next state after an MPS. State 113 is the
 * fixed 0.5 estimate jdarith.c uses for sign and refinement bits. */
static const struct {
    uint16_t qe;
    uint8_t nlps, nmps;
} QE[114] = {
    {0x5a1d, 0x81, 1},   {0x2586, 14, 2},     {0x1114, 16, 3},     {0x080b, 18, 4},     {0x03d8, 20, 5},
    {0x01da, 23, 6},     {0x00e5, 25, 7},     {0x006f, 28, 8},     {0x0036, 30, 9},     {0x001a, 33, 10},
    {0x000d, 35, 11},    {0x0006, 9, 12},     {0x0003, 10, 13},    {0x0001, 12, 13},    {0x5a7f, 0x8f, 15},
    {0x3f25, 36, 16},    {0x2cf2, 38, 17},    {0x207c, 39, 18},    {0x17b9, 40, 19},    {0x1182, 42, 20},
    {0x0cef, 43, 21},    {0x09a1, 45, 22},    {0x072f, 46, 23},    {0x055c, 48, 24},    {0x0406, 49, 25},
    {0x0303, 51, 26},    {0x0240, 52, 27},    {0x01b1, 54, 28},    {0x0144, 56, 29},    {0x00f5, 57, 30},
    {0x00b7, 59, 31},    {0x008a, 60, 32},    {0x0068, 62, 33},    {0x004e, 63, 34},    {0x003b, 32, 35},
    {0x002c, 33, 9},     {0x5ae1, 0xa5, 37},  {0x484c, 64, 38},    {0x3a0d, 65, 39},    {0x2ef1, 67, 40},
    {0x261f, 68, 41},    {0x1f33, 69, 42},    {0x19a8, 70, 43},    {0x1518, 72, 44},    {0x1177, 73, 45},
    {0x0e74, 74, 46},    {0x0bfb, 75, 47},    {0x09f8, 77, 48},    {0x0861, 78, 49},    {0x0706, 79, 50},
    {0x05cd, 48, 51},    {0x04de, 50, 52},    {0x040f, 50, 53},    {0x0363, 51, 54},    {0x02d4, 52, 55},
    {0x025c, 53, 56},    {0x01f8, 54, 57},    {0x01a4, 55, 58},    {0x0160, 56, 59},    {0x0125, 57, 60},
    {0x00f6, 58, 61},    {0x00cb, 59, 62},    {0x00ab, 61, 63},    {0x008f, 61, 32},    {0x5b12, 0xc1, 65},
    {0x4d04, 80, 66},    {0x412c, 81, 67},    {0x37d8, 82, 68},    {0x2fe8, 83, 69},    {0x293c, 84, 70},
    {0x2379, 86, 71},    {0x1edf, 87, 72},    {0x1aa9, 87, 73},    {0x174e, 72, 74},    {0x1424, 72, 75},
    {0x119c, 74, 76},    {0x0f6b, 74, 77},    {0x0d51, 75, 78},    {0x0bb6, 77, 79},    {0x0a40, 77, 48},
    {0x5832, 0xd0, 81},  {0x4d1c, 88, 82},    {0x438e, 89, 83},    {0x3bdd, 90, 84},    {0x34ee, 91, 85},
    {0x2eae, 92, 86},    {0x299a, 93, 87},    {0x2516, 86, 71},    {0x5570, 0xd8, 89},  {0x4ca9, 95, 90},
    {0x44d9, 96, 91},    {0x3e22, 97, 92},    {0x3824, 99, 93},    {0x32b4, 99, 94},    {0x2e17, 93, 86},
    {0x56a8, 0xdf, 96},  {0x4f46, 101, 97},   {0x47e5, 102, 98},   {0x41cf, 103, 99},   {0x3c3d, 104, 100},
    {0x375e, 99, 93},    {0x5231, 105, 102},  {0x4c0f, 106, 103},  {0x4639, 107, 104},  {0x415e, 103, 99},
    {0x5627, 0xe9, 106}, {0x50e7, 108, 107},  {0x4b85, 109, 103},  {0x5597, 110, 109},  {0x504f, 111, 107},
    {0x5a10, 0xee, 111}, {0x5522, 112, 109},  {0x59eb, 0xf0, 111}, {0x5a1d, 113, 113}};

/* Next byte of arithmetic-coded data. Running off the end of the file is an
 * error: jdarith.c cannot suspend, so Pillow gets no image either. */
static int ar_byte(Dec *d) {
    if (d->ar.pos >= d->len) fail(d, "truncated file (premature end of arithmetic-coded data)");
    return d->buf[d->ar.pos++];
}

/* Decode one binary decision with statistics bin *st (bit 7: the MPS, bits
 * 0..6: the state). Renormalisation reads bytes as D.2.6 (FF 00 = FF, FF
 * fill bytes swallowed); after a marker, zero bytes are supplied. */
static int ar_decode(Dec *d, uint8_t *st) {
    ArithReader *r = &d->ar;
    while (r->a < 0x8000) {
        if (--r->ct < 0) {
            int data = 0;
            if (!r->marker) {
                data = ar_byte(d);
                if (data == 0xFF) {
                    do data = ar_byte(d);
                    while (data == 0xFF);
                    if (data == 0) {
                        data = 0xFF;
                    } else { /* a marker: legal here, zero data from now on */
                        r->marker = data;
                        r->pos -= 2; /* on the FF just before the code */
                        data = 0;
                    }
                }
            }
            r->c = (r->c << 8) | data;
            if ((r->ct += 8) < 0)
                if (++r->ct == 0) r->a = 0x8000; /* the two initial bytes are in */
        }
        r->a <<= 1;
    }
    int sv = *st, i = sv & 0x7F;
    int64_t qe = QE[i].qe;
    int64_t t = r->a - qe;
    r->a = t;
    t <<= r->ct;
    if (r->c >= t) {
        r->c -= t;
        if (r->a < qe) { /* conditional exchange: the MPS after all */
            r->a = qe;
            *st = (uint8_t)((sv & 0x80) ^ QE[i].nmps);
        } else {
            r->a = qe;
            *st = (uint8_t)((sv & 0x80) ^ QE[i].nlps);
            sv ^= 0x80;
        }
    } else if (r->a < 0x8000) {
        if (r->a < qe) {
            *st = (uint8_t)((sv & 0x80) ^ QE[i].nlps);
            sv ^= 0x80;
        } else {
            *st = (uint8_t)((sv & 0x80) ^ QE[i].nmps);
        }
    }
    return sv >> 7;
}

/* Impossible data (magnitude or spectral overflow): jdarith.c warns and
 * decodes nothing more until the next restart marker. */
static void ar_give_up(Dec *d) {
    warn(d, "corrupt JPEG data: arithmetic code bad");
    d->ar.ct = -1;
}

/* Reset the statistics of the scan's components (start of scan, restart). */
static void ar_reset(Dec *d) {
    for (int i = 0; i < d->ns; i++) {
        Comp *c = d->sc[i];
        if (!d->progressive || (d->Ss == 0 && d->Ah == 0)) {
            memset(d->dc_stats[c->td], 0, sizeof d->dc_stats[0]);
            c->pred = 0;
            c->dc_ctx = 0;
        }
        if (!d->progressive || d->Ss) memset(d->ac_stats[c->ta], 0, sizeof d->ac_stats[0]);
    }
    d->ar.c = 0;
    d->ar.a = 0;
    d->ar.ct = -16;
    d->fixed_bin = 113;
    d->restarts_left = d->restart_interval;
}

static void ar_restart(Dec *d) {
    ArithReader *r = &d->ar;
    size_t p = r->pos;
    int um = r->marker;
    if (um) {
        while (d->buf[p] == 0xFF) p++;
        p++;
    }
    um = restart_marker(d, um, &p);
    r->marker = um;
    r->pos = um ? p - 2 : p;
    ar_reset(d);
}

/* A DC difference (F.1.4.4.1 / Figures F.19-F.24) added to the predictor
 * (16 bits, as jdarith.c keeps it); 0 when the data is impossible. */
static int ar_dc(Dec *d, Comp *c) {
    int tbl = c->td, sign, m, v;
    uint8_t *st = d->dc_stats[tbl] + c->dc_ctx;
    if (ar_decode(d, st) == 0) {
        c->dc_ctx = 0;
        return 1;
    }
    sign = ar_decode(d, st + 1);
    st += 2 + sign;
    if ((m = ar_decode(d, st)) != 0) {
        st = d->dc_stats[tbl] + 20;
        while (ar_decode(d, st)) {
            if ((m <<= 1) == 0x8000) {
                ar_give_up(d);
                return 0;
            }
            st++;
        }
    }
    if (m < (int)((1L << d->arith_L[tbl]) >> 1)) c->dc_ctx = 0;
    else if (m > (int)((1L << d->arith_U[tbl]) >> 1)) c->dc_ctx = 12 + sign * 4;
    else c->dc_ctx = 4 + sign * 4;
    v = m;
    st += 14;
    while (m >>= 1)
        if (ar_decode(d, st)) v |= m;
    v += 1;
    if (sign) v = -v;
    c->pred = (c->pred + v) & 0xffff;
    return 1;
}

/* AC coefficients k0..k1 of a block (F.1.4.4.2 / Figure F.20), scaled by 2^Al. */
static void ar_ac(Dec *d, Comp *c, int16_t *blk, int k0, int k1, int Al) {
    int tbl = c->ta;
    for (int k = k0; k <= k1; k++) {
        uint8_t *st = d->ac_stats[tbl] + 3 * (k - 1);
        int sign, m, v;
        if (ar_decode(d, st)) break; /* end of block */
        while (ar_decode(d, st + 1) == 0) {
            st += 3;
            if (++k > k1) {
                ar_give_up(d);
                return;
            }
        }
        sign = ar_decode(d, &d->fixed_bin);
        st += 2;
        if ((m = ar_decode(d, st)) != 0) {
            if (ar_decode(d, st)) {
                m <<= 1;
                st = d->ac_stats[tbl] + (k <= d->arith_K[tbl] ? 189 : 217);
                while (ar_decode(d, st)) {
                    if ((m <<= 1) == 0x8000) {
                        ar_give_up(d);
                        return;
                    }
                    st++;
                }
            }
        }
        v = m;
        st += 14;
        while (m >>= 1)
            if (ar_decode(d, st)) v |= m;
        v += 1;
        if (sign) v = -v;
        blk[jpeg_zigzag[k]] = (int16_t)(uint16_t)((unsigned)v << Al);
    }
}

/* Successive-approximation AC refinement (G.1.3.3). */
static void ar_ac_refine(Dec *d, Comp *c, int16_t *blk) {
    int tbl = c->ta, kex, p1 = 1 << d->Al, m1 = -1 * (1 << d->Al);
    for (kex = d->Se; kex > 0; kex--) /* end of block of the earlier stages */
        if (blk[jpeg_zigzag[kex]]) break;
    for (int k = d->Ss; k <= d->Se; k++) {
        uint8_t *st = d->ac_stats[tbl] + 3 * (k - 1);
        if (k > kex && ar_decode(d, st)) break;
        for (;;) {
            int16_t *coef = blk + jpeg_zigzag[k];
            if (*coef) { /* already nonzero: one correction bit */
                if (ar_decode(d, st + 2)) *coef = (int16_t)(*coef + (*coef < 0 ? m1 : p1));
                break;
            }
            if (ar_decode(d, st + 1)) { /* newly nonzero */
                *coef = (int16_t)(ar_decode(d, &d->fixed_bin) ? m1 : p1);
                break;
            }
            st += 3;
            if (++k > d->Se) {
                ar_give_up(d);
                return;
            }
        }
    }
}

static void ar_block(Dec *d, Comp *c, int16_t *blk) {
    if (d->progressive && d->Ss == 0 && d->Ah) { /* DC refinement: no give-up check in jdarith.c */
        if (ar_decode(d, &d->fixed_bin)) blk[0] = (int16_t)(blk[0] | (1 << d->Al));
        return;
    }
    if (d->ar.ct == -1) return;
    if (!d->progressive) {
        if (!ar_dc(d, c)) return;
        blk[0] = (int16_t)(uint16_t)c->pred;
        ar_ac(d, c, blk, 1, 63, 0);
    } else if (d->Ss == 0) {
        if (!ar_dc(d, c)) return;
        blk[0] = (int16_t)(uint16_t)((unsigned)c->pred << d->Al);
    } else if (d->Ah == 0) {
        ar_ac(d, c, blk, d->Ss, d->Se, d->Al);
    } else {
        ar_ac_refine(d, c, blk);
    }
}

/* ========================================================================== */
/* Scan decoding                                                              */
/* ========================================================================== */

/* ========================================================================== */
/* libjpeg-turbo's sequential Huffman decoding, buffering included            */
/* ========================================================================== */

/* The coefficients come out the same as from decode_scan; what this adds is
 * WHEN libjpeg-turbo reads which byte. Pillow hands libjpeg the file in 64 KB
 * reads, and a file whose only scan ends without EOI is an image for Pillow
 * if libjpeg finished the scan without asking for bytes past the end of the
 * file, and "image file is truncated" if it asked. jdhuff.c decodes an MCU
 * with decode_mcu_fast (loads 6 bytes when <= 16 bits are left; a marker reads
 * as zero bytes) when there is no restart interval, no marker met yet and at
 * least 512 bytes per block of the MCU left in its input buffer; otherwise
 * with decode_mcu_slow (jpeg_fill_bit_buffer: up to 57 bits, suspends when
 * the buffer is empty). A fast MCU that met a marker is decoded again by the
 * slow path. Used only for that question (second pass, see end_of_file):
 * single-scan sequential Huffman files. */

static inline int lj_in(const Dec *d, size_t i) { return i < d->len ? d->buf[i] : 0; }

/* Out of input: Pillow gives libjpeg the next 64 KB and the MCU starts over. */
static void lj_suspend(Dec *d) {
    if (d->lj_fed >= d->len) fail(d, "truncated file (premature end of entropy-coded data)");
    d->lj_fed = d->lj_fed + 65536 < d->len ? d->lj_fed + 65536 : d->len;
    longjmp(d->mcu_jb, 1);
}

/* jpeg_fill_bit_buffer */
static void lj_fill(Dec *d, int nbits) {
    if (!d->lj_um) {
        while (d->lj_bl < 57) {
            int c;
            if (d->lj_nib >= d->lj_fed) lj_suspend(d);
            c = d->buf[d->lj_nib++];
            if (c == 0xFF) {
                do {
                    if (d->lj_nib >= d->lj_fed) lj_suspend(d);
                    c = d->buf[d->lj_nib++];
                } while (c == 0xFF);
                if (c == 0) {
                    c = 0xFF;
                } else {
                    d->lj_um = c;
                    break;
                }
            }
            d->lj_gb = d->lj_gb << 8 | (uint64_t)c;
            d->lj_bl += 8;
        }
        if (!d->lj_um) return;
    }
    if (nbits > d->lj_bl) {
        if (!d->insufficient) {
            warn(d, "corrupt JPEG data: premature end of data segment");
            d->insufficient = 1;
        }
        d->lj_gb <<= (57 - d->lj_bl) & 63;
        d->lj_bl = 57;
    }
}

static inline int lj_get(Dec *d, int n) {
    d->lj_bl -= n;
    return (int)(d->lj_gb >> (d->lj_bl & 63)) & ((1 << n) - 1);
}

static inline void lj_check(Dec *d, int n) {
    if (d->lj_bl < n) lj_fill(d, n);
}

/* HUFF_DECODE + jpeg_huff_decode */
static int lj_huff_slow(Dec *d, const HuffTable *t) {
    int nb;
    if (d->lj_bl < 8) {
        lj_fill(d, 0);
        if (d->lj_bl < 8) {
            nb = 1;
            goto slow;
        }
    }
    {
        int e = t->look8[(d->lj_gb >> ((d->lj_bl - 8) & 63)) & 0xFF];
        if ((nb = e >> 8) <= 8) {
            d->lj_bl -= nb;
            return e & 0xFF;
        }
    }
slow:
    lj_check(d, nb);
    int32_t code = lj_get(d, nb);
    while (code > t->maxcode[nb]) {
        code <<= 1;
        lj_check(d, 1);
        code |= lj_get(d, 1);
        nb++;
    }
    if (nb > 16) {
        warn(d, "corrupt JPEG data: bad Huffman code");
        return 0;
    }
    return t->vals[(code + t->valoff[nb]) & 0xFF];
}

/* GET_BYTE of the fast path: a marker is backed out, but the buffer still shifts */
static inline void lj_byte_fast(Dec *d) {
    int c0 = lj_in(d, d->lj_nib++), c1 = lj_in(d, d->lj_nib);
    d->lj_gb = d->lj_gb << 8 | (uint64_t)c0;
    d->lj_bl += 8;
    if (c0 == 0xFF) {
        d->lj_nib++;
        if (c1 != 0) {
            d->lj_um = c1;
            d->lj_nib -= 2;
            d->lj_gb &= ~(uint64_t)0xFF;
        }
    }
}

static inline void lj_fill_fast(Dec *d) {
    if (d->lj_bl <= 16)
        for (int i = 0; i < 6; i++) lj_byte_fast(d);
}

/* HUFF_DECODE_FAST */
static int lj_huff_fast(Dec *d, const HuffTable *t) {
    lj_fill_fast(d);
    int s = t->look8[(d->lj_gb >> ((d->lj_bl - 8) & 63)) & 0xFF];
    int nb = s >> 8;
    d->lj_bl -= nb;
    s &= 0xFF;
    if (nb > 8) {
        s = (int)(d->lj_gb >> (d->lj_bl & 63)) & ((1 << nb) - 1);
        while (s > t->maxcode[nb]) {
            s <<= 1;
            s |= lj_get(d, 1);
            nb++;
        }
        s = nb > 16 ? 0 : t->vals[(s + t->valoff[nb]) & 0xFF];
    }
    return s;
}

/* One MCU, fast or slow path (decode_mcu_fast / decode_mcu_slow). */
static void lj_mcu(Dec *d, int fast, int16_t *const *blk, Comp *const *bc, int nb) {
    for (int i = 0; i < nb; i++) {
        Comp *c = bc[i];
        int16_t *b = blk[i];
        const HuffTable *dc = &d->dct[c->td], *ac = &d->act[c->ta];
        int s = fast ? lj_huff_fast(d, dc) : lj_huff_slow(d, dc);
        if (s) {
            if (fast) lj_fill_fast(d);
            else lj_check(d, s);
            s = extend((unsigned)lj_get(d, s), s);
        }
        c->pred = (int)((unsigned)c->pred + (unsigned)s);
        b[0] = (int16_t)c->pred;
        for (int k = 1; k < 64; k++) {
            s = fast ? lj_huff_fast(d, ac) : lj_huff_slow(d, ac);
            int r = s >> 4;
            s &= 15;
            if (s) {
                k += r;
                if (fast) lj_fill_fast(d);
                else lj_check(d, s);
                b[jpeg_zigzag[k]] = (int16_t)extend((unsigned)lj_get(d, s), s);
            } else {
                if (r != 15) break;
                k += 15;
            }
        }
    }
}

static void lj_restore(Dec *d) {
    d->lj_gb = d->lj_s_gb;
    d->lj_bl = d->lj_s_bl;
    d->lj_nib = d->lj_s_nib;
    d->lj_um = 0;
    for (int i = 0; i < d->ns; i++) d->sc[i]->pred = d->lj_s_pred[i];
}

/* One MCU as decode_mcu: fast path if it may, slow path if it met a marker;
 * a suspension (more input needed) starts it over, blocks zeroed again. */
static void lj_decode_one(Dec *d, int16_t *const *blk, Comp *const *bc, int nb, int16_t (*buf)[64]) {
    d->lj_s_gb = d->lj_gb;
    d->lj_s_bl = d->lj_bl;
    d->lj_s_nib = d->lj_nib;
    for (int i = 0; i < d->ns; i++) d->lj_s_pred[i] = d->sc[i]->pred;
    if (setjmp(d->mcu_jb)) lj_restore(d);
    if (!d->multiscan) memset(buf, 0, (size_t)nb * sizeof buf[0]);
    if (!d->restart_interval && !d->lj_um && d->lj_fed - d->lj_nib >= (size_t)512 * nb) {
        lj_mcu(d, 1, blk, bc, nb);
        if (!d->lj_um) return;
        lj_restore(d); /* the fast path's coefficients stay in the blocks */
    }
    lj_mcu(d, 0, blk, bc, nb);
}

/* jdhuff.c process_restart: unused bits dropped, the marker read (or resynchronised). */
static void lj_restart(Dec *d) {
    size_t p = d->lj_nib;
    d->discarded += (size_t)(d->lj_bl > 0 ? d->lj_bl : 0) / 8;
    d->lj_bl = 0;
    d->lj_um = restart_marker(d, d->lj_um, &p);
    d->lj_nib = p;
    for (int i = 0; i < d->ns; i++) d->sc[i]->pred = 0;
    if (!d->lj_um) d->insufficient = 0;
    d->restarts_left = d->restart_interval;
}

/* A sequential Huffman scan, as decode_scan does it. */
static void decode_scan_emulated(Dec *d, int16_t (*qm)[64]) {
    int16_t buf[MAX_MCU_BLKS][64];
    int16_t *blk[MAX_MCU_BLKS];
    Comp *bc[MAX_MCU_BLKS];
    int bx0[MAX_MCU_BLKS], by0[MAX_MCU_BLKS], qi[MAX_MCU_BLKS];
    int one = d->ns == 1;
    int rows = one ? d->sc[0]->bh : d->mcuy, cols = one ? d->sc[0]->bw : d->mcux;
    size_t need = (size_t)d->pos + 65535;
    need -= need % 65536; /* what Pillow had read when libjpeg found this scan */
    if (need > d->len) need = d->len;
    if (d->lj_fed < need) d->lj_fed = need;
    d->lj_gb = 0;
    d->lj_bl = 0;
    d->lj_nib = d->pos;
    d->lj_um = 0;
    for (int my = 0; my < rows; my++)
        for (int mx = 0; mx < cols; mx++) {
            int nb = 0;
            for (int i = 0; i < d->ns; i++) {
                Comp *c = d->sc[i];
                int h = one ? 1 : c->h, v = one ? 1 : c->v;
                for (int y = 0; y < v; y++)
                    for (int x = 0; x < h; x++) {
                        by0[nb] = my * v + y;
                        bx0[nb] = mx * h + x;
                        bc[nb] = c;
                        qi[nb] = i;
                        blk[nb] = d->multiscan ? coef_block(c, by0[nb], bx0[nb]) : buf[nb];
                        nb++;
                    }
            }
            if (d->restart_interval) {
                if (d->restarts_left == 0) lj_restart(d);
                d->restarts_left--;
            }
            if (!d->insufficient) lj_decode_one(d, blk, bc, nb, buf);
            else if (!d->multiscan) memset(buf, 0, sizeof buf);
            if (!d->multiscan)
                for (int i = 0; i < nb; i++) {
                    Comp *c = bc[i];
                    if (by0[i] < c->bh && bx0[i] < c->bw)
                        idct_islow(buf[i], qm[qi[i]], c->plane + (size_t)by0[i] * 8 * c->stride + (size_t)bx0[i] * 8,
                                   c->stride);
                }
        }
    d->pos = d->lj_um ? d->lj_nib - 2 : d->lj_nib;
}

static void decode_block(Dec *d, Comp *c, int16_t *blk) {
    if (d->arith) ar_block(d, c, blk);
    else if (d->insufficient_mcu) return; /* the segment ran out before this MCU: left as it is */
    else if (!d->progressive) decode_block_seq(d, c, blk);
    else if (d->Ss == 0) {
        if (d->Ah == 0) decode_dc_first(d, c, blk);
        else decode_dc_refine(d, blk);
    } else if (d->Ah == 0) decode_ac_first(d, c, blk);
    else decode_ac_refine(d, c, blk);
}

static void before_mcu(Dec *d) {
    if (d->restart_interval) {
        if (d->restarts_left == 0) {
            if (d->arith) ar_restart(d);
            else process_restart(d);
        }
        d->restarts_left--;
    }
    if (!d->arith) d->insufficient_mcu = d->insufficient;
}

static void decode_scan(Dec *d) {
    int16_t blk[64];            /* single-scan files: the block being decoded */
    int16_t qm[MAX_COMPS][64];  /* dequantisation tables of the scan's components */
    d->br.pos = d->pos;
    d->br.acc = 0;
    d->br.n = 0;
    d->br.stop = 0;
    d->br.marker = 0;
    d->eobrun = 0;
    d->next_rst = 0;
    d->insufficient = 0;
    d->restarts_left = d->restart_interval;
    for (int i = 0; i < d->ns; i++) {
        d->sc[i]->pred = 0;
        comp_qm(d->sc[i], qm[i]);
    }
    if (d->arith) {
        d->ar.pos = d->pos;
        d->ar.marker = 0;
        ar_reset(d);
    }
    if (d->emulate && !d->arith && !d->progressive) {
        decode_scan_emulated(d, qm);
        return;
    }
    if (d->ns == 1) {
        /* non-interleaved: one block per MCU over the component's own blocks */
        Comp *c = d->sc[0];
        for (int by = 0; by < c->bh; by++)
            for (int bx = 0; bx < c->bw; bx++) {
                before_mcu(d);
                if (d->multiscan) {
                    decode_block(d, c, coef_block(c, by, bx));
                } else {
                    memset(blk, 0, sizeof blk);
                    decode_block(d, c, blk);
                    idct_islow(blk, qm[0], c->plane + (size_t)by * 8 * c->stride + (size_t)bx * 8, c->stride);
                }
            }
    } else {
        for (int my = 0; my < d->mcuy; my++)
            for (int mx = 0; mx < d->mcux; mx++) {
                before_mcu(d);
                for (int i = 0; i < d->ns; i++) {
                    Comp *c = d->sc[i];
                    for (int y = 0; y < c->v; y++)
                        for (int x = 0; x < c->h; x++) {
                            int by = my * c->v + y, bx = mx * c->h + x;
                            if (d->multiscan) {
                                decode_block(d, c, coef_block(c, by, bx));
                            } else {
                                memset(blk, 0, sizeof blk);
                                decode_block(d, c, blk);
                                if (by < c->bh && bx < c->bw) /* MCU padding blocks are decoded, not shown */
                                    idct_islow(blk, qm[i], c->plane + (size_t)by * 8 * c->stride + (size_t)bx * 8,
                                               c->stride);
                            }
                        }
                }
            }
    }
    if (d->arith) {
        /* the marker loop goes on from the first byte not read (or the marker met) */
        d->pos = d->ar.pos;
    } else {
        /* the remaining bits of the last byte are padding; the marker loop goes
         * on from the first byte not loaded (bytes loaded but unused are not
         * counted as extraneous at the end of a scan, as in libjpeg) */
        d->pos = d->br.pos;
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
        fail(d, "unsupported sampling factors (fractional ratio %dx%d to %dx%d)", h, v, H, V);
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
            if (!image_mul_size((size_t)c->bwp, (size_t)c->bhp, &nb)) fail(d, "image too large");
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
    if (!d->sof_seen) fail(d, "SOS marker before SOF");
    if (n < 1) fail(d, "bad SOS marker length");
    int ns = p[0];
    if (ns < 1 || ns > 4 || n != 4 + 2 * (size_t)ns) fail(d, "bad SOS marker length");
    Comp *used[4] = {NULL, NULL, NULL, NULL}; /* indexed like libjpeg's cur_comp_info */
    for (int i = 0; i < ns; i++) {
        int cc = p[1 + 2 * i], t = p[2 + 2 * i], ci;
        /* libjpeg get_sos: first component (among the first 4) with this id
         * whose slot ci of cur_comp_info is still free */
        for (ci = 0; ci < d->nc && ci < 4; ci++)
            if (d->comp[ci].id == cc && !used[ci]) break;
        if (ci >= d->nc || ci >= 4) fail(d, "bad component id %d in SOS", cc);
        Comp *c = &d->comp[ci];
        for (int j = 0; j < i; j++)
            if (d->sc[j] == c) fail(d, "bad component id %d in SOS (repeated)", cc);
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
    else if (!d->multiscan) fail(d, "unexpected second scan in a single-scan file (EOI expected)");

    if (ns > 1) {
        int blocks = 0;
        for (int i = 0; i < ns; i++) blocks += d->sc[i]->h * d->sc[i]->v;
        if (blocks > MAX_MCU_BLKS) fail(d, "too many blocks in an MCU (%d)", blocks);
    }
    /* latch quantisation tables (jdinput.c latch_quant_tables) */
    for (int i = 0; i < ns; i++) {
        Comp *c = d->sc[i];
        if (c->latched) continue;
        if (c->tq >= 4 || !d->qdef[c->tq]) fail(d, "missing quantization table %d", c->tq);
        memcpy(c->qt, d->qtab[c->tq], sizeof c->qt);
        c->latched = 1;
    }
    if (d->progressive) check_progression(d);
    /* derive the Huffman tables this scan uses */
    for (int i = 0; i < ns && !d->arith; i++) {
        Comp *c = d->sc[i];
        int need_dc = !d->progressive || (d->Ss == 0 && d->Ah == 0);
        int need_ac = !d->progressive || d->Ss != 0;
        if (need_dc) {
            if (c->td >= 4) fail(d, "missing Huffman table (DC slot %d)", c->td);
            build_huff(d, &d->dct[c->td], &d->dcs[c->td], 1, c->td);
        }
        if (need_ac) {
            if (c->ta >= 4) fail(d, "missing Huffman table (AC slot %d)", c->ta);
            build_huff(d, &d->act[c->ta], &d->acs[c->ta], 0, c->ta);
        }
    }
    decode_scan(d);
    d->nscans++;
    if (!d->multiscan) d->rows_done = 1;
}

static void decode_all(Dec *d) {
    if (d->len < 2 || d->buf[0] != 0xFF || d->buf[1] != 0xD8) fail(d, "not a JPEG file (no SOI marker)");
    d->pos = 2;
    for (int i = 0; i < 16; i++) { /* libjpeg's get_soi defaults */
        d->arith_L[i] = 0;
        d->arith_U[i] = 1;
        d->arith_K[i] = 5;
    }
    for (;;) {
        int m = next_marker(d, &d->pos);
        if (m < 0) {
            if (d->nscans) end_of_file(d, "no EOI marker after the last scan");
            fail(d, "truncated file (no image data)");
        }
        switch (m) {
        case 0xD8: fail(d, "corrupt file (duplicate SOI marker)");
        case 0xC0: case 0xC1: case 0xC2: case 0xC9: case 0xCA: parse_sof(d, m); break;
        case 0xC3: case 0xC5: case 0xC6: case 0xC7: case 0xC8: case 0xCB: case 0xCD: case 0xCE: case 0xCF:
            fail(d, "unsupported JPEG: lossless or hierarchical frame (SOF%d)", m - 0xC0);
        case 0xC4: parse_dht(d); break;
        case 0xDB: parse_dqt(d); break;
        case 0xDD: parse_dri(d); break;
        case 0xDA: parse_sos(d); break;
        case 0xD9:
            if (!d->nscans) fail(d, d->sof_seen ? "no image data (EOI before any scan)" : "no image in file");
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
            fail(d, "unsupported or corrupt marker 0x%02X", m);
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
        int smooth = smoothing_wanted(d);
        for (int i = 0; i < d->nc; i++) {
            if (smooth) idct_component_smooth(d, &d->comp[i]);
            else idct_component(&d->comp[i]);
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
