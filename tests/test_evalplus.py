"""HumanEval+ / MBPP+ (inference.evalplus): problems written for the kit in EvalPlus's release format,
scored as EvalPlus scores them (expected outputs from the canonical solution, its comparison rules,
special oracles and time limits), base and plus side by side, through the trusted judge."""

from __future__ import annotations

import json

import pytest

from inference import _evalplus_judge as judge_part
from inference.__main__ import main
from inference.problems import load_problems
from inference.sandbox import probe_namespaces

needs_ns = pytest.mark.skipif(probe_namespaces() is not None, reason=f"namespaces unavailable: {probe_namespaces()}")

ROWS = [
    {"task_id": "HumanEval/kit/0", "entry_point": "add_abs",
     "prompt": 'def add_abs(x: int, y: int) -> int:\n    """The sum of the absolute values of x and y."""\n',
     "canonical_solution": "    return abs(x) + abs(y)\n",
     "base_input": [[1, 2], [3, 4]], "plus_input": [[-1, 2], [5, -7], [0, 0]], "atol": 0},
    {"task_id": "HumanEval/kit/1", "entry_point": "mean",
     "prompt": 'def mean(xs: list) -> float:\n    """The arithmetic mean of xs."""\n',
     "canonical_solution": "    return sum(xs) / len(xs)\n",
     "base_input": [[[1.0, 2.0]], [[0.1, 0.2, 0.3]]], "plus_input": [[[1e-3] * 7 + [1e3]]], "atol": 0},
    # find_zero (HumanEval/32's special oracle): any zero passes, not only the canonical one
    {"task_id": "HumanEval/kit/2", "entry_point": "find_zero",
     "prompt": "import math\n\ndef poly(xs: list, x: float):\n    return sum(c * math.pow(x, i) for i, c in enumerate(xs))\n\n"
               'def find_zero(xs: list):\n    """A zero of the polynomial with coefficients xs."""\n',
     "canonical_solution": "    x = 0.0\n    for _ in range(100):\n        d = sum(i * c * x ** (i - 1) for i, c in enumerate(xs) if i)\n"
                           "        x -= poly(xs, x) / d\n    return x\n",
     "base_input": [[[-6, 11, -6, 1]]], "plus_input": [[[-2, 1]]], "atol": 1e-6},
    # Mbpp/2: its inputs are tuples (JSON has lists) and its answers compare as sets
    {"task_id": "Mbpp/2", "entry_point": "similar_elements",
     "prompt": '"""\nWrite a function to find the shared elements from the given two tuples.\n'
               'assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))\n"""\n',
     "canonical_solution": "def similar_elements(test_tup1, test_tup2):\n  return tuple(set(test_tup1) & set(test_tup2))\n",
     "base_input": [[[3, 4, 5, 6], [5, 7, 4, 10]]], "plus_input": [[[1, 2, 3], [3, 2, 9]], [[], [1]]], "atol": 0},
]  # fmt: skip
# (task, completion, base, plus (= EvalPlus's base and plus both), reason words)
SAMPLES = [
    ("HumanEval/kit/0", "    return abs(x) + abs(y)\n", "passed", "passed", ""),
    ("HumanEval/kit/0", "    return x + y\n", "passed", "failed", "plus input 0: 1 != expected 3"),
    ("HumanEval/kit/0", "    return x * y\n", "failed", "failed", "base input 0: 2 != expected 3"),
    ("HumanEval/kit/0", "    while x < 0:\n        pass\n    return abs(x) + abs(y)\n", "passed", "timeout",
     "plus input 0 ran past its 4 s"),  # max(4 s, 4 x the canonical time)
    ("HumanEval/kit/0", "    raise RuntimeError('base passed, plus passed')\n", "failed", "failed", "the sample raised"),
    ("HumanEval/kit/1", "    import math\n    return math.fsum(xs) / len(xs)\n", "passed", "passed", ""),  # within 1e-6
    ("HumanEval/kit/1", "    return round(sum(xs) / len(xs))\n", "failed", "failed", "base input 0: 2 != expected 1.5"),
    ("HumanEval/kit/1", "    return sum(xs) / len(xs) + 1e-3\n", "failed", "failed", "1.501 != expected 1.5"),
    ("HumanEval/kit/2", "    return 3.0 if len(xs) == 4 else 2.0\n", "passed", "passed", ""),
    ("HumanEval/kit/2", "    return 2.0000000001 if len(xs) == 4 else 2.0\n", "passed", "passed", ""),
    ("HumanEval/kit/2", "    return 1.0 if len(xs) == 4 else 0.0\n", "passed", "failed", "0.0 is not a zero"),
    ("Mbpp/2", "def similar_elements(a, b):\n    assert type(a) is tuple and type(b) is tuple\n"
               "    return tuple(sorted(set(a) & set(b), reverse=True))\n", "passed", "passed", ""),
    ("Mbpp/2", "def similar_elements(a, b):\n    return list(set(a) & set(b))\n", "passed", "passed", ""),
    ("Mbpp/2", "def similar_elements(a, b):\n    return (4, 5)\n", "passed", "failed", "plus input 0: (4, 5) != expected (2, 3)"),
]  # fmt: skip


def _write(tmp_path, rows=ROWS):
    path = tmp_path / "HumanEvalPlus-kit.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@needs_ns
def test_base_and_plus_as_evalplus_scores_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))
    problems = _write(tmp_path)
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c, *_ in SAMPLES))
    assert main(["eval", "code", "--problems", str(problems), "--samples", str(samples), "--k", "1"]) == 0
    assert "plus pass@1" in capsys.readouterr().out
    rec = json.loads((tmp_path / "ws/results/samples/eval_code.json").read_text())
    got = [(p["task_id"], b, s, e) for p in rec["problems"] for b, s, e in zip(p["base_statuses"], p["statuses"], p["errors"])]
    assert [g[:3] for g in got] == [(t, b, s) for t, _, b, s, _ in SAMPLES]
    for (_, _, _, err), (*_, words) in zip(got, SAMPLES):
        assert words in err, (words, err)
    by_task: dict[str, list] = {}
    for t, _, b, s, _ in SAMPLES:
        by_task.setdefault(t, []).append((b == "passed", s == "passed"))
    assert rec["pass_at_k_base"]["1"] == pytest.approx(sum(sum(b for b, _ in v) / len(v) for v in by_task.values()) / 4)
    assert rec["pass_at_k"]["1"] == pytest.approx(sum(sum(s for _, s in v) / len(v) for v in by_task.values()) / 4)
    assert rec["pass_at_k"]["1"] < rec["pass_at_k_base"]["1"]
    # the report puts the two figures side by side
    assert main(["report", "--name", "plus", str(tmp_path / "ws/results/samples")]) == 0
    md = (tmp_path / "ws/results/plus/report.md").read_text()
    assert f"| samples (plus) | 4 | 5 | {rec['pass_at_k']['1']:.4f} |" in md  # 5: the first problem's n
    assert f"| samples (base) | 4 | 5 | {rec['pass_at_k_base']['1']:.4f} |" in md
    assert "| samples | file | 3 |" in md  # the harness settings (n: the fewest samples): the problem set, not the per-problem list


@needs_ns
def test_canonical_solutions_pass_both_and_a_broken_one_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))
    assert main(["eval", "code", "--problems", str(_write(tmp_path)), "--canonical", "--k", "1"]) == 0
    rec = json.loads((tmp_path / "ws/results/canonical/eval_code.json").read_text())
    assert rec["pass_at_k"] == rec["pass_at_k_base"] == {"1": 1.0}
    broken = [{**ROWS[0], "canonical_solution": "    return abs(x) // 0\n"}]
    capsys.readouterr()
    assert main(["eval", "code", "--problems", str(_write(tmp_path, broken)), "--canonical"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("HumanEval/kit/0: computing the expected outputs failed: the canonical solution raised "
                        "ZeroDivisionError: integer division or modulo by zero on base input 0"), err  # fmt: skip
    assert len(err.splitlines()) == 1


def test_mbpp_inputs_get_back_their_python_types(tmp_path):
    rows = [{**ROWS[3], "task_id": f"Mbpp/{n}", "base_input": [inp], "plus_input": []} for n, inp in
            ((2, [[1, 2], [3]]), (106, [[1], [2, 3]]), (124, [1, "1+2j"]), (580, [[1, [2, [3]]], 4]),
             (722, [{"a": [1, 2]}, 5]), (3, [[1, 2]]))]  # fmt: skip
    got = {p.task_id: p.evalplus.base_input[0] for p in load_problems(_write(tmp_path, rows))}
    assert got["Mbpp/2"] == [(1, 2), (3,)] and got["Mbpp/106"] == [[1], (2, 3)]
    assert got["Mbpp/124"] == (1.0, 1 + 2j) and got["Mbpp/580"] == ((1, (2, (3,))), 4)
    assert got["Mbpp/722"] == [{"a": (1, 2)}, 5] and got["Mbpp/3"] == [[1, 2]]  # not in the table: as JSON has it
    assert all(p.evalplus.dataset == "mbpp" for p in load_problems(_write(tmp_path, rows)))


def test_comparison_rules_are_evalplus():
    m = judge_part.matches
    assert m("humaneval", "f", [], 2, 2, 0) == (True, 0)
    assert m("humaneval", "f", [], 1.0000001, 1.0, 0) == (True, 1e-6)  # atol 0 and a float: 1e-6
    assert m("humaneval", "f", [], 1.00001, 1.0, 0)[0] is False
    assert m("humaneval", "f", [], 1, 1.0000001, 0)[0] is False  # not exact: the types must agree
    assert m("humaneval", "f", [], [1.0, 2.0], [1.0, 2.0000001], 0)[0] is True
    assert m("humaneval", "f", [], (1.0, 2.0), [1.0, 2.0000001], 0)[0] is False  # a tuple for a list
    assert m("humaneval", "f", [], [1.0], [1.0, 2.0], 0)[0] is False
    assert m("humaneval", "f", [], [], [], 0) == (True, 0)  # an empty list is not "floats"
    assert m("mbpp", "check_str", [], "match", True, 0)[0] is True  # not-None tasks: a value stands for True
    assert m("mbpp", "check_str", [], None, True, 0)[0] is False
    assert m("mbpp", "check_str", [], False, True, 0)[0] is False  # a bool compares as a bool
    assert m("mbpp", "sum_div", [], 0, 7, 0)[0] is True  # Mbpp/295's oracle
    assert m("mbpp", "surface_Area", [3, 4], 35, 999, 0)[0] is True  # Mbpp/581's formula: round(9 + 6 x 4.272)
    assert m("mbpp", "Diff", [], [2, 1], [1, 2], 0)[0] is True
    # atol raised by one float answer stays raised for the inputs after it (EvalPlus's loop variable)
    calls = iter([1.0, [1, 2.0000001]])
    cases = [([0], 1.0, 1.0), ([1], [1, 2.0], 1.0)]  # [1, 2.0]: not all floats, no atol of its own
    assert judge_part.run_phase(lambda _: next(calls), "base", cases, "humaneval", "f", 0) == "passed"
    with pytest.raises(judge_part.Mismatch, match=r"^base input 0: \[1, 2.0000001\] != expected \[1, 2.0\]$"):
        judge_part.run_phase(lambda _: [1, 2.0000001], "base", cases[1:], "humaneval", "f", 0)
    with pytest.raises(judge_part.Mismatch, match=r"^base input 0: 3.0000004 != expected 3$"):
        judge_part.run_phase(lambda _: 3.0000004, "base", [([1], 3, 1.0)], "humaneval", "f", 0)  # an int: no atol
