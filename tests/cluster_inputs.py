"""The dataset the cluster tests (test_slurm.py, test_dask.py) score: ~200 JPEGs large enough
that decoding them makes a run last a few seconds on the tiny model (so that a task or a
worker can be killed in the middle of it), plus inputs that cannot be scored."""
import signal

import numpy as np
import pytest
from PIL import Image

# name -> bytes of inputs that fail, each in its own way
BAD = {
    "cut.jpg": None,                              # a JPEG cut in its entropy-coded data (made below)
    "empty.jpg": b"",
    "notes.png": b"these are not the pixels you are looking for\n",
}


def make_dataset(d, n_good=196, seed=24):
    """Writes n_good JPEGs (about 1900x1400, each different) and the BAD files into d;
    returns the names of all files, sorted."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = 1500, 2000
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(xx / 7), np.cos(yy / 5), np.sin((xx + 2 * yy) / 11)], -1) * 90 + 120
    base = (base + rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)
    names = []
    for i in range(n_good):
        a = np.roll(base, (i * 13, i * 29), axis=(0, 1))[: h - (i % 7) * 20, : w - (i % 5) * 30]
        a[..., i % 3] += np.uint8(i)
        name = f"img{i:03d}.jpg"
        Image.fromarray(a).save(d / name, quality=85)
        names.append(name)
    full = (d / names[0]).read_bytes()
    for name, data in BAD.items():
        (d / name).write_bytes(full[: len(full) // 3] if data is None else data)
        names.append(name)
    return sorted(names)


_MADE = {}


def shared_dataset(tmp_path_factory):
    """(directory, names): make_dataset's files, made once per pytest session for every
    test module that asks (they only read them)."""
    if "data" not in _MADE:
        d = tmp_path_factory.mktemp("cluster_data")
        _MADE["data"] = d, make_dataset(d)
    return _MADE["data"]


LIMIT = 170   # seconds per test


@pytest.fixture(autouse=True)
def time_limit(request):
    """Autouse in the modules that import it: each test ends within LIMIT seconds, whatever
    hangs (its fixtures' cleanup runs)."""
    def expire(signum, frame):
        raise TimeoutError(f"{request.module.__name__}: over {LIMIT} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(LIMIT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
