"""qalign_dask.py - Q-Align / OneAlign scores on a Dask `distributed` cluster, with ONE
`qalign --stdio` process per worker, started once and reused for every partition.

    from distributed import Client
    from qalign_dask import DaskScorer

    client = Client("tcp://scheduler:8786")
    with DaskScorer(client, "/shared/one-align-q8_0.qalign", threads=8) as q:
        rows = q.score(paths, partition_size=64)          # list of row dicts, in input order
        scored = q.score_bag(dask.bag.from_sequence(paths, npartitions=100))   # a bag of rows
        df = q.score_column(ddf, "path")                  # ddf plus the row's columns

Each worker gets a worker plugin (registered on the scheduler, so workers that join or are
restarted later get it too) that runs `qalign --stdio MODEL` through python/qalign.py's
Scorer when the worker starts and keeps it for the worker's life: the model is mapped once
per worker. A partition is sent to it `chunk` images at a time (qalign batches its decoder
passes over what it has); a worker scoring partitions on several threads shares its one
process between them (one chunk at a time). Each row is the dict `qalign --json` prints
for that input (`path` as given); an input that cannot be scored is a row with its `error`
(never an exception), as in a `--jsonl` file.

A partition's rows exist only once the whole partition is scored and are returned by the
task: a worker that dies in the middle of a partition loses nothing but that partition's
work, which Dask runs again on another worker (up to `distributed.scheduler.allowed-failures`
times, 3 by default): no row is lost or returned twice. If the qalign process itself ends
(a crash), the plugin starts a new one and scores that chunk once more; if that one ends
too the task fails with qalign's message (pass `retries=` to try elsewhere).

Needs `distributed` (and pandas for score_column); this file and qalign.py must be
importable on the workers (same directory; put it on the workers' PYTHONPATH, or
client.upload_file both), and the `qalign` program and the model at the same paths there.
Give the workers one thread each (`dask worker --nthreads 1 --nworkers 1` per node) and
`threads=` the node's cores: qalign uses them all.
"""
import threading
import uuid

from distributed import WorkerPlugin, get_worker, wait

from qalign import QAlignError, Scorer

__all__ = ["DaskScorer", "QAlignWorker"]

# columns of a result row whose values are numbers (None becomes NaN in a dataframe)
_INTS = ("frames",)
_BOOLS = ("pad", "precise")


def _float_column(key):
    return key in ("score", "std") or key.startswith(("p_", "logit_"))


class QAlignWorker(WorkerPlugin):
    """The worker plugin: one Scorer per worker, made in setup() and closed in teardown()."""

    def __init__(self, name, scorer_args):
        self.name = name
        self.scorer_args = scorer_args

    def setup(self, worker):
        self._lock = threading.Lock()
        self._scorer = None
        self.images = 0            # scored by this worker's process(es)
        self.partitions = 0
        self.restarts = 0          # qalign processes started again after one ended
        self.current = {}          # task key -> [rows done, rows in the partition]
        self._start()

    def _start(self):
        self._scorer = Scorer(**self.scorer_args)

    def teardown(self, worker):
        with self._lock:
            if self._scorer is not None:
                self._scorer.close()
                self._scorer = None

    def status(self):
        """What this worker's qalign has done, and where each running partition is."""
        return {"images": self.images, "partitions": self.partitions, "restarts": self.restarts,
                "current": {k: list(v) for k, v in list(self.current.items())},
                "pid": self._scorer._p.pid if self._scorer is not None and self._scorer._p is not None else None}

    def _score_chunk(self, items, task, scale):
        with self._lock:
            for attempt in (0, 1):
                if self._scorer is None:
                    self.restarts += 1
                    self._start()
                try:
                    rows = self._scorer.score(items, task=task, scale=scale, raise_errors=False)
                    self.images += len(rows)
                    return rows
                except QAlignError:
                    # the process ended or answered nonsense: never reuse it
                    scorer, self._scorer = self._scorer, None
                    try:
                        scorer.close()
                    except Exception:
                        pass
                    if attempt:
                        raise

    def score_partition(self, items, key, chunk, task, scale):
        items = list(items)
        rows = []
        self.current[key] = [0, len(items)]
        try:
            for start in range(0, len(items), chunk):
                rows += self._score_chunk(items[start:start + chunk], task, scale)
                self.current[key][0] = len(rows)
        finally:
            self.current.pop(key, None)
        self.partitions += 1
        return rows


def _plugin(name):
    w = get_worker()
    try:
        return w, w.plugins[name]
    except KeyError:
        raise RuntimeError(f"worker {w.address} has no qalign plugin {name!r}: make the DaskScorer before "
                           "computing, on the same client") from None


def _score_partition(items, plugin_name, chunk, task, scale):
    w, plugin = _plugin(plugin_name)
    return plugin.score_partition(items, w.get_current_task(), chunk, task, scale)


def _score_frame(df, column, plugin_name, chunk, task, scale, columns):
    import pandas as pd
    w, plugin = _plugin(plugin_name)
    rows = plugin.score_partition(list(df[column]), w.get_current_task(), chunk, task, scale)
    return pd.concat([df, _frame(pd, rows, columns, df.index)], axis=1)


def _frame(pd, rows, columns, index):
    data = {}
    for c in columns:
        vals = [r.get(c) for r in rows]
        if _float_column(c):
            data[c] = pd.Series([float("nan") if v is None else float(v) for v in vals], index=index, dtype="float64")
        elif c in _INTS:
            data[c] = pd.Series([int(v or 0) for v in vals], index=index, dtype="int64")
        elif c in _BOOLS:
            data[c] = pd.Series([bool(v) for v in vals], index=index, dtype="bool")
        else:
            data[c] = pd.Series(vals, index=index, dtype="object")
    return pd.DataFrame(data, index=index, columns=list(columns))


def _status(dask_worker, plugin_name):
    p = dask_worker.plugins.get(plugin_name)
    return p.status() if p is not None else None


class DaskScorer:
    """Registers the qalign worker plugin on a distributed Client's cluster and scores
    lists, bags and dataframe columns of inputs (paths valid on the workers, or bytes of
    image files) with it. close() (or the end of the `with`) removes the plugin, which ends
    every worker's qalign process."""

    def __init__(self, client, model, binary=None, threads=None, task=None, scale=None, batch=None, args=(),
                 chunk=16, name=None):
        self.client = client
        self.chunk = max(1, int(chunk))
        self.task, self.scale = task, scale
        self.name = name or f"qalign-{uuid.uuid4().hex[:8]}"
        scorer_args = {"model": str(model), "binary": None if binary is None else str(binary), "threads": threads,
                       "task": task, "scale": scale, "batch": batch, "args": [str(a) for a in args],
                       "window": max(16, self.chunk)}
        replies = client.register_worker_plugin(QAlignWorker(self.name, scorer_args), name=self.name)
        bad = {w: r for w, r in (replies or {}).items() if isinstance(r, dict) and r.get("status") != "OK"}
        if bad:
            self.close()
            w, r = next(iter(bad.items()))
            raise QAlignError(f"the qalign worker plugin failed on {len(bad)} worker(s), e.g. {w}: "
                              f"{r.get('exception') or r}")
        self._columns = None

    def _kw(self, task, scale):
        return {"plugin_name": self.name, "chunk": self.chunk, "task": task or self.task, "scale": scale or self.scale}

    def submit(self, items, partition_size=64, task=None, scale=None, retries=None):
        """One future per partition of `partition_size` consecutive items; each gives that
        partition's rows in order."""
        items = list(items)
        size = max(1, int(partition_size))
        parts = [items[i:i + size] for i in range(0, len(items), size)]
        return self.client.map(_score_partition, parts, key=f"qalign-score-{uuid.uuid4().hex[:8]}", pure=False,
                               retries=retries, **self._kw(task, scale))

    def score(self, items, partition_size=64, task=None, scale=None, retries=None, timeout=None):
        """The rows of all items, in their order."""
        futures = self.submit(items, partition_size, task, scale, retries)
        if timeout is not None and futures:
            wait(futures, timeout=timeout)
        rows = []
        for part in self.client.gather(futures) if futures else []:
            rows += part
        return rows

    def score_bag(self, bag, task=None, scale=None):
        """A dask.bag of rows, one per item of `bag`, partition for partition."""
        return bag.map_partitions(_score_partition, **self._kw(task, scale))

    def columns(self):
        """The names of a row's fields after `path` (they depend on the model's level words),
        from the row qalign gives an empty image on one worker."""
        if self._columns is None:
            row = self.client.submit(_score_partition, [b""], pure=False, **self._kw(None, None)).result()[0]
            self._columns = [k for k in row if k != "path"]
        return self._columns

    def score_column(self, ddf, column, task=None, scale=None):
        """`ddf` (a dask.dataframe) with the rows of the inputs in `column` added as columns
        (score, std, p_<word>, ..., error, ...; NaN where an input failed)."""
        import pandas as pd
        cols = self.columns()
        clash = [c for c in cols if c in ddf.columns]
        if clash:
            raise ValueError(f"the dataframe already has columns {clash}: rename them first")
        meta = pd.concat([ddf._meta, _frame(pd, [], cols, ddf._meta.index)], axis=1)
        return ddf.map_partitions(_score_frame, column, columns=cols, meta=meta, **self._kw(task, scale))

    def status(self):
        """{worker address: its plugin's status()} (images and partitions scored, the
        partitions in progress with their rows done, the qalign process id)."""
        return self.client.run(_status, plugin_name=self.name)

    def close(self):
        """Remove the plugin from the cluster: each worker closes its qalign process."""
        if self.client is not None and self.client.status == "running":
            try:
                self.client.unregister_worker_plugin(self.name)
            except Exception:
                pass
        self.client = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
