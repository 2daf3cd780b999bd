/* fuzz_bmp.c - libFuzzer harness for the BMP decoder (make fuzz); the checks are
 * fuzz_decode.h's. Seeds: build/corpus/fuzz_bmp, written by tests/test_images.py. */
#include "fuzz_decode.h"

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
    if (too_big(data, size)) return 0;
    return fuzz_decode(bmp_decode, data, size);
}
