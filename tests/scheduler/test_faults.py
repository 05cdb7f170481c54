"""Store faults and full disks while runs end, on both stores, with real processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.scheduler.service import SchedulerOptions
from corral.store import ItemState, RunState, Store
from tests.processes import alive
from tests.scheduler.faults import StoreLockHolder, full_disk
from tests.scheduler.helpers import all_runs, wait_for, write_project
from tests.scheduler.test_scheduler import scheduler_for

FAST = SchedulerOptions(
    poll_interval=0.05, supervise_every=0.05, renew_every=1.0, drain_grace=5, kill_grace=1
)


async def _items(store: Store) -> dict[int, ItemState]:
    return {item.id: item.state for item in await store.list_items(limit=100)}


async def _all_done(store: Store, count: int) -> bool:
    states = await _items(store)
    return len(states) == count and all(s is ItemState.DONE for s in states.values())


@pytest.mark.slow
async def test_a_run_that_ends_while_the_store_is_locked_is_finalised(
    tmp_path: Path, store_url: str, store: Store
) -> None:
    """SQLite: another process holds the write lock for 14 s (past the busy timeout) as
    the run ends. PostgreSQL: its queue row is held FOR UPDATE and the backends blocked
    behind it are terminated. The run is finalised and the runs queued behind it start."""
    go = tmp_path / "go"
    command = f"while [ ! -e {go} ]; do sleep 0.05; done"
    project = write_project(tmp_path / "p", {"work": {"scale": 1, "command": command}})
    running = scheduler_for(project, store, FAST)
    async with running:
        first = (await running.submit("work")).item
        for _ in range(2):
            await running.submit("work")
        await wait_for(lambda: _running(store), timeout=15)
        sql = f"SELECT * FROM corral_queue WHERE id = {first.id} FOR UPDATE"
        holder = await asyncio.to_thread(StoreLockHolder, store_url, sql, 14, tmp_path)
        try:
            go.touch()  # the run ends while the lock is held
            if store_url.startswith("postgresql"):
                await wait_for(lambda: holder.terminated_backends() > 0, timeout=10)
            await wait_for(holder.finished, timeout=30)
        finally:
            await asyncio.to_thread(holder.close)
        # Finalised, and both items behind it ran, soon after the lock was let go.
        await wait_for(lambda: _all_done(store, 3), timeout=20)
    runs = await all_runs(store)
    assert sorted(r.state.value for r in runs) == ["succeeded"] * 3
    assert not [i for i in await store.list_items(limit=100) if i.state is not ItemState.DONE]


async def _running(store: Store) -> bool:
    return any(r.state is RunState.RUNNING for r in await all_runs(store))


@pytest.mark.slow
async def test_a_run_that_cannot_be_marked_running_at_once_still_runs(
    tmp_path: Path, store_url: str, store: Store
) -> None:
    """The store is locked (SQLite) or the run's row held and its waiter terminated
    (PostgreSQL) as the agent starts: the start is recorded once the store answers."""
    started, locked = tmp_path / "hook.started", tmp_path / "locked"
    project = write_project(
        tmp_path / "p",
        {"work": {"scale": 1, "command": "echo agent ran"}},
        tables={
            "work": f'[hooks]\npre = ["touch {started}; while [ ! -e {locked} ]; do '
            f'sleep 0.05; done"]'
        },
    )
    running = scheduler_for(project, store, FAST)
    async with running:
        await running.submit("work")
        await wait_for(started.exists, timeout=15)
        sql = "SELECT * FROM corral_runs FOR UPDATE"
        holder = await asyncio.to_thread(StoreLockHolder, store_url, sql, 14, tmp_path)
        try:
            locked.touch()  # the hook ends and the agent starts while the lock is held
            if store_url.startswith("postgresql"):
                await wait_for(lambda: holder.terminated_backends() > 0, timeout=10)
            await wait_for(holder.finished, timeout=30)
        finally:
            await asyncio.to_thread(holder.close)
        await wait_for(lambda: _all_done(store, 1), timeout=20)
    [run] = await all_runs(store)
    assert run.state is RunState.SUCCEEDED, run.error


async def test_a_full_log_disk_ends_the_run_as_failed(tmp_path: Path, store: Store) -> None:
    """The run log's disk fills up mid-run: the run's processes end, it is recorded failed
    with a reason naming the disk, and its item is done."""
    pidfile = tmp_path / "agent.pid"
    command = f"echo $$ > {pidfile}; head -c 400000 /dev/zero | tr '\\0' x; echo; sleep 30"
    project = write_project(tmp_path / "p", {"work": {"scale": 1, "command": command}})
    with full_disk(project.root / ".corral" / "logs"):
        running = scheduler_for(project, store, FAST)
        async with running:
            await running.submit("work")
            await wait_for(lambda: _finished(store, 1), timeout=20)
            agent_pid = int(pidfile.read_text())
            await wait_for(lambda: not alive(agent_pid), timeout=10)
            [run] = await all_runs(store)
            assert run.state is RunState.FAILED
            assert run.error is not None and "disk is full" in run.error, run.error
            assert (await _items(store)) == {run.item_id: ItemState.DONE}


async def test_a_full_run_directory_fails_the_run_before_it_starts(
    tmp_path: Path, store: Store
) -> None:
    """The prompt cannot be written (ENOSPC): the run fails with the reason, its item is
    done, and the next item runs once there is room."""
    project = write_project(tmp_path / "p", {"work": {"scale": 1, "command": "echo fine"}})
    with full_disk(project.root / ".corral" / "runs") as filler:
        running = scheduler_for(project, store, FAST)
        async with running:
            await running.submit("work")
            await wait_for(lambda: _finished(store, 1), timeout=20)
            [run] = await all_runs(store)
            assert run.state is RunState.FAILED
            assert run.error is not None and "disk is full" in run.error, run.error
            filler.unlink()
            await running.submit("work")
            await wait_for(lambda: _all_done(store, 2), timeout=20)
    runs = sorted(await all_runs(store), key=lambda r: r.created_at)
    assert [r.state for r in runs] == [RunState.FAILED, RunState.SUCCEEDED]


async def _finished(store: Store, count: int) -> bool:
    runs = await all_runs(store)
    return len([r for r in runs if r.state.is_terminal]) >= count


@pytest.mark.slow
async def test_a_run_whose_end_cannot_be_recorded_is_recovered(
    tmp_path: Path, store_url: str, store: Store
) -> None:
    """Recording the end fails past every retry: the scheduler stops renewing that run's
    lease (it no longer tracks it), the lease lapses, recovery records the run lost and
    delivers its item again, and the queue goes on."""
    go = tmp_path / "go"
    command = f"while [ ! -e {go} ]; do sleep 0.05; done"
    project = write_project(tmp_path / "p", {"work": {"scale": 1, "command": command}})
    options = SchedulerOptions(
        poll_interval=0.05,
        supervise_every=0.05,
        renew_every=0.5,
        recover_every=0.5,
        lease_seconds=4,
        store_retry=2,
        drain_grace=5,
        kill_grace=1,
    )
    running = scheduler_for(project, store, options)
    async with running:
        first = (await running.submit("work")).item
        await running.submit("work")
        await wait_for(lambda: _running(store), timeout=15)
        sql = f"SELECT * FROM corral_queue WHERE id = {first.id} FOR UPDATE"
        holder = await asyncio.to_thread(StoreLockHolder, store_url, sql, 10, tmp_path)
        try:
            go.touch()
            await wait_for(holder.finished, timeout=30)
        finally:
            await asyncio.to_thread(holder.close)
        await wait_for(lambda: _all_done(store, 2), timeout=30)
    runs = await all_runs(store)
    assert sorted(r.state.value for r in runs) == ["lost", "succeeded", "succeeded"]
    [lost] = [r for r in runs if r.state is RunState.LOST]
    assert lost.item_id == first.id and lost.error is not None and "lapsed" in lost.error


async def test_a_store_fault_during_an_upgrades_drain_is_waited_out(
    tmp_path: Path, store: Store
) -> None:
    """A loop whose store fails while the scheduler drains for an upgrade (no new work,
    but not stopping) retries as usual instead of stopping the whole process; once it
    stops, a store fault ends the loop (the shutdown does not wait on a broken store)."""
    from corral.errors import StoreUnavailable

    project = write_project(tmp_path / "p", {"work": {"command": "true"}})
    scheduler = scheduler_for(project, store, FAST).scheduler
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreUnavailable("the store restarted")

    scheduler.draining = True  # an upgrade's drain (plane_upgrade), not a stop
    await asyncio.wait_for(scheduler._resilient("test", flaky), 10)
    assert calls == 2
    scheduler.stopping = True
    calls = 0
    with pytest.raises(StoreUnavailable):
        await scheduler._resilient("test", flaky)
