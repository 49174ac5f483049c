"""Planner rules, each with a failing and a passing case, and its arithmetic against the
architecture module and Megatron's own parameter count (tests/test_arch.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

import recipes
from gptoss.arch import GPT_OSS_20B, TINY
from recipes.planner import GiB, plan

BASE = "gpt_oss_20b_pretrain"  # TP2 PP4 EP4 SP on 2x8


def _plan(overrides=(), nodes=2, gpus=8, recipe=BASE, **kw):
    return plan(recipes.build(recipe, list(overrides)), recipe=recipe, nodes=nodes, gpus_per_node=gpus, **kw)


def test_default_layout_is_runnable():
    p = _plan()
    assert p.ok, p.violations
    assert p.layout == {"tp": 2, "pp": 4, "vpp": None, "ep": 4, "etp": 1, "cp": 1, "dp": 2, "sp": True}


# (failing overrides, failing allocation, expected message, passing overrides, passing allocation)
RULES = [
    ("world", [], (1, 12), "world size 12 is not divisible by TP*PP*CP", [], (2, 8)),
    (
        "heads",
        ["model.tensor_model_parallel_size=3"],
        (3, 8),
        "attention heads 64 not divisible by TP=3",
        ["model.tensor_model_parallel_size=4"],
        (4, 8),
    ),
    (
        "kv heads",
        ["model.tensor_model_parallel_size=16", "model.pipeline_model_parallel_size=1"],
        (2, 8),
        "KV heads (query groups) 8 not divisible by TP=16",
        ["model.tensor_model_parallel_size=8", "model.pipeline_model_parallel_size=1"],
        (1, 8),
    ),
    (
        "layers",
        ["model.pipeline_model_parallel_size=5"],
        (5, 2),
        "layers 24 not divisible by PP=5",
        ["model.pipeline_model_parallel_size=6"],
        (6, 8),
    ),
    (
        "vpp",
        ["model.virtual_pipeline_model_parallel_size=4"],
        (2, 8),
        "layers 24 not divisible by PP*VPP = 4*4",
        ["model.virtual_pipeline_model_parallel_size=3"],
        (2, 8),
    ),
    (
        "vpp needs pp",
        [
            "model.virtual_pipeline_model_parallel_size=2",
            "model.pipeline_model_parallel_size=1",
            "model.tensor_model_parallel_size=1",
        ],
        (1, 8),
        "VPP=2 needs PP >= 2",
        ["model.virtual_pipeline_model_parallel_size=2", "model.pipeline_model_parallel_size=2"],
        (1, 8),
    ),
    (
        "experts",
        ["model.expert_model_parallel_size=5"],
        (5, 8),
        "experts 32 not divisible by EP=5",
        ["model.expert_model_parallel_size=8"],
        (4, 8),
    ),
    ("etp", ["model.expert_tensor_parallel_size=2"], (2, 8), "ETP=2: gpt-oss experts need", [], (2, 8)),
    (
        "expert fit",
        ["model.expert_model_parallel_size=16"],
        (2, 8),
        "EP*ETP = 16*1 does not divide TP*CP*DP = 2*1*2",
        ["model.expert_model_parallel_size=16"],
        (8, 8),
    ),
    (
        "batch",
        ["train.global_batch_size=511"],
        (2, 8),
        "global batch 511 not divisible by micro batch x DP = 1*2",
        ["train.global_batch_size=514"],
        (2, 8),
    ),
    (
        "cp",
        [
            "model.context_parallel_size=3",
            "model.expert_model_parallel_size=2",
            "dataset.seq_length=4100",
            "model.seq_length=4100",
            "model.sequence_parallel=false",
        ],
        (3, 8),
        "sequence length 4100 not divisible by 2*CP = 6",
        [
            "model.context_parallel_size=3",
            "model.expert_model_parallel_size=2",
            "dataset.seq_length=4104",
            "model.seq_length=4104",
            "model.sequence_parallel=false",
        ],
        (3, 8),
    ),
    (
        "sp",
        ["dataset.seq_length=4097", "model.seq_length=4097"],
        (2, 8),
        "sequence length per CP rank 4097 not divisible by TP=2",
        ["dataset.seq_length=4098", "model.seq_length=4098"],
        (2, 8),
    ),
    (
        "seq mismatch",
        ["dataset.seq_length=2048"],
        (2, 8),
        "model.seq_length 4096 != dataset.seq_length 2048",
        ["dataset.seq_length=2048", "model.seq_length=2048"],
        (2, 8),
    ),
    ("vocab", ["model.vocab_size=32000"], (2, 8), "model vocab 32000 != o200k_harmony's 201088", [], (2, 8)),
    (
        "tokenizer resize",
        ["tokenizer.use_tokenizer_vocab_size=true"],
        (2, 8),
        "would resize the vocabulary",
        [],
        (2, 8),
    ),
    (
        "memory",
        [
            "model.pipeline_model_parallel_size=1",
            "model.expert_model_parallel_size=1",
            "model.tensor_model_parallel_size=1",
            "train.global_batch_size=8",
        ],
        (1, 8),
        "exceeds the H100 80GB's 79.6 GiB",
        [],
        (2, 8),
    ),
]


@pytest.mark.parametrize("rule", RULES, ids=[r[0] for r in RULES])
def test_rule(rule):
    _, bad, (bn, bg), message, good, (gn, gg) = rule
    failing = _plan(bad, bn, bg)
    assert not failing.ok and any(message in v for v in failing.violations), failing.violations
    passing = _plan(good, gn, gg)
    assert passing.ok, passing.violations


def test_all_violations_are_reported_together():
    p = _plan(["model.pipeline_model_parallel_size=5", "model.expert_model_parallel_size=5"], 1, 12)
    assert len(p.violations) >= 3


def test_one_gpu_holds_every_parameter():
    """On one GPU without parallelism the per-GPU count is Megatron's total (20,914,757,184)."""
    p = _plan(
        [
            "model.pipeline_model_parallel_size=1",
            "model.expert_model_parallel_size=1",
            "model.tensor_model_parallel_size=1",
        ],
        1,
        1,
    )
    assert p.params["per GPU (fullest stage)"] == GPT_OSS_20B.total_params() == 20_914_757_184
    assert p.memory_gib["weights"] == pytest.approx(20_914_757_184 * 2 / GiB)
    assert p.memory_gib["gradients (fp32 main grads)"] == pytest.approx(20_914_757_184 * 4 / GiB)


def test_parallelism_shrinks_each_share_by_the_expected_factor():
    one = _plan(["model.pipeline_model_parallel_size=1", "model.tensor_model_parallel_size=1"], 1, 4)
    # EP4 on 4 GPUs: experts split four ways, dense weights replicated
    a = GPT_OSS_20B
    assert one.params["experts per GPU"] == a.num_layers * a.expert_params_per_layer() // 4
    assert (
        one.params["per GPU (fullest stage)"] == a.total_params() - a.num_layers * a.expert_params_per_layer() * 3 // 4
    )
    # distributed optimizer shards dense optimizer state over DP=4, experts over expert-DP=1
    dense = one.params["per GPU (fullest stage)"] - one.params["experts per GPU"]
    expected = (dense * 12 / 4 + one.params["experts per GPU"] * 12) / GiB
    assert one.memory_gib["optimizer states"] == pytest.approx(expected)


def test_recompute_reduces_activations_and_is_used_when_set():
    off = _plan()
    on = _plan(["model.recompute_granularity=full"])
    assert off.memory_gib["activations, full recompute"] < off.memory_gib["activations, no recompute"] / 5
    assert on.memory_gib["TOTAL (full recompute)"] < off.memory_gib["TOTAL (no recompute)"]


def test_lora_trains_only_adapters():
    p = _plan([], 1, 1, recipe="gpt_oss_20b_lora")
    lora = p.params["trainable (LoRA) per GPU"]
    assert 0 < lora < GPT_OSS_20B.total_params() / 50
    assert p.memory_gib["gradients (fp32 main grads)"] == pytest.approx(lora * 4 / GiB)


def test_budget_arithmetic():
    p = _plan(tokens=200e9, tokens_per_gpu_s=5000)
    t = p.throughput
    assert t["tokens_per_step"] == 512 * 4096
    assert t["steps"] == math.ceil(200e9 / (512 * 4096))
    assert t["gpu_hours"] == pytest.approx(200e9 / 5000 / 3600)
    assert t["mfu"] == pytest.approx(5000 * GPT_OSS_20B.train_flops_per_token(4096) / 989e12)


def test_tiny_fits_one_process():
    p = _plan([], 1, 1, recipe="gpt_oss_tiny_pretrain")
    assert p.ok and p.params["per GPU (fullest stage)"] == TINY.total_params()


def _cli(*args):
    """`python -m recipes ARGS`, in this process (each subprocess would pay Megatron's import again)."""
    import contextlib
    import io
    from types import SimpleNamespace

    from recipes.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse errors
            code = e.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_cli_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "recipes", "list"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "gpt_oss_20b_cpt_code" in out.stdout


def test_cli_plan_fails_fast_with_every_rule():
    out = _cli("plan", BASE, "--nodes", "1", "--gpus-per-node", "12", "model.pipeline_model_parallel_size=5")
    assert out.returncode == 3, out.stderr[-2000:]
    assert "world size 12 is not divisible" in out.stdout and "layers 24 not divisible by PP=5" in out.stdout
    assert "NOT RUNNABLE" in out.stdout


def test_cli_list_show_and_bad_key():
    out = _cli("list")
    assert out.returncode == 0 and "gpt_oss_20b_cpt_code" in out.stdout and "2x8" in out.stdout
    out = _cli("show", "gpt_oss_tiny_lora", "--format", "json", "train.train_iters=3")
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert data["train"]["train_iters"] == 3 and data["model"]["vocab_size"] == 201088
    assert data["peft"]["dim"] == 8
    out = _cli("show", "gpt_oss_tiny_lora", "train.train_itres=3")
    assert out.returncode == 2 and "did you mean train.train_iters" in out.stderr


def test_packed_sequences_need_micro_batch_one():
    failing = _plan(["train.micro_batch_size=2"], 1, 8, recipe="gpt_oss_20b_sft")
    assert any("micro batch 2 with packed sequences" in v for v in failing.violations), failing.violations
    assert _plan([], 1, 8, recipe="gpt_oss_20b_sft").ok


@pytest.mark.parametrize("name", sorted(recipes.RECIPES))
def test_every_shipped_recipe_fits_its_default_allocation(name):
    """`sbatch slurm/<recipe>.sh` with no flags must not be refused by its own planner."""
    r = recipes.get(name)
    p = plan(recipes.build(name, []), recipe=name, nodes=r.nodes, gpus_per_node=r.gpus_per_node)
    assert p.ok, f"{name} at {r.nodes}x{r.gpus_per_node}: {p.violations}"


def test_bf16_gradient_buffers_halve_the_gradient_memory():
    fp32 = _plan(["ddp.grad_reduce_in_fp32=True"])
    bf16 = _plan(["ddp.grad_reduce_in_fp32=False"])
    assert fp32.memory_gib["gradients (fp32 main grads)"] == pytest.approx(2 * bf16.memory_gib["gradients (bf16 main grads)"])


@pytest.mark.parametrize(
    "device, key",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H100 NVL", "h100-nvl"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA A100-SXM4-40GB", None),
        ("NVIDIA B200", "b200"),
        ("NVIDIA L40S", None),
        ("Tesla V100-SXM2-32GB", None),
    ],
)
def test_mfu_uses_the_peak_of_the_gpu_present(device, key):
    """metrics.jsonl's MFU divides by the peak of torch's device name; an unknown GPU gets none."""
    from recipes.planner import GPUS, gpu_from_device_name
    from recipes.run import mfu_peak

    assert gpu_from_device_name(device) == key
    assert key is None or GPUS[key].bf16_tflops > 0
    assert mfu_peak() is None  # this machine has no GPU
