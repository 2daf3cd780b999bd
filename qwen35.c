/* qwen35.c - the Qwen3.5 model family (Q-ReAlign Mini / Lite / Pro) in plain C.
 *
 * Q-ReAlign (Q-Future, 2026) keeps Q-Align's scoring - softmax over the next-token logits
 * of " excellent", " good", " fair", " poor", " bad" - on a Qwen3.5 backbone: a ViT with
 * 2-D rotary embeddings and a 2x2 patch merger, then a hybrid decoder whose layers are
 * either Gated DeltaNet (a linear-attention recurrence with a per-head d_k x d_v state) or
 * gated full attention with interleaved multimodal rotary positions (M-RoPE).
 *
 * This file reads top-down: config (the file header) -> weights (views into the file) ->
 * run state -> vision tower -> positions (get_rope_index) -> decoder (Gated DeltaNet,
 * gated attention, SwiGLU) -> scoring -> loading. Above each block is the line of
 * Hugging Face transformers' models/qwen3_5/modeling_qwen3_5.py (commit 009e78d6) that it
 * implements. It is #included at the end of qalign.c and shares its kernels (matmul for
 * every weight type, attention, layernorm, softmax) and its model-file loader (the table
 * walk, bind); qalign_open picks this family when the header's magic is "QAQ5".
 * No intrinsics here: the SIMD lives behind kernels.h.
 *
 *   python3 export.py --model Q-ReAlign-Mini-0.8B mini.qalign --dtype q8
 */

/* ----------------------------------------------------------------------------------------
 * Config: the header (export.py QWEN_HEADER_FIELDS, slot by slot). */

#define QWEN_VERSION 1          /* export.py QWEN_VERSION */
#define QWEN_MAX_CONTEXT 262144 /* text_config.max_position_embeddings of every released size
                                   (docs/qwen35-configs.md): the limit of --max-tokens */
#define QWEN_MAX_LAYERS 128
#define QWEN_LAYER_SLOT 128     /* slot 128 + l: layer l is 0 Gated DeltaNet, 1 full attention */

enum {
    Q_MAGIC, Q_VERSION, Q_HEADER_BYTES, Q_N_TENSORS, Q_WTYPE,
    Q_V_DIM, Q_V_LAYERS, Q_V_HEADS, Q_V_MLP, Q_V_PATCH, Q_V_TEMPORAL, Q_V_MERGE, Q_V_NPOS, Q_V_OUT, Q_V_EPS,
    Q_V_ROPE_THETA,
    Q_L_DIM, Q_L_LAYERS, Q_L_HEADS, Q_L_KV_HEADS, Q_L_HEAD_DIM, Q_L_MLP, Q_L_VOCAB, Q_L_EPS, Q_L_ROPE_THETA,
    Q_L_ROT_DIM, Q_MROPE_T, Q_MROPE_H, Q_MROPE_W, Q_MROPE_INTERLEAVED,
    Q_G_K_HEADS, Q_G_V_HEADS, Q_G_K_DIM, Q_G_V_DIM, Q_G_CONV, Q_TIED,
    Q_IMAGE_TOKEN, Q_VIDEO_TOKEN, Q_VISION_START, Q_VISION_END, Q_THINK_OPEN, Q_MIN_PIXELS, Q_MAX_PIXELS,
    Q_MEAN_R, Q_MEAN_G, Q_MEAN_B, Q_STD_R, Q_STD_G, Q_STD_B,
    Q_COUNT
};

typedef struct {
    int wtype;
    /* vision tower */
    int v_dim;              /* width (Mini: 768) */
    int v_layers;           /* blocks (depth) */
    int v_heads;            /* heads; head size v_dim / v_heads, rotary over all of it */
    int v_mlp;              /* MLP hidden width */
    int v_patch;            /* 16 */
    int v_temporal;         /* 2: a still image is its frame twice */
    int v_merge;            /* 2: 2x2 patches -> one visual token */
    int v_npos;             /* learned position table rows, a square (side^2) */
    int v_side;             /* sqrt(v_npos) */
    int v_in;               /* 3 * v_temporal * v_patch^2: values per patch row (1536) */
    float v_eps;            /* LayerNorm eps (1e-6) */
    float v_rope_theta;     /* 10000 */
    /* decoder */
    int l_dim, l_layers, l_heads, l_kv_heads, l_head_dim, l_mlp, l_vocab;
    float l_eps;            /* RMSNorm eps */
    float l_rope_theta;     /* 1e7 */
    int l_rot_dim;          /* head_dim * partial_rotary_factor: the rotated dims */
    int mrope[3];           /* mrope_section: t, h, w frequency counts (sum = rot_dim / 2) */
    int g_k_heads, g_v_heads, g_k_dim, g_v_dim, g_conv; /* Gated DeltaNet */
    int tied;               /* lm_head = embed_tokens */
    int image_token, video_token, vision_start, vision_end;
    int think_open;         /* the chat template's generation prompt opens a thinking block */
    int min_pixels, max_pixels; /* preprocessor_config size.shortest_edge / longest_edge */
    float mean[3], std[3];
    uint8_t full[QWEN_MAX_LAYERS]; /* layer_types: 1 full_attention, 0 linear_attention */
} QwenConfig;

/* ----------------------------------------------------------------------------------------
 * Weights: views into the model file, bound by name (qwen_bind) from its one table. */

typedef struct {
    const float *ln1_w, *ln1_b;       /* (v_dim) norm1 */
    Tensor qkv; const float *qkv_b;   /* (3 v_dim, v_dim): rows q | k | v, each head-major */
    Tensor proj; const float *proj_b; /* (v_dim, v_dim) */
    const float *ln2_w, *ln2_b;       /* (v_dim) norm2 */
    Tensor fc1; const float *fc1_b;   /* (v_mlp, v_dim) */
    Tensor fc2; const float *fc2_b;   /* (v_dim, v_mlp) */
} QwenVisionLayer;

typedef struct {
    const float *in_norm;             /* (l_dim) input_layernorm: x * (1 + w) */
    /* full attention */
    Tensor qkv;                       /* (2 nh hd + 2 nkv hd, l_dim): q_proj (per head: hd query
                                         rows, hd gate rows) | k_proj | v_proj */
    const float *q_norm, *k_norm;     /* (hd) */
    Tensor o;                         /* (l_dim, nh hd) */
    /* Gated DeltaNet */
    Tensor in_proj;                   /* (conv + nv dv + 2 nv, l_dim): in_proj_qkv (q | k | v) |
                                         in_proj_z | in_proj_b | in_proj_a */
    const float *conv;                /* (conv, g_conv) depthwise conv1d weight */
    const float *dt_bias, *A_log;     /* (nv) */
    const float *gnorm;               /* (dv) RMSNormGated weight (plain, not 1 + w) */
    Tensor out;                       /* (l_dim, nv dv) out_proj */
    /* MLP */
    const float *post_norm;           /* (l_dim) post_attention_layernorm */
    Tensor gate_up;                   /* (2 l_mlp, l_dim): gate_proj | up_proj */
    Tensor down;                      /* (l_dim, l_mlp) */
} QwenLayer;

typedef struct Qwen35 {
    QwenConfig c;
    Tensor patch; const float *patch_b; /* (v_dim, v_in) Conv3d as a matrix */
    const float *pos;                 /* (v_npos, v_dim) pos_embed */
    QwenVisionLayer *vl;              /* (v_layers) */
    const float *mln_w, *mln_b;       /* (v_dim) merger.norm */
    Tensor mfc1; const float *mfc1_b; /* (4 v_dim, 4 v_dim) */
    Tensor mfc2; const float *mfc2_b; /* (l_dim, 4 v_dim) */
    QwenLayer *l;                     /* (l_layers) */
    const float *norm;                /* (l_dim) final norm */
    Tensor embed;                     /* (l_vocab, l_dim) */
    Tensor head;                      /* (l_vocab, l_dim) lm_head, or embed when tied */
    Bpe *bpe;                         /* the tokenizer (tok.bpe), or NULL (a file of token ids only) */
} Qwen35;

/* ----------------------------------------------------------------------------------------
 * Run state of one forward pass: sized for its images and its sequence. */

typedef void (*qwen_stage_fn)(void *user, const char *name, const float *data, int rows, int cols);

/* Seconds per stage, summed over forward passes (bench/qwen_stages.c prints them) */
enum { QS_PATCH, QS_VIT_ATT, QS_VIT_MLP, QS_MERGER, QS_GDN, QS_ATT, QS_MLP, QS_HEAD, QS_COUNT };

typedef struct {
    int max_patches;        /* patch rows of the largest image */
    int max_seq;            /* decoder rows */
    int n_threads;
    float *vx, *vxn, *vqkv, *vatt, *vmlp;   /* (patches, ...) vision tower */
    float *vcos, *vsin;     /* (patches, v_head) 2-D rotary tables */
    float *x, *xn;          /* (S, l_dim) residual stream, normalised */
    float *proj;            /* (S, widest fused projection) */
    float *q;               /* (S, max(nh hd, conv)) queries (attention) / conv output (GDN) */
    float *att;             /* (S, max(nh hd, nv dv)) mixer output before o_proj / out_proj */
    float *hb;              /* (S, l_mlp) SwiGLU hidden */
    float *state;           /* (nv, dk, dv) Gated DeltaNet state */
    int gdn_recurrent;      /* 1: the delta rule as written (qwen_gdn_recurrent), not by columns */
    float *gdn_tok;         /* (3, nv, S) per head and token: decay, beta, q . k; then nv: exp(A_log) */
    float *convw;           /* (g_conv, conv) the depthwise conv weight by tap */
    float *tcos, *tsin;     /* (S, rot_dim / 2) M-RoPE tables */
    int *pos;               /* (3, S) positions */
    float *scores;          /* (threads, stride) attention scratch */
    size_t scores_stride;
    float *kt;              /* attention workspace */
    float *row;             /* (l_dim) one lm_head row */
    Acts acts;
    qwen_stage_fn hook;
    void *hook_user;
    size_t bytes;
    double sec[QS_COUNT];   /* seconds per stage (QS_*), cumulative */
    struct QwenGen *gen;    /* --ask: where each layer's state goes after the prompt (qwen_gen_keep), or NULL */
} QwenState;

/* add the time since *t to stage k; *t = now */
static void qwen_tick(QwenState *s, int k, double *t) {
    double n = now_seconds();
    s->sec[k] += n - *t;
    *t = n;
}

static void qwen_stage(QwenState *s, const char *name, const float *data, int rows, int cols) {
    if (s->hook) s->hook(s->hook_user, name, data, rows, cols);
}

static void qwen_state_free(QwenState *s) {
    float *bufs[] = {s->vx, s->vxn, s->vqkv, s->vatt, s->vmlp, s->vcos, s->vsin, s->x, s->xn, s->proj, s->q,
                     s->att, s->hb, s->state, s->gdn_tok, s->convw, s->tcos, s->tsin, s->scores, s->kt, s->row};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(s->pos);
    acts_free(&s->acts);
    qwen_stage_fn hook = s->hook;
    void *user = s->hook_user;
    int recurrent = s->gdn_recurrent;
    memset(s, 0, sizeof *s);
    s->hook = hook, s->hook_user = user, s->gdn_recurrent = recurrent;
}

static size_t zmax(size_t a, size_t b) { return a > b ? a : b; }

/* count x size bytes, counted in s->bytes; *ok = 0 if they cannot be had */
static void *qwen_alloc(QwenState *s, int *ok, size_t count, size_t size) {
    void *p = malloc(count ? count * size : 1);
    s->bytes += count * size;
    if (!p) *ok = 0;
    return p;
}

static int qwen_state_alloc(QwenState *s, const QwenConfig *c, int max_patches, int max_seq, int n_threads, int precise) {
    qwen_stage_fn hook = s->hook;
    void *user = s->hook_user;
    qwen_state_free(s);
    s->hook = hook, s->hook_user = user;
    s->max_patches = max_patches, s->max_seq = max_seq, s->n_threads = n_threads;
    size_t N = (size_t)(max_patches > 0 ? max_patches : 1), S = (size_t)max_seq, D = (size_t)c->v_dim;
    size_t Dl = (size_t)c->l_dim, hd = (size_t)c->l_head_dim, nh = (size_t)c->l_heads, nkv = (size_t)c->l_kv_heads;
    size_t conv = 2 * (size_t)c->g_k_heads * c->g_k_dim + (size_t)c->g_v_heads * c->g_v_dim;
    size_t vdim = (size_t)c->g_v_heads * c->g_v_dim;
    size_t pw = zmax(zmax(2 * nh * hd + 2 * nkv * hd, conv + vdim + 2 * (size_t)c->g_v_heads), 2 * (size_t)c->l_mlp);
    size_t maxlen = zmax(N, S);
    s->scores_stride = ATT_SCRATCH_ROWS * pad16(maxlen);
    int ok = 1;
#define QALLOC(p, n) ((p) = qwen_alloc(s, &ok, (n), sizeof *(p)))
    QALLOC(s->vx, N * D);
    QALLOC(s->vxn, N * D);
    QALLOC(s->vqkv, N * 3 * D);
    QALLOC(s->vatt, N * D);
    QALLOC(s->vmlp, N * zmax((size_t)c->v_mlp, D));
    QALLOC(s->vcos, N * (D / c->v_heads));
    QALLOC(s->vsin, N * (D / c->v_heads));
    QALLOC(s->x, S * Dl);
    QALLOC(s->xn, S * Dl);
    QALLOC(s->proj, S * pw);
    QALLOC(s->q, S * zmax(nh * hd, conv));
    QALLOC(s->att, S * zmax(nh * hd, vdim));
    QALLOC(s->hb, S * (size_t)c->l_mlp);
    QALLOC(s->state, (size_t)c->g_v_heads * c->g_k_dim * c->g_v_dim);
    QALLOC(s->gdn_tok, 3 * (size_t)c->g_v_heads * S + (size_t)c->g_v_heads);
    QALLOC(s->convw, conv * (size_t)c->g_conv);
    QALLOC(s->tcos, S * (size_t)(c->l_rot_dim / 2));
    QALLOC(s->tsin, S * (size_t)(c->l_rot_dim / 2));
    QALLOC(s->pos, 3 * S);
    QALLOC(s->scores, (size_t)n_threads * s->scores_stride);
    QALLOC(s->kt, 2 * zmax(D, nkv * hd) * pad16(maxlen));
    QALLOC(s->row, Dl);
#undef QALLOC
    size_t sizes[] = {N * (size_t)c->v_in, N * D, N * (size_t)c->v_mlp, S * Dl, S * (size_t)c->l_mlp, S * nh * hd, S * vdim};
    size_t ks[] = {(size_t)c->v_in, 4 * D, (size_t)c->v_mlp, Dl, (size_t)c->l_mlp, nh * hd, vdim};
    size_t cap = 0, max_k = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) cap = zmax(cap, sizes[i]), max_k = zmax(max_k, ks[i]);
    if (acts_alloc(&s->acts, cap, max_k, !precise, &s->bytes) != 0) ok = 0;
    if (!ok) {
        qwen_state_free(s);
        return QALIGN_ERR_NOMEM;
    }
    return QALIGN_OK;
}

/* ----------------------------------------------------------------------------------------
 * Small pieces. */

/* ACT2FN["gelu_pytorch_tanh"] */
static float gelu_tanh1(float x) { return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x))); }
/* (the same through 0.5 (1 + tanh u) = 1 / (1 + exp(-2u)), one exp, a few times cheaper than
 * tanhf: qalign.c gelu_tanh_fast, the family's kernels.h gelu_tanh; differs by float rounding) */
/* nn.GELU() (erf) */
static float gelu_erf1(float x) { return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f)); }
static float sigmoid1(float x) { return 1.0f / (1.0f + expf(-x)); }
/* F.softplus (beta 1, threshold 20) */
static float softplus1(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* Qwen3_5RMSNorm: output = self._norm(x.float()) * (1.0 + self.weight.float())
 * one row of C (out may equal x); the sum of squares in double */
static void rms1p_row(float *out, const float *x, const float *w, int C, float eps) {
    double ss = 0.0;
    for (int i = 0; i < C; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / C + (double)eps));
    for (int i = 0; i < C; i++) out[i] = (x[i] * r) * (1.0f + w[i]);
}

/* the same over rows: out, x (rows, C), row r at r*ld */
static void rmsnorm1p(float *out, int ldo, const float *x, int ldx, const float *w, int rows, int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < rows; t++) rms1p_row(out + (size_t)t * ldo, x + (size_t)t * ldx, w, C, eps);
}

/* rotate_half rotation of the first `dim` values of v: pairs (i, i + dim/2) */
static void rotate_pairs(float *v, const float *cosv, const float *sinv, int dim) {
    int h = dim / 2;
    for (int i = 0; i < h; i++) {
        float a = v[i], b = v[i + h];
        v[i] = a * cosv[i] - b * sinv[i];
        v[i + h] = b * cosv[i + h] + a * sinv[i + h];
    }
}

/* ----------------------------------------------------------------------------------------
 * Vision tower (Qwen3_5VisionModel), one image: patch rows (N, v_in) in the processor's
 * merge-block order for a grid of gh x gw patches -> out (N / merge^2, l_dim). */

/* get_vision_interpolation_indices_and_weights (bilinear, align_corners=True): one axis.
 *   src = index * (side - 1) / clamp(size - 1, min=1); taps floor, floor+1 (clamped);
 *   weights (1 - |src - tap|).clamp(min=0), in float32 as there */
static void interp_axis(int index, int size, int side, int taps[2], float w[2]) {
    float src = (float)index * (float)(side - 1) / (float)(size - 1 > 1 ? size - 1 : 1);
    float fl = floorf(src);
    for (int o = 0; o < 2; o++) {
        int t = (int)fl + o;
        taps[o] = t < 0 ? 0 : t > side - 1 ? side - 1 : t;
        float d = fabsf(src - fl - (float)o), v = 1.0f - d;
        w[o] = v > 0.0f ? v : 0.0f;
    }
}

/* patch i of a merge-block ordered grid -> (row, col) */
static void block_order_rc(int i, int gw, int m, int *row, int *col) {
    int in_col = i % m, in_row = (i / m) % m, bw = gw / m;
    int bcol = (i / (m * m)) % bw, brow = i / (m * m * bw);
    *row = brow * m + in_row, *col = bcol * m + in_col;
}

static void qwen_vision(const Qwen35 *q, QwenState *s, const float *patches, int gh, int gw, float *out) {
    const QwenConfig *c = &q->c;
    int D = c->v_dim, H = c->v_heads, hd = D / H, m = c->v_merge, N = gh * gw, side = c->v_side;
    int vit_bf16 = s->acts.bf16_fast && c->wtype != DT_MF32; /* not f32, not --precise */
    /* the attention with bf16 products: only for 8- and 4-bit files (not --precise), whose
     * tests bound the level logits loosely (on the bf16 tiny model the AVX-512 one moved them
     * past its tolerance, tests/test_qwen.py test_weight_types_stay_close) */
    int att_bf16 = s->acts.bf16_fast && c->wtype != DT_MF32 && c->wtype != DT_MBF16;
    const Kernels *kern = kernels_cpu();
    double t = now_seconds();
    /* hidden_states = self.proj(hidden_states.view(-1, C, T, P, P)).view(-1, self.embed_dim) */
    matmul(s->vx, &s->acts, patches, N, &q->patch, q->patch_b, EPI_STORE);
    /* pos_embeds = (self.pos_embed(interp_indices) * interp_weights[:, :, None]).sum(1)
     * hidden_states = hidden_states + pos_embeds */
    /* position_embeddings = self.rotary_pos_emb(hidden_states, position_ids): per patch
     * freqs = [row * inv_freq, col * inv_freq] (hd/4 each), cos/sin of cat(freqs, freqs) */
    int nf = hd / 4;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        int row, col, ht[2], wt[2];
        float hw[2], ww[2];
        block_order_rc(i, gw, m, &row, &col);
        interp_axis(row, gh, side, ht, hw);
        interp_axis(col, gw, side, wt, ww);
        float *x = s->vx + (size_t)i * D;
        for (int a = 0; a < 2; a++)
            for (int b = 0; b < 2; b++) {
                const float *p = q->pos + ((size_t)ht[a] * side + wt[b]) * D;
                float wgt = hw[a] * ww[b];
                for (int d = 0; d < D; d++) x[d] += p[d] * wgt;
            }
        float *cs = s->vcos + (size_t)i * hd, *sn = s->vsin + (size_t)i * hd;
        for (int j = 0; j < nf; j++) {
            float inv = 1.0f / powf(c->v_rope_theta, (float)(2 * j) / (float)(hd / 2));
            float fr = (float)row * inv, fc = (float)col * inv;
            cs[j] = cs[j + 2 * nf] = cosf(fr), sn[j] = sn[j + 2 * nf] = sinf(fr);
            cs[j + nf] = cs[j + 3 * nf] = cosf(fc), sn[j + nf] = sn[j + 3 * nf] = sinf(fc);
        }
    }
    qwen_tick(s, QS_PATCH, &t);
    qwen_stage(s, "vit_embed", s->vx, N, D);
    t = now_seconds();
    for (int l = 0; l < c->v_layers; l++) {
        const QwenVisionLayer *L = &q->vl[l];
        /* hidden_states = hidden_states + self.attn(self.norm1(hidden_states), ...) */
        layernorm(s->vxn, s->vx, L->ln1_w, L->ln1_b, N, D, c->v_eps);
        /* q, k, v = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1)... */
        matmul(s->vqkv, &s->acts, s->vxn, N, &L->qkv, L->qkv_b, EPI_STORE);
        /* apply_rotary_pos_emb_vision(q, k, cos, sin) */
#pragma omp parallel for schedule(static)
        for (int i = 0; i < N; i++)
            for (int h = 0; h < H; h++) {
                float *row = s->vqkv + (size_t)i * 3 * D;
                rotate_pairs(row + h * hd, s->vcos + (size_t)i * hd, s->vsin + (size_t)i * hd, hd);
                rotate_pairs(row + D + h * hd, s->vcos + (size_t)i * hd, s->vsin + (size_t)i * hd, hd);
            }
        /* eager_attention_forward(..., attention_mask=None, is_causal=False) within the image
         * (bf16 products where allowed: on a matrix unit, AMX, kernels/amx_attention.h; else
         * with vector instructions, AVX512-BF16: on Zen 5, 3072 patches, a layer 0.12 s of one
         * thread's CPU against 0.22 s in f32 (bench/kernels.c); on Sapphire Rapids 0.37 s
         * against 0.40; else f32, as mPLUG-Owl2's ViT, qalign.c attention_vit) */
        if (!(att_bf16 && kern->attention_bf16_unit &&
              kern->attention_bf16_unit(s->vatt, s->vqkv, 3 * D, s->vqkv + D, s->vqkv + 2 * D, 3 * D, N, N, H, H, hd, s->scores,
                                        s->scores_stride, s->kt)) &&
            !(att_bf16 && kern->attention_bf16 &&
              kern->attention_bf16(s->vatt, s->vqkv, 3 * D, s->vqkv + D, s->vqkv + 2 * D, 3 * D, N, N, H, H, hd, s->scores,
                                   s->scores_stride, s->kt)))
            attention(s->vatt, s->vqkv, 3 * D, s->vqkv + D, s->vqkv + 2 * D, 3 * D, N, N, H, H, hd, 0, 0, s->scores,
                      s->scores_stride, s->kt);
        /* attn_output = self.proj(attn_output) */
        matmul(s->vx, &s->acts, s->vatt, N, &L->proj, L->proj_b, EPI_ADD);
        qwen_tick(s, QS_VIT_ATT, &t);
        /* hidden_states = hidden_states + self.mlp(self.norm2(hidden_states))
         * mlp: linear_fc2(act_fn(linear_fc1(x))), act gelu_pytorch_tanh */
        layernorm(s->vxn, s->vx, L->ln2_w, L->ln2_b, N, D, c->v_eps);
        matmul(s->vmlp, &s->acts, s->vxn, N, &L->fc1, L->fc1_b, EPI_STORE);
        size_t nm = (size_t)N * c->v_mlp;
        if (vit_bf16) /* the tanh rewritten through one exp (kernels.h gelu_tanh), by rows */
#pragma omp parallel for schedule(static)
            for (int i = 0; i < N; i++) gelu_tanh_fast(s->vmlp + (size_t)i * c->v_mlp, (size_t)c->v_mlp);
        else
#pragma omp parallel for schedule(static)
            for (size_t i = 0; i < nm; i++) s->vmlp[i] = gelu_tanh1(s->vmlp[i]);
        matmul(s->vx, &s->acts, s->vmlp, N, &L->fc2, L->fc2_b, EPI_ADD);
        qwen_tick(s, QS_VIT_MLP, &t);
        char name[32];
        snprintf(name, sizeof name, "vit_block%d", l);
        qwen_stage(s, name, s->vx, N, D);
        t = now_seconds();
    }
    /* Qwen3_5VisionPatchMerger: x = self.norm(x).view(-1, self.hidden_size)
     *                           x = self.linear_fc2(self.act_fn(self.linear_fc1(x)))  (nn.GELU) */
    int M = N / (m * m), D4 = D * m * m;
    layernorm(s->vxn, s->vx, q->mln_w, q->mln_b, N, D, 1e-6f);
    matmul(s->vmlp, &s->acts, s->vxn, M, &q->mfc1, q->mfc1_b, EPI_STORE);
    size_t n4 = (size_t)M * D4;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n4; i++) s->vmlp[i] = gelu_erf1(s->vmlp[i]);
    matmul(out, &s->acts, s->vmlp, M, &q->mfc2, q->mfc2_b, EPI_STORE);
    qwen_tick(s, QS_MERGER, &t);
}

/* ----------------------------------------------------------------------------------------
 * Positions: Qwen3_5Model.get_rope_index for one sequence. Text rows ramp; the image's
 * merged grid gets (t, h, w) = (cur, cur + row, cur + col); after it text resumes at
 * cur + max(h, w) / merge. pos (3, S). grids[k] = (gh, gw) of the k-th image. */

static int qwen_positions(const QwenConfig *c, const int *ids, int S, const int (*grids)[2], int n_images, int *pos) {
    int cur = 0, img = 0, m = c->v_merge;
    for (int i = 0; i < S;) {
        if (ids[i] != c->image_token) {
            pos[i] = pos[S + i] = pos[2 * S + i] = cur++;
            i++;
            continue;
        }
        if (img >= n_images) return -1;
        int lh = grids[img][0] / m, lw = grids[img][1] / m;
        /* one group of image tokens: llm_grid_t x llm_grid_h x llm_grid_w */
        for (int r = 0; r < lh; r++)
            for (int q = 0; q < lw; q++, i++) {
                if (i >= S || ids[i] != c->image_token) return -1;
                pos[i] = cur, pos[S + i] = cur + r, pos[2 * S + i] = cur + q;
            }
        cur += (grids[img][0] > grids[img][1] ? grids[img][0] : grids[img][1]) / m;
        img++;
        /* two images back to back form one group upstream; keep them apart only if the
         * next token is not an image token (the chat template puts vision_end between) */
    }
    return img == n_images ? 0 : -1;
}

/* Qwen3_5TextRotaryEmbedding + recomposition_frequencies: per row, frequency j of the
 * rot_dim/2 takes its position from t, h or w: interleaved, j % 3 == 1 (j < 3 mrope_h) h,
 * j % 3 == 2 (j < 3 mrope_w) w, else t. cos/sin (S, rot_dim/2) (the halves are equal). */
static void qwen_rope_tables(const QwenConfig *c, const int *pos, int S, float *cosb, float *sinb) {
    int half = c->l_rot_dim / 2;
    for (int j = 0; j < half; j++) {
        /* inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)) */
        float inv = 1.0f / powf(c->l_rope_theta, (float)(2 * j) / (float)c->l_rot_dim);
        int axis = (j % 3 == 1 && j < 3 * c->mrope[1]) ? 1 : (j % 3 == 2 && j < 3 * c->mrope[2]) ? 2 : 0;
        for (int t = 0; t < S; t++) {
            float f = (float)pos[axis * S + t] * inv;
            cosb[(size_t)t * half + j] = cosf(f);
            sinb[(size_t)t * half + j] = sinf(f);
        }
    }
}

/* apply_rotary_pos_emb on the first rot_dim values of a head (cos/sin halves equal) */
static void rope_partial(float *v, const float *cosb, const float *sinb, int rot) {
    int h = rot / 2;
    for (int i = 0; i < h; i++) {
        float a = v[i], b = v[i + h];
        v[i] = a * cosb[i] - b * sinb[i];
        v[i + h] = b * cosb[i] + a * sinb[i];
    }
}

/* ----------------------------------------------------------------------------------------
 * Decoder layers. x (S, l_dim) the residual stream; each mixer reads xn and adds its output
 * to x. */

/* torch_recurrent_gated_delta_rule for one token of one value head, on its state st (dk, dv):
 *   state *= exp(g);  kv_mem = k^T state;  delta = (v - kv_mem) * beta;  state += k delta^T;
 *   out = q^T state      (qwen_gdn_recurrent's token, and a decode step's) */
static void qwen_delta_step(float *st, const float *qv, const float *kv, const float *vv, float beta, float decay, int dk,
                            int dv, float *out) {
    float acc[512], delta[512];
    for (int j = 0; j < dv; j++) acc[j] = 0.0f;
    for (int i = 0; i < dk; i++) {
        float *sr = st + (size_t)i * dv, ki = kv[i];
        for (int j = 0; j < dv; j++) {
            float x = sr[j] * decay;
            sr[j] = x;
            acc[j] += x * ki;
        }
    }
    for (int j = 0; j < dv; j++) delta[j] = (vv[j] - acc[j]) * beta;
    for (int j = 0; j < dv; j++) acc[j] = 0.0f;
    for (int i = 0; i < dk; i++) {
        float *sr = st + (size_t)i * dv, ki = kv[i], qi = qv[i];
        for (int j = 0; j < dv; j++) {
            float x = sr[j] + ki * delta[j];
            sr[j] = x;
            acc[j] += x * qi;
        }
    }
    memcpy(out, acc, (size_t)dv * sizeof(float));
}

/* The delta rule, recurrent form (torch_recurrent_gated_delta_rule), token by token in
 * float32 with the state in float32: s->q (S, conv) the conv output (q | k | v per row, q
 * and k normalised), s->proj (S, W) for b and a -> s->att (S, nv dv); the state of each
 * head left in s->state (a decode step continues from it). The reference of the form by
 * columns below, which runs (tests/test_qwen.py holds both to the oracle). Its chunked form
 * (HF's torch_chunk_gated_delta_rule, WY representation, chunks of 64 through an f32
 * matmul kernel) was measured here too: 1.4x the CPU time of the recurrent one for dk = dv
 * = 128 (the chunk's products add flops that the L1-resident column blocks do not need). */
static void qwen_gdn_recurrent(const QwenConfig *c, QwenState *s, const QwenLayer *L, int S) {
    int nk = c->g_k_heads, nv = c->g_v_heads, dk = c->g_k_dim, dv = c->g_v_dim;
    int conv = 2 * nk * dk + nv * dv, W = conv + nv * dv + 2 * nv;
    /* beta = b.sigmoid();  g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)
     * torch_recurrent_gated_delta_rule: per value head h (key head h / (nv / nk)), per token:
     *   state *= exp(g_t);  kv_mem = k_t^T state;  delta = (v_t - kv_mem) * beta_t;
     *   state += k_t delta^T;  out_t = q_t^T state */
    int rep = nv / nk;
#pragma omp parallel for schedule(dynamic)
    for (int h = 0; h < nv; h++) {
        float *st = s->state + (size_t)h * dk * dv;
        memset(st, 0, (size_t)dk * dv * sizeof(float));
        float A = expf(L->A_log[h]);
        int kh = h / rep;
        /* the token's q, k, v in local arrays (the step keeps its two dv-vectors in its own),
         * so that the compiler sees no aliasing and vectorises each row of the state over j
         * (the same operations per element, in the same order: bit-identical) */
        float qv[512], kv[512], vv[512];
        for (int t = 0; t < S; t++) {
            const float *row = s->proj + (size_t)t * W;
            memcpy(qv, s->q + (size_t)t * conv + (size_t)kh * dk, (size_t)dk * sizeof(float));
            memcpy(kv, s->q + (size_t)t * conv + (size_t)(nk + kh) * dk, (size_t)dk * sizeof(float));
            memcpy(vv, s->q + (size_t)t * conv + (size_t)2 * nk * dk + (size_t)h * dv, (size_t)dv * sizeof(float));
            float beta = sigmoid1(row[conv + nv * dv + h]);
            float g = -A * softplus1(row[conv + nv * dv + nv + h] + L->dt_bias[h]);
            qwen_delta_step(st, qv, kv, vv, beta, expf(g), dk, dv, s->att + (size_t)t * nv * dv + (size_t)h * dv);
        }
    }
}

/* The same recurrence, 16 columns of the state at a time. A column j of a head's state
 * (dk values) evolves on its own: kv_mem[j] = k . S[:, j], delta[j] = (v[j] - kv_mem[j]) beta,
 * S[:, j] += k delta[j], out[j] = q . S[:, j]; so a block of 16 columns (dk x 16 floats, 8 KB
 * for dk 128) runs through all the tokens in L1, where the whole state (64 KB a head) would
 * stream from L2 twice per token. Per token, reading the block once for both dot products:
 *   a_k = k^T S, a_q = q^T S                       (S before the token's decay)
 *   kv_mem = exp(g) a_k;  delta = (v - kv_mem) beta;  out = exp(g) a_q + (q . k) delta
 *   S = exp(g) S + k delta^T
 * (out = q^T (exp(g) S + k delta^T) expanded: the same value, rounded in another order) */
static void qwen_gdn_columns(const QwenConfig *c, QwenState *s, const QwenLayer *L, int S) {
    int nk = c->g_k_heads, nv = c->g_v_heads, dk = c->g_k_dim, dv = c->g_v_dim;
    int conv = 2 * nk * dk + nv * dv, W = conv + nv * dv + 2 * nv, rep = nv / nk, nb = (dv + 15) / 16;
    /* per head and token: decay = exp(g), beta = sigmoid(b), q . k */
    float *decay = s->gdn_tok, *beta = decay + (size_t)nv * S, *qk = beta + (size_t)nv * S;
    float *A = qk + (size_t)nv * S; /* exp(A_log), once per head (gdn_tok holds 3 nv S + nv floats) */
    for (int h = 0; h < nv; h++) A[h] = expf(L->A_log[h]);
#pragma omp parallel for schedule(static)
    for (int t = 0; t < S; t++) {
        const float *row = s->proj + (size_t)t * W, *cv = s->q + (size_t)t * conv;
        for (int h = 0; h < nv; h++) {
            const float *qv = cv + (size_t)(h / rep) * dk, *kv = cv + (size_t)(nk + h / rep) * dk;
            float dot = 0.0f;
            for (int i = 0; i < dk; i++) dot += qv[i] * kv[i];
            beta[(size_t)h * S + t] = sigmoid1(row[conv + nv * dv + h]);
            decay[(size_t)h * S + t] = expf(-A[h] * softplus1(row[conv + nv * dv + nv + h] + L->dt_bias[h]));
            qk[(size_t)h * S + t] = dot;
        }
    }
#pragma omp parallel for schedule(dynamic)
    for (int item = 0; item < nv * nb; item++) {
        int h = item / nb, j0 = (item % nb) * 16, w = dv - j0 < 16 ? dv - j0 : 16, kh = h / rep;
        float st[512 * 16];
        memset(st, 0, (size_t)dk * 16 * sizeof(float));
        delta_rule16(s->att + (size_t)h * dv + j0, nv * dv, st, s->q + (size_t)kh * dk, s->q + (size_t)(nk + kh) * dk, conv,
                     s->q + (size_t)2 * nk * dk + (size_t)h * dv + j0, conv, decay + (size_t)h * S, beta + (size_t)h * S,
                     qk + (size_t)h * S, S, dk, w);
        float *fin = s->state + (size_t)h * dk * dv; /* the final state, for a decode step */
        for (int i = 0; i < dk; i++) memcpy(fin + (size_t)i * dv + j0, st + (size_t)i * 16, (size_t)w * sizeof(float));
    }
}

/* Qwen3_5GatedDeltaNet.forward (no cache; the delta rule by state columns, qwen_gdn_columns,
 * or as written where s->gdn_recurrent asks for it) */
static void qwen_gdn(const Qwen35 *q, QwenState *s, const QwenLayer *L, int S) {
    const QwenConfig *c = &q->c;
    int nk = c->g_k_heads, nv = c->g_v_heads, dk = c->g_k_dim, dv = c->g_v_dim, K = c->g_conv;
    int conv = 2 * nk * dk + nv * dv, W = conv + nv * dv + 2 * nv;
    /* mixed_qkv = self.in_proj_qkv(hidden_states); z = self.in_proj_z(...); b = self.in_proj_b(...);
     * a = self.in_proj_a(...)   (one matmul: rows qkv | z | b | a) */
    matmul(s->proj, &s->acts, s->xn, S, &L->in_proj, NULL, EPI_STORE);
    /* mixed_qkv = causal_conv1d_fn(mixed_qkv, self.conv1d.weight.squeeze(1), None, activation="silu")
     *   = silu(F.conv1d(x, w, padding=K-1, groups=conv_dim)[:, :, :seq_len]) */
    float *wt = s->convw; /* the weight by tap, wt[j][ch], so that a tap is one pass over the channels */
    for (int ch = 0; ch < conv; ch++)
        for (int j = 0; j < K; j++) wt[(size_t)j * conv + ch] = L->conv[(size_t)ch * K + j];
#pragma omp parallel for schedule(static)
    for (int t = 0; t < S; t++) /* tap j reads row t - (K - 1) + j (zero before the start): o[ch] =
                                 * silu(sum_j wt[j][ch] in[t - (K-1) + j][ch]) (qalign.c conv_silu_row) */
        conv_silu_row(s->q + (size_t)t * conv, s->proj + (size_t)t * W, (size_t)W, wt, conv, K, t < K - 1 ? K - 1 - t : 0);
    /* query = l2norm(query), key = l2norm(key) (use_qk_l2norm_in_kernel), query *= dk ** -0.5 */
    float qscale = 1.0f / sqrtf((float)dk);
#pragma omp parallel for schedule(static)
    for (int t = 0; t < S; t++)
        for (int h = 0; h < 2 * nk; h++) {
            float *v = s->q + (size_t)t * conv + (size_t)h * dk;
            double ss = 0.0;
            for (int i = 0; i < dk; i++) ss += (double)v[i] * v[i];
            float r = (float)(1.0 / sqrt(ss + 1e-6));
            if (h < nk) r *= qscale;
            for (int i = 0; i < dk; i++) v[i] *= r;
        }
    /* beta = b.sigmoid(); g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)
     * core_attn_out, last_recurrent_state = self.chunk_gated_delta_rule(query, key, value, g=g,
     *     beta=beta, initial_state=None, use_qk_l2norm_in_kernel=True)   (normalised above) */
    if (s->gdn_recurrent) qwen_gdn_recurrent(c, s, L, S);
    else qwen_gdn_columns(c, s, L, S);
    /* core_attn_out = self.norm(core_attn_out, z)   (Qwen3_5RMSNormGated:
     *   weight * (x * rsqrt(mean(x^2) + eps)) * silu(z)) */
#pragma omp parallel for schedule(static)
    for (int t = 0; t < S; t++)
        for (int h = 0; h < nv; h++) {
            float *o = s->att + (size_t)t * nv * dv + (size_t)h * dv;
            const float *z = s->proj + (size_t)t * W + conv + (size_t)h * dv;
            double ss = 0.0;
            for (int j = 0; j < dv; j++) ss += (double)o[j] * o[j];
            float r = (float)(1.0 / sqrt(ss / dv + (double)c->l_eps));
            float zt[512]; /* silu(z) * (weight * (x * r)) by the family's SiLU (vectorised exp) */
            for (int j = 0; j < dv; j++) o[j] = L->gnorm[j] * (o[j] * r);
            memcpy(zt, z, (size_t)dv * sizeof(float));
            silu_mul(zt, o, (size_t)dv);
            memcpy(o, zt, (size_t)dv * sizeof(float));
        }
    /* output = self.out_proj(core_attn_out)   (added to the residual) */
    matmul(s->x, &s->acts, s->att, S, &L->out, NULL, EPI_ADD);
}

/* Qwen3_5Attention.forward with the causal mask */
static void qwen_attention(const Qwen35 *q, QwenState *s, const QwenLayer *L, int S) {
    const QwenConfig *c = &q->c;
    int nh = c->l_heads, nkv = c->l_kv_heads, hd = c->l_head_dim, rot = c->l_rot_dim, half = rot / 2;
    int W = 2 * nh * hd + 2 * nkv * hd;
    /* query_states, gate = torch.chunk(self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim * 2), 2, dim=-1)
     * key_states = self.k_proj(...); value_states = self.v_proj(...)   (one matmul) */
    matmul(s->proj, &s->acts, s->xn, S, &L->qkv, NULL, EPI_STORE);
    /* query_states = self.q_norm(query_states); key_states = self.k_norm(key_states)
     * query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin) */
#pragma omp parallel for schedule(static)
    for (int t = 0; t < S; t++) {
        float *row = s->proj + (size_t)t * W, *qo = s->q + (size_t)t * nh * hd;
        const float *cs = s->tcos + (size_t)t * half, *sn = s->tsin + (size_t)t * half;
        for (int h = 0; h < nh; h++) {
            rms1p_row(qo + h * hd, row + (size_t)h * 2 * hd, L->q_norm, hd, c->l_eps);
            rope_partial(qo + h * hd, cs, sn, rot);
        }
        for (int h = 0; h < nkv; h++) {
            float *k = row + 2 * nh * hd + h * hd;
            rms1p_row(k, k, L->k_norm, hd, c->l_eps);
            rope_partial(k, cs, sn, rot);
        }
    }
    /* attn_output = eager_attention_forward(q, k, v, causal mask, scaling = head_dim ** -0.5) (GQA) */
    attention(s->att, s->q, nh * hd, s->proj + 2 * nh * hd, s->proj + 2 * nh * hd + nkv * hd, W, S, S, nh, nkv, hd, 1, 0,
              s->scores, s->scores_stride, s->kt);
    /* attn_output = attn_output * torch.sigmoid(gate) */
#pragma omp parallel for schedule(static)
    for (int t = 0; t < S; t++)
        for (int h = 0; h < nh; h++) {
            float *o = s->att + (size_t)t * nh * hd + h * hd;
            const float *g = s->proj + (size_t)t * W + (size_t)h * 2 * hd + hd;
            sigmoid_mul(o, g, (size_t)hd); /* the family's (vectorised exp) */
        }
    /* attn_output = self.o_proj(attn_output) */
    matmul(s->x, &s->acts, s->att, S, &L->o, NULL, EPI_ADD);
}

static void qwen_gen_keep(const Qwen35 *q, QwenState *s, int l, int S);

/* Qwen3_5DecoderLayer.forward */
static void qwen_layer(const Qwen35 *q, QwenState *s, int l, int S) {
    const QwenConfig *c = &q->c;
    const QwenLayer *L = &q->l[l];
    int Dl = c->l_dim, F = c->l_mlp;
    double t = now_seconds();
    /* hidden_states = self.input_layernorm(hidden_states) */
    rmsnorm1p(s->xn, Dl, s->x, Dl, L->in_norm, S, Dl, c->l_eps);
    /* hidden_states = residual + (self.linear_attn(...) | self.self_attn(...)) */
    if (c->full[l]) qwen_attention(q, s, L, S);
    else qwen_gdn(q, s, L, S);
    if (s->gen) qwen_gen_keep(q, s, l, S); /* --ask: the layer's cache (the answers section, below) */
    qwen_tick(s, c->full[l] ? QS_ATT : QS_GDN, &t);
    /* hidden_states = residual + self.mlp(self.post_attention_layernorm(hidden_states))
     * mlp: down_proj(act_fn(gate_proj(x)) * up_proj(x)) */
    rmsnorm1p(s->xn, Dl, s->x, Dl, L->post_norm, S, Dl, c->l_eps);
    matmul(s->proj, &s->acts, s->xn, S, &L->gate_up, NULL, EPI_STORE);
#pragma omp parallel for schedule(static)
    for (int t = 0; t < S; t++) {
        const float *g = s->proj + (size_t)t * 2 * F;
        float *h = s->hb + (size_t)t * F;
        memcpy(h, g, (size_t)F * sizeof(float));
        silu_mul(h, g + F, (size_t)F); /* the family's SiLU (vectorised exp) */
    }
    matmul(s->x, &s->acts, s->hb, S, &L->down, NULL, EPI_ADD);
    qwen_tick(s, QS_MLP, &t);
}

/* ----------------------------------------------------------------------------------------
 * The decoder on one prompt: ids (S) with n_images groups of image tokens, tokens[k] the
 * visual tokens of image k (its merged grid, grids[k] = (gh, gw) patches) -> the logits of
 * n_levels token ids at the last position. */

static int qwen_check_prompt(const QwenConfig *c, const int *ids, int S, const int (*grids)[2], int n_images, char *err,
                             size_t errlen) {
    int m2 = c->v_merge * c->v_merge, n_img_tokens = 0, want = 0;
    if (S < 1) return fail_with(err, errlen, QALIGN_ERR_ARG, "empty prompt");
    for (int i = 0; i < S; i++) {
        if (ids[i] < 0 || ids[i] >= c->l_vocab) return fail_with(err, errlen, QALIGN_ERR_ARG, "token id %d out of range", ids[i]);
        n_img_tokens += ids[i] == c->image_token;
    }
    for (int k = 0; k < n_images; k++) {
        if (grids[k][0] <= 0 || grids[k][1] <= 0 || grids[k][0] % c->v_merge || grids[k][1] % c->v_merge)
            return fail_with(err, errlen, QALIGN_ERR_ARG, "image %d: patch grid %dx%d is not a multiple of %d", k, grids[k][0],
                             grids[k][1], c->v_merge);
        want += grids[k][0] * grids[k][1] / m2;
    }
    if (want != n_img_tokens)
        return fail_with(err, errlen, QALIGN_ERR_ARG, "the prompt has %d image tokens, the images give %d", n_img_tokens, want);
    return QALIGN_OK;
}

static int qwen_decode(const Qwen35 *q, QwenState *s, const int *ids, int S, const float *const *tokens,
                       const int (*grids)[2], int n_images, const int *level_ids, int n_levels, float *logits, char *err,
                       size_t errlen) {
    const QwenConfig *c = &q->c;
    int Dl = c->l_dim, m2 = c->v_merge * c->v_merge;
    int st = qwen_check_prompt(c, ids, S, grids, n_images, err, errlen);
    if (st) return st;
    if (s->max_seq < S) {
        st = qwen_state_alloc(s, c, s->max_patches, S, s->n_threads ? s->n_threads : 1, s->acts.bf16_fast ? 0 : 1);
        if (st) return fail_with(err, errlen, st, "out of memory");
    }
    /* inputs_embeds = self.get_input_embeddings()(input_ids)
     * inputs_embeds = inputs_embeds.masked_scatter(image_mask, image_embeds) */
    int row = 0;
    for (int i = 0; i < S; i++)
        if (ids[i] != c->image_token) matrix_row(s->x + (size_t)i * Dl, &q->embed, ids[i]);
    for (int k = 0; k < n_images; k++) {
        while (row < S && ids[row] != c->image_token) row++;
        int n = grids[k][0] * grids[k][1] / m2;
        memcpy(s->x + (size_t)row * Dl, tokens[k], (size_t)n * Dl * sizeof(float));
        row += n;
    }
    qwen_stage(s, "embeds", s->x, S, Dl);
    if (qwen_positions(c, ids, S, grids, n_images, s->pos) != 0)
        return fail_with(err, errlen, QALIGN_ERR_ARG, "image tokens do not match the images' grids");
    qwen_rope_tables(c, s->pos, S, s->tcos, s->tsin);
    for (int l = 0; l < c->l_layers; l++) {
        qwen_layer(q, s, l, S);
        char name[32];
        snprintf(name, sizeof name, "layer%d", l);
        qwen_stage(s, name, s->x, S, Dl);
    }
    /* hidden_states = self.norm(hidden_states); logits = self.lm_head(hidden_states[:, -1]) */
    float *last = s->xn;
    double t = now_seconds();
    rmsnorm1p(last, Dl, s->x + (size_t)(S - 1) * Dl, Dl, q->norm, 1, Dl, c->l_eps);
    qwen_stage(s, "final_norm", last, 1, Dl);
    for (int i = 0; i < n_levels; i++) {
        if (level_ids[i] < 0 || level_ids[i] >= c->l_vocab) return fail_with(err, errlen, QALIGN_ERR_ARG, "level id out of range");
        matrix_row(s->row, &q->head, level_ids[i]);
        double acc = 0.0;
        for (int d = 0; d < Dl; d++) acc += (double)s->row[d] * last[d];
        logits[i] = (float)acc;
    }
    qwen_tick(s, QS_HEAD, &t);
    qwen_stage(s, "level_logits", logits, 1, n_levels);
    return QALIGN_OK;
}

/* The whole model: images as patch rows (gh*gw, v_in) -> vision tower -> qwen_decode
 * (tests/test_qwen.c runs it on the oracle's pixels). */
COMMON_HELPER static int qwen_forward(const Qwen35 *q, QwenState *s, const int *ids, int S, const float *const *patches,
                        const int (*grids)[2], int n_images, const int *level_ids, int n_levels, float *logits,
                        char *err, size_t errlen) {
    const QwenConfig *c = &q->c;
    int st = qwen_check_prompt(c, ids, S, grids, n_images, err, errlen), m2 = c->v_merge * c->v_merge;
    if (st) return st;
    float *tokens[QALIGN_MAX_MARKERS] = {0};
    if (n_images > QALIGN_MAX_MARKERS) return fail_with(err, errlen, QALIGN_ERR_ARG, "too many images");
    for (int k = 0; k < n_images && !st; k++) {
        int n = grids[k][0] * grids[k][1];
        if (s->max_patches < n && qwen_state_alloc(s, c, n, s->max_seq, s->n_threads ? s->n_threads : 1, s->acts.bf16_fast ? 0 : 1))
            st = fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory");
        else if (!(tokens[k] = malloc((size_t)(n / m2) * c->l_dim * sizeof(float))))
            st = fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory");
        else {
            qwen_vision(q, s, patches[k], grids[k][0], grids[k][1], tokens[k]);
            qwen_stage(s, "vit_merger", tokens[k], n / m2, c->l_dim);
        }
    }
    if (!st) st = qwen_decode(q, s, ids, S, (const float *const *)tokens, grids, n_images, level_ids, n_levels, logits, err, errlen);
    for (int k = 0; k < n_images; k++) free(tokens[k]);
    return st;
}

/* ----------------------------------------------------------------------------------------
 * Loading: the header, then every tensor bound by name from the table (read_table has
 * walked it to the end of the file). */

static int qwen_read_config(Loader *ld, QwenConfig *c, const uint8_t *h) {
#define U(i) rd_u32(h + 4 * (i))
#define F(i) rd_f32(h + 4 * (i))
    c->wtype = (int)U(Q_WTYPE);
    c->v_dim = (int)U(Q_V_DIM), c->v_layers = (int)U(Q_V_LAYERS), c->v_heads = (int)U(Q_V_HEADS);
    c->v_mlp = (int)U(Q_V_MLP), c->v_patch = (int)U(Q_V_PATCH), c->v_temporal = (int)U(Q_V_TEMPORAL);
    c->v_merge = (int)U(Q_V_MERGE), c->v_npos = (int)U(Q_V_NPOS), c->v_eps = F(Q_V_EPS);
    c->v_rope_theta = F(Q_V_ROPE_THETA);
    c->l_dim = (int)U(Q_L_DIM), c->l_layers = (int)U(Q_L_LAYERS), c->l_heads = (int)U(Q_L_HEADS);
    c->l_kv_heads = (int)U(Q_L_KV_HEADS), c->l_head_dim = (int)U(Q_L_HEAD_DIM), c->l_mlp = (int)U(Q_L_MLP);
    c->l_vocab = (int)U(Q_L_VOCAB), c->l_eps = F(Q_L_EPS), c->l_rope_theta = F(Q_L_ROPE_THETA);
    c->l_rot_dim = (int)U(Q_L_ROT_DIM);
    c->mrope[0] = (int)U(Q_MROPE_T), c->mrope[1] = (int)U(Q_MROPE_H), c->mrope[2] = (int)U(Q_MROPE_W);
    c->g_k_heads = (int)U(Q_G_K_HEADS), c->g_v_heads = (int)U(Q_G_V_HEADS), c->g_k_dim = (int)U(Q_G_K_DIM);
    c->g_v_dim = (int)U(Q_G_V_DIM), c->g_conv = (int)U(Q_G_CONV), c->tied = (int)U(Q_TIED);
    c->image_token = (int)U(Q_IMAGE_TOKEN), c->video_token = (int)U(Q_VIDEO_TOKEN);
    c->vision_start = (int)U(Q_VISION_START), c->vision_end = (int)U(Q_VISION_END);
    c->min_pixels = (int)U(Q_MIN_PIXELS), c->max_pixels = (int)U(Q_MAX_PIXELS), c->think_open = (int)U(Q_THINK_OPEN);
    for (int i = 0; i < 3; i++) c->mean[i] = F(Q_MEAN_R + i), c->std[i] = F(Q_STD_R + i);
    int interleaved = (int)U(Q_MROPE_INTERLEAVED);
    const struct { const char *name; int v; } dims[] = {
        {"v_dim", c->v_dim}, {"v_layers", c->v_layers}, {"v_heads", c->v_heads}, {"v_mlp", c->v_mlp},
        {"v_patch", c->v_patch}, {"v_temporal", c->v_temporal}, {"v_merge", c->v_merge}, {"v_npos", c->v_npos},
        {"l_dim", c->l_dim}, {"l_layers", c->l_layers}, {"l_heads", c->l_heads}, {"l_kv_heads", c->l_kv_heads},
        {"l_head_dim", c->l_head_dim}, {"l_mlp", c->l_mlp}, {"l_vocab", c->l_vocab}, {"l_rot_dim", c->l_rot_dim},
        {"g_k_heads", c->g_k_heads}, {"g_v_heads", c->g_v_heads}, {"g_k_dim", c->g_k_dim}, {"g_v_dim", c->g_v_dim},
        {"g_conv", c->g_conv},
    };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i].v <= 0 || dims[i].v > (1 << 24))
            return load_fail(ld, QALIGN_ERR_FORMAT, "header field %s = %d is out of range;" HINT_EXPORT, dims[i].name, dims[i].v);
    if (c->l_layers > QWEN_MAX_LAYERS || c->v_patch > 64 || c->v_temporal > 4 || c->v_merge > 8 || c->g_conv > 16 ||
        c->g_v_dim > 512 || c->g_k_dim > 512)
        return load_fail(ld, QALIGN_ERR_FORMAT, "header dimensions out of range;" HINT_EXPORT);
    for (c->v_side = 1; c->v_side * c->v_side < c->v_npos; c->v_side++) {}
    c->v_in = 3 * c->v_temporal * c->v_patch * c->v_patch;
    if (c->v_side * c->v_side != c->v_npos || c->v_dim % c->v_heads || (c->v_dim / c->v_heads) % 4 ||
        c->l_heads % c->l_kv_heads || c->g_v_heads % c->g_k_heads || c->l_rot_dim % 2 || c->l_rot_dim > c->l_head_dim ||
        c->mrope[0] + c->mrope[1] + c->mrope[2] != c->l_rot_dim / 2 || !interleaved || (unsigned)c->tied > 1 ||
        (int)U(Q_V_OUT) != c->l_dim)
        return load_fail(ld, QALIGN_ERR_FORMAT, "inconsistent header dimensions;" HINT_EXPORT);
    if (!good_eps(c->v_eps) || !good_eps(c->l_eps) || !(c->l_rope_theta >= 1.0f) || !(c->v_rope_theta >= 1.0f) ||
        !isfinite(c->l_rope_theta) || !isfinite(c->v_rope_theta))
        return load_fail(ld, QALIGN_ERR_FORMAT, "bad eps or rope theta in the header;" HINT_EXPORT);
    if (c->wtype < DT_MF32 || c->wtype >= DT_COUNT)
        return load_fail(ld, QALIGN_ERR_FORMAT, "unknown weight type %d;" HINT_EXPORT, c->wtype);
    for (int l = 0; l < c->l_layers; l++) {
        uint32_t t = U(QWEN_LAYER_SLOT + l);
        if (t > 1) return load_fail(ld, QALIGN_ERR_FORMAT, "layer %d has an unknown type %u;" HINT_EXPORT, l, t);
        c->full[l] = (uint8_t)t;
    }
#undef U
#undef F
    return ld->status;
}

static int qwen_bind(Loader *ld, Qwen35 *q) {
    const QwenConfig *c = &q->c;
    char n[64];
    int D = c->v_dim, Dl = c->l_dim, D4 = D * c->v_merge * c->v_merge;
    q->patch = bind_mat(ld, "v.patch", D, c->v_in);
    q->patch_b = bind_vec(ld, "v.patch.b", D, 0);
    q->pos = bind_vec(ld, "v.pos", c->v_npos, D);
    q->vl = calloc((size_t)c->v_layers, sizeof *q->vl);
    q->l = calloc((size_t)c->l_layers, sizeof *q->l);
    if (!q->vl || !q->l) return load_fail(ld, QALIGN_ERR_NOMEM, "out of memory");
#define VEC(field, fmt, d0, d1) (snprintf(n, sizeof n, fmt, l), L->field = bind_vec(ld, n, d0, d1))
#define MAT(field, fmt, r, k) (snprintf(n, sizeof n, fmt, l), L->field = bind_mat(ld, n, r, k))
    for (int l = 0; l < c->v_layers; l++) {
        QwenVisionLayer *L = &q->vl[l];
        VEC(ln1_w, "v.%d.ln1.w", D, 0), VEC(ln1_b, "v.%d.ln1.b", D, 0);
        MAT(qkv, "v.%d.qkv", 3 * D, D), VEC(qkv_b, "v.%d.qkv.b", 3 * D, 0);
        MAT(proj, "v.%d.proj", D, D), VEC(proj_b, "v.%d.proj.b", D, 0);
        VEC(ln2_w, "v.%d.ln2.w", D, 0), VEC(ln2_b, "v.%d.ln2.b", D, 0);
        MAT(fc1, "v.%d.fc1", c->v_mlp, D), VEC(fc1_b, "v.%d.fc1.b", c->v_mlp, 0);
        MAT(fc2, "v.%d.fc2", D, c->v_mlp), VEC(fc2_b, "v.%d.fc2.b", D, 0);
    }
    q->mln_w = bind_vec(ld, "v.merge.ln.w", D, 0);
    q->mln_b = bind_vec(ld, "v.merge.ln.b", D, 0);
    q->mfc1 = bind_mat(ld, "v.merge.fc1", D4, D4);
    q->mfc1_b = bind_vec(ld, "v.merge.fc1.b", D4, 0);
    q->mfc2 = bind_mat(ld, "v.merge.fc2", Dl, D4);
    q->mfc2_b = bind_vec(ld, "v.merge.fc2.b", Dl, 0);
    int nh = c->l_heads, nkv = c->l_kv_heads, hd = c->l_head_dim, nv = c->g_v_heads, dv = c->g_v_dim;
    int conv = 2 * c->g_k_heads * c->g_k_dim + nv * dv;
    for (int l = 0; l < c->l_layers; l++) {
        QwenLayer *L = &q->l[l];
        VEC(in_norm, "l.%d.in_norm", Dl, 0);
        if (c->full[l]) {
            MAT(qkv, "l.%d.qkv", 2 * nh * hd + 2 * nkv * hd, Dl);
            VEC(q_norm, "l.%d.q_norm", hd, 0), VEC(k_norm, "l.%d.k_norm", hd, 0);
            MAT(o, "l.%d.o", Dl, nh * hd);
        } else {
            MAT(in_proj, "l.%d.in_proj", conv + nv * dv + 2 * nv, Dl);
            VEC(conv, "l.%d.conv", conv, c->g_conv);
            VEC(dt_bias, "l.%d.dt_bias", nv, 0), VEC(A_log, "l.%d.A_log", nv, 0);
            VEC(gnorm, "l.%d.norm", dv, 0);
            MAT(out, "l.%d.out", Dl, nv * dv);
        }
        VEC(post_norm, "l.%d.post_norm", Dl, 0);
        MAT(gate_up, "l.%d.gate_up", 2 * c->l_mlp, Dl);
        MAT(down, "l.%d.down", Dl, c->l_mlp);
    }
#undef VEC
#undef MAT
    q->norm = bind_vec(ld, "l.norm", Dl, 0);
    q->embed = bind_mat(ld, "l.embed", c->l_vocab, Dl);
    q->head = c->tied ? q->embed : bind_mat(ld, "l.head", c->l_vocab, Dl);
    TableEntry *tok = find_tensor(ld->m, "tok.bpe");
    if (tok && !ld->status) {
        const uint8_t *blob = bind(ld, "tok.bpe", tok->shape[0], 0, DT_U8);
        char e[256];
        if (blob && !(q->bpe = bpe_open(blob, (size_t)tok->shape[0], e, sizeof e)))
            return load_fail(ld, QALIGN_ERR_FORMAT, "tokenizer: %s;" HINT_EXPORT, e);
    }
    if (!ld->status)
        for (int i = 0; i < ld->m->n_tensors; i++)
            if (!ld->m->table[i].used)
                return load_fail(ld, QALIGN_ERR_FORMAT, "tensor %s is not part of this model;" HINT_EXPORT, ld->m->table[i].name);
    return ld->status;
}

static void qwen_free(Qwen35 *q) {
    if (!q) return;
    if (q->bpe) bpe_free(q->bpe);
    free(q->vl);
    free(q->l);
    free(q);
}

/* Called by qalign_open for a file whose magic is QWEN_MAGIC: config, table, weights. */
static int qwen_load(Loader *ld, Model *m) {
    if (rd_u32(m->map + 4) != QWEN_VERSION)
        return load_fail(ld, QALIGN_ERR_FORMAT, "Qwen3.5 model file version %u, this qalign reads version %d;" HINT_EXPORT,
                         rd_u32(m->map + 4), QWEN_VERSION);
    if (rd_u32(m->map + 8) != HEADER_BYTES) return load_fail(ld, QALIGN_ERR_FORMAT, "bad header size;" HINT_EXPORT);
    Qwen35 *q = calloc(1, sizeof *q);
    if (!q) return load_fail(ld, QALIGN_ERR_NOMEM, "out of memory");
    m->qwen = q;
    if (qwen_read_config(ld, &q->c, m->map)) return ld->status;
    m->c.wtype = q->c.wtype; /* bind_mat / messages read the weight type from here */
    m->c.l_max_pos = QWEN_MAX_CONTEXT; /* (--ask's limit: qalign.c's ask_options reads it here) */
    if (read_table(ld)) return ld->status;
    return qwen_bind(ld, q);
}

/* ----------------------------------------------------------------------------------------
 * Tokenizer (bpe.c, from the file's tok.bpe) and the level words. */

/* The id a level word is scored by: the first token of " " + word, as Q-ReAlign's
 * scorer.py, README and pyiqa take processor.tokenizer(" " + w).input_ids[0]. -1: none. */
static int qwen_word_id(const Model *m, const char *word) {
    const Qwen35 *q = m->qwen;
    if (!q->bpe) return -1;
    char buf[256];
    snprintf(buf, sizeof buf, " %s", word);
    int32_t *ids = NULL;
    size_t n = 0;
    int id = -1;
    if (bpe_encode(q->bpe, buf, strlen(buf), 0, &ids, &n, NULL, 0) == 0 && n > 0) id = ids[0];
    free(ids);
    return id;
}

/* ----------------------------------------------------------------------------------------
 * Image preprocessing: image_qwen.c (the Qwen2-VL image processor, both official paths):
 *   resized_height, resized_width = smart_resize(height, width, factor=patch*merge,
 *                                                min_pixels, max_pixels)
 *   hf:    torchvision resize (uint8 antialiased bicubic), as transformers 5 runs it
 *   swift: qwen_vl_utils.fetch_image (its smart_resize, min 4096) and Pillow's bicubic
 *   then rescale + normalise (fused, float32) and patchify in merge-block order.
 * The hf path takes min/max pixels, mean and std from the checkpoint's preprocessor_config. */

static int qwen_preprocess(const QwenConfig *c, const Image *img, int swift, float **out, int *gh, int *gw, char *err,
                           size_t errlen) {
    QwenVisionPrep p;
    qwen_prep_init(&p, swift ? QWEN_PATH_SWIFT : QWEN_PATH_HF);
    p.patch = c->v_patch, p.merge = c->v_merge, p.temporal = c->v_temporal;
    if (!swift) p.min_pixels = c->min_pixels, p.max_pixels = c->max_pixels;
    for (int i = 0; i < 3; i++) p.mean[i] = c->mean[i], p.std[i] = c->std[i];
    int gt = 0;
    char e[256];
    float *rows = qwen_pixel_rows(img->rgb, img->w, img->h, &p, &gt, gh, gw, e, sizeof e);
    if (!rows) return fail_with(err, errlen, QALIGN_ERR_INPUT, "%s", e);
    *out = rows;
    return QALIGN_OK;
}

/* ----------------------------------------------------------------------------------------
 * Scoring in a context (the API of qalign.h for this family; qalign.c's functions hand
 * over to these when the model is a Qwen3.5 one). The prompt, as the originals build it:
 *   <|im_start|>user\n ( <|vision_start|> <|image_pad|> x tokens <|vision_end|> ) per image
 *   QUESTION <|im_end|>\n<|im_start|>assistant\n GEN STEM
 * form "hf" (README Quick Run, pyiqa qrealign): GEN = the chat template's generation
 *   prompt (<think>\n, or <think>\n\n</think>\n\n for a template off by default), then
 *   STEM without a leading space, tokenized with it as one text;
 * form "swift" (qalign/scorer.py): GEN = <think>\n\n</think>\n\n, then the ids of
 *   " " + STEM appended. */

typedef struct QwenCtx {
    int swift;              /* prompt form: 0 hf, 1 swift */
    int *head, n_head;      /* ids before the first image */
    int *tail, n_tail;      /* ids after the last image: question, turn end, GEN, stem */
    int *vtail, n_vtail;    /* the same for a video */
    float *tok[QALIGN_MAX_BATCH > 8 ? QALIGN_MAX_BATCH : 8]; /* pending images' (or sampled frames') visual tokens */
    int grid[QALIGN_MAX_BATCH > 8 ? QALIGN_MAX_BATCH : 8][2];
    int n_tok;              /* how many of them */
    int vid_keep[8];        /* a video's sampled frame indices */
    QwenState s;
    int have_state;
    qalign_timings seconds;
} QwenCtx;

#define QWEN_VIDEO_FRAMES 8 /* Q-ReAlign configs data.frames_per_video */
#define QWEN_VIDEO_SIDE 448 /* scorer.sample_frames: long side to 448 */

static int qwen_is_preset(const qalign_preset *p) { return strncmp(p->name, "q-realign", 9) == 0; }

static int qwen_encode_text(const Qwen35 *q, const char *text, int **ids, int *n, char *err, size_t errlen) {
    int32_t *t = NULL;
    size_t k = 0;
    char e[256];
    if (bpe_encode(q->bpe, text, strlen(text), 1, &t, &k, e, sizeof e))
        return fail_with(err, errlen, QALIGN_ERR_ARG, "prompt: %s", e);
    int *grown = realloc(*ids, ((size_t)*n + k + 1) * sizeof(int));
    if (!grown) {
        free(t);
        return fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < k; i++) grown[*n + i] = t[i];
    *ids = grown, *n += (int)k;
    free(t);
    return QALIGN_OK;
}

/* The question and stem of a task (qalign/prompts.py, pyiqa TASKS) */
static void qwen_texts(const char *task, int swift, int video, const char *user_prompt, char *question, size_t qn,
                       char *stem, size_t sn) {
    int aes = strncmp(task, "aesthetic", 9) == 0;
    const char *what = aes ? "aesthetics" : "quality";
    if (user_prompt) snprintf(question, qn, "%s", user_prompt);
    else if (video) snprintf(question, qn, "Can you rate the %s of this video?", what);
    else if (aes && swift) snprintf(question, qn, "How is the aesthetics of this image?");
    else snprintf(question, qn, "Can you rate the %s of this picture?", what);
    snprintf(stem, sn, "The %s of the %s is", what, video ? "video" : "image");
}

static int qwen_build_tail(const Qwen35 *q, int swift, const char *question, const char *stem, int **ids, int *n,
                           char *err, size_t errlen) {
    char text[2048];
    const char *gen = swift || !q->c.think_open ? "<think>\n\n</think>\n\n" : "<think>\n";
    snprintf(text, sizeof text, "%s<|im_end|>\n<|im_start|>assistant\n%s%s", question, gen, swift ? "" : stem);
    int st = qwen_encode_text(q, text, ids, n, err, errlen);
    if (!st && swift) {
        snprintf(text, sizeof text, " %s", stem);
        st = qwen_encode_text(q, text, ids, n, err, errlen);
    }
    return st;
}

static void qwen_ctx_free(QwenCtx *x) {
    if (!x) return;
    free(x->head), free(x->tail), free(x->vtail);
    for (int i = 0; i < (int)(sizeof x->tok / sizeof x->tok[0]); i++) free(x->tok[i]);
    if (x->have_state) qwen_state_free(&x->s);
    free(x);
}

static int qwen_ctx_init(qalign_ctx *c, const qalign_ctx_options *o, char *err, size_t errlen) {
    const Qwen35 *q = c->m->qwen;
    if (!q->bpe) return fail_with(err, errlen, QALIGN_ERR_FORMAT, "this Qwen3.5 model file has no tokenizer;" HINT_EXPORT);
    if (o->n_anchors) return fail_with(err, errlen, QALIGN_ERR_ARG, "anchors: not available for Qwen3.5 models");
    /* a prompt of one's own: the question, with the image first as the chat template puts it
     * ("<|image|>" at its start may be given or not); {task} and {input} filled in */
    char user[1024] = "";
    if (o->prompt) {
        const char *p = o->prompt, *t = c->task;
        if (!strncmp(p, "<|image|>", 9)) p += 9;
        if (strstr(p, "<|image|>"))
            return fail_with(err, errlen, QALIGN_ERR_ARG, "prompt: a Qwen3.5 prompt has its one image first (the chat "
                             "template's place): give the question, optionally after <|image|>");
        for (size_t n = 0; *p && n + 16 < sizeof user;) {
            if (!strncmp(p, "{task}", 6)) n += (size_t)snprintf(user + n, sizeof user - n, "%s", strncmp(t, "aesthetic", 9) ? "quality" : "aesthetics"), p += 6;
            else if (!strncmp(p, "{input}", 7)) n += (size_t)snprintf(user + n, sizeof user - n, "picture"), p += 7;
            else user[n++] = *p++, user[n] = 0;
        }
    }
    QwenCtx *x = calloc(1, sizeof *x);
    if (!x) return fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory");
    c->qw = x;
    x->swift = strstr(c->preset->name, "swift") != NULL;
    char question[1024], stem[256];
    int st = qwen_encode_text(q, "<|im_start|>user\n", &x->head, &x->n_head, err, errlen);
    qwen_texts(c->task, x->swift, 0, o->prompt ? user : NULL, question, sizeof question, stem, sizeof stem);
    if (!st) st = qwen_build_tail(q, x->swift, question, stem, &x->tail, &x->n_tail, err, errlen);
    char shown[1400];
    snprintf(shown, sizeof shown, "<|image|>%s [%s form: %s]", question, x->swift ? "swift" : "hf", stem);
    qwen_texts(c->task, x->swift, 1, o->prompt ? user : NULL, question, sizeof question, stem, sizeof stem);
    if (!st) st = qwen_build_tail(q, x->swift, question, stem, &x->vtail, &x->n_vtail, err, errlen);
    if (!st) {
        free(c->template);
        if (!(c->template = strdup(shown))) st = fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory");
    }
    return st;
}

/* The context's stage hook (qalign_ctx_set_stage_hook, --dump) sees this family's stages:
 * pixel_values (patch rows), vit_embed, vit_block{i}, vit_merger, input_ids, embeds,
 * layer{i}, final_norm, level_logits (README "--dump"). */
static void qwen_hook(void *user, const char *name, const float *data, int rows, int cols) {
    qalign_ctx *c = user;
    if (!c->hook) return;
    qalign_stage st = {name, 'f', data, 2, {rows, cols, 1, 1}, -1};
    c->hook(c->hook_user, &st);
}

static void qwen_hook_ids(qalign_ctx *c, const int *ids, int n) {
    if (!c->hook) return;
    int64_t *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    if (!v) return;
    for (int i = 0; i < n; i++) v[i] = ids[i];
    qalign_stage st = {"input_ids", 'i', v, 1, {n, 1, 1, 1}, -1};
    c->hook(c->hook_user, &st);
    free(v);
}

/* Preprocess and encode one image: its visual tokens go to slot k of the pending list. */
static int qwen_encode(qalign_ctx *c, const qalign_image *img, int k, int video, char *err, size_t errlen) {
    QwenCtx *x = c->qw;
    const Qwen35 *q = c->m->qwen;
    int st = check_image(img, err, errlen);
    if (st) return st;
    Image view = {img->width, img->height, (uint8_t *)img->rgb}, small = {0};
    int old = threads_enter(c);
    double t0 = now_seconds();
    if (video && (img->width > QWEN_VIDEO_SIDE || img->height > QWEN_VIDEO_SIDE)) {
        /* scorer.sample_frames: the long side to 448 (truncating), Pillow BICUBIC */
        int w, h;
        qwen_frame_size(img->width, img->height, QWEN_VIDEO_SIDE, &w, &h);
        char e[256];
        if (image_resize_bicubic(&view, w, h, &small, e, sizeof e) != 0) {
            threads_leave(old);
            return fail_with(err, errlen, QALIGN_ERR_INPUT, "%s", e);
        }
        view = small;
    }
    float *px = NULL;
    int gh = 0, gw = 0;
    st = qwen_preprocess(&q->c, &view, x->swift || video, &px, &gh, &gw, err, errlen);
    free(small.rgb);
    x->seconds.preprocess += now_seconds() - t0;
    if (!st && (!x->have_state || x->s.max_patches < gh * gw)) {
        int seq = x->have_state ? x->s.max_seq : 0;
        x->s.hook = NULL;
        st = qwen_state_alloc(&x->s, &q->c, gh * gw, seq > 0 ? seq : 1, c->threads, c->precise);
        x->have_state = !st;
        if (st) fail_with(err, errlen, st, "out of memory: an image of %d patches", gh * gw);
    }
    if (!st) {
        size_t ntok = (size_t)gh * gw / (q->c.v_merge * q->c.v_merge);
        free(x->tok[k]);
        if (!(x->tok[k] = malloc(ntok * q->c.l_dim * sizeof(float)))) st = fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory");
    }
    if (!st) {
        t0 = now_seconds();
        x->s.hook = c->hook ? qwen_hook : NULL, x->s.hook_user = c;
        qwen_stage(&x->s, "pixel_values", px, gh * gw, q->c.v_in);
        qwen_vision(q, &x->s, px, gh, gw, x->tok[k]);
        qwen_stage(&x->s, "vit_merger", x->tok[k], gh * gw / (q->c.v_merge * q->c.v_merge), q->c.l_dim);
        x->seconds.vision += now_seconds() - t0;
        x->grid[k][0] = gh, x->grid[k][1] = gw;
    }
    free(px);
    threads_leave(old);
    return st;
}

/* One prompt over slots [0, n) (one image, or a video's sampled frames) -> r */
static void qwen_score_slots(qalign_ctx *c, int n, int video, qalign_result *r) {
    QwenCtx *x = c->qw;
    const Qwen35 *q = c->m->qwen;
    const int *tail = video ? x->vtail : x->tail;
    int n_tail = video ? x->n_vtail : x->n_tail, m2 = q->c.v_merge * q->c.v_merge;
    int S = x->n_head + n_tail;
    for (int k = 0; k < n; k++) S += 2 + x->grid[k][0] * x->grid[k][1] / m2;
    memset(r, 0, sizeof *r);
    int *ids = malloc((size_t)S * sizeof(int));
    const float *toks[8];
    char e[QALIGN_ERR_LEN];
    int st = ids ? QALIGN_OK : fail_with(e, sizeof e, QALIGN_ERR_NOMEM, "out of memory");
    if (!st && x->s.max_seq < S) {
        int mp = x->s.max_patches;
        st = qwen_state_alloc(&x->s, &q->c, mp, S, c->threads, c->precise);
        x->have_state = !st;
        if (st) fail_with(e, sizeof e, st, "out of memory: a sequence of %d tokens", S);
    }
    if (st) {
        free(ids);
        r->status = st;
        snprintf(r->error, sizeof r->error, "%s", e);
        return;
    }
    int i = 0;
    memcpy(ids, x->head, (size_t)x->n_head * sizeof(int)), i = x->n_head;
    for (int k = 0; k < n; k++) {
        ids[i++] = q->c.vision_start;
        for (int j = 0; j < x->grid[k][0] * x->grid[k][1] / m2; j++) ids[i++] = q->c.image_token;
        ids[i++] = q->c.vision_end;
        toks[k] = x->tok[k];
    }
    memcpy(ids + i, tail, (size_t)n_tail * sizeof(int));
    int old = threads_enter(c);
    double t0 = now_seconds();
    /* the level words' logits (a level of synonyms: the mean of theirs) */
    int lid[QALIGN_MAX_LEVELS * QALIGN_MAX_SYNONYMS], nl = 0;
    for (int l = 0; l < c->lv.n; l++)
        for (int j = 0; j < c->lv.n_ids[l]; j++) lid[nl++] = c->lv.ids[l][j];
    float lg[QALIGN_MAX_LEVELS * QALIGN_MAX_SYNONYMS];
    x->s.hook = c->hook ? qwen_hook : NULL, x->s.hook_user = c;
    qwen_hook_ids(c, ids, S);
    st = qwen_decode(q, &x->s, ids, S, toks, (const int(*)[2])x->grid, n, lid, nl, lg, e, sizeof e);
    x->seconds.decoder += now_seconds() - t0;
    threads_leave(old);
    free(ids);
    if (st) {
        r->status = st;
        snprintf(r->error, sizeof r->error, "%s", e);
        return;
    }
    r->n_levels = c->lv.n;
    r->frames = n;
    nl = 0;
    for (int l = 0; l < c->lv.n; l++) {
        double sum = 0.0;
        for (int j = 0; j < c->lv.n_ids[l]; j++) sum += lg[nl++];
        r->logits[l] = (float)(sum / c->lv.n_ids[l]);
        r->probs[l] = r->logits[l] / c->lv.temperature;
    }
    softmax_ref(r->probs, c->lv.n);
    double score = 0.0, var = 0.0;
    for (int l = 0; l < c->lv.n; l++) score += (double)r->probs[l] * c->lv.weights[l];
    for (int l = 0; l < c->lv.n; l++) var += (double)r->probs[l] * (c->lv.weights[l] - score) * (c->lv.weights[l] - score);
    r->score = (float)score, r->std = (float)sqrt(var);
    int finite = isfinite(r->score) && isfinite(r->std);
    for (int l = 0; l < c->lv.n; l++) finite = finite && isfinite(r->logits[l]);
    if (!finite) {
        r->status = QALIGN_ERR_NUMERIC;
        snprintf(r->error, sizeof r->error, "the model computed a value that is not a finite number (NaN or infinity); "
                 "the model file may be damaged:" HINT_EXPORT);
    }
}

static int qwen_add_image(qalign_ctx *c, const qalign_image *img, char *err, size_t errlen) {
    if (c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "a video is in progress (qalign_video_end or _cancel first)");
    if (c->pending >= qalign_ctx_batch(c)) return fail_with(err, errlen, QALIGN_ERR_STATE, "the batch is full (qalign_flush first)");
    int st = qwen_encode(c, img, c->pending, 0, err, errlen);
    if (!st) c->pending++;
    return st;
}

static int qwen_flush(qalign_ctx *c, qalign_result *out, char *err, size_t errlen) {
    if (c->pending == 0) return QALIGN_OK;
    if (!out) return fail_with(err, errlen, QALIGN_ERR_ARG, "no result array");
    QwenCtx *x = c->qw;
    for (int k = 0; k < c->pending; k++) {
        /* each image its own prompt: move its tokens to slot 0 */
        float *t = x->tok[0];
        int g0 = x->grid[0][0], g1 = x->grid[0][1];
        x->tok[0] = x->tok[k], x->grid[0][0] = x->grid[k][0], x->grid[0][1] = x->grid[k][1];
        x->tok[k] = t, x->grid[k][0] = g0, x->grid[k][1] = g1;
        qwen_score_slots(c, 1, 0, &out[k]);
        t = x->tok[0], x->tok[0] = x->tok[k], x->tok[k] = t;
        x->grid[k][0] = x->grid[0][0], x->grid[k][1] = x->grid[0][1], x->grid[0][0] = g0, x->grid[0][1] = g1;
    }
    c->pending = 0;
    return QALIGN_OK;
}

/* scorer.sample_frames: [int(round(i)) for i in np.linspace(0, max(n - 1, 0), 8)] */
static int qwen_video_begin(qalign_ctx *c, int n, char *err, size_t errlen) {
    if (c->pending) return fail_with(err, errlen, QALIGN_ERR_STATE, "%d images are pending (qalign_flush first)", c->pending);
    if (c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "a video is already in progress");
    if (n < 1 || n > QALIGN_MAX_FRAMES)
        return fail_with(err, errlen, QALIGN_ERR_ARG, "a video takes 1 to %d frames, not %d", QALIGN_MAX_FRAMES, n);
    long keep[QWEN_VIDEO_FRAMES];
    qwen_frame_indices(n, QWEN_VIDEO_FRAMES, keep);
    for (int i = 0; i < QWEN_VIDEO_FRAMES; i++) c->qw->vid_keep[i] = (int)keep[i];
    c->video_n = n, c->video_k = 0;
    c->qw->n_tok = 0;
    return QALIGN_OK;
}

static int qwen_video_frame(qalign_ctx *c, const qalign_image *frame, char *err, size_t errlen) {
    if (!c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "no video in progress (qalign_video_begin first)");
    if (c->video_k >= c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "all %d frames were given already", c->video_n);
    QwenCtx *x = c->qw;
    int st = QALIGN_OK;
    /* a frame index may be sampled twice (fewer than 8 frames): encoded once per use */
    for (int i = 0; i < QWEN_VIDEO_FRAMES && !st; i++)
        if (x->vid_keep[i] == c->video_k) {
            st = qwen_encode(c, frame, x->n_tok, 1, err, errlen);
            if (!st) x->n_tok++;
        }
    if (!st) c->video_k++;
    return st;
}

static int qwen_video_end_frames(qalign_ctx *c, qalign_result *out, qalign_result *frames, char *err, size_t errlen) {
    if (!c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "no video in progress (qalign_video_begin first)");
    if (c->video_k < c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "%d of %d frames given", c->video_k, c->video_n);
    if (!out) return fail_with(err, errlen, QALIGN_ERR_ARG, "no result");
    qwen_score_slots(c, c->qw->n_tok, 1, out);
    for (int f = 0; frames && f < c->video_n; f++) {
        memset(&frames[f], 0, sizeof frames[f]);
        frames[f].status = QALIGN_ERR_ARG;
        snprintf(frames[f].error, sizeof frames[f].error, "per-frame scores: not available for Qwen3.5 models (a video "
                 "is scored from %d sampled frames)", QWEN_VIDEO_FRAMES);
    }
    c->video_n = c->video_k = 0;
    c->qw->n_tok = 0;
    return QALIGN_OK;
}

static int qwen_score_prompt(qalign_ctx *c, const qalign_image *imgs, int n, qalign_result *out, char *err, size_t errlen) {
    if (n > QWEN_VIDEO_FRAMES) return fail_with(err, errlen, QALIGN_ERR_ARG, "at most %d images in one prompt", QWEN_VIDEO_FRAMES);
    for (int k = 0; k < n; k++) {
        char e[QALIGN_ERR_LEN - 32];
        int st = qwen_encode(c, &imgs[k], k, 0, e, sizeof e);
        if (st) {
            memset(out, 0, sizeof *out);
            out->status = st;
            snprintf(out->error, sizeof out->error, "image %d: %s", k, e);
            return QALIGN_OK;
        }
    }
    (void)err, (void)errlen;
    qwen_score_slots(c, n, 0, out);
    return QALIGN_OK;
}

static int qwen_tokenize(const qalign_model *m, const char *text, int *ids, int cap) {
    const Qwen35 *q = m->qwen;
    int32_t *t = NULL;
    size_t n = 0;
    if (!q->bpe || bpe_encode(q->bpe, text, strlen(text), 1, &t, &n, NULL, 0)) return -1;
    for (size_t i = 0; i < n && (int)i < cap; i++) ids[i] = t[i];
    free(t);
    return (int)n;
}

static void qwen_describe(const qalign_model *m, qalign_info *o) {
    const QwenConfig *c = &m->qwen->c;
    memset(o, 0, sizeof *o);
    o->family = "qwen3.5";
    o->path = m->path;
    o->file_bytes = m->file_size;
    o->format_version = QWEN_VERSION;
    o->n_tensors = m->n_tensors;
    o->weight_type = DT_NAMES[c->wtype];
    memcpy(o->model_id, m->model_id, sizeof o->model_id);
    o->v_dim = c->v_dim, o->v_layers = c->v_layers, o->v_heads = c->v_heads, o->v_mlp = c->v_mlp;
    o->v_patch = c->v_patch, o->v_eps = c->v_eps;
    o->l_dim = c->l_dim, o->l_layers = c->l_layers, o->l_heads = c->l_heads, o->l_kv_heads = c->l_kv_heads;
    o->l_mlp = c->l_mlp, o->l_vocab = c->l_vocab, o->l_eps = c->l_eps, o->l_rope_theta = c->l_rope_theta;
    for (int l = 0; l < c->l_layers; l++) o->l_linear_layers += !c->full[l];
    o->bos_id = o->unk_id = -1;
    o->eos_id = m->qwen->bpe ? bpe_token_id(m->qwen->bpe, "<|im_end|>") : -1;
    o->l_max_pos = QWEN_MAX_CONTEXT;
    static const char *const words[5] = {"excellent", "good", "fair", "poor", "bad"};
    for (int i = 0; i < 5; i++) o->level_ids[i] = qwen_word_id(m, words[i]);
    memcpy(o->mean, c->mean, sizeof o->mean);
    memcpy(o->std, c->std, sizeof o->std);
}

/* ----------------------------------------------------------------------------------------
 * Answers in words (--ask) for Qwen3.5, as model.generate() does with the chat template:
 *   <|im_start|>user\n ( <|vision_start|> <|image_pad|> x tokens <|vision_end|> ) per image
 *   QUESTION <|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n
 * (thinking closed, as the scoring presets' prompts have it: docs/qwen35-prompts.md), then
 * one token at a time until <|im_end|> (EOS), the stop text or max_tokens; the ids decode to
 * UTF-8 with the tokenizer's ByteLevel decoder (bpe_decode). The prompt goes through
 * qwen_decode as for scoring, with s->gen set: after each layer's mixer, qwen_gen_keep copies
 * what the next tokens need. Then each token is one row through qwen_gen_step:
 *   Gated DeltaNet: the recurrent state of the prompt's last row and the conv window (the
 *     last K-1 rows of in_proj_qkv's output) carried over: the same conv, l2norm and delta
 *     rule as the prefill's recurrent form, for one token;
 *   attention: keys (q/k-normed, rotated) and values of every row so far in a cache;
 *   positions: get_rope_index gives text after the prompt max(position) + 1, + 2, ... on all
 *     three M-RoPE axes. */

typedef struct QwenGen {
    int cap, n;             /* rows the attention caches hold, rows filled */
    int next_pos;           /* the position of the next row */
    float **k, **v;         /* per layer (full attention; NULL else): (cap, nkv hd) */
    float **st;             /* per layer (Gated DeltaNet; NULL else): (nv, dk, dv) state */
    float **win;            /* per layer (Gated DeltaNet): (K - 1, conv) the conv's input window */
    float *logits;          /* (l_vocab) */
} QwenGen;

static void qwen_gen_free(const QwenConfig *c, QwenGen *g) {
    for (int l = 0; g->k && l < c->l_layers; l++) free(g->k[l]), free(g->v[l]), free(g->st[l]), free(g->win[l]);
    free(g->k), free(g->v), free(g->st), free(g->win), free(g->logits);
    memset(g, 0, sizeof *g);
}

static int qwen_gen_alloc(const QwenConfig *c, QwenGen *g, int cap) {
    memset(g, 0, sizeof *g);
    int L = c->l_layers, conv = 2 * c->g_k_heads * c->g_k_dim + c->g_v_heads * c->g_v_dim;
    size_t kvd = (size_t)c->l_kv_heads * c->l_head_dim;
    g->cap = cap;
    g->k = calloc((size_t)L, sizeof *g->k), g->v = calloc((size_t)L, sizeof *g->v);
    g->st = calloc((size_t)L, sizeof *g->st), g->win = calloc((size_t)L, sizeof *g->win);
    g->logits = malloc((size_t)c->l_vocab * sizeof(float));
    int ok = g->k && g->v && g->st && g->win && g->logits;
    for (int l = 0; ok && l < L; l++) {
        if (c->full[l]) {
            ok = (g->k[l] = malloc((size_t)cap * kvd * sizeof(float))) && (g->v[l] = malloc((size_t)cap * kvd * sizeof(float)));
        } else {
            ok = (g->st[l] = malloc((size_t)c->g_v_heads * c->g_k_dim * c->g_v_dim * sizeof(float))) &&
                 (g->win[l] = calloc((size_t)(c->g_conv - 1) * conv, sizeof(float)));
        }
    }
    if (!ok) qwen_gen_free(c, g);
    return ok ? QALIGN_OK : QALIGN_ERR_NOMEM;
}

/* After layer l's mixer over the prompt's S rows (s->proj: its fused projection's rows;
 * s->state: a Gated DeltaNet's state after the last row): keep what the next rows need. */
static void qwen_gen_keep(const Qwen35 *q, QwenState *s, int l, int S) {
    const QwenConfig *c = &q->c;
    QwenGen *g = s->gen;
    if (c->full[l]) {
        int nh = c->l_heads, nkv = c->l_kv_heads, hd = c->l_head_dim, W = 2 * nh * hd + 2 * nkv * hd;
        size_t kvd = (size_t)nkv * hd;
        for (int t = 0; t < S && t < g->cap; t++) {
            memcpy(g->k[l] + (size_t)t * kvd, s->proj + (size_t)t * W + 2 * nh * hd, kvd * sizeof(float));
            memcpy(g->v[l] + (size_t)t * kvd, s->proj + (size_t)t * W + 2 * nh * hd + kvd, kvd * sizeof(float));
        }
    } else {
        int nk = c->g_k_heads, nv = c->g_v_heads, dk = c->g_k_dim, dv = c->g_v_dim, K = c->g_conv;
        int conv = 2 * nk * dk + nv * dv, W = conv + nv * dv + 2 * nv;
        memcpy(g->st[l], s->state, (size_t)nv * dk * dv * sizeof(float));
        for (int j = 0; j < K - 1; j++) { /* window row j = prompt row S - (K - 1) + j (zeros before the start) */
            int src = S - (K - 1) + j;
            float *w = g->win[l] + (size_t)j * conv;
            if (src < 0) memset(w, 0, (size_t)conv * sizeof(float));
            else memcpy(w, s->proj + (size_t)src * W, (size_t)conv * sizeof(float));
        }
    }
}

/* Qwen3_5GatedDeltaNet.forward for one new row (s->xn row 0) with the cache (cache_params) */
static void qwen_gdn_step(const Qwen35 *q, QwenState *s, QwenGen *g, const QwenLayer *L, int l) {
    const QwenConfig *c = &q->c;
    int nk = c->g_k_heads, nv = c->g_v_heads, dk = c->g_k_dim, dv = c->g_v_dim, K = c->g_conv;
    int conv = 2 * nk * dk + nv * dv;
    /* projected_states_qkv = self.in_proj_qkv(hidden_states); z, b, a likewise (one matmul) */
    matmul(s->proj, &s->acts, s->xn, 1, &L->in_proj, NULL, EPI_STORE);
    /* mixed_qkv = causal_conv1d_update(mixed_qkv, conv_state, weight, activation="silu"):
     * the window's K-1 rows, then this one, as the prefill's taps j = 0 .. K-1 */
    float *win = g->win[l], *o = s->q;
    const float *row = s->proj;
    for (int ch = 0; ch < conv; ch++) {
        float v = 0.0f;
        for (int j = 0; j < K - 1; j++) v += L->conv[(size_t)ch * K + j] * win[(size_t)j * conv + ch];
        v += L->conv[(size_t)ch * K + K - 1] * row[ch];
        o[ch] = silu1(v);
    }
    memmove(win, win + conv, (size_t)(K - 2) * conv * sizeof(float));
    memcpy(win + (size_t)(K - 2) * conv, row, (size_t)conv * sizeof(float));
    /* query = l2norm(query) * dk ** -0.5, key = l2norm(key) */
    float qscale = 1.0f / sqrtf((float)dk);
    for (int h = 0; h < 2 * nk; h++) {
        float *v = o + (size_t)h * dk;
        double ss = 0.0;
        for (int i = 0; i < dk; i++) ss += (double)v[i] * v[i];
        float r = (float)(1.0 / sqrt(ss + 1e-6));
        if (h < nk) r *= qscale;
        for (int i = 0; i < dk; i++) v[i] *= r;
    }
    /* beta = b.sigmoid(); g = -A_log.exp() * softplus(a + dt_bias); the delta rule per value head */
    int rep = nv / nk;
#pragma omp parallel for schedule(dynamic)
    for (int h = 0; h < nv; h++) {
        int kh = h / rep;
        float beta = sigmoid1(row[conv + nv * dv + h]);
        float gg = -expf(L->A_log[h]) * softplus1(row[conv + nv * dv + nv + h] + L->dt_bias[h]);
        qwen_delta_step(g->st[l] + (size_t)h * dk * dv, o + (size_t)kh * dk, o + (size_t)(nk + kh) * dk,
                        o + (size_t)2 * nk * dk + (size_t)h * dv, beta, expf(gg), dk, dv, s->att + (size_t)h * dv);
    }
    /* core_attn_out = self.norm(core_attn_out, z)   (RMSNormGated) */
    for (int h = 0; h < nv; h++) {
        float *a = s->att + (size_t)h * dv;
        const float *z = row + conv + (size_t)h * dv;
        double ss = 0.0;
        for (int j = 0; j < dv; j++) ss += (double)a[j] * a[j];
        float r = (float)(1.0 / sqrt(ss / dv + (double)c->l_eps));
        for (int j = 0; j < dv; j++) a[j] = L->gnorm[j] * (a[j] * r) * silu1(z[j]);
    }
    /* output = self.out_proj(core_attn_out)   (added to the residual) */
    matmul(s->x, &s->acts, s->att, 1, &L->out, NULL, EPI_ADD);
}

/* Qwen3_5Attention.forward for one new row at cache row g->n (past_key_values.update) */
static void qwen_attention_step(const Qwen35 *q, QwenState *s, QwenGen *g, const QwenLayer *L, int l) {
    const QwenConfig *c = &q->c;
    int nh = c->l_heads, nkv = c->l_kv_heads, hd = c->l_head_dim, rot = c->l_rot_dim;
    size_t kvd = (size_t)nkv * hd;
    matmul(s->proj, &s->acts, s->xn, 1, &L->qkv, NULL, EPI_STORE);
    /* q_norm, k_norm, apply_rotary_pos_emb at this row's position (tables row 0) */
    for (int h = 0; h < nh; h++) {
        rms1p_row(s->q + h * hd, s->proj + (size_t)h * 2 * hd, L->q_norm, hd, c->l_eps);
        rope_partial(s->q + h * hd, s->tcos, s->tsin, rot);
    }
    float *k = g->k[l] + (size_t)g->n * kvd, *v = g->v[l] + (size_t)g->n * kvd;
    for (int h = 0; h < nkv; h++) {
        rms1p_row(k + h * hd, s->proj + 2 * nh * hd + h * hd, L->k_norm, hd, c->l_eps);
        rope_partial(k + h * hd, s->tcos, s->tsin, rot);
    }
    memcpy(v, s->proj + 2 * nh * hd + kvd, kvd * sizeof(float));
    /* attention over the cache's g->n + 1 rows (the new one sees them all) */
    attention(s->att, s->q, nh * hd, g->k[l], g->v[l], (int)kvd, 1, g->n + 1, nh, nkv, hd, 1, g->n, s->scores,
              s->scores_stride, s->kt);
    /* attn_output = attn_output * torch.sigmoid(gate); self.o_proj(attn_output) */
    for (int h = 0; h < nh; h++)
        for (int d = 0; d < hd; d++) s->att[h * hd + d] *= sigmoid1(s->proj[(size_t)h * 2 * hd + hd + d]);
    matmul(s->x, &s->acts, s->att, 1, &L->o, NULL, EPI_ADD);
}

/* One generated token (id) through the decoder -> g->logits (l_vocab) of the next one. */
static void qwen_gen_step(const Qwen35 *q, QwenState *s, QwenGen *g, int id) {
    const QwenConfig *c = &q->c;
    int Dl = c->l_dim, F = c->l_mlp, pos3[3] = {g->next_pos, g->next_pos, g->next_pos};
    matrix_row(s->x, &q->embed, id);
    qwen_rope_tables(c, pos3, 1, s->tcos, s->tsin);
    for (int l = 0; l < c->l_layers; l++) {
        const QwenLayer *L = &q->l[l];
        rms1p_row(s->xn, s->x, L->in_norm, Dl, c->l_eps);
        if (c->full[l]) qwen_attention_step(q, s, g, L, l);
        else qwen_gdn_step(q, s, g, L, l);
        /* hidden_states = residual + self.mlp(self.post_attention_layernorm(hidden_states)) */
        rms1p_row(s->xn, s->x, L->post_norm, Dl, c->l_eps);
        matmul(s->proj, &s->acts, s->xn, 1, &L->gate_up, NULL, EPI_STORE);
        for (int i = 0; i < F; i++) s->hb[i] = silu1(s->proj[i]) * s->proj[F + i];
        matmul(s->x, &s->acts, s->hb, 1, &L->down, NULL, EPI_ADD);
    }
    g->n++, g->next_pos++;
    /* logits = self.lm_head(self.norm(hidden_states)) */
    rms1p_row(s->xn, s->x, q->norm, Dl, c->l_eps);
    matmul(g->logits, &s->acts, s->xn, 1, &q->head, NULL, EPI_STORE);
}

static int ask_options(const Model *m, const char *question, const qalign_ask_options *in, qalign_ask_options *o,
                       char *err, size_t errlen);

/* The bytes at the end of t (len) held back while streaming: trailing U+FFFD, which is what
 * bpe_decode (from_utf8_lossy) makes of a character whose last bytes have not come yet. */
static size_t qwen_pending_bytes(const char *t, size_t len) {
    size_t k = 0;
    while (len - k >= 3 && !memcmp(t + len - k - 3, "\xEF\xBF\xBD", 3)) k += 3;
    return k;
}

/* Answer question about the n images of one prompt (their visual tokens: qwen_encode into
 * slots 0..n-1) -> out. */
static void qwen_ask_slots(qalign_ctx *c, int n, const char *question, const qalign_ask_options *o, int seq,
                           qalign_answer *out) {
    QwenCtx *x = c->qw;
    const Qwen35 *q = c->m->qwen;
    const QwenConfig *cf = &q->c;
    int m2 = cf->v_merge * cf->v_merge, *ids = NULL, S = 0, eos = bpe_token_id(q->bpe, "<|im_end|>");
    char e[QALIGN_ERR_LEN];
    QwenGen g = {0};
    Cand *cand = NULL;
    double *pr = NULL;
    char *text = NULL;
    int st = qwen_encode_text(q, "<|im_start|>user\n", &ids, &S, e, sizeof e);
    for (int k = 0; k < n && !st; k++) {
        int nt = x->grid[k][0] * x->grid[k][1] / m2;
        int *grown = realloc(ids, ((size_t)S + nt + 2) * sizeof(int));
        if (!grown) {
            st = fail_with(e, sizeof e, QALIGN_ERR_NOMEM, "out of memory");
            break;
        }
        ids = grown;
        ids[S++] = cf->vision_start;
        for (int j = 0; j < nt; j++) ids[S++] = cf->image_token;
        ids[S++] = cf->vision_end;
    }
    if (!st) {
        size_t tl = strlen(question) + 128;
        char *t = malloc(tl);
        if (!t) st = fail_with(e, sizeof e, QALIGN_ERR_NOMEM, "out of memory");
        else {
            snprintf(t, tl, "%s<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", question);
            st = qwen_encode_text(q, t, &ids, &S, e, sizeof e);
            free(t);
        }
    }
    int cap = S + o->max_tokens;
    if (!st && (x->s.max_seq < cap || !x->have_state)) {
        st = qwen_state_alloc(&x->s, cf, x->s.max_patches, cap, c->threads, c->precise);
        x->have_state = !st;
        if (st) fail_with(e, sizeof e, st, "out of memory: a sequence of %d tokens", cap);
    }
    if (!st && qwen_gen_alloc(cf, &g, cap)) st = fail_with(e, sizeof e, QALIGN_ERR_NOMEM, "out of memory: the caches of %d rows", cap);
    if (!st && (!(cand = malloc((size_t)cf->l_vocab * sizeof *cand)) || !(pr = malloc((size_t)cf->l_vocab * sizeof *pr)) ||
                !(out->tokens = malloc((size_t)o->max_tokens * sizeof(int)))))
        st = fail_with(e, sizeof e, QALIGN_ERR_NOMEM, "out of memory");
    out->prompt_rows = S, out->frames = n;
    if (st) goto fail;
    /* the prompt (prefill): qwen_decode with the caches kept, then the logits of its last row */
    int old = threads_enter(c);
    double t0 = now_seconds();
    const float *toks[8];
    for (int k = 0; k < n; k++) toks[k] = x->tok[k];
    x->s.hook = NULL, x->s.gen = &g;
    st = qwen_decode(q, &x->s, ids, S, toks, (const int(*)[2])x->grid, n, NULL, 0, NULL, e, sizeof e);
    x->s.gen = NULL;
    if (!st) {
        matmul(g.logits, &x->s.acts, x->s.xn, 1, &q->head, NULL, EPI_STORE);
        int mx = 0;
        for (int i = 0; i < 3 * S; i++) mx = x->s.pos[i] > mx ? x->s.pos[i] : mx;
        g.n = S, g.next_pos = mx + 1;
    }
    out->prefill_seconds = now_seconds() - t0;
    x->seconds.decoder += out->prefill_seconds;
    t0 = now_seconds();
    const char *stop = o->stop && *o->stop ? o->stop : NULL;
    size_t sent = 0;
    out->finish = "length";
    for (int step = 0; !st; step++) {
        int id = pick_token(g.logits, cf->l_vocab, o, step, cand, pr);
        if (id < 0) {
            st = fail_with(e, sizeof e, QALIGN_ERR_NUMERIC, "the model computed a value that is not a finite number (NaN or "
                           "infinity); the model file may be damaged:" HINT_EXPORT);
            break;
        }
        int done = id == eos;
        if (!done) out->tokens[out->n_tokens++] = id;
        free(text);
        size_t len = 0;
        text = bpe_decode(q->bpe, out->tokens, (size_t)out->n_tokens, &len);
        if (!text) {
            st = fail_with(e, sizeof e, QALIGN_ERR_NOMEM, "out of memory");
            break;
        }
        char *cut = stop ? strstr(text, stop) : NULL;
        if (cut) *cut = 0, len = (size_t)(cut - text), done = 1, out->finish = "stop";
        else if (done) out->finish = "eos";
        if (!done && out->n_tokens == o->max_tokens) done = 1;
        if (o->on_token) { /* the bytes that are certain: not an incomplete character, not a possible start of the stop text */
            size_t upto = done ? len : len - qwen_pending_bytes(text, len);
            if (!done && stop)
                for (size_t k = strlen(stop) - 1; k > 0; k--)
                    if (upto >= k && !strncmp(text + upto - k, stop, k)) {
                        upto -= k;
                        break;
                    }
            if (upto < sent) upto = sent;
            char save = text[upto];
            text[upto] = 0;
            o->on_token(o->user, seq, id, text + sent);
            text[upto] = save;
            sent = upto;
        }
        if (done) break;
        qwen_gen_step(q, &x->s, &g, id);
    }
    out->decode_seconds = now_seconds() - t0;
    x->seconds.decoder += out->decode_seconds;
    threads_leave(old);
    if (st) goto fail;
    out->text = text, text = NULL;
    if (!out->text && !(out->text = calloc(1, 1))) {
        st = fail_with(e, sizeof e, QALIGN_ERR_NOMEM, "out of memory");
        goto fail;
    }
    strip_blanks(out->text);
    goto done;
fail:
    out->status = st;
    snprintf(out->error, sizeof out->error, "%s", e);
    free(out->tokens), out->tokens = NULL, out->n_tokens = 0, out->finish = NULL;
done:
    free(text), free(ids), free(cand), free(pr);
    qwen_gen_free(cf, &g);
}

/* qalign_ask_images / _prompt / _batch for a Qwen3.5 model: n images, one prompt each
 * (one_prompt 0) or all in one prompt; scores (opt->scores) as qalign_ask_images says. */
static int qwen_ask(qalign_ctx *c, const qalign_image *const *imgs, const char *const *questions,
                    const qalign_ask_options *const *opts, int n, int one_prompt, qalign_answer *out, char *err,
                    size_t errlen) {
    if (c->pending || c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "images or a video are pending in this context");
    int per = one_prompt ? n : 1;
    if (one_prompt && n > (int)(sizeof c->qw->tok / sizeof c->qw->tok[0]))
        return fail_with(err, errlen, QALIGN_ERR_ARG, "a Qwen3.5 prompt takes at most %d images here",
                         (int)(sizeof c->qw->tok / sizeof c->qw->tok[0]));
    for (int i0 = 0; i0 < n; i0 += per) {
        qalign_answer *a = &out[one_prompt ? 0 : i0];
        qalign_ask_options o;
        int st = ask_options(c->m, questions[i0], opts[i0], &o, a->error, sizeof a->error);
        if (!st && o.prompt && strcmp(o.prompt, "mplug-owl2"))
            st = fail_with(a->error, sizeof a->error, QALIGN_ERR_ARG, "prompt: a Qwen3.5 model asks with its chat template "
                           "(no --prompt)");
        if (!st && (!opts[i0] || !opts[i0]->stop)) o.stop = ""; /* (upstream's "</s>" is LLaMA's; here EOS is <|im_end|>) */
        if (!st && !imgs[i0]) st = fail_with(a->error, sizeof a->error, QALIGN_ERR_ARG, "no image");
        for (int k = 0; k < per && !st; k++) {
            char e[QALIGN_ERR_LEN - 32];
            if ((st = qwen_encode(c, imgs[i0 + k], k, 0, e, sizeof e)) != QALIGN_OK)
                snprintf(a->error, sizeof a->error, "image %d: %s", k, e);
        }
        if (!st && o.scores) qwen_score_slots(c, per, 0, &o.scores[one_prompt ? 0 : i0]);
        if (st) a->status = st;
        else qwen_ask_slots(c, per, questions[i0], &o, one_prompt ? 0 : i0, a);
    }
    return QALIGN_OK;
}
