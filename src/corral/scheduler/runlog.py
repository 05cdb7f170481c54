"""A run's log: everything its processes print, credential values redacted, size-capped.

The log is `.corral/logs/<run-id>.log`. Output beyond ``limit`` bytes is not stored; the
log ends with a marker saying how much was cut. The live sink (`corral run` streaming)
sees the same redacted bytes, uncapped.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from corral.credentials import Redactor
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
    ) -> None:
        self.path = path
        self.sink = sink
        self.limit = limit
        self.written = 0
        self.dropped = 0
        self._redactor = Redactor(secrets).stream()
        self._file: BinaryIO | None = None

    async def __aenter__(self) -> Self:
        try:
            self._file = self.path.open("ab")
        except FileNotFoundError:  # the first run, or the logs were cleaned away
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is None:
            return
        tail = self._redactor.flush()
        self._store(tail)
        if self.sink is not None and tail and exc_type is None:
            await self.sink(tail)
        if self.dropped:
            marker = (
                f"\n[corral: the log was cut at {self.limit} bytes; "
                f"{self.dropped} more bytes of output were not kept]\n"
            )
            self._file.write(marker.encode())
        self._file.close()
        self._file = None

    async def write(self, chunk: bytes) -> None:
        """Take a chunk of output: redact, store (up to the limit), pass to the sink."""
        clean = self._redactor.feed(chunk)
        self._store(clean)
        if self.sink is not None and clean:
            await self.sink(clean)

    def _store(self, data: bytes) -> None:
        if self._file is None or not data:
            return
        room = max(self.limit - self.written, 0)
        kept = data[:room]
        if kept:
            self._file.write(kept)
            self._file.flush()
            self.written += len(kept)
        self.dropped += len(data) - len(kept)
