"""torch.distributed for `ovseg train` and `ovseg eval`: the same command alone or under torchrun.

torchrun (single or multi node) sets RANK, LOCAL_RANK and WORLD_SIZE; we join the process
group (NCCL on GPUs, gloo on CPUs), give each rank its GPU, and let rank 0 alone log and
write files. Nothing here is home-made: DistributedDataParallel does the gradient work of
training; evaluation sums its counts with ``all_reduce``. Alone, every helper is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ovseg_cli.devices import resolve_device
from ovseg_cli.errors import OvsegError


@dataclass
class DistContext:
    """Where this process stands in the job."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world > 1


def setup(device_name: str) -> DistContext:
    """Join the torchrun job if there is one and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if world > 1:
        if device.type == "cuda":
            if torch.cuda.device_count() <= local_rank:
                raise OvsegError(
                    f"rank {rank} wants GPU {local_rank} but this node has {torch.cuda.device_count()}"
                )
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
    elif device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    return DistContext(rank=rank, local_rank=local_rank, world=world, device=device)


def any_true(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when it is true on any (stop signals, non-finite losses)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean(value: float, ctx: DistContext) -> float:
    """The mean of a number over all ranks."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], device=ctx.device, dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world


def total(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over all ranks, in place (it must be on ``ctx.device``)."""
    if ctx.distributed:
        dist.all_reduce(t)
    return t


def maximum(value: float, ctx: DistContext) -> float:
    """The largest of a number over all ranks."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], device=ctx.device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def broadcast(obj: object, ctx: DistContext) -> object:
    """Rank 0's object (picklable), on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=ctx.device)
    return box[0]


def gather(obj: object, ctx: DistContext) -> list[object]:
    """Every rank's object (picklable), in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out: list[object] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    """Wait for every rank."""
    if ctx.distributed:
        dist.barrier()


def teardown(ctx: DistContext, wait: bool = False) -> None:
    """Leave the process group; with ``wait`` (the work ended well on this rank), once every
    rank got there. A rank that left gloo's group alone while the others still finished their
    part aborted now and then at exit ("terminate called without an active exception")."""
    if ctx.distributed and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
