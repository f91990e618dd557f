"""Machine drift: is this machine now slower or faster than when its profile was calibrated?

Shared machines change speed (other jobs, clock and power limits, a VM moved to another
host), and a calibrated CPU profile then mispredicts every absolute latency by the same
factor. Calibration times a small reference workload and stores it in the profile
(``reference_ms``); :func:`rescale_for_drift` times it again and returns the profile scaled
by the ratio, with a :class:`Drift` saying what it found. Callers report it (``laudnet
predict``, a latency-budget training run): a rescaling is never silent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..latency.hardware import Hardware
from .timing import time_call

REFERENCE_REPEATS = 9


def reference_ms(repeats: int = REFERENCE_REPEATS) -> float:
    """Milliseconds of the reference workload: a compute-bound 3×3 convolution and a
    memory-bound addition at ResNet-50 stage-3 shapes, channels-last (the engine's layout);
    each the median of interleaved rounds."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 256, 14, 14, generator=generator).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(256, 256, 3, 3, generator=generator).contiguous(memory_format=torch.channels_last)
    a, b = torch.randn(4, 1024, 28, 28, generator=generator), torch.randn(4, 1024, 28, 28, generator=generator)
    with torch.no_grad():
        conv = time_call(lambda: F.conv2d(x, weight, padding=1), repeats)
        add = time_call(lambda: torch.add(a, b), repeats)
    return conv + add


@dataclass(frozen=True)
class Drift:
    """The reference workload's time at calibration and now."""

    profile: str
    calibrated_ms: float
    now_ms: float

    @property
    def factor(self) -> float:
        """How many times slower this machine runs than at calibration (< 1: faster)."""
        return self.now_ms / self.calibrated_ms

    def describe(self) -> str:
        pace = f"{self.factor:.2f}x slower" if self.factor >= 1 else f"{1 / self.factor:.2f}x faster"
        return (f"this machine runs the drift reference {pace} than when profile {self.profile!r} was calibrated "
                f"({self.now_ms:.2f} vs {self.calibrated_ms:.2f} ms); its predictions are scaled by {self.factor:.2f}")


def rescale_for_drift(hw: Hardware) -> tuple[Hardware, str | None]:
    """``hw`` scaled to this machine's speed now, and a line saying what was found: the drift
    factor, or why no check was possible (a profile without a reference time, a process with
    another thread count than the profile's). Profiles not measured on this machine (GPUs,
    datasheet CPU profiles) come back unchanged with no line."""
    if hw.kind != "cpu" or not hw.calibrated:
        return hw, None
    if hw.reference_ms is None:
        return hw, (f"profile {hw.name!r} has no drift reference (calibrated by an older laudnet), so it is not "
                    "rescaled to this machine's speed now; run `laudnet latency calibrate` again")
    threads = hw.model.get("threads")
    if threads is not None and threads != torch.get_num_threads():
        return hw, (f"profile {hw.name!r} was calibrated with {threads} threads and this process runs "
                    f"{torch.get_num_threads()}: no drift check, not rescaled")
    drift = Drift(hw.name, hw.reference_ms, reference_ms())
    return hw.scaled(drift.factor), drift.describe()
