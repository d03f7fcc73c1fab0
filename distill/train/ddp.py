"""DistributedDataParallel helpers: the same ``fit`` runs alone or under ``torchrun``.

``torchrun --nproc_per_node=N`` sets RANK/WORLD_SIZE/LOCAL_RANK; :func:`init_from_env`
joins the group (gloo on CPU, nccl on GPU). Everything else asks :func:`current`.

Example::

    dist_env = init_from_env()          # DistEnv(rank=0, world_size=1, ...) when not under torchrun
    if dist_env.is_main: print("only once")
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job: rank, local rank, world size."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that writes files and talks)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def current() -> DistEnv:
    """This process's place in the initialised process group (single process when none)."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistEnv()


def init_from_env(backend: str | None = None) -> DistEnv:
    """Join the process group torchrun describes in the environment; a no-op without WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return current()


def default_device(env: DistEnv | None = None) -> torch.device:
    """This rank's device: its CUDA device when there is one, else the CPU."""
    env = env or current()
    return torch.device(f"cuda:{env.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if current().distributed:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (identity in a single process)."""
    if not current().distributed:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / current().world_size


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank if ``flag`` is true on any rank (rank-consistent decisions: stop, skip)."""
    if not current().distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not current().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
