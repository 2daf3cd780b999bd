"""`make test-real` for Q-ReAlign (tests/real_weights_qwen.py) run on the tiny Qwen3.5
checkpoint of tests/qwen_ref.py in place of the real one: the harness a user runs on the real
weights passes on a correct export (f32, and bf16 in both modes), fails when the checkpoint's
weights are not the ones exported, refuses an export of another architecture, and, without
QALIGN_REAL_QWEN_MODEL, skips saying how to enable it."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

from conftest import PYTHON, ROOT, report, run

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    for tool in ("node", "npm"):                 # the tokenizer oracle (no Python `tokenizers` here)
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (Debian: apt-get install -y nodejs npm)")
    pytest.importorskip("torch")
    pytest.importorskip("jinja2")
    from PIL import Image
    sys.path.insert(0, HERE)
    import qwen_ref
    d = tmp_path_factory.mktemp("real_qwen")
    ckpt = d / "Q-ReAlign-Tiny"
    qwen_ref.write_checkpoint(str(ckpt), qwen_ref.TINY)
    files = {}
    for dt in ("f32", "bf16"):
        files[dt] = d / f"tiny-{dt}.qalign"
        r = run([PYTHON, ROOT / "export.py", "--model", ckpt, files[dt], "--dtype", dt, "-q"])
        assert r.returncode == 0, r.stderr
    rng = np.random.default_rng(11)
    imgs = []
    for k, (h, w) in enumerate([(70, 100), (300, 210)]):
        imgs.append(d / f"img{k}.png")
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(imgs[-1])
    return d, ckpt, files, imgs


def harness(model, ckpt, imgs):
    env = {k: v for k, v in os.environ.items() if k not in ("QALIGN_REAL_QWEN_MODEL", "CI")}
    env.update(QALIGN_REAL_QWEN_MODEL=str(model), QALIGN_REAL_QWEN_CHECKPOINT=str(ckpt),
               QALIGN_REAL_QWEN_IMAGES=":".join(map(str, imgs)), OMP_NUM_THREADS="2")
    return run([PYTHON, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", os.path.join(HERE, "real_weights_qwen.py")],
               env=env, cwd=ROOT)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_harness_passes_on_a_correct_export(tiny, dtype):
    d, ckpt, files, imgs = tiny
    r = harness(files[dtype], ckpt, imgs)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
    lines = {l for l in r.stdout.splitlines() if l.startswith("real Q-ReAlign weights: ") and "score qalign" in l}
    assert len(lines) == 2 * 2 * (2 if dtype == "bf16" else 1), r.stdout[-3000:]
    report(f"make test-real (Q-ReAlign) on the tiny checkpoint, {dtype}: {len(lines)} comparisons within the bounds")


def test_harness_fails_on_other_weights(tiny):
    """The same architecture, other random weights: the oracle disagrees, the test fails."""
    import qwen_ref
    d, ckpt, files, imgs = tiny
    other = d / "other_weights"
    if not other.exists():
        qwen_ref.write_checkpoint(str(other), qwen_ref.TINY, seed=1)
    r = harness(files["f32"], other, imgs)
    assert r.returncode == 1 and "beyond the bounds" in r.stdout, r.stdout[-3000:]


def test_harness_refuses_another_architecture(tiny):
    d, ckpt, files, imgs = tiny
    other = d / "other_arch"
    if not other.exists():
        shutil.copytree(ckpt, other)
        cfg = json.loads((other / "config.json").read_text())
        cfg["text_config"]["num_hidden_layers"] = 7
        (other / "config.json").write_text(json.dumps(cfg))
    r = harness(files["f32"], other, imgs)
    assert r.returncode == 1 and "is not an export of" in r.stdout, r.stdout[-3000:]


def test_make_test_real_says_how_to_enable_it():
    env = {k: v for k, v in os.environ.items() if k not in ("QALIGN_REAL_MODEL", "QALIGN_REAL_QWEN_MODEL", "CI")}
    r = run(["make", "-s", "-C", ROOT, "test-real", f"PYTHON={PYTHON}"], env=env)
    assert r.returncode == 0 and "2 skipped" in r.stdout, r.stdout + r.stderr
    assert "no real Q-ReAlign weights: set QALIGN_REAL_QWEN_MODEL" in r.stdout, r.stdout
