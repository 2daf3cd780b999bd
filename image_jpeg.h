/* image_jpeg.h - the tables the JPEG decoder (image_jpeg.c) and encoder (image_jpeg_enc.c)
 * share: the zig-zag order and the example Huffman tables of ITU T.81 K.3. Internal to the
 * image library. */
#ifndef QALIGN_IMAGE_JPEG_H
#define QALIGN_IMAGE_JPEG_H

#include <stdint.h>

/* Natural (row-major) position of the k-th zig-zag coefficient; entries 64..79 are 63 (a
 * corrupt run length that pushes k past 63 lands on coefficient 63). */
extern const uint8_t jpeg_zigzag[80];
/* K.3 tables: counts of codes per length (index 0 unused, 1..16) and the symbols. */
extern const uint8_t jpeg_std_dc_lum_bits[17], jpeg_std_dc_chr_bits[17], jpeg_std_dc_vals[12];
extern const uint8_t jpeg_std_ac_lum_bits[17], jpeg_std_ac_lum_vals[162];
extern const uint8_t jpeg_std_ac_chr_bits[17], jpeg_std_ac_chr_vals[162];

#endif
