"""megatron_cpu.model: the tiny gpt-oss Megatron model builds, runs forward and backward, and trains on CPU."""

from __future__ import annotations

import pytest
import torch

from gptoss.arch import TINY
from megatron_cpu.compat import import_bridge


@pytest.fixture(scope="module")
def cpu():
    from megatron_cpu import model as cpu

    cpu.init_process_groups()
    yield cpu
    cpu.destroy_parallel()


def _provider(seq_length: int = 32):
    import_bridge()  # what the kit's entry points do first
    from megatron.bridge import AutoBridge

    provider = AutoBridge.from_hf_config(TINY.hf_config()).to_megatron_provider(load_weights=False)
    provider.seq_length = seq_length
    return provider


def _batch(batch: int = 2, seq: int = 24):
    # Longer than TINY.sliding_window (8), so the window mask matters.
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 5000, (batch, seq), generator=g)
    pos = torch.arange(seq)[None].expand(batch, -1)
    return ids, pos, torch.roll(ids, -1, 1)


def test_spec_swaps_in_the_cpu_classes(cpu):
    spec = cpu.cpu_layer_spec(cpu.make_cpu_friendly(_provider()))
    assert spec.submodules.self_attention.submodules.core_attention is cpu.CPUDotProductAttention
    moe = spec.submodules.mlp.keywords["submodules"]
    assert moe.router is cpu.CPUTopKRouter
    assert moe.experts.func is cpu.BiasSafeSequentialMLP


def test_inert_with_cuda(cpu, monkeypatch):
    """With CUDA present nothing is changed: the bridge's default spec, the provider untouched."""
    provider = _provider()
    before = (provider.transformer_layer_spec, provider.params_dtype, provider.moe_token_dispatcher_type)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu.make_cpu_friendly(provider) is provider
    assert (provider.transformer_layer_spec, provider.params_dtype, provider.moe_token_dispatcher_type) == before
    # The default spec needs Transformer Engine, absent here: check the delegation itself.
    sentinel = object()
    import_bridge()
    import megatron.bridge.models.gpt_provider as gpt_provider

    monkeypatch.setattr(gpt_provider, "default_layer_spec", lambda config: sentinel)
    assert cpu.cpu_layer_spec(provider) is sentinel
    original = torch.cuda.current_device
    with cpu.on_cpu():
        assert torch.cuda.current_device is original


def test_everything_on_cpu_and_the_classes_are_used(cpu):
    model = cpu.build_model(_provider())
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert sum(p.numel() for p in model.parameters()) == TINY.total_params()
    layer = model.decoder.layers[0]
    assert isinstance(layer.self_attention.core_attention, cpu.CPUDotProductAttention)
    assert isinstance(layer.mlp.router, cpu.CPUTopKRouter)
    assert all(isinstance(e.linear_fc2, cpu.CloneOutputRowParallelLinear) for e in layer.mlp.experts.local_experts)
    assert isinstance(model.rotary_pos_emb, cpu.CPUYarnRotaryEmbedding)
    # sliding (window 8) on layer 0, full attention on layer 1, as in HF's layer_types
    windows = [lyr.self_attention.core_attention.scale_mask_softmax.window_size for lyr in model.decoder.layers]
    assert windows == [(TINY.sliding_window - 1, 0), None]


def test_forward_backward_finite_and_every_parameter_gets_a_gradient(cpu):
    torch.manual_seed(0)
    model = cpu.build_model(_provider())
    ids, pos, labels = _batch()
    logits = model(ids, pos, None)
    assert logits.shape == (2, 24, TINY.vocab_size) and torch.isfinite(logits).all()
    loss = model(ids, pos, None, labels=labels).float().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    for n, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), n
    # sinks and expert biases are trained too (the in-place-on-view bug hit exactly the biases)
    attn = model.decoder.layers[0].self_attention.core_attention
    assert attn.softmax_offset.grad.abs().sum() > 0
    assert any(e.linear_fc2.bias.grad.abs().sum() > 0 for e in model.decoder.layers[0].mlp.experts.local_experts)


def test_loss_decreases_with_sgd_on_a_fixed_batch(cpu):
    torch.manual_seed(0)
    model = cpu.build_model(_provider())
    ids, pos, labels = _batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(8):
        loss = model(ids, pos, None, labels=labels).float().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(float(TINY.vocab_size))).item(), abs=0.5)
    assert losses[-1] < losses[0] - 1.0, losses
