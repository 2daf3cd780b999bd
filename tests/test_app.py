"""The batch side (app.h: inputs.c, video.c, results.c, evaluate.c, report.c, progress.c, sink.c): inputs, video frames through ffmpeg, result files and resume, evaluation, the HTML
gallery and the progress line - driven through tests/test_app.c (build/test_app).

What is checked, and against what:
  * frame selection: hand-computed index lists (29.97, 23.976, 59.94, 25, 24, 1, 0.5 fps,
    clips under 1 s) and, for a sweep of rates and lengths, Python's own float arithmetic
    (the original: int(len / fps), int(fps * i)); --max-frames subsampling.
  * the reader: clips made here with ffmpeg (H.264 with B-frames at 25 and 30000/1001 fps,
    MPEG-4 in Matroska without nb_frames); every delivered frame equals, byte for byte, the
    frame that a separate `ffmpeg -vf select=eq(n\\,K)` extracts to PNG (decoded by PIL); the
    select and the decode-everything modes agree; memory stays at one frame.
  * inputs: recursive walk, content sniffing (a .jpg that is a PNG, GIF, text, empty files,
    a video), hidden files, symlink loops, @lists, missing paths, dedup, sort, shards.
  * results: CSV (Python's csv module) and JSONL (json + os.fsencode) round trips of awkward
    paths; resume after a torn last row; a foreign CSV is refused; error rows are retried.
  * eval: hand-computed SRCC/PLCC/KRCC (with ties), an independent pure-Python
    implementation on random data with ties, matching by path and by file name.
  * the gallery: opened in headless Chromium; the DOM must have the items in score order,
    five bars each, the error rows, decoded thumbnails and no external URL.
"""
import csv
import io
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, chromium_dom, report, run

np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")

FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")
need_ffmpeg = pytest.mark.skipif(not (FFMPEG and FFPROBE), reason="ffmpeg/ffprobe not on PATH: video tests skipped")


@pytest.fixture(scope="session")
def app(tmp_path_factory):
    if os.environ.get("QALIGN_TEST_APP"):      # e.g. a sanitizer build of tests/test_app.c
        return Path(os.environ["QALIGN_TEST_APP"])
    r = run(["make", "-C", ROOT, "build/test_app"])
    assert r.returncode == 0, "make build/test_app failed:\n" + r.stdout + r.stderr
    return ROOT / "build" / "test_app"


def drv(app, *args, **kw):
    return run([app, *args], **kw)


# ---- 1. frame selection ------------------------------------------------------------------

def py_indices(count, num, den):
    """The original loader (q_align/load_video.py) on decord's numbers."""
    fps = num / den
    return [int(fps * i) for i in range(int(count / fps))]


HAND = [  # (count, fps num, fps den, expected indices) - worked out by hand
    (300, 30000, 1001, [0, 29, 59, 89, 119, 149, 179, 209, 239, 269]),
    (240, 24000, 1001, [0, 23, 47, 71, 95, 119, 143, 167, 191, 215]),
    (600, 60000, 1001, [0, 59, 119, 179, 239, 299, 359, 419, 479, 539]),
    (88, 25, 1, [0, 25, 50]),          # 3.52 s at 25 fps
    (75, 25, 1, [0, 25, 50]),          # exactly 3 s
    (74, 25, 1, [0, 25]),              # 2.96 s
    (100, 24, 1, [0, 24, 48, 72]),
    (5, 1, 1, [0, 1, 2, 3, 4]),        # 1 fps: every frame
    (3, 1, 2, [0, 0, 1, 1, 2, 2]),     # 0.5 fps: the original repeats frames
    (20, 25, 1, []),                   # 0.8 s: no frame at all
    (29, 30000, 1001, []),             # 0.97 s
    (30, 30000, 1001, [0]),            # 1.001 s
    (0, 25, 1, []),
]


def test_frame_indices_hand(app):
    for count, num, den, want in HAND:
        r = drv(app, "indices", count, num, den)
        lines = r.stdout.split("\n")
        assert int(lines[0]) == len(want), (count, num, den, r.stdout)
        got = [int(v) for v in lines[1].split()]
        assert got == want, (count, num, den, got)
        assert got == py_indices(count, num, den)
    # a 2-hour 29.97 fps video: last index by hand, 29.97002997 * 7198 = 215724.28
    r = drv(app, "indices", 215784, 30000, 1001)
    lines = r.stdout.split("\n")
    got = [int(v) for v in lines[1].split()]
    assert len(got) == 7199 and got[-1] == 215724 and got == py_indices(215784, 30000, 1001)
    report(f"app: frame selection, hand-computed cases: {len(HAND) + 1} (incl. 2 h at 29.97 fps)")


def test_frame_indices_sweep(app):
    """Against Python's float arithmetic for many rates and lengths (the boundaries where
    count / fps is just above or below an integer are included on purpose)."""
    rates = [(30000, 1001), (24000, 1001), (60000, 1001), (25, 1), (24, 1), (30, 1), (50, 1), (60, 1),
             (1, 1), (1, 2), (15, 1), (25, 2), (120000, 1001), (2997, 100), (11988, 1000), (1000, 1),
             (48, 1), (10, 3), (90000, 3003), (359, 12)]
    cases = []
    for num, den in rates:
        fps = num / den
        counts = {0, 1, 2, 7, 29, 30, 31, 59, 60, 61, 299, 300, 301, 1799, 1800, 1801, 54000, 107892}
        for k in (1, 2, 3, 10, 100, 1000):
            c = int(fps * k)
            counts |= {c - 1, c, c + 1}
        cases += [(count, num, den) for count in sorted(c for c in counts if c >= 0)]
    r = run([app, "indices-batch"], input="".join(f"{c} {n} {d}\n" for c, n, d in cases))
    lines = r.stdout.split("\n")
    assert len(lines) == len(cases) + 1
    for (count, num, den), line in zip(cases, lines):
        n, _, rest = line.partition(":")
        want = py_indices(count, num, den)
        assert int(n) == len(want) and [int(v) for v in rest.split()] == want, (count, num, den)
    n_cases = len(cases)
    report(f"app: frame selection vs Python float semantics: {n_cases} (count, fps) cases, {len(rates)} rates")


def test_max_frames_subsample(app):
    r = drv(app, "indices", 300, 30000, 1001, 4)
    lines = r.stdout.split("\n")
    full = [int(v) for v in lines[1].split()]
    sub = [int(v) for v in lines[2].split()]
    # positions (j * 10) // 4 = 0, 2, 5, 7
    assert sub == [full[0], full[2], full[5], full[7]] == [0, 59, 149, 209]
    r = drv(app, "indices", 300, 30000, 1001, 50)   # more than n: unchanged
    lines = r.stdout.split("\n")
    assert lines[2] == lines[1]
    for n_max in (1, 2, 3, 9, 10):
        r = drv(app, "indices", 300, 30000, 1001, n_max)
        sub = [int(v) for v in r.stdout.split("\n")[2].split()]
        assert sub == [full[(j * 10) // n_max] for j in range(min(n_max, 10))]


def compile_select(expr):
    """Compile the subset of ffmpeg's expression language that video_select_filter writes
    into a Python function of the frame number n."""
    pos = 0

    def number():
        nonlocal pos
        m = re.match(r"\d+", expr[pos:pos + 24])
        pos += m.end()
        return int(m.group())

    def parse():
        nonlocal pos
        terms = [atom()]
        while pos < len(expr) and expr[pos] == "+":
            pos += 1
            terms.append(atom())
        return lambda n: sum(t(n) for t in terms)

    def atom():
        nonlocal pos
        if expr.startswith("eq(n,", pos):
            pos += 5
            k = number()
            assert expr[pos] == ")"
            pos += 1
            return lambda n: 1 if n == k else 0
        if expr.startswith("if(lt(n,", pos):
            pos += 8
            k = number()
            assert expr[pos:pos + 2] == "),"
            pos += 2
            a = parse()
            assert expr[pos] == ","
            pos += 1
            b = parse()
            assert expr[pos] == ")"
            pos += 1
            return lambda n: a(n) if n < k else b(n)
        if expr[pos] == "0":
            pos += 1
            return lambda n: 0
        raise AssertionError(expr[pos:pos + 20])

    f = parse()
    assert pos == len(expr)
    return f


def test_select_filter(app):
    """The select expression picks exactly the wanted frames, for index sets of every shape."""
    rng = random.Random(3)
    sets = [[], [0], [0, 0, 1, 1, 2, 2], list(range(9)), py_indices(300, 30000, 1001),
            py_indices(3000, 30000, 1001), sorted(rng.sample(range(2000), 777))]
    longest = 0
    for idx in sets:
        r = run([app, "selectexpr"], input=" ".join(map(str, idx)))
        f = r.stdout.strip()
        assert f.startswith("select='") and f.endswith("'")
        expr = f[8:-1]
        longest = max(longest, len(expr))
        top = (max(idx) if idx else 0) + 40
        want = set(idx)
        f = compile_select(expr)
        assert [n for n in range(top) if f(n)] == sorted(want), len(idx)
        assert len(expr) < 40 * max(len(want), 1)          # linear size
    # ~1 frame per second: 3600 indices (1 h) stay below the 100000-character argument limit
    r = run([app, "selectexpr"], input=" ".join(map(str, py_indices(107892, 30000, 1001))))
    assert len(r.stdout.strip()) < 100000
    report(f"app: select filter exact on {len(sets)} index sets; 1 h at 29.97 fps -> {len(r.stdout.strip())} chars")


# ---- 2. the video reader -----------------------------------------------------------------

def make_video(path, rate, seconds, size="96x64", codec=("-c:v", "libx264", "-bf", "2", "-pix_fmt", "yuv420p"),
               extra=()):
    r = run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}",
             "-t", str(seconds), *codec, *extra, path])
    assert r.returncode == 0, r.stderr
    return path


def ffprobe_counts(path):
    r = run([FFPROBE, "-v", "error", "-count_packets", "-count_frames", "-select_streams", "v:0", "-show_entries",
             "stream=nb_read_packets,nb_read_frames,avg_frame_rate", "-of", "json", path])
    s = json.loads(r.stdout)["streams"][0]
    num, den = (int(v) for v in s["avg_frame_rate"].split("/"))
    return int(s["nb_read_packets"]), int(s["nb_read_frames"]), num, den


def extract_png(path, index, out):
    r = run([FFMPEG, "-v", "error", "-y", "-i", path, "-vf", f"select=eq(n\\,{index})", "-vsync", "0",
             "-frames:v", "1", out])
    assert r.returncode == 0, r.stderr
    return np.array(Image.open(out).convert("RGB"))


def extract_all_png(path, outdir):
    """Every frame, in order, as PNG (no select filter): frame K is file K+1."""
    os.makedirs(outdir, exist_ok=True)
    r = run([FFMPEG, "-v", "error", "-y", "-i", path, "-vsync", "0", os.path.join(outdir, "%05d.png")])
    assert r.returncode == 0, r.stderr
    return lambda k: np.array(Image.open(os.path.join(outdir, f"{k + 1:05d}.png")).convert("RGB"))


def read_ppm(path):
    data = Path(path).read_bytes()
    m = re.match(rb"P6\s+(\d+)\s+(\d+)\s+255\s", data)
    w, h = int(m.group(1)), int(m.group(2))
    return np.frombuffer(data[m.end():], np.uint8).reshape(h, w, 3)


def parse_frames_output(text):
    head = dict(kv.split("=", 1) for kv in text.split("\n")[0].split())
    idx = [int(v) for v in text.split("\n")[1].split()[1:]]
    frames = [tuple(int(x) for x in l.split()[1:3]) for l in text.split("\n") if l.startswith("frame ")]
    return head, idx, frames


@need_ffmpeg
@pytest.mark.parametrize("name,rate,seconds,container", [
    ("h264_25", "25", 3.5, "mp4"),
    ("h264_2997", "30000/1001", 3.5, "mp4"),
    ("mpeg4_2997_mkv", "30000/1001", 20.5, "mkv"),   # 20 indices: the select tree has inner nodes
])
def test_video_frames_exact(app, tmp_path, name, rate, seconds, container):
    codec = (("-c:v", "mpeg4", "-q:v", "3") if container == "mkv"
             else ("-c:v", "libx264", "-bf", "2", "-pix_fmt", "yuv420p"))
    vid = make_video(str(tmp_path / f"{name}.{container}"), rate, seconds,
                     size="128x72" if seconds < 10 else "64x48", codec=codec)
    packets, frames_decoded, num, den = ffprobe_counts(vid)
    assert packets == frames_decoded
    r = drv(app, "probe", vid)
    info = dict(l.split("=", 1) for l in r.stdout.strip().split("\n"))
    assert int(info["frame_count"]) == packets and info["count_source"] == "packets"
    assert (int(info["fps_num"]), int(info["fps_den"])) == (num, den)
    want = py_indices(packets, num, den)
    assert len(want) >= 3
    outs = {}
    for mode in (1, 2):   # select filter; decode everything and skip
        out = tmp_path / f"out{mode}"
        out.mkdir()
        r = drv(app, "frames", vid, out, 0, mode)
        assert r.returncode == 0, r.stdout + r.stderr
        head, idx, delivered = parse_frames_output(r.stdout)
        assert idx == want and [d[1] for d in delivered] == want and [d[0] for d in delivered] == list(range(len(want)))
        outs[mode] = out
    frame = extract_all_png(vid, str(tmp_path / "all"))
    assert len(os.listdir(tmp_path / "all")) == packets
    for k, index in enumerate(want):
        ref = frame(index)
        a, b = read_ppm(outs[1] / f"{k}.ppm"), read_ppm(outs[2] / f"{k}.ppm")
        assert a.shape == ref.shape and np.array_equal(a, ref), f"{name}: frame {index} differs from ffmpeg select"
        assert np.array_equal(a, b)
        if k:  # consecutive selected frames really are different pictures (testsrc moves)
            assert not np.array_equal(a, read_ppm(outs[1] / f"{k - 1}.ppm"))
    # and one frame the way the brief suggests: select=eq(n\\,K) to PNG
    assert np.array_equal(read_ppm(outs[1] / "1.ppm"), extract_png(vid, want[1], str(tmp_path / "one.png")))
    report(f"app: {name}: {packets} frames at {num}/{den} fps -> indices {want}; byte-identical to ffmpeg's own "
           f"PNG frames (select mode and decode-all mode)")


@need_ffmpeg
def test_video_short_subsample_stop_and_errors(app, tmp_path):
    short = make_video(str(tmp_path / "short.mp4"), "25", 0.6)
    r = drv(app, "frames", short, tmp_path)
    head, idx, delivered = parse_frames_output(r.stdout)
    assert head["n"] == "0" and delivered == [] and r.returncode == 0

    vid = make_video(str(tmp_path / "ten.mp4"), "30000/1001", 10.2)
    out = tmp_path / "sub"
    out.mkdir()
    r = drv(app, "frames", vid, out, 4)
    head, idx, delivered = parse_frames_output(r.stdout)
    full = py_indices(int(head["count"]), 30000, 1001)
    assert head["subsampled"] == "1" and int(head["original"]) == len(full) == 10
    assert idx == [full[(j * 10) // 4] for j in range(4)] == [d[1] for d in delivered]
    ref = extract_png(vid, idx[-1], str(tmp_path / "last.png"))
    assert np.array_equal(read_ppm(out / "3.ppm"), ref)

    # no shell, no option or protocol parsing of the name: a leading dash, quotes, $(...), a colon
    evil = tmp_path / "-i x $(touch PWNED) 'q\"; ls |concat:a.mp4"
    shutil.copy(vid, evil)
    r = drv(app, "frames", evil.name, out, 2, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count("frame ") == 2, r.stdout + r.stderr
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()

    # the callback stops after 2 frames: an error, ffmpeg is reaped, nothing hangs
    t = time.time()
    r = drv(app, "frames", vid, out, 0, 0, 2)
    assert r.returncode == 1 and "stopped by the callback after 2 frames" in r.stdout
    assert time.time() - t < 10

    # not a video at all / a truncated one
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0\0\0\x18ftypisom" + os.urandom(2000))
    r = drv(app, "frames", bad, out)
    assert r.returncode == 1 and r.stdout.startswith("error=ffprobe failed")
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(Path(vid).read_bytes()[:3000])
    r = drv(app, "frames", trunc, out)
    assert r.returncode == 1 and "error=" in r.stdout


@need_ffmpeg
def test_video_memory_is_one_frame(app, tmp_path):
    """40 s of 640x480: the original would hold 40 frames (37 MB); the reader holds one."""
    vid = make_video(str(tmp_path / "long.mp4"), "10", 40, size="640x480",
                     codec=("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"))
    out = tmp_path / "o"
    out.mkdir()
    r = drv(app, "frames", vid, out)
    assert r.returncode == 0 and r.stdout.count("frame ") == 40, r.stdout + r.stderr
    rss = int(re.search(r"maxrss_kb=(\d+)", r.stdout).group(1))
    r0 = drv(app, "frames", make_video(str(tmp_path / "one.mp4"), "10", 1.05, size="640x480",
                                       codec=("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")), out)
    rss1 = int(re.search(r"maxrss_kb=(\d+)", r0.stdout).group(1))
    frame_kb = 640 * 480 * 3 // 1024
    assert rss - rss1 < 2 * frame_kb and rss < 16 * 1024, (rss, rss1)   # 40 frames cost what 1 frame costs
    report(f"app: reading 40 frames of 640x480: peak RSS {rss / 1024:.1f} MB vs {rss1 / 1024:.1f} MB for 1 frame "
           f"(holding all would add {40 * frame_kb / 1024:.0f} MB)")


# ---- 3. inputs ------------------------------------------------------------------------------

def png_bytes(w=8, h=6, color=(10, 200, 30)):
    b = io.BytesIO()
    Image.new("RGB", (w, h), color).save(b, "PNG")
    return b.getvalue()


@pytest.fixture()
def tree(tmp_path):
    d = tmp_path / "d"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / ".git").mkdir()
    (d / "a.png").write_bytes(png_bytes())
    (d / "b.jpg").write_bytes(png_bytes(color=(1, 2, 3)))          # a PNG named .jpg
    Image.new("RGB", (5, 4), (9, 9, 9)).save(d / "sub" / "c.bmp")
    Image.new("RGB", (5, 4), (50, 60, 70)).save(d / "sub" / "deeper" / "e.ppm")
    Image.new("RGB", (5, 4), (90, 60, 70)).save(d / "sub" / "p.jpeg", "JPEG")
    (d / "notes.txt").write_text("not an image\n")
    (d / "empty.jpg").write_bytes(b"")
    (d / "empty.dat").write_bytes(b"")
    (d / ".hidden.png").write_bytes(png_bytes())
    (d / ".git" / "x.png").write_bytes(png_bytes())
    (d / "anim.gif").write_bytes(b"GIF89a" + b"\0" * 30)
    (d / "fake.mp4").write_text("hello")
    (d / "clip.bin").write_bytes(b"\0\0\0\x18ftypisom\0\0\0\0isomiso2" + b"\0" * 64)
    (d / "movie.mkv").write_bytes(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm" + b"\0" * 40)
    ts = bytearray(188 * 3)
    for k in range(3):
        ts[188 * k] = 0x47
    (d / "stream.ts").write_bytes(bytes(ts))
    (d / "frame_10.png").write_bytes(png_bytes())
    (d / "frame_2.png").write_bytes(png_bytes())
    os.symlink(".", d / "sub" / "loop")
    return d


def expand(app, *args, cwd=None):
    r = drv(app, "expand", *args, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [l.split("\t") for l in r.stdout.strip().split("\n") if not l.startswith("#")]
    skipped = int(r.stdout.strip().split("\n")[-1].split()[-1])
    return rows, skipped


def test_expand_directory(app, tree):
    rows, skipped = expand(app, tree)
    got = {Path(p).relative_to(tree).as_posix(): (k, f, e) for k, f, p, e in rows}
    assert [r[2] for r in rows] == sorted(r[2] for r in rows)          # sorted (byte order)
    assert got["a.png"][:2] == ("image", "png")
    assert got["b.jpg"][:2] == ("image", "png")                         # content, not name
    assert got["sub/c.bmp"][:2] == ("image", "bmp")
    assert got["sub/deeper/e.ppm"][:2] == ("image", "pnm")
    assert got["sub/p.jpeg"][:2] == ("image", "jpeg")
    assert got["clip.bin"][:2] == ("video", "mp4")                      # a video named .bin
    assert got["movie.mkv"][:2] == ("video", "webm")
    assert got["stream.ts"][:2] == ("video", "mpegts")
    assert got["empty.jpg"] == ("error", "-", "empty file")            # media extension: reported
    assert got["anim.gif"][0] == "error" and "GIF image: not supported" in got["anim.gif"][2]
    assert got["fake.mp4"][0] == "error" and "unknown format" in got["fake.mp4"][2]
    for gone in ("notes.txt", "empty.dat", ".hidden.png", ".git/x.png"):
        assert gone not in got
    assert not any("loop" in p for p in got)                           # the symlink loop is not walked
    # notes.txt, empty.dat, .hidden.png, .git, loop
    assert skipped == 5
    rows_h, _ = expand(app, "--hidden", tree)
    assert any(r[2].endswith("/.hidden.png") for r in rows_h) and any(r[2].endswith(".git/x.png") for r in rows_h)
    # natural order for --frames
    rows_n, _ = expand(app, "--natural", tree)
    names = [Path(r[2]).name for r in rows_n if Path(r[2]).parent == tree]
    assert names.index("frame_2.png") < names.index("frame_10.png")
    names_b = [Path(r[2]).name for r in rows if Path(r[2]).parent == tree]
    assert names_b.index("frame_10.png") < names_b.index("frame_2.png")


def test_expand_lists_missing_dedup(app, tree, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"# a comment\n\n  d/a.png  \r\nd/sub\nmissing.png\n./d//a.png\n   # indented comment\nd/notes.txt")
    rows, _ = expand(app, "@list.txt", "d/b.jpg", "d/a.png", "nope/", "", cwd=tmp_path)
    paths = [r[2] for r in rows]
    assert paths == sorted(set(paths))                                   # deduplicated, sorted
    got = {r[2]: r for r in rows}
    assert set(got) == {"d/a.png", "d/b.jpg", "d/sub/c.bmp", "d/sub/deeper/e.ppm", "d/sub/p.jpeg", "missing.png",
                        "d/notes.txt", "nope", ""}
    assert got["missing.png"][0] == "error" and "No such file" in got["missing.png"][3]
    assert got["nope"][0] == "error"
    assert got["d/notes.txt"][0] == "error" and "unknown format" in got["d/notes.txt"][3]   # named: reported
    assert got[""][3] == "empty path"
    r = drv(app, "expand", "@does-not-exist.txt", cwd=tmp_path)
    assert r.returncode == 1 and "list file does-not-exist.txt" in r.stdout
    # @- reads stdin
    r = run([app, "expand", "@-"], cwd=tmp_path, input="d/a.png\nd/b.jpg\n")
    assert [l.split("\t")[2] for l in r.stdout.strip().split("\n")[:-1]] == ["d/a.png", "d/b.jpg"]


def test_shards_partition(app, tree):
    full, _ = expand(app, tree, "/nonexistent/x.png")
    paths = [r[2] for r in full]
    assert len(paths) >= 12
    checked = 0
    for n in range(1, 8):
        seen = []
        for i in range(1, n + 1):
            part, _ = expand(app, "--shard", f"{i}/{n}", tree, "/nonexistent/x.png")
            pp = [r[2] for r in part]
            assert pp == paths[i - 1::n]                                  # item k -> shard k mod N + 1
            seen += pp
            checked += 1
        assert sorted(seen) == sorted(paths) and len(seen) == len(set(seen))
    for bad in ("0/3", "4/3", "a/b", "3", "1/0", "2/3x"):
        r = drv(app, "expand", "--shard", bad, tree)
        assert r.returncode == 1 and "shard" in r.stdout, bad
    report(f"app: shards: N = 1..7 partition a {len(paths)}-item list exactly ({checked} slices)")


def test_sniff_bytes(app, tmp_path):
    cases = {
        "gif": (b"GIF87a" + b"\0" * 20, "error", "gif"),
        "webp": (b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 20, "error", "webp"),
        "tiff": (b"II*\0" + b"\0" * 20, "error", "tiff"),
        "heic": (b"\0\0\0\x18ftypheic" + b"\0" * 20, "error", "heif"),
        "avi": (b"RIFF\0\0\0\0AVI LIST" + b"\0" * 20, "video", "avi"),
        "mov": (b"\0\0\0\x14ftypqt  " + b"\0" * 20, "video", "mov"),
        "mdat": (b"\0\0\0\x08mdat" + b"\0" * 20, "video", "mov"),
        "flv": (b"FLV\x01\x05" + b"\0" * 20, "video", "flv"),
        "ps": (b"\0\0\x01\xba" + b"\0" * 20, "video", "mpeg"),
        "asf": (bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c") + b"\0" * 20, "video", "asf"),
        "ogg": (b"OggS" + b"\0" * 24 + b"\x80theora" + b"\0" * 20, "video", "ogg"),
        "vorbis": (b"OggS" + b"\0" * 24 + b"\x01vorbis" + b"\0" * 20, "error", "-"),
        "m4a": (b"\0\0\0\x20ftypM4A \0\0\0\0" + b"\0" * 20, "error", "-"),
        "wav": (b"RIFF\0\0\0\0WAVEfmt " + b"\0" * 20, "error", "-"),
        "y4m": (b"YUV4MPEG2 W8 H8 F25:1\n", "video", "y4m"),
        "m2ts": (b"".join(b"\0\0\0\0\x47" + b"\0" * 187 for _ in range(3)), "video", "m2ts"),
        "mkv": (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01matroska" + b"\0" * 20, "video", "mkv"),
        "text": (b"hello world\n", "error", "-"),
    }
    for name, (data, kind, fmt) in cases.items():
        (tmp_path / name).write_bytes(data)
    r = drv(app, "sniff", *[tmp_path / n for n in cases])
    for (name, (data, kind, fmt)), line in zip(cases.items(), r.stdout.strip().split("\n")):
        k, f, why = line.split("\t")
        assert (k, f) == (kind, fmt), (name, line)
    r = drv(app, "sniff", tmp_path, "/dev/null")
    assert r.stdout.split("\n")[0].endswith("is a directory") and r.stdout.split("\n")[1].endswith("not a regular file")


# ---- 4. result files and resume ---------------------------------------------------------------

AWKWARD = [
    b"plain.jpg",
    b"with,comma.jpg",
    b'with "quotes".jpg',
    b"new\nline.jpg",
    b"cr\rreturn.jpg",
    b"tab\there.jpg",
    "ünïcödé ✓ 写真.jpg".encode(),
    b"bad-utf8-\xff\xfe.jpg",
    b" leading and trailing space ",
    b"dir/sub/x.png",
]


WORDS = ["excellent", "good", "fair", "poor", "bad"]
SETUP_KEYS = ["model", "prompt", "levels", "pad", "precise", "max_frames"]   # how a row was made


def write_rows(app, fmt, out, rows, resume=False):
    lines = "".join(f"{p.hex()} {s} {e.encode().hex() if e else '-'}\n" for p, s, e in rows)
    args = ["write", fmt, out] + (["--resume"] if resume else [])
    r = run([app, *args], input=lines)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_results_roundtrip(app, tmp_path, fmt):
    out = tmp_path / f"r.{fmt}"
    rows = [(p, 1.5 + i / 8, "" if i % 3 else f"error, with \"quotes\"\nand a newline #{i}") for i, p in enumerate(AWKWARD)]
    write_rows(app, fmt, out, rows)
    data = out.read_bytes()
    if fmt == "csv":
        recs = list(csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline="")))
        assert recs[0] == ["path", "task", "kind", "frames", "score", "std", "scale"] + [f"p_{w}" for w in WORDS] + \
            [f"logit_{w}" for w in WORDS] + ["error"] + SETUP_KEYS
        recs = recs[1:]
        for (p, s, e), rec in zip(rows, recs):
            assert os.fsencode(rec[0]) == p
            assert rec[1] == "quality" and rec[6] == "1-5"
            assert rec[18:] == ["m1", "USER: <|image|>\nrate it", "excellent=5,good=4,fair=3,poor=2,bad=1", "true", "false", ""]
            if e:
                assert rec[4] == rec[5] == "" and rec[7:17] == [""] * 10 and rec[17] == e
            else:
                assert abs(float(rec[4]) - s) < 1e-6 and float(rec[5]) == 0.5 and rec[17] == ""
                assert float(rec[9]) == 0.3 and float(rec[14]) == 1
    else:
        lines = data.split(b"\n")
        assert lines[-1] == b"" and len(lines) == len(rows) + 1
        for (p, s, e), line in zip(rows, lines):
            line.decode("utf-8")                                 # valid UTF-8 even for the \xff path
            obj = json.loads(line)
            assert list(obj) == ["path", "task", "kind", "frames", "score", "std", "scale"] + \
                [f"p_{w}" for w in WORDS] + [f"logit_{w}" for w in WORDS] + ["error"] + SETUP_KEYS
            assert [obj[k] for k in SETUP_KEYS] == ["m1", "USER: <|image|>\nrate it", "excellent=5,good=4,fair=3,poor=2,bad=1",
                                                    True, False, None]
            assert e or (obj["p_fair"] == 0.3 and obj["logit_fair"] == 1)
            assert os.fsencode(obj["path"]) == p                 # surrogateescape round trip
            if e:
                assert obj["score"] is None and obj["error"] == e
            else:
                assert abs(obj["score"] - s) < 1e-6 and obj["error"] is None
    # and back through results.c's own reader
    r = drv(app, "read", fmt, out)
    got = [l.split(" ") for l in r.stdout.strip().split("\n")]
    assert got[-1] == ["torn=0", "bad=0"]
    assert [bytes.fromhex(g[0]) for g in got[:-1]] == [p for p, _, _ in rows]
    assert all(g[-5:] == ["model=m1", "levels=excellent=5,good=4,fair=3,poor=2,bad=1", "pad=1", "precise=0",
                          "max_frames=0"] for g in got[:-1])
    assert [bytes.fromhex(g[2]).decode() if g[2] != "-" else "" for g in got[:-1]] == [e for _, _, e in rows]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_torn_row(app, tmp_path, fmt):
    out = tmp_path / f"r.{fmt}"
    paths = [f"img_{i}.png".encode() for i in range(6)] + [b"comma,quote\".png"]
    first = [(p, 2.0 + i / 10, "") for i, p in enumerate(paths[:4])] + [(paths[4], 0, "decode failed")]
    write_rows(app, fmt, out, first)
    good = out.read_bytes()
    # killed while writing the next row: half a row without its newline (inside a quoted field for CSV)
    torn = b'"comma,quo' if fmt == "csv" else b'{"path": "img_5.png", "task": "qual'
    out.write_bytes(good + torn)
    r = drv(app, "read", fmt, out)
    assert r.stdout.strip().endswith("torn=1 bad=0")
    rows = [(p, 3.0, "") for p in paths]
    o = write_rows(app, fmt, out, rows, resume=True)
    assert o.split("\n")[0] == f"previous=5 dropped={len(torn)}"
    skipped = sorted(bytes.fromhex(l.split()[1]) for l in o.split("\n") if l.startswith("skip "))
    assert skipped == sorted(paths[:4])                 # the failed img_4 is retried
    final = out.read_bytes()
    assert final.startswith(good) and torn not in final[len(good):len(good) + len(torn)]
    r = drv(app, "read", fmt, out)
    got = [l.split(" ") for l in r.stdout.strip().split("\n")]
    assert got[-1] == ["torn=0", "bad=0"]
    names = [bytes.fromhex(g[0]) for g in got[:-1]]
    assert names == paths[:5] + [paths[4], paths[5], paths[6]]   # img_4: error row, then its retry
    if fmt == "csv":
        assert len(list(csv.reader(io.StringIO(final.decode(), newline="")))) == 1 + 8
    else:
        assert all(json.loads(l) for l in final.decode().strip().split("\n"))
    # a torn header (CSV) or first row (JSONL): the file is started again
    out.write_bytes(b"path,ta" if fmt == "csv" else b'{"path": "x.jp')
    write_rows(app, fmt, out, rows[:1], resume=True)
    if fmt == "jsonl":
        assert [json.loads(l)["path"] for l in out.read_text().splitlines()] == ["img_0.png"]
    if fmt == "csv":
        assert out.read_bytes().startswith(b"path,task,kind,frames,score,")
        assert len(list(csv.reader(io.StringIO(out.read_text(), newline="")))) == 2


def test_resume_refuses_foreign_files(app, tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("name,value\nx,1\n")
    r = run([app, "write", "csv", f, "--resume"], input="")
    assert r.returncode == 1 and "not a qalign results CSV" in r.stdout
    assert f.read_text() == "name,value\nx,1\n"                  # untouched
    j = tmp_path / "other.jsonl"
    j.write_text('{"a": 1}\n[1, 2]\n')
    r = run([app, "write", "jsonl", j, "--resume"], input="")
    assert r.returncode == 1 and "not a qalign results JSONL" in r.stdout
    # without --resume too: results are appended to a file of ours only, never written over
    for fmt, p, text in (("csv", f, "name,value\nx,1\n"), ("jsonl", j, '{"a": 1}\n[1, 2]\n')):
        r = run([app, "write", fmt, p], input="")
        assert r.returncode == 1 and "refusing to append" in r.stdout and p.read_text() == text
    # nor to a file whose last line is not ours (not a torn row: it is not cut)
    k = tmp_path / "notes.jsonl"
    k.write_text("hello")
    r = run([app, "write", "jsonl", k], input="")
    assert r.returncode == 1 and "last line is not a result row" in r.stdout and k.read_text() == "hello"
    k.write_text("hello")
    r = run([app, "write", "csv", k], input="")
    assert r.returncode == 1 and k.read_text() == "hello"
    # a results CSV with the columns of another qalign version
    old = tmp_path / "old.csv"
    old.write_text("path,task,kind,frames,score,std,scale,p_excellent,p_good,p_fair,p_poor,p_bad,error\n")
    r = run([app, "write", "csv", old], input="")
    assert r.returncode == 1 and "another version of qalign" in r.stdout


# ---- 5. evaluation -----------------------------------------------------------------------------

def py_ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def py_pearson(x, y):
    n = len(x)
    if n < 2:
        return float("nan")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def py_tau_b(x, y):
    c = d = tx = ty = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            a, b = x[i] - x[j], y[i] - y[j]
            if a == 0 and b == 0:
                continue
            if a == 0:
                tx += 1
            elif b == 0:
                ty += 1
            elif (a > 0) == (b > 0):
                c += 1
            else:
                d += 1
    den = math.sqrt((c + d + tx) * (c + d + ty))
    return (c - d) / den if den else float("nan")


def c_stats(app, x, y):
    r = run([app, "stats"], input="".join(f"{a!r} {b!r}\n" for a, b in zip(x, y)))
    return [float(v) for v in r.stdout.split()]


def test_eval_hand_values(app):
    # x = 1..5, y = 2 1 4 3 5: d = 1 -1 1 -1 0, SRCC = 1 - 6*4/120 = 0.8; PLCC = 8/10;
    # 8 concordant, 2 discordant pairs: KRCC = 6/10
    s, p, k, kb = c_stats(app, [1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert (s, p, k) == pytest.approx((0.8, 0.8, 0.6), abs=1e-15) and kb == pytest.approx(0.6)
    # ties: x = 1 2 2 3, y = 1 3 2 3. Ranks x 1 2.5 2.5 4, y 1 3.5 2 3.5 -> SRCC 3.75/4.5 = 5/6;
    # PLCC 2/sqrt(2*2.75); pairs: 4 concordant, 1 tied in x only, 1 in y only -> tau-b 4/5
    s, p, k, kb = c_stats(app, [1, 2, 2, 3], [1, 3, 2, 3])
    assert s == pytest.approx(5 / 6, abs=1e-15) and p == pytest.approx(2 / math.sqrt(5.5), abs=1e-15)
    assert k == pytest.approx(0.8, abs=1e-15) and kb == pytest.approx(0.8)
    # reversed order: -1 everywhere
    assert c_stats(app, [1, 2, 3], [3, 2, 1])[:3] == pytest.approx([-1, -1, -1])
    # undefined: n < 2, constant side
    for x, y in (([1.0], [2.0]), ([], []), ([1, 2, 3], [4, 4, 4])):
        assert all(math.isnan(v) for v in c_stats(app, x, y)[:3])


def test_eval_random_vs_python(app):
    rng = random.Random(5)
    n_cases = 0
    for n in (2, 3, 10, 57, 400):
        for ties in (False, True):
            x = [rng.randint(1, 6) if ties else rng.random() for _ in range(n)]
            y = [xi * 0.5 + rng.randint(0, 3) if ties else xi + rng.gauss(0, 0.3) for xi in x]
            want = (py_pearson(py_ranks(x), py_ranks(y)), py_pearson(x, y), py_tau_b(x, y))
            got = c_stats(app, x, y)
            for g, w in zip(got[:3], want):
                assert (math.isnan(g) and math.isnan(w)) or abs(g - w) < 1e-12, (n, ties, got, want)
            assert abs(got[2] - got[3]) < 1e-12 or (math.isnan(got[2]) and math.isnan(got[3]))
            n_cases += 1
    # large n: O(n log n) tau-b against the C brute force
    x = [rng.randint(1, 50) for _ in range(3000)]
    y = [v + rng.randint(-20, 20) for v in x]
    got = c_stats(app, x, y)
    assert abs(got[2] - got[3]) < 1e-12
    report(f"app: SRCC/PLCC/KRCC vs pure Python on {n_cases} random vectors (with and without ties) to 1e-12")


def test_eval_matching(app, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("image_name,c1,MOS\n"            # a header naming its columns (KonIQ style)
                      "a.jpg,0,1.0\nb.jpg,0,2.0\nc.jpg,0,3.5\nsub/d.jpg,0,4.0\ndup.jpg,0,2.0\nonly_label.jpg,0,5\n"
                      "jp2k/img1.bmp,0,1.5\njpeg/img1.bmp,0,2.5\nkoniq/1024/e.jpg,0,4.5\n")
    results = [("/data/set/a.jpg", 1.1), ("x/b.jpg", 2.5), ("./c.jpg", 3.0), ("sub//d.jpg", 4.4),
               ("one/dup.jpg", 1.0), ("two/dup.jpg", 2.0), ("unlabelled.jpg", 3.3),
               ("/data/live/jp2k/img1.bmp", 1.2), ("/data/live/jpeg/img1.bmp", 2.2), ("/x/1024/e.jpg", 4.6)]
    r = run([app, "eval", labels], input="".join(f"{p.encode().hex()} {s}\n" for p, s in results))
    head = dict(kv.split("=") for kv in r.stdout.split("\n")[0].split())
    # path: c.jpg, sub/d.jpg; tail: a.jpg, b.jpg, jp2k/img1.bmp, jpeg/img1.bmp; name: e.jpg;
    # dup.jpg is claimed by two results: left out (2); unlabelled.jpg: no label
    assert head == {"labels": "9", "results": "10", "matched": "7", "by_path": "2", "by_suffix": "4", "by_name": "1",
                    "ambiguous": "2"}, head
    s, p, k = (float(v) for v in r.stdout.split("\n")[1].split())
    x, y = [1.1, 2.5, 3.0, 4.4, 1.2, 2.2, 4.6], [1.0, 2.0, 3.5, 4.0, 1.5, 2.5, 4.5]
    assert (s, p, k) == pytest.approx((py_pearson(py_ranks(x), py_ranks(y)), py_pearson(x, y), py_tau_b(x, y)))
    assert "eval: SRCC " in r.stdout and "7 of 10 results matched" in r.stdout
    # no header, tab separated, one match only -> NaN with a clear message
    l2 = tmp_path / "l2.tsv"
    l2.write_text("a.jpg\t3\n")
    r = run([app, "eval", l2], input=f"{b'a.jpg'.hex()} 2.0\n")
    assert "matched=1" in r.stdout and "undefined (n = 1): fewer than 2 matched items" in r.stdout
    r = run([app, "eval", tmp_path / "none.csv"], input="")
    assert r.returncode == 1 and "labels file" in r.stdout


# ---- 6. thumbnails, JPEG, base64 -----------------------------------------------------------------

def test_thumbnail_and_jpeg(app, tmp_path):
    yy, xx = np.mgrid[0:320, 0:640]
    img = np.stack([(xx * 255 // 639), (yy * 255 // 319), ((xx + yy) % 256)], -1).astype(np.uint8)
    img[100:140, 200:300] = [250, 20, 20]
    Image.fromarray(img).save(tmp_path / "in.png")
    r = drv(app, "thumb", tmp_path / "in.png", tmp_path / "t.jpg", tmp_path / "t.ppm")
    assert r.returncode == 0, r.stdout
    m = re.search(r"thumb (\d+)x(\d+) jpeg (\d+) bytes psnr_own_decoder ([\d.]+)", r.stdout)
    assert (int(m.group(1)), int(m.group(2))) == (160, 80)
    thumb = read_ppm(tmp_path / "t.ppm")
    box = img.reshape(80, 4, 160, 4, 3).astype(np.float64).mean(axis=(1, 3))   # exact 4x4 area average
    assert np.abs(thumb.astype(np.float64) - box).max() <= 0.51
    dec = np.array(Image.open(tmp_path / "t.jpg").convert("RGB")).astype(np.float64)
    mse = ((dec - thumb) ** 2).mean()
    psnr_pil = 10 * math.log10(255 ** 2 / mse)
    assert psnr_pil > 30 and float(m.group(4)) > 30
    # odd sizes, portrait, tiny, no upscaling
    for w, h in ((1, 1), (7, 13), (161, 9), (100, 600), (17, 17)):
        Image.fromarray(np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "o.png")
        r = drv(app, "thumb", tmp_path / "o.png", tmp_path / "o.jpg", tmp_path / "o.ppm", 160, 95)
        tw, th = Image.open(tmp_path / "o.jpg").size
        assert max(tw, th) == min(160, max(w, h)) and abs(tw / th - w / h) < 0.25 + 1 / min(tw, th)
        dec = np.array(Image.open(tmp_path / "o.jpg").convert("RGB")).astype(np.float64)
        ref = read_ppm(tmp_path / "o.ppm").astype(np.float64)
        assert dec.shape == ref.shape and 10 * math.log10(255 ** 2 / max(((dec - ref) ** 2).mean(), 1e-9)) > 24
    report(f"app: thumbnail 640x320 -> 160x80 = exact box average; JPEG q82 {m.group(3)} bytes, "
           f"PSNR {psnr_pil:.1f} dB (Pillow), {float(m.group(4)):.1f} dB (image_jpeg.c)")


def test_base64(app):
    import base64
    for data in (b"", b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar", bytes(range(256)) * 3):
        r = run([app, "base64"], input=data.decode("latin-1"), encoding="latin-1")
        assert r.stdout.strip() == base64.b64encode(data).decode()


# ---- 7. the progress line (the whole flow, on the real qalign: tests/test_cli.py) ---------------

def test_progress_line(app):
    env = dict(os.environ, QALIGN_PROGRESS="1")
    r = run([app, "progress", "6"], env=env, text=False)     # bytes: keep the \r
    assert b"enabled=1" in r.stdout
    err = r.stderr.decode()
    assert "\r" in err and "\033[K" in err and "ETA" in err and ("items/s" in err or "s/item" in err)
    assert "6/6 (100%)" in err and "1 failed" in err and "1 already done" in err
    # the note is printed on its own line, not glued to the progress line
    assert re.search(r"\r\033\[Kqalign: error: dir/item_002\.jpg: a message in the middle\n", err)
    env.pop("QALIGN_PROGRESS")
    r = run([app, "progress", "6"], env=env, text=False)  # stderr is a pipe: quiet
    assert b"enabled=0" in r.stdout and b"\r" not in r.stderr and b"ETA" not in r.stderr
    assert r.stderr == b"qalign: error: dir/item_002.jpg: a message in the middle\n"
