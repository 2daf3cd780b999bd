"""Issue 23, "hardening, third pass": one regression test per numbered item (each failed on
main 8db8482 before the fix), through the real binary on the tiny reference model, the C API
(tests/test_api_null.c) and the Python client.

  1-3  --report: the temporary file is new (random name, O_EXCL|O_NOFOLLOW) beside the
       target: a symbolic link or a user's file at FILE.tmp is never written through or
       destroyed; a FIFO is written in place, a symbolic link's target replaced (the link
       stays), a socket or block device refused (also for --csv / --jsonl)
  4    python Scorer: relative paths are the caller's, whatever os.chdir did since
  5    --max-pixels from the header, before decoding; the server's default and its
       per-request budget
  6    C API entry points with NULL: QALIGN_ERR_ARG and a message, no crash
  7    Scorer(timeout=): a child that stops answering is killed, a clear exception
  8    --api-key hidden from ps; --api-key-file
  9    a repeated query parameter, a JSON body against the query string: 400
 10    messages: Content-Length out of range, a short body then half-close, --max-body 1T,
       --shard 0/2, a 0-row numpy array
 11    silently accepted: --per-frame on images, unknown {placeholders}, NaN temperature, a
       level word of several pieces, --anchors skipping files, conflicting --eval labels,
       --compare with n = 2 or constant scores
 12    model checksums: export.py writes them, qalign --verify names a damaged tensor
"""
import json
import os
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import BIN, PYTHON, ROOT, report, run
from test_cli import make_video, need_ffmpeg

EXPORT = ROOT / "export.py"


@pytest.fixture(scope="module")
def model(tiny_ref, workdir):
    p = workdir / "harden3_tiny_f32.qalign"
    if not p.exists():
        r = run([PYTHON, EXPORT, "-q", tiny_ref / "checkpoint", p, "--dtype", "f32"])
        assert r.returncode == 0, r.stderr
    return p


@pytest.fixture(scope="module")
def photo(tiny_ref):
    return tiny_ref / "inputs" / "photo.jpg"


def qa(*args, **kw):
    kw.setdefault("timeout", 300)
    return run([BIN, *args], **kw)


def one_line(r, *needles):
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 1 and len(lines) == 1, (r.returncode, r.stderr)
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def is_report(p):
    return Path(p).read_text().startswith("<!DOCTYPE html>")


# ---- 1-3 -------------------------------------------------------------------------------

def test_01_report_temporary_never_follows_a_symlink(model, photo, workdir):
    d = workdir / "h3_01"
    d.mkdir()
    victim = d / "victim.txt"
    victim.write_text("precious\n")
    (d / "rep.html.tmp").symlink_to(victim)
    r = qa("-q", "--report", d / "rep.html", model, photo)
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "precious\n"                       # not overwritten with HTML
    assert os.readlink(d / "rep.html.tmp") == str(victim)           # the link itself untouched
    assert is_report(d / "rep.html")
    assert sorted(p.name for p in d.iterdir()) == ["rep.html", "rep.html.tmp", "victim.txt"]   # no temporary left


def test_02_report_targets_that_are_not_regular_files(model, photo, workdir):
    d = workdir / "h3_02"
    d.mkdir()
    # a symbolic link to a regular file: the file gets the page, the link stays a link
    real = d / "real.html"
    real.write_text("old\n")
    (d / "link.html").symlink_to(real)
    r = qa("-q", "--report", d / "link.html", model, photo)
    assert r.returncode == 0, r.stderr
    assert (d / "link.html").is_symlink() and is_report(real)
    # a FIFO: written in place (its reader gets the page), still a FIFO afterwards
    fifo = d / "page.fifo"
    os.mkfifo(fifo)
    got = {}

    def reader():
        with open(fifo, "rb") as f:
            got["page"] = f.read()
    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.2)
    r = qa("-q", "--report", fifo, model, photo)
    t.join(30)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and got["page"].startswith(b"<!DOCTYPE html>")
    # a FIFO nobody reads: refused at once (no hang)
    r = qa("-q", "--report", fifo, model, photo, timeout=30)
    one_line(r, "cannot write the report", "FIFO that nobody reads")
    # a socket, a block device: refused before anything is scored, left as they are
    sock_path = d / "s.sock"
    sk = socket.socket(socket.AF_UNIX)
    sk.bind(str(sock_path))
    try:
        for opt in ("--report", "--csv", "--jsonl"):
            r = qa("-q", opt, sock_path, model, photo)
            one_line(r, str(sock_path), "a socket")
            assert r.stdout == "" and stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    finally:
        sk.close()
    blk = d / "blk"
    os.mknod(blk, 0o600 | stat.S_IFBLK, os.makedev(7, 200))   # (a loop device number nobody uses)
    for opt in ("--report", "--csv"):
        one_line(qa("-q", opt, blk, model, photo), "a block device")
        assert stat.S_ISBLK(os.lstat(blk).st_mode)
    # a character device: written in place (the issue's --report /dev/full, on a private node
    # of the same device, so that an old qalign cannot replace the machine's /dev/full)
    full = d / "full"
    os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    one_line(qa("-q", "--report", full, model, photo), f"cannot write {full}: No space left on device")
    assert stat.S_ISCHR(os.lstat(full).st_mode)
    r = qa("-q", "--report", "/dev/stdout", model, photo)              # stdout a pipe: /dev/stdout -> pipe:[...]
    assert r.returncode == 0 and "<!DOCTYPE html>" in r.stdout and os.path.islink("/dev/stdout"), r.stderr
    # --csv into a FIFO / character device is written in place, as before
    r = qa("-q", "--jsonl", "/dev/null", model, photo)
    assert r.returncode == 0, r.stderr
    h = qa("--help").stdout
    assert "written in place" in h and "random name" in h
    report("harden3 1-3: --report through a planted FILE.tmp symlink, a symlink target, a FIFO (in place), "
           "a socket and a block device (refused, also --csv/--jsonl)")


def test_03_users_tmp_file_untouched(model, photo, workdir):
    d = workdir / "h3_03"
    d.mkdir()
    mine = d / "rep.html.tmp"
    mine.write_text("my notes\n")
    os.chmod(mine, 0o444)
    r = qa("-q", "--report", d / "rep.html", model, photo)
    assert r.returncode == 0, r.stderr
    assert mine.read_text() == "my notes\n" and is_report(d / "rep.html")
    assert not [p for p in d.iterdir() if p.name not in ("rep.html", "rep.html.tmp")]


# ---- 4, 7 (and 10's numpy array): the Python client ---------------------------------------

@pytest.fixture()
def client(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.syspath_prepend(str(ROOT / "python"))
    import qalign
    return qalign


def test_04_scorer_paths_after_chdir(model, tiny_ref, workdir, client, monkeypatch):
    a, b = workdir / "h3_04a", workdir / "h3_04b"
    a.mkdir()
    b.mkdir()
    (a / "x.jpg").write_bytes((tiny_ref / "inputs" / "photo.jpg").read_bytes())
    (b / "x.jpg").write_bytes((tiny_ref / "inputs" / "gray.jpg").read_bytes())
    want = json.loads(qa("--json", model, b / "x.jpg").stdout)
    monkeypatch.chdir(a)
    with client.Scorer(model, binary=BIN, threads=1) as q:
        monkeypatch.chdir(b)
        rows = q.score(["x.jpg", Path("x.jpg")])
    assert [r["path"] for r in rows] == ["x.jpg", "x.jpg"]          # the caller's string
    assert rows[0]["score"] == want["score"] and rows[1]["score"] == want["score"]   # b's file, not a's
    report("harden3 4: Scorer scores ./x.jpg of the directory it is called in after os.chdir, row path as given")


def test_07_scorer_timeout_kills_a_silent_child(model, photo, workdir, client):
    hang = workdir / "h3_07_hang"
    hang.write_text("#!/bin/sh\nexec sleep 300\n")      # takes requests into a pipe nobody reads, never answers
    hang.chmod(0o755)
    for inputs, what in (([photo], "gave no answer"), ([bytes(1 << 20)] * 4, "did not take a request")):
        q = client.Scorer(model, binary=hang, timeout=2, window=4)
        pid = q._p.pid
        t0 = time.time()
        with pytest.raises(client.QAlignError, match=f"{what} within 2 s.*killed"):
            q.score(inputs)
        assert time.time() - t0 < 20
        with pytest.raises(ProcessLookupError):   # killed and reaped
            os.kill(pid, 0)
        with pytest.raises(client.QAlignError, match="closed"):
            q.score([photo])
        q.close()
    with pytest.raises(ValueError, match="timeout"):
        client.Scorer(model, binary=BIN, timeout=0)
    import inspect
    assert inspect.signature(client.Scorer).parameters["timeout"].default == 1800
    report("harden3 7: Scorer(timeout=2): a silent child and one that takes no request are killed, QAlignError in ~2 s")


def test_10_numpy_without_rows(model, client):
    np = pytest.importorskip("numpy")
    with client.Scorer(model, binary=BIN, threads=1) as q:
        for shape in ((0, 5, 3), (4, 0, 3)):
            with pytest.raises(ValueError, match=rf"shape \({shape[0]}, {shape[1]}, 3\) has no pixels: height x width "
                                                 rf"is {shape[0]} x {shape[1]}"):
                q.score([np.zeros(shape, np.uint8)])


# ---- 6 -----------------------------------------------------------------------------------

def test_06_c_api_null_arguments(model):
    import re
    r = run(["make", "-s", "-C", ROOT, "build/test_api_null"])
    assert r.returncode == 0, r.stdout + r.stderr
    r = run([ROOT / "build" / "test_api_null", model], timeout=120)
    assert r.returncode == 0 and "0 failed" in r.stdout, (r.returncode, r.stdout[-3000:], r.stderr[-2000:])
    # every function qalign.h declares is called with NULL there
    decls = set(re.findall(r"^[A-Za-z_][\w \*]*?\b(qalign_\w+)\(", (ROOT / "qalign.h").read_text(), re.M))
    driver = (ROOT / "tests" / "test_api_null.c").read_text()
    missing = sorted(f for f in decls if f + "(" not in driver)
    assert not missing, f"qalign.h functions not checked with NULL in tests/test_api_null.c: {missing}"
    report(f"harden3 6: {len(decls)} qalign.h functions called with NULL: {r.stdout.strip().splitlines()[-1]}")


# ---- 8, 9, 10: the server -------------------------------------------------------------------

class Srv:
    """qalign --listen 127.0.0.1:0 ... MODEL, until the with-block ends."""

    def __init__(self, model, *args, env=None):
        import re
        self.p = subprocess.Popen([str(BIN), "--listen", "127.0.0.1:0", *map(str, args), str(model)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE", **(env or {})))
        self.lines = []
        for line in self.p.stderr:
            self.lines.append(line)
            m = re.search(r"listening on http://[\d.]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            raise AssertionError("the server did not start: " + "".join(self.lines))
        threading.Thread(target=lambda: [self.lines.append(l) for l in self.p.stderr], daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.p.kill()
        self.p.wait()

    def request(self, method, path, body=None, headers=None):
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def raw(self, data, half_close=False, wait=10):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=wait)
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            out = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                out += chunk
            return out
        finally:
            s.close()


def test_08_api_key_hidden_and_from_a_file(model, photo, workdir):
    key = "s3cret-key-4242"
    with Srv(model, "--api-key", key) as s:
        cmdline = open(f"/proc/{s.p.pid}/cmdline", "rb").read()
        assert key.encode() not in cmdline, cmdline
        assert s.request("GET", "/metrics")[0] == 401
        assert s.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"})[0] == 200
    kf = workdir / "h3_08.key"
    kf.write_text("from-a-file\n# a comment line is not part of it\n")
    with Srv(model, "--api-key-file", kf) as s:
        assert s.request("GET", "/metrics", headers={"Authorization": "Bearer from-a-file"})[0] == 200
        assert s.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"})[0] == 401
    for bad, needle in ((workdir / "h3_08_missing.key", "No such file"), (workdir / "h3_08_empty.key", "empty")):
        if "empty" in str(bad):
            bad.write_text("\n")
        r = qa("--listen", "127.0.0.1:0", "--api-key-file", bad, model, timeout=30)
        one_line(r, "--api-key-file", needle)
    h = qa("--help").stdout
    assert "$QALIGN_API_KEY or" in h and "--api-key-file FILE" in h
    report("harden3 8: --api-key blanked in /proc/PID/cmdline; --api-key-file; --help points to both")


def test_09_repeated_query_parameter_and_body_conflicts(model, photo):
    import base64
    img = photo.read_bytes()
    body = json.dumps({"images": [base64.b64encode(img).decode()], "task": "aesthetics"}).encode()
    with Srv(model) as s:
        st, out = s.request("POST", "/score?task=quality&task=aesthetics", img)
        assert st == 400 and b"'task' given twice" in out, (st, out)
        st, out = s.request("POST", "/score?name=a&scale=0-1&name=b", img)
        assert st == 400 and b"'name' given twice" in out, (st, out)
        js = {"Content-Type": "application/json"}
        st, out = s.request("POST", "/score?task=quality", body, js)
        assert st == 400 and b"task is 'quality' in the query string but 'aesthetics' in the JSON body" in out, out
        st, out = s.request("POST", "/score?task=aesthetics", body, js)         # the same: fine
        assert st == 200 and json.loads(out)["results"][0]["task"] == "aesthetics"
        named = json.dumps({"images": [base64.b64encode(img).decode()], "names": ["x.jpg"]}).encode()
        st, out = s.request("POST", "/score?name=y.jpg", named, js)
        assert st == 400 and b"name is given in the query string and another one in the JSON body" in out, out
        st, out = s.request("POST", "/score?scale=0-1", img)
        assert st == 200 and json.loads(out)["scale"] == "0-1"
    report("harden3 9: repeated query parameters and query/body conflicts: 400")


def test_10_messages(model, photo, tiny_ref):
    with Srv(model) as s:
        out = s.raw(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400") and b"Content-Length out of range" in out, out
        out = s.raw(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10, half_close=True)
        assert out.startswith(b"HTTP/1.1 400") and b"the body ended after 10 of its 100 bytes" in out, out
    r = qa("--stdio", "--max-body", "1T", model, input="", timeout=30)
    assert r.returncode == 0, r.stderr                                     # 1 TB is allowed: 1T is taken
    one_line(qa("--stdio", "--max-body", "2T", model, input="", timeout=30), "from 1 to 1T bytes")
    for shard in ("0/2", "3/2", "a"):
        line = one_line(qa("--shard", shard, model, photo))
        assert line.count("--shard") == 1, line
    report("harden3 10: Content-Length out of range, short body + half-close: 400 with the reason; --max-body 1T; "
           "--shard says its name once")


# ---- 12: model checksums ----------------------------------------------------------------------

def file_sums_by_xxhash(data):
    """The checksum section as the xxhash library (the reference implementation's Python
    binding) computes it from the file's bytes: (header+table hash, [per-tensor sums])."""
    import struct
    import xxhash
    import export as ex
    n = struct.unpack_from("<I", data, 12)[0]
    table_end = 1024 + 96 * n
    sums = []
    for i in range(n):
        e = ex.TABLE_ENTRY.unpack_from(data, 1024 + 96 * i)
        off, nbytes = e[-2], e[-1]
        t = data[off:off + nbytes]
        digs = b"".join(struct.pack("<Q", xxhash.xxh64_intdigest(t[k:k + 4096])) for k in range(0, len(t), 4096))
        sums.append(xxhash.xxh64_intdigest(digs))
    return xxhash.xxh64_intdigest(data[:table_end]), sums, n


def tensor_span(data, name):
    import struct
    import export as ex
    n = struct.unpack_from("<I", data, 12)[0]
    for i in range(n):
        e = ex.TABLE_ENTRY.unpack_from(data, 1024 + 96 * i)
        if e[0].rstrip(b"\0").decode() == name:
            return e[-2], e[-1]
    raise KeyError(name)


def test_12_model_checksums(model, photo, workdir):
    import struct
    data = model.read_bytes()
    head, sums, n = file_sums_by_xxhash(data)
    last_end = max(o + b for o, b in (tensor_span(data, ex_name) for ex_name in [
        __import__("export").TABLE_ENTRY.unpack_from(data, 1024 + 96 * (n - 1))[0].rstrip(b"\0").decode()]))
    sec = (last_end + 63) // 64 * 64
    assert len(data) == sec + 24 + 8 * n                                      # the section ends the file
    magic, version, count, piece, h = struct.unpack_from("<IIIIQ", data, sec)
    assert (magic, version, count, piece) == (0x4D555351, 1, n, 4096) and data[sec:sec + 4] == b"QSUM"
    assert h == head and list(struct.unpack_from(f"<{n}Q", data, sec + 24)) == sums   # = the xxhash library's
    r = qa("--verify", model)
    assert r.returncode == 0 and f"all {n} tensors match their checksums" in r.stdout, r.stdout + r.stderr
    want = json.loads(qa("--json", model, photo).stdout)

    # a flipped bit inside a weight: loading does not look (it still scores), --verify names the tensor
    off, nbytes = tensor_span(data, "l.1.down")
    bad = bytearray(data)
    bad[off + nbytes // 2] ^= 0x10
    p = workdir / "h3_12_flipped.qalign"
    p.write_bytes(bad)
    r = qa("--json", p, photo)
    assert r.returncode == 0 and json.loads(r.stdout)["score"] is not None, r.stderr
    for extra in ((), ("--no-mmap",)):
        one_line(qa("--verify", *extra, p), str(p), "tensor l.1.down does not match its checksum", "damaged")
    off2, _ = tensor_span(data, "v.0.k.w")
    bad[off2 + 5] ^= 1
    p.write_bytes(bad)
    one_line(qa("--verify", p), "tensor v.0.k.w does not match its checksum (and 1 more tensors)")
    # the header (a CLIP mean, still in range)
    hdr = bytearray(data)
    hdr[4 * 34] ^= 1
    p.write_bytes(hdr)
    one_line(qa("--verify", p), "the header or tensor table does not match its checksum")
    # a file from before checksums (no section): loads and scores the same; --verify says it cannot
    old = workdir / "h3_12_old.qalign"
    old.write_bytes(data[:last_end])
    r = qa("--json", old, photo)
    assert r.returncode == 0 and json.loads(r.stdout)["score"] == want["score"], r.stderr
    one_line(qa("--verify", old), "has no checksums", "re-run export.py")
    # a damaged section (cut short, or something after it): refused at load, as a padded file
    for blob in (data[:-3], data + b"\0" * 8):
        p.write_bytes(blob)
        one_line(qa(p, photo), "re-run export.py")
    # the server: /health says whether the file was verified before serving
    for args, verified in (((), False), (("--verify",), True)):
        with Srv(model, *args) as s:
            st, out = s.request("GET", "/health")
            health = json.loads(out)
            assert st == 200 and health["checksums"] is True and health["verified"] is verified, health
    one_line(qa("--listen", "127.0.0.1:0", "--verify", old, timeout=30), "has no checksums")
    assert '"$here/qalign" --verify "$out"' in (ROOT / "run.sh").read_text()
    # speed: export.py's numpy XXH64 (vectorised over a tensor's pieces) and qalign --verify
    import export as ex
    blob = os.urandom(64 << 20)
    t0 = time.time()
    ex.tensor_sum(blob)
    np_rate = 64 / 1024 / (time.time() - t0)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    report(f"harden3 12: checksums = the xxhash library's ({n} tensors + header); a flipped bit named by --verify "
           f"(mapped and --no-mmap), header damage, an old file (loads, cannot be verified), /health verified; "
           f"export.py's numpy XXH64 {np_rate:.2f} GB/s on {cpu}")


# ---- 5: --max-pixels ------------------------------------------------------------------------

def zeros_png(path, w, h):
    """A w x h 8-bit gray PNG of zeros, written without holding the pixels (the issue's
    13000 x 13000 one is 493 KB)."""
    import struct
    import zlib

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    z = zlib.compressobj(9)
    row = bytes(w + 1)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) +
                     chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_05_max_pixels(model, workdir):
    from PIL import Image
    import base64
    d = workdir / "h3_05"
    d.mkdir()
    small, big = [], []
    for ext, fmt in (("png", "PNG"), ("jpg", "JPEG"), ("bmp", "BMP"), ("ppm", "PPM"), ("pgm", "PPM")):
        for size, bucket in ((30, small), (41, big)):
            p = d / f"{size}.{ext}"
            Image.new("L" if ext == "pgm" else "RGB", (size, size), (90,) if ext == "pgm" else (90, 120, 30)).save(p, fmt)
            bucket.append(p)
    # the CLI: --max-pixels 1600 takes 30 x 30 (900), refuses 41 x 41 (1681) of every format
    r = qa("--json", "--max-pixels", "1.6K", model, *small, *big)
    rows = {Path(x["path"]).name: x for x in map(json.loads, r.stdout.splitlines())}
    assert r.returncode == 1 and len(rows) == 10, r.stderr
    for p in small:
        assert rows[p.name]["score"] is not None, rows[p.name]
    for p in big:
        assert "image of 41x41 = 1681 pixels, more than --max-pixels (1600)" in rows[p.name]["error"], rows[p.name]
    one_line(qa("--max-pixels", "0", model, small[0]), "--max-pixels expects")
    assert "--max-pixels N" in qa("--help").stdout and "a server's default is 40M" in qa("--help").stdout
    # the PNG: 13000 x 13000 zeros, 169 Mpixels. Refused from its header: no time, no memory
    bomb = zeros_png(d / "bomb.png", 13000, 13000)
    t0 = time.time()
    r = qa("--json", "--max-pixels", "40M", model, bomb)
    took = time.time() - t0
    assert "13000x13000 = 169000000 pixels, more than --max-pixels (40000000)" in json.loads(r.stdout)["error"]
    assert took < 3, took
    # the server: 40 M by default, and a budget per request
    with Srv(model, "--max-request-pixels", "5000") as s:
        t0 = time.time()
        st, out = s.request("POST", "/score", bomb.read_bytes())
        assert st == 400 and b"more than --max-pixels (40000000)" in out and time.time() - t0 < 3, (st, out)
        js = {"Content-Type": "application/json"}
        imgs = [base64.b64encode(small[0].read_bytes()).decode()] * 5 + [base64.b64encode(small[1].read_bytes()).decode()]
        st, out = s.request("POST", "/score", json.dumps({"images": imgs}).encode(), js)
        res = json.loads(out)["results"]
        assert st == 200 and [x["error"] is None for x in res] == [True] * 5 + [False], res
        assert "more than what is left of the request's --max-request-pixels (500)" in res[5]["error"], res[5]
        st, out = s.request("POST", "/score", json.dumps({"images": imgs[:2]}).encode(), js)   # a new budget
        assert st == 200 and all(x["error"] is None for x in json.loads(out)["results"])
    r = run([BIN, "--stdio", "--max-pixels", "1000", model], timeout=60,
            input=json.dumps({"id": 1, "path": str(big[0])}) + "\n" + json.dumps({"id": 2, "path": str(small[0])}) + "\n")
    ans = {x["id"]: x for x in map(json.loads, r.stdout.splitlines())}
    assert "more than --max-pixels (1000)" in ans[1]["error"] and ans[2]["score"] is not None, r.stdout
    report(f"harden3 5: --max-pixels from the header for PNG, JPEG, BMP, PPM, PGM; the issue's 13000x13000 PNG "
           f"refused in {took:.2f} s; server default 40M and --max-request-pixels")


# ---- 11: what was accepted silently -----------------------------------------------------------

def test_11_silently_accepted(model, photo, tiny_ref, workdir):
    import shutil
    import sentencepiece as spm
    from PIL import Image
    gray = tiny_ref / "inputs" / "gray.jpg"
    # --per-frame on images: a warning
    r = qa("-q", "--per-frame", model, photo)
    assert r.returncode == 0 and "warning: --per-frame scores the frames of videos; 1 image among the inputs is " \
                                 "scored once" in r.stderr, r.stderr
    # an unknown {placeholder} in --prompt: refused (a typo would change every score)
    one_line(qa("--prompt", "USER: rate the {taks} of this {input}\n<|image|>\nASSISTANT:", model, photo),
             "unknown placeholder {taks}", "{task} and {input}")
    assert qa("-q", "--prompt", "USER: {\"json\": 1} rate the {task}\n<|image|>\nASSISTANT:", model, photo).returncode == 0
    # a level word of several pieces: which piece is scored, said once (sentencepiece's pieces)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_ref / "checkpoint" / "tokenizer.model"))
    word = "qualityish"
    pieces = sp.encode(word, out_type=str)
    assert len(pieces) > 1
    r = qa("--json", "--levels", f"{word}=1,bad=0", model, photo, gray)
    assert r.returncode == 0, r.stderr
    notes = [l for l in r.stderr.splitlines() if "note:" in l]
    assert len(notes) == 1 and f"level word '{word}' is {len(pieces)} pieces ('{pieces[0]}' '{pieces[1]}'" in notes[0] \
        and f"only the first, '{pieces[0]}', is scored" in notes[0], r.stderr
    # --anchors DIR: what was skipped is listed
    anc = workdir / "h3_11_anchors"
    anc.mkdir()
    for k in range(5):
        Image.new("RGB", (20 + k, 20), (40 * k, 90, 200 - 30 * k)).save(anc / f"anchor_{k}.png")
    (anc / "README.txt").write_text("the anchors\n")
    (anc / "broken.jpg").write_bytes(b"not a jpeg at all")
    r = qa("--preset", "compare2score", "--anchors", anc, "--json", model, photo)
    assert r.returncode == 0, r.stderr
    w = [l for l in r.stderr.splitlines() if "--anchors" in l]
    assert len(w) == 1 and "2 files skipped" in w[0] and "broken.jpg (" in w[0] and "README.txt (not an image)" in w[0], r.stderr
    # conflicting --eval labels for one path: refused, naming it; the same label twice is fine
    lab = workdir / "h3_11_labels.csv"
    lab.write_text(f"path,mos\n{photo},3.5\n{gray},2\n{photo},4.25\n")
    one_line(qa("--eval", lab, model, photo, gray), f"{photo} has two different labels, 3.5 and 4.25")
    lab.write_text(f"path,mos\n{photo},3.5\n{gray},2\n{photo},3.5\n")
    assert qa("-q", "--eval", lab, model, photo, gray).returncode == 0
    # --compare: why SRCC is +-1 (2 inputs) or nan (constant scores)
    r = qa("--compare", model, model, "-q", photo, gray)
    assert r.returncode == 0 and "SRCC 1.0000, PLCC 1.0000 (of 2 inputs: always +1 or -1)" in r.stdout, r.stdout
    same = workdir / "h3_11_same"
    same.mkdir()
    for k in range(3):
        shutil.copy(photo, same / f"c{k}.jpg")
    r = qa("--compare", model, model, "-q", same)
    assert r.returncode == 0 and "(nan: every score of A and of B is the same)" in r.stdout, r.stdout
    report(f"harden3 11: --per-frame on images warns; {{taks}} refused; a {len(pieces)}-piece level word noted once; --anchors lists "
           "2 skipped files; conflicting --eval labels refused; --compare explains +-1 and nan (NaN temperature: test_06)")


@need_ffmpeg
def test_05_max_pixels_videos(model, workdir):
    clip = make_video(workdir / "h3_05_clip.mp4", rate="5", seconds=2.0, size="64x48")
    r = qa("--json", "--max-pixels", "3000", model, clip)
    assert r.returncode == 1 and "frames of 64x48 = 3072 pixels, more than --max-pixels (3000)" in \
        json.loads(r.stdout)["error"], r.stdout + r.stderr
    assert qa("-q", "--max-pixels", "3072", model, clip).returncode == 0
