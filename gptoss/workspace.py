"""The on-disk layout under $WORKSPACE (documented in WORKSPACE.md; this module is its code).

    $WORKSPACE/
      models/<model>/hf/          HF checkpoints (released weights, exports)
      models/<model>/megatron/    Megatron checkpoints imported by conversion (read-only inputs)
      data/<dataset>/             indexed datasets (<prefix>.bin/.idx + manifest.json), packed SFT data
      checkpoints/<run>/          training checkpoints of one run (resumable; the run owns it)
      results/<run>/              metrics JSONL, plots, eval reports, generated text
      logs/<job>-<jobid>/         SLURM and launcher logs
      cache/                      HF_HOME, tokenizer and dataset index caches (safe to delete)

$WORKSPACE defaults to ./workspace so that nothing is ever written to a surprising place.
"""

from __future__ import annotations

import os
from pathlib import Path

SUBDIRS = ("models", "data", "checkpoints", "results", "logs", "cache")


def root() -> Path:
    return Path(os.environ.get("WORKSPACE") or "workspace").absolute()


def model_dir(model: str, fmt: str) -> Path:
    if fmt not in ("hf", "megatron"):
        raise ValueError(f"model format must be 'hf' or 'megatron', got {fmt!r}")
    return root() / "models" / model / fmt


def data_prefix(dataset: str, name: str = "text_document") -> Path:
    """Prefix of an indexed dataset (Megatron appends .bin/.idx)."""
    return root() / "data" / dataset / name


def data_dir(dataset: str) -> Path:
    return root() / "data" / dataset


def checkpoint_dir(run: str) -> Path:
    return root() / "checkpoints" / run


def results_dir(run: str) -> Path:
    return root() / "results" / run


def logs_dir(job: str) -> Path:
    return root() / "logs" / job


def cache_dir() -> Path:
    return root() / "cache"


def create() -> Path:
    r = root()
    for sub in SUBDIRS:
        (r / sub).mkdir(parents=True, exist_ok=True)
    return r
