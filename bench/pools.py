"""What sizing pools costs the store: one autoscaler tick, and a claim bounded by a pool.

* **tick**: ``PoolSizer.tick`` on one pooled agent with queued items and live runs: the
  lease (one UPDATE), the observation (one read transaction of a few statements) and the
  decided size (one UPDATE, plus the decision row when it is recorded). Median over
  ``--ticks`` ticks; a scheduler ticks each pool it decides about once a second.
* **claim**: a batch claim of ``--batch`` items of an agent with a pool (the claim reads
  ``min(scale, pool_size)``) against the same claim of an agent with ``scale = N`` alone,
  interleaved, medians over ``--reps``.

    .venv/bin/python bench/pools.py [--ticks 200] [--reps 30] [--batch 32]
        [--stores sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import Result, fresh_store, median, print_table

from corral.autoscale import Settings
from corral.scheduler.pools import PoolSizer
from corral.store import AgentSpec, NewItem, Store, TriggerKind, open_store


async def _measure(url: str, ticks: int, reps: int, batch: int) -> dict[str, float]:
    async with await open_store(url) as store:
        big = 100_000
        specs = [
            AgentSpec("pooled", scale=big, queue_size=big, pool_min=big),
            AgentSpec("plain", scale=big, queue_size=big),
        ]
        await store.sync_project(specs, scale_cap=None, max_attempts=3, max_reruns=10)
        sizer = PoolSizer(store, lambda: "bench", lambda: None)  # type: ignore[arg-type,return-value]
        settings = Settings(min=0, max=big, policy="reactive", stabilization=300)
        for _ in range(20):
            await store.enqueue(NewItem("pooled", TriggerKind.MANUAL))
        await store.claim("bench", lease_seconds=600, limit=5)  # 5 live runs
        tick_s = []
        for _ in range(ticks):
            start = time.perf_counter()
            await sizer.tick("pooled", settings)
            tick_s.append(time.perf_counter() - start)
        # Claims: the pool kept at max so both agents may take the whole batch.
        await store.set_pool_size(
            "pooled",
            "bench",
            size=big,
            previous=0,
            policy="x",
            reason="x",
            inputs={},
            record=False,
        )
        await store.claim("bench", lease_seconds=600, limit=1000)  # the rest of the 20
        claims: dict[str, list[float]] = {"pooled": [], "plain": []}
        for _ in range(reps):
            for agent in ("pooled", "plain"):
                await _fill(store, agent, batch)
                start = time.perf_counter()
                got = await store.claim("bench", lease_seconds=600, limit=batch)
                claims[agent].append(time.perf_counter() - start)
                assert len(got) == batch and {c.run.agent for c in got} == {agent}, agent
    return {
        "tick_ms": median(tick_s) * 1000,
        "claim_pooled_ms": median(claims["pooled"]) * 1000,
        "claim_plain_ms": median(claims["plain"]) * 1000,
    }


async def _fill(store: Store, agent: str, count: int) -> None:
    for _ in range(count):
        await store.enqueue(NewItem(agent, TriggerKind.MANUAL))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args()
    result = Result("pools", vars(args))
    rows = []
    for dialect in args.stores.split(","):
        async with fresh_store(dialect) as url:
            figures = await _measure(url, args.ticks, args.reps, args.batch)
        result.figures[dialect] = figures
        rows.append([dialect, *(round(v, 3) for v in figures.values())])
    print_table("pools", ["store", "tick ms", "claim (pool) ms", "claim (scale) ms"], rows)
    result.write()


if __name__ == "__main__":
    asyncio.run(main())
