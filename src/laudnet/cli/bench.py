"""``laudnet bench``: sparse against dense execution measured on this machine
(:func:`laudnet.measure.bench.run_suite`); ``add_parsers(subparsers)`` registers it."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import checks
from ..measure.bench import RATES, run_suite
from .arguments import name_list, positive_int_list, rate_list


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``bench`` command."""
    p = subparsers.add_parser(
        "bench", help="measure sparse against dense execution on this machine",
        description="Sparse against dense wall-clock speed of ResNet-50 blocks (every stage, stride, paradigm, "
                    "granularity, rate and batch) and of whole ResNet-50/101, interleaved in one process; writes "
                    "CSV, JSON and markdown tables (median speedup with its interquartile range, efficiency = "
                    "speedup x activation rate).")
    p.add_argument("--out", default="laudnet-bench", metavar="DIR", help="where the tables go (default: %(default)s)")
    p.add_argument("--suite", default="all", choices=["all", "blocks", "networks"])
    p.add_argument("--quick", action="store_true", help="fewer configurations and repeats (a few minutes)")
    p.add_argument("--batch", type=positive_int_list, default=[1, 8], help="batch sizes, e.g. 1,8")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: PyTorch's)")
    p.add_argument("--arch", type=name_list, default=None,
                   help="networks to measure, e.g. resnet50,mobilenet_v2 (default: all four; --quick: resnet50)")
    p.add_argument("--rates", type=rate_list, default=None, help="activation rates, e.g. 0.5,1 (default: 0.25,0.5,0.75,1)")
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> None:
    if args.threads is not None:
        torch.set_num_threads(checks.positive_int("--threads", args.threads))
    rates = args.rates or RATES
    for name, path in run_suite(Path(args.out), args.suite, args.quick, args.batch, archs=args.arch,
                                rates=rates).items():
        print(f"{name}: {path}")
