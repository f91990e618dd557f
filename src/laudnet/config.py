"""Parsing and validation of per-stage paradigm and granularity specifications.

A network is split into stages (ResNet-50 has four). Each stage gets one *paradigm*
(what its blocks skip) and one *granularity* (the spatial patch side S in output pixels,
or the channel group size G). Specs are written the way the papers write them:
``paradigm="spatial-spatial-channel-layer"``, ``granularity="4-4-2-1"``; a single value
applies to every stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

PARADIGMS = ("spatial", "channel", "layer", "layer+spatial", "layer+channel", "none")
"""Allowed paradigm words. ``layer+X`` puts a layer gate in front of an X gate in the same
block (LC-Net's joint design); ``none`` keeps a stage static."""

ParadigmSpec = Union[str, Sequence[str]]
GranularitySpec = Union[None, int, str, Sequence[int]]


@dataclass(frozen=True)
class StageConfig:
    """Paradigm and granularity of one stage.

    ``granularity`` is the patch side S for spatial paradigms, the group size G for
    channel paradigms and ``None`` for ``layer`` and ``none``.
    """

    paradigm: str
    granularity: int | None

    @property
    def spatial(self) -> bool:
        return self.paradigm.endswith("spatial")

    @property
    def channel(self) -> bool:
        return self.paradigm.endswith("channel")

    @property
    def layer(self) -> bool:
        return self.paradigm.startswith("layer")

    def gate_rates(self, rate: float) -> tuple[float, float]:
        """Activation rates ``(layer, inner)`` of the layer gate and of the spatial or channel
        gate that give the block activation ``rate`` (a missing gate counts as 1). The
        block's rate is their product, so ``layer+X`` blocks give each gate ``sqrt(rate)``."""
        if self.layer and (self.spatial or self.channel):
            return math.sqrt(rate), math.sqrt(rate)
        return (rate, 1.0) if self.layer else (1.0, rate)

    def __str__(self) -> str:
        return self.paradigm if self.granularity is None else f"{self.paradigm}:{self.granularity}"


def _split(spec: str | Sequence, num_stages: int, what: str) -> list:
    if not isinstance(spec, (str, Sequence)):
        allowed = ("a word or '-'-joined words (e.g. 'spatial', 'spatial-channel-layer')" if what == "paradigm"
                   else "a positive integer, '-'-joined integers or a sequence of them (e.g. 4, '4-4-2-1')")
        raise TypeError(f"{what} must be {allowed}, got {spec!r}")
    items = spec.split("-") if isinstance(spec, str) else list(spec)
    if len(items) == 1:
        return items * num_stages
    if len(items) != num_stages:
        raise ValueError(
            f"{what} {spec!r} gives {len(items)} stages but the network has {num_stages}; "
            f"give one value for all stages or {num_stages} values separated by '-'"
        )
    return items


def parse_paradigm(spec: ParadigmSpec, num_stages: int) -> list[str]:
    """Return one validated paradigm word per stage."""
    words = [str(w).strip().lower() for w in _split(spec, num_stages, "paradigm")]
    for stage, word in enumerate(words, start=1):
        if word not in PARADIGMS:
            raise ValueError(
                f"paradigm of stage {stage} is {word!r}; allowed: {', '.join(PARADIGMS)}"
            )
    return words


def _positive_int(value, stage: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = None
    if number is None or number < 1 or str(number) != str(value).strip():
        raise ValueError(f"granularity of stage {stage} is {value!r}; it must be a positive integer")
    return number


def stage_configs(
    paradigm: ParadigmSpec,
    granularity: GranularitySpec,
    feature_sizes: Sequence[int],
    inner_channels: Sequence[int],
    default_granularity: dict[str, Sequence[int]],
    channel_multiples: Sequence[int] | None = None,
) -> list[StageConfig]:
    """Validate a paradigm/granularity pair for a network and return one config per stage.

    ``feature_sizes`` are the output feature-map sides of the stages at the nominal input
    size (S may not exceed them); ``inner_channels`` the widths the channel gate splits
    into groups (G may not exceed them). ``granularity=None`` takes, per stage, the
    family default for that stage's paradigm (``default_granularity["spatial"]`` etc.).
    ``channel_multiples`` are the group widths of grouped inner convolutions: a channel
    group must cover whole convolution groups, so G must be a multiple of them.
    """
    num_stages = len(feature_sizes)
    words = parse_paradigm(paradigm, num_stages)
    if granularity is None:
        values = [None] * num_stages
    else:
        values = _split([granularity] if isinstance(granularity, int) else granularity,
                        num_stages, "granularity")
        values = [_positive_int(v, stage) for stage, v in enumerate(values, start=1)]
    configs = []
    for stage, (word, value) in enumerate(zip(words, values), start=1):
        kind = "spatial" if word.endswith("spatial") else "channel" if word.endswith("channel") else None
        if kind is None:
            configs.append(StageConfig(word, None))
            continue
        if value is None:
            value = default_granularity[kind][stage - 1]
        limit = feature_sizes[stage - 1] if kind == "spatial" else inner_channels[stage - 1]
        if value > limit:
            unit = (f"its {limit}x{limit} feature map" if kind == "spatial"
                    else f"its {limit} inner channels")
            raise ValueError(
                f"granularity of stage {stage} ({word}) is {value}, larger than {unit}; "
                f"allowed: 1..{limit}"
            )
        multiple = 1 if channel_multiples is None else channel_multiples[stage - 1]
        if kind == "channel" and value % multiple:
            raise ValueError(
                f"granularity of stage {stage} ({word}) is {value}, which splits the {multiple}-channel "
                f"groups of its grouped convolution; allowed: multiples of {multiple} up to {limit}"
            )
        configs.append(StageConfig(word, value))
    return configs
