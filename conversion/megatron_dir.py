"""The on-disk layout of a Megatron checkpoint directory, as the kit writes and reads it (light: no
torch, no Megatron). Written by `conversion import` and by training runs (`python -m recipes run`):

    <dir>/latest_checkpointed_iteration.txt   Megatron's tracker: the latest iteration, or "release"
    <dir>/iter_0000100/...                    one torch_dist checkpoint per saved iteration
                                              (metadata.json, .metadata, *.distcp, run_config.yaml)
    <dir>/hf/config.json, tokenizer*          the HF side, for export and validation
    <dir>/kit_conversion.json                 source, source dtypes, layout at import, tokenizer
                                              fingerprint (conversion.megatron_io's sidecar)
"""

from __future__ import annotations

from pathlib import Path

TRACKER = "latest_checkpointed_iteration.txt"
META = "kit_conversion.json"
HF_SUBDIR = "hf"
ADAPTER_SUBDIR = "adapter"  # in the export of a LoRA run: the adapters alone, HF PEFT format


class CheckpointDirError(ValueError):
    """Not (yet) a usable Megatron checkpoint directory; the message names the path."""


def has_checkpoint(ckpt: str | Path) -> bool:
    """True once a run or an import has finished writing at least one checkpoint into `ckpt`."""
    return (Path(ckpt) / TRACKER).is_file()


def iterations(ckpt: str | Path) -> list[int]:
    """The saved iterations present, ascending."""
    return sorted(int(p.name[5:]) for p in Path(ckpt).glob("iter_*") if p.name[5:].isdigit())


def iteration_dir(ckpt: str | Path, iteration: int | None = None) -> Path:
    """The torch_dist directory of `iteration` (default: the tracker's latest), checked complete."""
    ckpt = Path(ckpt)
    if iteration is None:
        tracker = ckpt / TRACKER
        if not tracker.is_file():
            raise CheckpointDirError(f"{tracker}: missing (not a complete Megatron checkpoint)")
        it = tracker.read_text().strip()
        name = "release" if it == "release" else f"iter_{int(it):07d}"
    else:
        name = f"iter_{iteration:07d}"
    path = ckpt / name
    if not (path / "metadata.json").is_file():
        have = [f"iter_{i:07d}" for i in iterations(ckpt)]
        raise CheckpointDirError(
            f"{path}: missing or incomplete torch_dist checkpoint (no metadata.json; iterations present: {have or 'none'})"
        )
    return path
