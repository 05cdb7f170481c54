"""Conformance suite for agent-to-agent calls (``al-subagent``): creating them (depth, self
calls, full queues, unknown and disabled agents), who may see them, waiting on them, and how
a call follows its queue item and callee run, on both stores."""

from __future__ import annotations

import dataclasses

import pytest

from corral.errors import StoreError
from corral.store import (
    AgentSpec,
    Call,
    CallRefusal,
    CallState,
    Claim,
    ItemState,
    NewItem,
    QueueItem,
    Run,
    RunState,
    Store,
    TriggerKind,
)
from tests.store._roundtrips import counted_store
from tests.store.conftest import Clock

LEASE = 60.0
DEPTH = 3


# -- helpers -----------------------------------------------------------------------------


async def setup(
    store: Store,
    *agents: str,
    size: int = 5,
    max_attempts: int = 2,
) -> None:
    await store.sync_project(
        [AgentSpec(agent, 5, size) for agent in agents or ("dev", "reviewer")],
        scale_cap=None,
        max_attempts=max_attempts,
        max_reruns=0,
    )


async def claimed(
    store: Store, agent: str = "dev", *, owner: str = "s1", lease: float = LEASE
) -> Claim:
    item = (await store.enqueue(NewItem(agent, TriggerKind.MANUAL))).item
    return await claim_item(store, item.id, owner=owner, lease=lease)


async def claim_item(
    store: Store, item_id: int | None, *, owner: str = "s1", lease: float = LEASE
) -> Claim:
    assert item_id is not None
    [claim] = await store.claim(owner, lease_seconds=lease, limit=1, item_id=item_id)
    await store.mark_run_running(claim.run.id, pid=1, host="h")
    return claim


def fence(claim: Claim) -> int:
    assert claim.run.fence is not None
    return claim.run.fence


async def call(
    store: Store, caller: Run, target: str = "reviewer", context: str = "review PR 42"
) -> Call:
    result = await store.create_call(caller.id, target, context, max_depth=DEPTH)
    assert isinstance(result, Call), result
    return result


async def seen(store: Store, made: Call) -> Call:
    """The call as its caller sees it now."""
    current = await store.get_call(made.id, caller_run_id=made.caller_run_id)
    assert current is not None
    return current


async def items(store: Store, agent: str) -> list[QueueItem]:
    return await store.list_items(agent=agent)


async def queued(store: Store, agent: str) -> list[QueueItem]:
    return await store.list_items(agent=agent, states=[ItemState.QUEUED])


# -- creating a call -----------------------------------------------------------------------


async def test_a_call_is_a_pending_call_and_a_queued_item(store: Store, clock: Clock) -> None:
    await setup(store)
    caller = await claimed(store)
    made = await call(store, caller.run, context="look at src/")
    assert made == Call(
        id=made.id,
        caller_run_id=caller.run.id,
        caller_agent="dev",
        target_agent="reviewer",
        depth=1,
        context="look at src/",
        item_id=made.item_id,
        callee_run_id=None,
        state=CallState.PENDING,
        return_value=None,
        error=None,
        created_at=clock.now,
        ended_at=None,
        waiting_since=None,
    )
    assert made.id
    [item] = await items(store, "reviewer")
    assert item.id == made.item_id
    assert item.state is ItemState.QUEUED
    assert item.trigger is TriggerKind.CALL
    assert item.trigger_detail == {"caller": "dev", "context": "look at src/"}
    assert item.parent_run_id == caller.run.id
    assert await seen(store, made) == made
    assert await store.list_calls() == [made]


async def test_calls_get_distinct_ids_and_are_listed_newest_first(
    store: Store, clock: Clock
) -> None:
    await setup(store)
    caller = await claimed(store)
    first = await call(store, caller.run)
    clock.advance(1)
    second = await call(store, caller.run)
    assert first.id != second.id and first.item_id != second.item_id
    assert await store.list_calls() == [second, first]
    assert await store.list_calls(limit=1) == [second]


async def test_a_self_call_is_refused_and_queues_nothing(store: Store) -> None:
    await setup(store)
    caller = await claimed(store)
    before = await items(store, "dev")
    refusal = await store.create_call(caller.run.id, "dev", "me again", max_depth=DEPTH)
    assert refusal == CallRefusal("self-call not allowed")
    assert await items(store, "dev") == before
    assert await store.list_calls() == []


async def test_calls_are_refused_beyond_the_maximum_depth(store: Store) -> None:
    await setup(store, "a", "b", "c", "d", "e")
    run = (await claimed(store, "a")).run
    depths = []
    for target in ("b", "c", "d"):
        made = await call(store, run, target)
        depths.append(made.depth)
        run = (await claim_item(store, made.item_id)).run
    assert depths == [1, 2, 3]
    refusal = await store.create_call(run.id, "e", "deeper", max_depth=DEPTH)
    assert isinstance(refusal, CallRefusal)
    assert "maxCallDepth" in refusal.reason and "4" in refusal.reason
    assert await items(store, "e") == []
    assert len(await store.list_calls()) == 3
    # The same chain is fine with a larger limit.
    assert isinstance(await store.create_call(run.id, "e", "ok", max_depth=4), Call)


async def test_a_depth_limit_of_zero_refuses_every_call(store: Store) -> None:
    await setup(store)
    caller = await claimed(store)
    refusal = await store.create_call(caller.run.id, "reviewer", "x", max_depth=0)
    assert isinstance(refusal, CallRefusal) and "maxCallDepth 0" in refusal.reason
    assert await items(store, "reviewer") == []


async def test_a_full_queue_refuses_a_call_and_keeps_its_items(store: Store) -> None:
    await setup(store, "dev", "reviewer", size=2)
    caller = await claimed(store)
    waiting = (await store.enqueue(NewItem("reviewer", TriggerKind.WEBHOOK))).item
    fits = await call(store, caller.run)  # the second of two places
    refusal = await store.create_call(caller.run.id, "reviewer", "one too many", max_depth=DEPTH)
    assert refusal == CallRefusal("queue full")
    assert sorted(item.id for item in await queued(store, "reviewer")) == sorted(
        [waiting.id, fits.item_id or 0]
    )
    # The refused call is on record as a rejected item, and has no call row.
    [rejected] = await store.list_items(agent="reviewer", states=[ItemState.REJECTED])
    assert (rejected.trigger, rejected.reason) == (TriggerKind.CALL, "queue full")
    assert await store.list_calls() == [fits]
    assert (await seen(store, fits)).state is CallState.PENDING


async def test_a_call_to_an_unknown_agent_is_refused(store: Store) -> None:
    await setup(store)
    caller = await claimed(store)
    refusal = await store.create_call(caller.run.id, "ghost", "anyone?", max_depth=DEPTH)
    assert isinstance(refusal, CallRefusal) and "unknown agent 'ghost'" in refusal.reason
    assert await queued(store, "ghost") == []
    assert await store.list_calls() == []


async def test_a_call_to_a_disabled_agent_is_refused(store: Store) -> None:
    await setup(store)
    await store.set_enabled("reviewer", False)
    caller = await claimed(store)
    refusal = await store.create_call(caller.run.id, "reviewer", "please", max_depth=DEPTH)
    assert isinstance(refusal, CallRefusal) and "disabled" in refusal.reason
    assert await queued(store, "reviewer") == []
    assert await store.list_calls() == []


async def test_a_call_to_an_agent_of_scale_zero_is_refused(store: Store) -> None:
    await setup(store)
    await store.set_agent_scale("reviewer", 0)
    caller = await claimed(store)
    refusal = await store.create_call(caller.run.id, "reviewer", "please", max_depth=DEPTH)
    assert isinstance(refusal, CallRefusal) and "scale = 0" in refusal.reason
    assert await queued(store, "reviewer") == []
    assert await store.list_calls() == []


async def test_a_paused_agent_takes_calls(store: Store) -> None:
    await setup(store)
    await store.set_paused("reviewer", True)
    caller = await claimed(store)
    made = await call(store, caller.run)
    assert [item.id for item in await queued(store, "reviewer")] == [made.item_id]


async def test_only_a_live_run_may_call(store: Store) -> None:
    await setup(store)
    caller = await claimed(store)
    await store.finalize(caller.run.id, fence=fence(caller), state=RunState.SUCCEEDED, exit_code=0)
    with pytest.raises(StoreError, match="has ended"):
        await store.create_call(caller.run.id, "reviewer", "late", max_depth=DEPTH)
    with pytest.raises(StoreError, match="no run 'ghost'"):
        await store.create_call("ghost", "reviewer", "who", max_depth=DEPTH)
    assert await items(store, "reviewer") == []


# -- who sees a call -----------------------------------------------------------------------


async def test_only_the_caller_sees_its_call(store: Store) -> None:
    await setup(store)
    caller, other = await claimed(store), await claimed(store)
    made = await call(store, caller.run)
    assert await store.get_call(made.id, caller_run_id=other.run.id) is None
    assert await store.get_call(made.id, caller_run_id="ghost") is None
    assert await store.get_call("no-such-call", caller_run_id=caller.run.id) is None
    assert await store.get_call(made.id, caller_run_id=caller.run.id) == made


# -- a call follows its item and its callee run --------------------------------------------


async def test_claiming_the_item_starts_the_call(store: Store) -> None:
    await setup(store)
    caller = await claimed(store)
    made = await call(store, caller.run, context="ctx")
    callee = await claim_item(store, made.item_id)
    assert callee.run.trigger is TriggerKind.CALL
    assert callee.run.parent_run_id == caller.run.id
    assert callee.run.trigger_detail == {"caller": "dev", "context": "ctx"}
    assert await seen(store, made) == dataclasses.replace(
        made, state=CallState.RUNNING, callee_run_id=callee.run.id
    )


async def test_a_claim_of_all_queued_items_starts_the_call_too(store: Store) -> None:
    await setup(store)
    caller = await claimed(store)
    made = await call(store, caller.run)
    [callee] = await store.claim("s2", lease_seconds=LEASE, limit=10)
    assert callee.item.id == made.item_id
    now = await seen(store, made)
    assert (now.state, now.callee_run_id) == (CallState.RUNNING, callee.run.id)


async def test_a_succeeded_callee_completes_the_call_with_its_return_value(
    store: Store, clock: Clock
) -> None:
    await setup(store)
    caller = await claimed(store)
    made = await call(store, caller.run)
    callee = await claim_item(store, made.item_id)
    await store.set_return_value(callee.run.id, "no findings")
    clock.advance(5)
    await store.finalize(callee.run.id, fence=fence(callee), state=RunState.SUCCEEDED, exit_code=0)
    now = await seen(store, made)
    assert (now.state, now.return_value, now.error, now.ended_at) == (
        CallState.COMPLETED,
        "no findings",
        None,
        clock.now,
    )
    assert now.callee_run_id == callee.run.id


async def test_a_succeeded_callee_without_a_return_value(store: Store) -> None:
    await setup(store)
    caller = await claimed(store)
    made = await call(store, caller.run)
    callee = await claim_item(store, made.item_id)
    await store.finalize(callee.run.id, fence=fence(callee), state=RunState.SUCCEEDED, exit_code=0)
    now = await seen(store, made)
    assert (now.state, now.return_value, now.error) == (CallState.COMPLETED, None, None)


async def test_a_large_return_value_comes_back_whole(store: Store) -> None:
    await setup(store)
    caller = await claimed(store)
    made = await call(store, caller.run)
    callee = await claim_item(store, made.item_id)
    value = ("0123456789abcdef" * 65536)[:-3] + "é\n\x01"  # 1 MiB of characters
    assert len(value) == 1 << 20
    await store.set_return_value(callee.run.id, value)
    await store.finalize(callee.run.id, fence=fence(callee), state=RunState.SUCCEEDED, exit_code=0)
    assert (await seen(store, made)).return_value == value


async def test_a_failed_callee_answers_an_error_naming_the_run(store: Store, clock: Clock) -> None:
    await setup(store)
    caller = await claimed(store)
    made = await call(store, caller.run)
    callee = await claim_item(store, made.item_id)
    await store.set_return_value(callee.run.id, "half done")
    clock.advance(2)
    await store.finalize(
        callee.run.id, fence=fence(callee), state=RunState.FAILED, exit_code=3, error="boom"
    )
    now = await seen(store, made)
    assert now.state is CallState.ERROR
    assert now.return_value is None
    assert now.error is not None
    assert callee.run.id in now.error and "failed" in now.error and "boom" in now.error
    assert now.ended_at == clock.now


@pytest.mark.parametrize(
    ("state", "error", "answer"),
    [
        (RunState.FAILED, "boom", "reviewer run {id} failed: boom"),
        (RunState.TIMED_OUT, "", "reviewer run {id} timed_out"),
        (RunState.KILLED, None, "reviewer run {id} killed"),
    ],
)
async def test_the_error_a_call_answers_is_worded_alike_on_both_stores(
    store: Store, state: RunState, error: str | None, answer: str
) -> None:
    """PostgreSQL words it in SQL (``finalize_run``), SQLite in Python: the same text."""
    await setup(store)
    caller = await claimed(store)
    made = await call(store, caller.run)
    callee = await claim_item(store, made.item_id)
    await store.finalize(callee.run.id, fence=fence(callee), state=state, exit_code=1, error=error)
    assert (await seen(store, made)).error == answer.format(id=callee.run.id)


async def test_a_lost_callee_puts_the_call_back_then_fails_it(store: Store, clock: Clock) -> None:
    await setup(store, "dev", "reviewer", max_attempts=2)
    caller = await claimed(store, owner="alive", lease=1000)
    made = await call(store, caller.run)
    first = await claim_item(store, made.item_id, owner="flaky", lease=10)
    clock.advance(11)
    [recovered] = await store.recover_lapsed()
    assert recovered.item.id == made.item_id and recovered.item.state is ItemState.QUEUED
    now = await seen(store, made)
    assert (now.state, now.callee_run_id, now.error) == (CallState.PENDING, None, None)

    second = await claim_item(store, made.item_id, owner="flaky", lease=10)
    assert second.run.id != first.run.id
    now = await seen(store, made)
    assert (now.state, now.callee_run_id) == (CallState.RUNNING, second.run.id)
    clock.advance(11)
    [gave_up] = await store.recover_lapsed()
    assert gave_up.item.state is ItemState.FAILED
    now = await seen(store, made)
    assert now.state is CallState.ERROR and now.ended_at == clock.now
    assert now.error is not None and "gave up after 2 attempts" in now.error
    assert second.run.id in now.error


async def test_a_callee_released_with_its_scheduler_puts_the_call_back(store: Store) -> None:
    await setup(store)
    caller = await claimed(store, owner="alive")
    made = await call(store, caller.run)
    await claim_item(store, made.item_id, owner="leaving")
    await store.release_owner("leaving", reason="scheduler stopped")
    now = await seen(store, made)
    assert (now.state, now.callee_run_id) == (CallState.PENDING, None)


async def test_a_dropped_call_item_answers_an_error(store: Store, clock: Clock) -> None:
    await setup(store, "dev", "reviewer", size=2)
    caller = await claimed(store)
    made = await call(store, caller.run)
    await store.enqueue(NewItem("reviewer", TriggerKind.WEBHOOK))
    clock.advance(1)
    result = await store.enqueue(NewItem("reviewer", TriggerKind.WEBHOOK))
    assert [item.id for item in result.dropped] == [made.item_id]
    now = await seen(store, made)
    assert now.state is CallState.ERROR and now.ended_at == clock.now
    assert now.error is not None and "dropped" in now.error
    assert now.callee_run_id is None


async def test_a_finished_call_does_not_change_when_its_item_is_handled_later(
    store: Store,
) -> None:
    await setup(store)
    caller = await claimed(store)
    made = await call(store, caller.run)
    callee = await claim_item(store, made.item_id)
    await store.set_return_value(callee.run.id, "v")
    await store.finalize(callee.run.id, fence=fence(callee), state=RunState.SUCCEEDED, exit_code=0)
    done = await seen(store, made)
    # More work for the reviewer, and recovery, touch only other items.
    await store.enqueue(NewItem("reviewer", TriggerKind.WEBHOOK))
    await store.recover_lapsed()
    assert await seen(store, made) == done


# -- waiting on calls ----------------------------------------------------------------------


async def test_waiting_on_calls_sets_and_clears_the_flag(store: Store, clock: Clock) -> None:
    await setup(store)
    caller = await claimed(store)
    one, two = await call(store, caller.run), await call(store, caller.run)
    clock.advance(3)
    assert await store.wait_on_calls(caller.run.id, [one.id, two.id], waiting=True) is None
    assert (await seen(store, one)).waiting_since == clock.now
    assert (await seen(store, two)).waiting_since == clock.now
    assert await store.wait_on_calls(caller.run.id, [one.id], waiting=False) is None
    assert (await seen(store, one)).waiting_since is None
    assert (await seen(store, two)).waiting_since == clock.now


async def test_another_run_cannot_wait_on_a_call(store: Store) -> None:
    await setup(store)
    caller, other = await claimed(store), await claimed(store)
    made = await call(store, caller.run)
    assert await store.wait_on_calls(other.run.id, [made.id], waiting=True) is None
    assert (await seen(store, made)).waiting_since is None
    assert await store.wait_on_calls(caller.run.id, ["no-such-call"], waiting=True) is None


async def test_an_answer_clears_the_waiting_flag(store: Store) -> None:
    await setup(store)
    caller = await claimed(store)
    made = await call(store, caller.run)
    callee = await claim_item(store, made.item_id)
    assert await store.wait_on_calls(caller.run.id, [made.id], waiting=True) is None
    await store.finalize(callee.run.id, fence=fence(callee), state=RunState.FAILED, exit_code=1)
    assert (await seen(store, made)).waiting_since is None


async def test_finalising_the_caller_clears_its_waiting_flags(store: Store) -> None:
    await setup(store)
    caller = await claimed(store)
    pending, running = await call(store, caller.run), await call(store, caller.run)
    await claim_item(store, running.item_id)
    assert await store.wait_on_calls(caller.run.id, [pending.id, running.id], waiting=True) is None
    await store.finalize(caller.run.id, fence=fence(caller), state=RunState.KILLED, exit_code=None)
    assert (await seen(store, pending)).waiting_since is None
    assert (await seen(store, running)).waiting_since is None
    # The call itself goes on: its callee may still answer.
    assert (await seen(store, running)).state is CallState.RUNNING


async def test_losing_the_caller_clears_its_waiting_flags(store: Store, clock: Clock) -> None:
    await setup(store)
    caller = await claimed(store, owner="flaky", lease=10)
    made = await call(store, caller.run)
    await claim_item(store, made.item_id, owner="alive", lease=1000)
    assert await store.wait_on_calls(caller.run.id, [made.id], waiting=True) is None
    clock.advance(11)
    [recovered] = await store.recover_lapsed()
    assert recovered.run is not None and recovered.run.id == caller.run.id
    assert (await seen(store, made)).waiting_since is None


async def test_depth_is_read_from_the_call_the_caller_answers(store: Store) -> None:
    """A run claimed for a call that was put back keeps the call's depth."""
    await setup(store, "a", "b", "c")
    top = await claimed(store, "a", owner="alive", lease=1000)
    made = await call(store, top.run, "b")
    await claim_item(store, made.item_id, owner="flaky", lease=10)
    await store.release_owner("flaky", reason="gone")
    retry = await claim_item(store, made.item_id, owner="alive", lease=1000)
    deeper = await call(store, retry.run, "c")
    assert deeper.depth == 2


# -- round trips on PostgreSQL -----------------------------------------------------------


@pytest.mark.parametrize(
    "dialect", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_call_and_an_enqueue_are_one_round_trip_each_on_postgresql(
    store_url: str,
) -> None:
    """A call (the project lock, the caller's checks, its item and the call row) and a
    plain enqueue are each ONE round trip: a call of a function of migration 0017 in
    autocommit (6 and 4 round trips before: BEGIN, statements, COMMIT)."""
    async with counted_store(store_url) as (store, trips):
        await setup(store, "dev", "reviewer", size=50)
        caller = await claimed(store)
        with trips.counting() as enqueue:
            await store.enqueue(NewItem("reviewer", TriggerKind.MANUAL))
        with trips.counting() as calling:
            made = await call(store, caller.run)
        assert enqueue.statements == 1, enqueue.queries
        assert calling.statements == 1, calling.queries
        assert "corral_create_call" in calling.queries[0]
        assert (await seen(store, made)).state is CallState.PENDING
