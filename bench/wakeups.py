"""Wake-ups across processes: an item queued by one process, claimed by a scheduler in another.

One real ``corral start --headless`` (default options: dispatch poll 0.2 s) on a fresh
store; this process enqueues straight into the store (as another scheduler's gateway,
a cron tick in another process, or ``corral run`` elsewhere does) at ``--rate`` items/s,
open loop. Per item, ``claimed_at - enqueued_at`` as the store recorded them: the
intake's commit, the wake-up (a notice on PostgreSQL, the poll otherwise) and the claim
transaction. Without notices it is about half the poll on average; with them, a few ms.

``--trigger-cost``: what migration 0014's triggers add to intake and claims on
PostgreSQL, measured in one process on a fresh schema, alternating rounds with the
notice triggers enabled and disabled (``ALTER TABLE … DISABLE TRIGGER``), so that a busy
machine's drift hits both alike: sequential ``store.enqueue`` calls (one transaction and
one notice each), then claiming them in batches of 64. Medians of the rounds, and the
ratio.

``.venv/bin/python bench/wakeups.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from _common import DEFAULT_PG_DSN, ForeignCpu, Result, fresh_schema, summarize_ms

from corral.store import AgentSpec, NewItem, TriggerKind, open_store
from scheduler import TRUE_ARGV, fleet, items_and_runs, wait_settled, warm_up

AGENT = "bench"


async def measure(backend: str, dsn: str, rate: float, duration: float) -> dict[str, Any]:
    foreign = ForeignCpu()
    async with fleet(backend, dsn, schedulers=1, scale=16, command=TRUE_ARGV) as f:
        await warm_up(f, 16)
        foreign.start()
        loop = asyncio.get_running_loop()
        n = max(1, round(rate * duration))
        ids: list[int] = []
        start = loop.time() + 0.05
        for i in range(n):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            result = await f.store.enqueue(NewItem(AGENT, TriggerKind.WEBHOOK))
            ids.append(result.item.id)
        await wait_settled(f.store, 120.0)
        pairs = await items_and_runs(f.store, ids)
        waits = [(i.claimed_at - i.enqueued_at).total_seconds() for i, _ in pairs]
        return {
            "backend": backend,
            "enqueued_to_claimed": summarize_ms(waits),
            "mean_ms": round(statistics.fmean(waits) * 1000, 2),
            "foreign_cpu_percent": foreign.stop(own_pids=f.pids),
        }


_NOTICE_TRIGGERS = {
    "corral_queue": ("corral_queue_inserted", "corral_queue_updated"),
}


async def trigger_cost(dsn: str, items: int, rounds: int) -> dict[str, Any]:
    """Per-enqueue and per-claimed-item microseconds, notice triggers on and off."""
    import psycopg

    timings: dict[str, dict[str, list[float]]] = {
        "on": {"enqueue_us": [], "claim_us": []},
        "off": {"enqueue_us": [], "claim_us": []},
    }
    async with fresh_schema(dsn, prefix="bench_notify") as url:
        store = await open_store(url)
        admin = await psycopg.AsyncConnection.connect(url, autocommit=True)
        try:
            await store.sync_project(
                [AgentSpec(AGENT, 1_000_000, 1_000_000)],
                scale_cap=None,
                max_attempts=3,
                max_reruns=10,
            )
            for i in range(rounds * 2):
                mode = "on" if i % 2 == 0 else "off"
                verb = "ENABLE" if mode == "on" else "DISABLE"
                for table, triggers in _NOTICE_TRIGGERS.items():
                    for trigger in triggers:
                        await admin.execute(f"ALTER TABLE {table} {verb} TRIGGER {trigger}")  # type: ignore[arg-type]
                t0 = time.perf_counter()
                for _ in range(items):
                    await store.enqueue(NewItem(AGENT, TriggerKind.WEBHOOK))
                t1 = time.perf_counter()
                claimed = 0
                while claimed < items:
                    got = await store.claim("bench", lease_seconds=600, limit=64)
                    if not got:
                        break
                    claimed += len(got)
                t2 = time.perf_counter()
                timings[mode]["enqueue_us"].append((t1 - t0) / items * 1e6)
                timings[mode]["claim_us"].append((t2 - t1) / max(claimed, 1) * 1e6)
        finally:
            await admin.close()
            await store.close()
    out: dict[str, Any] = {}
    for mode, figures in timings.items():
        for key, values in figures.items():
            out[f"{key}_{mode}"] = round(statistics.median(values), 1)
    for key in ("enqueue_us", "claim_us"):
        out[f"{key}_ratio"] = round(out[f"{key}_on"] / out[f"{key}_off"], 3)
    return out


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", default=DEFAULT_PG_DSN, help="base PostgreSQL DSN")
    p.add_argument("--backends", default="pg,sqlite", help="comma-separated: sqlite, pg")
    p.add_argument("--rate", type=float, default=10.0, help="offered rate, items/s")
    p.add_argument("--duration", type=float, default=10.0, help="seconds")
    p.add_argument("--runs", type=int, default=3, help="repetitions (medians reported)")
    p.add_argument("--quick", action="store_true", help="one repetition of 5 s")
    p.add_argument(
        "--trigger-cost",
        action="store_true",
        help="instead: what the notice triggers cost intake and claims (PostgreSQL)",
    )
    p.add_argument("--items", type=int, default=500, help="--trigger-cost: items per round")
    p.add_argument("--rounds", type=int, default=5, help="--trigger-cost: rounds per mode")
    args = p.parse_args()
    if args.quick:
        args.runs, args.duration = 1, 5.0
    result = Result("wakeups", params=vars(args))
    if args.trigger_cost:
        fig = await trigger_cost(args.dsn, args.items, args.rounds)
        result.figures["trigger_cost"] = fig
        print(
            f"enqueue {fig['enqueue_us_on']} us with the notice triggers, "
            f"{fig['enqueue_us_off']} without (x{fig['enqueue_us_ratio']}); claim per item "
            f"{fig['claim_us_on']} / {fig['claim_us_off']} us (x{fig['claim_us_ratio']})"
        )
        print(f"wrote {result.write()}")
        return
    for backend in args.backends.split(","):
        reps = []
        for rep in range(args.runs):
            t0 = time.monotonic()
            fig = await measure(backend, args.dsn, args.rate, args.duration)
            reps.append(fig)
            result.runs.append(fig)
            s = fig["enqueued_to_claimed"]
            print(
                f"{backend} rep {rep + 1}: enqueued->claimed p50 {s['p50_ms']} "
                f"p99 {s['p99_ms']} max {s['max_ms']} mean {fig['mean_ms']} ms "
                f"(others used {fig['foreign_cpu_percent']}% CPU; {time.monotonic() - t0:.0f} s)"
            )
        result.figures[backend] = {
            key: statistics.median(r["enqueued_to_claimed"][key] for r in reps)
            for key in ("p50_ms", "p99_ms", "max_ms")
        }
    print(f"wrote {result.write()}")


if __name__ == "__main__":
    asyncio.run(main())
