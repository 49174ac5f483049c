"""Every recipe builds offline (no hub, no HF cache) with the real tokenizer and vocabulary."""

from __future__ import annotations

import pytest

import recipes
from gptoss.arch import GPT_OSS_20B, GPT_OSS_120B, TINY
from gptoss.tokenizer import hf_tokenizer_dir


@pytest.fixture(scope="module")
def built():
    return {name: r.build() for name, r in recipes.RECIPES.items()}


def test_every_recipe_builds_with_the_real_vocabulary(built):
    assert len(built) == 36
    for name, cfg in built.items():
        assert cfg.model.vocab_size == 201_088, name
        assert cfg.tokenizer.tokenizer_type == "HuggingFaceTokenizer"
        assert cfg.tokenizer.tokenizer_model == str(hf_tokenizer_dir())
        assert cfg.tokenizer.use_tokenizer_vocab_size is False
        assert cfg.model.seq_length == cfg.dataset.seq_length
        arch = TINY if "tiny" in name else GPT_OSS_120B if "120b" in name else GPT_OSS_20B
        assert (cfg.model.num_layers, cfg.model.num_moe_experts, cfg.model.hidden_size) == (
            arch.num_layers,
            arch.num_experts,
            arch.hidden_size,
        )
        # gpt-oss specifics the bridge must have carried over from the generated HF config
        assert cfg.model.softmax_type == "learnable" and cfg.model.window_size == (arch.sliding_window - 1, 0)
        assert cfg.model.position_embedding_type == "yarn" and cfg.model.moe_router_topk == arch.experts_per_token
        assert cfg.model.expert_tensor_parallel_size == 1


_NO_NETWORK = """
import socket, sys
def refuse(*args, **kwargs):
    raise AssertionError(f"reached for the network: {args[:2]}")
socket.getaddrinfo = refuse
socket.create_connection = refuse
socket.socket.connect = lambda self, address: refuse(address)
socket.socket.connect_ex = lambda self, address: refuse(address)
import recipes
cfg = recipes.build("gpt_oss_20b_cpt_code")
print("layers", cfg.model.num_layers)
"""


@pytest.mark.slow  # 20-31 s on 2 cores (bench/test_times.md): `make test` runs it, test-quick does not
def test_hub_is_never_needed():
    """Building a recipe never reaches for the network, without HF_HUB_OFFLINE (as a user runs it):
    a child process whose every socket connection and name lookup raises builds a 20b recipe."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", _NO_NETWORK], env=env, capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert out.returncode == 0 and "layers 24" in out.stdout, out.stderr[-3000:]


def test_families_differ_where_they_should(built):
    pre, cpt = built["gpt_oss_20b_pretrain"], built["gpt_oss_20b_cpt_code"]
    sft, lora = built["gpt_oss_20b_sft"], built["gpt_oss_20b_lora"]
    assert pre.checkpoint.pretrained_checkpoint is None
    assert pre.model.moe_router_load_balancing_type == "aux_loss" and pre.model.moe_aux_loss_coeff == 1e-2
    # continued pretraining: from the imported release, code blend with replay, LR re-warmed lower
    assert cpt.checkpoint.pretrained_checkpoint.endswith("models/gpt-oss-20b/megatron")
    prefixes, weights = cpt.dataset.blend
    assert [p.split("/")[-2] for p in prefixes] == ["the-stack", "replay"] and weights == pytest.approx([0.8, 0.2])
    assert cpt.optimizer.lr < pre.optimizer.lr and cpt.scheduler.lr_warmup_iters > 0
    assert cpt.scheduler.lr_decay_style == "cosine"
    # SFT and LoRA: packed harmony data, from a checkpoint; LoRA on attention and experts
    assert sft.peft is None and sft.dataset.enable_offline_packing
    assert set(lora.peft.target_modules) == {"linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"}
    assert lora.optimizer.lr > sft.optimizer.lr


def test_fp8_variant_changes_precision_only(built):
    base, fp8 = built["gpt_oss_20b_pretrain"], built["gpt_oss_20b_pretrain_fp8cs"]
    assert fp8.mixed_precision == "bf16_with_fp8_current_scaling_mixed" and fp8.model.moe_router_padding_for_fp8
    assert base.mixed_precision == "bf16_mixed" and not base.model.moe_router_padding_for_fp8
    assert fp8.model.tensor_model_parallel_size == base.model.tensor_model_parallel_size


def test_tiny_recipes_are_cpu_recipes(built):
    for name in ("gpt_oss_tiny_pretrain", "gpt_oss_tiny_cpt_code", "gpt_oss_tiny_sft", "gpt_oss_tiny_lora"):
        cfg = built[name]
        assert cfg.model.transformer_impl == "local" and cfg.model.moe_grouped_gemm is False
        assert cfg.mixed_precision is None and cfg.dist.distributed_backend == "gloo"
        assert recipes.RECIPES[name].nodes * recipes.RECIPES[name].gpus_per_node == 1


def test_outputs_follow_the_workspace_layout(built, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKSPACE", str(tmp_path))
    cfg = recipes.build("gpt_oss_tiny_pretrain")
    assert cfg.checkpoint.save == str(tmp_path / "checkpoints" / "gpt-oss-tiny-pretrain")
    assert cfg.dataset.blend[0] == [str(tmp_path / "data" / "pretrain" / "text_document")]
