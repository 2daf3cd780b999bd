"""qalign --ask: answers in words, against the original model's greedy decoding.

1. Token for token: the oracle (tests/torch_ref.py: the forward pass that test_reference.py
   checks against the ORIGINAL upstream code's fixtures, float32) runs the greedy loop of
   model.generate(do_sample=False) by recomputing the whole sequence at every step (no K/V
   cache); qalign's ids must be the same for several images and questions, a video (its
   frames at one <|image|>) and two images in one Co-Instruct prompt, from the f32 model file
   and from the bf16 one with --precise. Every step's top-2 logit margin in the oracle is
   asserted to be at least MIN_MARGIN (25x the logit tolerance of test_reference), so a
   near-tie cannot make the comparison flaky: the records were chosen for that.
2. The same tokens with 1 and 2 threads and batch 1 and 8 (also for quantised weights and
   bf16 activations, whose kernels differ; q4_256: one row a step goes through the family's
   matvec, several through its tiles); a seeded sampled answer is the same run to run
   and whatever the batch; every sampled token is among the oracle's top-k.
3. The decoded text is sentencepiece's decode of the same ids, stripped (the answer), and
   tokenizer_decode (through tests/tok_driver.c) equals sentencepiece's decode of random id
   sequences of the real LLaMA-2 vocabulary: byte-fallback runs (valid and broken UTF-8),
   non-ASCII pieces, control and unknown pieces.
4. The command line: JSON rows, the CSV/JSONL of answers and --resume, --ask with --score,
   and one-line errors for bad input.
"""
import json
import random
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import PYTHON, ROOT, report, run

sys.path.insert(0, str(ROOT))
import spm  # noqa: E402
from test_tokenizer import driver, write_vocab  # noqa: E402,F401  (a fixture and a helper)

MIN_MARGIN = 5e-3
N_TOKENS = 12
IMAGES = ["photo.jpg", "gray.jpg", "alpha.png", "progressive.jpg"]
QUESTIONS = ["Describe the quality of this image.", "How is the lighting of this photo?"]
VIDEO_QUESTION = "How is the lighting of this photo?"
PAIRS = [(("photo.jpg", "gray.jpg"), "Which image has better quality?"),
         (("alpha.png", "progressive.jpg"), "Which image is sharper?")]
CO_INSTRUCT_2 = "USER: The first image: <|image|>\nThe second image: <|image|>{question} ASSISTANT:"


@pytest.fixture(scope="module")
def models(tiny_ref, workdir):
    out = {}
    for dt in ("f32", "bf16", "q8_0", "q8_256", "q4_256"):
        p = workdir / f"ask_{dt}.qalign"
        r = run([PYTHON, ROOT / "export.py", "-q", tiny_ref / "checkpoint", p, "--dtype", dt])
        assert r.returncode == 0, r.stderr
        out[dt] = p
    return out


@pytest.fixture(scope="module")
def greedy_oracle(tiny_ref):
    """{record: (tokens, min margin)} from the float32 oracle's greedy loop."""
    import torch
    import sentencepiece as spm_
    from PIL import Image
    import torch_ref as tr
    cfg = json.loads((tiny_ref / "checkpoint" / "config.json").read_text())
    pp = json.loads((tiny_ref / "checkpoint" / "preprocessor_config.json").read_text())
    ref = tr.Reference(tr.load_state(tiny_ref / "checkpoint"), cfg, dtype=torch.float32)
    sp = spm_.SentencePieceProcessor(model_file=str(tiny_ref / "checkpoint" / "tokenizer.model"))
    S = cfg["visual_config"]["visual_model"]["image_size"]

    def vis(files):
        x = np.stack([tr.preprocess(Image.open(tiny_ref / "inputs" / f), S, pp["image_mean"], pp["image_std"])[1]
                      for f in files])
        return tr.visual_rows(ref, x)

    out = {}
    for img in IMAGES:
        v = vis([img])[0]
        for q in QUESTIONS:
            toks, m = tr.greedy(ref, v, tr.ask_prompt_ids(sp, q), N_TOKENS)
            out[(img, q)] = (toks, min(m))
    frames = [f"video_frame_00{i}.png" for i in range(3)]
    toks, m = tr.greedy(ref, vis(frames), tr.ask_prompt_ids(sp, VIDEO_QUESTION), N_TOKENS)
    out[("video", VIDEO_QUESTION)] = (toks, min(m))
    for files, q in PAIRS:
        v = vis(files)
        toks, m = tr.greedy(ref, [v[0], v[1]], tr.ask_prompt_ids(sp, q, CO_INSTRUCT_2), N_TOKENS)
        out[(files, q)] = (toks, min(m))
    return out, sp


def ask(exe, model, question, inputs, *flags):
    r = run([exe, "--ask", question, "--json", "--max-tokens", N_TOKENS, *flags, model, *inputs])
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.mark.parametrize("dtype", ["f32", "bf16-precise"])
def test_greedy_matches_the_original(dtype, models, greedy_oracle, tiny_ref, qalign_bin):
    oracle, sp = greedy_oracle
    model = models["f32"] if dtype == "f32" else models["bf16"]
    flags = ["--precise"] if dtype != "f32" else []
    n = 0
    for key, (toks, margin) in oracle.items():
        assert margin >= MIN_MARGIN, f"{key}: the oracle's top-2 margin {margin:.2e} is a near-tie: choose another record"
    inp = tiny_ref / "inputs"
    for q in QUESTIONS:
        rows = ask(qalign_bin, model, q, [inp / f for f in IMAGES], *flags)
        for row in rows:
            img = row["path"].rsplit("/", 1)[1]
            toks = oracle[(img, q)][0]
            assert row["tokens"] == toks, (img, q, row["tokens"], toks)
            assert row["answer"] == sp.decode(toks).strip()
            assert row["finish"] == ("length" if len(toks) == N_TOKENS else "eos")
            assert row["question"] == q and row["error"] is None and row["frames"] == 1
            n += 1
    frames = [inp / f"video_frame_00{i}.png" for i in range(3)]
    (row,) = ask(qalign_bin, model, VIDEO_QUESTION, frames, "--video", *flags)
    assert row["tokens"] == oracle[("video", VIDEO_QUESTION)][0] and row["frames"] == 3 and row["kind"] == "frames"
    for files, q in PAIRS:
        (row,) = ask(qalign_bin, model, q, [inp / f for f in files], "--one-prompt", "--prompt", "co-instruct", *flags)
        assert row["tokens"] == oracle[(files, q)][0], (files, q)
        assert row["prompt"] == CO_INSTRUCT_2
    n += 1 + len(PAIRS)
    worst = min(m for _, m in oracle.values())
    report(f"ask: {dtype}: {n} greedy answers x {N_TOKENS} tokens = the original's, token for token "
           f"(video, Co-Instruct pairs included; smallest oracle top-2 margin {worst:.1e})")


# q8_256, q4_256: a decode step of 1-8 answers goes through the family's matvec (each weight read
# once for all the rows), of 12 through the tiles (AMX's for q8_256), the prompts always through
# the tiles: the tokens must not change
@pytest.mark.parametrize("dtype", ["f32", "bf16", "q8_0", "q8_256", "q4_256"])
def test_same_tokens_whatever_the_threads_and_batch(dtype, models, tiny_ref, qalign_bin):
    inp = tiny_ref / "inputs"
    files = [inp / f for f in IMAGES] * 3  # twelve answers, each image three times
    seen = {}
    for threads, batch in ((1, 1), (2, 8), (2, 3), (1, 12)):
        rows = ask(qalign_bin, models[dtype], QUESTIONS[0], files, "--threads", threads, "--batch", batch)
        got = {r["path"]: r["tokens"] for r in rows}
        assert len(got) == len(IMAGES)
        seen[(threads, batch)] = got
    base = seen[(1, 1)]
    for k, got in seen.items():
        assert got == base, (dtype, k)
    report(f"ask: {dtype}: the same tokens with 1 and 2 threads, batch 1, 3, 8 and 12")


def test_seeded_sampling(models, greedy_oracle, tiny_ref, qalign_bin):
    inp = tiny_ref / "inputs"
    files = [inp / f for f in IMAGES]
    flags = ["--temperature", "0.9", "--top-k", "3", "--top-p", "0.95"]
    a = ask(qalign_bin, models["f32"], QUESTIONS[0], files, *flags, "--seed", "7")
    b = ask(qalign_bin, models["f32"], QUESTIONS[0], files, *flags, "--seed", "7", "--batch", "1", "--threads", "1")
    c = ask(qalign_bin, models["f32"], QUESTIONS[0], files, *flags, "--seed", "8")
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]
    assert [r["tokens"] for r in a] != [r["tokens"] for r in c]
    assert a[0]["decoding"] == "sample temperature=0.9 top_p=0.95 top_k=3 seed=7 max_tokens=12"
    greedy = greedy_oracle[0]
    assert [r["tokens"] for r in a] != [greedy[(f, QUESTIONS[0])][0] for f in IMAGES]
    # every sampled token is among the oracle's 3 most likely after the same prefix
    import torch
    import torch_ref as tr
    from PIL import Image
    cfg = json.loads((tiny_ref / "checkpoint" / "config.json").read_text())
    pp = json.loads((tiny_ref / "checkpoint" / "preprocessor_config.json").read_text())
    ref = tr.Reference(tr.load_state(tiny_ref / "checkpoint"), cfg, dtype=torch.float32)
    sp = greedy_oracle[1]
    S = cfg["visual_config"]["visual_model"]["image_size"]
    row = a[0]
    x = tr.preprocess(Image.open(row["path"]), S, pp["image_mean"], pp["image_std"])[1]
    v = tr.visual_rows(ref, x[None])[0]
    ids = tr.ask_prompt_ids(sp, QUESTIONS[0])
    for i, t in enumerate(row["tokens"]):
        logits = ref.decoder(ids + row["tokens"][:i], v)["logits_last"]
        assert t in torch.topk(logits, 3).indices.tolist(), (i, t)
    report("ask: seeded sampling: the same answers run to run and at batch 1 / 8, another seed another answer, "
           "every token in the oracle's top-k")


def test_decode_matches_sentencepiece(real_tokenizer, driver, workdir):  # noqa: F811
    import sentencepiece as spm_
    sp = spm_.SentencePieceProcessor(model_file=str(real_tokenizer))
    vocab = write_vocab(spm.load(real_tokenizer), workdir / "ask_vocab.bin")
    V = sp.get_piece_size()
    rng = random.Random(19)
    byte_ids = [i for i in range(V) if sp.is_byte(i)]
    non_ascii = [i for i in range(V) if any(ord(ch) > 127 for ch in sp.id_to_piece(i).replace("\u2581", ""))
                 and not sp.is_byte(i)]
    space = [i for i in range(V) if sp.id_to_piece(i).startswith("\u2581")]
    P = sp.piece_to_id
    seqs = [[P("<0xE2>"), P("<0x82>"), P("<0xAC>"), P("x")], [P("<0xE2>"), P("<0x82>"), P("x")],
            [P("<0xE2>"), P("\u2581x"), P("<0x82>")], [0, P("\u2581x")], [P("\u2581x"), 0], [2, P("\u2581x")],
            [1, P("\u2581Hello"), 2, P("\u2581world")], [P("<0x41>"), P("\u2581Hello")], [P("<0x20>"), P("\u2581Hello")],
            [P("\u2581"), P("\u2581Hello")], [P("\u2581"), P("Hello")], [P("<0xFF>"), P("<0xC3>"), P("<0xA9>")],
            [P("<0xF0>"), P("<0x9F>"), P("<0x98>"), P("<0x80>"), P("\u2581ok")], [], [1], [2, 2],
            sp.encode("Ünïcödé → 漢字 😀 ﬁ e\u0301"), sp.encode("  two  spaces\tand a tab\n")]
    seqs.append([P("<0xC3>"), P("<0xA9>")] * 40)  # a byte run longer than tokenizer.c's run buffer
    for _ in range(400):
        pool = rng.choice([byte_ids, non_ascii, space, range(V)])
        seqs.append([rng.choice(pool) if rng.random() < 0.8 else rng.randrange(V) for _ in range(rng.randrange(1, 24))])
    data = b"".join(struct.pack("<II", 4, 4 * len(s)) + struct.pack(f"<{len(s)}i", *s) for s in seqs)
    r = subprocess.run([str(driver), str(vocab)], input=data, capture_output=True)
    assert r.returncode == 0, r.stdout[-500:] + r.stderr[-500:]
    lines = r.stdout.decode().split("\n")[:-1]
    assert len(lines) == len(seqs)
    for s, line in zip(seqs, lines):
        assert bytes.fromhex(line) == sp.decode(s).encode("utf-8"), (s, bytes.fromhex(line), sp.decode(s))
    report(f"ask: tokenizer_decode = sentencepiece's decode on {len(seqs)} id sequences of the real vocabulary "
           "(byte-fallback runs, broken UTF-8, non-ASCII, control, unknown)")


def test_rows_files_and_resume(models, tiny_ref, qalign_bin, workdir):
    inp = tiny_ref / "inputs"
    files = sorted(inp / f for f in IMAGES[:2])  # (inputs are answered in sorted order)
    csv, jsonl = workdir / "ask.csv", workdir / "ask.jsonl"
    for f in (csv, jsonl):
        f.unlink(missing_ok=True)
    model = models["f32"]

    def go(q, *flags):
        r = run([qalign_bin, "--ask", q, "--max-tokens", "6", "--csv", csv, "--jsonl", jsonl, "--resume", *flags, model,
                 *files])
        assert r.returncode == 0, r.stderr
        return r

    r = go(QUESTIONS[0])
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[0].endswith(f"  {files[0]}")  # the answer, then the file
    assert csv.read_text().splitlines()[0] == ("path,task,kind,frames,score,std,scale,question,answer,tokens,finish,"
                                               "error,model,prompt,levels,decoding,pad,precise,max_frames")
    rows = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["question"] == QUESTIONS[0] and len(rows[0]["tokens"]) == 6
    assert lines[0] == rows[0]["answer"] + f"  {files[0]}"
    assert "score" not in rows[0] and rows[0]["decoding"] == "greedy max_tokens=6"
    r = go(QUESTIONS[0])
    assert r.stdout == "" and "2 of 2 inputs done before" in r.stderr
    r = go(QUESTIONS[1])
    assert len(r.stdout.splitlines()) == 2 and "other question: 2" in r.stderr
    r = go(QUESTIONS[1], "--temperature", "0.5", "--seed", "3")
    assert len(r.stdout.splitlines()) == 2 and "other decoding: 2" in r.stderr
    assert len(jsonl.read_text().splitlines()) == 6 and len(csv.read_text().splitlines()) == 7
    # --ask with --score: the row records how it was scored (its prompt is the question's), and
    # --resume does again a row scored another way: no score before, another scoring prompt
    r = go(QUESTIONS[1], "--score")
    assert len(r.stdout.splitlines()) == 2 and "0 of 2 inputs done before" in r.stderr, r.stderr
    row = json.loads(jsonl.read_text().splitlines()[-1])
    assert row["score"] is not None and "prompt=" in row["decoding"] and "levels=excellent=5" in row["decoding"]
    r = go(QUESTIONS[1], "--score")
    assert r.stdout == "" and "2 of 2 inputs done before" in r.stderr, r.stderr
    r = go(QUESTIONS[1], "--score", "--task", "aesthetics")  # the scoring prompt says aesthetics
    assert len(r.stdout.splitlines()) == 2 and "other decoding: 2" in r.stderr, r.stderr
    row2 = json.loads(jsonl.read_text().splitlines()[-1])
    assert row2["tokens"] == row["tokens"] and row2["decoding"] != row["decoding"]
    r = go(QUESTIONS[1])  # answers without scores: the unscored rows of before, not the scored ones
    assert r.stdout == "" and "2 of 2 inputs done before" in r.stderr, r.stderr
    assert len(jsonl.read_text().splitlines()) == 10
    # a CSV of scores is not one of answers
    sc = workdir / "scores.csv"
    sc.unlink(missing_ok=True)
    assert run([qalign_bin, "--csv", sc, model, files[0]]).returncode == 0
    r = run([qalign_bin, "--ask", "Why?", "--csv", sc, model, files[0]])
    assert r.returncode != 0 and "holds scores, not answers" in r.stderr
    report("ask: --csv/--jsonl rows of answers, --resume reuses only rows of the same question, decoding and "
           "(--score) scoring prompt")


def test_ask_and_score_in_one_pass(models, tiny_ref, qalign_bin):
    inp = tiny_ref / "inputs"
    files = [inp / f for f in IMAGES]
    rows = ask(qalign_bin, models["bf16"], QUESTIONS[0], files, "--score")
    plain = ask(qalign_bin, models["bf16"], QUESTIONS[0], files)
    r = run([qalign_bin, "--json", models["bf16"], *files])
    scores = [json.loads(x) for x in r.stdout.splitlines()]
    for a, p, s in zip(rows, plain, scores):
        assert a["tokens"] == p["tokens"] and a["score"] == s["score"] and a["p_good"] == s["p_good"]
        assert a["task"] == "quality" and a["levels"] == s["levels"]
    r = run([qalign_bin, "--ask", "Describe it.", "--score", models["bf16"], inp / "video_frame_000.png",
             inp / "video_frame_001.png", "--video", "--max-tokens", "4"])
    assert r.returncode == 0 and len(r.stdout.split()) >= 3, r.stderr
    report("ask: --ask with --score: the scores of a scoring run and the answers of an --ask run, in one pass")


def test_bad_input(models, tiny_ref, qalign_bin):
    img = tiny_ref / "inputs" / "photo.jpg"
    m = models["f32"]
    cases = [
        (["--ask", "", m, img], "empty"),
        (["--ask", "  ", m, img], "empty"),
        (["--ask", "Q", "--max-tokens", "0", m, img], "--max-tokens"),
        (["--ask", "Q", "--max-tokens", "2049", m, img], "context length"),
        (["--ask", "Q", "--temperature", "nan", m, img], "--temperature"),
        (["--ask", "Q", "--temperature", "-1", m, img], "--temperature"),
        (["--ask", "Q", "--top-p", "1.5", m, img], "--top-p"),
        (["--ask", "Q", "--top-k", "-2", m, img], "--top-k"),
        (["--ask", "Q", "--seed", "x", m, img], "--seed"),
        (["--temperature", "0.5", m, img], "goes with --ask"),
        (["--seed", "1", m, img], "goes with --ask"),
        (["--score", m, img], "goes with --ask"),
        (["--ask", "Q", "--prompt", "no-such-template", m, img], "no-such-template"),
        (["--ask", "Q", "--prompt", "USER: {question}", m, img], "<|image|>"),
        (["--ask", "Q <|image|>", m, img], "<|image|>"),
        (["--ask", "Q", "--report", "r.html", m, img], "--report"),
    ]
    for args, what in cases:
        r = run([qalign_bin, *args])
        assert r.returncode != 0, args
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("qalign: ") and what in lines[0], (args, r.stderr)
    report(f"ask: {len(cases)} kinds of bad input: one-line error, non-zero exit")


def test_server_answers_as_the_cli(models, tiny_ref, qalign_bin):
    """POST /ask (image body, query parameters), the JSON form, --stdio's "question": the --json
    rows of the CLI; concurrent askers with different questions and options share decoder passes
    and each gets the answer it gets alone; bad requests get a 400."""
    import threading
    from test_serve import ENV, Server, b64, metrics, quote, request
    inp = tiny_ref / "inputs"
    model = models["f32"]
    qs = [QUESTIONS[0], QUESTIONS[1], "Is it sharp?", "What is wrong with it?"]
    want = {}
    for q in qs:
        for f in IMAGES:
            (row,) = ask(qalign_bin, model, q, [inp / f])
            want[(q, f)] = row
    sampled = ask(qalign_bin, model, qs[0], [inp / "photo.jpg"], "--temperature", "0.7", "--seed", "5")[0]
    with Server(qalign_bin, model, "--batch-wait", "300") as srv:
        st, _, body = request(srv.port, "POST", f"/ask?question={quote(qs[0])}&max_tokens={N_TOKENS}",
                              body=open(inp / "photo.jpg", "rb").read())
        row = json.loads(body)
        assert st == 200 and row["tokens"] == want[(qs[0], "photo.jpg")]["tokens"]
        assert {k: v for k, v in row.items() if k != "path"} == {k: v for k, v in want[(qs[0], "photo.jpg")].items()
                                                                 if k != "path"}
        doc = {"images": [b64(inp / f) for f in IMAGES], "names": IMAGES, "question": qs[1], "max_tokens": N_TOKENS}
        st, _, body = request(srv.port, "POST", "/ask", body=json.dumps(doc), headers={"Content-Type": "application/json"})
        assert st == 200
        for r in json.loads(body)["results"]:
            assert r["tokens"] == want[(qs[1], r["path"])]["tokens"] and r["path"] in IMAGES
        # concurrent askers: other questions, a sampled one among them
        got, errors = {}, []

        def one(q, f, extra=""):
            try:
                st, _, body = request(srv.port, "POST", f"/ask?question={quote(q)}&max_tokens={N_TOKENS}{extra}",
                                      body=open(inp / f, "rb").read())
                got[(q, f, extra)] = (st, json.loads(body))
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
        before = metrics(srv.port)
        jobs = [(q, f, "") for q in qs for f in IMAGES[:2]] + [(qs[0], "photo.jpg", "&temperature=0.7&seed=5")]
        threads = [threading.Thread(target=one, args=j) for j in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        for (q, f, extra), (st, row) in got.items():
            assert st == 200, row
            assert row["tokens"] == (sampled if extra else want[(q, f)])["tokens"], (q, f, extra)
        after = metrics(srv.port)
        tokens = after["qalign_generated_tokens_total"] - before["qalign_generated_tokens_total"]
        assert tokens == sum(len(r["tokens"]) for _, r in got.values())
        assert after["qalign_generation_sequences_per_pass"] > 1.0
        assert after["qalign_generation_tokens_per_second"] > 0
        for path, body, hdr in [(f"/ask?max_tokens=3", open(inp / "photo.jpg", "rb").read(), {}),
                                (f"/ask?question=x&max_tokens=0", open(inp / "photo.jpg", "rb").read(), {}),
                                (f"/ask?question=x&temperature=hot", open(inp / "photo.jpg", "rb").read(), {}),
                                (f"/ask?question=%20", open(inp / "photo.jpg", "rb").read(), {}),
                                (f"/ask?question=x", json.dumps({"image": b64(inp / "gray.jpg"), "question": "y"}),
                                 {"Content-Type": "application/json"}),
                                ("/score", json.dumps({"image": b64(inp / "gray.jpg"), "question": "y"}),
                                 {"Content-Type": "application/json"}),
                                ("/ask", json.dumps({"image": b64(inp / "gray.jpg"), "max_tokens": 3}),
                                 {"Content-Type": "application/json"})]:
            st, _, body = request(srv.port, "POST", path, body=body, headers=hdr)
            assert st == 400 and "error" in json.loads(body), (path, st, body)
        rc, log = srv.stop()
        assert rc == 0, log
    lines = [json.dumps({"id": i, "path": str(inp / f), "question": qs[i % 2], "max_tokens": N_TOKENS})
             for i, f in enumerate(IMAGES)] + ['{"id": 9, "path": "x.jpg", "max_tokens": 3}']
    r = subprocess.run([str(qalign_bin), "--stdio", str(model)], input="\n".join(lines) + "\n", capture_output=True,
                       text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    out = {json.loads(x)["id"]: json.loads(x) for x in r.stdout.splitlines()}
    for i, f in enumerate(IMAGES):
        assert out[i]["tokens"] == want[(qs[i % 2], f)]["tokens"]
    assert "question" in out[9]["error"]
    report(f"ask: server: POST /ask, JSON and --stdio answers = the CLI's; {len(jobs)} concurrent askers "
           f"(different questions, a sampled one) shared decoder passes "
           f"({after['qalign_generation_sequences_per_pass']:.1f} answers per pass), each its answer alone; 7 kinds of 400")


def test_python_client_ask(models, tiny_ref, qalign_bin, monkeypatch):
    from test_serve import Server
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, str(ROOT / "python"))
    import qalign as client
    from PIL import Image
    inp = tiny_ref / "inputs"
    model = models["f32"]
    path = str(inp / "gray.jpg")
    want = ask(qalign_bin, model, QUESTIONS[0], [path])[0]
    sampled = ask(qalign_bin, model, QUESTIONS[0], [path], "--temperature", "0.8", "--top-k", "5", "--seed", "2")[0]
    inputs = [path, open(path, "rb").read(), Image.open(path)]
    with Server(qalign_bin, model) as s:
        for scorer in (client.Scorer(model, binary=qalign_bin), client.HTTPScorer(s.url)):
            with scorer as q:
                rows = q.ask(inputs, QUESTIONS[0], max_tokens=N_TOKENS)
                assert [r["tokens"] for r in rows] == [want["tokens"]] * 3
                assert rows[0]["answer"] == want["answer"] and rows[0]["path"] == path and rows[1]["path"] is None
                (r,) = q.ask([path], QUESTIONS[0], max_tokens=N_TOKENS, temperature=0.8, top_k=5, seed=2)
                assert r["tokens"] == sampled["tokens"]
                with pytest.raises(client.QAlignError, match="max_tokens"):
                    q.ask([path], "Why?", max_tokens=0)
                with pytest.raises(TypeError, match="unknown decoding"):
                    q.ask([path], "Why?", beams=4)
        s.stop()
    report("ask: python/qalign.py: Scorer.ask and HTTPScorer.ask give the CLI's answers (greedy and seeded)")


def test_library_edges(models, tiny_ref):
    """tests/test_ask.c: the stop text, streaming, qalign_ask_batch's per-item errors."""
    r = run(["make", "-C", ROOT, "-s", "build/test_ask"])
    assert r.returncode == 0, r.stdout + r.stderr
    r = run([ROOT / "build" / "test_ask", models["f32"], tiny_ref / "inputs" / "photo.jpg"])
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[-1].endswith(" 0 failed"), r.stdout + r.stderr
    report(f"ask: test_ask.c (stop text, streaming, per-item errors, K/V bytes): {lines[-1]}")


def test_streams_to_a_terminal(models, tiny_ref, qalign_bin):
    """On a terminal the answer is printed as it is generated: the same line as without one."""
    import os
    import pty
    img = tiny_ref / "inputs" / "photo.jpg"
    args = [qalign_bin, "--ask", QUESTIONS[0], "--max-tokens", N_TOKENS, "-q", models["f32"], img]
    plain = run(args).stdout
    master, slave = pty.openpty()
    p = subprocess.Popen([str(a) for a in args], stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.wait(60) == 0
    assert out.decode().replace("\r\n", "\n") == plain
    report("ask: on a terminal the answer streams, token by token, into the same line")
