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
/* MAP_ANONYMOUS and madvise() (for --no-mmap) are outside POSIX 2008; everything else is in it */
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE 1
#endif
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

#include "app.h"
#include "image.h"
#include "tokenizer.h"

/* SIMD kernels are chosen at compile time from the -march flags (see the kernels section).
 * -DQA_SCALAR leaves them all out (NEON is part of every AArch64 target, so that is the
 * only way to get the scalar kernels there). PORTING.md: how to add a target. */
#if defined(QA_SCALAR)
/* reference kernels only */
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#include <immintrin.h>
#define QA_AVX512 1
#if defined(__AVX512VNNI__)
#define QA_AVX512_VNNI 1
#endif
#if defined(__AVX512BF16__)
#define QA_AVX512_BF16 1
#endif
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define QA_AVX2 1
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define QA_NEON 1
#if defined(__ARM_FEATURE_DOTPROD)
#define QA_NEON_DOT 1 /* sdot: Armv8.2-A +dotprod (-march=armv8.2-a+dotprod, or -mcpu of such a core) */
#endif
#endif
#if defined(QA_AVX512) || defined(QA_AVX2) || defined(QA_NEON)
#define QA_SIMD 1 /* matmul tiles read tile-interleaved activations (Acts.xp) */
#endif
#if !defined(_OPENMP) && defined(__GNUC__) && !defined(__clang__)
/* without -fopenmp the `#pragma omp` lines are meant to be ignored (one thread) */
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#endif

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

/* For functions that only some builds call (scalar references, test helpers). */
#if defined(__GNUC__) || defined(__clang__)
#define MAYBE_UNUSED __attribute__((unused))
#else
#define MAYBE_UNUSED
#endif

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

/* Tensor element types (export.py DT_*). Plain tensors are row-major; weight matrices
 * (M*) are stored in groups of 16 rows laid out for the SIMD kernels (export.py
 * pack_matrix; the reference tile in the kernels section reads them element by element). */
enum { DT_F32 = 0, DT_U8 = 1, DT_U32 = 2, DT_MF32 = 3, DT_MBF16 = 4, DT_MQ8_0 = 5, DT_MQ4_1 = 6, DT_COUNT };
static const char *const DT_NAMES[DT_COUNT] = {"f32", "u8", "u32", "f32", "bf16", "q8_0", "q4_1"};
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
    if (c->wtype < DT_MF32 || c->wtype > DT_MQ4_1) fatal("%s: unknown weight type %d;" HINT_EXPORT, path, c->wtype);
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
    /* the file's bytes */
    const uint8_t *map;     /* (file_size) read-only mmap of the whole file, or its copy (--no-mmap) */
    size_t file_size;
    int copied;             /* map is an anonymous copy (--no-mmap), not a file mapping */
    TableEntry *table;      /* (n_tensors) */
    int n_tensors;
    const char *path;
} Model;

/* Bytes of a tensor of n elements; matrices ([rows, cols]) pad rows to a multiple of 16. */
static uint64_t dtype_nbytes(int dtype, uint64_t n, uint64_t rows, uint64_t cols) {
    uint64_t padded = (rows + 15) / 16 * 16 * cols;
    switch (dtype) {
    case DT_F32: case DT_U32: return 4 * n;
    case DT_U8: return n;
    case DT_MF32: return 4 * padded;
    case DT_MBF16: return 2 * padded;
    case DT_MQ8_0: return padded + 4 * (padded / QBLOCK);
    case DT_MQ4_1: return padded / 2 + 8 * (padded / QBLOCK);
    }
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
    e->used = 1;
    if (dtype_out) *dtype_out = e->dtype;
    return m->map + e->offset;
}

#define MATRIX_TYPES ((1u << DT_MF32) | (1u << DT_MBF16) | (1u << DT_MQ8_0) | (1u << DT_MQ4_1))

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
        int matrix = e->dtype >= DT_MF32;
        if (matrix && (e->ndim != 2 || ((e->dtype == DT_MQ8_0 || e->dtype == DT_MQ4_1) && e->shape[1] % QBLOCK) ||
                       (e->dtype == DT_MBF16 && e->shape[1] % 2)))
            fatal("%s: matrix %s has a shape its type cannot store;" HINT_EXPORT, m->path, e->name);
        uint64_t want = dtype_nbytes(e->dtype, n, (uint64_t)e->shape[0], (uint64_t)e->shape[e->ndim - 1]);
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

/* --no-mmap: the file read into this process's own memory, made read-only afterwards.
 * A file mapping costs a page fault per 4 KB page on first use and a TLB entry per 4 KB
 * while the matmuls stream through 7-15 GB of weights; anonymous memory can be backed by
 * 2 MB pages (MADV_HUGEPAGE, where the kernel has transparent huge pages). Touching every
 * page before read() fills it makes the kernel allocate the big pages up front instead of
 * faulting 4 KB at a time inside the copy. On our test VM this loads a cached 9 GB model in
 * 2 s when the memory was used before (fresh memory costs the hypervisor about 1 GB/s; a
 * mapping faults in at about 1 GB/s) and makes each image 20-40 % faster; see README. The
 * price: the copy is private to this process, not shared through the page cache. */
static const uint8_t *read_whole_file(int fd, size_t size, const char *path) {
    uint8_t *buf;
#if defined(MAP_ANONYMOUS)
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fatal("%s: --no-mmap: cannot allocate %zu bytes: %s", path, size, strerror(errno));
    buf = p;
#if defined(MADV_HUGEPAGE)
    madvise(p, size, MADV_HUGEPAGE); /* a hint: without THP it fails and nothing changes */
#endif
    long page = sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < size; i += (size_t)page) buf[i] = 0;
#else
    buf = malloc(size);
    if (!buf) fatal("%s: --no-mmap: cannot allocate %zu bytes", path, size);
#endif
    for (size_t done = 0; done < size;) {
        size_t want = size - done < ((size_t)1 << 30) ? size - done : ((size_t)1 << 30);
        ssize_t got = read(fd, buf + done, want);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) fatal("%s: read failed: %s", path, strerror(errno));
        if (got == 0) fatal("%s: file shrank while being read;" HINT_EXPORT, path);
        done += (size_t)got;
    }
#if defined(MAP_ANONYMOUS)
    mprotect(buf, size, PROT_READ); /* weights stay read-only, as in the mapping */
#endif
    return buf;
}

static void model_load(Model *m, const char *path, int no_mmap) {
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
    if (no_mmap) {
        m->map = read_whole_file(fd, m->file_size, path);
        m->copied = 1;
        close(fd);
    } else {
        void *map = mmap(NULL, m->file_size, PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd);
        if (map == MAP_FAILED) fatal("%s: cannot mmap %zu bytes: %s", path, m->file_size, strerror(errno));
        m->map = map;
    }
    uint32_t magic = rd_u32(m->map), version = rd_u32(m->map + 4);
    if (magic != QALIGN_MAGIC) fatal("%s: not a qalign model file (bad magic);" HINT_EXPORT, path);
    if (version != QALIGN_VERSION)
        fatal("%s: model file version %u, this qalign reads version %d;" HINT_EXPORT, path, version, QALIGN_VERSION);
    if (rd_u32(m->map + 8) != HEADER_BYTES) fatal("%s: bad header size;" HINT_EXPORT, path);
    read_config(&m->c, m->map, path);
    read_table(m);
    bind_weights(m);
}

MAYBE_UNUSED static void model_free(Model *m) {
    tokenizer_free(&m->tok);
    free(m->v.layers);
    free(m->a.layers);
    free(m->l.layers);
    free(m->table);
#if defined(MAP_ANONYMOUS)
    if (m->map) munmap((void *)m->map, m->file_size); /* the mapping or its anonymous copy */
#else
    if (m->map && m->copied) free((void *)m->map);
    else if (m->map) munmap((void *)m->map, m->file_size);
#endif
    memset(m, 0, sizeof *m);
}

/* ----------------------------------------------------------------------------------------
 * Run state: every activation buffer, allocated once for the largest job of a run
 * (n_frames images through the tower, a decoder sequence of up to max_seq rows). The
 * forward passes never allocate. */

/* Activations prepared for the weight type of a matmul (see the kernels section). */
typedef enum { ACT_NONE, ACT_F32, ACT_BF16, ACT_Q8 } ActKind;

typedef struct {
    const float *x;         /* (T, K) the activations */
    int T, K;               /* rows, row length */
    ActKind kind;           /* what the buffers below hold for x (ACT_NONE: nothing yet) */
    uint16_t *xb;           /* ACT_BF16: (T, K) x rounded to bf16 */
    int8_t *xq;             /* ACT_Q8: (T, K) round(x / d) in -127..127 */
    float *xd;              /* ACT_Q8: (T, K/32) d of each block */
    int32_t *xc;            /* ACT_Q8: (T, K/32) -128 * sum of the block's xq (undoes q8 weights' +128) */
    float *xs;              /* ACT_Q8: (T, K/32) d * sum of the block's xq (q4_1's min term) */
    size_t cap;             /* T*K the buffers hold */
    int bf16_fast;          /* bf16 weights meet bf16 activations (else f32): AVX512-BF16 and not --precise */
    /* The SIMD kernels read copies interleaved in tiles of R rows, so that one pointer walks
     * a tile: 4-byte groups (an f32, a bf16 pair, or an int8 quad) as (tiles, K/group, R);
     * rows past T are zeros. */
    int R;                  /* rows per tile of the copies below (0: not made) */
    uint32_t *xp;           /* (tiles, K/4 | K/2 | K, R) int8 quads (ACT_Q8), bf16 pairs, or f32 */
    float *xdp;             /* ACT_Q8: (tiles, K/32, R) as xd */
    int32_t *xcp;           /* ACT_Q8: (tiles, K/32, R) as xc */
    float *xsp;             /* ACT_Q8: (tiles, K/32, R) as xs */
    size_t pcap;            /* 4-byte groups xp holds */
} Acts;

/* cap: the largest T*K; max_k: the largest K (tiles pad T up to a multiple of R <= 16) */
static void acts_alloc(Acts *a, size_t cap, size_t max_k, int bf16_fast) {
    memset(a, 0, sizeof *a);
    a->cap = cap;
#ifdef QA_AVX512_BF16
    a->bf16_fast = bf16_fast; /* only where a kernel multiplies bf16 by bf16 */
#else
    (void)bf16_fast;
#endif
    a->xb = xmalloc(cap * sizeof(uint16_t));
    a->xq = xmalloc(cap);
    a->xd = xmalloc((cap / QBLOCK + 1) * sizeof(float));
    a->xc = xmalloc((cap / QBLOCK + 1) * sizeof(int32_t));
    a->xs = xmalloc((cap / QBLOCK + 1) * sizeof(float));
#ifdef QA_SIMD
    a->pcap = cap + 16 * max_k;
    a->xp = xmalloc(a->pcap * sizeof(uint32_t));
    a->xdp = xmalloc((a->pcap / 8 + 1) * sizeof(float));
    a->xcp = xmalloc((a->pcap / 8 + 1) * sizeof(int32_t));
    a->xsp = xmalloc((a->pcap / 8 + 1) * sizeof(float));
#else
    (void)max_k;
#endif
}

static void acts_free(Acts *a) {
    free(a->xb);
    free(a->xq);
    free(a->xd);
    free(a->xc);
    free(a->xs);
    free(a->xp);
    free(a->xdp);
    free(a->xcp);
    free(a->xsp);
    memset(a, 0, sizeof *a);
}

/* Point the Acts at new activations; nothing is converted until a matmul needs it. */
static void acts_set(Acts *a, const float *x, int T, int K) {
    if ((size_t)T * (size_t)K > a->cap) fatal("internal: activations (%d x %d) exceed the workspace", T, K);
    a->x = x;
    a->T = T;
    a->K = K;
    a->kind = ACT_NONE;
}

typedef struct {
    int max_batch;          /* decoder sequences per call the buffers are sized for */
    int n_frames;           /* frames per sequence the buffers are sized for */
    int max_seq;            /* rows per decoder sequence the buffers are sized for */
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
    float *aqn;             /* (Q, D) norm1(query) */
    float *aenc;            /* (E, D) [norm1(query); normk(image)] */
    float *apos;            /* (E, D) enc + [q_pos; k_pos] */
    float *ak, *av;         /* (E, D) keys, values */
    float *aqq;             /* (Q, D) projected queries */
    float *actx;            /* (Q, D) attention output */
    float *amlp1, *amlp3;   /* (Q, a_mlp) */
    float *visual;          /* (max_batch * n_frames, Q+1, l_dim) abstractor outputs = visual rows */
    /* decoder (S = max_batch * max_seq rows) */
    float *x;               /* (S, l_dim) residual stream */
    float *xn;              /* (S, l_dim) normalised stream */
    float *q;               /* (S, l_dim) queries */
    float *k, *v;           /* (S, kv_dim) keys and values of the current layer */
    float *tmp;             /* (S, kv_dim) scratch for gathered rows */
    float *att;             /* (S, l_dim) attention output */
    float *hb, *hb2;        /* (min(S, MLP_CHUNK), l_mlp) gate and up, for a chunk of rows */
    float *rope_cos, *rope_sin; /* (S, l_head_dim/2) */
    float *scores;          /* (n_threads, scores_stride) per-thread attention scores */
    size_t scores_stride;   /* attention_scratch_floats(max(E, S)) */
    float *kt;              /* (2, max(v_dim, kv_dim), pad16(max(E, S))) keys transposed, values packed, per head */
    int vit_att_bf16;       /* ViT attention with bf16 products (attention_bf16): weights not f32, not --precise */
    float *final;           /* (l_dim) final-norm hidden state of the last row */
    float *row;             /* (max(l_dim, v_dim)) one weight row as f32 */
    Acts acts;              /* the current matmul input, prepared for the weight type */
    double seconds[4];      /* time spent so far in: preprocessing, vision tower, abstractor, decoder */
    /* keys/values of the text before the image, the same for every image of a prompt */
    int max_prefix;         /* rows the cache can hold */
    int prefix_rows;        /* rows cached (0: none) */
    int *prefix_ids;        /* (max_prefix) the token ids they were computed for */
    float *kc, *vc;         /* (l_layers, max_prefix, kv_dim) RoPE'd keys, values */
    size_t bytes;           /* allocated for all of the above */
} RunState;

/* The decoder MLP runs over at most this many rows at a time, so its (rows x 11008)
 * buffers stay small however long a video is. */
#define MLP_CHUNK 256

static size_t attention_scratch_floats(size_t Tk);
static size_t pad16(size_t n);

/* precise: bf16 weights multiply f32 activations even where the CPU has a bf16 dot product */
static void run_state_alloc(RunState *s, const Config *c, int max_batch, int n_frames, int max_seq, int max_prefix, int precise) {
    memset(s, 0, sizeof *s);
    s->max_batch = max_batch;
    s->n_frames = n_frames;
    s->max_seq = max_seq;
#ifdef _OPENMP
    s->n_threads = omp_get_max_threads();
#else
    s->n_threads = 1;
#endif
    size_t T = (size_t)c->v_tokens, D = (size_t)c->v_dim, Q = (size_t)c->a_queries, E = Q + T;
    size_t Dl = (size_t)c->l_dim, S = (size_t)max_batch * max_seq, kvd = (size_t)c->l_kv_heads * c->l_head_dim;
    size_t S1 = (size_t)max_seq; /* one sequence */
    size_t P = (size_t)c->v_patch;
    size_t H = S < MLP_CHUNK ? S : MLP_CHUNK; /* decoder MLP rows at a time */
#define ALLOC(field, count) (s->field = xmalloc((count) * sizeof(*s->field)), s->bytes += (count) * sizeof(*s->field))
    ALLOC(pixels, 3 * (size_t)c->v_image * c->v_image);
    ALLOC(patches, (T - 1) * 3 * P * P);
    ALLOC(vx, T * D);
    ALLOC(vxn, T * D);
    ALLOC(vq, T * D);
    ALLOC(vk, T * D);
    ALLOC(vv, T * D);
    ALLOC(vatt, T * D);
    ALLOC(vmlp, T * (size_t)c->v_mlp);
    ALLOC(vision_out, T * D);
    ALLOC(aq, Q * D);
    ALLOC(aqn, Q * D);
    ALLOC(aenc, E * D);
    ALLOC(apos, E * D);
    ALLOC(ak, E * D);
    ALLOC(av, E * D);
    ALLOC(aqq, Q * D);
    ALLOC(actx, Q * D);
    ALLOC(amlp1, Q * (size_t)c->a_mlp);
    ALLOC(amlp3, Q * (size_t)c->a_mlp);
    ALLOC(visual, (size_t)max_batch * n_frames * (Q + 1) * Dl);
    ALLOC(x, S * Dl);
    ALLOC(xn, S * Dl);
    ALLOC(q, S * Dl);
    ALLOC(k, S * kvd);
    ALLOC(v, S * kvd);
    ALLOC(tmp, S * kvd);
    ALLOC(att, S * Dl);
    ALLOC(hb, H * (size_t)c->l_mlp);
    ALLOC(hb2, H * (size_t)c->l_mlp);
    ALLOC(rope_cos, S1 * (size_t)(c->l_head_dim / 2));
    ALLOC(rope_sin, S1 * (size_t)(c->l_head_dim / 2));
    size_t maxlen = E > S1 ? E : S1, kvmax = D > kvd ? D : kvd;
    s->scores_stride = attention_scratch_floats(maxlen);
    ALLOC(scores, (size_t)s->n_threads * s->scores_stride);
    ALLOC(kt, 2 * kvmax * pad16(maxlen));
    ALLOC(final, (size_t)max_batch * Dl);
    ALLOC(row, Dl > D ? Dl : D);
    ALLOC(kc, (size_t)c->l_layers * max_prefix * kvd + 1);
    ALLOC(vc, (size_t)c->l_layers * max_prefix * kvd + 1);
#undef ALLOC
    /* the largest matmul input: T x K over every matmul of the model */
    size_t sizes[] = {(T - 1) * 3 * P * P, T * D, T * (size_t)c->v_mlp, E * D, Q * (size_t)c->a_mlp, S * Dl, H * (size_t)c->l_mlp};
    size_t cap = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) cap = sizes[i] > cap ? sizes[i] : cap;
    size_t max_k = 0, ks[] = {3 * P * P, D, (size_t)c->v_mlp, (size_t)c->a_mlp, Dl, (size_t)c->l_mlp};
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) max_k = ks[i] > max_k ? ks[i] : max_k;
    acts_alloc(&s->acts, cap, max_k, !precise);
    s->vit_att_bf16 = !precise && c->wtype != DT_MF32;
    s->bytes += cap * 11 / 2 + (cap + 16 * max_k) * 5; /* acts_alloc's buffers, roughly */
    s->max_prefix = max_prefix;
    s->prefix_ids = xcalloc((size_t)max_prefix + 1, sizeof(int));
}

static void run_state_free(RunState *s) {
    float **bufs[] = {&s->pixels, &s->patches, &s->vx, &s->vxn, &s->vq, &s->vk, &s->vv, &s->vatt, &s->vmlp,
                      &s->vision_out, &s->aq, &s->aqn, &s->aenc, &s->apos, &s->ak, &s->av, &s->aqq, &s->actx,
                      &s->amlp1, &s->amlp3, &s->visual, &s->x, &s->xn, &s->q, &s->k, &s->v, &s->att, &s->hb,
                      &s->hb2, &s->rope_cos, &s->rope_sin, &s->scores, &s->kt, &s->final, &s->row, &s->tmp};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        free(*bufs[i]);
        *bufs[i] = NULL;
    }
    acts_free(&s->acts);
    free(s->prefix_ids);
    free(s->kc);
    free(s->vc);
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* ----------------------------------------------------------------------------------------
 * Kernels.
 *
 * Each kernel is first written as a plain scalar loop: that loop is the reference (the
 * kernel tests compare against it) and the fallback on every CPU. SIMD versions are
 * compiled in by the -march flags (no runtime dispatch): AVX-512 (with VNNI for int8 and
 * BF16 for bf16 dot products) or AVX2+FMA on x86, NEON on ARM. Outputs come first and
 * dimensions last in every signature. OpenMP splits the outermost independent loop; each
 * output element is computed by one thread in a fixed order, so results never depend on
 * the thread count or on which other rows share a call. */


/* The kernels compiled into this binary, for --info and the test logs. */
static const char *kernel_names(void) {
    return "scalar"
#ifdef QA_AVX512
           " avx512"
#endif
#ifdef QA_AVX512_VNNI
           " avx512-vnni"
#endif
#ifdef QA_AVX512_BF16
           " avx512-bf16"
#endif
#ifdef QA_AVX2
           " avx2"
#endif
#if defined(QA_AVX2) && defined(__AVXVNNI__)
           " avx-vnni"
#endif
#ifdef QA_NEON
           " neon"
#endif
#ifdef QA_NEON_DOT
           " neon-dotprod"
#endif
#ifdef _OPENMP
           " openmp"
#endif
        ;
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even, as vcvtneps2bf16 (NaN kept a quiet NaN). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float quick_gelu1(float x) { return x / (1.0f + expf(-1.702f * x)); }
static inline float silu1(float x) { return x / (1.0f + expf(-x)); }

#ifdef QA_AVX512
/* exp(x) for 16 floats: x = n ln2 + r, |r| <= ln2/2, degree-7 Taylor polynomial for e^r,
 * 2^n by vscalefps (which also gives 0 and inf at the ends). Relative error < 2e-7. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f)); /* also turns -inf into a finite value */
    x = _mm512_min_ps(x, _mm512_set1_ps(89.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}
static inline __m512 quick_gelu512(__m512 x) {
    __m512 e = exp512(_mm512_mul_ps(x, _mm512_set1_ps(-1.702f)));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}
static inline __m512 silu512(__m512 x) {
    __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}
static inline __mmask16 tail_mask(int n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u); }
#endif

#ifdef QA_NEON
/* exp(x) for 4 floats, as exp512: x = n ln2 + r, degree-7 polynomial for e^r, then 2^n
 * as two power-of-two factors 2^(n/2) 2^(n - n/2), so that n in [-150, 128] (x clamped to
 * [-104, 89]) needs no special cases: underflow gives denormals or 0, overflow inf. */
static inline float32x4_t exp_neon(float32x4_t x) {
    x = vmaxq_f32(x, vdupq_n_f32(-104.0f)); /* also turns -inf into a finite value */
    x = vminq_f32(x, vdupq_n_f32(89.0f));
    float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693145751953125f));
    r = vfmsq_f32(r, n, vdupq_n_f32(1.428606765330187e-06f));
    float32x4_t p = vdupq_n_f32(1.0f / 5040);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 720), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 120), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 24), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 6), p, r);
    p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    int32x4_t ni = vcvtq_s32_f32(n), n1 = vshrq_n_s32(ni, 1), n2 = vsubq_s32(ni, n1);
    float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n1, vdupq_n_s32(127)), 23));
    float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n2, vdupq_n_s32(127)), 23));
    return vmulq_f32(vmulq_f32(p, s1), s2);
}
static inline float32x4_t quick_gelu_neon(float32x4_t x) {
    float32x4_t e = exp_neon(vmulq_f32(x, vdupq_n_f32(-1.702f)));
    return vdivq_f32(x, vaddq_f32(vdupq_n_f32(1.0f), e));
}
static inline float32x4_t silu_neon(float32x4_t x) {
    return vdivq_f32(x, vaddq_f32(vdupq_n_f32(1.0f), exp_neon(vnegq_f32(x))));
}
#endif

/* --- elementwise --------------------------------------------------------------------- */

/* x += y */
static void add_inplace(float *x, const float *y, size_t n) {
    size_t i = 0;
#ifdef QA_AVX512
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_add_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
#elif defined(QA_NEON)
    for (; i + 4 <= n; i += 4) vst1q_f32(x + i, vaddq_f32(vld1q_f32(x + i), vld1q_f32(y + i)));
#endif
    for (; i < n; i++) x[i] += y[i];
}

/* SwiGLU gate: a = silu(a) * b. The SIMD versions do the tail with the same vector code
 * (through a zero-padded copy), so a value never depends on where in the buffer it sits:
 * a row gives the same bits alone or inside a batch. */
static void silu_mul(float *a, const float *b, size_t n) {
    size_t i = 0;
#if defined(QA_AVX512) || defined(QA_NEON)
    for (;; i += 16) {
        float ta[16] = {0}, tb[16] = {0}, *pa = a + i;
        const float *pb = b + i;
        size_t len = n - i < 16 ? n - i : 16;
        if (len == 0) break;
        if (len < 16) { /* tail */
            memcpy(ta, a + i, len * sizeof(float));
            memcpy(tb, b + i, len * sizeof(float));
            pa = ta;
            pb = tb;
        }
#ifdef QA_AVX512
        _mm512_storeu_ps(pa, _mm512_mul_ps(silu512(_mm512_loadu_ps(pa)), _mm512_loadu_ps(pb)));
#else
        for (int j = 0; j < 16; j += 4) vst1q_f32(pa + j, vmulq_f32(silu_neon(vld1q_f32(pa + j)), vld1q_f32(pb + j)));
#endif
        if (len < 16) {
            memcpy(a + i, ta, len * sizeof(float));
            break;
        }
    }
    i = n;
#endif
    for (; i < n; i++) a[i] = silu1(a[i]) * b[i];
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

MAYBE_UNUSED static void softmax(float *x, int n) { /* (scalar builds: attention_ref calls softmax_ref) */
#ifdef QA_AVX512
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
    if (i < n) vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(n - i), x + i));
    __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax)), vsum = _mm512_setzero_ps();
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), mx));
        _mm512_storeu_ps(x + i, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mx));
        _mm512_mask_storeu_ps(x + i, m, e);
        vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(m, e));
    }
    __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
    if (i < n) _mm512_mask_storeu_ps(x + i, tail_mask(n - i), _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(n - i), x + i), inv));
#elif defined(QA_NEON)
    float32x4_t vmax = vdupq_n_f32(-INFINITY);
    int i = 0;
    for (; i + 4 <= n; i += 4) vmax = vmaxq_f32(vmax, vld1q_f32(x + i));
    float mx = vmaxvq_f32(vmax);
    for (int j = i; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    float32x4_t vmx = vdupq_n_f32(mx), vsum = vdupq_n_f32(0.0f);
    for (i = 0; i + 4 <= n; i += 4) {
        float32x4_t e = exp_neon(vsubq_f32(vld1q_f32(x + i), vmx));
        vst1q_f32(x + i, e);
        vsum = vaddq_f32(vsum, e);
    }
    float sum = vaddvq_f32(vsum);
    if (i < n) { /* the last 1..3 values through the same exp */
        float tmp[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int j = i; j < n; j++) tmp[j - i] = x[j] - mx;
        vst1q_f32(tmp, exp_neon(vld1q_f32(tmp)));
        for (int j = i; j < n; j++) sum += (x[j] = tmp[j - i]);
    }
    float inv = 1.0f / sum;
    float32x4_t vinv = vdupq_n_f32(inv);
    for (i = 0; i + 4 <= n; i += 4) vst1q_f32(x + i, vmulq_f32(vld1q_f32(x + i), vinv));
    for (; i < n; i++) x[i] *= inv;
#else
    softmax_ref(x, n);
#endif
}

/* --- normalisation ------------------------------------------------------------------- */

/* nn.LayerNorm over the last dim: out = (x - mean) / sqrt(var + eps) * w + b
 * out, x (T, C); out may equal x. Reference: statistics in double. */
MAYBE_UNUSED static void layernorm_ref(float *out, const float *x, const float *w, const float *b, int T, int C, float eps) {
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
#ifdef QA_AVX512
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C;
        float *ot = out + (size_t)t * C;
        /* two passes in 16 f32 lanes: mean, then the mean of squared deviations */
        __m512 s = _mm512_setzero_ps();
        int i = 0;
        for (; i + 16 <= C; i += 16) s = _mm512_add_ps(s, _mm512_loadu_ps(xt + i));
        if (i < C) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(tail_mask(C - i), xt + i));
        float mean = _mm512_reduce_add_ps(s) / (float)C;
        __m512 vm = _mm512_set1_ps(mean), v = _mm512_setzero_ps();
        for (i = 0; i + 16 <= C; i += 16) {
            __m512 d = _mm512_sub_ps(_mm512_loadu_ps(xt + i), vm);
            v = _mm512_fmadd_ps(d, d, v);
        }
        if (i < C) {
            __m512 d = _mm512_maskz_sub_ps(tail_mask(C - i), _mm512_maskz_loadu_ps(tail_mask(C - i), xt + i), vm);
            v = _mm512_fmadd_ps(d, d, v);
        }
        __m512 rstd = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(v) / (float)C + eps));
        for (i = 0; i < C; i += 16) {
            __mmask16 m = tail_mask(C - i);
            __m512 y = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xt + i), vm), rstd);
            y = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(m, w + i), _mm512_maskz_loadu_ps(m, b + i));
            _mm512_mask_storeu_ps(ot + i, m, y);
        }
    }
#elif defined(QA_NEON)
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C;
        float *ot = out + (size_t)t * C;
        /* as the AVX-512 version, in 2 x 4 lanes */
        float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0;
        int i = 0;
        for (; i + 8 <= C; i += 8) s0 = vaddq_f32(s0, vld1q_f32(xt + i)), s1 = vaddq_f32(s1, vld1q_f32(xt + i + 4));
        float sum = vaddvq_f32(vaddq_f32(s0, s1));
        for (int j = i; j < C; j++) sum += xt[j];
        float mean = sum / (float)C;
        float32x4_t vm = vdupq_n_f32(mean), v0 = vdupq_n_f32(0.0f), v1 = v0;
        for (i = 0; i + 8 <= C; i += 8) {
            float32x4_t d0 = vsubq_f32(vld1q_f32(xt + i), vm), d1 = vsubq_f32(vld1q_f32(xt + i + 4), vm);
            v0 = vfmaq_f32(v0, d0, d0);
            v1 = vfmaq_f32(v1, d1, d1);
        }
        float var = vaddvq_f32(vaddq_f32(v0, v1));
        for (int j = i; j < C; j++) var += (xt[j] - mean) * (xt[j] - mean);
        float rstd = 1.0f / sqrtf(var / (float)C + eps);
        float32x4_t vr = vdupq_n_f32(rstd);
        for (i = 0; i + 4 <= C; i += 4) {
            float32x4_t y = vmulq_f32(vsubq_f32(vld1q_f32(xt + i), vm), vr);
            vst1q_f32(ot + i, vfmaq_f32(vld1q_f32(b + i), y, vld1q_f32(w + i)));
        }
        for (; i < C; i++) ot[i] = (xt[i] - mean) * rstd * w[i] + b[i];
    }
#else
    layernorm_ref(out, x, w, b, T, C, eps);
#endif
}

/* LlamaRMSNorm: out = w * (x / sqrt(mean(x^2) + eps)); out, x (C) */
static void rmsnorm_row(float *out, const float *x, const float *w, int C, float eps) {
    double ss = 0.0;
    for (int i = 0; i < C; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / C + (double)eps));
    for (int i = 0; i < C; i++) out[i] = w[i] * (x[i] * r);
}

/* --- activations, prepared once per matmul input --------------------------------------
 * A matmul multiplies activations x (T, K) by a weight matrix. Depending on the weight
 * type, x is used as f32, rounded to bf16, or quantised to int8 in blocks of 32 (q8_0
 * style: d = max|x|/127, q = round(x/d)). The preparation is done once and reused by all
 * matmuls that read the same x (q/k/v, gate/up). */

/* One row's blocks of 32: q = round(x / d), d = max|x| / 127 (zero block -> d = 0, q = 0). */
static void quantize_row_ref(int8_t *q, float *d, int32_t *c, float *s, const float *x, int K) {
    for (int b = 0; b < K / QBLOCK; b++) {
        const float *xb = x + b * QBLOCK;
        float amax = 0.0f;
        for (int i = 0; i < QBLOCK; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float db = amax / 127.0f, id = db > 0.0f ? 1.0f / db : 0.0f;
        int sum = 0;
        for (int i = 0; i < QBLOCK; i++) {
            int v = (int)nearbyintf(xb[i] * id);
            v = v > 127 ? 127 : v < -127 ? -127 : v;
            q[b * QBLOCK + i] = (int8_t)v;
            sum += v;
        }
        d[b] = db;
        c[b] = -128 * sum;
        s[b] = db * (float)sum;
    }
}

static void quantize_row(int8_t *q, float *d, int32_t *c, float *s, const float *x, int K) {
#ifdef QA_AVX512
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int b = 0; b < K / QBLOCK; b++) {
        __m512 x0 = _mm512_loadu_ps(x + b * QBLOCK), x1 = _mm512_loadu_ps(x + b * QBLOCK + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, x0), _mm512_andnot_ps(sign, x1)));
        float db = amax / 127.0f, id = db > 0.0f ? 1.0f / db : 0.0f;
        __m512 vid = _mm512_set1_ps(id);
        /* cvtps rounds to nearest even, like nearbyintf; |x*id| <= 127 needs no clamp
         * except for rounding of amax*id itself, which the saturating pack handles */
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, vid)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, vid));
        q0 = _mm512_max_epi32(_mm512_min_epi32(q0, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
        q1 = _mm512_max_epi32(_mm512_min_epi32(q1, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
        _mm_storeu_si128((__m128i *)(q + b * QBLOCK), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(q + b * QBLOCK + 16), _mm512_cvtepi32_epi8(q1));
        int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        d[b] = db;
        c[b] = -128 * sum;
        s[b] = db * (float)sum;
    }
#elif defined(QA_NEON)
    for (int b = 0; b < K / QBLOCK; b++) {
        float32x4_t v[8], m = vdupq_n_f32(0.0f);
        for (int i = 0; i < 8; i++) {
            v[i] = vld1q_f32(x + b * QBLOCK + 4 * i);
            m = vmaxnmq_f32(m, vabsq_f32(v[i])); /* maxnm ignores NaN, as fmaxf */
        }
        float amax = vmaxnmvq_f32(m);
        float db = amax / 127.0f, id = db > 0.0f ? 1.0f / db : 0.0f;
        /* fcvtns rounds to nearest even, like nearbyintf */
        int32x4_t vsum = vdupq_n_s32(0), lim = vdupq_n_s32(127), nlim = vdupq_n_s32(-127);
        int16x8_t h[4];
        for (int i = 0; i < 8; i += 2) {
            int32x4_t q0 = vmaxq_s32(vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(v[i], id)), lim), nlim);
            int32x4_t q1 = vmaxq_s32(vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(v[i + 1], id)), lim), nlim);
            vsum = vaddq_s32(vsum, vaddq_s32(q0, q1));
            h[i / 2] = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1));
        }
        vst1q_s8(q + b * QBLOCK, vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1])));
        vst1q_s8(q + b * QBLOCK + 16, vcombine_s8(vmovn_s16(h[2]), vmovn_s16(h[3])));
        int sum = vaddvq_s32(vsum);
        d[b] = db;
        c[b] = -128 * sum;
        s[b] = db * (float)sum;
    }
#else
    quantize_row_ref(q, d, c, s, x, K);
#endif
}

/* Rows per register tile of the SIMD kernels, by activation kind. */
#if defined(QA_AVX512)
#define TILE_ROWS_Q8 6  /* 2 groups x 6 rows of int32 + float accumulators (4 was 40% slower) */
#define TILE_ROWS_F 8   /* 2 groups x 8 rows of float accumulators */
#elif defined(QA_NEON)
#define TILE_ROWS_Q8 4  /* must be 4: a tile's 4 rows are the 4 lanes of one vector (fmla/sdot by element) */
#define TILE_ROWS_F 4   /* 1 group (4 vectors) x 4 rows of float accumulators */
#else
#define TILE_ROWS_Q8 4  /* 1 group (two halves) x 4 rows of int32 accumulators */
#define TILE_ROWS_F 4   /* 1 group (two halves) x 4 rows of float accumulators */
#endif

static void acts_prepare(Acts *a, ActKind kind) {
    int T = a->T, K = a->K, nb = K / QBLOCK;
    if (kind == ACT_BF16) {
#pragma omp parallel for schedule(static)
        for (int t = 0; t < T; t++)
            for (int k = 0; k < K; k++) a->xb[(size_t)t * K + k] = f32_to_bf16(a->x[(size_t)t * K + k]);
    } else if (kind == ACT_Q8) {
#pragma omp parallel for schedule(static)
        for (int t = 0; t < T; t++)
            quantize_row(a->xq + (size_t)t * K, a->xd + (size_t)t * nb, a->xc + (size_t)t * nb, a->xs + (size_t)t * nb,
                         a->x + (size_t)t * K, K);
    }
#ifdef QA_SIMD
    /* the tile-interleaved copies for the SIMD kernels */
    int R = kind == ACT_Q8 ? TILE_ROWS_Q8 : TILE_ROWS_F, tiles = (T + R - 1) / R;
    int per = kind == ACT_Q8 ? 4 : kind == ACT_BF16 ? 2 : 1, groups = K / per;
    if ((size_t)tiles * R * groups > a->pcap) fatal("internal: packed activations exceed the workspace");
#pragma omp parallel for schedule(static)
    for (int ti = 0; ti < tiles; ti++) {
        uint32_t *dst = a->xp + (size_t)ti * groups * R;
        for (int r = 0; r < R; r++) {
            int t = ti * R + r;
            const uint8_t *src = kind == ACT_Q8 ? (const uint8_t *)(a->xq + (size_t)t * K)
                               : kind == ACT_BF16 ? (const uint8_t *)(a->xb + (size_t)t * K) : (const uint8_t *)(a->x + (size_t)t * K);
            for (int g = 0; g < groups; g++) {
                uint32_t v = 0;
                if (t < T) memcpy(&v, src + 4 * (size_t)g, 4);
                dst[(size_t)g * R + r] = v;
            }
            if (kind == ACT_Q8)
                for (int b = 0; b < nb; b++) {
                    size_t i = ((size_t)ti * nb + b) * R + r, j = (size_t)t * nb + b;
                    a->xdp[i] = t < T ? a->xd[j] : 0.0f;
                    a->xcp[i] = t < T ? a->xc[j] : 0;
                    a->xsp[i] = t < T ? a->xs[j] : 0.0f;
                }
        }
    }
    a->R = R;
#endif
    a->kind = kind;
}

static ActKind act_kind_for(const Acts *a, int dtype) {
    switch (dtype) {
    case DT_MBF16: return a->bf16_fast ? ACT_BF16 : ACT_F32;
    case DT_MQ8_0: case DT_MQ4_1: return ACT_Q8;
    default: return ACT_F32;
    }
}

/* --- matrix multiplication --------------------------------------------------------------
 * out[t, o] (+)= x[t, :] . W[o, :] + bias[o]          (nn.Linear: y = x W^T + b)
 *
 * Weights are stored in groups of 16 rows (export.py pack_matrix), so the natural unit of
 * work is a tile: up to RT activation rows x up to GT groups of 16 outputs. The scalar
 * tile below states the arithmetic of each weight type; the SIMD tiles do the same sums
 * with one 64-byte weight load feeding every row of the tile. */

enum { EPI_STORE, EPI_ADD, EPI_GELU };  /* out = v, out += v, out = QuickGELU(v) */

#define MQ8_BLOCK_BYTES (8 * 64 + 64)   /* 8 quads of 16 rows x 4 u8, then 16 f32 scales */
#define MQ4_BLOCK_BYTES (4 * 64 + 128)  /* 4 x 64 bytes of nibble pairs, 16 f32 d, 16 f32 m */

static inline void store_out(float *o, float v, const float *bias, int col, int epi) {
    if (bias) v += bias[col];
    if (epi == EPI_GELU) v = quick_gelu1(v);
    if (epi == EPI_ADD) v += *o;
    *o = v;
}

/* The reference tile: rows [t0, t0+nt) x groups [g0, g0+ng). */
static void tile_ref(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi,
                     int t0, int nt, int g0, int ng) {
    int K = W->cols, nb = K / QBLOCK;
    for (int t = t0; t < t0 + nt; t++) {
        for (int g = g0; g < g0 + ng; g++) {
            float acc[16] = {0};
            if (W->dtype == DT_MF32) {
                /* layout [g][k][r] */
                const float *w = (const float *)W->data + (size_t)g * K * 16;
                const float *x = a->x + (size_t)t * K;
                for (int k = 0; k < K; k++)
                    for (int r = 0; r < 16; r++) acc[r] += w[(size_t)k * 16 + r] * x[k];
            } else if (W->dtype == DT_MBF16) {
                /* layout [g][k/2][r][2]; with bf16 activations the odd column is added
                 * first, as vdpbf16ps does */
                const uint16_t *w = (const uint16_t *)W->data + (size_t)g * K * 16;
                for (int kp = 0; kp < K / 2; kp++)
                    for (int r = 0; r < 16; r++) {
                        float w0 = bf16_to_f32(w[((size_t)kp * 16 + r) * 2]), w1 = bf16_to_f32(w[((size_t)kp * 16 + r) * 2 + 1]);
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
            } else {
                /* q8_0: sum_b d_w d_x sum_k q_w q_x;  q4_1: + m_w d_x sum_k q_x */
                const int8_t *xq = a->xq + (size_t)t * K;
                for (int b = 0; b < nb; b++) {
                    float dx = a->xd[(size_t)t * nb + b];
                    int32_t s[16] = {0};
                    if (W->dtype == DT_MQ8_0) {
                        const uint8_t *blk = (const uint8_t *)W->data + ((size_t)g * nb + b) * MQ8_BLOCK_BYTES;
                        for (int j = 0; j < 8; j++)
                            for (int r = 0; r < 16; r++)
                                for (int i = 0; i < 4; i++) s[r] += ((int)blk[j * 64 + r * 4 + i] - 128) * xq[b * 32 + 4 * j + i];
                        const float *d = (const float *)(blk + 512);
                        for (int r = 0; r < 16; r++) acc[r] += (d[r] * dx) * (float)s[r];
                    } else {
                        const uint8_t *blk = (const uint8_t *)W->data + ((size_t)g * nb + b) * MQ4_BLOCK_BYTES;
                        for (int j = 0; j < 8; j++)
                            for (int r = 0; r < 16; r++)
                                for (int i = 0; i < 4; i++) {
                                    uint8_t byte = blk[(j / 2) * 64 + r * 4 + i];
                                    s[r] += (j % 2 ? byte >> 4 : byte & 15) * xq[b * 32 + 4 * j + i];
                                }
                        const float *d = (const float *)(blk + 256), *m = (const float *)(blk + 320);
                        for (int r = 0; r < 16; r++) {
                            acc[r] += (d[r] * dx) * (float)s[r];
                            acc[r] += m[r] * a->xs[(size_t)t * nb + b];
                        }
                    }
                }
            }
            for (int r = 0; r < 16 && g * 16 + r < W->rows; r++)
                store_out(out + (size_t)t * ldo + g * 16 + r, acc[r], bias, g * 16 + r, epi);
        }
    }
}

#ifdef QA_AVX512
/* Store 16 outputs of group g (masked at the matrix's last row) with bias and epilogue. */
static inline void store16(float *o, __m512 v, const float *bias, int col, int epi, __mmask16 m) {
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + col));
    if (epi == EPI_GELU) v = quick_gelu512(v);
    if (epi == EPI_ADD) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, o));
    _mm512_mask_storeu_ps(o, m, v);
}

/* The accumulators of a tile: rows [t0, t0 + R) (only the first nt are real) x groups
 * g0.. (G of them). */
#define TILE_STORE(acc)                                                                                  \
    for (int g = 0; g < G; g++) {                                                                        \
        __mmask16 m = tail_mask(W->rows - (g0 + g) * 16);                                                \
        for (int r = 0; r < nt; r++)                                                                     \
            store16(out + (size_t)(t0 + r) * ldo + (g0 + g) * 16, acc[g][r], bias, (g0 + g) * 16, epi, m); \
    }

/* f32 activations x f32 weights ([g][k][r]) or bf16 weights ([g][k/2][r][2]). */
static inline __attribute__((always_inline)) void tile_f32_avx512(float *out, int ldo, const Acts *a, const Tensor *W,
                                                                  const float *bias, int epi, int t0, int nt, int g0,
                                                                  const int G) {
    enum { R = TILE_ROWS_F };
    int K = W->cols;
    __m512 acc[2][R];
    for (int g = 0; g < G; g++)
        for (int r = 0; r < R; r++) acc[g][r] = _mm512_setzero_ps();
    const float *x = (const float *)a->xp + (size_t)(t0 / R) * K * R;
    if (W->dtype == DT_MF32) {
        const float *w0 = (const float *)W->data + (size_t)g0 * K * 16, *w1 = w0 + (size_t)K * 16;
        for (int k = 0; k < K; k++, x += R, w0 += 16, w1 += 16) {
            __m512 wv0 = _mm512_loadu_ps(w0), wv1 = G > 1 ? _mm512_loadu_ps(w1) : wv0;
            for (int r = 0; r < R; r++) {
                __m512 xv = _mm512_set1_ps(x[r]);
                acc[0][r] = _mm512_fmadd_ps(wv0, xv, acc[0][r]);
                if (G > 1) acc[1][r] = _mm512_fmadd_ps(wv1, xv, acc[1][r]);
            }
        }
    } else {
        const uint32_t *w0 = (const uint32_t *)W->data + (size_t)g0 * K / 2 * 16, *w1 = w0 + (size_t)K / 2 * 16;
        const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
        for (int kp = 0; kp < K / 2; kp++, x += 2 * R, w0 += 16, w1 += 16) {
            __m512i v0 = _mm512_loadu_si512(w0), v1 = G > 1 ? _mm512_loadu_si512(w1) : v0;
            __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), o0 = _mm512_castsi512_ps(_mm512_and_si512(v0, hi));
            __m512 e1 = _mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)), o1 = _mm512_castsi512_ps(_mm512_and_si512(v1, hi));
            for (int r = 0; r < R; r++) {
                /* packed f32 activations: column 2kp at x[r], 2kp+1 at x[R + r] */
                __m512 xe = _mm512_set1_ps(x[r]), xo = _mm512_set1_ps(x[R + r]);
                acc[0][r] = _mm512_fmadd_ps(o0, xo, _mm512_fmadd_ps(e0, xe, acc[0][r]));
                if (G > 1) acc[1][r] = _mm512_fmadd_ps(o1, xo, _mm512_fmadd_ps(e1, xe, acc[1][r]));
            }
        }
    }
    TILE_STORE(acc)
}

#ifdef QA_AVX512_BF16
/* bf16 activations x bf16 weights: vdpbf16ps sums a column pair per instruction. */
static inline __attribute__((always_inline)) void tile_bf16_avx512(float *out, int ldo, const Acts *a, const Tensor *W,
                                                                   const float *bias, int epi, int t0, int nt, int g0,
                                                                   const int G) {
    enum { R = TILE_ROWS_F };
    int K = W->cols;
    __m512 acc[2][R];
    for (int g = 0; g < G; g++)
        for (int r = 0; r < R; r++) acc[g][r] = _mm512_setzero_ps();
    const uint32_t *x = a->xp + (size_t)(t0 / R) * (K / 2) * R;
    const uint32_t *w0 = (const uint32_t *)W->data + (size_t)g0 * K / 2 * 16, *w1 = w0 + (size_t)K / 2 * 16;
    for (int kp = 0; kp < K / 2; kp++, x += R, w0 += 16, w1 += 16) {
        __m512bh wv0 = (__m512bh)_mm512_loadu_si512(w0), wv1 = G > 1 ? (__m512bh)_mm512_loadu_si512(w1) : wv0;
        for (int r = 0; r < R; r++) {
            __m512bh xv = (__m512bh)_mm512_set1_epi32((int)x[r]);
            acc[0][r] = _mm512_dpbf16_ps(acc[0][r], wv0, xv);
            if (G > 1) acc[1][r] = _mm512_dpbf16_ps(acc[1][r], wv1, xv);
        }
    }
    TILE_STORE(acc)
}
#endif

#ifdef QA_AVX512_VNNI
/* int8 activations x q8_0 / q4_1 weights: vpdpbusd multiplies 4 unsigned weight bytes by 4
 * signed activation bytes per lane; per 32-block the int32 sums are scaled into floats. */
static inline __attribute__((always_inline)) void tile_q_avx512(float *out, int ldo, const Acts *a, const Tensor *W,
                                                                const float *bias, int epi, int t0, int nt, int g0,
                                                                const int G, const int q4) {
    enum { R = TILE_ROWS_Q8 };
    int K = W->cols, nb = K / QBLOCK;
    size_t bbytes = q4 ? MQ4_BLOCK_BYTES : MQ8_BLOCK_BYTES;
    __m512 acc[2][R];
    for (int g = 0; g < G; g++)
        for (int r = 0; r < R; r++) acc[g][r] = _mm512_setzero_ps();
    size_t tile = (size_t)(t0 / R);
    const uint32_t *x = a->xp + tile * (K / 4) * R;
    const float *xd = a->xdp + tile * nb * R, *xs = a->xsp + tile * nb * R;
    const int32_t *xc = a->xcp + tile * nb * R;
    const uint8_t *b0 = (const uint8_t *)W->data + (size_t)g0 * nb * bbytes, *b1 = b0 + (size_t)nb * bbytes;
    const __m512i low4 = _mm512_set1_epi8(15);
    for (int b = 0; b < nb; b++, b0 += bbytes, b1 += bbytes, x += 8 * R, xd += R, xc += R, xs += R) {
        __m512i s[2][R];
        for (int r = 0; r < R; r++) {
            /* q8_0 weights are stored +128: start from -128 * sum(xq) to undo it */
            __m512i c = q4 ? _mm512_setzero_si512() : _mm512_set1_epi32(xc[r]);
            s[0][r] = c;
            if (G > 1) s[1][r] = c;
        }
        for (int j = 0; j < 8; j++) {
            __m512i w0, w1 = _mm512_setzero_si512();
            if (q4) {
                __m512i v0 = _mm512_loadu_si512(b0 + (j / 2) * 64);
                w0 = (j % 2) ? _mm512_and_si512(_mm512_srli_epi16(v0, 4), low4) : _mm512_and_si512(v0, low4);
                if (G > 1) {
                    __m512i v1 = _mm512_loadu_si512(b1 + (j / 2) * 64);
                    w1 = (j % 2) ? _mm512_and_si512(_mm512_srli_epi16(v1, 4), low4) : _mm512_and_si512(v1, low4);
                }
            } else {
                w0 = _mm512_loadu_si512(b0 + j * 64);
                if (G > 1) w1 = _mm512_loadu_si512(b1 + j * 64);
            }
            for (int r = 0; r < R; r++) {
                __m512i xv = _mm512_set1_epi32((int)x[j * R + r]);
                s[0][r] = _mm512_dpbusd_epi32(s[0][r], w0, xv);
                if (G > 1) s[1][r] = _mm512_dpbusd_epi32(s[1][r], w1, xv);
            }
        }
        __m512 d0 = _mm512_loadu_ps((const float *)(b0 + (q4 ? 256 : 512)));
        __m512 d1 = G > 1 ? _mm512_loadu_ps((const float *)(b1 + (q4 ? 256 : 512))) : d0;
        for (int r = 0; r < R; r++) {
            __m512 dx = _mm512_set1_ps(xd[r]);
            acc[0][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[0][r]), _mm512_mul_ps(d0, dx), acc[0][r]);
            if (G > 1) acc[1][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[1][r]), _mm512_mul_ps(d1, dx), acc[1][r]);
        }
        if (q4) {
            __m512 m0 = _mm512_loadu_ps((const float *)(b0 + 320)), m1 = G > 1 ? _mm512_loadu_ps((const float *)(b1 + 320)) : m0;
            for (int r = 0; r < R; r++) {
                __m512 sx = _mm512_set1_ps(xs[r]);
                acc[0][r] = _mm512_fmadd_ps(m0, sx, acc[0][r]);
                if (G > 1) acc[1][r] = _mm512_fmadd_ps(m1, sx, acc[1][r]);
            }
        }
    }
    TILE_STORE(acc)
}
#endif
#endif /* QA_AVX512 */

#if defined(QA_AVX2)
/* AVX2 (+FMA, and AVX-VNNI where present): a group of 16 rows is two 8-lane halves, one
 * group per tile (16 registers do not hold more), float sums of int8 tiles kept in memory. */
static inline void store8(float *o, __m256 v, const float *bias, int col, int epi, int n) {
    float tmp[8];
    _mm256_storeu_ps(tmp, v);
    for (int i = 0; i < n && i < 8; i++) store_out(o + i, tmp[i], bias, col + i, epi);
}

static void tile_f32_avx2(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt, int g0) {
    enum { R = TILE_ROWS_F };
    int K = W->cols;
    __m256 acc[R][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const float *x = (const float *)a->xp + (size_t)(t0 / R) * K * R;
    if (W->dtype == DT_MF32) {
        const float *w = (const float *)W->data + (size_t)g0 * K * 16;
        for (int k = 0; k < K; k++, x += R, w += 16) {
            __m256 lo = _mm256_loadu_ps(w), hi = _mm256_loadu_ps(w + 8);
            for (int r = 0; r < R; r++) {
                __m256 xv = _mm256_broadcast_ss(x + r);
                acc[r][0] = _mm256_fmadd_ps(lo, xv, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(hi, xv, acc[r][1]);
            }
        }
    } else {
        const uint32_t *w = (const uint32_t *)W->data + (size_t)g0 * K / 2 * 16;
        const __m256i mhi = _mm256_set1_epi32((int)0xffff0000u);
        for (int kp = 0; kp < K / 2; kp++, x += 2 * R, w += 16) {
            __m256i v0 = _mm256_loadu_si256((const __m256i *)w), v1 = _mm256_loadu_si256((const __m256i *)(w + 8));
            __m256 e0 = _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)), o0 = _mm256_castsi256_ps(_mm256_and_si256(v0, mhi));
            __m256 e1 = _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16)), o1 = _mm256_castsi256_ps(_mm256_and_si256(v1, mhi));
            for (int r = 0; r < R; r++) {
                __m256 xe = _mm256_broadcast_ss(x + r), xo = _mm256_broadcast_ss(x + R + r);
                acc[r][0] = _mm256_fmadd_ps(o0, xo, _mm256_fmadd_ps(e0, xe, acc[r][0]));
                acc[r][1] = _mm256_fmadd_ps(o1, xo, _mm256_fmadd_ps(e1, xe, acc[r][1]));
            }
        }
    }
    int valid = W->rows - g0 * 16;
    for (int r = 0; r < nt; r++) {
        store8(out + (size_t)(t0 + r) * ldo + g0 * 16, acc[r][0], bias, g0 * 16, epi, valid);
        store8(out + (size_t)(t0 + r) * ldo + g0 * 16 + 8, acc[r][1], bias, g0 * 16 + 8, epi, valid - 8);
    }
}

/* sum over 4 bytes per lane of unsigned w x signed x, added to acc */
static inline __m256i dot_u8s8(__m256i acc, __m256i w, __m256i x) {
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, w, x);
#else
    /* maddubs saturates at 16 bits: 255 * 127 * 2 would, so q8 tiles pass |q| and x*sign(q)
     * (see tile_q_avx2); q4 nibbles (<= 15) are safe as they are */
    __m256i p = _mm256_maddubs_epi16(w, x);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

static void tile_q_avx2(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt, int g0) {
    enum { R = TILE_ROWS_Q8 };
    int K = W->cols, nb = K / QBLOCK, q4 = W->dtype == DT_MQ4_1;
    size_t bbytes = q4 ? MQ4_BLOCK_BYTES : MQ8_BLOCK_BYTES, tile = (size_t)(t0 / R);
    float acc[R][16];
    memset(acc, 0, sizeof acc);
    const uint32_t *x = a->xp + tile * (K / 4) * R;
    const float *xd = a->xdp + tile * nb * R, *xs = a->xsp + tile * nb * R;
    const int32_t *xc = a->xcp + tile * nb * R;
    const uint8_t *blk = (const uint8_t *)W->data + (size_t)g0 * nb * bbytes;
    const __m256i low4 = _mm256_set1_epi8(15);
    for (int b = 0; b < nb; b++, blk += bbytes, x += 8 * R, xd += R, xc += R, xs += R) {
        __m256i s[R][2];
        for (int r = 0; r < R; r++) s[r][0] = s[r][1] = _mm256_setzero_si256();
        for (int j = 0; j < 8; j++) {
            __m256i w[2];
            for (int h = 0; h < 2; h++) {
                if (q4) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(blk + (j / 2) * 64 + 32 * h));
                    w[h] = (j % 2) ? _mm256_and_si256(_mm256_srli_epi16(v, 4), low4) : _mm256_and_si256(v, low4);
                } else {
                    w[h] = _mm256_loadu_si256((const __m256i *)(blk + j * 64 + 32 * h));
#if !defined(__AVXVNNI__)
                    w[h] = _mm256_xor_si256(w[h], _mm256_set1_epi8((char)0x80)); /* q = stored - 128, as s8 */
#endif
                }
            }
            for (int r = 0; r < R; r++) {
                __m256i xv = _mm256_set1_epi32((int)x[j * R + r]);
                for (int h = 0; h < 2; h++) {
#if !defined(__AVXVNNI__)
                    if (!q4) { /* |q| x (x * sign q): the products fit maddubs' 16 bits */
                        s[r][h] = dot_u8s8(s[r][h], _mm256_sign_epi8(w[h], w[h]), _mm256_sign_epi8(xv, w[h]));
                        continue;
                    }
#endif
                    s[r][h] = dot_u8s8(s[r][h], w[h], xv);
                }
            }
        }
        const float *d = (const float *)(blk + (q4 ? 256 : 512)), *m = (const float *)(blk + 320);
        for (int r = 0; r < R; r++) {
            for (int h = 0; h < 2; h++) {
                __m256i si = s[r][h];
#if defined(__AVXVNNI__)
                if (!q4) si = _mm256_add_epi32(si, _mm256_set1_epi32(xc[r])); /* undo the +128 */
#endif
                __m256 v = _mm256_loadu_ps(acc[r] + 8 * h);
                v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(si), _mm256_mul_ps(_mm256_loadu_ps(d + 8 * h), _mm256_set1_ps(xd[r])), v);
                if (q4) v = _mm256_fmadd_ps(_mm256_loadu_ps(m + 8 * h), _mm256_set1_ps(xs[r]), v);
                _mm256_storeu_ps(acc[r] + 8 * h, v);
            }
        }
    }
    for (int r = 0; r < nt; r++)
        for (int i = 0; i < 16 && g0 * 16 + i < W->rows; i++) store_out(out + (size_t)(t0 + r) * ldo + g0 * 16 + i, acc[r][i], bias, g0 * 16 + i, epi);
}
#endif /* QA_AVX2 */

#if defined(QA_NEON)
/* NEON (AArch64): a group of 16 rows is four 4-lane vectors, one group per tile (4 rows x 4
 * vectors of accumulators). The activations of a tile's 4 rows for one column (f32) or one
 * int8 quad are one 16-byte vector, so each row's value is a lane of it (fmla/sdot by
 * element): no broadcasts. */

/* Outputs [col, col + 16) of one tile row: bias, epilogue, store (the matrix's last group
 * may have fewer than 16 real rows: those go through the scalar store_out). */
static inline void store16_neon(float *o, const float32x4_t v[4], const float *bias, int col, int epi, int valid) {
    if (valid >= 16) {
        for (int c = 0; c < 4; c++) {
            float32x4_t y = v[c];
            if (bias) y = vaddq_f32(y, vld1q_f32(bias + col + 4 * c));
            if (epi == EPI_GELU) y = quick_gelu_neon(y);
            if (epi == EPI_ADD) y = vaddq_f32(y, vld1q_f32(o + 4 * c));
            vst1q_f32(o + 4 * c, y);
        }
    } else {
        float tmp[16];
        for (int c = 0; c < 4; c++) vst1q_f32(tmp + 4 * c, v[c]);
        for (int i = 0; i < valid; i++) store_out(o + i, tmp[i], bias, col + i, epi);
    }
}

/* acc[r][c] += w[c] * lane r of xv, for the 4 rows of a tile */
#define FMA_ROWS(acc, w, xv)                                                                       \
    do {                                                                                           \
        for (int c_ = 0; c_ < 4; c_++) {                                                           \
            acc[0][c_] = vfmaq_laneq_f32(acc[0][c_], w[c_], xv, 0);                                \
            acc[1][c_] = vfmaq_laneq_f32(acc[1][c_], w[c_], xv, 1);                                \
            acc[2][c_] = vfmaq_laneq_f32(acc[2][c_], w[c_], xv, 2);                                \
            acc[3][c_] = vfmaq_laneq_f32(acc[3][c_], w[c_], xv, 3);                                \
        }                                                                                          \
    } while (0)

/* f32 activations x f32 weights ([g][k][r]) or bf16 weights ([g][k/2][r][2], widened to
 * f32 by a shift / a mask) */
static void tile_f32_neon(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt, int g0) {
    enum { R = TILE_ROWS_F };
    int K = W->cols;
    float32x4_t acc[R][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = vdupq_n_f32(0.0f);
    const float *x = (const float *)a->xp + (size_t)(t0 / R) * K * R;
    if (W->dtype == DT_MF32) {
        const float *w = (const float *)W->data + (size_t)g0 * K * 16;
        for (int k = 0; k < K; k++, x += R, w += 16) {
            float32x4_t wv[4] = {vld1q_f32(w), vld1q_f32(w + 4), vld1q_f32(w + 8), vld1q_f32(w + 12)};
            float32x4_t xv = vld1q_f32(x);
            FMA_ROWS(acc, wv, xv);
        }
    } else {
        const uint32_t *w = (const uint32_t *)W->data + (size_t)g0 * K / 2 * 16;
        const uint32x4_t hi = vdupq_n_u32(0xffff0000u);
        for (int kp = 0; kp < K / 2; kp++, x += 2 * R, w += 16) {
            float32x4_t we[4], wo[4];
            for (int c = 0; c < 4; c++) {
                uint32x4_t v = vld1q_u32(w + 4 * c);
                we[c] = vreinterpretq_f32_u32(vshlq_n_u32(v, 16)); /* column 2kp */
                wo[c] = vreinterpretq_f32_u32(vandq_u32(v, hi));   /* column 2kp+1 */
            }
            /* packed f32 activations: column 2kp of the tile's rows at x, 2kp+1 at x + R */
            float32x4_t xe = vld1q_f32(x), xo = vld1q_f32(x + R);
            FMA_ROWS(acc, we, xe);
            FMA_ROWS(acc, wo, xo);
        }
    }
    for (int r = 0; r < nt; r++)
        store16_neon(out + (size_t)(t0 + r) * ldo + g0 * 16, acc[r], bias, g0 * 16, epi, W->rows - g0 * 16);
}

#if !defined(QA_NEON_DOT)
/* sdot by element without the dot-product extension: 4 lanes of sum_{i<4} w[4l+i] x[i]
 * for the quad x (broadcast in xq): widening multiplies, then two pairwise adds. The
 * 16-bit pair sums cannot overflow: |w| <= 128, |x| <= 127, 2 * 128 * 127 < 32768. */
static inline int32x4_t dot_quads_neon(int32x4_t acc, int8x16_t w, int8x16_t xq) {
    int16x8_t lo = vmull_s8(vget_low_s8(w), vget_low_s8(xq)), hi = vmull_high_s8(w, xq);
    return vpadalq_s16(acc, vpaddq_s16(lo, hi));
}
#define DOT_ROW(s, w, xv, r) dot_quads_neon(s, w, vreinterpretq_s8_u32(vdupq_laneq_u32(vreinterpretq_u32_s8(xv), r)))
#else
#define DOT_ROW(s, w, xv, r) vdotq_laneq_s32(s, w, xv, r)
#endif

/* int8 activations x q8_0 / q4_1 weights, signed x signed: q8_0's stored bytes (q + 128)
 * become q by flipping the top bit, q4_1's nibbles (0..15) are valid s8 as they are, so
 * no correction term is needed; per 32-block the int32 sums are scaled into floats. */
static void tile_q_neon(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt, int g0) {
    enum { R = TILE_ROWS_Q8 };
    int K = W->cols, nb = K / QBLOCK, q4 = W->dtype == DT_MQ4_1;
    size_t bbytes = q4 ? MQ4_BLOCK_BYTES : MQ8_BLOCK_BYTES, tile = (size_t)(t0 / R);
    float32x4_t acc[R][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = vdupq_n_f32(0.0f);
    const uint32_t *x = a->xp + tile * (K / 4) * R;
    const float *xd = a->xdp + tile * nb * R, *xs = a->xsp + tile * nb * R;
    const uint8_t *blk = (const uint8_t *)W->data + (size_t)g0 * nb * bbytes;
    const uint8x16_t low4 = vdupq_n_u8(15), top = vdupq_n_u8(0x80);
    for (int b = 0; b < nb; b++, blk += bbytes, x += 8 * R, xd += R, xs += R) {
        int32x4_t s[R][4];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < 4; c++) s[r][c] = vdupq_n_s32(0);
        for (int j = 0; j < 8; j++) {
            int8x16_t w[4];
            for (int c = 0; c < 4; c++) {
                if (q4) {
                    uint8x16_t v = vld1q_u8(blk + (j / 2) * 64 + 16 * c);
                    w[c] = vreinterpretq_s8_u8((j % 2) ? vshrq_n_u8(v, 4) : vandq_u8(v, low4));
                } else {
                    w[c] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(blk + j * 64 + 16 * c), top));
                }
            }
            /* quad j of the tile's 4 rows: lane r is row r's 4 activation bytes */
            int8x16_t xv = vreinterpretq_s8_u32(vld1q_u32(x + j * R));
            for (int c = 0; c < 4; c++) {
                s[0][c] = DOT_ROW(s[0][c], w[c], xv, 0);
                s[1][c] = DOT_ROW(s[1][c], w[c], xv, 1);
                s[2][c] = DOT_ROW(s[2][c], w[c], xv, 2);
                s[3][c] = DOT_ROW(s[3][c], w[c], xv, 3);
            }
        }
        const float *d = (const float *)(blk + (q4 ? 256 : 512)), *m = (const float *)(blk + 320);
        for (int c = 0; c < 4; c++) {
            float32x4_t dc = vld1q_f32(d + 4 * c), mc = q4 ? vld1q_f32(m + 4 * c) : dc;
            for (int r = 0; r < R; r++) {
                acc[r][c] = vfmaq_f32(acc[r][c], vcvtq_f32_s32(s[r][c]), vmulq_n_f32(dc, xd[r]));
                if (q4) acc[r][c] = vfmaq_n_f32(acc[r][c], mc, xs[r]);
            }
        }
    }
    for (int r = 0; r < nt; r++)
        store16_neon(out + (size_t)(t0 + r) * ldo + g0 * 16, acc[r], bias, g0 * 16, epi, W->rows - g0 * 16);
}
#undef DOT_ROW
#undef FMA_ROWS
#endif /* QA_NEON */

/* One tile: rows [t0, t0+nt) x groups [g0, g0+ng), SIMD when this build has a kernel for
 * the weight and activation types (then t0 is a multiple of the tile rows a->R). */
static void tile(float *out, int ldo, const Acts *a, const Tensor *W, const float *bias, int epi, int t0, int nt, int g0, int ng) {
#ifdef QA_AVX512
    if (W->dtype == DT_MF32 || (W->dtype == DT_MBF16 && a->kind == ACT_F32)) {
        if (ng == 2) tile_f32_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 2);
        else tile_f32_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 1);
        return;
    }
#ifdef QA_AVX512_BF16
    if (W->dtype == DT_MBF16 && a->kind == ACT_BF16) {
        if (ng == 2) tile_bf16_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 2);
        else tile_bf16_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 1);
        return;
    }
#endif
#ifdef QA_AVX512_VNNI
    if (W->dtype == DT_MQ8_0) {
        if (ng == 2) tile_q_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 2, 0);
        else tile_q_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 1, 0);
        return;
    }
    if (W->dtype == DT_MQ4_1) {
        if (ng == 2) tile_q_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 2, 1);
        else tile_q_avx512(out, ldo, a, W, bias, epi, t0, nt, g0, 1, 1);
        return;
    }
#endif
#endif
#ifdef QA_AVX2
    if (W->dtype == DT_MF32 || (W->dtype == DT_MBF16 && a->kind == ACT_F32)) {
        for (int g = g0; g < g0 + ng; g++) tile_f32_avx2(out, ldo, a, W, bias, epi, t0, nt, g);
        return;
    }
    if (W->dtype == DT_MQ8_0 || W->dtype == DT_MQ4_1) {
        for (int g = g0; g < g0 + ng; g++) tile_q_avx2(out, ldo, a, W, bias, epi, t0, nt, g);
        return;
    }
#endif
#ifdef QA_NEON
    if (W->dtype == DT_MF32 || (W->dtype == DT_MBF16 && a->kind == ACT_F32)) {
        for (int g = g0; g < g0 + ng; g++) tile_f32_neon(out, ldo, a, W, bias, epi, t0, nt, g);
        return;
    }
    if (W->dtype == DT_MQ8_0 || W->dtype == DT_MQ4_1) {
        for (int g = g0; g < g0 + ng; g++) tile_q_neon(out, ldo, a, W, bias, epi, t0, nt, g);
        return;
    }
#endif
    tile_ref(out, ldo, a, W, bias, epi, t0, nt, g0, ng);
}

/* out (T, ldo) gets columns [0, W->rows) of x W^T + bias, through the epilogue.
 * Threads split the groups of 16 output columns; each walks all rows in tiles. */
static void matmul_acts(float *out, int ldo, Acts *a, const Tensor *W, const float *bias, int epi) {
    if (a->K != W->cols) fatal("internal: matmul of %d-wide activations with a %d-wide matrix", a->K, W->cols);
    ActKind kind = act_kind_for(a, W->dtype);
    if (a->kind != kind) acts_prepare(a, kind);
    int groups = (W->rows + 15) / 16, tiles = (groups + 1) / 2, RT = a->R ? a->R : 4, T = a->T;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < tiles; i++) {
        int g0 = 2 * i, ng = groups - g0 < 2 ? groups - g0 : 2;
        for (int t0 = 0; t0 < T; t0 += RT) tile(out, ldo, a, W, bias, epi, t0, T - t0 < RT ? T - t0 : RT, g0, ng);
    }
}

/* out (T, W->rows) = epilogue(x (T, W->cols) W^T + bias) */
static void matmul(float *out, Acts *a, const float *x, int T, const Tensor *W, const float *bias, int epi) {
    acts_set(a, x, T, W->cols);
    matmul_acts(out, W->rows, a, W, bias, epi);
}

/* The same product computed by the reference tile only (for tests). */
MAYBE_UNUSED static void matmul_ref(float *out, Acts *a, const float *x, int T, const Tensor *W, const float *bias, int epi) {
    acts_set(a, x, T, W->cols);
    acts_prepare(a, act_kind_for(a, W->dtype));
    if (a->kind == ACT_Q8)
        for (int t = 0; t < T; t++) /* the reference quantiser, to test the SIMD one too */
            quantize_row_ref(a->xq + (size_t)t * a->K, a->xd + (size_t)t * (a->K / QBLOCK), a->xc + (size_t)t * (a->K / QBLOCK),
                             a->xs + (size_t)t * (a->K / QBLOCK), x + (size_t)t * a->K, a->K);
    tile_ref(out, W->rows, a, W, bias, epi, 0, T, 0, (W->rows + 15) / 16);
}

/* Row `row` of W as f32 (embedding lookups, the few lm_head rows). */
static void matrix_row(float *out, const Tensor *W, int row) {
    int K = W->cols, g = row / 16, r = row % 16, nb = K / QBLOCK;
    for (int k = 0; k < K; k++) {
        switch (W->dtype) {
        case DT_MF32: out[k] = ((const float *)W->data)[((size_t)g * K + k) * 16 + r]; break;
        case DT_MBF16: out[k] = bf16_to_f32(((const uint16_t *)W->data)[(((size_t)g * K / 2 + k / 2) * 16 + r) * 2 + k % 2]); break;
        case DT_MQ8_0: {
            const uint8_t *blk = (const uint8_t *)W->data + ((size_t)g * nb + k / 32) * MQ8_BLOCK_BYTES;
            int j = (k % 32) / 4, i = k % 4;
            out[k] = ((const float *)(blk + 512))[r] * (float)((int)blk[j * 64 + r * 4 + i] - 128);
            break;
        }
        case DT_MQ4_1: {
            const uint8_t *blk = (const uint8_t *)W->data + ((size_t)g * nb + k / 32) * MQ4_BLOCK_BYTES;
            int j = (k % 32) / 4, i = k % 4;
            uint8_t byte = blk[(j / 2) * 64 + r * 4 + i];
            out[k] = ((const float *)(blk + 256))[r] * (float)(j % 2 ? byte >> 4 : byte & 15) + ((const float *)(blk + 320))[r];
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
 * scratch: per thread, at least attention_scratch_floats(Tk) floats; kt: workspace of
 * 2 * KVH * hd * pad16(Tk) floats (keys transposed and values packed per head). */

#define ATT_ROWS 6 /* query rows per work item in the SIMD kernel */

static size_t pad16(size_t n) { return (n + 15) / 16 * 16; }
static size_t attention_scratch_floats(size_t Tk) { return ATT_ROWS * pad16(Tk); }

static void attention_ref(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv, int Tq, int Tk,
                          int H, int KVH, int hd, int causal, int q_offset, float *scratch, size_t scratch_stride) {
    float scale = 1.0f / sqrtf((float)hd);
    int group = H / KVH;
#pragma omp parallel for collapse(2) schedule(static)
    for (int h = 0; h < H; h++) {
        for (int i = 0; i < Tq; i++) {
            float *s = scratch + (size_t)thread_id() * scratch_stride;
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

#ifdef QA_AVX512
/* o[r][0..HC*16) = sum_j p[r][j] v[j]   for R rows of probabilities (stride ps) */
static inline __attribute__((always_inline)) void att_pv_avx512(float *o, int ldo, const float *p, size_t ps, const float *v,
                                                               int ldkv, int n, const int R, const int HC) {
    __m512 acc[8][8];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < HC; c++) acc[r][c] = _mm512_setzero_ps();
    for (int j = 0; j < n; j++) {
        __m512 vv[8];
        for (int c = 0; c < HC; c++) vv[c] = _mm512_loadu_ps(v + (size_t)j * ldkv + 16 * c);
        for (int r = 0; r < R; r++) {
            __m512 pj = _mm512_set1_ps(p[(size_t)r * ps + j]);
            for (int c = 0; c < HC; c++) acc[r][c] = _mm512_fmadd_ps(pj, vv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < HC; c++) _mm512_storeu_ps(o + (size_t)r * ldo + 16 * c, acc[r][c]);
}
#endif

/* PV for rows r0.. of the block, with constant row and column counts for the compiler */
#define PV_CALL(nr, hc) att_pv_avx512(o + (size_t)r0 * ldo, ldo, S + (size_t)r0 * Tk16, Tk16, vh, hd, nmax, nr, hc)
#define PV_ROWS(nr, hc)                                                                                      \
    switch (nr) {                                                                                            \
    case 1: PV_CALL(1, hc); break; case 2: PV_CALL(2, hc); break; case 3: PV_CALL(3, hc); break;             \
    case 4: PV_CALL(4, hc); break; case 5: PV_CALL(5, hc); break; default: PV_CALL(6, hc); break;            \
    }
#define PV_COLS(hc)                                                                                          \
    switch (hc) {                                                                                            \
    case 1: PV_CALL(1, 1); break; case 2: PV_CALL(1, 2); break; case 3: PV_CALL(1, 3); break;                 \
    case 5: PV_CALL(1, 5); break; case 6: PV_CALL(1, 6); break; default: PV_CALL(1, 7); break;               \
    }

static void attention(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv, int Tq, int Tk, int H,
                      int KVH, int hd, int causal, int q_offset, float *scratch, size_t scratch_stride, float *kt) {
#ifdef QA_AVX512
    if (hd % 16 == 0 && hd <= 128) {
        /* keys transposed per kv head: kt[kh][d][j], j padded to 16, so that 16 keys' scores
         * for one query are one FMA chain over d */
        size_t Tk16 = pad16((size_t)Tk);
        /* and values packed per kv head, vp[kh][j][d], so a head's values are contiguous */
        float *vp = kt + (size_t)KVH * hd * Tk16;
#pragma omp parallel for schedule(static)
        for (int kh = 0; kh < KVH; kh++) {
            for (int j0 = 0; j0 < (int)Tk16; j0 += 16) /* 16 keys at a time: reads rows, writes lines */
                for (int d = 0; d < hd; d++) {
                    float *row = kt + ((size_t)kh * hd + d) * Tk16 + j0;
                    for (int jj = 0; jj < 16; jj++) row[jj] = j0 + jj < Tk ? k[(size_t)(j0 + jj) * ldkv + (size_t)kh * hd + d] : 0.0f;
                }
            for (int j = 0; j < Tk; j++) memcpy(vp + ((size_t)kh * Tk + j) * hd, v + (size_t)j * ldkv + (size_t)kh * hd, (size_t)hd * sizeof(float));
        }
        float scale = 1.0f / sqrtf((float)hd);
        int group = H / KVH, blocks = (Tq + ATT_ROWS - 1) / ATT_ROWS;
#pragma omp parallel for collapse(2) schedule(static)
        for (int h = 0; h < H; h++)
            for (int ib = 0; ib < blocks; ib++) {
                int i0 = ib * ATT_ROWS, R = Tq - i0 < ATT_ROWS ? Tq - i0 : ATT_ROWS, kh = h / group;
                int nmax = causal ? i0 + R - 1 + q_offset + 1 : Tk; /* keys any row of the block sees */
                float *S = scratch + (size_t)thread_id() * scratch_stride;
                const float *ktb = kt + (size_t)kh * hd * Tk16;
                /* scores: S[r][j] = (scale * q[i0+r]) . k[j]; the block's queries, scaled and
                 * transposed to qt[d][r] (rows past R zero), are broadcast from one place, and
                 * each d feeds ATT_ROWS x 64 keys of accumulators */
                float qt[128 * ATT_ROWS];
                for (int d = 0; d < hd; d++)
                    for (int r = 0; r < ATT_ROWS; r++) qt[d * ATT_ROWS + r] = r < R ? q[(size_t)(i0 + r) * ldq + (size_t)h * hd + d] * scale : 0.0f;
                int j0 = 0;
                for (; j0 + 64 <= nmax; j0 += 64) {
                    __m512 acc[ATT_ROWS][4];
                    for (int r = 0; r < ATT_ROWS; r++)
                        for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
                    for (int d = 0; d < hd; d++) {
                        const float *kd = ktb + (size_t)d * Tk16 + j0;
                        __m512 k0 = _mm512_loadu_ps(kd), k1 = _mm512_loadu_ps(kd + 16), k2 = _mm512_loadu_ps(kd + 32), k3 = _mm512_loadu_ps(kd + 48);
                        for (int r = 0; r < ATT_ROWS; r++) {
                            __m512 qv = _mm512_set1_ps(qt[d * ATT_ROWS + r]);
                            acc[r][0] = _mm512_fmadd_ps(qv, k0, acc[r][0]);
                            acc[r][1] = _mm512_fmadd_ps(qv, k1, acc[r][1]);
                            acc[r][2] = _mm512_fmadd_ps(qv, k2, acc[r][2]);
                            acc[r][3] = _mm512_fmadd_ps(qv, k3, acc[r][3]);
                        }
                    }
                    for (int r = 0; r < R; r++)
                        for (int c = 0; c < 4; c++) _mm512_storeu_ps(S + (size_t)r * Tk16 + j0 + 16 * c, acc[r][c]);
                }
                for (; j0 < nmax; j0 += 16) {
                    __m512 acc[ATT_ROWS];
                    for (int r = 0; r < ATT_ROWS; r++) acc[r] = _mm512_setzero_ps();
                    for (int d = 0; d < hd; d++) {
                        __m512 kv = _mm512_loadu_ps(ktb + (size_t)d * Tk16 + j0);
                        for (int r = 0; r < ATT_ROWS; r++) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(qt[d * ATT_ROWS + r]), kv, acc[r]);
                    }
                    for (int r = 0; r < R; r++) _mm512_storeu_ps(S + (size_t)r * Tk16 + j0, acc[r]);
                }
                /* softmax per row over the keys it sees; zero the rest up to nmax */
                for (int r = 0; r < R; r++) {
                    int n = causal ? i0 + r + q_offset + 1 : Tk;
                    softmax(S + (size_t)r * Tk16, n);
                    for (int j = n; j < nmax; j++) S[(size_t)r * Tk16 + j] = 0.0f;
                }
                /* out[i0+r, h] = sum_j S[r][j] v[j, kh] */
                const float *vh = vp + (size_t)kh * Tk * hd;
                float *o = out + (size_t)i0 * H * hd + (size_t)h * hd;
                int ldo = H * hd, HC = hd / 16;
                if (HC == 4) /* hd 64 (the ViT): 6 rows x 4 vectors of accumulators */
                    for (int r0 = 0; r0 < R; r0 += 6) { PV_ROWS(R - r0 < 6 ? R - r0 : 6, 4) }
                else if (HC == 8) /* hd 128 (LLaMA): 3 rows x 8 vectors */
                    for (int r0 = 0; r0 < R; r0 += 3) { PV_ROWS(R - r0 < 3 ? R - r0 : 3, 8) }
                else
                    for (int r0 = 0; r0 < R; r0++) { PV_COLS(HC) }
            }
        return;
    }
#elif defined(QA_NEON)
    if (hd % 4 == 0) {
        /* one query row at a time: scores as 4-lane dot products over d, the NEON softmax,
         * then the output row in chunks of up to 8 vectors, each one FMA chain over keys */
        float scale = 1.0f / sqrtf((float)hd);
        int group = H / KVH;
#pragma omp parallel for collapse(2) schedule(static)
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < Tq; i++) {
                float *s = scratch + (size_t)thread_id() * scratch_stride;
                const float *qi = q + (size_t)i * ldq + (size_t)h * hd;
                int kh = h / group, n = causal ? i + q_offset + 1 : Tk;
                for (int j = 0; j < n; j++) {
                    const float *kj = k + (size_t)j * ldkv + (size_t)kh * hd;
                    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
                    int d = 0;
                    for (; d + 8 <= hd; d += 8) {
                        a0 = vfmaq_f32(a0, vld1q_f32(qi + d), vld1q_f32(kj + d));
                        a1 = vfmaq_f32(a1, vld1q_f32(qi + d + 4), vld1q_f32(kj + d + 4));
                    }
                    if (d < hd) a0 = vfmaq_f32(a0, vld1q_f32(qi + d), vld1q_f32(kj + d));
                    s[j] = vaddvq_f32(vaddq_f32(a0, a1)) * scale;
                }
                softmax(s, n);
                const float *vh = v + (size_t)kh * hd;
                float *oi = out + (size_t)i * H * hd + (size_t)h * hd;
                for (int d0 = 0; d0 < hd; d0 += 32) {
                    int nc = (hd - d0) / 4 < 8 ? (hd - d0) / 4 : 8;
                    float32x4_t acc[8];
                    for (int c = 0; c < 8; c++) acc[c] = vdupq_n_f32(0.0f);
                    if (nc == 8)
                        for (int j = 0; j < n; j++) {
                            const float *vj = vh + (size_t)j * ldkv + d0;
                            for (int c = 0; c < 8; c++) acc[c] = vfmaq_n_f32(acc[c], vld1q_f32(vj + 4 * c), s[j]);
                        }
                    else
                        for (int j = 0; j < n; j++) {
                            const float *vj = vh + (size_t)j * ldkv + d0;
                            for (int c = 0; c < nc; c++) acc[c] = vfmaq_n_f32(acc[c], vld1q_f32(vj + 4 * c), s[j]);
                        }
                    for (int c = 0; c < nc; c++) vst1q_f32(oi + d0 + 4 * c, acc[c]);
                }
            }
        }
        return;
    }
#endif
    (void)kt;
    attention_ref(out, q, ldq, k, v, ldkv, Tq, Tk, H, KVH, hd, causal, q_offset, scratch, scratch_stride);
}

/* --- attention with bf16 products ------------------------------------------------------
 * The ViT's attention is a seventh of its multiply-adds but, in f32, a third of its time. For
 * models whose matmuls are not f32 anyway (bf16 / q8_0 / q4_1 weights, not --precise) it
 * runs with vdpbf16ps: q.k summed over pairs of dimensions, p.v over pairs of keys, each
 * product of two bf16 (round to nearest even) added in f32; the softmax stays f32. This is
 * the precision the original runs the whole model in. Non-causal, one kv head per head
 * group, hd a multiple of 16 up to 64. Same arguments as attention() (kt: its workspace).
 * Without AVX512-BF16 it is attention() itself. */
static int attention_bf16_fits(int hd) {
#ifdef QA_AVX512_BF16
    return hd % 16 == 0 && hd <= 64;
#else
    (void)hd;
    return 0;
#endif
}

#ifdef QA_AVX512_BF16
static inline uint32_t bf16_pair(float lo, float hi) { return (uint32_t)f32_to_bf16(lo) | (uint32_t)f32_to_bf16(hi) << 16; }

/* o[r][0..HC*16) = sum_i dot(p[r] pair i, v pair i), R rows of pairs (stride ps uint32) */
static inline __attribute__((always_inline)) void att_pv_bf16(float *o, int ldo, const uint32_t *p, size_t ps, const uint32_t *vp,
                                                             int hd, int npairs, const int R, const int HC) {
    __m512 acc[ATT_ROWS][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < HC; c++) acc[r][c] = _mm512_setzero_ps();
    for (int i = 0; i < npairs; i++) {
        __m512bh vv[4];
        for (int c = 0; c < HC; c++) vv[c] = (__m512bh)_mm512_loadu_si512(vp + (size_t)i * hd + 16 * c);
        for (int r = 0; r < R; r++) {
            __m512bh pi = (__m512bh)_mm512_set1_epi32((int)p[(size_t)r * ps + i]);
            for (int c = 0; c < HC; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], vv[c], pi);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < HC; c++) _mm512_storeu_ps(o + (size_t)r * ldo + 16 * c, acc[r][c]);
}
#endif

static void attention_bf16(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv, int Tq, int Tk,
                           int H, int KVH, int hd, float *scratch, size_t scratch_stride, float *kt) {
#ifdef QA_AVX512_BF16
    size_t Tk16 = pad16((size_t)Tk);
    int npairs = (Tk + 1) / 2, hp = hd / 2;
    /* kp[kh][e][j] = (k[j][2e], k[j][2e+1]) for j < Tk16 (zero past Tk): 16 keys' q.k per vector
     * vp[kh][i][d] = (v[2i][d], v[2i+1][d]) for i < npairs (zero past Tk): 16 dims' p.v per vector */
    uint32_t *kp = (uint32_t *)kt, *vp = kp + (size_t)KVH * hp * Tk16;
#pragma omp parallel for schedule(static)
    for (int kh = 0; kh < KVH; kh++) {
        for (int j0 = 0; j0 < (int)Tk16; j0 += 16)
            for (int e = 0; e < hp; e++) {
                uint32_t *row = kp + ((size_t)kh * hp + e) * Tk16 + j0;
                for (int jj = 0; jj < 16; jj++) {
                    row[jj] = 0u;
                    if (j0 + jj < Tk) {
                        const float *kj = k + (size_t)(j0 + jj) * ldkv + (size_t)kh * hd + 2 * e;
                        row[jj] = bf16_pair(kj[0], kj[1]);
                    }
                }
            }
        for (int i = 0; i < npairs; i++) {
            const float *v0 = v + (size_t)(2 * i) * ldkv + (size_t)kh * hd, *v1 = 2 * i + 1 < Tk ? v0 + ldkv : NULL;
            uint32_t *row = vp + ((size_t)kh * npairs + i) * hd;
            for (int d = 0; d < hd; d++) row[d] = bf16_pair(v0[d], v1 ? v1[d] : 0.0f);
        }
    }
    float scale = 1.0f / sqrtf((float)hd);
    int group = H / KVH, blocks = (Tq + ATT_ROWS - 1) / ATT_ROWS;
#pragma omp parallel for collapse(2) schedule(static)
    for (int h = 0; h < H; h++)
        for (int ib = 0; ib < blocks; ib++) {
            int i0 = ib * ATT_ROWS, R = Tq - i0 < ATT_ROWS ? Tq - i0 : ATT_ROWS, kh = h / group;
            float *S = scratch + (size_t)thread_id() * scratch_stride;
            const uint32_t *kph = kp + (size_t)kh * hp * Tk16;
            /* scores: S[r][j] = sum_e (scale q[i0+r] pair e) . (k[j] pair e), queries as pairs
             * qt[e][r] (rows past R zero), 6 rows x 64 keys of accumulators */
            uint32_t qt[32 * ATT_ROWS];
            for (int e = 0; e < hp; e++)
                for (int r = 0; r < ATT_ROWS; r++) {
                    const float *qr = q + (size_t)(i0 + r) * ldq + (size_t)h * hd + 2 * e;
                    qt[e * ATT_ROWS + r] = r < R ? bf16_pair(qr[0] * scale, qr[1] * scale) : 0u;
                }
            int j0 = 0;
            for (; j0 + 64 <= (int)Tk16; j0 += 64) {
                __m512 acc[ATT_ROWS][4];
                for (int r = 0; r < ATT_ROWS; r++)
                    for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
                for (int e = 0; e < hp; e++) {
                    const uint32_t *ke = kph + (size_t)e * Tk16 + j0;
                    __m512bh k0 = (__m512bh)_mm512_loadu_si512(ke), k1 = (__m512bh)_mm512_loadu_si512(ke + 16);
                    __m512bh k2 = (__m512bh)_mm512_loadu_si512(ke + 32), k3 = (__m512bh)_mm512_loadu_si512(ke + 48);
                    for (int r = 0; r < ATT_ROWS; r++) {
                        __m512bh qv = (__m512bh)_mm512_set1_epi32((int)qt[e * ATT_ROWS + r]);
                        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], k0, qv);
                        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], k1, qv);
                        acc[r][2] = _mm512_dpbf16_ps(acc[r][2], k2, qv);
                        acc[r][3] = _mm512_dpbf16_ps(acc[r][3], k3, qv);
                    }
                }
                for (int r = 0; r < R; r++)
                    for (int c = 0; c < 4; c++) _mm512_storeu_ps(S + (size_t)r * Tk16 + j0 + 16 * c, acc[r][c]);
            }
            for (; j0 < (int)Tk16; j0 += 16) {
                __m512 acc[ATT_ROWS];
                for (int r = 0; r < ATT_ROWS; r++) acc[r] = _mm512_setzero_ps();
                for (int e = 0; e < hp; e++) {
                    __m512bh kv = (__m512bh)_mm512_loadu_si512(kph + (size_t)e * Tk16 + j0);
                    for (int r = 0; r < ATT_ROWS; r++)
                        acc[r] = _mm512_dpbf16_ps(acc[r], kv, (__m512bh)_mm512_set1_epi32((int)qt[e * ATT_ROWS + r]));
                }
                for (int r = 0; r < R; r++) _mm512_storeu_ps(S + (size_t)r * Tk16 + j0, acc[r]);
            }
            /* softmax per row (f32), then the row rounded to bf16 pairs in place: pair i of
             * row r lands in uint32 i of the row, over floats already read (i < 2i) */
            for (int r = 0; r < R; r++) {
                float *row = S + (size_t)r * Tk16;
                softmax(row, Tk);
                for (int c = 0; 32 * c < Tk; c++) {
                    __m512 lo = _mm512_maskz_loadu_ps(tail_mask(Tk - 32 * c), row + 32 * c);
                    __m512 hi = Tk - 32 * c > 16 ? _mm512_maskz_loadu_ps(tail_mask(Tk - 32 * c - 16), row + 32 * c + 16) : _mm512_setzero_ps();
                    _mm512_storeu_si512(row + 16 * c, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
                }
            }
            /* out[i0+r, h] = sum_i (p[r] pair i) . (v pair i) */
            const uint32_t *P = (const uint32_t *)S, *vph = vp + (size_t)kh * npairs * hd;
            float *o = out + (size_t)i0 * H * hd + (size_t)h * hd;
            int ldo = H * hd, HC = hd / 16;
#define PVB(nr, hc) att_pv_bf16(o, ldo, P, Tk16, vph, hd, npairs, nr, hc)
#define PVB_ROWS(hc) switch (R) { case 1: PVB(1, hc); break; case 2: PVB(2, hc); break; case 3: PVB(3, hc); break; \
                                  case 4: PVB(4, hc); break; case 5: PVB(5, hc); break; default: PVB(6, hc); break; }
            switch (HC) {
            case 1: PVB_ROWS(1) break;
            case 2: PVB_ROWS(2) break;
            case 3: PVB_ROWS(3) break;
            default: PVB_ROWS(4) break;
            }
#undef PVB_ROWS
#undef PVB
        }
#else
    attention(out, q, ldq, k, v, ldkv, Tq, Tk, H, KVH, hd, 0, 0, scratch, scratch_stride, kt);
#endif
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
    Acts *a = &s->acts;
    matmul(x + D, a, s->patches, G * G, &w->patch, NULL, EPI_STORE);
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
        acts_set(a, xn, T, D);
        matmul_acts(s->vq, D, a, &L->wq, L->bq, EPI_STORE);
        matmul_acts(s->vk, D, a, &L->wk, L->bk, EPI_STORE);
        matmul_acts(s->vv, D, a, &L->wv, L->bv, EPI_STORE);
        /* attention_probs = softmax(q @ k^T * hd**-0.5); context = (probs @ v).permute(0,2,1,3) */
        if (s->vit_att_bf16 && attention_bf16_fits(hd))
            attention_bf16(s->vatt, s->vq, D, s->vk, s->vv, D, T, T, H, H, hd, s->scores, s->scores_stride, s->kt);
        else
            attention(s->vatt, s->vq, D, s->vk, s->vv, D, T, T, H, H, hd, 0, 0, s->scores, s->scores_stride, s->kt);
        /* output = self.dense(context_layer); hidden_states = attention_output + residual */
        matmul(x, a, s->vatt, T, &L->wo, L->bo, EPI_ADD);
        /* hidden_states = self.post_attention_layernorm(hidden_states)
         * hidden_states = residual + self.mlp(hidden_states)   # fc2(QuickGELU(fc1(x))) */
        layernorm(xn, x, L->ln2_w, L->ln2_b, T, D, c->v_eps);
        matmul(s->vmlp, a, xn, T, &L->fc1, L->fc1_b, EPI_GELU);
        matmul(x, a, s->vmlp, T, &L->fc2, L->fc2_b, EPI_ADD);
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

    Acts *a = &s->acts;
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
        dump_f32(dump, name, s->aq, frame, 3, (int64_t)n_frames, (int64_t)Q, (int64_t)D);
    }
    /* sequence_output = self.visual_fc(sequence_output)
     * sequence_output = torch.cat([sequence_output, self.vit_eos.repeat(B, 1, 1)], dim=1) */
    matmul(out, a, s->aq, Q, &w->fc, w->fc_b, EPI_STORE);
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

/* Rows [lo, hi) of a sequence, stored from row 0 of x (so position t is row t - lo),
 * normalised with the weight of their modality. */
static void rmsnorm_spans(float *out, const float *x, const float *const w[2], const Span *spans, int n_spans, int lo, int hi,
                          int C, float eps) {
    for (int si = 0; si < n_spans; si++) {
        const Span *sp = &spans[si];
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
#pragma omp parallel for schedule(static)
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

/* Runs the decoder layers over B sequences with the same layout (spans, positions 0..n-1).
 * Rows [0, start) of every sequence are a cached prefix: their keys and values for every
 * layer are in s->kc / s->vc, saved by an earlier call with save_prefix (B = 1, start = 0,
 * n = the prefix length). The other nn = n - start rows of each sequence are in s->x as
 * (B, nn, D). The matmuls take all B*nn rows at once, so each weight matrix is read once
 * per batch; attention runs per sequence. If final is not NULL it gets the final-norm
 * state of each sequence's last row, (B, D). */
static void decoder_forward(const Model *m, RunState *s, int B, int start, int n, const Span *spans, int n_spans,
                            int save_prefix, float *final, Dump *dump) {
    const Config *c = &m->c;
    const DecoderWeights *w = &m->l;
    int D = c->l_dim, H = c->l_heads, KVH = c->l_kv_heads, hd = c->l_head_dim, kvd = KVH * hd, F = c->l_mlp;
    int nn = n - start;
    float *x = s->x, *xn = s->xn;
    Acts *a = &s->acts;
    char name[64];

    rope_tables(s->rope_cos, s->rope_sin, n, hd, c->l_rope_theta);
    for (int l = 0; l < c->l_layers; l++) {
        const DecoderLayer *L = &w->layers[l];
        size_t cache = (size_t)l * s->max_prefix * kvd;
        /* hidden_states = self.input_layernorm(hidden_states, modality_indicators) */
        for (int b = 0; b < B; b++)
            rmsnorm_spans(xn + (size_t)b * nn * D, x + (size_t)b * nn * D, L->attn_norm, spans, n_spans, start, n, D, c->l_eps);
        /* key_states   = self.k_proj(hidden_states, modality_indicators)  # multiway[m] per row
         * value_states = self.v_proj(hidden_states, modality_indicators)
         * a span's rows of all sequences are gathered, so each projection runs once */
        for (int si = 0; si < n_spans; si++) {
            int lo = spans[si].start > start ? spans[si].start : start, hi = spans[si].end < n ? spans[si].end : n, len = hi - lo;
            if (len <= 0) continue;
            float *gin = s->att, *gk = s->q, *gv = s->tmp;   /* free until the queries are made */
            for (int b = 0; b < B; b++)
                memcpy(gin + (size_t)b * len * D, xn + ((size_t)b * nn + lo - start) * D, (size_t)len * D * sizeof(float));
            acts_set(a, gin, B * len, D);
            matmul_acts(gk, kvd, a, &L->wk[spans[si].modality], NULL, EPI_STORE);
            matmul_acts(gv, kvd, a, &L->wv[spans[si].modality], NULL, EPI_STORE);
            for (int b = 0; b < B; b++) {
                memcpy(s->k + ((size_t)b * n + lo) * kvd, gk + (size_t)b * len * kvd, (size_t)len * kvd * sizeof(float));
                memcpy(s->v + ((size_t)b * n + lo) * kvd, gv + (size_t)b * len * kvd, (size_t)len * kvd * sizeof(float));
            }
        }
        for (int b = 0; b < B; b++) {
            float *kb = s->k + (size_t)b * n * kvd, *vb = s->v + (size_t)b * n * kvd;
            /* key_states = apply_rotary_pos_emb(k, cos, sin, position_ids)   # positions 0..n-1 */
            rope(kb + (size_t)start * kvd, nn, start, KVH, hd, s->rope_cos, s->rope_sin);
            if (start > 0) { /* the cached prefix */
                memcpy(kb, s->kc + cache, (size_t)start * kvd * sizeof(float));
                memcpy(vb, s->vc + cache, (size_t)start * kvd * sizeof(float));
            }
        }
        if (save_prefix) {
            memcpy(s->kc + cache, s->k, (size_t)n * kvd * sizeof(float));
            memcpy(s->vc + cache, s->v, (size_t)n * kvd * sizeof(float));
        }
        /* rows that go all the way through this layer: all new rows, except in the last
         * layer, where only each sequence's last row is used (none when filling the cache) */
        int nq = nn;
        if (l == c->l_layers - 1 && !dump) {
            if (!final) continue;
            nq = 1;
            for (int b = 0; b < B; b++) { /* compact: row b <- sequence b's last row */
                memmove(x + (size_t)b * D, x + ((size_t)b * nn + nn - 1) * D, (size_t)D * sizeof(float));
                memmove(xn + (size_t)b * D, xn + ((size_t)b * nn + nn - 1) * D, (size_t)D * sizeof(float));
            }
        }
        int first = n - nq; /* position of each sequence's first row from here on */
        /* query_states = apply_rotary_pos_emb(self.q_proj(hidden_states), cos, sin, position_ids) */
        matmul(s->q, a, xn, B * nq, &L->wq, NULL, EPI_STORE);
        for (int b = 0; b < B; b++) {
            float *qb = s->q + (size_t)b * nq * D;
            rope(qb, nq, first, H, hd, s->rope_cos, s->rope_sin);
            /* attn_weights = softmax(q @ k^T / sqrt(hd) + causal_mask, dtype=float32) @ v   (repeat_kv for GQA) */
            attention(s->att + (size_t)b * nq * D, qb, D, s->k + (size_t)b * n * kvd, s->v + (size_t)b * n * kvd, kvd, nq, n, H,
                      KVH, hd, 1, first, s->scores, s->scores_stride, s->kt);
        }
        /* attn_output = self.o_proj(attn_output); hidden_states = residual + hidden_states */
        matmul(x, a, s->att, B * nq, &L->wo, NULL, EPI_ADD);
        /* hidden_states = self.post_attention_layernorm(hidden_states, modality_indicators)
         * hidden_states = residual + self.mlp(hidden_states)  # down(silu(gate(x)) * up(x)) */
        for (int b = 0; b < B; b++)
            rmsnorm_spans(xn + (size_t)b * nq * D, x + (size_t)b * nq * D, L->mlp_norm, spans, n_spans, first, n, D, c->l_eps);
        for (int r0 = 0; r0 < B * nq; r0 += MLP_CHUNK) { /* rows are independent: chunks bound the buffers */
            int nr = B * nq - r0 < MLP_CHUNK ? B * nq - r0 : MLP_CHUNK;
            acts_set(a, xn + (size_t)r0 * D, nr, D);
            matmul_acts(s->hb, F, a, &L->gate, NULL, EPI_STORE);
            matmul_acts(s->hb2, F, a, &L->up, NULL, EPI_STORE);
            silu_mul(s->hb, s->hb2, (size_t)nr * F);
            matmul(x + (size_t)r0 * D, a, s->hb, nr, &L->down, NULL, EPI_ADD);
        }
        snprintf(name, sizeof name, "llm_layer%d", l);
        dump_f32(dump, name, x, -1, 2, (int64_t)n, (int64_t)D);
        if (nq == 1 && nn > 1) nn = 1; /* after the last layer's compaction */
    }
    if (!final) return;
    /* hidden_states = self.norm(hidden_states) */
    if (dump) {
#pragma omp parallel for schedule(static)
        for (int t = 0; t < n; t++) rmsnorm_row(xn + (size_t)t * D, x + (size_t)t * D, w->norm, D, c->l_eps);
        dump_f32(dump, "llm_final_norm", xn, -1, 2, (int64_t)n, (int64_t)D);
        memcpy(final, xn + (size_t)(n - 1) * D, (size_t)D * sizeof(float));
    } else {
        for (int b = 0; b < B; b++) rmsnorm_row(final + (size_t)b * D, x + (size_t)b * D, w->norm, D, c->l_eps);
    }
}

/* ----------------------------------------------------------------------------------------
 * Scoring: the prompt, the spliced sequence, and the level logits.
 *
 * prompt = "USER: How would you rate the {task} of this {input}?\n<|image|>\nASSISTANT: The {task} of the {input} is"
 * input_ids = tokenizer_image_token(prompt)   # chunks tokenized separately, one BOS
 * logits = lm_head(hidden_states)[:, -1, [excellent, good, fair, poor, bad]]
 * score = softmax(logits) @ [5, 4, 3, 2, 1]
 * (--prompt and --levels change the prompt and the words/weights, for sibling scorers.) */

#define DEFAULT_PROMPT "USER: How would you rate the {task} of this {input}?\n<|image|>\nASSISTANT: The {task} of the {input} is"
#define MAX_LEVELS 16

typedef struct {
    int n;                          /* number of level words */
    char words[MAX_LEVELS][32];     /* e.g. excellent good fair poor bad */
    int ids[MAX_LEVELS];            /* their token ids: tokenizer(word).input_ids[1] */
    float weights[MAX_LEVELS];      /* score = sum softmax(logits) * weights */
    float lo, hi;                   /* min and max weight: --scale 0-1 maps [lo, hi] to [0, 1] */
} Levels;

typedef struct {
    int n;                          /* levels */
    float logits[MAX_LEVELS];       /* lm_head rows of the level words at the last position */
    float probs[MAX_LEVELS];        /* softmax over those */
    float score;                    /* probs . weights (1..5 with the default levels) */
} Score;

typedef struct {
    int *ids;               /* (n_ids) prompt ids, TOKEN_IMAGE_MARKER where the image goes */
    int n_ids;
} Prompt;

static void levels_finish(Levels *lv) {
    lv->lo = lv->hi = lv->weights[0];
    for (int i = 1; i < lv->n; i++) {
        lv->lo = lv->weights[i] < lv->lo ? lv->weights[i] : lv->lo;
        lv->hi = lv->weights[i] > lv->hi ? lv->weights[i] : lv->hi;
    }
}

/* excellent good fair poor bad -> 5 4 3 2 1, with the token ids export.py stored */
static void levels_default(const Model *m, Levels *lv) {
    static const char *const words[N_LEVELS] = {"excellent", "good", "fair", "poor", "bad"};
    lv->n = N_LEVELS;
    for (int i = 0; i < N_LEVELS; i++) {
        snprintf(lv->words[i], sizeof lv->words[i], "%s", words[i]);
        lv->ids[i] = m->c.level_ids[i];
        lv->weights[i] = (float)(N_LEVELS - i);
    }
    levels_finish(lv);
}

/* "word=weight,word=weight,...": each word's id is the first token after BOS, as upstream
 * takes tokenizer(word).input_ids[1]. */
static int levels_parse(const Model *m, const char *spec, Levels *lv, char *err, size_t errlen) {
    memset(lv, 0, sizeof *lv);
    const char *p = spec;
    while (*p) {
        const char *comma = strchr(p, ','), *end = comma ? comma : p + strlen(p), *eq = memchr(p, '=', (size_t)(end - p));
        if (!eq || eq == p || eq + 1 >= end) {
            snprintf(err, errlen, "--levels expects word=weight,... (got '%s')", spec);
            return -1;
        }
        if (lv->n == MAX_LEVELS || (size_t)(eq - p) >= sizeof lv->words[0]) {
            snprintf(err, errlen, "--levels: at most %d words of at most 31 bytes", MAX_LEVELS);
            return -1;
        }
        memcpy(lv->words[lv->n], p, (size_t)(eq - p));
        char num[64] = {0}, *tail;
        memcpy(num, eq + 1, (size_t)(end - eq - 1) < sizeof num - 1 ? (size_t)(end - eq - 1) : sizeof num - 1);
        lv->weights[lv->n] = strtof(num, &tail);
        if (*tail || !isfinite(lv->weights[lv->n])) {
            snprintf(err, errlen, "--levels: '%s' is not a number", num);
            return -1;
        }
        int ids[64], n = tokenizer_encode(&m->tok, lv->words[lv->n], strlen(lv->words[lv->n]), 1, ids, 64);
        if (n < 2 || n > 64) {
            snprintf(err, errlen, "--levels: '%s' does not tokenize to a word", lv->words[lv->n]);
            return -1;
        }
        lv->ids[lv->n++] = ids[1];
        p = comma ? comma + 1 : end;
    }
    if (lv->n < 2) {
        snprintf(err, errlen, "--levels needs at least two words");
        return -1;
    }
    levels_finish(lv);
    return 0;
}

/* Tokenize the prompt template with {task} and {input} filled in. */
static int build_prompt(const Model *m, const char *tmpl, const char *task, const char *input, Prompt *p, char *err, size_t errlen) {
    size_t cap = strlen(tmpl) * 4 + 1024, len = 0;
    char *text = xmalloc(cap);
    for (const char *s = tmpl; *s;) {
        const char *sub = !strncmp(s, "{task}", 6) ? task : !strncmp(s, "{input}", 7) ? input : NULL;
        size_t step = sub ? (sub == task ? 6 : 7) : 1, add = sub ? strlen(sub) : 1;
        if (len + add + 1 > cap) break;
        memcpy(text + len, sub ? sub : s, add);
        len += add;
        s += step;
    }
    text[len] = 0;
    int n = tokenizer_max_ids(len);
    p->ids = xmalloc((size_t)n * sizeof(int));
    p->n_ids = tokenize_prompt(&m->tok, text, p->ids, n);
    free(text);
    int markers = 0;
    for (int i = 0; i < p->n_ids; i++) markers += p->ids[i] == TOKEN_IMAGE_MARKER;
    if (p->n_ids < 1 || p->n_ids > n || markers != 1) {
        snprintf(err, errlen, "the prompt must contain <|image|> exactly once");
        free(p->ids);
        p->ids = NULL;
        return -1;
    }
    return 0;
}

/* logit of token id: lm_head row id . h, in f32 */
static float head_logit(const Model *m, RunState *s, int id, const float *h) {
    matrix_row(s->row, &m->l.head, id);
    double sum = 0.0;
    for (int i = 0; i < m->c.l_dim; i++) sum += (double)s->row[i] * h[i];
    return (float)sum;
}

/* Decoder rows for a prompt with n_frames images spliced in. */
static int sequence_length(const Model *m, const Prompt *p, int n_frames) {
    return p->n_ids - 1 + n_frames * (m->c.a_queries + 1);
}

/* Preprocess a decoded image into the model's input (3, S, S):
 *   pad:  expand2square(img, fill) then resize to S x S (Q-Align's score())
 *   else: resize the short side to S (the long side int(S * long / short)) then centre-crop
 *         S x S, as CLIPImageProcessor does without the padding (--no-pad)
 * Pillow's bicubic either way. resized (if not NULL) gets the S x S uint8 image. */
static int preprocess_image(const Model *m, const Image *img, int pad, float *pixels, Image *resized, char *err, size_t errlen) {
    int S = m->c.v_image;
    Image sq = {0};
    if (pad) {
        if (image_preprocess(img, m->c.fill, S, &sq, err, errlen) != 0) return -1;
    } else {
        int w = img->w, h = img->h, shrt = w < h ? w : h, lng = w < h ? h : w;
        int nl = (int)((double)S * lng / shrt), nw = w <= h ? S : nl, nh = w <= h ? nl : S;
        Image rs = {0};
        if (image_resize_bicubic(img, nw, nh, &rs, err, errlen) != 0) return -1;
        if (image_alloc(&sq, S, S, err, errlen) != 0) {
            image_free(&rs);
            return -1;
        }
        int top = (nh - S) / 2, left = (nw - S) / 2;
        for (int y = 0; y < S; y++)
            memcpy(sq.rgb + (size_t)y * S * 3, rs.rgb + ((size_t)(y + top) * nw + left) * 3, (size_t)S * 3);
        image_free(&rs);
    }
    image_normalize(&sq, m->c.mean, m->c.std, pixels);
    if (resized) *resized = sq;
    else image_free(&sq);
    return 0;
}

/* image_features = self.encode_images(images)[f]: vision tower + abstractor for frame f
 * of n_frames; its Q+1 visual rows go to s->visual at row f*(Q+1). */
static void encode_frame(const Model *m, RunState *s, const float *pixels, int f, int n_frames, Dump *dump) {
    const Config *c = &m->c;
    if (f >= s->max_batch * s->n_frames) fatal("internal: frame %d exceeds the run state", f);
    dump_f32(dump, "pixel_values", pixels, f, 4, (int64_t)n_frames, (int64_t)3, (int64_t)c->v_image, (int64_t)c->v_image);
    double t0 = now_seconds();
    vision_forward(m, s, pixels, s->vision_out, dump, f, n_frames);
    double t1 = now_seconds();
    abstractor_forward(m, s, s->vision_out, s->visual + (size_t)f * (c->a_queries + 1) * c->l_dim, dump, f, n_frames);
    s->seconds[1] += t1 - t0;
    s->seconds[2] += now_seconds() - t1;
}

/* The decoder over B copies of the prompt, sequence b with the visual rows of frames
 * [b*n_frames, (b+1)*n_frames) (from encode_frame) in place of <|image|>, then the level
 * logits at each sequence's last position: sc[0..B). B > 1 reads each decoder weight
 * once for B images; the numbers are the same as one at a time. */
static void score_batch(const Model *m, RunState *s, const Prompt *p, const Levels *lv, int B, int n_frames, Score *sc, Dump *dump) {
    const Config *c = &m->c;
    size_t Dl = (size_t)c->l_dim, rows_per_frame = (size_t)c->a_queries + 1;
    double t_dec = now_seconds();

    /* prepare_inputs_labels_for_multimodal: the positions of text rows (embed_tokens(ids))
     * and of the image's visual rows, flattened in frame order, modality 1 */
    int n = sequence_length(m, p, n_frames);
    if (n > s->max_seq || B > s->max_batch) fatal("internal: %d x %d rows exceed the run state", B, n);
    Span spans[8];
    int n_spans = 0, t = 0;
    for (int i = 0; i < p->n_ids; i++) {
        int start = t, vis = p->ids[i] == TOKEN_IMAGE_MARKER;
        t += vis ? n_frames * (int)rows_per_frame : 1;
        if (n_spans && !vis && spans[n_spans - 1].modality == 0) spans[n_spans - 1].end = t;
        else spans[n_spans++] = (Span){start, t, vis};
    }
    /* The text before the image is the same for every image of a run: its keys and values
     * are computed once and reused (exactly: no row depends on later rows). Dumps compute
     * every row, to show every row. */
    int prefix = (!dump && spans[0].modality == 0) ? spans[0].end : 0;
    if (prefix > s->max_prefix) prefix = 0;
    if (prefix && (s->prefix_rows != prefix || memcmp(s->prefix_ids, p->ids, (size_t)prefix * sizeof(int)))) {
        for (int r = 0; r < prefix; r++) matrix_row(s->x + (size_t)r * Dl, &m->l.embed, p->ids[r]);
        decoder_forward(m, s, 1, 0, prefix, spans, 1, 1, NULL, NULL);
        s->prefix_rows = prefix;
        memcpy(s->prefix_ids, p->ids, (size_t)prefix * sizeof(int));
    }
    /* rows [prefix, n) of each sequence into s->x (B, n - prefix, Dl) */
    int nn = n - prefix;
    for (int b = 0; b < B; b++) {
        float *xb = s->x + (size_t)b * nn * Dl;
        int pos = 0;
        for (int i = 0; i < p->n_ids; i++) {
            if (p->ids[i] == TOKEN_IMAGE_MARKER) {
                size_t rows = (size_t)n_frames * rows_per_frame;
                if (pos >= prefix)
                    memcpy(xb + (size_t)(pos - prefix) * Dl, s->visual + (size_t)b * rows * Dl, rows * Dl * sizeof(float));
                pos += (int)rows;
            } else {
                if (pos >= prefix) matrix_row(xb + (size_t)(pos - prefix) * Dl, &m->l.embed, p->ids[i]);
                pos++;
            }
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
    decoder_forward(m, s, B, prefix, n, spans, n_spans, 0, s->final, dump);
    s->seconds[3] += now_seconds() - t_dec;

    /* logits = self.lm_head(hidden_states)[:, -1, level_ids]   # only those rows of lm_head
     * score = torch.softmax(logits, -1) @ weights */
    for (int b = 0; b < B; b++) {
        const float *final = s->final + (size_t)b * Dl;
        sc[b].n = lv->n;
        for (int i = 0; i < lv->n; i++) sc[b].logits[i] = head_logit(m, s, lv->ids[i], final);
        memcpy(sc[b].probs, sc[b].logits, sizeof sc[b].probs);
        softmax_ref(sc[b].probs, lv->n);
        double sum = 0.0;
        for (int i = 0; i < lv->n; i++) sum += (double)sc[b].probs[i] * lv->weights[i];
        sc[b].score = (float)sum;
    }
    if (dump) {
        float *all = xmalloc((size_t)c->l_vocab * sizeof(float));
        for (int v = 0; v < c->l_vocab; v++) all[v] = head_logit(m, s, v, s->final);
        dump_f32(dump, "logits_last", all, -1, 1, (int64_t)c->l_vocab);
        free(all);
        dump_f32(dump, "level_logits", sc[0].logits, -1, 1, (int64_t)lv->n);
        dump_f32(dump, "score", &sc[0].score, -1, 1, (int64_t)1);
    }
}

/* ----------------------------------------------------------------------------------------
 * CLI: options, inputs (files, directories, @lists, videos) through app.c, one result per
 * input on stdout and in the result files, errors as rows, exit status 1 if any failed. */

#ifndef TESTING

static void usage(FILE *f) {
    fprintf(f,
            "usage: qalign [options] MODEL INPUT...\n"
            "Scores the quality or aesthetics of images and videos with a Q-Align / OneAlign model\n"
            "exported by export.py. INPUT: image files (JPEG, PNG, BMP, PPM/PGM), videos (with\n"
            "ffmpeg on PATH), directories (recursive) or @LIST (a file of paths). One line per\n"
            "input: the score (1-5) and the probabilities of excellent good fair poor bad.\n"
            "\n"
            "scoring:\n"
            "  -t, --task quality|aesthetics|aesthetic   what to rate (default quality; 'aesthetic'\n"
            "                          is pyiqa's wording of the aesthetics prompt)\n"
            "  --scale 1-5|0-1         score scale (default 1-5; 0-1 is (score-1)/4)\n"
            "  --video                 all INPUTs are the frames of ONE video, in order (1 per second)\n"
            "  --frames DIR            the images in DIR (natural order) are the frames of one video\n"
            "  --max-frames N          videos: take at most N of the 1-fps frames, evenly spaced\n"
            "                          (deviates from the original loader, which has no limit)\n"
            "  --prompt TEXT           prompt template with <|image|> and optional {task} {input}\n"
            "                          (default: one-align's score() prompt)\n"
            "  --levels W=X,...        level words and weights (default excellent=5,good=4,fair=3,\n"
            "                          poor=2,bad=1), e.g. good=1,average=0.5,poor=0 for Q-Instruct\n"
            "                          (with --no-pad and its prompt); --csv/--jsonl/--report take\n"
            "                          words among excellent good fair poor bad only\n"
            "  --no-pad                no expand2square: resize the short side and centre-crop\n"
            "  --precise               bf16 models: f32 activations (slower; reproduces the fp32\n"
            "                          reference to 1e-4) instead of bf16 ones\n"
            "output:\n"
            "  --json                  one JSON object per line on stdout\n"
            "  --csv FILE, --jsonl FILE  append one row per input (flushed as it comes)\n"
            "  --resume                skip inputs already in the --csv/--jsonl file(s)\n"
            "  --shard I/N             score only the I-th of N deterministic slices of the inputs\n"
            "  --eval LABELS.csv       print SRCC/PLCC/KRCC against path,mos labels\n"
            "  --report FILE.html      a self-contained gallery sorted by score\n"
            "  --dump DIR              write every intermediate array as DIR/<name>.npy (one input)\n"
            "  --timings               seconds per stage on stderr, after each input (cumulative)\n"
            "                          and at the end\n"
            "  -q, --quiet             no progress line\n"
            "  --threads N             OpenMP threads (default: all cores)\n"
            "  --batch N               images per decoder pass (default 8): each decoder weight is\n"
            "                          read once per batch; a killed run loses at most one batch\n"
            "  --no-mmap               read the model into this process's memory (2 MB pages where\n"
            "                          the kernel allows) instead of mapping the file: faster per\n"
            "                          image where page faults are slow (VMs), for long runs; the\n"
            "                          copy is not shared with other processes\n"
            "  -h, --help              this help\n"
            "other commands:\n"
            "  qalign --info MODEL                     the model's header and the compiled kernels\n"
            "  qalign --tokenize TEXT MODEL            TEXT's token ids (with BOS)\n"
            "  qalign --decode FILE OUT.ppm            decode an image to 8-bit RGB (binary PPM)\n"
            "  qalign --preprocess-only [--size N] FILE OUT.ppm\n"
            "                                          pad to square and resize as the model sees it\n");
}

typedef struct {
    const char *task;       /* "quality", "aesthetics" or "aesthetic" */
    const char *prompt;     /* template (--prompt) */
    const char *levels;     /* --levels spec, or NULL */
    int pad;                /* expand2square (not --no-pad) */
    int video;              /* --video: inputs are frames of one video */
    const char *frames_dir; /* --frames DIR */
    int64_t max_frames;     /* --max-frames, 0 = no limit */
    int json;               /* JSON lines on stdout */
    int scale01;            /* scores on 0-1 */
    int quiet;              /* -q */
    int precise;            /* --precise */
    int no_mmap;            /* --no-mmap */
    int timings;            /* --timings */
    int threads;            /* --threads, 0 = default */
    const char *dump_dir;   /* --dump */
    SinkOptions sink;       /* --csv --jsonl --report --eval --resume */
    const char *shard;      /* --shard I/N */
    int batch;              /* --batch: images per decoder pass */
} Options;

#define MAX_BATCH 64

typedef struct {
    Model m;
    Options o;
    Levels lv;
    Prompt prompt_image, prompt_video;
    RunState s;             /* sized for s.n_frames frames (grown when a longer video comes) */
    int have_state;
    Progress pg;
    Sink *sink;
    Dump dump, *dp;
    int failures;           /* inputs that could not be scored */
    char scale_name[64];    /* "1-5", "0-1", or the range of the --levels weights */
    int pending;            /* images encoded, waiting for the decoder (< o.batch) */
    int n_recorded;         /* results recorded (for --timings) */
    const char *pending_path[MAX_BATCH]; /* their paths */
    Image pending_thumb[MAX_BATCH];      /* their report thumbnails (if a report is written) */
} App;

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

static float scaled(const App *app, float score) {
    const Levels *lv = &app->lv;
    return app->o.scale01 && lv->hi > lv->lo ? (score - lv->lo) / (lv->hi - lv->lo) : score;
}

static void print_result(App *app, const char *file, const char *kind, int n_frames, const Score *sc) {
    float score = scaled(app, sc->score);
    progress_clear(&app->pg);
    if (app->o.json) {
        printf("{\"file\": ");
        json_string(stdout, file);
        printf(", \"task\": \"%s\"", app->o.task);
        if (strcmp(kind, "image")) printf(", \"kind\": \"%s\", \"frames\": %d", kind, n_frames);
        printf(", \"score\": %.6f, \"scale\": \"%s\", \"probs\": [", score, app->scale_name);
        for (int i = 0; i < sc->n; i++) printf("%s%.6f", i ? ", " : "", sc->probs[i]);
        printf("], \"logits\": [");
        for (int i = 0; i < sc->n; i++) printf("%s%.6f", i ? ", " : "", sc->logits[i]);
        printf("]");
        if (app->o.levels) {
            printf(", \"levels\": [");
            for (int i = 0; i < sc->n; i++) {
                printf(i ? ", " : "");
                json_string(stdout, app->lv.words[i]);
            }
            printf("]");
        }
        printf("}\n");
    } else {
        printf("%.4f ", score);
        for (int i = 0; i < sc->n; i++) printf(" %s=%.4f", app->lv.words[i], sc->probs[i]);
        printf("  %s\n", file);
    }
    fflush(stdout);
}

static void report_error(App *app, const char *file, const char *err) {
    progress_note(&app->pg, "qalign: error: %s: %s", file, err);
    if (app->o.json) {
        progress_clear(&app->pg);
        printf("{\"file\": ");
        json_string(stdout, file);
        printf(", \"error\": ");
        json_string(stdout, err);
        printf("}\n");
        fflush(stdout);
    }
}

/* Record a result (or an error) in the result files / report / eval and the counters. */
static void record(App *app, const char *path, const char *kind, int frames, const Score *sc, const char *error, const Image *thumb) {
    ResultRow row = {.path = path, .task = app->o.task, .kind = kind, .frames = error ? 0 : frames,
                     .scale = app->scale_name, .error = error};
    if (!error) {
        row.score = scaled(app, sc->score);
        /* the columns are p_excellent..p_bad: each level's probability goes to its word's
         * column (main() refuses result files for --levels words without one) */
        for (int i = 0; i < sc->n; i++)
            for (int k = 0; k < APP_LEVELS; k++)
                if (!strcmp(app->lv.words[i], APP_LEVEL_NAMES[k])) row.probs[k] = sc->probs[i];
    } else {
        app->failures++;
    }
    char err[512];
    if (app->sink && sink_add(app->sink, &row, thumb, err, sizeof err) != 0) fatal("%s", err);
    progress_update(&app->pg, error == NULL);
    if (app->o.timings && app->have_state) { /* cumulative, so that any stretch of a run can be timed */
        const double *t = app->s.seconds;
        progress_note(&app->pg, "qalign: timings after %d inputs: preprocess %.3f s, vision %.3f s, abstractor %.3f s, "
                      "decoder %.3f s", ++app->n_recorded, t[0], t[1], t[2], t[3]);
    }
}

/* The run state fits `batch` images or one video of n_frames frames (a longer video or
 * larger batch reallocates it; the prefix cache survives only while the state does). */
static void ensure_state(App *app, int batch, int n_frames) {
    RunState *s = &app->s;
    if (app->have_state && s->max_batch >= batch && s->n_frames >= n_frames) return;
    if (app->have_state) {
        batch = batch > s->max_batch ? batch : s->max_batch;
        n_frames = n_frames > s->n_frames ? n_frames : s->n_frames;
        run_state_free(s);
    }
    int seq = sequence_length(&app->m, &app->prompt_image, 1), seqv = sequence_length(&app->m, &app->prompt_video, n_frames);
    int prefix = app->prompt_image.n_ids > app->prompt_video.n_ids ? app->prompt_image.n_ids : app->prompt_video.n_ids;
    /* rows: a batch of images, or one video */
    int max_seq = seq > seqv ? seq : seqv, rows_batch = batch * seq;
    if (rows_batch > max_seq) { /* size per sequence so that batch * max_seq covers both */
        max_seq = (rows_batch + batch - 1) / batch > max_seq ? (rows_batch + batch - 1) / batch : max_seq;
    }
    run_state_alloc(s, &app->m.c, batch, n_frames, max_seq, prefix, app->o.precise);
    app->have_state = 1;
}

static void dump_resized(App *app, const Image *resized, int f, int n_frames) {
    int64_t shape[4] = {n_frames, app->m.c.v_image, app->m.c.v_image, 3};
    npy_write(app->dp, "resized_rgb", "|u1", resized->rgb, 1, shape, 4, f);
}

/* Preprocess + encode one decoded frame as frame f of n. */
static int encode_image(App *app, const Image *img, int f, int n, char *err, size_t errlen) {
    Image resized = {0};
    double t0 = now_seconds();
    if (preprocess_image(&app->m, img, app->o.pad, app->s.pixels, app->dp ? &resized : NULL, err, errlen) != 0) return -1;
    app->s.seconds[0] += now_seconds() - t0;
    if (app->dp) {
        dump_resized(app, &resized, f, n);
        image_free(&resized);
    }
    encode_frame(&app->m, &app->s, app->s.pixels, f, n, app->dp);
    return 0;
}

/* Score the images encoded so far (visual slots 0..n-1) as one decoder batch, then print
 * and record them in order. */
static void flush_images(App *app) {
    int n = app->pending;
    if (n == 0) return;
    Score sc[MAX_BATCH];
    score_batch(&app->m, &app->s, &app->prompt_image, &app->lv, n, 1, sc, app->dp);
    for (int b = 0; b < n; b++) {
        print_result(app, app->pending_path[b], "image", 1, &sc[b]);
        record(app, app->pending_path[b], "image", 1, &sc[b], NULL, app->pending_thumb[b].rgb ? &app->pending_thumb[b] : NULL);
        image_free(&app->pending_thumb[b]);
    }
    app->pending = 0;
}

/* Decode, preprocess and encode one image into the next visual slot; the decoder runs
 * when the batch is full (or at the end, or before a video). */
static void score_image(App *app, const char *path) {
    char err[512];
    Image img = {0};
    double t0 = now_seconds();
    if (image_load(path, &img, err, sizeof err) != 0) {
        flush_images(app); /* results stay in input order */
        report_error(app, path, err);
        record(app, path, "image", 0, NULL, err, NULL);
        return;
    }
    app->s.seconds[0] += now_seconds() - t0;
    ensure_state(app, app->o.batch, 1);
    int b = app->pending;
    if (encode_image(app, &img, b, 1, err, sizeof err) != 0) {
        flush_images(app);
        report_error(app, path, err);
        record(app, path, "image", 0, NULL, err, NULL);
        image_free(&img);
        return;
    }
    app->pending_path[b] = path;
    app->pending_thumb[b] = (Image){0};
    if (app->sink) thumb_downscale(&img, 160, &app->pending_thumb[b], err, sizeof err); /* for the report */
    image_free(&img);
    if (++app->pending == app->o.batch) flush_images(app);
}

/* Frames given as image files (--video FRAME..., --frames DIR): one video. */
static void score_frame_files(App *app, const char *name, char **files, int n) {
    char err[512], msg[1024];
    ensure_state(app, 1, n);
    Image first = {0};
    for (int f = 0; f < n; f++) {
        Image img = {0};
        double t0 = now_seconds();
        int rc = image_load(files[f], &img, err, sizeof err);
        app->s.seconds[0] += now_seconds() - t0;
        if (rc == 0) rc = encode_image(app, &img, f, n, err, sizeof err);
        if (rc != 0) {
            snprintf(msg, sizeof msg, "frame %s: %s", files[f], err);
            report_error(app, name, msg);
            record(app, name, "frames", 0, NULL, msg, NULL);
            image_free(&img);
            image_free(&first);
            return;
        }
        if (f == 0) first = img;
        else image_free(&img);
    }
    Score sc;
    score_batch(&app->m, &app->s, &app->prompt_video, &app->lv, 1, n, &sc, app->dp);
    print_result(app, name, "frames", n, &sc);
    record(app, name, "frames", n, &sc, NULL, &first);
    image_free(&first);
}

typedef struct {
    App *app;
    int64_t n;              /* frames in the plan */
    Image thumb;            /* a copy of frame 0 for the report */
} VideoCtx;

static int video_frame(void *user, int64_t k, int64_t index, const Image *frame, char *err, size_t errlen) {
    VideoCtx *v = user;
    (void)index;
    if (k == 0 && v->app->sink) image_from_rgb(frame->rgb, frame->w, frame->h, &v->thumb, err, errlen);
    return encode_image(v->app, frame, (int)k, (int)v->n, err, errlen);
}

static void score_video(App *app, const char *path, int have_ffmpeg, const char *why) {
    char err[512], msg[1024];
    if (!have_ffmpeg) {
        snprintf(msg, sizeof msg, "%s; %s", why, video_unavailable_hint());
        report_error(app, path, msg);
        record(app, path, "video", 0, NULL, msg, NULL);
        return;
    }
    VideoPlan plan = {0};
    if (video_plan(path, app->o.max_frames, &plan, err, sizeof err) != 0 || plan.n == 0 || plan.n > 100000) {
        if (plan.n == 0 && !err[0]) snprintf(err, sizeof err, "shorter than one second: the original loader takes no frame");
        if (plan.n > 100000) snprintf(err, sizeof err, "%lld frames is more than qalign takes (use --max-frames)", (long long)plan.n);
        report_error(app, path, err);
        record(app, path, "video", 0, NULL, err, NULL);
        video_plan_free(&plan);
        return;
    }
    ensure_state(app, 1, (int)plan.n);
    int rows = sequence_length(&app->m, &app->prompt_video, (int)plan.n);
    progress_note(&app->pg, "qalign: %s: %lld frames (%.3f fps, %lld frames in the file)%s -> %d decoder rows; "
                  "buffers %.0f MB", path, (long long)plan.n, plan.info.fps, (long long)plan.info.frame_count,
                  plan.subsampled ? ", subsampled by --max-frames (deviates from the original)" : "", rows,
                  app->s.bytes / 1e6);
    VideoCtx ctx = {app, plan.n, {0}};
    if (video_read(&plan, video_frame, &ctx, err, sizeof err) != 0) {
        report_error(app, path, err);
        record(app, path, "video", 0, NULL, err, NULL);
    } else {
        Score sc;
        score_batch(&app->m, &app->s, &app->prompt_video, &app->lv, 1, (int)plan.n, &sc, app->dp);
        print_result(app, path, "video", (int)plan.n, &sc);
        record(app, path, "video", (int)plan.n, &sc, NULL, ctx.thumb.rgb ? &ctx.thumb : NULL);
    }
    image_free(&ctx.thumb);
    video_plan_free(&plan);
}

static int parse_int(const char *s, const char *flag, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) fatal("%s expects an integer in [%ld, %ld], got '%s'", flag, lo, hi, s);
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
    if (image_load(in, &img, err, sizeof err) != 0) fatal("%s: %s", in, err);
    Image *w = &img;
    if (preprocess) {
        static const uint8_t fill[3] = {122, 116, 104};
        if (image_preprocess(&img, fill, size, &res, err, sizeof err) != 0) fatal("%s: %s", in, err);
        w = &res;
    }
    if (image_write_ppm(out, w, err, sizeof err) != 0) fatal("%s: %s", out, err);
    image_free(&img);
    image_free(&res);
    return 0;
}

static void cmd_info(const Model *m) {
    const Config *c = &m->c;
    printf("file        %s (%zu bytes, %d tensors, format version %d)\n", m->path, m->file_size, m->n_tensors, QALIGN_VERSION);
    printf("weights     %s\n", DT_NAMES[c->wtype]);
    printf("kernels     %s\n", kernel_names());
    printf("vision      dim %d, layers %d, heads %d, mlp %d, image %d, patch %d, tokens %d, eps %g\n", c->v_dim,
           c->v_layers, c->v_heads, c->v_mlp, c->v_image, c->v_patch, c->v_tokens, c->v_eps);
    printf("abstractor  layers %d, heads %d, queries %d, mlp %d, eps %g, ffn eps %g\n", c->a_layers, c->a_heads,
           c->a_queries, c->a_mlp, c->a_eps, c->a_ffn_eps);
    printf("decoder     dim %d, layers %d, heads %d, kv heads %d, mlp %d, vocab %d, eps %g, rope theta %g\n", c->l_dim,
           c->l_layers, c->l_heads, c->l_kv_heads, c->l_mlp, c->l_vocab, c->l_eps, c->l_rope_theta);
    printf("tokenizer   bos %d, eos %d, unk %d, dummy prefix %d\n", c->bos_id, c->eos_id, c->unk_id, c->dummy_prefix);
    printf("levels      excellent=%d good=%d fair=%d poor=%d bad=%d\n", c->level_ids[0], c->level_ids[1], c->level_ids[2],
           c->level_ids[3], c->level_ids[4]);
    printf("preprocess  fill %d,%d,%d mean %.8g,%.8g,%.8g std %.8g,%.8g,%.8g\n", c->fill[0], c->fill[1], c->fill[2],
           c->mean[0], c->mean[1], c->mean[2], c->std[0], c->std[1], c->std[2]);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--decode") == 0) return cmd_decode(argc - 2, argv + 2, 0);
    if (argc > 1 && strcmp(argv[1], "--preprocess-only") == 0) return cmd_decode(argc - 2, argv + 2, 1);

    static App app;
    Options *o = &app.o;
    *o = (Options){.task = "quality", .prompt = DEFAULT_PROMPT, .pad = 1, .batch = 8};
    const char *tokenize_text = NULL, *model_path = NULL;
    int info = 0, only_positional = 0, n_inputs = 0;
    char **inputs = xmalloc((size_t)argc * sizeof(char *));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_positional || a[0] != '-' || !a[1]) {
            if (!model_path) model_path = a;
            else inputs[n_inputs++] = argv[i];
            continue;
        }
#define VALUE() (i + 1 < argc ? argv[++i] : (fatal("%s needs a value (try --help)", a), ""))
        if (!strcmp(a, "--")) only_positional = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--task")) {
            o->task = VALUE();
            if (strcmp(o->task, "quality") && strcmp(o->task, "aesthetics") && strcmp(o->task, "aesthetic"))
                fatal("--task must be quality, aesthetics or aesthetic, got '%s'", o->task);
        } else if (!strcmp(a, "--scale")) {
            const char *v = VALUE();
            if (!strcmp(v, "0-1")) o->scale01 = 1;
            else if (strcmp(v, "1-5")) fatal("--scale must be 1-5 or 0-1, got '%s'", v);
        }
        else if (!strcmp(a, "--video")) o->video = 1;
        else if (!strcmp(a, "--frames")) o->frames_dir = VALUE();
        else if (!strcmp(a, "--max-frames")) o->max_frames = parse_int(VALUE(), "--max-frames", 1, 100000);
        else if (!strcmp(a, "--prompt")) o->prompt = VALUE();
        else if (!strcmp(a, "--levels")) o->levels = VALUE();
        else if (!strcmp(a, "--no-pad")) o->pad = 0;
        else if (!strcmp(a, "--precise")) o->precise = 1;
        else if (!strcmp(a, "--json")) o->json = 1;
        else if (!strcmp(a, "--csv")) o->sink.csv_path = VALUE();
        else if (!strcmp(a, "--jsonl")) o->sink.jsonl_path = VALUE();
        else if (!strcmp(a, "--report")) o->sink.report_path = VALUE();
        else if (!strcmp(a, "--eval")) o->sink.labels_path = VALUE();
        else if (!strcmp(a, "--resume")) o->sink.resume = 1;
        else if (!strcmp(a, "--shard")) o->shard = VALUE();
        else if (!strcmp(a, "--batch")) o->batch = parse_int(VALUE(), "--batch", 1, MAX_BATCH);
        else if (!strcmp(a, "--dump")) o->dump_dir = VALUE();
        else if (!strcmp(a, "--timings")) o->timings = 1;
        else if (!strcmp(a, "--no-mmap")) o->no_mmap = 1;
        else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) o->quiet = 1;
        else if (!strcmp(a, "--threads")) o->threads = parse_int(VALUE(), "--threads", 1, 4096);
        else if (!strcmp(a, "--tokenize")) tokenize_text = VALUE();
        else if (!strcmp(a, "--info")) info = 1;
        else if (!strcmp(a, "--decode") || !strcmp(a, "--preprocess-only"))
            fatal("%s must be the first argument: qalign %s FILE OUT.ppm", a, a);
        else fatal("unknown option '%s' (try --help)", a);
#undef VALUE
    }
    if (!model_path) {
        usage(stderr);
        return 2;
    }
#ifdef _OPENMP
    if (o->threads) omp_set_num_threads(o->threads);
#else
    if (o->threads > 1) fprintf(stderr, "qalign: warning: built without OpenMP, --threads %d ignored\n", o->threads);
#endif
    if (o->sink.resume && !o->sink.csv_path && !o->sink.jsonl_path) fatal("--resume needs --csv or --jsonl");
    int shard_i = 0, shard_n = 0;
    char err[1024];
    if (o->shard && shard_parse(o->shard, &shard_i, &shard_n, err, sizeof err) != 0) fatal("--shard: %s", err);

    Model *m = &app.m;
    model_load(m, model_path, o->no_mmap);
    if (info) {
        cmd_info(m);
        free(inputs);
        return 0;
    }
    if (tokenize_text) {
        size_t len = strlen(tokenize_text);
        int cap = tokenizer_max_ids(len), *ids = xmalloc((size_t)cap * sizeof(int));
        int n = tokenizer_encode(&m->tok, tokenize_text, len, 1, ids, cap);
        if (n < 0 || n > cap) fatal("tokenizing failed");
        for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
        free(ids);
        free(inputs);
        return 0;
    }
    if (n_inputs == 0 && !o->frames_dir) fatal("no INPUT given (try --help)");
    if (o->levels) {
        if (levels_parse(m, o->levels, &app.lv, err, sizeof err) != 0) fatal("%s", err);
    } else {
        levels_default(m, &app.lv);
    }
    if (o->scale01) snprintf(app.scale_name, sizeof app.scale_name, "0-1");
    else snprintf(app.scale_name, sizeof app.scale_name, "%g-%g", app.lv.lo, app.lv.hi);
    for (int i = 0; i < app.lv.n && (o->sink.csv_path || o->sink.jsonl_path || o->sink.report_path); i++) {
        int k = 0;
        while (k < APP_LEVELS && strcmp(app.lv.words[i], APP_LEVEL_NAMES[k])) k++;
        if (k == APP_LEVELS)
            fatal("--levels: the --csv/--jsonl/--report results have probability columns for excellent good fair "
                  "poor bad only, not '%s' (use --json for other words)", app.lv.words[i]);
    }
    if (build_prompt(m, o->prompt, o->task, "image", &app.prompt_image, err, sizeof err) != 0 ||
        build_prompt(m, o->prompt, o->task, "video", &app.prompt_video, err, sizeof err) != 0)
        fatal("--prompt: %s", err);

    /* what to score: frames of one video, or a list of images/videos */
    ItemList items = {0};
    char **frames = NULL;
    int n_frames = 0;
    const char *frames_name = NULL;
    if (o->video || o->frames_dir) {
        if (o->frames_dir) {
            const char *dir = o->frames_dir;
            if (inputs_expand(&dir, 1, &(ExpandOptions){.natural_sort = 1}, &items, err, sizeof err) != 0) fatal("%s", err);
            frames_name = o->frames_dir;
        } else {
            if (n_inputs == 0) fatal("--video needs the frames as INPUTs");
            frames_name = inputs[0];
        }
        frames = xmalloc((items.n + (size_t)n_inputs + 1) * sizeof(char *));
        if (o->video) /* keep the command-line order: these are frames in time order */
            for (int i = 0; i < n_inputs; i++) frames[n_frames++] = inputs[i];
        else
            for (size_t i = 0; i < items.n; i++)
                if (items.items[i].kind == ITEM_IMAGE) frames[n_frames++] = items.items[i].path;
        if (n_frames == 0) fatal("%s: no frames", frames_name);
    } else {
        if (inputs_expand((const char *const *)inputs, (size_t)n_inputs, NULL, &items, err, sizeof err) != 0) fatal("%s", err);
        if (o->shard) items_shard(&items, shard_i, shard_n);
    }
    size_t n_items = frames ? 1 : items.n;
    if (o->dump_dir && n_items != 1) fatal("--dump takes one input (or the frames of one video)");
    if (o->dump_dir) { /* create DIR (one level) now, rather than fail after scoring */
        struct stat st;
        if (mkdir(o->dump_dir, 0777) != 0 && errno != EEXIST) fatal("--dump %s: %s", o->dump_dir, strerror(errno));
        if (stat(o->dump_dir, &st) != 0 || !S_ISDIR(st.st_mode)) fatal("--dump %s: not a directory", o->dump_dir);
    }
    if (o->dump_dir) o->batch = 1;
    app.dump = (Dump){.dir = o->dump_dir};
    app.dp = o->dump_dir ? &app.dump : NULL;

    o->sink.task = o->task;
    o->sink.scale = app.scale_name;
    if (o->sink.csv_path || o->sink.jsonl_path || o->sink.report_path || o->sink.labels_path) {
        app.sink = sink_open(&o->sink, err, sizeof err);
        if (!app.sink) fatal("%s", err);
        if (sink_previous(app.sink)) fprintf(stderr, "qalign: resuming: %zu inputs already done\n", sink_previous(app.sink));
    }
    char why[512] = "";
    int have_ffmpeg = video_available(why, sizeof why);
    progress_start(&app.pg, n_items, o->quiet);

    if (frames) {
        if (app.sink && sink_done(app.sink, frames_name)) progress_skip(&app.pg); /* --resume: done */
        else score_frame_files(&app, frames_name, frames, n_frames);
    } else {
        for (size_t i = 0; i < items.n; i++) {
            const Item *it = &items.items[i];
            if (app.sink && sink_done(app.sink, it->path)) {
                progress_skip(&app.pg);
                continue;
            }
            progress_begin_item(&app.pg, it->path);
            if (it->kind == ITEM_ERROR) {
                flush_images(&app);
                report_error(&app, it->path, it->error);
                record(&app, it->path, NULL, 0, NULL, it->error, NULL);
            } else if (it->kind == ITEM_VIDEO) {
                flush_images(&app); /* the video needs the visual slots */
                score_video(&app, it->path, have_ffmpeg, why);
            } else {
                score_image(&app, it->path);
            }
        }
    }
    flush_images(&app);
    progress_finish(&app.pg);
    if (app.dp && app.dump.failed) fatal("writing the dump to %s failed", o->dump_dir);
    if (app.sink) {
        if (sink_finish(app.sink, stderr, err, sizeof err) != 0) fatal("%s", err);
        sink_free(app.sink);
    }
    if (o->timings && app.have_state) {
        double *t = app.s.seconds, total = t[0] + t[1] + t[2] + t[3];
        fprintf(stderr, "qalign: timings (%d threads, %s): preprocess %.3f s, vision %.3f s, abstractor %.3f s, "
                "decoder %.3f s, total %.3f s\n", app.s.n_threads, kernel_names(), t[0], t[1], t[2], t[3], total);
    }
    free(inputs);
    free(frames);
    itemlist_free(&items);
    /* the model and run state (in the static App) are released by the exit */
    return app.failures ? 1 : 0;
}
#endif
