"""The Qwen3.5 family (qwen35.c, Q-ReAlign) against its PyTorch oracle (tests/qwen_ref.py).

A tiny random checkpoint in the released layout (config.json with text_config and
vision_config, bf16 model.safetensors) is generated at test time together with the oracle's
outputs of every stage, in float64, for four prompts: one image, a wide image, two images
(66 tokens: two GDN chunks), text only. export.py turns it into model files of every weight
type; build/test_qwen runs the C forward pass and writes each stage, compared here.
"""
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

torch = pytest.importorskip("torch")
import qwen_ref  # noqa: E402

DRIVER = os.path.join(ROOT, "build", "test_qwen")
RECORDS = ["one_image", "wide_image", "two_images", "text_only"]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("qwen_tiny"))
    qwen_ref.make_fixtures(d)
    subprocess.run(["make", "-s", "build/test_qwen"], cwd=ROOT, check=True, capture_output=True)
    return d


def export(fixtures, dtype):
    out = os.path.join(fixtures, f"tiny_{dtype}.qalign")
    if not os.path.exists(out):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), "--model",
                            os.path.join(fixtures, "checkpoint"), out, "--dtype", dtype, "-q"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    return out


def run_c(fixtures, model, rec, tag, precise=False, recurrent=False):
    ref = os.path.join(fixtures, "ref", rec)
    inp = os.path.join(fixtures, "in_" + rec)
    os.makedirs(inp, exist_ok=True)
    np.load(os.path.join(ref, "input_ids.npy")).astype("<i4").tofile(os.path.join(inp, "ids.i32"))
    np.load(os.path.join(ref, "grid_thw.npy"))[:, 1:].astype("<i4").tofile(os.path.join(inp, "grid.i32"))
    np.load(os.path.join(ref, "pixel_values.npy")).astype("<f4").tofile(os.path.join(inp, "pixels.f32"))
    np.load(os.path.join(ref, "level_ids.npy")).astype("<i4").tofile(os.path.join(inp, "levels.i32"))
    out = os.path.join(fixtures, f"out_{tag}_{rec}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    args = [DRIVER, model, inp, out] + (["precise"] if precise else []) + (["recurrent"] if recurrent else [])
    r = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert r.returncode == 0, r.stderr
    stages = {}
    for f in os.listdir(out):
        if f.endswith(".f32"):
            name = f[:-4]
            shape = [int(x) for x in open(os.path.join(out, name + ".shape")).read().split()]
            stages[name] = np.fromfile(os.path.join(out, f), dtype="<f4").reshape(shape)
    return stages


def ref_stage(fixtures, rec, name):
    return np.load(os.path.join(fixtures, "ref", rec, name + ".npy"))


def rel(a, b):
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


@pytest.mark.parametrize("form", ["columns", "recurrent"])
@pytest.mark.parametrize("rec", RECORDS)
def test_every_stage_f32(fixtures, rec, form):
    """f32 weights: every stage of the C model equals the float64 oracle to f32 rounding;
    level logits within 2e-4. Both forms of the Gated DeltaNet's delta rule: by state columns
    (what runs, kernels.h delta_rule16) and as written (qwen_gdn_recurrent, the reference)."""
    c = run_c(fixtures, export(fixtures, "f32"), rec, "f32" + form, recurrent=form == "recurrent")
    ids = np.load(os.path.join(fixtures, "ref", rec, "input_ids.npy"))
    cfg = qwen_ref.TINY
    img = ids == cfg["image_token_id"]
    names = ["embeds", "final_norm", "level_logits"] + [f"layer{i}" for i in range(cfg["text_config"]["num_hidden_layers"])]
    if img.any():
        # the vision stages of the last image (the driver keeps the last one written)
        names += ["vit_embed"] + [f"vit_block{i}" for i in range(cfg["vision_config"]["depth"])]
    for name in names:
        r = ref_stage(fixtures, rec, name)
        got = c[name].reshape(-1) if name in ("final_norm", "level_logits") else c[name]
        if name.startswith("vit_"):
            grids = np.load(os.path.join(fixtures, "ref", rec, "grid_thw.npy"))
            n_last = int(np.prod(grids[-1]))
            r = r[-n_last:]
        assert got.shape == r.shape, (name, got.shape, r.shape)
        if name == "level_logits":
            tol, err = 2e-4, float(np.abs(got - r).max())
        else:
            # within 4x of PyTorch's own float32 distance from float64 at this stage (this
            # random tiny model amplifies rounding through its layers), never above 2e-4
            r32 = np.load(os.path.join(fixtures, "ref32", rec, name + ".npy"))
            if name.startswith("vit_"):
                r32 = r32[-r.shape[0]:]
            tol, err = min(2e-4, max(1e-5, 4 * rel(r32, r))), rel(got, r)
        assert err < tol, f"{rec}: {name} differs by {err:.3g} (tolerance {tol})"
    if img.any():
        # the spliced visual tokens: the merger's output of every image
        r = ref_stage(fixtures, rec, "vit_merger")
        got = c["vit_merger"]       # the last image's
        assert rel(got, r[-got.shape[0]:]) < 5e-5


def test_gdn_chunked_equals_recurrent():
    """The oracle's two forms of the gated delta rule agree (the C code runs the recurrent one,
    by state columns; test_every_stage_f32 holds it and the form as written to the oracle)."""
    g = torch.Generator().manual_seed(3)
    B, S, nk, nv, dk, dv = 1, 150, 2, 4, 16, 24
    q, k = torch.randn(B, S, nk, dk, generator=g, dtype=torch.float64), torch.randn(B, S, nk, dk, generator=g, dtype=torch.float64)
    v = torch.randn(B, S, nv, dv, generator=g, dtype=torch.float64)
    gg = -torch.rand(B, S, nv, generator=g, dtype=torch.float64) * 2
    beta = torch.rand(B, S, nv, generator=g, dtype=torch.float64)
    a = qwen_ref.chunk_gated_delta_rule(q, k, v, gg, beta)
    b = qwen_ref.recurrent_gated_delta_rule(q, k, v, gg, beta)
    assert float((a - b).abs().max()) < 1e-10


# Smoke bounds on max |logit error| / max |logit| over the records, about twice what was
# measured. This random 64-wide model amplifies rounding far more than a trained one (f32
# stages drift 1e-6 -> 1e-4 through six layers); measured on two seeds: bf16 with bf16
# activations 1.4-3.9 %, q8_0 and q8 up to 9.6 %; q4 (4-bit weights on rows of 64 values)
# is noise at this size, so it is only checked to run and stay finite. The arithmetic of
# each type is tested in test_kernels; a wrong layout or scale gives errors of 100 %.
@pytest.mark.parametrize("dtype,tol", [("bf16", 0.08), ("q8_0", 0.2), ("q8", 0.2), ("q4", float("inf"))])
def test_weight_types_stay_close(fixtures, dtype, tol):
    """bf16 and quantised files run, stay finite and near the oracle's level logits."""
    for rec in RECORDS:
        c = run_c(fixtures, export(fixtures, dtype), rec, dtype)
        r = ref_stage(fixtures, rec, "level_logits")
        assert np.isfinite(c["level_logits"]).all()
        err = float(np.abs(c["level_logits"].reshape(-1) - r).max() / (np.abs(r).max()))
        assert err < tol, f"{dtype} {rec}: level logits off by {err:.3g} of their scale"


def test_bf16_precise(fixtures):
    """bf16 weights with f32 activations (--precise): the checkpoint's weights are bf16
    already, so this equals the oracle to f32 rounding."""
    c = run_c(fixtures, export(fixtures, "bf16"), "two_images", "bf16p", precise=True)
    r = ref_stage(fixtures, "two_images", "level_logits")
    assert float(np.abs(c["level_logits"].reshape(-1) - r).max()) < 2e-4


def test_damaged_file_says_reexport(fixtures):
    src = export(fixtures, "f32")
    data = bytearray(open(src, "rb").read())
    bad = os.path.join(fixtures, "damaged.qalign")
    for cut in (data[:-100], data[:2000]):
        open(bad, "wb").write(cut)
        r = subprocess.run([DRIVER, bad, fixtures, fixtures], capture_output=True, text=True)
        assert r.returncode != 0 and "re-run export.py" in r.stderr, r.stderr
    d2 = bytearray(data)
    d2[4 * 17:4 * 18] = (10 ** 9).to_bytes(4, "little")   # l_layers out of range
    open(bad, "wb").write(d2)
    r = subprocess.run([DRIVER, bad, fixtures, fixtures], capture_output=True, text=True)
    assert r.returncode != 0 and "re-run export.py" in r.stderr, r.stderr


# ---- end to end: the CLI on image files against PIL + HF tokenizers + the oracle ----------

NODE_DIR = os.path.join(HERE, "node")


@pytest.fixture(scope="module")
def hf_tokenizer():
    """HF tokenizers (npm, the official Rust binding) as the tokenizer oracle, as test_bpe."""
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (Debian: apt-get install -y nodejs npm)")
    if not os.path.isfile(os.path.join(NODE_DIR, "node_modules", "tokenizers", "package.json")):
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    tj = os.path.join(HERE, "data", "qwen_tokenizer", "tokenizer.json")

    def encode(texts, tmp):
        src, dst = os.path.join(tmp, "enc_in.json"), os.path.join(tmp, "enc_out.json")
        with open(src, "w") as f:
            import json
            json.dump(texts, f)
        r = subprocess.run(["node", os.path.join(NODE_DIR, "bpe_oracle.mjs"), tj, "encode", src, dst],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        import json
        return json.load(open(dst))
    return encode


def pixel_rows(path, swift):
    """The processor's pixel rows from the line-by-line Python ports of test_qwen_image.py
    (transformers' / qwen_vl_utils' smart_resize, ATen's uint8 antialiased bicubic or
    Pillow's, torchvision's fused normalisation, the HF patchify)."""
    import test_qwen_image as tqi
    mn = 4096 if swift else 65536
    _resized, rows, grid = tqi.oracle_pipeline(path, 1 if swift else 0, "pil" if swift else "torch", "fused", mn, 16777216)
    return rows, (grid[1], grid[2])


@pytest.mark.parametrize("preset,task", [("q-realign-mini", "quality"), ("q-realign-swift", "quality"),
                                         ("q-realign-mini", "aesthetics"), ("q-realign-swift", "aesthetics")])
def test_cli_score_end_to_end(fixtures, hf_tokenizer, tmp_path, preset, task):
    """./qalign MODEL image.png --dump: the patch rows equal the processor's (Python ports), the prompt ids equal
    HF tokenizers' encoding of the chat-template text (the form of the preset), and the
    level logits equal the oracle's on those inputs (f32, within 2e-4)."""
    from PIL import Image
    swift = preset.endswith("swift")
    model = export(fixtures, "f32")
    rng = np.random.default_rng(5)
    img = os.path.join(str(tmp_path), "img.png")
    Image.fromarray((rng.random((70, 100, 3)) * 255).astype(np.uint8)).save(img)
    dump = os.path.join(str(tmp_path), "dump")
    r = subprocess.run([os.path.join(ROOT, "qalign"), model, img, "--preset", preset, "--task", task, "--dump", dump],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert r.returncode == 0, r.stderr
    px, (gh, gw) = pixel_rows(img, swift)
    got_px = np.load(os.path.join(dump, "pixel_values.npy"))
    assert got_px.shape == px.shape and np.array_equal(got_px, px)
    n = gh * gw // 4
    think = "<think>\n\n</think>\n\n" if swift else "<think>\n"   # the test template thinks by default
    # pyiqa's TASKS (hf form); qalign/prompts.py PROMPTS[task][0] (swift form)
    question = ("How is the aesthetics of this image?" if swift else "Can you rate the aesthetics of this picture?") \
        if task == "aesthetics" else "Can you rate the quality of this picture?"
    text = ("<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>" + question +
            "<|im_end|>\n<|im_start|>assistant\n" + think)
    stem = f"The {task} of the image is"
    enc = hf_tokenizer([text + stem, text, " " + stem] + [" " + w for w in ("excellent", "good", "fair", "poor", "bad")],
                       str(tmp_path))
    ids = enc[1] + enc[2] if swift else enc[0]
    levels = [e[0] for e in enc[3:]]
    got_ids = np.load(os.path.join(dump, "input_ids.npy")).reshape(-1).tolist()
    assert got_ids == ids
    oracle = qwen_ref.Qwen35(os.path.join(fixtures, "checkpoint"))
    with torch.no_grad():
        lv = oracle.forward(ids, torch.from_numpy(px), [(1, gh, gw)], levels).numpy()
    got = np.load(os.path.join(dump, "level_logits.npy")).reshape(-1)
    assert float(np.abs(got - lv).max()) < 2e-4, (got, lv)
    p = np.exp(lv - lv.max())
    p /= p.sum()
    score = float((p * np.array([1, 0.75, 0.5, 0.25, 0])).sum())
    printed = float(r.stdout.split()[0])
    assert abs(printed - score) < 1e-3, (r.stdout, score)


def test_cli_video_frames(fixtures, hf_tokenizer, tmp_path):
    """--frames DIR (11 frames): Q-ReAlign's 8 frames by linspace, each one image of one user
    turn, the video question and stem; ids against HF tokenizers, logits against the oracle."""
    from PIL import Image
    model = export(fixtures, "f32")
    rng = np.random.default_rng(7)
    fdir = os.path.join(str(tmp_path), "frames")
    os.makedirs(fdir)
    frames = [(rng.random((90, 160, 3)) * 255).astype(np.uint8) for _ in range(11)]
    for i, a in enumerate(frames):
        Image.fromarray(a).save(os.path.join(fdir, f"f{i:03d}.png"))
    dump = os.path.join(str(tmp_path), "dump")
    r = subprocess.run([os.path.join(ROOT, "qalign"), model, "--frames", fdir, "--preset", "q-realign-swift", "--dump", dump],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert r.returncode == 0, r.stderr
    keep = [int(round(i)) for i in np.linspace(0, 10, 8)]
    pxs, grids = [], []
    for k in keep:
        px, g = pixel_rows(os.path.join(fdir, f"f{k:03d}.png"), True)
        pxs.append(px)
        grids.append((1,) + g)
    n = [g[1] * g[2] // 4 for g in grids]
    text = "<|im_start|>user\n" + "".join("<|vision_start|>" + "<|image_pad|>" * k + "<|vision_end|>" for k in n)
    text += "Can you rate the quality of this video?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    enc = hf_tokenizer([text, " The quality of the video is"] + [" " + w for w in ("excellent", "good", "fair", "poor", "bad")],
                       str(tmp_path))
    ids = enc[0] + enc[1]
    assert np.load(os.path.join(dump, "input_ids.npy")).reshape(-1).tolist() == ids
    oracle = qwen_ref.Qwen35(os.path.join(fixtures, "checkpoint"))
    with torch.no_grad():
        lv = oracle.forward(ids, torch.from_numpy(np.concatenate(pxs)), grids, [e[0] for e in enc[2:]]).numpy()
    got = np.load(os.path.join(dump, "level_logits.npy")).reshape(-1)
    assert float(np.abs(got - lv).max()) < 2e-4, (got, lv)


def test_no_tokenizer_is_refused_clearly(fixtures, tmp_path):
    """A checkpoint without tokenizer.json exports (token ids only) but cannot score images:
    one line saying so, exit status 1."""
    ck = os.path.join(str(tmp_path), "ck")
    os.makedirs(ck)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copy(os.path.join(fixtures, "checkpoint", name), ck)
    out = os.path.join(str(tmp_path), "notok.qalign")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), "--model", ck, out, "--dtype", "f32", "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([os.path.join(ROOT, "qalign"), out, os.path.join(fixtures, "checkpoint", "config.json")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "no tokenizer" in r.stderr and "re-run export.py" in r.stderr, r.stderr


def hf_decode(ids_lists, tmp):
    """HF tokenizers' decode (skip_special_tokens false) of each list of ids."""
    import json
    src, dst = os.path.join(tmp, "dec_in.json"), os.path.join(tmp, "dec_out.json")
    with open(src, "w") as f:
        json.dump(ids_lists, f)
    tj = os.path.join(HERE, "data", "qwen_tokenizer", "tokenizer.json")
    r = subprocess.run(["node", os.path.join(NODE_DIR, "bpe_oracle.mjs"), tj, "decode", src, dst], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.load(open(dst))


ASK_TOKENS = 10
ASK_MIN_MARGIN = 1e-3  # 5x the f32-vs-float64 logit tolerance of test_cli_score_end_to_end


def test_ask_greedy_matches_the_oracle(fixtures, hf_tokenizer, tmp_path):
    """qalign --ask on a Qwen3.5 model: token for token the greedy loop of the oracle
    (tests/qwen_ref.py's forward over the whole sequence at every step, float64: no cache, so
    the positions of the answer's tokens come from get_rope_index itself) on the chat template
    with thinking closed, for two images x two questions and two images in one prompt; the
    answer is HF tokenizers' decode of the ids, stripped; EOS is <|im_end|>. Every step's top-2
    logit margin in the oracle is at least ASK_MIN_MARGIN (no near-tie can make it flaky)."""
    import copy
    import json
    from PIL import Image
    # the fixtures' checkpoint ties lm_head to the embeddings: a random tied model repeats its
    # last input token ("\n") forever, which would not test much; an untied one says more
    cfg = copy.deepcopy(qwen_ref.TINY)
    cfg["tie_word_embeddings"] = False
    ck = os.path.join(str(tmp_path), "untied")
    qwen_ref.write_checkpoint(ck, cfg, seed=3)
    model = os.path.join(str(tmp_path), "untied.qalign")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), "--model", ck, model, "--dtype", "f32", "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rng = np.random.default_rng(11)
    imgs = []
    for k, (h, w) in enumerate(((70, 100), (64, 96))):
        p = os.path.join(str(tmp_path), f"a{k}.png")
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(p)
        imgs.append(p)
    oracle = qwen_ref.Qwen35(ck)
    V = oracle.tc["vocab_size"]
    eos = hf_tokenizer(["<|im_end|>"], str(tmp_path))[0][0]

    def greedy(files, question):
        pxs, grids = [], []
        for f in files:
            px, g = pixel_rows(f, False)
            pxs.append(px)
            grids.append((1,) + g)
        text = "<|im_start|>user\n" + "".join("<|vision_start|>" + "<|image_pad|>" * (g[1] * g[2] // 4) + "<|vision_end|>"
                                              for g in grids)
        text += question + "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        ids = hf_tokenizer([text], str(tmp_path))[0]
        out, margins = [], []
        with torch.no_grad():
            for _ in range(ASK_TOKENS):
                lg = oracle.forward(ids + out, torch.from_numpy(np.concatenate(pxs)), grids, list(range(V))).numpy()
                top = np.sort(lg)[-2:]
                margins.append(float(top[1] - top[0]))
                nxt = int(np.argmax(lg))
                if nxt == eos:
                    break
                out.append(nxt)
        return out, min(margins)

    questions = ["Describe the quality of this image.", "Is it blurry? Why?"]
    n, seen = 0, []
    for q in questions:
        r = subprocess.run([os.path.join(ROOT, "qalign"), "--ask", q, "--json", "--max-tokens", str(ASK_TOKENS), model, *imgs],
                           capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
        assert r.returncode == 0, r.stderr
        rows = [json.loads(x) for x in r.stdout.splitlines()]
        assert len(rows) == 2
        seen.append(rows[0]["tokens"])
        for row in rows:
            want, margin = greedy([row["path"]], q)
            assert margin >= ASK_MIN_MARGIN, f"{row['path']}, {q}: a near-tie ({margin:.1e}): choose another record"
            assert row["tokens"] == want, (row["path"], q, row["tokens"], want)
            assert row["answer"] == hf_decode([want], str(tmp_path))[0].strip()
            assert row["finish"] == ("length" if len(want) == ASK_TOKENS else "eos") and row["error"] is None
            assert row["prompt"] == ("<|im_start|>user\n<|image|>{question}<|im_end|>\n<|im_start|>assistant\n"
                                     "<think>\n\n</think>\n\n")
            n += 1
    q = "Which image is sharper?"
    r = subprocess.run([os.path.join(ROOT, "qalign"), "--ask", q, "--json", "--one-prompt", "--max-tokens", str(ASK_TOKENS),
                        model, *imgs], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (row,) = [json.loads(x) for x in r.stdout.splitlines()]
    want, margin = greedy(imgs, q)
    assert margin >= ASK_MIN_MARGIN and row["tokens"] == want, (row["tokens"], want, margin)
    n += 1
    assert len({t for toks in seen for t in toks}) > 3, seen  # not one token over and over
    print(f"qwen --ask: {n} greedy answers x {ASK_TOKENS} tokens = the oracle's, token for token")
