"""qalign.py - Q-Align / OneAlign scores from Python through the qalign program; standard
library only.

    from qalign import Scorer, HTTPScorer

    with Scorer("one-align-q8_0.qalign", threads=8) as q:       # runs `qalign --stdio MODEL`
        rows = q.score(["a.jpg", "b.png"])
    print(rows[0]["score"], rows[0]["p_excellent"])

    with HTTPScorer("http://127.0.0.1:8080", api_key=None) as q: # a `qalign --listen` server
        rows = q.score([open("a.jpg", "rb").read(), pil_image, numpy_array])

    with Scorer("q-instruct-q8_0.qalign") as q:                   # answers in words (qalign --ask)
        rows = q.ask(["a.jpg"], "Describe the quality of this image.", max_tokens=128)
    print(rows[0]["answer"], rows[0]["tokens"])

An input is a path (str or os.PathLike), bytes (an image file's contents: JPEG, PNG, BMP,
PPM/PGM), a PIL.Image or an HxWx3 uint8 array (both sent as binary PPM, so no pixel
changes on the way; a PIL image is converted to RGB first). numpy and PIL are never
imported here: objects of theirs are recognised by what they have.

Each result is the dict `qalign --json` prints for that input: path, task, kind, frames,
score, std, scale, p_<word> and logit_<word> for each level word, error. `path` is the path
given (None for the other kinds). A failure raises QAlignError with the server's message,
unless score(..., raise_errors=False): then the failed input's dict has its "error".

ask(images, question, max_tokens=, temperature=, top_p=, top_k=, seed=) answers the question
about each image (greedy unless temperature > 0); each result is the `qalign --ask --json` row:
path, kind, frames, question, answer, tokens, finish, error, model, prompt, decoding, ...

Scorer starts the program once (the model is mapped once) and keeps it running until
close() or the end of the `with`; images are streamed to it, up to `window` at a time, and
scored in batches. HTTPScorer sends up to `chunk` images per request as JSON (base64) and
keeps its connection open.
"""
import base64
import collections
import http.client
import json
import os
import shutil
import subprocess
import threading
import urllib.parse

__all__ = ["Scorer", "HTTPScorer", "QAlignError"]

_DECODING = ("max_tokens", "temperature", "top_p", "top_k", "seed")


def _decoding(question, decoding):
    """The request fields of a question and its decoding options (None: the default)."""
    unknown = sorted(set(decoding) - set(_DECODING))
    if unknown:
        raise TypeError(f"unknown decoding option(s) {', '.join(unknown)} (expected {', '.join(_DECODING)})")
    if not isinstance(question, str):
        raise TypeError("the question must be a str")
    return {"question": question, **{k: v for k, v in decoding.items() if v is not None}}


class QAlignError(Exception):
    """qalign could not score an input, or the server refused a request. `status` is the
    HTTP status (HTTPScorer) or None."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


def _ppm(width, height, rgb):
    return b"P6\n%d %d\n255\n" % (width, height) + rgb


def _image_bytes(x):
    """(encoded image bytes, path or None) of one input."""
    if isinstance(x, (str, os.PathLike)):
        path = os.fspath(x)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        with open(path, "rb") as f:
            return f.read(), path
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x), None
    if type(x).__module__.startswith("PIL.") and hasattr(x, "convert"):   # a PIL.Image
        im = x if x.mode == "RGB" else x.convert("RGB")
        return _ppm(im.width, im.height, im.tobytes()), None
    if hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "tobytes"):   # a numpy array
        if len(x.shape) != 3 or x.shape[2] != 3 or str(x.dtype) != "uint8":
            raise TypeError(f"an image array must be HxWx3 uint8, not {tuple(x.shape)} {x.dtype}")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"an image array of shape {tuple(x.shape)} has no pixels: height x width is "
                             f"{x.shape[0]} x {x.shape[1]}, at least 1 x 1 is needed")
        return _ppm(int(x.shape[1]), int(x.shape[0]), x.tobytes(order="C")), None
    raise TypeError(f"cannot score a {type(x).__name__}: give a path, bytes, a PIL.Image or an HxWx3 uint8 array")


def _check(rows, labels, raise_errors):
    if raise_errors:
        for row, label in zip(rows, labels):
            if row.get("error"):
                raise QAlignError(f"{label}: {row['error']}")
    return rows


def _label(i, x):
    return os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"input {i}"


class Scorer:
    """Scores through `qalign --stdio MODEL`, one process for the Scorer's life.

    timeout: seconds the program may take to give the next answer while requests are in
    flight (and to take a request), default 1800; past it the program is killed and the call
    raises QAlignError (the Scorer is closed then). None: wait for ever."""

    def __init__(self, model, binary=None, threads=None, task=None, scale=None, batch=None, args=(), window=16,
                 timeout=1800):
        if binary is None:
            here = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "qalign")
            binary = os.environ.get("QALIGN_BIN") or shutil.which("qalign") or here
        cmd = [os.fspath(binary), "--stdio"]
        if threads:
            cmd += ["--threads", str(threads)]
        if task:
            cmd += ["--task", task]
        if scale:
            cmd += ["--scale", scale]
        if batch:
            cmd += ["--batch", str(batch)]
        cmd += [str(a) for a in args] + ["--", os.fspath(model)]
        self.window = max(1, int(window))
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
        self.timeout = timeout
        self._next = 0
        self._stderr = collections.deque(maxlen=200)
        self._answers, self._eof, self._cv = collections.deque(), False, threading.Condition()
        self._p = None
        try:
            self._p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as e:
            raise QAlignError(f"cannot start {cmd[0]}: {e}") from None
        self._drain = threading.Thread(target=self._read_stderr, args=(self._p,), daemon=True)
        self._drain.start()
        self._reader = threading.Thread(target=self._read_stdout, args=(self._p,), daemon=True)
        self._reader.start()

    def _read_stderr(self, p):
        for line in p.stderr:
            self._stderr.append(line.decode("utf-8", "replace").rstrip("\n"))

    def _read_stdout(self, p):   # answers are read by a thread, so that waiting for one can time out
        try:
            for line in p.stdout:
                with self._cv:
                    self._answers.append(line)
                    self._cv.notify()
        except (OSError, ValueError):
            pass
        with self._cv:
            self._eof = True
            self._cv.notify()

    def _stuck(self, doing):
        """The program took longer than timeout: kill it, close this Scorer, the exception."""
        p, self._p = self._p, None
        if p is not None:
            p.kill()
            p.wait()
            self._reader.join(5)
            self._drain.join(5)
            for f in (p.stdin, p.stdout, p.stderr):
                try:
                    f.close()
                except OSError:
                    pass
        return QAlignError(f"qalign --stdio {doing} within {self.timeout:g} s (Scorer(timeout=...)): it was killed "
                           f"and this Scorer is closed")

    def _send(self, data):
        fired = threading.Event()
        p = self._p

        def kill():
            fired.set()
            p.kill()
        timer = threading.Timer(self.timeout, kill) if self.timeout is not None else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            p.stdin.write(data)
            p.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            if fired.is_set():
                raise self._stuck("did not take a request") from None
            raise self._died() from None
        finally:
            if timer:
                timer.cancel()
        if fired.is_set():
            raise self._stuck("did not take a request") from None

    def _answer(self):
        """The next answer line, or b"" when the program ended."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._answers or self._eof, timeout=self.timeout):
                raise self._stuck("gave no answer")
            return self._answers.popleft() if self._answers else b""

    def _died(self):
        try:
            self._p.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self._p.kill()
            self._p.wait()
        self._drain.join(5)
        tail = " / ".join(l for l in self._stderr if l) or "no message"
        return QAlignError(f"qalign --stdio ended (status {self._p.returncode}): {tail}")

    def score(self, images, task=None, scale=None, raise_errors=True):
        """One result dict per input, in order."""
        return self._run(images, {}, task, scale, raise_errors)

    def ask(self, images, question, raise_errors=True, **decoding):
        """The answer to question about each image: one `qalign --ask --json` row per input, in
        order. decoding: max_tokens (default 256), temperature (0: greedy), top_p, top_k, seed."""
        return self._run(images, _decoding(question, decoding), None, None, raise_errors)

    def _run(self, images, fields, task, scale, raise_errors):
        if self._p is None:
            raise QAlignError("this Scorer is closed")
        images = list(images)
        rows, pending, sent = [None] * len(images), {}, 0
        while sent < len(images) or pending:
            while sent < len(images) and len(pending) < self.window:
                x = images[sent]
                req = {"id": self._next}
                if isinstance(x, (str, os.PathLike)):
                    # absolute: the program resolves paths in the directory it started in, the
                    # caller's may have changed since (os.chdir)
                    req["path"] = os.path.abspath(os.fsdecode(os.fspath(x)))
                else:
                    req["image"] = base64.b64encode(_image_bytes(x)[0]).decode("ascii")
                if task:
                    req["task"] = task
                if scale:
                    req["scale"] = scale
                req.update(fields)
                self._send(json.dumps(req).encode("utf-8") + b"\n")
                pending[self._next] = sent
                self._next += 1
                sent += 1
            line = self._answer()
            if not line:
                raise self._died()
            row = json.loads(line)
            rid = row.pop("id", None)
            if rid not in pending:
                raise QAlignError(row.get("error") or f"an answer to no request: {line[:200]!r}")
            i = pending.pop(rid)
            if isinstance(images[i], (str, os.PathLike)) and "path" in row:
                row["path"] = os.fsdecode(os.fspath(images[i]))   # the caller's string, as given
            rows[i] = row
        return _check(rows, [_label(i, x) for i, x in enumerate(images)], raise_errors)

    def close(self):
        """End the program (it answers what it has first)."""
        if getattr(self, "_p", None) is None:
            return
        p, self._p = self._p, None
        try:
            p.stdin.close()
        except OSError:
            pass
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        self._reader.join(5)
        p.stdout.close()
        self._drain.join(5)
        p.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class HTTPScorer:
    """Scores through a `qalign --listen` server (or several behind a load balancer)."""

    def __init__(self, url, api_key=None, timeout=600, task=None, scale=None, chunk=16):
        u = urllib.parse.urlsplit(url if "//" in url else "http://" + url)
        if u.scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {url}")
        self._https = u.scheme == "https"
        self._host, self._port = u.hostname, u.port
        self._prefix = u.path.rstrip("/")
        self.api_key, self.timeout, self.task, self.scale = api_key, timeout, task, scale
        self.chunk = max(1, int(chunk))
        self._conn = None

    def _connection(self):
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.timeout)
        return self._conn

    def _request(self, method, path, body=None, content_type=None):
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in (0, 1):   # a kept-alive connection the server has closed: once more on a new one
            conn = self._connection()
            try:
                conn.request(method, self._prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self.close()
                if attempt:
                    raise QAlignError(f"{method} {path}: connection lost: {e}") from None
                continue
            except OSError as e:
                self.close()
                raise QAlignError(f"{method} {path}: {e}") from None
            if resp.will_close:
                self.close()
            if resp.status != 200:
                try:
                    msg = json.loads(data)["error"]
                except (ValueError, KeyError, TypeError):
                    msg = data.decode("utf-8", "replace").strip() or resp.reason
                raise QAlignError(f"HTTP {resp.status}: {msg}", status=resp.status)
            return data

    def score(self, images, task=None, scale=None, raise_errors=True):
        """One result dict per input, in order."""
        images = list(images)
        task, scale = task or self.task, scale or self.scale
        rows = []
        for start in range(0, len(images), self.chunk):
            part = [_image_bytes(x) for x in images[start:start + self.chunk]]
            req = {"images": [base64.b64encode(data).decode("ascii") for data, _ in part]}
            if any(name is not None for _, name in part):
                req["names"] = [name for _, name in part]
            if task:
                req["task"] = task
            if scale:
                req["scale"] = scale
            data = self._request("POST", "/score", json.dumps(req).encode("utf-8"), "application/json")
            rows += json.loads(data)["results"]
        return _check(rows, [_label(i, x) for i, x in enumerate(images)], raise_errors)

    def ask(self, images, question, raise_errors=True, **decoding):
        """The answer to question about each image (POST /ask): one row per input, in order.
        decoding: max_tokens (default 256), temperature (0: greedy), top_p, top_k, seed."""
        images = list(images)
        fields = _decoding(question, decoding)
        rows = []
        for start in range(0, len(images), self.chunk):
            part = [_image_bytes(x) for x in images[start:start + self.chunk]]
            req = {"images": [base64.b64encode(data).decode("ascii") for data, _ in part], **fields}
            if any(name is not None for _, name in part):
                req["names"] = [name for _, name in part]
            data = self._request("POST", "/ask", json.dumps(req).encode("utf-8"), "application/json")
            rows += json.loads(data)["results"]
        return _check(rows, [_label(i, x) for i, x in enumerate(images)], raise_errors)

    def health(self):
        return json.loads(self._request("GET", "/health"))

    def metrics(self):
        return self._request("GET", "/metrics").decode("utf-8")

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
