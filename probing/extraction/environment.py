"""Where and how an extraction runs: ranks, the process group, hardware, command, date.

Under `torchrun` (RANK, WORLD_SIZE, MASTER_ADDR set) the ranks join a gloo
process group, used only for barriers: the store itself is the shared state,
each rank writing disjoint chunk-aligned rows. Gloo rather than NCCL because
no tensor crosses ranks and gloo also works on CPU-only machines. SLURM job
arrays set RANK / WORLD_SIZE without a rendezvous address; then the ranks
coordinate through the workdir alone (see runner._prepare_workdir).
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from probing import provenance


def rank_and_world() -> tuple[int, int]:
    """Rank and world size under torchrun / SLURM arrays (0, 1 otherwise)."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ValueError(f"environment RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world


def init_process_group() -> bool:
    """Joins torchrun's rendezvous when there is one; True if a group is active."""
    import torch.distributed as dist

    _, world = rank_and_world()
    if world <= 1 or "MASTER_ADDR" not in os.environ or not dist.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and torch.cuda.is_available():
        # One GPU per process: "cuda" (the model's device) means this one.
        torch.cuda.set_device(int(local_rank) % torch.cuda.device_count())
    return True


def barrier() -> None:
    """Waits for every rank (no-op without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def close_process_group() -> None:
    """Leaves the process group joined by `init_process_group`."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """CPU model and GPU name(s) of this machine, for manifest.json."""
    info: dict[str, Any] = {"cpu": _cpu_model(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["gpu"] = names[0]
        info["gpu_count"] = len(names)
    else:
        info["gpu"] = None
        info["gpu_count"] = 0
    info["world_size"] = rank_and_world()[1]
    return info


def command_line() -> str:
    """The command manifest.json records (probing.provenance.command_line)."""
    return provenance.command_line()


def utc_now() -> str:
    """The current time, ISO 8601 in UTC (probing.provenance.utc_now)."""
    return provenance.utc_now()
