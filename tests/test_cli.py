"""The command line end to end: ./qalign on the tiny reference model (exported in f32).

The batch side's machinery (app.h) has its own unit tests (tests/test_app.py); these go through the real
binary and model (cli.c on qalign.h), and check results against tests/torch_ref.py (the
independent PyTorch oracle) wherever a number can be checked:

  * a generated mp4 (ffmpeg in the test) scores exactly as its frames, extracted by a
    separate ffmpeg, scored with --video; both match the oracle; --max-frames; --dump of a video;
  * a batch with a corrupt file in the middle: an error row, the others scored as alone,
    exit status 1; kill -9 in the middle (ffprobe held up by a wrapper) then --resume:
    every row exactly once, no input scored twice; --shard I/N slices cover a list once;
  * --eval numbers against hand-checked values (SRCC/KRCC of a known permutation, +-1
    for monotone labels, PLCC by the textbook formula), no scipy;
  * --report: the gallery opened in headless Chromium;
  * --prompt (the benchmark prompt of iqa_eval.py, iaa_eval.py's image-first prompt,
    Q-Instruct's scorer prompt), --levels (Q-Instruct's good=1,average=0.5,poor=0,
    Q-Align scorer.py's 1..0 weights, DeQA-Score's = the default), --no-pad (resized
    pixels byte-exact against transformers' CLIPImageProcessor resize + center_crop
    restated with Pillow), --task aesthetic (pyiqa's wording), --scale 0-1, --frames DIR
    (natural order, and --resume of a frame set), --json fields, exit codes, --timings;
  * --levels in the result files: each word's probability in its own p_<word> column, the
    scale column = the weights' range; words without a column refused for --csv/--jsonl.
Level logits must be within 2e-4 of the oracle, as for the fixtures. About 30 s on 2 cores
(most of it ffmpeg, ffprobe and Chromium processes).
"""
import csv
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PYTHON, ROOT, chromium_dom, report, run, levels, logits, probs

Image = pytest.importorskip("PIL.Image")

EXPORT = ROOT / "export.py"
LOGIT_ABS = 2e-4
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
S = 56                                   # the tiny model's image size
DEFAULT = "USER: How would you rate the {task} of this {input}?\n<|image|>\nASSISTANT: The {task} of the {input} is"
FFMPEG, FFPROBE = shutil.which("ffmpeg"), shutil.which("ffprobe")
need_ffmpeg = pytest.mark.skipif(not (FFMPEG and FFPROBE),
                                 reason="ffmpeg/ffprobe not on PATH (apt-get install ffmpeg): video tests skipped")


# ---------------------------------------------------------------------------------------
# fixtures and helpers

@pytest.fixture(scope="module")
def model(tiny_ref, workdir):
    p = workdir / "cli_tiny_f32.qalign"
    r = run([PYTHON, EXPORT, "-q", tiny_ref / "checkpoint", p, "--dtype", "f32"])
    assert r.returncode == 0, r.stderr
    return p


def oracle_score(oracle, files, template=DEFAULT, task="quality", input_="image",
                 words=("excellent", "good", "fair", "poor", "bad"), weights=(5, 4, 3, 2, 1), pad=True):
    """torch_ref on image files (several = the frames of one video): level logits, probs, score."""
    import torch_ref as tr
    ref, sp = oracle
    prep = tr.preprocess if pad else tr.preprocess_nopad
    x = np.stack([prep(Image.open(f), S, MEAN, STD)[1] for f in files])
    ids = tr.prompt_ids_template(sp, template, task, input_)
    st = tr.score_levels(ref, x, ids, tr.level_ids_words(sp, list(words)), list(weights))
    return st, ids


# OpenMP threads that spin while they wait make a run of the tiny model 10-50x slower when
# the machine is busy with other work (measured: 0.05 s -> 0.3..2.4 s); passive waiting
# keeps the default thread count and the numbers, and the file within its time budget.
QA_ENV = dict(os.environ)
QA_ENV.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def qa(bin_, *args, **kw):
    kw.setdefault("env", QA_ENV)
    return run([bin_, *args], **kw)


def jsonl(text):
    return [json.loads(l) for l in text.splitlines() if l.strip()]


def close_to_oracle(out, st):
    d = max(abs(a - b) for a, b in zip(logits(out), st["level_logits"]))
    d = max(d, abs(out["score"] - float(st["score"][0])))
    assert len(logits(out)) == len(st["level_logits"])
    assert d <= LOGIT_ABS, (logits(out), list(st["level_logits"]), out["score"], st["score"])
    return d


def make_image(path, w, h, seed):
    """A smooth pattern plus noise; PNG or JPEG by suffix."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = np.stack([np.sin(xx / (3 + seed % 7)), np.cos(yy / (2 + seed % 5)), np.sin((xx + 2 * yy) / (4 + seed % 3))], -1)
    a = ((a * 0.5 + 0.5) * (150 + 10 * (seed % 10)) + rng.integers(0, 60, (h, w, 3))).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(a)
    if str(path).endswith(".jpg"):
        im.save(path, quality=90)
    else:
        im.save(path)
    return Path(path)


def make_corrupt_jpeg(path, seed=99):
    tmp = Path(str(path) + ".full.jpg")
    make_image(tmp, 80, 60, seed)
    b = tmp.read_bytes()
    tmp.unlink()
    Path(path).write_bytes(b[: len(b) // 2])          # truncated in the entropy-coded data
    return Path(path)


def make_set(d, names, seed=0):
    d.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        make_image(d / n, 40 + 7 * i, 30 + 5 * ((i * 3) % 7), seed + i)
    return d


def read_csv(p):
    return list(csv.DictReader(open(p, newline="")))


def make_video(path, rate="30000/1001", seconds=3.2, size="96x72"):
    r = run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}", "-t", str(seconds),
             "-c:v", "libx264", "-bf", "2", "-pix_fmt", "yuv420p", path])
    if r.returncode != 0:   # an ffmpeg without libx264
        r = run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}",
                 "-t", str(seconds), "-c:v", "mpeg4", "-q:v", "3", path])
    assert r.returncode == 0, r.stderr
    return Path(path)


def video_indices(path):
    """The original loader's frames (q_align load_video on decord's numbers), computed here
    from ffprobe: count = packets, fps = avg_frame_rate; int(count / fps) frames at int(fps * i)."""
    r = run([FFPROBE, "-v", "error", "-count_packets", "-select_streams", "v:0", "-show_entries",
             "stream=nb_read_packets,avg_frame_rate", "-of", "json", path])
    s = json.loads(r.stdout)["streams"][0]
    num, den = (int(v) for v in s["avg_frame_rate"].split("/"))
    fps, count = num / den, int(s["nb_read_packets"])
    return [int(fps * i) for i in range(int(count / fps))]


def extract_frames(video, idx, out_dir):
    """The frames idx of video as PNGs, by a separate ffmpeg (select filter)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    expr = "+".join(f"eq(n\\,{k})" for k in idx)
    r = run([FFMPEG, "-v", "error", "-y", "-i", video, "-vf", f"select={expr}", "-fps_mode", "passthrough",
             out_dir / "f_%03d.png"])
    assert r.returncode == 0, r.stderr
    files = sorted(out_dir.glob("f_*.png"))
    assert len(files) == len(idx)
    return files


# ---------------------------------------------------------------------------------------
# videos

@need_ffmpeg
def test_video_equals_its_frames(qalign_bin, model, oracle, workdir):
    import torch_ref as tr
    d = workdir / "cli_video"
    d.mkdir()
    clip = make_video(d / "clip.mp4")
    idx = video_indices(clip)
    assert idx == [0, 29, 59]                     # 96 frames at 29.97 fps: 3 frames, NTSC rounding
    frames = extract_frames(clip, idx, d / "frames")

    r = qa(qalign_bin, model, "--json", clip)
    assert r.returncode == 0, r.stderr
    (v,) = jsonl(r.stdout)
    assert v["kind"] == "video" and v["frames"] == 3 and v["path"] == str(clip)
    r = qa(qalign_bin, model, "--json", "--video", *frames)
    assert r.returncode == 0, r.stderr
    (f,) = jsonl(r.stdout)
    assert f["kind"] == "frames" and f["frames"] == 3
    # same pixels, same computation: identical numbers
    assert (logits(v), probs(v), v["score"]) == (logits(f), probs(f), f["score"])
    st, ids = oracle_score(oracle, frames, input_="video")
    diff = close_to_oracle(v, st)

    # --max-frames 2 takes idx[(j * 3) // 2] = frames 0 and 1 of the three
    r = qa(qalign_bin, model, "--json", "--max-frames", "2", clip)
    assert r.returncode == 0 and "subsampled by --max-frames" in r.stderr, r.stderr
    (m,) = jsonl(r.stdout)
    r2 = qa(qalign_bin, model, "--json", "--video", frames[0], frames[1])
    (m2,) = jsonl(r2.stdout)
    assert m["frames"] == 2 and (logits(m), m["score"]) == (logits(m2), m2["score"])
    r = qa(qalign_bin, model, "--json", "--max-frames", "5", clip)        # more than there are: no change
    assert logits(jsonl(r.stdout)[0]) == logits(v) and "subsampled" not in r.stderr

    # --dump with a video: every frame's resized pixels, the video prompt, the same logits
    dump = d / "dump"                                   # created by qalign
    r = qa(qalign_bin, model, "--json", "--dump", dump, clip)
    assert r.returncode == 0, r.stderr
    rgb = np.load(dump / "resized_rgb.npy")
    assert rgb.shape == (3, S, S, 3) and rgb.dtype == np.uint8
    for k, fr in enumerate(frames):
        assert np.array_equal(rgb[k], tr.preprocess(Image.open(fr), S, MEAN, STD)[0]), f"frame {k}"
    assert np.load(dump / "pixel_values.npy").shape == (3, 3, S, S)
    assert np.load(dump / "input_ids.npy").tolist() == ids
    mod = np.load(dump / "modality_indicators.npy")
    assert mod.sum() == 3 * (8 + 1)                       # 3 frames x (8 queries + eos) visual rows
    assert np.abs(np.load(dump / "level_logits.npy") - np.array(logits(v))).max() <= 1e-6
    report(f"cli: mp4 (3 of 96 frames at 29.97 fps) = its ffmpeg-extracted frames exactly; vs oracle {diff:.1e}; "
           f"--max-frames and --dump of a video checked")


# ---------------------------------------------------------------------------------------
# batches: a corrupt file, kill -9 and --resume, shards

def test_batch_with_corrupt_file_in_the_middle(qalign_bin, model, workdir):
    d = make_set(workdir / "cli_batch", ["a_1.png", "a_2.jpg", "z_1.png", "z_2.jpg"], seed=10)
    make_corrupt_jpeg(d / "m_corrupt.jpg")
    (d / "notes.txt").write_text("not media: skipped in a directory walk\n")
    out = workdir / "cli_batch.csv"
    r = qa(qalign_bin, model, "--json", "--csv", out, d)
    assert r.returncode == 1, r.stderr
    rows = jsonl(r.stdout)
    names = [Path(x["path"]).name for x in rows]
    assert names == ["a_1.png", "a_2.jpg", "m_corrupt.jpg", "z_1.png", "z_2.jpg"]
    err = rows[2]
    assert err["score"] is None and all(v is None for v in probs(err) + logits(err)) and "JPEG" in err["error"]
    assert re.search(r"^qalign: error: .*m_corrupt\.jpg: JPEG", r.stderr, re.M), r.stderr
    table = read_csv(out)
    assert [Path(x["path"]).name for x in table] == names
    assert table[2]["error"] and table[2]["score"] == "" and all(not x["error"] for i, x in enumerate(table) if i != 2)
    # the others are scored as if alone
    for x in rows[:2] + rows[3:]:
        r1 = qa(qalign_bin, model, "--json", x["path"])
        assert r1.returncode == 0
        assert logits(jsonl(r1.stdout)[0]) == logits(x)
    (d / "m_corrupt.jpg").unlink()
    r = qa(qalign_bin, model, "--json", d)
    assert r.returncode == 0 and len(jsonl(r.stdout)) == 4


def test_batch_under_sanitizers_leaks_nothing(model, workdir):
    """A batch with good, corrupt and missing inputs, mapped and --no-mmap, in the
    AddressSanitizer/UBSan build with LeakSanitizer on: a bad file must not leak (a long
    run over a dataset would pile it up), and neither must the run as a whole."""
    r = run(["make", "-C", ROOT, "qalign-san"])
    assert r.returncode == 0, r.stderr[-2000:]
    d = make_set(workdir / "cli_leaks", ["a.png", "b.jpg", "c.png"], seed=31)
    make_corrupt_jpeg(d / "bad.jpg")
    (d / "truncated.png").write_bytes((d / "a.png").read_bytes()[:200])
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:exitcode=86", UBSAN_OPTIONS="halt_on_error=1:exitcode=87")
    for flags in ([], ["--no-mmap"]):
        r = run([ROOT / "qalign-san", *flags, "--json", "--batch", "2", model, d, workdir / "missing.png"], env=env)
        assert "Sanitizer" not in r.stderr and r.returncode == 1, r.stderr[-3000:]
        rows = jsonl(r.stdout)
        assert sum(x["score"] is not None for x in rows) == 3 and sum(x["error"] is not None for x in rows) == 3, rows


@need_ffmpeg
def test_kill_9_then_resume(qalign_bin, model, workdir):
    d = make_set(workdir / "cli_kill", [f"a_{i}.png" for i in range(5)] + [f"z_{i}.jpg" for i in range(5)], seed=20)
    make_video(d / "m_clip.mp4", rate="10", seconds=2.0, size="64x48")
    marker = workdir / "cli_kill.blocked"
    slow = workdir / "slow_ffprobe"
    slow.write_text(f'#!/bin/sh\ntouch "{marker}"\nexec sleep 60\n')   # holds qalign at the video
    slow.chmod(0o755)
    c, j = workdir / "cli_kill.csv", workdir / "cli_kill.jsonl"
    env = dict(QA_ENV, QALIGN_FFPROBE=str(slow))
    p = subprocess.Popen([str(qalign_bin), "-q", str(model), "--csv", str(c), "--jsonl", str(j), str(d)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        t0 = time.time()
        while not marker.exists() and time.time() - t0 < 30 and p.poll() is None:
            time.sleep(0.01)
        assert marker.exists(), "qalign never reached the video"
    finally:
        os.killpg(p.pid, signal.SIGKILL)          # qalign and its ffprobe: kill -9
        p.wait()
    assert p.returncode == -signal.SIGKILL
    before = read_csv(c)
    assert [Path(x["path"]).name for x in before] == [f"a_{i}.png" for i in range(5)]
    with open(c, "ab") as f:                     # a row torn by the kill
        f.write(str(d / "m_clip.mp4").encode() + b",qua")
    with open(j, "ab") as f:
        f.write(b'{"path": "' + str(d).encode())
    html = workdir / "cli_kill.html"
    r = qa(qalign_bin, model, "--json", "--csv", c, "--jsonl", j, "--resume", "--report", html, d)
    assert r.returncode == 0, r.stderr
    assert "resume: 5 of 11 inputs done before (rows reused); 6 to score: 6 new" in r.stderr, r.stderr
    again = [Path(x["path"]).name for x in jsonl(r.stdout)]
    assert again == ["m_clip.mp4"] + [f"z_{i}.jpg" for i in range(5)]       # nothing scored twice
    rows, jrows = read_csv(c), jsonl(j.read_text())
    want = sorted(str(p) for p in d.iterdir())
    for table in (rows, jrows):
        paths = [x["path"] for x in table]
        assert sorted(paths) == want and len(set(paths)) == len(paths)      # every row exactly once
        assert not any(x["error"] for x in table)
    # the gallery shows this run's items and the earlier run's (their thumbnails decoded again)
    page = html.read_text()
    assert len(re.findall(r'<figure class="item"', page)) == 11 and len(re.findall(r'<img class="thumb"', page)) == 11
    # and the rows are what a single uninterrupted run gives
    fresh = workdir / "cli_kill_fresh.csv"
    assert qa(qalign_bin, model, "-q", "--csv", fresh, d).returncode == 0
    assert {x["path"]: x["score"] for x in rows} == {x["path"]: x["score"] for x in read_csv(fresh)}
    report("cli: kill -9 while the 6th of 11 inputs (a video) was in ffprobe; --resume scored the other 6 "
           "once each, torn row dropped, CSV/JSONL = an uninterrupted run")


def test_shards_cover_the_list_once(qalign_bin, model, workdir):
    d = make_set(workdir / "cli_shard", [f"img_{i:02d}.png" for i in range(8)], seed=40)
    make_corrupt_jpeg(d / "img_03b.jpg")
    lst = workdir / "cli_shard.txt"
    lst.write_text("# a list\n" + "".join(f"{p}\n" for p in sorted(d.iterdir())) + f"{d / 'missing.png'}\n")
    full = workdir / "cli_shard_full.csv"
    qa(qalign_bin, model, "-q", "--csv", full, f"@{lst}")
    full_rows = read_csv(full)
    order = [x["path"] for x in full_rows]
    assert len(order) == 10 and order == sorted(order)
    seen = []
    for i in (1, 2, 3):
        out = workdir / f"cli_shard_{i}.csv"
        r = qa(qalign_bin, model, "-q", "--shard", f"{i}/3", "--csv", out, f"@{lst}")
        part = read_csv(out)
        assert [x["path"] for x in part] == order[i - 1::3]          # item k goes to shard k mod 3 + 1
        assert r.returncode == (1 if any(x["error"] for x in part) else 0)
        seen += part
    assert sorted(x["path"] for x in seen) == order                   # each exactly once
    byp = {x["path"]: (x["score"], bool(x["error"])) for x in full_rows}
    assert all(byp[x["path"]] == (x["score"], bool(x["error"])) for x in seen)
    for bad in ("0/3", "4/3", "1/0", "x"):
        r = qa(qalign_bin, model, "--shard", bad, lst)
        assert r.returncode == 1 and "--shard" in r.stderr


# ---------------------------------------------------------------------------------------
# evaluation and the gallery

def pearson(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return sxy / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def eval_line(stderr):
    m = re.search(r"^eval: SRCC (-?[\d.]+)  PLCC (-?[\d.]+)  KRCC (-?[\d.]+)  \(n = (\d+)\)$", stderr, re.M)
    assert m, stderr
    return [float(m.group(k)) for k in (1, 2, 3)] + [int(m.group(4))]


def test_eval_hand_checked(qalign_bin, model, workdir):
    d = make_set(workdir / "cli_eval" / "set", [f"p{i}.png" for i in range(6)], seed=60)
    out = workdir / "cli_eval.csv"
    r = qa(qalign_bin, model, "-q", "--csv", out, d)
    assert r.returncode == 0
    scores = {Path(x["path"]).name: float(x["score"]) for x in read_csv(out)}
    assert len(set(scores.values())) == 6
    by_score = sorted(scores, key=scores.get)          # ascending
    labels = workdir / "cli_eval_labels.csv"

    def evaluate(rows, header="image_name,MOS\n"):
        labels.write_text(header + "".join(f"{n},{v!r}\n" for n, v in rows))
        # --resume: nothing is scored again, the earlier rows are evaluated
        r = qa(qalign_bin, model, "-q", "--csv", out, "--resume", "--eval", labels, d)
        assert r.returncode == 0 and r.stdout == "", r.stderr
        return r.stderr, eval_line(r.stderr)

    # monotone labels: every coefficient 1; reversed: -1
    err, got = evaluate([(n, 2 * scores[n] + 1) for n in by_score])
    assert got == [1.0, 1.0, 1.0, 6]
    assert "6 of 6 results matched the 6 labels" in err and "6 by path tail" in err
    err, got = evaluate([(n, -scores[n]) for n in by_score])
    assert got == [-1.0, -1.0, -1.0, 6]
    # five labelled items whose labels put the score ranks in the order 2 1 4 3 5:
    # d = 1 -1 1 -1 0 -> SRCC = 1 - 6*4/(5*24) = 0.8; 8 concordant, 2 discordant pairs ->
    # KRCC = 6/10; PLCC by the textbook formula; the sixth result has no label
    y = [2, 1, 4, 3, 5]
    err, got = evaluate(list(zip(by_score[:5], y)), header="")
    x = [scores[n] for n in by_score[:5]]
    assert got[0] == 0.8 and got[2] == 0.6 and got[3] == 5
    assert abs(got[1] - pearson(x, y)) <= 0.5e-4 + 1e-12, (got, pearson(x, y))
    assert "5 of 6 results matched the 5 labels" in err
    report(f"cli: --eval SRCC/PLCC/KRCC = hand values (1, -1, 0.8/{got[1]:.4f}/0.6) on the model's own scores")


@need_ffmpeg
def test_gallery_in_chromium(qalign_bin, model, workdir):
    d = make_set(workdir / "cli_gallery", [f"g_{i}.png" for i in range(3)] + ["g_3.jpg", "g_4.jpg"], seed=70)
    make_corrupt_jpeg(d / "g_bad.jpg")
    make_video(d / "g_clip.mp4", rate="5", seconds=2.2, size="80x60")
    html, out = workdir / "cli_gallery.html", workdir / "cli_gallery.csv"
    r = qa(qalign_bin, model, "-q", "--report", html, "--csv", out, d)
    assert r.returncode == 1 and html.exists(), r.stderr
    text = html.read_text()
    assert "http:" not in text and "https:" not in text and "url(" not in text
    ok = {x["path"]: float(x["score"]) for x in read_csv(out) if not x["error"]}
    assert len(ok) == 6
    dom, err = chromium_dom(html, "gallery DOM check", timeout=90)
    assert "<main" in dom, err[-2000:]
    items = re.findall(r'<figure class="item" data-rank="(\d+)" data-score="([\d.]+)" data-path="([^"]*)"', dom)
    assert len(items) == 6
    assert [int(k) for k, _, _ in items] == list(range(1, 7))
    assert [p for _, _, p in items] == sorted(ok, key=lambda p: (-ok[p], p))           # by score
    assert all(abs(float(s) - ok[p]) < 1e-3 for _, s, p in items)
    errs = re.findall(r'<tr class="error-row" data-path="([^"]*)"', dom)
    assert [Path(p).name for p in errs] == ["g_bad.jpg"]
    m = re.search(r'<body[^>]*data-thumbs-ok="(\d+)"[^>]*data-thumbs-broken="(\d+)"', dom)
    assert m and (int(m.group(1)), int(m.group(2))) == (6, 0), "thumbnails did not all decode in Chromium"
    for f in re.findall(r"<figure.*?</figure>", dom, re.S):    # five bars, the probabilities
        bars = re.findall(r'class="fill" data-level="(\w+)" data-p="([\d.]+)" style="width: ?([\d.]+)%;?"', f)
        assert [b[0] for b in bars] == ["excellent", "good", "fair", "poor", "bad"], f[:300]
        assert abs(sum(float(b[1]) for b in bars) - 1) < 1e-5
    import base64
    srcs = re.findall(r'src="([^"]*)"', text)                   # self-contained: data: URIs only
    assert "href" not in text and len(srcs) == 6 and all(x.startswith("data:image/jpeg;base64,") for x in srcs)
    for x in srcs:                                               # each a JPEG Pillow opens, <= 160 px
        im = Image.open(io.BytesIO(base64.b64decode(x.split(",", 1)[1])))
        im.load()
        assert max(im.size) <= 160
    report("cli: --report gallery in headless Chromium: 6 items (5 images + 1 video) in score order, "
           "6 thumbnails decoded, 1 error row")


def test_resume_copies_between_files(qalign_bin, model, workdir):
    """Rows present in one results file only are copied to the other, not scored again."""
    d = make_set(workdir / "cli_copy", [f"c_{i}.png" for i in range(4)], seed=80)
    c, j = workdir / "cli_copy.csv", workdir / "cli_copy.jsonl"
    r = qa(qalign_bin, model, "-q", "--csv", c, d)
    assert r.returncode == 0 and r.stdout.count("\n") == 4        # 4 scores printed
    r = qa(qalign_bin, model, "-q", "--csv", c, "--jsonl", j, "--resume", d)
    assert r.returncode == 0 and r.stdout == ""                    # nothing scored again
    csv_rows, jl = read_csv(c), jsonl(j.read_text())
    assert len(csv_rows) == 4 and [x["path"] for x in jl] == [x["path"] for x in csv_rows]
    assert [round(x["score"], 6) for x in jl] == [float(x["score"]) for x in csv_rows]
    assert [logits(x) for x in jl] == [[float(x[f"logit_{w}"]) for w in ("excellent", "good", "fair", "poor", "bad")]
                                       for x in csv_rows]
    # the other way round, with one row missing from the CSV
    c.write_text("".join(c.read_text().splitlines(True)[:-1]))
    r = qa(qalign_bin, model, "-q", "--csv", c, "--jsonl", j, "--resume", d)
    assert r.returncode == 0 and r.stdout == "" and len(read_csv(c)) == 4


def test_without_ffmpeg(qalign_bin, model, workdir):
    d = make_set(workdir / "cli_noff", [f"n_{i}.png" for i in range(3)], seed=90)
    (d / "clip.mp4").write_bytes(b"\0\0\0\x18ftypisom" + b"\0" * 100)
    out = workdir / "cli_noff.csv"
    r = qa(qalign_bin, model, "-q", "--csv", out, d, env=dict(QA_ENV, PATH="/nonexistent"))
    assert r.returncode == 1
    rows = {Path(x["path"]).name: x for x in read_csv(out)}
    assert all(not rows[f"n_{i}.png"]["error"] for i in range(3))
    msg = rows["clip.mp4"]["error"]
    assert "ffmpeg and ffprobe not found on PATH" in msg and "--video FRAME..." in msg and "--frames DIR" in msg
    (d / "clip.mp4").unlink()                                     # the exit status says whether anything failed
    r = qa(qalign_bin, model, "-q", "--csv", workdir / "cli_noff2.csv", d, env=dict(QA_ENV, PATH="/nonexistent"))
    assert r.returncode == 0 and len(read_csv(workdir / "cli_noff2.csv")) == 3


# ---------------------------------------------------------------------------------------
# scorer variants: --prompt, --levels, --no-pad, --task aesthetic, --scale

PROMPTS = {
    # q_align/evaluate/iqa_eval.py: conv template mplug_owl2 with the image after the question
    "iqa_eval": ("USER: How would you rate the quality of this image?\n<|image|> ASSISTANT: The quality of the image is",
                 (), True),
    # q_align/evaluate/iaa_eval.py: the image first
    "iaa_eval": ("USER: <|image|>How would you rate the aesthetics of this image? ASSISTANT: The aesthetics of the image is",
                 (), True),
    # {task}/{input} substitution in a user template
    "template": ("USER: Rate the {task} of the {input}.\n<|image|>\nASSISTANT: The {input}'s {task} is", ("-t", "aesthetics"),
                 True),
    # Q-Instruct's scorer: image first, trailing space, 3 levels, no expand2square
    "q_instruct": ("USER: <|image|>Rate the quality of the image.\nASSISTANT: ",
                   ("--levels", "good=1,average=0.5,poor=0", "--no-pad"), False),
}


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_prompt_variants(name, qalign_bin, model, oracle, tiny_ref, workdir):
    template, extra, pad = PROMPTS[name]
    img = tiny_ref / "inputs" / "alpha.png"                 # 300x500 RGBA
    dump = workdir / f"cli_prompt_{name}"
    dump.mkdir()
    r = qa(qalign_bin, model, "--json", "--prompt", template, *extra, "--dump", dump, img)
    assert r.returncode == 0, r.stderr
    (out,) = jsonl(r.stdout)
    task = extra[1] if extra[:1] == ("-t",) else "quality"
    if "--levels" in extra:
        words, weights = ("good", "average", "poor"), (1.0, 0.5, 0.0)
        assert levels(out) == list(words)
    else:
        words, weights = ("excellent", "good", "fair", "poor", "bad"), (5, 4, 3, 2, 1)
        assert levels(out) == list(words)
    st, ids = oracle_score(oracle, [img], template, task, "image", words, weights, pad)
    assert np.load(dump / "input_ids.npy").tolist() == ids
    diff = close_to_oracle(out, st)
    assert np.abs(np.array(probs(out)) - st["probs"]).max() <= 1e-4
    report(f"cli: --prompt {name}: prompt ids = sentencepiece's, level logits vs oracle {diff:.1e}")


def test_levels_and_scale(qalign_bin, model, oracle, tiny_ref):
    img = tiny_ref / "inputs" / "photo.jpg"
    base = jsonl(qa(qalign_bin, model, "--json", img).stdout)[0]
    # Q-Align's scorer.py weighs excellent..bad as 1 0.75 0.5 0.25 0: (score - 1) / 4, = --scale 0-1
    qa_w = jsonl(qa(qalign_bin, model, "--json", "--levels", "excellent=1,good=0.75,fair=0.5,poor=0.25,bad=0", img).stdout)[0]
    s01 = jsonl(qa(qalign_bin, model, "--json", "--scale", "0-1", img).stdout)[0]
    assert s01["scale"] == "0-1" and base["scale"] == "1-5"
    assert abs(qa_w["score"] - (base["score"] - 1) / 4) <= 2e-6 and abs(s01["score"] - (base["score"] - 1) / 4) <= 2e-6
    assert logits(qa_w) == logits(base) and probs(s01) == probs(base)
    # DeQA-Score's scorer uses one-align's levels and weights: the same numbers as the default
    deqa = jsonl(qa(qalign_bin, model, "--json", "--levels", "excellent=5,good=4,fair=3,poor=2,bad=1", img).stdout)[0]
    assert (deqa["score"], logits(deqa)) == (base["score"], logits(base))
    assert levels(deqa) == ["excellent", "good", "fair", "poor", "bad"]
    # other words against the oracle; --scale 0-1 maps [min weight, max weight] to [0, 1]
    words, weights = ("high", "medium", "low", "fine"), (10, 6, 2, 7)
    r = qa(qalign_bin, model, "--json", "--levels", ",".join(f"{w}={x}" for w, x in zip(words, weights)), img)
    out = jsonl(r.stdout)[0]
    st, _ = oracle_score(oracle, [img], words=words, weights=weights)
    close_to_oracle(out, st)
    r = qa(qalign_bin, model, "--json", "--scale", "0-1", "--levels", ",".join(f"{w}={x}" for w, x in zip(words, weights)), img)
    assert abs(jsonl(r.stdout)[0]["score"] - (out["score"] - 2) / 8) <= 2e-6
    # the scale says the weights' range
    assert out["scale"] == "2-10" and deqa["scale"] == "1-5" and qa_w["scale"] == "0-1"
    # the plain line names the words
    line = qa(qalign_bin, model, "--levels", "good=1,average=0.5,poor=0", img).stdout
    assert re.fullmatch(r"\d\.\d{4}  good=\d\.\d{4} average=\d\.\d{4} poor=\d\.\d{4}  \S+\n", line), line


def test_levels_in_result_files(qalign_bin, model, tiny_ref, workdir):
    """p_excellent..p_bad hold each word's probability, whatever the --levels order (empty for a
    word the levels do not have); levels with another word get their own words' columns, and
    a file's columns are never written under another word's name."""
    img = tiny_ref / "inputs" / "photo.jpg"
    default, rev, two = (workdir / f"cli_lvcsv_{n}.csv" for n in ("default", "rev", "two"))
    assert qa(qalign_bin, model, "--csv", default, img).returncode == 0
    assert qa(qalign_bin, model, "--csv", rev, "--levels", "bad=1,poor=2,fair=3,good=4,excellent=5", img).returncode == 0
    (d,), (r,) = read_csv(default), read_csv(rev)
    assert d["scale"] == r["scale"] == "1-5"
    assert all(abs(float(d[k]) - float(r[k])) <= 2e-6 for k in ("score", "p_excellent", "p_good", "p_fair", "p_poor", "p_bad"))
    out = jsonl(qa(qalign_bin, model, "--json", "--csv", two, "--levels", "poor=0,good=1", img).stdout)[0]
    (t,) = read_csv(two)
    assert t["scale"] == "0-1" and abs(float(t["score"]) - out["score"]) <= 1e-6
    assert (float(t["p_poor"]), float(t["p_good"])) == pytest.approx(tuple(probs(out)), abs=1e-6)
    assert t["p_excellent"] == t["p_fair"] == t["p_bad"] == t["logit_bad"] == ""     # words the levels do not have
    # a word outside the five: the CSV's columns are the levels' own words (the --json line's values),
    # and a file with other columns is refused; --report draws bars for the five words only
    other = workdir / "cli_lvcsv_other.csv"
    out = jsonl(qa(qalign_bin, model, "--json", "--csv", other, "--levels", "good=1,average=0.5,poor=0", img).stdout)[0]
    (o,) = read_csv(other)
    assert list(o)[7:13] == ["p_good", "p_average", "p_poor", "logit_good", "logit_average", "logit_poor"], list(o)
    assert [float(o[f"p_{w}"]) for w in ("good", "average", "poor")] == pytest.approx(probs(out), abs=1e-6)
    r = qa(qalign_bin, model, "--csv", other, img)
    assert r.returncode == 1 and "level columns" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = qa(qalign_bin, model, "--report", workdir / "cli_lvcsv_bad.html", "--levels", "good=1,average=0.5,poor=0", img)
    assert r.returncode == 1 and "'average'" in r.stderr and r.stdout == ""
    for bad, needle in (("good", "word=weight"), ("good=1", "at least two"), ("good=x,bad=1", "not a number"),
                        ("good=1,=2", "word=weight")):
        r = qa(qalign_bin, model, "--levels", bad, img)
        assert r.returncode == 1 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)


NOPAD_SIZES = [(640, 480), (300, 500), (100, 57), (57, 100), (56, 56), (40, 30), (201, 56), (150, 75), (999, 7), (13, 14)]


def test_no_pad_matches_clip_processor(qalign_bin, model, oracle, workdir):
    import torch_ref as tr
    d = workdir / "cli_nopad"
    d.mkdir()
    worst = 0.0
    for i, (w, h) in enumerate(NOPAD_SIZES):
        img = make_image(d / f"in_{w}x{h}.png", w, h, 80 + i)
        dump = d / f"dump_{w}x{h}"
        dump.mkdir()
        r = qa(qalign_bin, model, "--json", "--no-pad", "--dump", dump, img)
        assert r.returncode == 0, r.stderr
        got = np.load(dump / "resized_rgb.npy")[0]
        want, x = tr.preprocess_nopad(Image.open(img), S, MEAN, STD)
        assert got.shape == (S, S, 3) and np.array_equal(got, want), f"{w}x{h}: resized pixels differ"
        assert np.abs(np.load(dump / "pixel_values.npy")[0] - x).max() <= 1e-6
        if i < 3:
            st, _ = oracle_score(oracle, [img], pad=False)
            worst = max(worst, close_to_oracle(jsonl(r.stdout)[0], st))
    # padding matters for a non-square image: the default differs
    a = jsonl(qa(qalign_bin, model, "--json", d / "in_640x480.png").stdout)[0]
    b = jsonl(qa(qalign_bin, model, "--json", "--no-pad", d / "in_640x480.png").stdout)[0]
    assert logits(a) != logits(b)
    report(f"cli: --no-pad resized pixels byte-exact vs CLIPImageProcessor resize+center_crop on "
           f"{len(NOPAD_SIZES)} sizes (incl. 999x7, 13x14 up-scaled); logits vs oracle {worst:.1e}")


def read_ppm(path):
    """A binary PPM (P6, maxval 255) as a uint8 (h, w, 3) array, read with Pillow."""
    with Image.open(path) as im:
        assert im.format == "PPM" and im.mode == "RGB"
        return np.asarray(im).copy()


def test_preprocess_only_pad_crop_and_model_fill(qalign_bin, model, tiny_ref, workdir):
    """--preprocess-only shows what the model sees: padded with the model's fill (or, with
    --no-pad, resized and centre-cropped) to the model's size. Oracles: torch_ref's
    preprocess (Q-Align's expand2square with int(255 * image_mean), Pillow bicubic) and
    clip_resize_crop (CLIPImageProcessor's resize + center_crop in Pillow); and the
    resized_rgb the scorer itself dumps."""
    import torch_ref as tr
    d = workdir / "cli_preonly"
    d.mkdir()
    # a model whose preprocessor has another mean: another fill colour (int(255 * mean))
    ck = d / "checkpoint"
    ck.mkdir()
    for f in (tiny_ref / "checkpoint").iterdir():
        (ck / f.name).symlink_to(f)
    (ck / "preprocessor_config.json").unlink()
    pp = json.loads((tiny_ref / "checkpoint" / "preprocessor_config.json").read_text())
    pp["image_mean"] = [0.2, 0.61, 0.93]
    (ck / "preprocessor_config.json").write_text(json.dumps(pp))
    other = d / "other_mean.qalign"
    r = run([PYTHON, EXPORT, "-q", ck, other, "--dtype", "f32"])
    assert r.returncode == 0, r.stderr
    n = 0
    for i, (w, h) in enumerate([(640, 480), (57, 100), (201, 56), (13, 14), (56, 56)]):
        img = make_image(d / f"in_{w}x{h}.png", w, h, 30 + i)
        pil = Image.open(img)
        for m, mean in ((model, MEAN), (other, pp["image_mean"])):
            out = d / "out.ppm"
            r = qa(qalign_bin, "--preprocess-only", "--model", m, img, out)
            assert r.returncode == 0, r.stderr
            assert np.array_equal(read_ppm(out), tr.preprocess(pil, S, mean, STD)[0]), (w, h, m.name)
            r = qa(qalign_bin, "--preprocess-only", "--no-pad", "--model", m, img, out)
            assert r.returncode == 0, r.stderr
            assert np.array_equal(read_ppm(out), tr.clip_resize_crop(pil.convert("RGB"), S)), (w, h, m.name, "no-pad")
            n += 2
        # --size beats the model's size; without a model: 448 and the CLIP fill
        r = qa(qalign_bin, "--preprocess-only", "--size", "40", "--model", other, "--no-pad", img, d / "o40.ppm")
        assert r.returncode == 0 and np.array_equal(read_ppm(d / "o40.ppm"), tr.clip_resize_crop(pil.convert("RGB"), 40))
        if i == 0:
            r = qa(qalign_bin, "--preprocess-only", img, d / "o448.ppm")
            assert r.returncode == 0 and np.array_equal(read_ppm(d / "o448.ppm"), tr.preprocess(pil, 448, MEAN, STD)[0])
    # what the scorer feeds the vision tower is what --preprocess-only shows
    img = d / "in_640x480.png"
    for extra, pre in (([], []), (["--no-pad"], ["--no-pad"])):
        dump = d / f"dump{len(extra)}"
        dump.mkdir()
        r = qa(qalign_bin, other, "--json", "--dump", dump, *extra, img)
        assert r.returncode == 0, r.stderr
        r = qa(qalign_bin, "--preprocess-only", "--model", other, *pre, img, d / "o.ppm")
        assert r.returncode == 0 and np.array_equal(np.load(dump / "resized_rgb.npy")[0], read_ppm(d / "o.ppm"))
    # a model without a fixed square input (Q-ReAlign's Qwen3.5: each image at about its own size)
    import qwen_ref
    qwen_ref.make_fixtures(str(d / "qwen"))
    qwen = d / "qwen_tiny.qalign"
    r = run([PYTHON, EXPORT, "-q", "--model", d / "qwen" / "checkpoint", qwen, "--dtype", "f32"])
    assert r.returncode == 0, r.stderr
    for args, needle in ((["--model", qwen, img, d / "x.ppm"], "not as a fixed square"),
                         (["--frob", img, d / "x.ppm"], "unknown option '--frob'"),
                         (["--model", d / "missing.qalign", img, d / "x.ppm"], "missing.qalign"),
                         (["--model", img, img, d / "x.ppm"], "in_640x480.png"),
                         (["--size", "0", img, d / "x.ppm"], "--size"),
                         (["--no-pad", img], "usage")):
        r = qa(qalign_bin, "--preprocess-only", *args)
        assert r.returncode == 1 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    report(f"cli: --preprocess-only (pad / --no-pad, the model's fill and size) byte-exact vs Pillow on {n} images; "
           f"= the scorer's resized_rgb; a Qwen3.5 model (no fixed square) refused with one line")


def test_task_aesthetic(qalign_bin, model, oracle, tiny_ref, workdir):
    import torch_ref as tr
    _, sp = oracle
    img = tiny_ref / "inputs" / "progressive.jpg"
    ids = {}
    for task in ("aesthetic", "aesthetics"):
        dump = workdir / f"cli_task_{task}"
        dump.mkdir()
        r = qa(qalign_bin, model, "--json", "-t", task, "--dump", dump, img)
        assert r.returncode == 0, r.stderr
        out = jsonl(r.stdout)[0]
        assert out["task"] == task
        ids[task] = np.load(dump / "input_ids.npy").tolist()
        assert ids[task] == tr.prompt_ids(sp, task, "image")
        st, _ = oracle_score(oracle, [img], task=task)
        close_to_oracle(out, st)
    assert ids["aesthetic"] != ids["aesthetics"]
    assert "How would you rate the aesthetic of this image?" in sp.decode([i for i in ids["aesthetic"] if i >= 0])
    r = qa(qalign_bin, model, "-t", "beauty", img)
    assert r.returncode == 1 and "--task" in r.stderr


# ---------------------------------------------------------------------------------------
# --frames DIR, --json, exit codes, --timings

def test_frames_dir_natural_order(qalign_bin, model, workdir):
    d = workdir / "cli_frames"
    d.mkdir()
    for k in (1, 2, 9, 10):
        make_image(d / f"frame_{k}.png", 64, 48, 100 + k)
    (d / "README.txt").write_text("not a frame\n")
    r = qa(qalign_bin, model, "--json", "--frames", d)
    assert r.returncode == 0, r.stderr
    (out,) = jsonl(r.stdout)
    assert out["kind"] == "frames" and out["frames"] == 4 and out["path"] == str(d)
    natural = [d / f"frame_{k}.png" for k in (1, 2, 9, 10)]
    same = jsonl(qa(qalign_bin, model, "--json", "--video", *natural).stdout)[0]
    assert logits(same) == logits(out)
    lexical = [d / f"frame_{k}.png" for k in (1, 10, 2, 9)]
    other = jsonl(qa(qalign_bin, model, "--json", "--video", *lexical).stdout)[0]
    assert logits(other) != logits(out)            # the order matters, so the test means something
    # --resume knows a frame set is done: no second row
    c = workdir / "cli_frames.csv"
    for k in range(2):
        r = qa(qalign_bin, model, "-q", "--frames", d, "--csv", c, *(["--resume"] if k else []))
        assert r.returncode == 0 and (r.stdout == "") == (k == 1)
    rows = read_csv(c)
    assert len(rows) == 1 and rows[0]["path"] == str(d) and rows[0]["kind"] == "frames" and rows[0]["frames"] == "4"
    empty = workdir / "cli_frames_empty"
    empty.mkdir()
    r = qa(qalign_bin, model, "--frames", empty)
    assert r.returncode == 1 and "no image in it" in r.stderr


def test_json_fields(qalign_bin, model, tiny_ref, workdir):
    img, gif = tiny_ref / "inputs" / "gray.jpg", workdir / "cli_anim.gif"
    Image.new("RGB", (8, 8)).save(gif)
    r = qa(qalign_bin, model, "--json", img, gif, tiny_ref / "inputs" / "nope.png")
    assert r.returncode == 1
    ok, e1, e2 = sorted(jsonl(r.stdout), key=lambda o: o["error"] is not None)
    words = ["excellent", "good", "fair", "poor", "bad"]
    keys = ["path", "task", "kind", "frames", "score", "std", "scale"] + [f"p_{w}" for w in words] + \
        [f"logit_{w}" for w in words] + ["error", "model", "prompt", "levels", "pad", "precise", "max_frames"]
    assert list(ok) == keys and ok["error"] is None and ok["kind"] == "image" and ok["frames"] == 1
    assert ok["task"] == "quality" and ok["scale"] == "1-5" and len(probs(ok)) == len(logits(ok)) == 5
    p = np.exp(np.array(logits(ok)) - max(logits(ok)))
    p /= p.sum()
    assert np.abs(p - probs(ok)).max() <= 2e-6 and abs(sum(probs(ok)) - 1) <= 1e-5
    assert abs(float(np.dot(probs(ok), [5, 4, 3, 2, 1])) - ok["score"]) <= 1e-5
    # std: the spread of the level distribution (DeQA-Score's cal_distribution_gap.py)
    std = math.sqrt(sum(p * (w - ok["score"]) ** 2 for p, w in zip(probs(ok), [5, 4, 3, 2, 1])))
    assert abs(std - ok["std"]) <= 2e-6 and ok["std"] > 0
    s01 = jsonl(qa(qalign_bin, model, "--json", "--scale", "0-1", img).stdout)[0]
    assert abs(s01["std"] - ok["std"] / 4) <= 2e-6
    for e in (e1, e2):   # a failed input: the same keys, no numbers, the reason
        assert list(e) == keys and e["error"] and e["score"] is None and e["frames"] == 0
    assert any("GIF" in e["error"] or "gif" in e["error"] for e in (e1, e2))
    r = qa(qalign_bin, model, "--json", "--video", img, img)
    v = jsonl(r.stdout)[0]
    assert list(v) == keys and v["kind"] == "frames" and v["frames"] == 2
    r = qa(qalign_bin, model, "--json", "--levels", "good=1,bad=0", img)
    assert levels(jsonl(r.stdout)[0]) == ["good", "bad"]
    # the --json line is the --jsonl row, byte for byte
    r = qa(qalign_bin, model, "--json", "--jsonl", workdir / "cli_fields.jsonl", img)
    assert r.stdout == (workdir / "cli_fields.jsonl").read_text()
    # a file name that needs escaping stays valid JSON
    odd = workdir / 'cli "quoted"\\name.jpg'
    shutil.copy(img, odd)
    r = qa(qalign_bin, model, "--json", odd)
    assert jsonl(r.stdout)[0]["path"] == str(odd)
    # bytes that are not UTF-8: \udcXX, as in the result files (os.fsencode gives them back)
    raw = os.fsencode(workdir) + b"/cli_\xff\xfe.jpg"
    shutil.copy(img, raw)
    r = qa(qalign_bin, model, "--json", os.fsdecode(raw))
    assert "\\udcff\\udcfe" in r.stdout and os.fsencode(jsonl(r.stdout)[0]["path"]) == raw


def test_exit_codes(qalign_bin, model, tiny_ref, workdir):
    img = tiny_ref / "inputs" / "gray.jpg"
    assert qa(qalign_bin, model, img).returncode == 0                          # all scored
    assert qa(qalign_bin, model, img, workdir / "missing.jpg").returncode == 1  # one failed
    assert qa(qalign_bin, model, "--help").returncode == 0
    r = qa(qalign_bin)
    assert r.returncode == 2 and "usage" in r.stderr                         # no model
    for args, needle in (((model,), "no INPUT"), ((model, "--bogus", img), "unknown option"),
                         ((model, "--resume", img), "--resume needs"), ((workdir / "none.qalign", img), "none.qalign"),
                         ((model, "--max-frames", "0", img), "--max-frames"), ((model, "--scale", "0-10", img), "--scale"),
                         ((model, "--dump", workdir, img, tiny_ref / "inputs" / "photo.jpg"), "--dump takes one input"),
                         ((model, "--dump", img, img), "not a directory"),
                         ((model, "--prompt", "no image marker", img), "<|image|>"),
                         ((model, "--prompt", "<|image|> twice <|image|>", img), "exactly once")):
        r = qa(qalign_bin, *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and needle in lines[0], (args, r.stderr)


def test_timings_line(qalign_bin, model, tiny_ref):
    imgs = [tiny_ref / "inputs" / "gray.jpg", tiny_ref / "inputs" / "photo.jpg"]
    r = qa(qalign_bin, model, "-q", "--timings", "--threads", "1", *imgs)
    assert r.returncode == 0
    lines = r.stderr.strip().splitlines()
    m = re.fullmatch(r"qalign: timings \((\d+) threads, ([a-z0-9 -]+)\): preprocess (\d+\.\d{3}) s, vision (\d+\.\d{3}) s, "
                     r"abstractor (\d+\.\d{3}) s, decoder (\d+\.\d{3}) s, total (\d+\.\d{3}) s", lines[-1])
    assert m, r.stderr
    assert m.group(1) == "1"
    parts = [float(m.group(k)) for k in range(3, 7)]
    assert abs(sum(parts) - float(m.group(7))) <= 0.0025
    assert "timings" not in qa(qalign_bin, model, "-q", *imgs).stderr
