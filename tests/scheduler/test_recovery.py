"""kill -9 and several schedulers on one store, with real processes, on both stores."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.store import (
    ItemState,
    Lock,
    NewItem,
    QueueItem,
    Run,
    RunState,
    SchedulerInfo,
    TriggerKind,
    open_store,
)
from tests.scheduler.helpers import max_overlap, write_project
from tests.scheduler.procs import SchedulerProcess, alive, wait_until

pytestmark = pytest.mark.slow


async def _store_snapshot(url: str) -> tuple[list[Run], list[QueueItem]]:
    async with await open_store(url) as store:
        return await store.list_runs(limit=10_000), await store.list_items(limit=10_000)


def snapshot(url: str) -> tuple[list[Run], list[QueueItem]]:
    return asyncio.run(_store_snapshot(url))


async def _enqueue(url: str, agent: str, count: int) -> list[int]:
    async with await open_store(url) as store:
        ids = []
        for i in range(count):
            result = await store.enqueue(
                NewItem(agent=agent, trigger=TriggerKind.MANUAL, prompt=str(i))
            )
            ids.append(result.item.id)
        return ids


def enqueue(url: str, agent: str, count: int) -> list[int]:
    return asyncio.run(_enqueue(url, agent, count))


def test_kill_9_then_restart_recovers_every_item(tmp_path: Path, store_url: str) -> None:
    root = tmp_path / "p"
    go = tmp_path / "go"
    # Runs take a lock, then hang until `go` exists; the test creates it once the first
    # scheduler is dead.
    command = (
        'rlock "test://run/$CORRAL_RUN_ID" > /dev/null || exit 3; '
        f"while [ ! -e {go} ]; do sleep 0.05; done"
    )
    write_project(root, {"work": {"scale": 2, "command": command}})
    with SchedulerProcess(root, store_url, tmp_path / "a.log") as first:
        wait_until(lambda: _registered(store_url))
        ids = enqueue(store_url, "work", 4)
        wait_until(lambda: len(locks(store_url)) == 2)
        orphans = [r.pid for r in snapshot(store_url)[0] if r.pid]
        first.kill9()
    # The agents do not outlive their scheduler: its watchdog stops them (self-fencing).
    wait_until(lambda: not any(alive(pid) for pid in orphans), 10)
    assert len(locks(store_url)) == 2  # still held by runs whose scheduler died

    with SchedulerProcess(root, store_url, tmp_path / "b.log") as second:
        wait_until(lambda: "recovered 2 run(s) of dead scheduler" in second.output())
        for pid in orphans:  # the new scheduler killed what the dead one left behind
            wait_until(lambda pid=pid: not alive(pid), 10)
        lost_ids = {r.id for r in snapshot(store_url)[0] if r.state is RunState.LOST}
        assert not lost_ids & {lock.run_id for lock in locks(store_url)}  # released with them
        go.touch()
        wait_until(lambda: all(i.state is ItemState.DONE for i in snapshot(store_url)[1]), 60)
        assert second.stop() == 0
    runs, items = snapshot(store_url)
    assert sorted(i.id for i in items) == sorted(ids)
    lost = [r for r in runs if r.state is RunState.LOST]
    assert len(lost) == 2
    assert all(r.error and "died" in r.error for r in lost)
    assert [r.state for r in runs if r.state is not RunState.LOST] == [RunState.SUCCEEDED] * 4
    assert sorted(i.attempts for i in items) == [1, 1, 2, 2]
    assert max_overlap(runs) <= 2
    assert locks(store_url) == []


def locks(url: str) -> list[Lock]:
    async def go() -> list[Lock]:
        async with await open_store(url) as store:
            return await store.list_locks()

    return asyncio.run(go())


def _registered(url: str) -> bool:
    async def go() -> bool:
        async with await open_store(url) as store:
            return bool(await store.list_schedulers(live_only=True))

    return asyncio.run(go())


def test_two_schedulers_never_double_dispatch_nor_exceed_caps(
    tmp_path: Path, store_url: str
) -> None:
    root = tmp_path / "p"
    write_project(
        root,
        {
            "a": {"scale": 1, "command": "sleep 0.05"},
            "b": {"scale": 2, "command": "sleep 0.05"},
            "c": {"scale": 3, "command": "sleep 0.05"},
        },
        "scale = 4\n",
    )
    with (
        SchedulerProcess(root, store_url, tmp_path / "a.log") as first,
        SchedulerProcess(root, store_url, tmp_path / "b.log") as second,
    ):
        wait_until(lambda: len(_live(store_url)) == 2)
        ids = [i for agent in "abc" for i in enqueue(store_url, agent, 15)]
        wait_until(lambda: all(i.state is ItemState.DONE for i in snapshot(store_url)[1]), 90)
        assert first.stop() == 0 and second.stop() == 0
    runs, items = snapshot(store_url)
    assert sorted(i.id for i in items) == sorted(ids)
    assert len(runs) == len(ids)  # one run per item: nothing dispatched twice
    assert sorted(r.item_id for r in runs) == sorted(ids)
    assert all(r.state is RunState.SUCCEEDED for r in runs)
    for agent, scale in {"a": 1, "b": 2, "c": 3}.items():
        assert max_overlap([r for r in runs if r.agent == agent]) <= scale
    assert max_overlap(runs) <= 4


def _live(url: str) -> list[SchedulerInfo]:
    async def go() -> list[SchedulerInfo]:
        async with await open_store(url) as store:
            return await store.list_schedulers(live_only=True)

    return asyncio.run(go())
