"""key=value overrides on a real recipe config."""

from __future__ import annotations

import pytest
import torch

import recipes
from recipes.overrides import OverrideError, apply_overrides


@pytest.fixture(scope="module")
def cfg():
    return recipes.build("gpt_oss_tiny_pretrain")


def test_values_are_typed(cfg):
    apply_overrides(
        cfg,
        [
            "train.train_iters=7",
            "optimizer.lr=2e-4",
            "model.sequence_parallel=false",
            "checkpoint.save=null",
            "model.params_dtype=bfloat16",
            "train.global_batch_size=8.0",
        ],
    )
    assert cfg.train.train_iters == 7 and isinstance(cfg.train.train_iters, int)
    assert cfg.optimizer.lr == 2e-4
    assert cfg.model.sequence_parallel is False
    assert cfg.checkpoint.save is None
    assert cfg.model.params_dtype is torch.bfloat16
    assert cfg.train.global_batch_size == 8


@pytest.mark.parametrize(
    "item,message",
    [
        ("train.train_itres=5", "did you mean train.train_iters"),
        ("model.tensor_parallel_size=2", "did you mean model.tensor_model_parallel_size"),
        ("trian.train_iters=5", "did you mean train"),
        ("train.train_iters=many", "expected an integer"),
        ("model.sequence_parallel=2", "expected true or false"),
        ("optimizer.lr=fast", "expected a number"),
        ("model.params_dtype=float9", "torch dtype"),
        ("train.train_iters", "not key=value"),
    ],
)
def test_bad_overrides_name_the_fix(cfg, item, message):
    with pytest.raises(OverrideError, match=message):
        apply_overrides(cfg, [item])


def test_unknown_recipe_suggests():
    with pytest.raises(KeyError, match="did you mean gpt_oss_20b_pretrain"):
        recipes.get("gpt_oss_20b_pretrian")
