"""gpt-oss recipes: small functions that each return one Megatron-Bridge ConfigContainer.

Four bases (pretrain from scratch, continued pretraining, full SFT, LoRA) are built from the
architecture module (`gptoss.arch`), never from the hub: the HF config is generated locally and
handed to AutoBridge.from_hf_config, so every recipe builds offline. Sizes differ only in data
(the `Layout` and a few hyperparameters); variants are helpers applied to a base:
`for_gpu_cluster` (Transformer Engine kernels, distributed optimizer: every production recipe),
`for_cpu` (the tiny recipes: fp32, CPU-safe layer spec, gloo) and `with_fp8_current_scaling`.

Each recipe is registered where it is defined (`@recipe`, see recipes/__init__.py) with its default
layout and allocation. Importing this module imports no Megatron: the builders do, when called.

Every recipe trains with the real o200k_harmony tokenizer and its 201,088-entry vocabulary (the
reference kit's pretrain recipes use a 32,000-entry placeholder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gptoss.arch import GPT_OSS_20B, GPT_OSS_120B, TINY, GptOssArch
from gptoss.tokenizer import hf_tokenizer_dir
from kit import workspace
from recipes.registry import Layout, recipe

if TYPE_CHECKING:
    from megatron.bridge.data.builders.gpt_sft import GPTSFTDatasetConfig
    from megatron.bridge.training.config import ConfigContainer

# The continued-pretraining blend (datasets under $WORKSPACE/data): `python -m data_prep blend`
# prints the same default.
CODE_DATASET, REPLAY_DATASET, REPLAY_SHARE = "the-stack", "replay", 0.2


def _bridge():
    """megatron.bridge, importable on machines without Transformer Engine (megatron_cpu.compat)."""
    from megatron_cpu.compat import import_bridge

    import_bridge()
    import megatron.bridge

    return megatron.bridge


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def _model(arch: GptOssArch, layout: Layout, seq_length: int):
    import torch

    AutoBridge = _bridge().AutoBridge
    model = arch.apply_to_provider(AutoBridge.from_hf_config(arch.hf_config()).to_megatron_provider(load_weights=False))
    model.seq_length = seq_length
    model.tensor_model_parallel_size = layout.tp
    model.pipeline_model_parallel_size = layout.pp
    model.virtual_pipeline_model_parallel_size = layout.vpp
    model.expert_model_parallel_size = layout.ep
    model.context_parallel_size = layout.cp
    model.sequence_parallel = layout.sp and layout.tp > 1
    model.pipeline_dtype = torch.bfloat16
    model.pipeline_model_parallel_layout = None
    # CP with learnable sinks needs a2a under TE attention; harmless at CP=1.
    model.cp_comm_type = "a2a"
    model.calculate_per_token_loss = True
    model.account_for_embedding_in_pipeline_split = False
    model.account_for_loss_in_pipeline_split = False
    model.moe_shared_expert_overlap = False
    model.moe_router_force_load_balancing = False
    return model


def _common(cfg: ConfigContainer, arch: GptOssArch, run: str, *, gbs: int, mbs: int, iters: int) -> ConfigContainer:
    """What every recipe shares: tokenizer, batch, output locations, optimizer precision."""
    import torch

    cfg.tokenizer.tokenizer_type = "HuggingFaceTokenizer"
    cfg.tokenizer.tokenizer_model = str(hf_tokenizer_dir())
    # The model's vocab_size (201,088) is the checkpoint's; never derive it from the tokenizer.
    cfg.tokenizer.use_tokenizer_vocab_size = False
    cfg.train.global_batch_size = gbs
    cfg.train.micro_batch_size = mbs
    cfg.train.train_iters = iters
    cfg.checkpoint.save = str(workspace.checkpoint_dir(run))
    cfg.checkpoint.load = str(workspace.checkpoint_dir(run))
    cfg.checkpoint.ckpt_format = "torch_dist"
    cfg.logger.tensorboard_dir = str(workspace.results_dir(run) / "tb")
    cfg.optimizer.use_precision_aware_optimizer = False
    for name in ("main_grads_dtype", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype"):
        setattr(cfg.optimizer, name, torch.float32)
    cfg.ddp.average_in_collective = False  # required with calculate_per_token_loss
    return cfg


def _sft_dataset(dataset: str, seq_length: int) -> GPTSFTDatasetConfig:
    """Packed harmony conversations prepared by `python -m data_prep sft` under data/<dataset>."""
    _bridge()
    from megatron.bridge.data.builders.gpt_sft import GPTSFTDatasetConfig
    from megatron.bridge.data.packing import PackedSequenceSpecs

    specs = PackedSequenceSpecs(packed_sequence_size=seq_length)
    packed = workspace.packed_sft_files(workspace.data_dir(dataset), seq_length)
    # The files data_prep writes; set after construction because the specs check that paths exist.
    specs.packed_train_data_path = str(packed["train"])
    specs.packed_val_data_path = str(packed["validation"])
    specs.packed_metadata_path = packed["metadata"]
    return GPTSFTDatasetConfig(
        seq_length=seq_length,
        dataset_root=str(workspace.data_dir(dataset)),
        enable_offline_packing=True,
        offline_packing_specs=specs,
        dataset_kwargs={"pad_to_max_length": True},
        num_workers=1,
    )


# ---------------------------------------------------------------------------------------------
# The four bases
# ---------------------------------------------------------------------------------------------


def pretrain_config(
    arch: GptOssArch,
    layout: Layout,
    *,
    run: str,
    seq_length: int = 4096,
    gbs: int = 512,
    mbs: int = 1,
    iters: int = 500_000,
    max_lr: float = 3e-4,
    min_lr: float = 3e-5,
    warmup: int = 2000,
    data: list[tuple[str, float]] | None = None,
) -> ConfigContainer:
    """Pretraining from scratch on indexed datasets (weights from random init).

    An MoE trained from scratch needs a balancing term or experts collapse: aux loss 1e-2 (the
    released config's 0.9 is for logging, the bridge imports it as "none").
    """
    _bridge()
    from megatron.bridge.recipes.common import _pretrain_common

    cfg = _pretrain_common()
    cfg.model = _model(arch, layout, seq_length)
    cfg.model.moe_router_load_balancing_type = "aux_loss"
    cfg.model.moe_aux_loss_coeff = 1e-2
    cfg.dataset.seq_length = seq_length
    data = data or [("pretrain", 1.0)]
    cfg.dataset.blend = ([str(workspace.data_prefix(d)) for d, _ in data], [w for _, w in data])
    cfg.dataset.split = "998,1,1"
    cfg.dataset.num_workers = 8
    cfg.scheduler.lr_warmup_iters = warmup
    cfg.optimizer.lr = max_lr
    cfg.optimizer.min_lr = min_lr
    return _common(cfg, arch, run, gbs=gbs, mbs=mbs, iters=iters)


def cpt_config(
    arch: GptOssArch,
    layout: Layout,
    *,
    run: str,
    code: str = CODE_DATASET,
    replay: str = REPLAY_DATASET,
    replay_share: float = REPLAY_SHARE,
    **kwargs,
) -> ConfigContainer:
    """Continued pretraining of the released weights on code with a replay share of general text.

    Starts from the imported checkpoint (models/<model>/megatron), re-warms the LR to a tenth of
    pretraining's peak (the released weights are already at the end of a schedule) and decays it
    with a cosine. A mild aux loss (1e-3) keeps routing balanced as the data shifts to code.
    """
    defaults = dict(max_lr=3e-5, min_lr=3e-6, warmup=500, iters=50_000)
    cfg = pretrain_config(
        arch, layout, run=run, data=[(code, 1.0 - replay_share), (replay, replay_share)], **{**defaults, **kwargs}
    )
    cfg.model.moe_aux_loss_coeff = 1e-3
    # Weights only (the release has no optimizer state); a restart resumes from checkpoint.load.
    cfg.checkpoint.pretrained_checkpoint = str(workspace.model_dir(_model_name(arch), "megatron"))
    return cfg


def sft_config(
    arch: GptOssArch,
    layout: Layout,
    *,
    run: str,
    dataset: str = "sft",
    seq_length: int = 2048,
    gbs: int = 128,
    mbs: int = 1,
    iters: int = 1000,
    max_lr: float = 5e-6,
    warmup: int = 50,
) -> ConfigContainer:
    """Full-parameter SFT on packed harmony conversations, from a (continued-)pretrained checkpoint."""
    _bridge()
    from megatron.bridge.recipes.common import _sft_common

    cfg = _sft_common()
    cfg.model = _model(arch, layout, seq_length)
    # Keep routing close to the release: a tiny balancing term (other kits use ~1e-5 for SFT).
    cfg.model.moe_router_load_balancing_type = "aux_loss"
    cfg.model.moe_aux_loss_coeff = 1e-5
    cfg.dataset = _sft_dataset(dataset, seq_length)
    if layout.cp > 1:
        cfg.dataset.offline_packing_specs.pad_seq_to_mult = 2 * layout.cp
    cfg.scheduler.lr_warmup_iters = warmup
    cfg.optimizer.lr = max_lr
    cfg.optimizer.min_lr = 0.0
    cfg.checkpoint.pretrained_checkpoint = str(workspace.model_dir(_model_name(arch), "megatron"))
    return _common(cfg, arch, run, gbs=gbs, mbs=mbs, iters=iters)


def lora_config(
    arch: GptOssArch,
    layout: Layout,
    *,
    run: str,
    rank: int = 32,
    alpha: int = 32,
    targets: tuple[str, ...] = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"),
    max_lr: float = 1e-4,
    **kwargs,
) -> ConfigContainer:
    """LoRA on attention (qkv, proj) and on the experts (fc1, fc2); base weights frozen."""
    _bridge()
    from megatron.bridge.peft.lora import LoRA
    from megatron.bridge.recipes.common import _peft_common

    cfg = sft_config(arch, layout, run=run, max_lr=max_lr, **kwargs)
    base = _peft_common().peft
    cfg.peft = LoRA(
        target_modules=list(targets),
        dim=rank,
        alpha=alpha,
        dropout=0.0,
        dropout_position=base.dropout_position,
        lora_A_init_method=base.lora_A_init_method,
        lora_B_init_method=base.lora_B_init_method,
    )
    # The router is frozen under LoRA: no balancing term to add.
    cfg.model.moe_router_load_balancing_type = "none"
    return cfg


def _model_name(arch: GptOssArch) -> str:
    return f"gpt-oss-{arch.name}"


# ---------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------


def for_gpu_cluster(cfg: ConfigContainer) -> ConfigContainer:
    """The production recipes' kernels and precision: Transformer Engine layers, grouped-GEMM
    experts with the all-to-all dispatcher, fused permute and cross entropy; the distributed
    optimizer with fp32 gradient reduction, and a NaN check on gradients."""
    m = cfg.model
    m.transformer_impl = "transformer_engine"
    m.moe_token_dispatcher_type = "alltoall"
    m.moe_grouped_gemm = True
    m.moe_permute_fusion = True
    m.moe_router_fusion = False
    m.cross_entropy_loss_fusion = True
    m.cross_entropy_fusion_impl = "native"
    m.moe_router_padding_for_fp8 = False
    cfg.ddp.use_distributed_optimizer = True
    cfg.ddp.grad_reduce_in_fp32 = True
    cfg.ddp.check_for_nan_in_grad = True
    return cfg


def for_cpu(cfg: ConfigContainer) -> ConfigContainer:
    """The tiny recipes: one CPU process in fp32 with Megatron's local layers made CPU-safe
    (megatron_cpu.model.make_cpu_friendly, inert where CUDA exists), gloo, the plain optimizer, and a
    validation, checkpoint and log line within a few steps."""
    from megatron_cpu.model import make_cpu_friendly

    make_cpu_friendly(cfg.model)
    iters = cfg.train.train_iters
    cfg.mixed_precision = None
    cfg.optimizer.bf16 = False
    cfg.optimizer.clip_grad = 1.0
    cfg.ddp.use_distributed_optimizer = False
    cfg.optimizer.use_distributed_optimizer = False
    cfg.ddp.overlap_grad_reduce = False
    cfg.ddp.overlap_param_gather = False
    cfg.ddp.grad_reduce_in_fp32 = False
    cfg.dist.distributed_backend = "gloo"
    cfg.train.manual_gc = False
    cfg.validation.eval_iters = 2
    cfg.validation.eval_interval = max(iters, 1)
    cfg.checkpoint.save_interval = max(iters, 1)
    cfg.logger.log_interval = 1
    if hasattr(cfg.dataset, "split"):
        cfg.dataset.split = "90,5,5"  # a small corpus must still give every split documents
        cfg.dataset.num_workers = 2
    return cfg


def with_selective_recompute(cfg: ConfigContainer, *modules: str) -> ConfigContainer:
    """Recompute only these parts of each layer in the backward pass (e.g. "layernorm", "moe_act":
    cheap to redo, large to keep); the planner's activation model reads the same two fields."""
    cfg.model.recompute_granularity = "selective"
    cfg.model.recompute_modules = list(modules)
    return cfg


def with_fp8_current_scaling(cfg: ConfigContainer) -> ConfigContainer:
    """Hopper FP8 with current (per-tensor, just-in-time) scaling; router padded so the expert
    GEMMs see FP8-aligned token counts (needed for the experts' bias split)."""
    cfg.mixed_precision = "bf16_with_fp8_current_scaling_mixed"
    cfg.model.moe_router_padding_for_fp8 = True
    return cfg


# ---------------------------------------------------------------------------------------------
# The recipes, each registered with its default layout and allocation (`python -m recipes list`
# prints "<what>, <layout>"). Each GPU recipe also comes as <name>_fp8cs.
# ---------------------------------------------------------------------------------------------


def gpu_recipe(layout: Layout, **kwargs):
    """@recipe for the GPU recipes: also registers the <name>_fp8cs variant."""
    return recipe(layout, variants={"fp8cs": (with_fp8_current_scaling, "FP8 current scaling")}, **kwargs)



@gpu_recipe(Layout(tp=2, pp=4, ep=4, sp=True), nodes=2, gpus_per_node=8, what="20b from scratch")
def gpt_oss_20b_pretrain(layout: Layout) -> ConfigContainer:
    return for_gpu_cluster(pretrain_config(GPT_OSS_20B, layout, run="gpt-oss-20b-pretrain"))


@gpu_recipe(Layout(pp=4, ep=8), nodes=8, gpus_per_node=8, what="120b from scratch")
def gpt_oss_120b_pretrain(layout: Layout) -> ConfigContainer:
    """The layout of Megatron-Bridge's tuned H100 perf recipe (TP1 PP4 EP8 with the norms and the
    experts' activation recomputed: 5,824 tok/s/GPU on 64 H100), not its verification card's TP2 PP4
    EP16 (1,966 tok/s/GPU): EP16 spans two nodes, so every MoE layer's all-to-all crosses
    InfiniBand, while EP8 stays on NVLink. Kept from the card: GBS 512 (the perf recipe's 1280 is a
    throughput choice, ~3% less pipeline bubble, and changes the optimisation) and natural routing
    with an aux loss (the perf figure forced balanced routing on mock data: expect less). The plan
    is 71 of 79.6 GiB; the card's layout (model.tensor_model_parallel_size=2 model.sequence_parallel=true
    model.expert_model_parallel_size=16 model.recompute_granularity=null) plans at 50 GiB."""
    return with_selective_recompute(
        for_gpu_cluster(pretrain_config(GPT_OSS_120B, layout, run="gpt-oss-120b-pretrain")), "layernorm", "moe_act"
    )


@gpu_recipe(Layout(tp=2, pp=4, ep=4, sp=True), nodes=2, gpus_per_node=8, what="20b continued pretraining on code (80%) + replay (20%)")
def gpt_oss_20b_cpt_code(layout: Layout) -> ConfigContainer:
    """The motivating job: gpt-oss-20b continued on The Stack (80%) with 20% general-text replay."""
    return for_gpu_cluster(cpt_config(GPT_OSS_20B, layout, run="gpt-oss-20b-cpt-code", gbs=256))


@gpu_recipe(Layout(pp=4, ep=8), nodes=8, gpus_per_node=8, what="120b continued pretraining on code (80%) + replay (20%)")
def gpt_oss_120b_cpt_code(layout: Layout) -> ConfigContainer:
    """The layout and recompute of gpt_oss_120b_pretrain (same model, same step): EP8 inside a node."""
    return with_selective_recompute(
        for_gpu_cluster(cpt_config(GPT_OSS_120B, layout, run="gpt-oss-120b-cpt-code", gbs=256)), "layernorm", "moe_act"
    )


@gpu_recipe(Layout(ep=8), nodes=1, gpus_per_node=8, what="20b full SFT on packed harmony chats")
def gpt_oss_20b_sft(layout: Layout) -> ConfigContainer:
    return for_gpu_cluster(sft_config(GPT_OSS_20B, layout, run="gpt-oss-20b-sft"))


@gpu_recipe(Layout(tp=2, pp=4, ep=8, sp=True), nodes=4, gpus_per_node=8, what="120b full SFT on packed harmony chats")
def gpt_oss_120b_sft(layout: Layout) -> ConfigContainer:
    """The layout Megatron-Bridge's 120b verification card trained on 32 H100 (1,016 tok/s/GPU): its
    recipe's TP1 PP4 EP8 with TP2 + sequence parallel and the experts' activation recomputed, as the
    card's command overrides. Under EP8 x PP4 each expert lives on one rank (expert DP = 32 / (4 x 8)
    = 1), so nothing shards the experts' 3.6B params/GPU of fp32 grads and optimizer state; at TP1
    without recompute the plan is 83 GiB. (Setting ddp.grad_reduce_in_fp32=False would not help on
    its own: mixed_precision "bf16_mixed" sets it back to True when the bridge sets the run up.)"""
    return with_selective_recompute(for_gpu_cluster(sft_config(GPT_OSS_120B, layout, run="gpt-oss-120b-sft")), "moe_act")


# Long-context SFT (32k tokens a pack): Megatron-Bridge's verified 32k runs, each with the settings of
# its card. Context parallelism splits every pack over CP ranks (cp_comm_type="a2a", set in _model:
# the p2p ring refuses learnable sinks), which needs every sequence of a pack to span a multiple of
# 2*CP tokens: sft_config sets offline_packing_specs.pad_seq_to_mult = 2*CP, with which the bridge's
# loader reads each sequence's boundaries as padded ones (cu_seqlens_padded). `python -m data_prep sft
# ... --pad-to-multiple 2*CP` writes the packs that way (each conversation padded with the tokenizer's
# eod, <|return|>, loss-masked, until len - 1 is a multiple, as the bridge's own packer does), and
# `recipes run` refuses packs padded to another multiple.


@gpu_recipe(Layout(tp=4, ep=8, cp=2, sp=True), nodes=1, gpus_per_node=8, what="20b full SFT, 32k-token packs")
def gpt_oss_20b_sft_32k(layout: Layout) -> ConfigContainer:
    """Megatron-Bridge's 20b 32k card (8 H100, 428 tok/s/GPU): TP4 SP CP2 EP8, full recompute of every
    layer, unfused cross entropy, 32 packs a step."""
    cfg = for_gpu_cluster(sft_config(GPT_OSS_20B, layout, run="gpt-oss-20b-sft-32k", seq_length=32768, gbs=32))
    cfg.model.recompute_granularity = "full"
    cfg.model.recompute_method = "uniform"
    cfg.model.recompute_num_layers = 1
    cfg.model.cross_entropy_loss_fusion = False
    return cfg


@gpu_recipe(Layout(tp=2, pp=6, ep=4, cp=4, sp=True), nodes=6, gpus_per_node=8, what="120b full SFT, 32k-token packs")
def gpt_oss_120b_sft_32k(layout: Layout) -> ConfigContainer:
    """Megatron-Bridge's 120b 32k card (48 H100, 112 tok/s/GPU): TP2 SP PP6 CP4 EP4, the experts'
    activation recomputed, unfused cross entropy and bias-activation, 4 packs a step (the plan is
    78 of 79.6 GiB: little room to raise the batch per step or drop the recompute)."""
    cfg = for_gpu_cluster(sft_config(GPT_OSS_120B, layout, run="gpt-oss-120b-sft-32k", seq_length=32768, gbs=4))
    with_selective_recompute(cfg, "moe_act")
    cfg.model.cross_entropy_loss_fusion = False
    cfg.model.bias_activation_fusion = False
    return cfg


@gpu_recipe(Layout(), nodes=1, gpus_per_node=1, what="20b LoRA (attention + experts)")
def gpt_oss_20b_lora(layout: Layout) -> ConfigContainer:
    return for_gpu_cluster(lora_config(GPT_OSS_20B, layout, run="gpt-oss-20b-lora", gbs=32))


@gpu_recipe(Layout(ep=8), nodes=1, gpus_per_node=8, what="120b LoRA (attention + experts)")
def gpt_oss_120b_lora(layout: Layout) -> ConfigContainer:
    return for_gpu_cluster(lora_config(GPT_OSS_120B, layout, run="gpt-oss-120b-lora", gbs=32))


# The tiny family: the same four bases, on one CPU process, in seconds.
_TINY = dict(seq_length=128, gbs=2, mbs=2, iters=20)
_TINY_PACKED = {**_TINY, "mbs": 1}  # packed sequences need micro batch 1 (the bridge checks)
_CPU = dict(nodes=1, gpus_per_node=1)


@recipe(Layout(), what="tiny gpt-oss from scratch (CPU)", **_CPU)
def gpt_oss_tiny_pretrain(layout: Layout) -> ConfigContainer:
    return for_cpu(pretrain_config(TINY, layout, run="gpt-oss-tiny-pretrain", max_lr=3e-3, min_lr=3e-4, warmup=2, **_TINY))


@recipe(Layout(), what="tiny gpt-oss continued pretraining on code (CPU)", **_CPU)
def gpt_oss_tiny_cpt_code(layout: Layout) -> ConfigContainer:
    return for_cpu(cpt_config(TINY, layout, run="gpt-oss-tiny-cpt-code", max_lr=1e-3, min_lr=1e-4, warmup=2, **_TINY))


@recipe(Layout(), what="tiny gpt-oss full SFT (CPU)", **_CPU)
def gpt_oss_tiny_sft(layout: Layout) -> ConfigContainer:
    return for_cpu(sft_config(TINY, layout, run="gpt-oss-tiny-sft", max_lr=1e-3, warmup=2, **_TINY_PACKED))


@recipe(Layout(), what="tiny gpt-oss LoRA (CPU)", **_CPU)
def gpt_oss_tiny_lora(layout: Layout) -> ConfigContainer:
    return for_cpu(
        lora_config(TINY, layout, run="gpt-oss-tiny-lora", rank=8, alpha=16, max_lr=1e-3, warmup=2, **_TINY_PACKED)
    )
