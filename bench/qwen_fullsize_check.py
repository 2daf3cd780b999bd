"""bench/qwen_fullsize_check.py - qwen35.c against the PyTorch oracle at the real dimensions.

    python3 bench/qwen_torch.py DIR --sizes 448x448       # writes DIR/checkpoint (random Mini)
    python3 export.py --model DIR/checkpoint mini.qalign --dtype bf16
    make build/test_qwen
    python3 bench/qwen_fullsize_check.py DIR/checkpoint mini.qalign precise

A 10 x 14 patch image and 40 text tokens through the full-size random Mini (head_dim 256,
16 + 16 Gated DeltaNet heads of 128, mrope [11, 11, 10], 48 x 48 position table): prints the
oracle's (float32) and the C level logits and each stage's relative difference. Too slow for
the test suite on two cores; the tiny fixtures of tests/test_qwen.py cover the same code.
"""
import sys, os, subprocess, numpy as np, torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
import qwen_ref
torch.set_num_threads(1)
ck = sys.argv[1]
m = qwen_ref.Qwen35(ck, torch.float32)
rng = np.random.default_rng(3)
gh, gw = 10, 14
half = rng.uniform(-1, 1, (gh*gw, 3, 1, 256)).astype(np.float32)
px = np.concatenate([half, half], 2).reshape(gh*gw, 1536)
ids = [248045, 846, 198, 248053] + [248056] * (gh*gw//4) + [248054] + [int(x) for x in rng.integers(0, 240000, 40)]
lv = [1000, 2000, 3000, 4000, 5000]
st = {}
with torch.no_grad():
    ref = m.forward(ids, torch.from_numpy(px), [(1, gh, gw)], lv, st).numpy()
import tempfile; tmp = tempfile.mkdtemp(); d = tmp + '/in'; os.makedirs(d, exist_ok=True); o = tmp + '/out'; os.makedirs(o, exist_ok=True)
np.array(ids, '<i4').tofile(d + '/ids.i32'); np.array([gh, gw], '<i4').tofile(d + '/grid.i32')
px.astype('<f4').tofile(d + '/pixels.f32'); np.array(lv, '<i4').tofile(d + '/levels.i32')
r = subprocess.run([os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'build', 'test_qwen'), sys.argv[2], d, o] + sys.argv[3:], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
print(r.stderr)
got = np.fromfile(o + '/level_logits.f32', '<f4')
print('oracle f32', ref); print('C       ', got); print('max abs diff', np.abs(got - ref).max())
for name in ['vit_embed', 'vit_block0', 'vit_block11', 'vit_merger', 'layer0', 'layer3', 'layer23', 'final_norm']:
    g = np.fromfile(o + f'/{name}.f32', '<f4').reshape(-1); rr = st[name].numpy().reshape(-1)
    print(name, 'rel %.2e' % (np.abs(g - rr).max() / np.abs(rr).max()))
