"""Autoscaling simulator: the real pool policies (corral.autoscale) against arrival traces.

A discrete-event simulation of one agent's pool. Items arrive by a trace and wait in a
first-in first-out queue; an idle instance takes the next one, pays the warm-start cost
(the workspace refreshed) and runs it for a duration drawn from a heavy-tailed
distribution (lognormal, or Pareto with ``--durations pareto``). A new instance pays the
cold-start cost (clone, install) before it is ready. Every ``--tick`` seconds the
policy's :class:`corral.autoscale.Autoscaler` gets an observation and its decision is
applied: new instances start warming, the idle ones it names are stopped.

Traces (arrival times; ``--hours`` long, seeded):

* ``steady``: Poisson arrivals at ``--steady-rate`` per minute;
* ``diurnal``: a compressed day: the rate follows a sine between 0.1x and 1.9x the
  mean ``--steady-rate`` over the trace;
* ``bursty``: a low Poisson base (``--base-rate`` per minute) and, ``--storm-at``
  minutes in, a labelling storm of ``--storm`` issues in one minute;
* ``--trace FILE``: a recorded trace, a CSV whose first column is each arrival's time
  in seconds (a header line is skipped).

Every policy sees the same arrivals and the same run durations (drawn per item). The
figures per policy: p50/p95 queue wait (arrival to the run's work starting: queueing,
any cold start it waited for, and the warm start), instance-minutes (the pool's size
integrated over time, warming instances included), the average and largest pool. The
policies: ``fixed`` at max (every instance always ready), ``reactive``, ``predictive``,
and ``fixed-avg``: a fixed pool of the predictive pool's average size (rounded up).
Medians over ``--seeds`` seeds. The bursty trace's first seed is drawn as an SVG
(``--svg``): pool size and queue depth over time around the storm, and the p95 wait
against instance-minutes for each policy.

.venv/bin/python bench/autoscale.py [--seeds 5] [--json out.json] [--svg docs/x.svg]
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import math
import random
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from _common import Result, median, percentile, print_table

from corral.autoscale import Autoscaler, Instance, Limits, Observation, Policy, Reactive, Settings

POLICIES = ("fixed", "reactive", "predictive", "fixed-avg", "reactive-unstepped")
TRACES = ("steady", "diurnal", "bursty")


@dataclass(frozen=True)
class Setup:
    """What the simulated world is like; the same for every policy and trace."""

    min: int = 1
    max: int = 200
    slots: int | None = None  # the fleet's slots for this pool (None: max)
    cold_start: float = 90.0  # seconds: clone and install before an instance is ready
    warm_start: float = 5.0  # seconds: refresh a prepared workspace before a run
    duration_median: float = 180.0
    duration_sigma: float = 1.0  # lognormal; the mean is median * exp(sigma^2 / 2)
    duration_cap: float = 1800.0  # runs end at the agent's timeout
    durations: str = "lognormal"  # or "pareto" (alpha 1.5, same median)
    tick: float = 15.0
    hours: float = 3.0
    steady_rate: float = 2.0  # per minute
    base_rate: float = 0.5  # per minute, the bursty trace's base
    storm: int = 200
    storm_at: float = 60.0  # minutes
    settings: dict[str, Any] = field(default_factory=dict)  # target, stabilization, ...


# --------------------------------------------------------------------------- traces


def poisson(
    rng: random.Random, rate: Callable[[float], float], peak: float, end: float
) -> list[float]:
    """Arrivals of a Poisson process with rate(t) per second (thinning under ``peak``)."""
    times, t = [], 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            return times
        if rng.random() * peak <= rate(t):
            times.append(t)


def make_trace(kind: str, setup: Setup, seed: int) -> list[float]:
    rng = random.Random(f"trace-{kind}-{seed}")
    end = setup.hours * 3600
    if kind == "steady":
        per_s = setup.steady_rate / 60
        return poisson(rng, lambda t: per_s, per_s, end)
    if kind == "diurnal":
        mean = setup.steady_rate / 60
        return poisson(
            rng, lambda t: mean * (1 - 0.9 * math.cos(2 * math.pi * t / end)), 1.9 * mean, end
        )
    if kind == "bursty":
        base = poisson(rng, lambda t: setup.base_rate / 60, setup.base_rate / 60, end)
        start = setup.storm_at * 60
        storm = [start + rng.random() * 60 for _ in range(setup.storm)]
        return sorted(base + storm)
    raise ValueError(f"unknown trace {kind!r}")


def read_trace(path: Path) -> list[float]:
    times = []
    with path.open(newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            try:
                times.append(float(row[0]))
            except ValueError:
                if times:
                    raise
    start = min(times, default=0.0)
    return sorted(t - start for t in times)


def draw_durations(count: int, setup: Setup, seed: int) -> list[float]:
    rng = random.Random(f"durations-{seed}")
    out = []
    for _ in range(count):
        if setup.durations == "pareto":
            alpha = 1.5
            scale = setup.duration_median / 2 ** (1 / alpha)
            value = scale / (1 - rng.random()) ** (1 / alpha)
        else:
            value = rng.lognormvariate(math.log(setup.duration_median), setup.duration_sigma)
        out.append(min(max(value, 1.0), setup.duration_cap))
    return out


# --------------------------------------------------------------------------- simulation


@dataclass
class _Inst:
    id: str
    started_at: float
    state: str = "warming"
    ready_at: float = 0.0


@dataclass
class Outcome:
    waits: list[float]
    instance_seconds: float
    end: float
    timeline: list[tuple[float, int, int, int]]  # (time, pool size, queue depth, busy)
    decisions: int

    def figures(self) -> dict[str, float]:
        return {
            "p50_wait_s": round(percentile(self.waits, 50), 1),
            "p95_wait_s": round(percentile(self.waits, 95), 1),
            "max_wait_s": round(max(self.waits, default=math.nan), 1),
            "instance_minutes": round(self.instance_seconds / 60, 1),
            "avg_pool": round(self.instance_seconds / self.end, 2) if self.end else 0.0,
            "max_pool": max((size for _, size, _, _ in self.timeline), default=0),
            "runs": len(self.waits),
        }


_ARRIVE, _READY, _END, _TICK = 0, 1, 2, 3


class _Unstepped(Reactive):
    """The reactive policy without its step bound: an ablation, to show what the
    predictive policy's lead on a storm is made of."""

    min_step = 1_000_000


class _Sim:
    """One policy over one trace; deterministic for the same arguments."""

    def __init__(
        self, durations: Sequence[float], scaler: Autoscaler, setup: Setup, seed: int
    ) -> None:
        self.durations, self.scaler, self.setup = durations, scaler, setup
        self.jitter = random.Random(f"cold-{seed}")
        self.events: list[tuple[float, int, int, str]] = []  # (time, kind, order, payload)
        self.order = self.serial = self.busy = self.decisions = 0
        self.pool: dict[str, _Inst] = {}
        self.idle: list[str] = []  # most recently freed last: dispatch takes from the end
        self.queue: deque[tuple[int, float]] = deque()
        self.waits: list[float] = []
        self.timeline: list[tuple[float, int, int, int]] = []
        self.arrivals = self.completions = 0
        self.ended: list[float] = []
        self.started: list[float] = []

    def push(self, t: float, kind: int, payload: str = "") -> None:
        self.order += 1
        heapq.heappush(self.events, (t, kind, self.order, payload))

    def start_instance(self, now: float) -> None:
        self.serial += 1
        inst = _Inst(f"i{self.serial}", now)
        inst.ready_at = now + self.setup.cold_start * self.jitter.lognormvariate(0, 0.25)
        self.pool[inst.id] = inst
        self.push(inst.ready_at, _READY, inst.id)

    def dispatch(self, now: float) -> None:
        while self.queue and self.idle:
            index, arrived = self.queue.popleft()
            inst = self.pool[self.idle.pop()]
            inst.state = "busy"
            self.busy += 1
            begin = now + self.setup.warm_start
            self.waits.append(begin - arrived)
            took = self.durations[index]
            self.push(begin + took, _END, f"{inst.id}:{took}")

    def tick(self, now: float) -> None:
        observation = Observation(
            now=now,
            queued=len(self.queue),
            instances=tuple(
                Instance(i.id, i.state, i.started_at)  # type: ignore[arg-type]
                for i in self.pool.values()
            ),
            arrivals=self.arrivals,
            completions=self.completions,
            durations=tuple(self.ended),
            starts=tuple(self.started),
            limits=Limits(slots=self.setup.slots),
        )
        self.arrivals = self.completions = 0
        self.ended, self.started = [], []
        decision = self.scaler.decide(observation)
        self.decisions += 1
        for inst_id in decision.remove:
            del self.pool[inst_id]
            self.idle.remove(inst_id)
        for _ in range(decision.add):
            self.start_instance(now)
        self.timeline.append((now, len(self.pool), len(self.queue), self.busy))

    def handle(self, now: float, kind: int, payload: str) -> None:
        if kind == _ARRIVE:
            self.queue.append((int(payload), now))
            self.arrivals += 1
        elif kind == _READY:
            inst = self.pool.get(payload)
            if inst is not None:
                inst.state = "idle"
                self.idle.append(inst.id)
                self.started.append(now - inst.started_at)
        elif kind == _END:
            inst_id, took = payload.split(":")
            self.pool[inst_id].state = "idle"
            self.idle.append(inst_id)
            self.busy -= 1
            self.completions += 1
            self.ended.append(float(took))

    def run(self, arrivals: Sequence[float]) -> Outcome:
        for index, t in enumerate(arrivals):
            self.push(t, _ARRIVE, str(index))
        horizon = max(self.setup.hours * 3600, arrivals[-1] if arrivals else 0.0)
        self.push(0.0, _TICK)
        last, area, done = 0.0, 0.0, 0
        while self.events:
            now, kind, _, payload = heapq.heappop(self.events)
            area += len(self.pool) * (now - last)
            last = now
            done += kind == _END
            if kind == _TICK:
                self.tick(now)
                if now < horizon or done < len(arrivals):
                    self.push(now + self.setup.tick, _TICK)
            else:
                self.handle(now, kind, payload)
            self.dispatch(now)
        return Outcome(self.waits, area, last, self.timeline, self.decisions)


def simulate(
    arrivals: Sequence[float],
    durations: Sequence[float],
    settings: Settings,
    setup: Setup,
    seed: int,
    policy: Policy | None = None,
) -> Outcome:
    return _Sim(durations, Autoscaler(settings, policy), setup, seed).run(arrivals)


def settings_for(policy: str, setup: Setup, fixed_size: int | None = None) -> Settings:
    if policy in ("fixed", "fixed-avg"):
        size = setup.max if fixed_size is None else fixed_size
        return Settings.fixed(size)
    name = "reactive" if policy == "reactive-unstepped" else policy
    return Settings(min=setup.min, max=setup.max, policy=name, **setup.settings)  # type: ignore[arg-type]


def run_trace(
    arrivals: list[float], setup: Setup, seed: int
) -> tuple[dict[str, dict[str, float]], dict[str, Outcome]]:
    durations = draw_durations(len(arrivals), setup, seed)
    outcomes: dict[str, Outcome] = {}
    for name in ("fixed", "reactive", "predictive"):
        outcomes[name] = simulate(arrivals, durations, settings_for(name, setup), setup, seed)
    size = max(1, math.ceil(outcomes["predictive"].figures()["avg_pool"]))
    fixed_avg = settings_for("fixed-avg", setup, size)
    outcomes["fixed-avg"] = simulate(arrivals, durations, fixed_avg, setup, seed)
    unstepped = settings_for("reactive-unstepped", setup)
    outcomes["reactive-unstepped"] = simulate(
        arrivals, durations, unstepped, setup, seed, _Unstepped(unstepped)
    )
    figures = {name: outcome.figures() for name, outcome in outcomes.items()}
    figures["fixed-avg"]["size"] = size
    return figures, outcomes


# --------------------------------------------------------------------------- SVG

_COLOURS = {
    "fixed": "#7f7f7f",
    "reactive": "#d62728",
    "predictive": "#1f77b4",
    "fixed-avg": "#2ca02c",
    "reactive-unstepped": "#ff7f0e",
}


def _polyline(points: list[tuple[float, float]], colour: str, width: float = 1.6) -> str:
    text = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline fill="none" stroke="{colour}" stroke-width="{width}" points="{text}"/>'


def _panel(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    box: tuple[float, float, float, float],
    x_range: tuple[float, float],
    x_label: str,
) -> list[str]:
    left, top, width, height = box
    y_max = max((y for pts in series.values() for _, y in pts), default=1.0) or 1.0
    y_max = _nice(y_max * 1.05)
    x0, x1 = x_range
    out = [
        f'<text x="{left}" y="{top - 8}" font-size="14" font-weight="bold">{title}</text>',
        f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#444"/>',
    ]
    for k in range(5):
        y = top + height - height * k / 4
        out.append(
            f'<line x1="{left}" x2="{left + width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{y_max * k / 4:g}</text>"
        )
    for k in range(7):
        x = left + width * k / 6
        value = x0 + (x1 - x0) * k / 6
        out.append(
            f'<text x="{x:.1f}" y="{top + height + 15}" font-size="11" text-anchor="middle">'
            f"{value:g}</text>"
        )
    out.append(
        f'<text x="{left + width / 2}" y="{top + height + 30}" font-size="11" '
        f'text-anchor="middle">{x_label}</text>'
    )
    for name, pts in series.items():
        scaled = [
            (left + width * (x - x0) / (x1 - x0), top + height - height * min(y, y_max) / y_max)
            for x, y in pts
            if x0 <= x <= x1
        ]
        out.append(_polyline(scaled, _COLOURS.get(name, "#000")))
    return out


def _short(name: str) -> str:
    return {"reactive-unstepped": "reactive, no step", "fixed-avg": "fixed at avg"}.get(name, name)


def _nice(value: float) -> float:
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * exponent >= value:
            return step * exponent
    return 10 * exponent


def _steps(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for x, y in points:
        if out:
            out.append((x, out[-1][1]))
        out.append((x, y))
    return out


def svg(outcomes: dict[str, Outcome], figures: dict[str, dict[str, Any]], setup: Setup) -> str:
    width, height = 900, 860
    start, end = setup.storm_at - 10, setup.storm_at + 50
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="20" y="26" font-size="16" font-weight="bold">corral autoscaling simulator: '
        f"bursty trace ({setup.storm} issues in one minute at {setup.storm_at:g} min, "
        f"max {setup.max}), seed 1</text>",
    ]
    size = {n: _steps([(t / 60, s) for t, s, _, _ in o.timeline]) for n, o in outcomes.items()}
    queue = {n: _steps([(t / 60, q) for t, _, q, _ in o.timeline]) for n, o in outcomes.items()}
    parts += _panel("Pool size (instances)", size, (70, 70, 780, 200), (start, end), "minutes")
    parts += _panel("Queue depth (items)", queue, (70, 340, 780, 200), (start, end), "minutes")
    parts += _bars(figures, (70, 610, 780, 170))
    legend_y = height - 30
    for k, name in enumerate(outcomes):
        x = 20 + k * 175
        label = name if name != "fixed-avg" else f"fixed at {figures[name].get('size')} (avg)"
        if name == "fixed":
            label = f"fixed at {setup.max}"
        elif name == "reactive-unstepped":
            label = "reactive, no step bound"
        parts.append(
            f'<rect x="{x}" y="{legend_y - 10}" width="14" height="10" fill="{_COLOURS[name]}"/>'
        )
        parts.append(f'<text x="{x + 20}" y="{legend_y}" font-size="12">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _bars(figures: dict[str, dict[str, Any]], box: tuple[float, float, float, float]) -> list[str]:
    left, top, width, height = box
    out = [
        f'<text x="{left}" y="{top - 8}" font-size="14" font-weight="bold">'
        "p95 queue wait (s) and instance-minutes, medians over seeds</text>"
    ]
    half = width / 2 - 20
    for col, (key, label) in enumerate(
        (("p95_wait_s", "p95 wait (s)"), ("instance_minutes", "instance-minutes"))
    ):
        x0 = left + col * (half + 40)
        top_value = _nice(max(f[key] for f in figures.values()) or 1.0)
        out.append(f'<text x="{x0}" y="{top + 12}" font-size="12">{label}</text>')
        bar_h = (height - 30) / len(figures)
        for row, (name, f) in enumerate(figures.items()):
            y = top + 22 + row * bar_h
            w = (half - 120) * f[key] / top_value
            out.append(
                f'<rect x="{x0 + 80}" y="{y:.1f}" width="{w:.1f}" height="{bar_h - 6:.1f}" '
                f'fill="{_COLOURS[name]}"/>'
            )
            out.append(
                f'<text x="{x0 + 74}" y="{y + bar_h / 2:.1f}" font-size="11" '
                f'text-anchor="end">{_short(name)}</text>'
            )
            out.append(
                f'<text x="{x0 + 86 + w:.1f}" y="{y + bar_h / 2:.1f}" '
                f'font-size="11">{f[key]:g}</text>'
            )
    return out


# --------------------------------------------------------------------------- main


def medians(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for policy in per_seed[0]:
        out[policy] = {
            key: round(median(float(s[policy][key]) for s in per_seed), 1)
            for key in per_seed[0][policy]
        }
    return out


def verdict(figures: dict[str, dict[str, float]]) -> dict[str, Any]:
    reactive, predictive, fixed_avg = (
        figures["reactive"],
        figures["predictive"],
        figures["fixed-avg"],
    )
    lower = 1 - predictive["p95_wait_s"] / reactive["p95_wait_s"] if reactive["p95_wait_s"] else 0.0
    return {
        "predictive_p95_lower_than_reactive": round(lower, 3),
        "predictive_instance_minutes_ratio": round(
            predictive["instance_minutes"] / reactive["instance_minutes"], 3
        ),
        "target_p95_30pct_lower": lower >= 0.30,
        "target_no_more_instance_minutes": predictive["instance_minutes"]
        <= reactive["instance_minutes"],
        "both_beat_fixed_avg_p95": max(reactive["p95_wait_s"], predictive["p95_wait_s"])
        < fixed_avg["p95_wait_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--traces", default=",".join(TRACES))
    parser.add_argument("--trace", type=Path, help="a recorded trace: CSV of arrival times (s)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--svg", type=Path, help="draw the bursty trace's first seed here")
    parser.add_argument("--out", type=Path, help="the results directory (default bench/results)")
    defaults = Setup()
    numbers = (
        *("min", "max", "slots", "cold_start", "warm_start", "duration_median"),
        *("duration_sigma", "tick", "hours", "steady_rate", "base_rate", "storm", "storm_at"),
    )
    for name in numbers:
        kind = int if name in ("min", "max", "slots", "storm") else float
        parser.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=getattr(defaults, name)
        )
    parser.add_argument("--durations", choices=("lognormal", "pareto"), default="lognormal")
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--stabilization", type=float, default=300.0)
    args = parser.parse_args(argv)
    setup = replace(
        defaults,
        **{k: getattr(args, k) for k in asdict(defaults) if k != "settings" and hasattr(args, k)},
        settings={"target": args.target, "stabilization": args.stabilization},
    )
    traces: list[str] = [t for t in args.traces.split(",") if t]
    if args.trace is not None:
        traces.append(f"file:{args.trace}")
    result = Result("autoscale", params=asdict(setup) | {"seeds": args.seeds, "traces": traces})
    table: list[list[Any]] = []
    for trace in traces:
        per_seed = []
        for seed in range(1, args.seeds + 1):
            arrivals = (
                read_trace(Path(trace[5:]))
                if trace.startswith("file:")
                else make_trace(trace, setup, seed)
            )
            figures, outcomes = run_trace(arrivals, setup, seed)
            per_seed.append(figures)
            result.runs.append({"trace": trace, "seed": seed, "figures": figures})
            if trace == "bursty" and seed == 1 and args.svg is not None:
                first_outcomes = outcomes
        summary = medians(per_seed)
        result.figures[trace] = {"policies": summary, "verdict": verdict(summary)}
        for policy, f in summary.items():
            name = f"fixed at {setup.max}" if policy == "fixed" else policy
            if policy == "fixed-avg":
                name = f"fixed at avg ({f['size']:g})"
            table.append(
                [
                    trace,
                    name,
                    f["p50_wait_s"],
                    f["p95_wait_s"],
                    f["instance_minutes"],
                    f["avg_pool"],
                    f["max_pool"],
                ]
            )
    print_table(
        f"Autoscaling policies, medians over {args.seeds} seeds",
        ["trace", "policy", "p50 wait s", "p95 wait s", "instance-min", "avg pool", "max pool"],
        table,
    )
    for trace in traces:
        print(f"{trace}: {json.dumps(result.figures[trace]['verdict'])}")
    if args.svg is not None and "bursty" in traces:
        args.svg.parent.mkdir(parents=True, exist_ok=True)
        args.svg.write_text(svg(first_outcomes, result.figures["bursty"]["policies"], setup))
        print(f"wrote {args.svg}")
    path = result.write(args.out)
    print(f"wrote {path}")
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
