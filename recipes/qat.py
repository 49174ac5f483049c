"""MXFP4 quantization-aware training: the last step before a model is released in the served format.

gpt-oss ships, and vLLM, llama.cpp and Ollama serve it, with MXFP4 experts. Rounding a trained bf16
model to MXFP4 afterwards (post-training quantization, what `python -m conversion export --dtype
mxfp4` of an ordinary run does) loses accuracy; a short QAT run recovers it (LMSYS/NVIDIA 2025,
gpt-oss-20b: SFT 99% / 98%, PTQ 89% / 59%, QAT 100% / 97% on two tasks).

A QAT recipe is a base recipe (SFT, or continued pretraining on the code blend: the data of the run
it finishes) with:
- every expert's fc1 and fc2 weight fake-quantized in the forward pass (`install_fake_quant`, a
  pre-wrap hook, conversion.mxfp4.install_fake_quant): conversion.mxfp4.fake_quantize_ste, the values the MXFP4 export will write (e2m1,
  blocks of 32 along the weight's input dimension, one E8M0 scale per block, scale
  2**ceil(log2(amax/6)), ties to even), with a straight-through gradient to the weight itself.
  Attention, router, embeddings and the output layer stay bf16, as in the release. The weight
  kept, saved and optimized is the unquantized one; only what the forward sees is on the grid;
- the starting weights of the run it finishes (`checkpoint.pretrained_checkpoint`: by default that
  run's checkpoint directory; any kit checkpoint works, a LoRA run once merged: export it, import it);
- a low learning rate (the published range is 1e-5 to 1e-4) and a short budget (below).
Resume, metrics, W&B and the planner work as for every recipe; the run's checkpoint directory is
marked (conversion.mxfp4.QAT_MARKER), and its MXFP4 export dequantizes to exactly the weights it
trained with (`python -m conversion validate` checks that for a marked run).

Quantization-aware distillation (QAD, the `*_qad_mxfp4` recipes): the same fake-quantized student
taught by the bf16 checkpoint it starts from (same tokenizer, so recipes/distill.py's logit KD
applies unchanged): the loss is then the KL between the bf16 model and its own MXFP4 version.

The fake quantizer is pure torch (CPU and GPU alike) and computes what ModelOpt's CUDA MXFP4 fake
quantization computes (conversion/mxfp4.py states the shared rule and why; tests/test_qat.py checks
it against transcriptions of both kernels). ModelOpt's MXFP4_MLP_WEIGHT_ONLY_CFG is not used: it
needs ModelOpt's layer spec and state restore around Megatron's experts, and its CUDA kernel only
runs on GPUs, while the tiny twins train on CPU; one codec for training and export keeps the
"bit for bit" promise checkable everywhere.

Importing this module imports no Megatron.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conversion.mxfp4 import install_fake_quant
from gptoss.arch import GPT_OSS_20B, GPT_OSS_120B, TINY, GptOssArch
from kit import workspace
from recipes.gpt_oss import (
    _CPU,
    _TINY,
    cpt_config,
    for_cpu,
    for_gpu_cluster,
    sft_config,
    with_selective_recompute,
)
from recipes.registry import Layout, recipe

if TYPE_CHECKING:
    from megatron.bridge.training.config import ConfigContainer

def is_qat(cfg: Any) -> bool:
    """Whether a built recipe trains MXFP4-fake-quantized experts (its model carries the hook)."""
    return any(getattr(h, "mxfp4_fake_quant", False) for h in getattr(cfg.model, "_pre_wrap_hooks", None) or [])


def layout_problems(cfg: Any, etp: int) -> list[str]:
    """The planner's MXFP4 rule: an expert tensor-parallel split must not cut a 32-value block of
    fc2's input (its FFN width: 2,880 = 90 blocks for gpt-oss, so ETP 4 or 8 would cut; fc1 is split
    along its output and cuts none). Each rank would otherwise scale a block it holds in part."""
    from conversion.mxfp4 import BLOCK

    if not is_qat(cfg) or etp == 1:
        return []
    ffn = cfg.model.moe_ffn_hidden_size
    blocks = ffn // BLOCK
    if ffn % BLOCK == 0 and blocks % etp == 0:
        return []
    return [
        f"ETP={etp} cuts fc2's MXFP4 blocks: its input, {ffn} wide ({ffn / BLOCK:g} blocks of {BLOCK}), splits into "
        f"{ffn / etp:g}-wide shards; MXFP4 QAT needs an ETP dividing {blocks} (set expert_tensor_parallel_size=1)"
    ]


def with_mxfp4_qat(cfg: ConfigContainer, *, start: str, lr: float, iters: int, warmup: int) -> ConfigContainer:
    """Turn a built base recipe into its MXFP4 QAT: fake-quantized experts, the starting weights
    `start`, a constant-ish low LR (cosine from `lr` to lr/10 after `warmup` steps) for `iters` steps."""
    hooks = list(getattr(cfg.model, "_pre_wrap_hooks", None) or [])
    # First, before a distillation provider's KD conversion hook (which adds the teacher, kept bf16);
    # set on the object itself as the bridge does, so the teacher does not mirror it.
    object.__setattr__(cfg.model, "_pre_wrap_hooks", [install_fake_quant, *hooks])
    # The fused weight-gradient kernel accumulates into the parameter's main_grad from inside the
    # GEMM; the forward's weight is now a fake-quantized copy, so the gradient must come back through
    # autograd (Megatron-Bridge's ModelOpt QAT sets the same).
    cfg.model.gradient_accumulation_fusion = False
    cfg.checkpoint.pretrained_checkpoint = start
    cfg.optimizer.lr = lr
    cfg.optimizer.min_lr = lr / 10
    cfg.scheduler.lr_warmup_iters = warmup
    cfg.train.train_iters = iters
    return cfg


def _finishes(run: str) -> str:
    """The checkpoint directory of the run a QAT recipe finishes (its default starting weights)."""
    return str(workspace.checkpoint_dir(run))


def qad_config(arch: GptOssArch, layout: Layout, *, run: str, start: str, lr: float, iters: int, warmup: int, **kw: Any):
    """QAD on the code blend: recipes/distill.py's logit KD with the bf16 `start` checkpoint as the
    teacher (same architecture) and its fake-quantized copy as the student. Set
    checkpoint.pretrained_checkpoint and model.teacher.pretrained_checkpoint together."""
    from recipes.distill import distill_config

    cfg = distill_config(arch, arch, layout, run=run, **kw)
    cfg.model.teacher.pretrained_checkpoint = start
    return with_mxfp4_qat(cfg, start=start, lr=lr, iters=iters, warmup=warmup)


# ---------------------------------------------------------------------------------------------
# The recipes. Budgets: a QAT run is a short tail of the run it finishes: a quarter of SFT's 1,000
# steps (250 x 128 packs x 2k = 66M tokens), 1,000 steps of the code blend (1,000 x 256 x 4k =
# 1.0B tokens, 2% of continued pretraining's 50,000); LR 2e-5 after SFT (SFT's own peak is 5e-6:
# QAT must move weights across grid cells), 1e-5 after continued pretraining, both in the published
# 1e-5..1e-4. Layouts are the finished run's (same model, same step).
# ---------------------------------------------------------------------------------------------

_QAT_SFT = dict(lr=2e-5, iters=250, warmup=25)
_QAT_CPT = dict(lr=1e-5, iters=1000, warmup=50)


@recipe(Layout(ep=8), nodes=1, gpus_per_node=8, what="20b MXFP4 QAT of an SFT run, same SFT set, experts fake-quantized")
def gpt_oss_20b_qat_mxfp4(layout: Layout) -> ConfigContainer:
    """Finishes gpt_oss_20b_sft (starts from checkpoints/gpt-oss-20b-sft, trains on its packed SFT set)."""
    cfg = for_gpu_cluster(sft_config(GPT_OSS_20B, layout, run="gpt-oss-20b-qat-mxfp4"))
    return with_mxfp4_qat(cfg, start=_finishes("gpt-oss-20b-sft"), **_QAT_SFT)


@recipe(Layout(tp=2, pp=4, ep=8, sp=True), nodes=4, gpus_per_node=8, what="120b MXFP4 QAT of an SFT run, same SFT set, experts fake-quantized")
def gpt_oss_120b_qat_mxfp4(layout: Layout) -> ConfigContainer:
    """Finishes gpt_oss_120b_sft, in its layout and recompute (starts from checkpoints/gpt-oss-120b-sft)."""
    cfg = with_selective_recompute(for_gpu_cluster(sft_config(GPT_OSS_120B, layout, run="gpt-oss-120b-qat-mxfp4")), "moe_act")
    return with_mxfp4_qat(cfg, start=_finishes("gpt-oss-120b-sft"), **_QAT_SFT)


@recipe(Layout(tp=2, pp=4, ep=4, sp=True), nodes=2, gpus_per_node=8, what="20b MXFP4 QAT of a continued-pretraining run, code blend")
def gpt_oss_20b_cpt_code_qat_mxfp4(layout: Layout) -> ConfigContainer:
    """Finishes gpt_oss_20b_cpt_code (starts from checkpoints/gpt-oss-20b-cpt-code, same blend)."""
    cfg = for_gpu_cluster(cpt_config(GPT_OSS_20B, layout, run="gpt-oss-20b-cpt-code-qat-mxfp4", gbs=256))
    return with_mxfp4_qat(cfg, start=_finishes("gpt-oss-20b-cpt-code"), **_QAT_CPT)


@recipe(Layout(tp=2, pp=4, ep=8, sp=True), nodes=8, gpus_per_node=8, what="20b MXFP4 QAD: the bf16 checkpoint teaches its fake-quantized self, code blend")
def gpt_oss_20b_qad_mxfp4(layout: Layout) -> ConfigContainer:
    """QAD of a continued-pretraining run (checkpoints/gpt-oss-20b-cpt-code as student start and
    teacher), in gpt_oss_20b_distill_code's layout (the teacher's bf16 copy costs memory: see the plan)."""
    start = _finishes("gpt-oss-20b-cpt-code")
    return for_gpu_cluster(qad_config(GPT_OSS_20B, layout, run="gpt-oss-20b-qad-mxfp4", start=start, gbs=256, **_QAT_CPT))


# The tiny twins (CPU): QAT and QAD of the tiny continued-pretraining run. A tiny model's weights move
# further per step at the tiny recipes' higher LRs (10-100x the large ones, as for every tiny twin).
_TINY_QAT = dict(lr=1e-3, iters=8, warmup=1)
_TINY_BASE = {**_TINY, "iters": _TINY_QAT["iters"]}  # for_cpu sizes the validation/checkpoint interval from it


@recipe(Layout(), what="tiny MXFP4 QAT of a continued-pretraining run, code blend (CPU)", **_CPU)
def gpt_oss_tiny_qat_mxfp4(layout: Layout) -> ConfigContainer:
    cfg = for_cpu(cpt_config(TINY, layout, run="gpt-oss-tiny-qat-mxfp4", **_TINY_BASE))
    return with_mxfp4_qat(cfg, start=_finishes("gpt-oss-tiny-cpt-code"), **_TINY_QAT)


@recipe(Layout(), what="tiny MXFP4 QAD: the bf16 checkpoint teaches its fake-quantized self (CPU)", **_CPU)
def gpt_oss_tiny_qad_mxfp4(layout: Layout) -> ConfigContainer:
    base = {k: v for k, v in _TINY_BASE.items() if k != "iters"}
    start = _finishes("gpt-oss-tiny-cpt-code")
    return for_cpu(qad_config(TINY, layout, run="gpt-oss-tiny-qad-mxfp4", start=start, **base, **_TINY_QAT))
