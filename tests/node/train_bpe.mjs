// tests/node/train_bpe.mjs - train a byte-level BPE with Hugging Face tokenizers (npm package
// `tokenizers`, the official Rust binding), for tests/data/qwen_tokenizer/make_tokenizer.py.
//
//   node tests/node/train_bpe.mjs SKELETON.json CORPUS.txt OUT.json
//
// SKELETON.json is a tokenizer.json with an empty BPE model and the normalizer, pre-tokenizer
// and decoder to train with; the library's default BPE trainer (min_frequency 0, no special
// tokens) learns merges until every word of CORPUS.txt is one token; OUT.json is the result.
import {Tokenizer} from "tokenizers";

const [skeleton, corpus, out] = process.argv.slice(2);
const tok = Tokenizer.fromFile(skeleton);
tok.train([corpus]);
tok.save(out, false);
