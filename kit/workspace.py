"""The on-disk layout under $WORKSPACE (documented in WORKSPACE.md; this module is its code).

    $WORKSPACE/
      models/<model>/hf/          HF checkpoints (released weights, exports)
      models/<model>/megatron/    Megatron checkpoints imported by conversion (read-only inputs)
      data/<dataset>/             indexed datasets (<prefix>.bin/.idx + manifest.json), packed SFT data
      checkpoints/<run>/          training checkpoints of one run (resumable; the run owns it)
      results/<run>/              metrics JSONL, plots, eval reports, generated text
      logs/<job>-<jobid>/         SLURM and launcher logs
      cache/                      HF_HOME, tokenizer and dataset index caches (safe to delete)

$WORKSPACE defaults to the kit checkout's own workspace/ (DEFAULT_ROOT), wherever a command runs
from: the Makefile, the SLURM scripts (slurm/lib.sh) and the NeMo-Run launcher use the same default.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / "workspace"  # <kit checkout>/workspace


def root() -> Path:
    """$WORKSPACE, else DEFAULT_ROOT."""
    return Path(os.environ.get("WORKSPACE") or DEFAULT_ROOT).absolute()


def model_dir(model: str, fmt: str) -> Path:
    if fmt not in ("hf", "megatron"):
        raise ValueError(f"model format must be 'hf' or 'megatron', got {fmt!r}")
    return root() / "models" / model / fmt


def data_prefix(dataset: str, name: str = "text_document") -> Path:
    """Prefix of an indexed dataset (Megatron appends .bin/.idx)."""
    return root() / "data" / dataset / name


def shard_weights(dataset_dir: Path, manifest: dict, weight: float) -> list[tuple[str, float]]:
    """A prepared dataset's shards (its manifest.json lists them) as (prefix, weight) blend entries,
    `weight` split in proportion to their tokens."""
    shards = manifest["shards"]
    tokens = sum(s["tokens"] for s in shards)
    return [(str(Path(dataset_dir) / s["prefix"]), round(weight * s["tokens"] / tokens, 12)) for s in shards]


def expand_sharded(prefix: str, weight: float) -> list[tuple[str, float]]:
    """A blend entry <dir>/<name> (a recipe's default, data/<dataset>/text_document) of a dataset
    written as shards <name>_00000, <name>_00001, ... (data_prep at -j > 1): one entry per shard.
    Any other entry is returned as it is."""
    p = Path(prefix)
    manifest = p.parent / "manifest.json"
    if Path(prefix + ".bin").exists() or not manifest.exists():
        return [(prefix, weight)]
    m = json.loads(manifest.read_text())
    if not m.get("shards") or not all(s["prefix"].startswith(p.name + "_") for s in m["shards"]):
        return [(prefix, weight)]
    return shard_weights(p.parent, m, weight)


def data_dir(dataset: str) -> Path:
    return root() / "data" / dataset


def packed_sft_files(dataset_dir: str | os.PathLike, seq_length: int) -> dict[str, Path]:
    """The packed SFT files `python -m data_prep sft -o DIR` writes under DIR/packed/ and the SFT
    recipes read (Megatron-Bridge's packed-parquet names): train, validation and metadata."""
    packed = Path(dataset_dir) / "packed"
    return {
        "train": packed / f"training_{seq_length}.idx.parquet",
        "validation": packed / f"validation_{seq_length}.idx.parquet",
        "metadata": packed / f"{seq_length}_metadata.jsonl",
    }


def checkpoint_dir(run: str) -> Path:
    return root() / "checkpoints" / run


def results_dir(run: str) -> Path:
    return root() / "results" / run


def cache_dir() -> Path:
    return root() / "cache"
