"""Change notices (store/_notify.py): PostgreSQL wakes waiters of every process sharing the
store (LISTEN/NOTIFY, migration 0014); SQLite wakes only this process's.

Two store objects on one database stand for two processes here (each has its own
connections and listener); tests/scheduler/test_wakeups.py uses real processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from corral.store import (
    AgentSpec,
    Call,
    LockHeld,
    NewItem,
    NewRun,
    RunState,
    Store,
    TriggerKind,
    open_store,
)
from corral.store._notify import QUEUE, call_topic, lock_topic
from tests.conftest import UrlFactory

RawSql = Callable[[str, str], list[tuple[Any, ...]]]

#: Notices between processes are PostgreSQL's; SQLite's limit is the test that follows.
postgres_only = pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)


async def _project(store: Store) -> None:
    await store.sync_project(
        [AgentSpec("worker", 4, 10_000), AgentSpec("helper", 4, 100)],
        scale_cap=None,
        max_attempts=3,
        max_reruns=10,
    )


async def _woken(store: Store, topics: list[str], action: Any, timeout: float = 5.0) -> float:
    """Seconds from ``action()`` returning to ``store`` being woken on ``topics``."""
    waiter = asyncio.ensure_future(store.wait_for_change(topics, timeout))
    await asyncio.sleep(0.05)  # the waiter is waiting
    await action()
    done = time.monotonic()
    assert await waiter, f"not woken on {topics} within {timeout} s"
    return time.monotonic() - done


async def test_in_process_notices_wake_waiters(store: Store) -> None:
    started = time.monotonic()
    waiter = asyncio.ensure_future(store.wait_for_change(["lock:k"], 5.0))
    await asyncio.sleep(0.01)
    store.changes.notify("lock:k")
    assert await waiter
    assert time.monotonic() - started < 1.0
    assert not await store.wait_for_change(["lock:k"], 0.05)  # a notice is used up


async def test_another_stores_enqueue_wakes_this_one_on_postgres(
    make_store_url: UrlFactory, dialect: str
) -> None:
    url = make_store_url()
    async with await open_store(url) as writer, await open_store(url) as waiter:
        await _project(writer)
        item = NewItem("worker", TriggerKind.MANUAL)
        if dialect == "sqlite":
            # One SQLite file, two processes: no channel between them; the waiter polls.
            assert not waiter.changes.remote
            waiting = asyncio.ensure_future(waiter.wait_for_change([QUEUE], 0.5))
            await writer.enqueue(item)
            assert not await waiting
            return
        assert waiter.changes.remote
        delays = [await _woken(waiter, [QUEUE], lambda: writer.enqueue(item)) for _ in range(10)]
        assert max(delays) < 0.5, delays
        # Dispatch may become possible with no item changing: resumed, or more slots.
        await writer.set_paused(None, True)
        await _woken(waiter, [QUEUE], lambda: writer.set_paused(None, False))
        await _woken(waiter, [QUEUE], lambda: writer.set_paused("worker", True))
        await _woken(waiter, [QUEUE], lambda: writer.set_agent_scale("worker", 8))
        # A claim (and its bookkeeping: counters, the fence counter) sends nothing: the
        # schedulers do not wake one another with every claim.
        await writer.set_paused("worker", False)
        await asyncio.sleep(0.2)
        quiet = asyncio.ensure_future(waiter.wait_for_change([QUEUE], 0.3))
        await asyncio.sleep(0.02)
        assert len(await writer.claim("s", lease_seconds=60, limit=4)) == 4
        assert not await quiet


@postgres_only
async def test_a_lock_handed_to_a_waiter_wakes_it_in_another_store(
    make_store_url: UrlFactory,
) -> None:
    url = make_store_url()
    key = "github://acme/app/issues/1"
    async with await open_store(url) as actor, await open_store(url) as waiter:
        await _project(actor)
        holder = await actor.create_run(NewRun("worker", TriggerKind.MANUAL))
        blocked = await actor.create_run(NewRun("worker", TriggerKind.MANUAL))
        await actor.acquire_lock(key, holder.id, ttl_seconds=60)
        assert isinstance(
            await actor.wait_for_lock(key, blocked.id, ttl_seconds=60, wait_seconds=30), LockHeld
        )
        # Released while a run waits: handed over, and the waiter's process is told.
        await _woken(waiter, [lock_topic(key)], lambda: actor.release_lock(key, holder.id))
        assert (await actor.get_lock(key)).run_id == blocked.id  # type: ignore[union-attr]
        # Nobody waits now: a heartbeat, a release and a try-lock send nothing.
        quiet = asyncio.ensure_future(waiter.wait_for_change([lock_topic(key)], 0.5))
        await asyncio.sleep(0.02)
        await actor.heartbeat_lock(key, blocked.id, ttl_seconds=60)
        await actor.release_lock(key, blocked.id)
        await actor.acquire_lock(key, blocked.id, ttl_seconds=60)
        assert not await quiet
        # A run that ends releases its locks in its final transaction: its waiters are told.
        await actor.wait_for_lock(key, holder.id, ttl_seconds=60, wait_seconds=30)
        await _woken(waiter, [lock_topic(key)], lambda: actor.release_run_locks(blocked.id))


@postgres_only
async def test_lock_notices_follow_the_holder_not_every_lock_statement(
    make_store_url: UrlFactory,
) -> None:
    """While a run waits for a key, the holder keeping it (a heartbeat, a try-lock of its
    own key) tells nobody; the key changing hands, even by a take-over of its row, tells
    the waiters' processes (row-level triggers since 0023)."""
    url = make_store_url()
    key = "github://acme/app/issues/2"
    async with await open_store(url) as actor, await open_store(url) as waiter:
        await _project(actor)
        holder = await actor.create_run(NewRun("worker", TriggerKind.MANUAL))
        blocked = await actor.create_run(NewRun("worker", TriggerKind.MANUAL))
        other = await actor.create_run(NewRun("worker", TriggerKind.MANUAL))
        await actor.acquire_lock(key, holder.id, ttl_seconds=60)
        assert isinstance(
            await actor.wait_for_lock(key, blocked.id, ttl_seconds=60, wait_seconds=30), LockHeld
        )
        quiet = asyncio.ensure_future(waiter.wait_for_change([lock_topic(key)], 0.5))
        await asyncio.sleep(0.02)
        await actor.heartbeat_lock(key, holder.id, ttl_seconds=0.3)
        refreshed = await actor.acquire_lock(key, holder.id, ttl_seconds=0.3)
        assert getattr(refreshed, "refreshed", False)
        assert not await quiet
        # Expired with a run waiting: another run's try-lock hands the key to the waiter
        # (the row is taken over, not deleted): the waiter's process is told.
        await asyncio.sleep(0.4)
        await _woken(
            waiter, [lock_topic(key)], lambda: actor.acquire_lock(key, other.id, ttl_seconds=60)
        )
        assert (await actor.get_lock(key)).run_id == blocked.id  # type: ignore[union-attr]


@postgres_only
async def test_stores_in_other_schemas_are_not_woken(make_store_url: UrlFactory) -> None:
    one, other = make_store_url(), make_store_url()
    async with await open_store(one) as writer, await open_store(other) as stranger:
        await _project(writer)
        waiting = asyncio.ensure_future(stranger.wait_for_change([QUEUE], 0.5))
        await asyncio.sleep(0.02)
        await writer.enqueue(NewItem("worker", TriggerKind.MANUAL))
        assert not await waiting


@postgres_only
async def test_a_burst_of_enqueues_costs_few_wakeups(make_store_url: UrlFactory) -> None:
    """1,000 enqueues by another process while the consumer works: the consumer's loop
    (one claim per wake-up, as the dispatcher) runs far fewer than 1,000 times."""
    url = make_store_url()
    async with await open_store(url) as writer, await open_store(url) as consumer:
        await _project(writer)
        wake = asyncio.Event()
        notices = 0

        def noticed() -> None:
            nonlocal notices
            notices += 1
            wake.set()

        unsubscribe = consumer.changes.subscribe(QUEUE, noticed)
        rounds = 0
        stop = False
        work = 0.1  # a claim's worth of work, generously

        async def loop() -> None:
            nonlocal rounds
            while not stop:
                wake.clear()
                rounds += 1
                await asyncio.sleep(work)
                await wake.wait()

        async def intake() -> None:  # one of 8 connections queuing 125 items each
            for _ in range(125):
                await writer.enqueue(NewItem("worker", TriggerKind.WEBHOOK))

        looping = asyncio.ensure_future(loop())
        started = time.monotonic()
        await asyncio.gather(*(intake() for _ in range(8)))
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.3)
        stop = True
        wake.set()
        await looping
        unsubscribe()
        assert notices >= 900, notices  # one per enqueue's transaction
        assert 2 <= rounds <= elapsed / work + 4, (rounds, elapsed)
        assert rounds < 250, rounds


@postgres_only
async def test_wakeups_resume_after_the_listen_connection_is_killed(
    make_store_url: UrlFactory, raw_sql: RawSql
) -> None:
    url = make_store_url()
    async with await open_store(url) as writer, await open_store(url) as waiter:
        await _project(writer)
        listener = waiter.listener  # type: ignore[attr-defined]
        first_pid = listener.pid
        everyone = asyncio.ensure_future(waiter.wait_for_change(["call:nothing"], 10.0))
        await asyncio.sleep(0.02)
        raw_sql(url, f"SELECT pg_terminate_backend({first_pid})")
        # Reconnected, everyone is woken once: notices sent meanwhile were lost.
        assert await everyone
        deadline = time.monotonic() + 10
        while listener.pid == first_pid or not waiter.changes.remote:
            assert time.monotonic() < deadline, "the listener did not reconnect"
            await asyncio.sleep(0.01)
        assert listener.connections == 2
        item = NewItem("worker", TriggerKind.MANUAL)
        delay = await _woken(waiter, [QUEUE], lambda: writer.enqueue(item))
        assert delay < 0.5


@postgres_only
async def test_a_call_answered_wakes_its_waiters_elsewhere(make_store_url: UrlFactory) -> None:
    url = make_store_url()
    async with await open_store(url) as actor, await open_store(url) as waiter:
        await _project(actor)
        caller = await actor.create_run(NewRun("worker", TriggerKind.MANUAL))
        made = await actor.create_call(caller.id, "helper", "context", max_depth=3)
        assert isinstance(made, Call)
        call_id = made.id
        [claim] = await actor.claim("s1", lease_seconds=60, limit=1)

        async def answer() -> None:
            await actor.set_return_value(claim.run.id, "done")
            fence = claim.item.fence
            assert fence is not None
            await actor.finalize(claim.run.id, fence=fence, state=RunState.SUCCEEDED, exit_code=0)

        await _woken(waiter, [call_topic(call_id)], answer)


@postgres_only
async def test_fresh_schema_and_migrations_install_the_same_triggers(
    make_store_url: UrlFactory, raw_sql: RawSql
) -> None:
    """The schema dump of test_migrations compares tables and indexes; triggers and their
    functions (0014's notices among them) are compared here."""
    fresh, stepwise = make_store_url(), make_store_url()
    async with await open_store(fresh):
        pass
    async with await open_store(stepwise, migrate=False) as store:
        await store.migrate(install_schema=False)

    def triggers(url: str) -> list[tuple[Any, ...]]:
        return raw_sql(
            url,
            "SELECT t.tgrelid::regclass::text, t.tgname, "
            "regexp_replace(pg_get_triggerdef(t.oid), '\\S+\\.', '', 'g') "
            "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace "
            "ORDER BY 1, 2",
        )

    def functions(url: str) -> list[tuple[Any, ...]]:
        return raw_sql(
            url,
            "SELECT p.proname, p.prosrc FROM pg_proc p "
            "WHERE p.pronamespace = current_schema()::regnamespace ORDER BY 1",
        )

    assert triggers(fresh) == triggers(stepwise)
    assert functions(fresh) == functions(stepwise)
    names = {name for _, name, _ in triggers(fresh)}
    assert {"corral_queue_inserted", "corral_locks_deleted", "corral_calls_updated"} <= names
