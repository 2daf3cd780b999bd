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

from conftest import ROOT, report, run


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

    r = run([ROOT / "run.sh", "--dtype", "f32", "--json", photo], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    ref = json.loads((tiny_ref / "reference.json").read_text())
    rec = next(x for x in ref["records"] if x["name"] == "photo__quality")
    assert abs(out["score"] - rec["score"]) <= 2e-4
    got = dict(RangeHandler.log)
    assert got.get(shard) == len(half), f"the partial shard was not resumed: {RangeHandler.log}"
    for f in ("config.json", "preprocessor_config.json", "tokenizer.model", "pytorch_model.bin.index.json"):
        assert f in got
    model = cache / "one-align-f32.qalign"
    assert model.exists()
    needed = ["config.json", "preprocessor_config.json", "tokenizer.model", "pytorch_model.bin.index.json"] + \
        sorted(set(json.loads((root / "pytorch_model.bin.index.json").read_text())["weight_map"].values()))
    for f in needed:
        assert (cache / "one-align" / f).stat().st_size == (root / f).stat().st_size, f

    # second run: straight to scoring
    RangeHandler.log.clear()
    mtime = model.stat().st_mtime_ns
    r = run([ROOT / "run.sh", "--dtype", "f32", "-t", "aesthetics", photo], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert RangeHandler.log == [], f"second run downloaded {RangeHandler.log}"
    assert model.stat().st_mtime_ns == mtime, "second run exported again"
    assert "excellent=" in r.stdout

    # a cached file longer than the server's is not a partial download: fetched again whole
    cfg = cache / "one-align" / "config.json"
    cfg.write_bytes(cfg.read_bytes() + b" " * 10)
    RangeHandler.log.clear()
    r = run([ROOT / "run.sh", "--dtype", "f32", photo], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("config.json", 0) in RangeHandler.log
    assert cfg.stat().st_size == (root / "config.json").stat().st_size
    report("run.sh: downloads (resuming a half shard), exports once, scores; second run goes straight to scoring")
