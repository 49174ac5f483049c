"""Curves over a training run: `eval code|loss RUN --iterations all|new` evaluates each saved
checkpoint once, appends to the run's curve.jsonl (resumable: `new` skips what is there), and
`report` tabulates and plots pass@1 and validation loss against tokens seen. The run directory
is a real Megatron checkpoint (a random tiny gpt-oss imported by the kit) saved at three
iterations with the run_config.yaml megatron-bridge writes (batch size and sequence length)."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
from tiny_data import write_indexed_dataset

from conversion.random_init import make_random_hf
from gptoss.arch import TINY
from inference.__main__ import main
from inference.sandbox import probe_namespaces


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _save_at(run, src, it: int) -> None:
    d = run / f"iter_{it:07d}"
    shutil.copytree(src, d)
    (d / "run_config.yaml").write_text("train:\n  global_batch_size: 4\nmodel:\n  seq_length: 64\n")
    (run / "latest_checkpointed_iteration.txt").write_text(str(it))


@pytest.mark.slow  # 20-31 s on 2 cores (bench/test_times.md): `make test` runs it, test-quick does not
@pytest.mark.skipif(probe_namespaces() is not None, reason=f"namespaces unavailable: {probe_namespaces()}")
def test_iterations_all_new_and_the_curves_report(tmp_path, monkeypatch):
    from conversion.megatron_io import import_hf

    os.environ.setdefault("MASTER_PORT", _free_port())  # torch.distributed (gloo) in this process
    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))
    hf = make_random_hf(tmp_path / "hf", TINY, seed=1)
    imported = import_hf(hf, tmp_path / "imported")
    src = next(p for p in imported.iterdir() if p.is_dir() and (p / "metadata.json").is_file())
    run = tmp_path / "cpt-run"
    run.mkdir()
    for f in imported.iterdir():  # the sidecar (architecture: hf/, kit_conversion.json) travels with the run
        if f.is_dir() and f != src:
            shutil.copytree(f, run / f.name)
        elif f.is_file() and f.name != "latest_checkpointed_iteration.txt":
            shutil.copy(f, run / f.name)
    for it in (10, 20):
        _save_at(run, src, it)
    data = write_indexed_dataset(tmp_path / "data/text_document")
    code = ["eval", "code", str(run), "--problems", "kit", "--limit", "2", "--max-new-tokens", "4"]
    loss = ["eval", "loss", str(run), "--data", f"code={data}", "--seq-length", "32", "--max-tokens", "256"]
    assert main([*code, "--iterations", "all"]) == 0
    assert main([*loss, "--iterations", "new"]) == 0
    curve = tmp_path / "ws/results/cpt-run/curve.jsonl"
    rows = [json.loads(line) for line in curve.read_text().splitlines()]
    assert [(r["kind"], r["iteration"], r["tokens"]) for r in rows] == [
        ("code", 10, 10 * 4 * 64), ("code", 20, 20 * 4 * 64), ("loss", 10, 10 * 4 * 64), ("loss", 20, 20 * 4 * 64)]  # fmt: skip
    assert rows[2]["loss"]["code"] == pytest.approx(rows[3]["loss"]["code"])  # the same weights at both iterations
    assert (tmp_path / "ws/results/cpt-run/iterations/eval_code_iter0000010.json").is_file()
    # resumable: nothing new, then only the new checkpoint
    assert main([*code, "--iterations", "new"]) == 0
    assert len(curve.read_text().splitlines()) == 4
    _save_at(run, src, 30)
    assert main([*code, "--iterations", "new"]) == 0
    rows = [json.loads(line) for line in curve.read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["kind"] == "code"] == [10, 20, 30]
    assert main(["report", "--name", "curves", str(tmp_path / "ws/results/cpt-run")]) == 0
    out = tmp_path / "ws/results/curves"
    md = (out / "report.md").read_text()
    assert "## Over training" in md and "| cpt-run | 20 | 5,120 |" in md and "| cpt-run | 30 | 7,680 |" in md
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*code, "--iterations", "5,10"]) == 2  # no iteration 5: a clear error
