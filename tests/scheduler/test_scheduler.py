"""The scheduler on both stores: caps, FIFO, queue bound, pause, reruns, kill, drain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from corral.project import Project
from corral.scheduler.service import Scheduler, SchedulerOptions, cap_warning
from corral.store import (
    Claim,
    EnqueueResult,
    ItemState,
    NewItem,
    RunState,
    Store,
    TriggerKind,
)
from tests.conftest import PG_BASE_URL
from tests.processes import alive
from tests.scheduler.helpers import all_runs, max_overlap, wait_for, write_project

FAST = SchedulerOptions(poll_interval=0.05, supervise_every=0.05, drain_grace=5, kill_grace=1)


class Running:
    """A scheduler running in the background of a test."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.stop = asyncio.Event()
        self.stop_now = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.claims: list[Claim] = []
        scheduler.on_claim = self.claims.append

    async def __aenter__(self) -> Running:
        await self.scheduler.start()
        self.task = asyncio.create_task(self.scheduler.run(self.stop, self.stop_now))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        self.stop_now.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)

    async def submit(
        self, agent: str, trigger: TriggerKind = TriggerKind.MANUAL, prompt: str | None = None
    ) -> EnqueueResult:
        return await self.scheduler.submit(NewItem(agent=agent, trigger=trigger, prompt=prompt))


def scheduler_for(project: Project, store: Store, options: SchedulerOptions = FAST) -> Running:
    return Running(Scheduler(project, store, options))


@pytest.fixture
async def quick(tmp_path: Path, store: Store) -> AsyncIterator[tuple[Project, Store]]:
    project = write_project(
        tmp_path / "p",
        {
            "two": {"scale": 2, "command": "sleep 0.3"},
            "three": {"scale": 3, "command": "sleep 0.3"},
            "off": {"scale": 0, "command": "true"},
        },
        "scale = 4\n",
    )
    yield project, store


async def test_agent_scale_and_project_cap_hold(quick: tuple[Project, Store]) -> None:
    project, store = quick
    async with scheduler_for(project, store) as running:
        for _ in range(6):
            await running.submit("two")
            await running.submit("three")
        await wait_for(lambda: _done(store, 12))
    runs = await all_runs(store)
    assert all(r.state is RunState.SUCCEEDED for r in runs)
    assert max_overlap([r for r in runs if r.agent == "two"]) <= 2
    assert max_overlap([r for r in runs if r.agent == "three"]) <= 3
    assert max_overlap(runs) <= 4
    assert max_overlap(runs) >= 2  # it did run things at once


async def _done(store: Store, count: int) -> bool:
    runs = await all_runs(store)
    return len([r for r in runs if r.state.is_terminal]) >= count


async def test_items_of_an_agent_start_in_fifo_order(tmp_path: Path, store: Store) -> None:
    project = write_project(tmp_path / "p", {"one": {"scale": 1, "command": "true"}})
    async with scheduler_for(project, store) as running:
        items = [(await running.submit("one", prompt=str(i))).item.id for i in range(8)]
        await wait_for(lambda: _done(store, 8))
    assert [c.item.id for c in running.claims] == items


async def test_a_disabled_agent_refuses_its_triggers_with_the_reason(
    quick: tuple[Project, Store],
) -> None:
    project, store = quick
    async with scheduler_for(project, store) as running:
        result = await running.submit("off")
    assert result.item.state is ItemState.REJECTED
    assert result.item.reason is not None and "scale = 0" in result.item.reason


async def test_pause_stops_dispatch_not_intake(tmp_path: Path, store: Store) -> None:
    project = write_project(tmp_path / "p", {"one": {"scale": 1, "command": "true"}})
    async with scheduler_for(project, store) as running:
        await store.set_paused("one", True)
        first = await running.submit("one")
        await asyncio.sleep(0.3)
        assert (await store.get_item(first.item.id)).state is ItemState.QUEUED  # type: ignore[union-attr]
        await store.set_paused(None, True)
        await store.set_paused("one", False)
        await asyncio.sleep(0.3)
        assert (await store.get_item(first.item.id)).state is ItemState.QUEUED  # type: ignore[union-attr]
        await store.set_paused(None, False)
        running.scheduler.wake()
        await wait_for(lambda: _done(store, 1))


async def test_a_full_queue_drops_its_oldest_item(tmp_path: Path, store: Store) -> None:
    gate = tmp_path / "gate"
    project = write_project(
        tmp_path / "p",
        {
            "one": {
                "scale": 1,
                "maxWorkQueueSize": 2,
                "command": f"while [ ! -e {gate} ]; do sleep 0.02; done",
            }
        },
    )
    async with scheduler_for(project, store) as running:
        await running.submit("one")
        await wait_for(lambda: running.claims)
        queued = [(await running.submit("one", prompt=str(i))) for i in range(3)]
        gate.touch()
        await wait_for(lambda: _done(store, 3))
    assert queued[2].dropped and queued[2].dropped[0].id == queued[0].item.id
    dropped = await store.get_item(queued[0].item.id)
    assert dropped is not None and dropped.state is ItemState.DROPPED
    assert dropped.reason is not None and "queue full" in dropped.reason


async def test_reruns_follow_the_documented_rule(tmp_path: Path, store: Store) -> None:
    project = write_project(
        tmp_path / "p",
        {"one": {"scale": 1, "command": "sleep 0.2"}},
        "maxReruns = 2\n",
    )
    async with scheduler_for(project, store) as running:

        def ask_rerun(claim: Claim) -> None:
            asyncio.get_running_loop().create_task(store.request_rerun(claim.run.id))

        def observe(claim: Claim) -> None:
            running.claims.append(claim)
            ask_rerun(claim)

        running.scheduler.on_claim = observe
        await running.submit("one", TriggerKind.SCHEDULE)
        await wait_for(lambda: _done(store, 3))
        await asyncio.sleep(0.5)  # no fourth run: maxReruns = 2
        await running.submit("one", TriggerKind.WEBHOOK)
        await wait_for(lambda: _done(store, 4))
        await asyncio.sleep(0.5)
    runs = sorted(await all_runs(store), key=lambda r: r.created_at)
    assert [r.trigger for r in runs] == [TriggerKind.SCHEDULE] * 3 + [TriggerKind.WEBHOOK]
    assert runs[1].parent_run_id == runs[0].id and runs[2].parent_run_id == runs[1].id
    assert runs[3].parent_run_id is None


async def test_timeout_ends_a_run_as_timed_out(tmp_path: Path, store: Store) -> None:
    project = write_project(tmp_path / "p", {"one": {"timeout": 1, "command": "sleep 30"}})
    async with scheduler_for(project, store) as running:
        await running.submit("one")
        await wait_for(lambda: _done(store, 1))
    [run] = await all_runs(store)
    assert (run.state, run.exit_code) == (RunState.TIMED_OUT, 124)


async def test_kill_stops_the_process_group(tmp_path: Path, store: Store) -> None:
    pidfile = tmp_path / "pid"
    project = write_project(
        tmp_path / "p", {"one": {"command": f"sleep 60 & echo $! > {pidfile}; wait"}}
    )
    async with scheduler_for(project, store) as running:
        await running.submit("one")
        await wait_for(lambda: pidfile.exists() and pidfile.read_text().strip())
        [claim] = running.claims
        await store.request_kill(claim.run.id)
        await wait_for(lambda: _done(store, 1))
    [run] = await all_runs(store)
    assert run.state is RunState.KILLED
    assert run.error == "killed by an operator"
    child = int(pidfile.read_text())
    await wait_for(lambda: not alive(child), timeout=5)


async def test_drain_lets_runs_finish_within_the_grace(tmp_path: Path, store: Store) -> None:
    project = write_project(tmp_path / "p", {"one": {"command": "sleep 0.5"}})
    running = scheduler_for(project, store)
    async with running:
        await running.submit("one")
        await wait_for(lambda: running.claims)
        running.stop.set()  # graceful: no stop_now
        assert running.task is not None
        await asyncio.wait_for(running.task, 10)
    [run] = await all_runs(store)
    assert run.state is RunState.SUCCEEDED


async def test_drain_stops_runs_past_the_grace(tmp_path: Path, store: Store) -> None:
    project = write_project(tmp_path / "p", {"one": {"command": "sleep 30"}})
    options = SchedulerOptions(
        poll_interval=0.05, supervise_every=0.05, drain_grace=0.3, kill_grace=1
    )
    running = scheduler_for(project, store, options)
    async with running:
        await running.submit("one")
        await wait_for(lambda: running.claims)
        running.stop.set()
        assert running.task is not None
        await asyncio.wait_for(running.task, 10)
        queued_after = await running.submit("one")  # intake still records work after a stop
    [run] = await all_runs(store)
    assert run.state is RunState.KILLED
    assert run.error is not None and "drain grace 0.3 s" in run.error
    assert "queued again" in run.error
    assert queued_after.item.state is ItemState.QUEUED
    interrupted = await store.get_item(run.item_id or 0)
    assert interrupted is not None and interrupted.state is ItemState.QUEUED


def test_cap_warning_as_documented(tmp_path: Path) -> None:
    project = write_project(
        tmp_path / "p",
        {"a": {"scale": 3, "command": "true"}, "b": {"command": "true"}},
        "scale = 2\ndefaultAgentScale = 2\n",
    )
    assert cap_warning(project) == (
        "the agents' scales add up to 5, more than the project cap scale = 2: "
        "at most 2 runs go at once and the rest wait in their queues"
    )


async def test_documented_defaults_in_action(tmp_path: Path, store: Store) -> None:
    """An empty config.toml: queue 100, scale 1, maxReruns 10, maxAttempts 3, timeout 900."""
    project = write_project(
        tmp_path / "p", {"dev": {"command": "true"}, "chain": {"command": "sleep 0.1"}}
    )
    agent = project.agents["dev"]
    assert (agent.effective_scale, agent.config.timeout) == (1, 900)
    async with scheduler_for(project, store) as running:
        await store.set_paused("dev", True)
        results = [await running.submit("dev", prompt=str(i)) for i in range(101)]
        assert [d.id for d in results[100].dropped] == [results[0].item.id]  # 100 fit, no more
        assert {a.agent: a.queued for a in await store.agent_states()}["dev"] == 100
        await store.set_paused("dev", False)
        running.scheduler.wake()
        await wait_for(lambda: _done(store, 100), timeout=60)
        assert max_overlap(await all_runs(store, "dev")) == 1

        def always_rerun(claim: Claim) -> None:
            running.claims.append(claim)
            asyncio.get_running_loop().create_task(store.request_rerun(claim.run.id))

        running.scheduler.on_claim = always_rerun
        before = len(await all_runs(store))
        await running.submit("chain", TriggerKind.SCHEDULE)
        await wait_for(lambda: _done(store, before + 11), timeout=60)
        await asyncio.sleep(0.5)
    chain = [r for r in await all_runs(store) if r.trigger is TriggerKind.SCHEDULE]
    assert len(chain) == 11  # the run and its 10 reruns
    project_state = await store.project_state()
    assert (project_state.max_attempts, project_state.max_reruns) == (3, 10)


@pytest.mark.postgres
@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
async def test_the_scheduler_rides_out_a_dropped_database_connection(
    tmp_path: Path, store: Store
) -> None:
    """PostgreSQL only: cut every connection, as a failover does; the pool replaces them."""

    project = write_project(tmp_path / "p", {"one": {"command": "true"}})
    async with scheduler_for(project, store) as running:
        await running.submit("one")
        await wait_for(lambda: _done(store, 1))
        with psycopg.connect(PG_BASE_URL, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name <> 'psql' AND query NOT ILIKE '%pg_stat_activity%'"
            )
        await asyncio.sleep(0.5)  # the dispatch loop hits the dead connections
        await wait_for(lambda: _submit_ok(running), timeout=20)
        await wait_for(lambda: _done(store, 2), timeout=20)
    runs = await all_runs(store)
    assert [r.state for r in runs] == [RunState.SUCCEEDED, RunState.SUCCEEDED]


async def _submit_ok(running: Running) -> bool:
    try:
        await running.submit("one")
    except Exception:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
async def test_the_scheduler_survives_a_store_that_fails_for_a_while(
    tmp_path: Path, store: Store, store_url: str
) -> None:
    """Another process holds the SQLite file's write lock past the busy timeout: the
    scheduler's loops get StoreError, log it, retry, and carry on afterwards."""
    import sqlite3

    project = write_project(tmp_path / "p", {"one": {"command": "true"}})
    async with scheduler_for(project, store) as running:
        blocker = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        await asyncio.sleep(6.5)  # past the 5 s busy timeout: the loops' claims fail
        blocker.execute("ROLLBACK")
        blocker.close()
        assert running.task is not None and not running.task.done()
        await running.submit("one")
        await wait_for(lambda: _done(store, 1), timeout=20)


async def test_a_loop_that_fails_stops_the_scheduler_loudly(tmp_path: Path, store: Store) -> None:
    """A bug in one loop ends the scheduler with the error, after recording its stop."""
    project = write_project(tmp_path / "p", {"one": {"command": "true"}})
    scheduler = Scheduler(project, store, FAST)

    async def broken() -> None:
        raise RuntimeError("a bug in the dispatch loop")

    scheduler._dispatch = broken  # type: ignore[method-assign]
    await scheduler.start()
    with pytest.raises(RuntimeError, match="a bug in the dispatch loop"):
        await asyncio.wait_for(scheduler.run(asyncio.Event()), 20)
    [info] = await store.list_schedulers()
    assert info.state == "stopped"
