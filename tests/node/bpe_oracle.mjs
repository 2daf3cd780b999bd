// tests/node/bpe_oracle.mjs - Hugging Face tokenizers (npm package `tokenizers`, the
// official Rust binding) as the oracle of tests/test_bpe.py.
//
//   node tests/node/bpe_oracle.mjs TOKENIZER.json MODE IN.json OUT.json
//
// IN.json is a list; OUT.json gets one result per item:
//   encode   string -> ids (added tokens matched, no post-processing)
//   decode   ids -> string (skip_special_tokens false)
//   nfc      string -> the normalizer's output
//   split    string -> byte lengths of the pre-tokenizer's pieces (no normalizer; each
//            piece is ByteLevel text, one character per byte)
import {Tokenizer} from "tokenizers";
import fs from "fs";

const [file, mode, inPath, outPath] = process.argv.slice(2);
const tok = Tokenizer.fromFile(file);
const items = JSON.parse(fs.readFileSync(inPath, "utf8"));
const out = [];
if (mode === "encode") {
    for (const s of items)
        out.push((await tok.encode(s, null, {addSpecialTokens: false})).getIds());
} else if (mode === "decode") {
    for (const ids of items)
        out.push(await tok.decode(ids, false));
} else if (mode === "nfc") {
    const nf = tok.getNormalizer();
    for (const s of items)
        out.push(nf.normalizeString(s));
} else if (mode === "split") {
    const pt = tok.getPreTokenizer();
    for (const s of items)
        out.push(pt.preTokenizeString(s).map(p => p[0].length));
} else {
    console.error("bpe_oracle: unknown mode " + mode);
    process.exit(2);
}
fs.writeFileSync(outPath, JSON.stringify(out));
