"""Validation of the predictor against measurements of the real sparse engine on this CPU.

``validate`` draws N dynamic-block configurations (block family and stage shape of
ResNet-18/50, paradigm, granularity S or G, activation rate r, batch) with a seeded
generator, times each block in sparse execution (median of repeats, after a warm-up, over
several random decision sets of rate r), predicts it from its execution plan with the
analytic model and, when the profile has calibration measurements, the learned one, and
reports RMSPE, the share within ±5 % and ±10 %, Spearman's rank correlation and a
predicted-against-measured plot. The configurations are real network blocks, which
calibration never measures (it times kernels and tiny blocks of 8–16 channels), so they
are held out.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..blocks import Decision, DynamicBlock, FixedDecisions
from ..blocks.resnet import DynamicBasicBlock, DynamicBottleneck
from ..config import StageConfig
from ..latency.hardware import Hardware, load_hardware
from ..latency.learned import LearnedCorrection
from ..latency.predictor import price_block
from .bench import machine_description, spatial_granularities
from .resnet import RESNET18_BLOCKS, RESNET50_BLOCKS, downsample
from .timing import stable_allocator, time_call

VALIDATION_PARADIGMS = ("spatial", "spatial", "channel", "layer", "layer+spatial", "layer+channel", "none")
CHANNEL_GRANULARITIES = (1, 2, 4, 8, 16, 32)
BATCHES = (1, 2, 4, 8)


@dataclass(frozen=True)
class BlockConfig:
    """One validation configuration: a ResNet block shape with a paradigm, a granularity,
    an activation rate and a batch."""

    family: str            # "bottleneck" (ResNet-50) or "basic" (ResNet-18)
    stage: int
    stride: int
    in_channels: int
    width: int
    side: int              # input side
    paradigm: str
    granularity: int | None
    rate: float
    batch: int

    @property
    def label(self) -> str:
        gran = "" if self.granularity is None else f":{self.granularity}"
        return (f"{self.family}{self.stage}{'s2' if self.stride > 1 else ''} {self.paradigm}{gran} "
                f"r={self.rate:.2f} b={self.batch}")


def sample_configs(n: int, seed: int = 0, paradigms: tuple[str, ...] | None = None) -> list[BlockConfig]:
    """``n`` configurations drawn with a seeded generator (the same arguments always give
    the same list), optionally of some ``paradigms`` only. Layer-gated rates are multiples
    of 1/batch, so that exactly ``r × batch`` samples run (see :class:`ExactDecisions`)."""
    if n < 1:
        raise ValueError(f"the number of configurations must be positive, got {n}")
    choices = VALIDATION_PARADIGMS if paradigms is None else tuple(paradigms)
    unknown = sorted(set(choices) - set(VALIDATION_PARADIGMS))
    if unknown or not choices:
        raise ValueError(f"paradigms {unknown or list(choices)} cannot be validated; allowed: "
                         f"{', '.join(dict.fromkeys(VALIDATION_PARADIGMS))}")
    rng = np.random.default_rng(seed)
    configs = []
    for _ in range(n):
        family = "bottleneck" if rng.random() < 0.7 else "basic"
        stage, stride, cin, width, side = (RESNET50_BLOCKS if family == "bottleneck" else RESNET18_BLOCKS)[
            int(rng.integers(7))]
        paradigm = choices[int(rng.integers(len(choices)))]
        batch = int(rng.choice(BATCHES))
        out_side = math.ceil(side / stride)
        granularity = None
        if paradigm.endswith("spatial"):
            granularity = int(rng.choice(spatial_granularities(out_side)))
        elif paradigm.endswith("channel"):
            granularity = int(rng.choice([g for g in CHANNEL_GRANULARITIES if g <= width]))
        rate = float(rng.choice(np.arange(1, 11) / 10))
        if paradigm.startswith("layer"):
            rate = max(1, round(rate * batch)) / batch
        configs.append(BlockConfig(family, stage, stride, cin, width, side, paradigm, granularity, rate, batch))
    return configs


def build_block(config: BlockConfig, seed: int = 0) -> DynamicBlock:
    """The block of ``config`` with seeded random weights and batch-norm statistics, in
    sparse execution."""
    torch.manual_seed(seed)
    kind = DynamicBottleneck if config.family == "bottleneck" else DynamicBasicBlock
    out = config.width * kind.expansion
    block = kind(config.in_channels, config.width, config.stride, downsample(config.in_channels, out, config.stride),
                 config=StageConfig(config.paradigm, config.granularity))
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    block.eval()
    block.execution = "sparse"
    return block


class ExactDecisions(FixedDecisions):
    """Fixed decisions whose layer gate is on for exactly ``round(r × batch)`` samples
    (random ones; ``r`` its share of ``rate``), so that a measurement matches the plan of
    rate ``rate``."""

    def make(self, block: DynamicBlock, x: Tensor) -> Decision:
        decision = super().make(block, x)
        if decision.layer is not None:
            generator = torch.Generator().manual_seed(self.seed + 7919)
            layer_rate, _ = block.config.gate_rates(self.rate)
            decision.layer = self.exact(layer_rate, 1, x.shape[0], generator).view(-1).to(x.device, x.dtype)
        return decision


@torch.no_grad()
def measure_block(config: BlockConfig, repeats: int = 7, decisions: int = 3, statistic: str = "median") -> float:
    """Milliseconds of one sparse forward of the block, averaged over ``decisions`` random
    decision sets of the configuration's rate."""
    block = build_block(config)
    x = torch.randn(config.batch, config.in_channels, config.side, config.side)
    x = x.contiguous(memory_format=torch.channels_last)
    fixed = [ExactDecisions(config.rate, seed) for seed in range(decisions)]

    def run() -> None:
        for f in fixed:
            block.fixed = f
            block(x)

    return time_call(run, repeats, statistic=statistic) / decisions


def predict_block(config: BlockConfig, hw: Hardware, method: str = "auto") -> float:
    """Predicted milliseconds of the block from its execution plan."""
    cost, _ = price_block(build_block(config), (config.in_channels, config.side, config.side), hw, config.batch,
                          config.rate, method=method)
    return cost.total_ms


def accuracy(predicted: list[float], measured: list[float]) -> dict[str, float]:
    """RMSPE, share within ±5 % and ±10 %, mean absolute percentage error and Spearman's rank
    correlation of predictions against measurements."""
    from scipy.stats import spearmanr

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    if p.shape != m.shape or p.size == 0:
        raise ValueError("predicted and measured must be non-empty and of equal length")
    error = p / m - 1
    return dict(n=int(p.size), rmspe=float(np.sqrt(np.mean(error ** 2))), mape=float(np.mean(np.abs(error))),
                within_5=float(np.mean(np.abs(error) <= 0.05)), within_10=float(np.mean(np.abs(error) <= 0.10)),
                spearman=float(spearmanr(p, m).statistic) if p.size > 1 else float("nan"))


@dataclass
class ValidationResult:
    hardware: str
    machine: str
    threads: int
    statistic: str
    seed: int
    rows: list[dict]
    metrics: dict[str, dict[str, float]]

    def markdown(self) -> str:
        lines = [f"# Latency predictor validation on `{self.hardware}`", "",
                 f"Machine: {self.machine}; {self.threads} threads; {len(self.rows)} held-out block "
                 f"configurations (seed {self.seed}), {self.statistic} of repeats.", "",
                 "| predictor | n | RMSPE | MAPE | within ±5 % | within ±10 % | Spearman |", "|---|---|---|---|---|---|---|"]
        for name, m in self.metrics.items():
            lines.append(f"| {name} | {m['n']} | {m['rmspe']:.1%} | {m['mape']:.1%} | {m['within_5']:.0%} | "
                         f"{m['within_10']:.0%} | {m['spearman']:.3f} |")
        names = list(self.metrics)
        lines += ["", "Per paradigm (median of predicted / measured; far from 1 where the engine runs work its "
                  "execution plan does not list):", "",
                  "| paradigm | n | " + " | ".join(f"{n}: median ratio | {n}: within ±10 %" for n in names) + " |",
                  "|---|---|" + "---|---|" * len(names)]
        for paradigm in dict.fromkeys(r["paradigm"] for r in self.rows):
            rows = [r for r in self.rows if r["paradigm"] == paradigm]
            cells = []
            for n in names:
                ratio = np.array([r[n + "_ms"] / r["measured_ms"] for r in rows])
                cells.append(f"{np.median(ratio):.2f} | {np.mean(np.abs(ratio - 1) <= 0.1):.0%}")
            lines.append(f"| {paradigm} | {len(rows)} | " + " | ".join(cells) + " |")
        lines += ["", "| configuration | measured ms | " + " | ".join(f"{n} ms" for n in names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for row in self.rows:
            lines.append(f"| {row['label']} | {row['measured_ms']:.3f} | "
                         + " | ".join(f"{row[n + '_ms']:.3f}" for n in names) + " |")
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 5))
        measured = [r["measured_ms"] for r in self.rows]
        scatter_against_measured(ax, {name: ([r[name + "_ms"] for r in self.rows], measured, self.metrics[name])
                                      for name in self.metrics})
        ax.set(xlabel="measured ms", ylabel="predicted ms", title=f"Block latency on {self.hardware}")
        fig.tight_layout()
        fig.savefig(path, dpi=130)
        plt.close(fig)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"json": out_dir / "validation.json", "md": out_dir / "validation.md", "png": out_dir / "validation.png"}
        paths["json"].write_text(json.dumps(asdict(self), indent=1) + "\n")
        paths["md"].write_text(self.markdown())
        self.plot(paths["png"])
        return paths


def scatter_against_measured(ax, series: dict[str, tuple[list[float], list[float], dict]]) -> None:
    """Predicted against measured values on log axes with the ±10 % band; ``series`` maps a
    label to ``(predicted, measured, accuracy metrics)``."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    values = [v for predicted, measured, _ in series.values() for v in list(predicted) + list(measured)]
    low, high = min(values) / 1.3, max(values) * 1.3
    line = np.array([low, high])
    ax.fill_between(line, line * 0.9, line * 1.1, color="0.85", label="±10 %")
    ax.plot(line, line, color="0.3", lw=1)
    for (name, (predicted, measured, m)), marker in zip(series.items(), "os^Dv<>"):
        ax.scatter(measured, predicted, s=14, marker=marker, alpha=0.75,
                   label=f"{name}: {m['within_10']:.0%} within ±10 %, ρ={m['spearman']:.3f}")
    ax.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high))
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain if high / low < 20 else NullFormatter())
    ax.legend(fontsize=7, loc="upper left")


def cpu_profile(hardware: str | Hardware) -> Hardware:
    """The profile to validate against: validation measures this CPU, so a CPU profile."""
    hw = load_hardware(hardware)
    if hw.kind != "cpu":
        raise ValueError(f"validation measures this CPU; {hw.name!r} is a {hw.kind.upper()} profile")
    return hw


def validate(n: int = 60, seed: int = 1, hardware: str | Hardware = "local", repeats: int = 7, decisions: int = 3,
             threads: int | None = None, statistic: str = "median", progress: bool = True,
             paradigms: tuple[str, ...] | None = None) -> ValidationResult:
    """Measure ``n`` held-out block configurations (of some ``paradigms`` only if given) and
    compare them with the predictions."""
    configs = sample_configs(n, seed, paradigms)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    stable_allocator()
    hw = cpu_profile(hardware)
    profile_threads = hw.model.get("threads")
    if profile_threads is not None and profile_threads != torch.get_num_threads():
        raise ValueError(f"profile {hw.name!r} was calibrated with {profile_threads} threads but torch uses "
                         f"{torch.get_num_threads()}; pass threads={profile_threads}")
    names = ["analytic"] + (["learned"] if LearnedCorrection.available(hw) else [])
    rows = []
    for config in tqdm(configs, desc="validating", disable=not progress, unit="block"):
        row = dict(asdict(config), label=config.label, measured_ms=measure_block(config, repeats, decisions, statistic))
        row.update({f"{name}_ms": predict_block(config, hw, name) for name in names})
        rows.append(row)
    metrics = {name: accuracy([r[name + "_ms"] for r in rows], [r["measured_ms"] for r in rows]) for name in names}
    return ValidationResult(hw.name, machine_description(), torch.get_num_threads(), statistic, seed, rows, metrics)


__all__ = ["BlockConfig", "ExactDecisions", "ValidationResult", "accuracy", "build_block", "cpu_profile",
           "measure_block", "predict_block", "sample_configs", "scatter_against_measured", "validate"]
