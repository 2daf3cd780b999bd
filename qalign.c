/* qalign.c - the Q-Align / OneAlign model in plain C: the reference implementation.
 *
 * Q-Align (arXiv 2312.17090) asks a multimodal LLM (mPLUG-Owl2: CLIP ViT -> visual
 * abstractor -> LLaMA-2 with modality-adaptive k/v projections and norms) "How would you
 * rate the quality of this image?" and reads the answer off the logits of five words:
 * score = softmax(logits[excellent good fair poor bad]) . [5 4 3 2 1].
 * The family's other scorers (Q-Align's single-task checkpoints, DeQA-Score, Q-Instruct,
 * Compare2Score) run the same model with other prompts, words and weights: the presets
 * in the back matter, and Compare2Score's comparisons after score_batch.
 *
 * This file is the model, top to bottom, and reads in this order:
 *   config (the file header) -> weights (views into the file) -> run state ->
 *   kernels (the scalar reference of each, and where a CPU family's faster one is used) ->
 *   vision tower -> visual abstractor -> LLaMA-2 decoder -> scoring -> Compare2Score ->
 *   answers in words (text generation with a K/V cache per answer) ->
 *   then the back matter: a context's levels and prompt, loading a model file, the run
 *   state's buffers, and the API of qalign.h.
 * Above each block of C is the PyTorch line (Q-Future/Q-Align, q_align/model/) it
 * implements. There are no intrinsics here: the SIMD kernels are in kernels/<family>.h,
 * behind the contract of kernels.h. Image decoding and preprocessing are in image.c
 * (image_preprocess), the mapping of the model file (mmap, huge pages, the prefetch thread)
 * in platform.c, the tokenizer in tokenizer.c, the command line in cli.c.
 *
 *   python3 export.py CHECKPOINT_DIR model.qalign     # once
 *   make && ./qalign model.qalign photo.jpg
 *
 * Tests may #include this file (with TESTING defined) to reach its static functions.
 */
/* (for the tests that #include kernels.c after this file: its syscall() is outside POSIX 2008) */
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE 1
#endif
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "image.h"
#include "kernels.h"
#include "platform.h"
#include "qalign.h"
#include "tokenizer.h"
#include "bpe.h"
#include "image_qwen.h"


/* ----------------------------------------------------------------------------------------
 * Errors. Library functions return a qalign_status and write a one-line reason to the
 * caller's buffer. A broken invariant (a bug, never bad input) stops with CHECK. */

static int fail_with(char *err, size_t errlen, int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static int fail_with(char *err, size_t errlen, int status, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return status;
}

#define CHECK(cond)                                                                               \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fprintf(stderr, "qalign: internal error at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                              \
        }                                                                                         \
    } while (0)

/* An API entry point's pointer argument that must not be NULL: QALIGN_ERR_ARG naming it. */
#define NEED(ptr, name) \
    do {                                                                                             \
        if (!(ptr)) return fail_with(err, errlen, QALIGN_ERR_ARG, "%s is NULL", name);             \
    } while (0)

#define HINT_EXPORT " ---> re-run export.py to write a model file for this version of qalign"


/* ----------------------------------------------------------------------------------------
 * Config: the file header. 256 little-endian u32 slots (floats stored as their bits), in
 * the order of HEADER_FIELDS in export.py (a test checks that the two lists agree). */

#define QALIGN_MAGIC 0x4E4C4151u /* "QALN" */
#define QALIGN_VERSION 2         /* export.py VERSION: what changed in each version is listed there */
#define HEADER_BYTES 1024
#define TABLE_ENTRY_BYTES 96
#define TENSOR_ALIGN 64
/* The checksum section (export.py write_sums), at the first multiple of 64 after the last
 * tensor, ending the file: magic "QSUM", its version, n_tensors, the piece size, the XXH64 of
 * the header and table, then one u64 per tensor in table order. Files without it (exported
 * before it was added) load as before; qalign_verify says they cannot be verified. */
#define SUMS_MAGIC 0x4D555351u   /* "QSUM" */
#define SUMS_VERSION 1
#define SUMS_PIECE 4096
#define SUMS_HEAD 24
#define N_LEVELS 5               /* the default level words */

enum {
    H_MAGIC, H_VERSION, H_HEADER_BYTES, H_N_TENSORS, H_WTYPE,
    H_V_DIM, H_V_LAYERS, H_V_HEADS, H_V_MLP, H_V_IMAGE, H_V_PATCH, H_V_EPS,
    H_A_LAYERS, H_A_HEADS, H_A_QUERIES, H_A_MLP, H_A_EPS, H_A_FFN_EPS,
    H_L_DIM, H_L_LAYERS, H_L_HEADS, H_L_KV_HEADS, H_L_MLP, H_L_VOCAB, H_L_EPS, H_L_ROPE_THETA, H_L_MAX_POS,
    H_T_BOS, H_T_EOS, H_T_UNK, H_T_DUMMY_PREFIX,
    H_FILL_R, H_FILL_G, H_FILL_B, H_MEAN_R, H_MEAN_G, H_MEAN_B, H_STD_R, H_STD_G, H_STD_B,
    H_COUNT
};

static const char *const DT_NAMES[DT_COUNT] = {"f32", "u8", "u32", "f32", "bf16", "q8_0", "q4_1", "q8_256", "q4_256"};

typedef struct {
    int wtype;              /* weight type the matrices were exported in (DT_M*) */
    /* vision tower (CLIP ViT-L/14 in one-align) */
    int v_dim;              /* width (1024) */
    int v_layers;           /* transformer blocks (24) */
    int v_heads;            /* attention heads (16) */
    int v_mlp;              /* MLP hidden width (4096) */
    int v_image;            /* input side in pixels (448) */
    int v_patch;            /* patch side in pixels (14) */
    int v_grid;             /* patches per side = v_image / v_patch (32) */
    int v_tokens;           /* 1 + v_grid^2: CLS + patches (1025) */
    float v_eps;            /* LayerNorm eps (1e-6) */
    /* visual abstractor (width = v_dim) */
    int a_layers;           /* cross-attention blocks (6) */
    int a_heads;            /* heads (16) */
    int a_queries;          /* learned queries (64); +1 vit_eos row = visual rows per image */
    int a_mlp;              /* SwiGLU hidden width (2816) */
    float a_eps;            /* norm1/normk/norm2 eps (1e-5, PyTorch's default) */
    float a_ffn_eps;        /* ffn_ln eps (1e-6) */
    /* LLaMA-2 decoder */
    int l_dim;              /* width (4096) */
    int l_layers;           /* blocks (32) */
    int l_heads;            /* query heads (32) */
    int l_kv_heads;         /* key/value heads (32: no GQA in LLaMA-2-7B) */
    int l_head_dim;         /* l_dim / l_heads (128) */
    int l_mlp;              /* SwiGLU hidden width (11008) */
    int l_vocab;            /* vocabulary (32000) */
    float l_eps;            /* RMSNorm eps (1e-6) */
    float l_rope_theta;     /* RoPE base (10000) */
    int l_max_pos;          /* max_position_embeddings (informational: RoPE extends past it) */
    /* tokenizer */
    int bos_id, eos_id, unk_id, dummy_prefix;
    /* preprocessing */
    uint8_t fill[3];        /* expand2square colour (122,116,104) */
    float mean[3], std[3];  /* CLIP normalisation */
} Config;

/* ----------------------------------------------------------------------------------------
 * Weights: views into the model file (Tensor: kernels.h). One table of tensors, written
 * by export.py, locates them all; the loader (back matter) binds each field below by name
 * and checks its shape against the Config. */

typedef struct {
    const float *ln1_w, *ln1_b;       /* (v_dim) input_layernorm */
    Tensor wq, wk, wv;                /* (v_dim, v_dim) de-interleaved from query_key_value */
    const float *bq, *bk, *bv;        /* (v_dim) */
    Tensor wo; const float *bo;       /* (v_dim, v_dim), (v_dim) self_attn.dense */
    const float *ln2_w, *ln2_b;       /* (v_dim) post_attention_layernorm */
    Tensor fc1; const float *fc1_b;   /* (v_mlp, v_dim), (v_mlp) */
    Tensor fc2; const float *fc2_b;   /* (v_dim, v_mlp), (v_dim) */
} VisionLayer;

typedef struct {
    Tensor patch;                     /* (v_dim, 3*v_patch*v_patch) patch_embed conv as a matrix */
    const float *cls;                 /* (v_dim) cls_token */
    const float *pos;                 /* (v_tokens, v_dim) position_embedding */
    const float *pre_ln_w, *pre_ln_b; /* (v_dim) */
    VisionLayer *layers;              /* (v_layers) */
    const float *post_ln_w, *post_ln_b; /* (v_dim) */
} VisionWeights;

typedef struct {
    const float *norm1_w, *norm1_b;   /* (v_dim) LayerNorm of the queries, eps a_eps */
    const float *normk_w, *normk_b;   /* (v_dim) LayerNorm of the image features, eps a_eps */
    Tensor wq, wk, wv;                /* (v_dim, v_dim) attention.query/key/value */
    const float *bq, *bk, *bv;        /* (v_dim) */
    const float *q_pos;               /* (a_queries, v_dim) 1-D sin-cos buffer */
    const float *k_pos;               /* (v_tokens, v_dim) 2-D sin-cos buffer, zero CLS row */
    Tensor wo; const float *bo;       /* (v_dim, v_dim), (v_dim) output.out_proj */
    const float *norm2_w, *norm2_b;   /* (v_dim) eps a_eps */
    Tensor w1, w3;                    /* (a_mlp, v_dim) SwiGLU gate and up */
    const float *b1, *b3;             /* (a_mlp) */
    const float *ffn_ln_w, *ffn_ln_b; /* (a_mlp) LayerNorm inside the SwiGLU, eps a_ffn_eps */
    Tensor w2; const float *b2;       /* (v_dim, a_mlp), (v_dim) */
} AbstractorLayer;

typedef struct {
    const float *query;               /* (a_queries, v_dim) query_embeds */
    AbstractorLayer *layers;          /* (a_layers) */
    Tensor fc; const float *fc_b;     /* (l_dim, v_dim), (l_dim) visual_fc */
    const float *eos;                 /* (l_dim) vit_eos, appended after visual_fc */
} AbstractorWeights;

typedef struct {
    const float *attn_norm[2];        /* (l_dim) input_layernorm.multiway[m], m = 0 text, 1 visual */
    Tensor wq;                        /* (l_dim, l_dim) q_proj, shared */
    Tensor wk[2], wv[2];              /* (l_kv_heads*l_head_dim, l_dim) k/v_proj.multiway[m] */
    Tensor wo;                        /* (l_dim, l_dim) o_proj, shared */
    const float *mlp_norm[2];         /* (l_dim) post_attention_layernorm.multiway[m] */
    Tensor gate, up;                  /* (l_mlp, l_dim) */
    Tensor down;                      /* (l_dim, l_mlp) */
} DecoderLayer;

typedef struct {
    Tensor embed;                     /* (l_vocab, l_dim) embed_tokens (rows looked up) */
    DecoderLayer *layers;             /* (l_layers) */
    const float *norm;                /* (l_dim) final RMSNorm */
    Tensor head;                      /* (l_vocab, l_dim) lm_head: only the level words' rows are used */
} DecoderWeights;

typedef struct {
    char name[57];          /* NUL-terminated (56 bytes in the file) */
    int dtype;              /* DT_* */
    int ndim;               /* 1..4 */
    int64_t shape[4];       /* elements per dimension (unused = 1) */
    uint64_t offset;        /* from the start of the file, multiple of 64 */
    uint64_t nbytes;        /* size of the data */
    int used;               /* bound by the loader (each tensor exactly once) */
} TableEntry;

struct Qwen35; /* the Qwen3.5 family (Q-ReAlign), qwen35.c */
#define QWEN_MAGIC 0x35514151u /* "QAQ5": the header magic of a Qwen3.5 model file */

typedef struct qalign_model {
    Config c;
    struct Qwen35 *qwen;    /* a Qwen3.5 model (qwen35.c), or NULL: this file's mPLUG-Owl2 */
    VisionWeights v;
    AbstractorWeights a;
    DecoderWeights l;
    Tokenizer tok;
    int level_ids[N_LEVELS]; /* token ids of excellent good fair poor bad (tokenized at load) */
    /* the file's bytes */
    MappedFile file;        /* the mapping, or its copy (no_mmap), and its prefetcher (platform.h) */
    const uint8_t *map;     /* (file_size) = file.data: the whole file, read-only */
    size_t file_size;
    TableEntry *table;      /* (n_tensors) */
    int n_tensors;
    char *path;
    char model_id[17];      /* hash of header + table, hex */
    const uint8_t *sums;    /* the checksum section after the last tensor (read_sums), or NULL
                               for a file written before export.py added it */
} Model;

static int qwen_word_id(const Model *m, const char *word); /* qwen35.c */

/* ----------------------------------------------------------------------------------------
 * Run state: every activation buffer of a context, allocated once for the largest job it
 * has seen (a batch of images, or a video of n_frames), grown when a longer video comes.
 * The forward passes never allocate. (Allocation: run_state_alloc, in the back matter.) */

typedef struct {
    int max_batch;          /* decoder sequences per call (images per batch) */
    int n_frames;           /* frames of the longest video */
    int max_seq;            /* rows of the longest sequence: an image's or that video's */
    int max_rows;           /* decoder rows per call: max(max_batch * an image's rows, the video's) */
    int max_slots;          /* visual slots: max(max_batch, n_frames) images' visual rows */
    int n_threads;          /* OpenMP threads the per-thread scratch is sized for */
    /* vision tower, one image at a time (T = v_tokens, D = v_dim) */
    float *pixels;          /* (3, v_image, v_image) normalised input */
    float *patches;         /* (T-1, 3*patch*patch) im2col of the input */
    float *vx;              /* (T, D) residual stream */
    float *vxn;             /* (T, D) normalised stream */
    float *vq, *vk, *vv;    /* (T, D) */
    float *vatt;            /* (T, D) attention output (heads concatenated) */
    float *vmlp;            /* (T, v_mlp) */
    float *vision_out;      /* (T, D) post_layernorm output of the current frame */
    /* abstractor (Q = a_queries, E = Q + T encoder rows) */
    float *aq;              /* (Q, D) query stream */
    float *aqn;             /* (Q, D) norm2(query) */
    float *aenc;            /* (E, D) [norm1(query); normk(image)] */
    float *apos;            /* (E, D) enc + [q_pos; k_pos] */
    float *ak, *av;         /* (E, D) keys, values */
    float *aqq;             /* (Q, D) projected queries */
    float *actx;            /* (Q, D) attention output */
    float *amlp1, *amlp3;   /* (Q, a_mlp) */
    float *visual;          /* (max_slots, Q+1, l_dim) abstractor outputs = visual rows */
    const float **slot_rows; /* (max_slots) slot i's rows: visual + i * (Q+1) * l_dim */
    /* decoder (S = max_rows) */
    float *x;               /* (S, l_dim) residual stream */
    float *xn;              /* (S, l_dim) normalised stream */
    float *q;               /* (S, l_dim) queries */
    float *k, *v;           /* (S, kv_dim) keys and values of the current layer */
    float *tmp;             /* (S, kv_dim) scratch for gathered rows */
    float *att;             /* (S, l_dim) attention output */
    float *hb, *hb2;        /* (min(S, MLP_CHUNK), l_mlp) gate and up, for a chunk of rows */
    float *rope_cos, *rope_sin; /* (max_seq, l_head_dim/2) */
    float *scores;          /* (n_threads, scores_stride) per-thread attention scores */
    size_t scores_stride;   /* ATT_SCRATCH_ROWS * pad16(max(E, max_seq)) */
    float *kt;              /* (2, max(v_dim, kv_dim), pad16(max(E, max_seq))) attention workspace */
    int vit_att_bf16;       /* ViT attention with bf16 products: weights not f32, not precise */
    float *final;           /* (max_batch, l_dim) final-norm hidden state of each sequence's last row */
    float *row;             /* (max(l_dim, v_dim)) one weight row as f32 */
    Acts acts;              /* the current matmul input, prepared for the weight type */
    /* keys/values of the first rows of a prompt, the same for every image: slot 0 holds the
     * text before the image; slots 1..A a comparison prompt's text and anchor k-1 */
    int max_prefix;         /* rows a slot can hold */
    int n_caches;           /* slots */
    int cache_rows[1 + QALIGN_MAX_ANCHORS]; /* rows cached in each slot (0: none) */
    int *prefix_ids;        /* (max_prefix) the token ids slot 0 was computed for */
    float *kc, *vc;         /* (n_caches, l_layers, max_prefix, kv_dim) RoPE'd keys, values */
    /* looking inside */
    qalign_stage_fn hook;   /* every stage goes here (and every row is computed), or NULL */
    void *hook_user;
    qalign_timings seconds; /* cumulative, per stage */
    size_t bytes;           /* allocated for all of the above */
} RunState;

/* The decoder MLP runs over at most this many rows at a time, so its (rows x l_mlp)
 * buffers stay small however long a video is. */
#define MLP_CHUNK 256

/* Show an array to the stage hook (no-op without one). frame: see qalign_stage. */
static void stage(RunState *s, const char *name, char type, const void *data, int frame, int ndim, ...) {
    if (!s->hook) return;
    qalign_stage st = {name, type, data, ndim, {1, 1, 1, 1}, frame};
    va_list ap;
    va_start(ap, ndim);
    for (int i = 0; i < ndim && i < 4; i++) st.shape[i] = va_arg(ap, int64_t);
    va_end(ap);
    s->hook(s->hook_user, &st);
}

/* ----------------------------------------------------------------------------------------
 * Kernels.
 *
 * Each kernel is written here as a plain scalar loop: that loop is the reference (the
 * kernel tests compare the SIMD versions against it) and the fallback on every CPU.
 * kernels_cpu() (kernels.c) is the CPU family this build was compiled for; each wrapper
 * below uses the family's version where it has one. Outputs come first and dimensions last
 * in every signature. OpenMP splits the outermost independent loop; each output element
 * is computed by one thread in a fixed order, so results never depend on the thread count
 * or on which other rows share a call. */

/* The kernels compiled in ("scalar", the family's instruction sets, "openmp"): --info, logs. */
const char *qalign_kernels(void) { return kernels_cpu()->names; }
/* The family in use and why (kernels.c): --info, /health. */
const char *qalign_kernels_why(void) { return kernels_why(); }

/* --- elementwise --------------------------------------------------------------------- */

/* x += y */
static void add_inplace(float *x, const float *y, size_t n) {
    const Kernels *k = kernels_cpu();
    if (k->add) {
        k->add(x, y, n);
        return;
    }
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

/* SwiGLU gate: a = silu(a) * b */
static void silu_mul(float *a, const float *b, size_t n) {
    const Kernels *k = kernels_cpu();
    if (k->silu_mul) {
        k->silu_mul(a, b, n);
        return;
    }
    for (size_t i = 0; i < n; i++) a[i] = silu1(a[i]) * b[i];
}

/* a = a * sigmoid(b) */
static void sigmoid_mul(float *a, const float *b, size_t n) {
    const Kernels *k = kernels_cpu();
    if (k->sigmoid_mul) {
        k->sigmoid_mul(a, b, n);
        return;
    }
    for (size_t i = 0; i < n; i++) a[i] *= 1.0f / (1.0f + expf(-b[i]));
}

/* kernels.h conv_silu_row: one row of a causal depthwise conv1d, then SiLU */
static void conv_silu_row(float *out, const float *in, size_t ldi, const float *w, int C, int K, int j0) {
    const Kernels *k = kernels_cpu();
    if (k->conv_silu_row) {
        k->conv_silu_row(out, in, ldi, w, C, K, j0);
        return;
    }
    for (int c = 0; c < C; c++) out[c] = 0.0f;
    for (int j = j0; j < K; j++) {
        const float *x = in - (size_t)(K - 1 - j) * ldi, *wj = w + (size_t)j * C;
        for (int c = 0; c < C; c++) out[c] += wj[c] * x[c];
    }
    for (int c = 0; c < C; c++) out[c] = silu1(out[c]);
}

/* kernels.h gelu_tanh: gelu_pytorch_tanh as x / (1 + exp(-2u)) */
static float gelu_tanh_fast_ref1(float x) { return x / (1.0f + expf(-1.5957691216057308f * (x + 0.044715f * x * x * x))); }
static void gelu_tanh_fast(float *x, size_t n) {
    const Kernels *k = kernels_cpu();
    if (k->gelu_tanh) {
        k->gelu_tanh(x, n);
        return;
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] = gelu_tanh_fast_ref1(x[i]);
}

/* kernels.h delta_rule16: the gated delta rule of one head on 16 columns of its state */
static void delta_rule16_ref(float *out, int ldo, float *st, const float *q, const float *k, int ldqk, const float *v, int ldv,
                             const float *decay, const float *beta, const float *qk, int T, int dk, int w) {
    for (int t = 0; t < T; t++) {
        const float *qt = q + (size_t)t * ldqk, *kt = k + (size_t)t * ldqk;
        float ak[16] = {0}, aq[16] = {0}, delta[16];
        for (int i = 0; i < dk; i++)
            for (int j = 0; j < 16; j++) ak[j] += kt[i] * st[i * 16 + j], aq[j] += qt[i] * st[i * 16 + j];
        for (int j = 0; j < 16; j++) {
            float vj = j < w ? v[(size_t)t * ldv + j] : 0.0f;
            delta[j] = (vj - decay[t] * ak[j]) * beta[t];
            if (j < w) out[(size_t)t * ldo + j] = decay[t] * aq[j] + qk[t] * delta[j];
        }
        for (int i = 0; i < dk; i++)
            for (int j = 0; j < 16; j++) st[i * 16 + j] = decay[t] * st[i * 16 + j] + kt[i] * delta[j];
    }
}

static void delta_rule16(float *out, int ldo, float *st, const float *q, const float *k, int ldqk, const float *v, int ldv,
                         const float *decay, const float *beta, const float *qk, int T, int dk, int w) {
    const Kernels *kern = kernels_cpu();
    if (kern->delta_rule16) kern->delta_rule16(out, ldo, st, q, k, ldqk, v, ldv, decay, beta, qk, T, dk, w);
    else delta_rule16_ref(out, ldo, st, q, k, ldqk, v, ldv, decay, beta, qk, T, dk, w);
}

/* softmax in place over n values, max-subtracted, sum in double */
static void softmax_ref(float *x, int n) {
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

/* --- normalisation ------------------------------------------------------------------- */

/* nn.LayerNorm over the last dim: out = (x - mean) / sqrt(var + eps) * w + b
 * out, x (T, C); out may equal x. Reference: statistics in double. */
static void layernorm_ref(float *out, const float *x, const float *w, const float *b, int T, int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C;
        float *ot = out + (size_t)t * C;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < C; i++) mean += xt[i];
        mean /= C;
        for (int i = 0; i < C; i++) var += (xt[i] - mean) * (xt[i] - mean);
        var /= C;
        float rstd = (float)(1.0 / sqrt(var + (double)eps)), m = (float)mean;
        for (int i = 0; i < C; i++) ot[i] = (xt[i] - m) * rstd * w[i] + b[i];
    }
}

static void layernorm(float *out, const float *x, const float *w, const float *b, int T, int C, float eps) {
    const Kernels *k = kernels_cpu();
    if (k->layernorm) k->layernorm(out, x, w, b, T, C, eps);
    else layernorm_ref(out, x, w, b, T, C, eps);
}

/* LlamaRMSNorm: out = w * (x / sqrt(mean(x^2) + eps)); out, x (C) */
static void rmsnorm_row(float *out, const float *x, const float *w, int C, float eps) {
    double ss = 0.0;
    for (int i = 0; i < C; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / C + (double)eps));
    for (int i = 0; i < C; i++) out[i] = w[i] * (x[i] * r);
}

/* --- activations, prepared once per matmul input (Acts: kernels.h) ------------------- */

/* One value x / d as int8: rounded, clamped to [-127, 127]. A NaN (from a broken model)
 * becomes 0 and sets *nan: its block's scale is made NaN, so the NaN is carried on (and the
 * score reported as not finite) rather than converted to an int, which C leaves undefined. */
static int quant_value(float t, int *nan) {
    *nan |= t != t;
    return t != t ? 0 : t >= 127.0f ? 127 : t <= -127.0f ? -127 : (int)nearbyintf(t);
}

/* One row's blocks of 32: q = round(x / d), d = max|x| / 127 (zero block -> d = 0, q = 0). */
static void quantize_row_ref(int8_t *q, float *d, int32_t *c, float *s, const float *x, int K) {
    for (int b = 0; b < K / QBLOCK; b++) {
        const float *xb = x + b * QBLOCK;
        float amax = 0.0f;
        for (int i = 0; i < QBLOCK; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float db = amax / 127.0f, id = db > 0.0f ? 1.0f / db : 0.0f;
        int sum = 0, nan = 0;
        for (int i = 0; i < QBLOCK; i++) {
            int v = quant_value(xb[i] * id, &nan);
            q[b * QBLOCK + i] = (int8_t)v;
            sum += v;
        }
        if (nan) db = NAN;
        d[b] = db;
        c[b] = -128 * sum;
        s[b] = db * (float)sum;
    }
}

/* The same in blocks of QBLOCK_256 (the last one of the row shorter when K is not a multiple
 * of 256), for MQ8_256 / MQ4_256: q, d and c = -128 sum q per block, and c4 = -8 sum q per 32
 * values (MQ4_256's sub-blocks). */
static void quantize_row_256_ref(int8_t *q, float *d, int32_t *c, int32_t *c4, const float *x, int K) {
    for (int b = 0; b < q256_blocks(K); b++) {
        int k0 = b * QBLOCK_256, len = q256_len(K, b);
        float amax = 0.0f;
        for (int i = 0; i < len; i++) amax = fmaxf(amax, fabsf(x[k0 + i]));
        float db = amax / 127.0f, id = db > 0.0f ? 1.0f / db : 0.0f;
        int sum = 0, nan = 0;
        for (int j = 0; j < len / QBLOCK; j++) {
            int sub = 0;
            for (int i = k0 + j * QBLOCK; i < k0 + (j + 1) * QBLOCK; i++) {
                int v = quant_value(x[i] * id, &nan);
                q[i] = (int8_t)v;
                sub += v;
            }
            c4[k0 / QBLOCK + j] = -8 * sub;
            sum += sub;
        }
        d[b] = nan ? NAN : db;
        c[b] = -128 * sum;
    }
}

/* Point the Acts at new activations; nothing is converted until a matmul needs it. */
static void acts_set(Acts *a, const float *x, int T, int K) {
    CHECK((size_t)T * (size_t)K <= a->cap);
    a->x = x;
    a->T = T;
    a->K = K;
    a->kind = ACT_NONE;
}

/* x as kind (bf16, int8 blocks); the copies a family's tiles read are made by
 * acts_interleave and acts_slice, only when a matmul will read them */
static void acts_convert(Acts *a, ActKind kind) {
    const Kernels *kern = kernels_cpu();
    int T = a->T, K = a->K, nb = acts_blocks(kind, K), ns = K / QBLOCK;
    if (kind == ACT_BF16) {
#pragma omp parallel for schedule(static)
        for (int t = 0; t < T; t++)
            for (int k = 0; k < K; k++) a->xb[(size_t)t * K + k] = f32_to_bf16(a->x[(size_t)t * K + k]);
    } else if (kind == ACT_Q8) {
#pragma omp parallel for schedule(static)
        for (int t = 0; t < T; t++) {
            int8_t *q = a->xq + (size_t)t * K;
            float *d = a->xd + (size_t)t * nb, *s = a->xs + (size_t)t * nb;
            int32_t *c = a->xc + (size_t)t * nb;
            if (kern->quantize_row) kern->quantize_row(q, d, c, s, a->x + (size_t)t * K, K);
            else quantize_row_ref(q, d, c, s, a->x + (size_t)t * K, K);
        }
    } else if (kind == ACT_Q8_256) {
#pragma omp parallel for schedule(static)
        for (int t = 0; t < T; t++) {
            int8_t *q = a->xq + (size_t)t * K;
            float *d = a->xd + (size_t)t * nb;
            int32_t *c = a->xc + (size_t)t * nb, *c4 = a->xc4 + (size_t)t * ns;
            if (kern->quantize_row_256) kern->quantize_row_256(q, d, c, c4, a->x + (size_t)t * K, K);
            else quantize_row_256_ref(q, d, c, c4, a->x + (size_t)t * K, K);
        }
    }
    int int8 = kind == ACT_Q8 || kind == ACT_Q8_256;
    a->kind = kind;
    a->R = int8 ? kern->tile_rows_q8 : kern->tile_rows_f;
    a->interleaved = a->sliced = 0;
}

/* xq in slices for a family's tile_all_rows (kernels.h, Acts.xsl), once per conversion */
static void acts_slice(Acts *a) {
    const Kernels *kern = kernels_cpu();
    int T = a->T, K = a->K;
    if (!kern->slice_rows || a->sliced || (a->kind != ACT_Q8 && a->kind != ACT_Q8_256)) return;
    a->sliced = 1;
    int R = kern->slice_rows, tiles = (T + R - 1) / R, S = (K + 63) / 64;
    CHECK((size_t)tiles * S * R * 64 <= a->slcap);
#pragma omp parallel for schedule(static)
    for (int ti = 0; ti < tiles; ti++)
        for (int j = 0; j < S; j++) {
            int8_t *dst = a->xsl + ((size_t)ti * S + j) * R * 64;
            int w = K - 64 * j < 64 ? K - 64 * j : 64;
            for (int r = 0; r < R; r++) {
                int t = ti * R + r;
                if (t < T) memcpy(dst + (size_t)r * 64, a->xq + (size_t)t * K + 64 * j, (size_t)w);
                if (t >= T || w < 64) memset(dst + (size_t)r * 64 + (t < T ? w : 0), 0, (size_t)(t < T ? 64 - w : 64));
            }
        }
}

/* the tile-interleaved copies the family's tiles read (kernels.h, Acts), once per conversion */
static void acts_interleave(Acts *a) {
    if (!a->R || a->interleaved) return;
    a->interleaved = 1;
    ActKind kind = a->kind;
    int T = a->T, K = a->K, nb = acts_blocks(kind, K), ns = K / QBLOCK, int8 = kind == ACT_Q8 || kind == ACT_Q8_256;
    int R = a->R, tiles = (T + R - 1) / R;
    int per = int8 ? 4 : kind == ACT_BF16 ? 2 : 1, groups = K / per;
    CHECK((size_t)tiles * R * groups <= a->pcap);
#pragma omp parallel for schedule(static)
    for (int ti = 0; ti < tiles; ti++) {
        uint32_t *dst = a->xp + (size_t)ti * groups * R;
        for (int r = 0; r < R; r++) {
            int t = ti * R + r;
            const uint8_t *src = int8 ? (const uint8_t *)(a->xq + (size_t)t * K)
                               : kind == ACT_BF16 ? (const uint8_t *)(a->xb + (size_t)t * K) : (const uint8_t *)(a->x + (size_t)t * K);
            for (int g = 0; g < groups; g++) {
                uint32_t v = 0;
                if (t < T) memcpy(&v, src + 4 * (size_t)g, 4);
                dst[(size_t)g * R + r] = v;
            }
            if (int8)
                for (int b = 0; b < nb; b++) {
                    size_t i = ((size_t)ti * nb + b) * R + r, j = (size_t)t * nb + b;
                    a->xdp[i] = t < T ? a->xd[j] : 0.0f;
                    a->xcp[i] = t < T ? a->xc[j] : 0;
                    if (kind == ACT_Q8) a->xsp[i] = t < T ? a->xs[j] : 0.0f;
                }
            if (kind == ACT_Q8_256)
                for (int j = 0; j < ns; j++) {
                    size_t i = ((size_t)ti * ns + j) * R + r;
                    a->xc4p[i] = t < T ? a->xc4[(size_t)t * ns + j] : 0;
                }
        }
    }
}

static ActKind act_kind_for(const Acts *a, int dtype) {
    switch (dtype) {
    case DT_MBF16: return a->bf16_fast ? ACT_BF16 : ACT_F32;
    case DT_MQ8_0: case DT_MQ4_1: return ACT_Q8;
    case DT_MQ8_256: case DT_MQ4_256: return ACT_Q8_256;
    default: return ACT_F32;
    }
}

/* --- matrix multiplication --------------------------------------------------------------
 * out[t, o] (+)= x[t, :] . W[o, :] + bias[o]          (nn.Linear: y = x W^T + b)
 *
 * Weights are stored in groups of 16 rows (kernels.h), so the natural unit of work is a
 * tile: a few activation rows x one or two groups of 16 outputs. The reference tile below
 * states the arithmetic of each weight type element by element; a family's tiles do the
 * same sums with one 64-byte weight load feeding every row of the tile. */

/* The reference tile: rows [t0, t0+nt) x groups [g0, g0+ng). */
static void tile_ref(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi,
                     int t0, int nt, int g0, int ng) {
    int K = W->cols, nb = K / QBLOCK;
    for (int t = t0; t < t0 + nt; t++) {
        for (int g = g0; g < g0 + ng; g++) {
            float acc[PACK_ROWS] = {0};
            if (W->dtype == DT_MF32) {
                /* [k][r] */
                const float *w = mf32_group(W, g), *x = a->x + (size_t)t * K;
                for (int k = 0; k < K; k++)
                    for (int r = 0; r < PACK_ROWS; r++) acc[r] += w[(size_t)k * PACK_ROWS + r] * x[k];
            } else if (W->dtype == DT_MBF16) {
                /* [k/2][r][2]; with bf16 activations the odd column is added first, as
                 * vdpbf16ps does */
                const uint16_t *w = (const uint16_t *)mbf16_group(W, g);
                for (int kp = 0; kp < K / 2; kp++)
                    for (int r = 0; r < PACK_ROWS; r++) {
                        const uint16_t *wp = w + ((size_t)kp * PACK_ROWS + r) * 2;
                        float w0 = bf16_to_f32(wp[0]), w1 = bf16_to_f32(wp[1]);
                        if (a->kind == ACT_BF16) {
                            const uint16_t *x = a->xb + (size_t)t * K + 2 * kp;
                            acc[r] += w1 * bf16_to_f32(x[1]);
                            acc[r] += w0 * bf16_to_f32(x[0]);
                        } else {
                            const float *x = a->x + (size_t)t * K + 2 * kp;
                            acc[r] += w0 * x[0];
                            acc[r] += w1 * x[1];
                        }
                    }
            } else if (W->dtype == DT_MQ8_256 || W->dtype == DT_MQ4_256) {
                /* per block of up to 256 columns, an exact int32 sum, then one float step:
                 * q8_256  d_w d_x sum_k q_w q_x
                 * q4_256  d_w d_x sum_j sc_j (sum_k in sub-block j q_w q_x) */
                const int8_t *xq = a->xq + (size_t)t * K;
                int nb256 = q256_blocks(K);
                for (int b = 0; b < nb256; b++) {
                    const uint8_t *blk = q256_block(W, g, b);
                    int len = q256_len(K, b), k0 = b * QBLOCK_256;
                    float dx = a->xd[(size_t)t * nb256 + b];
                    for (int r = 0; r < PACK_ROWS; r++) {
                        int32_t sum = 0;
                        if (W->dtype == DT_MQ8_256)
                            for (int k = 0; k < len; k++) sum += q8_256_q(blk, r, k) * xq[k0 + k];
                        else
                            for (int j = 0; j < len / QBLOCK; j++) {
                                int32_t sub = 0;
                                for (int k = j * QBLOCK; k < (j + 1) * QBLOCK; k++) sub += q4_256_q(blk, r, k) * xq[k0 + k];
                                sum += q4_256_sc(blk, len, j)[r] * sub;
                            }
                        acc[r] += (q256_d(blk, W->dtype, len)[r] * dx) * (float)sum;
                    }
                }
            } else {
                /* per block: q8_0  d_w d_x sum_k q_w q_x;   q4_1  the same + m_w d_x sum_k q_x */
                const int8_t *xq = a->xq + (size_t)t * K;
                for (int b = 0; b < nb; b++) {
                    const uint8_t *blk = mq_block(W, g, b);
                    float dx = a->xd[(size_t)t * nb + b];
                    int q4 = W->dtype == DT_MQ4_1;
                    for (int r = 0; r < PACK_ROWS; r++) {
                        int32_t sum = 0;
                        for (int k = 0; k < QBLOCK; k++) sum += (q4 ? mq4_q(blk, r, k) : mq8_q(blk, r, k)) * xq[b * QBLOCK + k];
                        acc[r] += ((q4 ? mq4_d(blk) : mq8_d(blk))[r] * dx) * (float)sum;
                        if (q4) acc[r] += mq4_m(blk)[r] * a->xs[(size_t)t * nb + b];
                    }
                }
            }
            for (int r = 0; r < PACK_ROWS && g * PACK_ROWS + r < W->rows; r++)
                store_out(out + (size_t)t * ldo + g * PACK_ROWS + r, acc[r], bias, g * PACK_ROWS + r, epi);
        }
    }
}

/* A few rows (a decode step of one answer or of a few stepped together): n products of the
 * same activations (k and v, gate and up: one fork and join for both) through the family's
 * matvec, over runs of 4 groups of each weight, where it has one for these weight types
 * (it reads each weight once for all the rows, and needs no interleaved copy). 1 if done. */
static int matmul_few(Acts *a, int n, float *const *out, const int *ldo, const Tensor *const *W, const float *bias, int epi) {
    const Kernels *kern = kernels_cpu();
    if (a->T > MATVEC_ROWS || !kern->matvec) return 0;
    ActKind kind = act_kind_for(a, W[0]->dtype);
    for (int j = 0; j < n; j++)
        if (W[j]->cols != a->K || act_kind_for(a, W[j]->dtype) != kind) return 0;
    if (a->kind != kind) acts_convert(a, kind);
    int runs[3] = {0}, total = 0;
    CHECK(n <= 3);
    for (int j = 0; j < n; j++) {
        if (!kern->matvec(out[j], ldo[j], a, W[j], bias, epi, 0, 0)) return 0;
        runs[j] = ((W[j]->rows + PACK_ROWS - 1) / PACK_ROWS + 3) / 4;
        total += runs[j];
    }
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < total; i++) {
        int j = 0, r = i;
        while (r >= runs[j]) r -= runs[j++];
        int groups = (W[j]->rows + PACK_ROWS - 1) / PACK_ROWS, g0 = 4 * r, ng = groups - g0 < 4 ? groups - g0 : 4;
        CHECK(kern->matvec(out[j], ldo[j], a, W[j], bias, epi, g0, ng));
    }
    return 1;
}

/* Rows [r0, r0 + n) of sliced int8 activations as Acts of their own (r0 a multiple of the
 * family's slice_rows): the same buffers, shifted */
static Acts acts_rows(const Acts *a, int r0, int n) {
    Acts v = *a;
    int S = kernels_cpu()->slice_rows, K = a->K, nb = acts_blocks(a->kind, K);
    CHECK(S > 0 && r0 % S == 0 && r0 + n <= a->T);
    v.x = a->x ? a->x + (size_t)r0 * K : NULL;
    v.T = n;
    v.xq = a->xq + (size_t)r0 * K;
    v.xd = a->xd + (size_t)r0 * nb;
    v.xc = a->xc + (size_t)r0 * nb;
    if (a->kind == ACT_Q8) v.xs = a->xs + (size_t)r0 * nb;
    if (a->kind == ACT_Q8_256) v.xc4 = a->xc4 + (size_t)r0 * (K / QBLOCK);
    v.xsl = a->xsl + (size_t)(r0 / S) * ((K + 63) / 64) * S * 64;
    return v;
}

/* Bytes of activation slices a block of rows may take (half of a Sapphire Rapids core's L2),
 * and the fewest rows of a block (each weight byte read from memory serves at least that many
 * rows). Measured with bench/kernels.c on that CPU: 1 MB and 128 rows took ViT fc2 (T 1025, K
 * 4096) from 1.2 to 1.75 TOP/s and the decoder's down projection at T 308 (K 11008) from 1.1
 * to 1.5; 2 or 4 MB, or 256 rows, less. */
#define ALL_ROWS_L2_BYTES ((size_t)1 << 20)
#define ALL_ROWS_MIN_ROWS 128
/* groups of 16 outputs per tile_all_rows call past ALL_ROWS_MIN_ROWS rows (AMX: two pairs,
 * which share each row tile's activations in L1); 2 for fewer rows (measured: a few percent
 * better at 77 rows, where the weights' stream from memory is the limit) */
#define ALL_ROWS_GROUPS 4

/* out (T, ldo) gets columns [0, W->rows) of x W^T + bias, through the epilogue.
 * Threads split pairs of groups of 16 output columns; each walks all rows in tiles (a
 * family's tile_all_rows: runs of ALL_ROWS_GROUPS groups over blocks of rows). */
static void matmul_acts(float *out, int ldo, Acts *a, const Tensor *W, const float *bias, int epi) {
    CHECK(a->K == W->cols);
    const Kernels *kern = kernels_cpu();
    if (matmul_few(a, 1, &out, &ldo, &W, bias, epi)) return;
    ActKind kind = act_kind_for(a, W->dtype);
    int all_rows = kern->tile_all_rows && (kern->all_rows_dtypes >> W->dtype & 1);
    if (a->kind != kind) acts_convert(a, kind);
    int groups = (W->rows + PACK_ROWS - 1) / PACK_ROWS, pairs = (groups + 1) / 2, T = a->T;
    if (all_rows) acts_slice(a);
    else acts_interleave(a);
    int RT = a->R ? a->R : 4;
    if (all_rows) { /* (no interleaved copies were made: the family must take every call) */
        /* Rows in blocks whose activation slices (rows x K bytes) stay in a core's L2 while
         * all the groups pass over them: otherwise each call re-reads all T rows from L3. A
         * block's weights are read once per block instead, so the blocks are as large as the
         * budget allows and of equal size (whole slices of slice_rows). */
        int S = kern->slice_rows, tiles = (T + S - 1) / S, G = T > ALL_ROWS_MIN_ROWS ? ALL_ROWS_GROUPS : 2;
        int quads = (groups + G - 1) / G;
        int per = (int)(ALL_ROWS_L2_BYTES / ((size_t)S * (size_t)a->K));
        if (per < ALL_ROWS_MIN_ROWS / S) per = ALL_ROWS_MIN_ROWS / S;
        int nblk = (tiles + per - 1) / per, bt = (tiles + nblk - 1) / nblk;
#pragma omp parallel
        for (int r0 = 0; r0 < T; r0 += bt * S) {
            Acts v = acts_rows(a, r0, T - r0 < bt * S ? T - r0 : bt * S);
            float *o = out + (size_t)r0 * ldo;
            /* dynamic: see below; nowait: a thread done with its groups starts the next block */
#pragma omp for schedule(dynamic) nowait
            for (int i = 0; i < quads; i++) {
                int g0 = G * i, ng = groups - g0 < G ? groups - g0 : G;
                CHECK(kern->tile_all_rows(o, ldo, &v, W, bias, epi, g0, ng));
            }
        }
        return;
    }
    /* dynamic: on a shared machine a thread that is running takes the pairs of one that is
     * not, instead of waiting for it at the end (each output is still one tile's sum) */
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < pairs; i++) {
        int g0 = 2 * i, ng = groups - g0 < 2 ? groups - g0 : 2;
        for (int t0 = 0; t0 < T; t0 += RT) {
            int nt = T - t0 < RT ? T - t0 : RT;
            if (!kern->tile || !kern->tile(out, ldo, a, W, bias, epi, t0, nt, g0, ng))
                tile_ref(out, ldo, a, W, bias, epi, t0, nt, g0, ng);
        }
    }
}

/* out (T, W->rows) = epilogue(x (T, W->cols) W^T + bias) */
static void matmul(float *out, Acts *a, const float *x, int T, const Tensor *W, const float *bias, int epi) {
    acts_set(a, x, T, W->cols);
    matmul_acts(out, W->rows, a, W, bias, epi);
}

/* Two products of the same activations, no bias (k and v; gate and up): for a few rows in
 * one parallel region, else one after the other. */
static void matmul_acts2(float *o1, int ld1, const Tensor *W1, float *o2, int ld2, const Tensor *W2, Acts *a) {
    float *out[2] = {o1, o2};
    int ldo[2] = {ld1, ld2};
    const Tensor *W[2] = {W1, W2};
    if (matmul_few(a, 2, out, ldo, W, NULL, EPI_STORE)) return;
    matmul_acts(o1, ld1, a, W1, NULL, EPI_STORE);
    matmul_acts(o2, ld2, a, W2, NULL, EPI_STORE);
}

/* Row `row` of W as f32 (embedding lookups, the few lm_head rows). */
static void matrix_row(float *out, const Tensor *W, int row) {
    int K = W->cols, g = row / PACK_ROWS, r = row % PACK_ROWS;
    for (int k = 0; k < K; k++) {
        switch (W->dtype) {
        case DT_MF32: out[k] = mf32_group(W, g)[(size_t)k * PACK_ROWS + r]; break;
        case DT_MBF16: out[k] = bf16_to_f32(((const uint16_t *)mbf16_group(W, g))[((size_t)(k / 2) * PACK_ROWS + r) * 2 + k % 2]); break;
        case DT_MQ8_0: {
            const uint8_t *blk = mq_block(W, g, k / QBLOCK);
            out[k] = mq8_d(blk)[r] * (float)mq8_q(blk, r, k % QBLOCK);
            break;
        }
        case DT_MQ4_1: {
            const uint8_t *blk = mq_block(W, g, k / QBLOCK);
            out[k] = mq4_d(blk)[r] * (float)mq4_q(blk, r, k % QBLOCK) + mq4_m(blk)[r];
            break;
        }
        case DT_MQ8_256: case DT_MQ4_256: {
            int b = k / QBLOCK_256, len = q256_len(K, b), kb = k % QBLOCK_256;
            const uint8_t *blk = q256_block(W, g, b);
            float d = q256_d(blk, W->dtype, len)[r];
            out[k] = W->dtype == DT_MQ8_256 ? d * (float)q8_256_q(blk, r, kb)
                                            : d * (float)(q4_256_sc(blk, len, kb / QBLOCK)[r] * q4_256_q(blk, r, kb));
            break;
        }
        }
    }
}

/* --- attention --------------------------------------------------------------------------
 * softmax(q k^T * scale [+ causal mask]) v for every head, heads concatenated.
 *   out (Tq, H*hd); q (Tq, ldq), head h at columns h*hd; k, v (Tk, ldkv), kv head
 *   h / (H/KVH) at columns (h/(H/KVH))*hd (GQA: repeat_kv). causal: query i sees keys
 *   j <= i + q_offset (q_offset = position of query row 0).
 * scratch, kt: the workspaces of kernels.h (ATT_SCRATCH_ROWS). */

static void attention_ref(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv, int Tq, int Tk,
                          int H, int KVH, int hd, int causal, int q_offset, float *scratch, size_t scratch_stride) {
    float scale = 1.0f / sqrtf((float)hd);
    int group = H / KVH;
#pragma omp parallel for collapse(2) schedule(static)
    for (int h = 0; h < H; h++) {
        for (int i = 0; i < Tq; i++) {
            float *s = scratch + (size_t)kernel_thread_id() * scratch_stride;
            const float *qi = q + (size_t)i * ldq + (size_t)h * hd;
            int kh = h / group, n = causal ? i + q_offset + 1 : Tk;
            for (int j = 0; j < n; j++) {
                const float *kj = k + (size_t)j * ldkv + (size_t)kh * hd;
                float dot = 0.0f;
                for (int d = 0; d < hd; d++) dot += qi[d] * kj[d];
                s[j] = dot * scale;
            }
            softmax_ref(s, n);
            float *oi = out + (size_t)i * H * hd + (size_t)h * hd;
            for (int d = 0; d < hd; d++) oi[d] = 0.0f;
            for (int j = 0; j < n; j++) {
                const float *vj = v + (size_t)j * ldkv + (size_t)kh * hd;
                for (int d = 0; d < hd; d++) oi[d] += s[j] * vj[d];
            }
        }
    }
}

/* A head size the family's kernel does not take (its SIMD forms want multiples of 16;
 * Q-ReAlign Pro's ViT has 72): the heads copied with zeros up to hd16 = pad16(hd), which
 * leaves every q.k and every output column as it was, q multiplied by sqrt(hd16 / hd) so that
 * the kernel's 1/sqrt(hd16) is the model's 1/sqrt(hd) (one rounding more than the reference),
 * then the first hd columns of each head copied back. 0 when the kernel does not take hd16
 * either, or memory runs out: the caller falls back to the reference. */
static int attention_padded(const Kernels *kern, float *out, const float *q, int ldq, const float *k, const float *v,
                            int ldkv, int Tq, int Tk, int H, int KVH, int hd, int causal, int q_offset, float *scratch,
                            size_t scratch_stride) {
    int hd16 = (int)pad16((size_t)hd);
    size_t nq = (size_t)Tq * H * hd16, nkv = (size_t)Tk * KVH * hd16, nkt = 2 * (size_t)KVH * hd16 * pad16((size_t)Tk);
    float *buf = calloc(2 * nq + 2 * nkv + nkt, sizeof(float));
    if (!buf) return 0;
    float *qp = buf, *op = qp + nq, *kp = op + nq, *vp = kp + nkv, *ktp = vp + nkv;
    float up = sqrtf((float)hd16 / (float)hd);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < Tq; i++)
        for (int h = 0; h < H; h++)
            for (int d = 0; d < hd; d++) qp[((size_t)i * H + h) * hd16 + d] = q[(size_t)i * ldq + (size_t)h * hd + d] * up;
#pragma omp parallel for schedule(static)
    for (int j = 0; j < Tk; j++)
        for (int h = 0; h < KVH; h++) {
            memcpy(kp + ((size_t)j * KVH + h) * hd16, k + (size_t)j * ldkv + (size_t)h * hd, (size_t)hd * sizeof(float));
            memcpy(vp + ((size_t)j * KVH + h) * hd16, v + (size_t)j * ldkv + (size_t)h * hd, (size_t)hd * sizeof(float));
        }
    int ok = kern->attention(op, qp, H * hd16, kp, vp, KVH * hd16, Tq, Tk, H, KVH, hd16, causal, q_offset, scratch,
                             scratch_stride, ktp);
    if (ok) {
#pragma omp parallel for schedule(static)
        for (int i = 0; i < Tq; i++)
            for (int h = 0; h < H; h++)
                memcpy(out + ((size_t)i * H + h) * hd, op + ((size_t)i * H + h) * hd16, (size_t)hd * sizeof(float));
    }
    free(buf);
    return ok;
}

static void attention(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv, int Tq, int Tk, int H,
                      int KVH, int hd, int causal, int q_offset, float *scratch, size_t scratch_stride, float *kt) {
    const Kernels *kern = kernels_cpu();
    if (kern->attention && kern->attention(out, q, ldq, k, v, ldkv, Tq, Tk, H, KVH, hd, causal, q_offset, scratch,
                                           scratch_stride, kt))
        return;
    if (kern->attention && hd % 16 &&
        attention_padded(kern, out, q, ldq, k, v, ldkv, Tq, Tk, H, KVH, hd, causal, q_offset, scratch, scratch_stride))
        return;
    attention_ref(out, q, ldq, k, v, ldkv, Tq, Tk, H, KVH, hd, causal, q_offset, scratch, scratch_stride);
}

/* The ViT's attention is a seventh of its multiply-adds but, in f32, a third of its time.
 * For models whose matmuls are not f32 anyway (not precise) a family may run it with bf16
 * products and f32 sums (the precision the original runs the whole model in): on a matrix
 * unit where the family has one (AMX: attention_bf16_unit, its sums in the unit's order),
 * else with vector instructions; elsewhere it is attention() itself. */
static void attention_vit(RunState *s, float *out, const float *q, const float *k, const float *v, int ld, int T, int H,
                          int hd) {
    const Kernels *kern = kernels_cpu();
    if (s->vit_att_bf16 && kern->attention_bf16_unit &&
        kern->attention_bf16_unit(out, q, ld, k, v, ld, T, T, H, H, hd, s->scores, s->scores_stride, s->kt))
        return;
    if (s->vit_att_bf16 && kern->attention_bf16 &&
        kern->attention_bf16(out, q, ld, k, v, ld, T, T, H, H, hd, s->scores, s->scores_stride, s->kt))
        return;
    attention(out, q, ld, k, v, ld, T, T, H, H, hd, 0, 0, s->scores, s->scores_stride, s->kt);
}

/* ----------------------------------------------------------------------------------------
 * Vision tower: CLIP ViT (MplugOwlVisionModel), one image at a time.
 * pixels (3, S, S) -> out (T, D), T = 1 + (S/P)^2. frame f of n_frames (for the hook). */

static void vision_forward(const Model *m, RunState *s, const float *pixels, float *out, int frame, int n_frames) {
    const Config *c = &m->c;
    const VisionWeights *w = &m->v;
    int D = c->v_dim, T = c->v_tokens, P = c->v_patch, G = c->v_grid, S = c->v_image;
    int H = c->v_heads, hd = D / H, K = 3 * P * P;
    float *x = s->vx, *xn = s->vxn;
    Acts *a = &s->acts;
    char name[64];

    /* image_embeds = self.patch_embed(pixel_values)          # Conv2d(3, D, P, stride=P, bias=False)
     * image_embeds = image_embeds.flatten(2).transpose(1, 2) # patch p = row*G + col
     * as a matmul: patches (G*G, 3*P*P) in the conv weight's (c, ky, kx) order */
    for (int gy = 0; gy < G; gy++)
        for (int gx = 0; gx < G; gx++) {
            float *row = s->patches + (size_t)(gy * G + gx) * K;
            for (int ch = 0; ch < 3; ch++)
                for (int ky = 0; ky < P; ky++)
                    memcpy(row + (ch * P + ky) * P, pixels + ((size_t)ch * S + (size_t)gy * P + ky) * S + (size_t)gx * P,
                           (size_t)P * sizeof(float));
        }
    matmul(x + D, a, s->patches, G * G, &w->patch, NULL, EPI_STORE);
    /* embeddings = torch.cat([class_embeds, image_embeds], dim=1)
     * embeddings = embeddings + self.position_embedding[:, :embeddings.size(1)] */
    memcpy(x, w->cls, (size_t)D * sizeof(float));
    add_inplace(x, w->pos, (size_t)T * D);
    /* embeddings = self.pre_layernorm(embeddings) */
    layernorm(x, x, w->pre_ln_w, w->pre_ln_b, T, D, c->v_eps);
    stage(s, "vision_embeddings", 'f', x, frame, 3, (int64_t)n_frames, (int64_t)T, (int64_t)D);

    for (int l = 0; l < c->v_layers; l++) {
        const VisionLayer *L = &w->layers[l];
        /* hidden_states = self.input_layernorm(hidden_states) */
        layernorm(xn, x, L->ln1_w, L->ln1_b, T, D, c->v_eps);
        /* mixed_qkv = self.query_key_value(hidden_states)
         * .reshape(B, T, H, 3, hd).permute(3, 0, 2, 1, 4)   (de-interleaved by export.py) */
        acts_set(a, xn, T, D);
        matmul_acts(s->vq, D, a, &L->wq, L->bq, EPI_STORE);
        matmul_acts(s->vk, D, a, &L->wk, L->bk, EPI_STORE);
        matmul_acts(s->vv, D, a, &L->wv, L->bv, EPI_STORE);
        /* attention_probs = softmax(q @ k^T * hd**-0.5); context = (probs @ v).permute(0,2,1,3) */
        attention_vit(s, s->vatt, s->vq, s->vk, s->vv, D, T, H, hd);
        /* output = self.dense(context_layer); hidden_states = attention_output + residual */
        matmul(x, a, s->vatt, T, &L->wo, L->bo, EPI_ADD);
        /* hidden_states = self.post_attention_layernorm(hidden_states)
         * hidden_states = residual + self.mlp(hidden_states)   # fc2(QuickGELU(fc1(x))) */
        layernorm(xn, x, L->ln2_w, L->ln2_b, T, D, c->v_eps);
        matmul(s->vmlp, a, xn, T, &L->fc1, L->fc1_b, EPI_GELU);
        matmul(x, a, s->vmlp, T, &L->fc2, L->fc2_b, EPI_ADD);
        snprintf(name, sizeof name, "vision_layer%d", l);
        stage(s, name, 'f', x, frame, 3, (int64_t)n_frames, (int64_t)T, (int64_t)D);
    }
    /* last_hidden_state = self.post_layernorm(last_hidden_state)   # all T tokens, CLS kept */
    layernorm(out, x, w->post_ln_w, w->post_ln_b, T, D, c->v_eps);
    stage(s, "vision_out", 'f', out, frame, 3, (int64_t)n_frames, (int64_t)T, (int64_t)D);
}

/* ----------------------------------------------------------------------------------------
 * Visual abstractor (MplugOwlVisualAbstractorModel): a_queries learned queries
 * cross-attend to [queries; image features] in every layer.
 * image (T, D) -> out (Q+1, l_dim): visual_fc of the queries, then vit_eos. */

static void abstractor_forward(const Model *m, RunState *s, const float *image, float *out, int frame, int n_frames) {
    const Config *c = &m->c;
    const AbstractorWeights *w = &m->a;
    int D = c->v_dim, T = c->v_tokens, Q = c->a_queries, E = Q + T, H = c->a_heads, hd = D / H;
    int Dl = c->l_dim;
    Acts *a = &s->acts;
    char name[64];

    /* query_embeds = self.query_embeds.repeat(B, 1, 1) */
    memcpy(s->aq, w->query, (size_t)Q * D * sizeof(float));
    for (int l = 0; l < c->a_layers; l++) {
        const AbstractorLayer *L = &w->layers[l];
        float *qn = s->aenc;            /* the first Q rows of enc are norm1(query) */
        /* hidden_states = self.norm1(hidden_states)                  # eps 1e-5
         * encoder_hidden_states = self.normk(encoder_hidden_states)  # the raw tower output, every layer
         * encoder_hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1) */
        layernorm(qn, s->aq, L->norm1_w, L->norm1_b, Q, D, c->a_eps);
        layernorm(s->aenc + (size_t)Q * D, image, L->normk_w, L->normk_b, T, D, c->a_eps);
        /* qk_pos_embed = torch.cat([self.q_pos_embed, self.k_pos_embed], dim=0)
         * key_layer   = self.key(encoder_hidden_states + qk_pos_embed)
         * value_layer = self.value(encoder_hidden_states)               # no positions on values */
        memcpy(s->apos, s->aenc, (size_t)E * D * sizeof(float));
        add_inplace(s->apos, L->q_pos, (size_t)Q * D);
        add_inplace(s->apos + (size_t)Q * D, L->k_pos, (size_t)T * D);
        matmul(s->ak, a, s->apos, E, &L->wk, L->bk, EPI_STORE);
        matmul(s->av, a, s->aenc, E, &L->wv, L->bv, EPI_STORE);
        /* mixed_query_layer = self.query(hidden_states + self.q_pos_embed)   # the first Q rows */
        matmul(s->aqq, a, s->apos, Q, &L->wq, L->bq, EPI_STORE);
        /* attention_probs = softmax(q @ k^T / sqrt(hd)); context = probs @ v   (mask is all zeros) */
        attention(s->actx, s->aqq, D, s->ak, s->av, D, Q, E, H, H, hd, 0, 0, s->scores, s->scores_stride, s->kt);
        /* input_tensor = input_tensor + self.out_proj(hidden_states)   # residual = norm1(query)! */
        memcpy(s->aq, qn, (size_t)Q * D * sizeof(float));
        matmul(s->aq, a, s->actx, Q, &L->wo, L->bo, EPI_ADD);
        /* input_tensor = input_tensor + self.mlp(self.norm2(input_tensor))
         * mlp(x) = w2(ffn_ln(silu(w1(x)) * w3(x))) */
        layernorm(s->aqn, s->aq, L->norm2_w, L->norm2_b, Q, D, c->a_eps);
        acts_set(a, s->aqn, Q, D);
        matmul_acts(s->amlp1, c->a_mlp, a, &L->w1, L->b1, EPI_STORE);
        matmul_acts(s->amlp3, c->a_mlp, a, &L->w3, L->b3, EPI_STORE);
        silu_mul(s->amlp1, s->amlp3, (size_t)Q * c->a_mlp);
        layernorm(s->amlp1, s->amlp1, L->ffn_ln_w, L->ffn_ln_b, Q, c->a_mlp, c->a_ffn_eps);
        matmul(s->aq, a, s->amlp1, Q, &L->w2, L->b2, EPI_ADD);
        snprintf(name, sizeof name, "abstractor_layer%d", l);
        stage(s, name, 'f', s->aq, frame, 3, (int64_t)n_frames, (int64_t)Q, (int64_t)D);
    }
    /* sequence_output = self.visual_fc(sequence_output)
     * sequence_output = torch.cat([sequence_output, self.vit_eos.repeat(B, 1, 1)], dim=1) */
    matmul(out, a, s->aq, Q, &w->fc, w->fc_b, EPI_STORE);
    memcpy(out + (size_t)Q * Dl, w->eos, (size_t)Dl * sizeof(float));
    stage(s, "abstractor_out", 'f', out, frame, 3, (int64_t)n_frames, (int64_t)(Q + 1), (int64_t)Dl);
}

/* ----------------------------------------------------------------------------------------
 * LLaMA-2 decoder with modality-adaptive k/v projections and norms.
 *
 * A batch is B sequences with the same layout: n rows each, text rows (modality 0) and
 * visual rows (modality 1) in spans, positions 0..n-1. Rows [0, start) of every sequence
 * may be a cached prefix (the text before the image, the same in every sequence; or, for
 * Compare2Score, that text and an anchor image): their keys and values come from a slot of
 * the K/V cache, and only the other nn = n - start rows, held in s->x as (B, nn, D), go
 * through the layers. The matmuls take all B*nn rows at once, so each weight matrix is read
 * once per batch; attention runs per sequence. Its naive twin (one sequence, every row
 * through every layer, no cache, no batch) is decoder_naive in tests/test_model.c, which
 * checks this fast path against it. */

typedef struct {
    int start, end;         /* rows [start, end) */
    int modality;           /* 0 text, 1 visual */
} Span;

typedef struct {
    int B;                  /* sequences */
    int n;                  /* rows per sequence */
    int start;              /* rows [0, start) of each are a cached prefix, not in x */
    const Span *spans;      /* the layout of a sequence, in order */
    int n_spans;
    const int *cache;       /* (B) the K/V cache slot of each sequence's prefix (NULL: slot 0) */
} Batch;

/* Rows [lo, hi) of a sequence, stored from row 0 of x (so position t is row t - lo),
 * normalised with the weight of their modality. */
static void rmsnorm_spans(float *out, const float *x, const float *const w[2], const Batch *bt, int lo, int hi, int C,
                          float eps) {
    for (int si = 0; si < bt->n_spans; si++) {
        const Span *sp = &bt->spans[si];
        int a = sp->start > lo ? sp->start : lo, b = sp->end < hi ? sp->end : hi;
#pragma omp parallel for schedule(static)
        for (int t = a; t < b; t++) rmsnorm_row(out + (size_t)(t - lo) * C, x + (size_t)(t - lo) * C, w[sp->modality], C, eps);
    }
}

/* RoPE tables as transformers' LlamaRotaryEmbedding (float32):
 * inv_freq = 1 / base**(arange(0, hd, 2) / hd); freqs = t * inv_freq; cos/sin of freqs */
static void rope_tables(float *cosb, float *sinb, int n, int hd, float theta) {
    int half = hd / 2;
    for (int j = 0; j < half; j++) {
        float inv_freq = 1.0f / powf(theta, (float)(2 * j) / (float)hd);
        for (int t = 0; t < n; t++) {
            float f = (float)t * inv_freq;
            cosb[(size_t)t * half + j] = (float)cos((double)f);
            sinb[(size_t)t * half + j] = (float)sin((double)f);
        }
    }
}

/* q_embed = q * cos + rotate_half(q) * sin, rotate_half(x) = cat(-x[hd/2:], x[:hd/2])
 * x (rows, heads*hd) at positions pos0, pos0+1, ...: pairs are (d, d + hd/2), not (2d, 2d+1). */
static void rope(float *x, int rows, int pos0, int heads, int hd, const float *cosb, const float *sinb) {
    int half = hd / 2;
#pragma omp parallel for schedule(static) if (rows > 1) /* (one row: a decode step, no fork) */
    for (int i = 0; i < rows; i++)
        for (int h = 0; h < heads; h++) {
            float *v = x + ((size_t)i * heads + h) * hd;
            const float *cs = cosb + (size_t)(pos0 + i) * half, *sn = sinb + (size_t)(pos0 + i) * half;
            for (int j = 0; j < half; j++) {
                float a = v[j], b = v[j + half];
                v[j] = a * cs[j] - b * sn[j];
                v[j + half] = b * cs[j] + a * sn[j];
            }
        }
}

/* LlamaMLP on `rows` rows: x += down(silu(gate(xn)) * up(xn)). Rows are independent, so
 * they go MLP_CHUNK at a time: the (rows, l_mlp) buffers stay small for long videos. */
static void swiglu_mlp(const Model *m, RunState *s, const DecoderLayer *L, float *x, const float *xn, int rows) {
    int D = m->c.l_dim, F = m->c.l_mlp;
    Acts *a = &s->acts;
    for (int r0 = 0; r0 < rows; r0 += MLP_CHUNK) {
        int nr = rows - r0 < MLP_CHUNK ? rows - r0 : MLP_CHUNK;
        acts_set(a, xn + (size_t)r0 * D, nr, D);
        matmul_acts2(s->hb, F, &L->gate, s->hb2, F, &L->up, a);
        silu_mul(s->hb, s->hb2, (size_t)nr * F);
        matmul(x + (size_t)r0 * D, a, s->hb, nr, &L->down, NULL, EPI_ADD);
    }
}

/* One decoder layer (MPLUGOwl2... LlamaDecoderLayer with MultiwayNetwork k/v and norms)
 * over the batch. On entry s->x holds the nn = n - start new rows of each sequence, and
 * rows [0, start) of each sequence's keys/values in s->k / s->v (B, n, kv_dim) are the
 * cached prefix's. The layer computes the new rows' keys and values into s->k / s->v;
 * then only the last n_out rows of each sequence (n_out <= nn) go on through attention
 * output and MLP: s->x is left as (B, n_out, D). n_out = 0: keys and values only. */
static void decoder_layer(const Model *m, RunState *s, const DecoderLayer *L, const Batch *bt, int n_out) {
    const Config *c = &m->c;
    int D = c->l_dim, H = c->l_heads, KVH = c->l_kv_heads, hd = c->l_head_dim, kvd = KVH * hd;
    int B = bt->B, n = bt->n, start = bt->start, nn = n - start;
    float *x = s->x, *xn = s->xn;
    Acts *a = &s->acts;

    /* hidden_states = self.input_layernorm(hidden_states, modality_indicators) */
    for (int b = 0; b < B; b++)
        rmsnorm_spans(xn + (size_t)b * nn * D, x + (size_t)b * nn * D, L->attn_norm, bt, start, n, D, c->l_eps);
    /* key_states   = self.k_proj(hidden_states, modality_indicators)  # multiway[m] per row
     * value_states = self.v_proj(hidden_states, modality_indicators)
     * a span's rows of all sequences are gathered, so each projection runs once */
    for (int si = 0; si < bt->n_spans; si++) {
        const Span *sp = &bt->spans[si];
        int lo = sp->start > start ? sp->start : start, hi = sp->end < n ? sp->end : n, len = hi - lo;
        if (len <= 0) continue;
        float *gin = s->att, *gk = s->q, *gv = s->tmp; /* free until the queries are made */
        for (int b = 0; b < B; b++)
            memcpy(gin + (size_t)b * len * D, xn + ((size_t)b * nn + lo - start) * D, (size_t)len * D * sizeof(float));
        acts_set(a, gin, B * len, D);
        matmul_acts(gk, kvd, a, &L->wk[sp->modality], NULL, EPI_STORE);
        matmul_acts(gv, kvd, a, &L->wv[sp->modality], NULL, EPI_STORE);
        for (int b = 0; b < B; b++) {
            memcpy(s->k + ((size_t)b * n + lo) * kvd, gk + (size_t)b * len * kvd, (size_t)len * kvd * sizeof(float));
            memcpy(s->v + ((size_t)b * n + lo) * kvd, gv + (size_t)b * len * kvd, (size_t)len * kvd * sizeof(float));
        }
    }
    /* key_states = apply_rotary_pos_emb(k, cos, sin, position_ids)   # positions start..n-1 */
    for (int b = 0; b < B; b++) rope(s->k + ((size_t)b * n + start) * kvd, nn, start, KVH, hd, s->rope_cos, s->rope_sin);
    if (n_out == 0) return;
    if (n_out < nn) /* only the last n_out rows of each sequence are needed from here on */
        for (int b = 0; b < B; b++) {
            memmove(x + (size_t)b * n_out * D, x + ((size_t)b * nn + nn - n_out) * D, (size_t)n_out * D * sizeof(float));
            memmove(xn + (size_t)b * n_out * D, xn + ((size_t)b * nn + nn - n_out) * D, (size_t)n_out * D * sizeof(float));
        }
    int first = n - n_out; /* position of each sequence's first remaining row */
    /* query_states = apply_rotary_pos_emb(self.q_proj(hidden_states), cos, sin, position_ids)
     * attn_weights = softmax(q @ k^T / sqrt(hd) + causal_mask, dtype=float32) @ v   (repeat_kv for GQA) */
    matmul(s->q, a, xn, B * n_out, &L->wq, NULL, EPI_STORE);
    for (int b = 0; b < B; b++) {
        float *qb = s->q + (size_t)b * n_out * D;
        rope(qb, n_out, first, H, hd, s->rope_cos, s->rope_sin);
        attention(s->att + (size_t)b * n_out * D, qb, D, s->k + (size_t)b * n * kvd, s->v + (size_t)b * n * kvd, kvd, n_out,
                  n, H, KVH, hd, 1, first, s->scores, s->scores_stride, s->kt);
    }
    /* attn_output = self.o_proj(attn_output); hidden_states = residual + hidden_states */
    matmul(x, a, s->att, B * n_out, &L->wo, NULL, EPI_ADD);
    /* hidden_states = self.post_attention_layernorm(hidden_states, modality_indicators)
     * hidden_states = residual + self.mlp(hidden_states)  # down(silu(gate(x)) * up(x)) */
    for (int b = 0; b < B; b++)
        rmsnorm_spans(xn + (size_t)b * n_out * D, x + (size_t)b * n_out * D, L->mlp_norm, bt, first, n, D, c->l_eps);
    swiglu_mlp(m, s, L, x, xn, B * n_out);
}

/* Where cache slot `slot` keeps layer l's keys (or values): (max_prefix, kv_dim) floats. */
static size_t cache_offset(const RunState *s, const Config *c, int slot, int l) {
    return ((size_t)slot * c->l_layers + l) * s->max_prefix * (size_t)(c->l_kv_heads * c->l_head_dim);
}

/* All decoder layers over the batch, then the final norm.
 * save >= 0: the batch is one sequence with nothing cached (start = 0) whose keys and
 *   values are to be kept, every layer's, in cache slot `save`; nothing else is needed.
 * Otherwise final (B, D) gets the final-norm state of each sequence's last row. In the
 * last layer only that row goes on past the keys and values, unless a stage hook wants
 * every row (then B = 1 and every layer is shown whole). */
static void decoder_forward(const Model *m, RunState *s, const Batch *bt, int save, float *final) {
    const Config *c = &m->c;
    const DecoderWeights *w = &m->l;
    int D = c->l_dim, kvd = c->l_kv_heads * c->l_head_dim, n = bt->n, start = bt->start, nn = n - start;
    char name[64];

    CHECK(save < 0 || (bt->B == 1 && start == 0 && n <= s->max_prefix));
    rope_tables(s->rope_cos, s->rope_sin, n, c->l_head_dim, c->l_rope_theta);
    for (int l = 0; l < c->l_layers; l++) {
        for (int b = 0; b < bt->B && start > 0; b++) { /* the cached prefix's keys and values */
            size_t at = cache_offset(s, c, bt->cache ? bt->cache[b] : 0, l);
            memcpy(s->k + (size_t)b * n * kvd, s->kc + at, (size_t)start * kvd * sizeof(float));
            memcpy(s->v + (size_t)b * n * kvd, s->vc + at, (size_t)start * kvd * sizeof(float));
        }
        int last = l == c->l_layers - 1, n_out = !last || s->hook ? nn : save >= 0 ? 0 : 1;
        decoder_layer(m, s, &w->layers[l], bt, n_out);
        if (save >= 0) {
            memcpy(s->kc + cache_offset(s, c, save, l), s->k, (size_t)n * kvd * sizeof(float));
            memcpy(s->vc + cache_offset(s, c, save, l), s->v, (size_t)n * kvd * sizeof(float));
        }
        snprintf(name, sizeof name, "llm_layer%d", l);
        stage(s, name, 'f', s->x, -1, 2, (int64_t)n, (int64_t)D);
        nn = n_out;
    }
    if (save >= 0) return;
    /* hidden_states = self.norm(hidden_states) */
    if (s->hook) { /* every row, to show them; B = 1 */
        float *xn = s->xn;
#pragma omp parallel for schedule(static)
        for (int t = 0; t < n; t++) rmsnorm_row(xn + (size_t)t * D, s->x + (size_t)t * D, w->norm, D, c->l_eps);
        stage(s, "llm_final_norm", 'f', xn, -1, 2, (int64_t)n, (int64_t)D);
        memcpy(final, xn + (size_t)(n - 1) * D, (size_t)D * sizeof(float));
    } else {
        for (int b = 0; b < bt->B; b++) rmsnorm_row(final + (size_t)b * D, s->x + (size_t)b * D, w->norm, D, c->l_eps);
    }
}

/* ----------------------------------------------------------------------------------------
 * Scoring: the prompt, the spliced sequence, and the level logits.
 *
 * prompt = "USER: How would you rate the {task} of this {input}?\n<|image|>\nASSISTANT: The {task} of the {input} is"
 * input_ids = tokenizer_image_token(prompt)   # chunks tokenized separately, one BOS
 * logits = lm_head(hidden_states)[:, -1, [excellent, good, fair, poor, bad]]
 * score = softmax(logits) @ [5, 4, 3, 2, 1]
 * std = sqrt(softmax(logits) @ ([5, 4, 3, 2, 1] - score)**2)    # DeQA-Score's spread
 * The rest of the family (README "Models", the presets in the back matter) changes the
 * prompt and the level words and weights, averages the logits of synonyms per level
 * (Q-Instruct's boost: logits.reshape(-1, 3, 3).mean(1)), divides the logits by a
 * temperature (Compare2Score: logits / 100), or has several images in one prompt
 * (Compare2Score: an anchor image, then the image to score). */

#define MAX_SPANS (2 * QALIGN_MAX_MARKERS + 1)

typedef struct {
    int n;                          /* number of levels */
    char words[QALIGN_MAX_LEVELS][32]; /* each level's name: its first word (excellent, good, ...) */
    int n_ids[QALIGN_MAX_LEVELS];   /* words whose logits are averaged into the level: 1 (Q-Boost: 3) */
    int ids[QALIGN_MAX_LEVELS][QALIGN_MAX_SYNONYMS]; /* their token ids: tokenizer(word).input_ids[1] */
    float weights[QALIGN_MAX_LEVELS]; /* score = sum softmax(logits / temperature) * weights */
    float temperature;              /* 1 (Compare2Score: 100) */
    float lo, hi;                   /* smallest and largest weight */
    char text[QALIGN_MAX_LEVELS * (QALIGN_MAX_SYNONYMS * 32 + 24) + 32]; /* as read: "w|w2=weight,..." (" /T") */
    char note[1024];                /* words of several pieces: which piece is scored (qalign_ctx_notes) */
} Levels;

typedef struct {
    int *ids;               /* (n_ids) prompt ids, TOKEN_IMAGE_MARKER where the images go */
    int n_ids;
    int n_markers;          /* images in the prompt: 1, or several (Compare2Score: 2) */
} Prompt;

/* Decoder rows for a prompt whose every marker stands for `frames` images (1; a video's frames). */
static int sequence_length(const Model *m, const Prompt *p, int frames) {
    return p->n_ids - p->n_markers + p->n_markers * frames * (m->c.a_queries + 1);
}

/* The layout of a sequence (prepare_inputs_labels_for_multimodal): spans of text rows,
 * modality 0, and for each marker one span of visual rows, modality 1. */
static int prompt_spans(const Model *m, const Prompt *p, int frames, Span *spans) {
    int n_spans = 0, t = 0;
    for (int i = 0; i < p->n_ids; i++) {
        int start = t, vis = p->ids[i] == TOKEN_IMAGE_MARKER;
        t += vis ? frames * (m->c.a_queries + 1) : 1;
        if (n_spans && !vis && spans[n_spans - 1].modality == 0) spans[n_spans - 1].end = t;
        else spans[n_spans++] = (Span){start, t, vis};
    }
    return n_spans;
}

/* Rows [lo, hi) of a sequence into x (hi - lo, l_dim):
 *   cur_new_input_embeds.append(self.get_model().embed_tokens(cur_input_ids[:image_token_start]))
 *   cur_new_input_embeds.append(cur_image_features)      # image_features[cur_image_idx], then += 1
 * the j-th image of the prompt (marker j / frames, its frame j % frames) is img[j]: Q+1
 * visual rows (encode_frame's), a marker's frames one after the other. */
static void sequence_rows(const Model *m, const Prompt *p, int frames, const float *const *img, int lo, int hi, float *x) {
    size_t Dl = (size_t)m->c.l_dim;
    int rows = m->c.a_queries + 1, t = 0, j = 0;
    for (int i = 0; i < p->n_ids && t < hi; i++) {
        if (p->ids[i] != TOKEN_IMAGE_MARKER) {
            if (t >= lo) matrix_row(x + (size_t)(t - lo) * Dl, &m->l.embed, p->ids[i]);
            t++;
            continue;
        }
        for (int f = 0; f < frames; f++, j++)
            for (int r = 0; r < rows; r++, t++)
                if (t >= lo && t < hi) memcpy(x + (size_t)(t - lo) * Dl, img[j] + (size_t)r * Dl, Dl * sizeof(float));
    }
}

/* logit of token id: lm_head row id . h, in f32 */
static float head_logit(const Model *m, RunState *s, int id, const float *h) {
    matrix_row(s->row, &m->l.head, id);
    double sum = 0.0;
    for (int i = 0; i < m->c.l_dim; i++) sum += (double)s->row[i] * h[i];
    return (float)sum;
}

/* The result at a sequence's last position, h = its final-norm state:
 *   logits = self.lm_head(h)[level_ids]      # a level of synonyms: the mean of their logits
 *   probs = torch.softmax(logits / temperature, -1); score = probs @ weights; std as above */
static void level_result(const Model *m, RunState *s, const Levels *lv, const float *h, int frames, qalign_result *r) {
    memset(r, 0, sizeof *r);
    r->n_levels = lv->n;
    r->frames = frames;
    for (int i = 0; i < lv->n; i++) {
        double sum = 0.0;
        for (int j = 0; j < lv->n_ids[i]; j++) sum += head_logit(m, s, lv->ids[i][j], h);
        r->logits[i] = (float)(sum / lv->n_ids[i]);
        r->probs[i] = r->logits[i] / lv->temperature;
    }
    softmax_ref(r->probs, lv->n);
    double score = 0.0, var = 0.0;
    for (int i = 0; i < lv->n; i++) score += (double)r->probs[i] * lv->weights[i];
    for (int i = 0; i < lv->n; i++) var += (double)r->probs[i] * (lv->weights[i] - score) * (lv->weights[i] - score);
    r->score = (float)score;
    r->std = (float)sqrt(var);
    int finite = isfinite(r->score) && isfinite(r->std);
    for (int i = 0; i < lv->n; i++) finite = finite && isfinite(r->logits[i]) && isfinite(r->probs[i]);
    if (!finite) {
        r->status = QALIGN_ERR_NUMERIC;
        snprintf(r->error, sizeof r->error, "the model computed a value that is not a finite number (NaN or "
                 "infinity); the model file may be damaged:" HINT_EXPORT);
    }
}

/* Preprocess a decoded image into the model's input (3, S, S): image_preprocess (image.h)
 * pads to a square with the model's fill (Q-Align's score(): expand2square) or, without
 * the padding, resizes the short side and centre-crops (CLIPImageProcessor); Pillow's
 * bicubic either way. The S x S uint8 image goes to the stage hook. */
static int preprocess_image(const Model *m, RunState *s, const Image *img, int pad, int frame, int n_frames, char *err,
                            size_t errlen) {
    int S = m->c.v_image;
    Image sq = {0};
    if (image_preprocess(img, pad ? IMAGE_PAD : IMAGE_CROP, m->c.fill, S, &sq, err, errlen) != 0)
        return QALIGN_ERR_INPUT;
    image_normalize(&sq, m->c.mean, m->c.std, s->pixels);
    stage(s, "resized_rgb", 'u', sq.rgb, frame, 4, (int64_t)n_frames, (int64_t)S, (int64_t)S, (int64_t)3);
    image_free(&sq);
    return QALIGN_OK;
}

/* image_features = self.encode_images(images)[f]: vision tower + abstractor for frame f of
 * n_frames (in s->pixels); its Q+1 visual rows go to out. */
static void encode_frame(const Model *m, RunState *s, float *out, int f, int n_frames) {
    const Config *c = &m->c;
    stage(s, "pixel_values", 'f', s->pixels, f, 4, (int64_t)n_frames, (int64_t)3, (int64_t)c->v_image, (int64_t)c->v_image);
    double t0 = now_seconds();
    vision_forward(m, s, s->pixels, s->vision_out, f, n_frames);
    double t1 = now_seconds();
    abstractor_forward(m, s, s->vision_out, out, f, n_frames);
    s->seconds.vision += t1 - t0;
    s->seconds.abstractor += now_seconds() - t1;
}

/* Keys and values of rows [0, n) of a sequence (its images img, as in score_batch), every
 * layer's, kept in cache slot `slot`: the first rows of a prompt, computed once for every
 * sequence that starts with them. */
static void cache_prefix(const Model *m, RunState *s, const Prompt *p, int frames, const float *const *img, int n,
                         int slot) {
    Span spans[MAX_SPANS];
    int n_spans = prompt_spans(m, p, frames, spans); /* spans past row n are left out by the layers */
    CHECK(slot < s->n_caches && n <= s->max_prefix && n <= s->max_rows);
    sequence_rows(m, p, frames, img, 0, n, s->x);
    Batch pre = {1, n, 0, spans, n_spans, NULL};
    decoder_forward(m, s, &pre, slot, NULL);
    s->cache_rows[slot] = n;
}

/* The decoder over B sequences of one prompt, then the level result at each sequence's last
 * position: out[0..B). Sequence b's j-th image has the visual rows img[b * per + j], per =
 * markers * frames. B > 1 reads each decoder weight once for B sequences; the numbers are
 * the same as one at a time.
 *   cache == NULL: the text before the first image is the same for every image of a prompt:
 *     its keys and values are computed once (slot 0) and reused, exactly (no row depends on
 *     later rows). With a stage hook every row is computed, to show every row.
 *   cache != NULL: rows [0, cache_rows[cache[b]]) of sequence b come from that slot (made by
 *     cache_prefix, the same number of rows in each). */
static void score_batch(const Model *m, RunState *s, const Prompt *p, const Levels *lv, int B, int frames,
                        const float *const *img, const int *cache, qalign_result *out) {
    const Config *c = &m->c;
    size_t Dl = (size_t)c->l_dim;
    int per = p->n_markers * frames, n = sequence_length(m, p, frames);
    double t_dec = now_seconds();
    CHECK(n <= s->max_seq && B <= s->max_batch && B * n <= s->max_rows && p->n_markers <= QALIGN_MAX_MARKERS);

    Span spans[MAX_SPANS];
    int n_spans = prompt_spans(m, p, frames, spans), prefix = 0;
    if (cache) {
        prefix = s->cache_rows[cache[0]];
        for (int b = 0; b < B; b++) CHECK(prefix > 0 && s->cache_rows[cache[b]] == prefix);
    } else if (!s->hook && spans[0].modality == 0 && spans[0].end <= s->max_prefix) {
        prefix = spans[0].end;
        if (s->cache_rows[0] != prefix || memcmp(s->prefix_ids, p->ids, (size_t)prefix * sizeof(int))) {
            cache_prefix(m, s, p, frames, img, prefix, 0);
            memcpy(s->prefix_ids, p->ids, (size_t)prefix * sizeof(int));
        }
    }
    /* rows [prefix, n) of each sequence into s->x (B, n - prefix, Dl) */
    int nn = n - prefix;
    for (int b = 0; b < B; b++) sequence_rows(m, p, frames, img + (size_t)b * per, prefix, n, s->x + (size_t)b * nn * Dl);
    if (s->hook) {
        int64_t *mod = malloc((size_t)n * sizeof(int64_t)), *ids = malloc((size_t)p->n_ids * sizeof(int64_t));
        if (mod && ids) { /* (only shown: a failed allocation leaves these two out) */
            for (int si = 0; si < n_spans; si++)
                for (int r = spans[si].start; r < spans[si].end; r++) mod[r] = spans[si].modality;
            for (int i = 0; i < p->n_ids; i++) ids[i] = p->ids[i];
            stage(s, "input_ids", 'i', ids, -1, 1, (int64_t)p->n_ids);
            stage(s, "modality_indicators", 'i', mod, -1, 1, (int64_t)n);
        }
        free(mod);
        free(ids);
        stage(s, "llm_inputs_embeds", 'f', s->x, -1, 2, (int64_t)n, (int64_t)Dl);
    }
    Batch bt = {B, n, prefix, spans, n_spans, cache};
    decoder_forward(m, s, &bt, -1, s->final);
    s->seconds.decoder += now_seconds() - t_dec;

    /* logits = self.lm_head(hidden_states)[:, -1, level_ids]   # only those rows of lm_head */
    for (int b = 0; b < B; b++) level_result(m, s, lv, s->final + (size_t)b * Dl, per, &out[b]);
    if (s->hook) {
        float *all = malloc((size_t)c->l_vocab * sizeof(float));
        if (all) {
            for (int v = 0; v < c->l_vocab; v++) all[v] = head_logit(m, s, v, s->final);
            stage(s, "logits_last", 'f', all, -1, 1, (int64_t)c->l_vocab);
        }
        free(all);
        stage(s, "level_logits", 'f', out[0].logits, -1, 1, (int64_t)lv->n);
        stage(s, "score", 'f', &out[0].score, -1, 1, (int64_t)1);
    }
}

/* ----------------------------------------------------------------------------------------
 * Compare2Score (Q-Future/Compare2Score; IQA-PyTorch's compare2score) rates an image by
 * comparing it with A = 5 anchor images, one prompt per anchor, the anchor first:
 *   "USER: <|image|> <|image|> Compared with the first image, what is your quality rating
 *    for second image? \nASSISTANT: The quality of the second image is"
 * p_k = softmax(logits / 100) @ [0, .25, .5, .75, 1] over inferior worse similar better
 * superior is its preference over anchor k (score_batch with the context's levels). With
 * the anchors' preferences among themselves (a fixed 5 x 5 matrix), p gives the scores of
 * all 6 images by maximum likelihood, min-max scaled to 0..100 (compare_fit). The whole
 * method is here: the fit, then the anchors (anchors_init: qalign_ctx_new encodes their
 * visual rows once; anchors_prepare: the keys and values of the prompt up to the second
 * image, once per run state) and compare_image, which qalign_flush calls per image. An
 * image then costs one vision pass and one decoder pass of B = 5 over its own rows, where
 * the original runs both images through the whole model once per anchor. */

#define C2S_ANCHORS 5
#define C2S_STEPS 100           /* num_iterations=100 (the GitHub scorer.py and IQA_dataset_eval.py
                                   have a sigmoid for the CDF and 100 or 50 steps instead) */
#define C2S_LR 0.1              /* torch.optim.Adam([initial_scores], lr=0.1), other defaults:  */
#define C2S_BETA1 0.9           /*   betas=(0.9, 0.999), eps=1e-8                                */
#define C2S_BETA2 0.999
#define C2S_EPS 1e-8

/* self.anchor_matrix = np.array([...], dtype=np.float32): row i, column j = the preference
 * of anchor i over anchor j (cmp_modelling_mplug_owl2.py:L307-L313) */
static const float C2S_ANCHOR_MATRIX[C2S_ANCHORS][C2S_ANCHORS] = {
    {5.0000000e-01f, 2.5912809e-01f, 3.3130276e-04f, 1.6087297e-06f, 1.1803027e-09f},
    {7.4087191e-01f, 5.0000000e-01f, 2.4985345e-01f, 9.9954158e-02f, 1.8675303e-08f},
    {9.9966872e-01f, 7.5014657e-01f, 5.0000000e-01f, 4.9968880e-01f, 2.4852838e-01f},
    {9.9999839e-01f, 9.0004587e-01f, 5.0031120e-01f, 5.0000000e-01f, 2.5400183e-01f},
    {1.0000000e+00f, 1.0000000e+00f, 7.5147164e-01f, 7.4599814e-01f, 5.0000000e-01f},
};

/* torch.manual_seed(0); initial_scores = torch.rand(6): the numbers the CPU generator gives
 * (0.4962566 0.7682218 0.08847743 0.13203049 0.30742282 0.6340787; a CUDA device draws
 * others, so the original's result on a GPU can differ by what 100 steps leave of them) */
static const float C2S_START[C2S_ANCHORS + 1] = {0x1.fc2ab0p-2f, 0x1.89545ep-1f, 0x1.6a6750p-4f,
                                                 0x1.0e6600p-3f, 0x1.3acd0cp-2f, 0x1.44a5f6p-1f};

/* The image's 0..100 score from its preferences pref[0..5) over the anchors, as
 *   c = update_matrix(anchor_matrix, p, indices)       # new row p_k, new column 1 - p_k, [5,5] = 0.5
 *   optimize_score_map_pytorch_cuda(c, seed=0, num_iterations=100):
 *     loss = -(sum(c * log(maximum(norm_cdf(s[:, None] - s), 1e-6))) - sum(s ** 2) / 2)
 *     100 steps of Adam from the start values; return 100 * (s[5] - min(s)) / (max(s) - min(s))
 * in double precision from the float32 values the original holds (c is float32 there).
 * NaN if every score came out equal. */
static double compare_fit(const float *pref) {
    enum { N = C2S_ANCHORS + 1 };
    double c[N][N], x[N], m1[N] = {0}, m2[N] = {0};
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++)
            c[i][j] = i < C2S_ANCHORS && j < C2S_ANCHORS ? C2S_ANCHOR_MATRIX[i][j]
                      : i == j                           ? 0.5
                      : i == C2S_ANCHORS                 ? pref[j]
                                                         : (float)(1.0 - pref[i]);
    for (int i = 0; i < N; i++) x[i] = C2S_START[i];
    for (int t = 1; t <= C2S_STEPS; t++) {
        /* d loss / d s_i = s_i - sum_j c_ij g(s_i - s_j) + sum_j c_ji g(s_j - s_i),
         * g(d) = norm_pdf(d) / norm_cdf(d), and 0 where the 1e-6 floor holds */
        double g[N];
        for (int i = 0; i < N; i++) g[i] = x[i];
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                double d = x[i] - x[j], cdf = 0.5 * (1.0 + erf(d / sqrt(2.0)));
                if (cdf <= 1e-6) continue;
                double q = c[i][j] * exp(-0.5 * d * d) / 2.5066282746310002 / cdf; /* sqrt(2 pi) */
                g[i] -= q;
                g[j] += q;
            }
        /* torch.optim.Adam step t */
        double bc1 = 1.0 - pow(C2S_BETA1, t), bc2 = 1.0 - pow(C2S_BETA2, t);
        for (int i = 0; i < N; i++) {
            m1[i] = C2S_BETA1 * m1[i] + (1.0 - C2S_BETA1) * g[i];
            m2[i] = C2S_BETA2 * m2[i] + (1.0 - C2S_BETA2) * g[i] * g[i];
            x[i] -= C2S_LR / bc1 * m1[i] / (sqrt(m2[i]) / sqrt(bc2) + C2S_EPS);
        }
    }
    double lo = x[0], hi = x[0];
    for (int i = 1; i < N; i++) lo = x[i] < lo ? x[i] : lo, hi = x[i] > hi ? x[i] : hi;
    return hi > lo ? 100.0 * (x[N - 1] - lo) / (hi - lo) : NAN;
}

/* A comparison scorer's anchors: their visual rows, encoded once by qalign_ctx_new, and where
 * the second image starts in the comparison prompt. */
typedef struct {
    int n;                  /* anchor images (C2S_ANCHORS); 0: not a comparison scorer */
    float *rows;            /* (n, Q+1, l_dim) the anchors' visual rows */
    int prefix;             /* rows of the comparison prompt before the second image */
} Anchors;

/* Anchor k's visual rows (Q+1, l_dim) */
static float *anchor_rows(const Model *m, const Anchors *an, int k) {
    return an->rows + (size_t)k * (m->c.a_queries + 1) * m->c.l_dim;
}

/* n anchors for the comparison prompt p (two <|image|>: the anchor, then the image): the
 * prefix and room for their rows (filled by the caller). */
static int anchors_init(const Model *m, const Prompt *p, int n, Anchors *an, char *err, size_t errlen) {
    if (p->n_markers != 2)
        return fail_with(err, errlen, QALIGN_ERR_ARG, "anchors: the prompt must have two <|image|> (the anchor, then "
                         "the image), it has %d", p->n_markers);
    Span spans[MAX_SPANS];
    int n_spans = prompt_spans(m, p, 1, spans), seen = 0;
    for (int i = 0; i < n_spans && seen < 2; i++) /* the second image's first row */
        if (spans[i].modality && ++seen == 2) an->prefix = spans[i].start;
    an->n = n;
    an->rows = malloc((size_t)n * (m->c.a_queries + 1) * m->c.l_dim * sizeof(float));
    if (!an->rows) return fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory (anchors)");
    return QALIGN_OK;
}

/* The anchors' part of the comparison prompt p (text, anchor k, text), as cache slot 1 + k:
 * once per run state. */
static void anchors_prepare(const Model *m, RunState *s, const Prompt *p, const Anchors *an) {
    if (s->cache_rows[1] == an->prefix) return;
    double t0 = now_seconds();
    for (int k = 0; k < an->n; k++) {
        const float *img[2] = {anchor_rows(m, an, k), anchor_rows(m, an, k)}; /* (only the first is read) */
        cache_prefix(m, s, p, 1, img, an->prefix, 1 + k);
    }
    s->seconds.decoder += now_seconds() - t0;
}

/* Compare2Score: the image with visual rows `image` against every anchor (score_batch of
 * prompt p and levels lv with B = the anchors, each sequence's first rows from its anchor's
 * cache slot), then the fit. With a stage hook every comparison is computed whole, one at
 * a time (the same numbers). */
static void compare_image(const Model *m, RunState *s, const Prompt *p, const Levels *lv, const Anchors *an,
                          const float *image, qalign_result *out) {
    int A = an->n, L = lv->n;
    const float *img[2 * QALIGN_MAX_ANCHORS];
    int cache[QALIGN_MAX_ANCHORS];
    qalign_result r[QALIGN_MAX_ANCHORS];
    for (int a = 0; a < A; a++) {
        img[2 * a] = anchor_rows(m, an, a); /* images = [anchor_image, image] */
        img[2 * a + 1] = image;
        cache[a] = 1 + a;
    }
    if (s->hook) {
        for (int a = 0; a < A; a++) score_batch(m, s, p, lv, 1, 1, img + 2 * a, NULL, &r[a]);
    } else {
        anchors_prepare(m, s, p, an);
        score_batch(m, s, p, lv, A, 1, img, cache, r);
    }
    memset(out, 0, sizeof *out);
    out->n_levels = L;
    out->frames = 1;
    out->n_anchors = A;
    for (int a = 0; a < A; a++) {
        if (r[a].status != QALIGN_OK) {
            *out = r[a];
            return;
        }
        out->anchor_prefs[a] = r[a].score; /* probabilities.append(np.dot(softmax(output_logits), self.weight_tensor)) */
        for (int i = 0; i < L; i++) out->probs[i] += r[a].probs[i] / A, out->logits[i] += r[a].logits[i] / A;
    }
    out->score = (float)compare_fit(out->anchor_prefs);
    out->std = NAN;
    if (!isfinite(out->score)) {
        out->status = QALIGN_ERR_NUMERIC;
        snprintf(out->error, sizeof out->error, "the comparisons with the anchors gave every image the same score: no "
                 "0..100 scale (are the anchors 5 different images?)");
    }
}

/* ----------------------------------------------------------------------------------------
 * Answers in words: text generation after the prompt, as Q-Instruct's run_mplug_owl2.py
 * (and every mPLUG-Owl2 chat) does it:
 *   output_ids = model.generate(input_ids, images=image_tensor, max_new_tokens=N,
 *                               do_sample=T > 0, temperature=T, top_p=P, top_k=K,
 *                               use_cache=True, stopping_criteria=[KeywordsStoppingCriteria([stop_str])])
 *   outputs = tokenizer.batch_decode(output_ids[:, input_token_len:])[0].strip()
 *   if outputs.endswith(stop_str): outputs = outputs[:-len(stop_str)]; outputs = outputs.strip()
 * The prompt's rows go through the layers once (prefill); every layer's keys and values of
 * every row stay in the sequence's own K/V cache, sized for prompt + max_tokens rows. Then
 * each new token is one row per sequence at position n, attending to its cache; B sequences
 * step together (each decoder weight read once per token for all of them), each with its
 * own position and its own stop. The LM head runs on the last row only:
 *   logits = self.lm_head(hidden_states[:, -1, :])
 *   next_token = torch.argmax(logits, -1)       # greedy: ties go to the lowest id
 * or, sampling, HF's warpers in their order: logits / T, top-k, top-p, then a draw from a
 * counter-based generator (seed, token index): the same seed gives the same answer
 * whatever else is in the batch. */

typedef struct {
    float *kc, *vc;         /* (l_layers, cap, kvd) RoPE'd keys, values of rows [0, n) */
    int cap, n;             /* rows the cache holds, rows filled */
    int max_new;            /* tokens to generate at most */
    int *ids, n_ids;        /* (max_new) generated ids, EOS not included */
    int done;               /* 0 running, else GEN_EOS / GEN_STOP / GEN_LENGTH / GEN_FAILED */
    char *text;             /* (text_cap) the decoded answer so far (cut at the stop text) */
    size_t text_cap, text_len, sent; /* bytes of text given to on_token */
    int index;              /* its answer's index in the call (on_token's seq) */
} GenSeq;

enum { GEN_RUNNING, GEN_EOS, GEN_STOP, GEN_LENGTH, GEN_FAILED };

static float *gen_k(const Model *m, const GenSeq *g, int l) {
    return g->kc + (size_t)l * g->cap * (size_t)(m->c.l_kv_heads * m->c.l_head_dim);
}
static float *gen_v(const Model *m, const GenSeq *g, int l) {
    return g->vc + (size_t)l * g->cap * (size_t)(m->c.l_kv_heads * m->c.l_head_dim);
}

/* The decoder over nn new rows of each of B sequences (in s->x as (B, nn, D), modality
 * mod[i] for the i-th new row of every sequence), at positions g[b]->n .. g[b]->n + nn - 1,
 * then logits (B, l_vocab) of each sequence's last row. Keys and values of the new rows
 * go to each sequence's cache; rope tables in s must cover the caches' rows. */
static void gen_layers(const Model *m, RunState *s, GenSeq *const *g, int B, int nn, const uint8_t *mod, float *logits) {
    const Config *c = &m->c;
    int D = c->l_dim, H = c->l_heads, KVH = c->l_kv_heads, hd = c->l_head_dim, kvd = KVH * hd;
    float *x = s->x, *xn = s->xn;
    Acts *a = &s->acts;
    CHECK(B >= 1 && nn >= 1 && (size_t)B * nn <= (size_t)s->max_rows);
    for (int b = 0; b < B; b++) CHECK(g[b]->n + nn <= g[b]->cap && g[b]->cap <= s->max_seq);
    for (int l = 0; l < c->l_layers; l++) {
        const DecoderLayer *L = &m->l.layers[l];
        int n_out = l == c->l_layers - 1 ? 1 : nn, rows = B * nn;
        /* hidden_states = self.input_layernorm(hidden_states, modality_indicators) */
#pragma omp parallel for schedule(static) if (rows > 1) /* (a decode step of one answer: no fork) */
        for (int r = 0; r < rows; r++) rmsnorm_row(xn + (size_t)r * D, x + (size_t)r * D, L->attn_norm[mod[r % nn]], D, c->l_eps);
        /* key_states = self.k_proj(hidden_states, modality_indicators); value_states likewise:
         * the rows of one modality gathered, projected once, put in each sequence's cache */
        for (int md = 0; md < 2; md++) {
            int cnt = 0;
            for (int r = 0; r < rows; r++)
                if (mod[r % nn] == md) memcpy(s->att + (size_t)cnt++ * D, xn + (size_t)r * D, (size_t)D * sizeof(float));
            if (!cnt) continue;
            acts_set(a, s->att, cnt, D);
            matmul_acts2(s->q, kvd, &L->wk[md], s->tmp, kvd, &L->wv[md], a);
            cnt = 0;
            for (int r = 0; r < rows; r++) {
                if (mod[r % nn] != md) continue;
                const GenSeq *q = g[r / nn];
                size_t at = (size_t)(q->n + r % nn) * kvd;
                memcpy(gen_k(m, q, l) + at, s->q + (size_t)cnt * kvd, (size_t)kvd * sizeof(float));
                memcpy(gen_v(m, q, l) + at, s->tmp + (size_t)cnt * kvd, (size_t)kvd * sizeof(float));
                cnt++;
            }
        }
        /* key_states = apply_rotary_pos_emb(key_states, cos, sin, position_ids) */
        for (int b = 0; b < B; b++)
            rope(gen_k(m, g[b], l) + (size_t)g[b]->n * kvd, nn, g[b]->n, KVH, hd, s->rope_cos, s->rope_sin);
        if (n_out < nn) /* the last layer: only each sequence's last row goes on */
            for (int b = 0; b < B; b++) {
                memmove(x + (size_t)b * n_out * D, x + ((size_t)b * nn + nn - n_out) * D, (size_t)n_out * D * sizeof(float));
                memmove(xn + (size_t)b * n_out * D, xn + ((size_t)b * nn + nn - n_out) * D, (size_t)n_out * D * sizeof(float));
            }
        /* query_states = apply_rotary_pos_emb(self.q_proj(hidden_states), ...)
         * attn_output = softmax(q @ k^T / sqrt(hd) + causal_mask) @ v  over the cache's rows */
        matmul(s->q, a, xn, B * n_out, &L->wq, NULL, EPI_STORE);
        for (int b = 0; b < B; b++) {
            float *qb = s->q + (size_t)b * n_out * D;
            int first = g[b]->n + nn - n_out;
            rope(qb, n_out, first, H, hd, s->rope_cos, s->rope_sin);
            attention(s->att + (size_t)b * n_out * D, qb, D, gen_k(m, g[b], l), gen_v(m, g[b], l), kvd, n_out,
                      g[b]->n + nn, H, KVH, hd, 1, first, s->scores, s->scores_stride, s->kt);
        }
        /* hidden_states = residual + self.o_proj(attn_output) */
        matmul(x, a, s->att, B * n_out, &L->wo, NULL, EPI_ADD);
        /* hidden_states = residual + self.mlp(self.post_attention_layernorm(hidden_states, modality_indicators)) */
#pragma omp parallel for schedule(static) if (B * n_out > 1)
        for (int r = 0; r < B * n_out; r++)
            rmsnorm_row(xn + (size_t)r * D, x + (size_t)r * D, L->mlp_norm[mod[nn - n_out + r % n_out]], D, c->l_eps);
        swiglu_mlp(m, s, L, x, xn, B * n_out);
    }
    for (int b = 0; b < B; b++) g[b]->n += nn;
    /* hidden_states = self.norm(hidden_states); logits = self.lm_head(hidden_states[:, -1, :]) */
    for (int b = 0; b < B; b++) rmsnorm_row(xn + (size_t)b * D, x + (size_t)b * D, m->l.norm, D, c->l_eps);
    matmul(logits, a, xn, B, &m->l.head, NULL, EPI_STORE);
}

/* A counter-based generator: a uniform double in [0, 1) from (seed, counter) alone
 * (two rounds of splitmix64's finaliser). */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double uniform01(uint64_t seed, uint64_t counter) {
    uint64_t h = mix64(mix64(seed + 0x9e3779b97f4a7c15ull) + counter * 0x9e3779b97f4a7c15ull);
    return (double)(h >> 11) * 0x1p-53;
}

typedef struct {
    float logit;
    int id;
} Cand;
static int by_logit(const void *pa, const void *pb) {
    const Cand *a = pa, *b = pb;
    return a->logit > b->logit ? -1 : a->logit < b->logit ? 1 : (a->id > b->id) - (a->id < b->id);
}

/* The next token from logits (V): greedy (temperature 0) or sampled (step: the token's
 * index in its answer, the generator's counter). cand and p (V each) are scratch. -1 if a
 * logit is not finite. */
static int pick_token(const float *logits, int V, const qalign_ask_options *o, int step, Cand *cand, double *p) {
    int best = 0;
    for (int v = 0; v < V; v++) {
        if (!isfinite(logits[v])) return -1;
        if (logits[v] > logits[best]) best = v; /* the first of equal maxima, as torch.argmax */
    }
    if (o->temperature == 0.0f) return best;
    /* logits / temperature, then top-k, then top-p, over the tokens sorted most likely
     * first (equal logits: the lower id first) */
    for (int v = 0; v < V; v++) cand[v] = (Cand){logits[v], v};
    qsort(cand, (size_t)V, sizeof *cand, by_logit);
    int k = o->top_k > 0 && o->top_k < V ? o->top_k : V;
    double sum = 0.0, top = (double)cand[0].logit / o->temperature;
    for (int i = 0; i < k; i++) sum += p[i] = exp((double)cand[i].logit / o->temperature - top);
    if (o->top_p > 0.0f && o->top_p < 1.0f) { /* the fewest tokens whose mass reaches top_p */
        double cum = 0.0;
        int keep = 0;
        while (keep < k && cum < o->top_p * sum) cum += p[keep++];
        k = keep > 0 ? keep : 1;
        sum = 0.0;
        for (int i = 0; i < k; i++) sum += p[i];
    }
    double u = uniform01(o->seed, (uint64_t)step) * sum, cum = 0.0;
    for (int i = 0; i < k; i++) {
        cum += p[i];
        if (u < cum) return cand[i].id;
    }
    return cand[k - 1].id;
}

/* Blanks as Python's str.strip() sees them (ASCII ones, U+0085, U+00A0, U+1680,
 * U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000): bytes of one at s[0..n), or 0. */
static int blank_at(const unsigned char *s, size_t n) {
    if (n >= 1 && (s[0] == ' ' || (s[0] >= 9 && s[0] <= 13) || (s[0] >= 0x1c && s[0] <= 0x1f))) return 1;
    if (n >= 2 && s[0] == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0)) return 2;
    if (n >= 3 && s[0] == 0xE1 && s[1] == 0x9A && s[2] == 0x80) return 3;
    if (n >= 3 && s[0] == 0xE2 && s[1] == 0x80 && (s[2] <= 0x8A || s[2] == 0xA8 || s[2] == 0xA9 || s[2] == 0xAF)) return 3;
    if (n >= 3 && s[0] == 0xE2 && s[1] == 0x81 && s[2] == 0x9F) return 3;
    if (n >= 3 && s[0] == 0xE3 && s[1] == 0x80 && s[2] == 0x80) return 3;
    return 0;
}
/* s without leading and trailing blanks, in place */
static void strip_blanks(char *s) {
    size_t n = strlen(s), a = 0;
    int k;
    while (a < n && (k = blank_at((const unsigned char *)s + a, n - a)) > 0) a += (size_t)k;
    memmove(s, s + a, n - a + 1);
    n -= a;
    for (int again = 1; again && n > 0;) { /* trailing: try each blank's length */
        again = 0;
        for (size_t len = 1; len <= 3 && len <= n; len++)
            if (blank_at((const unsigned char *)s + n - len, len) == (int)len) {
                n -= len, again = 1;
                break;
            }
    }
    s[n] = 0;
}

/* Bytes at the end of g's ids that are the start of a character still incomplete: the
 * byte pieces after which more may come (not shown while streaming). */
static int gen_pending_bytes(const Model *m, const GenSeq *g) {
    const Tokenizer *t = &m->tok;
    for (int j = 1; j <= 3 && j <= g->n_ids; j++) {
        int id = g->ids[g->n_ids - j];
        if (t->types[id] != SP_BYTE) return 0;
        const char *pc = t->blob + t->offsets[id];
        unsigned hi = (unsigned)strtoul(pc + 3, NULL, 16);
        if ((hi & 0xC0) == 0x80) continue;    /* a continuation byte: look further back */
        int need = hi >= 0xF0 ? 4 : hi >= 0xE0 ? 3 : hi >= 0xC0 ? 2 : 1;
        return need > j ? j : 0;
    }
    return 0;
}

/* After a token was appended to g->ids: decode, look for the stop text, and give on_token
 * the bytes that are now certain. Returns QALIGN_OK or QALIGN_ERR_NOMEM. */
static int gen_text(const Model *m, GenSeq *g, const qalign_ask_options *o, const char *stop, int id) {
    int hold = g->done ? 0 : gen_pending_bytes(m, g);
    for (;;) {
        int len = tokenizer_decode(&m->tok, g->ids, g->n_ids - hold, g->text, g->text_cap);
        if (len < 0) return QALIGN_ERR_NOMEM;
        if ((size_t)len < g->text_cap) {
            g->text_len = (size_t)len;
            break;
        }
        char *t = realloc(g->text, (size_t)len + 64);
        if (!t) return QALIGN_ERR_NOMEM;
        g->text = t, g->text_cap = (size_t)len + 64;
    }
    size_t certain = g->text_len;
    if (*stop) {
        char *at = strstr(g->text, stop);
        if (at) {
            g->text_len = certain = (size_t)(at - g->text);
            g->text[certain] = 0;
            g->done = GEN_STOP;
        } else if (!g->done) { /* an end that may become the stop text is not shown yet */
            size_t sl = strlen(stop);
            for (size_t k = sl - 1; k > 0; k--)
                if (k <= certain && !memcmp(g->text + certain - k, stop, k)) {
                    certain -= k;
                    break;
                }
        }
    }
    if (o->on_token) {
        if (certain < g->sent) certain = g->sent;
        char save = g->text[certain];
        g->text[certain] = 0;
        o->on_token(o->user, g->index, id, g->text + g->sent);
        g->text[certain] = save;
        g->sent = certain;
    }
    return QALIGN_OK;
}

static const qalign_named_prompt ASK_PROMPTS[] = {
    {"mplug-owl2", QALIGN_ASK_PROMPT,
     "Q-Future/Q-Align q_align/conversation.py conv_mplug_owl2 (TWO_NO_SYS, sep ' ', sep2 '</s>') with "
     "qs = DEFAULT_IMAGE_TOKEN + query as Q-Instruct eval_scripts/mplug_owl_2/run_mplug_owl2.py builds it"},
    {"co-instruct", "USER: The image: <|image|> {question} ASSISTANT:",
     "q-future/co-instruct model card (Chat: Single Image; Double Image Comparison: \"USER: The first image: "
     "<|image|>\\nThe second image: <|image|>{question} ASSISTANT:\", first .. eighth for more images)"},
};

const qalign_named_prompt *qalign_ask_prompts(int *n) {
    if (n) *n = (int)(sizeof ASK_PROMPTS / sizeof ASK_PROMPTS[0]);
    return ASK_PROMPTS;
}

int qalign_ask_template(const char *prompt, int n_images, char *out, size_t cap) {
    static const char *const ORD[QALIGN_MAX_MARKERS] = {"first", "second", "third", "fourth", "fifth", "sixth",
                                                        "seventh", "eighth"};
    char buf[1024];
    const char *t = prompt ? prompt : "mplug-owl2";
    if (!out) cap = 0; /* only the length is asked for */
    if (!strstr(t, "<|image|>")) {
        if (!strcmp(t, "co-instruct") && n_images > 1 && n_images <= QALIGN_MAX_MARKERS) {
            size_t len = (size_t)snprintf(buf, sizeof buf, "USER: ");
            for (int i = 0; i < n_images; i++)
                len += (size_t)snprintf(buf + len, sizeof buf - len, "%sThe %s image: <|image|>", i ? "\n" : "", ORD[i]);
            snprintf(buf + len, sizeof buf - len, "{question} ASSISTANT:");
            t = buf;
        } else {
            size_t i = 0;
            while (i < sizeof ASK_PROMPTS / sizeof ASK_PROMPTS[0] && strcmp(ASK_PROMPTS[i].name, t)) i++;
            if (i == sizeof ASK_PROMPTS / sizeof ASK_PROMPTS[0]) return -1;
            t = ASK_PROMPTS[i].text;
        }
    }
    size_t len = strlen(t);
    if (len >= cap) return -2;
    memcpy(out, t, len + 1);
    return (int)len;
}

/* The prompt of a question: the template with {question} replaced (the question's own
 * braces are left as they are), tokenized as tokenizer_image_token does. */
static int ask_prompt(const Model *m, const char *tmpl, const char *question, Prompt *p, char *err, size_t errlen) {
    memset(p, 0, sizeof *p);
    if (strstr(question, "<|image|>")) return fail_with(err, errlen, QALIGN_ERR_ARG, "the question must not contain <|image|>");
    size_t ql = strlen(question), len = 0;
    for (const char *s = tmpl; *s;) len += strncmp(s, "{question}", 10) ? (s++, 1) : (s += 10, ql);
    char *text = malloc(len + 1);
    if (!text) return fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory (prompt)");
    len = 0;
    for (const char *s = tmpl; *s;)
        if (strncmp(s, "{question}", 10)) text[len++] = *s++;
        else memcpy(text + len, question, ql), len += ql, s += 10;
    text[len] = 0;
    int n = tokenizer_max_ids(len);
    p->ids = n > 0 ? malloc((size_t)n * sizeof(int)) : NULL;
    p->n_ids = p->ids ? tokenize_prompt(&m->tok, text, p->ids, n) : -1;
    free(text);
    if (!p->ids || p->n_ids < 0 || p->n_ids > n) {
        free(p->ids);
        p->ids = NULL;
        return fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory (prompt)");
    }
    for (int i = 0; i < p->n_ids; i++) p->n_markers += p->ids[i] == TOKEN_IMAGE_MARKER;
    if (p->n_markers < 1 || p->n_markers > QALIGN_MAX_MARKERS) {
        free(p->ids);
        p->ids = NULL;
        return fail_with(err, errlen, QALIGN_ERR_ARG, "prompt: it must contain <|image|> 1 to %d times", QALIGN_MAX_MARKERS);
    }
    return QALIGN_OK;
}

/* ----------------------------------------------------------------------------------------
 * Back matter 1: the presets, and the levels and prompt of a context from its options.
 *
 * Each preset is a scorer of the family as its original code has it; `source` says where
 * (repository file:line, at the commits README "Models" names). The prompts are given by
 * name in the presets and may be given by name as an option (qalign_prompts). */

static const qalign_named_prompt PROMPTS[] = {
    {"score", QALIGN_DEFAULT_PROMPT,
     "q-future/one-align score() on Hugging Face (the {task}/{input} order as fixed there) = chaofengc/IQA-PyTorch "
     "pyiqa/archs/q_align/modeling_mplug_owl2.py:L279; with quality/aesthetics and image/video it is Q-Future/Q-Align "
     "q_align/evaluate/scorer.py:L30, L67, L103"},
    {"iqa-eval", "USER: How would you rate the {task} of this {input}?\n<|image|> ASSISTANT: The {task} of the {input} is",
     "Q-Future/Q-Align q_align/evaluate/iqa_eval.py:L73-L81 (vqa_eval.py:L87-L95 with video): the conversation "
     "template's space before ASSISTANT"},
    {"iaa-eval", "USER: <|image|>How would you rate the {task} of this {input}? ASSISTANT: The {task} of the {input} is",
     "Q-Future/Q-Align q_align/evaluate/iaa_eval.py:L78-L86 (with task aesthetics): the image before the question"},
    {"deqa", "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is",
     "zhiyuanyou/DeQA-Score src/evaluate/scorer.py:L18"},
    {"q-instruct", "USER: <|image|>Rate the quality of the image.\nASSISTANT: ", "Q-Future/Q-Instruct boost_qa/model.py:L19"},
    {"compare2score",
     "USER: <|image|> <|image|> Compared with the first image, what is your quality rating for second image? "
     "\nASSISTANT: The quality of the second image is",
     "chaofengc/IQA-PyTorch pyiqa/archs/q_align/cmp_modelling_mplug_owl2.py:L326 = Q-Future/Compare2Score "
     "q_align/model/modeling_mplug_owl2.py:L345"},
};

static const qalign_preset PRESETS[] = {
    {"one-align", "q-future/one-align", "score", "excellent=5,good=4,fair=3,poor=2,bad=1", 0, 1.0f, 0,
     "quality aesthetics aesthetic", 1,
     "prompt: see 'score'; levels and weights 5..1: Q-Future/Q-Align q_align/model/modeling_mplug_owl2.py:L259, L273; "
     "expand2square: L276"},
    {"q-align", "q-future/q-align-quality, -image, -iaa-vqa, -iqa, -aesthetic, -vqa", "score",
     "excellent=1,good=0.75,fair=0.5,poor=0.25,bad=0", 0, 1.0f, 0, "quality aesthetics aesthetic", 1,
     "Q-Future/Q-Align q_align/evaluate/scorer.py:L30-L33 (quality), L67-L70 (aesthetics), L103-L106 (video): "
     "weights 1 0.75 0.5 0.25 0; expand2square: L54-L56"},
    {"deqa", "zhiyuanyou/DeQA-Score-Mix3", "deqa", "excellent=5,good=4,fair=3,poor=2,bad=1", 0, 1.0f, 0, "quality", 0,
     "zhiyuanyou/DeQA-Score src/evaluate/scorer.py:L18 (prompt), L20-L21 (levels, weights 5..1), L42 (expand2square); "
     "std: src/evaluate/cal_distribution_gap.py:L83-L87"},
    {"q-instruct", "q-future/q-instruct-mplug-owl2", "q-instruct", "good=1,average=0.5,poor=0", 1, 1.0f, 0, "quality", 0,
     "Q-Future/Q-Instruct boost_qa/model.py:L19 (prompt), L23-L24 (levels, weights), L37 (no expand2square)"},
    {"q-instruct-boost", "q-future/q-instruct-mplug-owl2", "q-instruct",
     "good|high|fine=1,average|medium|acceptable=0.5,poor|low|bad=0", 1, 1.0f, 0, "quality", 0,
     "Q-Future/Q-Instruct boost_qa/model.py:L27-L28 (9 words, weights), L41 (logits.reshape(-1, 3, 3).mean(1): a "
     "level's logit is the mean of its 3 synonyms'), L37 (no expand2square)"},
    /* Q-ReAlign (Qwen3.5 models): the prompt is the question of the task (qwen35.c qwen_texts) in
     * the chat template; the form (hf / swift) is in the name */
    {"q-realign-mini", "q-future/Q-ReAlign-Mini-0.8B", "<|image|>Can you rate the {task} of this picture?",
     "excellent=1,good=0.75,fair=0.5,poor=0.25,bad=0", 1, 1.0f, 0, "quality aesthetics aesthetic", 1,
     "chaofengc/IQA-PyTorch pyiqa/archs/qrealign_arch.py (TASKS, LEVELS, WEIGHTS; apply_chat_template("
     "add_generation_prompt=True) + stem, as Q-Future/Q-ReAlign README Quick Run); qalign/levels.py"},
    {"q-realign-lite", "q-future/Q-ReAlign-Lite-4B", "<|image|>Can you rate the {task} of this picture?",
     "excellent=1,good=0.75,fair=0.5,poor=0.25,bad=0", 1, 1.0f, 0, "quality aesthetics aesthetic", 1,
     "as q-realign-mini"},
    {"q-realign-pro", "q-future/Q-ReAlign-Pro-9B", "<|image|>Can you rate the {task} of this picture?",
     "excellent=1,good=0.75,fair=0.5,poor=0.25,bad=0", 1, 1.0f, 0, "quality aesthetics aesthetic", 1,
     "as q-realign-mini"},
    {"q-realign-swift", "q-future/Q-ReAlign-*", "<|image|>Can you rate the {task} of this picture?",
     "excellent=1,good=0.75,fair=0.5,poor=0.25,bad=0", 1, 1.0f, 0, "quality aesthetics aesthetic", 1,
     "Q-Future/Q-ReAlign qalign/scorer.py (ms-swift template qwen3_5, enable_thinking false, then the ids of "
     "\" \" + stem), qalign/prompts.py PROMPTS[task][0] and STEMS"},
    {"compare2score", "q-future/Compare2Score", "compare2score",
     "inferior=0,worse=0.25,similar=0.5,better=0.75,superior=1", 0, 100.0f, C2S_ANCHORS, "quality", 0,
     "chaofengc/IQA-PyTorch pyiqa/archs/q_align/cmp_modelling_mplug_owl2.py:L303, L306 (levels, weights), L307-L313 "
     "(anchor matrix), L335 (expand2square), L340-L341 (logits / 100, softmax), L342-L343 and L69-L117 (fit); the "
     "same in Q-Future/Compare2Score q_align/model/modeling_mplug_owl2.py:L78-L126, L344-L366"},
};

const qalign_preset *qalign_presets(int *n) {
    if (n) *n = (int)(sizeof PRESETS / sizeof PRESETS[0]);
    return PRESETS;
}

const qalign_preset *qalign_preset_find(const char *name) {
    for (size_t i = 0; name && i < sizeof PRESETS / sizeof PRESETS[0]; i++)
        if (!strcmp(PRESETS[i].name, name)) return &PRESETS[i];
    return NULL;
}

const qalign_named_prompt *qalign_prompts(int *n) {
    if (n) *n = (int)(sizeof PROMPTS / sizeof PROMPTS[0]);
    return PROMPTS;
}

static const char *const TASKS[] = {"quality", "aesthetics", "aesthetic"};
static const qalign_scale SCALES[] = {{"1-5", 1, 5}, {"0-1", 0, 1}, {"0-100", 0, 100}};

const char *const *qalign_tasks(int *n) {
    if (n) *n = (int)(sizeof TASKS / sizeof TASKS[0]);
    return TASKS;
}

const qalign_scale *qalign_scales(int *n) {
    if (n) *n = (int)(sizeof SCALES / sizeof SCALES[0]);
    return SCALES;
}

const qalign_scale *qalign_scale_find(const char *name) {
    for (size_t i = 0; name && i < sizeof SCALES / sizeof SCALES[0]; i++)
        if (!strcmp(SCALES[i].name, name)) return &SCALES[i];
    return NULL;
}

/* task is one of TASKS */
static int task_known(const char *task) {
    for (size_t i = 0; i < sizeof TASKS / sizeof TASKS[0]; i++)
        if (!strcmp(task, TASKS[i])) return 1;
    return 0;
}

/* A prompt option: a template (it has "<|image|>"), or the name of one. NULL if unknown. */
static const char *prompt_text(const char *prompt) {
    if (strstr(prompt, "<|image|>")) return prompt;
    for (size_t i = 0; i < sizeof PROMPTS / sizeof PROMPTS[0]; i++)
        if (!strcmp(PROMPTS[i].name, prompt)) return PROMPTS[i].text;
    return NULL;
}

static void levels_finish(Levels *lv) {
    lv->lo = lv->hi = lv->weights[0];
    for (int i = 1; i < lv->n; i++) {
        lv->lo = lv->weights[i] < lv->lo ? lv->weights[i] : lv->lo;
        lv->hi = lv->weights[i] > lv->hi ? lv->weights[i] : lv->hi;
    }
}

/* The id a level word is scored by: the first token after BOS of tokenizer(word), as
 * upstream takes tokenizer(word).input_ids[1]. -1 if the word gives no token. */
static int level_word_id(const Model *m, const char *word) {
    if (m->qwen) return qwen_word_id(m, word);
    int ids[64], n = tokenizer_encode(&m->tok, word, strlen(word), 1, ids, 64);
    return n >= 2 && n <= 64 ? ids[1] : -1;
}

/* The number of pieces word tokenizes to (without BOS); the first two go to piece[0..1]
 * as text. */
static int level_word_pieces(const Model *m, const char *word, char piece[2][40]) {
    int ids[64], n = tokenizer_encode(&m->tok, word, strlen(word), 1, ids, 64);
    for (int k = 0; k < 2; k++) {
        piece[k][0] = 0;
        if (k + 1 < n && n <= 64) {
            const Tokenizer *t = &m->tok;
            int id = ids[k + 1];
            size_t len = t->offsets[id + 1] - t->offsets[id];
            snprintf(piece[k], 40, "%.*s", (int)(len < 39 ? len : 39), t->blob + t->offsets[id]);
        }
    }
    return n - 1;
}

/* [a, b) without the blanks around it */
static void trim(const char **a, const char **b) {
    while (*a < *b && isspace((unsigned char)**a)) (*a)++;
    while (*b > *a && isspace((unsigned char)(*b)[-1])) (*b)--;
}

/* "word=weight,word=weight,..." where a word may be several, "good|high|fine=1" (the level's
 * logit is then the mean of theirs); blanks around words and numbers ignored. Two words
 * scored by the same token are refused (their probabilities would be one). */
static int levels_parse(const Model *m, const char *spec, float temperature, Levels *lv, char *err, size_t errlen) {
    memset(lv, 0, sizeof *lv);
    for (const char *p = spec; *p;) {
        const char *comma = strchr(p, ','), *end = comma ? comma : p + strlen(p), *eq = memchr(p, '=', (size_t)(end - p));
        if (!eq) return fail_with(err, errlen, QALIGN_ERR_ARG, "levels: expected word=weight,... (got '%s')", spec);
        const char *n0 = eq + 1, *n1 = end;
        trim(&n0, &n1);
        if (n0 == n1) return fail_with(err, errlen, QALIGN_ERR_ARG, "levels: expected word=weight,... (got '%s')", spec);
        if (lv->n == QALIGN_MAX_LEVELS) return fail_with(err, errlen, QALIGN_ERR_ARG, "levels: at most %d levels", QALIGN_MAX_LEVELS);
        for (const char *w = p;;) { /* the level's words, separated by '|' */
            const char *bar = memchr(w, '|', (size_t)(eq - w)), *w1 = bar ? bar : eq, *w0 = w;
            trim(&w0, &w1);
            char word[32] = {0};
            if (w0 == w1) return fail_with(err, errlen, QALIGN_ERR_ARG, "levels: expected word=weight,... (got '%s')", spec);
            if ((size_t)(w1 - w0) >= sizeof word || lv->n_ids[lv->n] == QALIGN_MAX_SYNONYMS)
                return fail_with(err, errlen, QALIGN_ERR_ARG, "levels: at most %d words of at most 31 bytes per level",
                                 QALIGN_MAX_SYNONYMS);
            memcpy(word, w0, (size_t)(w1 - w0));
            int id = level_word_id(m, word);
            if (id < 0) return fail_with(err, errlen, QALIGN_ERR_ARG, "levels: '%s' does not tokenize to a word", word);
            for (int i = 0; i <= lv->n; i++)
                for (int j = 0; j < lv->n_ids[i]; j++)
                    if (lv->ids[i][j] == id)
                        return fail_with(err, errlen, QALIGN_ERR_ARG, "levels: '%s' is scored by the same token (%d) as "
                                         "another word of the levels", word, id);
            char piece[2][40];
            int np = level_word_pieces(m, word, piece);
            if (np > 1) { /* tokenizer(word).input_ids[1], as the originals: the first piece stands for it */
                size_t nl = strlen(lv->note);
                snprintf(lv->note + nl, sizeof lv->note - nl, "%slevel word '%s' is %d pieces ('%s' '%s'%s): only the "
                         "first, '%s', is scored (as the original code's input_ids[1])", nl ? "; " : "", word, np,
                         piece[0], piece[1], np > 2 ? " ..." : "", piece[0]);
            }
            if (lv->n_ids[lv->n] == 0) memcpy(lv->words[lv->n], word, sizeof word);
            size_t tl = strlen(lv->text);
            snprintf(lv->text + tl, sizeof lv->text - tl, "%s%s", lv->n_ids[lv->n] ? "|" : lv->n ? "," : "", word);
            lv->ids[lv->n][lv->n_ids[lv->n]++] = id;
            if (!bar) break;
            w = bar + 1;
        }
        char num[64] = {0}, *tail;
        memcpy(num, n0, (size_t)(n1 - n0) < sizeof num - 1 ? (size_t)(n1 - n0) : sizeof num - 1);
        lv->weights[lv->n] = strtof(num, &tail);
        if (*tail || !isfinite(lv->weights[lv->n])) return fail_with(err, errlen, QALIGN_ERR_ARG, "levels: '%s' is not a number", num);
        size_t tl = strlen(lv->text);
        snprintf(lv->text + tl, sizeof lv->text - tl, "=%g", lv->weights[lv->n]);
        lv->n++;
        p = comma ? comma + 1 : end;
    }
    if (lv->n < 2) return fail_with(err, errlen, QALIGN_ERR_ARG, "levels: at least two words are needed");
    if (!(temperature > 0.0f) || !isfinite(temperature))
        return fail_with(err, errlen, QALIGN_ERR_ARG, "temperature must be a positive number");
    lv->temperature = temperature;
    if (temperature != 1.0f) {
        size_t tl = strlen(lv->text);
        snprintf(lv->text + tl, sizeof lv->text - tl, " /%g", temperature);
    }
    levels_finish(lv);
    return QALIGN_OK;
}

/* Tokenize the prompt template with {task} and {input} filled in; it must have 1 to
 * QALIGN_MAX_MARKERS images. */
static int build_prompt(const Model *m, const char *tmpl, const char *task, const char *input, Prompt *p, char *err,
                        size_t errlen) {
    size_t len = 0, cap = 1;
    for (int pass = 0; pass < 2; pass++) { /* measure, then write */
        char *text = pass ? malloc(cap) : NULL;
        if (pass && !text) return fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory");
        len = 0;
        for (const char *s = tmpl; *s;) {
            const char *sub = !strncmp(s, "{task}", 6) ? task : !strncmp(s, "{input}", 7) ? input : NULL;
            size_t add = sub ? strlen(sub) : 1;
            if (pass) memcpy(text + len, sub ? sub : s, add);
            len += add;
            s += sub ? (sub == task ? 6 : 7) : 1;
        }
        cap = len + 1;
        if (!pass) continue;
        text[len] = 0;
        int n = tokenizer_max_ids(len);
        p->ids = n > 0 ? malloc((size_t)n * sizeof(int)) : NULL;
        p->n_ids = p->ids ? tokenize_prompt(&m->tok, text, p->ids, n) : -1;
        free(text);
        if (!p->ids) return fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory (prompt)");
        p->n_markers = 0;
        for (int i = 0; i < p->n_ids && i < n; i++) p->n_markers += p->ids[i] == TOKEN_IMAGE_MARKER;
        if (p->n_ids < 1 || p->n_ids > n || p->n_markers < 1 || p->n_markers > QALIGN_MAX_MARKERS) {
            free(p->ids);
            p->ids = NULL;
            return fail_with(err, errlen, QALIGN_ERR_ARG, "prompt: it must contain <|image|> 1 to %d times",
                             QALIGN_MAX_MARKERS);
        }
    }
    return QALIGN_OK;
}

/* ----------------------------------------------------------------------------------------
 * Back matter 2: loading a model file.
 *
 * The file has ONE table of tensors (name, dtype, shape, offset, size) written by export.py.
 * The loader walks it once: every tensor must start at the next 64-byte boundary after the
 * previous one, and the last must end exactly at the end of the file, or at the checksum
 * section (SUMS_*) that does. Then every tensor
 * the model needs is looked up by name and its dtype and shape checked against the header;
 * a missing, misshapen, duplicate, mistyped or unknown tensor is an error that says to
 * re-run export.py. Nothing is trusted: every header field is range-checked first. The
 * bytes themselves come from platform_map (platform.c): a read-only mapping, or a copy on
 * 2 MB pages with no_mmap. */

typedef struct {
    Model *m;
    int status;             /* the first error (QALIGN_OK: none yet) */
    char *err;
    size_t errlen;
} Loader;

static int load_fail(Loader *ld, int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Note an error (the first one is the one reported); returns the status in effect. */
static int load_fail(Loader *ld, int status, const char *fmt, ...) {
    if (ld->status) return ld->status;
    ld->status = status;
    if (ld->err && ld->errlen) {
        int n = snprintf(ld->err, ld->errlen, "%s: ", ld->m->path);
        va_list ap;
        va_start(ap, fmt);
        if (n >= 0 && (size_t)n < ld->errlen) vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return status;
}

static int qwen_load(Loader *ld, Model *m); /* qwen35.c */
static void qwen_free(struct Qwen35 *q);

static uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd_u64(const uint8_t *p) { return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32; }
static float rd_f32(const uint8_t *p) {
    uint32_t u = rd_u32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* a float a model may use as an eps: a normal number in (0, 1) (a denormal or zero makes
 * 1/sqrt(var + eps) overflow on a constant row) */
static int good_eps(float e) { return isnormal(e) && e > 0.0f && e < 1.0f; }

/* Read and check every header field: anything out of range means the file was not
 * written by this version's export.py. */
static int read_config(Loader *ld, Config *c, const uint8_t *h) {
#define U(i) rd_u32(h + 4 * (i))
#define F(i) rd_f32(h + 4 * (i))
    c->wtype = (int)U(H_WTYPE);
    c->v_dim = (int)U(H_V_DIM); c->v_layers = (int)U(H_V_LAYERS); c->v_heads = (int)U(H_V_HEADS);
    c->v_mlp = (int)U(H_V_MLP); c->v_image = (int)U(H_V_IMAGE); c->v_patch = (int)U(H_V_PATCH);
    c->v_eps = F(H_V_EPS);
    c->a_layers = (int)U(H_A_LAYERS); c->a_heads = (int)U(H_A_HEADS); c->a_queries = (int)U(H_A_QUERIES);
    c->a_mlp = (int)U(H_A_MLP); c->a_eps = F(H_A_EPS); c->a_ffn_eps = F(H_A_FFN_EPS);
    c->l_dim = (int)U(H_L_DIM); c->l_layers = (int)U(H_L_LAYERS); c->l_heads = (int)U(H_L_HEADS);
    c->l_kv_heads = (int)U(H_L_KV_HEADS); c->l_mlp = (int)U(H_L_MLP); c->l_vocab = (int)U(H_L_VOCAB);
    c->l_eps = F(H_L_EPS); c->l_rope_theta = F(H_L_ROPE_THETA); c->l_max_pos = (int)U(H_L_MAX_POS);
    c->bos_id = (int)U(H_T_BOS); c->eos_id = (int)U(H_T_EOS); c->unk_id = (int)U(H_T_UNK);
    c->dummy_prefix = (int)U(H_T_DUMMY_PREFIX);
    for (int i = 0; i < 3; i++) {
        uint32_t fill = U(H_FILL_R + i);
        c->fill[i] = (uint8_t)fill;
        c->mean[i] = F(H_MEAN_R + i);
        c->std[i] = F(H_STD_R + i);
        if (fill > 255) load_fail(ld, QALIGN_ERR_FORMAT, "bad fill colour in the header;" HINT_EXPORT);
        if (!isfinite(c->mean[i]) || !isnormal(c->std[i]) || c->std[i] <= 0)
            load_fail(ld, QALIGN_ERR_FORMAT, "bad mean/std in the header;" HINT_EXPORT);
    }
#undef U
#undef F
    /* every dimension must be positive and small enough that products fit comfortably */
    const struct { const char *name; int v; } dims[] = {
        {"v_dim", c->v_dim}, {"v_layers", c->v_layers}, {"v_heads", c->v_heads}, {"v_mlp", c->v_mlp},
        {"v_image", c->v_image}, {"v_patch", c->v_patch}, {"a_layers", c->a_layers}, {"a_heads", c->a_heads},
        {"a_queries", c->a_queries}, {"a_mlp", c->a_mlp}, {"l_dim", c->l_dim}, {"l_layers", c->l_layers},
        {"l_heads", c->l_heads}, {"l_kv_heads", c->l_kv_heads}, {"l_mlp", c->l_mlp}, {"l_vocab", c->l_vocab},
    };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i].v <= 0 || dims[i].v > (1 << 24)) {
            load_fail(ld, QALIGN_ERR_FORMAT, "header field %s = %d is out of range;" HINT_EXPORT, dims[i].name, dims[i].v);
            return ld->status;
        }
    if (c->v_image % c->v_patch || c->v_image / c->v_patch > 4096) {
        load_fail(ld, QALIGN_ERR_FORMAT, "image size %d is not a multiple of patch size %d;" HINT_EXPORT, c->v_image, c->v_patch);
        return ld->status;
    }
    c->v_grid = c->v_image / c->v_patch;
    c->v_tokens = 1 + c->v_grid * c->v_grid;
    if (c->v_dim % c->v_heads || c->v_dim % c->a_heads || c->l_dim % c->l_heads || c->l_heads % c->l_kv_heads)
        load_fail(ld, QALIGN_ERR_FORMAT, "widths not divisible by head counts;" HINT_EXPORT);
    c->l_head_dim = c->l_dim / c->l_heads;
    if (c->l_head_dim % 2) load_fail(ld, QALIGN_ERR_FORMAT, "odd decoder head size;" HINT_EXPORT);
    if (c->wtype < DT_MF32 || c->wtype >= DT_COUNT) load_fail(ld, QALIGN_ERR_FORMAT, "unknown weight type %d;" HINT_EXPORT, c->wtype);
    if (c->bos_id < 0 || c->bos_id >= c->l_vocab) load_fail(ld, QALIGN_ERR_FORMAT, "BOS id out of range;" HINT_EXPORT);
    if (!good_eps(c->v_eps) || !good_eps(c->a_eps) || !good_eps(c->a_ffn_eps) || !good_eps(c->l_eps))
        load_fail(ld, QALIGN_ERR_FORMAT, "an eps in the header is not a normal number in (0, 1);" HINT_EXPORT);
    if (!isfinite(c->l_rope_theta) || c->l_rope_theta < 1.0f)
        load_fail(ld, QALIGN_ERR_FORMAT, "bad RoPE theta %g in the header;" HINT_EXPORT, (double)c->l_rope_theta);
    return ld->status;
}

/* Bytes of a tensor of n elements; matrices ([rows, cols]) pad rows to a multiple of 16. */
static uint64_t dtype_nbytes(int dtype, uint64_t n, uint64_t rows, uint64_t cols) {
    uint64_t padded = (rows + PACK_ROWS - 1) / PACK_ROWS * PACK_ROWS * cols;
    switch (dtype) {
    case DT_F32: case DT_U32: return 4 * n;
    case DT_U8: return n;
    case DT_MF32: return 4 * padded;
    case DT_MBF16: return 2 * padded;
    case DT_MQ8_0: return padded / QBLOCK * MQ8_BLOCK_BYTES / PACK_ROWS;
    case DT_MQ4_1: return padded / QBLOCK * MQ4_BLOCK_BYTES / PACK_ROWS;
    case DT_MQ8_256: case DT_MQ4_256:
        /* cols < 2^24 (read_table): the group size fits easily */
        return (rows + PACK_ROWS - 1) / PACK_ROWS * (uint64_t)q256_group_bytes(dtype, (int)cols);
    }
    return 0;
}

static int is_quantised(int dtype) { return dtype == DT_MQ8_0 || dtype == DT_MQ4_1 || dtype == DT_MQ8_256 || dtype == DT_MQ4_256; }

/* The type a matrix of `cols` columns is stored in, in a file of weight type wtype: as
 * export.py's tensor_dtype(), quantised types need rows of whole 32-value blocks (else
 * bf16; MQ8_256 / MQ4_256 end a row with a shorter block when 256 does not divide it) and
 * bf16 an even row length (else f32). */
static int matrix_dtype(int wtype, int64_t cols) {
    if (is_quantised(wtype) && cols % QBLOCK) wtype = DT_MBF16;
    if (wtype == DT_MBF16 && cols % 2) wtype = DT_MF32;
    return wtype;
}

static TableEntry *find_tensor(Model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->table[i].name, name) == 0) return &m->table[i];
    return NULL;
}

/* Look up `name`, check it has the shape (d0, d1) (d1 = 0 for a vector) and the dtype
 * `dtype`, mark it used and return its data (NULL after an error). */
static const void *bind(Loader *ld, const char *name, int64_t d0, int64_t d1, int dtype) {
    Model *m = ld->m;
    TableEntry *e = find_tensor(m, name);
    if (!e) return load_fail(ld, QALIGN_ERR_FORMAT, "tensor %s is missing;" HINT_EXPORT, name), NULL;
    if (e->used) return load_fail(ld, QALIGN_ERR_FORMAT, "tensor %s appears twice;" HINT_EXPORT, name), NULL;
    int want_ndim = d1 ? 2 : 1;
    if (e->ndim != want_ndim || e->shape[0] != d0 || (d1 && e->shape[1] != d1))
        return load_fail(ld, QALIGN_ERR_FORMAT, "tensor %s has shape [%lld,%lld], expected [%lld,%lld] from the header;" HINT_EXPORT,
                         name, (long long)e->shape[0], (long long)(e->ndim > 1 ? e->shape[1] : 0), (long long)d0, (long long)d1),
               NULL;
    if (e->dtype != dtype)
        return load_fail(ld, QALIGN_ERR_FORMAT, "tensor %s has type %s, but this file's weight type (%s) stores it as %s;" HINT_EXPORT,
                         name, DT_NAMES[e->dtype], DT_NAMES[m->c.wtype], DT_NAMES[dtype]),
               NULL;
    e->used = 1;
    return m->map + e->offset;
}

static const float *bind_vec(Loader *ld, const char *name, int64_t d0, int64_t d1) {
    return (const float *)bind(ld, name, d0, d1, DT_F32);
}

static Tensor bind_mat(Loader *ld, const char *name, int rows, int cols) {
    Tensor t = {NULL, matrix_dtype(ld->m->c.wtype, cols), rows, cols};
    t.data = bind(ld, name, rows, cols, t.dtype);
    return t;
}

/* Parse the tensor table and walk it: contiguous, aligned, inside the file, ending at its end. */
static int read_table(Loader *ld) {
    Model *m = ld->m;
    const uint8_t *h = m->map;
    m->n_tensors = (int)rd_u32(h + 4 * H_N_TENSORS);
    uint64_t table_end = HEADER_BYTES + (uint64_t)m->n_tensors * TABLE_ENTRY_BYTES;
    if (m->n_tensors <= 0 || m->n_tensors > 1000000 || table_end > m->file_size)
        return load_fail(ld, QALIGN_ERR_FORMAT, "the tensor table (%d entries) does not fit in the file (truncated?);" HINT_EXPORT,
                         m->n_tensors);
    m->table = calloc((size_t)m->n_tensors, sizeof(TableEntry));
    if (!m->table) return load_fail(ld, QALIGN_ERR_NOMEM, "out of memory (tensor table)");
    uint64_t pos = table_end;
    for (int i = 0; i < m->n_tensors; i++) {
        const uint8_t *p = h + HEADER_BYTES + (size_t)i * TABLE_ENTRY_BYTES;
        TableEntry *e = &m->table[i];
        memcpy(e->name, p, 56);
        e->name[56] = 0;
        for (char *c = e->name; *c; c++) /* names are ASCII; anything else is shown as '?' in messages */
            if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) *c = '?';
        e->dtype = (int)rd_u32(p + 56);
        e->ndim = (int)rd_u32(p + 60);
        for (int d = 0; d < 4; d++) e->shape[d] = rd_u32(p + 64 + 4 * d);
        e->offset = rd_u64(p + 80);
        e->nbytes = rd_u64(p + 88);
        if (e->dtype < 0 || e->dtype >= DT_COUNT || e->ndim < 1 || e->ndim > 4)
            return load_fail(ld, QALIGN_ERR_FORMAT, "tensor %d (%s) has an unknown dtype or rank;" HINT_EXPORT, i, e->name);
        uint64_t n = 1;
        for (int d = 0; d < e->ndim; d++) {
            if (e->shape[d] && n > ((uint64_t)1 << 48) / (uint64_t)e->shape[d])
                return load_fail(ld, QALIGN_ERR_FORMAT, "tensor %s has an impossible shape;" HINT_EXPORT, e->name);
            n *= (uint64_t)e->shape[d];
        }
        int matrix = e->dtype >= DT_MF32;
        if (matrix && (e->ndim != 2 || (is_quantised(e->dtype) && e->shape[1] % QBLOCK) ||
                       (e->dtype == DT_MBF16 && e->shape[1] % 2) || e->shape[1] > (1 << 24)))
            return load_fail(ld, QALIGN_ERR_FORMAT, "matrix %s has a shape its type cannot store;" HINT_EXPORT, e->name);
        uint64_t want = dtype_nbytes(e->dtype, n, (uint64_t)e->shape[0], (uint64_t)e->shape[e->ndim - 1]);
        uint64_t aligned = (pos + TENSOR_ALIGN - 1) / TENSOR_ALIGN * TENSOR_ALIGN;
        if (e->offset != aligned || e->nbytes != want)
            return load_fail(ld, QALIGN_ERR_FORMAT,
                             "tensor %s is not where the table walk expects it (offset %llu, want %llu; %llu bytes, want %llu);" HINT_EXPORT,
                             e->name, (unsigned long long)e->offset, (unsigned long long)aligned,
                             (unsigned long long)e->nbytes, (unsigned long long)want);
        if (e->offset + e->nbytes > m->file_size)
            return load_fail(ld, QALIGN_ERR_FORMAT, "the file is truncated: tensor %s ends at byte %llu but the file has %zu bytes;" HINT_EXPORT,
                             e->name, (unsigned long long)(e->offset + e->nbytes), m->file_size);
        pos = e->offset + e->nbytes;
    }
    /* after the last tensor: nothing (a file from before checksums), or the checksum section */
    uint64_t sums = (pos + TENSOR_ALIGN - 1) / TENSOR_ALIGN * TENSOR_ALIGN;
    if (pos != m->file_size && sums + SUMS_HEAD + 8 * (uint64_t)m->n_tensors == m->file_size &&
        rd_u32(h + sums) == SUMS_MAGIC && rd_u32(h + sums + 4) == SUMS_VERSION &&
        rd_u32(h + sums + 8) == (uint32_t)m->n_tensors && rd_u32(h + sums + 12) == SUMS_PIECE)
        m->sums = h + sums, pos = m->file_size;
    if (pos != m->file_size)
        load_fail(ld, QALIGN_ERR_FORMAT, "the tensor table ends at byte %llu but the file has %zu bytes;" HINT_EXPORT,
                  (unsigned long long)pos, m->file_size);
    return ld->status;
}

static int bind_weights(Loader *ld) {
    Model *m = ld->m;
    Config *c = &m->c;
    char n[64];
    int D = c->v_dim, P = c->v_patch, T = c->v_tokens, AM = c->a_mlp, Q = c->a_queries;
    int Dl = c->l_dim, kvd = c->l_kv_heads * c->l_head_dim;

    /* vision tower */
    VisionWeights *v = &m->v;
    v->patch = bind_mat(ld, "v.patch", D, 3 * P * P);
    v->cls = bind_vec(ld, "v.cls", D, 0);
    v->pos = bind_vec(ld, "v.pos", T, D);
    v->pre_ln_w = bind_vec(ld, "v.pre_ln.w", D, 0);
    v->pre_ln_b = bind_vec(ld, "v.pre_ln.b", D, 0);
    v->layers = calloc((size_t)c->v_layers, sizeof(VisionLayer));
    m->a.layers = calloc((size_t)c->a_layers, sizeof(AbstractorLayer));
    m->l.layers = calloc((size_t)c->l_layers, sizeof(DecoderLayer));
    if (!v->layers || !m->a.layers || !m->l.layers) return load_fail(ld, QALIGN_ERR_NOMEM, "out of memory");
    for (int l = 0; l < c->v_layers; l++) {
        VisionLayer *L = &v->layers[l];
#define VEC(field, suffix, d0) (snprintf(n, sizeof n, "v.%d." suffix, l), L->field = bind_vec(ld, n, d0, 0))
#define MAT(field, suffix, r, k) (snprintf(n, sizeof n, "v.%d." suffix, l), L->field = bind_mat(ld, n, r, k))
        VEC(ln1_w, "ln1.w", D); VEC(ln1_b, "ln1.b", D);
        MAT(wq, "q.w", D, D); VEC(bq, "q.b", D);
        MAT(wk, "k.w", D, D); VEC(bk, "k.b", D);
        MAT(wv, "v.w", D, D); VEC(bv, "v.b", D);
        MAT(wo, "o.w", D, D); VEC(bo, "o.b", D);
        VEC(ln2_w, "ln2.w", D); VEC(ln2_b, "ln2.b", D);
        MAT(fc1, "fc1.w", c->v_mlp, D); VEC(fc1_b, "fc1.b", c->v_mlp);
        MAT(fc2, "fc2.w", D, c->v_mlp); VEC(fc2_b, "fc2.b", D);
#undef VEC
#undef MAT
    }
    v->post_ln_w = bind_vec(ld, "v.post_ln.w", D, 0);
    v->post_ln_b = bind_vec(ld, "v.post_ln.b", D, 0);

    /* visual abstractor */
    AbstractorWeights *a = &m->a;
    a->query = bind_vec(ld, "a.query", Q, D);
    for (int l = 0; l < c->a_layers; l++) {
        AbstractorLayer *L = &a->layers[l];
#define VEC(field, suffix, d0, d1) (snprintf(n, sizeof n, "a.%d." suffix, l), L->field = bind_vec(ld, n, d0, d1))
#define MAT(field, suffix, r, k) (snprintf(n, sizeof n, "a.%d." suffix, l), L->field = bind_mat(ld, n, r, k))
        VEC(norm1_w, "norm1.w", D, 0); VEC(norm1_b, "norm1.b", D, 0);
        VEC(normk_w, "normk.w", D, 0); VEC(normk_b, "normk.b", D, 0);
        MAT(wq, "q.w", D, D); VEC(bq, "q.b", D, 0);
        MAT(wk, "k.w", D, D); VEC(bk, "k.b", D, 0);
        MAT(wv, "v.w", D, D); VEC(bv, "v.b", D, 0);
        VEC(q_pos, "q_pos", Q, D); VEC(k_pos, "k_pos", T, D);
        MAT(wo, "o.w", D, D); VEC(bo, "o.b", D, 0);
        VEC(norm2_w, "norm2.w", D, 0); VEC(norm2_b, "norm2.b", D, 0);
        MAT(w1, "w1.w", AM, D); VEC(b1, "w1.b", AM, 0);
        MAT(w3, "w3.w", AM, D); VEC(b3, "w3.b", AM, 0);
        VEC(ffn_ln_w, "ffn_ln.w", AM, 0); VEC(ffn_ln_b, "ffn_ln.b", AM, 0);
        MAT(w2, "w2.w", D, AM); VEC(b2, "w2.b", D, 0);
#undef VEC
#undef MAT
    }
    a->fc = bind_mat(ld, "a.fc.w", Dl, D);
    a->fc_b = bind_vec(ld, "a.fc.b", Dl, 0);
    a->eos = bind_vec(ld, "a.eos", Dl, 0);

    /* LLaMA-2 decoder */
    DecoderWeights *d = &m->l;
    d->embed = bind_mat(ld, "l.embed", c->l_vocab, Dl);
    for (int l = 0; l < c->l_layers; l++) {
        DecoderLayer *L = &d->layers[l];
#define VEC(field, suffix, d0) (snprintf(n, sizeof n, "l.%d." suffix, l), L->field = bind_vec(ld, n, d0, 0))
#define MAT(field, suffix, r, k) (snprintf(n, sizeof n, "l.%d." suffix, l), L->field = bind_mat(ld, n, r, k))
        VEC(attn_norm[0], "attn_norm.0", Dl); VEC(attn_norm[1], "attn_norm.1", Dl);
        MAT(wq, "q", Dl, Dl);
        MAT(wk[0], "k.0", kvd, Dl); MAT(wk[1], "k.1", kvd, Dl);
        MAT(wv[0], "v.0", kvd, Dl); MAT(wv[1], "v.1", kvd, Dl);
        MAT(wo, "o", Dl, Dl);
        VEC(mlp_norm[0], "mlp_norm.0", Dl); VEC(mlp_norm[1], "mlp_norm.1", Dl);
        MAT(gate, "gate", c->l_mlp, Dl); MAT(up, "up", c->l_mlp, Dl); MAT(down, "down", Dl, c->l_mlp);
#undef VEC
#undef MAT
    }
    d->norm = bind_vec(ld, "l.norm", Dl, 0);
    d->head = bind_mat(ld, "l.head", c->l_vocab, Dl);

    /* tokenizer: pieces, their offsets, scores and types */
    TableEntry *pieces = find_tensor(m, "tok.pieces");
    if (!pieces) return load_fail(ld, QALIGN_ERR_FORMAT, "tensor tok.pieces is missing;" HINT_EXPORT);
    const char *blob = bind(ld, "tok.pieces", pieces->shape[0], 0, DT_U8);
    const uint32_t *offsets = bind(ld, "tok.offsets", (int64_t)c->l_vocab + 1, 0, DT_U32);
    const float *scores = bind(ld, "tok.scores", c->l_vocab, 0, DT_F32);
    const uint8_t *types = bind(ld, "tok.types", c->l_vocab, 0, DT_U8);
    for (int i = 0; i < m->n_tensors && !ld->status; i++)
        if (!m->table[i].used) load_fail(ld, QALIGN_ERR_FORMAT, "unexpected tensor %s;" HINT_EXPORT, m->table[i].name);
    if (ld->status) return ld->status;
    char err[256];
    if (tokenizer_init(&m->tok, c->l_vocab, blob, (size_t)pieces->shape[0], offsets, scores, types, c->dummy_prefix,
                       c->bos_id, c->eos_id, c->unk_id, err, sizeof err) != 0)
        return load_fail(ld, QALIGN_ERR_FORMAT, "tokenizer: %s;" HINT_EXPORT, err);
    /* the default level words' ids, as upstream: tokenizer(word).input_ids[1] */
    static const char *const words[N_LEVELS] = {"excellent", "good", "fair", "poor", "bad"};
    for (int i = 0; i < N_LEVELS; i++)
        if ((m->level_ids[i] = level_word_id(m, words[i])) < 0)
            return load_fail(ld, QALIGN_ERR_FORMAT, "the tokenizer has no token for '%s';" HINT_EXPORT, words[i]);
    return ld->status;
}

static int host_is_little_endian(void) {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* The first image of a mapped model faults its pages in as the matmuls reach them; a helper
 * thread started at open (platform_prefetch) makes them resident while the vision tower runs:
 * the decoder's layers first, then the vision tower's and the abstractor's weights (which the
 * forward pass is already touching); not the embedding table and lm_head, of which a few rows
 * are read. */
static void prefetch_start(Model *m) {
    TableEntry *layers = find_tensor(m, "l.0.attn_norm.0"), *norm = find_tensor(m, "l.norm"), *embed = find_tensor(m, "l.embed");
    if (!layers || !norm || !embed) return; /* (the loader has checked they are there) */
    const size_t ranges[2][2] = {{(size_t)layers->offset, (size_t)norm->offset}, {0, (size_t)embed->offset}};
    platform_prefetch(&m->file, ranges, 2);
}

static void model_free(Model *m) {
    if (!m) return;
    platform_unmap(&m->file); /* (stops the prefetcher first) */
    tokenizer_free(&m->tok);
    qwen_free(m->qwen);
    free(m->v.layers);
    free(m->a.layers);
    free(m->l.layers);
    free(m->table);
    free(m->path);
    free(m);
}

/* FNV-1a, 64 bits */
static uint64_t fnv1a(const uint8_t *p, size_t n, uint64_t h) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

int qalign_open(const char *path, const qalign_open_options *opt, qalign_model **out, char *err, size_t errlen) {
    NEED(out, "out (where the model goes)");
    *out = NULL;
    if (!path) return fail_with(err, errlen, QALIGN_ERR_ARG, "no model path");
    Model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        return fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory");
    }
    Loader ld = {m, QALIGN_OK, err, errlen};
    char kerr[QALIGN_ERR_LEN];
    int st;
    if (kernels_choose(opt ? opt->kernels : NULL, kerr, sizeof kerr) != 0) { /* the CPU family, once per process */
        ld.status = QALIGN_ERR_ARG;
        if (err && errlen) snprintf(err, errlen, "%s", kerr);
        goto done;
    }
    if (!host_is_little_endian()) {
        load_fail(&ld, QALIGN_ERR_FORMAT, "model files are little-endian and this host is big-endian; qalign does not support big-endian hosts");
        goto done;
    }
    st = platform_map(path, opt && opt->no_mmap, HEADER_BYTES, &m->file, kerr, sizeof kerr);
    if (st) {
        load_fail(&ld, st, "%s%s", kerr, st == QALIGN_ERR_FORMAT ? ";" HINT_EXPORT : "");
        goto done;
    }
    m->map = m->file.data;
    m->file_size = m->file.size;
    uint32_t magic = rd_u32(m->map), version = rd_u32(m->map + 4);
    if (magic == QWEN_MAGIC) qwen_load(&ld, m);
    else if (magic != QALIGN_MAGIC) load_fail(&ld, QALIGN_ERR_FORMAT, "not a qalign model file (bad magic);" HINT_EXPORT);
    else if (version != QALIGN_VERSION)
        load_fail(&ld, QALIGN_ERR_FORMAT, "model file version %u, this qalign reads version %d;" HINT_EXPORT, version, QALIGN_VERSION);
    else if (rd_u32(m->map + 8) != HEADER_BYTES) load_fail(&ld, QALIGN_ERR_FORMAT, "bad header size;" HINT_EXPORT);
    if (!ld.status && !m->qwen) read_config(&ld, &m->c, m->map);
    if (!ld.status && !m->qwen) read_table(&ld);
    if (!ld.status && !m->qwen) bind_weights(&ld);
    if (!ld.status) {
        /* the id: the header, the tensor table, and samples of every tensor's data (its first,
         * middle and last 4 KB; 12 KB of reading per tensor), so that two files of the same
         * architecture with other weights (Q-Align and OneAlign, a LoRA merge) differ */
        uint64_t h = fnv1a(m->map, HEADER_BYTES + (size_t)m->n_tensors * TABLE_ENTRY_BYTES, 0xcbf29ce484222325ull);
        for (int i = 0; i < m->n_tensors; i++) {
            const uint8_t *d = m->map + m->table[i].offset;
            size_t n = (size_t)m->table[i].nbytes, k = 4096;
            if (n <= 3 * k) h = fnv1a(d, n, h);
            else h = fnv1a(d + n - k, k, fnv1a(d + n / 2 - k / 2, k, fnv1a(d, k, h)));
        }
        snprintf(m->model_id, sizeof m->model_id, "%016llx", (unsigned long long)h);
        if (!(opt && opt->no_prefetch)) prefetch_start(m);
    }
done:
    if (ld.status) {
        model_free(m);
        return ld.status;
    }
    *out = m;
    return QALIGN_OK;
}

void qalign_close(qalign_model *m) { model_free(m); }

/* XXH64 (seed 0) of p[0..n), as the xxHash specification (xxhash.h, XXH64) defines it. */
static uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static const uint64_t XP1 = 0x9E3779B185EBCA87ull, XP2 = 0xC2B2AE3D27D4EB4Full, XP3 = 0x165667B19E3779F9ull,
                      XP4 = 0x85EBCA77C2B2AE63ull, XP5 = 0x27D4EB2F165667C5ull;
static uint64_t xxh_round(uint64_t acc, uint64_t in) { return rotl64(acc + in * XP2, 31) * XP1; }
static uint64_t xxh_merge(uint64_t h, uint64_t v) { return (h ^ xxh_round(0, v)) * XP1 + XP4; }
static uint64_t xxh64(const uint8_t *p, size_t n) {
    const uint8_t *end = p + n;
    uint64_t h;
    if (n >= 32) {
        uint64_t v1 = XP1 + XP2, v2 = XP2, v3 = 0, v4 = 0 - XP1;
        for (; end - p >= 32; p += 32) {
            v1 = xxh_round(v1, rd_u64(p)), v2 = xxh_round(v2, rd_u64(p + 8));
            v3 = xxh_round(v3, rd_u64(p + 16)), v4 = xxh_round(v4, rd_u64(p + 24));
        }
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xxh_merge(xxh_merge(xxh_merge(xxh_merge(h, v1), v2), v3), v4);
    } else {
        h = XP5;
    }
    h += (uint64_t)n;
    for (; end - p >= 8; p += 8) h = rotl64(h ^ xxh_round(0, rd_u64(p)), 27) * XP1 + XP4;
    if (end - p >= 4) h = rotl64(h ^ (uint64_t)rd_u32(p) * XP1, 23) * XP2 + XP3, p += 4;
    for (; p < end; p++) h = rotl64(h ^ *p * XP5, 11) * XP1;
    h ^= h >> 33, h *= XP2, h ^= h >> 29, h *= XP3, h ^= h >> 32;
    return h;
}

/* A tensor's checksum: XXH64 of the little-endian XXH64s of its 4096-byte pieces (the last
 * may be shorter), so that export.py's numpy can hash all pieces of a tensor at once and
 * this loop can run on every core. dig: room for the pieces' digests. */
static uint64_t tensor_sum(const uint8_t *p, size_t n, uint8_t *dig) {
    size_t pieces = (n + SUMS_PIECE - 1) / SUMS_PIECE;
#pragma omp parallel for schedule(static)
    for (size_t k = 0; k < pieces; k++) {
        size_t len = n - k * SUMS_PIECE < SUMS_PIECE ? n - k * SUMS_PIECE : SUMS_PIECE;
        uint64_t d = xxh64(p + k * SUMS_PIECE, len);
        for (int b = 0; b < 8; b++) dig[8 * k + (size_t)b] = (uint8_t)(d >> (8 * b));
    }
    return xxh64(dig, 8 * pieces);
}

int qalign_verify(const qalign_model *m, char *err, size_t errlen) {
    NEED(m, "the model");
    if (!m->sums)
        return fail_with(err, errlen, QALIGN_ERR_FORMAT, "%s has no checksums (it was written by an export.py before "
                         "they were added): it cannot be verified;" HINT_EXPORT, m->path);
    size_t most = 0;
    for (int i = 0; i < m->n_tensors; i++)
        if ((size_t)m->table[i].nbytes > most) most = (size_t)m->table[i].nbytes;
    uint8_t *dig = malloc((most + SUMS_PIECE - 1) / SUMS_PIECE * 8 + 8);
    if (!dig) return fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory");
    int bad = 0, first = -1;
    uint64_t head = xxh64(m->map, HEADER_BYTES + (size_t)m->n_tensors * TABLE_ENTRY_BYTES);
    for (int i = 0; i < m->n_tensors; i++) {
        const TableEntry *e = &m->table[i];
        if (tensor_sum(m->map + e->offset, (size_t)e->nbytes, dig) != rd_u64(m->sums + SUMS_HEAD + 8 * (size_t)i)) {
            if (first < 0) first = i;
            bad++;
        }
    }
    free(dig);
    if (head != rd_u64(m->sums + 16))
        return fail_with(err, errlen, QALIGN_ERR_FORMAT, "%s: the header or tensor table does not match its checksum%s: "
                         "the file is damaged (copy it again, or re-run export.py)", m->path,
                         bad ? " (and tensors do not either)" : "");
    if (bad)
        return fail_with(err, errlen, QALIGN_ERR_FORMAT, "%s: tensor %s does not match its checksum%s%.0d%s: the file is "
                         "damaged (copy it again, or re-run export.py)", m->path, m->table[first].name,
                         bad > 1 ? " (and " : "", bad > 1 ? bad - 1 : 0, bad > 1 ? " more tensors)" : "");
    return QALIGN_OK;
}

int qalign_checksums(const qalign_model *m) { return m && m->sums ? m->n_tensors : 0; }

/* ----------------------------------------------------------------------------------------
 * Back matter 3: the run state's buffers. */

static void *malloc64(size_t n) {
    void *p = NULL;
    return posix_memalign(&p, 64, n ? n : 1) == 0 ? p : NULL;
}

/* Buffers for matmul inputs of up to cap = T*K values, rows of up to max_k (the tiles pad
 * T up to a multiple of their rows, at most 16); *bytes grows by their size. 0, or -1 if
 * memory ran out. bf16_fast: bf16 weights may meet bf16 activations. */
static int acts_alloc(Acts *a, size_t cap, size_t max_k, int bf16_fast, size_t *bytes) {
    const Kernels *kern = kernels_cpu();
    memset(a, 0, sizeof *a);
    a->cap = cap;
    a->bf16_fast = kern->bf16_acts && bf16_fast;
    size_t nb = cap / QBLOCK + 1;
    a->xb = malloc64(cap * sizeof(uint16_t));
    a->xq = malloc64(cap);
    a->xd = malloc(nb * sizeof(float));
    a->xc = malloc(nb * sizeof(int32_t));
    a->xs = malloc(nb * sizeof(float));
    a->xc4 = malloc(nb * sizeof(int32_t));
    *bytes += cap * 3 + nb * 16;
    int ok = a->xb && a->xq && a->xd && a->xc && a->xs && a->xc4;
    if (kern->slice_rows) { /* (T + slice_rows - 1) rows x (K + 63) bytes, T K <= cap, K >= 32 */
        a->slcap = 3 * cap + (size_t)kern->slice_rows * (max_k + 64);
        a->xsl = malloc64(a->slcap);
        *bytes += a->slcap;
        ok = ok && a->xsl;
    }
    if (kern->tile_rows_f || kern->tile_rows_q8) { /* the interleaved copies */
        a->pcap = cap + PACK_ROWS * max_k;
        a->xp = malloc(a->pcap * sizeof(uint32_t));
        a->xdp = malloc((a->pcap / 8 + 1) * sizeof(float));
        a->xcp = malloc((a->pcap / 8 + 1) * sizeof(int32_t));
        a->xsp = malloc((a->pcap / 8 + 1) * sizeof(float));
        a->xc4p = malloc((a->pcap / 8 + 1) * sizeof(int32_t));
        *bytes += a->pcap * 4 + (a->pcap / 8 + 1) * 16;
        ok = ok && a->xp && a->xdp && a->xcp && a->xsp && a->xc4p;
    }
    return ok ? 0 : -1;
}

static void acts_free(Acts *a) {
    free(a->xb), free(a->xq), free(a->xd), free(a->xc), free(a->xs), free(a->xc4);
    free(a->xp), free(a->xdp), free(a->xcp), free(a->xsp), free(a->xc4p), free(a->xsl);
    memset(a, 0, sizeof *a);
}

static void run_state_free(RunState *s) {
    float **bufs[] = {&s->pixels, &s->patches, &s->vx, &s->vxn, &s->vq, &s->vk, &s->vv, &s->vatt, &s->vmlp,
                      &s->vision_out, &s->aq, &s->aqn, &s->aenc, &s->apos, &s->ak, &s->av, &s->aqq, &s->actx,
                      &s->amlp1, &s->amlp3, &s->visual, &s->x, &s->xn, &s->q, &s->k, &s->v, &s->att, &s->hb,
                      &s->hb2, &s->rope_cos, &s->rope_sin, &s->scores, &s->kt, &s->final, &s->row, &s->tmp,
                      &s->kc, &s->vc};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        free(*bufs[i]);
        *bufs[i] = NULL;
    }
    acts_free(&s->acts);
    free(s->prefix_ids);
    free(s->slot_rows);
    memset(s, 0, sizeof *s);
}

/* count x size bytes, counted in s->bytes; *ok = 0 if they cannot be had */
/* 64-byte aligned (a cache line): a tile's rows then start on a line each (AMX loads and
 * stores rows of 64 bytes; a row split over two lines measured 2-3x slower) */
static void *state_alloc(RunState *s, int *ok, size_t count, size_t size) {
    void *p = malloc64(count ? count * size : 1);
    s->bytes += count * size;
    if (!p) *ok = 0;
    return p;
}

/* Buffers for the sizes set in s (max_batch .. max_slots, see RunState), n_caches prompt
 * prefixes of up to max_prefix rows, and n_threads threads. */
static int run_state_alloc(RunState *s, const Config *c, int max_prefix, int n_caches, int n_threads, int precise) {
    int max_batch = s->max_batch, max_seq = s->max_seq;
    s->n_threads = n_threads;
    size_t T = (size_t)c->v_tokens, D = (size_t)c->v_dim, Q = (size_t)c->a_queries, E = Q + T;
    size_t Dl = (size_t)c->l_dim, S = (size_t)s->max_rows, kvd = (size_t)c->l_kv_heads * c->l_head_dim;
    size_t P = (size_t)c->v_patch, S1 = (size_t)max_seq;
    size_t H = S < MLP_CHUNK ? S : MLP_CHUNK; /* decoder MLP rows at a time */
    size_t maxlen = E > S1 ? E : S1, kvmax = D > kvd ? D : kvd;
    s->scores_stride = ATT_SCRATCH_ROWS * pad16(maxlen);
    /* the largest matmul input T x K, and the largest K */
    size_t sizes[] = {(T - 1) * 3 * P * P, T * D, T * (size_t)c->v_mlp, E * D, Q * (size_t)c->a_mlp, S * Dl, H * (size_t)c->l_mlp};
    size_t ks[] = {3 * P * P, D, (size_t)c->v_mlp, (size_t)c->a_mlp, Dl, (size_t)c->l_mlp}, cap = 0, max_k = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) cap = sizes[i] > cap ? sizes[i] : cap;
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) max_k = ks[i] > max_k ? ks[i] : max_k;
    int ok = 1;
#define ALLOC(ptr, count) ((ptr) = state_alloc(s, &ok, (count), sizeof *(ptr)))
    ALLOC(s->pixels, 3 * (size_t)c->v_image * c->v_image);
    ALLOC(s->patches, (T - 1) * 3 * P * P);
    ALLOC(s->vx, T * D);
    ALLOC(s->vxn, T * D);
    ALLOC(s->vq, T * D);
    ALLOC(s->vk, T * D);
    ALLOC(s->vv, T * D);
    ALLOC(s->vatt, T * D);
    ALLOC(s->vmlp, T * (size_t)c->v_mlp);
    ALLOC(s->vision_out, T * D);
    ALLOC(s->aq, Q * D);
    ALLOC(s->aqn, Q * D);
    ALLOC(s->aenc, E * D);
    ALLOC(s->apos, E * D);
    ALLOC(s->ak, E * D);
    ALLOC(s->av, E * D);
    ALLOC(s->aqq, Q * D);
    ALLOC(s->actx, Q * D);
    ALLOC(s->amlp1, Q * (size_t)c->a_mlp);
    ALLOC(s->amlp3, Q * (size_t)c->a_mlp);
    ALLOC(s->visual, (size_t)s->max_slots * (Q + 1) * Dl);
    ALLOC(s->x, S * Dl);
    ALLOC(s->xn, S * Dl);
    ALLOC(s->q, S * Dl);
    ALLOC(s->k, S * kvd);
    ALLOC(s->v, S * kvd);
    ALLOC(s->tmp, S * kvd);
    ALLOC(s->att, S * Dl);
    ALLOC(s->hb, H * (size_t)c->l_mlp);
    ALLOC(s->hb2, H * (size_t)c->l_mlp);
    ALLOC(s->rope_cos, S1 * (size_t)(c->l_head_dim / 2));
    ALLOC(s->rope_sin, S1 * (size_t)(c->l_head_dim / 2));
    ALLOC(s->scores, (size_t)n_threads * s->scores_stride);
    ALLOC(s->kt, 2 * kvmax * pad16(maxlen));
    ALLOC(s->final, (size_t)max_batch * Dl);
    ALLOC(s->row, Dl > D ? Dl : D);
    ALLOC(s->kc, (size_t)n_caches * c->l_layers * max_prefix * kvd);
    ALLOC(s->vc, (size_t)n_caches * c->l_layers * max_prefix * kvd);
    ALLOC(s->prefix_ids, (size_t)max_prefix + 1);
    ALLOC(s->slot_rows, (size_t)s->max_slots);
    if (acts_alloc(&s->acts, cap, max_k, !precise, &s->bytes) != 0) ok = 0;
#undef ALLOC
    for (int i = 0; ok && i < s->max_slots; i++) s->slot_rows[i] = s->visual + (size_t)i * (Q + 1) * Dl;
    s->max_prefix = max_prefix;
    s->n_caches = n_caches;
    s->vit_att_bf16 = !precise && c->wtype != DT_MF32;
    if (!ok) {
        size_t want = s->bytes;
        run_state_free(s);
        s->bytes = want;
        return QALIGN_ERR_NOMEM;
    }
    return QALIGN_OK;
}

/* ----------------------------------------------------------------------------------------
 * Back matter 4: the API (qalign.h). */

struct qalign_ctx {
    const Model *m;
    int threads;            /* OpenMP threads for this context's calls */
    int batch;              /* images per decoder pass */
    int pad, precise;
    char task[16];
    const qalign_preset *preset;
    int preset_prompt;      /* the preset's own prompt is used (not an option's) */
    Levels lv;
    Prompt prompt_image, prompt_video; /* the template with {input} = image / video */
    char *template;         /* the template itself (qalign_ctx_describe) */
    Anchors anchors;        /* with anchors (Compare2Score): each image is compared with every anchor */
    RunState s;
    int have_state;
    int pending;            /* images encoded (visual slots 0..pending-1), waiting for the decoder */
    int video_n, video_k;   /* a video in progress: n frames, k given so far (video_n 0: none) */
    qalign_stage_fn hook;
    void *hook_user;
    qalign_timings seconds; /* carried over when the run state is reallocated */
    struct QwenCtx *qw;     /* a Qwen3.5 model's context (qwen35.c), or NULL */
};
static void qwen_ctx_free(struct QwenCtx *x); /* qwen35.c */

const char *qalign_status_name(int status) {
    static const char *const names[] = {"ok", "i/o error", "bad model file", "invalid argument", "out of memory",
                                        "unusable input", "not a finite number", "call out of order"};
    return status >= 0 && status <= QALIGN_ERR_STATE ? names[status] : "unknown status";
}

/* OpenMP threads for the duration of one call, the caller's setting restored after */
static int threads_enter(const qalign_ctx *c) {
#ifdef _OPENMP
    int old = omp_get_max_threads();
    omp_set_num_threads(c->threads);
    return old;
#else
    (void)c;
    return 1;
#endif
}
static void threads_leave(int old) {
#ifdef _OPENMP
    omp_set_num_threads(old);
#else
    (void)old;
#endif
}

/* The run state fits `batch` images or one video of n_frames (a longer video or larger
 * batch reallocates it; the K/V caches survive only while the state does). */
static int ensure_state(qalign_ctx *c, int batch, int n_frames, char *err, size_t errlen) {
    RunState *s = &c->s;
    if (c->anchors.n && batch < c->anchors.n) batch = c->anchors.n; /* one decoder pass per anchor */
    if (c->have_state && s->max_batch >= batch && s->n_frames >= n_frames) return QALIGN_OK;
    if (c->have_state) {
        batch = batch > s->max_batch ? batch : s->max_batch;
        n_frames = n_frames > s->n_frames ? n_frames : s->n_frames;
        c->seconds = s->seconds;
        run_state_free(s);
        c->have_state = 0;
    }
    const Model *m = c->m;
    int seq = sequence_length(m, &c->prompt_image, 1), seqv = sequence_length(m, &c->prompt_video, n_frames);
    int prefix = c->prompt_image.n_ids > c->prompt_video.n_ids ? c->prompt_image.n_ids : c->prompt_video.n_ids;
    prefix = prefix > c->anchors.prefix ? prefix : c->anchors.prefix;
    memset(s, 0, sizeof *s);
    s->max_batch = batch;
    s->n_frames = n_frames;
    s->max_seq = seq > seqv ? seq : seqv;
    s->max_rows = batch * seq > seqv ? batch * seq : seqv;
    s->max_slots = batch > n_frames ? batch : n_frames;
    if (run_state_alloc(s, &m->c, prefix, 1 + c->anchors.n, c->threads, c->precise) != QALIGN_OK)
        return fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory: %d frames need %.0f MB of buffers", n_frames, s->bytes / 1e6);
    s->seconds = c->seconds;
    c->have_state = 1;
    return QALIGN_OK;
}

static void prompt_free(Prompt *p) {
    free(p->ids);
    p->ids = NULL;
}

void qalign_ctx_free(qalign_ctx *c) {
    if (!c) return;
    qwen_ctx_free(c->qw);
    if (c->have_state) run_state_free(&c->s);
    prompt_free(&c->prompt_image);
    prompt_free(&c->prompt_video);
    free(c->template);
    free(c->anchors.rows);
    free(c);
}

static int check_image(const qalign_image *img, char *err, size_t errlen) {
    if (!img || !img->rgb) return fail_with(err, errlen, QALIGN_ERR_ARG, "no image");
    if (img->width < 1 || img->height < 1 || img->width > IMAGE_MAX_DIM || img->height > IMAGE_MAX_DIM ||
        (size_t)img->width * (size_t)img->height > IMAGE_MAX_PIXELS)
        return fail_with(err, errlen, QALIGN_ERR_INPUT, "image size %dx%d is out of range (1..%d per side, %zu pixels)",
                    img->width, img->height, IMAGE_MAX_DIM, IMAGE_MAX_PIXELS);
    return QALIGN_OK;
}

/* Preprocess img as frame f of n and encode it: its visual rows go to out. */
static int encode_image(qalign_ctx *c, const qalign_image *img, float *out, int f, int n, char *err, size_t errlen) {
    int st = check_image(img, err, errlen);
    if (st) return st;
    RunState *s = &c->s;
    s->hook = c->hook;
    s->hook_user = c->hook_user;
    Image view = {img->width, img->height, (uint8_t *)img->rgb}; /* read only */
    double t0 = now_seconds();
    int old = threads_enter(c);
    st = preprocess_image(c->m, s, &view, c->pad, f, n, err, errlen);
    s->seconds.preprocess += now_seconds() - t0;
    if (!st) encode_frame(c->m, s, out, f, n);
    threads_leave(old);
    return st;
}

/* Visual slot k's rows */
static float *slot(qalign_ctx *c, int k) {
    CHECK(k < c->s.max_slots);
    return c->s.visual + (size_t)k * (c->m->c.a_queries + 1) * c->m->c.l_dim;
}

/* The Qwen3.5 family (Q-ReAlign): its model and its scoring, on the kernels, the loader and
 * the context above; the API functions below hand a Qwen3.5 context over to it. */
#include "qwen35.c"

int qalign_ctx_new(const qalign_model *m, const qalign_ctx_options *opt, qalign_ctx **out, char *err, size_t errlen) {
    NEED(out, "out (where the context goes)");
    *out = NULL;
    qalign_ctx_options o = opt ? *opt : (qalign_ctx_options){0};
    if (!m) return fail_with(err, errlen, QALIGN_ERR_ARG, "no model");
    if (o.threads < 0 || o.threads > 4096) return fail_with(err, errlen, QALIGN_ERR_ARG, "threads must be in [0, 4096], got %d", o.threads);
    if (o.batch < 0 || o.batch > QALIGN_MAX_BATCH)
        return fail_with(err, errlen, QALIGN_ERR_ARG, "batch must be in [1, %d], got %d", QALIGN_MAX_BATCH, o.batch);
    const qalign_preset *pr = qalign_preset_find(o.preset ? o.preset : m->qwen ? "q-realign-mini" : "one-align");
    if (!pr) {
        char names[256] = "";
        for (size_t i = 0; i < sizeof PRESETS / sizeof PRESETS[0]; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", PRESETS[i].name);
        return fail_with(err, errlen, QALIGN_ERR_ARG, "preset: unknown '%s' (one of %s)", o.preset, names);
    }
    const char *task = o.task ? o.task : "quality";
    if (!task_known(task))
        return fail_with(err, errlen, QALIGN_ERR_ARG, "task must be quality, aesthetics or aesthetic, got '%s'", task);
    if (m->qwen && !m->qwen->bpe)
        return fail_with(err, errlen, QALIGN_ERR_FORMAT, "this Qwen3.5 model file has no tokenizer (its checkpoint had no "
                         "tokenizer.json);" HINT_EXPORT);
    if ((m->qwen != NULL) != qwen_is_preset(pr))
        return fail_with(err, errlen, QALIGN_ERR_ARG, "preset: %s is for %s models, this is a%s model", pr->name,
                         m->qwen ? "mPLUG-Owl2 (Q-Align)" : "Qwen3.5 (Q-ReAlign)", m->qwen ? " Qwen3.5" : "n mPLUG-Owl2");
    const char *tmpl = m->qwen ? pr->prompt : prompt_text(o.prompt ? o.prompt : pr->prompt);
    for (const char *q = tmpl ? strchr(tmpl, '{') : NULL; q; q = strchr(q + 1, '{')) { /* {task} {input}, nothing else */
        size_t k = 1;
        while (isalnum((unsigned char)q[k]) || q[k] == '_') k++;
        if (k > 1 && q[k] == '}' && strncmp(q, "{task}", 6) && strncmp(q, "{input}", 7))
            return fail_with(err, errlen, QALIGN_ERR_ARG, "prompt: unknown placeholder %.*s (the template fills in "
                             "{task} and {input} only)", (int)(k + 1 < 40 ? k + 1 : 40), q);
    }
    if (!tmpl) {
        char names[256] = "";
        for (size_t i = 0; i < sizeof PROMPTS / sizeof PROMPTS[0]; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", PROMPTS[i].name);
        return fail_with(err, errlen, QALIGN_ERR_ARG, "prompt: '%s' has no <|image|> and is not one of %s", o.prompt, names);
    }
    if (!o.prompt && !strstr(pr->tasks, task)) /* (the tasks are whole words, none a part of another) */
        return fail_with(err, errlen, QALIGN_ERR_ARG, "task: the %s preset's prompt rates %s only, not %s", pr->name,
                         pr->tasks, task);
    if (o.n_anchors < 0 || (o.n_anchors > 0 && (!o.anchors || o.n_anchors != C2S_ANCHORS)))
        return fail_with(err, errlen, QALIGN_ERR_ARG, "anchors: %d given; the comparison (Compare2Score's anchor matrix) "
                         "takes %d anchor images", o.n_anchors, C2S_ANCHORS);
    qalign_ctx *c = calloc(1, sizeof *c);
    if (!c) return fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory");
    c->m = m;
#ifdef _OPENMP
    c->threads = o.threads ? o.threads : omp_get_max_threads();
#else
    c->threads = 1;
#endif
    c->batch = o.batch ? o.batch : 8;
    c->pad = o.no_pad == 1 ? 0 : o.no_pad == -1 ? 1 : !pr->no_pad;
    c->precise = o.precise;
    c->preset = pr;
    c->preset_prompt = !o.prompt;
    snprintf(c->task, sizeof c->task, "%s", task);
    int st = levels_parse(m, o.levels ? o.levels : pr->levels, o.temperature > 0 ? o.temperature : pr->temperature, &c->lv,
                          err, errlen);
    if (!st && (o.temperature < 0 || isnan(o.temperature)))
        st = fail_with(err, errlen, QALIGN_ERR_ARG, "temperature must be a positive number (0: the preset's), not %g",
                       (double)o.temperature);
    if (!st && !(c->template = strdup(tmpl))) st = fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory");
    if (!st && m->qwen) {
        st = qwen_ctx_init(c, &o, err, errlen);
        if (st) {
            qalign_ctx_free(c);
            return st;
        }
        *out = c;
        return QALIGN_OK;
    }
    if (!st) st = build_prompt(m, tmpl, task, "image", &c->prompt_image, err, errlen);
    if (!st) st = build_prompt(m, tmpl, task, "video", &c->prompt_video, err, errlen);
    if (!st && o.n_anchors) /* the anchors: their visual rows now, their K/V on first use */
        st = anchors_init(m, &c->prompt_image, o.n_anchors, &c->anchors, err, errlen);
    if (!st) st = ensure_state(c, c->batch, 1, err, errlen);
    for (int k = 0; !st && k < c->anchors.n; k++) {
        char e[QALIGN_ERR_LEN - 32];
        if ((st = encode_image(c, &o.anchors[k], anchor_rows(m, &c->anchors, k), 0, 1, e, sizeof e)) != QALIGN_OK)
            fail_with(err, errlen, st, "anchors: image %d: %s", k, e);
    }
    if (st) {
        qalign_ctx_free(c);
        return st;
    }
    *out = c;
    return QALIGN_OK;
}

int qalign_ctx_levels(const qalign_ctx *c, const char **words, float *weights, float *lo, float *hi) {
    if (!c) return 0;
    for (int i = 0; i < c->lv.n; i++) {
        if (words) words[i] = c->lv.words[i];
        if (weights) weights[i] = c->lv.weights[i];
    }
    if (lo) *lo = c->anchors.n ? 0.0f : c->lv.lo;
    if (hi) *hi = c->anchors.n ? 100.0f : c->lv.hi;
    return c->lv.n;
}

void qalign_ctx_describe(const qalign_ctx *c, qalign_ctx_info *out) {
    if (!out) return;
    if (!c) {
        *out = (qalign_ctx_info){0};
        return;
    }
    *out = (qalign_ctx_info){.prompt = c->template, .levels = c->lv.text, .pad = c->pad, .precise = c->precise,
                             .n_anchors = c->anchors.n};
}

const char *qalign_ctx_notes(const qalign_ctx *c) { return c && c->lv.note[0] ? c->lv.note : NULL; }

/* With a stage hook every image is scored alone (see qalign.h). */
int qalign_ctx_batch(const qalign_ctx *c) { return !c ? 0 : c->hook ? 1 : c->batch; }
int qalign_ctx_threads(const qalign_ctx *c) { return c ? c->threads : 0; }
size_t qalign_ctx_bytes(const qalign_ctx *c) {
    if (!c) return 0;
    if (c->qw) return c->qw->have_state ? c->qw->s.bytes : 0;
    return c->have_state ? c->s.bytes : 0;
}

void qalign_ctx_timings(const qalign_ctx *c, qalign_timings *out) {
    if (!out) return;
    if (!c) *out = (qalign_timings){0};
    else if (c->qw) *out = c->qw->seconds;
    else *out = c->have_state ? c->s.seconds : c->seconds;
}

void qalign_ctx_set_stage_hook(qalign_ctx *c, qalign_stage_fn fn, void *user) {
    if (!c) return;
    c->hook = fn;
    c->hook_user = user;
}

int qalign_add_image(qalign_ctx *c, const qalign_image *img, char *err, size_t errlen) {
    NEED(c, "the context");
    if (c->qw) return qwen_add_image(c, img, err, errlen);
    if (c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "a video is in progress (qalign_video_end or _cancel first)");
    if (c->prompt_image.n_markers != 1 && !c->anchors.n)
        return fail_with(err, errlen, QALIGN_ERR_ARG, "prompt: it must contain <|image|> exactly once to score images one "
                         "by one (it has %d: use qalign_score_prompt, or give anchors)", c->prompt_image.n_markers);
    if (c->pending >= qalign_ctx_batch(c)) return fail_with(err, errlen, QALIGN_ERR_STATE, "the batch is full (qalign_flush first)");
    int st = encode_image(c, img, slot(c, c->pending), 0, 1, err, errlen);
    if (!st) c->pending++;
    return st;
}

int qalign_pending(const qalign_ctx *c) { return c ? c->pending : 0; }

int qalign_flush(qalign_ctx *c, qalign_result *out, char *err, size_t errlen) {
    NEED(c, "the context");
    if (c->qw) return qwen_flush(c, out, err, errlen);
    if (c->pending == 0) return QALIGN_OK;
    if (!out) return fail_with(err, errlen, QALIGN_ERR_ARG, "no result array");
    int old = threads_enter(c);
    c->s.hook = c->hook;
    c->s.hook_user = c->hook_user;
    if (c->anchors.n)
        for (int k = 0; k < c->pending; k++)
            compare_image(c->m, &c->s, &c->prompt_image, &c->lv, &c->anchors, slot(c, k), &out[k]);
    else
        score_batch(c->m, &c->s, &c->prompt_image, &c->lv, c->pending, 1, c->s.slot_rows, NULL, out);
    threads_leave(old);
    c->pending = 0;
    return QALIGN_OK;
}

int qalign_video_begin(qalign_ctx *c, int n_frames, char *err, size_t errlen) {
    NEED(c, "the context");
    if (c->qw) return qwen_video_begin(c, n_frames, err, errlen);
    if (c->pending) return fail_with(err, errlen, QALIGN_ERR_STATE, "%d images are pending (qalign_flush first)", c->pending);
    if (c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "a video is already in progress");
    if (n_frames < 1 || n_frames > QALIGN_MAX_FRAMES)
        return fail_with(err, errlen, QALIGN_ERR_ARG, "a video takes 1 to %d frames, not %d", QALIGN_MAX_FRAMES, n_frames);
    if (c->prompt_video.n_markers != 1 || c->anchors.n)
        return fail_with(err, errlen, QALIGN_ERR_ARG, "videos need a prompt with one <|image|> and no anchors");
    if (c->preset_prompt && !c->preset->video)
        return fail_with(err, errlen, QALIGN_ERR_ARG, "the %s preset scores images only (its original has no video "
                         "prompt; a --prompt of your own may take videos)", c->preset->name);
    int st = ensure_state(c, 1, n_frames, err, errlen);
    if (st) return st;
    c->video_n = n_frames;
    c->video_k = 0;
    return QALIGN_OK;
}

int qalign_video_frame(qalign_ctx *c, const qalign_image *frame, char *err, size_t errlen) {
    NEED(c, "the context");
    if (c->qw) return qwen_video_frame(c, frame, err, errlen);
    if (!c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "no video in progress (qalign_video_begin first)");
    if (c->video_k >= c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "all %d frames were given already", c->video_n);
    int st = encode_image(c, frame, slot(c, c->video_k), c->video_k, c->video_n, err, errlen);
    if (!st) c->video_k++;
    return st;
}

int qalign_video_end_frames(qalign_ctx *c, qalign_result *out, qalign_result *frames, char *err, size_t errlen) {
    NEED(c, "the context");
    if (c->qw) return qwen_video_end_frames(c, out, frames, err, errlen);
    if (!c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "no video in progress (qalign_video_begin first)");
    if (c->video_k < c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "%d of %d frames given", c->video_k, c->video_n);
    if (!out) return fail_with(err, errlen, QALIGN_ERR_ARG, "no result");
    int old = threads_enter(c);
    c->s.hook = c->hook;
    c->s.hook_user = c->hook_user;
    score_batch(c->m, &c->s, &c->prompt_video, &c->lv, 1, c->video_n, c->s.slot_rows, NULL, out);
    /* each frame as an image: its visual rows are in slot f already */
    for (int f0 = 0; frames && f0 < c->video_n; f0 += qalign_ctx_batch(c)) {
        int B = c->video_n - f0 < qalign_ctx_batch(c) ? c->video_n - f0 : qalign_ctx_batch(c);
        score_batch(c->m, &c->s, &c->prompt_image, &c->lv, B, 1, c->s.slot_rows + f0, NULL, frames + f0);
    }
    threads_leave(old);
    c->video_n = c->video_k = 0;
    return QALIGN_OK;
}

int qalign_video_end(qalign_ctx *c, qalign_result *out, char *err, size_t errlen) {
    return qalign_video_end_frames(c, out, NULL, err, errlen);
}

void qalign_video_cancel(qalign_ctx *c) {
    if (c) c->video_n = c->video_k = 0;
}

static void result_error(qalign_result *r, int status, const char *msg) {
    memset(r, 0, sizeof *r);
    r->status = status;
    snprintf(r->error, sizeof r->error, "%s", msg);
}

int qalign_score_images(qalign_ctx *c, const qalign_image *imgs, int n, qalign_result *out, char *err, size_t errlen) {
    NEED(c, "the context");
    if (n < 0 || (n > 0 && (!imgs || !out))) return fail_with(err, errlen, QALIGN_ERR_ARG, "bad image array");
    if (c->pending || c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "images or a video are pending in this context");
    if (n > 0 && !c->qw && c->prompt_image.n_markers != 1 && !c->anchors.n)
        return qalign_add_image(c, &imgs[0], err, errlen); /* (its error) */
    int where[QALIGN_MAX_BATCH];     /* out index of each pending image */
    qalign_result got[QALIGN_MAX_BATCH];
    char e[QALIGN_ERR_LEN];
    for (int i = 0; i < n; i++) {
        int st = qalign_add_image(c, &imgs[i], e, sizeof e);
        if (st) result_error(&out[i], st, e);
        else where[c->pending - 1] = i;
        if (c->pending && (c->pending == qalign_ctx_batch(c) || i == n - 1)) {
            int k = c->pending;
            qalign_flush(c, got, NULL, 0);
            for (int j = 0; j < k; j++) out[where[j]] = got[j];
        }
    }
    return QALIGN_OK;
}

int qalign_score_prompt(qalign_ctx *c, const qalign_image *imgs, int n, qalign_result *out, char *err, size_t errlen) {
    NEED(c, "the context");
    if (!imgs || !out || n < 1) return fail_with(err, errlen, QALIGN_ERR_ARG, "bad image array");
    if (c->pending || c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "images or a video are pending in this context");
    if (c->qw) return qwen_score_prompt(c, imgs, n, out, err, errlen);
    if (n != c->prompt_image.n_markers)
        return fail_with(err, errlen, QALIGN_ERR_ARG, "the prompt has %d <|image|>, %d images given", c->prompt_image.n_markers, n);
    int st = ensure_state(c, c->batch, n, err, errlen);
    if (st) return st;
    char e[QALIGN_ERR_LEN - 32];
    for (int k = 0; k < n; k++)
        if ((st = encode_image(c, &imgs[k], slot(c, k), k, n, e, sizeof e)) != QALIGN_OK) {
            result_error(out, st, "");
            snprintf(out->error, sizeof out->error, "image %d: %s", k, e);
            return QALIGN_OK;
        }
    int old = threads_enter(c);
    c->s.hook = c->hook;
    c->s.hook_user = c->hook_user;
    score_batch(c->m, &c->s, &c->prompt_image, &c->lv, 1, 1, c->s.slot_rows, NULL, out);
    threads_leave(old);
    return QALIGN_OK;
}

int qalign_score_video(qalign_ctx *c, const qalign_image *frames, int n, qalign_result *out, char *err, size_t errlen) {
    NEED(c, "the context");
    if (!frames || !out) return fail_with(err, errlen, QALIGN_ERR_ARG, "bad frame array");
    int st = qalign_video_begin(c, n, err, errlen);
    if (st) return st;
    char e[QALIGN_ERR_LEN - 32];
    for (int k = 0; k < n; k++)
        if ((st = qalign_video_frame(c, &frames[k], e, sizeof e)) != QALIGN_OK) {
            qalign_video_cancel(c);
            memset(out, 0, sizeof *out);
            out->status = st;
            snprintf(out->error, sizeof out->error, "frame %d: %s", k, e);
            return QALIGN_OK;
        }
    return qalign_video_end(c, out, err, errlen);
}

void qalign_describe(const qalign_model *m, qalign_info *o) {
    if (!o) return;
    memset(o, 0, sizeof *o);
    if (!m) return;
    const Config *c = &m->c;
    if (m->qwen) {
        qwen_describe(m, o);
        return;
    }
    o->family = "mplug-owl2";
    o->path = m->path;
    o->file_bytes = m->file_size;
    o->format_version = QALIGN_VERSION;
    o->n_tensors = m->n_tensors;
    o->weight_type = DT_NAMES[c->wtype];
    memcpy(o->model_id, m->model_id, sizeof o->model_id);
    o->v_dim = c->v_dim, o->v_layers = c->v_layers, o->v_heads = c->v_heads, o->v_mlp = c->v_mlp;
    o->v_image = c->v_image, o->v_patch = c->v_patch, o->v_tokens = c->v_tokens, o->v_eps = c->v_eps;
    o->a_layers = c->a_layers, o->a_heads = c->a_heads, o->a_queries = c->a_queries, o->a_mlp = c->a_mlp;
    o->a_eps = c->a_eps, o->a_ffn_eps = c->a_ffn_eps;
    o->l_dim = c->l_dim, o->l_layers = c->l_layers, o->l_heads = c->l_heads, o->l_kv_heads = c->l_kv_heads;
    o->l_mlp = c->l_mlp, o->l_vocab = c->l_vocab, o->l_eps = c->l_eps, o->l_rope_theta = c->l_rope_theta;
    o->bos_id = c->bos_id, o->eos_id = c->eos_id, o->unk_id = c->unk_id, o->dummy_prefix = c->dummy_prefix;
    memcpy(o->level_ids, m->level_ids, sizeof o->level_ids);
    memcpy(o->fill, c->fill, sizeof o->fill);
    memcpy(o->mean, c->mean, sizeof o->mean);
    memcpy(o->std, c->std, sizeof o->std);
    o->l_max_pos = c->l_max_pos;
}

int qalign_tokenize(const qalign_model *m, const char *text, int add_bos, int *ids, int cap) {
    if (!m || !text || cap < 0 || (cap > 0 && !ids)) return -1;
    if (m->qwen) return qwen_tokenize(m, text, ids, cap);
    return tokenizer_encode(&m->tok, text, strlen(text), add_bos, ids, cap);
}

/* ---- answers in words (the generation itself is after Compare2Score) ---- */

size_t qalign_kv_bytes_per_token(const qalign_model *m) {
    if (!m) return 0;
    if (m->qwen) { /* its attention layers' keys and values (the Gated DeltaNet layers keep a fixed state) */
        const QwenConfig *qc = &m->qwen->c;
        size_t full = 0;
        for (int l = 0; l < qc->l_layers; l++) full += qc->full[l];
        return 2 * full * (size_t)qc->l_kv_heads * (size_t)qc->l_head_dim * sizeof(float);
    }
    return 2 * (size_t)m->c.l_layers * (size_t)m->c.l_kv_heads * (size_t)m->c.l_head_dim * sizeof(float);
}

int qalign_detokenize(const qalign_model *m, const int *ids, int n, char *out, size_t cap) {
    if (!m || n < 0 || (n > 0 && !ids) || (cap > 0 && !out)) return -1;
    if (m->qwen) { /* the ByteLevel decoder (bpe_decode) */
        if (!m->qwen->bpe) return -1;
        for (int i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= bpe_n_vocab(m->qwen->bpe)) return -1;
        size_t len = 0;
        char *t = bpe_decode(m->qwen->bpe, (const int32_t *)ids, (size_t)n, &len);
        if (!t) return -1;
        if (cap > 0) {
            size_t k = len < cap - 1 ? len : cap - 1;
            memcpy(out, t, k);
            out[k] = 0;
        }
        free(t);
        return (int)len;
    }
    return tokenizer_decode(&m->tok, ids, n, out, cap);
}

void qalign_answer_free(qalign_answer *a) {
    if (!a) return;
    free(a->text);
    free(a->tokens);
    a->text = NULL;
    a->tokens = NULL;
    a->n_tokens = 0;
}

static void answer_error(qalign_answer *a, int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static void answer_error(qalign_answer *a, int status, const char *fmt, ...) {
    a->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->error, sizeof a->error, fmt, ap);
    va_end(ap);
}

/* The options in effect (o may be NULL: greedy, 256 tokens), checked. */
static int ask_options(const Model *m, const char *question, const qalign_ask_options *in, qalign_ask_options *o,
                       char *err, size_t errlen) {
    *o = in ? *in : (qalign_ask_options){256, 0.0f, 0.0f, 0, 0, NULL, NULL, NULL, NULL, NULL};
    if (!question) return fail_with(err, errlen, QALIGN_ERR_ARG, "no question");
    const char *q = question;
    int k;
    while (*q && (k = blank_at((const unsigned char *)q, strlen(q))) > 0) q += k;
    if (!*q) return fail_with(err, errlen, QALIGN_ERR_ARG, "the question is empty");
    if (o->max_tokens < 1 || o->max_tokens > m->c.l_max_pos)
        return fail_with(err, errlen, QALIGN_ERR_ARG, "max_tokens must be in [1, %d] (the context length in the model "
                         "file), got %d", m->c.l_max_pos, o->max_tokens);
    if (!isfinite(o->temperature) || o->temperature < 0.0f)
        return fail_with(err, errlen, QALIGN_ERR_ARG, "temperature must be a finite number >= 0 (0: greedy), got %g",
                         (double)o->temperature);
    if (!isfinite(o->top_p) || o->top_p < 0.0f || o->top_p > 1.0f)
        return fail_with(err, errlen, QALIGN_ERR_ARG, "top_p must be in [0, 1], got %g", (double)o->top_p);
    if (o->top_k < 0) return fail_with(err, errlen, QALIGN_ERR_ARG, "top_k must be >= 0, got %d", o->top_k);
    if (!o->prompt) o->prompt = "mplug-owl2";
    if (!o->stop) o->stop = "</s>";
    return QALIGN_OK;
}

/* Rows of a sequence's cache: the prompt's and max_tokens - 1 more (the last token is not
 * fed back), at most the model's context. */
static int ask_cap(const Model *m, int rows, int max_new) {
    long cap = (long)rows + max_new - 1;
    return cap > m->c.l_max_pos ? (rows > m->c.l_max_pos ? rows : m->c.l_max_pos) : (int)cap;
}

/* The run state fits a prefill of `rows` rows, caches of `seq` rows and `frames` visual
 * slots (grown from what it is, never shrunk). */
static int ensure_gen_state(qalign_ctx *c, int frames, int rows, int seq, char *err, size_t errlen) {
    int st = ensure_state(c, c->batch, frames, err, errlen);
    if (st) return st;
    RunState *s = &c->s;
    if (s->max_rows >= rows && s->max_seq >= seq) return QALIGN_OK;
    RunState was = *s;
    c->seconds = s->seconds;
    run_state_free(s);
    c->have_state = 0;
    s->max_batch = was.max_batch;
    s->n_frames = was.n_frames;
    s->max_slots = was.max_slots;
    s->max_seq = was.max_seq > seq ? was.max_seq : seq;
    s->max_rows = was.max_rows > rows ? was.max_rows : rows;
    if (run_state_alloc(s, &c->m->c, was.max_prefix, was.n_caches, c->threads, c->precise) != QALIGN_OK)
        return fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory: a prompt of %d rows and %d rows of cache need "
                         "%.0f MB of buffers", rows, seq, s->bytes / 1e6);
    s->seconds = c->seconds;
    c->have_state = 1;
    return QALIGN_OK;
}

/* One answer to generate: its prompt, its visual rows (img[j] the j-th image, a marker's
 * frames one after the other), its options (checked), where it goes. */
typedef struct {
    const Prompt *p;
    int frames;             /* images per marker */
    const float *const *img;
    const qalign_ask_options *o;
    qalign_answer *out;
    int index;              /* on_token's seq */
} AskSeq;

/* Answer B prompts whose visual rows are ready, stepped together (each with its own prompt,
 * cache, options and stop): q[b].out gets the answer, or an error. */
static void ask_run(qalign_ctx *c, const AskSeq *q, int B) {
    const Model *m = c->m;
    const Config *cf = &m->c;
    RunState *s = &c->s;
    int V = cf->l_vocab, D = cf->l_dim, max_cap = 1, max_rows = 1;
    if (B < 1 || B > QALIGN_MAX_BATCH) return;
    for (int b = 0; b < B; b++) {
        int rows = sequence_length(m, q[b].p, q[b].frames), cap = ask_cap(m, rows, q[b].o->max_tokens);
        max_cap = cap > max_cap ? cap : max_cap;
        max_rows = rows > max_rows ? rows : max_rows;
    }
    GenSeq *g = calloc((size_t)B, sizeof *g);
    GenSeq **act = calloc((size_t)B, sizeof *act);
    float *logits = malloc((size_t)B * V * sizeof(float));
    Cand *cand = malloc((size_t)V * sizeof *cand);
    double *pr = malloc((size_t)V * sizeof *pr);
    uint8_t *mod = malloc((size_t)max_rows), zero = 0;
    if (!g || !act || !logits || !cand || !pr || !mod) {
        for (int b = 0; b < B; b++) answer_error(q[b].out, QALIGN_ERR_NOMEM, "out of memory");
        goto done;
    }
    rope_tables(s->rope_cos, s->rope_sin, max_cap, cf->l_head_dim, cf->l_rope_theta);
    int n_act = 0;
    for (int b = 0; b < B; b++) {
        GenSeq *gs = &g[b];
        qalign_answer *a = q[b].out;
        const Prompt *p = q[b].p;
        int rows = sequence_length(m, p, q[b].frames), max_new = q[b].o->max_tokens, cap = ask_cap(m, rows, max_new);
        size_t per_seq = (size_t)cf->l_layers * cap * (size_t)(cf->l_kv_heads * cf->l_head_dim);
        a->prompt_rows = rows;
        a->frames = p->n_markers * q[b].frames;
        gs->cap = cap, gs->max_new = max_new, gs->index = q[b].index;
        gs->kc = malloc(per_seq * sizeof(float));
        gs->vc = malloc(per_seq * sizeof(float));
        gs->ids = malloc((size_t)max_new * sizeof(int));
        gs->text = malloc(gs->text_cap = 256);
        if (!gs->kc || !gs->vc || !gs->ids || !gs->text) {
            answer_error(a, QALIGN_ERR_NOMEM, "out of memory: the K/V cache of %d rows needs %.0f MB", cap,
                         2.0 * per_seq * sizeof(float) / 1e6);
            gs->done = GEN_FAILED;
            continue;
        }
        /* prefill: every row of the prompt, then the first token from the last row */
        Span spans[MAX_SPANS];
        int n_spans = prompt_spans(m, p, q[b].frames, spans);
        for (int si = 0; si < n_spans; si++)
            memset(mod + spans[si].start, spans[si].modality, (size_t)(spans[si].end - spans[si].start));
        double t0 = now_seconds();
        sequence_rows(m, p, q[b].frames, q[b].img, 0, rows, s->x);
        gen_layers(m, s, &gs, 1, rows, mod, logits + (size_t)b * V);
        a->prefill_seconds = now_seconds() - t0;
        s->seconds.decoder += a->prefill_seconds;
        act[n_act++] = gs;
    }
    /* one token for every running sequence, then one decoder step for all of them */
    for (int step = 0; n_act > 0; step++) {
        double t0 = now_seconds();
        int still = 0;
        for (int i = 0; i < n_act; i++) {
            GenSeq *gs = act[i];
            const AskSeq *as = &q[gs - g];
            qalign_answer *a = as->out;
            int id = pick_token(logits + (size_t)(step == 0 ? gs - g : i) * V, V, as->o, step, cand, pr);
            if (id < 0) {
                gs->done = GEN_FAILED;
                answer_error(a, QALIGN_ERR_NUMERIC, "the model computed a value that is not a finite number (NaN or "
                             "infinity); the model file may be damaged:" HINT_EXPORT);
                continue;
            }
            if (id == cf->eos_id) gs->done = GEN_EOS;
            else {
                gs->ids[gs->n_ids++] = id;
                if (gs->n_ids == gs->max_new || gs->n >= gs->cap) gs->done = GEN_LENGTH;
            }
            if (gen_text(m, gs, as->o, as->o->stop, id) != QALIGN_OK) {
                gs->done = GEN_FAILED;
                answer_error(a, QALIGN_ERR_NOMEM, "out of memory");
                continue;
            }
            if (!gs->done) act[still++] = gs;
        }
        n_act = still;
        if (n_act == 0) break;
        /* inputs_embeds = self.embed_tokens(next_tokens): one text row per sequence */
        for (int i = 0; i < n_act; i++) matrix_row(s->x + (size_t)i * D, &m->l.embed, act[i]->ids[act[i]->n_ids - 1]);
        gen_layers(m, s, act, n_act, 1, &zero, logits);
        double dt = now_seconds() - t0;
        s->seconds.decoder += dt;
        for (int i = 0; i < n_act; i++) q[act[i] - g].out->decode_seconds += dt;
    }
    for (int b = 0; b < B; b++) {
        GenSeq *gs = &g[b];
        qalign_answer *a = q[b].out;
        if (gs->done == GEN_FAILED) continue;
        a->text = gs->text, gs->text = NULL;
        strip_blanks(a->text);
        a->tokens = gs->ids, gs->ids = NULL;
        a->n_tokens = gs->n_ids;
        a->finish = gs->done == GEN_EOS ? "eos" : gs->done == GEN_STOP ? "stop" : "length";
    }
done:
    for (int b = 0; g && b < B; b++) free(g[b].kc), free(g[b].vc), free(g[b].ids), free(g[b].text);
    free(g), free(act), free(logits), free(cand), free(pr), free(mod);
}

static int ask_begin(qalign_ctx *c, const char *question, const qalign_ask_options *in, int n_images, qalign_ask_options *o,
                     Prompt *p, char *err, size_t errlen) {
    memset(p, 0, sizeof *p);
    if (!c) return fail_with(err, errlen, QALIGN_ERR_ARG, "no context");
    if (c->qw) return fail_with(err, errlen, QALIGN_ERR_ARG, "answers in words are for mPLUG-Owl2 models (Q-Instruct, "
                                "Co-Instruct, OneAlign); this is a Qwen3.5 model, which only scores for now");
    if (c->pending || c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "images or a video are pending in this context");
    int st = ask_options(c->m, question, in, o, err, errlen);
    if (st) return st;
    if (o->scores && c->anchors.n)
        return fail_with(err, errlen, QALIGN_ERR_ARG, "scores: a comparison scorer (anchors) does not score answers' images");
    size_t need = strlen(o->prompt) + 512;
    char *tmpl = malloc(need);
    if (!tmpl) return fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory");
    if (qalign_ask_template(o->prompt, n_images, tmpl, need) < 0) {
        int nn;
        const qalign_named_prompt *np = qalign_ask_prompts(&nn);
        char names[128] = "";
        for (int i = 0; i < nn; i++) snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", np[i].name);
        free(tmpl);
        return fail_with(err, errlen, QALIGN_ERR_ARG, "prompt: '%s' is neither a template with <|image|> nor one of %s",
                         o->prompt, names);
    }
    st = ask_prompt(c->m, tmpl, question, p, err, errlen);
    free(tmpl);
    return st;
}

/* One image per answer, each with its prompt and options (checked): in chunks of the
 * context's batch, each chunk's images encoded and then generated together. scores (may be
 * NULL): score[i] from the same visual rows, with the context's scoring prompt. */
static void ask_each(qalign_ctx *c, const qalign_image *const *imgs, const Prompt *const *p,
                     const qalign_ask_options *const *o, int n, qalign_answer *out, qalign_result *scores) {
    int B = c->batch;
    for (int i0 = 0; i0 < n; i0 += B) {
        int nb = n - i0 < B ? n - i0 : B, k = 0, max_rows = nb, max_cap = 1, st;
        AskSeq seq[QALIGN_MAX_BATCH];
        const float *rowsp[QALIGN_MAX_BATCH];
        int where[QALIGN_MAX_BATCH];
        char e[QALIGN_ERR_LEN];
        for (int i = i0; i < i0 + nb; i++) {
            if (!p[i]) continue; /* (its answer has its error already) */
            int rows = sequence_length(c->m, p[i], 1), cap = ask_cap(c->m, rows, o[i]->max_tokens);
            max_rows = rows > max_rows ? rows : max_rows;
            max_cap = cap > max_cap ? cap : max_cap;
        }
        if ((st = ensure_gen_state(c, 1, max_rows, max_cap, e, sizeof e)) != QALIGN_OK) {
            for (int i = i0; i < i0 + nb; i++)
                if (p[i]) answer_error(&out[i], st, "%s", e);
            continue;
        }
        for (int i = i0; i < i0 + nb; i++) {
            if (!p[i]) continue;
            if ((st = encode_image(c, imgs[i], slot(c, k), 0, 1, e, sizeof e)) != QALIGN_OK) {
                answer_error(&out[i], st, "%s", e);
                if (scores) result_error(&scores[i], st, e);
                continue;
            }
            rowsp[k] = slot(c, k);
            where[k] = i;
            seq[k] = (AskSeq){p[i], 1, &rowsp[k], o[i], &out[i], i};
            k++;
        }
        if (!k) continue;
        int old = threads_enter(c);
        if (scores) { /* the scores from the same visual rows */
            qalign_result res[QALIGN_MAX_BATCH];
            score_batch(c->m, &c->s, &c->prompt_image, &c->lv, k, 1, rowsp, NULL, res);
            for (int j = 0; j < k; j++) scores[where[j]] = res[j];
        }
        ask_run(c, seq, k);
        threads_leave(old);
    }
}

/* A question's prompt for one image, with its row count checked against the context. */
static int ask_one_prompt(qalign_ctx *c, const char *question, const qalign_ask_options *opt, qalign_ask_options *o,
                          Prompt *p, char *err, size_t errlen) {
    int st = ask_begin(c, question, opt, 1, o, p, err, errlen);
    if (st) return st;
    if (p->n_markers != 1) {
        prompt_free(p);
        return fail_with(err, errlen, QALIGN_ERR_ARG, "prompt: it must contain <|image|> once to ask about images one by "
                         "one (it has %d: use qalign_ask_prompt)", p->n_markers);
    }
    int rows = sequence_length(c->m, p, 1);
    if (rows >= c->m->c.l_max_pos) {
        prompt_free(p);
        return fail_with(err, errlen, QALIGN_ERR_ARG, "the prompt has %d rows, the model's context is %d", rows, c->m->c.l_max_pos);
    }
    return QALIGN_OK;
}

int qalign_ask_images(qalign_ctx *c, const qalign_image *imgs, int n, const char *question, const qalign_ask_options *opt,
                      qalign_answer *out, char *err, size_t errlen) {
    if (n < 0 || (n > 0 && (!imgs || !out))) return fail_with(err, errlen, QALIGN_ERR_ARG, "bad image array");
    for (int i = 0; i < n; i++) memset(&out[i], 0, sizeof out[i]);
    if (c && c->qw) { /* a Qwen3.5 model (qwen35.c qwen_ask) */
        const qalign_image **ip = malloc((size_t)(n ? n : 1) * sizeof *ip);
        const char **qp = malloc((size_t)(n ? n : 1) * sizeof *qp);
        const qalign_ask_options **op = malloc((size_t)(n ? n : 1) * sizeof *op);
        int st = ip && qp && op ? QALIGN_OK : fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory");
        for (int i = 0; i < n && !st; i++) ip[i] = &imgs[i], qp[i] = question, op[i] = opt;
        if (!st && (st = ask_options(c->m, question, opt, &(qalign_ask_options){0}, err, errlen)) == QALIGN_OK)
            st = qwen_ask(c, ip, qp, op, n, 0, out, err, errlen);
        free(ip), free(qp), free(op);
        return st;
    }
    qalign_ask_options o;
    Prompt p;
    int st = ask_one_prompt(c, question, opt, &o, &p, err, errlen);
    if (st) return st;
    const qalign_image **ip = malloc((size_t)(n ? n : 1) * sizeof *ip);
    const Prompt **pp = malloc((size_t)(n ? n : 1) * sizeof *pp);
    const qalign_ask_options **op = malloc((size_t)(n ? n : 1) * sizeof *op);
    if (!ip || !pp || !op) {
        free(ip), free(pp), free(op);
        prompt_free(&p);
        return fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) ip[i] = &imgs[i], pp[i] = &p, op[i] = &o;
    ask_each(c, ip, pp, op, n, out, o.scores);
    free(ip), free(pp), free(op);
    prompt_free(&p);
    return QALIGN_OK;
}

int qalign_ask_batch(qalign_ctx *c, const qalign_ask_item *items, int n, qalign_answer *out, char *err, size_t errlen) {
    if (!c || n < 0 || (n > 0 && (!items || !out))) return fail_with(err, errlen, QALIGN_ERR_ARG, "bad item array");
    if (c->pending || c->video_n) return fail_with(err, errlen, QALIGN_ERR_STATE, "images or a video are pending in this context");
    if (c->qw) { /* a Qwen3.5 model: one after the other (qwen35.c qwen_ask) */
        for (int i = 0; i < n; i++) {
            memset(&out[i], 0, sizeof out[i]);
            const qalign_image *ip = items[i].image;
            const char *qp = items[i].question;
            const qalign_ask_options *op = items[i].options;
            int st = qwen_ask(c, &ip, &qp, &op, 1, 0, &out[i], out[i].error, sizeof out[i].error);
            if (st) out[i].status = st;
        }
        return QALIGN_OK;
    }
    int k = n ? n : 1;
    const qalign_image **ip = calloc((size_t)k, sizeof *ip);
    Prompt *prompts = calloc((size_t)k, sizeof *prompts);
    const Prompt **pp = calloc((size_t)k, sizeof *pp);
    qalign_ask_options *opts = calloc((size_t)k, sizeof *opts);
    const qalign_ask_options **op = calloc((size_t)k, sizeof *op);
    if (!ip || !prompts || !pp || !opts || !op) {
        free(ip), free(prompts), free(pp), free(opts), free(op);
        return fail_with(err, errlen, QALIGN_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof out[i]);
        ip[i] = items[i].image;
        op[i] = &opts[i];
        pp[i] = NULL;
        int st = ask_one_prompt(c, items[i].question, items[i].options, &opts[i], &prompts[i], out[i].error, sizeof out[i].error);
        if (st) out[i].status = st;
        else if (!items[i].image) answer_error(&out[i], QALIGN_ERR_ARG, "no image");
        else pp[i] = &prompts[i];
    }
    ask_each(c, ip, pp, op, n, out, NULL);
    for (int i = 0; i < n; i++) prompt_free(&prompts[i]);
    free(ip), free(prompts), free(pp), free(opts), free(op);
    return QALIGN_OK;
}

int qalign_ask_prompt(qalign_ctx *c, const qalign_image *imgs, int n, const char *question, const qalign_ask_options *opt,
                      qalign_answer *out, char *err, size_t errlen) {
    if (!imgs || !out || n < 1 || n > QALIGN_MAX_FRAMES) return fail_with(err, errlen, QALIGN_ERR_ARG, "bad image array");
    memset(out, 0, sizeof *out);
    if (c && c->qw) { /* a Qwen3.5 model: the n images in one user turn (qwen35.c qwen_ask) */
        const qalign_image *ip[8];
        const char *qp[8];
        const qalign_ask_options *op[8];
        if (n > 8) return fail_with(err, errlen, QALIGN_ERR_ARG, "a Qwen3.5 prompt takes at most 8 images here");
        qalign_ask_options chk;
        int st = ask_options(c->m, question, opt, &chk, err, errlen);
        if (st) return st;
        for (int k = 0; k < n; k++) ip[k] = &imgs[k], qp[k] = question, op[k] = opt;
        return qwen_ask(c, ip, qp, op, n, 1, out, err, errlen);
    }
    qalign_ask_options o;
    Prompt p;
    int st = ask_begin(c, question, opt, n, &o, &p, err, errlen);
    if (st) return st;
    if (p.n_markers != n && p.n_markers != 1) {
        prompt_free(&p);
        return fail_with(err, errlen, QALIGN_ERR_ARG, "the prompt has %d <|image|>, %d images given", p.n_markers, n);
    }
    int frames = p.n_markers == n ? 1 : n, rows = sequence_length(c->m, &p, frames), cap = ask_cap(c->m, rows, o.max_tokens);
    if (rows >= c->m->c.l_max_pos) {
        prompt_free(&p);
        return fail_with(err, errlen, QALIGN_ERR_ARG, "the prompt has %d rows, the model's context is %d", rows, c->m->c.l_max_pos);
    }
    char e[QALIGN_ERR_LEN - 32];
    if ((st = ensure_gen_state(c, n, rows, cap, err, errlen)) != QALIGN_OK) {
        prompt_free(&p);
        return st;
    }
    for (int k = 0; k < n; k++)
        if ((st = encode_image(c, &imgs[k], slot(c, k), k, n, e, sizeof e)) != QALIGN_OK) {
            answer_error(out, st, "image %d: %s", k, e);
            prompt_free(&p);
            return QALIGN_OK;
        }
    int old = threads_enter(c);
    AskSeq seq = {&p, frames, (const float *const *)c->s.slot_rows, &o, out, 0};
    if (o.scores) { /* the score of the same images: a video's (one marker, the frames), or the scoring prompt's */
        const Prompt *sp = frames > 1 ? &c->prompt_video : &c->prompt_image;
        if (frames > 1 ? sp->n_markers != 1 : sp->n_markers != n)
            result_error(o.scores, QALIGN_ERR_ARG, "the scoring prompt does not have an <|image|> for each image");
        else
            score_batch(c->m, &c->s, sp, &c->lv, 1, frames, (const float *const *)c->s.slot_rows, NULL, o.scores);
    }
    ask_run(c, &seq, 1);
    threads_leave(old);
    prompt_free(&p);
    return QALIGN_OK;
}
