#!/usr/bin/env python3
"""bench/cluster.py - images per minute of the two "past one machine" recipes on this
machine, with 1 and 2 workers, on the tiny model and the cluster tests' images (README,
"Past one machine"). Not part of `make bench`: run it by hand, as root (Slurm's daemons).

    python3 bench/cluster.py [--images 196] [--skip-slurm] [--skip-dask]

Measured, each on the same inputs (tests/cluster_inputs.py: ~1900x1400 JPEGs, so decoding
is most of the work on the tiny model):
  - one qalign process (--threads 1), for scale;
  - Slurm: examples/slurm/score_array.sbatch on a one-node cluster started here
    (tests/test_slurm.py's OneNodeSlurm), --cpus-per-task=1, an array of 1 task and one of
    2 tasks running at once; from submission to the last task's end;
  - Dask: qalign_dask.DaskScorer on a LocalCluster of 1 and of 2 worker processes (1 thread,
    qalign --threads 1 each), partitions of 25; from submission to the last row, cluster
    start not included.
"""
import argparse
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "python")]
from cluster_inputs import make_dataset  # noqa: E402

ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def slurm_run(w, model, qalign, tasks):
    from test_slurm import OneNodeSlurm, wait_for
    with OneNodeSlurm() as sl:
        t0 = time.monotonic()
        r = sl.cmd("sbatch", "--parsable", f"--array=1-{tasks}", "--cpus-per-task=1", "-D", w, "--output",
                   "/dev/null", ROOT / "examples/slurm/score_array.sbatch", model, "all.txt", f"out{tasks}",
                   env=dict(sl.env, QALIGN_BIN=str(qalign)))
        job = r.stdout.strip().split(";")[0]
        wait_for("the array", lambda: not sl.cmd("squeue", "-h", "-j", job, check=False).stdout.strip(), 600, 0.1)
        return time.monotonic() - t0


def dask_run(model, qalign, paths, workers, space):
    import distributed
    from qalign_dask import DaskScorer
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                  local_directory=space, silence_logs=logging.ERROR,
                                  env={"OMP_WAIT_POLICY": "PASSIVE"}) as cl, distributed.Client(cl) as client:
        with DaskScorer(client, model, binary=qalign, threads=1) as q:
            q.score(paths[:workers])             # each worker's qalign started and warm
            t0 = time.monotonic()
            rows = q.score(paths, partition_size=25)
            dt = time.monotonic() - t0
    assert len(rows) == len(paths)
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=196)
    ap.add_argument("--skip-slurm", action="store_true")
    ap.add_argument("--skip-dask", action="store_true")
    a = ap.parse_args()
    qalign = ROOT / "qalign"
    ref = Path(os.environ.get("QALIGN_REFERENCE", ROOT.parent / "shared" / "reference")) / "tiny" / "checkpoint"
    with tempfile.TemporaryDirectory(prefix="qalign-cluster-bench-") as tmp:
        w = Path(tmp)
        model = w / "tiny_f32.qalign"
        subprocess.run([sys.executable, ROOT / "export.py", "-q", ref, model, "--dtype", "f32"], check=True)
        names = [n for n in make_dataset(w / "data", n_good=a.images) if n.startswith("img")]
        (w / "all.txt").write_text("".join(f"data/{n}\n" for n in names))
        paths = [str(w / "data" / n) for n in names]
        n = len(names)
        print(f"{n} images, tiny model (f32), {cpu_name()}, {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f} at the start")
        t0 = time.monotonic()
        subprocess.run([qalign, "-q", "--threads", "1", model, "@all.txt"], cwd=w, env=ENV, check=True,
                       stdout=subprocess.DEVNULL)
        dt = time.monotonic() - t0
        print(f"one qalign process, --threads 1: {dt:.1f} s, {60 * n / dt:.0f} images/minute")
        for workers in (1, 2):
            if not a.skip_slurm:
                dt = slurm_run(w, model, qalign, workers)
                print(f"slurm array, {workers} task(s) of 1 CPU: {dt:.1f} s, {60 * n / dt:.0f} images/minute")
            if not a.skip_dask:
                dt = dask_run(model, qalign, paths, workers, str(w / "space"))
                print(f"dask, {workers} worker(s) of 1 thread: {dt:.1f} s, {60 * n / dt:.0f} images/minute")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
