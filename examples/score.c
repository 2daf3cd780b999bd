/* examples/score.c - score one image through qalign.h: the whole embedding, start to end.
 *
 *   make examples/score && examples/score model.qalign photo.jpg
 *
 * prints the score with four decimals, as the first column of `qalign model photo.jpg`.
 * Build against libqalign.a (or -lqalign with libqalign.so): see the Makefile. */
#include <stdio.h>

#include "image.h"
#include "qalign.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL IMAGE\n", argv[0]);
        return 2;
    }
    char err[QALIGN_ERR_LEN];
    qalign_model *model = NULL;
    qalign_ctx *ctx = NULL;
    Image img = {0};
    int rc = 1;

    /* the model: mapped once, read-only; a context: options and buffers for scoring */
    if (qalign_open(argv[1], NULL, &model, err, sizeof err) != QALIGN_OK ||
        qalign_ctx_new(model, NULL, &ctx, err, sizeof err) != QALIGN_OK) {
        fprintf(stderr, "%s\n", err);
        goto done;
    }
    /* any 8-bit RGB will do; image.h decodes JPEG, PNG, BMP and PPM as Pillow does */
    if (image_load(argv[2], &img, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", argv[2], err);
        goto done;
    }
    qalign_image in = {img.rgb, img.w, img.h};
    qalign_result r;
    if (qalign_score_images(ctx, &in, 1, &r, err, sizeof err) != QALIGN_OK) {
        fprintf(stderr, "%s\n", err);
        goto done;
    }
    if (r.status != QALIGN_OK) {
        fprintf(stderr, "%s: %s\n", argv[2], r.error);
        goto done;
    }
    printf("%.4f\n", r.score); /* 1 (bad) .. 5 (excellent) */
    rc = 0;
done:
    image_free(&img);
    qalign_ctx_free(ctx);
    qalign_close(model);
    return rc;
}
