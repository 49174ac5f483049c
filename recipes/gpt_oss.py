"""gpt-oss recipes: small functions that each return one Megatron-Bridge ConfigContainer.

Four bases (pretrain from scratch, continued pretraining, full SFT, LoRA) are built from the
architecture module (`gptoss.arch`), never from the hub: the HF config is generated locally and
handed to AutoBridge.from_hf_config, so every recipe builds offline. Sizes differ only in data
(the `Layout` and a few hyperparameters); precision variants are helpers applied to a base.

Every recipe trains with the real o200k_harmony tokenizer and its 201,088-entry vocabulary (the
reference kit's pretrain recipes use a 32,000-entry placeholder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptoss import workspace
from gptoss.arch import GPT_OSS_20B, GPT_OSS_120B, TINY, GptOssArch
from gptoss.compat import import_bridge
from gptoss.cpu import make_cpu_friendly
from gptoss.tokenizer import hf_tokenizer_dir

import_bridge()

from megatron.bridge import AutoBridge  # noqa: E402
from megatron.bridge.data.builders.gpt_sft import GPTSFTDatasetConfig  # noqa: E402
from megatron.bridge.data.packing import PackedSequenceSpecs  # noqa: E402
from megatron.bridge.peft.lora import LoRA  # noqa: E402
from megatron.bridge.recipes.common import _peft_common, _pretrain_common, _sft_common  # noqa: E402
from megatron.bridge.training.config import ConfigContainer  # noqa: E402


@dataclass(frozen=True)
class Layout:
    """Parallel layout: what the planner checks and what the SLURM scripts allocate."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    cp: int = 1
    vpp: int | None = None
    etp: int = 1  # must stay 1 for gpt-oss (no GLU-aware expert split under ETP in the bridge)
    sp: bool = False


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def _model(arch: GptOssArch, layout: Layout, seq_length: int):
    model = AutoBridge.from_hf_config(arch.hf_config()).to_megatron_provider(load_weights=False)
    for name, value in arch.megatron_fields().items():
        setattr(model, name, value)
    model.seq_length = seq_length
    model.vocab_size = arch.vocab_size  # the real, unpadded 201,088: matches every gpt-oss checkpoint
    model.tensor_model_parallel_size = layout.tp
    model.pipeline_model_parallel_size = layout.pp
    model.virtual_pipeline_model_parallel_size = layout.vpp
    model.expert_model_parallel_size = layout.ep
    model.expert_tensor_parallel_size = layout.etp
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
    if arch is TINY:
        make_cpu_friendly(model)  # fp32, local spec with CPU-safe classes; inert where CUDA exists
    else:
        model.transformer_impl = "transformer_engine"
        model.moe_token_dispatcher_type = "alltoall"
        model.moe_grouped_gemm = True
        model.moe_permute_fusion = True
        model.moe_router_fusion = False
        model.cross_entropy_loss_fusion = True
        model.cross_entropy_fusion_impl = "native"
        model.moe_router_padding_for_fp8 = False
    return model


def _common(cfg: ConfigContainer, arch: GptOssArch, run: str, *, gbs: int, mbs: int, iters: int) -> ConfigContainer:
    """What every recipe shares: tokenizer, batch, output locations, optimizer precision."""
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
    if arch is TINY:
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
    else:
        cfg.ddp.use_distributed_optimizer = True
        cfg.ddp.grad_reduce_in_fp32 = True
        cfg.ddp.check_for_nan_in_grad = True
    return cfg


def _sft_dataset(dataset: str, seq_length: int) -> GPTSFTDatasetConfig:
    """Packed harmony conversations prepared by `python -m data_prep sft` under data/<dataset>."""
    specs = PackedSequenceSpecs(packed_sequence_size=seq_length)
    packed = workspace.data_dir(dataset) / "packed"
    # The files data_prep writes; set after construction because the specs check that paths exist.
    specs.packed_train_data_path = str(packed / f"training_{seq_length}.idx.parquet")
    specs.packed_val_data_path = str(packed / f"validation_{seq_length}.idx.parquet")
    specs.packed_metadata_path = packed / f"{seq_length}_metadata.jsonl"
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
    cfg = _pretrain_common()
    cfg.model = _model(arch, layout, seq_length)
    cfg.model.moe_router_load_balancing_type = "aux_loss"
    cfg.model.moe_aux_loss_coeff = 1e-2
    cfg.dataset.seq_length = seq_length
    data = data or [("pretrain", 1.0)]
    cfg.dataset.blend = ([str(workspace.data_prefix(d)) for d, _ in data], [w for _, w in data])
    cfg.dataset.split = "998,1,1"
    cfg.dataset.num_workers = 2 if arch is TINY else 8
    cfg.scheduler.lr_warmup_iters = warmup
    cfg.optimizer.lr = max_lr
    cfg.optimizer.min_lr = min_lr
    return _common(cfg, arch, run, gbs=gbs, mbs=mbs, iters=iters)


def cpt_config(
    arch: GptOssArch,
    layout: Layout,
    *,
    run: str,
    code: str = "the-stack",
    replay: str = "replay",
    replay_share: float = 0.2,
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


def with_fp8_current_scaling(cfg: ConfigContainer) -> ConfigContainer:
    """Hopper FP8 with current (per-tensor, just-in-time) scaling; router padded so the expert
    GEMMs see FP8-aligned token counts (needed for the experts' bias split)."""
    cfg.mixed_precision = "bf16_with_fp8_current_scaling_mixed"
    cfg.model.moe_router_padding_for_fp8 = True
    return cfg


# ---------------------------------------------------------------------------------------------
# The recipes
# ---------------------------------------------------------------------------------------------


def gpt_oss_20b_pretrain() -> ConfigContainer:
    return pretrain_config(GPT_OSS_20B, Layout(tp=2, pp=4, ep=4, sp=True), run="gpt-oss-20b-pretrain")


def gpt_oss_120b_pretrain() -> ConfigContainer:
    return pretrain_config(GPT_OSS_120B, Layout(tp=2, pp=4, ep=16, sp=True), run="gpt-oss-120b-pretrain")


def gpt_oss_20b_cpt_code() -> ConfigContainer:
    """The motivating job: gpt-oss-20b continued on The Stack (80%) with 20% general-text replay."""
    return cpt_config(GPT_OSS_20B, Layout(tp=2, pp=4, ep=4, sp=True), run="gpt-oss-20b-cpt-code", gbs=256)


def gpt_oss_120b_cpt_code() -> ConfigContainer:
    return cpt_config(GPT_OSS_120B, Layout(tp=2, pp=4, ep=16, sp=True), run="gpt-oss-120b-cpt-code", gbs=256)


def gpt_oss_20b_sft() -> ConfigContainer:
    return sft_config(GPT_OSS_20B, Layout(ep=8), run="gpt-oss-20b-sft")


def gpt_oss_120b_sft() -> ConfigContainer:
    return sft_config(GPT_OSS_120B, Layout(pp=4, ep=8), run="gpt-oss-120b-sft")


def gpt_oss_20b_lora() -> ConfigContainer:
    return lora_config(GPT_OSS_20B, Layout(), run="gpt-oss-20b-lora", gbs=32)


def gpt_oss_120b_lora() -> ConfigContainer:
    return lora_config(GPT_OSS_120B, Layout(ep=8), run="gpt-oss-120b-lora", gbs=32)


# The tiny family: the same four bases, on one CPU process, in seconds.
_TINY = dict(seq_length=128, gbs=2, mbs=2, iters=20)
_TINY_PACKED = {**_TINY, "mbs": 1}  # packed sequences need micro batch 1 (the bridge checks)


def gpt_oss_tiny_pretrain() -> ConfigContainer:
    return pretrain_config(TINY, Layout(), run="gpt-oss-tiny-pretrain", max_lr=3e-3, min_lr=3e-4, warmup=2, **_TINY)


def gpt_oss_tiny_cpt_code() -> ConfigContainer:
    return cpt_config(TINY, Layout(), run="gpt-oss-tiny-cpt-code", max_lr=1e-3, min_lr=1e-4, warmup=2, **_TINY)


def gpt_oss_tiny_sft() -> ConfigContainer:
    return sft_config(TINY, Layout(), run="gpt-oss-tiny-sft", max_lr=1e-3, warmup=2, **_TINY_PACKED)


def gpt_oss_tiny_lora() -> ConfigContainer:
    return lora_config(TINY, Layout(), run="gpt-oss-tiny-lora", rank=8, alpha=16, max_lr=1e-3, warmup=2, **_TINY_PACKED)
