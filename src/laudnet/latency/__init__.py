"""Latency: local measurement (and, later, hardware profiles and the predictor)."""

from .measure import Ratio, Timing, interleaved, ratio

__all__ = ["Ratio", "Timing", "interleaved", "ratio"]
