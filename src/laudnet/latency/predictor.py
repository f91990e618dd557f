"""Network latency prediction: ``predict_latency(model, hardware=..., batch_size=..., ...)``.

A network is walked once (:func:`walk_network`): one forward pass of a single sample records
every operator outside the dynamic blocks (stem, shortcuts of static blocks, pooling, head,
whole static torchvision models) as plan operators (``conv``, ``gemm``, ``elementwise``,
``epilogue``), and the input shape of every dynamic block. Pricing (:func:`predict_walk`)
then asks each dynamic block for its execution plan at the requested batch and activation
rate (:meth:`laudnet.blocks.DynamicBlock.plan`) and prices every operator with the cost
model of the hardware profile. On a calibrated CPU profile, each piece of the network (a
block, a run of static layers: :meth:`NetworkWalk.pieces`) is then multiplied by the
learned correction of :mod:`laudnet.latency.learned`, and every time by the profile's
drift factor. The result is deterministic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.regnet import ResBottleneckBlock
from torchvision.models.resnet import BasicBlock, Bottleneck

from .. import checks
from ..blocks import (DynamicBasicBlock, DynamicBlock, DynamicBottleneck, DynamicInvertedResidual,
                      DynamicResBottleneckBlock)
from ..dynamic import NetworkStats
from ..sparse.plan import FLOAT_BYTES, Op, conv_op, gemm_op
from ..static_pass import static_pass
from .cost import Cost, block_overhead_ms, plan_cost, total_cost
from .hardware import Hardware, load_hardware
from .learned import BLOCK_TYPES, LearnedCorrection, piece_features

Rates = Union[None, float, Mapping[str, float], NetworkStats]
METHODS = ("auto", "analytic", "learned")
EXECUTIONS = ("sparse", "static")

_ACTIVATIONS = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "silu", "silu_", "sigmoid", "sigmoid_",
                "hardswish", "hardswish_", "hardsigmoid", "gelu", "tanh", "leaky_relu", "leaky_relu_", "elu", "mish"}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_BLOCK_CLASSES = dict(zip(BLOCK_TYPES, ((BasicBlock, DynamicBasicBlock), (Bottleneck, DynamicBottleneck),
                                        (ResBottleneckBlock, DynamicResBottleneckBlock),
                                        (InvertedResidual, DynamicInvertedResidual))))
"""The static and dynamic classes of each of :data:`~laudnet.latency.learned.BLOCK_TYPES`, in its order."""


def block_type(model: nn.Module) -> str | None:
    """The residual block ``model`` (a network or one block, static or dynamic) is built of:
    a name of :data:`laudnet.latency.learned.BLOCK_TYPES`, ``None`` if none is known."""
    for module in model.modules():
        for name, classes in _BLOCK_CLASSES.items():
            if isinstance(module, classes):
                return name
    return None


# --------------------------------------------------------------------------------- walk
@dataclass(frozen=True)
class WalkOp:
    """A recorded operator for one sample; :meth:`at` gives it for a batch."""

    op: Op
    fusable: bool = False
    in_size: tuple[int, int] = (0, 0)

    def at(self, batch: int) -> Op:
        op = self.op
        if op.kind == "conv":
            _, c_in, c_out, kernel, stride, groups, out_h, out_w = op.shape
            return conv_op(op.name, batch, c_in, c_out, kernel, stride, groups, out_h, out_w, *self.in_size)
        if op.kind == "gemm":
            rows, k, n, groups = op.shape
            return gemm_op(op.name, rows * batch, k, n, groups)
        return Op(op.kind, op.name, op.macs * batch, op.bytes * batch, op.shape, op.count)


@dataclass
class Segment:
    """A part of the network: static operators of one module, or one dynamic block."""

    name: str
    ops: list[WalkOp] = field(default_factory=list)
    block: DynamicBlock | None = None
    input_shape: tuple[int, int, int] | None = None
    composite: bool = False  # a module with children (a residual block of a static network)


@dataclass
class NetworkWalk:
    """The operators of a network for one input size, independent of batch, rates and device."""

    model_name: str
    input_size: int
    segments: list[Segment]
    block_type: str | None = None  # see block_type()

    @property
    def blocks(self) -> list[Segment]:
        return [s for s in self.segments if s.block is not None]

    def pieces(self) -> list["Piece"]:
        """The segments grouped as they execute and as calibration times them: each dynamic
        block alone (in a network without any, each residual block alone), and each run of
        the static layers between them as one piece."""
        anchored = (lambda s: s.block is not None) if self.blocks else (lambda s: s.composite)
        pieces: list[Piece] = []
        for index, segment in enumerate(self.segments):
            anchor = anchored(segment)
            if anchor or not pieces or pieces[-1].anchor:
                pieces.append(Piece(anchor, []))
            pieces[-1].indices.append(index)
        return pieces


@dataclass
class Piece:
    """Consecutive segments (their indices in the walk) that run as one timed unit: an
    ``anchor`` (a block, whose forward calibration hooks) or a run of static layers."""

    anchor: bool
    indices: list[int]


def _numel(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (list, tuple)):
        return sum(_numel(v) for v in value)
    return 0


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _is_view(out: torch.Tensor, inputs: list[torch.Tensor]) -> bool:
    """Whether ``out`` is one of ``inputs`` or a view of one (works on the meta device)."""
    base = out._base
    return any(out is t or (base is not None and (base is t or base is t._base)) for t in inputs)


class _Recorder(TorchFunctionMode):
    """Records the operators of a forward pass outside the dynamic blocks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.segments: list[Segment] = []
        self.stack: list[tuple[str, nn.Module]] = []
        self.inside_block = 0
        self.last_output: torch.Tensor | None = None
        self.last_kind = ""
        self.hooks = []
        for name, module in model.named_modules():
            self.hooks.append(module.register_forward_pre_hook(self._enter(name, module)))
            self.hooks.append(module.register_forward_hook(self._leave(module)))

    def _enter(self, name: str, module: nn.Module):
        def hook(mod, args):
            self.stack.append((name, module))
            if isinstance(module, DynamicBlock):
                if self.inside_block == 0:
                    self.segments.append(Segment(name, block=module, input_shape=tuple(args[0].shape[1:])))
                self.inside_block += 1
        return hook

    def _leave(self, module: nn.Module):
        def hook(mod, args, output):
            self.stack.pop()
            if isinstance(module, DynamicBlock):
                self.inside_block -= 1
                self.last_output = None
        return hook

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()

    def _group(self) -> tuple[str, nn.Module | None]:
        """The shallowest non-container module around the current operator, and its name."""
        for name, module in self.stack:
            if name and not isinstance(module, _CONTAINERS):
                return name, module
        named = [(name, module) for name, module in self.stack if name]
        return named[-1] if named else ("(network)", None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.inside_block == 0:
            self._record(func, args, kwargs, out)
        return out

    def _record(self, func, args, kwargs, out) -> None:
        name = getattr(func, "__name__", str(func))
        outputs = _tensors(out)
        inputs = _tensors(list(args) + list(kwargs.values()))
        if not outputs or not inputs:
            return
        in_place = ((name.endswith("_") and not name.endswith("__")) or name.startswith("__i")
                    or kwargs.get("inplace") is True or (name in _ACTIVATIONS and args[-1] is True))
        if all(_is_view(t, inputs) for t in outputs) and not in_place:
            return  # a view or the input itself (flatten, contiguous, dropout in eval mode)
        group, module = self._group()
        x = inputs[0]
        consumes_last = x is self.last_output
        if name == "conv2d":
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            stride = args[3] if len(args) > 3 else kwargs.get("stride", 1)
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            stride = stride[0] if isinstance(stride, (tuple, list)) else stride
            op = conv_op(group, 1, x.shape[1], weight.shape[0], weight.shape[-1], stride, groups,
                         out.shape[-2], out.shape[-1], x.shape[-2], x.shape[-1])
            walk_op, kind = WalkOp(op, in_size=(x.shape[-2], x.shape[-1])), "conv"
        elif name in ("linear", "addmm", "mm", "matmul") and len(inputs) >= 2:
            weight = inputs[1] if name != "addmm" else inputs[2]
            k = weight.shape[-1] if name == "linear" else weight.shape[0]
            n = weight.shape[0] if name == "linear" else weight.shape[-1]
            rows = outputs[0].numel() // n
            walk_op, kind = WalkOp(gemm_op(group, rows // max(1, x.shape[0]), k, n)), "gemm"
        else:
            elements = sum(t.numel() for t in inputs if t.dim() > 1 or t.numel() > 1024) + _numel(outputs)
            per_sample = elements / max(1, x.shape[0]) * FLOAT_BYTES
            activation = name in _ACTIVATIONS
            norm = name == "batch_norm"
            fusable = consumes_last and ((activation and self.last_kind in ("conv", "gemm", "norm", "epilogue"))
                                         or (norm and self.last_kind in ("conv", "gemm")))
            kind = "norm" if norm else "activation" if activation else (
                "epilogue" if name.lstrip("_").rstrip("_").lstrip("i") in ("add", "mul", "sub") else "other")
            op_kind = "epilogue" if kind == "epilogue" else "elementwise"
            walk_op = WalkOp(Op(op_kind, f"{group}.{name}", 0.0, per_sample), fusable=fusable)
        self.last_output, self.last_kind = outputs[0], kind
        if not self.segments or self.segments[-1].block is not None or self.segments[-1].name != group:
            composite = module is not None and next(module.children(), None) is not None
            self.segments.append(Segment(group, composite=composite))
        self.segments[-1].ops.append(walk_op)


def _input_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError(f"{type(model).__name__} has no Conv2d: cannot infer its input channels")


@torch.no_grad()
def walk_network(model: nn.Module, input_size: int = 224) -> NetworkWalk:
    """Record the operators of ``model`` for ``input_size × input_size`` inputs (one forward
    pass of one sample as the static network, :func:`static_pass`; dynamic blocks are
    recorded by input shape only)."""
    if not (isinstance(input_size, int) and input_size > 0):
        raise ValueError(f"input size must be a positive integer, got {input_size!r}")
    param = next(model.parameters())
    recorder = _Recorder(model)
    try:
        x = torch.zeros(1, _input_channels(model), input_size, input_size, dtype=param.dtype, device=param.device)
        with static_pass(model), recorder:
            model(x)
    finally:
        recorder.close()
    return NetworkWalk(type(model).__name__, input_size, recorder.segments, block_type(model))


# --------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class BlockLatency:
    """Predicted latency of one part of the network, for one batch, in milliseconds."""

    name: str
    kind: str              # "static" or the block's paradigm
    rate: float | None     # activation rate priced (dynamic blocks)
    compute_ms: float
    memory_ms: float
    overhead_ms: float

    @property
    def total_ms(self) -> float:
        return self.compute_ms + self.memory_ms + self.overhead_ms


@dataclass
class LatencyReport:
    """Predicted latency of one batch of a network on one device."""

    model: str
    hardware: str
    title: str
    kind: str
    calibrated: bool
    batch_size: int
    input_size: int
    method: str
    execution: str
    blocks: list[BlockLatency]

    @property
    def total_ms(self) -> float:
        return sum(b.total_ms for b in self.blocks)

    @property
    def per_image_ms(self) -> float:
        return self.total_ms / self.batch_size

    @property
    def note(self) -> str:
        if self.calibrated:
            return f"prediction for {self.title}, calibrated on this machine"
        if self.kind == "gpu":
            return (f"prediction for {self.title}: UNCALIBRATED (datasheet figures and assumed efficiencies; "
                    "no GPU here to measure)")
        return f"prediction for {self.title}: uncalibrated generic profile"

    def breakdown(self) -> Cost:
        return Cost(sum(b.compute_ms for b in self.blocks), sum(b.memory_ms for b in self.blocks),
                    sum(b.overhead_ms for b in self.blocks))

    def summary(self) -> str:
        """A plain-text table of the blocks and the total."""
        lines = [f"{self.model} on {self.hardware}, batch {self.batch_size}, {self.input_size}x{self.input_size}, "
                 f"{self.execution} execution, {self.method} model",
                 f"{'part':<28}{'kind':<15}{'rate':>6}{'compute':>10}{'memory':>10}{'overhead':>10}{'total ms':>10}"]
        for b in self.blocks:
            rate = "-" if b.rate is None else f"{b.rate:.2f}"
            lines.append(f"{b.name[:27]:<28}{b.kind[:14]:<15}{rate:>6}{b.compute_ms:>10.3f}{b.memory_ms:>10.3f}"
                         f"{b.overhead_ms:>10.3f}{b.total_ms:>10.3f}")
        total = self.breakdown()
        lines.append(f"{'total':<49}{total.compute_ms:>10.3f}{total.memory_ms:>10.3f}{total.overhead_ms:>10.3f}"
                     f"{self.total_ms:>10.3f}")
        lines.append(f"{self.total_ms:.3f} ms per batch, {self.per_image_ms:.4f} ms per image; {self.note}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "blocks"}
        data.update(total_ms=self.total_ms, per_image_ms=self.per_image_ms, note=self.note,
                    blocks=[dict(asdict(b), total_ms=b.total_ms) for b in self.blocks])
        return data


# --------------------------------------------------------------------------------- pricing
def resolve_rates(rates: Rates, names: list[str]) -> dict[str, float]:
    """One activation rate per dynamic block: all 1 (``None``), one number for all, the batch
    means of ``laudnet.stats(model)``, or a dict per block name (every block)."""
    if rates is None:
        return {n: 1.0 for n in names}
    if isinstance(rates, NetworkStats):
        rates = rates.mean_rates
    if isinstance(rates, Mapping):
        return checks.block_rates(rates, names)
    rate = checks.rate("activation rate", rates)
    return {n: rate for n in names}


def block_kind(block: DynamicBlock, execution: str) -> str:
    """The block's paradigm in sparse execution, ``"static"`` without gates."""
    paradigm = block.config.paradigm
    return "static" if execution == "static" or paradigm == "none" else paradigm


def resolve_method(method: str, hw: Hardware) -> LearnedCorrection | None:
    """The learned correction ``method`` asks for: ``"learned"`` (the profile must have
    measured network pieces), ``"analytic"`` (none), or ``"auto"`` (learned when the profile
    has them)."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is unknown; allowed: {', '.join(METHODS)}")
    if method == "learned" or (method == "auto" and LearnedCorrection.available(hw)):
        return LearnedCorrection.for_hardware(hw)
    return None


@dataclass
class PiecePlan:
    """The operators of one piece of a network (:meth:`NetworkWalk.pieces`) at one batch and
    its blocks' rates: per segment the operators and which element-wise ones are fused
    (``None``: as in a block's plan), and what the learned correction sees."""

    kind: str                 # a kind of laudnet.latency.learned.KINDS
    rate: float               # the block's activation rate (1 for static pieces)
    dynamic: bool             # a dynamic block (its fixed host-side cost is priced)
    indices: list[int]        # the segments in the walk
    parts: list[tuple[list[Op], list[bool] | None]]

    @property
    def ops(self) -> list[Op]:
        return [op for ops, _ in self.parts for op in ops]

    @property
    def fused(self) -> list[bool]:
        return [f for ops, fused in self.parts
                for f in (fused if fused is not None else [op.kind == "elementwise" for op in ops])]

    def segment_costs(self, hw: Hardware) -> list[Cost]:
        """Analytic cost of each segment (no drift scaling, no correction)."""
        overhead = Cost(overhead_ms=block_overhead_ms(hw, self.kind)) if self.dynamic else Cost()
        return [plan_cost(ops, hw, fused) + overhead for ops, fused in self.parts]


def block_piece(block: DynamicBlock, input_shape: tuple[int, int, int], batch_size: int, rate: float,
                execution: str, indices: list[int]) -> PiecePlan:
    """The plan of one dynamic block on a batch of ``(C, H, W)`` inputs at ``rate`` (1
    without gates), as the piece of the walk's segments ``indices``."""
    kind = block_kind(block, execution)
    rate = 1.0 if kind == "static" else rate
    ops = block.plan(input_shape, batch_size, rate, "static" if kind == "static" else "sparse")
    return PiecePlan(kind, rate, True, indices, [(ops, None)])


def piece_plans(walk: NetworkWalk, batch_size: int, rates: dict[str, float], execution: str) -> list[PiecePlan]:
    """The plan of every piece of ``walk`` at ``batch_size``, each block at its rate."""
    packed = execution == "sparse" and bool(walk.blocks)
    plans = []
    for piece in walk.pieces():
        first = walk.segments[piece.indices[0]]
        if first.block is not None:
            gated = block_kind(first.block, execution) != "static"  # a block without gates needs no rate
            plans.append(block_piece(first.block, first.input_shape, batch_size,
                                     rates[first.name] if gated else 1.0, execution, piece.indices))
            continue
        kind = "static" if piece.anchor else "packed layers" if packed else "layers"
        parts = [([w.at(batch_size) for w in walk.segments[i].ops], [w.fusable for w in walk.segments[i].ops])
                 for i in piece.indices]
        plans.append(PiecePlan(kind, 1.0, False, piece.indices, parts))
    return plans


def price_block(block: DynamicBlock, input_shape: tuple[int, int, int], hw: Hardware, batch_size: int,
                rate: float, execution: str = "sparse", method: str = "auto") -> tuple[Cost, list[Op]]:
    """Predicted cost of one dynamic block on a batch of ``(C, H, W)`` inputs with every
    gate at activation ``rate`` (its execution plan priced operator by operator, plus the
    block's fixed host-side cost, times the learned correction if ``method`` uses it), and
    the plan."""
    plan = block_piece(block, input_shape, batch_size, rate, execution, [0])
    cost = plan.segment_costs(hw)[0]
    correction = resolve_method(method, hw)
    if correction is not None:
        row = piece_features(plan.ops, cost, plan.kind, batch_size, plan.rate, block_type(block))
        cost = cost * correction.factors([row])[0]
    return cost * hw.time_scale, plan.ops


def predict_walk(walk: NetworkWalk, hardware: str | Hardware = "v100", batch_size: int = 128, rates: Rates = None,
                 method: str = "auto", execution: str = "sparse") -> LatencyReport:
    """Price a walked network (see :func:`predict_latency`)."""
    hw = load_hardware(hardware)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    if execution not in EXECUTIONS:
        raise ValueError(f"execution {execution!r} is unknown; allowed: {', '.join(EXECUTIONS)}")
    correction = resolve_method(method, hw)
    plans = piece_plans(walk, batch_size, resolve_rates(rates, [s.name for s in walk.blocks]), execution)
    costs = [plan.segment_costs(hw) for plan in plans]
    factors = [1.0] * len(plans)
    if correction is not None:
        factors = correction.factors([piece_features(plan.ops, total_cost(cost), plan.kind, batch_size, plan.rate,
                                                     walk.block_type) for plan, cost in zip(plans, costs)])
    parts = []
    for plan, segment_costs, factor in zip(plans, costs, factors):
        for index, cost in zip(plan.indices, segment_costs):
            cost = cost * (factor * hw.time_scale)
            kind, rate = (plan.kind, plan.rate) if plan.dynamic and plan.kind != "static" else ("static", None)
            parts.append(BlockLatency(walk.segments[index].name, kind, rate, cost.compute_ms, cost.memory_ms,
                                      cost.overhead_ms))
    return LatencyReport(walk.model_name, hw.name, hw.title, hw.kind, hw.calibrated, batch_size, walk.input_size,
                         "analytic" if correction is None else "learned", execution, parts)


def predict_latency(model: nn.Module | NetworkWalk, hardware: str | Hardware = "v100", batch_size: int = 128,
                    input_size: int | None = None, rates: Rates = None, method: str = "auto",
                    execution: str = "sparse") -> LatencyReport:
    """Predicted latency of one batch of ``model`` on ``hardware``.

    ``model`` is a torchvision or laudnet network, for ``input_size`` inputs (default 224)
    (or a :class:`NetworkWalk` of one, to price it several times without walking it again).
    ``rates`` are the activation rates of the dynamic blocks: ``None`` (all 1), a number for
    every block, ``laudnet.stats(model)`` of a real forward pass, or a dict per block name.
    ``execution="static"`` prices the dynamic blocks without their gates.
    ``method="learned"`` multiplies the analytic cost of each piece of the network (each
    block, each run of static layers) by the learned correction trained on the network pieces
    that calibration measured (:mod:`laudnet.latency.learned`; a calibrated ``local``
    profile); ``"analytic"`` leaves it out; ``"auto"`` (default) uses it when the profile has
    it. ``report.total_ms`` is the latency of one batch; ``report.blocks`` the breakdown.
    """
    if isinstance(model, NetworkWalk):
        walk = model
        if input_size is not None and input_size != walk.input_size:
            raise ValueError(f"the walk was recorded at input size {walk.input_size}, not {input_size}")
    else:
        walk = walk_network(model, 224 if input_size is None else input_size)
    return predict_walk(walk, hardware, batch_size, rates, method, execution)


__all__ = ["BlockLatency", "LatencyReport", "NetworkWalk", "predict_latency", "predict_walk", "price_block",
           "resolve_rates", "walk_network"]
