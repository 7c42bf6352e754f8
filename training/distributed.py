"""Scale-out with PyTorch DistributedDataParallel under ``torchrun`` (one node or many).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; this module only reads
them. Backend: nccl when the processes have GPUs, gloo on CPUs. Without torchrun the run is a
single process and nothing here talks to anyone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from model.config import ConfigError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.backend is not None

    def all_reduce_mean(self, values: list[float]) -> list[float]:
        """The mean over processes of each value (an identity for a single process)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on any."""
        if not self.active:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (small, JSON-like values), in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str = "auto") -> Dist:
    """Join the torchrun job described by the environment, or set up a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device == "cuda" or device.startswith("cuda:") or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ConfigError(f"train.device={device!r}, but torch sees no CUDA device; allowed here: auto, cpu")
    if world <= 1:
        dev = torch.device("cuda" if device == "auto" and want_cuda else ("cpu" if device == "auto" else device))
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return Dist(device=dev)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        if device.startswith("cuda:"):
            raise ConfigError(f"train.device={device!r}: under torchrun each process takes cuda:LOCAL_RANK; "
                              "use auto or cuda")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", device_id=dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo")
        backend = "gloo"
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)
