/* fuzz_pnm.c - libFuzzer harness for the PNM decoder (make fuzz).
 * Decodes the input; a successful small decode also goes through the whole
 * preprocessing (pad to square + bicubic resize) and normalisation. Traps if
 * the library breaks its contract (bad image, error text that is empty or not
 * one line). Seeds: build/corpus/fuzz_pnm, written by tests/test_images.py. */
#include <stdlib.h>
#include <string.h>

#include "image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Inputs declaring more than 256 K pixels are skipped: they take the same code
 * paths as small ones, only slower (a plain PNM whose last value is repeated
 * to fill a 268 M-pixel image is valid and takes seconds); absurd sizes are
 * covered by tests/test_images_hostile.py. Rough header scan: good enough. */
static int too_big(const uint8_t *d, size_t n) {
    uint64_t v[2] = {0, 0};
    size_t i = 2;
    for (int k = 0; k < 2; k++) {
        while (i < n && (d[i] < '0' || d[i] > '9')) {
            if (d[i] == '#')
                while (i < n && d[i] != '\n' && d[i] != '\r') i++;
            else i++;
        }
        while (i < n && ((d[i] >= '0' && d[i] <= '9') || d[i] == '_' || d[i] == '#')) {
            if (d[i] == '#') {
                while (i < n && d[i] != '\n' && d[i] != '\r') i++;
                i++;
                continue;
            }
            if (d[i] != '_' && v[k] < ((uint64_t)1 << 40)) v[k] = v[k] * 10 + (uint64_t)(d[i] - '0');
            i++;
        }
    }
    return v[0] * v[1] > ((uint64_t)1 << 18);
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const uint8_t fill[3] = {122, 116, 104};
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float sd[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    char err[256];
    Image im;

    if (too_big(data, size)) return 0;
    err[0] = '\0';
    if (pnm_decode(data, size, &im, err, sizeof err) != 0) {
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
