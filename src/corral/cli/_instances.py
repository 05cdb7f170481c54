"""Which `corral start` processes run in a project directory on this machine.

Each one keeps ``.corral/start-<pid>.json`` (its pid, gateway port and URL) with an
exclusive ``flock`` on it for as long as it lives. The kernel drops the lock when the
process ends, however it ends (kill -9 included), so a record whose lock can be taken is
stale and is removed: a dead scheduler never blocks a restart, and a pid reused by an
unrelated process is never taken for a scheduler.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from corral.locate import STATE_FILE_MODE, state_dir

__all__ = ["Instance", "InstanceRecord", "live_instances"]

_PREFIX = "start-"


@dataclass(frozen=True)
class Instance:
    """A live `corral start` of this project on this machine."""

    pid: int
    port: int
    url: str
    started_at: str


def live_instances(root: Path) -> list[Instance]:
    """The `corral start` processes alive in the project at ``root``; stale records (their
    process is gone) are removed on the way."""
    directory = root / ".corral"
    if not directory.is_dir():
        return []
    found: list[Instance] = []
    for path in sorted(directory.glob(f"{_PREFIX}*.json")):
        instance = _read_if_held(path)
        if instance is not None:
            found.append(instance)
    return found


def _read_if_held(path: Path) -> Instance | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: its process is alive
            return _parse(os.read(fd, 65536))
        # Nobody holds it: its process died without removing it.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None
    finally:
        os.close(fd)


def _parse(data: bytes) -> Instance | None:
    try:
        body = json.loads(data)
        return Instance(
            pid=int(body["pid"]),
            port=int(body["port"]),
            url=str(body["url"]),
            started_at=str(body["startedAt"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


class InstanceRecord:
    """This process's record, held (locked) until ``release``."""

    def __init__(self, root: Path, port: int, url: str) -> None:
        directory = state_dir(root)
        self.path = directory / f"{_PREFIX}{os.getpid()}.json"
        body = {
            "pid": os.getpid(),
            "port": port,
            "url": url,
            "startedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        # Written and locked under a temporary name, then renamed into place (the lock
        # goes with the inode): a reader never sees a record that is not yet held.
        temporary = directory / f".{_PREFIX}{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        self._fd: int | None = os.open(temporary, flags, STATE_FILE_MODE)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.write(self._fd, json.dumps(body).encode())
        os.replace(temporary, self.path)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None
