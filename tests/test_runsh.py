"""run.sh from nothing to scores: a local HTTP server plays Hugging Face (with Range
support, like the real one), serving the tiny checkpoint in the released layout.

- the first run downloads every file named by the index, exports, scores;
- an interrupted download (a partial shard left in the cache) is resumed, not restarted,
  and a wrong size is refused;
- a second run neither downloads nor exports again;
- extra arguments go to qalign."""
import http.server
import json
import os
import re
import shutil
import threading

import pytest

from conftest import EMULATED, PYTHON, ROOT, report, run, startable


def run_sh(workdir):
    """run.sh as a user starts it. In an emulated run (tests/cross.sh) qalign is a binary for
    another CPU that run.sh would start directly: run.sh then runs from a folder of links to
    it, export.py and spm.py, next to a `qalign` script that starts the binary through qemu."""
    if not EMULATED:
        return ROOT / "run.sh"
    d = workdir / "runsh_emulated"
    if not d.exists():
        d.mkdir()
        for f in ("run.sh", "export.py", "spm.py"):
            (d / f).symlink_to(ROOT / f)
        startable(ROOT / "qalign", d / "qalign")
    return d / "run.sh"


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HEAD sizes and single byte ranges ("bytes=N-"), logging GETs."""
    log = []

    def log_message(self, *args):
        pass

    def send_head(self):
        path = self.translate_path(self.path.split("?")[0].replace("/fake/one-align/resolve/main", ""))
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        size = os.path.getsize(path)
        start = 0
        m = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        f = open(path, "rb")
        if m and int(m.group(1)) < size:
            start = int(m.group(1))
            f.seek(start)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.command == "GET":
            RangeHandler.log.append((os.path.basename(path), start))
        return f


@pytest.fixture
def server(tiny_ref, workdir):
    root = workdir / "hf"
    if not root.exists():
        shutil.copytree(tiny_ref / "checkpoint", root)
    handler = lambda *a, **k: RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    RangeHandler.log.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def test_run_sh_downloads_exports_scores_and_resumes(server, tiny_ref, workdir, qalign_bin):
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    url, root = server
    cache = workdir / "runsh_cache"
    env = {**os.environ, "QALIGN_HF_URL": url, "QALIGN_REPO": "fake/one-align", "QALIGN_CACHE": str(cache)}
    photo = tiny_ref / "inputs" / "photo.jpg"
    # a shard half-downloaded by an earlier, interrupted run
    shard = sorted(json.loads((root / "pytorch_model.bin.index.json").read_text())["weight_map"].values())[0]
    (cache / "one-align").mkdir(parents=True)
    half = (root / shard).read_bytes()[: (root / shard).stat().st_size // 2]
    (cache / "one-align" / shard).write_bytes(half)

    r = run([run_sh(workdir), "--dtype", "f32", "--json", photo], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    ref = json.loads((tiny_ref / "reference.json").read_text())
    rec = next(x for x in ref["records"] if x["name"] == "photo__quality")
    assert abs(out["score"] - rec["score"]) <= 2e-4
    got = dict(RangeHandler.log)
    assert got.get(shard) == len(half), f"the partial shard was not resumed: {RangeHandler.log}"
    for f in ("config.json", "preprocessor_config.json", "tokenizer.model", "pytorch_model.bin.index.json"):
        assert f in got
    (model,) = cache.glob("one-align-*-f32.qalign")       # named after the checkpoint's identity
    needed = ["config.json", "preprocessor_config.json", "tokenizer.model", "pytorch_model.bin.index.json"] + \
        sorted(set(json.loads((root / "pytorch_model.bin.index.json").read_text())["weight_map"].values()))
    for f in needed:
        assert (cache / "one-align" / f).stat().st_size == (root / f).stat().st_size, f

    # second run: straight to scoring
    RangeHandler.log.clear()
    mtime = model.stat().st_mtime_ns
    r = run([run_sh(workdir), "--dtype", "f32", "-t", "aesthetics", photo], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert RangeHandler.log == [], f"second run downloaded {RangeHandler.log}"
    assert model.stat().st_mtime_ns == mtime, "second run exported again"
    assert "excellent=" in r.stdout

    # a cached file longer than the server's is not a partial download: fetched again whole
    cfg = cache / "one-align" / "config.json"
    cfg.write_bytes(cfg.read_bytes() + b" " * 10)
    RangeHandler.log.clear()
    r = run([run_sh(workdir), "--dtype", "f32", photo], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("config.json", 0) in RangeHandler.log
    assert cfg.stat().st_size == (root / "config.json").stat().st_size
    report("run.sh: downloads (resuming a half shard), exports once, scores; second run goes straight to scoring")


class HubHandler(RangeHandler):
    """RangeHandler for two repositories and a dataset: the model repo fake/Compare2Score and
    the dataset VQA-CityU/Anchor_images (its files, and the Hub API's listing of them)."""
    anchors = None

    def send_head(self):
        path = self.path.split("?")[0]
        if path == "/api/datasets/VQA-CityU/Anchor_images/tree/main":
            body = json.dumps([{"type": "directory", "path": "data"}] +
                              [{"type": "file", "path": f"data/{p.name}"} for p in sorted(self.anchors.iterdir())] +
                              [{"type": "file", "path": "README.md"}]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            import io
            return io.BytesIO(body)
        prefix = "/datasets/VQA-CityU/Anchor_images/resolve/main/data/"
        if path.startswith(prefix):
            RangeHandler.log.append((path[len(prefix):], 0))
            data = (self.anchors / path[len(prefix):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            import io
            return io.BytesIO(data)
        self.path = self.path.replace("/fake/Compare2Score/resolve/main", "/fake/one-align/resolve/main")
        return super().send_head()


def test_run_sh_compare2score_fetches_the_anchors(tiny_ref, workdir, qalign_bin):
    """--preset compare2score: the checkpoint of its repository, then the dataset's anchor
    images (listed by the Hub API, in sorted order), given to qalign as --anchors."""
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    from PIL import Image
    import numpy as np
    root = workdir / "hub_c2s"
    shutil.copytree(tiny_ref / "checkpoint", root)
    anchors = workdir / "hub_anchors"
    anchors.mkdir()
    for k in range(5):
        rng = np.random.default_rng(k)
        Image.fromarray(rng.integers(0, 255, (40 + 7 * k, 50, 3), dtype=np.uint8)).save(anchors / f"{k:05d}.png")
    HubHandler.anchors = anchors
    handler = lambda *a, **k: HubHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        cache = workdir / "runsh_c2s_cache"
        env = {**os.environ, "QALIGN_HF_URL": f"http://127.0.0.1:{httpd.server_address[1]}",
               "QALIGN_REPO": "fake/Compare2Score", "QALIGN_CACHE": str(cache), "OMP_WAIT_POLICY": "PASSIVE"}
        photo = tiny_ref / "inputs" / "photo.jpg"
        r = run([run_sh(workdir), "--preset", "compare2score", "--dtype", "f32", "--json", photo], env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout)
        got = sorted(p.name for p in (cache / "anchors").iterdir())
        assert got == [f"anchor_{k}.png" for k in range(5)]
        for k in range(5):
            assert (cache / "anchors" / f"anchor_{k}.png").read_bytes() == (anchors / f"{k:05d}.png").read_bytes()
        # the same as qalign with those anchors by hand
        exported, = cache.glob("Compare2Score-*-f32.qalign")
        direct = run([qalign_bin, exported, "--preset", "compare2score", "--anchors", anchors,
                      "--json", photo], env=env)
        assert direct.returncode == 0 and json.loads(direct.stdout)["score"] == out["score"]
        assert out["scale"] == "0-100" and len(out["anchor_prefs"]) == 5
        RangeHandler.log.clear()
        r = run([run_sh(workdir), "--preset", "compare2score", "--dtype", "f32", photo], env=env)
        assert r.returncode == 0 and RangeHandler.log == [], RangeHandler.log      # nothing fetched again
    finally:
        httpd.shutdown()
    report("run.sh --preset compare2score: checkpoint and the 5 anchor images fetched (Hub API listing), scored")


def test_run_sh_without_network_says_so(workdir, tiny_ref):
    """Issue 11, item 11: no network -> one clear error and a non-zero exit (it used to exit
    6 or 7 without a word, killed by set -e inside a command substitution)."""
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                   # nothing listens there now: connection refused
    cache = workdir / "runsh_offline"
    env = {**os.environ, "QALIGN_HF_URL": f"http://127.0.0.1:{port}", "QALIGN_CACHE": str(cache)}
    r = run([run_sh(workdir), tiny_ref / "inputs" / "photo.jpg"], env=env, timeout=120)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stderr)
    assert lines and lines[-1].startswith("run.sh: error: cannot get config.json from http://127.0.0.1:"), r.stderr
    assert "no network" in lines[-1] and "--model DIR" in lines[-1]
    # a server without the repository (HTTP 404) is an error too, not a download of the error page
    r = run([run_sh(workdir), tiny_ref / "inputs" / "photo.jpg"],
            env={**env, "QALIGN_HF_URL": "http://127.0.0.1:9"}, timeout=120)
    assert r.returncode == 1 and "run.sh: error: cannot get config.json" in r.stderr


def test_run_sh_export_is_keyed_by_the_checkpoint(workdir, tiny_ref):
    """Issue 11, item 11: two checkpoints in folders of the same name, one weight changed in
    the second, each get their own export and their own score; a checkpoint changed in place
    is exported again; an unchanged one is not."""
    import torch
    a, b = workdir / "runsh_A" / "checkpoint", workdir / "runsh_B" / "checkpoint"
    for d in (a, b):
        shutil.copytree(tiny_ref / "checkpoint", d)
    index = json.loads((b / "pytorch_model.bin.index.json").read_text())["weight_map"]
    shard = b / index["model.norm.weight"]
    sd = torch.load(shard, map_location="cpu")
    sd["model.norm.weight"] = sd["model.norm.weight"] * 3     # the final norm: every logit changes
    torch.save(sd, shard)
    cache = workdir / "runsh_keyed"
    env = {**os.environ, "QALIGN_CACHE": str(cache)}
    photo = tiny_ref / "inputs" / "photo.jpg"

    def score(ckpt):
        r = run([run_sh(workdir), "--dtype", "f32", "--model", ckpt, "--json", photo], env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout)["score"], r.stderr

    sa, err_a = score(a)
    sb, err_b = score(b)
    assert "exporting" in err_a and "exporting" in err_b
    exports = sorted(cache.glob("checkpoint-*-f32.qalign"))
    assert len(exports) == 2 and abs(sa - sb) > 1e-3, (exports, sa, sb)
    ref = json.loads((tiny_ref / "reference.json").read_text())
    assert abs(sa - next(x for x in ref["records"] if x["name"] == "photo__quality")["score"]) <= 2e-4
    again, err = score(a)                                       # unchanged: the cached export
    assert again == sa and "exporting" not in err
    torch.save(torch.load(a / index["model.norm.weight"], map_location="cpu"), a / index["model.norm.weight"])
    os.utime(a / index["model.norm.weight"], ns=(1, 1))         # the same weights, written anew
    _, err = score(a)
    assert "exporting" in err and len(list(cache.glob("checkpoint-*-f32.qalign"))) == 3
    report(f"run.sh: exports keyed by checkpoint identity: A {sa:.4f}, B (one weight changed) {sb:.4f}; "
           "a rewritten checkpoint is exported again, an unchanged one is not")


# ---- Q-ReAlign (Qwen3.5): the --preset q-realign-* checkpoints -----------------------------

QWEN_REPOS = {"q-realign-mini": "Q-ReAlign-Mini-0.8B", "q-realign-lite": "Q-ReAlign-Lite-4B",
              "q-realign-pro": "Q-ReAlign-Pro-9B"}


class QwenHubHandler(RangeHandler):
    """RangeHandler for the Q-ReAlign repositories under their real names: a request for
    /q-future/<repo>/resolve/main/<file> is served from <root>/<repo>/<file>; any other
    path is a 404, as on the Hub. Every request is logged (method, path) in `requests`."""
    requests = []
    broken = None          # a file name answered with HTTP 500

    def send_head(self):
        QwenHubHandler.requests.append((self.command, self.path))
        if self.broken and self.path.endswith("/" + self.broken):
            self.send_error(500)
            return None
        m = re.match(r"/q-future/([^/]+)/resolve/main/([^/?]+)$", self.path.split("?")[0])
        if not m:
            self.send_error(404)
            return None
        self.path = f"/{m.group(1)}/{m.group(2)}"
        return super().send_head()


def shard_safetensors(src, out_dir, n=2):
    """Split a safetensors file into n shards named as transformers names them, with their
    model.safetensors.index.json (the layout of the larger released checkpoints)."""
    import struct
    raw = src.read_bytes()
    (hl,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hl])
    names = sorted(k for k in header if k != "__metadata__")
    weight_map = {}
    for s in range(n):
        part = names[s::n]
        fname = f"model-{s + 1:05d}-of-{n:05d}.safetensors"
        h, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
        for k in part:
            a, b = header[k]["data_offsets"]
            blob = raw[8 + hl + a:8 + hl + b]
            h[k] = {"dtype": header[k]["dtype"], "shape": header[k]["shape"], "data_offsets": [off, off + len(blob)]}
            blobs.append(blob)
            off += len(blob)
            weight_map[k] = fname
        hb = json.dumps(h).encode()
        hb += b" " * ((8 - len(hb) % 8) % 8)
        (out_dir / fname).write_bytes(struct.pack("<Q", len(hb)) + hb + b"".join(blobs))
    (out_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": len(raw) - 8 - hl}, "weight_map": weight_map}, indent=2))


def test_run_sh_q_realign_downloads_exports_verifies_scores(workdir, qalign_bin):
    """run.sh --preset q-realign-mini / -lite with a local server in the Hub's place, serving
    the tiny Qwen3.5 checkpoint of tests/qwen_ref.py under the real repository names: Mini
    as one model.safetensors with a chat_template.jinja (thinking off by default, as the
    0.8B's), Lite sharded with an index, no template file and processor_config.json in the
    place of preprocessor_config.json (transformers 5's layout). Each run must fetch exactly the
    checkpoint's files (a wrong name is a 404 and stops it), resume a partial download,
    export, verify the export (`qalign --verify`), and score: the same score as export.py +
    qalign on the served folder, level logits as the PyTorch oracle's on the same inputs."""
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    torch = pytest.importorskip("torch")
    import numpy as np
    from PIL import Image
    import qwen_ref
    import test_qwen_image as tqi

    root = workdir / "hub_qwen"
    mini, lite = root / QWEN_REPOS["q-realign-mini"], root / QWEN_REPOS["q-realign-lite"]
    if root.exists():
        shutil.rmtree(root)
    qwen_ref.write_checkpoint(str(mini), qwen_ref.TINY)
    shutil.copytree(mini, lite)
    # the test tokenizer's template thinks by default (as 4B/9B's); Mini gets the 0.8B's variant
    tpl = json.loads((mini / "tokenizer_config.json").read_text())["chat_template"]
    on = ("{%- if enable_thinking is defined and enable_thinking is false %}\n        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
          "    {%- else %}\n        {{- '<think>\\n' }}\n")
    off = ("{%- if enable_thinking is defined and enable_thinking is true %}\n        {{- '<think>\\n' }}\n"
           "    {%- else %}\n        {{- '<think>\\n\\n</think>\\n\\n' }}\n")
    assert tpl.count(on) == 1, tpl[-400:]
    (mini / "chat_template.jinja").write_text(tpl.replace(on, off))
    shard_safetensors(lite / "model.safetensors", lite)
    (lite / "model.safetensors").unlink()
    # Lite: the image processor's settings as transformers 5's save_pretrained writes them
    # (processor_config.json, nested), with a min_pixels of its own that changes the pixels
    pp = json.loads((lite / "preprocessor_config.json").read_text())
    pp["size"]["shortest_edge"] = 32768
    (lite / "processor_config.json").write_text(json.dumps({"image_processor": pp, "processor_class": "Qwen3VLProcessor"}))
    (lite / "preprocessor_config.json").unlink()

    handler = lambda *a, **k: QwenHubHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        cache = workdir / "runsh_qwen_cache"
        shutil.rmtree(cache, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if k != "QALIGN_REPO"}
        env.update(QALIGN_HF_URL=f"http://127.0.0.1:{httpd.server_address[1]}", QALIGN_CACHE=str(cache),
                   OMP_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE")
        img = workdir / "qwen_photo.png"
        Image.fromarray((np.random.default_rng(3).random((70, 100, 3)) * 255).astype(np.uint8)).save(img)

        # an interrupted earlier download of Mini's weights
        (cache / mini.name).mkdir(parents=True)
        half = (mini / "model.safetensors").read_bytes()[: (mini / "model.safetensors").stat().st_size // 2]
        (cache / mini.name / "model.safetensors").write_bytes(half)

        def direct(ckpt, tag, preset):
            """export.py + qalign by hand on a checkpoint folder: the score run.sh must give"""
            out = workdir / f"qwen_direct_{tag}.qalign"
            r = run([PYTHON, ROOT / "export.py", "--model", ckpt, out, "--dtype", "f32", "-q"])
            assert r.returncode == 0, r.stderr
            r = run([qalign_bin, out, "--preset", preset, "--json", img], env=env)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)["score"]

        results = {}
        for preset, ckpt in (("q-realign-mini", mini), ("q-realign-lite", lite)):
            RangeHandler.log.clear()
            QwenHubHandler.requests.clear()
            dump = workdir / f"qwen_dump_{preset}"
            shutil.rmtree(dump, ignore_errors=True)
            r = run([run_sh(workdir), "--preset", preset, "--dtype", "f32", "--json", "--dump", dump, img], env=env)
            assert r.returncode == 0, r.stderr[-3000:]
            results[preset] = json.loads(r.stdout)["score"]
            assert "exporting" in r.stderr, r.stderr
            if ckpt == mini:
                assert ("model.safetensors", len(half)) in RangeHandler.log, f"not resumed: {RangeHandler.log}"
            (model,) = cache.glob(f"{ckpt.name}-*-f32.qalign")
            assert f"{model}: the header, the table and all" in r.stderr, f"no qalign --verify after the export:\n{r.stderr}"
            # every file of the served checkpoint, whole, and nothing else
            got = sorted(p.name for p in (cache / ckpt.name).iterdir())
            assert got == sorted(p.name for p in ckpt.iterdir()), (got, QwenHubHandler.requests)
            for p in ckpt.iterdir():
                assert (cache / ckpt.name / p.name).read_bytes() == p.read_bytes(), p.name
            wrong = [x for x in QwenHubHandler.requests if not re.search(r"/q-future/%s/resolve/main/" % re.escape(ckpt.name), x[1])]
            assert not wrong, f"requests outside {ckpt.name}: {wrong}"
            # scored as export.py + qalign score the served folder
            assert results[preset] == direct(ckpt, preset, preset), (results[preset], preset)
            # and as the oracle computes on the pixel rows of the processor's Python port and
            # the prompt ids qalign used (their text is checked against HF tokenizers in test_qwen.py)
            pp = json.loads((ckpt / "preprocessor_config.json").read_text()) if ckpt == mini else \
                json.loads((ckpt / "processor_config.json").read_text())["image_processor"]
            _, px, (_, gh, gw) = tqi.oracle_pipeline(img, 0, "torch", "fused", pp["size"]["shortest_edge"],
                                                     pp["size"]["longest_edge"])
            assert np.array_equal(np.load(dump / "pixel_values.npy"), px)
            ids = np.load(dump / "input_ids.npy").reshape(-1).tolist()
            # the level words are whole tokens of the test vocabulary ("Ġexcellent", ...)
            vocab = json.loads((ckpt / "tokenizer.json").read_text())["model"]["vocab"]
            level_ids = [vocab["\u0120" + w] for w in ("excellent", "good", "fair", "poor", "bad")]
            with torch.no_grad():
                lv = qwen_ref.Qwen35(str(ckpt)).forward(ids, torch.from_numpy(px), [(1, gh, gw)], level_ids).numpy()
            got_lv = np.load(dump / "level_logits.npy").reshape(-1)
            assert float(np.abs(got_lv - lv).max()) < 2e-4, (got_lv, lv)
            p = np.exp(lv - lv.max())
            assert abs(float((p / p.sum()) @ np.array([1, 0.75, 0.5, 0.25, 0])) - results[preset]) < 1e-4
        assert dict(RangeHandler.log).get("model.safetensors") is None   # (Lite has shards only)

        # Mini's template file took effect: without it the export (thinking open) scores otherwise
        bare = workdir / "qwen_bare"
        shutil.rmtree(bare, ignore_errors=True)
        shutil.copytree(mini, bare)
        (bare / "chat_template.jinja").unlink()
        assert abs(direct(bare, "bare", "q-realign-mini") - results["q-realign-mini"]) > 1e-6

        # a second run: nothing downloaded, nothing exported, scored
        RangeHandler.log.clear()
        (model,) = cache.glob(f"{mini.name}-*-f32.qalign")
        mtime = model.stat().st_mtime_ns
        r = run([run_sh(workdir), "--preset", "q-realign-mini", "--dtype", "f32", "--json", img], env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert RangeHandler.log == [] and model.stat().st_mtime_ns == mtime and "exporting" not in r.stderr
        assert json.loads(r.stdout)["score"] == results["q-realign-mini"]

        # a server error on a file the checkpoint may lack is an error, not taken for "absent"
        QwenHubHandler.broken = "chat_template.jinja"
        r = run([run_sh(workdir), "--preset", "q-realign-mini", "--json", img],
                env=dict(env, QALIGN_CACHE=str(workdir / "runsh_qwen_cache_500")))
        assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].endswith("chat_template.jinja: HTTP 500"), r.stderr
    finally:
        QwenHubHandler.broken = None
        httpd.shutdown()
    report(f"run.sh --preset q-realign-mini/-lite: Qwen3.5 checkpoint (single file + chat_template.jinja, resumed; "
           f"sharded) downloaded, exported, verified, scored {results['q-realign-mini']:.4f} / "
           f"{results['q-realign-lite']:.4f} = export.py + qalign, level logits = the PyTorch oracle")
