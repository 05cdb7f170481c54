"""A run's end wakes the waiters of what it changed, and no one else (D107).

The keys it held (``lock:<key>``) and the call it answered (``call:<id>``) are notified as
its end commits: on SQLite by the store itself, in this process; on PostgreSQL by the
tables' triggers, through the store's listener. A waiter of any other topic sleeps on.
"""

from __future__ import annotations

import asyncio

from corral.store import AgentSpec, Call, NewItem, NewRun, RunState, Store, TriggerKind
from corral.store._notify import call_topic, lock_topic

#: A notice due is heard well within this (PostgreSQL's goes through the server).
PROMPT = 2.0


async def test_a_run_end_wakes_the_waiters_of_its_keys_and_its_call_only(store: Store) -> None:
    await store.sync_project(
        [AgentSpec("dev", 5, 10), AgentSpec("helper", 5, 10)],
        scale_cap=None,
        max_attempts=2,
        max_reruns=0,
    )
    caller = await store.create_run(NewRun(agent="dev", trigger=TriggerKind.MANUAL))
    made = await store.create_call(caller.id, "helper", "look at it", max_depth=3)
    assert isinstance(made, Call)
    [callee] = await store.claim("s1", lease_seconds=60, limit=1)
    assert callee.run.fence is not None
    for key in ("db://held", "db://also-held"):
        await store.acquire_lock(key, callee.run.id, ttl_seconds=60)
    # A run waits for one of them (PostgreSQL notifies a key only when someone waits).
    other = await store.create_run(NewRun(agent="dev", trigger=TriggerKind.MANUAL))
    await store.wait_for_lock("db://held", other.id, ttl_seconds=60, wait_seconds=60)
    await store.acquire_lock("db://unrelated", other.id, ttl_seconds=60)
    await store.enqueue(NewItem("dev", TriggerKind.MANUAL))  # any notices of it come now
    await asyncio.sleep(0.3)

    changes = store.changes
    held = asyncio.ensure_future(changes.wait([lock_topic("db://held")], PROMPT))
    answered = asyncio.ensure_future(changes.wait([call_topic(made.id)], PROMPT))
    unrelated = asyncio.ensure_future(changes.wait([lock_topic("db://unrelated")], PROMPT))
    other_call = asyncio.ensure_future(changes.wait([call_topic("999999")], PROMPT))
    await asyncio.sleep(0)

    await store.finalize(
        callee.run.id, fence=callee.run.fence, state=RunState.SUCCEEDED, exit_code=0
    )

    assert await held, "the waiter of a key the run held was not woken"
    assert await answered, "the caller waiting on the run's call was not woken"
    assert not await unrelated, "a waiter of a key the run never held was woken"
    assert not await other_call, "a waiter of another call was woken"
    lock = await store.get_lock("db://held")
    assert lock is not None and lock.run_id == other.id  # handed over to the waiter
