"""Latency-guided search of the per-stage paradigm and granularity for a device.

Every stage of a network is tried with every candidate design:

- ``spatial`` with every sensible patch side S: the divisors of the stage's output side
  and the powers of two, as long as the mask grid is at least 2×2 (a 1×1 grid is layer
  skipping);
- ``channel`` with G ∈ {1, 2, 4, 8} × the stage's group width (1 for ResNets and
  MobileNetV2; a RegNet's channel groups must cover whole convolution groups), up to the
  inner width;
- ``layer`` skipping.

A design is priced by the latency predictor, never by timing: the execution plans of its
blocks (:meth:`laudnet.blocks.DynamicBlock.plan`) priced by the cost model of the hardware
profile, at the budget. The budget is an activation rate (every gate at ``target``) or a
FLOPs ratio (each stage at the rate, on a grid of 1/64, whose expected MACs come closest
to ``target`` times its static MACs; designs whose gates cannot come within 0.1 of it, such
as channel groups of half a stage's width, are left out).

Stages are priced independently and both latency and MACs add up over the stages, so the
Pareto front of the network (predicted latency against FLOPs ratio, both lower is better)
is the merge of the stage fronts, one stage at a time; the recommendation is its fastest
design. The predictor knows nothing of accuracy, so two rules stand in for it: within a
stage and paradigm, a coarser granularity is considered only if it is predicted at least
``tolerance`` (1 %) faster than every finer one (coarser masks cost accuracy); and
``paradigms`` restricts the search to the paradigms one is willing to train (e.g. spatial
only). Deterministic: candidates are tried in a fixed order, finest first, and ties keep
the earlier one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torchvision

from .blocks.base import DynamicBlock
from .dynamic import dynamic_blocks
from .flops import static_macs
from .latency.hardware import load_hardware
from .latency.predictor import NetworkWalk, _input_channels, predict_walk, walk_network
from .latency.table import BlockPricer
from .models import create_model, list_models

SEARCH_PARADIGMS = ("spatial", "channel", "layer")
CHANNEL_FACTORS = (1, 2, 4, 8)
BUDGETS = ("rate", "flops")
FLOPS_RATE_STEPS = 64
"""Resolution of the rate search under a FLOPs budget."""
FLOPS_SLACK = 0.1
"""Under a FLOPs budget, a stage design whose FLOPs ratio cannot come this close to the
target (too few channel groups or patches) is left out."""
TOLERANCE = 0.01
"""A coarser granularity must be predicted this much faster than the finer ones of its
paradigm in the stage to be considered (coarser masks cost accuracy)."""


def spatial_candidates(side: int) -> list[int]:
    """Patch sides S worth trying on a ``side × side`` output map: the divisors of ``side``
    and the powers of two, with a mask grid of at least 2×2."""
    divisors = {s for s in range(1, side + 1) if side % s == 0}
    powers = {2 ** k for k in range(side.bit_length())}
    return sorted(s for s in divisors | powers if math.ceil(side / s) >= 2)


def channel_candidates(inner_channels: int, group_width: int = 1) -> list[int]:
    """Channel group sizes G worth trying: {1, 2, 4, 8} × the group width of the stage's
    grouped convolutions, up to its inner width."""
    return [f * group_width for f in CHANNEL_FACTORS if f * group_width <= inner_channels]


def _group_width(block: DynamicBlock) -> int:
    """The channel multiple a channel group must respect: the width of the groups of the
    block's grouped convolutions (1 without any)."""
    width = 1
    for unit in block.units():
        conv = unit.conv
        if conv.groups > 1:
            width = math.lcm(width, conv.out_channels // conv.groups)
    return width


@dataclass(frozen=True)
class StageChoice:
    """One design of one stage at the budget: its blocks' predicted latency (ms per batch)
    and expected MACs per sample, and their static MACs."""

    stage: int
    paradigm: str
    granularity: int | None
    rate: float
    latency_ms: float
    macs: float
    static_macs: float

    @property
    def flops_ratio(self) -> float:
        return self.macs / self.static_macs

    def __str__(self) -> str:
        return self.paradigm if self.granularity is None else f"{self.paradigm}:{self.granularity}"


@dataclass(frozen=True)
class Design:
    """A network design, as the ``paradigm`` and ``granularity`` strings ``create_model`` and
    ``laudnet train`` accept, with its predicted latency per batch, FLOPs ratio and the
    activation rate of each stage (``None`` for stages without dynamic blocks)."""

    paradigm: str
    granularity: str
    latency_ms: float
    flops_ratio: float
    rates: tuple[float | None, ...]


@dataclass
class SearchResult:
    """What :func:`search` found: the recommended design (``paradigm``, ``granularity``), the
    Pareto front of predicted latency against FLOPs ratio (fastest first) and every stage's
    priced candidates (fastest first). ``static_ms`` is the network without gates on the
    same device (torchvision's network when it has one)."""

    arch: str
    hardware: str
    note: str
    batch_size: int
    input_size: int
    budget: str
    target: float
    paradigms: tuple[str, ...]
    static_ms: float
    pareto: list[Design]
    stages: list[list[StageChoice]] = field(default_factory=list)

    @property
    def best(self) -> Design:
        return self.pareto[0]

    @property
    def paradigm(self) -> str:
        return self.best.paradigm

    @property
    def granularity(self) -> str:
        return self.best.granularity

    @property
    def latency_ms(self) -> float:
        return self.best.latency_ms

    @property
    def latency_ratio(self) -> float:
        """Predicted latency of the recommendation over that of the static network."""
        return self.best.latency_ms / self.static_ms

    @property
    def flops_ratio(self) -> float:
        return self.best.flops_ratio

    def summary(self) -> str:
        """A plain-text report: the budget, each stage's candidates, the front, the advice."""
        budget = (f"every gate at activation rate {self.target:g}" if self.budget == "rate"
                  else f"each stage near FLOPs ratio {self.target:g}")
        lines = [f"search: {self.arch} on {self.hardware}, batch {self.batch_size}, "
                 f"{self.input_size}x{self.input_size}, {budget}; paradigms: {', '.join(self.paradigms)}",
                 f"static network: {self.static_ms:.3f} ms per batch", "",
                 "per stage, fastest first (predicted ms per batch of the stage's blocks, stage FLOPs ratio"
                 + (", rate)" if self.budget == "flops" else ")")]
        for choices in self.stages:
            if not choices:
                continue
            rate = (lambda c: f", r={c.rate:.3f}") if self.budget == "flops" else (lambda c: "")
            cells = [f"{c} {c.latency_ms:.3f} ({c.flops_ratio:.2f}{rate(c)})" for c in choices]
            lines.append(f"  stage {choices[0].stage}: " + " | ".join(cells))
        lines += ["", f"Pareto front ({len(self.pareto)} designs):",
                  f"  {'ms/batch':>10}{'vs static':>11}{'FLOPs':>7}  paradigm / granularity"]
        for d in self.pareto:
            lines.append(f"  {d.latency_ms:>10.3f}{d.latency_ms / self.static_ms:>10.3f}x{d.flops_ratio:>7.3f}  "
                         f"{d.paradigm} / {d.granularity}")
        lines += ["", f"recommended: --paradigm {self.paradigm} --granularity {self.granularity}  "
                      f"({self.latency_ms:.3f} ms per batch, {self.latency_ratio:.3f}x static, "
                      f"FLOPs ratio {self.flops_ratio:.3f})", self.note]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(paradigm=self.paradigm, granularity=self.granularity, latency_ms=self.latency_ms,
                    latency_ratio=self.latency_ratio, flops_ratio=self.flops_ratio)
        return data


class SearchSpace:
    """The candidate designs of one network at one input size, built once (shapes only, on
    the meta device) and priced for any device, batch size and budget."""

    def __init__(self, arch: str, input_size: int | None = None) -> None:
        if arch not in list_models():
            raise ValueError(f"unknown model {arch!r}; available: {', '.join(list_models())}")
        if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int)
                                       or input_size < 1):
            raise ValueError(f"input size must be a positive integer, got {input_size!r}")
        base = _meta_model(arch, "none", None, input_size)
        if input_size is None:  # the model's nominal size
            input_size = 32 if getattr(base, "cifar", False) else 224
        self.arch, self.input_size = arch, input_size
        self.walk = walk_network(base, input_size)
        self.shapes = {s.name: s.input_shape for s in self.walk.blocks}
        blocks = dict(dynamic_blocks(base))
        names = {id(block): name for name, block in blocks.items()}
        self.stage_blocks = [[names[id(m)] for m in stage.modules() if id(m) in names] for stage in base.stages()]
        self.block_static = {name: block.static_macs(self.shapes[name]) for name, block in blocks.items()}
        self.static_macs = static_macs(base, (_input_channels(base), input_size, input_size))
        self.rest_macs = self.static_macs - sum(self.block_static.values())
        self.options: list[list[tuple[str, int | None]]] = []
        for names_in_stage in self.stage_blocks:
            if not names_in_stage:
                self.options.append([])
                continue
            first = blocks[names_in_stage[0]]
            side = min(first.branch.sizes(*self.shapes[names_in_stage[0]][1:])[-1])
            self.options.append([("spatial", s) for s in spatial_candidates(side)]
                                + [("channel", g) for g in channel_candidates(first.inner_channels,
                                                                              _group_width(first))]
                                + [("layer", None)])
        self.designs: dict[tuple[str, int | None], dict[str, DynamicBlock]] = {}
        for option in sorted({o for options in self.options for o in options}, key=_option_order):
            words = [option[0] if option in options else "none" for options in self.options]
            values = [str(option[1] or 1) if option in options else "1" for options in self.options]
            self.designs[option] = dict(dynamic_blocks(_meta_model(arch, "-".join(words), "-".join(values),
                                                                   input_size)))
        self._pricers: dict[tuple, BlockPricer] = {}
        self._static: dict[tuple, tuple[float, float, str]] = {}
        self._reference: NetworkWalk | None = None

    def _pricer(self, hardware, batch_size: int) -> BlockPricer:
        hw = load_hardware(hardware)
        key = (hw.name, str(hw.path), batch_size)
        if key not in self._pricers:
            self._pricers[key] = BlockPricer(hw, batch_size)
        return self._pricers[key]

    def _fixed(self, pricer: BlockPricer) -> tuple[float, float, str]:
        """``(ms of the network outside the dynamic blocks, ms of the static network, note)``."""
        hw, batch = pricer.hardware, pricer.batch_size
        key = (hw.name, str(hw.path), batch)
        if key not in self._static:
            report = predict_walk(self.walk, hw, batch, execution="static")
            rest = sum(part.total_ms for part in report.blocks if part.name not in self.shapes)
            static = report.total_ms
            if self.arch in torchvision.models.list_models(module=torchvision.models):
                static = predict_walk(self._reference_walk(), hw, batch).total_ms
            self._static[key] = (rest, static, report.note)
        return self._static[key]

    def _reference_walk(self) -> NetworkWalk:
        """The walk of torchvision's static network of the same name, made once."""
        if self._reference is None:
            try:
                with torch.device("meta"):
                    reference = torchvision.models.get_model(self.arch, weights=None)
            except NotImplementedError:  # builders that compute with tensors (RegNet's widths)
                reference = torchvision.models.get_model(self.arch, weights=None).to("meta")
            self._reference = walk_network(reference, self.input_size)
        return self._reference

    def price(self, pricer: BlockPricer, stage: int, option: tuple[str, int | None], rate: float) -> tuple[float, float]:
        """``(ms per batch, MACs per sample)`` of stage ``stage`` (0-based) in design ``option``
        with every gate at ``rate``."""
        blocks = self.designs[option]
        costs = [pricer(blocks[name], self.shapes[name], rate) for name in self.stage_blocks[stage]]
        return sum(c[0] for c in costs), sum(c[1] for c in costs)

    def _choice(self, pricer: BlockPricer, stage: int, option: tuple[str, int | None], budget: str,
                target: float) -> StageChoice | None:
        static = float(sum(self.block_static[name] for name in self.stage_blocks[stage]))
        rate = target
        if budget == "flops":  # the rate whose MACs come closest to the budget (MACs grow with the rate)
            allowed = target * static

            def macs_at(step: int) -> float:
                return self.price(pricer, stage, option, step / FLOPS_RATE_STEPS)[1]

            if macs_at(0) > allowed * (1 + 1e-9):
                return None
            low, high = 0, FLOPS_RATE_STEPS
            while low < high:  # the largest step within the budget
                middle = (low + high + 1) // 2
                low, high = (middle, high) if macs_at(middle) <= allowed * (1 + 1e-9) else (low, middle - 1)
            if low < FLOPS_RATE_STEPS and macs_at(low + 1) - allowed < allowed - macs_at(low):
                low += 1  # gates that switch whole channel groups: the next step is nearer the budget
            rate = low / FLOPS_RATE_STEPS
        ms, macs = self.price(pricer, stage, option, rate)
        if budget == "flops" and abs(macs / static - target) > FLOPS_SLACK:
            return None  # its gates cannot express the budget (too few channel groups or patches)
        return StageChoice(stage + 1, option[0], option[1], rate, ms, macs, static)

    def search(self, hardware="v100", batch_size: int = 128, target: float = 0.5, budget: str = "rate",
               paradigms: Sequence[str] = SEARCH_PARADIGMS, tolerance: float = TOLERANCE) -> SearchResult:
        """Price every stage's candidates on ``hardware`` and merge them into the Pareto front
        (see the module docstring)."""
        paradigms = _check_arguments(target, budget, paradigms, tolerance)
        pricer = self._pricer(hardware, batch_size)
        rest_ms, static_ms, note = self._fixed(pricer)
        stages: list[list[StageChoice]] = []
        front: list[tuple[float, float, tuple[StageChoice | None, ...]]] = [(rest_ms, float(self.rest_macs), ())]
        for stage, options in enumerate(self.options):
            if not options:
                stages.append([])
                front = [(ms, macs, chosen + (None,)) for ms, macs, chosen in front]
                continue
            choices = [self._choice(pricer, stage, o, budget, target) for o in options if o[0] in paradigms]
            choices = _finest_worthwhile([c for c in choices if c is not None], tolerance)
            if not choices:
                raise ValueError(f"stage {stage + 1} of {self.arch} has no design among {', '.join(paradigms)} "
                                 f"within {FLOPS_SLACK:g} of the FLOPs ratio {target:g}; change the target or "
                                 "allow other paradigms")
            stages.append(sorted(choices, key=lambda c: c.latency_ms))
            front = _pareto([(ms + c.latency_ms, macs + c.macs, chosen + (c,))
                             for ms, macs, chosen in front for c in choices])
        pareto = [Design("-".join(c.paradigm if c else "none" for c in chosen),
                         "-".join(str(c.granularity or 1) if c else "1" for c in chosen),
                         ms, macs / self.static_macs, tuple(c.rate if c else None for c in chosen))
                  for ms, macs, chosen in front]
        return SearchResult(self.arch, pricer.hardware.name, note, batch_size, self.input_size, budget, float(target),
                            paradigms, static_ms, pareto, stages)


def _check_arguments(target: float, budget: str, paradigms: Sequence[str], tolerance: float) -> tuple[str, ...]:
    """Refuse a bad budget, target, paradigm list or tolerance; the paradigms, deduplicated."""
    if budget not in BUDGETS:
        raise ValueError(f"budget {budget!r} is unknown; allowed: {', '.join(BUDGETS)}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target <= 1.0:
        what = "activation rate" if budget == "rate" else "FLOPs ratio"
        raise ValueError(f"target {what} is {target!r}; it must be a number in (0, 1]")
    if isinstance(paradigms, str):
        paradigms = (paradigms,)
    paradigms = tuple(dict.fromkeys(paradigms))
    unknown = [p for p in paradigms if p not in SEARCH_PARADIGMS]
    if unknown or not paradigms:
        raise ValueError(f"paradigm {', '.join(map(repr, unknown)) or '(none given)'} cannot be searched; "
                         f"allowed: one or more of {', '.join(SEARCH_PARADIGMS)}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance is {tolerance!r}; it must be a number in [0, 1)")
    return paradigms


def _finest_worthwhile(choices: list[StageChoice], tolerance: float) -> list[StageChoice]:
    """Drop every granularity that is not predicted at least ``tolerance`` faster than all
    the finer ones of its paradigm (``choices`` come finest first): coarser masks cost
    accuracy, so they must buy latency."""
    kept, fastest = [], {}
    for choice in choices:
        best = fastest.get(choice.paradigm, math.inf)
        if choice.latency_ms < best * (1 - tolerance) or choice.paradigm not in fastest:
            kept.append(choice)
            fastest[choice.paradigm] = min(best, choice.latency_ms)
    return kept


def _pareto(points: list[tuple]) -> list[tuple]:
    """The points not dominated in (latency, MACs), fastest first; ties keep the earlier."""
    front, fewest = [], math.inf
    for point in sorted(points, key=lambda p: (p[0], p[1])):
        if point[1] < fewest:
            front.append(point)
            fewest = point[1]
    return front


def _option_order(option: tuple[str, int | None]) -> tuple[int, int]:
    return SEARCH_PARADIGMS.index(option[0]), option[1] or 0


def _meta_model(arch: str, paradigm: str, granularity: str | None, input_size: int):
    with torch.device("meta"):
        return create_model(arch, paradigm=paradigm, granularity=granularity, input_size=input_size)


def search(arch: str = "resnet50", hardware="v100", batch_size: int = 128, target: float = 0.5,
           budget: str = "rate", paradigms: Sequence[str] = SEARCH_PARADIGMS, input_size: int | None = None,
           tolerance: float = TOLERANCE) -> SearchResult:
    """Search the per-stage paradigm and granularity of ``arch`` with the lowest predicted
    latency on ``hardware`` for batches of ``batch_size``, at the activation rate ``target``
    (``budget="rate"``) or the FLOPs ratio ``target`` (``budget="flops"``).

    The result's ``paradigm`` and ``granularity`` are strings ``create_model`` and ``laudnet
    train`` accept; ``pareto`` is the front of predicted latency against FLOPs ratio.
    ``input_size`` defaults to the model's nominal size (224, or 32 for CIFAR ResNets).
    ``laudnet.search(arch="resnet101", hardware="jetson_tx2", batch_size=1, target=0.5)``.
    """
    _check_arguments(target, budget, paradigms, tolerance)  # before the space is built
    BlockPricer(hardware, batch_size)
    return SearchSpace(arch, input_size).search(hardware, batch_size, target, budget, paradigms, tolerance)
