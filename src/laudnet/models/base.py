"""What every dynamic network has: its blocks, its stages and the shape of its last input."""

from __future__ import annotations

from torch import nn

from ..config import StageConfig


class DynamicNetwork(nn.Module):
    """Base of the dynamic models; remembers the ``(C, H, W)`` of the last input so that
    statistics and the budget loss can relate block costs to the whole network."""

    stage_configs: list[StageConfig]

    def __init__(self) -> None:
        super().__init__()
        self.input_shape: tuple[int, ...] | None = None
        self.register_forward_pre_hook(_remember_input_shape)

    @property
    def paradigm(self) -> str:
        return "-".join(c.paradigm for c in self.stage_configs)

    @property
    def granularity(self) -> str:
        return "-".join(str(c.granularity or 1) for c in self.stage_configs)


def _remember_input_shape(module: DynamicNetwork, args) -> None:
    module.input_shape = tuple(args[0].shape[1:])
