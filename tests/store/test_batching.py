"""``GroupCommit``: the one batching helper both stores use (SQLite's ``atomic`` hops,
PostgreSQL's webhook deliveries). Real asyncio tasks, a real batch runner."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from corral.errors import StoreError
from corral.store import NewRun, Store, Transaction, TriggerKind
from corral.store._batching import Failed, GroupCommit, Waiting


class Runner:
    """Runs a batch after a moment, recording each batch's jobs; job "bad" fails alone
    and a batch holding "boom" fails whole."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.skipped: list[str] = []
        self.started = asyncio.Event()

    async def __call__(self, batch: list[Waiting[str, str]]) -> list[str | Failed]:
        self.batches.append([w.job for w in batch])
        self.started.set()
        await asyncio.sleep(0.05)
        if any(w.job == "boom" for w in batch):
            raise StoreError("the batch failed")
        outcomes: list[str | Failed] = []
        for waiting in batch:
            if waiting.gone:
                self.skipped.append(waiting.job)
                outcomes.append(Failed(asyncio.CancelledError()))
            elif waiting.job == "bad":
                outcomes.append(Failed(ValueError("bad job")))
            else:
                outcomes.append(waiting.job.upper())
        return outcomes


async def test_jobs_that_arrive_during_a_batch_go_together_in_the_next() -> None:
    runner = Runner()
    group = GroupCommit[str, str](runner, name="test-batches")
    first = asyncio.create_task(group.submit("a"))
    await runner.started.wait()
    rest = [asyncio.create_task(group.submit(job)) for job in "bcde"]
    assert await first == "A"
    assert await asyncio.gather(*rest) == ["B", "C", "D", "E"]
    assert runner.batches == [["a"], ["b", "c", "d", "e"]]


async def test_with_a_linger_jobs_that_arrive_close_together_share_the_first_batch() -> None:
    """Without a linger the first job goes alone; with one, jobs arriving within it go
    with it (runners' heartbeats, which would otherwise each be a statement)."""
    runner = Runner()
    group = GroupCommit[str, str](runner, name="test-linger", linger=0.1)
    first = asyncio.create_task(group.submit("a"))
    await asyncio.sleep(0.02)
    rest = [asyncio.create_task(group.submit(job)) for job in "bc"]
    assert await asyncio.gather(first, *rest) == ["A", "B", "C"]
    assert runner.batches == [["a", "b", "c"]]


async def test_jobs_waiting_out_a_linger_fail_when_the_batcher_is_cancelled() -> None:
    runner = Runner()
    group = GroupCommit[str, str](runner, name="test-linger", linger=5.0)
    job = asyncio.create_task(group.submit("a"))
    await asyncio.sleep(0.02)
    assert group._drainer is not None
    group._drainer.cancel()
    with pytest.raises(StoreError, match="closing"):
        await job
    assert runner.batches == []


async def test_a_job_that_fails_alone_fails_only_its_caller() -> None:
    group = GroupCommit[str, str](Runner(), name="test-batches")
    results = await asyncio.gather(
        group.submit("x"), group.submit("bad"), group.submit("y"), return_exceptions=True
    )
    assert results[0] == "X" and results[2] == "Y"
    assert isinstance(results[1], ValueError)


async def test_a_failed_batch_fails_every_caller_and_the_next_batch_still_runs() -> None:
    runner = Runner()
    group = GroupCommit[str, str](runner, name="test-batches")
    results = await asyncio.gather(group.submit("x"), group.submit("boom"), return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)
    assert await group.submit("after") == "AFTER"


async def test_a_caller_that_stops_waiting_leaves_the_others_their_results() -> None:
    runner = Runner()
    group = GroupCommit[str, str](runner, name="test-batches")
    first = asyncio.create_task(group.submit("a"))
    await runner.started.wait()
    quitter = asyncio.create_task(group.submit("q"))
    stayer = asyncio.create_task(group.submit("s"))
    await asyncio.sleep(0)
    quitter.cancel()
    assert await first == "A" and await stayer == "S"
    with pytest.raises(asyncio.CancelledError):
        await quitter
    assert runner.skipped == ["q"]


async def test_concurrent_atomic_bodies_each_stand_or_fall_alone(store: Store) -> None:
    """On a real store (SQLite: one worker hop and one commit for the lot): of 30 bodies
    sent at once, the one that writes and then raises leaves nothing, its caller gets its
    error, and the other 29 are all committed."""
    runs = [
        await store.create_run(NewRun(agent="a", trigger=TriggerKind.MANUAL)) for _ in range(30)
    ]

    def body(run_id: str, fail: bool) -> Callable[[Transaction], Awaitable[int]]:
        async def write(tx: Transaction) -> int:
            changed = await tx.execute("set_run_status", {"id": run_id, "status_text": "set"})
            if fail:
                raise ValueError("this body fails after writing")
            return changed

        return write

    results = await asyncio.gather(
        *(store.atomic(body(run.id, i == 7)) for i, run in enumerate(runs)),
        return_exceptions=True,
    )
    assert isinstance(results[7], ValueError)
    assert [r for i, r in enumerate(results) if i != 7] == [1] * 29
    statuses = [(await store.get_run(run.id)) for run in runs]
    assert [s.status_text if s else None for s in statuses] == [
        None if i == 7 else "set" for i in range(30)
    ]
