#!/usr/bin/env python3
"""Make the small Qwen3.5-style test tokenizer in this directory (tokenizer.json,
tokenizer_config.json) with Hugging Face tokenizers (npm package `tokenizers`, pinned in
tests/node/package.json).

    /usr/bin/python3 tests/data/qwen_tokenizer/make_tokenizer.py [--out DIR]   (needs node + npm)

Deterministic: the training text comes from a seeded generator below, the library's BPE
trainer is deterministic for a given text, and the post-processing is plain Python.

Layout as Qwen3.5's tokenizer.json (transformers' Qwen3_5Tokenizer, see bpe.h):
  normalizer NFC; pre-tokenizer Split(PATTERN, Isolated) then ByteLevel(add_prefix_space
  false, use_regex false); decoder ByteLevel; BPE without unk token or byte fallback.
  PATTERN is the one transformers' Qwen3_5Tokenizer installs on load (with \\p{M}), so the
  file here already carries it (export.py writes that pattern whatever the file declares).
Vocabulary: the 256 byte-level characters first (ids 0..255, GPT-2's bytes_to_unicode
order, as Qwen's vocabularies start), then the pieces of the first N_MERGES merges the
trainer learned, in merge order (a BPE cut after N merges, what a vocab_size limit gives),
then Qwen3.5's 33 added tokens (their order and special flags as the released
tokenizer_config.json; ids right after the BPE vocabulary, as 248044.. there).
"""
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
NODE_DIR = ROOT / "tests" / "node"
SEED = 20260307
N_MERGES = 3800

PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
           r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen3.5's added tokens (ids 248044..248076 in the released vocabulary), (content, special).
ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
         ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
         ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
         ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
         ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
         ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
         ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
         ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
         ("<think>", False), ("</think>", False), ("<|audio_start|>", True),
         ("<|audio_end|>", True), ("<tts_pad>", True), ("<tts_text_bos>", True),
         ("<tts_text_eod>", True), ("<tts_text_bos_single>", True), ("<|audio_pad|>", True)]

# A chat template written for these tests in the structure of Qwen3.5's: system turn,
# user turns whose content may hold images/videos, assistant turns (thinking kept only after
# the last user query), generation prompt opening a thinking block unless
# enable_thinking is false.
CHAT_TEMPLATE = r"""{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- macro render_content(content, do_vision_count) %}
    {%- if content is string %}
        {{- content }}
    {%- else %}
        {%- for item in content %}
            {%- if item.type == 'image' or 'image' in item or 'image_url' in item %}
                {%- if do_vision_count %}{%- set image_count.value = image_count.value + 1 %}{%- endif %}
                {%- if add_vision_id %}{{- 'Picture ' ~ image_count.value ~ ': ' }}{%- endif %}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' }}
            {%- elif item.type == 'video' or 'video' in item %}
                {%- if do_vision_count %}{%- set video_count.value = video_count.value + 1 %}{%- endif %}
                {%- if add_vision_id %}{{- 'Video ' ~ video_count.value ~ ': ' }}{%- endif %}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' }}
            {%- elif 'text' in item %}
                {{- item.text }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
{%- endmacro %}
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + render_content(messages[0].content, false)|trim + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- if message.role == 'user' and ns.last_query_index == messages|length - 1 %}
        {%- set ns.last_query_index = (messages|length - 1) - loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = render_content(message.content, true)|trim %}
    {%- if message.role == 'user' %}
        {{- '<|im_start|>user\n' + content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {%- set reasoning_content = '' %}
        {%- if '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {{- '<|im_start|>assistant\n<think>\n' + reasoning_content|trim + '\n</think>\n\n' + content + '<|im_end|>\n' }}
        {%- else %}
            {{- '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- else %}
        {{- '<think>\n' }}
    {%- endif %}
{%- endif %}"""


def bytes_to_unicode():
    """GPT-2's byte -> printable character map (byte-level BPE), in its order."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
          + list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [(b, chr(c)) for b, c in zip(bs, cs)]


# ---- training text ----------------------------------------------------------------------

ENGLISH = """the of and to in is was for on that with as it by at from this be are have an not
or which his but they her she he you we all one their there been has were would more will can
when who if what so about out up into them some could time these two may then do first any like
now my such our over man me even most made after also did many before must through back years
where much your way well down should because each just those people how too little state good
very make world still own see men work long get here between both life being under never day
same another know while last might us great old year off come since against go came right used
take three image photo picture video quality aesthetics excellent fair poor bad rate would
sharp blurry noise noisy bright dark colour color contrast exposure detail details focus lens
camera light shadow scene sky tree water mountain city street portrait landscape night sunset
beautiful pleasing composition framing subject background foreground resolution compression
artifact artifacts jpeg grain motion blur overexposed underexposed saturated vivid dull clear
score level mean opinion assessment visual human model token prompt answer assistant user
system thinking question response describe looks seems rather quite slightly heavily""".split()

CONTRACTIONS = ["don't", "isn't", "it's", "I'm", "you're", "we've", "they'll", "she'd", "can't",
                "DON'T", "IT'S", "I'M", "YOU'RE", "WE'VE", "THEY'LL", "SHE'D", "He'S", "we'Ll",
                "o'clock", "rock'n'roll"]

CJK = ("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学"
       "对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面"
       "公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部"
       "图像质量优秀良好一般较差很非常清晰模糊画面色彩")
KANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコ"
HANGUL = "한국어화질사진이미지좋음나쁨보통"
WORDS_OTHER = [
    "привет", "качество", "изображения", "отличное", "хорошее", "плохое", "καλή", "ποιότητα",
    "εικόνα", "Qualität", "Bildes", "ausgezeichnet", "schön", "große", "français", "qualité",
    "très", "élevée", "año", "niño", "mañana", "calidad", "São", "Paulo", "ação", "Ærø", "Øre",
    "naïve", "café", "coöperate", "İstanbul", "ılık", "ğüşöç",
    # Devanagari, Thai, Arabic with harakat, Hebrew with niqqud, Bengali, Tamil
    "नमस्ते", "गुणवत्ता", "छवि", "क्षत्रिय", "हिन्दी", "अच्छी", "ภาษาไทย", "คุณภาพ", "ภาพ", "ดีมาก",
    "สวัสดี", "الْعَرَبِيَّة", "جَوْدَة", "الصُّورَة", "مُمْتَازَة", "كِتَابٌ", "שָׁלוֹם", "עִבְרִית",
    "বাংলা", "ছবি", "தமிழ்", "படம்",
]
EMOJI = ["😀", "👍", "👍🏽", "❤️", "☺️", "✌🏿", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇸", "📷", "🖼️",
         "✨", "🔥", "1️⃣", "#️⃣"]
PUNCT = [".", ",", "!", "?", ":", ";", "...", "--", "(", ")", "[", "]", "\"", "'", "/", "-",
         "#", "%", "&", "*", "+", "=", "<", ">", "@", "$", "{", "}", "|", "~", "`", "^", "_",
         "，", "。", "！", "？", "、", "「", "」", "—", "…", "«", "»", "€", "£", "°", "±", "×"]
CODE = ["def score(image):\n    return model(image)\n", "for (int i = 0; i < n; i++) {\n\tx[i] = 0;\n}\n",
        "if __name__ == \"__main__\":\n    main()\n", "{\"key\": [1, 2, 3], \"ok\": true}\n",
        "<div class=\"img\"></div>\r\n", "x = y + 42  # comment\n", "SELECT * FROM images;\n"]
LEVELS = ["excellent", "good", "fair", "poor", "bad"]
PHRASES = ["The quality of the image is", "The aesthetics of the image is",
           "How would you rate the quality of this image?",
           "How would you rate the aesthetics of this image?",
           "How would you rate the quality of this video?", "The quality of the video is"]


def sentence(rng):
    words = [rng.choice(ENGLISH) for _ in range(rng.randint(4, 14))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), rng.choice(CONTRACTIONS))
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    s = " ".join(words)
    if rng.random() < 0.2:
        s += " " + str(rng.randint(0, 10 ** rng.randint(1, 7)))
    return s + rng.choice([".", ".", ",", "!", "?", ":"])


def corpus(rng):
    out = []
    for _ in range(1500):
        out.append(sentence(rng))
    for _ in range(400):  # the scoring phrases and the five level words, many times
        lvl = rng.choice(LEVELS)
        out.append(f"{rng.choice(PHRASES)} {lvl}. The quality of the image is {lvl}.")
        out.append(f"{lvl.capitalize()} {lvl} {lvl}, {lvl}!")
    for _ in range(300):
        out.append("".join(rng.choice(CJK) for _ in range(rng.randint(2, 8))) + rng.choice("，。！？"))
    for _ in range(60):
        out.append("".join(rng.choice(KANA) for _ in range(rng.randint(2, 6))) + "。")
        out.append("".join(rng.choice(HANGUL) for _ in range(rng.randint(2, 4))) + " ")
    for _ in range(600):
        out.append(" ".join(rng.choice(WORDS_OTHER) for _ in range(rng.randint(1, 5))))
    for _ in range(300):
        out.append(rng.choice(ENGLISH) + " " + "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 3))))
    for _ in range(300):
        out.append(rng.choice(ENGLISH) + rng.choice(PUNCT) + rng.choice(PUNCT) + " "
                   + rng.choice(ENGLISH) + rng.choice(PUNCT))
    for _ in range(200):
        out.append(rng.choice(CODE))
    for _ in range(200):
        out.append(str(rng.randint(0, 10 ** 9)) + rng.choice(["", " ", "  ", "\t", "\n\n", "\r\n", "   \n"]))
    rng.shuffle(out)
    return "\n".join(out) + "\n"


# ---- tokenizer.json -----------------------------------------------------------------------

def skeleton():
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": {}, "merges": []},
    }


def main():
    out_dir = Path(sys.argv[2]) if len(sys.argv) == 3 and sys.argv[1] == "--out" else HERE
    if not (NODE_DIR / "node_modules" / "tokenizers").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)
    rng = random.Random(SEED)
    text = corpus(rng)
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        (td / "skel.json").write_text(json.dumps(skeleton()), encoding="utf-8")
        (td / "corpus.txt").write_text(text, encoding="utf-8")
        subprocess.run(["node", NODE_DIR / "train_bpe.mjs", td / "skel.json", td / "corpus.txt",
                        td / "trained.json"], check=True, cwd=NODE_DIR)
        trained = json.loads((td / "trained.json").read_text(encoding="utf-8"))
    merges = trained["model"]["merges"]
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in merges]
    if len(merges) < N_MERGES:
        sys.exit(f"only {len(merges)} merges learned, want {N_MERGES}")
    merges = merges[:N_MERGES]
    vocab = {}
    for _b, ch in bytes_to_unicode():
        vocab[ch] = len(vocab)
    for a, b in merges:
        if a not in vocab or b not in vocab:
            sys.exit(f"merge {a!r} {b!r} uses an unknown piece")
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    tok = skeleton()
    tok["model"]["vocab"] = vocab
    tok["model"]["merges"] = merges
    first = len(vocab)
    tok["added_tokens"] = [{"id": first + i, "content": c, "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": False, "special": sp}
                           for i, (c, sp) in enumerate(ADDED)]
    (out_dir / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, indent=1) + "\n",
                                         encoding="utf-8")
    config = {
        "add_bos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": {str(first + i): {"content": c, "lstrip": False, "normalized": False,
                                                  "rstrip": False, "single_word": False, "special": sp}
                                 for i, (c, sp) in enumerate(ADDED)},
        "bos_token": None, "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 262144,
        "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen3_5Tokenizer", "unk_token": None,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n",
                                                encoding="utf-8")
    print(f"{len(vocab)} BPE pieces ({len(merges)} merges) + {len(ADDED)} added tokens "
          f"({first}..{first + len(ADDED) - 1})")


if __name__ == "__main__":
    main()
