"""Process rank and world size under torchrun, sharding of work items, and a barrier.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without it a run is rank 0 of 1 and nothing here talks to other
processes. The process group is only created for the barrier (gloo works on CPU and GPU alike)."""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_world() -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={size}")
    return World(rank=rank, size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shard(items: Sequence, world: World) -> list:
    """This rank's share: items rank, rank + size, ... (deterministic, so a restarted rank gets the same ones)."""
    return list(items[world.rank :: world.size])


def barrier(world: World, timeout_hours: float = 24.0) -> None:
    """Wait for every rank (no-op for a single process). Slides take long, hence the generous timeout."""
    if world.size == 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=timeout_hours))
    dist.barrier()


def device_for(world: World, device: str) -> str:
    """``cuda`` becomes ``cuda:<local rank>`` so every process of a node gets its own GPU."""
    return f"cuda:{world.local_rank}" if device == "cuda" and world.size > 1 else device
