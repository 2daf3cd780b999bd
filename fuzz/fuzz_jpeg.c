/* fuzz_jpeg.c - libFuzzer harness for the JPEG decoder (image_jpeg.c, image_jpeg_scan.c).
 *
 *   make fuzz            (builds build/fuzz_jpeg, runs it on build/corpus/fuzz_jpeg)
 *
 * Any input must either decode or fail with a one-line message; crashes,
 * sanitizer reports and leaks are bugs. Like libjpeg-turbo's own fuzzers, the
 * harness skips inputs whose SOF declares more than 4 megapixels: a valid
 * JPEG can be a few hundred bytes for a huge image, and the point here is the
 * decoder's logic, not the allocator (the image.h caps are tested directly).
 */
#include <stdio.h>
#include <string.h>

#include "image.h"

/* w*h of the SOFn found by walking the marker segments before the first SOS
 * (0 if there is none). */
static unsigned long long sof_pixels(const uint8_t *p, size_t n) {
    size_t i = 2;
    while (i + 4 <= n) {
        if (p[i] != 0xFF) {
            i++;
            continue;
        }
        uint8_t m = p[i + 1];
        if (m == 0xFF || m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) {
            i += (m == 0xFF) ? 1 : 2;
            continue;
        }
        if (m == 0xDA || m == 0xD9) return 0;
        size_t len = (size_t)p[i + 2] << 8 | p[i + 3];
        if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
            if (i + 9 > n) return 0;
            return (unsigned long long)((p[i + 5] << 8) | p[i + 6]) * ((p[i + 7] << 8) | p[i + 8]);
        }
        i += 2 + len;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Image img;
    char err[256], warn[160];
    if (sof_pixels(data, size) > (4u << 20)) return 0;
    err[0] = '\0';
    if (jpeg_decode_warn(data, size, &img, warn, sizeof warn, err, sizeof err) == 0) {
        /* touch every pixel so that uninitialised output would be noticed by MSan-like tools */
        unsigned sum = 0;
        for (size_t i = 0; i < (size_t)img.w * img.h * 3; i++) sum += img.rgb[i];
        (void)sum;
        image_free(&img);
        /* a warning (corrupt data decoded as libjpeg does) is empty or one line */
        if (strlen(warn) >= sizeof warn || strchr(warn, '\n')) __builtin_trap();
    } else {
        /* the message must be one non-empty line */
        size_t L = strlen(err);
        if (L == 0 || L >= sizeof err - 1 || strchr(err, '\n')) __builtin_trap();
    }
    return 0;
}
