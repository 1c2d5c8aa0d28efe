"""torchrun / SLURM process groups. Without a launcher everything is a world of one.

torchrun (or ``srun`` with the variables below exported) sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; multi-node runs use the same variables (standard env:// rendezvous).
Backend: NCCL on GPUs, gloo on CPUs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def mean(self, values: list[float], device) -> list[float]:
        """Average Python floats over the ranks (identity for one process)."""
        if self.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return (t / self.size).tolist()


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process: from torch.distributed once a process group is
    initialised, else from the launcher's RANK / WORLD_SIZE (so it works before setup()),
    else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    return process_rank()[1] > 1


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group the launcher describes (if any) and pick this rank's device."""
    if not launched():
        return World(), device
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    world = World(*process_rank(), int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return world, device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- FSDP2
def shard(model: torch.nn.Module) -> None:
    """FSDP2: shard every transformer block, then the rest of the model, over all ranks
    (parameters become DTensors sharded on dim 0; gathered per block in forward/backward)."""
    from torch.distributed.fsdp import fully_shard
    for name in ("blocks", "pixel_blocks", "semantic_blocks"):
        for block in getattr(model, name, []):
            fully_shard(block)
    fully_shard(model)


def shard_module(module: torch.nn.Module) -> None:
    """FSDP2 over one module outside the model that holds trainable parameters (a loss term's
    head, e.g. REPA's projector): its gradients are reduced like the model's."""
    from torch.distributed.fsdp import fully_shard
    fully_shard(module)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor of the whole value (all-gathers a sharded DTensor: call on every rank)."""
    from torch.distributed.tensor import DTensor
    return t.full_tensor() if isinstance(t, DTensor) else t


def shaped_like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``ref``: this rank's shard when ``ref`` is a DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    if isinstance(ref, DTensor):
        return distribute_tensor(full.to(ref.device, ref.dtype), ref.device_mesh, ref.placements)
    return full.to(ref.device)
