"""The training entry point end to end on CPU: megatron-bridge's real pretrain()/finetune() on the
tiny gpt-oss, through `python -m recipes run` (megatron_cpu.training makes the CUDA-only loop run on
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

from megatron_cpu.compat import import_bridge

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


@pytest.mark.training
def test_pretrain_learns_and_leaves_a_checkpoint(pretrained):
    rows = metrics(pretrained, "gpt-oss-tiny-pretrain")
    assert [r["step"] for r in rows] == list(range(1, 21))
    losses = [r["lm loss"] for r in rows]
    assert losses[0] == pytest.approx(12.2, abs=0.3), "random init: ~ln(201088)"
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 2.0, losses
    assert all(r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert all(r["mfu"] is None and r["mfu_peak"] is None for r in rows), "no GPU: no MFU, not a wrong one"
    assert rows[0]["lr"] < rows[1]["lr"], "warm-up"
    ckpt = pretrained / "checkpoints" / "gpt-oss-tiny-pretrain"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "20"
    assert (pretrained / "results" / "gpt-oss-tiny-pretrain" / "metrics.png").stat().st_size > 1000


@pytest.mark.training
def test_resume_continues_the_same_loss_curve(pretrained):
    """Stop after 3 steps (checkpoint and exit 75), rerun to step 6: steps 1-6 equal those of the
    uninterrupted 20-step run (the same recipe and train_iters, so the same LR schedule and data)."""
    ws = pretrained
    reference = metrics(ws, "gpt-oss-tiny-pretrain")[:6]
    split = [
        "train.train_iters=20",
        "train.exit_interval=3",
        "checkpoint.save_interval=100",
        "checkpoint.save=" + str(ws / "checkpoints" / "split"),
        "checkpoint.load=" + str(ws / "checkpoints" / "split"),
        "logger.wandb_project=kit-test",  # offline (no API key): one W&B run across the requeue
    ]
    first = run_recipe(ws, "gpt_oss_tiny_pretrain", *split)
    assert first.returncode == 75, first.stdout[-2000:] + first.stderr[-2000:]
    assert [r["step"] for r in metrics(ws, "split")] == [1, 2, 3]
    second = run_recipe(ws, "gpt_oss_tiny_pretrain", *split[:1], "train.exit_interval=6", *split[2:])
    assert second.returncode == 75, second.stdout[-2000:] + second.stderr[-2000:]
    resumed = metrics(ws, "split")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["lm loss"] for r in resumed] == [r["lm loss"] for r in reference], "bit-exact in fp32 on CPU"
    run_id = (ws / "results" / "split" / "wandb_run_id").read_text().strip()
    offline = sorted((ws / "results" / "split" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(d.name.endswith("-" + run_id) for d in offline), (run_id, offline)
    assert all((d / f"run-{run_id}.wandb").is_file() for d in offline)
    from recipes.run import wandb_run_id

    assert run_id == wandb_run_id(ws / "checkpoints" / "split") != wandb_run_id(ws / "checkpoints" / "gpt-oss-tiny-pretrain")


def test_bad_inputs_fail_before_training(ws, tmp_path, monkeypatch, capsys):
    """`python -m recipes run` refuses before training (in this process: nothing starts, and three
    subprocesses would pay Megatron's import three times)."""
    from recipes.__main__ import main

    def run(workspace: Path, *overrides: str) -> tuple[int, str]:
        monkeypatch.setenv("WORKSPACE", str(workspace))
        code = main(["run", "gpt_oss_tiny_pretrain", *overrides])
        return code, capsys.readouterr().err

    code, err = run(tmp_path)
    assert code == 2 and "python -m data_prep pretrain" in err
    manifest = ws / "data" / "pretrain" / "manifest.json"
    saved = manifest.read_text()
    manifest.write_text(json.dumps({"tokenizer": "gpt2-50257-0000"}))
    try:
        code, err = run(ws)
    finally:
        manifest.write_text(saved)
    assert code == 2 and "made with tokenizer 'gpt2-50257-0000'" in err
    code, err = run(ws, "model.expert_model_parallel_size=3")
    assert code == 3 and "experts 4 not divisible by EP=3" in err


def test_document_boundaries_reach_the_model(ws, tmp_path):
    """The recipe's tokenizer and megatron-core's GPTDataset keep every end-of-document token as an
    input and as a label with loss. (With the release's pad token, which is our EOD, GPTDataset
    rewrote each EOD input to id 0 and masked each EOD label; its cached loss mask then made the
    mask depend on sample order, which is how a resumed run came to diverge.)"""
    import_bridge()
    from megatron.bridge.training.tokenizers.tokenizer import build_tokenizer
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    import recipes
    from gptoss.tokenizer import EOD_ID, PAD_ID

    cfg = recipes.build("gpt_oss_tiny_pretrain")
    tokenizer = build_tokenizer(cfg.tokenizer)
    assert tokenizer.pad == PAD_ID != EOD_ID
    config = GPTDatasetConfig(
        random_seed=1234,
        sequence_length=cfg.dataset.sequence_length,
        blend=([str(ws / "data" / "pretrain" / "text_document")], [1.0]),
        split="90,5,5",
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        path_to_cache=str(tmp_path),
    )
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [8, 2, 2], lambda: True, config).build()
    eod_inputs = eod_labels = 0
    for i in range(len(train)):
        sample = train[i]
        eod_inputs += int((sample["tokens"] == EOD_ID).sum())
        at_eod = sample["labels"] == EOD_ID
        eod_labels += int(at_eod.sum())
        assert bool((sample["loss_mask"] == 1).all()), (
            f"sample {i}: loss masked at {sample['loss_mask'].eq(0).nonzero()}"
        )
        assert not bool((sample["tokens"] == 0).any()), "no input rewritten to id 0"
    # the corpus has a document boundary every ~40 tokens: 8 samples of 128 tokens hold many
    assert eod_inputs >= 8 and eod_labels >= 8


@pytest.fixture(scope="module")
def sft_data(pretrained):
    """Harmony chats rendered and packed by `python -m data_prep sft` (the real tool)."""
    raw = pretrained / "raw" / "chat.jsonl"
    raw.parent.mkdir(parents=True, exist_ok=True)
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}.", "thinking": "Add them."},
            ]
        }
        for i in range(60)
    ]
    raw.write_text("".join(json.dumps(c) + "\n" for c in chats))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep",
            "sft",
            str(raw),
            "-o",
            str(pretrained / "data" / "sft"),
            "--seq-length",
            "128",
            "--val-fraction",
            "0.3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return pretrained


def _from_pretrained(ws: Path) -> str:
    return "checkpoint.pretrained_checkpoint=" + str(ws / "checkpoints" / "gpt-oss-tiny-pretrain")


@pytest.mark.training
def test_full_sft_on_packed_harmony_data(sft_data):
    """finetune() from the pretrained checkpoint on packed sequences (megatron_cpu.model gives the CPU
    attention the block-diagonal mask that TE's THD kernels apply on a GPU)."""
    out = run_recipe(sft_data, "gpt_oss_tiny_sft", "train.train_iters=3", _from_pretrained(sft_data))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rows = metrics(sft_data, "gpt-oss-tiny-sft")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(0 < r["lm loss"] < 20 and r["grad_norm"] > 0 for r in rows)
    assert "successfully loaded checkpoint from" in out.stdout + out.stderr, "started from the pretrained weights"


@pytest.fixture(scope="module")
def lora_run(sft_data):
    out = run_recipe(sft_data, "gpt_oss_tiny_lora", "train.train_iters=3", _from_pretrained(sft_data))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return sft_data / "checkpoints" / "gpt-oss-tiny-lora"


@pytest.mark.training
def test_lora_trains_only_the_adapters(sft_data, lora_run):
    import_bridge()
    import torch.distributed as dist
    from megatron.core.dist_checkpointing import load_plain_tensors

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = _port()
        dist.init_process_group("gloo", rank=0, world_size=1)
    saved = load_plain_tensors(str(sft_data / "checkpoints" / "gpt-oss-tiny-lora" / "iter_0000003"))
    tensors = {k: v for k, v in saved.items() if hasattr(v, "shape")}
    weights = [k for k in tensors if not k.startswith("optimizer.")]
    optimized = [k for k in tensors if k.startswith("optimizer.state.exp_avg.")]
    # only adapters are saved and only adapters have optimizer state: the base stayed frozen
    assert weights and all(".adapter." in k for k in weights), weights
    assert optimized and all(".adapter." in k for k in optimized), optimized
    targets = {k.split(".adapter.")[0].rsplit(".", 1)[-1] for k in weights}
    assert targets == {"linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"}, "attention and experts"
    # LoRA's B starts at zero: non-zero after 3 steps means the adapters were trained
    assert all(float(tensors[k].abs().max()) > 0 for k in weights if k.endswith("linear_out.weight"))


@pytest.mark.training
def test_lora_export_merged_and_peft_adapter_reproduce_the_run(sft_data, lora_run, tmp_path):
    """`conversion export` of a LoRA run: the merged HF weights and the PEFT adapter on the base's
    HF export both give the logits of Megatron's base + adapters (bf16 export: bf16 tolerance),
    while the base alone does not (the check is sensitive)."""
    import torch
    from peft import PeftModel
    from transformers import GptOssForCausalLM

    from conversion import megatron_io, validate
    from conversion.hf_io import HFCheckpoint

    def export(src: Path, out: Path) -> None:
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": _port()}
        cmd = [sys.executable, "-m", "conversion", "export", "--megatron", str(src), "--out", str(out)]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    base_dir = sft_data / "checkpoints" / "gpt-oss-tiny-pretrain"
    export(lora_run, tmp_path / "merged")
    export(base_dir, tmp_path / "base")
    adapter = tmp_path / "merged" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert config["target_parameters"] == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]

    _, model, hf_config, _, lora = megatron_io.load_any(lora_run)
    assert lora is not None
    ids, _ = validate.prompts(hf_config["vocab_size"], 40)
    reference = validate.megatron_logits(model[0], ids)
    merged = validate.hf_logits(HFCheckpoint(tmp_path / "merged"), ids)
    base = validate.hf_logits(HFCheckpoint(tmp_path / "base"), ids)
    peft = PeftModel.from_pretrained(GptOssForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32), adapter)
    with torch.no_grad():
        with_adapter = peft(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
    for name, logits in (("merged", merged), ("base + PEFT adapter", with_adapter)):
        m = validate.logits_metrics(logits, reference)
        assert m["max_abs"] < 0.05 and m["cosine"] > 0.9999 and m["top1"] == 1.0, (name, m)
    assert validate.logits_metrics(base, reference)["max_abs"] > 0.1, "the adapters must matter"
