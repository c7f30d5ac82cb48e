"""Data-parallel training without a runtime dependency: what one worker needs to know about its peers.

``train_interpreter`` takes a :class:`DataParallel`; the default is one process and no communication at all
(so single-process training is exactly what it was before data parallelism existed). A runtime that starts
several workers (cluster/stages/interpreter.py, with Ray Train's TorchTrainer) initializes ``torch.distributed``
and passes each worker its rank, the world size and a ``prepare_model`` that wraps the model for gradient
averaging (``ray.train.torch.prepare_model``: DDP, gloo on CPU, nccl on GPU).

How the batches are shared is ``interpreter.train.epoch_shards``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


def _unchanged(model: nn.Module) -> nn.Module:
    return model


@dataclass(frozen=True)
class DataParallel:
    """This process's place among `world_size` data-parallel workers (default: the only one)."""

    rank: int = 0
    world_size: int = 1
    prepare_model: Callable[[nn.Module], nn.Module] = field(default=_unchanged)

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside a world of {self.world_size} workers")
        if self.world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("several workers need torch.distributed initialized (Ray Train's TorchTrainer does it)")

    @property
    def is_main(self) -> bool:
        """Rank 0: the worker that logs and checkpoints."""
        return self.rank == 0

    def all_reduce_sum(self, values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
        """Element-wise sum of `values` over all workers (float64; unchanged with one worker)."""
        if self.world_size == 1:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def broadcast(self, obj: T, device: torch.device | str = "cpu") -> T:
        """Rank 0's `obj` on every worker (picklable objects; unchanged with one worker)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=torch.device(device))
        return box[0]
