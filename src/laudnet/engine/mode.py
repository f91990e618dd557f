"""The numeric mode of sparse execution: inference in float32.

Sparse execution runs the packed float32 kernels of :mod:`laudnet.sparse` and is inference
only, so it builds no autograd graph (it works without ``torch.no_grad()``) and leaves any
``torch.autocast`` region (under bfloat16 autocast it computes in float32, which is at least
as accurate as the masked network in bfloat16).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

REDUCED_PRECISION = (torch.bfloat16, torch.float16)


@contextmanager
def inference(device_type: str) -> Iterator[None]:
    """No autograd graph and no autocast, for the duration of a sparse forward pass."""
    with torch.no_grad(), torch.autocast(device_type, enabled=False):
        yield


def engine_input(x: Tensor) -> Tensor:
    """``x`` as the engine takes it: float32 (an autocast region may hand over bfloat16),
    channels-last."""
    if x.dtype in REDUCED_PRECISION:
        x = x.float()
    return x.contiguous(memory_format=torch.channels_last)
