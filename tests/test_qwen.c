/* test_qwen.c - the Qwen3.5 model (qwen35.c) on one record, every stage written out.
 *
 *   build/test_qwen MODEL RECORD_DIR OUT_DIR [precise] [recurrent]
 *
 * RECORD_DIR holds the inputs as raw little-endian arrays (tests/test_qwen.py writes them
 * from the oracle's .npy files): ids.i32 (S), grid.i32 (n_images x (gh, gw)), pixels.f32
 * (the images' patch rows, one after the other), levels.i32. Each stage of the forward
 * pass (qwen_stage) goes to OUT_DIR/NAME.f32 with its shape in OUT_DIR/NAME.shape; the
 * level logits are printed. test_qwen.py compares them with the PyTorch oracle
 * (tests/qwen_ref.py). Exits non-zero on any error. */
#ifndef TESTING
#define TESTING
#endif
#include "../qalign.c"
#include "../kernels.c"

static const char *out_dir;

static void *read_all(const char *dir, const char *name, size_t *n) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "rb");
    if (!f) {
        fprintf(stderr, "test_qwen: cannot open %s\n", p);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *b = malloc(len ? (size_t)len : 1);
    if (!b || fread(b, 1, (size_t)len, f) != (size_t)len) {
        fprintf(stderr, "test_qwen: cannot read %s\n", p);
        exit(2);
    }
    fclose(f);
    *n = (size_t)len;
    return b;
}

static void hook(void *user, const char *name, const float *data, int rows, int cols) {
    (void)user;
    char p[4096];
    snprintf(p, sizeof p, "%s/%s.f32", out_dir, name);
    FILE *f = fopen(p, "wb");
    if (!f || fwrite(data, sizeof(float), (size_t)rows * cols, f) != (size_t)rows * cols) {
        fprintf(stderr, "test_qwen: cannot write %s\n", p);
        exit(2);
    }
    fclose(f);
    snprintf(p, sizeof p, "%s/%s.shape", out_dir, name);
    f = fopen(p, "w");
    if (!f) exit(2);
    fprintf(f, "%d %d\n", rows, cols);
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: test_qwen MODEL RECORD_DIR OUT_DIR [precise] [recurrent]\n");
        return 2;
    }
    out_dir = argv[3];
    char err[QALIGN_ERR_LEN];
    qalign_open_options oo = {.no_prefetch = 1};
    qalign_model *m;
    if (qalign_open(argv[1], &oo, &m, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (!m->qwen) {
        fprintf(stderr, "test_qwen: %s is not a Qwen3.5 model\n", argv[1]);
        return 1;
    }
    size_t n_ids, n_grid, n_px, n_lv;
    int *ids = read_all(argv[2], "ids.i32", &n_ids);
    int *grid = read_all(argv[2], "grid.i32", &n_grid);
    float *px = read_all(argv[2], "pixels.f32", &n_px);
    int *lv = read_all(argv[2], "levels.i32", &n_lv);
    int S = (int)(n_ids / 4), n_images = (int)(n_grid / 8), n_levels = (int)(n_lv / 4);
    const Qwen35 *q = m->qwen;
    const float *patches[QALIGN_MAX_MARKERS];
    int grids[QALIGN_MAX_MARKERS][2];
    size_t off = 0;
    for (int k = 0; k < n_images && k < QALIGN_MAX_MARKERS; k++) {
        grids[k][0] = grid[2 * k], grids[k][1] = grid[2 * k + 1];
        patches[k] = px + off;
        off += (size_t)grids[k][0] * grids[k][1] * q->c.v_in;
    }
    if (off * 4 != n_px) {
        fprintf(stderr, "test_qwen: pixels.f32 has %zu values, the grids need %zu\n", n_px / 4, off);
        return 1;
    }
    QwenState s;
    memset(&s, 0, sizeof s);
    s.hook = hook;
    /* precise: f32 activations; recurrent: the Gated DeltaNet's delta rule as written
     * (qwen_gdn_recurrent) instead of by state columns */
    int precise = 0;
    for (int i = 4; i < argc; i++) {
        if (!strcmp(argv[i], "precise")) precise = 1;
        else if (!strcmp(argv[i], "recurrent")) s.gdn_recurrent = 1;
        else {
            fprintf(stderr, "test_qwen: unknown option %s\n", argv[i]);
            return 2;
        }
    }
#ifdef _OPENMP
    int n_threads = omp_get_max_threads();
#else
    int n_threads = 1;
#endif
    int mp = 0;
    for (int k = 0; k < n_images; k++) mp = grids[k][0] * grids[k][1] > mp ? grids[k][0] * grids[k][1] : mp;
    if (qwen_state_alloc(&s, &q->c, mp, S, n_threads, precise)) {
        fprintf(stderr, "test_qwen: out of memory\n");
        return 1;
    }
    float logits[QALIGN_MAX_LEVELS];
    if (qwen_forward(q, &s, ids, S, patches, (const int(*)[2])grids, n_images, lv, n_levels, logits, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    for (int i = 0; i < n_levels; i++) printf("%s%.7g", i ? " " : "", logits[i]);
    printf("\n");
    qwen_state_free(&s);
    qalign_close(m);
    free(ids), free(grid), free(px), free(lv);
    return 0;
}
