"""Output locations: checked before any work is spent, held by one run at a time.

A command that writes into a directory *claims* it first (:func:`claim`): the directory
must be creatable and writable, and no other run may hold it. The hold is an advisory
``fcntl`` lock on ``LOCK_FILE`` inside the directory, released when the run ends or its
process dies (so a killed run never leaves a stale lock). The lock file names its holder,
so that a second run is refused with a message saying which run has it. A directory
that a claim created is removed again if the work fails before writing anything.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import BusyError, OutputError

LOCK_FILE = ".laudnet.lock"


def _as_path(path, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise TypeError(f"{what} must be a path, got {path!r}")
    return Path(path)


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _check_writable(path: Path, what: str, target: Path) -> None:
    """Create and delete a file in the nearest existing directory: unlike permission bits,
    this also catches read-only file systems and directories that refuse even root."""
    existing = _nearest_existing(path.absolute())
    if not existing.is_dir():
        raise OutputError(f"{what} {target} cannot be created: {existing} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise OutputError(f"{what} {target} cannot be written: {existing}: {error.strerror}") from None


def check_directory(path: str | Path, what: str = "--out") -> Path:
    """``path`` as a directory that exists or can be created, and can be written."""
    path = _as_path(path, what)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file; give a directory")
    _check_writable(path, what, path)
    return path


def check_file(path: str | Path, what: str = "--out") -> Path:
    """``path`` as a file that can be written (its directory exists or can be created)."""
    path = _as_path(path, what)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path} cannot be written: the file is read-only")
    _check_writable(path.parent, what, path)
    return path


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


def _describe_holder(lock_path: Path) -> str:
    try:
        holder = json.loads(lock_path.read_text())
        return (f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: "
                f"{holder['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a run whose lock file cannot be read"


@contextmanager
def claim(path: str | Path, what: str = "--out") -> Iterator[Path]:
    """Hold directory ``path`` for the duration of a run.

    Raises :class:`OutputError` for a location that cannot be written and
    :class:`BusyError` while another run (in this or another process) holds it.
    """
    path = check_directory(path, what)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{what} {path} cannot be created: {error.strerror}") from None
    lock_path = path / LOCK_FILE
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise BusyError(f"{what} {path} is in use by another run ({_describe_holder(lock_path)}); "
                        f"wait for it to finish or choose another {what}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_holder()) + "\n")
    handle.flush()
    try:
        yield path
    except BaseException:
        if created and [p.name for p in path.iterdir()] == [LOCK_FILE]:
            lock_path.unlink()
            path.rmdir()
        raise
    finally:
        handle.close()
