"""The Q-Align family as presets (issue 14), on the tiny reference checkpoint, against the
independent PyTorch oracle (tests/torch_ref.py) and the original scorers' prompts:

  * each preset: the prompt ids qalign runs (--dump input_ids) are sentencepiece's
    tokenizer_image_token of the ORIGINAL prompt string (written out below with the source
    line it comes from), and the level logits match the oracle within 1e-4 (f32 file);
    probabilities, score, std and --scale follow from them as the original computes them
    (Q-Instruct's boost: the original's logits.reshape(-1, 3, 3).mean(1) over its 9 words);
  * Compare2Score end to end with 5 synthetic anchors: the 0..100 score against the
    official scoring code restated in PyTorch (preference = softmax(logits / 100) . weights
    per anchor, the 6 x 6 matrix, the normal-CDF maximum-likelihood fit with Adam) within
    1e-3, identical run to run, with --batch 1 and through the --dump path (every row
    recomputed, no K/V cache); the fit alone on random preferences, within 1e-3;
  * --per-frame (each frame's row = the frame scored as an image, bit for bit), --scale,
    std for every preset, --compare (figures recomputed here), the presets in --help and
    the README, the errors, and export.py's layout checks.
"""
import csv
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import PYTHON, ROOT, report, run, levels, logits, probs

Image = pytest.importorskip("PIL.Image")

EXPORT = ROOT / "export.py"
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
S = 56
LOGIT_ABS = 1e-4          # the bound for level logits (f32 file vs the oracle)
C2S_ABS = 1e-3            # Compare2Score's 0..100 score vs the official scoring code
ENV = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))

# The original prompts, verbatim, where they are:
SCORE = "USER: How would you rate the {task} of this {input}?\n<|image|>\nASSISTANT: The {task} of the {input} is"
#   q-future/one-align score() as fixed on Hugging Face = IQA-PyTorch pyiqa/archs/q_align/modeling_mplug_owl2.py:L279
#   (.format(task_, input_, task_, input_)); Q-Align q_align/evaluate/scorer.py:L30, L67, L103 are its
#   quality/image, aesthetics/image and quality/video instances
DEQA = "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is"
#   zhiyuanyou/DeQA-Score src/evaluate/scorer.py:L18
QINSTRUCT = "USER: <|image|>Rate the quality of the image.\nASSISTANT: "
#   Q-Future/Q-Instruct boost_qa/model.py:L19
C2S = ("USER: <|image|> <|image|> Compared with the first image, what is your quality rating for second image? "
       "\nASSISTANT: The quality of the second image is")
#   IQA-PyTorch pyiqa/archs/q_align/cmp_modelling_mplug_owl2.py:L326
IAA_EVAL = "USER: <|image|>How would you rate the aesthetics of this image? ASSISTANT: The aesthetics of the image is"
#   Q-Align q_align/evaluate/iaa_eval.py:L78-L86 (conv template mplug_owl2 + " The aesthetics of the image is")

FIVE = ["excellent", "good", "fair", "poor", "bad"]
BOOST9 = ["good", "average", "poor", "high", "medium", "low", "fine", "acceptable", "bad"]  # boost_qa/model.py:L27

# preset -> (prompt template, words, weights, pad, temperature, tasks, video)
PRESETS = {
    "one-align": (SCORE, FIVE, [5, 4, 3, 2, 1], True, 1.0, ["quality", "aesthetics", "aesthetic"], True),
    "q-align": (SCORE, FIVE, [1, 0.75, 0.5, 0.25, 0], True, 1.0, ["quality", "aesthetics"], True),
    "deqa": (DEQA, FIVE, [5, 4, 3, 2, 1], True, 1.0, ["quality"], False),
    "q-instruct": (QINSTRUCT, ["good", "average", "poor"], [1, 0.5, 0], False, 1.0, ["quality"], False),
    "q-instruct-boost": (QINSTRUCT, BOOST9, [1, 0.5, 0], False, 1.0, ["quality"], False),
    "compare2score": (C2S, ["inferior", "worse", "similar", "better", "superior"], [0, 0.25, 0.5, 0.75, 1], True,
                      100.0, ["quality"], False),
}


# ---------------------------------------------------------------------------------------
# fixtures and helpers

@pytest.fixture(scope="module")
def model(tiny_ref, workdir):
    p = workdir / "family_f32.qalign"
    r = run([PYTHON, EXPORT, "-q", tiny_ref / "checkpoint", p, "--dtype", "f32"])
    assert r.returncode == 0, r.stderr
    return p


def make_image(path, w, h, seed):
    """A smooth gradient with noise of a seed-dependent strength (images of different
    'quality' for the comparisons)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(w + h - 2, 1)], -1)
    img = base + rng.normal(0, 10 + 25 * (seed % 5), base.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def anchors(workdir):
    d = workdir / "family_anchors"
    d.mkdir()
    for k, (w, h) in enumerate([(64, 48), (40, 70), (56, 56), (100, 30), (33, 77)]):
        make_image(d / f"anchor_{k}.png", w, h, 100 + k)
    return d


@pytest.fixture(scope="module")
def images(workdir, tiny_ref):
    d = workdir / "family_images"
    d.mkdir()
    return [tiny_ref / "inputs" / "photo.jpg", tiny_ref / "inputs" / "alpha.png", make_image(d / "g.png", 71, 45, 7)]


def qa(*args):
    return run([ROOT / "qalign", *args], env=ENV)


def jsonl(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def pixels(path, pad):
    import torch_ref as tr
    prep = tr.preprocess if pad else tr.preprocess_nopad
    return prep(Image.open(path), S, MEAN, STD)[1]


def original_levels(oracle, preset, files, task="quality", input_="image"):
    """The oracle's level logits, probabilities, score and std of one prompt as the original
    scorer computes them (one image per marker; a video: all frames at the one marker)."""
    import torch
    import torch_ref as tr
    ref, sp = oracle
    tmpl, words, weights, pad, temp, _, _ = PRESETS[preset]
    ids = tr.prompt_ids_template(sp, tmpl, task, input_)
    xs = [pixels(f, pad) for f in files]
    if input_ == "video":
        v, _ = ref.vision(torch.from_numpy(np.stack(xs)))
        a, _ = ref.abstractor(v)
        last = ref.decoder(ids, a)["logits_last"]
    else:
        visual = []
        for x in xs:
            v, _ = ref.vision(torch.from_numpy(x[None]))
            visual.append(ref.abstractor(v)[0][0])
        last = ref.decoder(ids, visual)["logits_last"]
    word_logits = last[tr.level_ids_words(sp, words)]
    if preset == "q-instruct-boost":        # output_logits.reshape(-1, 3, 3).mean(1)
        lv = word_logits.reshape(-1, 3, 3).mean(1)[0]
    else:
        lv = word_logits
    p = torch.softmax(lv / temp, -1)
    w = torch.tensor(weights, dtype=p.dtype)
    score = float(p @ w)
    std = float(torch.sqrt(p @ (w - score) ** 2))       # DeQA-Score cal_distribution_gap.py:L83-L87
    return dict(ids=ids, logits=lv.numpy(), probs=p.numpy(), score=score, std=std)


def check_row(out, want, preset, scale=None):
    _, words, weights, _, _, _, _ = PRESETS[preset]
    names = words[:3] if preset == "q-instruct-boost" else words
    assert levels(out) == names
    dl = float(np.abs(np.array(logits(out)) - want["logits"]).max())
    dp = float(np.abs(np.array(probs(out)) - want["probs"]).max())
    assert dl <= LOGIT_ABS, (preset, logits(out), want["logits"])
    assert dp <= 1e-5, (preset, probs(out), want["probs"])
    lo, hi = min(weights), max(weights)
    a, b = (lo, hi) if scale is None else scale
    k = (b - a) / (hi - lo)
    assert abs(out["score"] - (a + (want["score"] - lo) * k)) <= 2e-5 * max(1, abs(k))
    # std: the spread of the row's own distribution, sqrt(sum p (w - score)^2), on the scale
    p, w = np.array(probs(out)), np.array(weights, dtype=np.float64)
    own = np.sqrt(p @ (w - p @ w) ** 2) * k
    assert abs(out["std"] - own) <= 2e-5 * max(1, k) and abs(out["std"] - want["std"] * k) <= 2e-5 * max(1, k)
    return dl


# ---------------------------------------------------------------------------------------
# 1. every preset: prompt ids and level logits against the oracle

CASES = [(p, t, "image") for p in PRESETS if p != "compare2score" for t in PRESETS[p][5]] + \
        [(p, "quality", "video") for p in PRESETS if PRESETS[p][6]] + [("compare2score", "quality", "image")]


@pytest.mark.parametrize("preset,task,input_", CASES, ids=[f"{p}-{t}-{i}" for p, t, i in CASES])
def test_preset_prompt_ids_and_logits(preset, task, input_, model, oracle, images, anchors, workdir):
    dump = workdir / f"family_dump_{preset}_{task}_{input_}"
    dump.mkdir()
    args = ["--preset", preset, "--json", "--dump", dump]
    if task != "quality":
        args += ["-t", task]
    if preset == "compare2score":               # one comparison: anchor first, then the image
        files = [anchors / "anchor_3.png", images[0]]
        args += ["--one-prompt", *files]
    elif input_ == "video":
        files = images
        args += ["--video", *files]
    else:
        files = [images[1]]                      # 300x500 RGBA: padding matters
        args += files
    r = qa(model, *args)
    assert r.returncode == 0, r.stderr
    (out,) = jsonl(r.stdout)
    want = original_levels(oracle, preset, files, task, input_)
    assert np.load(dump / "input_ids.npy").tolist() == want["ids"], "the prompt ids differ from the original prompt's"
    dl = check_row(out, want, preset)
    assert out["frames"] == len(files) and out["task"] == task
    for s in ("0-1", "1-5", "0-100"):            # --scale everywhere
        r = qa(model, *[a for a in args if a not in ("--dump", dump)], "--scale", s)
        (o2,) = jsonl(r.stdout)
        assert o2["scale"] == s
        check_row(o2, want, preset, tuple(float(x) for x in s.split("-")))
    report(f"family: preset {preset} ({task}, {input_}): prompt ids = sentencepiece's of the original prompt, "
           f"level logits vs oracle {dl:.1e}, std and --scale 0-1/1-5/0-100 checked")


def test_boost_levels_are_means_of_single_words(model, images):
    """--levels good|high|fine=1,... gives each level the mean of its words' logits."""
    img = images[0]
    boost = jsonl(qa(model, "--preset", "q-instruct-boost", "--json", img).stdout)[0]
    words = jsonl(qa(model, "--preset", "q-instruct", "--levels", ",".join(f"{w}={i}" for i, w in enumerate(BOOST9)),
                     "--json", img).stdout)[0]
    single = dict(zip(levels(words), logits(words)))
    for level, group in zip(levels(boost), (("good", "high", "fine"), ("average", "medium", "acceptable"),
                                             ("poor", "low", "bad"))):
        assert abs(boost[f"logit_{level}"] - np.mean([single[w] for w in group])) <= 2e-6


# ---------------------------------------------------------------------------------------
# 2. Compare2Score end to end

def official_compare2score(oracle, anchor_files, image):
    """The official scoring code, restated: one prompt per anchor (anchor first), the
    preference, the 6 x 6 matrix, the normal-CDF fit; returns (score, preferences)."""
    import torch_ref as tr
    prefs = []
    for a in anchor_files:
        lv = original_levels(oracle, "compare2score", [a, image])
        prefs.append(tr.c2s_preference(lv["logits"]))
    score, start = tr.c2s_fit(tr.c2s_matrix(prefs))
    return score, np.squeeze(np.array(prefs)), start


def test_compare2score_end_to_end(model, oracle, anchors, images, workdir):
    anchor_files = sorted(anchors.glob("*.png"))
    r1 = qa(model, "--preset", "compare2score", "--anchors", anchors, "--json", *images)
    assert r1.returncode == 0, r1.stderr
    rows = {os.path.basename(x["path"]): x for x in jsonl(r1.stdout)}
    worst = worst_pref = 0.0
    for img in images:
        out = rows[os.path.basename(img)]
        score, prefs, _ = official_compare2score(oracle, anchor_files, img)
        assert out["scale"] == "0-100" and out["std"] is None and len(out["anchor_prefs"]) == 5
        worst = max(worst, abs(out["score"] - score))
        worst_pref = max(worst_pref, float(np.abs(np.array(out["anchor_prefs"]) - prefs).max()))
        assert abs(out["score"] - score) <= C2S_ABS, (img, out["score"], score)
        assert np.abs(np.array(out["anchor_prefs"]) - prefs).max() <= 2e-6
    # identical run to run, one image per batch, and through the --dump path (no K/V cache)
    r2 = qa(model, "--preset", "compare2score", "--anchors", anchors, "--json", *images)
    r3 = qa(model, "--preset", "compare2score", "--anchors", anchors, "--json", "--batch", "1", "--threads", "1", *images)
    assert r2.stdout == r1.stdout and r3.stdout == r1.stdout
    dump = workdir / "family_c2s_dump"
    dump.mkdir()
    r4 = qa(model, "--preset", "compare2score", "--anchors", anchors, "--json", "--dump", dump, images[2])
    assert r4.returncode == 0 and jsonl(r4.stdout)[0] == rows[os.path.basename(images[2])]
    # --scale maps 0..100
    r5 = qa(model, "--preset", "compare2score", "--anchors", anchors, "--json", "--scale", "0-1", images[0])
    o5 = jsonl(r5.stdout)[0]
    assert o5["scale"] == "0-1" and abs(o5["score"] - rows[os.path.basename(images[0])]["score"] / 100) <= 1e-6
    report(f"family: compare2score on {len(images)} images with 5 synthetic anchors: 0-100 score vs the official "
           f"scoring code (PyTorch, normal CDF, Adam 100 steps) max |d| {worst:.1e}, preferences {worst_pref:.1e}; "
           "identical over 2 runs, --batch 1 --threads 1 and the --dump path")


def test_compare2score_fit_alone(workdir):
    """compare_fit against the official fit on 300 preference vectors, extremes included."""
    import torch_ref as tr
    exe = ROOT / "build" / "test_c2s_fit"
    r = run(["make", "-C", ROOT, "-s", "build/test_c2s_fit"])
    assert r.returncode == 0, r.stderr
    rng = np.random.default_rng(3)
    prefs = np.concatenate([rng.uniform(0, 1, (200, 5)), rng.uniform(0.45, 0.55, (60, 5)),
                            rng.choice([1e-4, 0.02, 0.5, 0.98, 0.9999], (40, 5))]).astype(np.float32)
    r = run([exe], input="\n".join(" ".join(f"{p:.9g}" for p in row) for row in prefs) + "\n")
    got = [float(x) for x in r.stdout.split()]
    assert r.returncode == 0 and len(got) == len(prefs)
    worst = 0.0
    for p, g in zip(prefs, got):
        want, start = tr.c2s_fit(tr.c2s_matrix([np.float32(x) for x in p]))
        worst = max(worst, abs(g - want))
        assert abs(g - want) <= C2S_ABS, (p, g, want)
    report(f"family: Compare2Score fit alone vs the official fit on {len(prefs)} preference vectors: max |d| {worst:.1e}")
    # the start values qalign states are torch.manual_seed(0); torch.rand(6) on the CPU
    stated = " ".join(np.format_float_positional(np.float32(x)) for x in start)
    assert stated in (ROOT / "README.md").read_text().replace("\n", " "), stated


# ---------------------------------------------------------------------------------------
# 3. --per-frame, std, --scale, --compare

def test_per_frame(model, oracle, images, workdir):
    frames = [images[0], images[2], images[1]]
    r = qa(model, "--json", "--per-frame", "--video", *frames)
    assert r.returncode == 0, r.stderr
    rows = jsonl(r.stdout)
    video = jsonl(qa(model, "--json", "--video", *frames).stdout)[0]
    assert len(rows) == 4 and rows[0] == video and "frame" not in rows[0]
    for k, (row, f) in enumerate(zip(rows[1:], frames)):
        alone = jsonl(qa(model, "--json", f).stdout)[0]
        assert row["frame"] == k and row["kind"] == "frame" and row["frames"] == 1 and row["path"] == str(frames[0])
        assert {x: row[x] for x in alone if x not in ("path", "kind")} == \
               {x: alone[x] for x in alone if x not in ("path", "kind")}     # the same numbers as the image alone
        check_row(row, original_levels(oracle, "one-align", [f]), "one-align")
    # the plain lines, and result files: the video's row only
    plain = qa(model, "--per-frame", "--video", *frames).stdout.splitlines()
    assert len(plain) == 4 and all(line.endswith(f"[frame {k}]") for k, line in enumerate(plain[1:]))
    csv = workdir / "family_perframe.csv"
    assert qa(model, "-q", "--per-frame", "--csv", csv, "--video", *frames).returncode == 0
    assert len(csv.read_text().splitlines()) == 2
    report("family: --per-frame: 3 frames, each row = the frame scored as an image (same numbers), vs oracle <= 1e-4")


def test_std_and_scale_every_preset(model, anchors, images):
    img = images[0]
    for preset, (_, words, weights, _, _, _, _) in PRESETS.items():
        extra = ["--anchors", anchors] if preset == "compare2score" else []
        base = jsonl(qa(model, "--preset", preset, *extra, "--json", img).stdout)[0]
        lo, hi = (0, 100) if preset == "compare2score" else (min(weights), max(weights))
        assert base["scale"] == f"{lo:g}-{hi:g}"
        for s in ("0-1", "1-5", "0-100"):
            a, b = (float(x) for x in s.split("-"))
            o = jsonl(qa(model, "--preset", preset, *extra, "--json", "--scale", s, img).stdout)[0]
            assert abs(o["score"] - (a + (base["score"] - lo) * (b - a) / (hi - lo))) <= 1e-4 * max(1, b)
            if preset == "compare2score":
                assert o["std"] is None          # a fitted score has no level distribution
            else:
                assert abs(o["std"] - base["std"] * (b - a) / (hi - lo)) <= 1e-4 * max(1, b)
    # the plain line keeps 4 decimals of the scaled score
    line = qa(model, "--scale", "0-100", img).stdout
    assert re.match(r"\d+\.\d{4}  excellent=", line), line


def test_compare_two_models(model, tiny_ref, images, workdir):
    q8 = workdir / "family_q8.qalign"
    assert run([PYTHON, EXPORT, "-q", tiny_ref / "checkpoint", q8, "--dtype", "q8_0"]).returncode == 0
    inputs = [images[0], images[1], images[2], tiny_ref / "inputs" / "gray.jpg", tiny_ref / "inputs" / "progressive.jpg"]
    r = qa("--compare", model, q8, "-q", *inputs)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    table = [line.split() for line in lines[1:-1]]
    a = {Path(t[3]).name: float(t[0]) for t in table}
    b = {Path(t[3]).name: float(t[1]) for t in table}
    for f in inputs:       # each column is what that model alone prints
        assert a[f.name] == float(qa(model, f).stdout.split()[0])
        assert b[f.name] == float(qa(q8, f).stdout.split()[0])
    x, y = np.array([a[f.name] for f in inputs]), np.array([b[f.name] for f in inputs])
    d = np.abs(y - x)

    def ranks(v):
        return np.argsort(np.argsort(v))
    m = re.search(r"max \|B - A\| ([\d.]+) .* mean \|B - A\| ([\d.]+), SRCC ([-\d.]+), PLCC ([-\d.]+)", lines[-1])
    assert m, lines[-1]
    assert abs(float(m.group(1)) - d.max()) <= 2e-4 and abs(float(m.group(2)) - d.mean()) <= 2e-4
    assert abs(float(m.group(3)) - np.corrcoef(ranks(x), ranks(y))[0, 1]) <= 1e-3
    assert abs(float(m.group(4)) - np.corrcoef(x, y)[0, 1]) <= 1e-3
    # a model against itself: no difference; a bad input is an error row and exit status 1
    bad = workdir / "family_bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    r = qa("--compare", model, model, "-q", images[0], bad)
    assert r.returncode == 1 and "error" in r.stdout and "max |B - A| 0.0000" in r.stdout, r.stdout + r.stderr
    r = qa("--compare", model, q8, "--csv", workdir / "x.csv", images[0])
    assert r.returncode == 1 and "--compare" in r.stderr
    report(f"family: --compare f32 vs q8_0 on {len(inputs)} images: max |d| {d.max():.4f}, columns = each model alone, "
           "SRCC/PLCC recomputed")


# ---------------------------------------------------------------------------------------
# 4. documentation and errors

def escaped(s):
    return s.replace("\n", "\\n")


def test_presets_in_help_and_readme(model):
    h = qa("--help").stdout
    readme = (ROOT / "README.md").read_text()
    for preset, (tmpl, *_rest) in PRESETS.items():
        assert re.search(rf"^  {re.escape(preset)} ", h, re.M), preset
        assert f'"{escaped(tmpl)}"' in h, (preset, tmpl)
        assert f"`{preset}`" in readme and escaped(tmpl) in readme, preset
    for where in (h, readme):
        for src in ("pyiqa/archs/q_align/modeling_mplug_owl2.py:L279", "src/evaluate/scorer.py:L18",
                    "boost_qa/model.py:L19", "cmp_modelling_mplug_owl2.py:L326", "q_align/evaluate/iaa_eval.py:L78-L86"):
            assert src in where, src
    assert escaped(IAA_EVAL.replace("aesthetics", "{task}").replace("this image", "this {input}")
                   .replace("the image is", "the {input} is")) in h
    assert "## Models" in readme


def test_iaa_eval_prompt_by_name(model, oracle, images, workdir):
    dump = workdir / "family_iaa"
    dump.mkdir()
    r = qa(model, "--prompt", "iaa-eval", "-t", "aesthetics", "--json", "--dump", dump, images[0])
    assert r.returncode == 0, r.stderr
    import torch_ref as tr
    assert np.load(dump / "input_ids.npy").tolist() == tr.prompt_ids_template(oracle[1], IAA_EVAL)


@pytest.mark.parametrize("args,needle", [
    (["--preset", "two-align"], "one-align"),
    (["--preset", "compare2score"], "--anchors"),
    (["--preset", "deqa", "-t", "aesthetics"], "quality only"),
    (["--preset", "q-instruct", "-t", "aesthetics"], "quality only"),
    (["--prompt", "iaa_eval"], "iaa-eval"),
    (["--prompt", "A <|image|> B <|image|>"], "exactly once"),
    (["--scale", "0-10"], "0-100"),
    (["--levels", "good|=1,bad=0"], "word=weight"),
    (["--levels", "good|high=1,=0"], "word=weight"),
    (["--levels", "good|high|good=1,bad=0"], "same token"),
    (["--compare", "x.qalign"], "needs a value"),
])
def test_preset_errors(args, needle, model, images):
    r = qa(model, *args, images[0]) if args[0] != "--compare" else qa(*args)
    assert r.returncode != 0 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_anchor_and_video_errors(model, anchors, images, workdir):
    four = workdir / "family_four_anchors"
    shutil.copytree(anchors, four)
    (four / "anchor_4.png").unlink()
    r = qa(model, "--preset", "compare2score", "--anchors", four, images[0])
    assert r.returncode == 1 and "5 anchor" in r.stderr, r.stderr
    # an image-only preset: a video is an error row, the images are still scored
    r = qa(model, "--preset", "q-instruct", "--json", "--video", images[0], images[2])
    assert r.returncode == 1 and "images only" in jsonl(r.stdout)[0]["error"]


# ---------------------------------------------------------------------------------------
# 5. export.py: the family's checkpoint layouts

DIMS = dict(v_dim=32, v_layers=1, v_heads=4, v_mlp=64, v_image=64, v_patch=16, a_layers=1, a_heads=4, a_queries=3,
            a_mlp=48, l_dim=32, l_layers=1, l_heads=4, l_kv_heads=4, l_mlp=64)


def add_tensors(ckpt, tensors, drop=()):
    import torch
    torch.save(tensors, ckpt / "pytorch_model-extra.bin")
    idx = json.loads((ckpt / "pytorch_model.bin.index.json").read_text())
    idx["weight_map"].update({k: "pytorch_model-extra.bin" for k in tensors})
    for k in drop:
        del idx["weight_map"][k]
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps(idx))


def test_export_layouts(real_tokenizer, workdir):
    import torch
    import torch_ref as tr
    base = workdir / "family_layout_base"
    tr.make_checkpoint(base, real_tokenizer, DIMS, seed=5)
    ref_out = workdir / "family_layout_base.qalign"
    r = run([PYTHON, EXPORT, base, ref_out, "--dtype", "f32"])
    assert r.returncode == 0 and "layout: mPLUG-Owl2" in r.stderr, r.stderr
    # rotary inv_freq buffers (older mPLUG-Owl2 conversions): ignored, the same file
    inv = workdir / "family_layout_invfreq"
    shutil.copytree(base, inv)
    add_tensors(inv, {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)})
    out = workdir / "family_layout_invfreq.qalign"
    r = run([PYTHON, EXPORT, inv, out, "--dtype", "f32"])
    assert r.returncode == 0 and "inv_freq buffers ignored" in r.stderr, r.stderr
    assert out.read_bytes() == ref_out.read_bytes()
    # a tensor of another architecture (a LLaVA projector): refused, named
    other = workdir / "family_layout_other"
    shutil.copytree(base, other)
    add_tensors(other, {"model.mm_projector.0.weight": torch.ones(4, 4)})
    r = run([PYTHON, EXPORT, "-q", other, workdir / "x.qalign"])
    assert r.returncode == 1 and "model.mm_projector.0.weight" in r.stderr and "Q-Align family" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # a missing tensor: refused, named
    miss = workdir / "family_layout_missing"
    shutil.copytree(base, miss)
    add_tensors(miss, {}, drop=["model.layers.0.mlp.up_proj.weight"])
    r = run([PYTHON, EXPORT, "-q", miss, workdir / "x.qalign"])
    assert r.returncode == 1 and "lacks 1 tensors" in r.stderr and "up_proj" in r.stderr, r.stderr
    # no visual_config: upstream's defaults (MPLUGOwl2Config(visual_config=None))
    nov = workdir / "family_layout_novisual"
    shutil.copytree(base, nov)
    cfg = json.loads((nov / "config.json").read_text())
    del cfg["visual_config"]
    (nov / "config.json").write_text(json.dumps(cfg))
    pre = json.loads((nov / "preprocessor_config.json").read_text())
    (nov / "preprocessor_config.json").write_text(json.dumps(dict(pre, size=448, crop_size=448)))
    import export
    c = export.read_config(str(nov))
    assert (c["v_dim"], c["v_layers"], c["v_image"], c["v_patch"], c["a_layers"], c["a_queries"], c["a_mlp"]) == \
           (1024, 24, 448, 14, 6, 64, 2816)
    r = run([PYTHON, EXPORT, "-q", nov, workdir / "x.qalign"])       # and these tensors do not fit them
    assert r.returncode == 1 and "lacks" in r.stderr, r.stderr



def test_make_test_real_says_how_to_enable_it(model, workdir):
    # (without CI: under CI=true the conftest turns a skip into a failure, and the skip here,
    # for real weights that cannot be downloaded, is the behaviour under test)
    # (and tests/real_weights_qwen.py, skipped as well: tests/test_real_qwen.py)
    env = {k: v for k, v in ENV.items() if k not in ("QALIGN_REAL_MODEL", "QALIGN_REAL_QWEN_MODEL", "CI")}
    r = run(["make", "-s", "-C", ROOT, "test-real", f"PYTHON={PYTHON}"], env=env)
    assert r.returncode == 0 and "2 skipped" in r.stdout and "QALIGN_REAL_MODEL" in r.stdout, r.stdout + r.stderr
    # a file that is not a one-align export is refused, not scored against one-align's values
    r = run([PYTHON, "-m", "pytest", "-q", ROOT / "tests" / "real_weights.py"], env=dict(env, QALIGN_REAL_MODEL=str(model)))
    assert r.returncode == 1 and "not a one-align export" in r.stdout, r.stdout[-2000:]


# ---------------------------------------------------------------------------------------
# every preset writes --csv / --jsonl and resumes them (one row schema, level columns from the levels)

@pytest.mark.parametrize("preset,extra", [("q-instruct", []), ("q-instruct-boost", []), ("compare2score", ["--anchors"]),
                                          ("one-align", ["--levels", "high=3,middling=2,low=1"])],
                         ids=["q-instruct", "q-instruct-boost", "compare2score", "custom-levels"])
def test_preset_result_files_and_resume(preset, extra, model, anchors, images, workdir):
    extra = ["--anchors", anchors] if extra == ["--anchors"] else extra
    words = ["high", "middling", "low"] if "--levels" in extra else PRESETS[preset][1][:3] if preset == "q-instruct-boost" \
        else PRESETS[preset][1]
    csv_path, jsonl_path = workdir / f"family_files_{preset}.csv", workdir / f"family_files_{preset}.jsonl"
    args = [model, "--preset", preset, *extra, "--csv", csv_path, "--jsonl", jsonl_path]
    r = qa(*args, "--json", *images[:2])
    assert r.returncode == 0, r.stderr
    printed = {x["path"]: x for x in jsonl(r.stdout)}
    # the CSV: the level columns are the preset's words (the test's table), the values the --json line's
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(csv_path, newline="") as f:
        header = next(csv.reader(f))
    assert header[7:7 + 2 * len(words)] == [f"p_{w}" for w in words] + [f"logit_{w}" for w in words], header
    assert header[:7] == ["path", "task", "kind", "frames", "score", "std", "scale"]
    assert header[7 + 2 * len(words):] == ["error", "model", "prompt", "levels", "pad", "precise", "max_frames"]
    assert len(rows) == 2
    for row in rows:
        want = printed[row["path"]]
        assert row["score"] == f"{want['score']:.6f}"
        for w in words:
            assert row[f"p_{w}"] == f"{want[f'p_{w}']:.6f}" and row[f"logit_{w}"] == f"{want[f'logit_{w}']:.6f}"
    # the JSONL: the --json lines themselves
    assert [json.loads(x) for x in jsonl_path.read_text().splitlines()] == list(printed.values())
    # --resume: both files' rows are reused, nothing is scored or written again
    before = csv_path.read_bytes(), jsonl_path.read_bytes()
    r2 = qa(*args, "--resume", *images[:2])
    assert r2.returncode == 0 and "2 of 2 inputs done before" in r2.stderr, r2.stderr
    assert (csv_path.read_bytes(), jsonl_path.read_bytes()) == before
    # a third image: appended under the same columns
    r3 = qa(*args, "--resume", *images[:3])
    assert r3.returncode == 0 and "2 of 3 inputs done before" in r3.stderr, r3.stderr
    with open(csv_path, newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    # another run's words cannot go into these columns
    if preset != "one-align":
        r4 = qa(model, "--csv", csv_path, images[2])
        assert r4.returncode != 0 and "level columns" in r4.stderr and len(r4.stderr.strip().splitlines()) == 1, r4.stderr
    report(f"family: --preset {preset}{' --levels' if '--levels' in extra else ''}: --csv/--jsonl with p_/logit_ columns "
           f"{' '.join(words)}, --resume reuses both")
