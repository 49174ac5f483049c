"""Distillation recipes. Two families:
- logit KD (`*_distill_code`): a gpt-oss teacher runs beside the student and teaches its whole
  next-token distribution, token for token (below);
- likelihood matching across tokenizers (`*_distill_starcoder`): StarCoder's log-probabilities of
  the corpus, computed once offline, teach chunk likelihoods (recipes/alm.py; end of this module).

Logit KD: a gpt-oss teacher teaches a gpt-oss student on the code blend.

Both models use the o200k_harmony tokenizer, so their logits line up token for token and the
student can learn the teacher's whole next-token distribution, not just the sampled token. (A
teacher with another tokenizer, StarCoder say, teaches by likelihood matching, below, or through its
generations: README, "Distillation".)

The base, `distill_config`, is the student's continued-pretraining recipe (`cpt_config`: the code
blend with replay, the student starting from `checkpoint.pretrained_checkpoint`, the released or a
continued-pretrained checkpoint) whose model is turned into Megatron-Bridge's `DistillationProvider`
(NVIDIA ModelOpt's knowledge distillation). The teacher:
- is built with the student's layout (the bridge requires the same TP, PP, CP, sequence length and
  pipeline dtype; `python -m recipes plan` checks it, and counts the teacher's memory);
- loads its weights from `model.teacher.pretrained_checkpoint` (a Megatron checkpoint: an import
  under models/<name>/megatron or a training run's directory) before training starts;
- runs forward only, under no_grad, in eval mode: no gradients, no optimizer state, and it is never
  saved (ModelOpt hides it from the checkpoint), so the run's checkpoints are the student's alone and
  export like any run's (`python -m conversion export`).

The loss, set by overrides (recipes/kd_loss.py says why this mix and not ModelOpt's default):
  kd   = forward KL(teacher || student) of softmax(logits / T) per token, summed like the LM loss,
         T = model.kd_config.logit_kl_temperature (default 1)
  loss = kd_weight * kd + lm_weight * lm, model.kd_config.loss_balancer.{kd_weight,lm_weight}
         (defaults 1 and 0: pure KD, as NVIDIA's Minitron distillation; the LM loss is still computed)
metrics.jsonl logs both ("lm loss", "logits distillation loss") and the mix ("total loss");
validation reports the LM loss alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gptoss.arch import GPT_OSS_20B, GPT_OSS_120B, TINY, TINY_TEACHER, GptOssArch
from kit import workspace
from recipes.alm import DEFAULT_TEMPERATURE
from recipes.gpt_oss import (
    _CPU,
    _TINY,
    _bridge,
    _model,
    _model_name,
    cpt_config,
    for_cpu,
    for_gpu_cluster,
    gpu_recipe,
)
from recipes.registry import Layout, recipe

if TYPE_CHECKING:
    from megatron.bridge.training.config import ConfigContainer


def is_distillation(cfg: Any) -> bool:
    """Whether a built recipe distills (its model carries a teacher)."""
    return getattr(cfg.model, "teacher", None) is not None


def teacher_checkpoint(cfg: Any) -> str | None:
    """The Megatron checkpoint the teacher loads (model.teacher.pretrained_checkpoint), or None."""
    return getattr(cfg.model.teacher, "pretrained_checkpoint", None) if is_distillation(cfg) else None


def describe(cfg: Any) -> dict[str, Any]:
    """The distillation settings by their override paths (the bridge's YAML of a DistillationProvider
    leaves out the teacher and the KD config): what `python -m recipes show` adds."""
    t, kd = cfg.model.teacher, cfg.model.kd_config
    return {
        "teacher architecture": GptOssArch.from_provider(t).name,
        "model.teacher.pretrained_checkpoint": teacher_checkpoint(cfg),
        "model.kd_config.logit_kl_temperature": kd.logit_kl_temperature,
        "model.kd_config.loss_balancer.kd_weight": getattr(kd.loss_balancer, "kd_weight", None),
        "model.kd_config.loss_balancer.lm_weight": getattr(kd.loss_balancer, "lm_weight", None),
    }


def _load_teacher_weights(teacher: Any):
    """A pre-wrap hook for the teacher: load `teacher.pretrained_checkpoint` (read when the model is
    built, so an override set after the recipe is built counts) into the freshly built teacher."""

    def hook(model_chunks: list) -> list:
        from conversion.megatron_dir import iteration_dir
        from conversion.megatron_io import load_weights

        path = teacher.pretrained_checkpoint
        load_weights(iteration_dir(path), model_chunks, f"the teacher ({path})")
        return model_chunks

    return hook


def distill_config(
    student: GptOssArch,
    teacher: GptOssArch,
    layout: Layout,
    *,
    run: str,
    temperature: float = 1.0,
    kd_weight: float = 1.0,
    lm_weight: float = 0.0,
    **cpt_kwargs: Any,
) -> ConfigContainer:
    """Continued pretraining of `student` on the code blend, taught by `teacher`'s logits."""
    _bridge()
    from megatron.bridge.models.distillation_provider import convert_to_distillation_provider
    from megatron.bridge.training.post_training.distillation import ModelOptDistillConfig

    from recipes.kd_loss import KDMix, keep_kd_logits

    cfg = cpt_config(student, layout, run=run, **cpt_kwargs)
    t = _model(teacher, layout, cfg.model.seq_length)
    t.moe_router_load_balancing_type = "none"  # frozen: no balancing term, nothing in the aux-loss log
    t.moe_aux_loss_coeff = 0.0
    t.pretrained_checkpoint = str(workspace.model_dir(_model_name(teacher), "megatron"))
    t.register_pre_wrap_hook(_load_teacher_weights(t))
    kd = ModelOptDistillConfig(
        logit_layers=("output_layer", "output_layer"),
        skip_lm_loss=False,  # computed (and logged) always; KDMix weighs it
        logit_kl_temperature=temperature,
        loss_balancer=KDMix(kd_weight=kd_weight, lm_weight=lm_weight),
    )
    # From here on, a setting made on cfg.model is mirrored to the teacher when the teacher has it
    # (DistillationProvider.__setattr__): the variants below reach both models.
    cfg.model = convert_to_distillation_provider(cfg.model, t, kd)
    # after the KD conversion hook; object.__setattr__ as the bridge does, so the teacher keeps its own
    object.__setattr__(cfg.model, "_pre_wrap_hooks", [*cfg.model._pre_wrap_hooks, keep_kd_logits])
    return cfg


# ---------------------------------------------------------------------------------------------
# The recipes
# ---------------------------------------------------------------------------------------------


@gpu_recipe(
    Layout(tp=2, pp=4, ep=8, sp=True),
    nodes=8,
    gpus_per_node=8,
    what="20b student taught by 120b on code (80%) + replay (20%), logit KD",
)
def gpt_oss_20b_distill_code(layout: Layout) -> ConfigContainer:
    """gpt-oss-120b's logits teach gpt-oss-20b on the continued-pretraining blend. The student starts
    from the released 20b (models/gpt-oss-20b/megatron; point checkpoint.pretrained_checkpoint at a
    continued-pretraining run to distill on top of it), the teacher is models/gpt-oss-120b/megatron.
    Layout: 24 and 36 layers both split by PP4, 32 and 128 experts both by EP8 (see the planner)."""
    return for_gpu_cluster(distill_config(GPT_OSS_20B, GPT_OSS_120B, layout, run="gpt-oss-20b-distill-code", gbs=256))


@recipe(Layout(), what="tiny student taught by the tiny teacher on code + replay, logit KD (CPU)", **_CPU)
def gpt_oss_tiny_distill_code(layout: Layout) -> ConfigContainer:
    """The tiny twin of gpt_oss_20b_distill_code: the tiny student from models/gpt-oss-tiny/megatron, the
    teacher (gptoss.arch TINY_TEACHER: 4 layers, width 128, 8 experts) from
    models/gpt-oss-tiny-teacher/megatron (`python -m conversion random --size tiny-teacher`, imported; or
    any run of that architecture via model.teacher.pretrained_checkpoint)."""
    return for_cpu(
        distill_config(
            TINY, TINY_TEACHER, layout, run="gpt-oss-tiny-distill-code", max_lr=5e-3, min_lr=5e-4, warmup=2, **_TINY
        )
    )


# ---------------------------------------------------------------------------------------------
# From a teacher of another tokenizer (StarCoder): likelihood matching on teacher targets
# ---------------------------------------------------------------------------------------------


def distill_starcoder_config(
    student: GptOssArch,
    layout: Layout,
    *,
    run: str,
    kd_weight: float = 1.0,
    lm_weight: float = 1.0,
    temperature: float = DEFAULT_TEMPERATURE,
    **cpt_kwargs: Any,
) -> ConfigContainer:
    """Continued pretraining of `student` on the code blend with loss = lm_weight x LM + kd_weight x
    ALM against the teacher targets beside each dataset (recipes/alm.py: the method and why). The
    teacher does not run in training: its log-probabilities were computed once (`python -m inference
    score`) and aligned to the student's tokens by `data_prep pretrain --teacher-scores`."""
    from recipes.alm import use_teacher_targets

    cfg = cpt_config(student, layout, run=run, **cpt_kwargs)
    return use_teacher_targets(cfg, kd_weight=kd_weight, lm_weight=lm_weight, temperature=temperature)


@gpu_recipe(
    Layout(tp=2, pp=4, ep=4, sp=True),
    nodes=2,
    gpus_per_node=8,
    what="20b on code (80%) + replay (20%), LM + likelihood matching to StarCoder's scores (cross-tokenizer)",
)
def gpt_oss_20b_distill_starcoder(layout: Layout) -> ConfigContainer:
    """gpt-oss-20b continued on the code blend, taught by StarCoder across tokenizers: the code
    dataset carries StarCoder's targets (README, "Distillation from StarCoder"), the replay share
    trains the LM loss only. The layout of gpt_oss_20b_cpt_code: the teacher takes no GPU memory."""
    return for_gpu_cluster(distill_starcoder_config(GPT_OSS_20B, layout, run="gpt-oss-20b-distill-starcoder", gbs=256))


@recipe(Layout(), what="tiny gpt-oss on code + replay, LM + likelihood matching to a teacher's scores (CPU)", **_CPU)
def gpt_oss_tiny_distill_starcoder(layout: Layout) -> ConfigContainer:
    """The tiny twin of gpt_oss_20b_distill_starcoder (the tiny student from models/gpt-oss-tiny/megatron)."""
    return for_cpu(
        distill_starcoder_config(
            TINY, layout, run="gpt-oss-tiny-distill-starcoder", max_lr=1e-3, min_lr=1e-4, warmup=2, **_TINY
        )
    )
