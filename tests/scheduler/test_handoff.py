"""Work changing hands: a graceful stop gives interrupted runs back to the queue, and
`corral run --foreground` never races a live scheduler. Real processes, both stores."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from corral.store import ItemState, NewItem, QueueItem, Run, RunState, TriggerKind, open_store
from tests.scheduler.helpers import write_project
from tests.scheduler.procs import SchedulerProcess, alive, wait_until

pytestmark = pytest.mark.slow


async def _snapshot(url: str) -> tuple[list[Run], list[QueueItem]]:
    async with await open_store(url) as store:
        return await store.list_runs(limit=100), await store.list_items(limit=100)


def snapshot(url: str) -> tuple[list[Run], list[QueueItem]]:
    return asyncio.run(_snapshot(url))


async def _enqueue(url: str, agent: str) -> QueueItem:
    async with await open_store(url) as store:
        new = NewItem(agent=agent, trigger=TriggerKind.MANUAL, prompt="work")
        return (await store.enqueue(new)).item


def enqueue(url: str, agent: str) -> QueueItem:
    return asyncio.run(_enqueue(url, agent))


async def _schedulers(url: str) -> int:
    async with await open_store(url) as store:
        return len(await store.list_schedulers(live_only=True))


def registered(url: str) -> bool:
    return asyncio.run(_schedulers(url)) > 0


def _waiting_command(go: Path, pids: Path) -> str:
    return f"echo $$ >> {pids}; while [ ! -e {go} ]; do sleep 0.05; done; echo finished"


def test_a_run_interrupted_by_a_shutdown_is_queued_again(tmp_path: Path, store_url: str) -> None:
    go, pids = tmp_path / "go", tmp_path / "pids"
    root = tmp_path / "p"
    write_project(root, {"work": {"scale": 1, "command": _waiting_command(go, pids)}})
    with SchedulerProcess(root, store_url, tmp_path / "a.log", "--grace", "1") as first:
        wait_until(lambda: registered(store_url))
        item = enqueue(store_url, "work")
        wait_until(lambda: any(r.state is RunState.RUNNING for r in snapshot(store_url)[0]))
        assert first.stop(60) == 0  # SIGTERM: drain for 1 s, then stop what still runs
    [run], [after] = snapshot(store_url)
    assert run.state is RunState.KILLED
    assert run.error is not None and "queued again" in run.error, run.error
    assert "shut down" in run.error
    assert after.id == item.id and after.state is ItemState.QUEUED
    assert after.lease_owner is None
    assert not any(alive(int(pid)) for pid in pids.read_text().split())

    with SchedulerProcess(root, store_url, tmp_path / "b.log") as second:
        go.touch()
        wait_until(lambda: snapshot(store_url)[1][0].state is ItemState.DONE, 30)
        assert second.stop(60) == 0
    runs, [done] = snapshot(store_url)
    assert done.id == item.id
    assert sorted(r.state.value for r in runs) == ["killed", "succeeded"]


def _corral_run(root: Path, store_url: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({"CORRAL_STATE_URL": store_url, "HOME": str(root.parent)})
    return subprocess.Popen(
        [sys.executable, "-m", "corral", "run", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _set_heartbeats(url: str, value: str) -> None:
    sql = "UPDATE corral_schedulers SET heartbeat_at = '" + value + "'"
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            conn.execute(sql)
            conn.commit()
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.encode())


async def _heartbeat(url: str) -> object:
    async with await open_store(url) as store:
        return [s.heartbeat_at for s in await store.list_schedulers()]


def _stale_heartbeat(url: str) -> None:
    """Make the scheduler look dead (a heartbeat an hour old) right after it renewed, so
    the command starting next sees it stale for the ~10 s until the next renewal."""
    before = asyncio.run(_heartbeat(url))
    wait_until(lambda: asyncio.run(_heartbeat(url)) != before, 15)
    _set_heartbeats(url, "2000-01-01T00:00:00.000000+00:00")


@pytest.mark.parametrize("how", ["--foreground", "stale heartbeat"])
def test_run_in_the_foreground_never_races_a_live_scheduler(
    tmp_path: Path, store_url: str, how: str
) -> None:
    """The scheduler's own run holds the agent's only slot while `corral run` waits for
    it in the foreground (asked for, or because the live scheduler's heartbeat looked
    stale); when the slot frees, the scheduler (woken at once) does not take the
    command's item: the command runs it and exits with its outcome."""
    go, pids = tmp_path / "go", tmp_path / "pids"
    root = tmp_path / "p"
    write_project(root, {"long": {"scale": 1, "command": _waiting_command(go, pids)}})
    with SchedulerProcess(root, store_url, tmp_path / "s.log") as scheduler:
        wait_until(lambda: registered(store_url))
        enqueue(store_url, "long")
        wait_until(lambda: any(r.state is RunState.RUNNING for r in snapshot(store_url)[0]))
        if how == "--foreground":
            command = _corral_run(root, store_url, "--foreground", "long", "mine")
        else:
            _stale_heartbeat(store_url)
            command = _corral_run(root, store_url, "long", "mine")
        try:
            wait_until(lambda: len(snapshot(store_url)[1]) == 2, 30)
            go.touch()  # the scheduler's run ends; its slot is free
            out, err = command.communicate(timeout=60)
        finally:
            if command.poll() is None:
                command.kill()
                command.communicate(timeout=10)
        assert command.returncode == 0, err
        assert "finished" in out
        runs, items = snapshot(store_url)
        assert all(i.state is ItemState.DONE for i in items)
        [mine] = [r for r in runs if r.prompt == "mine"]
        assert mine.state is RunState.SUCCEEDED
        assert mine.owner is not None and mine.owner.startswith("cli-")
        assert scheduler.stop(60) == 0


def test_a_reservation_lapses_when_its_command_dies(tmp_path: Path, store_url: str) -> None:
    """`corral run --foreground` killed while it waits: the scheduler runs its item once
    the reservation lapses, so no accepted work is stranded."""
    go, pids = tmp_path / "go", tmp_path / "pids"
    root = tmp_path / "p"
    write_project(root, {"long": {"scale": 1, "command": _waiting_command(go, pids)}})
    with SchedulerProcess(root, store_url, tmp_path / "s.log") as scheduler:
        wait_until(lambda: registered(store_url))
        enqueue(store_url, "long")
        wait_until(lambda: any(r.state is RunState.RUNNING for r in snapshot(store_url)[0]))
        command = _corral_run(root, store_url, "--foreground", "long", "mine")
        try:
            wait_until(lambda: len(snapshot(store_url)[1]) == 2, 30)
        finally:
            command.kill()
            command.communicate(timeout=10)
        go.touch()
        # Reserved for 30 s (the lease time); then the scheduler takes it.
        wait_until(lambda: all(i.state is ItemState.DONE for i in snapshot(store_url)[1]), 60)
        runs, _ = snapshot(store_url)
        [mine] = [r for r in runs if r.prompt == "mine"]
        assert mine.state is RunState.SUCCEEDED
        assert mine.owner is not None and not mine.owner.startswith("cli-")
        assert scheduler.stop(60) == 0
