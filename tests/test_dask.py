"""Issue 24, Dask: python/qalign_dask.py on a distributed LocalCluster of 2 worker processes
(Debian's python3-distributed), over the tiny model and ~200 images with some that cannot
be scored. Each worker must run one `qalign --stdio` for all its partitions; the rows must
come back in input order and equal those of one process (python/qalign.py's Scorer over
the same inputs; the decodable ones and a broken JPEG also equal the CLI's --json rows).
One worker is killed (SIGKILL) in the middle of a partition: that partition must be scored
again on a worker and no row lost or returned twice; the restarted worker gets the plugin
again. Bags and dataframe columns go the same way. Bounded in time; the cluster, its
workers and their qalign processes are always stopped, also on failure.
"""
import json
import logging
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from cluster_inputs import shared_dataset, time_limit  # noqa: F401 (autouse: each test ends within 170 s)
from conftest import PYTHON, ROOT, report, run

sys.path.insert(0, str(ROOT / "python"))

EXPORT = ROOT / "export.py"
QA_ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")


def qalign_procs(model):
    """pids of running processes whose command line names this model file."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(model).encode() in cmd and b"--stdio" in cmd:
                pids.append(int(p.name))
    return pids


@pytest.fixture(scope="module")
def model(tiny_ref, tmp_path_factory):
    p = tmp_path_factory.mktemp("dask_model") / "tiny_f32.qalign"
    r = run([PYTHON, EXPORT, "-q", tiny_ref / "checkpoint", p, "--dtype", "f32"])
    assert r.returncode == 0, r.stderr
    return p


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, qalign_bin, model):
    """(paths in a shuffled order, one process's rows for them): ~200 absolute paths, one
    of them missing."""
    from qalign import Scorer
    d, names = shared_dataset(tmp_path_factory)
    paths = [str(d / n) for n in names] + [str(d / "missing.jpg")]
    random.Random(24).shuffle(paths)
    with Scorer(model, binary=qalign_bin, threads=1) as q:
        rows = q.score(paths, raise_errors=False)
    assert [r["path"] for r in rows] == paths and sum(1 for r in rows if r["error"]) == 4
    # the scored rows and the broken JPEG's are the CLI's --json rows too
    some = [p for p, r in zip(paths, rows) if r["error"] is None][:20] + [str(d / "cut.jpg")]
    cli = run([qalign_bin, "-q", "--json", "--threads", "1", model, *some], env=QA_ENV, timeout=300)
    assert cli.returncode == 1, cli.stderr
    by_path = {r["path"]: r for r in rows}
    for line in cli.stdout.splitlines():
        row = json.loads(line)
        assert row == by_path[row["path"]], row["path"]
    return paths, rows


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model):
    distributed = pytest.importorskip("distributed", reason="python3-distributed is not installed "
                                                            "(apt-get install python3-distributed)")
    t0 = time.monotonic()
    cl = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  local_directory=str(tmp_path_factory.mktemp("dask_space")),
                                  silence_logs=logging.ERROR, env={"OMP_WAIT_POLICY": "PASSIVE"})
    client = None
    try:
        client = distributed.Client(cl, timeout=60)
        client.wait_for_workers(2, timeout=60)
        yield client, time.monotonic() - t0
    finally:
        if client is not None:
            client.close(timeout=30)
        cl.close(timeout=30)
        for pid in qalign_procs(model):   # a worker's qalign that outlived it (there should be none)
            os.kill(pid, signal.SIGKILL)


def test_dask_bag_and_dataframe(cluster, model, qalign_bin, inputs):
    """A bag and a dataframe column: the one process's rows, in order; the dataframe has the
    row's columns (NaN where an input failed)."""
    import dask.bag as db
    import dask.dataframe as dd
    import pandas as pd
    from qalign_dask import DaskScorer
    client, _ = cluster
    paths, ref = inputs
    few = paths[:37]
    with DaskScorer(client, model, binary=qalign_bin, threads=1, chunk=4) as q:
        got = client.compute(q.score_bag(db.from_sequence(few, npartitions=4))).result(timeout=120)
        assert got == ref[:37]
        ddf = dd.from_pandas(pd.DataFrame({"path": few, "n": range(37)}), npartitions=3)
        out = client.compute(q.score_column(ddf, "path")).result(timeout=120)
        st = q.status()
    assert list(out["path"]) == few and list(out["n"]) == list(range(37))
    assert list(out.columns[2:]) == [k for k in ref[0] if k != "path"]
    for (_, o), r in zip(out.iterrows(), ref[:37]):
        for k, v in r.items():
            if k == "path":
                continue
            if v is None and k not in ("error", "kind", "max_frames"):
                assert math.isnan(o[k]), (r["path"], k)
            else:
                assert o[k] == v, (r["path"], k, o[k], v)
    # one qalign process per worker served both calls
    assert len(st) == 2 and all(s["restarts"] == 0 and s["pid"] for s in st.values()), st
    assert sum(s["images"] for s in st.values()) >= 37 * 2, st
    report(f"dask: a bag (4 partitions) and a dataframe column (3) of 37 inputs on 2 workers = one process's rows; "
           f"qalign processes per worker: 1 ({sum(s['images'] for s in st.values())} images)")


def test_dask_worker_killed_mid_partition(cluster, model, qalign_bin, inputs):
    from qalign_dask import DaskScorer
    from distributed import wait
    client, t_up = cluster
    paths, ref = inputs
    size = 25
    with DaskScorer(client, model, binary=qalign_bin, threads=1, chunk=4) as q:
        t0 = time.monotonic()
        futures = q.submit(paths, partition_size=size)
        end = time.monotonic() + 90
        victim = None
        while victim is None:
            assert time.monotonic() < end and not all(f.done() for f in futures), \
                f"no worker was seen in the middle of a partition: {q.status()}"
            for addr, s in q.status().items():
                for key, (done, total) in (s or {}).get("current", {}).items():
                    if 4 <= done <= total - 8:
                        victim = addr, key, done, total, s["pid"]
            time.sleep(0.02)
        addr, key, done, total, child = victim
        pid = client.run(os.getpid, workers=[addr])[addr]
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        wait(futures, timeout=150)
        t_done = time.monotonic()
        parts = client.gather(futures)
        rows = [r for part in parts for r in part]
        # the killed worker's qalign ended with it (its stdin closed)
        end = time.monotonic() + 20
        while os.path.exists(f"/proc/{child}") and time.monotonic() < end:
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{child}") or b"zombie" in Path(f"/proc/{child}/status").read_bytes().lower()
        # the partition was started twice: on the killed worker and again
        story = client.run_on_scheduler(lambda dask_scheduler: [list(map(str, t)) for t in dask_scheduler.story(key)])
        started = [t for t in story if t[0] == key and t[2] == "processing"]
        assert len(started) >= 2, story
        # the restarted worker has the plugin and its own qalign
        end = time.monotonic() + 60
        while True:
            st = q.status()
            if len(st) == 2 and all(s and s["pid"] for s in st.values()):
                break
            assert time.monotonic() < end, st
            time.sleep(0.2)
        assert addr not in st
    assert len(rows) == len(ref) == len(paths)
    assert [r["path"] for r in rows] == paths          # in input order, each once
    assert rows == ref                                  # and the one process's rows
    report(f"dask: 2 workers (1 thread each), {len(paths)} inputs in partitions of {size}: worker killed after "
           f"{done} of {total} rows of a partition; rescored, rows = one process's, in order, none twice; "
           f"cluster up in {t_up:.1f} s, run {t_done - t0:.1f} s ({t_done - t_kill:.1f} s after the kill)")


def test_dask_qalign_killed_mid_partition(cluster, model, qalign_bin, inputs):
    """A worker's qalign process (not the worker) killed in the middle of a partition: the
    plugin starts another and scores that chunk again; the rows are still one process's."""
    from qalign_dask import DaskScorer
    from distributed import wait
    client, _ = cluster
    paths, ref = inputs
    some = paths[:80]
    with DaskScorer(client, model, binary=qalign_bin, threads=1, chunk=4) as q:
        futures = q.submit(some, partition_size=40)
        end = time.monotonic() + 90
        victim = None
        while victim is None:
            assert time.monotonic() < end and not all(f.done() for f in futures), q.status()
            for addr, s in q.status().items():
                if any(4 <= done <= total - 8 for done, total in (s or {}).get("current", {}).values()):
                    victim = addr, s["pid"]
            time.sleep(0.02)
        os.kill(victim[1], signal.SIGKILL)
        wait(futures, timeout=120)
        rows = [r for part in client.gather(futures) for r in part]
        st = q.status()
    assert rows == ref[:80]
    assert st[victim[0]]["restarts"] == 1 and st[victim[0]]["pid"] != victim[1], st
    report("dask: a worker's qalign killed mid-partition: restarted by the plugin, the chunk scored again, "
           "rows = one process's")
