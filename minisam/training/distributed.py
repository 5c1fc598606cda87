"""torch.distributed for the trainers: launched by ``torchrun``, DistributedDataParallel does the rest.

Nothing here moves gradients by hand: :func:`wrap` hands the training-step module to
``DistributedDataParallel``, which all-reduces (averages) the gradients of the trainable parameters
during ``backward``. Every rank holds the whole (small) dataset and takes its share of each global
batch (:func:`shard`), so one seed gives the same global batches whatever the world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, reports and progress."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment carries torchrun's variables (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device | None = None) -> World:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA); a no-op when not launched."""
    if dist.is_available() and dist.is_initialized():
        return current_world()
    if not launched_by_torchrun():
        return World()
    cuda = device is not None and device.type == "cuda"
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return current_world()


def current_world() -> World:
    """The initialised process group's rank and size, else a single-process world."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def wrap(module: torch.nn.Module, world: World) -> torch.nn.Module:
    """``module`` under DistributedDataParallel when the world has several processes, else as is.

    ``find_unused_parameters``: single-mask prompts leave three of SAM's four mask-token heads unused.
    """
    if world.size == 1:
        return module
    device_ids = None
    first = next(module.parameters(), None)
    if first is not None and first.device.type == "cuda":
        device_ids = [first.device.index]
    return DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=True, broadcast_buffers=False
    )


def shard(indices: torch.Tensor, world: World) -> tuple[torch.Tensor, float]:
    """This rank's part of a global batch and the loss weight that makes DDP's average exact.

    Each rank's loss is the *sum* of its samples' losses times ``weight`` = size / len(global batch):
    DDP averages over ranks, so the gradient equals that of the mean loss over the global batch even
    when the batch does not divide evenly. A rank left without a sample gets the first one at weight 0
    (it must still run forward and backward for DDP's collective calls).
    """
    part = indices[world.rank :: world.size]
    weight = world.size / max(1, len(indices))
    if len(part) == 0:
        return indices[:1], 0.0
    return part, weight
