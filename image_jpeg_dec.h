/* image_jpeg_dec.h - the JPEG decoder's state, shared by its two files: image_jpeg.c
 * (markers, tables, upsampling, colour conversion, the driver) and image_jpeg_scan.c
 * (entropy decoding, IDCT, scan decoding). Internal to the image library. */
#ifndef QALIGN_IMAGE_JPEG_DEC_H
#define QALIGN_IMAGE_JPEG_DEC_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define MAX_COMPS    4      /* Pillow handles 1, 3 and 4 components */
#define MAX_DIM      65500  /* libjpeg's JPEG_MAX_DIMENSION */
#define MAX_MCU_BLKS 10     /* libjpeg's D_MAX_BLOCKS_IN_MCU */
#define FAST_BITS    9      /* Huffman look-up table width */

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

/* image_jpeg.c: errors (jpegd_fail longjmps to the driver with the message; jpegd_warn
 * counts a libjpeg warning, keeping the first) and the marker search. */
COMMON_PRINTF(2, 3) _Noreturn void jpegd_fail(Dec *d, const char *fmt, ...);
COMMON_PRINTF(2, 3) void jpegd_warn(Dec *d, const char *fmt, ...);
int jpegd_next_marker(Dec *d, size_t *pos);

/* image_jpeg_scan.c: one scan's entropy-coded data, the progression check before it, and
 * the IDCT of a multi-scan file's coefficients (plain, or with libjpeg's block smoothing). */
void jpegd_decode_scan(Dec *d);
void jpegd_check_progression(Dec *d);
void jpegd_idct_component(Comp *c);
int jpegd_smoothing_wanted(const Dec *d);
void jpegd_idct_component_smooth(const Dec *d, Comp *c);

#endif
