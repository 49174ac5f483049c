"""Cross-tokenizer distillation: a teacher with another tokenizer (StarCoder) teaches gpt-oss by
Approximate Likelihood Matching (ALM; Minixhofer, Vulić and Ponti, 2025, arXiv 2503.20083).

Why ALM, of the published methods (read with their code, e.g. tokenkit's ALM losses):
- ULD (Boizard et al., 2024) compares the two next-token distributions sorted by probability: it
  needs the teacher's whole distribution at every position (49k floats per token for StarCoder,
  stored or recomputed) and an alignment of positions between tokenizations; sorting discards
  which token is likely, so it transfers confidence more than knowledge.
- DSKD (Zhang et al., 2024) projects hidden states between the two models' spaces: the teacher must
  run beside the student in every step (a second model in Megatron's memory and layout), and the
  projections are trained too.
- ALM compares what both models can say about the same bytes: the likelihood of each *chunk* of
  text between byte positions where both tokenizers cut (data_prep/alignment.py). It needs one
  number per teacher token, computed once, offline (`python -m inference score`); in training the
  student's chunk likelihood is a sum of its per-token log-probabilities, which Megatron's loss
  already computes (no logits kept, any TP/PP/EP layout). The paper reports it ahead of ULD and
  DSKD across tokenizer pairs, including distilling a math-specialised teacher into a student of
  another tokenizer: the StarCoder -> gpt-oss case.

The loss, per chunk c with teacher log-likelihood a_c and student log-likelihood s_c, is ALM's
binarised divergence: each chunk is a Bernoulli event (the chunk is produced or not), with
probabilities p = exp(a_c / T) and q = exp(s_c / T), and

    alm_c = KL(Bern(p) || Bern(q)) = p (log p - log q) + (1 - p) (log(1 - p) - log(1 - q))

(ALM's binary cross-entropy minus the teacher's entropy, a constant: the same gradient, and 0 when
the student matches). T = dataset.teacher_temperature, default 1. tokenkit (the paper's code)
defaults to T = 100, together with its GradMag balancing of the loss terms; in a plain weighted sum
the ALM gradient shrinks roughly as 1/T. In one exploratory run on the tiny pair (10 steps, the
setting of tests/test_distill_starcoder.py but another teacher seed; not a test), T = 100 left the
distilled student as far from the teacher as the LM-only one (mean |chunk log-likelihood gap|
12.073 vs 12.077 nats), where T = 1 gave 11.983. Training loss, summed over the batch and divided by its
tokens like Megatron's LM loss:

    loss = lm_weight * LM + kd_weight * sum_c alm_c

metrics.jsonl logs "lm loss" (per token), "alm loss" (per chunk) and "total loss"; validation
reports the LM loss. A dataset of the blend without teacher targets trains the LM loss only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

DEFAULT_TEMPERATURE = 1.0  # not tokenkit's 100: see above
_EPS = 1e-6  # chunk log-likelihoods are capped at -_EPS: log(1 - q) is finite


def uses_teacher_targets(cfg: Any) -> bool:
    """Whether a built recipe distills from teacher targets (recipes/alm.py's dataset)."""
    return type(cfg.dataset).__name__ == "TeacherTargetsDatasetConfig"


def use_teacher_targets(cfg: Any, *, kd_weight: float, lm_weight: float, temperature: float) -> Any:
    """Turn a pretraining recipe's indexed-dataset config into one whose samples carry the teacher
    targets that lie beside each dataset (data_prep/alignment.py), with the loss weights above."""
    cfg.dataset.__class__ = _config_class()
    cfg.dataset.teacher_kd_weight = float(kd_weight)
    cfg.dataset.teacher_lm_weight = float(lm_weight)
    cfg.dataset.teacher_temperature = float(temperature)
    return cfg  # CP > 1 is refused by the planner: the targets are not split for context parallelism


def describe(cfg: Any) -> dict[str, Any]:
    d = cfg.dataset
    return {k: getattr(d, k) for k in ("teacher_kd_weight", "teacher_lm_weight", "teacher_temperature")}


def _config_class():
    from recipes.alm_dataset import TeacherTargetsDatasetConfig

    return TeacherTargetsDatasetConfig


# ---------------------------------------------------------------------------------------------
# Checks before training
# ---------------------------------------------------------------------------------------------


def check_targets(prefixes: list[str]) -> list[str]:
    """One line per dataset saying what teaches it; ValueError (one line) for targets made for
    another student tokenizer or method, or not matching the text, or when no dataset has any."""
    from data_prep.alignment import METHOD, read_targets_manifest, targets_prefix
    from data_prep.indexed import read_index
    from gptoss.tokenizer import fingerprint

    lines, taught = [], 0
    for prefix in prefixes:
        m = read_targets_manifest(Path(prefix).parent)
        if m is None or not Path(targets_prefix(prefix) + ".idx").is_file():
            lines.append(f"{prefix}: no teacher targets (LM loss only)")
            continue
        where = Path(prefix).parent / "teacher" / "manifest.json"
        if m.get("method") != METHOD:
            raise ValueError(
                f"{where}: teacher targets of method {m.get('method')!r}, this recipe trains {METHOD!r}: rebuild them "
                "with `python -m data_prep pretrain ... --teacher-scores FILE`"
            )
        if m.get("student_tokenizer") != fingerprint():
            raise ValueError(
                f"{where}: teacher targets aligned to another student tokenizer ({m.get('student_tokenizer')}), not "
                f"this kit's o200k_harmony ({fingerprint()}): prepare the dataset and its targets with this kit"
            )
        _, text_lengths, _, _ = read_index(prefix + ".idx")
        _, target_lengths, _, _ = read_index(targets_prefix(prefix) + ".idx")
        if len(text_lengths) != len(target_lengths) or (text_lengths != target_lengths).any():
            raise ValueError(
                f"{targets_prefix(prefix)}.idx does not match {prefix}.idx (the dataset was rebuilt after its targets): "
                "attach the targets again (`python -m data_prep pretrain ... --teacher-scores FILE`)"
            )
        taught += 1
        lines.append(
            f"{prefix}: taught by {m.get('teacher')} ({m.get('chunks')} chunks, {m.get('docs_scored')} of {m.get('docs')} docs)"
        )
    if not taught:
        raise ValueError(
            f"no dataset of the blend ({', '.join(prefixes)}) has teacher targets: score the corpus with `python -m "
            "inference score TEACHER CORPUS --out SCORES` and attach them with `python -m data_prep pretrain ... "
            "--teacher-scores SCORES`"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def _log1mexp(x):
    """log(1 - exp(x)) for x < 0, stable at both ends (Mächler, 2012)."""
    import torch

    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def chunk_divergence(token_logprobs, targets, loss_mask, temperature: float):
    """(sum of alm_c over the batch's chunks, number of chunks).

    token_logprobs [b, s]: the student's log p of each label (label i is text token i + 1);
    targets [b, s + 1]: the teacher targets of text tokens 0..s (data_prep/alignment.py's encoding);
    loss_mask [b, s]. A chunk counts when its whole span lies in the sample (the previous chunk end
    is inside it too) and none of its labels is masked."""
    import torch

    b, s = token_logprobs.shape
    if targets.shape[1] != s + 1:
        raise ValueError(f"teacher targets of {targets.shape[1]} positions for {s} labels: expected {s + 1}")
    zeros = token_logprobs.new_zeros(b, 1)
    lp = torch.cat([zeros, token_logprobs.float()], 1)  # position k: log p of text token k (0: none)
    masked = torch.cat([zeros, 1.0 - loss_mask.float()], 1)
    ends = ~torch.isnan(targets)
    pos = torch.arange(s + 1, device=targets.device).expand(b, s + 1)
    last_end = torch.cummax(torch.where(ends, pos, torch.full_like(pos, -1)), 1).values
    prev = torch.cat([torch.full_like(pos[:, :1], -1), last_end[:, :-1]], 1)  # previous chunk end, -1: none
    valid = ends & torch.isfinite(targets) & (targets <= 0) & (prev >= 0)
    start = prev.clamp(min=0)
    cs, cm = lp.cumsum(1), masked.cumsum(1)
    student = cs - cs.gather(1, start)
    valid &= (cm - cm.gather(1, start)) == 0
    if not bool(valid.any()):
        return token_logprobs.sum() * 0.0, torch.zeros((), dtype=torch.int, device=token_logprobs.device)
    a = (targets[valid].float() / temperature).clamp(max=-_EPS)
    q = (student[valid] / temperature).clamp(max=-_EPS)
    p = torch.exp(a)
    kl = p * (a - q) + (1 - p) * (_log1mexp(a) - _log1mexp(q))
    return kl.sum(), valid.sum().to(torch.int)


def _loss(loss_mask, targets, dataset_cfg, model, check_for_nan_in_loss: bool, output_tensor):
    import torch
    from megatron.bridge.training.losses import masked_next_token_loss

    lm, num_tokens, report = masked_next_token_loss(
        loss_mask, output_tensor, check_for_nan_in_loss=check_for_nan_in_loss
    )
    if targets is None:  # not the last pipeline stage: no loss here
        return lm, num_tokens, report
    kd, chunks = chunk_divergence(
        -output_tensor, targets.to(output_tensor.device), loss_mask, dataset_cfg.teacher_temperature
    )
    total = dataset_cfg.teacher_kd_weight * kd + dataset_cfg.teacher_lm_weight * lm
    report["alm loss"] = torch.cat([kd.detach().view(1), chunks.view(1).to(kd.dtype)])
    report["total loss"] = torch.cat([total.detach().view(1), num_tokens.view(1).to(total.dtype)])
    return (total if model.training else lm), num_tokens, report


class _KeepTargets:
    """The data iterator, keeping each batch's teacher targets (the bridge's get_batch passes on only
    the keys it knows)."""

    def __init__(self, it: Iterable) -> None:
        self.it, self.targets = it, None

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.it)
        self.targets = batch.pop("teacher_targets", None)
        return batch


def forward_step(state: Any, data_iterator: Iterable, model: Any, return_schedule_plan: bool = False):
    """The GPT forward step of megatron.bridge.training.gpt_step, with the ALM loss."""
    from megatron.bridge.training.gpt_step import _forward_step_common

    it = _KeepTargets(data_iterator) if data_iterator is not None else None
    output, loss_mask = _forward_step_common(state, it, model, return_schedule_plan)
    check = state.cfg.rerun_state_machine.check_for_nan_in_loss
    targets = it.targets if it is not None else None
    return output, partial(_loss, loss_mask, targets, state.cfg.dataset, model, check)


def register_dataset() -> None:
    """Make the bridge build TeacherTargetsDataset for this config class (its registry is matched in
    order with isinstance: the subclass goes first)."""
    import megatron.bridge.data.utils as data_utils

    cls = _config_class()
    if cls not in data_utils._REGISTRY:
        data_utils._REGISTRY = {cls: _build_datasets, **data_utils._REGISTRY}


def _build_datasets(train_val_test_num_samples: list[int], dataset_config: Any, *args: Any, **kwargs: Any):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder

    from recipes.alm_dataset import TeacherTargetsDataset

    return BlendedMegatronDatasetBuilder(
        TeacherTargetsDataset, train_val_test_num_samples, lambda: True, dataset_config
    ).build()
