/* image_jpeg_enc.c - a baseline JPEG encoder (jpeg_encode in image.h): JFIF, 4:4:4, the
 * standard quantisation (IJG quality scaling) and Huffman tables, for the report's
 * thumbnails. It shares the decoder's zig-zag order and K.3 tables (image_jpeg.h). */
#include "common.h"
#include "image.h"
#include "image_jpeg.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ITU-T T.81 Annex K.1 quantisation tables (the Huffman tables, K.3, and the zig-zag order are
 * the decoder's: image_jpeg.h) */
static const uint8_t JQ_LUM[64] = {16, 11, 10, 16, 24,  40,  51,  61,  12, 12, 14, 19, 26,  58,  60,  55,
                                   14, 13, 16, 24, 40,  57,  69,  56,  14, 17, 22, 29, 51,  87,  80,  62,
                                   18, 22, 37, 56, 68,  109, 103, 77,  24, 35, 55, 64, 81,  104, 113, 92,
                                   49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99};
static const uint8_t JQ_CHR[64] = {17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
                                   24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
                                   99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
                                   99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99};
typedef struct {
    uint16_t code[256];
    uint8_t size[256];
} HuffCode;

/* Canonical codes (T.81 Annex C). */
static void huff_codes(HuffCode *h, const uint8_t bits[16], const uint8_t *vals) {
    memset(h, 0, sizeof *h);
    unsigned code = 0;
    int k = 0;
    for (int len = 1; len <= 16; len++) {
        for (int i = 0; i < bits[len - 1]; i++, k++) {
            h->code[vals[k]] = (uint16_t)code++;
            h->size[vals[k]] = (uint8_t)len;
        }
        code <<= 1;
    }
}

typedef struct {
    Buf *b;
    uint32_t acc;
    int n;
} BitW;

static void bw_put(BitW *w, unsigned code, int size) {
    w->acc = (w->acc << size) | (code & ((1u << size) - 1));
    w->n += size;
    while (w->n >= 8) {
        unsigned char byte = (unsigned char)(w->acc >> (w->n - 8));
        buf_addc(w->b, (char)byte);
        if (byte == 0xFF) buf_addc(w->b, 0);
        w->n -= 8;
    }
    w->acc &= (1u << w->n) - 1;
}

static int bit_size(int v) {
    unsigned a = (unsigned)(v < 0 ? -v : v);
    int n = 0;
    while (a) { n++; a >>= 1; }
    return n;
}

static void enc_block(BitW *w, const float blk[64], const float qdiv[64], int *dc_prev, const HuffCode *dc,
                      const HuffCode *ac) {
    static float C[8][8];
    static int init = 0;
    if (!init) {
        for (int u = 0; u < 8; u++)
            for (int x = 0; x < 8; x++)
                C[u][x] = (float)((u == 0 ? sqrt(0.125) : 0.5) * cos((2 * x + 1) * u * 3.14159265358979323846 / 16.0));
        init = 1;
    }
    float t[64], f[64];
    for (int y = 0; y < 8; y++) /* rows */
        for (int u = 0; u < 8; u++) {
            float s = 0;
            for (int x = 0; x < 8; x++) s += C[u][x] * blk[y * 8 + x];
            t[y * 8 + u] = s;
        }
    for (int u = 0; u < 8; u++) /* columns */
        for (int v = 0; v < 8; v++) {
            float s = 0;
            for (int y = 0; y < 8; y++) s += C[v][y] * t[y * 8 + u];
            f[v * 8 + u] = s;
        }
    int q[64];
    for (int k = 0; k < 64; k++) {
        float v = f[jpeg_zigzag[k]] / qdiv[jpeg_zigzag[k]];
        q[k] = (int)(v < 0 ? v - 0.5f : v + 0.5f);
    }
    int diff = q[0] - *dc_prev;
    *dc_prev = q[0];
    int s = bit_size(diff);
    bw_put(w, dc->code[s], dc->size[s]);
    if (s) bw_put(w, (unsigned)(diff < 0 ? diff + (1 << s) - 1 : diff), s);
    int run = 0;
    for (int k = 1; k < 64; k++) {
        if (q[k] == 0) { run++; continue; }
        while (run > 15) {
            bw_put(w, ac->code[0xF0], ac->size[0xF0]);
            run -= 16;
        }
        s = bit_size(q[k]);
        int sym = (run << 4) | s;
        bw_put(w, ac->code[sym], ac->size[sym]);
        bw_put(w, (unsigned)(q[k] < 0 ? q[k] + (1 << s) - 1 : q[k]), s);
        run = 0;
    }
    if (run) bw_put(w, ac->code[0], ac->size[0]);
}

static void put16(Buf *b, unsigned v) {
    buf_addc(b, (char)(v >> 8));
    buf_addc(b, (char)(v & 255));
}

int jpeg_encode(const Image *img, int quality, uint8_t **out, size_t *len, char *err, size_t errlen) {
    *out = NULL;
    *len = 0;
    if (!img || !img->rgb || img->w < 1 || img->h < 1 || img->w > 65535 || img->h > 65535)
        return fail(err, errlen, "jpeg_encode: bad image size");
    if (quality < 1) quality = 1;
    if (quality > 100) quality = 100;
    int scale = quality < 50 ? 5000 / quality : 200 - 2 * quality;
    uint8_t ql[64], qc[64];
    float dl[64], dcq[64];
    for (int i = 0; i < 64; i++) {
        int a = (JQ_LUM[i] * scale + 50) / 100, c = (JQ_CHR[i] * scale + 50) / 100;
        ql[i] = (uint8_t)(a < 1 ? 1 : a > 255 ? 255 : a);
        qc[i] = (uint8_t)(c < 1 ? 1 : c > 255 ? 255 : c);
        dl[i] = ql[i];
        dcq[i] = qc[i];
    }
    Buf b = {0};
    static const uint8_t head[] = {0xFF, 0xD8, 0xFF, 0xE0, 0, 16, 'J', 'F', 'I', 'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0};
    buf_add(&b, head, sizeof head);
    buf_add(&b, "\xFF\xDB", 2);
    put16(&b, 2 + 2 * 65);
    buf_addc(&b, 0);
    for (int k = 0; k < 64; k++) buf_addc(&b, (char)ql[jpeg_zigzag[k]]);
    buf_addc(&b, 1);
    for (int k = 0; k < 64; k++) buf_addc(&b, (char)qc[jpeg_zigzag[k]]);
    buf_add(&b, "\xFF\xC0", 2);
    put16(&b, 17);
    buf_addc(&b, 8);
    put16(&b, (unsigned)img->h);
    put16(&b, (unsigned)img->w);
    buf_addc(&b, 3);
    static const uint8_t comps[9] = {1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1};
    buf_add(&b, comps, 9);
    buf_add(&b, "\xFF\xC4", 2);
    put16(&b, 2 + (17 + 12) * 2 + (17 + 162) * 2);
    const uint8_t *tb[4] = {jpeg_std_dc_lum_bits + 1, jpeg_std_ac_lum_bits + 1, jpeg_std_dc_chr_bits + 1, jpeg_std_ac_chr_bits + 1};
    const uint8_t *tv[4] = {jpeg_std_dc_vals, jpeg_std_ac_lum_vals, jpeg_std_dc_vals, jpeg_std_ac_chr_vals};
    const int tn[4] = {12, 162, 12, 162}, tid[4] = {0x00, 0x10, 0x01, 0x11};
    for (int t = 0; t < 4; t++) {
        buf_addc(&b, (char)tid[t]);
        buf_add(&b, tb[t], 16);
        buf_add(&b, tv[t], (size_t)tn[t]);
    }
    static const uint8_t sos[] = {0xFF, 0xDA, 0, 12, 3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0};
    buf_add(&b, sos, sizeof sos);
    HuffCode hdl, hal, hdc, hac;
    huff_codes(&hdl, jpeg_std_dc_lum_bits + 1, jpeg_std_dc_vals);
    huff_codes(&hal, jpeg_std_ac_lum_bits + 1, jpeg_std_ac_lum_vals);
    huff_codes(&hdc, jpeg_std_dc_chr_bits + 1, jpeg_std_dc_vals);
    huff_codes(&hac, jpeg_std_ac_chr_bits + 1, jpeg_std_ac_chr_vals);
    BitW w = {&b, 0, 0};
    int pdc[3] = {0, 0, 0};
    for (int by = 0; by < img->h; by += 8)
        for (int bx = 0; bx < img->w; bx += 8) {
            float Y[64], Cb[64], Cr[64];
            for (int y = 0; y < 8; y++)
                for (int x = 0; x < 8; x++) {
                    int sx = bx + x < img->w ? bx + x : img->w - 1, sy = by + y < img->h ? by + y : img->h - 1;
                    const uint8_t *p = img->rgb + ((size_t)sy * img->w + sx) * 3;
                    float r = p[0], g = p[1], bb = p[2];
                    Y[y * 8 + x] = 0.299f * r + 0.587f * g + 0.114f * bb - 128.0f;
                    Cb[y * 8 + x] = -0.168736f * r - 0.331264f * g + 0.5f * bb;
                    Cr[y * 8 + x] = 0.5f * r - 0.418688f * g - 0.081312f * bb;
                }
            enc_block(&w, Y, dl, &pdc[0], &hdl, &hal);
            enc_block(&w, Cb, dcq, &pdc[1], &hdc, &hac);
            enc_block(&w, Cr, dcq, &pdc[2], &hdc, &hac);
        }
    if (w.n) bw_put(&w, (1u << (8 - w.n)) - 1, 8 - w.n);
    buf_add(&b, "\xFF\xD9", 2);
    if (b.oom) {
        buf_free(&b);
        return fail(err, errlen, "out of memory");
    }
    *out = (uint8_t *)b.p;
    *len = b.n;
    return 0;
}
