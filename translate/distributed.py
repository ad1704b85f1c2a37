"""Data-parallel training under ``torchrun`` (PyTorch DDP).

    torchrun --nproc_per_node=N -m translate train key=value ...

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them training runs
as a single process and nothing here does any work. Each process takes every N-th
batch of the (identically seeded) epoch order, DDP averages the gradients, and
decisions that end a run (time budget, early stopping, Ctrl-C) are agreed on by all
processes, so none waits forever on the others. Process 0 alone validates, logs and
writes checkpoints. Backend: NCCL on GPUs, Gloo on CPUs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"  # where collective operations put their tensors (NCCL needs the GPU)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Group()


def init(device: torch.device) -> tuple[Group, torch.device]:
    """Join the process group torchrun describes; returns the group and this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"process {rank} wants GPU {local_rank} but this machine has {torch.cuda.device_count()}: "
                "use --nproc_per_node at most the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=30))
    group = Group(rank=rank, world_size=world, device=str(device))
    if not group.is_main:  # one voice in the log: process 0's
        logging.getLogger("translate").setLevel(logging.WARNING)
    log.info("distributed training: %d processes, backend %s", world, backend)
    return group, device


def shutdown(group: Group) -> None:
    if group.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(group: Group) -> None:
    if group.active:
        dist.barrier()


@contextmanager
def main_first(group: Group) -> Iterator[None]:
    """Process 0 runs the block first (it writes what the others then read: a cached corpus, the
    tokenized pairs, a probe's figures), the others after it."""
    if not group.is_main:
        barrier(group)
    yield
    if group.is_main:
        barrier(group)


@dataclass(frozen=True)
class Agreement:
    """What every process knows after a training step, whatever happened in the others."""

    elapsed: float  # seconds of training, by the slowest process's clock
    nonfinite: bool  # some process saw a NaN or infinite loss or gradient: every process skips
    stop: bool  # some process was asked to stop (Ctrl-C, SIGTERM)
    tokens: int  # target tokens of this step, summed over the processes


def agree(group: Group, *, elapsed: float, nonfinite: bool, stop: bool, tokens: int) -> Agreement:
    """The one collective of a training step: every process calls it once per step, at the same place."""
    if not group.active:
        return Agreement(elapsed, nonfinite, stop, tokens)
    mine = torch.tensor([elapsed, nonfinite, stop, tokens], dtype=torch.float64, device=group.device)
    rows = [torch.empty_like(mine) for _ in range(group.world_size)]
    dist.all_gather(rows, mine)
    every = torch.stack(rows)  # (world, 4)
    high = every.max(dim=0).values.tolist()
    return Agreement(high[0], high[1] > 0, high[2] > 0, int(every[:, 3].sum().item()))


def any_of(group: Group, *flags: bool) -> tuple[bool, ...]:
    """Each flag, true if it is true in any process (a collective: every process must call it)."""
    if not group.active:
        return tuple(bool(v) for v in flags)
    t = torch.tensor([float(v) for v in flags], dtype=torch.float64, device=group.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def shard(batches: list, group: Group) -> list:
    """This process's share of an epoch: every world_size-th batch, the same count for all."""
    if not group.active:
        return batches
    per_rank = len(batches) // group.world_size
    return batches[group.rank :: group.world_size][:per_rank]


class Features(nn.Module):
    """The model's teacher-forced pass as ``forward``, the call DDP wraps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch) -> torch.Tensor:
        return self.model.features(batch)


def wrap(model: nn.Module, group: Group) -> nn.Module:
    """A module whose forward gives the model's features; under DDP its gradients are averaged."""
    features = Features(model)
    if not group.active:
        return features
    return nn.parallel.DistributedDataParallel(features)


def check_in_sync(model: nn.Module, group: Group) -> None:
    """Stop if the processes' weights have drifted apart (they must stay identical under DDP)."""
    if not group.active:
        return
    with torch.no_grad():
        signature = torch.stack([p.double().sum() for p in model.parameters()])
    low, high = signature.clone(), signature.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError("the training processes' weights differ: gradients were not synchronized")
