"""Output helpers: one console for humans, plain JSON for scripts."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from typing import Any

from rich.console import Console

__all__ = ["console", "err_console", "fmt_duration", "fmt_time", "print_json"]

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
