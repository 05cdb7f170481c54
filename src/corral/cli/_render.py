"""Output helpers: one console for humans, plain JSON for scripts."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich.console import Console

from corral.transcript import fmt_cost, fmt_tokens

__all__ = [
    "console",
    "err_console",
    "fmt_cost",
    "fmt_duration",
    "fmt_duration_seconds",
    "fmt_time",
    "fmt_tokens",
    "parse_since",
    "print_json",
]

# When the output is not a terminal (a pipe, a log, CI), rich would assume 80
# columns and wrap run ids; give tables room instead.
_PIPE_WIDTH = 200
console = Console(highlight=False, width=None if sys.stdout.isatty() else _PIPE_WIDTH)
err_console = Console(
    stderr=True, highlight=False, width=None if sys.stderr.isatty() else _PIPE_WIDTH
)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


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


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since`` values: a span back from now (``90s``, ``15m``, ``2h``, ``3d``, ``1w``)
    or an ISO 8601 date or time (local time when it names no zone)."""
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
                f"{text!r} reaches back too far", param_hint="'--since'"
            ) from None
    raise click.BadParameter(
        f"{text!r} is neither a span (15m, 2h, 3d, 1w) nor an ISO date or time "
        "(2026-03-10 or 2026-03-10T14:30)",
        param_hint="'--since'",
    )
