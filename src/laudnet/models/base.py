"""What every dynamic network has: its blocks, its stages, the shape of its last input and
its execution mode (sparse inference runs the whole network channels-last, its static
layers packed), and its stage outputs as features for dense tasks."""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Callable, Sequence

from torch import Tensor, nn

from .. import checks
from ..config import StageConfig
from ..engine import engine_input, inference
from ..blocks.padding import image_region
from ..engine.static import StaticLayers
from ..gates import Masker


class DynamicNetwork(nn.Module):
    """Base of the dynamic models; remembers the ``(C, H, W)`` of the last input so that
    statistics and the budget loss can relate block costs to the whole network."""

    stage_configs: list[StageConfig]

    def __init__(self) -> None:
        super().__init__()
        self.input_shape: tuple[int, ...] | None = None
        self.image_sizes: list[tuple[int, int]] | None = None
        """The unpadded ``(h, w)`` of each image of the next input, if it is a padded batch
        (set by a detector's transform, used by one pass: :mod:`laudnet.blocks.padding`)."""
        self.execution = "masked"  # set with the blocks' by laudnet.set_execution
        self.static_layers = StaticLayers()  # stems, heads, blocks without gates in sparse inference
        self.register_forward_pre_hook(_prepare_input)

    def __call__(self, *args, **kwargs):
        if self.sparse_inference:  # float32, no autograd graph (see laudnet.engine.mode)
            with inference(args[0].device.type):
                return super().__call__(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    @property
    def sparse_inference(self) -> bool:
        """Whether the network runs on the sparse engine (sparse execution, eval mode)."""
        return self.execution == "sparse" and not self.training

    def forward_stem(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """The layers before the first stage, on an input as :meth:`forward` receives it."""
        raise NotImplementedError

    def named_stages(self) -> list[tuple[str, nn.Module]]:  # pragma: no cover - abstract
        """``(module name, stage)`` of every stage, in order."""
        raise NotImplementedError

    def run_stage(self, stage: nn.Module, x: Tensor) -> Tensor:
        """One stage, as :meth:`forward` runs it."""
        return stage(x)

    def stage_outputs(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Every stage's output keyed by the stage's module name, on an input as
        :meth:`forward` receives it (use :meth:`forward_features` from outside)."""
        sizes, self.image_sizes = self.image_sizes, None
        if sizes is not None and len(sizes) != x.shape[0]:
            raise ValueError(f"image_sizes holds {len(sizes)} sizes for a batch of {x.shape[0]} images")
        with image_region(sizes, tuple(x.shape[-2:])):
            x = self.forward_stem(x)
            stages = self.named_stages()
            features: OrderedDict[str, Tensor] = OrderedDict()
            for i, (name, stage) in enumerate(stages):
                x = self.run_stage(stage, x)
                # in sparse execution a block that reuses its input writes its output over it
                overwritten = i + 1 < len(stages) and getattr(stages[i + 1][1][0], "reuse_input", False)
                features[name] = x.clone() if overwritten and self.sparse_inference else x
        return features

    def forward_features(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """The output of every stage, keyed by the stage's module name (ResNet: ``layer1`` …
        ``layer4``; RegNet: ``block1`` … ``block4``; MobileNetV2: the index in ``features`` of
        the stage's last layer), as torchvision's
        ``IntermediateLayerGetter`` returns them: the features of detection and segmentation
        heads. Computed in the network's execution mode (in sparse inference: float32,
        channels-last, no autograd graph); :func:`laudnet.stats` covers the pass (a
        classifier's head, not run, still counts as static).

        Unlike timm's ``forward_features`` (the last map), this returns every stage's map.
        """
        (x,) = _prepare_input(self, (x,)) or (x,)
        with inference(x.device.type) if self.sparse_inference else contextlib.nullcontext():
            return self.stage_outputs(x)

    @property
    def paradigm(self) -> str:
        return "-".join(c.paradigm for c in self.stage_configs)

    @property
    def granularity(self) -> str:
        return "-".join(str(c.granularity or 1) for c in self.stage_configs)


def check_arguments(num_classes: int, input_size: int | None, gate_scale: bool, in_channels: int = 3) -> None:
    """Refuse bad builder arguments with messages that name them, before torch's own errors."""
    checks.positive_int("num_classes", num_classes)
    checks.positive_int("in_channels", in_channels)
    if input_size is not None:
        checks.positive_int("input_size", input_size)
    checks.flag("gate_scale", gate_scale)


def feature_sizes(side: int, strides: Sequence[int]) -> list[int]:
    """Side of each stage's output map: ``side`` divided by each stride in turn, rounded up."""
    sizes = []
    for stride in strides:
        side = math.ceil(side / stride)
        sizes.append(side)
    return sizes


def initialise(model: nn.Module, init: Callable[[nn.Module], None]) -> None:
    """Apply ``init`` to every module of ``model`` outside the maskers, which keep their own
    "keep everything" initialisation."""
    in_maskers = {id(sub) for m in model.modules() if isinstance(m, Masker) for sub in m.modules()}
    for m in model.modules():
        if id(m) not in in_maskers:
            init(m)


def _prepare_input(module: DynamicNetwork, args: tuple) -> tuple | None:
    """Remember the input shape; in sparse inference, lay the input out channels-last, the
    layout of the sparse engine, so that the stem and the static layers run on it too (a
    max-pool over a channels-last map is an order of magnitude faster on CPUs)."""
    x = args[0]
    module.input_shape = tuple(x.shape[1:])
    if module.sparse_inference and x.dim() == 4:
        return (engine_input(x), *args[1:])
    return None
