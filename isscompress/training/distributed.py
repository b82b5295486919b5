"""Device choice and PyTorch's own distributed data parallel, for runs under ``torchrun``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

from ..errors import IsscompressError


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; an unavailable CUDA request is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise IsscompressError(f"Unknown device '{name}'.", "Use auto, cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):  # meta holds no values; mps, xpu, ... are not what isscompress is tested on
        raise IsscompressError(f"Device '{name}' is not one isscompress trains on.", "Use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise IsscompressError(f"Device '{name}' was requested but CUDA is not available.", "Use device: auto or cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise IsscompressError(f"Device '{name}' was requested but this machine has {torch.cuda.device_count()} CUDA "
                               "devices.", "Use cuda:0 or device: auto.")
    return device


@dataclass(frozen=True)
class Distributed:
    """This process's place in a run: rank, world size and device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def single(cls, device: str = "auto") -> "Distributed":
        return cls(0, 1, resolve_device(device))

    @classmethod
    def from_environment(cls, device: str = "auto") -> "Distributed":
        """Under torchrun (RANK and WORLD_SIZE set) join the process group: NCCL on GPU, gloo on CPU."""
        if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls.single(device)
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        chosen = resolve_device(device)
        if chosen.type == "cuda":
            chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(chosen)
        if not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
        return cls(rank, world, chosen)

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def shard_columns(self, batched: Tensor) -> Tensor:
        """This rank's equal share of the batch columns (so the averaged gradient is the full batch's)."""
        if self.world_size == 1:
            return batched
        columns = batched.size(1)
        if columns % self.world_size:
            raise IsscompressError(f"The batch size {columns} is not divisible by the {self.world_size} processes.",
                                   "Choose finetune.batch_size as a multiple of --nproc-per-node.")
        share = columns // self.world_size
        return batched[:, self.rank * share : (self.rank + 1) * share].contiguous()

    def close(self) -> None:
        if self.world_size > 1 and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
