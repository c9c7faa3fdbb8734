"""Data-parallel training across processes: torch.distributed with DDP, launched by `torchrun` or `accelerate launch`.

Both launchers start one process per GPU and set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
`from_environment` reads them (a plain `python` run is rank 0 of 1 and needs no process group). The backend is
NCCL on GPUs and gloo on CPUs (what CI tests with two processes).

How training splits the work (p2p.hyper.train): the global batch of every step is the same pure function of
(seed, step) whatever the number of processes, and its rows (samples of different users) are dealt out to the
ranks round-robin. Each rank's loss is scaled so that DDP's gradient average equals the gradient of the global
batch's loss; the optimizer state is replicated (the hypernetwork is small next to the base model), rank 0 alone
writes checkpoints, and a checkpoint resumes on any number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a data-parallel run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, configured: str) -> str:
        """This rank's device: its own GPU (LOCAL_RANK) when the configured device is cuda, else the configured."""
        if self.enabled and configured.startswith("cuda"):
            return f"cuda:{self.local_rank}"
        return configured

    def shard(self, rows: list[T]) -> list[T]:
        """This rank's rows of a global batch, dealt round-robin (rank r gets rows r, r + world, ...)."""
        if len(rows) < self.world_size:
            raise ValueError(f"a batch of {len(rows)} rows cannot give every one of {self.world_size} processes a "
                             f"row; raise train.tasks_per_batch x train.samples_per_task or use fewer processes")
        return rows[self.rank::self.world_size]

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """The sum over ranks of each value (every rank gets the result)."""
        if not self.enabled:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self._collective_device())
        torch.distributed.all_reduce(tensor)
        return dict(zip(keys, tensor.tolist()))

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module as DDP sees it (gradients averaged across ranks in backward); itself when alone."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def _collective_device(self) -> torch.device:
        backend = torch.distributed.get_backend()
        return torch.device("cuda", self.local_rank) if backend == "nccl" else torch.device("cpu")


def from_environment() -> Distributed:
    """This process's place in a torchrun / accelerate launch (joining the process group), or rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        use_nccl = torch.cuda.is_available() and os.environ.get("P2P_DIST_BACKEND", "") != "gloo"
        if use_nccl:
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group("nccl" if use_nccl else "gloo")
    return Distributed(rank, world_size, local_rank)


def shutdown(dist: Distributed) -> None:
    """Leave the process group (after the last collective call)."""
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
