"""Predicted static latency on GPU profiles against published measurements.

    python benchmarks/gpu_published.py --out benchmarks/results/latency

V100: the inference times of the pycls model zoo
(https://github.com/facebookresearch/pycls/blob/main/MODEL_ZOO.md): 64 images at 224×224 on
one V100, PyTorch 1.6, CUDA 9.2, cuDNN 7.6. The grouped-convolution term of the GPU cost
model was chosen on the RegNetX rows; the RegNetY, ResNet and ResNeXt rows are held out.

T4 (held out, a second source and device): ResNet-50 v1.5 FP32 inference latency of NVIDIA's
DeepLearningExamples (``PyTorch/Classification/ConvNets/resnet50v1.5/README.md``, "Inference
performance: NVIDIA T4", FP32, NGC PyTorch 21.03), 224×224, batches 1 to 256. Its batch-1
time is host-bound (PyTorch eager dispatching one operator at a time), which the GPU profiles
do not model: they price the GPU's side.

The predictions are laudnet's for torchvision's networks of the same architecture (static
execution, the uncalibrated ``v100`` / ``t4`` profiles). Writes ``gpu_published.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torchvision

from laudnet.latency.predictor import predict_latency

PUBLISHED_V100_MS = {
    "resnet50": 53, "resnet101": 90, "resnet152": 130, "resnext50_32x4d": 78,
    "regnet_x_400mf": 15, "regnet_x_800mf": 21, "regnet_x_1_6gf": 33, "regnet_x_3_2gf": 57,
    "regnet_x_8gf": 94, "regnet_x_16gf": 168, "regnet_x_32gf": 318,
    "regnet_y_400mf": 19, "regnet_y_800mf": 22, "regnet_y_1_6gf": 39, "regnet_y_3_2gf": 67,
    "regnet_y_8gf": 113, "regnet_y_16gf": 189, "regnet_y_32gf": 319,
}
"""Inference time (ms) of 64 images on one V100, from pycls' MODEL_ZOO.md."""

PUBLISHED_T4_RESNET50_MS = {1: 10.7, 8: 22.41, 32: 77.62, 64: 152.73, 256: 635.98}
"""ResNet-50 v1.5 FP32 latency (ms per batch) on one T4 by batch, NVIDIA DeepLearningExamples."""


def predicted_ms(arch: str, batch: int = 64, hardware: str = "v100") -> float:
    """laudnet's predicted latency of torchvision's ``arch`` on a GPU profile."""
    model = torchvision.models.get_model(arch, weights=None).to("meta").eval()
    return predict_latency(model, hardware, batch_size=batch, input_size=224, execution="static").total_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latency"))
    args = parser.parse_args()
    rows = [(arch, ms, predicted_ms(arch)) for arch, ms in PUBLISHED_V100_MS.items()]
    lines = ["| network | published ms | predicted ms | predicted / published |", "|---|---|---|---|"]
    lines += [f"| {arch} | {ms} | {pred:.1f} | {pred / ms:.2f} |" for arch, ms, pred in rows]
    ratios = [pred / ms for _, ms, pred in rows]
    lines += ["", f"{sum(abs(r - 1) <= 0.2 for r in ratios)} of {len(ratios)} within ±20 %, "
                  f"{sum(abs(r - 1) <= 0.1 for r in ratios)} within ±10 %; ratios {min(ratios):.2f}–{max(ratios):.2f}."]
    lines += ["", "T4, ResNet-50 v1.5 FP32 (NVIDIA DeepLearningExamples, PyTorch):", "",
              "| batch | published ms | predicted ms | predicted / published |", "|---|---|---|---|"]
    for batch, ms in PUBLISHED_T4_RESNET50_MS.items():
        predicted = predicted_ms("resnet50", batch, "t4")
        lines.append(f"| {batch} | {ms} | {predicted:.1f} | {predicted / ms:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_published.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
