/* qalign.c - Q-Align / OneAlign image & video quality scoring in plain C.
 *
 * Q-Align (arXiv 2312.17090) asks a multimodal LLM (mPLUG-Owl2: CLIP ViT -> visual
 * abstractor -> LLaMA-2 with modality-adaptive k/v projections and norms) "How would you
 * rate the quality of this image?" and reads the answer off the logits of five words:
 * score = softmax(logits[excellent good fair poor bad]) . [5 4 3 2 1].
 *
 * This file is the whole model, top to bottom:
 *   config -> weights (one mmap, one tensor table) -> run state -> kernels ->
 *   vision tower -> visual abstractor -> LLaMA-2 decoder -> scoring -> .npy dumps -> CLI
 * Image decoding/preprocessing live in image.c, the tokenizer in tokenizer.c.
 *
 *   python3 export.py CHECKPOINT_DIR model.qalign     # once
 *   make && ./qalign model.qalign photo.jpg
 *
 * Above each block of C is the PyTorch line (from Q-Future/Q-Align, q_align/model/)
 * it implements. Build with -DTESTING to leave out main() and #include this file in tests.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "image.h"
#include "tokenizer.h"

/* ----------------------------------------------------------------------------------------
 * Errors and allocation
 * Model and usage errors end the program with one line on stderr and exit status 1.
 * Per-input errors (a corrupt image) are returned instead, so a batch goes on. */

static void fatal(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "qalign: error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(EXIT_FAILURE);
}

#define HINT_EXPORT " ---> re-run export.py to write a model file for this version of qalign"

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) fatal("out of memory (allocating %zu bytes)", n);
    return p;
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) fatal("out of memory (allocating %zu x %zu bytes)", n, size);
    return p;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ----------------------------------------------------------------------------------------
 * Config: the file header. 256 little-endian u32 slots (floats stored as their bits), in
 * the order of HEADER_FIELDS in export.py. */

#define QALIGN_MAGIC 0x4E4C4151u /* "QALN" */
#define QALIGN_VERSION 1
#define HEADER_BYTES 1024
#define TABLE_ENTRY_BYTES 96
#define TENSOR_ALIGN 64
#define N_LEVELS 5

enum {
    H_MAGIC, H_VERSION, H_HEADER_BYTES, H_N_TENSORS, H_WTYPE,
    H_V_DIM, H_V_LAYERS, H_V_HEADS, H_V_MLP, H_V_IMAGE, H_V_PATCH, H_V_EPS,
    H_A_LAYERS, H_A_HEADS, H_A_QUERIES, H_A_MLP, H_A_EPS, H_A_FFN_EPS,
    H_L_DIM, H_L_LAYERS, H_L_HEADS, H_L_KV_HEADS, H_L_MLP, H_L_VOCAB, H_L_EPS, H_L_ROPE_THETA, H_L_MAX_POS,
    H_T_BOS, H_T_EOS, H_T_UNK, H_T_DUMMY_PREFIX,
    H_N_LEVELS, H_LEVEL0, H_LEVEL1, H_LEVEL2, H_LEVEL3, H_LEVEL4,
    H_FILL_R, H_FILL_G, H_FILL_B, H_MEAN_R, H_MEAN_G, H_MEAN_B, H_STD_R, H_STD_G, H_STD_B,
    H_COUNT
};

/* Tensor element types (export.py DT_*). */
enum { DT_F32 = 0, DT_BF16 = 1, DT_Q8_0 = 2, DT_Q4_1 = 3, DT_U8 = 4, DT_U32 = 5, DT_COUNT };
static const char *const DT_NAMES[DT_COUNT] = {"f32", "bf16", "q8_0", "q4_1", "u8", "u32"};
#define QBLOCK 32 /* values per quantisation block, along a row */

typedef struct {
    int wtype;              /* weight type the matrices were exported in (DT_*) */
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
    /* scoring */
    int level_ids[N_LEVELS]; /* token ids of excellent good fair poor bad */
    /* preprocessing */
    uint8_t fill[3];        /* expand2square colour (122,116,104) */
    float mean[3], std[3];  /* CLIP normalisation */
} Config;

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

/* Read and check every header field: anything out of range means the file was not
 * written by our export.py (or by another version of it). */
static void read_config(Config *c, const uint8_t *h, const char *path) {
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
    for (int i = 0; i < N_LEVELS; i++) c->level_ids[i] = (int)U(H_LEVEL0 + i);
    for (int i = 0; i < 3; i++) {
        uint32_t fill = U(H_FILL_R + i);
        if (fill > 255) fatal("%s: bad fill colour in header;" HINT_EXPORT, path);
        c->fill[i] = (uint8_t)fill;
        c->mean[i] = F(H_MEAN_R + i);
        c->std[i] = F(H_STD_R + i);
        if (!(c->std[i] > 0) || !isfinite(c->mean[i])) fatal("%s: bad mean/std in header;" HINT_EXPORT, path);
    }
    if (U(H_N_LEVELS) != N_LEVELS) fatal("%s: header has %u level words, expected %d;" HINT_EXPORT, path, U(H_N_LEVELS), N_LEVELS);
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
        if (dims[i].v <= 0 || dims[i].v > (1 << 24))
            fatal("%s: header field %s = %d is out of range;" HINT_EXPORT, path, dims[i].name, dims[i].v);
    if (c->v_image % c->v_patch || c->v_image / c->v_patch > 4096)
        fatal("%s: image size %d is not a multiple of patch size %d;" HINT_EXPORT, path, c->v_image, c->v_patch);
    c->v_grid = c->v_image / c->v_patch;
    c->v_tokens = 1 + c->v_grid * c->v_grid;
    if (c->v_dim % c->v_heads || c->v_dim % c->a_heads || c->l_dim % c->l_heads || c->l_heads % c->l_kv_heads)
        fatal("%s: widths not divisible by head counts;" HINT_EXPORT, path);
    c->l_head_dim = c->l_dim / c->l_heads;
    if (c->l_head_dim % 2) fatal("%s: odd decoder head size;" HINT_EXPORT, path);
    if (c->wtype < 0 || c->wtype > DT_Q4_1) fatal("%s: unknown weight type %d;" HINT_EXPORT, path, c->wtype);
    for (int i = 0; i < N_LEVELS; i++)
        if (c->level_ids[i] < 0 || c->level_ids[i] >= c->l_vocab) fatal("%s: level token id out of range;" HINT_EXPORT, path);
    if (c->bos_id < 0 || c->bos_id >= c->l_vocab) fatal("%s: BOS id out of range;" HINT_EXPORT, path);
    if (!(c->v_eps > 0 && c->a_eps > 0 && c->a_ffn_eps > 0 && c->l_eps > 0 && c->l_rope_theta > 0))
        fatal("%s: bad eps/rope values in header;" HINT_EXPORT, path);
}

/* ----------------------------------------------------------------------------------------
 * Weights: views into the read-only mmap of the model file.
 *
 * The file has ONE table of tensors (name, dtype, shape, offset, size) written by export.py.
 * The loader walks it once: every tensor must start at the next 64-byte boundary after the
 * previous one, and the last must end exactly at the end of the file. Then every tensor
 * the model needs is looked up by name and its dtype and shape checked against the header's
 * dimensions; a missing, misshapen, duplicate or unknown tensor is an error. */

typedef struct {
    char name[57];          /* NUL-terminated (56 bytes in the file) */
    int dtype;              /* DT_* */
    int ndim;               /* 1..4 */
    int64_t shape[4];       /* elements per dimension (unused = 1) */
    uint64_t offset;        /* from the start of the file, multiple of 64 */
    uint64_t nbytes;        /* size of the data */
    int used;               /* bound by the loader (each tensor exactly once) */
} TableEntry;

/* A weight matrix [rows, cols] (PyTorch Linear layout: out x in) in any dtype. */
typedef struct {
    const void *data;       /* into the mmap; quantised: values (rows*cols) then block records */
    int dtype;              /* DT_F32 / DT_BF16 / DT_Q8_0 / DT_Q4_1 */
    int rows, cols;         /* out features, in features */
} Tensor;

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
    Tensor head;                      /* (l_vocab, l_dim) lm_head: only needed rows are used */
} DecoderWeights;

typedef struct {
    Config c;
    VisionWeights v;
    AbstractorWeights a;
    DecoderWeights l;
    Tokenizer tok;
    /* the mapping */
    const uint8_t *map;     /* (file_size) read-only mmap of the whole file */
    size_t file_size;
    TableEntry *table;      /* (n_tensors) */
    int n_tensors;
    const char *path;
} Model;

static size_t dtype_nbytes(int dtype, size_t n, size_t cols) {
    switch (dtype) {
    case DT_F32: case DT_U32: return 4 * n;
    case DT_BF16: return 2 * n;
    case DT_U8: return n;
    case DT_Q8_0: return n + 4 * (n / QBLOCK);
    case DT_Q4_1: return n / 2 + 8 * (n / QBLOCK);
    }
    (void)cols;
    return 0;
}

static TableEntry *find_tensor(Model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->table[i].name, name) == 0) return &m->table[i];
    return NULL;
}

/* Look up `name`, check it has the shape (d0, d1) (d1 = 0 for a vector) and an allowed
 * dtype, mark it used and return its data. */
static const void *bind(Model *m, const char *name, int64_t d0, int64_t d1, unsigned dtype_mask, int *dtype_out) {
    TableEntry *e = find_tensor(m, name);
    if (!e) fatal("%s: tensor %s is missing;" HINT_EXPORT, m->path, name);
    if (e->used) fatal("%s: tensor %s appears twice;" HINT_EXPORT, m->path, name);
    int want_ndim = d1 ? 2 : 1;
    if (e->ndim != want_ndim || e->shape[0] != d0 || (d1 && e->shape[1] != d1))
        fatal("%s: tensor %s has shape [%lld,%lld], expected [%lld,%lld] from the header;" HINT_EXPORT, m->path, name,
              (long long)e->shape[0], (long long)(e->ndim > 1 ? e->shape[1] : 0), (long long)d0, (long long)d1);
    if (!(dtype_mask & (1u << e->dtype)))
        fatal("%s: tensor %s has dtype %s, not allowed there;" HINT_EXPORT, m->path, name, DT_NAMES[e->dtype]);
    if ((e->dtype == DT_Q8_0 || e->dtype == DT_Q4_1) && (d1 % QBLOCK))
        fatal("%s: quantised tensor %s has rows of %lld, not a multiple of %d;" HINT_EXPORT, m->path, name, (long long)d1, QBLOCK);
    e->used = 1;
    if (dtype_out) *dtype_out = e->dtype;
    return m->map + e->offset;
}

#define MATRIX_TYPES ((1u << DT_F32) | (1u << DT_BF16) | (1u << DT_Q8_0) | (1u << DT_Q4_1))

static const float *bind_vec(Model *m, const char *name, int64_t d0, int64_t d1) {
    /* f32 vectors and small tables (positions, queries) */
    TableEntry *e = find_tensor(m, name);
    if (e && d1 == 0 && e->ndim == 2 && e->shape[0] * e->shape[1] == d0) d1 = 0; /* tolerate [1,n] */
    return (const float *)bind(m, name, d0, d1, 1u << DT_F32, NULL);
}

static Tensor bind_mat(Model *m, const char *name, int rows, int cols) {
    Tensor t;
    t.data = bind(m, name, rows, cols, MATRIX_TYPES, &t.dtype);
    t.rows = rows;
    t.cols = cols;
    return t;
}

/* Parse the tensor table and walk it: contiguous, aligned, inside the file, ending at its end. */
static void read_table(Model *m) {
    const uint8_t *h = m->map;
    m->n_tensors = (int)rd_u32(h + 4 * H_N_TENSORS);
    uint64_t table_end = HEADER_BYTES + (uint64_t)m->n_tensors * TABLE_ENTRY_BYTES;
    if (m->n_tensors <= 0 || m->n_tensors > 1000000 || table_end > m->file_size)
        fatal("%s: tensor table (%d entries) does not fit in the file (truncated?);" HINT_EXPORT, m->path, m->n_tensors);
    m->table = xcalloc((size_t)m->n_tensors, sizeof(TableEntry));
    uint64_t pos = table_end;
    for (int i = 0; i < m->n_tensors; i++) {
        const uint8_t *p = h + HEADER_BYTES + (size_t)i * TABLE_ENTRY_BYTES;
        TableEntry *e = &m->table[i];
        memcpy(e->name, p, 56);
        e->name[56] = 0;
        e->dtype = (int)rd_u32(p + 56);
        e->ndim = (int)rd_u32(p + 60);
        for (int d = 0; d < 4; d++) e->shape[d] = rd_u32(p + 64 + 4 * d);
        e->offset = rd_u64(p + 80);
        e->nbytes = rd_u64(p + 88);
        if (e->dtype < 0 || e->dtype >= DT_COUNT || e->ndim < 1 || e->ndim > 4)
            fatal("%s: tensor %d (%s) has an unknown dtype or rank;" HINT_EXPORT, m->path, i, e->name);
        uint64_t n = 1;
        for (int d = 0; d < e->ndim; d++) n *= (uint64_t)e->shape[d];
        uint64_t want = dtype_nbytes(e->dtype, n, (size_t)e->shape[e->ndim - 1]);
        uint64_t aligned = (pos + TENSOR_ALIGN - 1) / TENSOR_ALIGN * TENSOR_ALIGN;
        if (e->offset != aligned || e->nbytes != want)
            fatal("%s: tensor %s is not where the table walk expects it (offset %llu, want %llu; %llu bytes, want %llu);" HINT_EXPORT,
                  m->path, e->name, (unsigned long long)e->offset, (unsigned long long)aligned,
                  (unsigned long long)e->nbytes, (unsigned long long)want);
        if (e->offset + e->nbytes > m->file_size)
            fatal("%s: file is truncated: tensor %s ends at byte %llu but the file has %zu bytes;" HINT_EXPORT, m->path,
                  e->name, (unsigned long long)(e->offset + e->nbytes), m->file_size);
        pos = e->offset + e->nbytes;
    }
    if (pos != m->file_size)
        fatal("%s: the tensor table ends at byte %llu but the file has %zu bytes;" HINT_EXPORT, m->path,
              (unsigned long long)pos, m->file_size);
}

static void bind_weights(Model *m) {
    Config *c = &m->c;
    char n[64];
    int D = c->v_dim, P = c->v_patch, T = c->v_tokens, AM = c->a_mlp, Q = c->a_queries;
    int Dl = c->l_dim, kvd = c->l_kv_heads * c->l_head_dim;

    /* vision tower */
    VisionWeights *v = &m->v;
    v->patch = bind_mat(m, "v.patch", D, 3 * P * P);
    v->cls = bind_vec(m, "v.cls", D, 0);
    v->pos = bind_vec(m, "v.pos", T, D);
    v->pre_ln_w = bind_vec(m, "v.pre_ln.w", D, 0);
    v->pre_ln_b = bind_vec(m, "v.pre_ln.b", D, 0);
    v->layers = xcalloc((size_t)c->v_layers, sizeof(VisionLayer));
    for (int l = 0; l < c->v_layers; l++) {
        VisionLayer *L = &v->layers[l];
#define VEC(field, suffix, d0) (snprintf(n, sizeof n, "v.%d." suffix, l), L->field = bind_vec(m, n, d0, 0))
#define MAT(field, suffix, r, k) (snprintf(n, sizeof n, "v.%d." suffix, l), L->field = bind_mat(m, n, r, k))
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
    v->post_ln_w = bind_vec(m, "v.post_ln.w", D, 0);
    v->post_ln_b = bind_vec(m, "v.post_ln.b", D, 0);

    /* visual abstractor */
    AbstractorWeights *a = &m->a;
    a->query = bind_vec(m, "a.query", Q, D);
    a->layers = xcalloc((size_t)c->a_layers, sizeof(AbstractorLayer));
    for (int l = 0; l < c->a_layers; l++) {
        AbstractorLayer *L = &a->layers[l];
#define VEC(field, suffix, d0, d1) (snprintf(n, sizeof n, "a.%d." suffix, l), L->field = bind_vec(m, n, d0, d1))
#define MAT(field, suffix, r, k) (snprintf(n, sizeof n, "a.%d." suffix, l), L->field = bind_mat(m, n, r, k))
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
    a->fc = bind_mat(m, "a.fc.w", Dl, D);
    a->fc_b = bind_vec(m, "a.fc.b", Dl, 0);
    a->eos = bind_vec(m, "a.eos", Dl, 0);

    /* LLaMA-2 decoder */
    DecoderWeights *d = &m->l;
    d->embed = bind_mat(m, "l.embed", c->l_vocab, Dl);
    d->layers = xcalloc((size_t)c->l_layers, sizeof(DecoderLayer));
    for (int l = 0; l < c->l_layers; l++) {
        DecoderLayer *L = &d->layers[l];
#define VEC(field, suffix, d0) (snprintf(n, sizeof n, "l.%d." suffix, l), L->field = bind_vec(m, n, d0, 0))
#define MAT(field, suffix, r, k) (snprintf(n, sizeof n, "l.%d." suffix, l), L->field = bind_mat(m, n, r, k))
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
    d->norm = bind_vec(m, "l.norm", Dl, 0);
    d->head = bind_mat(m, "l.head", c->l_vocab, Dl);

    /* tokenizer */
    int vt, dt;
    TableEntry *pieces = find_tensor(m, "tok.pieces");
    if (!pieces) fatal("%s: tensor tok.pieces is missing;" HINT_EXPORT, m->path);
    const char *blob = bind(m, "tok.pieces", pieces->shape[0], 0, 1u << DT_U8, &dt);
    const uint32_t *offsets = bind(m, "tok.offsets", (int64_t)c->l_vocab + 1, 0, 1u << DT_U32, &dt);
    const float *scores = bind(m, "tok.scores", c->l_vocab, 0, 1u << DT_F32, &vt);
    const uint8_t *types = bind(m, "tok.types", c->l_vocab, 0, 1u << DT_U8, &vt);
    char err[256];
    if (tokenizer_init(&m->tok, c->l_vocab, blob, (size_t)pieces->shape[0], offsets, scores, types,
                       c->dummy_prefix, c->bos_id, c->eos_id, c->unk_id, err, sizeof err) != 0)
        fatal("%s: tokenizer: %s;" HINT_EXPORT, m->path, err);

    for (int i = 0; i < m->n_tensors; i++)
        if (!m->table[i].used) fatal("%s: unexpected tensor %s;" HINT_EXPORT, m->path, m->table[i].name);
}

static int host_is_little_endian(void) {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

static void model_load(Model *m, const char *path) {
    memset(m, 0, sizeof *m);
    m->path = path;
    if (!host_is_little_endian())
        fatal("%s: model files are little-endian and this host is big-endian; qalign does not support big-endian hosts", path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) fatal("%s: cannot open model file: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) fatal("%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) fatal("%s: not a regular file", path);
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX)
        fatal("%s: the model (%lld bytes) does not fit in this machine's address space (32-bit build?)", path, (long long)st.st_size);
    m->file_size = (size_t)st.st_size;
    if (m->file_size < HEADER_BYTES)
        fatal("%s: file is %zu bytes, too small for a qalign model (truncated?);" HINT_EXPORT, path, m->file_size);
    void *map = mmap(NULL, m->file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) fatal("%s: cannot mmap %zu bytes: %s", path, m->file_size, strerror(errno));
    m->map = map;
    uint32_t magic = rd_u32(m->map), version = rd_u32(m->map + 4);
    if (magic != QALIGN_MAGIC) fatal("%s: not a qalign model file (bad magic);" HINT_EXPORT, path);
    if (version != QALIGN_VERSION)
        fatal("%s: model file version %u, this qalign reads version %d;" HINT_EXPORT, path, version, QALIGN_VERSION);
    if (rd_u32(m->map + 8) != HEADER_BYTES) fatal("%s: bad header size;" HINT_EXPORT, path);
    read_config(&m->c, m->map, path);
    read_table(m);
    bind_weights(m);
}

static void model_free(Model *m) {
    tokenizer_free(&m->tok);
    free(m->v.layers);
    free(m->a.layers);
    free(m->l.layers);
    free(m->table);
    if (m->map) munmap((void *)m->map, m->file_size);
    memset(m, 0, sizeof *m);
}

/* ----------------------------------------------------------------------------------------
 * Run state: every activation buffer, allocated once for the largest job of a run
 * (n_frames images through the tower, a decoder sequence of up to max_seq rows). The
 * forward passes never allocate. */

typedef struct {
    int n_frames;           /* images per call the buffers are sized for */
    int max_seq;            /* decoder rows the buffers are sized for */
    int n_threads;          /* OpenMP threads the per-thread scratch is sized for */
    /* vision tower, one image at a time (T = v_tokens, D = v_dim) */
    float *pixels;          /* (3, v_image, v_image) normalised input */
    float *patches;         /* (T-1, 3*patch*patch) im2col of the input */
    float *vx;              /* (T, D) residual stream */
    float *vxn;             /* (T, D) normalised stream */
    float *vq, *vk, *vv;    /* (T, D) */
    float *vatt;            /* (T, D) attention output (heads concatenated) */
    float *vmlp;            /* (T, v_mlp) */
    float *vision_out;      /* (n_frames, T, D) post_layernorm output per frame */
    /* abstractor (Q = a_queries, E = Q + T encoder rows) */
    float *aq;              /* (Q, D) query stream */
    float *aqn;             /* (Q, D) norm1(query) */
    float *aenc;            /* (E, D) [norm1(query); normk(image)] */
    float *apos;            /* (E, D) enc + [q_pos; k_pos] */
    float *ak, *av;         /* (E, D) keys, values */
    float *aqq;             /* (Q, D) projected queries */
    float *actx;            /* (Q, D) attention output */
    float *amlp1, *amlp3;   /* (Q, a_mlp) */
    float *visual;          /* (n_frames, Q+1, l_dim) abstractor output = visual rows */
    /* decoder (S = max_seq rows) */
    float *x;               /* (S, l_dim) residual stream */
    float *xn;              /* (S, l_dim) normalised stream */
    float *q;               /* (S, l_dim) queries */
    float *k, *v;           /* (S, kv_dim) keys and values of the current layer */
    float *att;             /* (S, l_dim) attention output */
    float *hb, *hb2;        /* (S, l_mlp) gate and up */
    float *rope_cos, *rope_sin; /* (S, l_head_dim/2) */
    float *scores;          /* (n_threads, max(E, S)) per-thread attention scores */
    float *final;           /* (l_dim) final-norm hidden state of the last row */
} RunState;

static void run_state_alloc(RunState *s, const Config *c, int n_frames, int max_seq) {
    memset(s, 0, sizeof *s);
    s->n_frames = n_frames;
    s->max_seq = max_seq;
#ifdef _OPENMP
    s->n_threads = omp_get_max_threads();
#else
    s->n_threads = 1;
#endif
    size_t T = (size_t)c->v_tokens, D = (size_t)c->v_dim, Q = (size_t)c->a_queries, E = Q + T;
    size_t Dl = (size_t)c->l_dim, S = (size_t)max_seq, kvd = (size_t)c->l_kv_heads * c->l_head_dim;
    size_t P = (size_t)c->v_patch;
    s->pixels = xmalloc(3 * (size_t)c->v_image * c->v_image * sizeof(float));
    s->patches = xmalloc((T - 1) * 3 * P * P * sizeof(float));
    s->vx = xmalloc(T * D * sizeof(float));
    s->vxn = xmalloc(T * D * sizeof(float));
    s->vq = xmalloc(T * D * sizeof(float));
    s->vk = xmalloc(T * D * sizeof(float));
    s->vv = xmalloc(T * D * sizeof(float));
    s->vatt = xmalloc(T * D * sizeof(float));
    s->vmlp = xmalloc(T * (size_t)c->v_mlp * sizeof(float));
    s->vision_out = xmalloc((size_t)n_frames * T * D * sizeof(float));
    s->aq = xmalloc(Q * D * sizeof(float));
    s->aqn = xmalloc(Q * D * sizeof(float));
    s->aenc = xmalloc(E * D * sizeof(float));
    s->apos = xmalloc(E * D * sizeof(float));
    s->ak = xmalloc(E * D * sizeof(float));
    s->av = xmalloc(E * D * sizeof(float));
    s->aqq = xmalloc(Q * D * sizeof(float));
    s->actx = xmalloc(Q * D * sizeof(float));
    s->amlp1 = xmalloc(Q * (size_t)c->a_mlp * sizeof(float));
    s->amlp3 = xmalloc(Q * (size_t)c->a_mlp * sizeof(float));
    s->visual = xmalloc((size_t)n_frames * (Q + 1) * Dl * sizeof(float));
    s->x = xmalloc(S * Dl * sizeof(float));
    s->xn = xmalloc(S * Dl * sizeof(float));
    s->q = xmalloc(S * Dl * sizeof(float));
    s->k = xmalloc(S * kvd * sizeof(float));
    s->v = xmalloc(S * kvd * sizeof(float));
    s->att = xmalloc(S * Dl * sizeof(float));
    s->hb = xmalloc(S * (size_t)c->l_mlp * sizeof(float));
    s->hb2 = xmalloc(S * (size_t)c->l_mlp * sizeof(float));
    s->rope_cos = xmalloc(S * (size_t)(c->l_head_dim / 2) * sizeof(float));
    s->rope_sin = xmalloc(S * (size_t)(c->l_head_dim / 2) * sizeof(float));
    size_t maxlen = E > S ? E : S;
    s->scores = xmalloc((size_t)s->n_threads * maxlen * sizeof(float));
    s->final = xmalloc(Dl * sizeof(float));
}

static void run_state_free(RunState *s) {
    float **bufs[] = {&s->pixels, &s->patches, &s->vx, &s->vxn, &s->vq, &s->vk, &s->vv, &s->vatt, &s->vmlp,
                      &s->vision_out, &s->aq, &s->aqn, &s->aenc, &s->apos, &s->ak, &s->av, &s->aqq, &s->actx,
                      &s->amlp1, &s->amlp3, &s->visual, &s->x, &s->xn, &s->q, &s->k, &s->v, &s->att, &s->hb,
                      &s->hb2, &s->rope_cos, &s->rope_sin, &s->scores, &s->final};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        free(*bufs[i]);
        *bufs[i] = NULL;
    }
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* ----------------------------------------------------------------------------------------
 * Kernels. Each is a plain loop that is the reference and the fallback; outputs first,
 * dimensions last. OpenMP splits the outermost independent loop; every output element is
 * computed by one thread in a fixed order, so results do not depend on the thread count. */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* dot(x, W[row]) for one weight row of any dtype; K = W->cols. */
static float dot_row(const Tensor *W, int row, const float *x) {
    int K = W->cols;
    size_t base = (size_t)row * (size_t)K;
    float sum = 0.0f;
    switch (W->dtype) {
    case DT_F32: {
        const float *w = (const float *)W->data + base;
        for (int k = 0; k < K; k++) sum += w[k] * x[k];
        break;
    }
    case DT_BF16: {
        const uint16_t *w = (const uint16_t *)W->data + base;
        for (int k = 0; k < K; k++) sum += bf16_to_f32(w[k]) * x[k];
        break;
    }
    case DT_Q8_0: {
        /* values: int8 (rows, cols); then scales: f32 (rows, cols/32) */
        const int8_t *q = (const int8_t *)W->data + base;
        const float *d = (const float *)((const int8_t *)W->data + (size_t)W->rows * K) + base / QBLOCK;
        for (int b = 0; b < K / QBLOCK; b++) {
            float s = 0.0f;
            for (int k = 0; k < QBLOCK; k++) s += (float)q[b * QBLOCK + k] * x[b * QBLOCK + k];
            sum += d[b] * s;
        }
        break;
    }
    case DT_Q4_1: {
        /* values: nibbles (rows, cols/2), byte i of a block = value i | value i+16 << 4;
         * then (scale, min) f32 pairs (rows, cols/32, 2) */
        const uint8_t *q = (const uint8_t *)W->data + base / 2;
        const float *dm = (const float *)((const uint8_t *)W->data + (size_t)W->rows * K / 2) + 2 * (base / QBLOCK);
        for (int b = 0; b < K / QBLOCK; b++) {
            const uint8_t *qb = q + b * QBLOCK / 2;
            const float *xb = x + b * QBLOCK;
            float s = 0.0f, xs = 0.0f;
            for (int k = 0; k < QBLOCK / 2; k++) {
                s += (float)(qb[k] & 15) * xb[k] + (float)(qb[k] >> 4) * xb[k + QBLOCK / 2];
                xs += xb[k] + xb[k + QBLOCK / 2];
            }
            sum += dm[2 * b] * s + dm[2 * b + 1] * xs;
        }
        break;
    }
    }
    return sum;
}

/* One row of W as f32 (embedding lookups). */
static void dequant_row(float *out, const Tensor *W, int row) {
    /* a row of the identity trick would be slow; decode directly */
    int K = W->cols;
    size_t base = (size_t)row * (size_t)K;
    switch (W->dtype) {
    case DT_F32: memcpy(out, (const float *)W->data + base, (size_t)K * sizeof(float)); break;
    case DT_BF16:
        for (int k = 0; k < K; k++) out[k] = bf16_to_f32(((const uint16_t *)W->data)[base + k]);
        break;
    case DT_Q8_0: {
        const int8_t *q = (const int8_t *)W->data + base;
        const float *d = (const float *)((const int8_t *)W->data + (size_t)W->rows * K) + base / QBLOCK;
        for (int k = 0; k < K; k++) out[k] = d[k / QBLOCK] * (float)q[k];
        break;
    }
    case DT_Q4_1: {
        const uint8_t *q = (const uint8_t *)W->data + base / 2;
        const float *dm = (const float *)((const uint8_t *)W->data + (size_t)W->rows * K / 2) + 2 * (base / QBLOCK);
        for (int k = 0; k < K; k++) {
            int b = k / QBLOCK, i = k % QBLOCK;
            uint8_t byte = q[b * QBLOCK / 2 + (i % (QBLOCK / 2))];
            int v = i < QBLOCK / 2 ? (byte & 15) : (byte >> 4);
            out[k] = dm[2 * b] * (float)v + dm[2 * b + 1];
        }
        break;
    }
    }
}

/* out[t, o] = bias[o] + sum_k x[t, k] * W[o, k]     (nn.Linear)
 * out (T, W->rows), x (T, W->cols), bias (W->rows) or NULL */
static void matmul(float *out, const float *x, const Tensor *W, const float *bias, int T) {
    int N = W->rows, K = W->cols;
#pragma omp parallel for schedule(static)
    for (int o = 0; o < N; o++) {
        float b = bias ? bias[o] : 0.0f;
        for (int t = 0; t < T; t++) out[(size_t)t * N + o] = b + dot_row(W, o, x + (size_t)t * K);
    }
}

/* nn.LayerNorm over the last dim: out = (x - mean) / sqrt(var + eps) * w + b
 * out, x (T, C); statistics in double. out may equal x. */
static void layernorm(float *out, const float *x, const float *w, const float *b, int T, int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C;
        float *ot = out + (size_t)t * C;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < C; i++) mean += xt[i];
        mean /= C;
        for (int i = 0; i < C; i++) {
            double d = xt[i] - mean;
            var += d * d;
        }
        var /= C;
        float rstd = (float)(1.0 / sqrt(var + (double)eps));
        float m = (float)mean;
        for (int i = 0; i < C; i++) ot[i] = (xt[i] - m) * rstd * w[i] + b[i];
    }
}

/* LlamaRMSNorm: out = w * (x / sqrt(mean(x^2) + eps)); out, x (C) */
static void rmsnorm_row(float *out, const float *x, const float *w, int C, float eps) {
    double ss = 0.0;
    for (int i = 0; i < C; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / C + (double)eps));
    for (int i = 0; i < C; i++) out[i] = w[i] * (x[i] * r);
}

/* softmax in place over n values, max-subtracted */
static void softmax(float *x, int n) {
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

/* Multi-head attention, softmax(q k^T * scale [+ causal mask]) v, heads concatenated.
 *   out (Tq, H*hd); q (Tq, ldq) with head h at columns h*hd; k, v (Tk, ldkv) with kv head
 *   h / (H/KVH) at columns (h/(H/KVH))*hd. causal: query i sees keys j <= i + q_offset.
 *   scratch: (n_threads, Tk) */
static void attention(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv,
                      int Tq, int Tk, int H, int KVH, int hd, int causal, int q_offset, float *scratch) {
    float scale = 1.0f / sqrtf((float)hd);
    int group = H / KVH;
#pragma omp parallel for collapse(2) schedule(static)
    for (int h = 0; h < H; h++) {
        for (int i = 0; i < Tq; i++) {
            float *s = scratch + (size_t)thread_id() * Tk;
            const float *qi = q + (size_t)i * ldq + (size_t)h * hd;
            int kh = h / group;
            int n = causal ? i + q_offset + 1 : Tk;
            for (int j = 0; j < n; j++) {
                const float *kj = k + (size_t)j * ldkv + (size_t)kh * hd;
                float dot = 0.0f;
                for (int d = 0; d < hd; d++) dot += qi[d] * kj[d];
                s[j] = dot * scale;
            }
            softmax(s, n);
            float *oi = out + (size_t)i * H * hd + (size_t)h * hd;
            for (int d = 0; d < hd; d++) oi[d] = 0.0f;
            for (int j = 0; j < n; j++) {
                const float *vj = v + (size_t)j * ldkv + (size_t)kh * hd;
                float p = s[j];
                for (int d = 0; d < hd; d++) oi[d] += p * vj[d];
            }
        }
    }
}

static void add_inplace(float *x, const float *y, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

/* QuickGELU: x * sigmoid(1.702 x) */
static void quick_gelu(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
}

/* SwiGLU gate: a = silu(a) * b */
static void silu_mul(float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) a[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
}

/* ----------------------------------------------------------------------------------------
 * Intermediate arrays for study (--dump DIR): .npy files named as in the reference
 * fixtures. A NULL Dump turns every call into a no-op. Arrays with a leading frame axis
 * are written frame by frame: the header (with the full shape) with frame 0, the data of
 * later frames appended. */

typedef struct {
    const char *dir;        /* output directory */
    int failed;             /* a write failed (reported once) */
} Dump;

static void npy_write(Dump *d, const char *name, const char *descr, const void *data, size_t elem,
                      const int64_t *shape, int ndim, int frame) {
    if (!d || d->failed) return;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", d->dir, name);
    FILE *f = fopen(path, frame <= 0 ? "wb" : "ab");
    if (!f) {
        fprintf(stderr, "qalign: warning: cannot write %s: %s\n", path, strerror(errno));
        d->failed = 1;
        return;
    }
    size_t n = 1;
    for (int i = (frame >= 0 ? 1 : 0); i < ndim; i++) n *= (size_t)shape[i];
    if (frame <= 0) {
        char hdr[256], sh[160] = "";
        for (int i = 0; i < ndim; i++) {
            size_t used = strlen(sh);
            snprintf(sh + used, sizeof sh - used, "%lld,%s", (long long)shape[i], i + 1 < ndim ? " " : "");
        }
        if (ndim > 1) sh[strlen(sh) - 1] = 0; /* (3,) for 1-D, (1, 2, 3) otherwise */
        int len = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, sh);
        int pad = (64 - (10 + len + 1) % 64) % 64; /* magic+version+hlen, header, '\n': multiple of 64 */
        uint16_t hlen = (uint16_t)(len + pad + 1);
        uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(hlen & 255), (uint8_t)(hlen >> 8)};
        fwrite(pre, 1, sizeof pre, f);
        fwrite(hdr, 1, (size_t)len, f);
        for (int i = 0; i < pad; i++) fputc(' ', f);
        fputc('\n', f);
    }
    fwrite(data, elem, n, f);
    if (fclose(f) != 0) d->failed = 1;
}

/* float32 array; frame >= 0: data is frame `frame` of shape[0] frames */
static void dump_f32(Dump *d, const char *name, const float *data, int frame, int ndim, ...) {
    if (!d) return;
    int64_t shape[8];
    va_list ap;
    va_start(ap, ndim);
    for (int i = 0; i < ndim; i++) shape[i] = va_arg(ap, int64_t);
    va_end(ap);
    npy_write(d, name, "<f4", data, 4, shape, ndim, frame);
}

/* ----------------------------------------------------------------------------------------
 * Vision tower: CLIP ViT (MplugOwlVisionModel), one image at a time.
 * pixels (3, S, S) -> out (T, D), T = 1 + (S/P)^2. */

static void vision_forward(const Model *m, RunState *s, const float *pixels, float *out, Dump *dump, int frame, int n_frames) {
    const Config *c = &m->c;
    const VisionWeights *w = &m->v;
    int D = c->v_dim, T = c->v_tokens, P = c->v_patch, G = c->v_grid, S = c->v_image;
    int H = c->v_heads, hd = D / H, K = 3 * P * P;
    float *x = s->vx, *xn = s->vxn;
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
    matmul(x + D, s->patches, &w->patch, NULL, G * G);
    /* embeddings = torch.cat([class_embeds, image_embeds], dim=1)
     * embeddings = embeddings + self.position_embedding[:, :embeddings.size(1)] */
    memcpy(x, w->cls, (size_t)D * sizeof(float));
    add_inplace(x, w->pos, (size_t)T * D);
    /* embeddings = self.pre_layernorm(embeddings) */
    layernorm(x, x, w->pre_ln_w, w->pre_ln_b, T, D, c->v_eps);
    dump_f32(dump, "vision_embeddings", x, frame, 3, (int64_t)n_frames, (int64_t)T, (int64_t)D);

    for (int l = 0; l < c->v_layers; l++) {
        const VisionLayer *L = &w->layers[l];
        /* hidden_states = self.input_layernorm(hidden_states) */
        layernorm(xn, x, L->ln1_w, L->ln1_b, T, D, c->v_eps);
        /* mixed_qkv = self.query_key_value(hidden_states)
         * .reshape(B, T, H, 3, hd).permute(3, 0, 2, 1, 4)   (de-interleaved by export.py) */
        matmul(s->vq, xn, &L->wq, L->bq, T);
        matmul(s->vk, xn, &L->wk, L->bk, T);
        matmul(s->vv, xn, &L->wv, L->bv, T);
        /* attention_probs = softmax(q @ k^T * hd**-0.5); context = (probs @ v).permute(0,2,1,3) */
        attention(s->vatt, s->vq, D, s->vk, s->vv, D, T, T, H, H, hd, 0, 0, s->scores);
        /* output = self.dense(context_layer); hidden_states = attention_output + residual */
        matmul(xn, s->vatt, &L->wo, L->bo, T);
        add_inplace(x, xn, (size_t)T * D);
        /* hidden_states = self.post_attention_layernorm(hidden_states)
         * hidden_states = self.mlp(hidden_states)   # fc2(QuickGELU(fc1(x))) */
        layernorm(xn, x, L->ln2_w, L->ln2_b, T, D, c->v_eps);
        matmul(s->vmlp, xn, &L->fc1, L->fc1_b, T);
        quick_gelu(s->vmlp, (size_t)T * c->v_mlp);
        matmul(xn, s->vmlp, &L->fc2, L->fc2_b, T);
        /* hidden_states = residual + hidden_states */
        add_inplace(x, xn, (size_t)T * D);
        snprintf(name, sizeof name, "vision_layer%d", l);
        dump_f32(dump, name, x, frame, 3, (int64_t)n_frames, (int64_t)T, (int64_t)D);
    }
    /* last_hidden_state = self.post_layernorm(last_hidden_state)   # all T tokens, CLS kept */
    layernorm(out, x, w->post_ln_w, w->post_ln_b, T, D, c->v_eps);
    dump_f32(dump, "vision_out", out, frame, 3, (int64_t)n_frames, (int64_t)T, (int64_t)D);
}

/* ----------------------------------------------------------------------------------------
 * Visual abstractor (MplugOwlVisualAbstractorModel): a_queries learned queries
 * cross-attend to [queries; image features] in every layer.
 * image (T, D) -> out (Q+1, l_dim): visual_fc of the queries, then vit_eos. */

static void abstractor_forward(const Model *m, RunState *s, const float *image, float *out, Dump *dump, int frame, int n_frames) {
    const Config *c = &m->c;
    const AbstractorWeights *w = &m->a;
    int D = c->v_dim, T = c->v_tokens, Q = c->a_queries, E = Q + T, H = c->a_heads, hd = D / H;
    int Dl = c->l_dim;
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
        matmul(s->ak, s->apos, &L->wk, L->bk, E);
        matmul(s->av, s->aenc, &L->wv, L->bv, E);
        /* mixed_query_layer = self.query(hidden_states + self.q_pos_embed) */
        matmul(s->aqq, s->apos, &L->wq, L->bq, Q);
        /* attention_probs = softmax(q @ k^T / sqrt(hd)); context = probs @ v   (mask is all zeros) */
        attention(s->actx, s->aqq, D, s->ak, s->av, D, Q, E, H, H, hd, 0, 0, s->scores);
        /* input_tensor = input_tensor + self.out_proj(hidden_states)   # residual = norm1(query)! */
        matmul(s->aq, s->actx, &L->wo, L->bo, Q);
        add_inplace(s->aq, qn, (size_t)Q * D);
        /* input_tensor = input_tensor + self.mlp(self.norm2(input_tensor))
         * mlp(x) = w2(ffn_ln(silu(w1(x)) * w3(x))) */
        layernorm(s->aqn, s->aq, L->norm2_w, L->norm2_b, Q, D, c->a_eps);
        matmul(s->amlp1, s->aqn, &L->w1, L->b1, Q);
        matmul(s->amlp3, s->aqn, &L->w3, L->b3, Q);
        silu_mul(s->amlp1, s->amlp3, (size_t)Q * c->a_mlp);
        layernorm(s->amlp1, s->amlp1, L->ffn_ln_w, L->ffn_ln_b, Q, c->a_mlp, c->a_ffn_eps);
        matmul(s->aqn, s->amlp1, &L->w2, L->b2, Q);
        add_inplace(s->aq, s->aqn, (size_t)Q * D);
        snprintf(name, sizeof name, "abstractor_layer%d", l);
        dump_f32(dump, name, s->aq, frame, 3, (int64_t)n_frames, (int64_t)Q, (int64_t)D);
    }
    /* sequence_output = self.visual_fc(sequence_output)
     * sequence_output = torch.cat([sequence_output, self.vit_eos.repeat(B, 1, 1)], dim=1) */
    matmul(out, s->aq, &w->fc, w->fc_b, Q);
    memcpy(out + (size_t)Q * Dl, w->eos, (size_t)Dl * sizeof(float));
    dump_f32(dump, "abstractor_out", out, frame, 3, (int64_t)n_frames, (int64_t)(Q + 1), (int64_t)Dl);
}

/* ----------------------------------------------------------------------------------------
 * LLaMA-2 decoder with modality-adaptive k/v projections and norms.
 *
 * The sequence is n rows: text rows (modality 0) and visual rows (modality 1) in spans.
 * Returns in `final` (l_dim) the final-norm hidden state of the last row. All rows are
 * needed for keys and values; in the last layer only the last row goes through the
 * attention output, o_proj and the MLP (unless dumping, which wants every row). */

typedef struct {
    int start, end;         /* rows [start, end) */
    int modality;           /* 0 text, 1 visual */
} Span;

/* Rows of x (n, C) normalised with the weight of their modality. */
static void rmsnorm_spans(float *out, const float *x, const float *const w[2], const Span *spans, int n_spans, int C, float eps) {
    for (int si = 0; si < n_spans; si++) {
        const Span *sp = &spans[si];
#pragma omp parallel for schedule(static)
        for (int t = sp->start; t < sp->end; t++)
            rmsnorm_row(out + (size_t)t * C, x + (size_t)t * C, w[sp->modality], C, eps);
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
 * x (n, heads*hd), rows from `start`: pairs are (d, d + hd/2), not (2d, 2d+1). */
static void rope(float *x, int start, int n, int heads, int hd, const float *cosb, const float *sinb) {
    int half = hd / 2;
#pragma omp parallel for schedule(static)
    for (int t = start; t < n; t++)
        for (int h = 0; h < heads; h++) {
            float *v = x + ((size_t)t * heads + h) * hd;
            const float *cs = cosb + (size_t)t * half, *sn = sinb + (size_t)t * half;
            for (int j = 0; j < half; j++) {
                float a = v[j], b = v[j + half];
                v[j] = a * cs[j] - b * sn[j];
                v[j + half] = b * cs[j] + a * sn[j];
            }
        }
}

static void decoder_forward(const Model *m, RunState *s, int n, const Span *spans, int n_spans, float *final, Dump *dump) {
    const Config *c = &m->c;
    const DecoderWeights *w = &m->l;
    int D = c->l_dim, H = c->l_heads, KVH = c->l_kv_heads, hd = c->l_head_dim, kvd = KVH * hd, F = c->l_mlp;
    float *x = s->x, *xn = s->xn;
    char name[64];

    rope_tables(s->rope_cos, s->rope_sin, n, hd, c->l_rope_theta);
    for (int l = 0; l < c->l_layers; l++) {
        const DecoderLayer *L = &w->layers[l];
        /* rows that must go all the way through this layer: all of them, except in the
         * last layer, where only the last row is used (keys/values still need every row) */
        int first = (l == c->l_layers - 1 && !dump) ? n - 1 : 0;
        int rows = n - first;
        /* hidden_states = self.input_layernorm(hidden_states, modality_indicators) */
        rmsnorm_spans(xn, x, L->attn_norm, spans, n_spans, D, c->l_eps);
        /* query_states = self.q_proj(hidden_states)
         * key_states   = self.k_proj(hidden_states, modality_indicators)  # multiway[m] per row
         * value_states = self.v_proj(hidden_states, modality_indicators) */
        matmul(s->q + (size_t)first * D, xn + (size_t)first * D, &L->wq, NULL, rows);
        for (int si = 0; si < n_spans; si++) {
            const Span *sp = &spans[si];
            matmul(s->k + (size_t)sp->start * kvd, xn + (size_t)sp->start * D, &L->wk[sp->modality], NULL, sp->end - sp->start);
            matmul(s->v + (size_t)sp->start * kvd, xn + (size_t)sp->start * D, &L->wv[sp->modality], NULL, sp->end - sp->start);
        }
        /* query_states, key_states = apply_rotary_pos_emb(q, k, cos, sin, position_ids)  # positions 0..n-1 */
        rope(s->q, first, n, H, hd, s->rope_cos, s->rope_sin);
        rope(s->k, 0, n, KVH, hd, s->rope_cos, s->rope_sin);
        /* attn_weights = softmax(q @ k^T / sqrt(hd) + causal_mask, dtype=float32) @ v   (repeat_kv for GQA) */
        attention(s->att + (size_t)first * D, s->q + (size_t)first * D, D, s->k, s->v, kvd, rows, n, H, KVH, hd, 1, first,
                  s->scores);
        /* attn_output = self.o_proj(attn_output); hidden_states = residual + hidden_states */
        matmul(xn + (size_t)first * D, s->att + (size_t)first * D, &L->wo, NULL, rows);
        add_inplace(x + (size_t)first * D, xn + (size_t)first * D, (size_t)rows * D);
        /* hidden_states = self.post_attention_layernorm(hidden_states, modality_indicators)
         * hidden_states = self.mlp(hidden_states)  # down(silu(gate(x)) * up(x)) */
        rmsnorm_spans(xn, x, L->mlp_norm, spans, n_spans, D, c->l_eps);
        matmul(s->hb + (size_t)first * F, xn + (size_t)first * D, &L->gate, NULL, rows);
        matmul(s->hb2 + (size_t)first * F, xn + (size_t)first * D, &L->up, NULL, rows);
        silu_mul(s->hb + (size_t)first * F, s->hb2 + (size_t)first * F, (size_t)rows * F);
        matmul(xn + (size_t)first * D, s->hb + (size_t)first * F, &L->down, NULL, rows);
        add_inplace(x + (size_t)first * D, xn + (size_t)first * D, (size_t)rows * D);
        snprintf(name, sizeof name, "llm_layer%d", l);
        dump_f32(dump, name, x, -1, 2, (int64_t)n, (int64_t)D);
    }
    /* hidden_states = self.norm(hidden_states) */
    if (dump) {
#pragma omp parallel for schedule(static)
        for (int t = 0; t < n; t++) rmsnorm_row(xn + (size_t)t * D, x + (size_t)t * D, w->norm, D, c->l_eps);
        dump_f32(dump, "llm_final_norm", xn, -1, 2, (int64_t)n, (int64_t)D);
        memcpy(final, xn + (size_t)(n - 1) * D, (size_t)D * sizeof(float));
    } else {
        rmsnorm_row(final, x + (size_t)(n - 1) * D, w->norm, D, c->l_eps);
    }
}

/* ----------------------------------------------------------------------------------------
 * Scoring: the prompt, the spliced sequence, and the five level logits.
 *
 * prompt = "USER: How would you rate the {task} of this {input}?\n<|image|>\nASSISTANT: The {task} of the {input} is"
 * input_ids = tokenizer_image_token(prompt)   # chunks tokenized separately, one BOS
 * logits = lm_head(hidden_states)[:, -1, [excellent, good, fair, poor, bad]]
 * score = softmax(logits) @ [5, 4, 3, 2, 1]  */

static const float LEVEL_WEIGHTS[N_LEVELS] = {5.0f, 4.0f, 3.0f, 2.0f, 1.0f};
static const char *const LEVEL_WORDS[N_LEVELS] = {"excellent", "good", "fair", "poor", "bad"};

typedef struct {
    float logits[N_LEVELS];  /* lm_head rows of the level words at the last position */
    float probs[N_LEVELS];   /* softmax over those five */
    float score;             /* probs . [5 4 3 2 1], in [1, 5] */
} Score;

typedef struct {
    int *ids;               /* (n_ids) prompt ids, TOKEN_IMAGE_MARKER where the image goes */
    int n_ids;
} Prompt;

static void build_prompt(const Model *m, const char *task, const char *input, Prompt *p) {
    char text[512];
    int len = snprintf(text, sizeof text,
                       "USER: How would you rate the %s of this %s?\n<|image|>\nASSISTANT: The %s of the %s is",
                       task, input, task, input);
    if (len < 0 || (size_t)len >= sizeof text) fatal("prompt too long");
    int cap = len + 8;
    p->ids = xmalloc((size_t)cap * sizeof(int));
    p->n_ids = tokenize_prompt(&m->tok, text, p->ids, cap);
    if (p->n_ids < 0 || p->n_ids > cap) fatal("tokenizing the prompt failed");
    int markers = 0;
    for (int i = 0; i < p->n_ids; i++) markers += p->ids[i] == TOKEN_IMAGE_MARKER;
    if (markers != 1) fatal("the prompt must contain exactly one <|image|>");
}

/* Sequence length for a prompt with n_frames images spliced in. */
static int sequence_length(const Model *m, const Prompt *p, int n_frames) {
    return p->n_ids - 1 + n_frames * (m->c.a_queries + 1);
}

static void score_from_logits(Score *sc) {
    memcpy(sc->probs, sc->logits, sizeof sc->probs);
    softmax(sc->probs, N_LEVELS);
    double s = 0.0;
    for (int i = 0; i < N_LEVELS; i++) s += (double)sc->probs[i] * LEVEL_WEIGHTS[i];
    sc->score = (float)s;
}

/* Score one image (n_frames = 1) or one video (its frames, in order): pixels holds
 * n_frames normalised images (3, S, S) each. */
static void score_frames(const Model *m, RunState *s, const Prompt *p, const float *pixels, int n_frames, Score *sc, Dump *dump) {
    const Config *c = &m->c;
    size_t T = (size_t)c->v_tokens, D = (size_t)c->v_dim, Dl = (size_t)c->l_dim;
    size_t img = 3 * (size_t)c->v_image * c->v_image;
    int rows_per_frame = c->a_queries + 1;

    /* image_features = self.encode_images(images)   # vision tower + abstractor, per frame */
    for (int f = 0; f < n_frames; f++) {
        dump_f32(dump, "pixel_values", pixels + f * img, f, 4, (int64_t)n_frames, (int64_t)3, (int64_t)c->v_image, (int64_t)c->v_image);
        vision_forward(m, s, pixels + f * img, s->vision_out + f * T * D, dump, f, n_frames);
        abstractor_forward(m, s, s->vision_out + f * T * D, s->visual + f * (size_t)rows_per_frame * Dl, dump, f, n_frames);
    }

    /* prepare_inputs_labels_for_multimodal: text rows = embed_tokens(ids); the image marker
     * is replaced by the frames' visual rows, flattened in frame order; modality 1 for them */
    int n = sequence_length(m, p, n_frames);
    if (n > s->max_seq) fatal("internal: sequence of %d rows exceeds the run state (%d)", n, s->max_seq);
    Span spans[8];
    int n_spans = 0, t = 0;
    for (int i = 0; i < p->n_ids; i++) {
        int start = t;
        if (p->ids[i] == TOKEN_IMAGE_MARKER) {
            memcpy(s->x + (size_t)t * Dl, s->visual, (size_t)n_frames * rows_per_frame * Dl * sizeof(float));
            t += n_frames * rows_per_frame;
            spans[n_spans++] = (Span){start, t, 1};
        } else {
            dequant_row(s->x + (size_t)t * Dl, &m->l.embed, p->ids[i]);
            t++;
            if (n_spans && spans[n_spans - 1].modality == 0 && spans[n_spans - 1].end == start)
                spans[n_spans - 1].end = t;
            else
                spans[n_spans++] = (Span){start, t, 0};
        }
    }
    if (dump) {
        int64_t *mod = xmalloc((size_t)n * sizeof(int64_t)), *ids = xmalloc((size_t)p->n_ids * sizeof(int64_t));
        for (int si = 0; si < n_spans; si++)
            for (int r = spans[si].start; r < spans[si].end; r++) mod[r] = spans[si].modality;
        for (int i = 0; i < p->n_ids; i++) ids[i] = p->ids[i];
        int64_t shp[1] = {n}, shi[1] = {p->n_ids};
        npy_write(dump, "modality_indicators", "<i8", mod, 8, shp, 1, -1);
        npy_write(dump, "input_ids", "<i8", ids, 8, shi, 1, -1);
        free(mod);
        free(ids);
        dump_f32(dump, "llm_inputs_embeds", s->x, -1, 2, (int64_t)n, (int64_t)Dl);
    }

    float *final = s->final;
    decoder_forward(m, s, n, spans, n_spans, final, dump);
    /* logits = self.lm_head(hidden_states)[:, -1, level_ids]   # only 5 rows of lm_head */
    for (int i = 0; i < N_LEVELS; i++) sc->logits[i] = dot_row(&m->l.head, c->level_ids[i], final);
    score_from_logits(sc);
    if (dump) {
        float *all = xmalloc((size_t)c->l_vocab * sizeof(float));
        for (int v = 0; v < c->l_vocab; v++) all[v] = dot_row(&m->l.head, v, final);
        dump_f32(dump, "logits_last", all, -1, 1, (int64_t)c->l_vocab);
        free(all);
        dump_f32(dump, "level_logits", sc->logits, -1, 1, (int64_t)N_LEVELS);
        dump_f32(dump, "score", &sc->score, -1, 1, (int64_t)1);
    }
}

/* Decode + preprocess one file into normalised pixels (3, S, S); resized (S, S, 3) kept
 * for dumps. Returns 0, or -1 with a message. */
static int load_pixels(const Model *m, const char *path, float *pixels, Image *resized, char *err, size_t errlen) {
    Image img = {0}, sq = {0};
    if (image_load(path, &img, err, errlen) != 0) return -1;
    int rc = image_preprocess(&img, m->c.fill, m->c.v_image, &sq, err, errlen);
    image_free(&img);
    if (rc != 0) return -1;
    image_normalize(&sq, m->c.mean, m->c.std, pixels);
    if (resized)
        *resized = sq;
    else
        image_free(&sq);
    return 0;
}

/* ----------------------------------------------------------------------------------------
 * CLI */

#ifndef TESTING

static void usage(FILE *f) {
    fprintf(f,
            "usage: qalign [options] MODEL INPUT...\n"
            "Scores the quality or aesthetics of images (or one video given as frames) with a\n"
            "Q-Align / OneAlign model exported by export.py. Prints one line per input:\n"
            "the score (1-5) and the probabilities of excellent good fair poor bad.\n"
            "\n"
            "options:\n"
            "  -t, --task quality|aesthetics  what to rate (default quality)\n"
            "  --video                 all INPUTs are the frames of one video, in order (1 per second)\n"
            "  --json                  one JSON object per line: file, task, score, probs, logits\n"
            "  --scale 1-5|0-1         score scale (default 1-5; 0-1 is (score-1)/4)\n"
            "  --dump DIR              write every intermediate array as DIR/<name>.npy (one input)\n"
            "  --threads N             OpenMP threads (default: all cores)\n"
            "  -h, --help              this help\n"
            "other commands:\n"
            "  qalign --tokenize TEXT MODEL            print TEXT's token ids (with BOS)\n"
            "  qalign --info MODEL                     print the model's header\n"
            "  qalign --decode FILE OUT.ppm            decode an image to 8-bit RGB (binary PPM)\n"
            "  qalign --preprocess-only [--size N] FILE OUT.ppm\n"
            "                                          pad to square and resize as the model sees it\n"
            "                                          (default N 448)\n");
}

typedef struct {
    const char *task;       /* "quality" or "aesthetics" */
    int video;              /* inputs are frames of one video */
    int json;               /* JSON lines output */
    int scale01;            /* print (s-1)/4 */
    const char *dump_dir;   /* --dump */
    int threads;            /* --threads, 0 = default */
} Options;

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

static void print_result(const Options *o, const char *file, int n_frames, const Score *sc) {
    float score = o->scale01 ? (sc->score - 1.0f) / 4.0f : sc->score;
    if (o->json) {
        printf("{\"file\": ");
        json_string(stdout, file);
        printf(", \"task\": \"%s\"", o->task);
        if (o->video) printf(", \"frames\": %d", n_frames);
        printf(", \"score\": %.6f, \"scale\": \"%s\", \"probs\": [", score, o->scale01 ? "0-1" : "1-5");
        for (int i = 0; i < N_LEVELS; i++) printf("%s%.6f", i ? ", " : "", sc->probs[i]);
        printf("], \"logits\": [");
        for (int i = 0; i < N_LEVELS; i++) printf("%s%.6f", i ? ", " : "", sc->logits[i]);
        printf("]}\n");
    } else {
        printf("%.4f ", score);
        for (int i = 0; i < N_LEVELS; i++) printf(" %s=%.4f", LEVEL_WORDS[i], sc->probs[i]);
        printf("  %s\n", file);
    }
    fflush(stdout);
}

static void print_error(const Options *o, const char *file, const char *err) {
    fprintf(stderr, "qalign: error: %s: %s\n", file, err);
    if (o && o->json) {
        printf("{\"file\": ");
        json_string(stdout, file);
        printf(", \"error\": ");
        json_string(stdout, err);
        printf("}\n");
        fflush(stdout);
    }
}

static int parse_int(const char *s, const char *flag, int lo, int hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) fatal("%s expects an integer in [%d, %d], got '%s'", flag, lo, hi, s);
    return (int)v;
}

static int cmd_decode(int argc, char **argv, int preprocess) {
    int size = 448;
    const char *in = NULL, *out = NULL;
    for (int i = 0; i < argc; i++) {
        if (preprocess && strcmp(argv[i], "--size") == 0) {
            if (++i >= argc) fatal("--size needs a value");
            size = parse_int(argv[i], "--size", 1, 1 << 16);
        } else if (!in) in = argv[i];
        else if (!out) out = argv[i];
        else fatal("unexpected argument '%s' (try --help)", argv[i]);
    }
    if (!in || !out) fatal("usage: qalign %s FILE OUT.ppm", preprocess ? "--preprocess-only [--size N]" : "--decode");
    char err[256];
    Image img = {0}, res = {0};
    if (image_load(in, &img, err, sizeof err) != 0) {
        print_error(NULL, in, err);
        return 1;
    }
    Image *w = &img;
    if (preprocess) {
        static const uint8_t fill[3] = {122, 116, 104};
        if (image_preprocess(&img, fill, size, &res, err, sizeof err) != 0) {
            print_error(NULL, in, err);
            image_free(&img);
            return 1;
        }
        w = &res;
    }
    int rc = image_write_ppm(out, w, err, sizeof err);
    if (rc != 0) print_error(NULL, out, err);
    image_free(&img);
    image_free(&res);
    return rc ? 1 : 0;
}

static void cmd_info(const Model *m) {
    const Config *c = &m->c;
    printf("file        %s (%zu bytes, %d tensors, format version %d)\n", m->path, m->file_size, m->n_tensors, QALIGN_VERSION);
    printf("weights     %s\n", DT_NAMES[c->wtype]);
    printf("vision      dim %d, layers %d, heads %d, mlp %d, image %d, patch %d, tokens %d, eps %g\n", c->v_dim,
           c->v_layers, c->v_heads, c->v_mlp, c->v_image, c->v_patch, c->v_tokens, c->v_eps);
    printf("abstractor  layers %d, heads %d, queries %d, mlp %d, eps %g, ffn eps %g\n", c->a_layers, c->a_heads,
           c->a_queries, c->a_mlp, c->a_eps, c->a_ffn_eps);
    printf("decoder     dim %d, layers %d, heads %d, kv heads %d, mlp %d, vocab %d, eps %g, rope theta %g\n", c->l_dim,
           c->l_layers, c->l_heads, c->l_kv_heads, c->l_mlp, c->l_vocab, c->l_eps, c->l_rope_theta);
    printf("tokenizer   bos %d, eos %d, unk %d, dummy prefix %d\n", c->bos_id, c->eos_id, c->unk_id, c->dummy_prefix);
    printf("levels      ");
    for (int i = 0; i < N_LEVELS; i++) printf("%s=%d ", LEVEL_WORDS[i], c->level_ids[i]);
    printf("\npreprocess  fill %d,%d,%d mean %.8g,%.8g,%.8g std %.8g,%.8g,%.8g\n", c->fill[0], c->fill[1], c->fill[2],
           c->mean[0], c->mean[1], c->mean[2], c->std[0], c->std[1], c->std[2]);
}

int main(int argc, char **argv) {
    Options o = {.task = "quality"};
    const char *tokenize_text = NULL;
    int info = 0;
    char **inputs = xmalloc((size_t)argc * sizeof(char *));
    int n_inputs = 0;

    if (argc > 1 && strcmp(argv[1], "--decode") == 0) return cmd_decode(argc - 2, argv + 2, 0);
    if (argc > 1 && strcmp(argv[1], "--preprocess-only") == 0) return cmd_decode(argc - 2, argv + 2, 1);

    const char *model_path = NULL;
    int only_positional = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!only_positional && a[0] == '-' && a[1]) {
#define NEED_VALUE() do { if (i + 1 >= argc) fatal("%s needs a value (try --help)", a); } while (0)
            if (!strcmp(a, "--")) only_positional = 1;
            else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
            else if (!strcmp(a, "-t") || !strcmp(a, "--task")) {
                NEED_VALUE();
                o.task = argv[++i];
                if (strcmp(o.task, "quality") && strcmp(o.task, "aesthetics"))
                    fatal("--task must be quality or aesthetics, got '%s'", o.task);
            } else if (!strcmp(a, "--video")) o.video = 1;
            else if (!strcmp(a, "--json")) o.json = 1;
            else if (!strcmp(a, "--scale")) {
                NEED_VALUE();
                const char *v = argv[++i];
                if (!strcmp(v, "0-1")) o.scale01 = 1;
                else if (!strcmp(v, "1-5")) o.scale01 = 0;
                else fatal("--scale must be 1-5 or 0-1, got '%s'", v);
            } else if (!strcmp(a, "--dump")) { NEED_VALUE(); o.dump_dir = argv[++i]; }
            else if (!strcmp(a, "--threads")) { NEED_VALUE(); o.threads = parse_int(argv[++i], "--threads", 1, 4096); }
            else if (!strcmp(a, "--tokenize")) { NEED_VALUE(); tokenize_text = argv[++i]; }
            else if (!strcmp(a, "--info")) info = 1;
            else if (!strcmp(a, "--decode") || !strcmp(a, "--preprocess-only"))
                fatal("%s must be the first argument: qalign %s FILE OUT.ppm", a, a);
            else fatal("unknown option '%s' (try --help)", a);
#undef NEED_VALUE
        } else if (!model_path) model_path = a;
        else inputs[n_inputs++] = argv[i];
    }
    if (!model_path) { usage(stderr); return 2; }
#ifdef _OPENMP
    if (o.threads) omp_set_num_threads(o.threads);
#else
    if (o.threads > 1) fprintf(stderr, "qalign: warning: built without OpenMP, --threads %d ignored\n", o.threads);
#endif

    Model m;
    model_load(&m, model_path);
    if (info) { cmd_info(&m); model_free(&m); return 0; }
    if (tokenize_text) {
        size_t len = strlen(tokenize_text);
        int cap = (int)len + 8;
        int *ids = xmalloc((size_t)cap * sizeof(int));
        int n = tokenizer_encode(&m.tok, tokenize_text, len, 1, ids, cap);
        if (n < 0 || n > cap) fatal("tokenizing failed");
        for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
        free(ids);
        model_free(&m);
        return 0;
    }
    if (n_inputs == 0) fatal("no INPUT given (try --help)");
    if (o.dump_dir && !o.video && n_inputs > 1) fatal("--dump takes one input (or one video with --video)");

    Prompt p;
    build_prompt(&m, o.task, o.video ? "video" : "image", &p);
    int n_frames = o.video ? n_inputs : 1;
    RunState s;
    run_state_alloc(&s, &m.c, n_frames, sequence_length(&m, &p, n_frames));
    size_t img = 3 * (size_t)m.c.v_image * m.c.v_image;
    float *pixels = xmalloc((size_t)n_frames * img * sizeof(float));
    Dump dump = {.dir = o.dump_dir}, *dp = o.dump_dir ? &dump : NULL;
    int failures = 0;
    char err[512];

    if (o.video) {
        int ok = 1;
        for (int f = 0; f < n_frames && ok; f++) {
            Image resized = {0};
            if (load_pixels(&m, inputs[f], pixels + f * img, dp ? &resized : NULL, err, sizeof err) != 0) {
                print_error(&o, inputs[f], err);
                ok = 0;
            } else if (dp) {
                int64_t shape[4] = {n_frames, m.c.v_image, m.c.v_image, 3};
                npy_write(dp, "resized_rgb", "|u1", resized.rgb, 1, shape, 4, f);
                image_free(&resized);
            }
        }
        if (ok) {
            Score sc;
            score_frames(&m, &s, &p, pixels, n_frames, &sc, dp);
            print_result(&o, inputs[0], n_frames, &sc);
        } else failures++;
    } else {
        for (int i = 0; i < n_inputs; i++) {
            Image resized = {0};
            if (load_pixels(&m, inputs[i], pixels, dp ? &resized : NULL, err, sizeof err) != 0) {
                print_error(&o, inputs[i], err);
                failures++;
                continue;
            }
            if (dp) {
                int64_t shape[4] = {1, m.c.v_image, m.c.v_image, 3};
                npy_write(dp, "resized_rgb", "|u1", resized.rgb, 1, shape, 4, 0);
                image_free(&resized);
            }
            Score sc;
            score_frames(&m, &s, &p, pixels, 1, &sc, dp);
            print_result(&o, inputs[i], 1, &sc);
        }
    }
    if (dp && dump.failed) fatal("writing the dump to %s failed", o.dump_dir);
    free(pixels);
    free(p.ids);
    free(inputs);
    run_state_free(&s);
    model_free(&m);
    return failures ? 1 : 0;
}
#endif
