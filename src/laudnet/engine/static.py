"""The static layers of a network (stems, heads, blocks without gates) on the engine's kernels.

In sparse inference the whole network runs channels-last, and its static layers should be
no slower than the static network's: a convolution, its batch norm and its activation run
as one packed operator (:class:`~laudnet.sparse.packed.PackedConv`: the norm folded, the
activation fused, the backend chosen by measurement) instead of three passes over the map.
Any other layer runs as it is.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.mobilenetv2 import InvertedResidual

from ..sparse.packed import FOLDED_NORMS, PackedConv, pack_key

ACTIVATIONS: dict[type, Callable[..., Tensor]] = {nn.ReLU: F.relu, nn.ReLU6: F.relu6}
"""Activation modules the packed operator applies itself."""


def _leaves(layers: Iterable[nn.Module]) -> Iterator[nn.Module]:
    """The layers in execution order, containers whose forward is their children in order
    (``nn.Sequential``, an inverted residual without its residual) opened up."""
    for layer in layers:
        if isinstance(layer, nn.Sequential):
            yield from _leaves(layer)
        elif isinstance(layer, InvertedResidual) and not layer.use_res_connect:
            yield from _leaves(layer.conv)
        else:
            yield layer


class StaticLayers:
    """Runs static layers packed; holds their packed operands (rebuilt when a weight or a
    batch-norm statistic changes)."""

    def __init__(self) -> None:
        self._steps: dict[tuple[int, ...], list[tuple]] = {}
        self._packed: dict[int, tuple[tuple, PackedConv]] = {}

    def __getstate__(self) -> dict:
        """Copies and pickles leave the packed operands and the step lists out (they refer
        to the original modules)."""
        return {"_steps": {}, "_packed": {}}

    def _plan(self, layers: tuple[nn.Module, ...]) -> list[tuple]:
        """``("packed", conv, norm, act)`` for each convolution followed by a batch norm (and
        an activation the packed operator applies), ``("module", layer)`` for the rest."""
        leaves = list(_leaves(layers))
        steps, i = [], 0
        while i < len(leaves):
            layer = leaves[i]
            if isinstance(layer, nn.Conv2d) and i + 1 < len(leaves) and isinstance(leaves[i + 1], FOLDED_NORMS):
                act = ACTIVATIONS.get(type(leaves[i + 2])) if i + 2 < len(leaves) else None
                steps.append(("packed", layer, leaves[i + 1], act))
                i += 2 if act is None else 3
            else:
                steps.append(("module", layer))
                i += 1
        return steps

    def _operand(self, conv: nn.Conv2d, norm: nn.Module) -> PackedConv:
        key = pack_key([(conv, norm)])
        cached = self._packed.get(id(conv))
        if cached is None or cached[0] != key:
            cached = self._packed[id(conv)] = (key, PackedConv(conv, norm))
        return cached[1]

    def run(self, layers: Iterable[nn.Module], x: Tensor) -> Tensor:
        """``layers`` applied in order to channels-last ``x``, as their forward would."""
        layers = tuple(layers)
        ids = tuple(id(layer) for layer in layers)
        if ids not in self._steps:
            self._steps[ids] = self._plan(layers)
        for step in self._steps[ids]:
            if step[0] == "packed":
                _, conv, norm, act = step
                x = self._operand(conv, norm).map(x, act)
            else:
                x = step[1](x)
        return x
