"""The distillation recipes' loss mix (imports ModelOpt: load it only when building such a recipe).

ModelOpt's default balancer either drops the LM loss altogether (then it is not even computed, and
metrics.jsonl would log 0) or rescales the KD term to the LM loss's value, which leaves the KD
gradient small next to the LM gradient of a student far from the data (measured on the tiny pair: the
LM part of the output layer's gradient had 8x the norm of the rescaled KD part, and the KD loss did not
move in 6 steps). `KDMix` is a plain weighted sum, with the LM loss always computed and logged:

    loss = kd_weight * KL(teacher || student) + lm_weight * LM

(the KL of the temperature-scaled softmaxes, per token, summed over the batch like the LM loss).
"""

from __future__ import annotations

import modelopt.torch.distill as mtd
import torch
from modelopt.torch.distill.loss_balancers import STUDENT_LOSS_KEY


class KDMix(mtd.DistillationLossBalancer):
    """loss = kd_weight * KD + lm_weight * LM. Overrides: model.kd_config.loss_balancer.kd_weight=...,
    model.kd_config.loss_balancer.lm_weight=..."""

    def __init__(self, kd_weight: float = 1.0, lm_weight: float = 0.0) -> None:
        super().__init__()
        self.kd_weight = kd_weight
        self.lm_weight = lm_weight

    def forward(self, loss_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        lm = loss_dict.pop(STUDENT_LOSS_KEY)
        (kd,) = loss_dict.values()  # the logits pair only: the recipes pair no intermediate layers
        total = self.kd_weight * kd + (self.lm_weight * lm if self.lm_weight else 0.0)
        # the keys megatron.bridge's loss_func_kd reads ("total loss", "logits distillation loss", ...)
        return {"kd_loss": total, "logits_loss": kd, "intermediate_loss": torch.zeros_like(kd)}


def _fresh_fp32_logits(module: torch.nn.Module, args: tuple, output):
    """Forward hook on the student's output layer, after ModelOpt's capturing hook: the model goes on
    with a copy of fp32 logits. Megatron's vocab-parallel cross entropy works in place on its input
    (`logits.float()` is the same tensor in fp32, then `-= max` and `exp(out=)`), which would turn the
    logits ModelOpt kept for the KD loss into exp(logits - max) whenever the LM loss is computed: the KD
    loss then hardly depends on the student (seen on the CPU recipes: identical to 1e-5 across learning
    rates). bf16 logits are already copied by `.float()`, so this costs nothing there."""
    logits, bias = output if isinstance(output, tuple) else (output, None)
    if logits.dtype != torch.float32:
        return None  # keep the output as is
    return (logits.clone(), bias) if isinstance(output, tuple) else logits.clone()


def keep_kd_logits(model_chunks: list) -> list:
    """Pre-wrap hook, after the KD conversion: protect the captured student logits (above)."""
    for chunk in model_chunks:
        layer = getattr(chunk, "output_layer", None)  # last pipeline stage only
        if layer is not None:
            layer.register_forward_hook(_fresh_fp32_logits)
    return model_chunks
