"""A run's log as the run page shows it: the tail at load, then new whole lines.

Built-in harness runs write their transcript as JSON lines into the log; each line goes
through ``corral.transcript.render_line``, as in ``corral logs``, so the page reads like
the command's output.
"""

from __future__ import annotations

from pathlib import Path

from corral.transcript import render_line

__all__ = ["CHUNK", "INITIAL_TAIL", "LogTail"]

#: How much of the log the page shows at load (the rest: `corral logs RUN`).
INITIAL_TAIL = 256 * 1024
#: The most one event carries.
CHUNK = 64 * 1024


class LogTail:
    """Whole lines of a growing log file, read from ``offset`` on."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset

    @classmethod
    def at_end(cls, path: Path) -> tuple[LogTail, list[str], bool]:
        """A tail positioned after the last ``INITIAL_TAIL`` bytes, those bytes' lines,
        and whether earlier output was left out."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return cls(path, 0), [], False
        start = max(size - INITIAL_TAIL, 0)
        tail = cls(path, start)
        if start:
            tail._skip_partial_line()
        lines: list[str] = []
        for _ in range(INITIAL_TAIL // CHUNK + 2):  # bounded: the log may be growing
            more = tail.read()
            if not more:
                break
            lines += more
        return tail, lines, start > 0

    def read(self, *, final: bool = False) -> list[str]:
        """The whole lines written since the last read, rendered for people; with
        ``final``, a last line without its newline too (the run has ended)."""
        data = self._bytes(CHUNK)
        if not data:
            return []
        end = data.rfind(b"\n")
        if end >= 0:
            data = data[: end + 1]
        elif not final and len(data) < CHUNK:
            return []  # a line still being written
        self.offset += len(data)
        text = data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [shown for line in lines for shown in render_line(line)]

    def _bytes(self, limit: int) -> bytes:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                return handle.read(limit)
        except FileNotFoundError:
            return b""

    def _skip_partial_line(self) -> None:
        data = self._bytes(CHUNK)
        newline = data.find(b"\n")
        if newline >= 0:
            self.offset += newline + 1
