"""History growth: does work stay flat as finished runs pile up?

For each store (SQLite, PostgreSQL) and each history size (default 0, 10k, 100k finished
runs, each with its finished queue item, over 1,000 agents, seeded with bulk SQL):

* prune: a retention pass deleting the oldest 1 % of the history; the longest single
  store transaction of the pass (how long it held the writer) and the whole pass;
* probe: the longest wait of a one-row write from a second connection during the pass
  (what another writer, a claim say, felt);
* claim: enqueue -> claimed latency for one agent, p50 over ``--claims`` items;
* status: the store reads of the status document and the dashboard feed (agent states,
  live runs, open items, set-aside items, today's spend), p50 over ``--reads``.

Run against another checkout (e.g. the code before a change) with
``PYTHONPATH=<checkout>/src``: a store without batched retention prunes in one
transaction, and the figures show it.

    .venv/bin/python bench/history_growth.py [--sizes 0,10000,100000] [--stores sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import DEFAULT_PG_DSN, Result, fresh_schema, percentile, print_table

AGENTS = 1_000
START = datetime(2026, 1, 1, tzinfo=UTC)


def _sqlite_seed(n: int) -> str:
    at = "strftime('%Y-%m-%dT%H:%M:%S.000000+00:00', '2026-01-01', '+' || {} || ' minutes')"
    history = ""
    if n:
        history = f"""
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})
INSERT INTO corral_queue (id, agent, trigger_kind, state, enqueued_at, claimed_at,
                          finished_at, attempts, max_attempts, fence)
SELECT i, printf('agent-%04d', i % {AGENTS}), 'schedule', 'done', {at.format("i")},
       {at.format("i")}, {at.format("(i + 1)")}, 1, 3, i FROM s;
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})
INSERT INTO corral_runs (id, agent, trigger_kind, state, created_at, started_at, ended_at,
                         item_id, fence, attempt)
SELECT printf('run-%06d', i), printf('agent-%04d', i % {AGENTS}), 'schedule', 'succeeded',
       {at.format("i")}, {at.format("i")}, {at.format("(i + 1)")}, i, i, 1 FROM s;
UPDATE corral_queue SET run_id = printf('run-%06d', id);
UPDATE corral_project SET fence_counter = {n};
"""
    return f"""
BEGIN;
WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {AGENTS - 1})
INSERT INTO corral_agents (agent, scale, queue_size, updated_at)
SELECT printf('agent-%04d', i), 2, 20, '2026-01-01T00:00:00.000000+00:00' FROM s;
{history}
COMMIT;
"""


def _pg_seed(n: int) -> str:
    at = "timestamptz '2026-01-01 00:00+00' + make_interval(mins => {})"
    agent = f"format('agent-%s', lpad((i % {AGENTS})::text, 4, '0'))"
    history = ""
    if n:
        history = f"""
INSERT INTO corral_queue (id, agent, trigger_kind, state, enqueued_at, claimed_at,
                          finished_at, attempts, max_attempts, fence)
OVERRIDING SYSTEM VALUE
SELECT i, {agent}, 'schedule', 'done', {at.format("i")}, {at.format("i")},
       {at.format("i + 1")}, 1, 3, i FROM generate_series(1, {n}) i;
INSERT INTO corral_runs (id, agent, trigger_kind, state, created_at, started_at, ended_at,
                         item_id, fence, attempt)
SELECT format('run-%s', lpad(i::text, 6, '0')), {agent}, 'schedule', 'succeeded',
       {at.format("i")}, {at.format("i")}, {at.format("i + 1")}, i, i, 1
FROM generate_series(1, {n}) i;
UPDATE corral_queue SET run_id = format('run-%s', lpad(id::text, 6, '0'));
SELECT setval(pg_get_serial_sequence('corral_queue', 'id'), {n});
UPDATE corral_project SET fence_counter = {n};
"""
    return f"""
INSERT INTO corral_agents (agent, scale, queue_size, updated_at)
SELECT format('agent-%s', lpad(i::text, 4, '0')), 2, 20, now()
FROM generate_series(0, {AGENTS - 1}) i;
{history}
ANALYZE;
"""


@contextlib.asynccontextmanager
async def _store_url(kind: str, dsn: str) -> AsyncIterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="corral-history-") as folder:
            yield f"sqlite:///{Path(folder) / 'state.db'}"
    else:
        async with fresh_schema(dsn, prefix="history") as url:
            yield url


async def _seed(kind: str, url: str, n: int) -> None:
    from corral.store import open_store

    async with await open_store(url):
        pass
    if kind == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.executescript(_sqlite_seed(n))
        conn.close()
        return
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(_pg_seed(n).encode())


def _time_transactions(store: Any) -> list[float]:
    """Record how long each of ``store``'s transactions lasts (bench only)."""
    held: list[float] = []
    original = store.transaction

    @contextlib.asynccontextmanager
    async def timed(*, write: bool = True) -> AsyncIterator[Any]:
        began = time.perf_counter()
        async with original(write=write) as tx:
            yield tx
        held.append(time.perf_counter() - began)

    store.transaction = timed
    return held


async def _probe(store: Any, run_id: str, stop: asyncio.Event, waits: list[float]) -> None:
    from corral.errors import StoreBusy

    while not stop.is_set():
        began = time.perf_counter()
        # A refusal after the busy timeout is a wait too: the longest, recorded as such.
        with contextlib.suppress(StoreBusy):
            await store.set_run_status(run_id, "probe")
        waits.append(time.perf_counter() - began)
        await asyncio.sleep(0.005)


async def _prune(url: str, n: int) -> dict[str, float]:
    from corral.store import NewRun, TriggerKind, open_store

    async with await open_store(url) as store, await open_store(url) as other:
        probe_run = await other.create_run(NewRun(agent="agent-0001", trigger=TriggerKind.MANUAL))
        held = _time_transactions(store)
        cutoff = START + timedelta(minutes=n // 100 + 1)
        waits: list[float] = []
        stop = asyncio.Event()
        prober = asyncio.create_task(_probe(other, probe_run.id, stop, waits))
        await asyncio.sleep(0.05)
        began = time.perf_counter()
        runs = await store.prune_runs(cutoff)
        items = await store.prune_items(cutoff) if hasattr(store, "prune_items") else 0
        total = time.perf_counter() - began
        stop.set()
        await prober
    return {
        "pruned_runs": runs,
        "pruned_items": items,
        "prune_max_hold_ms": max(held, default=0.0) * 1000,
        "prune_total_ms": total * 1000,
        "prune_transactions": len(held),
        "probe_max_wait_ms": max(waits, default=0.0) * 1000,
    }


async def _claims(url: str, count: int) -> list[float]:
    from corral.store import NewItem, RunState, TriggerKind, open_store

    latencies = []
    async with await open_store(url) as store:
        for _ in range(count):
            began = time.perf_counter()
            await store.enqueue(NewItem(agent="agent-0002", trigger=TriggerKind.MANUAL))
            claims = await store.claim("bench", lease_seconds=60, limit=1)
            latencies.append(time.perf_counter() - began)
            for claim in claims:
                fence = claim.item.fence or 0
                await store.finalize(
                    claim.run.id, fence=fence, state=RunState.SUCCEEDED, exit_code=0
                )
    return latencies


async def _status_reads(url: str, count: int) -> list[float]:
    from corral.store import ItemState, RunState, open_store

    latencies = []
    async with await open_store(url) as store:
        for _ in range(count):
            began = time.perf_counter()
            await store.agent_states()
            await store.list_runs(states=[RunState.STARTING, RunState.RUNNING], limit=1000)
            await store.list_items(states=[ItemState.DROPPED, ItemState.REJECTED], limit=20)
            await store.list_items(states=[ItemState.QUEUED, ItemState.CLAIMED], limit=200)
            await store.usage_by_day(days=1)
            latencies.append(time.perf_counter() - began)
    return latencies


async def measure(kind: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    async with _store_url(kind, args.dsn) as url:
        await _seed(kind, url, n)
        claims = await _claims(url, args.claims)
        reads = await _status_reads(url, args.reads)
        figures: dict[str, Any] = {"store": kind, "history": n}
        figures["claim_p50_ms"] = percentile(claims, 50) * 1000
        figures["status_p50_ms"] = percentile(reads, 50) * 1000
        figures.update(await _prune(url, n))
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,10000,100000")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--claims", type=int, default=50)
    parser.add_argument("--reads", type=int, default=30)
    parser.add_argument("--dsn", default=DEFAULT_PG_DSN)
    parser.add_argument("--label", default="", help="a note for the JSON (e.g. 'before')")
    args = parser.parse_args()
    result = Result("history_growth", params=vars(args))
    rows = []
    for kind in args.stores.split(","):
        for n in (int(size) for size in args.sizes.split(",")):
            figures = await measure(kind, n, args)
            result.runs.append(figures)
            rows.append(
                [
                    kind,
                    n,
                    figures["claim_p50_ms"],
                    figures["status_p50_ms"],
                    figures["prune_max_hold_ms"],
                    figures["probe_max_wait_ms"],
                    figures["prune_total_ms"],
                    figures["prune_transactions"],
                ]
            )
    headers = [
        "store",
        "history",
        "claim p50 ms",
        "status p50 ms",
        "prune max hold ms",
        "probe max wait ms",
        "prune total ms",
        "prune txns",
    ]
    print_table(f"history growth {args.label}".strip(), headers, rows)
    result.figures = {"rows": result.runs}
    print(f"wrote {result.write()}")


if __name__ == "__main__":
    asyncio.run(main())
