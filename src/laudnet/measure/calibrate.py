"""Local calibration: time the sparse engine's real kernels on this CPU and fit the
efficiency parameters of the cost model (:mod:`laudnet.latency.cost`) to them.

The micro-benchmarks (:mod:`laudnet.measure.microbenchmarks`) are the kernels the engine
runs, each described by the plan operator (:class:`laudnet.sparse.plan.Op`) that stands for
it in execution plans, plus tiny blocks (a few channels on a 4×4 or 6×6 map, shapes no
network uses) for the fixed Python cost of a block. They fit the analytic model, which
prices what cannot be measured. Then whole networks are timed piece by piece
(:mod:`laudnet.measure.pieces`: each block, each run of static layers, every block at its
own random rate, so never one of the held-out networks of ``laudnet latency validate
--networks``, which have one rate for all) for the learned correction.

Each timing is the median of ``repeats`` rounds after a warm-up, a round looping the call
long enough (≥ 2 ms) for the timer. Calibration (and validation) run with
:func:`laudnet.measure.timing.stable_allocator`: predictions are for a process whose
allocator reuses memory. Fits minimise the log-ratio of predicted to measured
time (robust loss): bandwidths per memory level, then per operator kind a fixed overhead
and an efficiency, then GEMM and convolution efficiencies with their half-saturation
dimensions. The fitted profile is written with the measurements; the network pieces
train the learned correction (:mod:`laudnet.latency.learned`) wherever the profile is used.
"""

from __future__ import annotations

import datetime
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..latency.cost import MEMORY_KINDS, block_overhead_ms, plan_cost
from ..latency.learned import analytic_cost, held_out_predictions
from ..latency.hardware import Cache, Hardware, load_hardware, save_hardware, user_profile_dir
from ..latency.samples import Sample
from ..machine import cpu_field, cpu_flags, cpu_name
from ..outputs import check_file
from .drift import reference_ms
from .microbenchmarks import BLOCK_PARADIGMS, FAMILIES, measure
from .pieces import measure_networks
from .timing import STATISTICS, stable_allocator

NETWORKS = 140
"""Networks calibration times piece by piece (at most :data:`NETWORK_SECONDS`): every
architecture, paradigm and batch together once in the first 105, then again. Measured on a
shared 2-core VM, stored validations of 120 held-out networks were predicted within ±10 %
in speedup for 62 % with the pieces of 40 networks measured twice, 77 % with those of 80
other networks once: the correction learns more from networks it has not seen than from a
second look; and 80 stored held-out networks for 68 % with 105 calibration networks, 79 %
with 35 more (2026-12-02). The 195 stored measurements of 39 held-out networks were predicted
for 83–84 % with one calibration's 140 networks, 82–90 % (87 % on average) with two
calibrations' pieces of the same networks and 88–93 % with three: more measured networks
keep helping, and a calibration within 10 minutes stops at 140 (:func:`extend_calibration`
adds more; on 280 stored measurements, extending runs 17 and 18 by 127 and 140 networks
took them from 76.1 to 78.2 % and from 82.1 to 84.3 %)."""
NETWORK_SECONDS = 450.0


# --------------------------------------------------------------------------------- the machine
def fp32_lanes() -> int:
    """FP32 FMA lanes per core and cycle, from the vector extensions (two FMA units assumed)."""
    flags = cpu_flags()
    if "avx512f" in flags:
        return 32
    if "avx2" in flags and "fma" in flags:
        return 16
    if "avx" in flags:
        return 8
    return 4


def cache_sizes_kb(threads: int) -> list[tuple[str, float]]:
    """Data cache levels usable by ``threads`` threads: per-core caches count ``threads`` times."""
    levels = []
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            if kind == "Instruction":
                continue
            size = (index / "size").read_text().strip()
            kb = float(size[:-1]) * (1024 if size.endswith("M") else 1) if size[-1] in "KM" else float(size) / 1024
            shared = (index / "shared_cpu_list").read_text().strip()
            per_core = shared.isdigit()
            levels.append((f"L{(index / 'level').read_text().strip()}", kb * (threads if per_core else 1)))
        except (OSError, ValueError):
            continue
    return levels or [("L1", 32.0 * threads), ("L2", 512.0 * threads), ("L3", 8192.0)]


def machine_title(threads: int) -> str:
    return f"{cpu_name()}, {threads} thread{'s' if threads > 1 else ''} (this machine)"


# --------------------------------------------------------------------------------- fitting
def _with_model(hw: Hardware, **updates) -> Hardware:
    model = dict(hw.model)
    model.update(updates)
    return replace(hw, model=model)


def _least_squares(residuals: Callable[[np.ndarray], np.ndarray], starts: list[list[float]], lower: list[float],
                   upper: list[float]) -> np.ndarray:
    """Robust least squares from several starting points; the best solution."""
    from scipy.optimize import least_squares

    best = None
    for x0 in starts:
        x0 = np.clip(np.asarray(x0, float), lower, upper)
        result = least_squares(residuals, x0, bounds=(lower, upper), loss="soft_l1", f_scale=0.1)
        if best is None or result.cost < best.cost:
            best = result
    return best.x


def _log_errors(samples: list[Sample], hw: Hardware) -> np.ndarray:
    return np.array([math.log(max(plan_cost(s.ops, hw).total_ms, 1e-9) / s.ms) for s in samples])


def _fit_bandwidths(hw: Hardware, samples: list[Sample]) -> Hardware:
    """Bandwidth of each memory level, the effective size of the caches beyond L1 (shared
    caches are shared with other programs), the bandwidth of fresh pages and the
    element-wise overhead, from element-wise operators of every size."""
    levels = sorted(hw.caches, key=lambda c: c.size_kb)
    n = len(levels)

    def build(x: np.ndarray) -> Hardware:
        v = np.exp(x)
        sizes = [levels[0].size_kb] + list(v[n + 1:2 * n])
        caches = tuple(Cache(c.level, float(size), float(b)) for c, size, b in zip(levels, sizes, v[1:n + 1]))
        memory = dict(hw.model["memory"])
        memory["elementwise"] = dict(efficiency=1.0, overhead_us=float(v[0]))
        return replace(hw, caches=caches, memory_bandwidth_gbs=float(v[2 * n]),
                       model=dict(hw.model, memory=memory, memory_efficiency=1.0, page_gbs=float(v[2 * n + 1])))

    x0 = np.log([hw.model["memory"]["elementwise"]["overhead_us"]] + [c.bandwidth_gbs for c in levels]
                + [c.size_kb for c in levels[1:]] + [hw.memory_bandwidth_gbs, hw.model["page_gbs"]])
    lower = np.log([0.05] + [0.1] * n + [c.size_kb / 8 for c in levels[1:]] + [0.1, 0.1])
    upper = np.log([1000.0] + [1e4] * n + [c.size_kb * 1.5 for c in levels[1:]] + [1e4, 1e4])
    x = _least_squares(lambda x: _log_errors(samples, build(x)), [list(x0)], list(lower), list(upper))
    return build(x)


def _fit_memory_kind(hw: Hardware, kind: str, samples: list[Sample]) -> Hardware:
    """Efficiency, fixed overhead, per-row cost (gathers, epilogues) and padding cost
    (gathers) of a memory kind."""
    names = {"gather": ("efficiency", "overhead_us", "row_ns", "padding_us"),
             "epilogue": ("efficiency", "overhead_us", "row_ns")}.get(kind, ("efficiency", "overhead_us"))

    def build(x: np.ndarray) -> Hardware:
        memory = dict(hw.model["memory"])
        memory[kind] = {"row_ns": 0.0, **{n: float(v) for n, v in zip(names, np.exp(x))}}
        return _with_model(hw, memory=memory)

    count = len(names)
    starts = [list(np.log([1.0, 5.0, 2.0, 5.0]))[:count], list(np.log([0.5, 20.0, 10.0, 1.0]))[:count]]
    x = _least_squares(lambda x: _log_errors(samples, build(x)), starts,
                       list(np.log([0.01, 0.05, 0.01, 0.01]))[:count], list(np.log([10.0, 5000.0, 1e4, 1000.0]))[:count])
    return build(x)


def _fit_matmul(hw: Hardware, kind: str, samples: list[Sample]) -> Hardware:
    names = ("efficiency", "m_half", "k_half", "n_half", "overhead_us", "packing_gbs", "unaligned", "narrow_input")

    def build(x: np.ndarray) -> Hardware:
        params = dict(hw.model[kind])
        params.update({n: float(v) for n, v in zip(names, np.exp(x[:-1]))}, stream_loss=float(x[-1]))
        return _with_model(hw, **{kind: params})

    starts = [list(np.log([0.8, 8, 16, 16, 5, 3, 0.9, 0.8])) + [0.1],
              list(np.log([1.0, 30, 30, 30, 20, 1, 0.8, 0.5])) + [0.3],
              list(np.log([0.6, 2, 4, 4, 2, 10, 1.0, 1.0])) + [0.0]]
    x = _least_squares(lambda x: _log_errors(samples, build(x)), starts,
                       list(np.log([0.02, 0.01, 0.01, 0.01, 0.05, 0.1, 0.2, 0.1])) + [0.0],
                       list(np.log([3.0, 1e5, 1e5, 1e5, 5000.0, 1e4, 1.0, 2.0])) + [0.9])
    return build(x)


def fit(samples: list[Sample], hw: Hardware) -> Hardware:
    """The profile ``hw`` with its CPU cost-model parameters fitted to ``samples``.
    Families without samples keep the parameters of ``hw``."""
    by_family: dict[str, list[Sample]] = {}
    for s in samples:
        by_family.setdefault(s.family, []).append(s)
    if by_family.get("elementwise"):
        hw = _fit_bandwidths(hw, by_family["elementwise"])
        hw = replace(hw, launch_us=hw.model["memory"]["elementwise"]["overhead_us"])
    for kind in MEMORY_KINDS:
        if kind != "elementwise" and by_family.get(kind):
            hw = _fit_memory_kind(hw, kind, by_family[kind])
    if by_family.get("index"):
        hw = _with_model(hw, index_us=float(statistics.median(s.ms for s in by_family["index"]) * 1e3))
    for kind in ("gemm", "conv"):
        if by_family.get(kind):
            hw = _fit_matmul(hw, kind, by_family[kind])
    if by_family.get("block"):
        block_us = dict(hw.model.get("block_us", {}))
        for paradigm in BLOCK_PARADIGMS:
            extra = [s.ms - plan_cost(s.ops, hw).total_ms for s in by_family["block"]
                     if s.meta.get("paradigm") == paradigm]
            if extra:
                block_us[paradigm] = max(0.0, float(statistics.median(extra)) * 1e3)
        hw = _with_model(hw, block_us=block_us)
    return hw


def _errors_summary(errors: np.ndarray) -> dict[str, float]:
    return dict(n=len(errors), rmspe=float(np.sqrt(np.mean(errors ** 2))),
                median_abs_error=float(np.median(np.abs(errors))), within_10=float(np.mean(np.abs(errors) <= 0.1)))


def fit_report(samples: list[Sample], hw: Hardware) -> dict[str, dict[str, float]]:
    """Per family: number of samples, RMS and median absolute percentage error and share
    within ±10 % of the fitted analytic model on its own calibration measurements; for the
    network pieces also of the learned correction on networks it was not trained on."""
    report = {}
    for family in FAMILIES:
        chosen = [s for s in samples if s.family == family]
        if chosen:
            overhead = [block_overhead_ms(hw, s.meta["paradigm"]) if family == "block" else 0.0 for s in chosen]
            report[family] = _errors_summary(np.array([(plan_cost(s.ops, hw).total_ms + o) / s.ms - 1
                                                       for s, o in zip(chosen, overhead)]))
    pieces = [s for s in samples if s.family == "piece"]
    if pieces:
        report["piece"] = _errors_summary(np.array([analytic_cost(s, hw).total_ms / s.ms - 1 for s in pieces]))
        held_out = held_out_predictions(samples, hw)
        if held_out:
            report["piece, learned"] = _errors_summary(np.array([p / s.ms - 1 for s, p in held_out]))
            networks: dict[tuple, list[float]] = {}
            for s, p in held_out:
                totals = networks.setdefault((s.meta["network"], s.meta.get("model")), [0.0, 0.0])
                totals[0], totals[1] = totals[0] + p, totals[1] + s.ms
            report["network, learned"] = _errors_summary(np.array([p / m - 1 for p, m in networks.values()]))
    return report


def starting_profile(threads: int) -> Hardware:
    """Datasheet-style starting point for this machine (before fitting)."""
    clock = float(cpu_field("cpu MHz") or 2500.0) / 1000
    caches = tuple(Cache(level, kb, bw) for (level, kb), bw in zip(cache_sizes_kb(threads), (200.0, 80.0, 40.0, 30.0)))
    memory = {kind: dict(efficiency=1.0, overhead_us=3.0, row_ns=0.0) for kind in MEMORY_KINDS}
    matmul = dict(efficiency=0.8, m_half=8.0, k_half=16.0, n_half=16.0, overhead_us=5.0, packing_gbs=10.0,
                  stream_loss=0.0, unaligned=1.0, narrow_input=1.0, depthwise_efficiency=0.1)
    model = dict(threads=threads, overlap=1.0, memory_efficiency=1.0, page_gbs=3.0, gemm=dict(matmul), conv=dict(matmul),
                 memory=memory, index_us=5.0, block_us={p: 0.0 for p in BLOCK_PARADIGMS})
    return Hardware("local", machine_title(threads), "cpu", threads, fp32_lanes(), clock, 20.0 * threads, caches,
                    3.0, model, ("measured by laudnet latency calibrate",), calibrated=True)


def calibrate(out: str | Path | None = None, threads: int | None = None, scale: float = 1.0, repeats: int = 7,
              seed: int = 0, progress: bool = True, statistic: str = "median", networks: int = NETWORKS,
              network_seconds: float | None = NETWORK_SECONDS) -> tuple[Hardware, dict]:
    """Measure this CPU, fit the profile, write it (default: ``local.json`` in the user
    profile directory) and return it with the fit report. The micro-benchmarks fit the
    analytic model; then up to ``networks`` whole networks (at most ``network_seconds``)
    are timed piece by piece for the learned correction (:mod:`laudnet.measure.pieces`), the
    drift reference read after each of them and once more at the end (:mod:`.drift`)."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if networks < 0:
        raise ValueError(f"the number of calibration networks must be 0 or more, got {networks}")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic {statistic!r} is unknown; allowed: {', '.join(STATISTICS)}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    path = check_file(out if out is not None else user_profile_dir() / "local.json", "profile path")
    allocator = _stable_allocator()
    started = time.perf_counter()
    samples = measure(scale=scale, repeats=repeats, seed=seed, progress=progress, statistic=statistic)
    hw = fit(samples, starting_profile(threads))
    kernels = len(samples)
    readings: list[float] = []  # the drift reference, read after every network: the machine's moments
    if networks:
        samples += measure_networks(networks, max(3, repeats - 2), seed, progress, network_seconds,
                                    after_each=lambda: readings.append(reference_ms()))
    pieces = len(samples) - kernels
    measured = _network_count(samples)
    sources = [f"measured by `laudnet latency calibrate` on {datetime.date.today().isoformat()} "
               f"({kernels} micro-benchmarks, {statistic} of {repeats} rounds each; {pieces} pieces of "
               f"{measured} network{'' if measured == 1 else 's'}; {time.perf_counter() - started:.0f} s)",
               "cache sizes from /sys/devices/system/cpu/cpu0/cache, clock and vector width from /proc/cpuinfo"]
    return _write_profile(path, hw, samples, readings + [reference_ms()], sources, allocator)


def extend_calibration(profile: str | Path, out: str | Path | None = None, networks: int = NETWORKS,
                       network_seconds: float | None = NETWORK_SECONDS, repeats: int = 5, seed: int = 0,
                       progress: bool = True, threads: int | None = None) -> tuple[Hardware, dict]:
    """Time more calibration networks into ``profile``, a calibration of this machine: those
    that follow the networks it holds in the same draw (:func:`~.pieces.calibration_networks`
    with ``seed``), at most ``network_seconds``; its micro-benchmark fit is kept and the
    drift readings go on. Written back to ``profile`` (or to ``out``).

    The learned correction predicts whole networks better the more networks it has learned
    from; a calibration stays within 10 minutes, and this is how a user with the time
    trades more of it for accuracy (see :data:`NETWORKS`)."""
    hw = load_hardware(profile)
    profile_threads = hw.model.get("threads")
    if not hw.calibrated or hw.path is None or not hw.samples:
        raise ValueError(f"profile {str(profile)!r} holds no calibration of this machine; "
                         "run `laudnet latency calibrate` first")
    if hw.title != machine_title(profile_threads):
        raise ValueError(f"profile {str(profile)!r} was calibrated on {hw.title!r}; this machine is "
                         f"{machine_title(profile_threads)!r}: calibrate it anew")
    if not hw.notes.startswith(f"torch {torch.__version__},"):
        raise ValueError(f"profile {str(profile)!r} was calibrated with another torch ({hw.notes.split(',')[0]}); "
                         f"this is torch {torch.__version__}: calibrate anew")
    if threads is not None and threads != profile_threads:
        raise ValueError(f"profile {str(profile)!r} was calibrated with {profile_threads} threads, "
                         f"got threads={threads}: its measurements hold for that count only")
    if networks < 1:
        raise ValueError(f"the number of networks to add must be positive, got {networks}")
    torch.set_num_threads(profile_threads)
    path = check_file(out if out is not None else hw.path, "profile path")
    allocator = _stable_allocator()
    started = time.perf_counter()
    samples = [Sample.from_dict(s) for s in hw.samples]
    measured = _network_count(samples)
    readings = list(hw.reference_ms)
    samples += measure_networks(networks, repeats, seed, progress, network_seconds,
                                after_each=lambda: readings.append(reference_ms()), start=measured)
    readings.append(reference_ms())
    added = _network_count(samples) - measured
    sources = list(hw.sources) + [
        f"extended by `laudnet latency calibrate --extend` on {datetime.date.today().isoformat()} "
        f"({len(samples) - len(hw.samples)} pieces of {added} more network{'' if added == 1 else 's'}, "
        f"{measured + added} in all; {time.perf_counter() - started:.0f} s)"]
    return _write_profile(path, hw, samples, readings, sources, allocator)


def _stable_allocator() -> str:
    """Switch to the allocator predictions are made for (:func:`.timing.stable_allocator`)
    and say which one measures, for the profile's notes."""
    return "glibc malloc without trimming or mmap" if stable_allocator() else "the default allocator"


def _network_count(samples: list[Sample]) -> int:
    """How many calibration networks ``samples`` hold pieces of."""
    return len({s.meta["network"] for s in samples if s.family == "piece"})


def _write_profile(path: Path, hw: Hardware, samples: list[Sample], readings: list[float], sources: list[str],
                   allocator: str) -> tuple[Hardware, dict]:
    """Write the fitted profile ``hw`` with its measurements, drift ``readings`` and
    ``sources`` to ``path``; return it with the fit report."""
    report = fit_report(samples, hw)
    data = hw.to_dict()
    data["name"] = path.stem
    data["sources"] = sources
    data["notes"] = (f"torch {torch.__version__}, {hw.model.get('threads')} threads, {allocator} (see "
                     f"laudnet.measure.timing.stable_allocator); FP32 lanes from the vector extensions, "
                     f"clock as reported; the fitted efficiencies absorb their errors. Fit RMS errors: "
                     + ", ".join(f"{k} {v['rmspe']:.1%}" for k, v in report.items()))
    data["samples"] = [s.to_dict() for s in samples]
    data["reference_ms"] = readings
    return save_hardware(data, path), report
