"""The report puts the published StarCoder rows next to measured HumanEval rows, marked with their
source, and says where a measured row's harness setting differs. The measured rows are real result
files of `eval code --samples` (a tiny one each), so the report reads what the CLI writes."""

from __future__ import annotations

import json

import pytest

from inference.__main__ import main
from inference.problems import load
from inference.sandbox import probe_namespaces

pytestmark = pytest.mark.skipif(probe_namespaces() is not None, reason=f"namespaces unavailable: {probe_namespaces()}")


def test_published_rows_and_setting_differences(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))
    problems = load("humaneval")[:2]
    f = tmp_path / "a.jsonl"
    f.write_text("".join(json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n" for p in problems))
    assert main(["eval", "code", "--problems", "humaneval", "--samples", str(f), "--label", "cpt"]) == 0
    assert main(["eval", "code", "--problems", "kit", "--canonical", "--limit", "2", "--label", "kit-smoke"]) == 0
    res = tmp_path / "ws/results"
    # a second measured row with other settings (as a model run with --n 1 greedy would record them)
    r = json.loads((res / "cpt/eval_code.json").read_text())
    r.update(label="base", temperature=0.0, mode="chat", samples_file=None, pass_at_k={"1": 0.5})
    (tmp_path / "base.json").write_text(json.dumps(r))
    assert main(["report", "--name", "cmp", str(res / "cpt"), str(tmp_path / "base.json")]) == 0
    md = (res / "cmp/report.md").read_text()
    assert "| cpt | 2 | 1 | 1.0000 |" in md and "| base | 2 | 1 | 0.5000 |" in md
    assert "| StarCoder-15B (published) | 164 | - | 0.3360 |" in md
    assert "| StarCoderBase-15B (published) | 164 | - | 0.3040 |" in md
    assert "| StarCoder2-15B (published) | 164 | - | 0.4630 |" in md
    assert "arXiv:2305.06161" in md and "arXiv:2402.19173" in md
    assert "temperature differs between measured rows: cpt None, base 0.0" in md
    assert "mode differs between measured rows: cpt raw, base chat" in md
    assert "cpt: 2 of the 164 HumanEval problems; published rows use all 164" in md
    assert "base: chat mode (harmony); published rows are raw completion" in md
    assert "cpt: completions made elsewhere" in md
    # not HumanEval: no published rows (they would compare different problems)
    assert main(["report", "--name", "kit", str(res / "kit-smoke")]) == 0
    kit_md = (res / "kit/report.md").read_text()
    assert "(published)" not in kit_md and "All measured rows used the same settings." in kit_md


# ---- report --compare: the StarCoder table ----------------------------------------------------------

JS_PROMPT = "//Add two numbers\nfunction add(x, y){\n"
JS_TESTS = ("const assert = require('node:assert');\n\n\nfunction test() {\n  let candidate = add;\n"
            "  assert.deepEqual(candidate(2, 3),5);\n  assert.deepEqual(candidate(-1, 1),0);\n}\n\ntest();")  # fmt: skip


def _mbpp_rows() -> list[dict]:
    """Every MBPP task id (1-974), as google-research's mbpp.jsonl numbers them; problem i returns i."""
    return [{"task_id": i, "text": f"Write a function that returns {i}.", "code": f"def f{i}():\n    return {i}",
             "test_list": [f"assert f{i}() == {i}"], "test_setup_code": ""} for i in range(1, 975)]  # fmt: skip


def test_compare_puts_every_benchmark_beside_the_published_rows_and_marks_other_settings(tmp_path, monkeypatch, capsys):
    """Measured results from the CLI (HumanEval from --samples, MBPP's test split by its canonical
    solutions, MultiPL-E JavaScript rows scored in the sandbox) in one models x benchmarks table with
    the published StarCoder rows, their sources, and a mark for each setting that differs."""
    from inference import multiple

    why = multiple.missing_toolchain(multiple.language("js"))
    if why:
        pytest.skip(why)
    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))
    res = tmp_path / "ws/results"
    he = load("humaneval")[:2]
    (tmp_path / "he.jsonl").write_text("".join(json.dumps({"task_id": p.task_id, "completion": p.canonical_solution})
                                               + "\n" for p in he))  # fmt: skip
    assert main(["eval", "code", "--problems", "humaneval", "--samples", str(tmp_path / "he.jsonl"), "--label",
                 "cpt", "--out", str(res / "cpt/eval_humaneval.json")]) == 0  # fmt: skip
    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text("".join(json.dumps(r) + "\n" for r in _mbpp_rows()))
    capsys.readouterr()
    assert main(["eval", "code", "--problems", str(mbpp), "--canonical", "--limit", "2", "--label", "cpt",
                 "--out", str(res / "cpt/eval_mbpp.json")]) == 0  # fmt: skip
    assert "MBPP's 500 test problems (task_id 11-510) of its 974" in capsys.readouterr().err
    rec = json.loads((res / "cpt/eval_mbpp.json").read_text())
    assert rec["problem_set"] == "mbpp" and [p["task_id"] for p in rec["problems"]] == ["11", "12"]
    rows = [{"name": f"HumanEval_{i}_add", "language": "js", "prompt": JS_PROMPT, "tests": JS_TESTS,
             "stop_tokens": ["\nfunction ", "\n/*", "\n//", "\nconsole.log"], "doctests": "transform",
             "prompt_terminology": "verbatim"} for i in range(2)]  # fmt: skip
    (tmp_path / "humaneval-js.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "js.jsonl").write_text(json.dumps({"task_id": "HumanEval_0_add", "completion": "  return x + y;\n}\n"})
                                       + "\n" + json.dumps({"task_id": "HumanEval_1_add", "completion": "  return 0;\n}\n"})
                                       + "\n")  # fmt: skip
    assert main(["eval", "code", "--problems", str(tmp_path / "humaneval-js.jsonl"), "--samples",
                 str(tmp_path / "js.jsonl"), "--label", "cpt", "--out", str(res / "cpt/eval_js.json")]) == 0  # fmt: skip
    rec = json.loads((res / "cpt/eval_js.json").read_text())
    assert rec["problem_set"] == "multipl-e-humaneval" and rec["prompt_variants"] == ["transform"]
    assert [p["language"] for p in rec["problems"]] == ["js", "js"]
    capsys.readouterr()

    assert main(["report", "--compare", "--name", "table", str(res / "cpt")]) == 0
    printed = capsys.readouterr().out
    md = (res / "table/report.md").read_text()
    assert md in printed and "| model | HumanEval | HumanEval+ | MBPP | MBPP+ | MultiPL-E C++ |" in md
    table = [line for line in md.split("## pass@1")[1].split("Published figures")[0].splitlines() if line.startswith("| ")]
    split = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    col = {name: i - 1 for i, name in enumerate(split[0])}
    cells = {row[0]: row[1:] for row in split[1:]}
    cpt = cells["cpt"]
    assert cpt[col["HumanEval"]].startswith("1.0000 *(") and cpt[col["MBPP"]].startswith("1.0000 *(")
    assert cpt[col["MultiPL-E JavaScript"]].startswith("0.5000 *(") and cpt[col["HumanEval+"]] == "-"
    sc = cells["StarCoder-15B (published)"]
    assert sc[col["HumanEval"]] == "0.3360 [1]" and sc[col["MBPP"]] == "0.5270 [1]"
    assert sc[col["MultiPL-E JavaScript"]] == "0.3079 [1]" and sc[col["HumanEval+"]].startswith("0.2930 [")
    assert cells["StarCoder2-15B (published)"][col["HumanEval"]].startswith("0.4630 [")
    assert cells["StarCoderBase-15B (published)"][col["MultiPL-E JavaScript"]] == "-"  # not transcribed: no figure
    assert "https://huggingface.co/bigcode/starcoder" in md and "arXiv:2402.19173" in md
    assert "sampling: greedy (n=1)" in md and "sampling: not stated by the source" in md
    notes = md.split("## Where a measured row's settings differ")[1].split("## Measured settings")[0]
    assert "cpt, HumanEval: " in notes and "2 problems, published 164" in notes
    assert "completions made elsewhere" in notes
    assert "cpt, MBPP: " in notes and "2 problems, published 500" in notes
    assert "sampling greedy (n=1); the source states none" in notes  # --canonical: temperature 0
    assert "prompt variant transform; published: MultiPL-E's reworded prompts" in notes
    png = (res / "table/report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # one label, two results on one benchmark: which one counts is the user's call, in one line
    (tmp_path / "again").mkdir()
    (tmp_path / "again/eval_code.json").write_text((res / "cpt/eval_humaneval.json").read_text())
    assert main(["report", "--compare", "--name", "t2", str(res / "cpt"), str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "two results of label 'cpt' on HumanEval" in err and len(err.strip().splitlines()) == 1


def test_compare_needs_code_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))
    loss = {"kind": "loss", "label": "x", "command": "c", "datasets": {"d": {"loss": 1.0, "perplexity": 2.7, "tokens": 1}}}
    (tmp_path / "eval_loss.json").write_text(json.dumps(loss))
    assert main(["report", "--compare", "--name", "t", str(tmp_path / "eval_loss.json")]) == 2
    assert "--compare needs `eval code` results" in capsys.readouterr().err
    (tmp_path / "eval_code.json").write_text(json.dumps({"kind": "code", "label": "x", "command": "c"}))
    assert main(["report", "--compare", "--name", "t", str(tmp_path / "eval_code.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "eval_code.json: not a whole eval_code.json (KeyError" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ws/results/t/report.md").exists()  # nothing half-written


def test_mbpp_rows_keep_bigcodes_prompt_and_stops_from_jsonl_and_parquet(tmp_path):
    """MBPP as bigcode-evaluation-harness prompts it: the description and the first test in a
    docstring, its stop words (helpers after the function survive, the asserts it writes do not),
    the 500 test problems of a full file; the `mbpp` dataset's parquet reads the same."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from inference import codeeval
    from inference.problems import MBPP_STOPS, load_problems, mbpp_test_split, problem_set

    rows = _mbpp_rows()
    (tmp_path / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows[10:510]), tmp_path / "test-00000-of-00001.parquet")
    full = load_problems(tmp_path / "mbpp.jsonl")
    split = mbpp_test_split(full)
    assert len(full) == 974 and [p.task_id for p in split] == [str(i) for i in range(11, 511)]
    assert problem_set(tmp_path / "mbpp.jsonl", full) == "file" and problem_set("x", split) == "mbpp"
    parquet = load_problems(tmp_path / "test-00000-of-00001.parquet")
    assert [(p.task_id, p.prompt, p.test, p.stop_tokens) for p in parquet] == [
        (p.task_id, p.prompt, p.test, p.stop_tokens) for p in split]  # fmt: skip
    p = split[0]
    assert p.prompt == '"""\nWrite a function that returns 11.\nassert f11() == 11\n"""\n' and p.stop_tokens == MBPP_STOPS
    assert codeeval.stops_of(p) == MBPP_STOPS and mbpp_test_split(full[:400]) is None
    text = "def f11():\n    return g()\ndef g():\n    return 11\nassert f11() == 11\n"
    assert codeeval.truncate_completion(text, codeeval.stops_of(p)) == "def f11():\n    return g()\ndef g():\n    return 11"


@pytest.mark.parametrize(("doctests", "terminology", "variant"), [
    ("transform", "reworded", "reworded"), ("keep", "verbatim", "keep"), ("transform", "verbatim", "transform"),
    ("remove", "verbatim", "remove"), (None, None, "")])  # fmt: skip
def test_multipl_e_rows_keep_their_prompt_variant(tmp_path, doctests, terminology, variant):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from inference.problems import load_problems

    row = {"name": "HumanEval_0_add", "language": "js", "prompt": JS_PROMPT, "tests": JS_TESTS, "stop_tokens": ["\n}"]}
    row.update({k: v for k, v in (("doctests", doctests), ("prompt_terminology", terminology)) if v is not None})
    (tmp_path / "r.jsonl").write_text(json.dumps(row) + "\n")
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "r.parquet")
    assert [load_problems(tmp_path / f)[0].prompt_variant for f in ("r.jsonl", "r.parquet")] == [variant, variant]


def test_a_cell_with_the_published_settings_gets_no_mark_and_each_other_setting_one():
    from inference.compare import Cell, differences
    from inference.published import EVALPLUS_LEADERBOARD, Sampling, Source

    greedy = {"n": 1, "temperature": 0.0, "top_p": 1.0, "mode": "raw", "samples_file": None}
    assert differences("HumanEval+", Cell(0.4, 164, greedy), EVALPLUS_LEADERBOARD) == []
    sampled = dict(greedy, n=20, temperature=0.2, top_p=0.95)
    assert differences("HumanEval+", Cell(0.4, 164, sampled), EVALPLUS_LEADERBOARD) == [
        "sampling n=20 T=0.2 top-p 0.95, published greedy (n=1)"]  # fmt: skip
    paper = Source("a paper", "https://example.org", Sampling(n=50, temperature=0.2, top_p=0.95))
    assert differences("HumanEval", Cell(0.4, 164, dict(sampled, mode="chat")), paper) == [
        "n 20, published 50", "chat mode (harmony); published rows are raw completion"]  # fmt: skip
    assert differences("MultiPL-E Java", Cell(0.4, 158, dict(sampled, n=50, prompt_variants=["reworded"])), paper) == []


def test_mbpp_completions_are_cut_at_mbpps_stops_and_keep_their_helpers(tmp_path):
    """Generated through the real decoding loop (a scripted model): an MBPP completion keeps the
    helper function it writes after its own (HumanEval's "\\ndef " stop would cut it, and the sample
    would fail with a NameError) and loses the asserts and prints it writes next."""
    from test_eval import ScriptedBackend, _raw_scripts

    from inference import codeeval
    from inference.problems import load_problems
    from inference.sampling import SamplingParams

    (tmp_path / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _mbpp_rows()[10:12]))
    problems = load_problems(tmp_path / "mbpp.jsonl")

    def answer(p):
        i = p.task_id
        return f"def f{i}():\n    return helper()\ndef helper():\n    return {i}\nassert f{i}() == {i}\nprint(f{i}())\n"

    backend = ScriptedBackend(_raw_scripts(problems, answer))
    comps = codeeval.sample_completions(backend, problems, 1, SamplingParams(max_new_tokens=60), "raw", batch_size=2)
    assert [c[0] for c in comps] == [f"def f{i}():\n    return helper()\ndef helper():\n    return {i}" for i in (11, 12)]
    assert codeeval.score(problems, comps, ks=(1,)).pass_at_k == {"1": 1.0}
