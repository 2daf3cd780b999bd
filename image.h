/* image.h - decode images to 8-bit RGB and preprocess them exactly as Q-Align's
 * Python pipeline does (Pillow decode -> convert("RGB") -> expand2square ->
 * Pillow bicubic resize -> x/255 -> CLIP mean/std).
 *
 * Everything returns 0 on success and -1 on failure; on failure a one-line,
 * human-readable reason (without the file name: the caller adds it) is written
 * to err[0..errlen). No function here prints, exits or aborts.
 *
 * Files: image.c (format sniffing, PPM/PGM, preprocessing), image_bmp.c (BMP),
 *        image_png.c (inflate + PNG), image_jpeg.c + image_jpeg_scan.c (baseline/
 *        progressive JPEG, Huffman or arithmetic: markers and colour / entropy
 *        decoding and IDCT), image_jpeg_enc.c (the report's JPEG encoder).
 */
#ifndef QALIGN_IMAGE_H
#define QALIGN_IMAGE_H

#include <stddef.h>
#include <stdint.h>

/* Limits, checked before any pixel buffer is allocated. */
#define IMAGE_MAX_DIM    (1 << 24)        /* width or height */
/* width * height: Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS: above it Image.open raises
 * DecompressionBombError), so qalign refuses exactly the images the reference cannot open */
#define IMAGE_MAX_PIXELS ((size_t)178956970)

typedef struct {
    int w, h;       /* width and height in pixels, both >= 1 */
    uint8_t *rgb;   /* (h, w, 3) row-major, malloc'ed, owned by the Image */
} Image;

typedef enum { IMG_UNKNOWN = 0, IMG_PNM, IMG_BMP, IMG_PNG, IMG_JPEG } ImageFormat;

/* Guess the format from the first bytes (never from a file name). */
ImageFormat image_sniff(const uint8_t *buf, size_t len);
const char *image_format_name(ImageFormat f);

/* Decode a whole file held in memory to 8-bit RGB, as Pillow's
 * Image.open(f).convert("RGB") would. */
int image_decode(const uint8_t *buf, size_t len, Image *out, char *err, size_t errlen);
/* Read a file and decode it. */
int image_load(const char *path, Image *out, char *err, size_t errlen);
/* The same, and on success warn[0..warnlen) receives "" or, for a file decoded
 * despite corrupt data (a JPEG that libjpeg-turbo, hence Pillow, decodes with
 * warnings), the first warning and how many followed. warn may be NULL. */
int image_decode_warn(const uint8_t *buf, size_t len, Image *out, char *warn, size_t warnlen, char *err,
                      size_t errlen);
int image_load_warn(const char *path, Image *out, char *warn, size_t warnlen, char *err, size_t errlen);
/* The same with lower limits on width x height, checked by every decoder from the file's
 * header, before any pixel buffer is allocated or any pixel decoded (PNG: IHDR, JPEG: SOF,
 * BMP: the info header, PNM: the header). An image over one is refused with "image of WxH
 * = N pixels, more than NAME (LIMIT)", the first limit first. A limit of 0 is none. */
typedef struct {
    size_t pixels;  const char *name;        /* e.g. --max-pixels */
    size_t pixels2; const char *name2;       /* e.g. what is left of a request's budget */
} ImageLimits;
/* warn as in image_decode_warn (may be NULL). */
int image_decode_max(const uint8_t *buf, size_t len, const ImageLimits *lim, Image *out, char *warn, size_t warnlen,
                     char *err, size_t errlen);
int image_load_max(const char *path, const ImageLimits *lim, Image *out, char *warn, size_t warnlen, char *err,
                   size_t errlen);
/* Wrap raw RGB24 pixels (e.g. frames piped from ffmpeg); copies them. */
int image_from_rgb(const uint8_t *rgb, int w, int h, Image *out, char *err, size_t errlen);
void image_free(Image *img);

/* Binary PPM (P6, maxval 255) writer. */
int image_write_ppm(const char *path, const Image *img, char *err, size_t errlen);

/* --- preprocessing ------------------------------------------------------- */

/* expand2square: pad the shorter side with `fill` to a square of side
 * max(w,h), pasting the image at ((S-w)/2, (S-h)/2) (integer division). A
 * square input is copied unchanged. */
int image_expand2square(const Image *in, const uint8_t fill[3], Image *out, char *err, size_t errlen);

/* Pillow's Image.resize((ow, oh), Image.BICUBIC): separable, antialiased
 * (support scaled when downsampling), 22-bit fixed-point coefficients,
 * horizontal pass first with a uint8 intermediate, then vertical. Same size =
 * plain copy. Bit-exact with Pillow 9.x. */
int image_resize_bicubic(const Image *in, int ow, int oh, Image *out, char *err, size_t errlen);

/* pixel_values: chw[c][y][x] = ((float)(v * (1/255.0)) - mean[c]) / std[c],
 * the division and subtraction in float32, as transformers' CLIPImageProcessor.
 * chw must hold 3*h*w floats. */
void image_normalize(const Image *img, const float mean[3], const float std[3], float *chw);

/* The mPLUG-Owl2 family's image pipeline (Q-Align, OneAlign, Q-Instruct, DeQA-Score, ...),
 * up to the S x S uint8 image that image_normalize turns into pixel_values:
 *   IMAGE_PAD:  expand2square(fill), then Pillow bicubic to S x S (Q-Align's score())
 *   IMAGE_CROP: Pillow bicubic of the short side to S (the long side int(S * long / short)),
 *               then the centred S x S (CLIPImageProcessor's resize + center_crop; fill unused)
 * S in [1, 65536]. A model file holds its fill and S (qalign_describe: fill, v_image); the
 * defaults below are the CLIP-L/14-448 ones every released model of the family uses. */
typedef enum { IMAGE_PAD = 0, IMAGE_CROP = 1 } ImagePrep;
#define IMAGE_OWL2_FILL {122, 116, 104}   /* int(255 * x) for x in the CLIP image mean */
#define IMAGE_OWL2_SIZE 448
int image_preprocess(const Image *in, ImagePrep mode, const uint8_t fill[3], int S, Image *out, char *err,
                     size_t errlen);

/* Thumbnails (the report): downscale so the long side is at most max_side (never upscales), area-average filter. */
int thumb_downscale(const Image *in, int max_side, Image *out, char *err, size_t errlen);
/* Baseline JFIF, 4:4:4, standard Huffman tables, IJG quality scaling (1..100). */
int jpeg_encode(const Image *img, int quality, uint8_t **out, size_t *len, char *err, size_t errlen);

/* --- per-format decoders (called by image_decode; exposed for fuzzers) ---- */
int pnm_decode(const uint8_t *buf, size_t len, Image *out, char *err, size_t errlen);
int bmp_decode(const uint8_t *buf, size_t len, Image *out, char *err, size_t errlen);
int png_decode(const uint8_t *buf, size_t len, Image *out, char *err, size_t errlen);
int jpeg_decode(const uint8_t *buf, size_t len, Image *out, char *err, size_t errlen);
int jpeg_decode_warn(const uint8_t *buf, size_t len, Image *out, char *warn, size_t warnlen, char *err,
                     size_t errlen);

/* Checked size arithmetic shared by the decoders: return 0 on overflow. */
int image_mul_size(size_t a, size_t b, size_t *out);
/* A decoder's header says w x h: 0 if within the limit of the image_decode_max in progress
 * on this thread (if any), else -1 with the reason. (image_alloc checks it too.) */
int image_within_limit(long long w, long long h, char *err, size_t errlen);
/* Allocate an Image of w x h after checking IMAGE_MAX_DIM/IMAGE_MAX_PIXELS. */
int image_alloc(Image *img, int w, int h, char *err, size_t errlen);

#endif
