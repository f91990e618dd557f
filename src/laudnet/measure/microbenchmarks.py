"""The micro-benchmarks of calibration (:mod:`laudnet.measure.calibrate`): the kernels the
sparse engine runs, each described by the plan operator (:class:`laudnet.sparse.plan.Op`)
that stands for it in execution plans, and tiny blocks for the fixed Python cost of a block.

The kernels are ``torch.addmm`` GEMMs on pixel rows, ``F.conv2d`` direct convolutions,
:func:`laudnet.sparse.gather_taps`, the residual epilogue of a block, channel slicing of
packed weights, the maskers and the small index operators. GEMM and convolution weights
rotate through copies so that, as in a network, they come from memory rather than the
caches. :func:`measure` times every case with :func:`laudnet.measure.timing.time_call`.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Iterator

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from ..blocks.decisions import FixedDecisions
from ..blocks.resnet import DynamicBottleneck
from ..config import StageConfig
from ..latency.samples import Sample
from ..sparse.pixels import gather_taps, neighbor_table, receptive_mask
from ..sparse.plan import Op, conv_op, gemm_op, memory_op
from .resnet import projection
from .timing import time_call

FAMILIES = ("elementwise", "gather", "epilogue", "slice", "masker", "index", "gemm", "conv", "block")
BLOCK_PARADIGMS = ("none", "spatial", "channel", "layer")


def _log_grid(low: float, high: float, n: int) -> list[float]:
    return list(np.exp(np.linspace(math.log(low), math.log(high), n)))


def _rows(rng: np.random.Generator, total: int, count: int) -> torch.Tensor:
    """``count`` distinct sorted row indices of ``total`` (as ``nonzero`` returns them)."""
    return torch.from_numpy(np.sort(rng.choice(total, size=min(count, total), replace=False)))


RESNET_MAPS = ((64, 56), (256, 56), (128, 28), (512, 28), (256, 14), (1024, 14), (512, 7), (2048, 7))
"""(channels, side) of the feature maps of ResNet stages, where the engine's maps live."""


def _channels(rng: np.random.Generator) -> int:
    """A channel count as the engine sees them: a ResNet width, or a sliced one (any integer)."""
    if rng.random() < 0.7:
        return int(rng.choice([64, 128, 256, 512, 1024, 2048]))
    return int(rng.integers(8, 513))


def elementwise_cases(rng: np.random.Generator, n: int) -> Iterator[tuple[Op, Callable]]:
    sizes = _log_grid(2 ** 10, 2 ** 21, n // 2) + _log_grid(2 ** 21, 2 ** 25, n - n // 2)
    for elements in sizes:
        channels = _channels(rng)
        x = torch.randn(max(1, int(elements) // channels), channels)
        yield memory_op("elementwise", "relu", x.numel(), shape=tuple(x.shape)), (lambda x=x: F.relu(x))


def gather_cases(rng: np.random.Generator, n: int) -> Iterator[tuple[Op, Callable]]:
    for elements in _log_grid(2 ** 12, 2 ** 24, n):
        channels = _channels(rng)
        kernel, stride = [(3, 1), (3, 1), (3, 2), (1, 1), (1, 2)][int(rng.integers(5))]
        side = int(rng.choice([7, 14, 28, 56]))
        out_side = (side - 1) // stride + 1
        batch = int(rng.choice([1, 2, 4, 8]))
        m = max(1, min(batch * out_side ** 2, int(elements) // (kernel * kernel * channels)))
        table = neighbor_table(batch, (side, side), (out_side, out_side), kernel, stride, kernel // 2, 1,
                               torch.device("cpu"))
        taps = table.index_select(0, _rows(rng, table.shape[0], m))
        source = torch.randn(batch * side * side, channels)
        yield (memory_op("gather", f"gather{kernel}x{kernel}", taps.numel() * channels,
                         shape=(taps.shape[0], taps.shape[1], channels)), lambda s=source, t=taps: gather_taps(s, t))


def _bottleneck(channels: int, paradigm: str = "none", granularity: int | None = None, stride: int = 1,
                downsample: bool = False) -> DynamicBottleneck:
    width = max(1, channels // 4)
    shortcut = projection(channels, width * 4, stride) if downsample else None
    block = DynamicBottleneck(channels, width, stride, shortcut, config=StageConfig(paradigm, granularity)).eval()
    block.execution = "sparse"
    return block


def epilogue_cases(rng: np.random.Generator, n: int) -> Iterator[tuple[Op, Callable]]:
    for _ in range(n):
        channels, side = RESNET_MAPS[int(rng.integers(len(RESNET_MAPS)))]
        batch = int(rng.choice([1, 2, 4, 8]))
        block = _bottleneck(channels)
        identity = torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last)
        total = batch * side * side
        rows = None if rng.random() < 0.3 else _rows(rng, total, max(1, int(total * rng.uniform(0.05, 0.95))))
        h = torch.randn(total if rows is None else rows.numel(), channels)
        op = block.branch.plan_epilogue(batch, [(side, side)], None if rows is None else rows.numel())[0]
        yield op, (lambda b=block, i=identity, h=h, r=rows: b.branch.add_rows(i, i, h, r))


def slice_cases(rng: np.random.Generator, n: int) -> Iterator[tuple[Op, Callable]]:
    for _ in range(n):
        channels = int(rng.choice([256, 512, 1024, 2048]))
        granularity = int(rng.choice([1, 2, 4, 8, 16]))
        block = _bottleneck(channels, "channel", granularity)
        packed = block.branch.packed()
        rate = float(rng.uniform(0.1, 0.9))
        op = next(o for o in block.plan((channels, 7, 7), 1, rate) if o.kind == "slice")
        keep = int(rate * block.channel_masker.outputs + 0.5)
        kept = torch.sort(torch.from_numpy(rng.choice(block.channel_masker.outputs, keep, replace=False))).values
        chans = (kept[:, None] * granularity + torch.arange(granularity)).reshape(-1)
        chans = chans[chans < block.inner_channels]
        last = len(packed) - 1

        def run(p=packed, c=chans, last=last):
            return [conv.sliced(c if i > 0 else None, c if i < last else None) for i, conv in enumerate(p)]

        yield op, run


def masker_cases(rng: np.random.Generator, n: int) -> Iterator[tuple[Op, Callable]]:
    for _ in range(n):
        channels, side = RESNET_MAPS[int(rng.integers(len(RESNET_MAPS)))]
        batch = int(rng.choice([1, 2, 4, 8]))
        paradigm, granularity = [("spatial", int(rng.choice([1, 2, 4, 7]))), ("channel", 4), ("layer", None)][
            int(rng.integers(3))]
        block = _bottleneck(channels, paradigm, granularity)
        masker = block.maskers()[0]
        x = torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last)
        op = next(o for o in block.plan((channels, side, side), batch, 1.0) if o.kind == "masker")
        yield op, (lambda m=masker, x=x: m(x))


def index_cases(rng: np.random.Generator, n: int) -> Iterator[tuple[Op, Callable]]:
    """The small operators of sparse spatial execution, on mask-sized tensors."""
    for _ in range(n):
        batch, side = int(rng.choice([1, 2, 4, 8])), int(rng.choice([7, 14, 28, 56]))
        mask = (torch.rand(batch, side, side) < 0.5).float()
        rows = mask.reshape(-1).nonzero().squeeze(1)
        index = torch.full((mask.numel() + 1,), rows.numel(), dtype=torch.long)
        cases = {
            "nonzero": lambda: mask.reshape(-1).nonzero().squeeze(1),
            "receptive_mask": lambda: receptive_mask(mask, 3, 1, 1, (side, side)),
            "index_put": lambda: index.__setitem__(rows, torch.arange(rows.numel())),
            "full": lambda: torch.full((mask.numel() + 1,), rows.numel(), dtype=torch.long),
            "clamp": lambda: rows.clamp(max=mask.numel() - 1),
            "compare": lambda: rows >= mask.numel() // 2,
            "sum": lambda: float(mask.sum()),
        }
        name = list(cases)[int(rng.integers(len(cases)))]
        yield Op("index", name), cases[name]


COLD_BYTES = 64 * 2 ** 20


def _cold(make: Callable[[], torch.Tensor], nbytes: float) -> Iterator[torch.Tensor]:
    """Copies of a weight tensor to cycle through, enough (up to 8) that each call finds its
    weights out of the caches, as a layer does in a network."""
    copies = [make() for _ in range(max(1, min(8, math.ceil(COLD_BYTES / max(nbytes, 1)))))]
    return itertools.cycle(copies)


def gemm_cases(rng: np.random.Generator, n: int) -> Iterator[tuple[Op, Callable]]:
    produced = 0
    while produced < n:
        m = int(math.exp(rng.uniform(math.log(4), math.log(50_000))))
        k = _channels(rng) * int(rng.choice([1, 1, 9]))
        cols = _channels(rng)
        if m * k * cols > 1.2e9 or m * k * 4 > 80e6 or k * cols * 4 > 16e6:
            continue
        produced += 1
        a, bias = torch.randn(m, k), torch.randn(cols)
        weights = _cold(lambda: torch.randn(k, cols), k * cols * 4)
        yield gemm_op("addmm", m, k, cols), (lambda a=a, w=weights, c=bias: torch.addmm(c, a, next(w)))


def conv_cases(rng: np.random.Generator, n: int) -> Iterator[tuple[Op, Callable]]:
    produced = 0
    while produced < n:
        kernel = int(rng.choice([1, 1, 3, 3, 3, 7]))
        stride = int(rng.choice([1, 2]))
        c_in = 3 if kernel == 7 else _channels(rng)
        c_out = _channels(rng)
        side = int(rng.choice([7, 14, 28, 56] if kernel < 7 else [112, 224]))
        batch = int(rng.choice([1, 2, 4, 8]))
        out_side = (side + 2 * (kernel // 2) - kernel) // stride + 1
        macs = batch * out_side ** 2 * c_out * c_in * kernel ** 2
        if macs > 1.2e9 or macs < 1e5 or c_out * c_in * kernel ** 2 * 4 > 16e6:
            continue
        produced += 1
        x = torch.randn(batch, c_in, side, side).contiguous(memory_format=torch.channels_last)
        bias = torch.randn(c_out)
        weights = _cold(lambda: torch.randn(c_out, c_in, kernel, kernel), c_out * c_in * kernel ** 2 * 4)
        op = conv_op("conv2d", batch, c_in, c_out, kernel, stride, 1, out_side, out_side, side, side)
        yield op, (lambda x=x, w=weights, b=bias, s=stride, p=kernel // 2: F.conv2d(x, next(w), b, s, p))


def block_cases(rng: np.random.Generator, n: int) -> Iterator[tuple[list[Op], Callable, dict]]:
    """Tiny blocks (8 or 16 channels, 4×4 or 6×6 maps): their time is the fixed cost of the
    block's Python code around its operators."""
    for i in range(n):
        paradigm = BLOCK_PARADIGMS[i % len(BLOCK_PARADIGMS)]
        channels, side = int(rng.choice([8, 16])), int(rng.choice([4, 6]))
        stride, batch = int(rng.choice([1, 2])), int(rng.choice([1, 2]))
        granularity = {"spatial": int(rng.choice([1, 2])), "channel": 1}.get(paradigm)
        block = _bottleneck(channels, paradigm, granularity, stride, downsample=stride > 1 or rng.random() < 0.5)
        rate = 0.5 if paradigm != "layer" else 1.0
        block.fixed = FixedDecisions(rate, seed=i)
        x = torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last)
        ops = block.plan((channels, side, side), batch, rate)
        yield ops, (lambda b=block, x=x: b(x)), dict(paradigm=paradigm)


SUITE = {"elementwise": (elementwise_cases, 24), "gather": (gather_cases, 40), "epilogue": (epilogue_cases, 30),
         "slice": (slice_cases, 16), "masker": (masker_cases, 24), "index": (index_cases, 28),
         "gemm": (gemm_cases, 150), "conv": (conv_cases, 80), "block": (block_cases, 24)}


@torch.no_grad()
def measure(families: tuple[str, ...] = FAMILIES, scale: float = 1.0, repeats: int = 7, seed: int = 0,
            progress: bool = True, statistic: str = "median") -> list[Sample]:
    """Run the micro-benchmarks; ``scale`` multiplies the number of cases of each family."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    plan = [(family, max(2, int(SUITE[family][1] * scale))) for family in families]
    samples: list[Sample] = []
    with tqdm(total=sum(n for _, n in plan), desc="calibrating", disable=not progress, unit="case") as bar:
        for family, count in plan:
            for case in SUITE[family][0](rng, count):
                ops, fn, meta = (case if family == "block" else ([case[0]], case[1], {}))
                samples.append(Sample(family, ops, time_call(fn, repeats, statistic=statistic), meta))
                bar.update()
    return samples
