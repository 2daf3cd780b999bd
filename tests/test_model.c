/* test_model.c - the decoder's fast path against a naive twin, as llm.c keeps naive twins.
 *
 *   build/test_model MODEL IMAGE IMAGE IMAGE      (an f32 model file; tests/test_model.py)
 *
 * The fast path (score_batch -> decoder_forward -> decoder_layer) runs B sequences at once,
 * computes the text before the image once (prefix K/V cache), gathers rows per modality
 * for the k/v projections, sends only the last row through the last layer, and chunks the
 * MLP. The naive twin below does none of that: one sequence, every row through every
 * layer, every product a plain loop over the weights' rows (matrix_row), as the PyTorch
 * code reads. Both start from the same visual rows (the vision tower and abstractor are
 * checked against the upstream fixtures elsewhere). Checked: the final-norm state of the
 * last row and the level logits, for a batch of 3 images, for the same images one at a
 * time, for a 2-frame video, for Compare2Score's comparisons with 5 anchors (their keys and
 * values cached per anchor) and for Q-Boost's synonym levels. Prints one line per check;
 * exits non-zero on a failure. */
#ifndef TESTING
#define TESTING
#endif
#include "../qalign.c"
#include "../kernels.c"

static int n_pass, n_fail;

static void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (ok) n_pass++;
    else n_fail++;
}

static float *alloc_f(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* y (rows) = W x, W (rows, cols) read one row at a time */
static void matvec(float *y, const Tensor *W, const float *x, float *row) {
    for (int o = 0; o < W->rows; o++) {
        matrix_row(row, W, o);
        double s = 0;
        for (int i = 0; i < W->cols; i++) s += (double)row[i] * x[i];
        y[o] = (float)s;
    }
}

static void rmsnorm_naive(float *out, const float *x, const float *w, int D, float eps) {
    double ss = 0;
    for (int i = 0; i < D; i++) ss += (double)x[i] * x[i];
    double r = 1.0 / sqrt(ss / D + eps);
    for (int i = 0; i < D; i++) out[i] = (float)(w[i] * (x[i] * r));
}

/* rotate-half RoPE of one head vector at position t */
static void rope_naive(float *v, int hd, int t, float theta) {
    for (int j = 0; j < hd / 2; j++) {
        double f = (double)t / pow(theta, 2.0 * j / hd), c = cos(f), s = sin(f), a = v[j], b = v[j + hd / 2];
        v[j] = (float)(a * c - b * s);
        v[j + hd / 2] = (float)(b * c + a * s);
    }
}

/* The decoder on one sequence: x (n, D) the input embeddings, mod[t] the modality of row t.
 * final (D) gets the final-norm state of the last row. */
static void decoder_naive(const Model *m, float *x, const int *mod, int n, float *final) {
    const Config *c = &m->c;
    int D = c->l_dim, H = c->l_heads, KVH = c->l_kv_heads, hd = c->l_head_dim, kvd = KVH * hd, F = c->l_mlp;
    float *xn = alloc_f(D), *q = alloc_f((size_t)n * D), *k = alloc_f((size_t)n * kvd), *v = alloc_f((size_t)n * kvd);
    float *att = alloc_f(D), *o = alloc_f(D), *g = alloc_f(F), *u = alloc_f(F), *row = alloc_f(F > D ? F : D);
    float *p = alloc_f(n);
    for (int l = 0; l < c->l_layers; l++) {
        const DecoderLayer *L = &m->l.layers[l];
        for (int t = 0; t < n; t++) { /* q, k, v of every row, with RoPE at position t */
            rmsnorm_naive(xn, x + (size_t)t * D, L->attn_norm[mod[t]], D, c->l_eps);
            matvec(q + (size_t)t * D, &L->wq, xn, row);
            matvec(k + (size_t)t * kvd, &L->wk[mod[t]], xn, row);
            matvec(v + (size_t)t * kvd, &L->wv[mod[t]], xn, row);
            for (int h = 0; h < H; h++) rope_naive(q + (size_t)t * D + h * hd, hd, t, c->l_rope_theta);
            for (int h = 0; h < KVH; h++) rope_naive(k + (size_t)t * kvd + h * hd, hd, t, c->l_rope_theta);
        }
        for (int t = 0; t < n; t++) {
            for (int h = 0; h < H; h++) { /* causal attention of row t, head h */
                int kh = h / (H / KVH);
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j <= t; j++) {
                    double s = 0;
                    for (int d = 0; d < hd; d++) s += (double)q[(size_t)t * D + h * hd + d] * k[(size_t)j * kvd + kh * hd + d];
                    p[j] = (float)(s / sqrt((double)hd));
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = 0; j <= t; j++) sum += (p[j] = (float)exp(p[j] - mx));
                for (int d = 0; d < hd; d++) {
                    double s = 0;
                    for (int j = 0; j <= t; j++) s += (double)p[j] / sum * v[(size_t)j * kvd + kh * hd + d];
                    att[h * hd + d] = (float)s;
                }
            }
            float *xt = x + (size_t)t * D;
            matvec(o, &L->wo, att, row);
            for (int i = 0; i < D; i++) xt[i] += o[i];
            rmsnorm_naive(xn, xt, L->mlp_norm[mod[t]], D, c->l_eps);
            matvec(g, &L->gate, xn, row);
            matvec(u, &L->up, xn, row);
            for (int i = 0; i < F; i++) g[i] = (float)(g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
            matvec(o, &L->down, g, row);
            for (int i = 0; i < D; i++) xt[i] += o[i];
        }
    }
    rmsnorm_naive(final, x + (size_t)(n - 1) * D, m->l.norm, D, c->l_eps);
    free(xn), free(q), free(k), free(v), free(att), free(o), free(g), free(u), free(row), free(p);
}

/* The naive sequence for prompt p with the visual rows vis[k] (frames * (Q+1), D) in place
 * of the k-th marker: final state and the level logits (a level's: the mean of its words'). */
static void naive_score(const Model *m, const Prompt *p, const float *const *vis, int frames, const Levels *lv,
                        float *final, float *logits) {
    int D = m->c.l_dim, rows = frames * (m->c.a_queries + 1), n = sequence_length(m, p, frames), t = 0, k = 0;
    float *x = alloc_f((size_t)n * D), *row = alloc_f(D);
    int *mod = calloc((size_t)n, sizeof(int));
    for (int i = 0; i < p->n_ids; i++) {
        if (p->ids[i] == TOKEN_IMAGE_MARKER) {
            memcpy(x + (size_t)t * D, vis[k++], (size_t)rows * D * sizeof(float));
            for (int r = 0; r < rows; r++) mod[t + r] = 1;
            t += rows;
        } else {
            matrix_row(x + (size_t)t++ * D, &m->l.embed, p->ids[i]);
        }
    }
    decoder_naive(m, x, mod, n, final);
    for (int i = 0; i < lv->n; i++) {
        double sum = 0;
        for (int j = 0; j < lv->n_ids[i]; j++) {
            matrix_row(row, &m->l.head, lv->ids[i][j]);
            double s = 0;
            for (int d = 0; d < D; d++) s += (double)row[d] * final[d];
            sum += (float)s;
        }
        logits[i] = (float)(sum / lv->n_ids[i]);
    }
    free(x), free(row), free(mod);
}

/* (Comparisons, not fmax: GCC 12 for AArch64 stops with an internal compiler error on an fmax
 * reduction at -O3; and a NaN difference must make the check fail, where fmax would drop it.) */
/* max(m, |d|), NaN winning. */
static double max_abs(double m, double d) {
    d = fabs(d);
    return d > m || d != d ? d : m;
}

static double max_rel(const float *a, const float *b, int n) {
    double m = 0, s = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]), v = fabs((double)b[i]);
        if (d > m || d != d) m = d;
        if (v > s) s = v;
    }
    return s > 0 ? m / s : m;
}
static double max_abs_diff(const float *a, const float *b, int n) {
    double m = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m || d != d) m = d;
    }
    return m;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: test_model MODEL IMAGE IMAGE IMAGE\n");
        return 2;
    }
    char err[QALIGN_ERR_LEN];
    qalign_model *m;
    if (qalign_open(argv[1], NULL, &m, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    Image img[3];
    qalign_image qi[3];
    for (int i = 0; i < 3; i++) {
        if (image_load(argv[2 + i], &img[i], err, sizeof err)) {
            fprintf(stderr, "%s: %s\n", argv[2 + i], err);
            return 2;
        }
        qi[i] = (qalign_image){img[i].rgb, img[i].w, img[i].h};
    }
    int D = m->c.l_dim, rows = m->c.a_queries + 1;
    size_t vis_floats = (size_t)rows * D;
    float *vis = alloc_f(4 * vis_floats), *fin = alloc_f(D), *fast_final = alloc_f(3 * (size_t)D), logits[QALIGN_MAX_LEVELS];
    const double REL = 1e-4, LOGIT = 1e-4;
    qalign_result first[3];

    /* a batch of 3: the fast path's visual rows, then its final states and logits */
    for (int batch = 3; batch >= 1; batch -= 2) {
        qalign_ctx *c;
        if (qalign_ctx_new(m, &(qalign_ctx_options){.batch = batch}, &c, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 2;
        }
        qalign_result r[3];
        for (int i = 0; i < 3; i++) {
            if (qalign_add_image(c, &qi[i], err, sizeof err)) return fprintf(stderr, "%s\n", err), 2;
            memcpy(vis + i * vis_floats, c->s.visual + (size_t)(c->pending - 1) * vis_floats, vis_floats * sizeof(float));
            if (c->pending == batch) {
                int k = c->pending;
                qalign_flush(c, r + i + 1 - k, err, sizeof err);
                memcpy(fast_final + (size_t)(i + 1 - k) * D, c->s.final, (size_t)k * D * sizeof(float));
            }
        }
        for (int i = 0; i < 3; i++) {
            const float *v1[1] = {vis + i * vis_floats};
            naive_score(m, &c->prompt_image, v1, 1, &c->lv, fin, logits);
            double ef = max_rel(fast_final + (size_t)i * D, fin, D), el = max_abs_diff(r[i].logits, logits, c->lv.n);
            check(ef <= REL && el <= LOGIT, "image %d of a batch of %d: final state max relative error %.2e, level logits %.2e",
                  i, batch, ef, el);
        }
        if (batch == 3) memcpy(first, r, sizeof first);
        else
            check(!memcmp(first[0].logits, r[0].logits, sizeof r[0].logits) && !memcmp(first[2].logits, r[2].logits, sizeof r[2].logits),
                  "batch of 3 and one at a time: the same level logits, bit for bit");
        /* the prefix cache really was used (else this would test less than it says) */
        check(c->s.cache_rows[0] > 0, "the prompt's first %d rows came from the prefix cache", c->s.cache_rows[0]);
        qalign_ctx_free(c);
    }

    /* a video of 2 frames (images 0 and 2) */
    qalign_ctx *c;
    if (qalign_ctx_new(m, NULL, &c, err, sizeof err)) return fprintf(stderr, "%s\n", err), 2;
    qalign_result vr;
    qalign_video_begin(c, 2, err, sizeof err);
    qalign_video_frame(c, &qi[0], err, sizeof err);
    qalign_video_frame(c, &qi[2], err, sizeof err);
    memcpy(vis, c->s.visual, 2 * vis_floats * sizeof(float));
    if (qalign_video_end(c, &vr, err, sizeof err)) return fprintf(stderr, "%s\n", err), 2;
    const float *v2[1] = {vis};
    naive_score(m, &c->prompt_video, v2, 2, &c->lv, fin, logits);
    double ef = max_rel(c->s.final, fin, D), el = max_abs_diff(vr.logits, logits, c->lv.n);
    check(ef <= REL && el <= LOGIT, "video of 2 frames: final state max relative error %.2e, level logits %.2e", ef, el);
    qalign_ctx_free(c);

    /* Compare2Score: image 2 against 5 anchors (images 0 1 2 1 0), one decoder pass of B = 5
     * whose first rows (text, anchor, text) come from each anchor's K/V cache slot, against
     * the naive two-image sequence per anchor; and Q-Boost's averaged synonyms */
    qalign_image anchors[5] = {qi[0], qi[1], qi[2], qi[1], qi[0]};
    if (qalign_ctx_new(m, &(qalign_ctx_options){.preset = "compare2score", .anchors = anchors, .n_anchors = 5}, &c, err,
                       sizeof err))
        return fprintf(stderr, "%s\n", err), 2;
    qalign_result cr;
    if (qalign_add_image(c, &qi[2], err, sizeof err) || qalign_flush(c, &cr, err, sizeof err)) return fprintf(stderr, "%s\n", err), 2;
    double ep = 0, elm = 0, mean[QALIGN_MAX_LEVELS] = {0};
    for (int k = 0; k < 5; k++) {
        const float *v[2] = {c->anchors.rows + k * vis_floats, c->s.visual};
        naive_score(m, &c->prompt_image, v, 1, &c->lv, fin, logits);
        float pr[QALIGN_MAX_LEVELS];
        double pref = 0;
        for (int i = 0; i < c->lv.n; i++) pr[i] = logits[i] / 100.0f, mean[i] += logits[i] / 5.0;
        softmax_ref(pr, c->lv.n);
        for (int i = 0; i < c->lv.n; i++) pref += pr[i] * c->lv.weights[i];
        ep = max_abs(ep, pref - cr.anchor_prefs[k]);
    }
    for (int i = 0; i < c->lv.n; i++) elm = max_abs(elm, mean[i] - cr.logits[i]);
    check(cr.status == QALIGN_OK && cr.n_anchors == 5 && ep <= 1e-6 && elm <= LOGIT && c->s.cache_rows[1] > 0 &&
              c->s.cache_rows[5] == c->s.cache_rows[1],
          "compare2score: 5 anchors from their K/V caches (%d rows each) vs naive two-image sequences: preferences "
          "%.2e, mean level logits %.2e", c->s.cache_rows[1], ep, elm);
    qalign_ctx_free(c);
    if (qalign_ctx_new(m, &(qalign_ctx_options){.preset = "q-instruct-boost"}, &c, err, sizeof err)) return fprintf(stderr, "%s\n", err), 2;
    if (qalign_add_image(c, &qi[1], err, sizeof err) || qalign_flush(c, &cr, err, sizeof err)) return fprintf(stderr, "%s\n", err), 2;
    const float *vb[1] = {c->s.visual};
    naive_score(m, &c->prompt_image, vb, 1, &c->lv, fin, logits);
    el = max_abs_diff(cr.logits, logits, c->lv.n);
    check(c->lv.n == 3 && c->lv.n_ids[0] == 3 && el <= LOGIT, "q-instruct-boost: 3 levels of 3 synonyms, level logits %.2e", el);
    qalign_ctx_free(c);

    for (int i = 0; i < 3; i++) image_free(&img[i]);
    free(vis), free(fin), free(fast_final);
    qalign_close(m);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
