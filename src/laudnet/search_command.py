"""Command-line pieces of latency-guided design, for the ``laudnet`` CLI:

- ``laudnet search``: the per-stage paradigm and granularity with the lowest predicted
  latency on a device (:func:`laudnet.search.search`); ``add_parser(subparsers)`` registers it;
- the latency-budget options of ``laudnet train`` (``--budget-ms``, ``--hardware``,
  ``--budget-batch-size``): :func:`add_budget_arguments` declares them and
  :func:`budget_from_args` turns them into the budget loss of the training step.

``python -m laudnet.search_command ...`` runs the search until the command is wired into
the main CLI. Values are checked by the library, so that bad input gives a one-line message
and exit code 2 (only text that is not a number at all is argparse's to refuse).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from .latency.commands import run
from .search import BUDGETS, SEARCH_PARADIGMS, TOLERANCE


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``search`` command (sets both ``run``, as ``laudnet.cli`` expects, and
    ``func``, as the latency commands do)."""
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
    p.set_defaults(run=search_command, func=search_command)
    return p


def search_command(args: argparse.Namespace) -> int:
    from .search import search

    paradigms = tuple(word.strip().lower() for word in args.paradigms.split(","))
    result = search(args.arch, args.hardware, args.batch_size, args.target, args.budget, paradigms,
                    args.input_size, args.tolerance)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    print(json.dumps(result.to_dict(), indent=1) if args.json else result.summary())
    return 0


def add_budget_arguments(group) -> None:
    """Declare the latency-budget options of ``laudnet train`` on an argument group."""
    group.add_argument("--budget-ms", type=float, default=None,
                       help="train against this predicted latency per batch instead of the FLOPs target "
                            "(needs --hardware)")
    group.add_argument("--hardware", default=None,
                       help="device whose predicted latency --budget-ms bounds (see `laudnet hardware list`)")
    group.add_argument("--budget-batch-size", type=int, default=1,
                       help="batch size the latency budget is for (default %(default)s)")


def budget_from_args(args: argparse.Namespace) -> Callable:
    """The budget loss ``loss(model, progress)`` the options ask for (the FLOPs target
    ``args.target`` unless ``--budget-ms`` is given); raises ``ValueError`` on bad settings."""
    from .train.losses import budget_loss

    return budget_loss(args.target, args.budget_ms, args.hardware, args.budget_batch_size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m laudnet.search_command",
                                     description="Latency-guided search of per-stage paradigm and granularity.")
    add_parser(parser.add_subparsers(dest="command", metavar="{search}", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
