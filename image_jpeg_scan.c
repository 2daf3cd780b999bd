/* image_jpeg_scan.c - the JPEG decoder's entropy-coded data: the bit reader, Huffman
 * decoding of baseline and progressive scans, arithmetic decoding (T.81 Annex D), the
 * IDCT (plain and with libjpeg-turbo's progressive block smoothing), libjpeg-turbo's input
 * buffering replayed for truncated single-scan files, and the scan loop. The decoder's
 * state is image_jpeg_dec.h; the markers, tables, upsampling, colour conversion and the
 * driver are in image_jpeg.c, whose first comment says what is matched and how. */
#include "image.h"
#include "image_jpeg.h"
#include "image_jpeg_dec.h"

#include <stdlib.h>
#include <string.h>

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
    if (br->marker < 0) jpegd_fail(d, "truncated file (premature end of entropy-coded data)");
    if (!d->insufficient) {
        jpegd_warn(d, "corrupt JPEG data: premature end of data segment");
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
        jpegd_warn(d, "corrupt JPEG data: bad Huffman code");
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
        um = jpegd_next_marker(d, p);
        if (um < 0) jpegd_fail(d, "truncated file (missing restart marker)");
    }
    if (um == 0xD0 + want) {
        um = 0;
    } else {
        jpegd_warn(d, "corrupt JPEG data: found marker 0x%02X instead of RST%d", um, want);
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
            um = jpegd_next_marker(d, p);
            if (um < 0) jpegd_fail(d, "truncated file (missing restart marker)");
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
    if (br->stop && br->marker < 0) jpegd_fail(d, "truncated file (missing restart marker)");
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
        jpegd_fail(d, "corrupt data (DC coefficient overflow)");
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
                if (s != 1) jpegd_warn(d, "corrupt JPEG data: bad Huffman code"); /* jdphuff.c: taken as size 1 */
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
void jpegd_check_progression(Dec *d) {
    int dc = d->Ss == 0, bad = 0;
    if (dc) {
        if (d->Se != 0) bad = 1;
    } else {
        if (d->Ss > d->Se || d->Se > 63) bad = 1;
        if (d->ns != 1) bad = 1;
    }
    if (d->Ah != 0 && d->Al != d->Ah - 1) bad = 1;
    if (d->Al > 13) bad = 1;
    if (bad) jpegd_fail(d, "invalid progressive scan (Ss=%d Se=%d Ah=%d Al=%d)", d->Ss, d->Se, d->Ah, d->Al);
    for (int i = 0; i < d->ns; i++) {
        int *cb = d->sc[i]->coef_bits;
        int ci = (int)(d->sc[i] - d->comp);
        if (!dc && cb[0] < 0) jpegd_warn(d, "corrupt JPEG data: AC scan of component %d before its DC scan", ci);
        for (int k = d->Ss; k <= d->Se; k++) {
            int expected = cb[k] < 0 ? 0 : cb[k];
            if (d->Ah != expected)
                jpegd_warn(d, "corrupt JPEG data: component %d coefficient %d refined out of order", ci, k);
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
void jpegd_idct_component(Comp *c) {
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
int jpegd_smoothing_wanted(const Dec *d) {
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

void jpegd_idct_component_smooth(const Dec *d, Comp *c) {
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
    if (d->ar.pos >= d->len) jpegd_fail(d, "truncated file (premature end of arithmetic-coded data)");
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
    jpegd_warn(d, "corrupt JPEG data: arithmetic code bad");
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
    if (d->lj_fed >= d->len) jpegd_fail(d, "truncated file (premature end of entropy-coded data)");
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
            jpegd_warn(d, "corrupt JPEG data: premature end of data segment");
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
        jpegd_warn(d, "corrupt JPEG data: bad Huffman code");
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

void jpegd_decode_scan(Dec *d) {
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


