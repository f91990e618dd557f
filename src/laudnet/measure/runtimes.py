"""The static network as users deploy it on CPUs: the dense baselines of the benchmarks.

A dynamic network has delivered only if it beats the static network run the fastest way
the machine offers: PyTorch eager (NCHW and channels-last), and the network exported to
ONNX and run in ONNX Runtime or OpenVINO (fp32, as many threads as PyTorch uses). The two
runtimes and the ONNX exporter's ``onnx`` package are optional (``pip install laudnet[bench]``);
a missing runtime is skipped, and the tables' machine line says which ran.

Two traps are avoided: ONNX Runtime's worker threads spin after a call and steal the next
runner's cores (spinning is turned off), and OpenVINO's default precision on CPUs with
bf16 units is bf16 (it is asked for f32).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import io
import warnings
from typing import Callable

import torch
from torch import Tensor, nn

RUNTIMES = ("onnxruntime", "openvino")


def available_runtimes() -> list[str]:
    """The static runtimes installed here (none without the ``onnx`` package: PyTorch's
    exporter needs it)."""
    if importlib.util.find_spec("onnx") is None:
        return []
    return [name for name in RUNTIMES if importlib.util.find_spec(name) is not None]


def onnx_bytes(model: nn.Module, x: Tensor) -> bytes:
    """``model`` (eval mode) exported to ONNX for inputs shaped like ``x``."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter needs no onnxscript; its deprecation is noise
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, input_names=["input"], output_names=["output"], dynamo=False)
    return buffer.getvalue()


def onnxruntime_runner(onnx: bytes, x: Tensor, threads: int) -> Callable[[], object]:
    """An ONNX Runtime session on ``threads`` threads, spinning off, as a call on ``x``."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}
    return lambda: session.run(None, feed)


def openvino_runner(onnx: bytes, x: Tensor, threads: int) -> Callable[[], object]:
    """The network compiled by OpenVINO for the CPU in f32 on ``threads`` threads, as a call on ``x``."""
    import openvino

    core = openvino.Core()
    compiled = core.compile_model(core.read_model(onnx), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                 "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    feed = {0: x.numpy()}
    return lambda: request.infer(feed)


def runtime_versions() -> str:
    """Versions of the installed static runtimes, for the tables."""
    versions = []
    for name in available_runtimes():
        module = importlib.import_module(name)
        versions.append(f"{name} {getattr(module, '__version__', '?')}")
    return ", ".join(versions) or "no ONNX Runtime / OpenVINO baselines (pip install laudnet[bench])"


def dense_baselines(reference: nn.Module, x: Tensor, runtimes: bool = True) -> dict[str, Callable[[], object]]:
    """Calls of the static network on ``x``: ``eager`` (NCHW, as torchvision runs it),
    ``eager_channels_last``, and, when installed and ``runtimes``, ``onnxruntime`` and
    ``openvino``. CPU float32 only for the runtimes."""
    reference = reference.eval()
    channels_last = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)
    baselines: dict[str, Callable[[], object]] = {
        "eager": lambda: reference(x),
        "eager_channels_last": lambda: channels_last(x_last),
    }
    if runtimes and x.device.type == "cpu" and x.dtype == torch.float32 and available_runtimes():
        onnx = onnx_bytes(reference, x)
        threads = torch.get_num_threads()
        runners = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner}
        for name in available_runtimes():
            baselines[name] = runners[name](onnx, x, threads)
    return baselines
