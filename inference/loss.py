"""Validation loss and perplexity of a checkpoint on Megatron indexed datasets (.bin/.idx).

Meant to watch forgetting during continued pretraining: evaluate every checkpoint of a run on a
code set and a general-text set, and compare (`python -m inference report`).

Documents are read with megatron-core's IndexedDataset. Which documents: all of them (a held-out
dataset), or one split of a training dataset chosen exactly as Megatron's dataset builder does
(`--split 998,1,1 --split-name validation`: the same documents training validated on). The
selected documents are concatenated in their stored order (the EOD tokens data_prep appends stay,
as in training) and cut into consecutive windows of seq_length + 1 tokens; the loss is the mean
cross entropy of every next-token prediction in those windows (token-weighted), perplexity its
exponential. No shuffling and no index caches: the number is reproducible and cheap to recompute.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

SPLIT_NAMES = ("train", "validation", "test")


@dataclass
class LossResult:
    prefix: str
    loss: float
    perplexity: float
    tokens: int  # predicted tokens
    windows: int
    documents: int

    def to_dict(self) -> dict:
        return asdict(self)


def document_range(num_docs: int, split: str | None, split_name: str) -> tuple[int, int]:
    """[begin, end) of the documents in `split_name` under Megatron's `split` string (None: all)."""
    if split is None:
        return 0, num_docs
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    if split_name not in SPLIT_NAMES:
        raise ValueError(f"split name must be one of {', '.join(SPLIT_NAMES)}, got {split_name!r}")
    bounds = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))[SPLIT_NAMES.index(split_name)]
    if bounds is None:
        return 0, 0
    # the same rounding as BlendedMegatronDatasetBuilder._build_megatron_dataset_splits
    return int(round(bounds[0] * float(num_docs))), int(round(bounds[1] * float(num_docs)))


def token_windows(
    prefix: str,
    seq_length: int,
    *,
    split: str | None = None,
    split_name: str = "validation",
    max_tokens: int | None = None,
) -> tuple[np.ndarray, int]:
    """([windows, seq_length + 1] token ids, number of documents used)."""
    from megatron_cpu.compat import import_bridge

    import_bridge()
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for suffix in (".bin", ".idx"):
        if not os.path.isfile(prefix + suffix):
            raise ValueError(
                f"{prefix}{suffix}: missing; make the dataset with `python -m data_prep pretrain INPUTS -o DIR`"
            )
    ds = IndexedDataset(prefix, mmap=True)
    num_docs = len(ds.document_indices) - 1
    begin, end = document_range(num_docs, split, split_name)
    if end <= begin:
        raise ValueError(f"{prefix}: the {split_name} split of {split!r} holds none of the {num_docs} documents")
    # one document = the sequences between two document_indices entries (data_prep writes one each)
    seq_begin, seq_end = int(ds.document_indices[begin]), int(ds.document_indices[end])
    budget = None if max_tokens is None else max_tokens + max_tokens // seq_length + 1
    parts, have = [], 0
    for i in range(seq_begin, seq_end):
        arr = np.asarray(ds[i], dtype=np.int64)
        parts.append(arr)
        have += len(arr)
        if budget is not None and have >= budget:
            break
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    n = (len(tokens) - 1) // seq_length
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // seq_length))
    if n < 1:
        raise ValueError(
            f"{prefix}: {len(tokens)} tokens in the selected documents, fewer than seq_length + 1 = {seq_length + 1}"
        )
    idx = np.arange(n)[:, None] * seq_length + np.arange(seq_length + 1)[None]
    return tokens[idx], end - begin


@torch.no_grad()
def validation_loss(
    backend,
    prefix: str,
    seq_length: int = 4096,
    *,
    split: str | None = None,
    split_name: str = "validation",
    max_tokens: int | None = 1_000_000,
    batch_size: int = 1,
) -> LossResult:
    """Token-weighted mean next-token cross entropy of `backend` on the dataset (see the module doc)."""
    windows, docs = token_windows(prefix, seq_length, split=split, split_name=split_name, max_tokens=max_tokens)
    total, count = 0.0, 0
    for b in range(0, len(windows), batch_size):
        chunk = torch.from_numpy(windows[b : b + batch_size])
        logits = backend.forward(chunk[:, :-1])
        labels = chunk[:, 1:].to(logits.device)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="sum"
        )
        total += float(loss)
        count += labels.numel()
    mean = total / count
    return LossResult(prefix, mean, math.exp(mean), count, len(windows), docs)
