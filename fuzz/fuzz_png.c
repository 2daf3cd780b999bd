/* fuzz_png.c - libFuzzer harness for the PNG decoder (make fuzz); the checks are
 * fuzz_decode.h's. Seeds: build/corpus/fuzz_png, written by tests/test_images.py. */
#include "fuzz_decode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fuzz_decode(png_decode, data, size);
}
