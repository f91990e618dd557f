"""Sparse against dense wall-clock speed of ResNet-50 blocks and of whole networks, against
the static network in torch eager, ONNX Runtime and OpenVINO.

    python benchmarks/sparse_speed.py --out benchmarks/results/sparse_speed [--quick] [--suite blocks]
        [--arch resnet50,mobilenet_v2] [--rates 0.5,1]

Writes CSV, JSON and markdown tables (see laudnet.measure.bench). The same as
``laudnet bench``. Never run from the tests: timings are measured, not asserted.
"""

import argparse
from pathlib import Path

import torch

from laudnet.measure.bench import RATES, run_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sparse_speed"))
    parser.add_argument("--suite", default="all", choices=["all", "blocks", "networks"])
    parser.add_argument("--quick", action="store_true", help="fewer configurations and repeats")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--arch", type=lambda v: v.split(","), default=None, help="networks, e.g. resnet50,mobilenet_v2")
    parser.add_argument("--rates", type=lambda v: [float(r) for r in v.split(",")], default=list(RATES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name, path in run_suite(args.out, args.suite, args.quick, args.batch, archs=args.arch,
                                rates=args.rates).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
