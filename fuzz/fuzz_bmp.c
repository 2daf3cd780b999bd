/* fuzz_bmp.c - libFuzzer harness for the BMP decoder (make fuzz).
 * Decodes the input; a successful small decode also goes through the whole
 * preprocessing (pad to square + bicubic resize) and normalisation. Traps if
 * the library breaks its contract (bad image, error text that is empty or not
 * one line). Seeds: build/corpus/fuzz_bmp, written by tests/test_images.py. */
#include <stdlib.h>
#include <string.h>

#include "image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Inputs declaring more than 256 K pixels are skipped: they take the same code
 * paths as small ones, only slower (decoding a 268 M-pixel RLE image is valid
 * and takes seconds); absurd sizes are covered by tests/test_images_hostile.py. */
static int too_big(const uint8_t *d, size_t n) {
    uint64_t w, h;
    uint32_t hs;
    if (n < 26) return 0;
    hs = d[14] | (uint32_t)d[15] << 8 | (uint32_t)d[16] << 16 | (uint32_t)d[17] << 24;
    if (hs == 12) {
        w = d[18] | (uint32_t)d[19] << 8;
        h = d[20] | (uint32_t)d[21] << 8;
    } else {
        w = d[18] | (uint32_t)d[19] << 8 | (uint32_t)d[20] << 16 | (uint32_t)d[21] << 24;
        h = d[22] | (uint32_t)d[23] << 8 | (uint32_t)d[24] << 16 | (uint32_t)d[25] << 24;
        if (d[25] == 0xFF) h = ((uint64_t)1 << 32) - h;
    }
    return w * h > ((uint64_t)1 << 18);
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const uint8_t fill[3] = {122, 116, 104};
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float sd[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    char err[256];
    Image im;

    if (too_big(data, size)) return 0;
    err[0] = '\0';
    if (bmp_decode(data, size, &im, err, sizeof err) != 0) {
        if (!err[0] || strchr(err, '\n') || im.rgb) __builtin_trap();
        return 0;
    }
    if (!im.rgb || im.w < 1 || im.h < 1) __builtin_trap();
    if (im.w <= 512 && im.h <= 512) { /* the padded square stays small */
        Image out;
        int S = 1 + (int)(size % 61);
        if (image_preprocess(&im, fill, S, &out, err, sizeof err) == 0) {
            float *chw = malloc(sizeof(float) * 3 * (size_t)S * (size_t)S);
            if (chw) image_normalize(&out, mean, sd, chw);
            free(chw);
            image_free(&out);
        }
    }
    image_free(&im);
    return 0;
}
