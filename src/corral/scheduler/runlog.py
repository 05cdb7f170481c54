"""A run's log: everything its processes print, credential values redacted, size-capped.

The log is `.corral/logs/<run-id>.log`. Output beyond ``limit`` bytes is not stored; the
log ends with a marker saying how much was cut. The live sink (`corral run` streaming)
sees the same redacted bytes, uncapped. When the log cannot be written (a full disk), the
log stops, ``on_error`` is told once, and nothing is raised into the run's output pump.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from corral.credentials import RedactingSink, Redactor
from corral.locate import open_private, private_dirs
from corral.runtime import Sink

__all__ = ["DEFAULT_LOG_LIMIT", "RunLog"]

#: The most of a run's output its log keeps.
DEFAULT_LOG_LIMIT = 16 * 1024 * 1024


class RunLog:
    def __init__(
        self,
        path: Path,
        sink: Sink | None = None,
        secrets: Iterable[str] = (),
        *,
        limit: int = DEFAULT_LOG_LIMIT,
        on_error: Callable[[OSError], None] | None = None,
    ) -> None:
        self.path = path
        self.on_error = on_error
        #: Why the log stopped being written, if it did.
        self.error: OSError | None = None
        self.sink = sink
        self.limit = limit
        self.written = 0
        self.dropped = 0
        #: The values to redact (settable until the first output); their redactor (a
        #: compiled pattern holding the run's own secret, so never shared by two runs) is
        #: built at the first output: a run that prints nothing costs no pattern.
        self.secrets = tuple(secrets)
        self._redactor: RedactingSink | None = None
        self._file: BinaryIO | None = None
        self._opened = False

    def open(self) -> None:
        """Create (or open) the log file now; blocking, so a scheduler calls it in its
        preparation thread. ``async with`` opens it when this was not called."""
        if self._opened:
            return
        try:
            self._file = self._open()
        except FileNotFoundError:  # the first run, or the logs were cleaned away
            logs = self.path.parent
            top = logs.parent if logs.parent.name == ".corral" else logs
            top.parent.mkdir(parents=True, exist_ok=True)
            private_dirs(logs, top)
            self._file = self._open()
        self._opened = True

    def discard(self) -> None:
        """Close a log that was opened but will not be used (its run never started)."""
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    async def __aenter__(self) -> Self:
        self.open()
        return self

    def _open(self) -> BinaryIO:
        """The log, for appending; only corral's user may read it (0600)."""
        return os.fdopen(open_private(self.path, os.O_WRONLY | os.O_APPEND), "ab")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is None:
            return
        tail = self._redactor.flush() if self._redactor is not None else b""
        self._store(tail)
        if self.sink is not None and tail and exc_type is None:
            await self.sink(tail)
        if self.dropped and self._file is not None:
            marker = (
                f"\n[corral: the log was cut at {self.limit} bytes; "
                f"{self.dropped} more bytes of output were not kept]\n"
            )
            self._write(marker.encode())
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self._failed(exc)
        self._file = None

    async def write(self, chunk: bytes) -> None:
        """Take a chunk of output: redact, store (up to the limit), pass to the sink."""
        if not chunk:
            return
        if self._redactor is None:
            self._redactor = Redactor(self.secrets).stream()
        clean = self._redactor.feed(chunk)
        self._store(clean)
        if self.sink is not None and clean:
            await self.sink(clean)

    def _store(self, data: bytes) -> None:
        if self._file is None or not data:
            return
        room = max(self.limit - self.written, 0)
        kept = data[:room]
        if kept and self._write(kept):
            self.written += len(kept)
        self.dropped += len(data) - len(kept)

    def _write(self, data: bytes) -> bool:
        """Write and flush ``data``; on a write error (ENOSPC …) stop the log."""
        if self._file is None:
            return False
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as exc:
            self._failed(exc)
            return False
        return True

    def _failed(self, exc: OSError) -> None:
        if exc.filename is None:
            exc.filename = str(self.path)
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        if self.error is None:
            self.error = exc
            if self.on_error is not None:
                self.on_error(exc)
