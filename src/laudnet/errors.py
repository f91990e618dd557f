"""Failures the user can fix, each named for what went wrong.

The command line prints their message on one line and exits with code 2 (see
:mod:`laudnet.cli`); every other exception keeps its traceback for a bug report. The
value-like ones are also ``ValueError`` so that code catching that keeps working.
"""

from __future__ import annotations


class LaudnetError(Exception):
    """Base of the failures the user can fix by changing a path, a file or an argument."""


class OutputError(LaudnetError):
    """An output location cannot be used: a file where a directory is asked, not writable."""


class BusyError(OutputError):
    """An output directory is held by another run."""


class CheckpointError(LaudnetError, ValueError):
    """A checkpoint cannot be read, or its weights do not fit the model it names."""


class DataError(LaudnetError, ValueError):
    """A dataset's files cannot be read: missing, truncated, undecodable."""


class DependencyError(LaudnetError, ImportError):
    """An optional package that a feature needs is not installed; the message says what to install."""


class DeviceError(LaudnetError, ValueError):
    """A device that is unknown or not present on this machine."""


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss, weight or metric; the run stopped without
    saving it."""
