/* fuzz_pnm.c - libFuzzer harness for the PNM decoder (make fuzz); the checks are
 * fuzz_decode.h's. Seeds: build/corpus/fuzz_pnm, written by tests/test_images.py. */
#include "fuzz_decode.h"

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
    if (too_big(data, size)) return 0;
    return fuzz_decode(pnm_decode, data, size);
}
