"""What the dashboard's Scaling page reads from the store (gateway/dashboard/_scaling.py):

* **history**: ``pool_history``, the chart's 12 hours rebuilt from the decision log (read
  at most once a minute per gateway), with ``--decisions`` decisions over ``--agents``
  pooled agents in those hours (a decision every 2.5 s: holds once a minute and changes).
* **log page**: one page of the decision log (51 rows, below an id: the keyset).
* **last decisions**: each pool's last decision, one query per pool (every fragment).

Medians over ``--reps`` on SQLite and PostgreSQL.

    .venv/bin/python bench/scaling_page.py [--agents 20] [--decisions 14400] [--reps 7]
        [--stores sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import Result, fresh_schema, median, print_table

from corral.gateway.dashboard._scaling import HISTORY_HOURS, pool_history
from corral.store import AgentSpec, Store, open_store

INPUTS = {"queued": 3, "busy": 2, "arrivals": 1, "completions": 1, "recommended": 2}


async def _timed(reps: int, make: Callable[[], Awaitable[Any]]) -> float:
    took = []
    for _ in range(reps):
        start = time.perf_counter()
        await make()
        took.append(time.perf_counter() - start)
    return median(took) * 1000


async def _fill(store: Store, agents: int, decisions: int) -> None:
    specs = [AgentSpec(f"a{i}", scale=10, queue_size=100, pool_min=0) for i in range(agents)]
    await store.sync_project(specs, scale_cap=None, max_attempts=3, max_reruns=10)
    for spec in specs:
        await store.take_pool_lease(spec.agent, "bench", lease_seconds=3600)
    clock = store.clock
    try:
        for k in range(decisions):
            store.clock = lambda k=k: clock() - timedelta(seconds=(decisions - k) * 2.5)
            await store.set_pool_size(
                f"a{k % agents}",
                "bench",
                size=k % 5,
                previous=(k + 1) % 5,
                policy="reactive",
                reason="utilisation 0.50 within 0.2..0.7",
                inputs=INPUTS,
                record=True,
            )
    finally:
        store.clock = clock


async def _measure(url: str, agents: int, decisions: int, reps: int) -> dict[str, float]:
    async with await open_store(url) as store:
        await _fill(store, agents, decisions)
        now = datetime.now(UTC)
        first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HISTORY_HOURS - 1)
        newest = (await store.pool_decisions(limit=1))[0].id

        async def lasts() -> None:
            for i in range(agents):
                await store.pool_decisions(f"a{i}", limit=1)

        return {
            "history_ms": await _timed(reps, lambda: pool_history(store, first)),
            "log_page_ms": await _timed(
                reps, lambda: store.pool_decisions(limit=51, before=newest // 2)
            ),
            "last_decisions_ms": await _timed(reps, lasts),
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--decisions", type=int, default=14_400)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args()
    result = Result("scaling_page", vars(args))
    rows = []
    for dialect in args.stores.split(","):
        if dialect == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{Path(tmp) / 'state.db'}"
                figures = await _measure(url, args.agents, args.decisions, args.reps)
        else:
            async with fresh_schema() as url:
                figures = await _measure(url, args.agents, args.decisions, args.reps)
        result.figures[dialect] = figures
        rows.append([dialect, *(round(v, 1) for v in figures.values())])
    headers = ["store", "history ms", "log page ms", f"{args.agents} last decisions ms"]
    print_table("scaling page", headers, rows)
    result.write()


if __name__ == "__main__":
    asyncio.run(main())
