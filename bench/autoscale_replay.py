"""The autoscaling simulator's traces replayed against a real ``corral start``.

bench/autoscale.py runs the pool policies in a discrete-event simulation; this replays
the same trace (its generators, imported) against the real scheduler, time compressed
by ``--compression`` (10: one minute of the trace in 6 s), to see whether the
simulator's ranking of the policies holds.

For each policy (``predictive``, ``reactive``, then ``fixed-avg``: a fixed pool of the
real predictive pool's average size, rounded up), a fresh project (SQLite, or a fresh
PostgreSQL database with ``--store postgresql``) with one agent whose ``[scale]`` table
uses that policy, with ``window``, ``stabilization`` and ``startup`` divided by the
compression; its run is a real process (``sh``, then ``sleep``) that sleeps the item's
duration, drawn as the simulator draws it, divided by the compression. A real ``corral
start --headless`` takes the trace's arrivals as ``POST /control/runs`` at their
(compressed) times, open loop; once every run has ended the figures come from the store:

* queue wait: the run's claim (``run.created_at``) minus the item's ``enqueued_at``,
  p50 and p95, multiplied back by the compression (trace seconds);
* instance-minutes: the pool's size integrated over time, as the simulator defines it:
  the size from the recorded pool decisions (every change is recorded), from the first
  arrival to the later of the trace's end and the last run's end, in trace minutes; and
  busy instance-minutes (the runs' claim-to-end intervals) beside it.

The simulator runs the same trace, durations and settings (its tick the scheduler's pool
tick, 1 s, times the compression; no cold or warm start: the scheduler's instances are
slots, ready at once), and both are printed side by side with whether the ranking
(predictive < reactive < fixed on p95 wait) holds in each. The real decider also ticks
when work arrives (at most 0.2 s apart), so the simulator runs a second time with that
tick (``sim@0.2s``): the real figures should fall between the two.

    .venv/bin/python bench/autoscale_replay.py [--compression 10] [--store sqlite]
        [--traces bursty] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from _common import DEFAULT_PG_DSN, Result, percentile, print_table

from autoscale import TRACES, Setup, draw_durations, make_trace, settings_for, simulate
from corral.store import PoolDecision, Store, open_store
from scheduler import TOKEN, start_scheduler, state_url_for, stop_scheduler

AGENT = "replay"
POLICIES = ("predictive", "reactive", "fixed-avg")
#: The scheduler's pool tick (SchedulerOptions.pool_tick), in real seconds ...
POOL_TICK = 1.0
#: ... and the least gap between ticks when work arrives (PoolSizer.min_gap).
WAKE_GAP = 0.2
#: Each run sleeps as long as its prompt says ("sleep=N;", seconds).
RUN_SH = """t=$(sed -n 's/.*sleep=\\([0-9.]*\\);.*/\\1/p' "$CORRAL_PROMPT_FILE" | head -n 1)
sleep "$t"
"""

#: The replay's world: smaller than bench/autoscale.py's default so that three real
#: runs of the bursty trace fit in about ten minutes at 10x.
REPLAY_SETUP = Setup(
    min=1,
    max=100,
    cold_start=0.0,
    warm_start=0.0,
    duration_median=60.0,
    duration_sigma=1.0,
    duration_cap=600.0,
    hours=0.3,
    steady_rate=2.0,
    base_rate=0.5,
    storm=100,
    storm_at=6.0,
)


@dataclass(frozen=True)
class Timing:
    """The decider's time settings in trace seconds; divided by the compression for the
    real scheduler."""

    stabilization: int = 300
    window: int = 300
    startup: int = 10

    def compressed(self, factor: float) -> dict[str, int]:
        out = {k: round(v / factor) for k, v in asdict(self).items()}
        if out["window"] < 15:
            raise SystemExit(
                f"--compression {factor:g} makes the predictive window {self.window} s "
                f"into {self.window / factor:g} s, under [scale] window's least (15 s): "
                f"use a compression of at most {self.window / 15:g}"
            )
        return out


def scale_table(policy: str, setup: Setup, timing: dict[str, int], size: int | None) -> str:
    if policy == "fixed-avg":
        assert size is not None
        return f'[scale]\npolicy = "fixed"\nmin = {size}\nmax = {size}\n'
    lines = [
        "[scale]",
        f'policy = "{policy}"',
        f"min = {setup.min}",
        f"max = {setup.max}",
        f"target = {setup.settings.get('target', 0.6)}",
        *(f"{k} = {v}" for k, v in timing.items()),
    ]
    return "\n".join(lines) + "\n"


def write_project(root: Path, state_url: str, scale: str) -> None:
    folder = root / "agents" / AGENT
    folder.mkdir(parents=True)
    (root / "config.toml").write_text(f'[state]\nurl = "{state_url}"\n')
    (folder / "SKILL.md").write_text(f"---\nname: {AGENT}\n---\nreplay\n")
    (folder / "config.toml").write_text(
        "timeout = 3600\nmaxWorkQueueSize = 100000\n"
        f"[harness]\ncommand = {json.dumps(['sh', '-c', RUN_SH])}\n" + scale
    )


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def pool_seconds(
    decisions: list[PoolDecision], initial: int, start: datetime, end: datetime
) -> float:
    """The pool's size integrated over [start, end] from its recorded decisions."""
    size, at, area = initial, start, 0.0
    for d in sorted(decisions, key=lambda d: d.decided_at):
        when = _aware(d.decided_at)
        if when <= start:
            size = d.desired
            continue
        if when >= end:
            break
        area += size * (when - at).total_seconds()
        size, at = d.desired, when
    return area + size * max((end - at).total_seconds(), 0.0)


async def _post_all(
    url: str, arrivals: list[float], durations: list[float], factor: float
) -> tuple[list[int], datetime]:
    """``POST /control/runs`` at each arrival's compressed time (open loop)."""
    loop = asyncio.get_running_loop()
    ids: list[int | None] = [None] * len(arrivals)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(headers=headers, timeout=60.0, limits=limits) as client:
        await client.get(f"{url}/health")

        async def one(index: int) -> None:
            prompt = f"sleep={durations[index] / factor:.3f};"
            r = await client.post(f"{url}/control/runs", json={"agent": AGENT, "prompt": prompt})
            r.raise_for_status()
            ids[index] = r.json()["item"]["id"]

        started = datetime.now(UTC)
        t0 = loop.time()
        tasks = []
        for index, t in enumerate(arrivals):
            delay = t0 + t / factor - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
    return [i for i in ids if i is not None], started


async def _wait_ended(store: Store, count: int, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for r in await store.list_runs(agent=AGENT, limit=count + 1000)]
        if len(runs) >= count and all(r.ended_at is not None for r in runs):
            return runs
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sum(r.ended_at is None for r in runs)} runs still going")
        await asyncio.sleep(0.5)


async def replay(
    backend: str,
    policy: str,
    arrivals: list[float],
    durations: list[float],
    setup: Setup,
    timing: Timing,
    factor: float,
    size: int | None,
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="corral-replay-"))
    try:
        async with state_url_for(backend, tmp, DEFAULT_PG_DSN) as state_url:
            root, home = tmp / "project", tmp / "home"
            home.mkdir()
            scale = scale_table(policy, setup, timing.compressed(factor), size)
            write_project(root, state_url, scale)
            sched = await start_scheduler(root, home, 0)
            try:
                async with await open_store(state_url) as store:
                    await asyncio.sleep(2 * POOL_TICK)  # the pool's first decision
                    initial = next(p.size for p in await store.pool_states() if p.agent == AGENT)
                    ids, started = await _post_all(sched.url, arrivals, durations, factor)
                    horizon = setup.hours * 3600 / factor
                    runs = await _wait_ended(store, len(ids), horizon + 900)
                    items = {
                        i.id: i for i in await store.list_items(agent=AGENT, limit=len(ids) + 1000)
                    }
                    decisions = await store.pool_decisions(AGENT, limit=1_000_000)
            finally:
                await stop_scheduler(sched)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    by_id = {r.id: r for r in runs}
    waits, busy = [], 0.0
    for item_id in ids:
        item = items[item_id]
        run = by_id[item.run_id]
        waits.append((_aware(run.created_at) - _aware(item.enqueued_at)).total_seconds() * factor)
        busy += (_aware(run.ended_at) - _aware(run.created_at)).total_seconds() * factor
    last_end = max(_aware(r.ended_at) for r in runs)
    end = max(last_end, started + timedelta(seconds=horizon))
    area = pool_seconds(decisions, initial, started, end) * factor
    span = (end - started).total_seconds() * factor
    failed = [r for r in runs if r.state.value != "succeeded"]
    if failed:
        print(f"  {len(failed)} runs failed; the first: {failed[0].error}", file=sys.stderr)
    return {
        "p50_wait_s": round(percentile(waits, 50), 1),
        "p95_wait_s": round(percentile(waits, 95), 1),
        "max_wait_s": round(max(waits), 1),
        "instance_minutes": round(area / 60, 1),
        "busy_instance_minutes": round(busy / 60, 1),
        "avg_pool": round(area / span, 2) if span else 0.0,
        "max_pool": max([initial, *(d.desired for d in decisions)]),
        "runs": len(waits),
        "failed_runs": len(failed),
        "decisions": len(decisions),
        "size": size,
    }


def simulated(
    arrivals: list[float], durations: list[float], setup: Setup, seed: int
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in ("predictive", "reactive"):
        out[name] = simulate(arrivals, durations, settings_for(name, setup), setup, seed).figures()
    size = max(1, math.ceil(out["predictive"]["avg_pool"]))
    fixed = settings_for("fixed-avg", setup, size)
    out["fixed-avg"] = simulate(arrivals, durations, fixed, setup, seed).figures() | {"size": size}
    return out


def ranking(figures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    order = sorted(POLICIES, key=lambda p: figures[p]["p95_wait_s"])
    p95 = {p: figures[p]["p95_wait_s"] for p in POLICIES}
    return {
        "order_by_p95": order,
        "holds": p95["predictive"] < p95["reactive"] < p95["fixed-avg"],
        "predictive_le_reactive_p95": p95["predictive"] <= p95["reactive"],
        "both_beat_fixed_avg_p95": max(p95["predictive"], p95["reactive"]) < p95["fixed-avg"],
    }


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--compression", type=float, default=10.0, help="trace s per real s")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--traces", default="bursty", help=f"of {','.join(TRACES)}")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hours", type=float, default=REPLAY_SETUP.hours)
    parser.add_argument("--storm", type=int, default=REPLAY_SETUP.storm)
    parser.add_argument("--storm-at", type=float, default=REPLAY_SETUP.storm_at)
    parser.add_argument("--max", type=int, default=REPLAY_SETUP.max)
    parser.add_argument("--duration-median", type=float, default=REPLAY_SETUP.duration_median)
    parser.add_argument("--stabilization", type=int, default=Timing.stabilization)
    parser.add_argument("--window", type=int, default=Timing.window)
    parser.add_argument("--startup", type=int, default=Timing.startup)
    parser.add_argument(
        "--sim-tick",
        type=float,
        default=POOL_TICK,
        help="the simulator's tick in real seconds (times the compression in trace seconds)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--out", type=Path, help="the results directory (default bench/results)")
    args = parser.parse_args(argv)
    factor = args.compression
    if not factor > 0:
        parser.error(f"--compression must be above 0; got {factor:g}")
    timing = Timing(args.stabilization, args.window, args.startup)
    timing.compressed(factor)  # refuses a window the [scale] table cannot hold
    traces = [t for t in args.traces.split(",") if t]
    for trace in traces:
        if trace not in TRACES:
            parser.error(f"--traces: unknown trace {trace!r}; choose from {', '.join(TRACES)}")
    setup = replace(
        REPLAY_SETUP,
        hours=args.hours,
        storm=args.storm,
        storm_at=args.storm_at,
        max=args.max,
        duration_median=args.duration_median,
        tick=args.sim_tick * factor,
        settings={"target": 0.6, **{k: float(v) for k, v in asdict(timing).items()}},
    )
    params = asdict(setup) | {"compression": factor, "store": args.store, "seed": args.seed}
    result = Result("autoscale_replay", params=params | {"traces": traces})
    rows: list[list[Any]] = []
    for trace in traces:
        arrivals = make_trace(trace, setup, args.seed)
        durations = draw_durations(len(arrivals), setup, args.seed)
        sim = simulated(arrivals, durations, setup, args.seed)
        # The real decider also ticks when work arrives, at most WAKE_GAP apart: the
        # simulator at that tick too, for the bound on how much its coarser tick costs.
        fast = replace(setup, tick=WAKE_GAP * factor)
        sim_fast = simulated(arrivals, durations, fast, args.seed)
        real: dict[str, dict[str, Any]] = {}
        for policy in POLICIES:
            size = None
            if policy == "fixed-avg":
                size = max(1, math.ceil(real["predictive"]["avg_pool"]))
            began = time.monotonic()
            real[policy] = await replay(
                args.store, policy, arrivals, durations, setup, timing, factor, size
            )
            real[policy]["wall_s"] = round(time.monotonic() - began, 1)
            print(f"{trace} {policy}: {json.dumps(real[policy])}", flush=True)
        result.figures[trace] = {
            "arrivals": len(arrivals),
            "simulated": sim,
            "simulated_wake_gap_tick": sim_fast,
            "real": real,
            "ranking": {
                "simulated": ranking(sim),
                "simulated_wake_gap_tick": ranking(sim_fast),
                "real": ranking(real),
            },
        }
        for policy in POLICIES:
            s, f, r = sim[policy], sim_fast[policy], real[policy]
            name = f"fixed at {r['size']} (sim {s['size']})" if policy == "fixed-avg" else policy
            rows.append(
                [
                    trace,
                    name,
                    s["p50_wait_s"],
                    r["p50_wait_s"],
                    s["p95_wait_s"],
                    f["p95_wait_s"],
                    r["p95_wait_s"],
                    s["instance_minutes"],
                    f["instance_minutes"],
                    r["instance_minutes"],
                    r["busy_instance_minutes"],
                ]
            )
    print_table(
        f"Simulated vs real `corral start` ({args.store}, {factor:g}x compressed; trace seconds)",
        [
            "trace",
            "policy",
            "p50 sim",
            "p50 real",
            "p95 sim",
            f"p95 sim@{WAKE_GAP:g}s",
            "p95 real",
            "inst-min sim",
            f"inst-min sim@{WAKE_GAP:g}s",
            "inst-min real",
            "busy-min real",
        ],
        rows,
    )
    for trace in traces:
        print(f"{trace}: ranking {json.dumps(result.figures[trace]['ranking'])}")
    path = result.write(args.out)
    print(f"wrote {path}")
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
