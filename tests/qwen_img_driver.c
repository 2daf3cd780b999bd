/* qwen_img_driver.c - driver for tests/test_qwen_image.py and bench/qwen_prep.py (built by them,
 * linked with image.c image_bmp.c image_png.c image_jpeg.c image_jpeg_scan.c image_qwen.c only).
 *
 *   qwen_img_driver smart  < lines "RULE H W FACTOR MIN MAX"     -> "OH OW" or "E message"
 *   qwen_img_driver frames < lines "i NFRAMES N" | "s W H LONG"   -> indices | "OW OH"
 *   qwen_img_driver resize IN OW OH RESAMPLE OUT.rgb             (decode IN, qwen_resize, raw RGB)
 *   qwen_img_driver prep IN OUTBASE PATH [RULE RESAMPLE NORM MIN MAX]
 *        decode IN, qwen_prepare + qwen_patchify; writes OUTBASE.rgb (the resized image, raw RGB)
 *        and OUTBASE.f32 (the rows, float32 native-endian); prints "GT GH GW OW OH". Also runs
 *        qwen_pixel_rows on the decoded pixels and exits 5 if its rows differ. With the environment
 *        variable QWEN_DRIVER_ROW_STRIDE=k only rows 0, k, 2k, ... are written.
 *   qwen_img_driver time IN PATH REPS                            -> "W H OW OH SECONDS_PER_IMAGE"
 * RULE 0 transformers / 1 qwen_vl_utils; RESAMPLE 0 PIL / 1 torch; NORM 0 fused / 1 numpy;
 * PATH hf | swift. Errors: "qwen_img_driver: error: MESSAGE" on stderr, exit 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "image.h"
#include "image_qwen.h"

static int die(const char *what, const char *msg) {
    fprintf(stderr, "qwen_img_driver: error: %s: %s\n", what, msg);
    return 1;
}

static int write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    if (n && fwrite(p, 1, n, f) != n) {
        fclose(f);
        return -1;
    }
    return fclose(f) ? -1 : 0;
}

static int parse_prep(int argc, char **argv, int at, QwenVisionPrep *p) {
    if (!strcmp(argv[at], "hf")) qwen_prep_init(p, QWEN_PATH_HF);
    else if (!strcmp(argv[at], "swift")) qwen_prep_init(p, QWEN_PATH_SWIFT);
    else return -1;
    if (argc > at + 1) {
        if (argc != at + 6) return -1;
        p->rule = (QwenSmartRule)atoi(argv[at + 1]);
        p->resample = (QwenResample)atoi(argv[at + 2]);
        p->norm = (QwenNorm)atoi(argv[at + 3]);
        p->min_pixels = atol(argv[at + 4]);
        p->max_pixels = atol(argv[at + 5]);
    }
    return 0;
}

int main(int argc, char **argv) {
    char err[256], line[256];
    Image in, out;
    if (argc >= 2 && !strcmp(argv[1], "smart")) {
        while (fgets(line, sizeof line, stdin)) {
            int rule, h, w, f, oh, ow;
            long mn, mx;
            if (sscanf(line, "%d %d %d %d %ld %ld", &rule, &h, &w, &f, &mn, &mx) != 6) return 2;
            if (qwen_smart_resize_rule((QwenSmartRule)rule, h, w, f, mn, mx, &oh, &ow, err, sizeof err))
                printf("E %s\n", err);
            else
                printf("%d %d\n", oh, ow);
        }
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "frames")) {
        while (fgets(line, sizeof line, stdin)) {
            long nf, idx[64];
            int n, w, h, L, ow, oh;
            if (sscanf(line, "i %ld %d", &nf, &n) == 2 && n >= 1 && n <= 64) {
                qwen_frame_indices(nf, n, idx);
                for (int i = 0; i < n; i++) printf(i ? " %ld" : "%ld", idx[i]);
                printf("\n");
            } else if (sscanf(line, "s %d %d %d", &w, &h, &L) == 3) {
                qwen_frame_size(w, h, L, &ow, &oh);
                printf("%d %d\n", ow, oh);
            } else {
                return 2;
            }
        }
        return 0;
    }
    if (argc == 7 && !strcmp(argv[1], "resize")) {
        if (image_load(argv[2], &in, err, sizeof err)) return die(argv[2], err);
        if (qwen_resize(&in, atoi(argv[3]), atoi(argv[4]), (QwenResample)atoi(argv[5]), &out, err, sizeof err))
            return die(argv[2], err);
        if (write_file(argv[6], out.rgb, (size_t)out.w * (size_t)out.h * 3)) return die(argv[6], "cannot write");
        image_free(&in);
        image_free(&out);
        return 0;
    }
    if (argc >= 5 && !strcmp(argv[1], "prep")) {
        QwenVisionPrep p;
        char path[4096];
        int gt, gh, gw, gt2, gh2, gw2;
        float *rows, *rows2;
        size_t n;
        if (parse_prep(argc, argv, 4, &p)) return 2;
        if (image_load(argv[2], &in, err, sizeof err)) return die(argv[2], err);
        if (qwen_prepare(&in, &p, &out, err, sizeof err)) return die(argv[2], err);
        rows = qwen_patchify(&out, &p, &gt, &gh, &gw, err, sizeof err);
        if (!rows) return die(argv[2], err);
        n = (size_t)gt * gh * gw * 3 * p.temporal * p.patch * p.patch;
        rows2 = qwen_pixel_rows(in.rgb, in.w, in.h, &p, &gt2, &gh2, &gw2, err, sizeof err);
        if (!rows2) return die(argv[2], err);
        if (gt2 != gt || gh2 != gh || gw2 != gw || memcmp(rows, rows2, n * sizeof(float))) return 5;
        snprintf(path, sizeof path, "%s.rgb", argv[3]);
        if (write_file(path, out.rgb, (size_t)out.w * (size_t)out.h * 3)) return die(path, "cannot write");
        snprintf(path, sizeof path, "%s.f32", argv[3]);
        {   /* QWEN_DRIVER_ROW_STRIDE=k: only rows 0, k, 2k, ... (large images) */
            const char *e = getenv("QWEN_DRIVER_ROW_STRIDE");
            size_t k = e && atol(e) > 1 ? (size_t)atol(e) : 1, rowlen = n / ((size_t)gt * gh * gw), m = 0;
            for (size_t r = 0; r * rowlen < n; r += k, m++)
                if (m != r) memmove(rows + m * rowlen, rows + r * rowlen, rowlen * sizeof(float));
            if (write_file(path, rows, m * rowlen * sizeof(float))) return die(path, "cannot write");
        }
        printf("%d %d %d %d %d\n", gt, gh, gw, out.w, out.h);
        free(rows);
        free(rows2);
        image_free(&in);
        image_free(&out);
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "time")) {
        QwenVisionPrep p;
        int gt, gh, gw, reps = atoi(argv[4]), oh = 0, ow = 0;
        struct timespec t0, t1;
        if (parse_prep(4, argv, 3, &p) || reps < 1) return 2;
        if (image_load(argv[2], &in, err, sizeof err)) return die(argv[2], err);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int r = 0; r < reps; r++) {
            float *rows = qwen_pixel_rows(in.rgb, in.w, in.h, &p, &gt, &gh, &gw, err, sizeof err);
            if (!rows) return die(argv[2], err);
            free(rows);
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        qwen_smart_resize_rule(p.rule, in.h, in.w, p.patch * p.merge, p.min_pixels, p.max_pixels, &oh, &ow, err,
                               sizeof err);
        printf("%d %d %d %d %.6f\n", in.w, in.h, ow, oh,
               ((double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec)) / reps);
        image_free(&in);
        return 0;
    }
    fprintf(stderr, "usage: see tests/qwen_img_driver.c\n");
    return 2;
}
