"""Timing this machine: interleaved measurement (:mod:`.timing`), calibration of the
``local`` profile (:mod:`.calibrate`, with the micro-benchmarks of :mod:`.microbenchmarks`),
validation of the predictor (:mod:`.validate`), the sparse-against-dense benchmark
(:mod:`.bench`) and its static baselines in ONNX Runtime and OpenVINO (:mod:`.runtimes`)."""

from .timing import Ratio, Timing, interleaved, ratio, stable_allocator, time_call

__all__ = ["Ratio", "Timing", "interleaved", "ratio", "stable_allocator", "time_call"]
