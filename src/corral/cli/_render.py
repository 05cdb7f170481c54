"""Output helpers: one console for humans, plain JSON for scripts.

Everything the CLI prints that it did not write itself (stored rows, a gateway's answers,
a run's output) is made inert first (``corral.inert``): a field goes into a table as
:func:`cell` or into a markup string as :func:`safe`, never as a bare string, so it is
neither rich markup nor a terminal escape. The consoles escape what slips through anyway
(a control character in any printed text), and :func:`print_json` writes control and
format characters as ``\\u`` escapes.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.segment import Segment
from rich.text import Text

from corral.errors import UsageError
from corral.inert import InertFormatter, inert, is_unsafe_char
from corral.locate import open_private
from corral.transcript import fmt_cost, fmt_tokens

__all__ = [
    "add_file_log",
    "cell",
    "configure_logging",
    "console",
    "err_console",
    "fmt_cost",
    "fmt_duration",
    "fmt_duration_seconds",
    "fmt_time",
    "fmt_tokens",
    "parse_since",
    "print_json",
    "safe",
    "safe_lines",
]

# When the output is not a terminal (a pipe, a log, CI), rich would assume 80
# columns and wrap run ids; give tables room instead.
_PIPE_WIDTH = 200


class InertConsole(Console):
    """A rich console that never sends a control character of the text it prints to the
    terminal: its own styles and cursor moves go out, a stray ESC in a text is shown as
    ``\\x1b``. (A last line of defence; fields are made inert before they are laid out,
    so the columns stay aligned.)"""

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            segment
            if segment.control
            else segment._replace(text=inert(segment.text, newlines=True))
            for segment in buffer
        )


console = InertConsole(highlight=False, width=None if sys.stdout.isatty() else _PIPE_WIDTH)
err_console = InertConsole(
    stderr=True, highlight=False, width=None if sys.stderr.isatty() else _PIPE_WIDTH
)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (the live view redirects it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: int, fmt: str = "%(message)s") -> None:
    """corral's log records on stderr, one line per record whatever text from outside
    (a webhook source name, a status text, an error quoting them) the message holds.
    Every command starts with warnings as bare messages; `corral start` asks for its
    timestamped log. uvicorn's loggers have no handlers of their own
    (``log_config=None``) and end up here too. Handlers others added are left alone."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(InertFormatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)


class _PrivateRotatingFile(logging.handlers.RotatingFileHandler):
    """A rotating log file that is 0600 from the start (it is part of a project's state)."""

    def _open(self) -> Any:
        # No-follow: a link planted at the log's path must not redirect root's writes.
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW
        fd = open_private(Path(self.baseFilename), flags)
        return os.fdopen(fd, "a", encoding="utf-8", errors="replace")


#: The scheduler's log: rotated at this size, with this many older files kept.
LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 3


def add_file_log(path: Path, fmt: str) -> logging.Handler:
    """Also write corral's log records at INFO and above to ``path`` (made inert, one line
    per record), whatever level stderr shows: `corral logs` reads it. The terminal keeps
    the level it had (the live view shows only warnings there)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, _StderrHandler):
            handler.setLevel(root.level)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        added = _PrivateRotatingFile(path, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS)
    except OSError as exc:  # ELOOP: a symbolic link planted at the log's path
        raise UsageError(
            f"cannot open the scheduler's log {path}: {exc.strerror}; corral does not "
            "follow a symbolic link there: remove it"
        ) from None
    added.setFormatter(InertFormatter(fmt))
    added.setLevel(logging.INFO)
    root.addHandler(added)
    root.setLevel(min(root.level, logging.INFO))
    return added


def cell(value: object, *, style: str = "") -> Text:
    """A one-line table cell from text corral does not control: shown as it is, never read
    as markup, controls and newlines escaped; ``None`` is ``-``."""
    return Text("-" if value is None else inert(value), style=style)


def safe(value: object) -> str:
    """Text corral does not control, for a markup string: inert and markup-escaped."""
    return escape(inert(value))


def safe_lines(value: object) -> str:
    """:func:`safe` for a text of several lines (an error report): newlines stay."""
    return escape(inert(value, newlines=True))


#: Outside printable ASCII; the newlines of the indentation are JSON's own.
_JSON_UNSAFE = re.compile(r"[^\n\x20-\x7e]")


def _json_escape(match: re.Match[str]) -> str:
    char = match.group()
    if not is_unsafe_char(char):
        return char
    units = char.encode("utf-16-be", "surrogatepass")
    return "".join(
        f"\\u{int.from_bytes(units[i : i + 2], 'big'):04x}" for i in range(0, len(units), 2)
    )


def print_json(value: Any) -> None:
    """``value`` as JSON; control and format characters (which JSON allows raw in strings
    once they are above U+001F) are written as ``\\u`` escapes, so the terminal sees none."""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write(_JSON_UNSAFE.sub(_json_escape, text) + "\n")


def fmt_time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = value.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def fmt_duration_seconds(seconds: float | None) -> str:
    return fmt_duration(None if seconds is None else timedelta(seconds=seconds))


_SPAN = re.compile(r"^(\d+)([smhdw])$")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None, *, param: str = "--since") -> datetime:
    """``--since`` (or ``param``) values: a span back from now (``90s``, ``15m``, ``2h``,
    ``3d``, ``1w``) or an ISO 8601 date or time (local time when it names no zone)."""
    moment = now or datetime.now(UTC)
    span = _SPAN.match(text.strip())
    parsed = None
    try:
        if span is not None:
            return moment - timedelta(**{_UNIT[span.group(2)]: int(span.group(1))})
        parsed = datetime.fromisoformat(text.strip())
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.astimezone().astimezone(UTC)
    except (ValueError, OverflowError):
        if span is not None or parsed is not None:  # well formed, but out of range
            raise click.BadParameter(
                f"{text!r} reaches back too far", param_hint=f"'{param}'"
            ) from None
    raise click.BadParameter(
        f"{text!r} is neither a span (15m, 2h, 3d, 1w) nor an ISO date or time "
        "(2026-03-10 or 2026-03-10T14:30)",
        param_hint=f"'{param}'",
    )
