"""Several processes on one store at once, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from corral.store import NewRun, RunState, Store, TriggerKind, open_store

WORKER = Path(__file__).with_name("_worker.py")
PROCESSES = 4
RUNS_EACH = 50


async def run_workers(mode: str, url: str, args: list[str]) -> list[dict[str, Any]]:
    """Start one worker per entry of ``args``, release them together, collect their JSON."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            mode,
            url,
            *([arg] if arg else []),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for arg in args
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            assert line == b"ready\n", line
        outputs = await asyncio.gather(*(proc.communicate(b"go\n") for proc in procs))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert [proc.returncode for proc in procs] == [0] * len(procs)
    return [json.loads(stdout.decode().strip().splitlines()[-1]) for stdout, _ in outputs]


async def test_processes_creating_and_finishing_runs(store: Store, store_url: str) -> None:
    results = await run_workers("churn", store_url, [str(RUNS_EACH)] * PROCESSES)

    ids = [run_id for result in results for run_id in result["ids"]]
    assert len(ids) == len(set(ids)) == PROCESSES * RUNS_EACH
    assert [result["refused"] for result in results] == [RUNS_EACH] * PROCESSES
    assert await store.count_runs() == PROCESSES * RUNS_EACH
    runs = await store.list_runs(limit=PROCESSES * RUNS_EACH + 1)
    assert {run.id for run in runs} == set(ids)
    assert all(run.state is RunState.SUCCEEDED and run.exit_code == 0 for run in runs)
    assert all(run.ended_at is not None for run in runs)


async def test_processes_racing_to_finish_one_run(store: Store, store_url: str) -> None:
    run = await store.create_run(NewRun(agent="contested", trigger=TriggerKind.MANUAL))
    await store.mark_run_running(run.id, pid=None, host=None)

    results = await run_workers("finish", store_url, [run.id] * PROCESSES)

    winners = [result for result in results if result["won"]]
    assert len(winners) == 1
    losers = [result for result in results if not result["won"]]
    assert all("already ended as killed" in loser["error"] for loser in losers)
    final = await store.get_run(run.id)
    assert final is not None and final.state is RunState.KILLED
    assert final.exit_code == winners[0]["pid"]


async def test_processes_migrating_a_fresh_database_at_once(store_url: str) -> None:
    results = await run_workers("migrate", store_url, [""] * PROCESSES)

    async with await open_store(store_url, migrate=False) as store:
        status = await store.migration_status()
    everything = [m.version for m in status.applied]
    assert status.up_to_date and everything
    assert Counter(tuple(result["applied"]) for result in results) == Counter(
        {tuple(everything): 1, (): PROCESSES - 1}
    )
    assert {result["current"] for result in results} == {status.latest}
