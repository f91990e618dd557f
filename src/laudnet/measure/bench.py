"""Sparse against dense wall-clock benchmarks of blocks and whole networks.

Every measurement interleaves the dense baseline (torchvision's block or network, same
weights) with the sparse dynamic one in one process and reports the median of the
per-round time ratios with its interquartile range. A round runs the sparse candidate on
``decisions`` different random decision sets of the target activation rate (and the dense
one as often), so that one lucky mask does not decide the figure; the *realized* rate of
those decisions is reported and used for the efficiency ``speedup × rate`` (1.0 is ideal).
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck
from tqdm import tqdm

from ..blocks.decisions import FixedDecisions
from ..blocks.resnet import DynamicBottleneck
from ..config import StageConfig
from ..dynamic import dynamic_blocks, set_decisions, set_execution, stats
from ..machine import cores, cpu_name
from ..models import convert
from ..outputs import claim
from .resnet import RESNET50_BLOCKS, downsample
from .runtimes import dense_baselines, runtime_versions
from .timing import interleaved, ratio

RATES = (0.25, 0.5, 0.75, 1.0)


@dataclass
class BenchRow:
    """One sparse-against-dense measurement."""

    kind: str            # "block" or "network"
    model: str           # e.g. "resnet50" or "resnet50.stage2"
    resolution: int      # output side of the block (input side for networks)
    stride: int
    paradigm: str
    granularity: str
    target_rate: float
    rate: float          # realized mean activation rate of the measured decisions
    batch: int
    dense_ms: float
    sparse_ms: float
    speedup: float       # median of per-round dense/sparse ratios (dense: torchvision eager)
    speedup_q1: float
    speedup_q3: float
    efficiency: float    # speedup × rate
    # networks only: the static network run as users deploy it (nan where not measured)
    eager_channels_last_ms: float = math.nan
    onnxruntime_ms: float = math.nan
    openvino_ms: float = math.nan
    best_static: str = ""          # the fastest static baseline of the round medians
    speedup_vs_best: float = math.nan  # median of per-round best-static/sparse ratios
    speedup_vs_best_q1: float = math.nan
    speedup_vs_best_q3: float = math.nan

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def spatial_granularities(side: int, quick: bool = False) -> list[int]:
    """Patch sides worth measuring on a ``side × side`` map: at least a 2×2 grid."""
    options = (2, 4, 8) if quick else (1, 2, 4, 7, 8, 14, 28)
    return [s for s in options if math.ceil(side / s) >= 2]


def channel_granularities(quick: bool = False) -> list[int]:
    return [4] if quick else [1, 4, 16]


def _measure(dense: dict[str, Callable[[], object]], sparse_runs: list[Callable[[], object]],
             realized_rate: Callable[[], float], repeats: int, gap: float = 0.0) -> tuple:
    """Interleave ``len(sparse_runs)`` calls of each dense baseline with one pass over
    ``sparse_runs``; then run each sparse call once more, untimed, to read the realized
    activation rate. Returns per-call median times (``{name: ms}``, sparse included), the
    per-round ratios of each baseline over sparse, and the mean realized rate."""
    n = len(sparse_runs)

    def sparse_round() -> None:
        for run in sparse_runs:
            run()

    def dense_round(call: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(n):
                call()
        return run

    candidates = {name: dense_round(call) for name, call in dense.items()}
    candidates["sparse"] = sparse_round
    with torch.no_grad():
        timings = interleaved(candidates, repeats=repeats, warmup=1, gap=gap)
        rates = []
        for run in sparse_runs:
            run()
            rates.append(realized_rate())
    times = {name: t.median_ms / n for name, t in timings.items()}
    ratios = {name: ratio(timings, name, "sparse") for name in dense}
    return times, ratios, sum(rates) / n


def bench_block(stage: int, stride: int, in_channels: int, width: int, side: int, paradigm: str,
                granularity: int | None, rate: float, batch: int, repeats: int = 7,
                decisions: int = 4) -> BenchRow:
    """One ResNet-50 bottleneck: torchvision's against the dynamic one in sparse execution."""
    torch.manual_seed(0)
    dense = Bottleneck(in_channels, width, stride, downsample(in_channels, width * 4, stride)).eval()
    block = DynamicBottleneck(in_channels, width, stride, downsample(in_channels, width * 4, stride),
                              config=StageConfig(paradigm, granularity)).eval()
    block.load_state_dict(dense.state_dict(), strict=False)
    block.execution = "sparse"
    x = torch.randn(batch, in_channels, side, side)
    x_sparse = x.contiguous(memory_format=torch.channels_last)  # the layout inside a sparse network
    fixed = [FixedDecisions(rate, seed) for seed in range(decisions)]

    def run(f: FixedDecisions) -> Callable[[], object]:
        def call() -> object:
            block.fixed = f
            return block(x_sparse)
        return call

    times, ratios, realized = _measure({"eager": lambda: dense(x)}, [run(f) for f in fixed],
                                       lambda: float(block.last.rate.mean()), repeats)
    r = ratios["eager"]
    return BenchRow("block", f"resnet50.stage{stage}", math.ceil(side / stride), stride, paradigm,
                    str(granularity or "-"), rate, realized, batch, times["eager"], times["sparse"], r.median,
                    *r.spread, r.median * realized)


def bench_network(arch: str, paradigm: str, granularity: str | None, rate: float, batch: int,
                  repeats: int = 5, decisions: int = 2, input_size: int = 224, runtimes: bool = True) -> BenchRow:
    """A whole torchvision network against its dynamic copy with fixed decisions of
    ``rate`` in every block; the static network runs in torch eager (NCHW and
    channels-last) and, with ``runtimes``, in ONNX Runtime and OpenVINO where installed
    (:mod:`laudnet.measure.runtimes`)."""
    reference, x, dense = _static_network(arch, batch, input_size, runtimes)
    model = convert(reference, paradigm=paradigm, granularity=granularity).eval()
    set_execution(model, "sparse")
    blocks = [block for _, block in dynamic_blocks(model)]
    decision_sets = []
    for seed in range(decisions):
        set_decisions(model, rate=rate, seed=seed)
        decision_sets.append([block.fixed for block in blocks])

    def run(decision_set: list[FixedDecisions]) -> Callable[[], object]:
        def call() -> object:
            for block, fixed in zip(blocks, decision_set):
                block.fixed = fixed
            return model(x)
        return call

    times, ratios, realized = _measure(dense, [run(d) for d in decision_sets], lambda: _network_rate(model),
                                       repeats, gap=0.02)
    best = min(dense, key=lambda name: times[name])
    r, b = ratios["eager"], ratios[best]
    return BenchRow("network", arch, input_size, 1, paradigm, granularity or "default", rate, realized, batch,
                    times["eager"], times["sparse"], r.median, *r.spread, r.median * realized,
                    times["eager_channels_last"], times.get("onnxruntime", math.nan),
                    times.get("openvino", math.nan), best, b.median, *b.spread)


@functools.lru_cache(maxsize=2)
def _static_network(arch: str, batch: int, input_size: int, runtimes: bool) -> tuple:
    """A torchvision network with seeded random weights, an input batch and the calls of its
    static baselines; cached, so that a suite exports and compiles each network once."""
    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)().eval()
    x = torch.randn(batch, 3, input_size, input_size)
    with torch.no_grad():
        return reference, x, dense_baselines(reference, x, runtimes)


def _network_rate(model: nn.Module) -> float:
    """Activation rate of the network: dynamic MACs of the blocks over their static MACs."""
    s = stats(model)
    return sum(float(b.rate.mean()) * b.static_macs for b in s.blocks) / sum(b.static_macs for b in s.blocks)


def block_suite(quick: bool = False, batches: Iterable[int] = (1, 8)) -> list[dict]:
    """The block configurations of the benchmark, as keyword arguments of :func:`bench_block`."""
    configs = []
    for stage, stride, cin, width, side in RESNET50_BLOCKS:
        if quick and stride != 1:
            continue
        out_side = math.ceil(side / stride)
        specs = ([("spatial", s) for s in spatial_granularities(out_side, quick)]
                 + [("channel", g) for g in channel_granularities(quick)] + [("layer", None)])
        for (paradigm, granularity), rate, batch in itertools.product(specs, RATES, batches):
            configs.append(dict(stage=stage, stride=stride, in_channels=cin, width=width, side=side,
                                paradigm=paradigm, granularity=granularity, rate=rate, batch=batch))
    return configs


NETWORK_SPECS = {
    "resnet": [("spatial", "4-4-2-1"), ("spatial", "8-4-2-2"), ("spatial", "8-8-7-7"), ("channel", "4"),
               ("channel", "8"), ("channel", "16"), ("layer", None)],
    # the models' default granularities (see laudnet.models.regnet / .mobilenet)
    "other": [("spatial", None), ("channel", None), ("layer", None)],
}


NETWORK_ARCHS = ("resnet50", "resnet101", "regnet_y_400mf", "mobilenet_v2")


def network_suite(quick: bool = False, batches: Iterable[int] = (1, 8), archs: Iterable[str] | None = None,
                  rates: Iterable[float] = RATES) -> list[dict]:
    """ResNet-50 (quick) or ResNet-50/101, RegNetY-400MF and MobileNetV2 (or ``archs``), as
    keyword arguments of :func:`bench_network`."""
    archs = tuple(archs) if archs else (("resnet50",) if quick else NETWORK_ARCHS)
    unknown = [a for a in archs if a not in NETWORK_ARCHS]
    if unknown:
        raise ValueError(f"benchmark network {unknown[0]!r} is unknown; allowed: {', '.join(NETWORK_ARCHS)}")
    rates = tuple(rates)
    bad = [r for r in rates if not 0.0 <= r <= 1.0]
    if bad:
        raise ValueError(f"activation rate {bad[0]} is out of range; allowed: 0 to 1")
    return [dict(arch=arch, paradigm=p, granularity=g, rate=rate, batch=batch)
            for arch in archs
            for (p, g), rate, batch in itertools.product(NETWORK_SPECS["resnet" if arch.startswith("resnet") else "other"],
                                                         rates, batches)]


def machine_description() -> str:
    """CPU model, core count and library versions, for the tables."""
    return (f"{cpu_name()}, {cores()} cores, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, torchvision {torchvision.__version__}, {runtime_versions()}")


def write_results(rows: list[BenchRow], out_dir: Path, name: str) -> dict[str, Path]:
    """Write ``rows`` as CSV, JSON and a markdown table; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("csv", "json", "md")}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=BenchRow.columns())
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    paths["json"].write_text(json.dumps({"machine": machine_description(), "rows": [asdict(r) for r in rows]},
                                        indent=1))
    paths["md"].write_text(markdown_table(rows))
    return paths


def markdown_table(rows: list[BenchRow]) -> str:
    if rows and all(r.kind == "network" for r in rows):
        return _network_table(rows)
    header = ("| model | res | stride | paradigm | gran | batch | rate | dense ms | sparse ms "
              "| speedup (IQR) | efficiency |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r.model} | {r.resolution} | {r.stride} | {r.paradigm} | {r.granularity} | {r.batch} "
             f"| {r.rate:.2f} | {r.dense_ms:.2f} | {r.sparse_ms:.2f} "
             f"| {r.speedup:.2f}x ({r.speedup_q1:.2f}-{r.speedup_q3:.2f}) | {r.efficiency:.2f} |"
             for r in rows]
    return f"Machine: {machine_description()}\n\n" + header + "\n".join(lines) + "\n"


def _network_table(rows: list[BenchRow]) -> str:
    """Networks: every static baseline's time, the speedup over torch eager and over the
    fastest static baseline (each the median of per-round ratios, with the IQR)."""
    header = ("| model | paradigm | gran | batch | rate | eager ms | eager CL ms | ORT ms | OpenVINO ms | sparse ms "
              "| vs eager (IQR) | vs fastest static (IQR) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")

    def ms(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.1f}"

    lines = [f"| {r.model} | {r.paradigm} | {r.granularity} | {r.batch} | {r.rate:.2f} | {ms(r.dense_ms)} "
             f"| {ms(r.eager_channels_last_ms)} | {ms(r.onnxruntime_ms)} | {ms(r.openvino_ms)} | {ms(r.sparse_ms)} "
             f"| {r.speedup:.2f}x ({r.speedup_q1:.2f}-{r.speedup_q3:.2f}) "
             f"| {r.speedup_vs_best:.2f}x ({r.speedup_vs_best_q1:.2f}-{r.speedup_vs_best_q3:.2f}) vs {r.best_static} |"
             for r in rows]
    return f"Machine: {machine_description()}\n\n" + header + "\n".join(lines) + "\n"


def best_per_stage(rows: list[BenchRow]) -> list[BenchRow]:
    """Per block shape, paradigm, rate and batch, the row of the best granularity."""
    best: dict[tuple, BenchRow] = {}
    for r in rows:
        key = (r.kind, r.model, r.stride, r.paradigm, r.target_rate, r.batch)
        if key not in best or r.speedup > best[key].speedup:
            best[key] = r
    return list(best.values())


def run_suite(out_dir: Path, suite: str = "all", quick: bool = False, batches: Iterable[int] = (1, 8),
              progress: bool = True, archs: Iterable[str] | None = None,
              rates: Iterable[float] = RATES) -> dict[str, Path]:
    """Run the block and/or network benchmarks and write their tables into ``out_dir``:
    ``blocks.*`` (every configuration), ``blocks_best.*`` (best granularity per stage),
    ``networks.*``. ``out_dir`` is claimed (:func:`laudnet.outputs.claim`) before the work."""
    if suite not in ("all", "blocks", "networks"):
        raise ValueError(f"benchmark suite {suite!r} is unknown; allowed: all, blocks, networks")
    batches = tuple(batches)
    if suite in ("all", "networks"):
        network_suite(quick, batches, archs, rates)  # bad names and rates fail before any work
    with claim(out_dir):
        return _run_suite(out_dir, suite, quick, batches, progress, archs, rates)


def _run_suite(out_dir: Path, suite: str, quick: bool, batches: tuple[int, ...], progress: bool,
               archs: Iterable[str] | None, rates: Iterable[float]) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    if suite in ("all", "blocks"):
        configs = block_suite(quick, batches)
        rows = [bench_block(**c, repeats=5 if quick else 7)
                for c in tqdm(configs, desc="blocks", disable=not progress)]
        paths.update({f"blocks.{k}": v for k, v in write_results(rows, out_dir, "blocks").items()})
        paths.update({f"blocks_best.{k}": v for k, v in write_results(best_per_stage(rows), out_dir,
                                                                          "blocks_best").items()})
    if suite in ("all", "networks"):
        configs = network_suite(quick, batches, archs, rates)
        rows = [bench_network(**c, repeats=3 if quick else 5)
                for c in tqdm(configs, desc="networks", disable=not progress)]
        paths.update({f"networks.{k}": v for k, v in write_results(rows, out_dir, "networks").items()})
    return paths


def _peak_rss_worker(arch: str, paradigm: str, granularity: str | None, rate: float, batch: int,
                     sparse: bool, queue) -> None:
    import resource

    torch.set_grad_enabled(False)
    reference = getattr(torchvision.models, arch)().eval()
    model = convert(reference, paradigm=paradigm, granularity=granularity).eval()
    set_execution(model, "sparse")
    set_decisions(model, rate=rate)
    x = torch.randn(batch, 3, 224, 224)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        (model if sparse else reference)(x)
    queue.put((before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def peak_memory(arch: str, paradigm: str, granularity: str | None, rate: float, batch: int) -> dict[str, float]:
    """Peak resident memory (MiB) of dense and of sparse inference, each in a fresh process
    holding both models (so that their baselines are equal); also the growth of the peak
    caused by the forward passes alone."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    result = {}
    for name, sparse in (("dense", False), ("sparse", True)):
        queue = context.Queue()
        process = context.Process(target=_peak_rss_worker,
                                  args=(arch, paradigm, granularity, rate, batch, sparse, queue))
        process.start()
        before, after = queue.get()
        process.join()
        result[f"{name}_peak_mib"] = after / 1024
        result[f"{name}_forward_mib"] = (after - before) / 1024
    return result
