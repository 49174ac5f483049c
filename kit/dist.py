"""Rank helpers for code that runs alone or under torchrun/srun: one answer to "am I rank 0?"."""

from __future__ import annotations

import os
from typing import Any


def rank() -> int:
    """This process's global rank: torch.distributed's once initialized, else the launcher's RANK."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_rank0() -> bool:
    return rank() == 0


def initialized() -> bool:
    """A torch.distributed process group is up (collectives reach the other ranks)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """torch.distributed.barrier() when a process group is up; nothing alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_from_rank0(value: Any) -> Any:
    """Rank 0's `value` on every rank (picklable; the value itself when alone)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
