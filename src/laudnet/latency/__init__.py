"""Latency prediction: hardware profiles, the per-operator cost model, network prediction,
latency tables for training and the learned predictor. Timing this machine (calibration,
validation, benchmarks) is :mod:`laudnet.measure`."""

from .cost import Cost, op_cost, plan_cost
from .hardware import Hardware, list_hardware, load_hardware
from .predictor import BlockLatency, LatencyReport, NetworkWalk, predict_latency, walk_network

__all__ = ["BlockLatency", "Cost", "Hardware", "LatencyReport", "NetworkWalk", "list_hardware", "load_hardware",
           "op_cost", "plan_cost", "predict_latency", "walk_network"]
