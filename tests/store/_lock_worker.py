"""A lock-hammering store client run as a separate process by test_locks_processes.py.

    python _lock_worker.py URL RUNS SECONDS KEYS

Creates RUNS live runs, prints "ready", waits for "go" on stdin, then for SECONDS each run
repeatedly tries a random one of KEYS keys, holds a granted lock briefly and releases it.
Prints one JSON line: every hold as (key, token, granted_at, released_at) in ISO text,
where granted_at is the store's acquired_at and released_at is the store clock read just
before the release was asked for (so the true hold interval contains this one), plus the
number of refusals.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

from corral.store import LockGrant, NewRun, Store, TriggerKind, open_store


async def hammer(store: Store, run_id: str, keys: int, until: float) -> dict[str, Any]:
    holds: list[list[Any]] = []
    refused = 0
    while time.monotonic() < until:
        key = f"key-{random.randrange(keys)}"
        got = await store.acquire_lock(key, run_id, ttl_seconds=60.0)
        if not isinstance(got, LockGrant):
            refused += 1
            await asyncio.sleep(random.uniform(0, 0.002))
            continue
        assert not got.refreshed
        await asyncio.sleep(random.uniform(0, 0.003))
        released_at = store.now()
        if not await store.release_lock(key, run_id):
            raise SystemExit(f"run {run_id} lost {key}")
        holds.append([key, got.token, got.acquired_at.isoformat(), released_at.isoformat()])
    return {"holds": holds, "refused": refused}


async def main(url: str, runs: int, seconds: float, keys: int) -> None:
    async with await open_store(url, migrate=False) as store:
        ids = [
            (await store.create_run(NewRun(agent="w", trigger=TriggerKind.MANUAL))).id
            for _ in range(runs)
        ]
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("expected go")
        until = time.monotonic() + seconds
        results = await asyncio.gather(*(hammer(store, i, keys, until) for i in ids))
        holds = [hold for result in results for hold in result["holds"]]
        refused = sum(result["refused"] for result in results)
        print(json.dumps({"holds": holds, "refused": refused}), flush=True)


if __name__ == "__main__":
    url, runs, seconds, keys = sys.argv[1:]
    asyncio.run(main(url, int(runs), float(seconds), int(keys)))
