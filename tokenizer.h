/* tokenizer.h - the LLaMA SentencePiece-BPE encoder, id-for-id identical to
 * sentencepiece's, and the prompt assembly of Q-Align's tokenizer_image_token.
 *
 * The vocabulary is not copied: the Tokenizer points into the caller's arrays
 * (in qalign these are views into the read-only model-file mmap) and only
 * builds a lookup table of its own. */
#ifndef QALIGN_TOKENIZER_H
#define QALIGN_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

/* SentencePiece piece types (sentencepiece_model.proto, ModelProto.SentencePiece.Type). */
enum { SP_NORMAL = 1, SP_UNKNOWN = 2, SP_CONTROL = 3, SP_USER_DEFINED = 4, SP_UNUSED = 5, SP_BYTE = 6 };

/* Marker id that tokenize_prompt() writes where "<|image|>" was (IMAGE_TOKEN_INDEX). */
#define TOKEN_IMAGE_MARKER (-200)

typedef struct {
    int n_vocab;               /* number of pieces (32000 for LLaMA-2) */
    const char *blob;          /* (blob_len) all pieces' UTF-8 bytes, concatenated */
    const uint32_t *offsets;   /* (n_vocab+1) piece i = blob[offsets[i] .. offsets[i+1]) */
    const float *scores;       /* (n_vocab) merge priority: higher merges first */
    const uint8_t *types;      /* (n_vocab) SP_* piece type */
    int add_dummy_prefix;      /* normalizer_spec.add_dummy_prefix */
    int bos_id, eos_id, unk_id; /* trainer_spec ids; bos/eos -1 = none; unk = the SP_UNKNOWN piece */
    int byte_id[256];          /* id of piece "<0xXX>", or -1 */
    /* private lookup state, built by tokenizer_init */
    int32_t *hash;             /* (hash_size) open-addressing table of piece ids, -1 = empty */
    size_t hash_size;          /* power of two, >= 2*n_vocab */
    int max_piece_len;         /* longest NORMAL/USER_DEFINED/UNUSED piece in bytes (merge bound) */
    int byte_fallback;         /* 1 if all 256 <0xXX> pieces exist: unknown chars become bytes */
    int n_unused;              /* number of SP_UNUSED pieces (merged, then split back) */
    int *user_lens;            /* (n_user_lens) distinct USER_DEFINED piece lengths, longest first */
    int n_user_lens;           /* 0 when the model has no user-defined pieces */
    uint8_t user_first[32];    /* bitset of the first bytes of USER_DEFINED pieces */
} Tokenizer;

/* Build the lookup structures. Returns 0, or -1 with a one-line reason in err. */
int tokenizer_init(Tokenizer *t, int n_vocab, const char *blob, size_t blob_len,
                   const uint32_t *offsets, const float *scores, const uint8_t *types,
                   int add_dummy_prefix, int bos_id, int eos_id, int unk_id,
                   char *err, size_t errlen);
void tokenizer_free(Tokenizer *t);

/* Id of a piece given as bytes, or -1. */
int tokenizer_piece_id(const Tokenizer *t, const char *piece, size_t len);

/* Encode len bytes of UTF-8 text exactly as sentencepiece's EncodeAsIds (plus a
 * leading BOS if add_bos). Writes at most max_ids ids; returns the number of
 * ids the text needs (which may exceed max_ids: then retry with a bigger
 * buffer; len + 2 is enough for LLaMA-2, whose vocabulary has the "▁" and
 * U+FFFD pieces; tokenizer_max_ids(len) is enough for any vocabulary), or -1
 * on invalid arguments or out of memory. Malformed UTF-8 is accepted: each bad
 * byte is read as U+FFFD, as sentencepiece does. */
int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int add_bos,
                     int *ids, int max_ids);

/* Upper bound of tokenizer_encode's result for len bytes of text, any vocabulary
 * (3*len + 4: every byte may become U+FFFD and then 3 byte pieces), or -1 if
 * that does not fit in an int. */
int tokenizer_max_ids(size_t len);

/* Q-Align's tokenizer_image_token(): split prompt at "<|image|>", encode each
 * non-empty chunk on its own (each with its own dummy prefix and BOS) and write
 * TOKEN_IMAGE_MARKER where each marker was. If the first chunk is non-empty,
 * only its BOS is kept (the other chunks' BOS are dropped); if the prompt
 * starts with the marker, Python keeps the BOS of every later chunk, and so
 * does this: "<|image|>x" -> [-200, BOS, ...x]. Same return convention as
 * tokenizer_encode. */
int tokenize_prompt(const Tokenizer *t, const char *prompt, int *ids, int max_ids);

/* Ids to UTF-8 text exactly as sentencepiece's DecodeIds: control pieces (BOS, EOS)
 * give nothing, the unknown piece " \xE2\x81\x87 " (" ⁇ "), runs of byte pieces <0xNN>
 * are joined into UTF-8 (each byte that is not part of a well-formed character
 * becomes U+FFFD), "▁" becomes a space, and the first piece that gives text loses
 * the space of its dummy prefix. Writes at most cap bytes including a NUL and
 * returns the length of the whole text (like snprintf), or -1 for an id out of
 * range or invalid arguments. */
int tokenizer_decode(const Tokenizer *t, const int *ids, int n, char *out, size_t cap);

#endif
