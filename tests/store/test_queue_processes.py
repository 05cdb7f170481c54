"""Several scheduler processes on one queue, on SQLite and PostgreSQL: caps hold across
processes, every item is done exactly once, and a killed process loses nothing."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from corral.store import AgentSpec, ItemState, NewItem, Run, RunState, Store, TriggerKind
from corral.store._time import utc_now
from tests.store._processes import go, reap, result_of, run_together, spawn

WORKER = Path(__file__).with_name("_queue_worker.py")
SCALES = {"a": 1, "b": 2, "c": 3}
CAP = 4
ITEMS = 300
PROCESSES = 4

pytestmark = pytest.mark.slow


async def run_schedulers(url: str, count: int, slots: int) -> list[dict[str, Any]]:
    procs = [await spawn(WORKER, "schedule", url, slots) for _ in range(count)]
    return await run_together(procs)


async def setup(store: Store, *, cap: int | None) -> None:
    specs = [AgentSpec(name, scale, 1000) for name, scale in SCALES.items()]
    await store.sync_project(specs, scale_cap=cap, max_attempts=3, max_reruns=0)


def peak_overlaps(runs: list[Run]) -> tuple[Counter[str], int]:
    """The most runs of each agent, and of all agents, live at one instant (claim to end)."""
    events = []
    for run in runs:
        assert run.ended_at is not None
        events += [(run.created_at, 1, run.agent), (run.ended_at, -1, run.agent)]
    events.sort(key=lambda event: (event[0], event[1]))  # an end before a start at a tie
    live: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    total_peak = 0
    for _, step, agent in events:
        live[agent] += step
        peak[agent] = max(peak[agent], live[agent])
        total_peak = max(total_peak, sum(live.values()))
    return peak, total_peak


async def test_schedulers_share_a_queue_within_the_caps(store: Store, store_url: str) -> None:
    await setup(store, cap=CAP)
    for n in range(ITEMS):
        await store.enqueue(NewItem(agent="abc"[n % 3], trigger=TriggerKind.WEBHOOK))

    results = await run_schedulers(store_url, PROCESSES, slots=3)

    done = [entry for result in results for entry in result["done"]]
    assert not [entry for entry in done if entry.get("stale")]
    assert len(done) == ITEMS
    assert len({(entry["item"], entry["attempt"]) for entry in done}) == ITEMS
    assert len({entry["fence"] for entry in done}) == ITEMS
    items = await store.list_items(limit=ITEMS + 1)
    assert len(items) == ITEMS and {item.state for item in items} == {ItemState.DONE}
    runs = await store.list_runs(limit=ITEMS + 1)
    assert len(runs) == ITEMS and {run.state for run in runs} == {RunState.SUCCEEDED}
    assert sorted(run.item_id or 0 for run in runs) == sorted(item.id for item in items)
    assert len({run.owner for run in runs}) > 1  # the work was shared
    peak, total_peak = peak_overlaps(runs)
    assert all(peak[agent] <= scale for agent, scale in SCALES.items()), peak
    assert total_peak <= CAP
    assert total_peak == CAP  # the cap was reached, so it was tested


async def test_a_killed_scheduler_loses_nothing(store: Store, store_url: str) -> None:
    await setup(store, cap=None)
    for n in range(9):
        await store.enqueue(NewItem(agent="bc"[n % 2], trigger=TriggerKind.SCHEDULE))

    victim = await spawn(WORKER, "hold", store_url, 4)
    try:
        go(victim)
        held = (await result_of(victim))["held"]
        victim.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(victim.wait(), 30) == -signal.SIGKILL
    finally:
        await reap([victim])
    assert len(held) == 4
    assert await store.recover_lapsed() == []  # the leases are still good

    store.clock = lambda: utc_now() + timedelta(seconds=31)  # past the 30 s lease
    recovered = await store.recover_lapsed()
    store.clock = utc_now
    assert sorted(entry.item.id for entry in recovered) == sorted(held)
    assert {entry.item.state for entry in recovered} == {ItemState.QUEUED}
    assert all(entry.run is not None and entry.run.state is RunState.LOST for entry in recovered)

    [result] = await run_schedulers(store_url, 1, slots=3)

    assert sorted(entry["item"] for entry in result["done"] if entry["attempt"] == 2) == sorted(
        held
    )
    items = await store.list_items()
    assert len(items) == 9 and {item.state for item in items} == {ItemState.DONE}
    runs = await store.list_runs(limit=100)
    assert Counter(run.state for run in runs) == {RunState.SUCCEEDED: 9, RunState.LOST: 4}
    for item_id in held:
        attempts = sorted((r.attempt, r.state) for r in runs if r.item_id == item_id)
        assert attempts == [(1, RunState.LOST), (2, RunState.SUCCEEDED)]


async def test_racing_intakes_of_one_key_answer_duplicate(store: Store, store_url: str) -> None:
    """Two processes enqueue the same dedupe keys at once: each key is queued once, and
    the loser of every race answers duplicate (the winner's item), never an error."""
    await setup(store, cap=None)
    keys = 150
    procs = [await spawn(WORKER, "intake", store_url, keys) for _ in range(2)]
    results = await run_together(procs)

    by_key: dict[int, list[dict[str, Any]]] = {}
    for result in results:
        for answer in result["answers"]:
            by_key.setdefault(answer["key"], []).append(answer)
    assert len(by_key) == keys
    for answers in by_key.values():
        assert sorted(a["duplicate"] for a in answers) == [False, True], answers
        assert len({a["item"] for a in answers}) == 1, answers
    items = await store.list_items(limit=2 * keys)
    assert len(items) == keys and {item.state for item in items} == {ItemState.QUEUED}
    [state] = [s for s in await store.agent_states() if s.agent == "a"]
    assert state.queued == keys
