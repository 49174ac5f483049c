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
