/* bpe.h - byte-level BPE (Qwen3.5's tokenizer), id for id with Hugging Face tokenizers.
 *
 * What it implements is the tokenizer transformers' Qwen3_5Tokenizer builds (transformers
 * src/transformers/models/qwen3_5/tokenization_qwen3_5.py, commit dd7a585c07f2), which
 * is the released tokenizer.json with its split pattern replaced by the one below:
 *
 *   1. added tokens are found first, in the raw text (leftmost-longest, as HF's
 *      AddedVocabulary); the text between them goes through 2-4;
 *   2. normalizer NFC (HF's tables are Unicode 9.0: see tools/gen_unicode.py);
 *   3. pre-tokenizer Split(pattern, Isolated) with the pattern
 *        (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}
 *        | ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *      (written out by hand in bpe.c; classes of Unicode 16.0 as Oniguruma's), then
 *      ByteLevel(add_prefix_space=false, use_regex=false): each piece becomes its UTF-8 bytes;
 *   4. BPE over the bytes of each piece: the pair of lowest merge rank merges first (the
 *      leftmost on ties), no unk token, no byte fallback (a byte without a piece is dropped,
 *      as HF drops an unknown character when there is no unk token).
 *   Decoding is ByteLevel's: the tokens' bytes concatenated, then invalid UTF-8 replaced by
 *   U+FFFD as Rust's String::from_utf8_lossy does.
 *
 * The vocabulary comes as a blob (export.py bpe_blob_from_tokenizer_json writes it into the
 * model file); bpe_open copies what it needs, so the blob may be freed or unmapped after.
 *
 * Blob layout, all integers little-endian u32 unless said:
 *   "QBPE" magic, version (1), n_vocab, n_merges, n_added, flags (bit 0: ignore_merges),
 *   pattern_len, pattern bytes (must be the pattern above: anything else is refused),
 *   offsets[n_vocab + 1], bytes[offsets[n_vocab]]   id i's bytes = bytes[offsets[i]..offsets[i+1])
 *                                                    (its decoded bytes; empty = no such id)
 *   types[n_vocab] (u8: 0 none, 1 BPE piece, 2 added token, 3 added special token)
 *   merges[n_merges][3] = (left id, right id, merged id), rank order
 *   added[n_added]: id, content length, content bytes (the text that is matched)
 * Library code: no exit(), no output; errors come back as one-line messages in err.
 */
#ifndef QALIGN_BPE_H
#define QALIGN_BPE_H

#include <stddef.h>
#include <stdint.h>

typedef struct Bpe Bpe;

/* Parse a blob (layout above). NULL on error, with a one-line reason in err
 * (err may be NULL). */
Bpe *bpe_open(const uint8_t *blob, size_t n, char *err, size_t errlen);
void bpe_free(Bpe *b);

/* Encode len bytes of UTF-8 text. special = 1: added tokens whose "special" flag is set
 * are matched in the text (HF's default); special = 0: they are read as plain text
 * (HF's encode_special_tokens = true); non-special added tokens are matched either way.
 * On success returns 0 and sets *ids (malloc'd, the caller frees it; non-NULL even when
 * *n is 0) and *n. On error (invalid UTF-8 - which HF's str-based API cannot receive -,
 * out of memory) returns -1 with a one-line reason in err and *ids = NULL, *n = 0. */
int bpe_encode(const Bpe *b, const char *utf8, size_t len, int special,
               int32_t **ids, size_t *n, char *err, size_t errlen);

/* Id of a token given as its text: an added token's content or a BPE piece's bytes
 * (" good", not "Ġgood"); -1 if there is none. Added tokens are looked up first. */
int bpe_token_id(const Bpe *b, const char *token);

/* Decode ids to text (NUL-terminated, malloc'd, the caller frees it; *len, when len is
 * not NULL, is its length, which may include NUL bytes the ids encode). Ids out of range
 * or without a token are skipped, as HF does. NULL only when out of memory. */
char *bpe_decode(const Bpe *b, const int32_t *ids, size_t n, size_t *len);

/* Number of ids (BPE pieces and added tokens; ids are 0 .. bpe_n_vocab() - 1). */
int bpe_n_vocab(const Bpe *b);

#endif
