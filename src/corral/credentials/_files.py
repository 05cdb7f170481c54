"""Private files and directories: created with their final mode, whatever the umask is.

``os.open`` and ``os.mkdir`` take the mode at creation, so a file is never, even for an
instant, readable by anyone else; the umask can only remove bits, and a ``chmod``
afterwards puts back the ones a strict umask (such as 0o277) removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "private_dir", "write_private_files"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> None:
    """Make ``path`` a directory only its owner can enter (its parent must exist)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, DIR_MODE)
    os.chmod(path, DIR_MODE)


def write_private_files(directory: Path, files: Mapping[str, bytes], *, prune: bool) -> None:
    """Write each ``name -> content`` into ``directory`` (which exists), each replaced atomically.

    Every new content is written and synced to a temporary file first; only then are the
    files renamed into place, so a failure leaves the old files as they were. With
    ``prune``, other regular files whose names do not start with ``.`` are removed.
    """
    written: dict[str, Path] = {}
    try:
        for name, content in files.items():
            temp = directory / f".{name}.tmp-{secrets.token_hex(6)}"
            _write_new(temp, content)
            written[name] = temp
        for name, temp in written.items():
            os.replace(temp, directory / name)
        written.clear()
    finally:
        for temp in written.values():
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
    if prune:
        for entry in directory.iterdir():
            if entry.name not in files and not entry.name.startswith(".") and entry.is_file():
                entry.unlink()
    _sync_dir(directory)


def _write_new(path: Path, content: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
