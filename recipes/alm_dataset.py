"""The dataset of cross-tokenizer distillation (recipes/alm.py): megatron-core's GPTDataset whose
samples also carry the teacher targets of their tokens. Imports Megatron: load it only to build or
run such a recipe.

The targets of <prefix> lie in <dir>/teacher/<name>.{bin,idx} (data_prep/alignment.py) with the text's
sequence lengths, so the sample a GPTDataset index names is read from both with the same arithmetic:
the dataset reads the text, then the same sample from the targets (float32 bit patterns stored as
int32, which the int64 concatenation of a sample's parts keeps exactly). A dataset of the blend
without targets gets all-NaN targets: no chunk, the LM loss only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from megatron.bridge.training.config import GPTDatasetConfig
from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.indexed_dataset import IndexedDataset

from data_prep.alignment import targets_prefix


class TeacherTargetsDatasetConfig(GPTDatasetConfig):
    """GPTDatasetConfig whose datasets also read teacher targets. No fields of its own: the loss
    settings (teacher_kd_weight, teacher_lm_weight, teacher_temperature) are set on the instance by
    recipes.alm.use_teacher_targets, where overrides find them."""


class TeacherTargetsDataset(GPTDataset):
    def __init__(self, indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config) -> None:
        super().__init__(indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config)
        prefix = targets_prefix(dataset_path)
        self.targets = IndexedDataset(prefix, mmap=True) if Path(prefix + ".idx").is_file() else None
        if self.targets is not None and not np.array_equal(
            self.targets.sequence_lengths, indexed_dataset.sequence_lengths
        ):
            raise ValueError(f"{prefix}.idx does not match {dataset_path}.idx: attach the teacher targets again")

    def __getitem__(self, idx):
        sample = super().__getitem__(idx)
        if self.targets is None:
            sample["teacher_targets"] = torch.full((self.config.sequence_length + 1,), float("nan"))
            return sample
        text, self.dataset = self.dataset, self.targets
        try:
            bits, _, _ = self._query_document_sample_shuffle_indices(0 if idx is None else idx)
        finally:
            self.dataset = text
        targets = bits.astype(np.int32).view(np.float32)
        if not self.config.add_extra_token_to_sequence:  # the last label is a pad: no target
            targets = np.concatenate((targets, [np.nan])).astype(np.float32)
        sample["teacher_targets"] = torch.from_numpy(targets.copy())
        return sample
