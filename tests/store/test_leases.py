"""Conformance suite for leases: renew, finalize (fencing, reruns), kill and rerun requests,
recovery of lapsed leases, and the scheduler registry, on both stores."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from corral.errors import StoreError
from corral.store import (
    AgentSpec,
    Claim,
    ItemState,
    LockGrant,
    LockHeld,
    NewItem,
    RunState,
    SchedulerState,
    StaleFence,
    Store,
    TriggerKind,
)
from tests.store._roundtrips import counted_store
from tests.store.conftest import Clock

LEASE = 60.0


async def setup(store: Store, *, scale: int = 5, size: int = 10, **limits: int) -> None:
    await store.sync_project(
        [AgentSpec("a", scale, size), AgentSpec("b", scale, size)],
        scale_cap=None,
        max_attempts=limits.get("max_attempts", 2),
        max_reruns=limits.get("max_reruns", 2),
    )


async def claimed(
    store: Store,
    trigger: TriggerKind = TriggerKind.SCHEDULE,
    *,
    agent: str = "a",
    owner: str = "s1",
    lease: float = LEASE,
) -> Claim:
    item = (await store.enqueue(NewItem(agent, trigger, prompt="p", trigger_detail={"x": 1}))).item
    [claim] = await store.claim(owner, lease_seconds=lease, limit=1, item_id=item.id)
    return claim


async def finish(store: Store, claim: Claim, state: RunState = RunState.SUCCEEDED) -> None:
    await store.finalize(claim.run.id, fence=fence(claim), state=state, exit_code=0)


def fence(claim: Claim) -> int:
    assert claim.run.fence is not None
    return claim.run.fence


# -- finalize ------------------------------------------------------------------------


async def test_finalize_ends_the_run_and_the_item(store: Store, clock: Clock) -> None:
    await setup(store)
    claim = await claimed(store)
    await store.mark_run_running(claim.run.id, pid=1, host="h")
    clock.advance(5)
    result = await store.finalize(
        claim.run.id, fence=fence(claim), state=RunState.FAILED, exit_code=2, error="boom"
    )
    assert (result.run.state, result.run.exit_code, result.run.error) == (
        RunState.FAILED,
        2,
        "boom",
    )
    assert result.run.ended_at == clock.now
    assert result.item.state is ItemState.DONE and result.item.finished_at == clock.now
    assert result.rerun_item is None
    assert await store.get_run(claim.run.id) == result.run
    assert await store.get_item(claim.item.id) == result.item
    assert (await store.agent_states())[0].active == 0


async def test_finalize_needs_a_terminal_state(store: Store) -> None:
    await setup(store)
    claim = await claimed(store)
    with pytest.raises(ValueError, match="terminal state"):
        await store.finalize(claim.run.id, fence=fence(claim), state=RunState.RUNNING, exit_code=0)


async def test_finalize_of_an_unknown_run(store: Store) -> None:
    with pytest.raises(StoreError, match="no run 'ghost'"):
        await store.finalize("ghost", fence=1, state=RunState.FAILED, exit_code=1)


async def test_finalize_with_a_wrong_fence_is_stale_and_changes_nothing(store: Store) -> None:
    await setup(store)
    claim = await claimed(store)
    with pytest.raises(StaleFence, match=r"lease was lost and the item was handed on") as caught:
        await store.finalize(
            claim.run.id, fence=fence(claim) - 1, state=RunState.FAILED, exit_code=1
        )
    assert isinstance(caught.value, StoreError)
    assert await store.get_run(claim.run.id) == claim.run
    assert await store.get_item(claim.item.id) == claim.item


async def test_finalize_twice_is_stale(store: Store) -> None:
    await setup(store)
    claim = await claimed(store)
    await finish(store, claim)
    with pytest.raises(StaleFence, match=r"it is now done"):
        await finish(store, claim, RunState.FAILED)


async def test_finalize_after_the_item_was_handed_on(store: Store, clock: Clock) -> None:
    await setup(store, max_attempts=3)
    first = await claimed(store, owner="s1")
    clock.advance(LEASE + 1)
    await store.recover_lapsed()
    [second] = await store.claim("s2", lease_seconds=LEASE, limit=1)
    assert second.item.id == first.item.id and fence(second) > fence(first)
    message = (
        f"run {first.run.id} (fence {fence(first)}) may not finish item {first.item.id}: "
        "the run's lease was lost and the item was handed on "
        f"(it is now claimed, fence {fence(second)}); nothing was changed"
    )
    with pytest.raises(StaleFence, match=re.escape(message)):
        await finish(store, first)
    assert (await store.get_item(first.item.id)) == second.item
    lost = await store.get_run(first.run.id)
    assert lost is not None and lost.state is RunState.LOST
    await finish(store, second)


async def test_a_lapsed_but_unrecovered_lease_may_still_finalize(
    store: Store, clock: Clock
) -> None:
    await setup(store)
    claim = await claimed(store)
    clock.advance(LEASE * 3)
    result = await store.finalize(
        claim.run.id, fence=fence(claim), state=RunState.SUCCEEDED, exit_code=0
    )
    assert result.item.state is ItemState.DONE
    assert await store.recover_lapsed() == []


async def test_a_run_that_was_not_claimed_cannot_finalize(store: Store) -> None:
    from corral.store import NewRun

    run = await store.create_run(NewRun(agent="a", trigger=TriggerKind.MANUAL))
    with pytest.raises(StaleFence, match="it was not claimed from the queue"):
        await store.finalize(run.id, fence=1, state=RunState.FAILED, exit_code=1)


# -- reruns --------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", [TriggerKind.SCHEDULE, TriggerKind.MANUAL])
async def test_a_requested_rerun_is_queued_after_success(
    store: Store, trigger: TriggerKind
) -> None:
    await setup(store)
    claim = await claimed(store, trigger)
    requested = await store.request_rerun(claim.run.id)
    assert requested.rerun_requested
    result = await store.finalize(
        claim.run.id, fence=fence(claim), state=RunState.SUCCEEDED, exit_code=0
    )
    rerun = result.rerun_item
    assert rerun is not None and rerun.state is ItemState.QUEUED
    assert (rerun.agent, rerun.trigger, rerun.prompt, rerun.trigger_detail) == (
        "a",
        trigger,
        "p",
        {"x": 1},
    )
    assert (rerun.parent_run_id, rerun.rerun_count) == (claim.run.id, 1)
    [next_claim] = await store.claim("s1", lease_seconds=LEASE, limit=5)
    assert next_claim.item.id == rerun.id
    assert next_claim.run.parent_run_id == claim.run.id


@pytest.mark.parametrize(
    ("trigger", "state", "ask"),
    [
        (TriggerKind.WEBHOOK, RunState.SUCCEEDED, True),
        (TriggerKind.CALL, RunState.SUCCEEDED, True),
        (TriggerKind.SCHEDULE, RunState.FAILED, True),
        (TriggerKind.MANUAL, RunState.KILLED, True),
        (TriggerKind.SCHEDULE, RunState.SUCCEEDED, False),
    ],
)
async def test_no_rerun_unless_every_condition_holds(
    store: Store, trigger: TriggerKind, state: RunState, ask: bool
) -> None:
    await setup(store)
    claim = await claimed(store, trigger)
    if ask:
        await store.request_rerun(claim.run.id)
    result = await store.finalize(claim.run.id, fence=fence(claim), state=state, exit_code=0)
    assert result.rerun_item is None
    assert await store.list_items(states=[ItemState.QUEUED]) == []


async def test_a_rerun_chain_stops_at_max_reruns(store: Store) -> None:
    await setup(store, max_reruns=2)
    claim = await claimed(store, TriggerKind.MANUAL)
    chain = [claim.item.rerun_count]
    while True:
        await store.request_rerun(claim.run.id)
        result = await store.finalize(
            claim.run.id, fence=fence(claim), state=RunState.SUCCEEDED, exit_code=0
        )
        if result.rerun_item is None:
            break
        [claim] = await store.claim("s1", lease_seconds=LEASE, limit=1)
        chain.append(claim.item.rerun_count)
    assert chain == [0, 1, 2]


async def test_a_rerun_into_a_full_queue_drops_the_oldest(store: Store) -> None:
    await setup(store, size=1)
    claim = await claimed(store)
    waiting = (await store.enqueue(NewItem("a", TriggerKind.WEBHOOK))).item
    await store.request_rerun(claim.run.id)
    result = await store.finalize(
        claim.run.id, fence=fence(claim), state=RunState.SUCCEEDED, exit_code=0
    )
    assert result.rerun_item is not None and result.rerun_item.state is ItemState.QUEUED
    dropped = await store.get_item(waiting.id)
    assert dropped is not None and dropped.state is ItemState.DROPPED


async def test_a_rerun_for_a_disabled_agent_is_recorded_rejected(store: Store) -> None:
    await setup(store)
    claim = await claimed(store)
    await store.request_rerun(claim.run.id)
    await store.set_enabled("a", False)
    result = await store.finalize(
        claim.run.id, fence=fence(claim), state=RunState.SUCCEEDED, exit_code=0
    )
    assert result.rerun_item is not None
    assert result.rerun_item.state is ItemState.REJECTED
    assert "disabled by an operator" in (result.rerun_item.reason or "")


# -- kill and rerun requests ---------------------------------------------------------


async def test_kill_requests_are_seen_by_the_owner(store: Store, clock: Clock) -> None:
    await setup(store)
    mine, theirs = await claimed(store, owner="s1"), await claimed(store, owner="s2")
    assert await store.kill_requests("s1") == []
    killed = await store.request_kill(mine.run.id)
    assert killed.kill_requested_at == clock.now
    clock.advance(3)
    again = await store.request_kill(mine.run.id)
    assert again.kill_requested_at == killed.kill_requested_at
    await store.request_kill(theirs.run.id)
    assert [r.id for r in await store.kill_requests("s1")] == [mine.run.id]
    await store.finalize(mine.run.id, fence=fence(mine), state=RunState.KILLED, exit_code=None)
    assert await store.kill_requests("s1") == []


async def test_requests_on_a_finished_run_are_refused(store: Store, clock: Clock) -> None:
    await setup(store)
    claim = await claimed(store)
    await store.finalize(claim.run.id, fence=fence(claim), state=RunState.FAILED, exit_code=3)
    ended = clock.now.isoformat(timespec="seconds")
    with pytest.raises(
        StoreError,
        match=re.escape(
            f"cannot kill run {claim.run.id}: it already ended as failed, exit code 3 at {ended}"
        ),
    ):
        await store.request_kill(claim.run.id)
    with pytest.raises(StoreError, match=r"cannot request a rerun of run .*already ended"):
        await store.request_rerun(claim.run.id)
    with pytest.raises(StoreError, match="no run 'ghost'"):
        await store.request_kill("ghost")


# -- renew, recover, release ---------------------------------------------------------


async def test_renew_leases_extends_the_owners_leases(store: Store, clock: Clock) -> None:
    await setup(store)
    info = await store.register_scheduler(host="h", pid=1, gateway_url=None)
    mine = [await claimed(store, owner=info.id) for _ in range(2)]
    theirs = await claimed(store, owner="other")
    clock.advance(LEASE - 1)
    assert await store.renew_leases(info.id, lease_seconds=LEASE) == 2
    for claim in mine:
        item = await store.get_item(claim.item.id)
        assert item is not None and item.lease_expires_at == clock.now + timedelta(seconds=LEASE)
    assert (await store.list_schedulers())[0].heartbeat_at == clock.now
    clock.advance(2)
    [recovered] = await store.recover_lapsed()
    assert recovered.item.id == theirs.item.id
    with pytest.raises(ValueError, match="lease_seconds"):
        await store.renew_leases(info.id, lease_seconds=0)


async def test_recover_lapsed_requeues_then_fails(store: Store, clock: Clock) -> None:
    await setup(store, max_attempts=2)
    first = await claimed(store, owner="s1", lease=10)
    assert first.item.attempts == 1
    clock.advance(10)
    assert await store.recover_lapsed() == []  # expires_at < now: not yet
    clock.advance(1)
    [again] = await store.recover_lapsed()
    assert again.item.state is ItemState.QUEUED and again.item.attempts == 1
    assert (again.item.lease_owner, again.item.lease_expires_at) == (None, None)
    assert again.run is not None and again.run.state is RunState.LOST
    assert again.run.error == "lease lapsed: scheduler s1 stopped renewing it"
    assert again.run.ended_at == clock.now

    [second] = await store.claim("s2", lease_seconds=10, limit=1)
    assert (second.item.attempts, second.run.attempt) == (2, 2)
    clock.advance(11)
    [gave_up] = await store.recover_lapsed()
    assert gave_up.item.state is ItemState.FAILED
    assert gave_up.item.reason == (
        f"gave up after 2 attempts; the last run {second.run.id} was lost"
    )
    assert gave_up.item.finished_at == clock.now
    assert await store.claim("s2", lease_seconds=10, limit=5) == []
    runs = await store.list_runs(agent="a")
    assert sorted(r.attempt or 0 for r in runs) == [1, 2]
    assert {r.state for r in runs} == {RunState.LOST}


async def test_release_owner_takes_back_every_lease_at_once(store: Store) -> None:
    await setup(store, max_attempts=1)
    mine = [await claimed(store, owner="dead") for _ in range(2)]
    other = await claimed(store, owner="alive")
    recovered = await store.release_owner("dead", reason="its scheduler died")
    assert sorted(r.item.id for r in recovered) == sorted(c.item.id for c in mine)
    for entry in recovered:
        assert entry.item.state is ItemState.FAILED
        assert entry.run is not None and entry.run.error == "its scheduler died"
    assert await store.release_owner("dead", reason="again") == []
    item = await store.get_item(other.item.id)
    assert item is not None and item.state is ItemState.CLAIMED


# -- schedulers ----------------------------------------------------------------------


async def test_scheduler_registry(store: Store, clock: Clock) -> None:
    one = await store.register_scheduler(host="h1", pid=10, gateway_url="http://h1:8080")
    assert re.fullmatch(r"h1-10-[0-9a-f]{6}", one.id)
    assert (one.state, one.started_at, one.heartbeat_at) == (
        SchedulerState.RUNNING,
        clock.now,
        clock.now,
    )
    clock.advance(1)
    two = await store.register_scheduler(host="h2", pid=20, gateway_url=None)
    assert [s.id for s in await store.list_schedulers()] == [one.id, two.id]
    await store.set_scheduler_state(one.id, "draining")
    await store.set_scheduler_state(two.id, SchedulerState.STOPPED)
    listed = await store.list_schedulers()
    assert [s.state for s in listed] == ["draining", "stopped"]
    assert [s.id for s in await store.list_schedulers(live_only=True)] == [one.id]
    clock.advance(301)
    assert await store.list_schedulers(live_only=True) == []
    assert len(await store.list_schedulers(live_only=True, heartbeat_within=400)) == 1
    with pytest.raises(StoreError, match="no scheduler 'ghost'"):
        await store.set_scheduler_state("ghost", "stopped")
    with pytest.raises(ValueError, match="'asleep'"):
        await store.set_scheduler_state(one.id, "asleep")


async def test_finish_run_refuses_a_claimed_run(store: Store) -> None:
    await setup(store)
    claim = await claimed(store)
    with pytest.raises(
        StoreError, match=rf"holds queue item {claim.item.id}; end it with finalize"
    ):
        await store.finish_run(claim.run.id, state=RunState.SUCCEEDED, exit_code=0)
    item = await store.get_item(claim.item.id)
    assert item is not None and item.state is ItemState.CLAIMED


# -- round trips on PostgreSQL ---------------------------------------------------------

ON_POSTGRESQL = pytest.mark.parametrize(
    "dialect", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@ON_POSTGRESQL
async def test_finalize_is_one_round_trip_on_postgresql(store_url: str) -> None:
    """The usual end of a run (no rerun, no lock anyone waits for) is one statement: the
    item done, the run ended, its locks, wants and waits gone, in one round trip. A failed
    run costs one more: the read of its agent's last ends (a crash loop is recorded only
    when they all failed)."""
    async with counted_store(store_url) as (store, trips):
        await setup(store)
        claim = await claimed(store)
        other = await claimed(store, agent="b")
        assert isinstance(await store.acquire_lock("k", claim.run.id, ttl_seconds=60), LockGrant)
        assert isinstance(await store.acquire_lock("k2", other.run.id, ttl_seconds=60), LockGrant)
        await store.acquire_lock("k2", claim.run.id, ttl_seconds=60)  # a want of "k2"
        with trips.counting() as seen:
            result = await store.finalize(
                claim.run.id, fence=fence(claim), state=RunState.FAILED, exit_code=1, error="x"
            )
        assert seen.statements == 2, seen.queries
        assert seen.checks <= 2  # the pool's check of the connection, if it makes one
        assert result.run == await store.get_run(claim.run.id)
        assert result.item == await store.get_item(claim.item.id)
        assert (result.run.state, result.item.state) == (RunState.FAILED, ItemState.DONE)
        assert [lock.key for lock in await store.list_locks()] == ["k2"]
        assert await store.list_lock_wants() == []
        with trips.counting() as seen:
            done = await store.finalize(
                other.run.id, fence=fence(other), state=RunState.SUCCEEDED, exit_code=0
            )
        assert seen.statements == 1, seen.queries
        assert done.run.state is RunState.SUCCEEDED


@ON_POSTGRESQL
async def test_a_stale_finalize_on_postgresql_changes_nothing(store_url: str) -> None:
    """The one statement refuses a stale fence by changing nothing; the transaction then
    words the refusal as it always did."""
    async with counted_store(store_url) as (store, _):
        await setup(store)
        claim = await claimed(store)
        with pytest.raises(StaleFence, match=r"it is now claimed, fence"):
            await store.finalize(
                claim.run.id, fence=fence(claim) + 1, state=RunState.FAILED, exit_code=1
            )
        assert await store.get_run(claim.run.id) == claim.run
        assert await store.get_item(claim.item.id) == claim.item


@ON_POSTGRESQL
async def test_finalize_hands_a_waited_for_lock_over_on_postgresql(store_url: str) -> None:
    """A run that holds a lock another run waits for ends through the transaction, which
    hands the lock to the waiter (the one statement leaves such a run alone)."""
    async with counted_store(store_url) as (store, trips):
        await setup(store)
        holder = await claimed(store)
        waiter = await claimed(store, agent="b")
        assert isinstance(await store.acquire_lock("k", holder.run.id, ttl_seconds=60), LockGrant)
        held = await store.wait_for_lock("k", waiter.run.id, ttl_seconds=60, wait_seconds=60)
        assert isinstance(held, LockHeld)
        with trips.counting() as seen:
            await finish(store, holder)
        assert seen.statements > 1
        [lock] = await store.list_locks()
        assert (lock.key, lock.run_id) == ("k", waiter.run.id)


@ON_POSTGRESQL
async def test_a_lock_granted_while_the_run_ends_is_released_with_it(store_url: str) -> None:
    """A grant in flight when the run ends (its transaction holds the run row FOR SHARE,
    as ``corral_rlock`` does) commits first; the finalise that waited for it must then
    see and release that lock. A finalise whose one statement read the locks with a
    snapshot taken before it waited left the lock behind, held by an ended run until its
    TTL ran out (invariant 4)."""
    import asyncio

    import psycopg

    async with counted_store(store_url) as (store, _):
        await setup(store)
        claim = await claimed(store)
        grant = await psycopg.AsyncConnection.connect(store_url)
        try:
            await grant.execute("BEGIN")
            await grant.execute(
                "SELECT state FROM corral_runs WHERE id = %s FOR SHARE", (claim.run.id,)
            )
            await grant.execute(
                "INSERT INTO corral_locks (key, run_id, token, acquired_at, expires_at) "
                "VALUES ('racing', %s, nextval('corral_lock_tokens'), now(), "
                "now() + interval '30 minutes')",
                (claim.run.id,),
            )
            ending = asyncio.create_task(
                store.finalize(
                    claim.run.id, fence=fence(claim), state=RunState.SUCCEEDED, exit_code=0
                )
            )
            await asyncio.sleep(0.3)
            assert not ending.done()  # it waits for the grant's transaction
            await grant.execute("COMMIT")
            result = await asyncio.wait_for(ending, 10)
        finally:
            await grant.close()
        assert result.run.state is RunState.SUCCEEDED
        assert await store.list_locks() == []
