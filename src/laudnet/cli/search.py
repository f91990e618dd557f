"""``laudnet search``: the per-stage paradigm and granularity with the lowest predicted
latency on a device (:func:`laudnet.search.search`); ``add_parsers(subparsers)`` registers it.
Values are checked by the library, so that bad input gives a one-line message and exit code 2
(only text that is not a number at all is argparse's to refuse).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..outputs import check_file
from ..search import BUDGETS, SEARCH_PARADIGMS, TOLERANCE, search


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``search`` command on the ``laudnet`` CLI's subparsers."""
    p = subparsers.add_parser(
        "search", help="search the per-stage paradigm and granularity for a device",
        description="Price every stage's candidate designs (spatial with every sensible S, channel with "
                    "G in {1,2,4,8} x group width, layer skipping) with the latency predictor at the budget, "
                    "and print the Pareto front of predicted latency against FLOPs ratio and the fastest design.")
    p.add_argument("--arch", default="resnet50", help="a laudnet model (laudnet.list_models()); default %(default)s")
    p.add_argument("--hardware", default="v100",
                   help="profile name (see `hardware list`; `local` after `latency calibrate`) or JSON path")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (default %(default)s)")
    p.add_argument("--input-size", type=int, default=None, help="input side (default: the model's, 224 or 32)")
    p.add_argument("--target", type=float, default=0.5,
                   help="activation rate of every gate, or FLOPs ratio with --budget flops (default %(default)s)")
    p.add_argument("--budget", default="rate", help=f"what --target is: {' or '.join(BUDGETS)} (default %(default)s)")
    p.add_argument("--paradigms", default=",".join(SEARCH_PARADIGMS),
                   help="comma-separated paradigms to consider (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help="a coarser granularity must be this much faster than the finer ones (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON to this file")
    p.set_defaults(run=search_command)


def search_command(args: argparse.Namespace) -> int:
    paradigms = tuple(word.strip().lower() for word in args.paradigms.split(","))
    if args.out is not None:
        check_file(args.out)
    result = search(args.arch, args.hardware, args.batch_size, args.target, args.budget, paradigms,
                    args.input_size, args.tolerance)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    print(json.dumps(result.to_dict(), indent=1) if args.json else result.summary())
    return 0
