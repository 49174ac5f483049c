"""`python -m kit.rendezvous`: join the job's process group and all-reduce the ranks.

Launched by slurm/check_rendezvous.sh (one task per GPU, RANK/WORLD_SIZE/MASTER_ADDR from the
allocation): proves the rendezvous before a long job depends on it. NCCL where CUDA is, gloo
otherwise.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist


def main() -> int:
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(rank)], device="cuda" if backend == "nccl" else "cpu")
    dist.all_reduce(t)
    expected = world * (world - 1) / 2
    ok = t.item() == expected
    print(
        f"rank {rank}/{world} on {socket.gethostname()} ({os.environ.get('SLURMD_NODENAME', '-')}) "
        f"master {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} all_reduce {t.item():g} "
        f"{'ok' if ok else f'expected {expected:g}'}",
        flush=True,
    )
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
