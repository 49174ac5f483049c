"""Weighted blends of prepared datasets for the (continued-)pretraining recipes.

Megatron-Bridge takes `dataset.blend = ([prefix, ...], [weight, ...])`. The cpt recipes default to
data/the-stack/text_document (code) and data/replay/text_document (general text) under $WORKSPACE
at 0.8 / 0.2; `blend()` builds the same structure from the datasets' manifests (checking that they
were tokenized with this kit's tokenizer) and spreads a dataset's weight over its shards by tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_prep.pretrain import read_manifest
from kit import workspace
from recipes.gpt_oss import CODE_DATASET, REPLAY_DATASET, REPLAY_SHARE

# the continued-pretraining recipes' own default (one statement of it: recipes/gpt_oss.py)
DEFAULT_BLEND = ((CODE_DATASET, 1.0 - REPLAY_SHARE), (REPLAY_DATASET, REPLAY_SHARE))


def dataset_dir(name_or_path: str) -> Path:
    """A dataset name (data/<name> under $WORKSPACE) or a directory path."""
    p = Path(name_or_path)
    return p.absolute() if ("/" in name_or_path or p.is_dir()) else workspace.data_dir(name_or_path)


def blend(datasets: list[tuple[str, float]]) -> tuple[list[str], list[float]]:
    """(prefixes, weights): each dataset's weight split over its shards in proportion to tokens."""
    if not datasets:
        raise ValueError("a blend needs at least one dataset (name=weight)")
    total = sum(w for _, w in datasets)
    if total <= 0 or any(w < 0 for _, w in datasets):
        raise ValueError(f"blend weights must be >= 0 and not all 0, got {[w for _, w in datasets]}")
    prefixes: list[str] = []
    weights: list[float] = []
    for name, w in datasets:
        d = dataset_dir(name)
        for prefix, weight in workspace.shard_weights(d, read_manifest(d), w / total):
            prefixes.append(prefix)
            weights.append(weight)
    return prefixes, weights


def override(prefixes: list[str], weights: list[float]) -> str:
    """The `key=value` override for `python -m recipes` (JSON is valid YAML flow syntax)."""
    return "dataset.blend=" + json.dumps([prefixes, weights], separators=(",", ":"))


def parse_items(items: list[str]) -> list[tuple[str, float]]:
    out = []
    for item in items:
        name, sep, w = item.rpartition("=")
        if not sep or not name:
            raise ValueError(f"blend item {item!r} is not NAME=WEIGHT (for example the-stack=0.8)")
        try:
            out.append((name, float(w)))
        except ValueError:
            raise ValueError(f"blend item {item!r}: weight {w!r} is not a number") from None
    return out


def write(path: Path, prefixes: list[str], weights: list[float]) -> dict[str, Any]:
    from data_prep.util import dump_json
    from kit.fs import write_text_atomic

    doc = {"blend": [prefixes, weights], "override": override(prefixes, weights)}
    write_text_atomic(Path(path), dump_json(doc))
    return doc
