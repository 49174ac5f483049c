"""The architecture module against published numbers and against two independent implementations
(transformers' GptOssForCausalLM and Megatron-Core's GPTModel), both instantiated here."""

from __future__ import annotations

import json

import pytest
import torch

from gptoss.arch import ARCHS, GPT_OSS_20B, GPT_OSS_120B, TINY, VOCAB_SIZE, arch_from_hf_config, get_arch
from megatron_cpu.compat import import_bridge


def test_published_totals():
    assert GPT_OSS_20B.total_params() == 20_914_757_184
    assert round(GPT_OSS_120B.total_params() / 1e9, 2) == 116.83
    assert round(GPT_OSS_20B.active_params() / 1e9, 2) == 3.61
    assert round(GPT_OSS_120B.active_params() / 1e9, 2) == 5.13


def test_flops_per_token_matches_the_published_estimate():
    # 6 x 3.605B matmul params + attention (0.68 / 1.28 GFLOP at 2k / 4k context)
    assert GPT_OSS_20B.active_matmul_params() == pytest.approx(3.605e9, rel=1e-3)
    attn_4k = GPT_OSS_20B.train_flops_per_token(4096) - 6 * GPT_OSS_20B.active_matmul_params()
    attn_2k = GPT_OSS_20B.train_flops_per_token(2048) - 6 * GPT_OSS_20B.active_matmul_params()
    assert attn_4k / 1e9 == pytest.approx(1.28, abs=0.01)
    assert attn_2k / 1e9 == pytest.approx(0.68, abs=0.01)
    assert GPT_OSS_20B.train_flops_per_token(4096) / 1e9 == pytest.approx(22.9, abs=0.05)
    assert GPT_OSS_120B.train_flops_per_token(4096) / 1e9 == pytest.approx(32.6, abs=0.15)


def test_tiny_keeps_the_architecture_features():
    assert TINY.hidden_size != TINY.q_width, "non-square attention"
    assert TINY.expert_ffn_hidden_size != TINY.hidden_size, "non-square experts"
    assert set(TINY.layer_types()) == {"sliding_attention", "full_attention"}
    assert TINY.num_experts >= 4 and TINY.experts_per_token >= 2
    assert TINY.vocab_size == VOCAB_SIZE
    assert TINY.hf_config_dict()["rope_scaling"]["rope_type"] == "yarn"


@pytest.mark.parametrize("arch", [GPT_OSS_20B, GPT_OSS_120B, TINY], ids=lambda a: a.name)
def test_transformers_counts_the_same(arch):
    """Instantiate GptOssForCausalLM from the generated config on the meta device and count."""
    from transformers import GptOssForCausalLM

    with torch.device("meta"):
        model = GptOssForCausalLM(arch.hf_config())
    assert sum(p.numel() for p in model.parameters()) == arch.total_params()
    # the published config.json layout, not just the count
    layer = model.model.layers[0]
    assert tuple(layer.mlp.experts.gate_up_proj.shape) == (
        arch.num_experts,
        arch.hidden_size,
        2 * arch.expert_ffn_hidden_size,
    )
    assert tuple(layer.self_attn.sinks.shape) == (arch.num_attention_heads,)


def test_hf_config_round_trips_and_rejects_other_models(tmp_path):
    for arch in ARCHS.values():
        assert arch_from_hf_config(arch.hf_config_dict()) is arch
    cfg = GPT_OSS_20B.hf_config_dict() | {"num_hidden_layers": 4}
    custom = arch_from_hf_config(cfg)
    assert custom.name == "custom" and custom.num_layers == 4
    with pytest.raises(ValueError, match="model_type='llama'"):
        arch_from_hf_config({"model_type": "llama"})
    with pytest.raises(ValueError, match="unknown gpt-oss size '7b'"):
        get_arch("7b")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(GPT_OSS_120B.hf_config_dict()))
    assert arch_from_hf_config(json.loads(path.read_text())) is GPT_OSS_120B


def _megatron_count(recipe: str) -> int:
    """Megatron-Core's own GPTModel for a recipe, built on the meta device (no memory, no GPU).

    Construction on CPU needs three stand-ins, all for things a GPU build does differently and that
    do not change the parameter set: the local (non-TE) layer spec, the allgather dispatcher (the
    alltoall one allocates a CUDA stream), and torch.cuda.current_device -> "meta" (YaRN caches its
    frequencies on the current device).
    """
    import_bridge()
    from megatron.bridge.models.gpt_provider import local_layer_spec

    import recipes

    m = recipes.build(recipe).model
    m.transformer_layer_spec = local_layer_spec
    m.transformer_impl = "local"
    for k, val in dict(
        moe_grouped_gemm=False,
        use_cpu_initialization=True,
        perform_initialization=False,
        gradient_accumulation_fusion=False,
        moe_permute_fusion=False,
        cross_entropy_loss_fusion=False,
        tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1,
        expert_model_parallel_size=1,
        sequence_parallel=False,
        moe_token_dispatcher_type="allgather",
        recompute_granularity=None,  # selective moe_act recompute needs grouped GEMM; no parameters
        params_dtype=torch.float32,
        bf16=False,
    ).items():
        setattr(m, k, val)
    m.finalize()
    current = torch.cuda.current_device
    torch.cuda.current_device = lambda: "meta"
    try:
        with torch.device("meta"):
            model = m.provide(pre_process=True, post_process=True)
    finally:
        torch.cuda.current_device = current
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def model_parallel():
    """One process, TP=PP=EP=1 (re-initialized: another test file on this worker may have set its own)."""
    from megatron_cpu.model import init_process_groups

    init_process_groups(1, 1, 1)
    yield
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()


@pytest.mark.parametrize(
    "recipe,arch",
    [("gpt_oss_20b_pretrain", GPT_OSS_20B), ("gpt_oss_120b_pretrain", GPT_OSS_120B), ("gpt_oss_tiny_pretrain", TINY)],
)
def test_megatron_counts_the_same(model_parallel, recipe, arch):
    assert _megatron_count(recipe) == arch.total_params()
