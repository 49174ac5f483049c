"""inference.codeeval and inference.report: pass@k, the shipped problems, scoring in the sandbox,
the whole generate -> post-process -> score pipeline, the CLI and the report.

The "models" here are stand-ins, which is fine for scoring tests: `ScriptedBackend` is a backend
whose logits put all the mass on the next token of a scripted answer (the canonical solution, or
wrong code), so the real sampling loop, stop sequences, harmony parsing and code extraction run
unchanged; no neural network is involved. The model backends are tested in test_inference.py.
"""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from math import comb
from pathlib import Path

import pytest
import torch

from gptoss.tokenizer import encoding
from inference import chat, codeeval
from inference.codeeval import HUMANEVAL_STOPS, SHIPPED, load_problems, pass_at_k, score
from inference.sampling import SamplingParams
from inference.sandbox import Limits, probe_namespaces

needs_ns = pytest.mark.skipif(probe_namespaces() is not None, reason=f"namespaces unavailable: {probe_namespaces()}")


# ---- pass@k ---------------------------------------------------------------------------------------


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Enumerate every k-subset of n samples (the first c correct): the share containing a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


def test_pass_at_k_equals_brute_force_and_the_exact_formula():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), abs=1e-12), (n, c, k)
    # large n: the product form against exact rational arithmetic (C(200, 10) ~ 2e16)
    for n, c, k in [(200, 37, 10), (200, 1, 100), (1000, 999, 1), (1000, 3, 500)]:
        exact = 1 - Fraction(comb(n - c, k), comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


# ---- problems and completions ----------------------------------------------------------------------


def test_shipped_problems_are_well_formed():
    problems = load_problems(SHIPPED)
    assert len(problems) >= 10
    assert len({p.task_id for p in problems}) == len(problems)
    for p in problems:
        assert p.prompt.startswith("def ") and f"def {p.entry_point}(" in p.prompt
        assert "def check(candidate)" in p.test and p.canonical_solution.strip()
        # a canonical solution must survive the harness's own truncation
        assert codeeval.truncate_completion(p.canonical_solution) == p.canonical_solution, p.task_id


def test_bad_problem_files_name_the_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"task_id": "a", "prompt": "x", "test": "y", "entry_point": "f"}\n{"task_id": "b", "prompt": 1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: missing string field\(s\) prompt, test, entry_point"):
        load_problems(f)
    f.write_text("not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not JSON"):
        load_problems(f)
    with pytest.raises(ValueError, match="no such problem file"):
        load_problems(tmp_path / "missing.jsonl")


def test_mbpp_format_is_converted(tmp_path):
    f = tmp_path / "mbpp.jsonl"
    row = {"task_id": 11, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
           "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "test_setup_code": ""}  # fmt: skip
    f.write_text(json.dumps(row) + "\n")
    (p,) = load_problems(f)
    assert p.task_id == "11" and "assert add(1, 2) == 3" in p.prompt and p.entry_point == ""
    assert "assert add(0, 0) == 0" in p.test
    if probe_namespaces() is None:  # the asserts call the sample's `add` across the boundary
        res = score([p], [["def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n"]], ks=(1,))
        assert res.problems[0].statuses == ["passed", "failed"], res.problems[0].errors
        assert "assert add(1, 2) == 3" in res.problems[0].errors[1]


@pytest.mark.parametrize("stop", HUMANEVAL_STOPS)
def test_completion_is_cut_at_the_humaneval_stops(stop):
    body = "    return x + 1\n"
    assert codeeval.truncate_completion(body + stop + "rest()\n") == body
    assert codeeval.truncate_completion(body) == body


def test_chat_code_extraction():
    assert codeeval.extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1\n"
    assert codeeval.extract_code("```\nx = 1\n```") == "x = 1\n"
    assert codeeval.extract_code("no fence") == "no fence"


# ---- scoring in the sandbox --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problems():
    return load_problems(SHIPPED)


@needs_ns
def test_canonical_solutions_pass_and_wrong_ones_fail(problems):
    good = score(problems, codeeval.canonical_completions(problems), ks=(1,))
    assert good.pass_at_k == {"1": 1.0}, [(p.task_id, p.errors) for p in good.problems if p.c == 0]
    assert good.sandbox == "namespaces"
    wrong = score(problems, [["    return None\n"] for _ in problems], ks=(1,))
    assert wrong.pass_at_k == {"1": 0.0}
    assert all(p.statuses == ["failed"] for p in wrong.problems)
    assert any("AssertionError" in p.errors[0] for p in wrong.problems)


@needs_ns
def test_hostile_completions_are_scored_as_failures(problems, tmp_path):
    """clamp(x, lo, hi) answered correctly *and* with something nasty first: every sample fails."""
    clamp = next(p for p in problems if p.entry_point == "clamp")
    right = "    return max(lo, min(hi, x))\n"
    outside = tmp_path / "escaped.txt"
    nasty = [
        "    while True:\n        pass\n",  # infinite loop
        "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
        "    x = bytearray(8 << 30)\n" + right,  # large allocation
        f"    open({str(outside)!r}, 'w').write('x')\n" + right,  # write outside the sandbox
        "    import sys\n    sys.exit(0)\n",  # exit 0 before the tests finish
    ]
    res = score([clamp], [[right, *nasty]], ks=(1,), limits=Limits(timeout_s=2, memory_bytes=512 << 20), workers=2)
    statuses = res.problems[0].statuses
    assert statuses[0] == "passed"
    assert statuses[1:] == ["timeout", "timeout", "failed", "failed", "failed"], statuses
    assert res.problems[0].c == 1 and res.pass_at_k["1"] == pytest.approx(1 / 6)
    assert not outside.exists()


# ---- the whole pipeline with a scripted stand-in model -----------------------------------------------


class ScriptedBackend:
    """A stand-in model: for a prompt it knows, all logit mass on the next token of its script.

    Not a neural network; it lets the real decoding loop, stop handling and post-processing run.
    """

    name = "scripted"

    def __init__(self, scripts: list[tuple[list[int], list[int]]], vocab: int = 201_088) -> None:
        self.scripts, self.vocab, self.calls = scripts, vocab, 0

    def next_token_logits(self, sequences: list[list[int]]) -> torch.Tensor:
        self.calls += 1
        out = torch.full((len(sequences), self.vocab), -1e4)
        for row, seq in enumerate(sequences):
            prompt, script = next((p, s) for p, s in self.scripts if seq[: len(p)] == p)
            step = len(seq) - len(prompt)
            out[row, script[step] if step < len(script) else 0] = 1e4
        return out


def _raw_scripts(problems, answer):
    enc = encoding()
    return [
        (enc.encode(p.prompt, allowed_special="all"), enc.encode(answer(p), allowed_special="all")) for p in problems
    ]


@needs_ns
def test_pipeline_with_a_model_that_answers_canonically(problems):
    # the canonical body, then what a base model typically writes next: the harness must cut it
    backend = ScriptedBackend(
        _raw_scripts(problems, lambda p: p.canonical_solution + "\n\ndef main():\n    print(1)\n")
    )
    params = SamplingParams(max_new_tokens=400)
    completions = codeeval.sample_completions(backend, problems, 1, params, "raw", batch_size=4)
    assert [c[0] for c in completions] == [p.canonical_solution + "\n" for p in problems]
    assert score(problems, completions, ks=(1,)).pass_at_k == {"1": 1.0}


@needs_ns
def test_pipeline_with_a_model_that_answers_wrongly(problems):
    backend = ScriptedBackend(_raw_scripts(problems, lambda p: "    return 0\n\n\ndef other():\n"))
    completions = codeeval.sample_completions(
        backend, problems, 2, SamplingParams(max_new_tokens=50, temperature=0.7), "raw"
    )
    assert all(c == ["    return 0\n\n", "    return 0\n\n"] for c in completions)
    res = score(problems, completions, ks=(1, 2))
    assert res.pass_at_k == {"1": 0.0, "2": 0.0}


@needs_ns
def test_pipeline_in_chat_mode(problems):
    """An SFT model answers in harmony: reasoning, then the function in a fenced block."""
    enc = encoding()
    subset = problems[:3]
    scripts = []
    for p in subset:
        prompt = chat.render_chat(codeeval.CHAT_INSTRUCTION.format(prompt=p.prompt), reasoning_effort="low")
        answer = (
            "<|channel|>analysis<|message|>Think about it.<|end|><|start|>assistant<|channel|>final<|message|>"
            f"Here it is:\n```python\n{p.prompt}{p.canonical_solution}```<|return|>"
        )
        scripts.append((prompt, enc.encode(answer, allowed_special="all")))
    completions = codeeval.sample_completions(
        ScriptedBackend(scripts), subset, 1, SamplingParams(max_new_tokens=600), "chat"
    )
    assert completions[0][0] == subset[0].prompt + subset[0].canonical_solution
    assert score(subset, completions, mode="chat", ks=(1,)).pass_at_k == {"1": 1.0}


# ---- CLI and report --------------------------------------------------------------------------------


@needs_ns
def test_cli_canonical_then_report(tmp_path, monkeypatch, capsys):
    from inference.__main__ import main

    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))
    assert main(["eval", "code", "--canonical", "--limit", "4", "--label", "reference"]) == 0
    result = json.loads((tmp_path / "ws/results/reference/eval_code.json").read_text())
    assert result["pass_at_k"] == {"1": 1.0} and len(result["problems"]) == 4
    assert result["command"] == "python -m inference eval code --canonical --limit 4 --label reference"

    other = dict(result, label="broken", command="python -m inference eval code broken-model")
    other["pass_at_k"] = {"1": 0.25}
    other["problems"] = [dict(p, c=int(i == 0)) for i, p in enumerate(result["problems"])]
    (tmp_path / "broken.json").write_text(json.dumps(other))
    loss = {"kind": "loss", "label": "reference", "command": "python -m inference eval loss ref --data code=P",
            "datasets": {"code": {"loss": 1.5, "perplexity": 4.4817, "tokens": 1000}}}  # fmt: skip
    (tmp_path / "eval_loss.json").write_text(json.dumps(loss))
    assert (
        main(
            [
                "report",
                "--name",
                "cmp",
                str(tmp_path / "ws/results/reference"),
                str(tmp_path / "broken.json"),
                str(tmp_path / "eval_loss.json"),
            ]
        )
        == 0
    )
    out = tmp_path / "ws/results/cmp"
    md = (out / "report.md").read_text()
    assert "| reference | 4 | 1 | 1.0000 |" in md and "| broken | 4 | 1 | 0.2500 |" in md
    assert "| reference | 1.5000 (4.48) |" in md
    assert "| kit/0 | 1/1 | 1/1 |" in md and "| kit/1 | 1/1 | 0/1 |" in md
    assert "python -m inference eval code --canonical --limit 4 --label reference" in md
    assert "python -m inference eval code broken-model" in md and "python -m inference report --name cmp" in md
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "report.png"]  # no temporary files left


def test_cli_bad_input_exits_2(tmp_path, capsys):
    from inference.__main__ import main

    assert main(["eval", "code", "--problems", str(tmp_path / "nope.jsonl"), "--canonical"]) == 2
    assert "nope.jsonl: no such problem file" in capsys.readouterr().err
    assert main(["eval", "code"]) == 2
    assert "give a checkpoint directory" in capsys.readouterr().err
    assert main(["eval", "code", str(tmp_path / "missing-ckpt"), "--n", "4", "--temperature", "0"]) == 2
    assert main(["generate", str(tmp_path / "missing-ckpt"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "missing-ckpt: no such checkpoint" in err and "python -m conversion import" in err
    assert main(["report", "--name", "x", str(tmp_path)]) == 2
    assert main(["generate", "--prompt", "x"]) == 2  # neither a checkpoint nor an endpoint
    assert "give a checkpoint directory, or --endpoint URL --model NAME" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["generate", "--temperature", "hot"])  # argparse: not a number
    assert e.value.code == 2
    assert Path(tmp_path).exists()
