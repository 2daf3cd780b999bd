"""The server: `qalign --listen` (HTTP/1.1) and `qalign --stdio` (JSON lines) on the tiny
reference model exported as f32, everything on loopback, every answer checked against what
`./qalign --json` prints for the same file (same fields, same digits):

  * a storm: 16 clients x 10 requests on keep-alive connections, good and bad images mixed
    (raw bodies, JSON lists with names, a video as frames, three tasks, both scales, bad JSON,
    unknown parameters): every good answer is the CLI's row, every bad one a 4xx JSON error,
    each connection then answers /health (nothing answered twice), /metrics counts every
    request once, and requests were batched together; the same storm against the ASan/UBSan
    build with LeakSanitizer, then SIGTERM: exit 0 and no report;
  * a slow client (one byte a second) gets 408 while others are answered at once; a body over
    --max-body gets 413 from its Content-Length (with and without Expect: 100-continue);
    a flood beyond --max-queue gets 503 without the server's memory growing with the bodies;
  * SIGTERM under load: the requests in flight are answered, the server's count of answers
    equals what the clients received, exit status 0;
  * the protocol: keep-alive, HTTP/1.0, pipelining, 400/401/404/405/411/431/505, --api-key
    (and the warning for a non-loopback address without it, in a private network namespace),
    no file read by path over HTTP, --batch-wait bounds a lone request's wait;
  * --stdio: paths, base64 images, frames, ids of any JSON type, bad lines, EOF;
  * python/qalign.py: Scorer and HTTPScorer with paths, bytes, PIL images and arrays, errors
    raised with the server's message;
  * two servers behind Debian's nginx (the README's upstream block) on loopback: requests
    spread over both, every answer right.
About a minute on 2 cores.
"""
import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import PYTHON, ROOT, RUNNER, foreign, report, run

Image = pytest.importorskip("PIL.Image")

ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
sys.path.insert(0, str(ROOT / "python"))


def need_tool(path, what, package):
    """A tool the tests need: missing is a skip, or a failure under CI (where .ci/run installs it)."""
    if path:
        return path
    msg = f"{what} not installed (Debian: apt-get install {package})"
    if os.environ.get("CI") == "true":
        pytest.fail(msg + "; .ci/run installs it")
    pytest.skip(msg)


# ---------------------------------------------------------------------------------------
# fixtures: the model, images good and bad, and what the CLI prints for each

@pytest.fixture(scope="module")
def model(tiny_ref, workdir):
    p = workdir / "serve_tiny_f32.qalign"
    r = run([PYTHON, ROOT / "export.py", "-q", tiny_ref / "checkpoint", p, "--dtype", "f32"])
    assert r.returncode == 0, r.stderr
    return p


def pattern(w, h, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = np.stack([np.sin(xx / (3 + seed)), np.cos(yy / (2 + seed)), np.sin((xx + yy) / 5)], -1) * 90 + 120
    return (a + rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)


class Files:
    pass


@pytest.fixture(scope="module")
def files(tiny_ref, workdir):
    d = workdir / "serve_images"
    d.mkdir()
    f = Files()
    made = [("wide.png", 90, 40, "PNG"), ("square.jpg", 64, 64, "JPEG"), ("tall.bmp", 30, 70, "BMP"),
            ("odd.ppm", 37, 23, "PPM")]
    f.good = []
    for i, (name, w, h, fmt) in enumerate(made):
        Image.fromarray(pattern(w, h, i + 1)).save(d / name, fmt)
        f.good.append(str(d / name))
    f.good += [str(tiny_ref / "inputs" / n) for n in ("photo.jpg", "gray.jpg", "progressive.jpg", "alpha.png")]
    f.frames = [str(tiny_ref / "inputs" / f"video_frame_00{i}.png") for i in range(3)]
    jpg = (d / "square.jpg").read_bytes()
    (d / "corrupt.jpg").write_bytes(jpg[:300] + bytes(range(256)) * 4)  # a JPEG head, then garbage
    (d / "truncated.png").write_bytes((d / "wide.png").read_bytes()[:120])
    (d / "notes.txt").write_bytes(b"not an image at all\n")
    (d / "anim.gif").write_bytes(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    (d / "empty.bin").write_bytes(b"")
    f.decodable_bad = [str(d / "corrupt.jpg"), str(d / "truncated.png")]  # sniffed, then fail to decode
    f.bad = f.decodable_bad + [str(d / n) for n in ("notes.txt", "anim.gif", "empty.bin")]
    f.dir = d
    return f


def jsonl(text):
    return [json.loads(l) for l in text.splitlines() if l.strip()]


TASKS = [("quality", "1-5"), ("aesthetics", "0-1"), ("aesthetic", "1-5")]


def cli_rows(binary, model, files, env=ENV):
    """(task, scale) -> path -> the row `binary --json` prints; "video" -> the frames' row.
    (Builds differ in their kernels, so a server is compared with the CLI of its own build.)"""
    exp = {}
    for task, scale in TASKS:
        r = run([binary, "--json", "-t", task, "--scale", scale, model, *files.good, *files.decodable_bad], env=env)
        assert r.returncode == 1, r.stderr  # the two bad files fail, the others are scored
        rows = jsonl(r.stdout)
        exp[task, scale] = {row["path"]: row for row in rows}
        assert sum(row["error"] is None for row in rows) == len(files.good)
    r = run([binary, "--json", "--video", model, *files.frames], env=env)
    assert r.returncode == 0, r.stderr
    exp["video"] = json.loads(r.stdout)
    return exp


@pytest.fixture(scope="module")
def expected(qalign_bin, model, files):
    return cli_rows(qalign_bin, model, files)


# ---------------------------------------------------------------------------------------
# a server under test and a few ways of talking to it

class Server:
    """`qalign --listen 127.0.0.1:0 ARGS MODEL`; the port comes from its first line."""

    def __init__(self, binary, model, *args, env=None, listen="127.0.0.1:0", prefix=()):
        self.lines = []
        runner = RUNNER if prefix and foreign(binary) else []   # a cross build behind unshare: the emulator too
        self.p = subprocess.Popen([*prefix, *runner, str(binary), "--listen", listen, *map(str, args), str(model)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env or ENV)
        ready = threading.Event()

        def read():
            for line in self.p.stderr:
                self.lines.append(line.rstrip("\n"))
                if "listening on" in line:
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        ready.wait(60)
        m = next((re.search(r"listening on http://([\d.]+):(\d+)", l) for l in self.lines if "listening on" in l), None)
        if not m:
            self.p.kill()
            self.reader.join(5)
            raise AssertionError("the server did not start:\n" + "\n".join(self.lines))
        self.port = int(m.group(2))
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.p.poll() is None:
            self.p.send_signal(sig)
        rc = self.p.wait(timeout)
        self.reader.join(10)
        return rc, "\n".join(self.lines)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def rss_peak_kb(self):
        text = open(f"/proc/{self.p.pid}/status").read()
        return int(re.search(r"VmHWM:\s+(\d+)", text).group(1))


def request(port, method, path, body=None, headers=None, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def complete_responses(out):
    """How many whole responses (head + Content-Length bytes) out holds."""
    n, pos = 0, 0
    while True:
        end = out.find(b"\r\n\r\n", pos)
        if end < 0:
            return n
        m = re.search(rb"\r\nContent-Length: (\d+)\r\n", out[pos:end + 2])
        body_end = end + 4 + (int(m.group(1)) if m else 0)
        if body_end > len(out):
            return n
        n, pos = n + 1, body_end


def raw_exchange(port, data, wait=10.0, responses=1):
    """Send bytes on a new connection; what the server sends until it closes or `responses`
    whole responses have come."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    try:
        try:
            s.sendall(data)
        except OSError:
            pass   # answered and closed before all was sent (e.g. a head over the limit)
        out = b""
        while complete_responses(out) < responses:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def status_of(response_bytes):
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", response_bytes)
    return int(m.group(1)) if m else None


def metrics(port, headers=None):
    st, _, body = request(port, "GET", "/metrics", headers=headers)
    assert st == 200
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def quote(s):
    from urllib.parse import quote as q
    return q(s, safe="")


def b64(path):
    return base64.b64encode(open(path, "rb").read()).decode()


# ---------------------------------------------------------------------------------------
# the storm

def storm_plan(files, n_clients, n_requests):
    """Per client, the requests to send: (description, method, target, body, headers, check)."""
    plans = []
    for c in range(n_clients):
        plan = []
        for k in range(n_requests):
            r = c * n_requests + k
            good = files.good[r % len(files.good)]
            bad = files.bad[r % len(files.bad)]
            kind = r % 10
            if kind in (0, 7):
                plan.append(("raw", "POST", f"/score?name={quote(good)}", open(good, "rb").read(), {}, ("row", "quality", "1-5", good)))
            elif kind == 1:
                plan.append(("raw aesthetics 0-1", "POST", f"/score?task=aesthetics&scale=0-1&name={quote(good)}",
                             open(good, "rb").read(), {}, ("row", "aesthetics", "0-1", good)))
            elif kind == 4:
                plan.append(("raw aesthetic", "POST", f"/score?name={quote(good)}&task=aesthetic", open(good, "rb").read(),
                             {"Content-Type": "image/jpeg"}, ("row", "aesthetic", "1-5", good)))
            elif kind in (2, 9):
                plan.append(("raw bad", "POST", "/score", open(bad, "rb").read(), {}, ("error", 400)))
            elif kind == 3:
                other = files.good[(r + 3) % len(files.good)]
                broken = files.decodable_bad[r % 2]
                body = json.dumps({"images": [b64(good), b64(broken), b64(other)], "names": [good, broken, other],
                                   "task": "aesthetic"}).encode()
                plan.append(("json list", "POST", "/score", body, {"Content-Type": "application/json"},
                             ("rows", "aesthetic", "1-5", [good, broken, other])))
            elif kind == 5:
                plan.append(("bad json", "POST", "/score", b'{"images": ["AAAA", }', {"Content-Type": "application/json"},
                             ("error", 400)))
            elif kind == 6:
                body = json.dumps({"video": [b64(f) for f in files.frames], "name": files.frames[0]}).encode()
                plan.append(("video", "POST", "/score", body, {"Content-Type": "application/json"}, ("video",)))
            else:
                plan.append(("unknown parameter", "POST", "/score?tasks=quality", b"x", {}, ("error", 400)))
        plans.append(plan)
    return plans


def check_answer(check, status, body, expected):
    obj = json.loads(body)
    if check[0] == "error":
        assert status == check[1] and isinstance(obj.get("error"), str) and obj["error"], (status, obj)
        return "bad"
    assert status == 200, (status, obj)
    if check[0] == "row":
        _, task, scale, path = check
        assert obj == expected[task, scale][path], (obj, expected[task, scale][path])
    elif check[0] == "rows":
        _, task, scale, paths = check
        assert obj == {"results": [expected[task, scale][p] for p in paths]}
    else:
        assert obj == expected["video"]
    return "good"


def storm(port, files, expected, n_clients=16, n_requests=10, headers=None):
    """Each client: its requests on one keep-alive connection, then GET /health on it (a
    request answered twice would show there). Returns counts of good and bad answers."""
    plans = storm_plan(files, n_clients, n_requests)
    failures, counts = [], {"good": 0, "bad": 0}
    lock = threading.Lock()

    def client(plan):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            for what, method, target, body, hdrs, check in plan:
                conn.request(method, target, body=body, headers={**hdrs, **(headers or {})})
                r = conn.getresponse()
                data = r.read()
                try:
                    got = check_answer(check, r.status, data, expected)
                except AssertionError as e:
                    with lock:
                        failures.append(f"{what} {target[:60]}: {e}"[:2000])
                    continue
                with lock:
                    counts[got] += 1
            conn.request("GET", "/health")
            r = conn.getresponse()
            h = json.loads(r.read())
            if r.status != 200 or h.get("status") != "ok":
                with lock:
                    failures.append(f"health after the storm: {r.status} {h}")
        except Exception as e:  # noqa: BLE001 - any failure of a client is a test failure
            with lock:
                failures.append(f"client: {type(e).__name__}: {e}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, "\n".join(failures[:10])
    assert counts["good"] + counts["bad"] == n_clients * n_requests
    return counts


def test_storm(qalign_bin, model, files, expected):
    with Server(qalign_bin, model, "--batch", 8, "--batch-wait", 50) as s:
        t0 = time.time()
        counts = storm(s.port, files, expected)
        dt = time.time() - t0
        st, _, body = request(s.port, "GET", "/health")
        assert st == 200 and json.loads(body)["queue"] == 0
        m = metrics(s.port)
        answered = sum(v for k, v in m.items() if k.startswith("qalign_requests_total"))
        # 160 requests, 16 /health, 1 /health: nothing lost, nothing answered twice
        assert answered == 16 * 10 + 16 + 1, {k: v for k, v in m.items() if k.startswith("qalign_requests_total")}
        errors = sum(v for k, v in m.items() if k.startswith("qalign_request_errors_total"))
        assert errors == counts["bad"] and m['qalign_requests_total{code="400"}'] == counts["bad"]
        batches, images = m["qalign_batch_size_count"], m["qalign_batch_size_sum"]
        assert m['qalign_batch_size_bucket{le="1"}'] < batches, "no two requests ever shared a decoder pass"
        assert m["qalign_videos_scored_total"] == 16 and m["qalign_frames_scored_total"] == 48
        rc, log = s.stop()
        assert rc == 0, log
    report(f"serve: storm of 16 clients x 10 requests ({counts['good']} good, {counts['bad']} bad) in {dt:.1f} s: "
           f"every answer = the CLI's --json row; {images:.0f} images in {batches:.0f} decoder passes "
           f"({images / batches:.2f} per pass)")


def test_storm_under_sanitizers(qalign_san, model, files):
    env = dict(ENV, ASAN_OPTIONS="detect_leaks=1:exitcode=86", UBSAN_OPTIONS="halt_on_error=1:exitcode=87")
    expected = cli_rows(qalign_san, model, files, env)
    with Server(qalign_san, model, "--batch", 4, "--batch-wait", 20, "--timeout", 3, env=env) as s:
        counts = storm(s.port, files, expected, n_clients=8, n_requests=10)
        # a few protocol errors too: each frees what it allocated
        assert status_of(raw_exchange(s.port, b"GET / HTTP/9.9\r\n\r\n")) == 505
        assert status_of(raw_exchange(s.port, b"POST /score HTTP/1.1\r\nHost: a\r\nContent-Length: 99\r\n\r\nshort", wait=15)) in (408, None)
        rc, log = s.stop()
    assert "Sanitizer" not in log and "runtime error" not in log, log[-4000:]
    assert rc == 0, log[-4000:]
    # --stdio under the sanitizers as well
    lines = [json.dumps({"id": i, "path": f}) for i, f in enumerate(files.good[:3] + files.bad[:2])]
    lines += ["not json", json.dumps({"id": "v", "frames": files.frames}), json.dumps({"id": "b", "image": b64(files.good[0])})]
    r = run([qalign_san, "--stdio", model], input="\n".join(lines) + "\n", env=env, timeout=300)
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-4000:]
    assert r.returncode == 0 and len(jsonl(r.stdout)) == len(lines), r.stdout + r.stderr
    report(f"serve: ASan/UBSan build: storm of 8 x 10 ({counts['good']} good, {counts['bad']} bad) then SIGTERM, "
           f"and --stdio: exit 0, no sanitizer or leak report")


# ---------------------------------------------------------------------------------------
# slow, big, too many

def test_slow_client_gets_408_and_delays_nobody(qalign_bin, model, files, expected):
    with Server(qalign_bin, model, "--timeout", 2) as s:
        outcome = {}

        def slow(key, first, trickle):
            import select
            sock = socket.create_connection(("127.0.0.1", s.port), timeout=30)
            t0 = time.time()
            sock.sendall(first)
            try:
                for b in trickle:  # one byte a second, until the server answers
                    sock.sendall(bytes([b]))
                    if select.select([sock], [], [], 1.0)[0]:
                        break
            except OSError:
                pass
            data = b""
            try:
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            outcome[key] = (status_of(data), time.time() - t0, data)
            sock.close()

        head = threading.Thread(target=slow, args=("head", b"", b"POST /score HTTP/1.1\r\nHost: x\r\n"))
        slow_body = threading.Thread(target=slow, args=(
            "body", b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n", b"0123456789" * 5))
        head.start()
        slow_body.start()
        time.sleep(0.3)
        times = []
        good = files.good[0]
        for _ in range(6):
            t0 = time.time()
            st, _, body = request(s.port, "POST", f"/score?name={quote(good)}", open(good, "rb").read())
            times.append(time.time() - t0)
            assert st == 200 and json.loads(body) == expected["quality", "1-5"][good]
        fast_done = time.time()
        head.join(60)
        slow_body.join(60)
        for key in ("head", "body"):
            st, took, data = outcome[key]
            assert st == 408, (key, data)
            assert b'"error"' in data
            assert 1.5 < took < 10, (key, took)
        assert max(times) < 1.5, times
        rc, log = s.stop()
        assert rc == 0, log
    report(f"serve: slow clients (1 byte/s, head and body) got 408 after {outcome['head'][1]:.1f} and "
           f"{outcome['body'][1]:.1f} s (--timeout 2); 6 other requests meanwhile took at most {max(times):.2f} s")


def test_oversized_body_gets_413_without_being_read(qalign_bin, model):
    with Server(qalign_bin, model, "--max-body", "1M") as s:
        rss0 = s.rss_peak_kb()
        for expect in (b"", b"Expect: 100-continue\r\n"):
            sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            t0 = time.time()
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n" + expect + b"\r\n")
            if not expect:
                try:
                    sock.sendall(b"\xff" * (256 << 10))   # a start of the gigabyte; the rest never comes
                except OSError:
                    pass
            data = sock.recv(65536)
            took = time.time() - t0
            sock.close()
            assert status_of(data) == 413, data
            assert b"--max-body" in data and b"Connection: close" in data
            assert took < 3, took   # at once: not after waiting for (or timing out on) the body
        body = b"\x00" * ((1 << 20) + 1)   # one byte over, sent whole by a normal client
        st, hdrs, data = request(s.port, "POST", "/score", body)
        assert st == 413 and "larger than --max-body" in json.loads(data)["error"]
        st, _, _ = request(s.port, "POST", "/score", b"\x00" * 100)   # still serving
        assert st == 400
        grew = s.rss_peak_kb() - rss0
        assert grew < 64 << 10, f"peak memory grew by {grew} kB"
        rc, log = s.stop()
        assert rc == 0, log
    report(f"serve: 1 GB Content-Length over --max-body 1M: 413 at once, with and without Expect: 100-continue "
           f"(peak memory +{grew} kB)")


def test_flood_beyond_max_queue_gets_503(qalign_bin, model, files):
    with Server(qalign_bin, model, "--max-queue", 2, "--timeout", 20) as s:
        # two requests hold the queue's slots: their bodies are still coming
        holders = []
        for _ in range(2):
            h = socket.create_connection(("127.0.0.1", s.port), timeout=30)
            h.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
            holders.append(h)
        deadline = time.time() + 10
        while json.loads(request(s.port, "GET", "/health")[2])["queue"] < 2 and time.time() < deadline:
            time.sleep(0.05)
        rss0 = s.rss_peak_kb()
        body = b"\x89PNG" + b"\x00" * (2 << 20)   # 2 MB each: 40 of them would be 80 MB if read
        statuses, lock = [], threading.Lock()

        def flood():
            try:
                st, hdrs, data = request(s.port, "POST", "/score", body, timeout=30)
                with lock:
                    statuses.append((st, hdrs.get("retry-after"), json.loads(data).get("error", "")))
            except (ConnectionResetError, BrokenPipeError) as e:
                with lock:
                    statuses.append((type(e).__name__, None, ""))

        threads = [threading.Thread(target=flood) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        grew = s.rss_peak_kb() - rss0
        n503 = sum(st == 503 for st, _, _ in statuses)
        assert all(st == 503 and ra == "1" and "--max-queue" in err for st, ra, err in statuses if st == 503)
        assert n503 >= 36, statuses   # a client may see its connection reset before it reads the 503
        assert all(st in (503, "ConnectionResetError", "BrokenPipeError") for st, _, _ in statuses), statuses
        assert grew < 32 << 10, f"peak memory grew by {grew} kB during the flood"
        for h in holders:
            h.close()
        deadline = time.time() + 10
        while json.loads(request(s.port, "GET", "/health")[2])["queue"] > 0 and time.time() < deadline:
            time.sleep(0.05)
        good = files.good[1]
        st, _, _ = request(s.port, "POST", "/score", open(good, "rb").read())
        assert st == 200   # the slots are free again
        assert metrics(s.port)['qalign_requests_total{code="503"}'] == n503
        rc, log = s.stop()
        assert rc == 0, log
    report(f"serve: flood of 40 x 2 MB beyond --max-queue 2: {n503} x 503 (Retry-After: 1), peak memory +{grew} kB")


# ---------------------------------------------------------------------------------------
# SIGTERM

def test_sigterm_under_load(qalign_bin, model, files, expected):
    s = Server(qalign_bin, model, "--batch", 4, "--batch-wait", 100)
    outcomes, lock, stop = [], threading.Lock(), threading.Event()
    allowed = (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)

    def client(c):
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
        k = 0
        while True:
            good = files.good[(c + k) % len(files.good)]
            k += 1
            try:
                conn.request("POST", f"/score?name={quote(good)}", body=open(good, "rb").read())
                r = conn.getresponse()
                data = r.read()
            except allowed as e:
                with lock:
                    outcomes.append(("refused", type(e).__name__))
                if stop.is_set():
                    break
                conn.close()
                continue
            except Exception as e:  # noqa: BLE001 - a garbled or partial answer
                with lock:
                    outcomes.append(("broken", f"{type(e).__name__}: {e}"))
                break
            ok = r.status == 200 and json.loads(data) == expected["quality", "1-5"][good]
            with lock:
                outcomes.append(("answered", ok))
            if r.will_close:
                conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    with s:
        for t in threads:
            t.start()
        time.sleep(1.5)
        stop.set()
        rc, log = s.stop(signal.SIGTERM)
        for t in threads:
            t.join(60)
    m = re.search(r"stopped: (\d+) requests received, (\d+) answered", log)
    inflight = re.search(r"stopping: answering (\d+) requests in flight", log)
    answered = [ok for kind, ok in outcomes if kind == "answered"]
    assert rc == 0, log
    assert m and inflight, log
    assert not [o for o in outcomes if o[0] == "broken"], outcomes
    assert all(answered), "an answer differs from the CLI's"
    assert int(m.group(1)) == int(m.group(2)) == len(answered), (m.groups(), len(answered))
    assert int(inflight.group(1)) >= 1, log   # the signal came while requests were in flight
    report(f"serve: SIGTERM with {inflight.group(1)} requests in flight: all answered, {len(answered)} answers in "
           f"all = the server's count, exit 0")


# ---------------------------------------------------------------------------------------
# the protocol

def test_http_protocol(qalign_bin, model, files, expected):
    good = files.good[4]
    img = open(good, "rb").read()
    want = expected["quality", "1-5"][good]
    with Server(qalign_bin, model, "--api-key", "s3cret", "--max-body", "2M") as s:
        auth = {"Authorization": "Bearer s3cret"}
        # the key: /score and /metrics need it, /health does not
        st, h, body = request(s.port, "POST", "/score", img)
        assert st == 401 and h.get("www-authenticate") == "Bearer" and "API key" in json.loads(body)["error"]
        assert request(s.port, "POST", "/score", img, {"Authorization": "Bearer wrong!"})[0] == 401
        assert request(s.port, "GET", "/metrics")[0] == 401
        assert request(s.port, "GET", "/health")[0] == 200
        st, _, body = request(s.port, "POST", f"/score?name={quote(good)}", img, auth)
        assert st == 200 and json.loads(body) == want
        # keep-alive: several requests on one connection
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        for _ in range(3):
            conn.request("POST", f"/score?name={quote(good)}", body=img, headers=auth)
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read()) == want and r.getheader("Connection") == "keep-alive"
        sock = conn.sock
        conn.request("GET", "/health")
        r = conn.getresponse()
        r.read()
        assert conn.sock is sock   # the same connection all along
        conn.close()
        key = b"Authorization: Bearer s3cret\r\n"
        # HTTP/1.0 closes unless asked; pipelined requests are answered in order
        out = raw_exchange(s.port, b"GET /health HTTP/1.0\r\n\r\n")
        assert status_of(out) == 200 and b"Connection: close" in out
        two = (b"POST /score?name=" + quote(good).encode() + b" HTTP/1.1\r\nHost: a\r\n" + key +
               b"Content-Length: %d\r\n\r\n" % len(img) + img + b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        out = raw_exchange(s.port, two, responses=2)
        first, second = out.split(b"HTTP/1.1 ")[1:3]
        assert first.startswith(b"200") and json.loads(first.split(b"\r\n\r\n", 1)[1]) == want
        assert second.startswith(b"200") and b'"status": "ok"' in second
        # errors, each a JSON {"error": ...} with its status
        cases = [
            (b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n", 404),
            (b"GET /score HTTP/1.1\r\nHost: a\r\n\r\n", 405),
            (b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 405),
            (b"POST /score HTTP/1.1\r\nHost: a\r\n" + key + b"\r\n", 411),
            (b"POST /score HTTP/1.1\r\nHost: a\r\n" + key + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411),
            (b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
            (b"GET /health HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            (b"GARBAGE\r\n\r\n", 400),
            (b"GET /health HTTP/1.1\r\n\r\n", 400),                     # HTTP/1.1 needs Host
            (b"GET /health HTTP/1.1\r\nHost: a\r\n Folded: x\r\n\r\n", 400),
            (b"POST /score HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
            (b"POST /score?task=beauty HTTP/1.1\r\nHost: a\r\n" + key + b"Content-Length: 1\r\n\r\nx", 400),
            (b"POST /score?scale=0-10 HTTP/1.1\r\nHost: a\r\n" + key + b"Content-Length: 1\r\n\r\nx", 400),
            (b"POST /score?name=%zz HTTP/1.1\r\nHost: a\r\n" + key + b"Content-Length: 1\r\n\r\nx", 400),
            (b"POST /score HTTP/1.1\r\nHost: a\r\n" + key + b"Expect: something\r\nContent-Length: 1\r\n\r\nx", 417),
        ]
        for req, want_status in cases:
            out = raw_exchange(s.port, req)
            assert status_of(out) == want_status, (req[:80], out[:300])
            assert b'{"error": "' in out, out[:300]
        for body, msg in [(b'{"images": ["%%%%"]}', "base64"), (b'{"images": []}', "empty"), (b"[1, 2]", "object"),
                          (b'{"image": "AAAA", "images": ["AAAA"]}', "one of"), (b'{"images": ["AAAA"], "x": 1}', "unknown key"),
                          (b'{"images": ["AAAA"], "names": ["a", "b"]}', "names"), (b'{"images": ["AAAA"], "task": 5}', "string")]:
            st, _, data = request(s.port, "POST", "/score", body, {"Content-Type": "application/json", **auth})
            assert st == 400 and msg in json.loads(data)["error"], (body, data)
        # no file is ever read by path over HTTP: "path" is not a key there, ?name= is only a label
        st, _, data = request(s.port, "POST", "/score", json.dumps({"path": good}).encode(),
                              {"Content-Type": "application/json", **auth})
        assert st == 400 and "unknown key 'path'" in json.loads(data)["error"]
        st, _, data = request(s.port, "POST", f"/score?name={quote(good)}", b"", auth)
        assert st == 400 and json.loads(data)["error"] == "empty file"
        # a single image in JSON, and base64 with JSON escapes and line breaks
        enc = base64.encodebytes(img).decode().replace("/", "\\/")
        st, _, data = request(s.port, "POST", "/score", ('{"image": "%s", "name": %s}' % (enc.replace("\n", "\\n"), json.dumps(good))).encode(),
                              {"Content-Type": "application/json", **auth})
        assert st == 200 and json.loads(data) == want
        rc, log = s.stop()
        assert rc == 0 and "warning" not in log, log
    report(f"serve: protocol: keep-alive, HTTP/1.0, pipelining, --api-key, {len(cases) + 9} refused requests with "
           f"their status, no file read by path over HTTP")


def test_batch_wait_bounds_a_lone_request(qalign_bin, model, files):
    good = files.good[0]
    img = open(good, "rb").read()
    with Server(qalign_bin, model, "--batch-wait", 600) as s:
        request(s.port, "POST", "/score", img)   # the first: contexts made, pages touched
        t0 = time.time()
        st, _, _ = request(s.port, "POST", "/score", img)
        took = time.time() - t0
        rc, _ = s.stop()
    assert st == 200 and rc == 0
    assert 0.55 < took < 0.6 + 3, took   # waited for company, then scored alone
    report(f"serve: a lone request with --batch-wait 600 answered in {took:.2f} s")


def test_warning_without_api_key_on_other_addresses(qalign_bin, model):
    """0.0.0.0 in a private network namespace (unshare -n: only a loopback that is down), so
    nothing is reachable from anywhere."""
    unshare = shutil.which("unshare")
    if not unshare or run([unshare, "-n", "true"]).returncode != 0:
        pytest.skip("unshare -n (a private network namespace) is not permitted here")
    for key, warned in (((), True), (("--api-key", "k"), False)):
        with Server(qalign_bin, model, *key, listen="0.0.0.0:0", prefix=(unshare, "-n")) as s:
            rc, log = s.stop()
        assert rc == 0 and ("without --api-key" in log) == warned, log
    with Server(qalign_bin, model, listen="127.0.0.1:0") as s:
        rc, log = s.stop()
    assert "warning" not in log
    report("serve: 0.0.0.0 without --api-key warns (in a private network namespace); with a key or on loopback, not")


def test_bad_options(qalign_bin, model):
    for args, msg in [(["--listen", "8080"], "HOST:PORT"), (["--listen", "127.0.0.1:99999"], "port"),
                      (["--max-body", "lots"], "--max-body"), (["--max-queue", "0"], "--max-queue"),
                      (["--batch-wait", "-1"], "--batch-wait"), (["--stdio", "--listen", ":0"], "one of"),
                      (["--stdio", "--levels", "good=1,good=2"], "--levels"), (["--stdio", "--csv", "x.csv"], "INPUTs")]:
        r = run([qalign_bin, *args, model], env=ENV, input="", timeout=30)
        assert r.returncode == 1 and msg in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    with Server(qalign_bin, model) as s:
        r = run([qalign_bin, "--listen", f"127.0.0.1:{s.port}", model], env=ENV, timeout=30)
        assert r.returncode == 1 and "in use" in r.stderr, r.stderr
        s.stop()


# ---------------------------------------------------------------------------------------
# --stdio

def test_stdio(qalign_bin, model, files, expected):
    good = files.good
    reqs = [{"id": i, "path": p} for i, p in enumerate(good)]
    reqs += [{"id": f"b{i}", "image": b64(p), "name": p, "task": "aesthetics", "scale": "0-1"} for i, p in enumerate(good[:3])]
    reqs += [{"id": {"nested": [1, None]}, "frames": files.frames}, {"id": None, "path": good[0], "task": "aesthetic"},
             {"id": 3.5, "path": str(files.dir / "missing.png")}, {"id": "bad", "path": files.decodable_bad[0]},
             {"id": "fifo", "path": "/dev/stdin"}, {"id": "t", "path": good[0], "task": "beauty"}, {"id": "k", "url": "x"}]
    lines = [json.dumps(r) for r in reqs] + ["", "   ", "{not json", "x" * (3 << 20)]
    r = run([qalign_bin, "--stdio", "--max-body", "2M", "--batch", 3, model], input="\n".join(lines), env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = jsonl(r.stdout)
    assert len(rows) == len(reqs) + 2, r.stdout   # blank lines are not requests; the bad JSON and the long line are
    by_id = {}
    for row in rows:
        key = json.dumps(row["id"])
        assert key not in by_id or key == "null", f"two answers for id {key}"
        by_id.setdefault(key, []).append(row)
    strip = lambda row: {k: v for k, v in row.items() if k != "id"}   # noqa: E731
    for i, p in enumerate(good):
        assert strip(by_id[str(i)][0]) == expected["quality", "1-5"][p]
    for i, p in enumerate(good[:3]):
        assert strip(by_id[f'"b{i}"'][0]) == expected["aesthetics", "0-1"][p]
    assert strip(by_id['{"nested": [1, null]}'][0]) == expected["video"]
    nulls = by_id["null"]
    assert [strip(x) for x in nulls if "path" in x] == [expected["aesthetic", "1-5"][good[0]]]
    assert sorted(x["error"].split(" ")[0] for x in nulls if "path" not in x) == ["a", "bad"]   # long line, bad JSON
    assert by_id["3.5"][0]["error"] == "No such file or directory" and by_id["3.5"][0]["kind"] is None   # the CLI's words
    assert strip(by_id['"bad"'][0]) == expected["quality", "1-5"][files.decodable_bad[0]]
    assert by_id['"fifo"'][0]["error"] == "not a regular file" and by_id['"fifo"'][0]["kind"] is None
    assert "task must be" in by_id['"t"'][0]["error"] and "unknown key 'url'" in by_id['"k"'][0]["error"]
    report(f"serve: --stdio: {len(reqs) + 2} requests (paths, base64, frames, bad lines) answered once each, "
           f"rows = the CLI's")


def test_stdio_rows_of_unreadable_inputs_are_the_clis(qalign_bin, model, files, workdir):
    """A missing file, a file that is no image, a directory and a JPEG decoded with a warning:
    the --stdio row is byte for byte the row `qalign --json` prints for the same path (kind null
    and the CLI's words for an input that is no image; "warning" for corrupt JPEG data, the text
    of the CLI's warning line)."""
    d = workdir / "stdio_unreadable"
    d.mkdir(exist_ok=True)
    (d / "notes.txt").write_text("certainly not an image\n")
    jpg = next(p for p in files.good if open(p, "rb").read(2) == b"\xff\xd8")
    data = bytearray(open(jpg, "rb").read())
    at = data.rfind(b"\xff\xda") + 300
    data[at:at + 4] = b"\xff\xd0\xff\xd0"        # restart markers where none belong: corrupt data, decodable
    (d / "warned.jpg").write_bytes(bytes(data))
    paths = [str(d / "missing.png"), str(d / "notes.txt"), str(d / "warned.jpg")]
    for p in paths:
        cli = run([qalign_bin, "--json", model, p], env=ENV)
        srv = run([qalign_bin, "--stdio", model], input=json.dumps({"path": p}) + "\n", env=ENV, timeout=120)
        assert srv.returncode == 0, srv.stderr
        assert srv.stdout.replace('{"id": null, ', "{", 1) == cli.stdout, (p, srv.stdout, cli.stdout)   # but its id
        row = json.loads(cli.stdout)
        if p.endswith("warned.jpg"):
            assert row["error"] is None and f"qalign: warning: {p}: {row['warning']}" in cli.stderr, (row, cli.stderr)
        else:
            assert row["kind"] is None and "warning" not in row and row["error"] in (
                "No such file or directory", "not an image or video qalign can read (unknown format)"), row
    report("serve: --stdio rows of a missing file, a text file and a JPEG decoded with a warning = the CLI's rows")


# ---------------------------------------------------------------------------------------
# python/qalign.py

def test_python_client(qalign_bin, model, files, expected, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    import qalign as client
    path = files.good[7]   # alpha.png: RGBA, so PIL's convert("RGB") matters
    want = expected["quality", "1-5"][path]
    pil = Image.open(path)
    arr = np.asarray(pil.convert("RGB"))
    inputs = [path, open(path, "rb").read(), pil, arr]
    anonymous = dict(want, path=None)
    with Server(qalign_bin, model, "--api-key", "k") as s:
        for scorer in (client.Scorer(model, binary=qalign_bin, threads=2), client.HTTPScorer(s.url, api_key="k")):
            with scorer as q:
                rows = q.score(inputs)
                assert rows == [want, anonymous, anonymous, anonymous], rows
                other = q.score([files.good[2]], task="aesthetics", scale="0-1")
                assert other == [expected["aesthetics", "0-1"][files.good[2]]]
                with pytest.raises(client.QAlignError, match=r"not an image or video qalign can read \(unknown format\)"):
                    q.score([path, b"certainly not an image"])
                with pytest.raises(client.QAlignError, match=r"JPEG: "):
                    q.score([files.decodable_bad[0]])
                rows = q.score([files.decodable_bad[0], path], raise_errors=False)
                assert rows[0]["error"] and rows[1] == want
                with pytest.raises(TypeError, match="HxWx3 uint8"):
                    q.score([arr.astype(np.float32)])
        with client.HTTPScorer(s.url, api_key="wrong") as q:
            with pytest.raises(client.QAlignError, match="HTTP 401: missing or wrong API key") as e:
                q.score([path])
            assert e.value.status == 401
            assert q.health()["status"] == "ok"
        s.stop()
    with pytest.raises(client.QAlignError, match="not_there.qalign"):
        with client.Scorer(files.dir / "not_there.qalign", binary=qalign_bin) as q:
            q.score([path])
    src = (ROOT / "python" / "qalign.py").read_text()
    imports = set(re.findall(r"^(?:import|from) (\w+)", src, re.M))
    assert imports <= {"base64", "collections", "http", "json", "os", "shutil", "subprocess", "threading", "urllib"}, imports
    report("serve: python/qalign.py: Scorer and HTTPScorer give the CLI's row for a path, bytes, a PIL image and an "
           "array; errors raise QAlignError with the server's message; standard library only")


# ---------------------------------------------------------------------------------------
# two servers behind nginx

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_servers_behind_nginx(qalign_bin, model, files, expected, workdir):
    nginx = need_tool(shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None),
                      "nginx", "nginx")
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Several servers behind a load balancer"):]
    conf_http = re.search(r"```nginx\n(.*?)```", section, re.S).group(1)   # the README's upstream + server
    d = workdir / "nginx"
    d.mkdir()
    with Server(qalign_bin, model) as a, Server(qalign_bin, model) as b:
        for attempt in range(3):
            port = free_port()
            block = (conf_http.replace("127.0.0.1:8081", f"127.0.0.1:{a.port}").replace("127.0.0.1:8082", f"127.0.0.1:{b.port}")
                     .replace("listen 127.0.0.1:8080", f"listen 127.0.0.1:{port}"))
            assert f"127.0.0.1:{a.port}" in block and f"127.0.0.1:{b.port}" in block and f":{port}" in block, block
            user = "user root;\n" if os.geteuid() == 0 else ""   # as root the workers would otherwise be nobody
            (d / "nginx.conf").write_text(
                f"daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n{user}"
                "events { worker_connections 256; }\n"
                f"http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n"
                f"  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{block}}}\n")
            ng = subprocess.Popen([nginx, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            deadline = time.time() + 15
            while time.time() < deadline and ng.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            if ng.poll() is None:
                break
            err = ng.stderr.read() + (d / "error.log").read_text()
            assert "in use" in err and attempt < 2, err
        try:
            st, _, body = request(port, "GET", "/health")
            assert st == 200 and json.loads(body)["status"] == "ok", body
            n = 24
            for k in range(n):
                good = files.good[k % len(files.good)]
                if k % 3 == 2:
                    body = json.dumps({"images": [b64(good)], "names": [good], "task": "aesthetics", "scale": "0-1"}).encode()
                    st, _, data = request(port, "POST", "/score", body, {"Content-Type": "application/json"})
                    assert st == 200 and json.loads(data) == {"results": [expected["aesthetics", "0-1"][good]]}
                else:
                    st, _, data = request(port, "POST", f"/score?name={quote(good)}", open(good, "rb").read())
                    assert st == 200 and json.loads(data) == expected["quality", "1-5"][good], data
            st, _, data = request(port, "POST", "/score", b"nonsense")
            assert st == 400 and "not an image" in json.loads(data)["error"]  # the CLI's words (issue 22)
            served = [metrics(x.port).get('qalign_requests_total{code="200"}', 0) for x in (a, b)]
        finally:
            ng.send_signal(signal.SIGQUIT)
            try:
                ng.wait(15)
            except subprocess.TimeoutExpired:
                ng.kill()
                ng.wait()
        assert all(x >= 4 for x in served) and sum(served) >= n + 1, served   # + the /health through nginx
        for x in (a, b):
            rc, log = x.stop()
            assert rc == 0, log
    version = run([nginx, "-v"]).stderr.strip()
    report(f"serve: two servers behind {version} (the README's upstream block): {int(served[0])} + {int(served[1])} "
           f"requests, every answer = the CLI's")
