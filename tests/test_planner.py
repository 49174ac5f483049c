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
from megatron_cpu.compat import import_bridge
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
        "vpp microbatches",
        ["model.virtual_pipeline_model_parallel_size=2", "train.global_batch_size=6"],
        (2, 8),
        "VPP=2: 3 microbatches a step (GBS/(MBS*DP)) is not a multiple of PP=4",
        ["model.virtual_pipeline_model_parallel_size=2", "train.global_batch_size=8"],
        (2, 8),
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
    """Only where the mixed-precision config says so: ddp.grad_reduce_in_fp32=False alone is set back
    to True by "bf16_mixed" when the bridge sets the run up (test_effective_settings_are_the_bridges)."""
    import_bridge()
    from megatron.bridge.training.mixed_precision import get_mixed_precision_config

    cfg = recipes.build(BASE, ["ddp.grad_reduce_in_fp32=False"])
    fp32 = plan(cfg, recipe=BASE, nodes=2, gpus_per_node=8)
    cfg.mixed_precision = get_mixed_precision_config("bf16_mixed")
    cfg.mixed_precision.grad_reduce_in_fp32 = False
    bf16 = plan(cfg, recipe=BASE, nodes=2, gpus_per_node=8)
    assert fp32.memory_gib["gradients (fp32 main grads)"] == pytest.approx(
        2 * bf16.memory_gib["gradients (bf16 main grads)"]
    )


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


# ---------------------------------------------------------------------------------------------
# Measured, not guessed: the settings the bridge applies, the layouts it verified, its throughput
# ---------------------------------------------------------------------------------------------


def test_effective_settings_are_the_bridges():
    """The planner reads grad dtype and distributed optimizer as Megatron-Bridge will apply them: its
    mixed-precision setup and its optimizer sync run here on a copy of the config and must agree."""
    import copy

    import_bridge()
    from megatron.bridge.training.config import _validate_and_sync_distributed_optimizer_settings
    from megatron.bridge.training.mixed_precision import get_mixed_precision_config

    cfg = recipes.build("gpt_oss_120b_sft", ["ddp.grad_reduce_in_fp32=False", "ddp.use_distributed_optimizer=False"])
    p = plan(cfg, recipe="gpt_oss_120b_sft", nodes=4, gpus_per_node=8)
    applied = copy.deepcopy(cfg)
    mp = get_mixed_precision_config(applied.mixed_precision)
    mp.setup(applied.model, applied.optimizer, applied.ddp)
    _validate_and_sync_distributed_optimizer_settings(applied)
    assert applied.ddp.grad_reduce_in_fp32 is True and applied.ddp.use_distributed_optimizer is True
    assert "gradients (fp32 main grads)" in p.memory_gib
    assert p.settings["main grads"] == "fp32 (mixed_precision 'bf16_mixed' overrides ddp.grad_reduce_in_fp32=False)"
    assert p.settings["distributed optimizer"].startswith("on (optimizer.use_distributed_optimizer=True")
    assert "settings that move memory: main grads fp32" in p.render() and "recompute selective (moe_act)" in p.render()


_SEL = ["model.recompute_granularity=selective", "model.recompute_modules=[moe_act]"]


def _layout(tp, pp, ep, cp=1, sp=None):
    sp = tp > 1 if sp is None else sp
    return [
        f"model.tensor_model_parallel_size={tp}",
        f"model.pipeline_model_parallel_size={pp}",
        f"model.expert_model_parallel_size={ep}",
        f"model.context_parallel_size={cp}",
        f"model.sequence_parallel={str(sp).lower()}",
    ]


# Megatron-Bridge's verified H100 80 GB runs (../shared/notes/gpt-oss-facts.md, "Verified layouts";
# the commands of examples/model_verification_cards/gpt-oss-{20b,120b}/card.yaml), each planned with
# the card's layout, batch and recompute applied as overrides on the kit recipe of the same kind.
# The 120b SFT card ran TP2 + SP + moe_act recompute over its recipe's TP1 PP4 EP8 (the facts note
# lists TP1, bf16 grads and no distributed optimizer; the last two are no-ops under bf16_mixed and
# the bridge's optimizer sync, and TP1 without recompute plans at 83 GiB: see the test below).
VERIFIED = [
    ("20b pretrain", "gpt_oss_20b_pretrain", 2, 8, [*_layout(2, 4, 4), "train.global_batch_size=512"]),
    ("20b sft", "gpt_oss_20b_sft", 1, 8, [*_layout(1, 1, 8), "train.global_batch_size=128"]),
    ("20b lora", "gpt_oss_20b_lora", 1, 1, [*_layout(1, 1, 1), "train.global_batch_size=128"]),
    (
        "20b sft 32k",
        "gpt_oss_20b_sft_32k",
        1,
        8,
        [*_layout(4, 1, 8, cp=2), "model.recompute_granularity=full", "model.recompute_method=uniform"],
    ),
    ("120b pretrain", "gpt_oss_120b_pretrain", 8, 8, [*_layout(2, 4, 16), "model.recompute_granularity=null"]),
    ("120b sft", "gpt_oss_120b_sft", 4, 8, [*_layout(2, 4, 8), *_SEL, "train.global_batch_size=128"]),
    ("120b sft 32k", "gpt_oss_120b_sft_32k", 6, 8, [*_layout(2, 6, 4, cp=4), *_SEL, "train.global_batch_size=4"]),
    ("120b lora", "gpt_oss_120b_lora", 1, 8, [*_layout(1, 1, 8), "train.global_batch_size=128"]),
]


@pytest.mark.parametrize("case", VERIFIED, ids=[v[0] for v in VERIFIED])
def test_every_verified_layout_fits_and_uses_its_measurement(case):
    _, name, nodes, gpus, overrides = case
    p = _plan(overrides, nodes, gpus, recipe=name)
    assert p.ok, p.violations
    assert p.total_gib < p.gpu.memory_gib
    assert "published" in p.throughput_basis and "Megatron-Bridge" in p.throughput_basis, p.throughput_basis


def test_120b_sft_at_tp1_without_recompute_does_not_fit():
    """Why the kit's 120b SFT is the card's TP2 + moe_act recompute: under EP8 x PP4 nothing shards
    the experts' fp32 grads and optimizer state."""
    p = _plan([*_layout(1, 4, 8), "model.recompute_granularity=null"], 4, 8, recipe="gpt_oss_120b_sft")
    assert not p.ok and p.total_gib > 80


def test_published_throughput_is_used_with_its_source_and_explicit_numbers_win():
    from recipes.planner import DEFAULT_MFU, PUBLISHED

    p = _plan()  # 20b pretrain TP2 PP4 EP4 on 16, as the card; the card's model had a 32,000 vocabulary
    card = PUBLISHED[("20b", "pretrain", 4096, 16, 2, 4, 4, 1)]
    small = GPT_OSS_20B.train_flops_per_token(4096) - (201_088 - 32_000) * GPT_OSS_20B.hidden_size * 6
    assert p.throughput["tokens_per_gpu_s"] == pytest.approx(
        card.tokens_per_gpu_s * small / GPT_OSS_20B.train_flops_per_token(4096)
    )
    assert "5,851 published (Megatron-Bridge gpt-oss-20b verification card" in p.render()
    assert _plan(tokens_per_gpu_s=4000).throughput["tokens_per_gpu_s"] == 4000
    assert _plan(mfu=0.2).throughput["mfu"] == pytest.approx(0.2)
    other = _plan(gpu="h200")  # no measurement on H200: the assumed MFU, said so
    assert other.throughput["mfu"] == pytest.approx(DEFAULT_MFU) and "assumed MFU 12%" in other.render()
    moved = _plan(["model.expert_model_parallel_size=8"], 2, 8)
    assert "assumed MFU" in moved.throughput_basis


# ---------------------------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------------------------

# (recipe, nodes, GPUs per node, published (TP, PP, EP, CP)) -> found within the top 5
PUBLISHED_LAYOUTS = [
    ("gpt_oss_120b_pretrain", 8, 8, (1, 4, 8, 1)),
    ("gpt_oss_20b_pretrain", 2, 8, (2, 4, 4, 1)),
    ("gpt_oss_20b_sft", 1, 8, (1, 1, 8, 1)),
    ("gpt_oss_120b_sft", 4, 8, (2, 4, 8, 1)),  # the card's TP2 (see VERIFIED)
]


@pytest.mark.parametrize("case", PUBLISHED_LAYOUTS, ids=[c[0] for c in PUBLISHED_LAYOUTS])
def test_search_finds_the_published_layout_near_the_top(case):
    import time

    from recipes.planner import search

    name, nodes, gpus, want = case
    cfg = recipes.build(name, [])
    before = cfg.model.tensor_model_parallel_size, cfg.model.expert_model_parallel_size
    start = time.monotonic()
    found = search(cfg, recipe=name, nodes=nodes, gpus_per_node=gpus, top=10)
    assert time.monotonic() - start < 10
    layouts = [(c.knobs.tp, c.knobs.pp, c.knobs.ep, c.knobs.cp) for c in found]
    assert want in layouts[:5], [c.knobs.describe() for c in found]
    assert all(c.plan.ok and c.plan.total_gib < 79.6 for c in found)
    assert [c.score for c in found] == sorted((c.score for c in found), reverse=True)
    assert (cfg.model.tensor_model_parallel_size, cfg.model.expert_model_parallel_size) == before  # cfg untouched


def test_cli_search_prints_a_table_whose_best_row_plans_ok():
    out = _cli("plan", "gpt_oss_20b_sft", "--search", "--top", "3")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.strip()[:2].strip().isdigit()]
    assert len(rows) == 3 and "tok/s/GPU" in out.stdout
    best = out.stdout.split("best as overrides: ")[1].split()
    replanned = _cli("plan", "gpt_oss_20b_sft", *best)
    assert replanned.returncode == 0 and "OK: the layout divides" in replanned.stdout
    nothing = _cli("plan", "gpt_oss_120b_pretrain", "--nodes", "1", "--gpus-per-node", "1", "--search")
    assert nothing.returncode == 3 and "none divides and fits" in nothing.stdout


# ---------------------------------------------------------------------------------------------
# Long context
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, layout", [("gpt_oss_20b_sft_32k", (4, 1, 8, 2)), ("gpt_oss_120b_sft_32k", (2, 6, 4, 4))]
)
def test_32k_recipes_split_the_sequence_with_a2a_and_pad_packs_to_2cp(name, layout):
    cfg = recipes.build(name, [])
    m = cfg.model
    assert (m.tensor_model_parallel_size, m.pipeline_model_parallel_size, m.expert_model_parallel_size) == layout[:3]
    assert m.context_parallel_size == layout[3] and m.cp_comm_type == "a2a" and m.sequence_parallel
    assert m.seq_length == cfg.dataset.seq_length == cfg.dataset.offline_packing_specs.packed_sequence_size == 32768
    assert cfg.dataset.offline_packing_specs.pad_seq_to_mult == 2 * layout[3]
    unpadded = _plan(["dataset.offline_packing_specs.pad_seq_to_mult=1"], *_default_allocation(name), recipe=name)
    assert any(f"CP={layout[3]} needs 2*CP" in v for v in unpadded.violations), unpadded.violations


def _default_allocation(name):
    r = recipes.get(name)
    return r.nodes, r.gpus_per_node


def test_cp_on_cpu_is_refused_naming_megatrons_local_attention():
    """What blocks a tiny CP=2 twin: megatron.core's own DotProductAttention (the layer spec without
    Transformer Engine, which the CPU recipes use) asserts CP == 1; only TE's attention implements
    the p2p / a2a context-parallel exchange, and TE needs CUDA. The planner (run before every training
    run too) refuses it in one line."""
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    config = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, context_parallel_size=2)
    with pytest.raises(AssertionError, match="Context parallelism is only supported by TEDotProductAttention"):
        DotProductAttention(config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    p = _plan(
        ["model.context_parallel_size=2", "dataset.offline_packing_specs.pad_seq_to_mult=4"],
        1,
        2,
        recipe="gpt_oss_tiny_sft",
    )
    assert [v for v in p.violations if "CP=2 needs Transformer Engine attention" in v], p.violations


# ---------------------------------------------------------------------------------------------
# Distillation: a teacher on the student's layout
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_model():
    """gpt-oss-120b's provider (the 120b CPT recipe's model) to hang on a 20b student as its teacher."""
    return recipes.build("gpt_oss_120b_cpt_code", []).model


def _distill(teacher_model, student_overrides=(), **teacher_fields):
    """A 20b CPT student (TP2 PP4 EP8 SP) with the 120b teacher on the same layout: a duck-typed
    distillation config (the planner reads cfg.model.teacher, as on a DistillationProvider)."""
    import copy

    layout = [*_layout(2, 4, 8), *student_overrides]
    cfg = recipes.build("gpt_oss_20b_cpt_code", layout)
    t = copy.copy(teacher_model)
    t.tensor_model_parallel_size, t.pipeline_model_parallel_size, t.expert_model_parallel_size = 2, 4, 8
    t.virtual_pipeline_model_parallel_size = cfg.model.virtual_pipeline_model_parallel_size
    for k, v in teacher_fields.items():
        setattr(t, k, v)
    cfg.model.teacher = t
    return cfg


def test_teacher_memory_lines_and_throughput(teacher_model):
    from gptoss.arch import GPT_OSS_120B
    from recipes.planner import DEFAULT_MFU

    cfg = _distill(teacher_model)
    p = plan(cfg, recipe="distill", nodes=8, gpus_per_node=8, tokens=50e9)
    assert p.ok, p.violations
    t = GPT_OSS_120B  # 9 layers a stage, attention and LM head by TP2, experts by EP8
    per_gpu = 9 * (t.attention_params_per_layer() // 2 + t.norm_params_per_layer() + t.router_params_per_layer())
    per_gpu += t.output_params() // 2 + 9 * t.expert_params_per_layer() // 8  # the last stage: LM head + final norm
    assert p.params["teacher per GPU (frozen)"] == per_gpu
    assert p.memory_gib["teacher weights (bf16, frozen)"] == pytest.approx(per_gpu * 2 / GiB)
    kd_logits = 2 * 4096 * 201_088 / 2 * 4 / GiB  # the teacher's fp32 logits and the student's softmax
    assert kd_logits < p.memory_gib["teacher activations + logits"] < kd_logits + 1
    alone = plan(recipes.build("gpt_oss_20b_cpt_code", _layout(2, 4, 8)), recipe="s", nodes=8, gpus_per_node=8)
    extra = p.memory_gib["teacher weights (bf16, frozen)"] + p.memory_gib["teacher activations + logits"]
    assert p.total_gib == pytest.approx(alone.total_gib + extra)
    student, teacher = GPT_OSS_20B.train_flops_per_token(4096), t.train_flops_per_token(4096) / 3
    assert p.throughput["flops_per_token"] == pytest.approx(student + teacher)
    assert p.throughput["tokens_per_gpu_s"] == pytest.approx(DEFAULT_MFU * 989e12 / (student + teacher))
    assert p.throughput["gpu_hours"] == pytest.approx(50e9 / p.throughput["tokens_per_gpu_s"] / 3600)
    assert "teacher forward" in p.render()


@pytest.mark.parametrize(
    "student, teacher, message",
    [
        ((), {"pipeline_model_parallel_size": 2}, "distillation: teacher PP=2 != student PP=4"),
        ((), {"tensor_model_parallel_size": 1}, "distillation: teacher TP=1 != student TP=2"),
        ((), {"seq_length": 2048}, "distillation: teacher seq_length=2048 != student seq_length=4096"),
        (
            ["model.virtual_pipeline_model_parallel_size=3", "train.global_batch_size=256"],
            {},
            "ModelOpt knowledge distillation refuses virtual pipeline parallelism",
        ),
        ((), {"vocab_size": 32_000}, "python -m inference generate"),
        ((), {"expert_model_parallel_size": 5}, "teacher: experts 128 not divisible by EP=5"),
    ],
    ids=["pp", "tp", "seq", "vpp", "vocab", "teacher layout"],
)
def test_distillation_rules(teacher_model, student, teacher, message):
    p = plan(_distill(teacher_model, student, **teacher), recipe="distill", nodes=8, gpus_per_node=8)
    assert any(message in v for v in p.violations), p.violations


def test_distillation_search_keeps_one_layout_for_both(teacher_model):
    from recipes.planner import search

    found = search(_distill(teacher_model), recipe="distill", nodes=8, gpus_per_node=8, top=5)
    assert found and all(c.knobs.vpp is None and c.plan.ok for c in found)
    assert all(128 % c.knobs.ep == 0 and 36 % c.knobs.pp == 0 for c in found)
