"""The hourly charts: stacked bars per hour (the runs ended, on the runners page; the
pools' largest sizes, on the scaling page), drawn on the server as SVG.

Only geometry is computed here; ``_chart.html`` writes the SVG through the autoescaping
templates (agent and runner names are text from outside). Colours are CSS classes
(``c0`` … ``c7``): the Content-Security-Policy refuses inline styles, and presentation
attributes are not needed. No script draws anything, so the chart is in the page as
served, printable and readable without JavaScript.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["COLOURS", "Chart", "runs_ended", "stacked_chart"]

#: Distinct colours (``.c0`` … ``.c7`` in dashboard.css); past that, the smallest series
#: are drawn together as "other".
COLOURS = 8
OTHER = "other"

WIDTH = 720
HEIGHT = 220
LEFT = 40
RIGHT = 8
TOP = 10
BOTTOM = 24


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: int
    title: str


@dataclass(frozen=True)
class Series:
    name: str
    colour: int
    total: int


@dataclass(frozen=True)
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    bars: list[Bar] = field(default_factory=list)
    #: Horizontal grid lines: (y, the count they stand for).
    ticks: list[tuple[float, int]] = field(default_factory=list)
    #: Hour labels under the bars: (x of the bar's middle, ``HH:00``).
    hours: list[tuple[float, str]] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    total: int = 0
    peak: int = 0
    left: int = LEFT
    bottom: float = HEIGHT - BOTTOM
    right: int = WIDTH - RIGHT


def runs_ended(count: int) -> str:
    """What a bar of the throughput chart counts, for its tooltip."""
    return f"{count} run{'s' if count != 1 else ''} ended"


def stacked_chart(
    hours: list[str],
    series: dict[str, list[int]],
    describe: Callable[[int], str] = runs_ended,
) -> Chart:
    """Bars for ``hours`` (ISO times of the hours' starts, oldest first), each the stack of
    ``series`` (name -> a count per hour), the largest series at the bottom; ``describe``
    says what a count is, in each bar's tooltip."""
    kept = _keep(series)
    slots = len(hours)
    totals = [sum(values[i] for values in kept.values()) for i in range(slots)]
    peak = max(totals, default=0)
    top = _nice(peak)
    plot_h = HEIGHT - TOP - BOTTOM
    plot_w = WIDTH - LEFT - RIGHT
    slot_w = plot_w / max(slots, 1)
    bar_w = round(slot_w * 0.78, 2)
    named = [
        Series(name, i % COLOURS, sum(values)) for i, (name, values) in enumerate(kept.items())
    ]
    bars: list[Bar] = []
    labels = [_hour_label(h) for h in hours]
    for i in range(slots):
        base = float(HEIGHT - BOTTOM)
        x = round(LEFT + i * slot_w + (slot_w - bar_w) / 2, 2)
        for entry in named:
            count = kept[entry.name][i]
            if not count:
                continue
            h = round(plot_h * count / top, 2)
            base -= h
            title = f"{entry.name}: {describe(count)} {labels[i]} UTC"
            bars.append(Bar(x, round(base, 2), bar_w, h, entry.colour, title))
    step = _nice(top / 4) if top >= 4 else 1
    ticks = [
        (round(HEIGHT - BOTTOM - plot_h * value / top, 2), value)
        for value in range(0, top + 1, step)
    ]
    marks = [
        (round(LEFT + i * slot_w + slot_w / 2, 2), labels[i])
        for i in range(slots)
        if i % 3 == (slots - 1) % 3
    ]
    return Chart(
        bars=bars,
        ticks=ticks,
        hours=marks,
        series=named,
        total=sum(totals),
        peak=peak,
    )


def _keep(series: dict[str, list[int]]) -> dict[str, list[int]]:
    """The series with runs, largest first; past ``COLOURS``, the rest summed as other."""
    ranked = sorted(
        ((name, values) for name, values in series.items() if any(values)),
        key=lambda item: (-sum(item[1]), item[0]),
    )
    if len(ranked) <= COLOURS:
        return dict(ranked)
    kept = dict(ranked[: COLOURS - 1])
    rest = [values for _, values in ranked[COLOURS - 1 :]]
    kept[OTHER] = [sum(column) for column in zip(*rest, strict=True)]
    return kept


def _nice(value: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at least ``value`` (at least 1)."""
    if value <= 1:
        return 1
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= value:
                return step * scale
        scale *= 10


def _hour_label(hour: str) -> str:
    return datetime.fromisoformat(hour).strftime("%H:00")
