"""Latency: hardware profiles, the per-operator cost model, network prediction, local
calibration and validation, and interleaved measurement."""

from .cost import Cost, op_cost, plan_cost
from .hardware import Hardware, list_hardware, load_hardware
from .measure import Ratio, Timing, interleaved, ratio, stable_allocator
from .predictor import BlockLatency, LatencyReport, NetworkWalk, predict_latency, walk_network

__all__ = ["BlockLatency", "Cost", "Hardware", "LatencyReport", "NetworkWalk", "Ratio", "Timing", "interleaved",
           "list_hardware", "load_hardware", "op_cost", "plan_cost", "predict_latency", "ratio", "stable_allocator",
           "walk_network"]
