"""export.py and the model-file loader: the format, its checks, and the CLI's errors.

- a safetensors copy of the tiny checkpoint exports to a byte-identical file;
- the header slots export.py writes are the ones qalign reads (via --info);
- truncated, bad-magic, wrong-version, mismatched and padded files are refused with one
  line that says to re-run export.py, never a crash, whether mapped or read (--no-mmap);
- --no-mmap scores exactly as the mapped file does;
- unsupported configurations are refused by export.py with a clear message;
- bad command lines give one line and a non-zero exit.
"""
import json
import shutil
import struct

import numpy as np
import pytest

from conftest import PYTHON, ROOT, report, run, probs

EXPORT = ROOT / "export.py"


def export(src, out, *extra):
    r = run([PYTHON, EXPORT, "-q", src, out, *extra])
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def tiny_f32(tiny_ref, workdir):
    return export(tiny_ref / "checkpoint", workdir / "mf_tiny_f32.qalign", "--dtype", "f32")


def one_line_error(r, *needles):
    assert r.returncode != 0, "expected a failure exit status"
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{r.stderr}"
    assert "error" in lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    assert "Sanitizer" not in r.stderr and "Segmentation" not in r.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------
# export.py

def test_safetensors_copy_exports_byte_identical(tiny_ref, workdir, tiny_f32):
    import torch
    import torch_ref as tr
    src = tiny_ref / "checkpoint"
    st = workdir / "st_ckpt"
    st.mkdir()
    for f in ("config.json", "preprocessor_config.json", "tokenizer.model"):
        shutil.copy(src / f, st / f)
    index = json.loads((src / "pytorch_model.bin.index.json").read_text())
    weight_map = {}
    for shard in sorted(set(index["weight_map"].values())):
        sd = torch.load(src / shard, map_location="cpu")
        name = shard.replace("pytorch_model", "model").replace(".bin", ".safetensors")
        tr.write_safetensors(st / name, sd)
        weight_map.update({k: name for k in sd})
    (st / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for dt in ("f32", "bf16"):
        a = export(src, workdir / f"bin_{dt}.qalign", "--dtype", dt)
        b = export(st, workdir / f"st_{dt}.qalign", "--dtype", dt)
        assert a.read_bytes() == b.read_bytes(), f"{dt}: safetensors export differs from the .bin export"
    report("export: safetensors copy of the tiny checkpoint -> byte-identical files (f32, bf16)")


def test_header_fields_agree_between_export_and_loader(tiny_f32, qalign_bin):
    import export as ex
    r = run([qalign_bin, "--info", tiny_f32])
    assert r.returncode == 0, r.stderr
    head = tiny_f32.read_bytes()[:1024]
    vals = {}
    for i, (name, typ) in enumerate(ex.HEADER_FIELDS):
        vals[name] = struct.unpack_from("<f" if typ == "f" else "<I", head, 4 * i)[0]
    info = r.stdout
    # every dimension export.py wrote must be what the loader reports
    expect = [f"dim {vals['v_dim']}, layers {vals['v_layers']}, heads {vals['v_heads']}, mlp {vals['v_mlp']}, "
              f"image {vals['v_image']}, patch {vals['v_patch']}",
              f"layers {vals['a_layers']}, heads {vals['a_heads']}, queries {vals['a_queries']}, mlp {vals['a_mlp']}",
              f"dim {vals['l_dim']}, layers {vals['l_layers']}, heads {vals['l_heads']}, kv heads {vals['l_kv_heads']}, "
              f"mlp {vals['l_mlp']}, vocab {vals['l_vocab']}",
              f"bos {vals['t_bos']}, eos {vals['t_eos']}, unk {vals['t_unk']}",
              "excellent=15129 good=1781 fair=6534 poor=6460 bad=4319",
              f"fill {vals['fill_r']},{vals['fill_g']},{vals['fill_b']}"]
    for e in expect:
        assert e in info, f"{e!r} not in --info output:\n{info}"
    assert vals["magic"] == ex.MAGIC and vals["version"] == ex.VERSION
    # the C enum has exactly as many slots as export.py's list
    src = (ROOT / "qalign.c").read_text()
    enum = src[src.index("enum {\n    H_MAGIC"):src.index("H_COUNT")]
    assert enum.count("H_") == len(ex.HEADER_FIELDS)


def test_export_refuses_unsupported_configs(tiny_ref, workdir):
    base = tiny_ref / "checkpoint"
    cases = {
        "rope_scaling": ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
        "model_type": ({"model_type": "llama"}, "model_type"),
        "bad_heads": ({"num_attention_heads": 3}, "divisible"),
        "attention_bias": ({"attention_bias": True}, "attention_bias"),
    }
    for name, (patch, needle) in cases.items():
        d = workdir / f"bad_cfg_{name}"
        shutil.copytree(base, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(patch)
        (d / "config.json").write_text(json.dumps(cfg))
        r = run([PYTHON, EXPORT, "-q", d, workdir / f"bad_{name}.qalign"])
        assert r.returncode != 0 and needle in r.stderr, (name, r.stderr)
        assert not (workdir / f"bad_{name}.qalign").exists()
        assert "Traceback" not in r.stderr
    r = run([PYTHON, EXPORT, "-q", workdir / "no_such_dir", workdir / "x.qalign"])
    assert r.returncode != 0 and "not a directory" in r.stderr and "Traceback" not in r.stderr


def test_synthetic_tiny_model_runs(workdir, qalign_bin, real_tokenizer, tiny_ref):
    scores = {}
    for dt in ("f32", "bf16", "q8_0", "q4_1", "q8_256", "q4_256", "q8", "q4"):
        p = workdir / f"syn_{dt}.qalign"
        r = run([PYTHON, EXPORT, "-q", "--synthetic", "tiny", "--dtype", dt, "--tokenizer", real_tokenizer, p])
        assert r.returncode == 0, r.stderr
        ppm = workdir / "syn.ppm"
        rgb = np.load(tiny_ref / "inputs" / "photo_decoded_rgb.npy")
        ppm.write_bytes(b"P6 %d %d 255\n" % (rgb.shape[1], rgb.shape[0]) + rgb.tobytes())
        r = run([qalign_bin, p, "--json", "--precise", ppm])
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert 1.0 <= out["score"] <= 5.0 and abs(sum(probs(out)) - 1) < 1e-4
        scores[dt] = out["score"]
    # synthetic weights are bf16 values, so the f32 and bf16 files score the same (with
    # --precise, both multiply f32 activations)
    assert abs(scores["f32"] - scores["bf16"]) < 1e-5
    # q8 and q4 are other names for q8_256 and q4_256: the same bytes
    for alias, name in (("q8", "q8_256"), ("q4", "q4_256")):
        assert (workdir / f"syn_{alias}.qalign").read_bytes() == (workdir / f"syn_{name}.qalign").read_bytes(), alias


# ---------------------------------------------------------------------------------------
# the loader

def test_loader_rejects_damaged_files(tiny_f32, qalign_bin, workdir):
    data = tiny_f32.read_bytes()
    n = len(data)
    ppm = workdir / "loader.ppm"
    ppm.write_bytes(b"P6 2 2 255\n" + bytes(12))

    def attempt(name, blob, *needles):
        p = workdir / f"damaged_{name}.qalign"
        p.write_bytes(blob)
        one_line_error(run([qalign_bin, "--no-mmap", p, ppm]), *needles)  # read into memory
        return one_line_error(run([qalign_bin, p, ppm]), *needles)  # mapped

    cases = 0
    for cut in (0, 10, 1023, 1024, 1024 + 96 * 3 + 5, n // 2, n - 64, n - 1):
        attempt(f"trunc{cut}", data[:cut], "re-run export.py")
        cases += 1
    bad_magic = b"GGUF" + data[4:]
    attempt("magic", bad_magic, "bad magic", "re-run export.py")
    wrong_version = data[:4] + struct.pack("<I", 99) + data[8:]
    attempt("version", wrong_version, "version 99", "re-run export.py")
    # a header dimension that disagrees with the tensors
    v_dim_slot = 5
    mism = bytearray(data)
    struct.pack_into("<I", mism, 4 * v_dim_slot, 96)
    attempt("dims", bytes(mism), "shape", "re-run export.py")
    attempt("padded", data + b"\0" * 64, "re-run export.py")
    # a table entry pointing outside the file
    bad_off = bytearray(data)
    struct.pack_into("<Q", bad_off, 1024 + 80, 1 << 40)
    attempt("offset", bytes(bad_off), "re-run export.py")
    # absurd dimensions
    huge = bytearray(data)
    struct.pack_into("<I", huge, 4 * 18, 0xFFFFFFFF)
    attempt("huge", bytes(huge), "re-run export.py")
    cases += 6
    r = run([qalign_bin, workdir / "does_not_exist.qalign", ppm])
    one_line_error(r, "cannot open")
    report(f"loader: {cases + 1} damaged/missing model files refused with one line (mapped and --no-mmap)")


def test_cli_errors(qalign_bin, tiny_f32, workdir):
    ppm = workdir / "cli.ppm"
    ppm.write_bytes(b"P6 2 2 255\n" + bytes(12))
    one_line_error(run([qalign_bin, "--frobnicate", tiny_f32, ppm]), "unknown option")
    one_line_error(run([qalign_bin, "--threads", "zero", tiny_f32, ppm]), "--threads")
    one_line_error(run([qalign_bin, "--task", "beauty", tiny_f32, ppm]), "--task")
    one_line_error(run([qalign_bin, "--scale", "0-10", tiny_f32, ppm]), "--scale")
    one_line_error(run([qalign_bin, tiny_f32]), "no INPUT")
    one_line_error(run([qalign_bin, "--task"]), "needs a value")
    r = run([qalign_bin, "--help"])
    assert r.returncode == 0 and "usage: qalign" in r.stdout
    # a missing input in a batch: its error, the other input's result, exit status 1
    r = run([qalign_bin, tiny_f32, "--json", workdir / "missing.ppm", ppm])
    assert r.returncode == 1
    rows = {json.loads(l)["path"]: json.loads(l) for l in r.stdout.splitlines()}
    assert "error" in rows[str(workdir / "missing.ppm")] and rows[str(ppm)]["score"] > 0


def test_tokenize_flag(qalign_bin, tiny_f32, real_tokenizer):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(real_tokenizer))
    for text in ["How would you rate the quality of this image?", "  two  spaces\nnewline", "héllo 😀", ""]:
        r = run([qalign_bin, "--tokenize", text, tiny_f32])
        assert r.returncode == 0, r.stderr
        got = [int(x) for x in r.stdout.split()]
        assert got == [sp.bos_id()] + sp.encode(text), text


def test_scale_and_text_output(qalign_bin, tiny_f32, tiny_ref, workdir):
    rgb = np.load(tiny_ref / "inputs" / "gray_decoded_rgb.npy")
    ppm = workdir / "scale.ppm"
    ppm.write_bytes(b"P6 %d %d 255\n" % (rgb.shape[1], rgb.shape[0]) + rgb.tobytes())
    a = json.loads(run([qalign_bin, tiny_f32, "--json", ppm]).stdout)
    b = json.loads(run([qalign_bin, tiny_f32, "--json", "--scale", "0-1", ppm]).stdout)
    assert abs(b["score"] - (a["score"] - 1) / 4) < 1e-6
    t = run([qalign_bin, tiny_f32, ppm]).stdout.split()
    assert abs(float(t[0]) - a["score"]) < 1e-4 and t[-1] == str(ppm)
    assert [w.split("=")[0] for w in t[1:6]] == ["excellent", "good", "fair", "poor", "bad"]


def test_no_mmap_scores_identically(qalign_bin, tiny_f32, tiny_ref, workdir):
    rgb = np.load(tiny_ref / "inputs" / "gray_decoded_rgb.npy")
    ppm, flipped = workdir / "nommap.ppm", workdir / "nommap_flipped.ppm"
    ppm.write_bytes(b"P6 %d %d 255\n" % (rgb.shape[1], rgb.shape[0]) + rgb.tobytes())
    flipped.write_bytes(b"P6 %d %d 255\n" % (rgb.shape[1], rgb.shape[0]) + rgb[::-1].tobytes())
    mapped = run([qalign_bin, tiny_f32, "--json", ppm, flipped])
    copied = run([qalign_bin, tiny_f32, "--json", "--no-mmap", ppm, flipped])
    assert mapped.returncode == 0 and copied.returncode == 0, mapped.stderr + copied.stderr
    assert len(mapped.stdout.splitlines()) == 2
    assert copied.stdout == mapped.stdout
