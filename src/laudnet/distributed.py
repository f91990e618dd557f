"""Distributed data parallel under ``torchrun``: gloo on CPU, NCCL on GPU.

``torchrun --nproc_per_node 2 -m laudnet train ...`` starts one process per rank with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`setup` joins the process group.
Without those variables everything runs in one process. Only rank 0 logs and writes
checkpoints (:attr:`Context.is_main`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor, distributed as dist, nn
from torch.nn.parallel import DistributedDataParallel

from .errors import DeviceError

DEVICE_TYPES = ("cpu", "cuda", "mps")


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank, the number of ranks and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """The device named ``name`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``), checked to be
    present here; ``None`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if name is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise DeviceError(f"device {name!r} is unknown; allowed: cpu, cuda, cuda:N, mps")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"device {name!r} asked for, but no CUDA GPU is usable on this machine; use cpu")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {name!r} asked for, but this machine has {count} CUDA GPU(s): "
                              f"cuda:0..cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {name!r} asked for, but MPS is not available on this machine; use cpu")
    return device


def setup(device: str | None = None) -> Context:
    """Join the process group if started by ``torchrun`` (NCCL on GPU, gloo on CPU) and pick
    the device (:func:`resolve_device`)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device, local_rank)
    if world_size == 1:
        return Context(0, 1, target)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), target)


def cleanup(context: Context) -> None:
    """Leave the process group (a no-op in a single process)."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, context: Context, find_unused_parameters: bool = False) -> nn.Module:
    """The model in ``DistributedDataParallel`` when there are several ranks, else itself."""
    if not context.distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def all_reduce_sum(values: Tensor, context: Context) -> Tensor:
    """``values`` summed over the ranks (returned unchanged in a single process)."""
    if context.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_buffers(model: nn.Module, context: Context) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics drift apart between ranks:
    each updates them from its own batches), so that all ranks evaluate what rank 0 saves."""
    if context.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier(context: Context) -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint)."""
    if context.distributed:
        dist.barrier()
