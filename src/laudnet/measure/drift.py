"""Machine drift: is this machine now slower or faster than when its profile was calibrated?

Shared machines change speed (other jobs, clock and power limits, a VM moved to another
host), and a calibrated CPU profile then mispredicts every absolute latency by the same
factor. Calibration times a small reference workload after every calibration network and
stores the readings in the profile (``reference_ms``); :func:`rescale_for_drift` times it
again and, when it runs outside the range it ran in during calibration, returns the profile
scaled by its ratio to the calibration's median, with a :class:`Drift` saying what it
found. Callers report it (``laudnet predict``, a latency-budget training run): a rescaling
is never silent.

A shared machine also moves from moment to moment: on a 2-core VM one reading moved
between 3.2 and 6.2 ms within 2.5 s, and between 2.5 and 5.3 ms over minutes while the
networks measured around it kept their pace, so one reading checked against one
calibration reading (and a fixed ±10 %) found the machine 1.14-1.66x slower in 8 of 8
checks that acted, none of them true. The range of the calibration's own readings is what
this machine's moments look like: the check's reading, the median of several, inside it
says nothing about drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..latency.hardware import Hardware
from .timing import time_call

REFERENCE_REPEATS = 7
"""Rounds of one reading, the same at calibration and at the check so that the calibration's
readings show the spread of exactly the reading the check takes."""
CHECK_READINGS = 5
"""Readings the check takes back to back (about 1 s); their median is compared."""
DEAD_BAND = 0.10
"""Margin around the calibration's readings (their 5th to 95th percentile) within which
drift is not acted on; with one calibration reading, ±10 % around it."""


def reference_ms(repeats: int = REFERENCE_REPEATS) -> float:
    """Milliseconds of the reference workload: a compute-bound matrix product (the implicit
    GEMM of a 3×3 convolution at ResNet-50 stage-3 shapes) and a memory-bound addition, both
    into preallocated outputs so that the allocator's state does not enter; each the median
    of interleaved rounds."""
    generator = torch.Generator().manual_seed(0)
    rows, weights, product = (torch.randn(196, 2304, generator=generator), torch.randn(2304, 256, generator=generator),
                              torch.empty(196, 256))
    a, b, total = (torch.randn(4 * 1024 * 28 * 28, generator=generator),
                   torch.randn(4 * 1024 * 28 * 28, generator=generator), torch.empty(4 * 1024 * 28 * 28))
    with torch.no_grad():
        gemm = time_call(lambda: torch.mm(rows, weights, out=product), repeats, min_ms=10.0)
        add = time_call(lambda: torch.add(a, b, out=total), repeats, min_ms=10.0)
    return gemm + add


def current_reference_ms(readings: int = CHECK_READINGS) -> float:
    """The reference's time now: the median of ``readings`` readings back to back, steadier
    than one (each of which the calibration's range was measured with, so that the median
    leaves that range only when the machine has really changed pace)."""
    return float(np.median([reference_ms() for _ in range(readings)]))


@dataclass(frozen=True)
class Drift:
    """The reference workload's times read during calibration and its time now."""

    profile: str
    readings_ms: tuple[float, ...]
    now_ms: float

    @property
    def calibrated_ms(self) -> float:
        """The reference's median time during calibration."""
        return float(np.median(self.readings_ms))

    @property
    def calibrated_range_ms(self) -> tuple[float, float]:
        """The range the reference ran in during calibration (5th to 95th percentile of its
        readings), widened by :data:`DEAD_BAND`."""
        low, high = np.percentile(self.readings_ms, [5, 95])
        return float(low) / (1 + DEAD_BAND), float(high) * (1 + DEAD_BAND)

    @property
    def factor(self) -> float:
        """How many times slower this machine runs than at calibration (< 1: faster)."""
        return self.now_ms / self.calibrated_ms

    @property
    def significant(self) -> bool:
        """Whether the reference now runs outside the range of its calibration readings."""
        low, high = self.calibrated_range_ms
        return not low <= self.now_ms <= high

    def describe(self) -> str:
        pace = f"{self.factor:.2f}x slower" if self.factor >= 1 else f"{1 / self.factor:.2f}x faster"
        low, high = self.calibrated_range_ms
        found = (f"this machine runs the drift reference {pace} than when profile {self.profile!r} was calibrated "
                 f"({self.now_ms:.2f} vs {self.calibrated_ms:.2f} ms, the median of {len(self.readings_ms)} "
                 f"calibration reading{'' if len(self.readings_ms) == 1 else 's'}")
        if self.significant:
            return f"{found}; outside {low:.2f}-{high:.2f} ms): its predictions are scaled by {self.factor:.2f}"
        return f"{found}; within {low:.2f}-{high:.2f} ms, the range it ran in then): not rescaled"


def rescale_for_drift(hw: Hardware,
                      measure: Callable[[], float] = current_reference_ms) -> tuple[Hardware, str | None]:
    """``hw`` scaled to this machine's speed now, and a line saying what was found: the drift
    factor, or why no check was possible (a profile without a reference time, a process with
    another thread count than the profile's). Profiles not measured on this machine (GPUs,
    datasheet CPU profiles) come back unchanged with no line. ``measure`` times the
    reference now (distributed training times it on one rank and shares it)."""
    if hw.kind != "cpu" or not hw.calibrated:
        return hw, None
    if not hw.reference_ms:
        return hw, (f"profile {hw.name!r} has no drift reference (calibrated by an older laudnet), so it is not "
                    "rescaled to this machine's speed now; run `laudnet latency calibrate` again")
    threads = hw.model.get("threads")
    if threads is not None and threads != torch.get_num_threads():
        return hw, (f"profile {hw.name!r} was calibrated with {threads} threads and this process runs "
                    f"{torch.get_num_threads()}: no drift check, not rescaled")
    drift = Drift(hw.name, hw.reference_ms, measure())
    return (hw.scaled(drift.factor) if drift.significant else hw), drift.describe()
