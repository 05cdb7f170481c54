"""A run log for people: the built-in harness's transcript lines made readable.

A built-in harness run writes each turn and tool call as one JSON object per line in its
log; `corral logs` and the dashboard's run page show those as short lines (a turn with
its model, tokens and cost, each tool call and its output), and every other line as is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

__all__ = ["fmt_cost", "fmt_tokens", "render_line"]

_TRANSCRIPT_TYPES = frozenset({"turn", "tool", "budget", "error"})


def fmt_tokens(value: int | None) -> str:
    """``-`` when unknown; ``950``, ``12.3k``, ``4.1M``."""
    if value is None:
        return "-"
    if value < 1000:
        return str(value)
    if value < 1_000_000:
        return f"{value / 1000:.1f}k"
    return f"{value / 1_000_000:.1f}M"


def fmt_cost(value: float | None) -> str:
    """``-`` when unknown; dollars with cents, or four places below a cent."""
    if value is None:
        return "-"
    return f"${value:,.2f}" if value == 0 or value >= 0.01 else f"${value:.4f}"


def render_line(text: str) -> Iterator[str]:
    """A log line for people: transcript entries become short readable lines."""
    entry = _transcript_entry(text)
    if entry is None:
        yield text
        return
    kind = entry["type"]
    if kind == "turn":
        usage = entry.get("usage") or {}
        tokens = sum(int(usage.get(key) or 0) for key in usage)
        cost = entry.get("costUsd")
        price = "" if cost is None else f" · {fmt_cost(float(cost))}"
        head = (
            f"[turn {entry.get('turn')} · {entry.get('model')} · {fmt_tokens(tokens)} tok{price}]"
        )
        said = str(entry.get("text") or "").strip()
        yield head + (f" {said}" if said else "")
        for call in entry.get("toolCalls") or []:
            yield f"  → {call.get('name')} {json.dumps(call.get('input'), ensure_ascii=False)}"
    elif kind == "tool":
        mark = " (error)" if entry.get("isError") else ""
        output = str(entry.get("output") or "")
        yield f"  ← {entry.get('name')}{mark}" + ("" if output else " (no output)")
        for line in output.splitlines():
            yield f"    {line}"
    else:
        yield f"!! {entry.get('error')}"


def _transcript_entry(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        entry = json.loads(text)
    except ValueError:
        return None
    if not isinstance(entry, dict) or entry.get("type") not in _TRANSCRIPT_TYPES:
        return None
    return entry if "run" in entry else None
