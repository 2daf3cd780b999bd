/* qalign.h - Q-Align / OneAlign scoring as a C library.
 *
 * Everything the command line, the server, the examples and the tests need from the
 * model is here. A model file (written by export.py) is opened once and is read-only
 * afterwards; scoring happens in a context, which owns its buffers. Several contexts
 * may use one model at the same time, each from its own thread.
 *
 *     qalign_model *m;
 *     qalign_ctx *c;
 *     char err[QALIGN_ERR_LEN];
 *     if (qalign_open("model.qalign", NULL, &m, err, sizeof err) ||
 *         qalign_ctx_new(m, NULL, &c, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
 *     qalign_image img = {rgb, width, height};      // 8-bit RGB, e.g. from image_load()
 *     qalign_result r;
 *     if (qalign_score_images(c, &img, 1, &r, err, sizeof err) == QALIGN_OK && r.status == QALIGN_OK)
 *         printf("%.4f\n", r.score);                 // 1..5 with the default levels
 *     qalign_ctx_free(c);
 *     qalign_close(m);
 *
 * Conventions: functions that can fail return a qalign_status (0 = QALIGN_OK) and write a
 * one-line reason, without a trailing newline, to err[0..errlen) (err may be NULL). No
 * function prints, exits or aborts on bad input; a condition that can only come from a
 * bug in qalign is reported on stderr and aborts ("qalign: internal error ...").
 * Strings passed in are copied; pointers returned stay valid as long as their object.
 * A NULL where a model, a context, an image array or an output is expected is refused with
 * QALIGN_ERR_ARG and a message naming it; functions without a status ignore a NULL (those
 * returning a number return 0, qalign_describe and qalign_ctx_describe zero their output).
 *
 * Threads: each call of a context runs on the calling thread plus the OpenMP threads of
 * that context (qalign_ctx_options.threads). Results do not depend on the thread count,
 * on the batch size, or on which other images share a batch: the same image gives the
 * same bits.
 */
#ifndef QALIGN_H
#define QALIGN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QALIGN_API_VERSION 2  /* 2: presets, several images per prompt, per-frame results,
                                 Compare2Score's anchors (qalign_result grew) */
#define QALIGN_MAX_LEVELS 16   /* levels per context */
#define QALIGN_MAX_SYNONYMS 8  /* words averaged into one level (Q-Instruct's boost: 3) */
#define QALIGN_MAX_MARKERS 8   /* <|image|> markers in one prompt */
#define QALIGN_MAX_ANCHORS 16  /* anchor images of a comparison scorer (Compare2Score: 5) */
#define QALIGN_MAX_BATCH 64    /* images per decoder pass */
#define QALIGN_MAX_FRAMES 100000 /* frames per video */
#define QALIGN_ERR_LEN 512     /* an err buffer of this size never truncates a message */

typedef enum {
    QALIGN_OK = 0,
    QALIGN_ERR_IO = 1,      /* the model file cannot be opened, read or mapped */
    QALIGN_ERR_FORMAT = 2,  /* not a model file of this version, or a damaged one: re-run export.py */
    QALIGN_ERR_ARG = 3,     /* an invalid option or argument; the message names it */
    QALIGN_ERR_NOMEM = 4,   /* out of memory */
    QALIGN_ERR_INPUT = 5,   /* an image that cannot be scored (the message says why) */
    QALIGN_ERR_NUMERIC = 6, /* the model produced a value that is not finite */
    QALIGN_ERR_STATE = 7    /* a call out of order, e.g. a video frame after all were given */
} qalign_status;

/* "ok", "i/o error", ... */
const char *qalign_status_name(int status);

/* ---- the model ----------------------------------------------------------------------- */

typedef struct qalign_model qalign_model;

typedef struct {
    int no_mmap;            /* 1: read the file into this process's memory (2 MB pages where
                               the kernel allows) instead of mapping it; see README */
    int no_prefetch;        /* 1: do not make a mapped file's decoder weights resident on a
                               helper thread while the first image's vision tower runs (for
                               a program that opens a model only to look at it) */
    const char *kernels;    /* NULL or "": QALIGN_KERNELS if set, else the best kernel family
                               this CPU allows; else a family's name ("scalar", "avx2",
                               "avx512-bf16", "amx", "neon", ...: see qalign_kernels_why).
                               One family per process: the first qalign_open decides, a later
                               one asking for another fails (QALIGN_ERR_ARG), as does a family
                               the CPU lacks */
} qalign_open_options;

/* Open a model file: map it (or read it), check the header and walk the tensor table to
 * the end of the file. opt may be NULL (defaults). */
int qalign_open(const char *path, const qalign_open_options *opt, qalign_model **out, char *err, size_t errlen);
/* Release the model. Every context made from it must be freed first. NULL is allowed. */
void qalign_close(qalign_model *m);

typedef struct {
    const char *path;       /* as given to qalign_open */
    uint64_t file_bytes;
    int format_version;
    int n_tensors;
    const char *weight_type; /* "f32" "bf16" "q8_0" "q4_1" "q8_256" "q4_256" */
    char model_id[17];      /* 16 hex digits: a hash of the header, the tensor table and
                               samples of each tensor's data (its first, middle and last 4 KB),
                               which identifies what produced a result (result files record it) */
    /* vision tower */
    int v_dim, v_layers, v_heads, v_mlp, v_image, v_patch, v_tokens;
    float v_eps;
    /* visual abstractor */
    int a_layers, a_heads, a_queries, a_mlp;
    float a_eps, a_ffn_eps;
    /* decoder */
    int l_dim, l_layers, l_heads, l_kv_heads, l_mlp, l_vocab;
    float l_eps, l_rope_theta;
    /* tokenizer and the default levels' token ids (excellent good fair poor bad) */
    int bos_id, eos_id, unk_id, dummy_prefix;
    int level_ids[5];
    /* preprocessing */
    uint8_t fill[3];
    float mean[3], std[3];
    int l_max_pos;          /* the decoder's context (max_position_embeddings): the most tokens
                               qalign_ask_options.max_tokens may ask for */
    /* the model family: "mplug-owl2" (Q-Align, OneAlign, ...) or "qwen3.5" (Q-ReAlign); for
       a Qwen3.5 model the v_ and l_ fields are its vision tower's and decoder's, a_ are 0 */
    const char *family;
    int l_linear_layers;    /* Qwen3.5: Gated DeltaNet layers among l_layers (the rest attention) */
} qalign_info;

void qalign_describe(const qalign_model *m, qalign_info *out);

/* Check every tensor (and the header and table) against the checksums export.py wrote:
 * QALIGN_OK, or QALIGN_ERR_FORMAT naming the first damaged tensor (or saying that the file
 * has no checksums: exported before they were added). Reads the whole file (a few seconds
 * per GB); opening a model never does this. qalign_checksums: how many tensors have a
 * checksum (0: none). */
int qalign_verify(const qalign_model *m, char *err, size_t errlen);
int qalign_checksums(const qalign_model *m);

/* The kernels compiled into this library, e.g. "scalar avx512 avx512-vnni avx512-bf16 openmp". */
const char *qalign_kernels(void);
/* The kernel family this process runs and why, e.g. "amx: the best this CPU allows (this CPU:
 * avx2 fma ... amx_int8)" or "avx2: QALIGN_KERNELS (...)". Chosen at the first qalign_open (or
 * kernel use); builds without run-time dispatch (make NATIVE=1) say so. */
const char *qalign_kernels_why(void);

/* Token ids of text (with a leading BOS if add_bos), as sentencepiece encodes it. Writes at
 * most cap ids and returns how many the text needs (retry with a larger buffer if that is
 * more than cap), or -1 on invalid arguments. */
int qalign_tokenize(const qalign_model *m, const char *text, int add_bos, int *ids, int cap);

/* ---- a scoring context ---------------------------------------------------------------- */

typedef struct qalign_ctx qalign_ctx;

typedef struct {
    const uint8_t *rgb;     /* height rows of width pixels, 3 bytes each (R, G, B), no padding */
    int width, height;
} qalign_image;

typedef struct {
    int threads;            /* OpenMP threads for this context's calls (0: all cores) */
    int batch;              /* images per decoder pass, 1..QALIGN_MAX_BATCH (0: 8). Each decoder
                               weight is read once per pass instead of once per image */
    const char *task;       /* "quality" (default), "aesthetics", or "aesthetic" (pyiqa's word) */
    const char *prompt;     /* template with "<|image|>" (once per image of the prompt) and
                               optional {task} and {input}, or the name of one of
                               qalign_prompts() (NULL: the preset's) */
    const char *levels;     /* "word=weight,...", a level may average the logits of several
                               words: "good|high|fine=1,..." (NULL: the preset's) */
    int no_pad;             /* 1: resize the short side and centre-crop (CLIPImageProcessor)
                               instead of padding to a square first; -1: pad even if the
                               preset does not; 0: as the preset does */
    int precise;            /* 1: bf16 models multiply f32 activations (slower, the fp32
                               reference to ~1e-4) instead of bf16 ones */
    /* since API version 2 */
    const char *preset;     /* one of qalign_presets() (NULL: "one-align"): prompt, levels,
                               padding and temperature as that scorer has them; the fields
                               above override them */
    float temperature;      /* the level logits are divided by this before the softmax
                               (0: the preset's; Compare2Score: 100); negative, infinite or
                               NaN: QALIGN_ERR_ARG */
    const qalign_image *anchors; /* a comparison scorer's anchor images, in order (Compare2Score:
                               the 5 of VQA-CityU/Anchor_images). With anchors, the prompt has
                               two <|image|>: each image is compared with every anchor (anchor
                               first) and its score is the maximum-likelihood fit of those
                               comparisons, 0..100. Encoded by qalign_ctx_new: the images need
                               not outlive the call */
    int n_anchors;
} qalign_ctx_options;

#define QALIGN_DEFAULT_PROMPT \
    "USER: How would you rate the {task} of this {input}?\n<|image|>\nASSISTANT: The {task} of the {input} is"

/* The scorers of the Q-Align family, as their original code has them (README "Models"):
 *   one-align         q-future/one-align's score(): levels excellent..bad weighted 5..1
 *   q-align           Q-Align's scorer.py (its single-task checkpoints): the same, weighted 1..0
 *   deqa              DeQA-Score's scorer.py: one-align's quality prompt and weights
 *   q-instruct        Q-Instruct's boost_qa scorer: good/average/poor, 1/0.5/0, no padding
 *   q-instruct-boost  the same with boost: each level the mean logit of three synonyms
 *   compare2score     Compare2Score: two images per prompt, 5 anchors, a fitted 0..100 score */
typedef struct {
    const char *name;
    const char *checkpoint; /* the Hugging Face model(s) it is for */
    const char *prompt;     /* a template (see qalign_ctx_options.prompt) */
    const char *levels;     /* a levels spec */
    int no_pad;             /* 1: no expand2square */
    float temperature;      /* level logits are divided by this (1; Compare2Score 100) */
    int n_anchors;          /* anchor images it compares with (Compare2Score: 5), else 0 */
    const char *tasks;      /* the tasks its prompt was written for, e.g. "quality aesthetics" */
    int video;              /* 1: the original scores videos with this prompt */
    const char *source;     /* where the prompt, levels and weights are in the original code */
} qalign_preset;

/* The presets (n gets their number); qalign_preset_find returns NULL for an unknown name. */
const qalign_preset *qalign_presets(int *n);
const qalign_preset *qalign_preset_find(const char *name);

/* Prompt templates that may be given by name as qalign_ctx_options.prompt, among them the
 * variants of the aesthetics prompt: "score" (the default: Hugging Face score(), used with
 * task "aesthetics"; pyiqa passes "aesthetic"), "iaa-eval" (Q-Align's iaa_eval.py: the
 * image before the question). */
typedef struct {
    const char *name, *text, *source;
} qalign_named_prompt;
const qalign_named_prompt *qalign_prompts(int *n);

/* The words a task may be (qalign_ctx_options.task): "quality", "aesthetics", "aesthetic"
 * (pyiqa's wording of the aesthetics prompt), in that order; n (may be NULL) gets their number. */
const char *const *qalign_tasks(int *n);
/* The ranges a score may be mapped onto linearly from the levels' weight range (qalign's
 * --scale): "1-5", "0-1", "0-100"; n (may be NULL) gets their number. */
typedef struct {
    const char *name;
    double lo, hi;
} qalign_scale;
const qalign_scale *qalign_scales(int *n);
/* The scale of that name, or NULL (also for NULL). */
const qalign_scale *qalign_scale_find(const char *name);

/* Make a context (o may be NULL: defaults). Checks the options (task, prompt, levels) and
 * allocates the buffers for a batch of images; a longer video grows them when it comes. */
int qalign_ctx_new(const qalign_model *m, const qalign_ctx_options *o, qalign_ctx **out, char *err, size_t errlen);
void qalign_ctx_free(qalign_ctx *c);

/* The context's levels and weights: returns their number n, and sets words[0..n) (a
 * level's first word) and weights[0..n) when not NULL (arrays of QALIGN_MAX_LEVELS). lo
 * and hi (may be NULL) get the score's range: the smallest and largest weight (0 and 100
 * with anchors). */
int qalign_ctx_levels(const qalign_ctx *c, const char **words, float *weights, float *lo, float *hi);
/* How the context scores, as result rows record it (strings owned by the context): the
 * prompt template in use (a preset's or a named prompt, resolved; {task} and {input} not
 * filled in), the levels in use as text ("word|synonym=weight,...", blanks trimmed, weights
 * as %g, then " /T" for a temperature T other than 1), whether images are padded to a
 * square, --precise, and the number of anchor images. */
typedef struct {
    const char *prompt;
    const char *levels;
    int pad, precise, n_anchors;
} qalign_ctx_info;
void qalign_ctx_describe(const qalign_ctx *c, qalign_ctx_info *out);
/* What the caller should tell the user once about how the context scores, on one line, or
 * NULL: e.g. that a level word is several tokens and only its first is scored. */
const char *qalign_ctx_notes(const qalign_ctx *c);
/* The batch size and thread count in effect; the bytes its buffers take now. */
int qalign_ctx_batch(const qalign_ctx *c);
int qalign_ctx_threads(const qalign_ctx *c);
size_t qalign_ctx_bytes(const qalign_ctx *c);

/* ---- scoring -------------------------------------------------------------------------- */

typedef struct {
    int status;             /* QALIGN_OK, or why this input has no score (error says more) */
    float score;            /* sum_i probs[i] * weight[i]: 1..5 with the default levels */
    float std;              /* the spread of that distribution, sqrt(sum_i probs[i] *
                               (weight[i] - score)^2), as DeQA-Score reports it */
    int n_levels;
    float probs[QALIGN_MAX_LEVELS];  /* softmax of the level logits */
    float logits[QALIGN_MAX_LEVELS]; /* lm_head rows of the level words at the last position */
    int frames;             /* images in the prompt: 1, the video's frame count, or the n of
                               qalign_score_prompt */
    char error[QALIGN_ERR_LEN]; /* when status != QALIGN_OK */
    /* since API version 2: a context with anchors (Compare2Score). score is then the fitted
       0..100, std is NaN (the fit has no level distribution), probs and logits are the means
       over the anchors, and anchor_prefs[k] = softmax(logits_k / T) . weights, the image's
       preference over anchor k (0: inferior .. 1: superior) */
    int n_anchors;
    float anchor_prefs[QALIGN_MAX_ANCHORS];
} qalign_result;

/* Score n images, out[i] for imgs[i]. An image that cannot be used (e.g. one that does not
 * fit in memory after padding) gets its own error in out[i]; the others are scored. The
 * return value is an error only when nothing could be scored (bad arguments). */
int qalign_score_images(qalign_ctx *c, const qalign_image *imgs, int n, qalign_result *out, char *err, size_t errlen);

/* Score ONE prompt that has n <|image|> markers, imgs[k] in place of the k-th (e.g.
 * Compare2Score's "<|image|> <|image|> Compared with the first image, ..."): out gets the
 * level distribution at the end of that prompt. A context with anchors compares nothing
 * here: this is one pass of the model. */
int qalign_score_prompt(qalign_ctx *c, const qalign_image *imgs, int n, qalign_result *out, char *err, size_t errlen);

/* Score one video given as its frames, in order (one per second, as Q-Align samples them):
 * one prompt with every frame's visual tokens. */
int qalign_score_video(qalign_ctx *c, const qalign_image *frames, int n, qalign_result *out, char *err, size_t errlen);

/* The same, one image at a time, for callers that decode as they go:
 *
 *   qalign_add_image(c, &img)    runs the vision tower and abstractor on img now and keeps
 *                                its visual tokens; the image itself is not kept
 *   qalign_pending(c)            images added and not yet scored (< the batch size)
 *   qalign_flush(c, out)         runs the decoder over the pending images and writes
 *                                out[0..pending) in the order they were added
 *
 * qalign_add_image returns QALIGN_ERR_STATE when the batch is full (flush first) and
 * QALIGN_ERR_INPUT for an image it cannot use (nothing is added then). */
int qalign_add_image(qalign_ctx *c, const qalign_image *img, char *err, size_t errlen);
int qalign_pending(const qalign_ctx *c);
int qalign_flush(qalign_ctx *c, qalign_result *out, char *err, size_t errlen);

/* A video one frame at a time (memory: one frame's visual tokens per frame, not the frames):
 *   qalign_video_begin(c, n)    n frames will follow (grows the buffers if needed; pending
 *                               images must have been flushed)
 *   qalign_video_frame(c, img)  frame k of n, in order
 *   qalign_video_end(c, out)    after the n-th frame: the decoder, the video's result
 *   qalign_video_cancel(c)      abandon a video (e.g. a frame could not be decoded) */
int qalign_video_begin(qalign_ctx *c, int n_frames, char *err, size_t errlen);
int qalign_video_frame(qalign_ctx *c, const qalign_image *frame, char *err, size_t errlen);
int qalign_video_end(qalign_ctx *c, qalign_result *out, char *err, size_t errlen);
void qalign_video_cancel(qalign_ctx *c);
/* qalign_video_end, and also each frame scored as an image (the image prompt, from the
 * frames' visual tokens already computed: no second vision pass): frames[0..n). */
int qalign_video_end_frames(qalign_ctx *c, qalign_result *out, qalign_result *frames, char *err, size_t errlen);

/* ---- answers in words (text generation) ---------------------------------------------- */

/* The prompt of upstream's conv_mplug_owl2 conversation (Q-Align / mPLUG-Owl2
 * conversation.py: roles USER/ASSISTANT, TWO_NO_SYS, sep " ", sep2 "</s>") with the image
 * before the question, as Q-Instruct's eval_scripts/mplug_owl_2/run_mplug_owl2.py builds
 * it (qs = DEFAULT_IMAGE_TOKEN + query). */
#define QALIGN_ASK_PROMPT "USER: <|image|>{question} ASSISTANT:"
/* The question template of a Qwen3.5 model (Q-ReAlign): its chat template for one image, with
 * thinking closed as the scoring presets' prompts have it (docs/qwen35-prompts.md); fixed:
 * qalign_ask_options.prompt must be NULL or "mplug-owl2" for such a model. */
#define QALIGN_ASK_PROMPT_QWEN35 "<|im_start|>user\n<|image|>{question}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

/* Called once per generated token, EOS included (then id = eos): seq is the answer's index
 * in the call (qalign_ask_images: the image's), text the UTF-8 bytes that are certain after
 * it (may be "": the first bytes of a character, or text that may be the start of the stop
 * text, wait for the next token; the last call gives the rest). Joined, the texts are the
 * answer before its blanks are stripped; never split inside a character. */
typedef void (*qalign_token_fn)(void *user, int seq, int id, const char *text);

typedef struct {
    int max_tokens;         /* tokens to generate at most, 1 .. the model's context (0: 256) */
    float temperature;      /* 0: greedy (argmax, ties to the lowest id); > 0: sampling */
    float top_p;            /* sampling: keep the most likely tokens up to this probability
                               mass (0 or 1: all) */
    int top_k;              /* sampling: keep the k most likely tokens (0: all) */
    uint64_t seed;          /* sampling: the same seed gives the same answer, whatever the
                               batch, the threads or the other answers of the call */
    const char *prompt;     /* template with <|image|> and {question}, or the name of one of
                               qalign_ask_prompts() (NULL: "mplug-owl2", QALIGN_ASK_PROMPT) */
    const char *stop;       /* the answer ends before this text (NULL: "</s>", upstream's
                               stop_str; "": only EOS and max_tokens end it) */
    qalign_token_fn on_token; /* streaming (may be NULL) */
    void *user;
    qalign_result *scores;  /* not NULL: also score each answer's images with the context's
                               scoring prompt and levels, from the same visual rows (no second
                               vision pass): scores[i] for out[i] */
} qalign_ask_options;

/* The named question templates (qalign_ask_options.prompt), each with where it comes from:
 *   mplug-owl2    QALIGN_ASK_PROMPT (Q-Instruct, OneAlign, every mPLUG-Owl2 chat)
 *   co-instruct   q-future/co-instruct's model card: "USER: The image: <|image|> {question}
 *                 ASSISTANT:" for one image; for n > 1 "USER: The first image: <|image|>\nThe
 *                 second image: <|image|>{question} ASSISTANT:" (first .. eighth, joined by \n) */
const qalign_named_prompt *qalign_ask_prompts(int *n);
/* The template of a name (or a template itself, returned as it is) for a prompt of n_images
 * images, written to out (cap bytes, NUL included); returns its length, or -1 for an unknown
 * name or a template without <|image|> (or -2 if cap is too small). */
int qalign_ask_template(const char *prompt, int n_images, char *out, size_t cap);

typedef struct {
    int status;             /* QALIGN_OK, or why there is no answer (error says more) */
    char error[QALIGN_ERR_LEN];
    char *text;             /* the answer: decoded, cut at the stop text, blanks stripped as
                               upstream's outputs.strip() (malloc'd: qalign_answer_free) */
    int *tokens;            /* (n_tokens) the generated ids, EOS not included */
    int n_tokens;
    const char *finish;     /* "eos", "stop" (the stop text), "length" (max_tokens or the
                               model's context) */
    int prompt_rows;        /* decoder rows of the prompt (text tokens + visual rows) */
    int frames;             /* images in the prompt */
    double prefill_seconds, decode_seconds;
} qalign_answer;

/* Answer the question about each of n images, out[i] for imgs[i] (each its own prompt; up
 * to the context's batch size of answers are generated together, one decoder pass per
 * token for all of them). Greedy answers are the same whatever the batch and threads. */
int qalign_ask_images(qalign_ctx *c, const qalign_image *imgs, int n, const char *question, const qalign_ask_options *o,
                      qalign_answer *out, char *err, size_t errlen);
/* Several questions at once, each about one image with its own options (items may differ in
 * question, options and seed): generated together, up to the context's batch size per
 * decoder pass, each answer the same as alone. A bad question or option is that answer's
 * error (out[i].status), not the call's. options' scores are not used here. */
typedef struct {
    const qalign_image *image;
    const char *question;
    const qalign_ask_options *options; /* NULL: greedy, 256 tokens */
} qalign_ask_item;
int qalign_ask_batch(qalign_ctx *c, const qalign_ask_item *items, int n, qalign_answer *out, char *err, size_t errlen);
/* Answer ONE prompt about n images: the template has n <|image|> (each image in place of
 * one, e.g. Co-Instruct's "The first image: <|image|>\nThe second image: <|image|>"), or
 * one <|image|> that stands for all n (a video's frames, as scoring has them). */
int qalign_ask_prompt(qalign_ctx *c, const qalign_image *imgs, int n, const char *question, const qalign_ask_options *o,
                      qalign_answer *out, char *err, size_t errlen);
void qalign_answer_free(qalign_answer *a);

/* The bytes per token of a sequence's K/V cache (2 * layers * kv_heads * head_dim * 4); 0 for
 * NULL or a model that does not generate answers (Qwen3.5, for now). */
size_t qalign_kv_bytes_per_token(const qalign_model *m);

/* Text of token ids as sentencepiece's decode gives it (BOS/EOS give nothing, byte pieces
 * joined into UTF-8, "▁" a space, the first piece's leading space dropped). Writes at most
 * cap bytes with a NUL, returns the whole text's length, or -1 (an id out of range, NULL, or a
 * Qwen3.5 model). */
int qalign_detokenize(const qalign_model *m, const int *ids, int n, char *out, size_t cap);

/* ---- looking inside ------------------------------------------------------------------- */

/* Seconds spent by this context so far in each stage (cumulative). */
typedef struct {
    double preprocess, vision, abstractor, decoder;
} qalign_timings;
void qalign_ctx_timings(const qalign_ctx *c, qalign_timings *out);

/* Every intermediate array of a computation, under the reference fixtures' names
 * (resized_rgb, pixel_values, vision_embeddings, vision_layer{i}, vision_out,
 * abstractor_layer{i}, abstractor_out, input_ids, modality_indicators, llm_inputs_embeds,
 * llm_layer{i}, llm_final_norm, logits_last, level_logits, score). Arrays with a frame
 * axis (shape[0] = frames) come one frame at a time: frame = k; the others once: frame = -1.
 * data is valid during the call only. */
typedef struct {
    const char *name;
    char type;              /* 'f' float32, 'i' int64, 'u' uint8 */
    const void *data;
    int ndim;
    int64_t shape[4];       /* of the whole array */
    int frame;              /* -1: the whole array; k >= 0: data is frame k of shape[0] */
} qalign_stage;
typedef void (*qalign_stage_fn)(void *user, const qalign_stage *stage);

/* With a hook set, every image is scored on its own (batch 1) and every row of every
 * layer is computed (no cached prompt prefix, no shortcut in the last layer), so each
 * stage can be shown whole: slower, same scores. fn = NULL removes the hook. */
void qalign_ctx_set_stage_hook(qalign_ctx *c, qalign_stage_fn fn, void *user);

#ifdef __cplusplus
}
#endif
#endif
