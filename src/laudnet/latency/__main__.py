"""``python -m laudnet.latency``: the latency commands (``hardware``, ``predict``, ``latency``)
until they are wired into the main ``laudnet`` command."""

from __future__ import annotations

import argparse
import sys

from .commands import add_parsers, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m laudnet.latency",
                                     description="Hardware profiles, latency prediction, calibration and validation.")
    add_parsers(parser.add_subparsers(dest="command", metavar="{hardware,predict,latency}", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
