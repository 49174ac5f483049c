"""The training entry point end to end on CPU: megatron-bridge's real pretrain()/finetune() on the
tiny gpt-oss, through `python -m recipes run` (gptoss.cpu_training makes the CUDA-only loop run on
the CPU; nothing in the model, optimizer or checkpointing is mocked)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_data import write_indexed_dataset

ROOT = Path(__file__).resolve().parents[1]


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run_recipe(workspace: Path, recipe: str, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "WORKSPACE": str(workspace),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": _port(),
        "TORCHDYNAMO_DISABLE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "recipes", "run", recipe, *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def metrics(workspace: Path, run: str) -> list[dict]:
    path = workspace / "results" / run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    write_indexed_dataset(ws / "data" / "pretrain" / "text_document")
    return ws


@pytest.fixture(scope="module")
def pretrained(ws):
    """20 steps of pretraining on the repetitive corpus (also the base for the finetuning tests)."""
    out = run_recipe(ws, "gpt_oss_tiny_pretrain", "train.train_iters=20")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return ws


def test_pretrain_learns_and_leaves_a_checkpoint(pretrained):
    rows = metrics(pretrained, "gpt-oss-tiny-pretrain")
    assert [r["step"] for r in rows] == list(range(1, 21))
    losses = [r["lm loss"] for r in rows]
    assert losses[0] == pytest.approx(12.2, abs=0.3), "random init: ~ln(201088)"
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 2.0, losses
    assert all(r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert rows[0]["lr"] < rows[1]["lr"], "warm-up"
    ckpt = pretrained / "checkpoints" / "gpt-oss-tiny-pretrain"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "20"
    assert (pretrained / "results" / "gpt-oss-tiny-pretrain" / "metrics.png").stat().st_size > 1000


def test_resume_continues_the_same_loss_curve(ws):
    """Stop after 3 of 6 steps (checkpoint and exit 75), rerun: steps 4-6 equal an uninterrupted run's."""
    full = run_recipe(
        ws,
        "gpt_oss_tiny_pretrain",
        "train.train_iters=6",
        "checkpoint.save_interval=100",
        "checkpoint.save=" + str(ws / "checkpoints" / "full"),
        "checkpoint.load=" + str(ws / "checkpoints" / "full"),
    )
    assert full.returncode == 0, full.stderr[-3000:]
    reference = metrics(ws, "full")
    split = [
        "train.train_iters=6",
        "train.exit_interval=3",
        "checkpoint.save_interval=100",
        "checkpoint.save=" + str(ws / "checkpoints" / "split"),
        "checkpoint.load=" + str(ws / "checkpoints" / "split"),
    ]
    first = run_recipe(ws, "gpt_oss_tiny_pretrain", *split)
    assert first.returncode == 75, first.stdout[-2000:] + first.stderr[-2000:]
    assert [r["step"] for r in metrics(ws, "split")] == [1, 2, 3]
    second = run_recipe(ws, "gpt_oss_tiny_pretrain", *split[:1], *split[2:])
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = metrics(ws, "split")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["lm loss"] for r in resumed] == [r["lm loss"] for r in reference], "bit-exact in fp32 on CPU"


def test_bad_inputs_fail_before_training(ws, tmp_path):
    out = run_recipe(tmp_path, "gpt_oss_tiny_pretrain")
    assert out.returncode == 2 and "python -m data_prep pretrain" in out.stderr
    manifest = ws / "data" / "pretrain" / "manifest.json"
    saved = manifest.read_text()
    manifest.write_text(json.dumps({"tokenizer_fingerprint": "gpt2-50257-0000"}))
    try:
        out = run_recipe(ws, "gpt_oss_tiny_pretrain")
    finally:
        manifest.write_text(saved)
    assert out.returncode == 2 and "made with tokenizer 'gpt2-50257-0000'" in out.stderr
    out = run_recipe(ws, "gpt_oss_tiny_pretrain", "model.expert_model_parallel_size=3")
    assert out.returncode == 3 and "experts 4 not divisible by EP=3" in out.stderr
