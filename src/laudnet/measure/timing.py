"""Honest wall-clock measurement on a shared machine: interleave the candidates.

Timing A then B on a noisy machine compares two different moments. Interleaving
(A B A B …, in a shuffled order each round) in one process exposes both to the same
noise; the median of the per-round ratios, with its spread, is the figure to report.
:func:`time_call` times one short call (looped past the timer's resolution), and
:func:`stable_allocator` keeps the allocator from returning memory between calls.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch


@dataclass
class Timing:
    """Per-round times in seconds of one candidate."""

    times: list[float]

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.times)


@dataclass
class Ratio:
    """Per-round ratios ``baseline / candidate`` (a speedup when > 1)."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> tuple[float, float]:
        """Interquartile range of the per-round ratios."""
        if len(self.values) < 2:
            return self.values[0], self.values[0]
        q = statistics.quantiles(self.values, n=4)
        return q[0], q[2]

    def __str__(self) -> str:
        low, high = self.spread
        return f"{self.median:.2f}x (IQR {low:.2f}-{high:.2f})"


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(candidates: Mapping[str, Callable[[], object]], repeats: int = 20, warmup: int = 3,
                device: torch.device | None = None, gap: float = 0.0, seed: int = 0) -> dict[str, Timing]:
    """Time each candidate once per round, round after round, in a shuffled order.

    ``candidates`` are zero-argument callables (wrap them with ``torch.no_grad`` yourself).
    Each is warmed up ``warmup`` times back to back; ``gap`` seconds of idle before each
    timed call let the previous runner's worker threads go to sleep (thread pools of
    different runtimes spin and stall each other).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    order = list(names)
    shuffler = random.Random(seed)
    for _ in range(repeats):
        shuffler.shuffle(order)
        for name in order:
            if gap:
                time.sleep(gap)
            _sync(device)
            start = time.perf_counter()
            candidates[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: Timing(t) for name, t in times.items()}


def ratio(timings: Mapping[str, Timing], baseline: str, candidate: str) -> Ratio:
    """Per-round ``baseline / candidate`` time ratios."""
    return Ratio([b / c for b, c in zip(timings[baseline].times, timings[candidate].times)])


STATISTICS = ("median", "min")
"""What :func:`time_call` reports of its rounds."""


def time_call(fn: Callable[[], object], repeats: int = 7, min_ms: float = 2.0, statistic: str = "median") -> float:
    """Milliseconds of one call of ``fn``: the median (or the minimum, less sensitive to
    other jobs on a shared machine) over ``repeats`` rounds after a warm-up, each round
    looping ``fn`` for at least ``min_ms``."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic {statistic!r} is unknown; allowed: {', '.join(STATISTICS)}")
    fn()
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    inner = max(1, math.ceil(min_ms * 1e-3 / max(once, 1e-7)))

    def round_() -> None:
        for _ in range(inner):
            fn()

    timing = interleaved({"call": round_}, repeats=repeats, warmup=1)["call"]
    ms = timing.median_ms if statistic == "median" else 1e3 * min(timing.times)
    return ms / inner


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def stable_allocator() -> bool:
    """Make glibc's malloc keep freed memory instead of returning it to the system.

    With glibc's default dynamic thresholds, a chain of operators whose outputs differ in
    size keeps trimming the heap and ``mmap``-ing large blocks, so that fresh pages are
    faulted in again and again: on a VM this can double a sparse block's time and make it
    erratic. Like jemalloc or TCMalloc (which PyTorch's CPU tuning guide recommends), this
    reuses memory: it disables trimming and ``mmap`` for large blocks via ``mallopt``.
    Returns whether it could (glibc only). Affects the whole process.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(option, value) == 1 for option, value in
               ((_M_TRIM_THRESHOLD, 2 ** 31 - 1), (_M_TOP_PAD, 64 * 2 ** 20), (_M_MMAP_MAX, 0)))
