"""Conformance suite for blocking lock waits (``rlock --wait``): the waiter queue, hand-over
on release, run end and operator release, fairness against try-locks, and deadlock
detection through locks and calls, on both stores."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from corral.errors import StoreError
from corral.store import (
    AgentSpec,
    AuditEntry,
    Call,
    Claim,
    Deadlock,
    LockGrant,
    LockHeld,
    LockWaiter,
    NewItem,
    Run,
    RunState,
    Store,
    TriggerKind,
)
from corral.store._locks import WANT_SECONDS
from tests.store.conftest import Clock, live_run

TTL = 60.0
WAIT = 600.0
LEASE = 60.0


# -- helpers -----------------------------------------------------------------------------


async def setup_queue(store: Store, *agents: str, max_attempts: int = 2) -> None:
    await store.sync_project(
        [AgentSpec(agent, 5, 5) for agent in agents or ("a",)],
        scale_cap=None,
        max_attempts=max_attempts,
        max_reruns=0,
    )


async def claimed(store: Store, agent: str = "a", owner: str = "s1", lease: float = LEASE) -> Claim:
    item = (await store.enqueue(NewItem(agent, TriggerKind.MANUAL))).item
    [claim] = await store.claim(owner, lease_seconds=lease, limit=1, item_id=item.id)
    await store.mark_run_running(claim.run.id, pid=1, host="h")
    return claim


def fence(claim: Claim) -> int:
    assert claim.run.fence is not None
    return claim.run.fence


async def granted(store: Store, key: str, run: Run, ttl: float = TTL) -> LockGrant:
    result = await store.acquire_lock(key, run.id, ttl_seconds=ttl)
    assert isinstance(result, LockGrant), result
    return result


async def wait(
    store: Store, key: str, run: Run, *, ttl: float = TTL, wait_seconds: float = WAIT
) -> LockGrant | LockHeld | Deadlock:
    return await store.wait_for_lock(key, run.id, ttl_seconds=ttl, wait_seconds=wait_seconds)


async def held(store: Store, key: str, run: Run, *, wait_seconds: float = WAIT) -> LockHeld:
    result = await wait(store, key, run, wait_seconds=wait_seconds)
    assert isinstance(result, LockHeld), result
    return result


async def holder(store: Store, key: str) -> tuple[str, int] | None:
    """(run id, token) of the lock row on ``key``, or None."""
    for lock in await store.list_locks():
        if lock.key == key:
            return lock.run_id, lock.token
    return None


async def waiters(store: Store, key: str | None = None) -> list[str]:
    """Run ids waiting (for ``key``), first in line first."""
    return [w.run_id for w in await store.list_lock_waiters() if key is None or w.key == key]


# -- waiting -------------------------------------------------------------------------------


async def test_a_free_key_is_granted_at_once_and_leaves_no_waiter(
    store: Store, clock: Clock
) -> None:
    run = await live_run(store)
    result = await wait(store, "k", run)
    assert result == LockGrant(
        key="k",
        run_id=run.id,
        token=result.token if isinstance(result, LockGrant) else -1,
        acquired_at=clock.now,
        expires_at=clock.now + timedelta(seconds=TTL),
        refreshed=False,
    )
    assert await store.list_lock_waiters() == []
    assert await holder(store, "k") == (run.id, result.token)


async def test_a_held_key_records_one_waiter(store: Store, clock: Clock) -> None:
    owner, other = await live_run(store), await live_run(store, "b")
    grant = await granted(store, "k", owner)
    clock.advance(5)
    first = await wait(store, "k", other, wait_seconds=100)
    assert first == LockHeld(key="k", holder=owner.id, held_since=grant.acquired_at)
    expected = LockWaiter(
        key="k", run_id=other.id, since=clock.now, deadline=clock.now + timedelta(seconds=100)
    )
    assert await store.list_lock_waiters() == [expected]
    clock.advance(5)
    assert await wait(store, "k", other, wait_seconds=100) == first
    # Still one row, and its deadline counts from the first step.
    assert await store.list_lock_waiters() == [expected]
    assert await holder(store, "k") == (owner.id, grant.token)


async def test_release_hands_the_lock_to_the_first_waiter(store: Store, clock: Clock) -> None:
    owner, other = await live_run(store), await live_run(store, "b")
    grant = await granted(store, "k", owner)
    await held(store, "k", other)
    clock.advance(3)
    assert await store.release_lock("k", owner.id)
    [lock] = await store.list_locks()
    assert (lock.key, lock.run_id, lock.agent) == ("k", other.id, "b")
    assert lock.token > grant.token
    assert lock.acquired_at == clock.now
    assert lock.expires_at == clock.now + timedelta(seconds=TTL)
    assert await store.list_lock_waiters() == []
    clock.advance(1)
    again = await wait(store, "k", other, ttl=30)
    assert again == LockGrant(
        "k", other.id, lock.token, lock.acquired_at, clock.now + timedelta(seconds=30), True
    )
    assert await store.list_lock_waiters() == []


async def test_the_hand_over_uses_the_waiters_ttl(store: Store, clock: Clock) -> None:
    owner, other = await live_run(store), await live_run(store, "b")
    await granted(store, "k", owner)
    assert isinstance(await wait(store, "k", other, ttl=7), LockHeld)
    assert await store.release_lock("k", owner.id)
    [lock] = await store.list_locks()
    assert lock.expires_at == clock.now + timedelta(seconds=7)


async def test_waiters_are_served_in_arrival_order(store: Store, clock: Clock) -> None:
    owner = await live_run(store)
    w1, w2, w3 = [await live_run(store, name) for name in ("w1", "w2", "w3")]
    await granted(store, "k", owner)
    for run in (w1, w2, w3):
        clock.advance(1)
        await held(store, "k", run)
    assert await waiters(store, "k") == [w1.id, w2.id, w3.id]
    tokens = []
    previous = owner
    for expected, rest in ((w1, [w2, w3]), (w2, [w3]), (w3, [])):
        assert await store.release_lock("k", previous.id)
        now_holding = await holder(store, "k")
        assert now_holding is not None and now_holding[0] == expected.id
        tokens.append(now_holding[1])
        assert await waiters(store, "k") == [run.id for run in rest]
        previous = expected
    assert tokens == sorted(tokens) and len(set(tokens)) == 3
    assert await store.release_lock("k", w3.id)
    assert await store.list_locks() == []


async def test_a_waiters_own_retry_does_not_lose_its_place(store: Store) -> None:
    owner, w1, w2 = await live_run(store), await live_run(store), await live_run(store)
    await granted(store, "k", owner)
    await held(store, "k", w1)
    await held(store, "k", w2)
    await held(store, "k", w1)  # polling again keeps the first place
    assert await waiters(store, "k") == [w1.id, w2.id]
    assert await store.release_lock("k", owner.id)
    assert (await holder(store, "k") or ("",))[0] == w1.id


async def test_a_try_lock_never_overtakes_waiters(store: Store) -> None:
    owner, w1, trier = await live_run(store), await live_run(store), await live_run(store)
    await granted(store, "k", owner)
    await held(store, "k", w1)
    assert await store.release_lock("k", owner.id)
    refusal = await store.acquire_lock("k", trier.id, ttl_seconds=TTL)
    assert isinstance(refusal, LockHeld) and refusal.holder == w1.id
    assert (await holder(store, "k") or ("",))[0] == w1.id
    # A failed try-lock does not queue the trier.
    assert await store.list_lock_waiters() == []


async def test_an_expired_lock_goes_to_the_first_waiter_not_to_a_try_lock(
    store: Store, clock: Clock
) -> None:
    owner, w1, w2, trier = [await live_run(store) for _ in range(4)]
    old = await granted(store, "k", owner, ttl=10)
    await held(store, "k", w1)
    await held(store, "k", w2)
    clock.advance(10)  # expired
    refusal = await store.acquire_lock("k", trier.id, ttl_seconds=TTL)
    assert isinstance(refusal, LockHeld) and refusal.holder == w1.id
    # w2 polling does not take it either: w1 is first in line.
    assert await wait(store, "k", w2) == LockHeld("k", w1.id, clock.now)
    result = await wait(store, "k", w1)
    assert isinstance(result, LockGrant) and result.run_id == w1.id
    assert result.token > old.token
    assert await waiters(store, "k") == [w2.id]


async def test_the_first_waiter_polling_an_expired_lock_takes_it(
    store: Store, clock: Clock
) -> None:
    owner, w1 = await live_run(store), await live_run(store)
    old = await granted(store, "k", owner, ttl=10)
    await held(store, "k", w1)
    clock.advance(11)
    result = await wait(store, "k", w1)
    assert isinstance(result, LockGrant)
    assert (result.run_id, result.refreshed, result.acquired_at) == (w1.id, False, clock.now)
    assert result.token > old.token
    assert await store.list_lock_waiters() == []


async def test_a_refused_try_lock_on_an_expired_lock_leaves_the_waiter_holding_it(
    store: Store, clock: Clock
) -> None:
    owner, w1, trier = [await live_run(store) for _ in range(3)]
    await granted(store, "k", owner, ttl=10)
    await held(store, "k", w1)
    clock.advance(10)
    refusal = await store.acquire_lock("k", trier.id, ttl_seconds=TTL)
    assert refusal == LockHeld("k", w1.id, clock.now)
    # What the refusal says must be what the store holds.
    assert (await holder(store, "k") or ("",))[0] == w1.id
    assert await store.list_lock_waiters() == []


async def test_a_waiter_past_its_deadline_is_skipped(store: Store, clock: Clock) -> None:
    owner, late, patient = await live_run(store), await live_run(store), await live_run(store)
    await granted(store, "k", owner, ttl=1000)
    await held(store, "k", late, wait_seconds=10)
    await held(store, "k", patient, wait_seconds=100)
    clock.advance(10)  # late's deadline: deadline <= now, no longer waiting
    assert await waiters(store, "k") == [patient.id]
    assert await store.release_lock("k", owner.id)
    assert (await holder(store, "k") or ("",))[0] == patient.id
    assert await store.list_lock_waiters() == []


async def test_a_lone_waiter_past_its_deadline_is_not_handed_the_lock(
    store: Store, clock: Clock
) -> None:
    owner, late, other = await live_run(store), await live_run(store), await live_run(store)
    await granted(store, "k", owner, ttl=1000)
    await held(store, "k", late, wait_seconds=10)
    clock.advance(11)
    assert await store.list_lock_waiters() == []
    assert await store.release_lock("k", owner.id)
    assert await store.list_locks() == []
    assert (await granted(store, "k", other)).run_id == other.id


async def test_waiting_again_after_the_deadline_passed_records_a_new_wait(
    store: Store, clock: Clock
) -> None:
    owner, run = await live_run(store), await live_run(store)
    await granted(store, "k", owner, ttl=1000)
    await held(store, "k", run, wait_seconds=10)
    clock.advance(20)
    assert await store.list_lock_waiters() == []
    await held(store, "k", run, wait_seconds=10)  # a new `rlock --wait`
    assert await waiters(store, "k") == [run.id]
    assert await store.release_lock("k", owner.id)
    assert (await holder(store, "k") or ("",))[0] == run.id


async def test_a_deadlock_through_a_renewed_wait_is_found(store: Store, clock: Clock) -> None:
    a, b = await live_run(store), await live_run(store)
    await granted(store, "k1", a, ttl=1000)
    await granted(store, "k2", b, ttl=1000)
    await held(store, "k2", a, wait_seconds=10)
    clock.advance(20)
    await held(store, "k2", a, wait_seconds=10)  # a waits for b again
    assert await wait(store, "k1", b) == Deadlock((b.id, "k1", a.id, "k2"))


async def test_cancel_lock_wait(store: Store) -> None:
    owner, gone, stays = await live_run(store), await live_run(store), await live_run(store)
    await granted(store, "k", owner)
    await held(store, "k", gone)
    await held(store, "k", stays)
    assert await store.cancel_lock_wait("k", gone.id)
    assert not await store.cancel_lock_wait("k", gone.id)
    assert not await store.cancel_lock_wait("other", stays.id)
    assert await waiters(store, "k") == [stays.id]
    assert await store.release_lock("k", stays.id) is False
    assert await store.release_lock("k", owner.id)
    assert (await holder(store, "k") or ("",))[0] == stays.id


async def test_a_cancelled_lone_waiter_is_never_handed_the_lock(store: Store) -> None:
    owner, gone = await live_run(store), await live_run(store)
    await granted(store, "k", owner)
    await held(store, "k", gone)
    assert await store.cancel_lock_wait("k", gone.id)
    assert await store.release_lock("k", owner.id)
    assert await store.list_locks() == []
    assert await store.list_lock_waiters() == []


async def test_waiters_are_listed_by_key_then_arrival(store: Store, clock: Clock) -> None:
    a, b = await live_run(store), await live_run(store)
    x, y, z = await live_run(store), await live_run(store), await live_run(store)
    await granted(store, "zeta", a)
    await granted(store, "alpha", b)
    await held(store, "zeta", x)
    clock.advance(1)
    await held(store, "alpha", y)
    clock.advance(1)
    await held(store, "zeta", z)
    await held(store, "alpha", x)
    assert [(w.key, w.run_id) for w in await store.list_lock_waiters()] == [
        ("alpha", y.id),
        ("alpha", x.id),
        ("zeta", x.id),
        ("zeta", z.id),
    ]


async def test_only_a_live_run_may_wait(store: Store) -> None:
    owner, ended = await live_run(store), await live_run(store)
    await granted(store, "k", owner)
    await store.finish_run(ended.id, state=RunState.FAILED, exit_code=1)
    with pytest.raises(StoreError, match="has ended"):
        await wait(store, "k", ended)
    with pytest.raises(StoreError, match="no run 'ghost'"):
        await store.wait_for_lock("k", "ghost", ttl_seconds=TTL, wait_seconds=WAIT)
    with pytest.raises(ValueError, match="ttl_seconds"):
        await store.wait_for_lock("k", owner.id, ttl_seconds=0, wait_seconds=WAIT)
    assert await store.list_lock_waiters() == []


# -- a run's end hands its locks on and drops its waits ------------------------------------


async def test_finalize_hands_the_runs_locks_to_waiters_and_drops_its_waits(
    store: Store,
) -> None:
    await setup_queue(store)
    ending, w1, w2, other = [await claimed(store) for _ in range(4)]
    old1 = await granted(store, "k1", ending.run)
    await granted(store, "k2", ending.run)
    await granted(store, "k3", other.run)
    await held(store, "k1", w1.run)
    await held(store, "k1", w2.run)
    await held(store, "k3", ending.run)  # the ending run waits too
    await store.finalize(ending.run.id, fence=fence(ending), state=RunState.FAILED, exit_code=1)
    k1 = await holder(store, "k1")
    assert k1 is not None and k1[0] == w1.run.id and k1[1] > old1.token
    assert await holder(store, "k2") is None
    assert (await holder(store, "k3") or ("",))[0] == other.run.id
    assert [(w.key, w.run_id) for w in await store.list_lock_waiters()] == [("k1", w2.run.id)]
    # k3 released later goes to nobody: the ended run no longer waits.
    assert await store.release_lock("k3", other.run.id)
    assert await holder(store, "k3") is None


async def test_recovery_of_a_lapsed_lease_hands_its_locks_on(store: Store, clock: Clock) -> None:
    await setup_queue(store)
    lapsing = await claimed(store, owner="s1", lease=10)
    waiter = await claimed(store, owner="s2", lease=1000)
    keeper = await claimed(store, owner="s2", lease=1000)
    await granted(store, "k", lapsing.run, ttl=1000)
    await granted(store, "kept", keeper.run, ttl=1000)
    await held(store, "k", waiter.run)
    await held(store, "kept", lapsing.run)
    clock.advance(11)
    [recovered] = await store.recover_lapsed()
    assert recovered.run is not None and recovered.run.id == lapsing.run.id
    assert recovered.run.state is RunState.LOST
    assert (await holder(store, "k") or ("",))[0] == waiter.run.id
    assert await store.list_lock_waiters() == []
    assert await store.release_lock("kept", keeper.run.id)
    assert await holder(store, "kept") is None


async def test_release_owner_hands_its_runs_locks_on(store: Store) -> None:
    await setup_queue(store)
    lost = await claimed(store, owner="s1")
    waiter = await claimed(store, owner="s2")
    await granted(store, "k", lost.run)
    await held(store, "k", waiter.run)
    await store.release_owner("s1", reason="scheduler stopped")
    assert (await holder(store, "k") or ("",))[0] == waiter.run.id
    assert await store.list_lock_waiters() == []


async def test_finish_run_hands_the_runs_locks_on(store: Store) -> None:
    ending, waiter, other = await live_run(store), await live_run(store), await live_run(store)
    await granted(store, "k", ending)
    await granted(store, "o", other)
    await held(store, "k", waiter)
    await held(store, "o", ending)
    await store.finish_run(ending.id, state=RunState.SUCCEEDED, exit_code=0)
    assert (await holder(store, "k") or ("",))[0] == waiter.id
    assert await store.list_lock_waiters() == []


async def test_an_ended_waiter_is_skipped_at_hand_over(store: Store) -> None:
    owner, ended, live = await live_run(store), await live_run(store), await live_run(store)
    await granted(store, "k", owner)
    await held(store, "k", ended)
    await held(store, "k", live)
    await store.finish_run(ended.id, state=RunState.KILLED, exit_code=None)
    assert await waiters(store, "k") == [live.id]
    assert await store.release_lock("k", owner.id)
    assert (await holder(store, "k") or ("",))[0] == live.id


# -- operator release ----------------------------------------------------------------------


async def test_force_release_hands_the_lock_to_the_first_waiter_and_is_audited(
    store: Store, clock: Clock
) -> None:
    owner, w1, w2 = await live_run(store), await live_run(store, "b"), await live_run(store)
    grant = await granted(store, "k", owner)
    await held(store, "k", w1)
    await held(store, "k", w2)
    clock.advance(2)
    removed = await store.force_release_lock("k", actor="alice")
    assert removed is not None and (removed.run_id, removed.token) == (owner.id, grant.token)
    k = await holder(store, "k")
    assert k is not None and k[0] == w1.id and k[1] > grant.token
    assert await waiters(store, "k") == [w2.id]
    [entry] = await store.list_audit()
    assert entry == AuditEntry(
        id=entry.id,
        at=clock.now,
        actor="alice",
        action="lock.force_release",
        subject="k",
        detail={"holder": owner.id, "agent": "a", "token": grant.token},
    )
    assert await store.force_release_lock("nothing") is None
    assert len(await store.list_audit()) == 1


async def test_audit_entries_are_newest_first(store: Store) -> None:
    run = await live_run(store)
    for key in ("k1", "k2"):
        await granted(store, key, run)
        await store.force_release_lock(key)
    entries = await store.list_audit()
    assert [(e.subject, e.actor) for e in entries] == [("k2", "operator"), ("k1", "operator")]
    assert entries[0].id > entries[1].id
    assert [e.subject for e in await store.list_audit(limit=1)] == ["k2"]


# -- deadlocks -----------------------------------------------------------------------------


async def test_a_two_run_cycle_is_refused(store: Store) -> None:
    a, b = await live_run(store, "a"), await live_run(store, "b")
    await granted(store, "k1", a)
    k2 = await granted(store, "k2", b)
    assert await wait(store, "k2", a) == LockHeld("k2", b.id, k2.acquired_at)
    result = await wait(store, "k1", b)
    assert result == Deadlock(cycle=(b.id, "k1", a.id, "k2"))
    assert [(w.key, w.run_id) for w in await store.list_lock_waiters()] == [("k2", a.id)]
    # The refusal changed no lock.
    assert [(lock.key, lock.run_id) for lock in await store.list_locks()] == [
        ("k1", a.id),
        ("k2", b.id),
    ]


async def test_a_cycle_through_a_handed_over_lock(store: Store) -> None:
    a, b, c = await live_run(store), await live_run(store), await live_run(store)
    await granted(store, "k1", a)
    await granted(store, "k2", b)
    await held(store, "k1", b)  # b waits for a: no cycle
    assert await store.release_lock("k1", a.id)  # handed to b
    assert (await holder(store, "k1") or ("",))[0] == b.id
    await granted(store, "k3", c)
    await held(store, "k3", b)  # b waits for c
    result = await wait(store, "k1", c)  # c would wait for b, the new holder of k1
    assert result == Deadlock((c.id, "k1", b.id, "k3"))
    assert await waiters(store) == [b.id]


async def test_a_three_run_cycle_is_named_in_order(store: Store) -> None:
    a, b, c = await live_run(store, "a"), await live_run(store, "b"), await live_run(store, "c")
    await granted(store, "k1", a)
    await granted(store, "k2", b)
    await granted(store, "k3", c)
    await held(store, "k2", a)  # a -> b
    await held(store, "k3", b)  # b -> c
    result = await wait(store, "k1", c)  # c -> a closes the cycle
    assert result == Deadlock((c.id, "k1", a.id, "k2", b.id, "k3"))
    assert await waiters(store) == [a.id, b.id]


async def test_a_cycle_closed_by_a_hand_over_is_found_at_the_next_poll(store: Store) -> None:
    a, b, c, x = [await live_run(store, name) for name in ("a", "b", "c", "x")]
    await granted(store, "k1", a)
    await granted(store, "k2", c)
    await granted(store, "k3", b)
    await held(store, "k1", b)  # b -> a
    await held(store, "k2", x)  # x -> c, first in line for k2
    await held(store, "k2", a)  # a -> c
    await held(store, "k3", x)  # x -> b: no cycle yet
    assert await store.release_lock("k2", c.id)  # k2 goes to x: a -> x closes b -> a -> x -> b
    assert (await holder(store, "k2") or ("",))[0] == x.id
    result = await wait(store, "k1", b)
    assert result == Deadlock((b.id, "k1", a.id, "k2", x.id, "k3"))
    # The refused poll drops b's wait; the others still wait.
    assert [(w.key, w.run_id) for w in await store.list_lock_waiters()] == [
        ("k2", a.id),
        ("k3", x.id),
    ]


async def test_no_cycle_through_an_expired_wait(store: Store, clock: Clock) -> None:
    a, b = await live_run(store), await live_run(store)
    await granted(store, "k1", a, ttl=1000)
    await granted(store, "k2", b, ttl=1000)
    await held(store, "k2", a, wait_seconds=10)
    clock.advance(10)  # a gave up waiting
    assert isinstance(await wait(store, "k1", b), LockHeld)


async def test_a_refused_try_lock_is_a_want_that_a_wait_can_close_a_cycle_with(
    store: Store,
) -> None:
    # Agents retry a refused rlock in a loop: for a short while, a wants k2.
    a, b = await live_run(store), await live_run(store)
    await granted(store, "k1", a)
    await granted(store, "k2", b)
    refusal = await store.acquire_lock("k2", a.id, ttl_seconds=TTL)
    assert isinstance(refusal, LockHeld) and refusal.holder == b.id
    assert await wait(store, "k1", b) == Deadlock((b.id, "k1", a.id, "k2"))
    assert await waiters(store) == []


async def test_no_false_deadlock_after_a_try_lock_given_up(store: Store, clock: Clock) -> None:
    a, b = await live_run(store), await live_run(store)
    await granted(store, "k1", a, ttl=1000)
    await granted(store, "k2", b, ttl=1000)
    refusal = await store.acquire_lock("k2", a.id, ttl_seconds=TTL)
    assert isinstance(refusal, LockHeld) and refusal.holder == b.id
    clock.advance(WANT_SECONDS)  # a stopped retrying: its want expired
    result = await wait(store, "k1", b)
    assert isinstance(result, LockHeld) and result.holder == a.id
    assert await waiters(store) == [b.id]


async def test_no_false_deadlock_after_a_cancelled_wait(store: Store) -> None:
    a, b = await live_run(store), await live_run(store)
    await granted(store, "k1", a)
    await granted(store, "k2", b)
    await held(store, "k2", a)
    assert await store.cancel_lock_wait("k2", a.id)
    assert isinstance(await wait(store, "k1", b), LockHeld)


# -- cycles through a call -----------------------------------------------------------------


async def dev_calls_reviewer(store: Store) -> tuple[Claim, Call, Claim]:
    """Run A (dev) calls reviewer; the call's item is claimed as run R."""
    await setup_queue(store, "dev", "reviewer")
    caller = await claimed(store, "dev")
    call = await store.create_call(caller.run.id, "reviewer", "review it", max_depth=3)
    assert isinstance(call, Call), call
    assert call.item_id is not None
    [callee] = await store.claim("s1", lease_seconds=LEASE, limit=1, item_id=call.item_id)
    started = await store.get_call(call.id, caller_run_id=caller.run.id)
    assert started is not None and started.callee_run_id == callee.run.id
    return caller, call, callee


async def test_a_cycle_through_a_lock_and_a_call(store: Store) -> None:
    caller, call, callee = await dev_calls_reviewer(store)
    await granted(store, "k", caller.run)
    assert await store.wait_on_calls(caller.run.id, [call.id], waiting=True) is None
    result = await wait(store, "k", callee.run)
    assert result == Deadlock((callee.run.id, "k", caller.run.id, f"call://{call.id}"))
    assert await store.list_lock_waiters() == []


async def test_a_cycle_through_a_call_closed_by_the_caller(store: Store) -> None:
    caller, call, callee = await dev_calls_reviewer(store)
    await granted(store, "k", caller.run)
    assert isinstance(await wait(store, "k", callee.run), LockHeld)
    result = await store.wait_on_calls(caller.run.id, [call.id], waiting=True)
    assert result == Deadlock((caller.run.id, f"call://{call.id}", callee.run.id, "k"))
    seen = await store.get_call(call.id, caller_run_id=caller.run.id)
    assert seen is not None and seen.waiting_since is None
    assert await waiters(store) == [callee.run.id]


async def test_no_cycle_through_a_call_the_caller_stopped_waiting_on(store: Store) -> None:
    caller, call, callee = await dev_calls_reviewer(store)
    await granted(store, "k", caller.run)
    assert await store.wait_on_calls(caller.run.id, [call.id], waiting=True) is None
    assert await store.wait_on_calls(caller.run.id, [call.id], waiting=False) is None
    assert isinstance(await wait(store, "k", callee.run), LockHeld)


async def test_no_cycle_through_an_expired_lock(store: Store, clock: Clock) -> None:
    # H's lock on k1 expired while W waits for it: W takes it at its next step, so H
    # waiting for W's k2 is no deadlock.
    h, w = await live_run(store), await live_run(store)
    await granted(store, "k1", h, ttl=10)
    await granted(store, "k2", w)
    await held(store, "k1", w)
    clock.advance(11)
    assert isinstance(await wait(store, "k2", h), LockHeld)
    result = await wait(store, "k1", w)
    assert isinstance(result, LockGrant) and result.run_id == w.id


async def test_a_late_heartbeat_does_not_take_an_expired_lock_back_from_waiters(
    store: Store, clock: Clock
) -> None:
    h, w = await live_run(store), await live_run(store)
    await granted(store, "k1", h, ttl=10)
    await held(store, "k1", w)
    clock.advance(11)
    assert await store.heartbeat_lock("k1", h.id, ttl_seconds=60) is None
    assert (await holder(store, "k1") or ("", 0))[0] == w.id
    assert await waiters(store) == []


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
async def test_a_wait_cancelled_during_a_release_is_not_handed_the_key_behind_its_back(
    store: Store,
) -> None:
    """A release, on its own connection, has read the head waiter and is about to hand it
    the key when that waiter's wait is cancelled on another connection (its time-out).
    The cancel waits for the release (the key's lock) and then reports no wait left, so
    the run that holds the key is never one that was told its wait was cancelled.
    (SQLite has one writer at a time: the two cannot interleave there.)"""
    owner, waiter = await live_run(store), await live_run(store)
    await granted(store, "k", owner)
    await held(store, "k", waiter)
    cancel: asyncio.Task[bool] | None = None
    async with store.transaction() as tx:
        # a release's steps, as release_lock runs them, up to the hand-over
        await tx.execute("lock_key", {"key": "k"})
        assert await tx.fetch_one("release_lock_returning", {"key": "k", "run_id": owner.id})
        now = store.encode_time(store.now())
        head = await tx.fetch_one("head_waiter", {"key": "k", "now": now})
        assert head is not None and head["run_id"] == waiter.id
        # the waiter times out now, on another connection of the pool
        cancel = asyncio.create_task(store.cancel_lock_wait("k", waiter.id))
        await asyncio.sleep(0.5)
        # the release goes on: the key goes to the head waiter it read
        token = await tx.fetch_one("next_lock_token")
        assert token is not None
        await tx.fetch_one(
            "hand_over_lock",
            {
                "key": "k",
                "run_id": waiter.id,
                "token": int(token["token"]),
                "now": now,
                "expires_at": store.encode_time(store.now() + timedelta(seconds=TTL)),
            },
        )
        await tx.execute("delete_wait", {"key": "k", "run_id": waiter.id})
    cancelled = await asyncio.wait_for(cancel, 10)
    lock = await store.get_lock("k")
    assert lock is not None and lock.run_id == waiter.id
    # the key went to the waiter, so its wait was not there to cancel
    assert cancelled is False
    assert await store.list_lock_waiters() == []
