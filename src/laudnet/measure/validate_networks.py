"""Validation of the predictor on whole networks against the sparse engine on this CPU.

Blocks priced one by one can each be right while a network is not (the stem, the head and
the fixed cost of every block add up; caches are shared), so the predictor is checked
where it is used: ``validate_networks`` draws N networks (architecture, input size, batch,
paradigm, granularity, activation rate) with a seeded generator, converts torchvision's
network to the dynamic one (the same weights), and measures the sparse network and the
static torchvision network (channels-last, eager) interleaved in one process. It reports
the accuracy of the predicted sparse and static latencies and of the predicted speedup
(static / sparse), which does not depend on how fast the machine happens to run. A
calibrated profile is first rescaled to the machine's speed now (:mod:`.drift`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from tqdm import tqdm

from .. import checks
from ..dynamic import set_decisions, set_execution, stats
from ..latency.hardware import Hardware
from ..latency.learned import LearnedCorrection
from ..latency.predictor import predict_latency
from ..models import convert, create_model
from .bench import machine_description
from .drift import rescale_for_drift
from .timing import interleaved, ratio, stable_allocator
from .validate import accuracy, cpu_profile, scatter_against_measured

NETWORK_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "regnet_y_400mf", "regnet_y_800mf", "mobilenet_v2")
NETWORK_PARADIGMS = ("spatial", "channel", "layer", "layer+spatial", "layer+channel")
INPUT_SIZES = (128, 160, 192, 224)
NETWORK_BATCHES = (1, 2, 4)
NETWORK_RATES = (0.25, 0.5, 0.75)
SPATIAL_GRANULARITIES = (None, 1, 2, 4)
CHANNEL_GRANULARITIES = (None, 1, 2, 4, 8)


NETWORK_REPEATS = 21
"""Interleaved rounds per held-out network. Measured on a shared 2-core VM, two passes of 20
networks agreed on the speedup within ±10 % for 60-80 % of them at 7 rounds, 85 % at 21."""

QUANTITIES = (("sparse latency", "sparse_ms"), ("static latency", "static_ms"), ("speedup", "speedup"))
"""What whole-network validation compares: its name in the metrics and its key in the rows."""


@dataclass(frozen=True)
class NetworkConfig:
    """One held-out network: torchvision architecture, input side, batch, one paradigm for
    every stage, granularity (``None``: the family's default) and block activation rate."""

    arch: str
    input_size: int
    batch: int
    paradigm: str
    granularity: int | None
    rate: float

    @classmethod
    def from_row(cls, row: dict) -> "NetworkConfig":
        """The configuration of a stored validation row (which holds its fields, ``asdict``)."""
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    @property
    def label(self) -> str:
        gran = "" if self.granularity is None else f":{self.granularity}"
        return f"{self.arch} {self.input_size}px b={self.batch} {self.paradigm}{gran} r={self.rate:.2f}"


@functools.lru_cache(maxsize=None)
def _builds(arch: str, input_size: int, paradigm: str, granularity: int | None) -> bool:
    """Whether the dynamic network can be built (the granularity fits its maps and blocks);
    built on the meta device: shapes only."""
    try:
        with torch.device("meta"):
            create_model(arch, paradigm=paradigm, granularity=granularity, input_size=input_size)
    except ValueError:
        return False
    return True


def sample_networks(n: int, seed: int = 0, archs: tuple[str, ...] = NETWORK_ARCHS,
                    input_sizes: tuple[int, ...] = INPUT_SIZES, balanced: bool = False) -> list[NetworkConfig]:
    """``n`` valid configurations drawn with a seeded generator (the same arguments always
    give the same list); a granularity the network does not allow is drawn again. With
    ``balanced``, the architectures, the paradigms and the batches take turns (every triple
    once in 105 networks) instead of being drawn, so that none is left with one or two
    networks or one batch, and so do the input sizes, one step further every time the
    architectures and batches have all met and once more every 105 networks: with five sizes,
    every architecture meets every size at every batch in 105 networks, and a network after
    the 105th repeats no earlier one (drawn, ResNet-18/34 at batch 1 had missed 224 px, whose
    7×7 last stage runs slower per operation than its neighbours, and were mispredicted)."""
    if n < 1:
        raise ValueError(f"the number of networks must be positive, got {n}")
    rng = np.random.default_rng(seed)
    configs: list[NetworkConfig] = []
    met = len(archs) * len(NETWORK_BATCHES)  # networks until every architecture has met every batch
    while len(configs) < n:
        paradigm = (NETWORK_PARADIGMS[len(configs) % len(NETWORK_PARADIGMS)] if balanced
                    else NETWORK_PARADIGMS[int(rng.integers(len(NETWORK_PARADIGMS)))])
        choices = (SPATIAL_GRANULARITIES if paradigm.endswith("spatial") else
                   CHANNEL_GRANULARITIES if paradigm.endswith("channel") else (None,))
        arch = archs[len(configs) % len(archs)] if balanced else archs[int(rng.integers(len(archs)))]
        turn = len(configs) + len(configs) // met + len(configs) // (met * len(NETWORK_PARADIGMS))
        size = input_sizes[turn % len(input_sizes)] if balanced else int(rng.choice(input_sizes))
        batch = (NETWORK_BATCHES[len(configs) % len(NETWORK_BATCHES)] if balanced
                 else int(rng.choice(NETWORK_BATCHES)))
        config = NetworkConfig(arch, size, batch, paradigm, choices[int(rng.integers(len(choices)))],
                               float(rng.choice(NETWORK_RATES)))
        if _builds(config.arch, config.input_size, config.paradigm, config.granularity):
            configs.append(config)
    return configs


def build_networks(config: NetworkConfig, meta: bool = False, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """The static torchvision network (eval, channels-last) and the dynamic one with fixed
    random decisions of the configuration's rate, in sparse execution: converted from the
    static one (same weights), or with ``meta`` built on the meta device (shapes only, for
    the predictor; nothing allocated)."""
    torch.manual_seed(seed)
    static = torchvision.models.get_model(config.arch, weights=None).eval()
    kwargs = dict(paradigm=config.paradigm, granularity=config.granularity, input_size=config.input_size)
    if meta:
        static, dynamic = static.to("meta"), create_model(config.arch, **kwargs).to("meta").eval()
    else:
        dynamic = convert(static, **kwargs).eval()
    set_execution(dynamic, "sparse")
    set_decisions(dynamic, rate=config.rate, seed=seed)
    return static.to(memory_format=torch.channels_last), dynamic


@torch.no_grad()
def measure_network(config: NetworkConfig, repeats: int = NETWORK_REPEATS) -> dict:
    """Median milliseconds of the sparse and the static network, interleaved, the median
    per-round speedup (static / sparse) with its interquartile range, and the activation
    rate each block realized (at small batches a layer gate's realized rate differs much
    from the nominal one: the predictions are made at the realized rates)."""
    static, dynamic = build_networks(config)
    x = torch.randn(config.batch, 3, config.input_size, config.input_size)
    x = x.contiguous(memory_format=torch.channels_last)
    timings = interleaved({"sparse": lambda: dynamic(x), "static": lambda: static(x)}, repeats=repeats, warmup=2)
    speedup = ratio(timings, "static", "sparse")
    return dict(sparse_ms=timings["sparse"].median_ms, static_ms=timings["static"].median_ms,
                speedup=speedup.median, speedup_iqr=list(speedup.spread), rates=stats(dynamic).mean_rates)


def predict_network(config: NetworkConfig, hw: Hardware, rates: dict[str, float] | None = None,
                    method: str = "auto") -> dict[str, float]:
    """Predicted milliseconds of the sparse network (at the blocks' ``rates``, default the
    configuration's rate everywhere) and of the static one, and their ratio."""
    static, dynamic = build_networks(config, meta=True)
    sparse = predict_latency(dynamic, hw, config.batch, config.input_size,
                             rates=config.rate if rates is None else rates, method=method).total_ms
    dense = predict_latency(static, hw, config.batch, config.input_size, method=method).total_ms
    return dict(sparse_ms=sparse, static_ms=dense, speedup=dense / sparse)


@dataclass
class NetworkValidation:
    hardware: str
    machine: str
    threads: int
    seed: int
    repeats: int
    drift: str | None
    rows: list[dict]
    metrics: dict[str, dict[str, float]]

    def markdown(self) -> str:
        lines = [f"# Latency predictor on whole networks, `{self.hardware}`", "",
                 f"Machine: {self.machine}; {self.threads} threads; {len(self.rows)} held-out networks "
                 f"(seed {self.seed}); sparse and static (torchvision, channels-last, eager) measured interleaved, "
                 f"{self.repeats} rounds.",
                 "" if self.drift is None else f"\nDrift check: {self.drift}.\n", "",
                 "| quantity | n | RMSPE | MAPE | within ±5 % | within ±10 % | Spearman |",
                 "|---|---|---|---|---|---|---|"]
        for name, m in self.metrics.items():
            lines.append(f"| {name} | {m['n']} | {m['rmspe']:.1%} | {m['mape']:.1%} | {m['within_5']:.0%} | "
                         f"{m['within_10']:.0%} | {m['spearman']:.3f} |")
        lines += ["", "| network | measured sparse ms | predicted | measured static ms | predicted | "
                      "measured speedup (IQR) | predicted |", "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            low, high = r["measured_speedup_iqr"]
            lines.append(f"| {r['label']} | {r['measured_sparse_ms']:.2f} | {r['predicted_sparse_ms']:.2f} | "
                         f"{r['measured_static_ms']:.2f} | {r['predicted_static_ms']:.2f} | "
                         f"{r['measured_speedup']:.2f}x ({low:.2f}-{high:.2f}) | {r['predicted_speedup']:.2f}x |")
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> None:
        """Predicted against measured latency (sparse and static networks) and speedup."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (latency, speedup) = plt.subplots(1, 2, figsize=(10, 5))
        series = {name: {key: ([r[f"{prefix}_{key}"] for r in self.rows], [r[f"measured_{key}"] for r in self.rows],
                               self.metrics[f"{quantity}, {name}"])
                         for quantity, key in QUANTITIES}
                  for name, prefix in (("analytic only", "analytic"), (self.method, "predicted"))
                  if f"speedup, {name}" in self.metrics}
        scatter_against_measured(latency, {f"{kind} ({name})": series[name][key] for name in series
                                           for kind, key in (("sparse", "sparse_ms"), ("static", "static_ms"))})
        latency.set(xlabel="measured ms", ylabel="predicted ms", title="Whole networks: latency")
        scatter_against_measured(speedup, {name: series[name]["speedup"] for name in series})
        speedup.set(xlabel="measured speedup (static / sparse)", ylabel="predicted speedup",
                    title="Whole networks: speedup")
        fig.suptitle(f"{len(self.rows)} held-out networks on {self.hardware}", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=130)
        plt.close(fig)

    @property
    def method(self) -> str:
        return "learned" if any(k.endswith(", learned") for k in self.metrics) else "analytic"

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        out_dir = Path(out_dir)
        paths = {"json": out_dir / "networks.json", "md": out_dir / "networks.md", "png": out_dir / "networks.png"}
        paths["json"].write_text(json.dumps(asdict(self), indent=1) + "\n")
        paths["md"].write_text(self.markdown())
        self.plot(paths["png"])
        return paths


def _accuracies(rows: list[dict], prefix: str, label: str) -> dict[str, dict[str, float]]:
    """:func:`accuracy` of the rows' ``{prefix}_…`` values against the measured ones, per
    quantity, named ``"{quantity}, {label}"``."""
    return {f"{name}, {label}": accuracy([r[f"{prefix}_{key}"] for r in rows], [r[f"measured_{key}"] for r in rows])
            for name, key in QUANTITIES}


def validate_networks(n: int = 20, seed: int = 1, hardware: str | Hardware = "local", repeats: int = NETWORK_REPEATS,
                      threads: int | None = None, progress: bool = True, archs: tuple[str, ...] = NETWORK_ARCHS,
                      input_sizes: tuple[int, ...] = INPUT_SIZES, remeasure: bool = False) -> NetworkValidation:
    """Measure ``n`` held-out networks with ``threads`` (default: PyTorch's) and compare them
    with the predictions on ``hardware`` (a CPU profile, rescaled for drift when calibrated).
    With ``remeasure``, every network is measured a second time after the first pass, and the
    agreement of the two passes (this machine's noise floor) is reported with the rest."""
    configs = sample_networks(n, seed, archs, input_sizes)
    if threads is not None:
        torch.set_num_threads(checks.positive_int("threads", threads))
    calibrated = cpu_profile(hardware)
    stable_allocator()  # as calibration ran
    hw, drift = rescale_for_drift(calibrated)
    learned = LearnedCorrection.available(hw)
    rows = []
    for config in tqdm(configs, desc="validating networks", disable=not progress, unit="network"):
        measured = measure_network(config, repeats)
        realized = measured.pop("rates")
        predicted = predict_network(config, hw, realized)
        row = dict(asdict(config), label=config.label, realized_rate=float(np.mean(list(realized.values()))),
                   realized_rates=realized,  # so that a stored validation can be predicted again by another profile
                   **{f"measured_{k}": v for k, v in measured.items()},
                   **{f"predicted_{k}": v for k, v in predicted.items()})
        if learned:  # the analytic prior alone, for comparison
            row.update({f"analytic_{k}": v for k, v in predict_network(config, hw, realized, "analytic").items()})
        if hw is not calibrated:  # rescaled for drift: the calibrated profile's own predictions too
            row.update({f"unscaled_{k}": v for k, v in predict_network(config, calibrated, realized).items()})
        rows.append(row)
    method = "learned" if learned else "analytic"
    metrics = _accuracies(rows, "predicted", method)
    if learned:
        metrics.update(_accuracies(rows, "analytic", "analytic only"))
    if hw is not calibrated:  # a drift reading can be wrong: show what it changed (speedups are not scaled)
        metrics.update({name: value for name, value in _accuracies(rows, "unscaled", f"{method}, not rescaled").items()
                        if not name.startswith("speedup")})
    if remeasure:
        for config, row in zip(tqdm(configs, desc="measuring again", disable=not progress, unit="network"), rows):
            again = measure_network(config, repeats)
            row.update({f"remeasured_{key}": again[key] for _, key in QUANTITIES})
        metrics.update(_accuracies(rows, "remeasured", "measured again"))
    return NetworkValidation(hw.name, machine_description(), torch.get_num_threads(), seed, repeats, drift, rows,
                             metrics)


__all__ = ["NETWORK_REPEATS", "NetworkConfig", "NetworkValidation", "build_networks", "measure_network",
           "predict_network", "sample_networks", "validate_networks"]
