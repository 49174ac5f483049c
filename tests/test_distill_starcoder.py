"""Distillation from a teacher of another tokenizer (StarCoder's case), end to end on CPU.

The teacher is a tiny GPTBigCode (StarCoder's architecture) with a byte-level BPE tokenizer of its
own (tests/test_eval_hf_auto.py), trained here first on code with a regularity (`scale_K_I` returns
`x * M + I`), so it knows what the random student does not. `inference score` writes its
log-probabilities with byte spans (resumable after a kill), `data_prep pretrain --teacher-scores`
aligns them to the student's o200k tokens, and `recipes run gpt_oss_tiny_distill_starcoder`
(Megatron-Bridge's real loop, unmocked) trains LM + likelihood matching. Closeness to the teacher
is measured afterwards by `inference score` of held-out code with both models (transformers for the
teacher, the kit's Megatron inference backend for the students), not by the training loss's code.
Nothing is mocked."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_eval_hf_auto import build
from test_teacher_data import kill_after_rows
from test_training import metrics, run_recipe
from tiny_data import write_indexed_dataset

from data_prep.alignment import chunk_sums, common_ends

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10


def _doc(r: random.Random) -> str:
    k, m = r.randint(0, 99), r.randint(2, 9)
    return "".join(f"def scale_{k}_{i}(x):\n    return x * {m} + {i}\n\n" for i in range(r.randint(2, 4)))


def _jsonl(path: Path, docs: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"content": d, "lang": "Python"}) + "\n" for d in docs))
    return path


def _rows(path: Path) -> dict[str, dict]:
    return {r["sha256"]: r for r in map(json.loads, path.read_text().splitlines())}


def _lp(row: dict) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in row["logprobs"]], dtype=np.float64)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """The tiny StarCoder-like teacher, trained 150 steps on the regular corpus (loss 6.4 -> ~0.4)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(build("gpt_bigcode", tmp_path_factory.mktemp("teacher")))
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    r = random.Random(1)
    docs = [_doc(r) for _ in range(400)]
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.div_(4.0) if p.dim() > 1 else None  # undo build()'s sharpening: trainable from here
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        batch = [tok(d)["input_ids"] for d in r.sample(docs, 8)]
        width = max(map(len, batch))
        ids = torch.full((8, width), tok.eos_token_id)
        mask = torch.zeros(8, width, dtype=torch.long)
        for i, b in enumerate(batch):
            ids[i, : len(b)], mask[i, : len(b)] = torch.tensor(b), 1
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1.0, loss.item()
    model.eval().save_pretrained(path)
    return path


def inference(*argv: str) -> int:
    from inference.__main__ import main

    return main(list(argv))


@pytest.fixture(scope="module")
def ws(teacher, tmp_path_factory) -> Path:
    """Scores of the code corpus, the code dataset with its teacher targets, an LM-only replay dataset."""
    from data_prep.__main__ import main as data_prep

    ws = tmp_path_factory.mktemp("ws")
    r = random.Random(2)
    code = _jsonl(ws / "corpus" / "code.jsonl", [_doc(r) for _ in range(120)])
    held = random.Random(3)
    _jsonl(ws / "held.jsonl", [_doc(held) for _ in range(20)])
    assert inference("score", str(teacher), str(code), "-o", str(ws / "scores.jsonl"), "--device", "cpu") == 0
    out = ws / "data" / "the-stack"
    assert data_prep(["pretrain", str(code), "--output", str(out), "--teacher-scores", str(ws / "scores.jsonl"),
                      "-j", "1", "--no-progress"]) == 0  # fmt: skip
    write_indexed_dataset(ws / "data" / "replay" / "text_document")
    from conversion.__main__ import main as conversion

    hf, meg = ws / "models" / "gpt-oss-tiny" / "hf", ws / "models" / "gpt-oss-tiny" / "megatron"
    assert conversion(["random", "--size", "tiny", "--seed", "0", "--out", str(hf)]) == 0
    assert conversion(["import", "--hf", str(hf), "--out", str(meg)]) == 0  # the student both runs start from
    return ws


def _ckpt(ws: Path, run: str) -> list[str]:
    d = ws / "checkpoints" / run
    return [f"checkpoint.save={d}", f"checkpoint.load={d}"]


@pytest.fixture(scope="module")
def distilled(ws) -> Path:
    out = run_recipe(ws, "gpt_oss_tiny_distill_starcoder", f"train.train_iters={STEPS}", *_ckpt(ws, "alm"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "teacher targets: " + str(ws / "data" / "replay" / "text_document") + ": no teacher targets" in out.stderr
    return ws / "checkpoints" / "alm"


@pytest.fixture(scope="module")
def lm_only(ws) -> Path:
    """The same student, data, steps and schedule with the LM loss alone (the continued-pretraining recipe)."""
    out = run_recipe(ws, "gpt_oss_tiny_cpt_code", f"train.train_iters={STEPS}", *_ckpt(ws, "lm"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return ws / "checkpoints" / "lm"


# ---------------------------------------------------------------------------------------------
# The pieces, without training
# ---------------------------------------------------------------------------------------------


def test_windows_score_every_token_once_with_half_a_window_of_context():
    from inference.score import windows

    assert windows(3, 8) == [(0, 3, 1)]
    assert windows(10, 4) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    for n, ctx in ((50, 8), (51, 7), (9, 2)):
        w = windows(n, ctx)
        scored = [t for a, b, first in w for t in range(first, b)]
        assert scored == list(range(1, n)) and all(b - a <= ctx for a, b, _ in w)
        assert all(first - a >= ctx // 2 for a, _, first in w[1:])


def test_teacher_spans_of_both_tokenizer_families(tmp_path):
    """Byte spans that add up to the text for StarCoder's byte-level BPE and for a Llama-style
    sentencepiece BPE (its "▁" prefix space and <0xNN> byte pieces), whose BOS is context only."""
    from test_eval_hf_auto import byte_level_tokenizer, sentencepiece_style_tokenizer

    from inference.codec import HFTokenizerCodec
    from inference.score import text_tokens

    text = "def größe(x):\n    return x  # ünïcode ✓\n"
    data = text.encode()
    for name, tok in (("bpe", byte_level_tokenizer()), ("sp", sentencepiece_style_tokenizer())):
        tok.save_pretrained(tmp_path / name)
        codec = HFTokenizerCodec(tmp_path / name)
        ids, lead, ends = text_tokens(codec, text)
        assert lead == (1 if name == "sp" else 0) and ends[-1] == len(data) and (np.diff(ends) >= 0).all()
        assert len(ends) == len(ids) - lead
        if name == "bpe":  # every span is the token's own bytes
            assert [data[a:b] for a, b in zip([0, *ends[:-1]], ends)] == [codec.decode_bytes([i]) for i in ids]


def test_chunk_targets_and_the_alm_divergence():
    """Chunk targets for a hand-made pair of tokenizations, then the training loss on them against the
    formula written out: chunks cut by a window start, a masked label or a +inf separator do not count."""
    from data_prep.alignment import chunk_targets
    from recipes.alm import chunk_divergence

    # bytes 0..9; student ends 2,3,5,8,10; teacher ends 1,3,5,6,10 (common: 3, 5, 10)
    lp_t = np.array([np.nan, -0.5, -1.0, -0.25, -2.0])
    t = chunk_targets(np.array([2, 3, 5, 8, 10]), np.array([1, 3, 5, 6, 10]), lp_t)
    assert np.isnan(t[[0, 3]]).all() and t[1] == np.inf  # the first chunk holds the unscored first token
    assert t[2] == np.float32(-1.0) and t[4] == np.float32(-2.25)
    t = chunk_targets(np.array([2, 3, 5, 8, 10]), np.array([1, 3, 5, 6, 10]), np.array([-0.1, -0.5, -1.0, -0.25, -2.0]))
    assert t[1] == np.float32(-0.6) and t[2] == np.float32(-1.0) and t[4] == np.float32(-2.25)

    # one sample of 6 text tokens (5 labels): targets at text positions 0..5
    nan, inf = float("nan"), float("inf")
    targets = torch.tensor([[nan, -0.7, nan, -1.5, inf, -0.2]])
    lp = torch.tensor([[-0.3, -0.4, -0.9, -2.0, -0.05]], requires_grad=True)  # labels = text tokens 1..5
    mask = torch.ones(1, 5)
    kd, n = chunk_divergence(lp, targets, mask, temperature=1.0)

    # chunk ending at 1: starts before the window (no earlier end): skipped; chunk (1, 3]: labels 2, 3;
    # chunk ending at 4 is +inf (separator); chunk (4, 5]: label 5
    def bern(a, s):
        p = math.exp(a)
        return p * (a - s) + (1 - p) * (math.log(1 - p) - math.log(1 - math.exp(s)))

    want = bern(-1.5, -0.4 - 0.9) + bern(-0.2, -0.05)
    assert int(n) == 2 and kd.item() == pytest.approx(want, rel=1e-5)
    kd.backward()
    assert lp.grad[0, 0] == 0 and lp.grad[0, 3] == 0 and (lp.grad[0, [1, 2, 4]] != 0).all()
    masked = mask.clone()
    masked[0, 4] = 0  # the last label masked: its chunk is out
    kd2, n2 = chunk_divergence(lp.detach(), targets, masked, temperature=1.0)
    assert int(n2) == 1 and kd2.item() == pytest.approx(bern(-1.5, -1.3), rel=1e-5)
    # temperature: both log-likelihoods divided by T
    kd3, _ = chunk_divergence(lp.detach(), targets, mask, temperature=4.0)
    assert kd3.item() == pytest.approx(bern(-1.5 / 4, -1.3 / 4) + bern(-0.2 / 4, -0.05 / 4), rel=1e-5)


def test_targets_follow_the_kept_documents(ws, teacher):
    """Every kept document has targets of its own length; at each chunk end the target is the
    teacher's log-likelihood of the chunk's bytes, recomputed here with transformers directly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_prep.alignment import targets_prefix
    from data_prep.indexed import read_index
    from gptoss.tokenizer import EOD_ID, encoding

    d = ws / "data" / "the-stack"
    m, data = json.loads((d / "teacher" / "manifest.json").read_text()), json.loads((d / "manifest.json").read_text())
    assert m["method"] == "alm-chunks-v1" and m["docs"] == data["kept"]["docs"] == m["docs_scored"] > 100
    assert m["teacher"].startswith("hf-auto:gpt_bigcode:") and m["teacher_tokenizer"].startswith("sha256:")
    assert m["student_tokenizer"] == data["tokenizer"] and 0.5 * m["tokens"] < m["tokens_in_chunks"] < m["tokens"]
    prefix = str(d / "text_document")
    _, lengths, pointers, _ = read_index(prefix + ".idx")
    _, t_lengths, t_pointers, _ = read_index(targets_prefix(prefix) + ".idx")
    assert (lengths == t_lengths).all()
    text = np.memmap(prefix + ".bin", dtype=np.int32, mode="r")
    targets = np.memmap(targets_prefix(prefix) + ".bin", dtype=np.float32, mode="r")

    tok = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    enc, checked = encoding(), 0
    for doc in (0, len(lengths) // 2, len(lengths) - 1):
        ids = text[pointers[doc] // 4 : pointers[doc] // 4 + lengths[doc]]
        tgt = targets[t_pointers[doc] // 4 : t_pointers[doc] // 4 + t_lengths[doc]]
        assert ids[-1] == EOD_ID and tgt[-1] == np.inf
        student = np.cumsum([len(enc.decode_single_token_bytes(int(i))) for i in ids[:-1]])
        body = enc.decode(list(ids[:-1]))
        t_ids = tok(body)["input_ids"]
        t_ends = np.array([len(tok.decode(t_ids[: k + 1]).encode()) for k in range(len(t_ids))])
        with torch.no_grad():
            logits = model(torch.tensor([t_ids])).logits[0].float()
        lp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(t_ids[1:])[:, None])[:, 0].double().numpy()
        cum = np.concatenate(([0.0, 0.0], np.cumsum(lp)))  # cum[k + 1]: log-lik of teacher tokens 1..k
        prev_t = None  # the first chunk holds the teacher's unscored first token: +inf
        for e in np.intersect1d(student, t_ends):
            j, k = int(np.searchsorted(student, e)), int(np.searchsorted(t_ends, e))
            if prev_t is None:
                assert tgt[j] == np.inf
            else:
                assert tgt[j] == pytest.approx(cum[k + 1] - cum[prev_t + 1], abs=2e-4), (doc, e)
                checked += 1
            prev_t = k
        assert np.isnan(np.delete(tgt[:-1], np.searchsorted(student, np.intersect1d(student, t_ends)))).all()
    assert checked > 30


def test_scoring_continues_after_a_kill_and_refuses_another_teacher(ws, teacher, tmp_path, capsys):
    """SIGKILLed mid-way, a torn last line, then rerun: every document exactly once, equal to an
    uninterrupted run's rows. Another tokenizer or teacher on the same file: refused in one line."""
    code, ref = ws / "corpus" / "code.jsonl", ws / "scores.jsonl"
    docs = len(_rows(ref))  # the corpus's distinct documents (a copy is scored once)
    assert len(ref.read_text().splitlines()) == docs > 100
    out = tmp_path / "scores.jsonl"
    cmd = [sys.executable, "-m", "inference", "score", str(teacher), str(code), "-o", str(out), "--batch-size", "1",
           "--device", "cpu"]  # fmt: skip
    assert kill_after_rows(cmd, out, 3)
    written = len(out.read_text().splitlines())
    assert 3 <= written < docs, written
    with out.open("ab") as f:
        f.write(b'{"key": "ab12", "sha256": "ab12", "ends": [3, 5')
    capsys.readouterr()
    assert inference("score", str(teacher), str(code), "-o", str(out), "--device", "cpu") == 0
    err = capsys.readouterr().err
    assert f"{written} of {docs} documents scored already, continuing" in err, err[-600:]
    lines = out.read_text().splitlines()
    rows, reference = _rows(out), _rows(ref)
    assert len(lines) == len(rows) == docs and rows.keys() == reference.keys()
    assert all(rows[k]["ends"] == r["ends"] and np.allclose(_lp(rows[k]), _lp(r), equal_nan=True, atol=1e-5)
               for k, r in reference.items())  # fmt: skip
    m = json.loads((tmp_path / "scores.jsonl.manifest.json").read_text())
    assert m["complete"] and m["rows"] == docs and m["method"] == "alm-chunks-v1" and m["model_type"] == "gpt_bigcode"

    other = tmp_path / "other-teacher"  # the same weights under another tokenizer: other spans, other ids
    other.mkdir()
    for f in teacher.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    spec = json.loads((other / "tokenizer.json").read_text())
    spec["model"]["merges"] = spec["model"]["merges"][:-50]
    (other / "tokenizer.json").write_text(json.dumps(spec))
    assert inference("score", str(other), str(code), "-o", str(out), "--device", "cpu") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "holds scores of another run (different teacher, teacher_tokenizer" in errors[0]
    assert inference("score", str(teacher), str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "n.jsonl")) == 2
    assert "matches no file" in capsys.readouterr().err and not (tmp_path / "n.jsonl").exists()


def test_scores_in_several_files_give_the_same_targets(ws, teacher, tmp_path):
    """The corpus scored as two shards (two `score` runs) attaches to the same targets as one file; an
    unfinished scores file is refused in one line."""
    from data_prep.alignment import attach

    lines = (ws / "corpus" / "code.jsonl").read_text().splitlines(keepends=True)
    halves = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    halves[0].write_text("".join(lines[:50]))
    halves[1].write_text("".join(lines[50:]))
    for h in halves:
        assert (
            inference("score", str(teacher), str(h), "-o", str(h.with_suffix(".scores.jsonl")), "--device", "cpu") == 0
        )
    copy = tmp_path / "the-stack"
    copy.mkdir()
    for f in (ws / "data" / "the-stack").iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    m = attach(copy, [h.with_suffix(".scores.jsonl") for h in halves], log=lambda _: None)
    one = ws / "data" / "the-stack" / "teacher"
    split, whole = (np.fromfile(d / "text_document.bin", dtype=np.float32) for d in (copy / "teacher", one))
    # equal up to the float noise of other batches (padding changes the teacher's arithmetic a little)
    assert np.array_equal(np.isnan(split), np.isnan(whole)) and np.allclose(split, whole, atol=1e-4, equal_nan=True)
    assert m["docs_scored"] == m["docs"] and len(m["scores"]["files"]) == 2
    manifest = halves[1].with_suffix(".scores.jsonl.manifest.json")
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "complete": False}))
    with pytest.raises(ValueError, match="scoring has not finished .* rerun the same `inference score` command"):
        attach(copy, [h.with_suffix(".scores.jsonl") for h in halves], log=lambda _: None)


def test_recipe_refuses_targets_of_another_tokenizer_or_method(ws, tmp_path, monkeypatch):
    from recipes.run import prepare

    bad = tmp_path / "ws"
    (bad / "data").mkdir(parents=True)
    for name in ("the-stack", "replay"):
        src, dst = ws / "data" / name, bad / "data" / name
        dst.mkdir()
        for f in src.rglob("*"):
            if f.is_file():
                (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                (dst / f.relative_to(src)).write_bytes(f.read_bytes())
    monkeypatch.setenv("WORKSPACE", str(bad))
    args = ["checkpoint.pretrained_checkpoint=null"]
    prepare("gpt_oss_tiny_distill_starcoder", args)  # as it is: accepted
    manifest = bad / "data" / "the-stack" / "teacher" / "manifest.json"
    good = json.loads(manifest.read_text())
    for field, value, words in (("method", "uld-v1", "of method 'uld-v1'"),
                                ("student_tokenizer", "sha256:0000", "aligned to another student tokenizer")):  # fmt: skip
        manifest.write_text(json.dumps({**good, field: value}))
        with pytest.raises(ValueError, match=words) as e:
            prepare("gpt_oss_tiny_distill_starcoder", args)
        assert "\n" not in str(e.value)
    manifest.unlink()
    with pytest.raises(ValueError, match="no dataset of the blend .* has teacher targets: score the corpus"):
        prepare("gpt_oss_tiny_distill_starcoder", args)


def test_the_20b_recipe_plans_with_its_targets_counted(capsys):
    """README's `python -m recipes plan gpt_oss_20b_distill_starcoder --tokens 50e9`; context parallelism is refused."""
    from recipes.__main__ import main

    assert main(["plan", "gpt_oss_20b_distill_starcoder", "--tokens", "50e9"]) == 0
    out = capsys.readouterr().out
    assert "teacher targets (likelihood matching): +4 bytes per token" in out and "OK: the layout divides" in out
    main(["plan", "gpt_oss_20b_distill_starcoder", "model.context_parallel_size=2"])
    assert "CP=2: teacher targets are not split for context parallelism" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@pytest.mark.training
def test_metrics_log_both_terms_and_the_alm_loss_falls(ws, distilled):
    rows = metrics(ws, "alm")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    alm, lm, total = ([r[k] for r in rows] for k in ("alm loss", "lm loss", "total loss"))
    assert all(v > 0 for v in alm) and all(t > v for t, v in zip(total, lm)), (alm, lm, total)
    assert sum(alm[-3:]) < 0.9 * sum(alm[:3]), alm  # measured 0.87 in 10 steps


def _gap(teacher_scores: Path, student_scores: Path) -> float:
    """Mean over held-out chunks of |log-lik(teacher) - log-lik(student)|, nats per chunk."""
    T, S = _rows(teacher_scores), _rows(student_scores)
    total = n = 0.0
    for key, t in T.items():
        s = S[key]
        c = common_ends(t["ends"], s["ends"])
        (a, ua), (b, ub) = chunk_sums(t["ends"], _lp(t), c), chunk_sums(s["ends"], _lp(s), c)
        ok = ~(ua | ub)
        total, n = total + np.abs(a[ok] - b[ok]).sum(), n + ok.sum()
    assert n > 500
    return total / n


@pytest.mark.training
def test_distilled_student_is_closer_to_the_teacher(ws, teacher, distilled, lm_only, tmp_path):
    held = str(ws / "held.jsonl")
    for name, model in (("teacher", teacher), ("alm", distilled), ("lm", lm_only)):
        assert inference("score", str(model), held, "-o", str(tmp_path / f"{name}.jsonl"), "--device", "cpu") == 0
    kd, lm = (
        _gap(tmp_path / "teacher.jsonl", tmp_path / "alm.jsonl"),
        _gap(tmp_path / "teacher.jsonl", tmp_path / "lm.jsonl"),
    )
    # measured 11.79 vs 11.88 nats per chunk after 10 steps (deterministic on CPU: the same start, data
    # and schedule; the LM term is in both, so the gap is what the teacher's targets add)
    assert kd < lm - 0.03, dict(distilled=kd, lm_only=lm)


@pytest.mark.training
def test_resume_continues_the_same_curve(ws, distilled):
    """Stopped after half the steps (checkpoint, exit 75) and rerun: the loss terms equal the
    uninterrupted run's, step for step (the teacher targets are read where the text is)."""
    split = [f"train.train_iters={STEPS}", *_ckpt(ws, "alm-split")]
    first = run_recipe(ws, "gpt_oss_tiny_distill_starcoder", *split, f"train.exit_interval={STEPS // 2}")
    assert first.returncode == 75, first.stdout[-2000:] + first.stderr[-2000:]
    second = run_recipe(ws, "gpt_oss_tiny_distill_starcoder", *split)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    resumed, reference = metrics(ws, "alm-split"), metrics(ws, "alm")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for k in ("lm loss", "alm loss", "total loss"):
        assert [r[k] for r in resumed] == [r[k] for r in reference], k
