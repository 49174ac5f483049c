"""Teacher data (sequence-level distillation from a teacher of another architecture and tokenizer):
prompts built from a corpus in The Stack's formats (`data_prep prompts`), completions by a tiny
random GPTBigCode (StarCoder's architecture) with a byte-level BPE tokenizer of its own, both made
here (tests/test_eval_hf_auto.py), written by `inference generate --out` (resumable after a kill),
read as they are by `data_prep pretrain` (indexed dataset) and `data_prep sft` (packed chats), with
HumanEval removed by default and the teacher recorded in every manifest; the tiny gpt-oss student
then trains on both (continued pretraining, then SFT from that checkpoint, two steps each)."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_eval_hf_auto import build
from test_training import metrics, run_recipe

ROOT = Path(__file__).resolve().parents[1]


def _stack_row(path: Path) -> dict:
    return {"content": path.read_text(), "lang": "Python", "max_stars_repo_path": str(path.relative_to(ROOT)),
            "max_stars_repo_licenses": ["Apache-2.0"]}  # fmt: skip


def write_corpus(d: Path) -> list[Path]:
    """The kit's own Python sources as The Stack rows: half in a JSONL file, half in a parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(p for sub in ("gptoss", "data_prep", "conversion", "recipes") for p in (ROOT / sub).glob("*.py"))
    rows = [_stack_row(p) for p in files if p.stat().st_size > 200]
    d.mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    (d / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:half]))
    pq.write_table(pa.Table.from_pylist(rows[half:]), d / "part-1.parquet")
    return [d / "part-0.jsonl", d / "part-1.parquet"]


def humaneval_file_row() -> dict:
    """A file that holds HumanEval/0 (prompt and solution) among other code: contaminated."""
    from inference.problems import load

    p = load("humaneval")[0]
    text = "import os\n\n\ndef helper(a, b):\n    return os.path.join(a, b)\n\n\n" + p.prompt + p.canonical_solution
    return {"content": text, "lang": "Python", "max_stars_repo_path": "x/he.py", "max_stars_repo_licenses": ["MIT"]}


def data_prep(*args: str) -> int:
    from data_prep.__main__ import main

    return main(list(args))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    return build("gpt_bigcode", tmp_path_factory.mktemp("starcoder-tiny"))


def test_prompts_from_the_corpus(tmp_path):
    corpus = write_corpus(tmp_path / "stack")
    extra = tmp_path / "stack" / "part-2.jsonl"
    doc = '"""A module."""\nimport math\n\nX = 1\n\n\ndef area(r):\n    """Area of a circle of radius r."""\n    return math.pi * r * r\n'
    rows = [humaneval_file_row(), {"content": doc, "lang": "Python"}, {"content": "tiny\n", "lang": "Python"}]
    extra.write_text("".join(json.dumps(r) + "\n" for r in rows))
    inputs = [*map(str, corpus), str(extra)]

    out = tmp_path / "head.jsonl"
    assert data_prep("prompts", *inputs, "-o", str(out), "--style", "head", "--lines", "3") == 0
    prompts = read_jsonl(out)
    sources = {r["source"].split(":")[0] for r in prompts}
    assert {str(corpus[0]), str(corpus[1])} <= sources, "JSONL and parquet inputs both read"
    assert len({r["id"] for r in prompts}) == len(prompts) == len({r["prompt"] for r in prompts})
    lines = corpus[0].read_text().splitlines()
    for r in prompts:
        if r["source"].startswith(f"{corpus[0]}:"):  # file:line of the JSONL row it came from
            content = json.loads(lines[int(r["source"].rsplit(":", 1)[1]) - 1])["content"]
            assert r["prompt"] == "".join(content.splitlines(keepends=True)[:3])
        assert r["lang"] == "python" and r["style"] == "head"
    assert not any("def has_close_elements" in r["prompt"] for r in prompts)
    m = json.loads(out.with_name("head.jsonl.manifest.json").read_text())
    assert m["kind"] == "data_prep-prompts" and m["prompts"] == len(prompts) and m["decontaminate"] == "humaneval"
    assert m["dropped"]["decontaminated"]["docs"] == 1 and m["dropped"]["decontaminated"]["examples"] == [f"{extra}:1"]
    assert m["dropped"]["too_short"]["docs"] == 1  # "tiny\n": nothing left to continue

    # docstring style: HumanEval's shape, the imports and the function up to its docstring
    out = tmp_path / "doc.jsonl"
    assert data_prep("prompts", str(extra), "-o", str(out), "--style", "docstring", "--no-decontaminate") == 0
    got = read_jsonl(out)
    assert [r["prompt"] for r in got[1:]] == ['import math\n\ndef area(r):\n    """Area of a circle of radius r."""\n']
    assert got[0]["prompt"].startswith(
        "import os\nfrom typing import List\n\ndef has_close_elements("
    )  # not decontaminated
    for r in got:
        ast.parse(r["prompt"] + "    pass\n")  # a valid function once the teacher writes a body
    assert (
        data_prep("prompts", str(extra), "-o", str(tmp_path / "x.jsonl"), "--style", "docstring", "--limit", "0") == 2
    )

    # a rerun that yields no prompt keeps the earlier output; a file the kit did not write is refused, untouched
    before = out.read_bytes()
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"content": "x = 1\n", "lang": "Python"}) + "\n")
    assert data_prep("prompts", str(empty), "-o", str(out), "--style", "docstring") == 2
    assert out.read_bytes() == before
    mine = tmp_path / "mine.jsonl"
    mine.write_text("my notes\n")
    assert data_prep("prompts", str(extra), "-o", str(mine)) == 2
    assert mine.read_text() == "my notes\n"


def _generate(teacher: str, prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", teacher, "--prompts-file", str(prompts), "--out", str(out), "--device", "cpu", *extra]


def kill_after_rows(cmd: list[str], out: Path, rows: int) -> bool:
    """Run `cmd` until `out` holds `rows` complete lines, then SIGKILL it (its whole process group).
    True when it was killed (not finished by itself first)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and not (out.exists() and out.read_bytes().count(b"\n") >= rows):
        assert time.monotonic() < deadline, f"no {rows} rows within 300 s"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def test_generate_continues_after_a_kill(teacher, tmp_path, capsys):
    """A run killed (SIGKILL) mid-way, its last line torn, then rerun: every (prompt, sample) key
    exactly once, and the very rows an uninterrupted run writes (seeds depend on the key only)."""
    from inference.__main__ import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"def f{i}(x):\n    "}) + "\n" for i in range(8)))
    args = ["--n", "2", "--temperature", "0.8", "--seed", "3", "--max-new-tokens", "12", "--batch-size", "1"]
    ref = tmp_path / "ref.jsonl"
    assert main(_generate(teacher, prompts, ref, *args)) == 0
    expected = {f"p{i}:{s}" for i in range(8) for s in range(2)}
    reference = {r["key"]: r for r in read_jsonl(ref)}
    assert set(reference) == expected and len(read_jsonl(ref)) == 16

    out = tmp_path / "gen.jsonl"
    assert kill_after_rows([sys.executable, "-m", "inference", *_generate(teacher, prompts, out, *args)], out, 1)
    written = read_jsonl(out)
    assert 1 <= len(written) < 16, len(written)
    with out.open("ab") as f:  # what a kill in the middle of a write leaves
        f.write(b'{"key": "p7:1", "completion": "def')
    capsys.readouterr()
    assert main(_generate(teacher, prompts, out, *args)) == 0
    assert f"{len(written)} of 16 generations there already, continuing" in capsys.readouterr().err
    rows = read_jsonl(out)
    assert len(rows) == 16 and {r["key"] for r in rows} == expected
    same = lambda r: {k: v for k, v in r.items() if k != "command"}  # noqa: E731 - the commands name their --out
    assert {r["key"]: same(r) for r in rows} == {k: same(r) for k, r in reference.items()}
    m = json.loads((tmp_path / "gen.jsonl.manifest.json").read_text())
    assert m["complete"] and m["rows"] == 16 and m["teacher"]["checkpoint"] == str(Path(teacher).absolute())
    assert m["sampling"]["temperature"] == 0.8 and m["sampling"]["n"] == 2 and m["sampling"]["seed"] == 3
    assert m["model_type"] == "gpt_bigcode" and m["prompts"]["count"] == 8 and m["prompts"]["file"] == str(prompts)

    before = out.read_bytes()
    assert main(_generate(teacher, prompts, out, *args)) == 0  # nothing left to do: no model loaded
    assert "all 16 generations are there already" in capsys.readouterr().err and out.read_bytes() == before
    assert json.loads((tmp_path / "gen.jsonl.manifest.json").read_text())["model_type"] == "gpt_bigcode"
    other = [*args[:3], "0.5", *args[4:]]
    assert main(_generate(teacher, prompts, out, *other)) == 2
    assert "holds generations of another run (different sampling" in capsys.readouterr().err
    assert main(["generate", teacher, "--prompt", "x", "--out", str(out), "--max-new-tokens", "2", "--overwrite"]) == 0
    assert [r["key"] for r in read_jsonl(out)] == ["#0:0"]
    mine = tmp_path / "mine.jsonl"
    mine.write_text("my own notes\n")
    assert main(_generate(teacher, prompts, mine, "--overwrite")) == 2
    assert "was not written by `inference generate --out`" in capsys.readouterr().err
    assert mine.read_text() == "my own notes\n"


@pytest.mark.training
def test_teacher_data_trains_the_student(teacher, tmp_path_factory, capsys):
    from inference.__main__ import main
    from inference.problems import load

    ws = tmp_path_factory.mktemp("ws")
    corpus = write_corpus(ws / "raw" / "stack")
    prompts = ws / "raw" / "prompts.jsonl"
    assert data_prep("prompts", *map(str, corpus), "-o", str(prompts), "--lines", "4", "--limit", "30") == 0
    # a HumanEval prompt (a short one: it fits an SFT pack) among the teacher's: its row must not reach the student
    (he,) = [p for p in load("humaneval") if p.task_id == "HumanEval/23"]
    with prompts.open("a") as f:
        f.write(json.dumps({"id": "humaneval-23", "prompt": he.prompt}) + "\n")
    gen = ws / "raw" / "teacher.jsonl"
    assert main(_generate(teacher, prompts, gen, "--max-new-tokens", "16", "--batch-size", "8")) == 0
    rows = read_jsonl(gen)
    assert len(rows) == 31 and all(r["content"] == r["prompt"] + r["completion"] for r in rows)
    assert all(r["messages"][1] == {"role": "assistant", "content": r["completion"]} for r in rows)

    code = ws / "data" / "teacher-code"
    assert data_prep("pretrain", str(gen), "-o", str(code), "-j", "1", "--no-progress") == 0
    m = json.loads((code / "manifest.json").read_text())
    assert m["decontamination"]["dropped_docs"] == 1 and list(m["decontamination"]["tasks"]["humaneval"]) == [
        "HumanEval/23"
    ]
    assert m["kept"]["docs"] == 30
    (t,) = m["teacher_data"]
    assert t["input"] == str(gen) and t["model_type"] == "gpt_bigcode" and t["sampling"]["max_new_tokens"] == 16
    assert t["teacher"]["checkpoint"] == str(Path(teacher).absolute())
    assert t["prompts"]["built_by"]["style"] == "head" and t["prompts"]["built_by"]["lines"] == 4

    sft = ws / "data" / "teacher-sft"
    capsys.readouterr()
    assert data_prep("sft", str(gen), "-o", str(sft), "--seq-length", "128", "--val-fraction", "0") == 0
    overrides = capsys.readouterr().out.split("recipe overrides:", 1)[1].split()
    s = json.loads((sft / "manifest.json").read_text())
    assert s["decontamination"]["tasks"] == {"humaneval:HumanEval/23": 1}
    assert s["teacher_data"][0]["model_type"] == "gpt_bigcode"
    kept = s["splits"]["train"]["conversations"]
    assert kept == 30 - s["dropped"].get("too_long", {}).get("docs", 0) and kept >= 20
    assert data_prep("sft", str(gen), "-o", str(ws / "sft-all"), "--seq-length", "128", "--val-fraction", "0",
                     "--no-decontaminate") == 0  # fmt: skip
    assert json.loads((ws / "sft-all" / "manifest.json").read_text())["splits"]["train"]["conversations"] == kept + 1

    # the student: continued pretraining on the teacher's code (random init: no import needed), then
    # SFT on the teacher's chats from that checkpoint
    blend = "dataset.blend=" + json.dumps([[str(code / "text_document")], [1.0]])
    cpt = run_recipe(ws, "gpt_oss_tiny_cpt_code", "train.train_iters=2", "checkpoint.pretrained_checkpoint=null", blend)
    assert cpt.returncode == 0, cpt.stdout[-2000:] + cpt.stderr[-3000:]
    assert [r["step"] for r in metrics(ws, "gpt-oss-tiny-cpt-code")] == [1, 2]
    start = "checkpoint.pretrained_checkpoint=" + str(ws / "checkpoints" / "gpt-oss-tiny-cpt-code")
    tuned = run_recipe(ws, "gpt_oss_tiny_sft", "train.train_iters=2", start, *overrides)
    assert tuned.returncode == 0, tuned.stdout[-2000:] + tuned.stderr[-3000:]
    rows = metrics(ws, "gpt-oss-tiny-sft")
    assert [r["step"] for r in rows] == [1, 2] and all(0 < r["lm loss"] < 20 for r in rows)
    assert "successfully loaded checkpoint from" in tuned.stdout + tuned.stderr


def test_oss_instruct_prompts_and_training_pairs(teacher, tmp_path):
    """--style oss-instruct (Magicoder): a 1-15 line seed of each file in the paper's prompt, the same
    on a rerun; the teacher's answer becomes a (problem -> solution) conversation that data_prep sft
    packs, and an answer without both sections is dropped and counted. The tiny random teacher
    cannot write sections, so its rows show the dropped path for real; the kept path is shown on
    two written answers (`_generation_row` is what `generate --out` writes per completion)."""
    from types import SimpleNamespace

    from data_prep.teacher import OSS_INSTRUCT_MAX_LINES, oss_instruct_prompt
    from inference.__main__ import _generation_row
    from inference.__main__ import main as inference_main

    corpus = write_corpus(tmp_path / "stack")
    extra = tmp_path / "stack" / "part-2.jsonl"
    extra.write_text(json.dumps(humaneval_file_row()) + "\n" + json.dumps({"content": "\n\n", "lang": "Python"}) + "\n")
    inputs = [*map(str, corpus), str(extra)]
    out = tmp_path / "oss.jsonl"
    assert data_prep("prompts", *inputs, "-o", str(out), "--style", "oss-instruct") == 0
    rows = read_jsonl(out)
    contents = {}
    for f in corpus[:1]:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            contents[f"{f}:{n}"] = json.loads(line)["content"]
    assert len(rows) > 10
    for r in rows:
        assert r["style"] == "oss-instruct" and r["prompt"] == oss_instruct_prompt(r["seed"], "python")
        assert 1 <= len(r["seed"].splitlines()) <= OSS_INSTRUCT_MAX_LINES and r["seed"].strip()
        if r["source"] in contents:  # the seed is consecutive lines of its own file
            assert r["seed"] in contents[r["source"]]
    assert len({r["seed"] for r in rows}) > len(rows) // 2  # seeds drawn per file, not one fixed window
    m = json.loads(out.with_name("oss.jsonl.manifest.json").read_text())
    assert m["dropped"]["decontaminated"]["docs"] == 1
    assert m["dropped"]["empty"]["docs"] == 1  # the blank file: the filters drop it first
    before = out.read_bytes()
    assert data_prep("prompts", *inputs, "-o", str(out), "--style", "oss-instruct") == 0
    assert out.read_bytes() == before  # the same seeds on a rerun

    few = tmp_path / "few.jsonl"
    few.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    gen = tmp_path / "gen.jsonl"
    assert inference_main(_generate(teacher, few, gen, "--max-new-tokens", "6")) == 0
    for r in read_jsonl(gen):
        assert r["style"] == "oss-instruct" and r["seed"] == rows[0 if r["id"] == rows[0]["id"] else 1]["seed"]
        assert "messages" not in r and "content" not in r and "[Solution]" in r["dropped"]

    args = SimpleNamespace(mode="raw")
    good = (
        "[Problem Description]\nSum a list of ints.\n\n[Solution]\n```python\ndef total(xs):\n    return sum(xs)\n```"
    )
    made = [
        _generation_row(
            args, rows[i], f"{rows[i]['id']}:0", 0, SimpleNamespace(text=t, tokens=[], finish_reason="stop"), "x"
        )
        for i, t in ((0, good), (1, "I cannot help with that."))
    ]
    assert made[0]["messages"] == [
        {"role": "user", "content": "Sum a list of ints."},
        {"role": "assistant", "content": "```python\ndef total(xs):\n    return sum(xs)\n```"},
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in made))
    sft = tmp_path / "sft"
    assert data_prep("sft", str(pairs), "-o", str(sft), "--seq-length", "256", "--no-decontaminate") == 0
    sm = json.loads((sft / "manifest.json").read_text())
    assert sm["dropped"]["missing_messages"]["docs"] == 1, sm["dropped"]
