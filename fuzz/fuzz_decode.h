/* fuzz_decode.h - the body shared by the PNG, BMP and PNM libFuzzer harnesses.
 * Decodes the input with the given decoder; a successful small decode also goes
 * through the whole preprocessing (pad to square or centre-crop, bicubic resize) and
 * normalisation. Traps if the library breaks its contract (bad image, error text
 * that is empty or not one line). */
#ifndef FUZZ_DECODE_H
#define FUZZ_DECODE_H
#include <stdlib.h>
#include <string.h>

#include "image.h"

typedef int (*DecodeFn)(const uint8_t *buf, size_t len, Image *out, char *err, size_t errlen);

static int fuzz_decode(DecodeFn decode, const uint8_t *data, size_t size) {
    static const uint8_t fill[3] = IMAGE_OWL2_FILL;
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float sd[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    char err[256];
    Image im;

    err[0] = '\0';
    if (decode(data, size, &im, err, sizeof err) != 0) {
        if (!err[0] || strchr(err, '\n') || im.rgb) __builtin_trap();
        return 0;
    }
    if (!im.rgb || im.w < 1 || im.h < 1) __builtin_trap();
    if (im.w <= 512 && im.h <= 512) { /* the padded square stays small */
        Image out;
        int S = 1 + (int)(size % 61);
        if (image_preprocess(&im, size & 64 ? IMAGE_CROP : IMAGE_PAD, fill, S, &out, err, sizeof err) == 0) {
            float *chw = malloc(sizeof(float) * 3 * (size_t)S * (size_t)S);
            if (chw) image_normalize(&out, mean, sd, chw);
            free(chw);
            image_free(&out);
        }
    }
    image_free(&im);
    return 0;
}
#endif
