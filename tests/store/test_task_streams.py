"""The ``[[tasks]]`` trigger's tick (store/_stream.py) on both stores: the runs it queues
track min(claimable matching tasks, scale), a requirement done or a claim released makes
a task count, idle runs back the trigger off, and two stores ticking at once on one
database never queue more than the board calls for."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from corral.store import AgentSpec, Claim, RunState, Store, open_store
from corral.tasks._model import TaskSpec, TaskStatus

LEASE = 60.0


def spec(task_id: str, **fields: Any) -> TaskSpec:
    return TaskSpec(id=task_id, project="web", title=f"do {task_id}", **fields)


async def setup(store: Store, scale: int = 2) -> None:
    await store.sync_project(
        [AgentSpec("dev", scale, 100)], scale_cap=None, max_attempts=3, max_reruns=2
    )


async def tick(store: Store, scale: int = 2, labels: tuple[str, ...] = ("api",), **kw: Any) -> int:
    done = await store.stream_tasks(
        "dev", 0, project="web", labels=labels, scale=scale, detail={"source": "tasks"}, **kw
    )
    return len(done.queued)


async def start(store: Store, limit: int = 10) -> list[Claim]:
    return await store.claim("sched", lease_seconds=LEASE, limit=limit)


async def end(store: Store, claim: Claim, state: RunState = RunState.SUCCEEDED) -> None:
    await store.finalize(claim.run.id, fence=claim.run.fence or 0, state=state, exit_code=0)


async def test_runs_track_min_of_claimable_and_scale(store: Store) -> None:
    await setup(store)
    await store.add_tasks([spec(t, labels=("api",)) for t in "abc"])
    assert await tick(store) == 2  # three claimable, scale 2
    assert await tick(store) == 0  # both are waiting to claim: nothing more
    runs = await start(store)
    assert len(runs) == 2
    assert runs[0].run.trigger_detail == {"source": "tasks"}
    held = []
    for claim in runs:
        task = await store.claim_task(claimer="dev", run_id=claim.run.id, project="web")
        assert task is not None
        held.append(task)
    assert await tick(store) == 0  # one claimable left, but two runs going: scale reached
    await store.finish_task("web", held[0].id, held[0].token, TaskStatus.DONE)
    await end(store, runs[0])
    assert await tick(store) == 1  # a slot freed: the third task gets its run
    assert await tick(store) == 0
    (third,) = await start(store)
    task = await store.claim_task(claimer="dev", run_id=third.run.id, project="web")
    assert task is not None
    assert await tick(store) == 0  # nothing claimable


async def test_never_more_waiting_runs_than_claimable_tasks(store: Store) -> None:
    await setup(store, scale=5)
    await store.add_tasks([spec("a", labels=("api",))])
    assert await tick(store, scale=5) == 1
    assert await tick(store, scale=5) == 0
    await store.add_tasks([spec("b", labels=("api", "db"))])
    assert await tick(store, scale=5) == 1  # a task added: one more


async def test_filter_labels_priority_and_requirements(store: Store) -> None:
    await setup(store)
    await store.add_tasks(
        [
            spec("ui", labels=("ui",)),
            spec("low", labels=("api",), priority=2),
            spec("base", labels=("db",)),
            spec("top", labels=("api",), priority=8, requires=("base",)),
        ]
    )
    assert await tick(store, min_priority=5) == 0  # low is below; top waits for base
    other = await store.claim_task(claimer="someone", project="web", labels=["db"])
    assert other is not None and other.id == "base"
    assert await tick(store, min_priority=5) == 0
    await store.finish_task("web", "base", other.token, TaskStatus.DONE)
    assert await tick(store, min_priority=5) == 1  # its requirement done: top is claimable


async def test_a_released_or_lapsed_claim_counts_again(store: Store) -> None:
    await setup(store, scale=3)
    await store.add_tasks([spec("a", labels=("api",))])
    taken = await store.claim_task(claimer="else", project="web")
    assert taken is not None
    assert await tick(store, scale=3) == 0
    await store.release_task("web", "a", taken.token)
    assert await tick(store, scale=3) == 1
    (run,) = await start(store)
    lapsing = await store.claim_task(claimer="dev", run_id=run.run.id, project="web", lease=0.05)
    assert lapsing is not None
    assert await tick(store, scale=3) == 0
    await asyncio.sleep(0.1)
    assert [t.id for t in await store.release_stalled_tasks()] == ["a"]
    # The run still goes on, holding nothing: it is the one to claim again.
    assert await tick(store, scale=3) == 0
    await end(store, run)
    # That run finished no task: the next waits a moment (the idle backoff), then starts.
    held = await store.stream_tasks("dev", 0, project="web", labels=["api"], scale=3)
    assert held.queued == () and held.held_until is not None
    store.clock = lambda: datetime.now(UTC) + timedelta(seconds=1.5)
    assert await tick(store, scale=3) == 1


async def test_idle_runs_back_off_instead_of_storming(store: Store) -> None:
    await setup(store, scale=3)
    await store.add_tasks([spec(t, labels=("api",)) for t in "ab"])
    base = datetime.now(UTC)
    offset = timedelta()
    store.clock = lambda: base + offset
    expected_waits = [2.0, 4.0, 8.0, 16.0]  # two idle runs already
    assert await tick(store, scale=3) == 2
    for claim in await start(store):
        await end(store, claim)  # they end without claiming anything
    for wait in expected_waits:
        before = await store.stream_tasks("dev", 0, project="web", labels=["api"], scale=3)
        assert before.queued == () and before.held_until is not None
        assert before.held_until == base + offset + timedelta(seconds=wait)
        offset += timedelta(seconds=wait)
        assert await tick(store, scale=3) == 1  # one run tries again, not two
        (claim,) = await start(store)
        await end(store, claim)
    # A run that finishes a task ends the streak: both tasks get runs at once again.
    offset += timedelta(seconds=32)
    assert await tick(store, scale=3) == 1
    (claim,) = await start(store)
    task = await store.claim_task(claimer="dev", run_id=claim.run.id, project="web")
    assert task is not None
    await store.finish_task("web", task.id, task.token, TaskStatus.DONE)
    await end(store, claim)
    await store.add_tasks([spec("c", labels=("api",))])
    assert (
        await store.stream_tasks("dev", 0, project="web", labels=["api"], scale=3)
    ).idle_streak == 0
    assert await tick(store, scale=3) == 0  # queued by the tick just above
    assert len(await start(store)) == 2


async def test_a_disabled_agent_gets_one_rejected_item_per_tick_at_most(store: Store) -> None:
    await setup(store)
    await store.add_tasks([spec(t, labels=("api",)) for t in "ab"])
    await store.set_enabled("dev", False)
    done = await store.stream_tasks("dev", 0, project="web", labels=["api"], scale=2)
    assert len(done.queued) == 1 and done.queued[0].state.value == "rejected"


async def test_bad_filter_is_refused(store: Store) -> None:
    await setup(store)
    with pytest.raises(Exception, match="label"):
        await store.stream_tasks("dev", 0, project="web", labels=["no spaces"], scale=2)


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
async def test_two_stores_ticking_at_once_do_not_over_start(store_url: str) -> None:
    """Two schedulers' stores on one PostgreSQL database tick the same trigger at once,
    over and over: the live runs never exceed min(claimable, scale)."""
    async with await open_store(store_url) as one, await open_store(store_url) as two:
        await setup(one, scale=4)
        await one.add_tasks([spec(t, labels=("api",)) for t in "abc"])
        for _ in range(10):
            await asyncio.gather(*(tick(s, scale=4) for s in (one, two, one, two)))
        claims = await start(one, limit=100)
        assert len(claims) == 3  # three claimable tasks: three runs, not more
        for claim in claims[:2]:
            task = await two.claim_task(claimer="dev", run_id=claim.run.id, project="web")
            assert task is not None
            await two.finish_task("web", task.id, task.token, TaskStatus.DONE)
            await end(one, claim)
        await one.add_tasks([spec(t, labels=("api",)) for t in "defgh"])
        for _ in range(10):
            await asyncio.gather(*(tick(s, scale=4) for s in (one, two, one, two)))
        # c and d..h are claimable (6); one run still waits; scale 4: three more.
        more = await start(one, limit=100)
        assert len(more) == 3
