#!/usr/bin/env python3
"""bench/serve.py - the server (`qalign --listen`) against the batch CLI and one process per
image, on the same images, in the same run (absolute times drift on a shared machine).

    make bench                                   (bench/bench.py, then this)
    python3 bench/serve.py [--model FILE] [--images 16] [--threads 2] [--batch 8] [--write]

--model defaults to the full-size random-weight one-align q8_0 file that bench/bench.py
synthesizes in --cache (made here too if missing). Measured:
  1. the batch CLI: one `qalign --batch B --json` process over N images, and over 1 image:
     images per minute (wall, model loading included) and the marginal seconds per image,
     (wall(N) - wall(1)) / (N - 1); the same marginal at --batch 1 over a few images (what a
     lone request gets: a decoder pass of its own);
  2. one process per image: `qalign MODEL IMAGE` for each of P images, one after another;
  3. the server (`--listen 127.0.0.1:0 --batch B`), after one warm-up request: C clients
     (C = 1, 4, 16) each posting image files as raw bodies on a keep-alive connection, R
     requests in all per C: images per minute, latency p50 and p95 (nearest rank).
Every server answer is compared with the batch CLI's --json row for the same file.
--write puts the table into bench/RESULTS.md as its "## Server" section.
"""
import argparse
import http.client
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import make_images  # noqa: E402  (bench/bench.py: the benchmark's test images)

PY = sys.executable
ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")


def run_cli(model, images, threads, batch):
    t0 = time.perf_counter()
    r = subprocess.run([ROOT / "qalign", "--json", "-q", "--threads", threads, "--batch", batch, model, *images],
                       capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"bench/serve.py: qalign failed: {r.stderr[-2000:]}")
    return wall, {row["path"]: row for row in map(json.loads, r.stdout.splitlines())}


def percentile(xs, p):
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, int(-(-p * len(xs) // 100)) - 1))]


class Server:
    def __init__(self, model, threads, batch, wait_ms):
        self.p = subprocess.Popen([ROOT / "qalign", "--listen", "127.0.0.1:0", "--threads", threads, "--batch", batch,
                                   "--batch-wait", str(wait_ms), "--max-queue", "64", "--timeout", "600", model],
                                  stderr=subprocess.PIPE, text=True, env=ENV)
        line = self.p.stderr.readline()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.p.kill()
            sys.exit(f"bench/serve.py: the server did not start: {line}{self.p.stderr.read()}")
        self.port = int(m.group(1))
        threading.Thread(target=self.p.stderr.read, daemon=True).start()

    def stop(self):
        self.p.terminate()
        return self.p.wait(600)


def load(port, images, n_requests, concurrency, want):
    """n_requests image posts from `concurrency` clients; (wall s, latencies, wrong answers)."""
    lat, wrong, lock = [], [], threading.Lock()
    counter = iter(range(n_requests))
    bodies = {p: Path(p).read_bytes() for p in images}

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
        for k in counter:   # the iterator is shared: each request once
            path = images[k % len(images)]
            t0 = time.perf_counter()
            conn.request("POST", f"/score?name={quote(path, safe='')}", body=bodies[path])
            r = conn.getresponse()
            data = r.read()
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                if r.status != 200 or json.loads(data) != want[path]:
                    wrong.append((path, r.status, data[:200]))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, lat, wrong


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model file (default: the synthetic full-size q8_0 in --cache)")
    ap.add_argument("--cache", default=os.environ.get("QALIGN_BENCH_CACHE", Path.home() / ".cache" / "qalign" / "bench"))
    ap.add_argument("--images", type=int, default=16, help="images for the batch CLI (and the set the clients post)")
    ap.add_argument("--processes", type=int, default=4, help="images scored one process each")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--batch", default="8")
    ap.add_argument("--batch-wait", type=int, default=10, help="the server's --batch-wait (ms)")
    ap.add_argument("--requests", default="8,16,32", help="requests at concurrency 1,4,16")
    ap.add_argument("--write", action="store_true", help="put the table into bench/RESULTS.md")
    a = ap.parse_args()
    if subprocess.run(["make", "-C", ROOT, "-s", "qalign"], capture_output=True).returncode != 0:
        sys.exit("bench/serve.py: make failed")
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    model = Path(a.model) if a.model else cache / "one-align-q8_0.qalign"
    if not a.model and (not model.exists() or subprocess.run([ROOT / "qalign", "--info", model], capture_output=True).returncode):
        print(f"bench/serve.py: synthesizing {model} (once; minutes)", file=sys.stderr)
        if subprocess.run([PY, ROOT / "export.py", "-q", "--synthetic", "one-align", "--dtype", "q8_0", model]).returncode:
            sys.exit("bench/serve.py: export failed")
    imgdir = cache / "images"
    imgdir.mkdir(exist_ok=True)
    images = [str(p) for p in make_images(imgdir, max(a.images, a.processes, 1))][:a.images]
    counts = [int(x) for x in a.requests.split(",")]
    info = subprocess.run([ROOT / "qalign", "--info", model], capture_output=True, text=True).stdout
    weights = re.search(r"weights\s+(\S+)", info).group(1)

    lines = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    out(f"## Server ({time.strftime('%Y-%m-%d')}, bench/serve.py)")
    out()
    out(f"CPU: {cpu}, {os.cpu_count()} logical CPUs; model {model.name} ({weights}, {model.stat().st_size / 1e9:.2f} GB, "
        f"mapped); --threads {a.threads}, --batch {a.batch}; server --batch-wait {a.batch_wait} ms; {len(images)} images "
        f"(bench.py's, 448x448 to 1920x1080); load average at start: {os.getloadavg()[0]:.2f}")
    out()

    # 1. the batch CLI, and its marginal cost per image
    wall1, _ = run_cli(model, images[:1], a.threads, a.batch)
    wall_n, want = run_cli(model, images, a.threads, a.batch)
    marginal = (wall_n - wall1) / max(1, len(images) - 1)
    n1 = min(len(images), 5)
    wall_b1, _ = run_cli(model, images[:n1], a.threads, "1")
    marginal_b1 = (wall_b1 - wall1) / max(1, n1 - 1)
    # 2. one process per image
    t0 = time.perf_counter()
    per_proc = []
    for img in images[:a.processes]:
        t1 = time.perf_counter()
        r = subprocess.run([ROOT / "qalign", "-q", "--threads", a.threads, model, img], capture_output=True, env=ENV)
        per_proc.append(time.perf_counter() - t1)
        if r.returncode:
            sys.exit("bench/serve.py: qalign failed on " + img)
    wall_p = time.perf_counter() - t0
    # 3. the server
    t0 = time.perf_counter()
    srv = Server(model, a.threads, a.batch, a.batch_wait)
    _, first, bad = load(srv.port, images[:1], 1, 1, want)
    startup = time.perf_counter() - t0
    rows = []
    wrong = list(bad)
    for conc, n in zip((1, 4, 16), counts):
        wall, lat, bad = load(srv.port, images, n, conc, want)
        wrong += bad
        rows.append((conc, n, wall, lat))
    rc = srv.stop()

    out("| how | images | wall s | **images / minute** | latency p50 s | latency p95 s |")
    out("|---|---|---|---|---|---|")
    out(f"| batch CLI (one process, --batch {a.batch}, model loading included) | {len(images)} | {wall_n:.1f} | "
        f"**{60 * len(images) / wall_n:.1f}** | | |")
    out(f"| one process per image | {len(per_proc)} | {wall_p:.1f} | **{60 * len(per_proc) / wall_p:.1f}** | "
        f"{percentile(per_proc, 50):.2f} | {percentile(per_proc, 95):.2f} |")
    for conc, n, wall, lat in rows:
        out(f"| server, {conc} client{'s' if conc > 1 else ''} | {n} | {wall:.1f} | **{60 * n / wall:.1f}** | "
            f"{percentile(lat, 50):.2f} | {percentile(lat, 95):.2f} |")
    out()
    c16 = 60 * rows[-1][1] / rows[-1][2]
    cli = 60 * len(images) / wall_n
    proc = 60 * len(per_proc) / wall_p
    p50 = percentile(rows[0][3], 50)
    out(f"- The server at 16 clients: {c16 / cli:.2f}x the batch CLI's images per minute (goal: at least 1x; "
        f"{c16 * marginal / 60:.2f}x its rate after loading, {60 / marginal:.1f} images/minute) and {c16 / proc:.2f}x "
        f"one process per image (goal: at least 3x).")
    out(f"- The CLI's marginal cost per image: {marginal:.2f} s at --batch {a.batch} (= ({wall_n:.1f} s for {len(images)} "
        f"images - {wall1:.1f} s for 1) / {len(images) - 1}), {marginal_b1:.2f} s at --batch 1 (over {n1} images). The "
        f"server's p50 at 1 client: {p50:.2f} s = {100 * p50 / marginal_b1:.0f}% of the --batch 1 cost, which is what "
        f"a lone request gets (goal: at most 110%), {100 * p50 / marginal:.0f}% of the --batch {a.batch} cost.")
    out(f"- The server's start (mapping the model) to its first answer: {startup:.1f} s; first request "
        f"{first[0]:.2f} s. It exited with status {rc} after SIGTERM.")
    n_ans = 1 + sum(n for _, n, _, _ in rows)
    out(f"- Answers equal to the batch CLI's --json rows: {n_ans - len(wrong)} of {n_ans}.")
    out()
    if wrong:
        print(f"bench/serve.py: {len(wrong)} answers differ from the CLI: {wrong[:3]}", file=sys.stderr)
    if a.write:
        path = ROOT / "bench" / "RESULTS.md"
        text = path.read_text() if path.exists() else ""
        start = text.find("\n## Server")
        if start >= 0:
            end = text.find("\n## ", start + 1)
            text = text[:start] + (text[end:] if end >= 0 else "\n")
        path.write_text(text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")
        print("bench/serve.py: wrote bench/RESULTS.md (## Server)", file=sys.stderr)
    sys.exit(1 if wrong or rc else 0)


if __name__ == "__main__":
    main()
