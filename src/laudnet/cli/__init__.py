"""The ``laudnet`` command.

Each module of this package registers a group of subcommands with one
``add_parsers(subparsers)`` function, which declares their arguments and sets ``run`` (a
function of the parsed arguments returning an exit code or ``None``): :mod:`.train` (demo,
train, eval, report), :mod:`.bench`, :mod:`.latency` (hardware, predict, latency) and
:mod:`.search`. Adding a group means writing such a module and listing it in
:data:`SUBCOMMANDS`; argument types shared by the commands are in :mod:`.arguments`.

:func:`main` is the one error boundary: failures of the user's making (bad values, paths
that cannot be read or written, a busy run directory, an absent device, undecodable data, a
checkpoint that does not fit: :class:`laudnet.errors.LaudnetError`, ``ValueError``,
``OSError`` on a named file) print ``laudnet: error: <message>`` on one line and exit with
code 2; a run stopped by non-finite values exits with 1; any other exception is a bug and
keeps its traceback. Warnings of the library (logger ``laudnet``) print as
``laudnet: warning: <message>``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from ..errors import LaudnetError, NonFiniteError
from . import bench, latency, search, train

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    train.add_parsers, bench.add_parsers, latency.add_parsers, search.add_parsers]
"""Functions that each add a group of subcommands; extend this list to add one."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``laudnet`` command with every subcommand."""
    parser = argparse.ArgumentParser(prog="laudnet", description="Latency-aware dynamic neural networks.")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


class _WarningPrinter(logging.Handler):
    """Prints the library's warnings as ``laudnet: warning: ...`` on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"laudnet: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def _one_line(error: BaseException) -> str:
    """The message of ``error``; for one re-raised from a data-loading worker (whose message
    carries the worker's traceback), the original message only."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    logger = logging.getLogger("laudnet")
    if not any(isinstance(h, _WarningPrinter) for h in logger.handlers):
        logger.addHandler(_WarningPrinter(logging.WARNING))
    try:
        return args.run(args) or 0
    except NonFiniteError as error:
        print(f"laudnet: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except (LaudnetError, ValueError, FileNotFoundError) as error:
        print(f"laudnet: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stdout = open(os.devnull, "w")
        return 141
    except OSError as error:
        if error.filename is None:  # not about a path the user gave: a bug or the system's
            raise
        print(f"laudnet: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("laudnet: interrupted", file=sys.stderr)
        return 130
