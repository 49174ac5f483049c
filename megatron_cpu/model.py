"""Building and running Megatron gpt-oss models on whatever the machine has: the GPU when there is
one, else the CPU with the adaptations below.

Megatron-Core's "local" (non Transformer Engine) modules still put a few tensors on CUDA
(megatron-core 0.19.2): the attention sinks (`softmax_offset`), the causal and sliding-window
masks (hard-coded `device="cuda"`), the attention score buffer (parallel_state's global memory
buffer), the router weights (moved to CUDA on first forward) and the YaRN frequencies (moved to CUDA
on first forward). This module swaps exactly those classes for subclasses that keep everything on
the CPU, through the layer spec (attention, router) or by re-classing one module after construction
(YaRN lives in GPTModel itself, outside the layer spec). It also works around an mcore backward bug
(see `CloneOutputRowParallelLinear`).

Everything here is inert when `torch.cuda.is_available()`: `cpu_layer_spec` then returns
Megatron's normal spec and `make_cpu_friendly` / `build_model` leave the provider alone. The
replacement classes are device-neutral (on a GPU `on_cpu` is a no-op and they behave as the stock
ones), so a GPU without Transformer Engine uses them too: `without_te` (called by the hook that
`megatron_cpu.compat.import_bridge` installs on such machines).

Public API (stable; the CPU training loop builds on it):

- `init_process_groups(tp=1, pp=1, ep=1, rank=0, world_size=1)`: torch.distributed (NCCL on a GPU,
  gloo on CPU) + Megatron's parallel_state.
- `cpu_layer_spec(provider)`: the transformer layer spec with the CPU-safe classes.
- `make_cpu_friendly(provider)`: fp32, no fused kernels, allgather dispatcher, the CPU layer spec.
- `local_layer_spec(provider)`: the same classes on any device (megatron-core's local layers).
- `without_te(provider)`: a CUDA machine without Transformer Engine: the local layers in bf16, the
  fusions that need TE or Apex off.
- `build_model(provider, ...)`: finalize + provide, returns this rank's GPTModel (one PP stage) on
  the current CUDA device, or on the CPU with the CPU-safe classes.
- `on_cpu()`: context manager mapping `torch.cuda.current_device()` to "cpu" and the CUDA RNG state
  to the CPU one (construction and checkpoint-save helper).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.fusions.fused_softmax import FusedScaleMaskSoftmax, SoftmaxOne
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import YarnRotaryEmbedding
from megatron.core.tensor_parallel.layers import RowParallelLinear
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnBackend, AttnMaskType
from megatron.core.transformer.moe.experts import SequentialMLP
from megatron.core.transformer.moe.router import TopKRouter

from gptoss.arch import EXPERT_TENSOR_PARALLEL
from megatron_cpu.training import cuda_available, eager_without_gpu, forced_cpu  # noqa: F401 - re-exported

# ---------------------------------------------------------------------------------------------
# torch.cuda.current_device -> "cpu" (only while Megatron code that hard-codes it runs)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _causal_mask_cpu(sq: int) -> torch.Tensor:
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


@functools.lru_cache(maxsize=8)
def _sliding_window_mask_cpu(sq: int, skv: int, window_size: tuple[int, int]) -> torch.Tensor:
    # Same construction as megatron.core.transformer.utils.get_sliding_window_causal_mask, on CPU.
    m = torch.ones(sq, skv, dtype=torch.bool)
    mu = torch.triu(m, diagonal=skv - sq - window_size[0])
    ml = torch.tril(mu, diagonal=skv - sq + window_size[1])
    return ~ml


@contextlib.contextmanager
def on_cpu() -> Iterator[None]:
    """Run Megatron code that asks CUDA for a device or an RNG state, without CUDA.

    Maps `torch.cuda.current_device()` to "cpu", `torch.cuda.get_rng_state()` to the CPU
    generator's state (Megatron-Bridge's save_checkpoint records it even with save_rng=False) and
    `torch.cuda.synchronize()` to a no-op (dist_checkpointing calls it before writing).
    A no-op when CUDA is available. Not thread-safe (it patches torch functions for its duration),
    which is fine for the single-threaded construction, forward and save it wraps.
    """
    if cuda_available() or hasattr(torch.cuda, "real_is_available"):  # GPU, or megatron_cpu.training's shims
        yield
        return
    saved = torch.cuda.current_device, torch.cuda.get_rng_state, torch.cuda.synchronize
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()  # type: ignore[assignment]
    torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.cuda.current_device, torch.cuda.get_rng_state, torch.cuda.synchronize = saved


# ---------------------------------------------------------------------------------------------
# Replacement classes
# ---------------------------------------------------------------------------------------------


class CPUScaleMaskSoftmax(FusedScaleMaskSoftmax):
    """The PyTorch softmax path with CPU masks (the stock one builds them with device="cuda")."""

    def forward(self, input, mask, softmax_offset=None):  # noqa: A002 - Megatron's signature
        # forward_torch_softmax of megatron-core 0.19.2 with the masks built on the input's device
        # (the stock one always rebuilds them with device="cuda" when a window is set).
        if self.input_in_float16 and self.softmax_in_fp32:
            input = input.float()
        if self.scale is not None:
            input = input * self.scale
        sq, sk = input.size(2), input.size(3)
        if self.window_size is not None:
            window = _sliding_window_mask_cpu(sq, sk, tuple(self.window_size)).to(input.device)
            mask = window if mask is None else mask | window  # a given mask: packed sequences
        elif self.attn_mask_type == AttnMaskType.causal and mask is None and sq > 1:
            mask = _causal_mask_cpu(sq).to(input.device)
        masked = self.mask_func(input, mask) if mask is not None else input
        if softmax_offset is None:
            probs = torch.softmax(masked, dim=-1)
        else:
            probs = SoftmaxOne(-1, softmax_offset.to(input.device))(masked)
        if self.input_in_float16 and self.softmax_in_fp32:
            probs = probs.half() if self.input_in_fp16 else probs.bfloat16()
        return probs


class CPUDotProductAttention(DotProductAttention):
    """DotProductAttention whose sinks, masks and score buffer live on the CPU."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with on_cpu():
            super().__init__(*args, **kwargs)
        self.scale_mask_softmax.__class__ = CPUScaleMaskSoftmax

    def forward(
        self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None, packed_seq_params=None
    ):
        if packed_seq_params is not None:
            # Packed sequences (SFT): the stock class refuses them (TE only). Attention arrives in
            # THD layout [tokens, heads, dim], RoPE already applied per sequence; treat the pack as
            # one batch row and keep each sequence to itself with a block-diagonal causal mask.
            cu = packed_seq_params.cu_seqlens_q_padded
            cu = packed_seq_params.cu_seqlens_q if cu is None else cu
            attention_mask = _packed_causal_mask(tuple(int(x) for x in cu.tolist()), query.size(0))
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        with on_cpu():  # parallel_state's global memory buffer allocates on current_device()
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias)


@functools.lru_cache(maxsize=8)
def _packed_causal_mask(cu_seqlens: tuple[int, ...], tokens: int) -> torch.Tensor:
    """[1, 1, t, t], True where attention is not allowed: across sequences, or to later tokens."""
    segment = torch.zeros(tokens, dtype=torch.long)
    for i, (start, end) in enumerate(zip(cu_seqlens[:-1], cu_seqlens[1:])):
        segment[start:end] = i
    segment[cu_seqlens[-1] :] = len(cu_seqlens)  # padding past the last sequence: its own block
    same = segment[:, None] == segment[None, :]
    return (~same | _causal_mask_cpu(tokens))[None, None]


class CPUTopKRouter(TopKRouter):
    """TopKRouter that keeps its weights where they are (the stock one moves them to CUDA)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with on_cpu():
            super().__init__(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any):
        with on_cpu():
            return super().forward(*args, **kwargs)


class CPUYarnRotaryEmbedding(YarnRotaryEmbedding):
    """YaRN with its inverse frequencies kept on the CPU (the stock one moves them to CUDA)."""

    def get_emb(self, max_seq_len: int, offset: int = 0):
        with on_cpu():
            return super().get_emb(max_seq_len, offset)


class CloneOutputRowParallelLinear(RowParallelLinear):
    """An expert's linear_fc2 that returns a fresh tensor rather than a view.

    mcore bug (0.19.2, experts with bias, expert TP=1): RowParallelLinear's output comes out of
    `_ReduceFromModelParallelRegion` as a view of its input (the all-reduce over one rank is the
    identity), and MLP.forward then adds the bias in place (`output += bias * probs`), which
    autograd forbids ("Output 0 of _ReduceFromModelParallelRegion is a view and is being
    modified inplace"). Cloning here breaks the view; it costs one copy of the expert output.
    """

    def forward(self, *args: Any, **kwargs: Any):
        output, bias = super().forward(*args, **kwargs)
        return output.clone(), bias


class BiasSafeSequentialMLP(SequentialMLP):
    """SequentialMLP whose experts' linear_fc2 is `CloneOutputRowParallelLinear` (SequentialMLP
    hard-codes its expert class, so the swap happens after construction)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for expert in self.local_experts:
            if type(expert.linear_fc2) is RowParallelLinear:
                expert.linear_fc2.__class__ = CloneOutputRowParallelLinear


@functools.cache
def _register_with_bridge() -> None:
    """The bridge decides how to split or gather a parameter under TP from its module's class name:
    name the CPU classes to it (once, when a CPU layer spec is first built: nothing at import).
    The bridge is imported already: a provider to build a spec for is one of its objects (made after
    megatron_cpu.compat.import_bridge, which every entry point runs first)."""
    from megatron.bridge.models.conversion.param_mapping import AutoMapping

    AutoMapping.register_module_type(CPUDotProductAttention.__name__, "column")  # sinks: one per head
    AutoMapping.register_module_type(CPUTopKRouter.__name__, "replicated")
    AutoMapping.register_module_type(CloneOutputRowParallelLinear.__name__, "row")


# ---------------------------------------------------------------------------------------------
# Layer spec and provider
# ---------------------------------------------------------------------------------------------


def cpu_layer_spec(provider: Any):
    """The transformer layer spec for `provider`, with the CPU-safe classes swapped in.

    Usable as `provider.transformer_layer_spec` (it takes the config, like Megatron's own spec
    functions). With CUDA available it returns Megatron-Bridge's default spec (Transformer Engine
    when it is installed) unchanged.
    """
    from megatron.bridge.models.gpt_provider import default_layer_spec

    if cuda_available():
        return default_layer_spec(provider)
    return local_layer_spec(provider)


def local_layer_spec(provider: Any):
    """megatron-core's local (non Transformer Engine) layer spec for `provider` with the classes above
    swapped in, on any device: learnable sinks in `CPUDotProductAttention`, `CPUTopKRouter`, and
    bias-safe `SequentialMLP` experts (the mcore bug is in autograd, not in a device)."""
    from megatron.bridge.models.gpt_provider import local_layer_spec as bridge_local_layer_spec

    _register_with_bridge()
    spec = bridge_local_layer_spec(provider)
    layer = spec.submodules
    layer.self_attention.submodules.core_attention = CPUDotProductAttention
    mlp = layer.mlp
    if isinstance(mlp, functools.partial) and "submodules" in mlp.keywords:
        moe_sub = dataclasses.replace(mlp.keywords["submodules"], router=CPUTopKRouter)
        experts = moe_sub.experts
        if isinstance(experts, functools.partial) and experts.func is SequentialMLP:
            experts = functools.partial(BiasSafeSequentialMLP, *experts.args, **experts.keywords)
            moe_sub = dataclasses.replace(moe_sub, experts=experts)
        layer.mlp = functools.partial(mlp.func, *mlp.args, **{**mlp.keywords, "submodules": moe_sub})
    return spec


# Fusions whose kernels come from Transformer Engine or Apex (megatron-core 0.19.2): off without TE.
# bias_activation_fusion, bias_dropout_fusion and the native cross-entropy fusion are megatron-core's
# own (torch.jit / torch.compile) and stay on a GPU.
TE_OR_APEX_FUSIONS = (
    "moe_permute_fusion",
    "moe_router_fusion",
    "masked_softmax_fusion",
    "apply_rope_fusion",
    "gradient_accumulation_fusion",
    "persist_layer_norm",
)
_SAID_WITHOUT_TE = False


def without_te(provider: Any) -> Any:
    """A GPU without Transformer Engine: megatron-core's local layers (`local_layer_spec`, the path
    with learnable sinks that the CPU runs use) instead of TE's, in the recipe's precision (bf16), with
    the fusions that need TE or Apex off; says so once per process. Returns the provider.

    Inert on a CPU (make_cpu_friendly's case) and for a provider already set to local layers.
    An FP8 recipe cannot run without TE: a ValueError that says so.
    """
    global _SAID_WITHOUT_TE
    if not cuda_available() or provider.transformer_impl == "local":
        return provider
    if getattr(provider, "fp8", None):
        raise ValueError(
            f"fp8={provider.fp8!r} needs Transformer Engine, which is not installed here: "
            "use the recipe without the _fp8cs suffix, or a machine with Transformer Engine"
        )
    provider.transformer_impl = "local"
    provider.transformer_layer_spec = local_layer_spec
    if provider.attention_backend == AttnBackend.local:  # (would overwrite core_attention with the stock class)
        provider.attention_backend = AttnBackend.auto
    # megatron-core's local spec always builds SequentialMLP experts; say so in the config too
    provider.moe_grouped_gemm = False
    if getattr(provider, "cross_entropy_fusion_impl", None) == "te":
        provider.cross_entropy_fusion_impl = "native"
    for flag in TE_OR_APEX_FUSIONS:
        setattr(provider, flag, False)
    if not _SAID_WITHOUT_TE:
        _SAID_WITHOUT_TE = True
        print(
            "Transformer Engine not installed: using megatron-core's local layers (DotProductAttention "
            "with learnable sinks, SequentialMLP experts); fusions that need TE or Apex are off",
            file=sys.stderr,
            flush=True,
        )
    return provider


def make_cpu_friendly(provider: Any) -> Any:
    """Settings for running `provider`'s model in fp32 on CPU processes; returns the provider.

    Inert (returns it unchanged) when CUDA is available.
    """
    if cuda_available():
        return provider
    eager_without_gpu()  # Megatron's torch.compile'd fusions target CUDA
    provider.transformer_impl = "local"
    provider.transformer_layer_spec = cpu_layer_spec
    # attention_backend="local" makes the provider overwrite core_attention with the stock class.
    if provider.attention_backend == AttnBackend.local:
        provider.attention_backend = AttnBackend.auto
    provider.params_dtype = torch.float32
    provider.pipeline_dtype = torch.float32
    provider.bf16 = False
    provider.fp16 = False
    provider.use_cpu_initialization = True
    provider.moe_grouped_gemm = False
    provider.moe_token_dispatcher_type = "allgather"  # alltoall allocates a CUDA stream
    for flag in (
        "moe_permute_fusion",
        "moe_router_fusion",
        "bias_activation_fusion",
        "bias_dropout_fusion",
        "masked_softmax_fusion",
        "apply_rope_fusion",
        "gradient_accumulation_fusion",
        "cross_entropy_loss_fusion",
        "persist_layer_norm",
    ):
        setattr(provider, flag, False)
    return provider


def fix_after_build(model: torch.nn.Module) -> torch.nn.Module:
    """Re-class the modules created outside the layer spec (YaRN) for CPU. Inert with CUDA."""
    if cuda_available():
        return model
    for module in model.modules():
        if type(module) is YarnRotaryEmbedding:
            module.__class__ = CPUYarnRotaryEmbedding
    return model


def build_model(
    provider: Any, *, pre_process: bool | None = None, post_process: bool | None = None
) -> torch.nn.Module:
    """Build this rank's GPTModel (its pipeline stage): on the current CUDA device when there is a
    GPU, else on the CPU.

    Call `init_process_groups` first. Makes the provider CPU-friendly, finalizes it, and builds with
    `torch.cuda.current_device()` mapped to CPU. With CUDA available this is a plain
    `provider.provide()` and the model is moved to the current CUDA device.
    """
    make_cpu_friendly(provider)
    provider.finalize()
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    with on_cpu():
        model = provider.provide(pre_process=pre_process, post_process=post_process)
    if cuda_available():
        return model.cuda()
    return fix_after_build(model)


# ---------------------------------------------------------------------------------------------
# torch.distributed + parallel_state
# ---------------------------------------------------------------------------------------------


def init_process_groups(
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    backend: str | None = None,
    seed: int = 1234,
) -> None:
    """Initialize torch.distributed and Megatron's parallel_state for `world_size` ranks.

    Rank and world size default to torchrun's RANK/WORLD_SIZE (or 0/1). The backend defaults to
    gloo without CUDA and nccl with it. MASTER_ADDR/PORT default to 127.0.0.1:29500 unless set (one process: no port at all).
    Idempotent: an initialized multi-rank group keeps its process group and only parallel_state is
    rebuilt; a one-process group is torn down and rebuilt whole (see below).
    Also seeds Megatron's model-parallel RNG tracker (its CPU part), which model construction uses.
    """
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() == 1 and parallel_state.model_parallel_is_initialized():
        # destroy_model_parallel() forgets Megatron's ~30 subgroups but torch keeps them: each gloo
        # group holds its own threads (a test worker that re-initialized a few dozen times had 380
        # gloo_tcp_loop threads spinning, a third of a core). One process rebuilds from scratch.
        destroy_parallel()
    if not dist.is_initialized():
        rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        backend = backend or ("nccl" if cuda_available() else "gloo")
        if cuda_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
        if world_size == 1:
            # one process needs no rendezvous: an in-memory store, so that two conversions or tests
            # on one host never race for a TCP port (even with a MASTER_PORT inherited from a parent)
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            dist.init_process_group(backend, rank=rank, world_size=world_size)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        expert_model_parallel_size=ep,
        # gpt-oss experts are never tensor-split: parallel_state would default ETP to TP
        expert_tensor_parallel_size=EXPERT_TENSOR_PARALLEL,
    )
    torch.manual_seed(seed)
    if cuda_available():
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    else:
        _install_cpu_rng_tracker()


def _install_cpu_rng_tracker() -> None:
    """Megatron forks a CUDA RNG state around dropout (attention dropout, TP-region init). On CPU
    there is no CUDA generator: install a tracker whose fork() simply uses the CPU generator. gpt-oss
    trains with dropout 0, so nothing random happens inside those forks anyway."""
    from megatron.core.tensor_parallel import random as mrandom

    class CPURNGStatesTracker(mrandom.CudaRNGStatesTracker):
        def add(self, name: str, seed: int) -> None:
            self.states_[name] = seed

        @contextlib.contextmanager
        def fork(self, name: str = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            yield

    mrandom._CUDA_RNG_STATE_TRACKER = CPURNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def destroy_parallel() -> None:
    """Tear down parallel_state and the process group (tests call this between layouts)."""
    import torch.distributed as dist

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
