"""Leases changing hands, on both stores: renewing only the runs a scheduler still tracks,
giving an interrupted run's item back to the queue, and items reserved for one owner."""

from __future__ import annotations

import pytest

from corral.store import (
    AgentSpec,
    ItemState,
    LockGrant,
    NewItem,
    RunState,
    StaleFence,
    Store,
    TriggerKind,
)
from tests.store.conftest import Clock

LEASE = 60.0


async def setup(store: Store, *, scale: int = 1) -> None:
    await store.sync_project(
        [AgentSpec("a", scale, 10)], scale_cap=None, max_attempts=2, max_reruns=2
    )


def manual(prompt: str = "p") -> NewItem:
    return NewItem("a", TriggerKind.MANUAL, prompt=prompt)


async def test_renewing_named_runs_leaves_the_other_leases_to_lapse(
    store: Store, clock: Clock
) -> None:
    await setup(store, scale=3)
    for _ in range(3):
        await store.enqueue(manual())
    first, second, third = await store.claim("s1", lease_seconds=10, limit=3)
    clock.advance(8)
    assert await store.renew_leases("s1", lease_seconds=10, run_ids={first.run.id}) == 1
    assert await store.renew_leases("s1", lease_seconds=10, run_ids=set()) == 0
    clock.advance(5)  # 13 s after the claim: only the renewed lease is alive
    recovered = await store.recover_lapsed()
    assert sorted(r.item.id for r in recovered) == sorted([second.item.id, third.item.id])
    alive = await store.get_item(first.item.id)
    assert alive is not None and alive.state is ItemState.CLAIMED


async def test_release_gives_the_item_back_in_its_place(store: Store, clock: Clock) -> None:
    await setup(store)
    older = (await store.enqueue(manual("older"))).item
    [claim] = await store.claim("s1", lease_seconds=LEASE, limit=1)
    newer = (await store.enqueue(manual("newer"))).item
    assert claim.item.id == older.id and claim.run.fence is not None
    grant = await store.acquire_lock("k", claim.run.id, ttl_seconds=60)
    assert isinstance(grant, LockGrant)
    with pytest.raises(StaleFence):
        await store.release(claim.run.id, fence=claim.run.fence + 1, reason="x")

    run = await store.release(claim.run.id, fence=claim.run.fence, reason="shutdown")
    assert run.state is RunState.KILLED and run.error == "shutdown"
    item = await store.get_item(older.id)
    assert item is not None and item.state is ItemState.QUEUED
    assert (item.lease_owner, item.lease_expires_at, item.attempts) == (None, None, 1)
    assert not await store.list_locks()
    # It comes before the item queued after it, and runs again.
    [again] = await store.claim("s2", lease_seconds=LEASE, limit=1)
    assert again.item.id == older.id and again.run.id != claim.run.id
    assert newer.id > older.id
    with pytest.raises(StaleFence):  # the old run may no longer act on it
        await store.release(claim.run.id, fence=claim.run.fence, reason="again")


async def test_a_reserved_item_is_claimed_only_by_its_owner(store: Store, clock: Clock) -> None:
    await setup(store, scale=2)
    result = await store.enqueue_reserved(manual("mine"), owner="cli-1", seconds=30)
    mine = result.item
    assert mine.state is ItemState.QUEUED and mine.lease_owner == "cli-1"
    other = (await store.enqueue(manual("other"))).item
    # A scheduler skips it (it keeps its place in line) and takes what comes after it.
    claims = await store.claim("s1", lease_seconds=LEASE, limit=10)
    assert [c.item.id for c in claims] == [other.id]
    assert await store.claim("s1", lease_seconds=LEASE, limit=1, item_id=mine.id) == []
    # Its owner may claim it.
    [claim] = await store.claim("cli-1", lease_seconds=LEASE, limit=1, item_id=mine.id)
    assert claim.item.lease_owner == "cli-1" and claim.run.owner == "cli-1"


async def test_a_reservation_holds_a_place_in_line(store: Store, clock: Clock) -> None:
    await setup(store, scale=1)
    mine = (await store.enqueue_reserved(manual("mine"), owner="cli-1", seconds=30)).item
    await store.enqueue(manual("later"))
    # The agent's one slot is its: a scheduler does not let the later item overtake it.
    assert await store.claim("s1", lease_seconds=LEASE, limit=10) == []
    renewed = await store.reserve(mine.id, "cli-1", seconds=30)
    assert renewed is not None and renewed.lease_owner == "cli-1"


async def test_a_lapsed_reservation_lets_anyone_claim(store: Store, clock: Clock) -> None:
    await setup(store)
    mine = (await store.enqueue_reserved(manual(), owner="cli-1", seconds=30)).item
    clock.advance(31)
    [claim] = await store.claim("s1", lease_seconds=LEASE, limit=1)
    assert claim.item.id == mine.id and claim.item.lease_owner == "s1"
    assert await store.reserve(mine.id, "cli-1", seconds=30) is None  # no longer queued


async def test_a_rerun_can_be_reserved_for_the_owner(store: Store, clock: Clock) -> None:
    await setup(store, scale=2)
    item = (await store.enqueue_reserved(manual(), owner="cli-1", seconds=30)).item
    [claim] = await store.claim("cli-1", lease_seconds=LEASE, limit=1, item_id=item.id)
    assert claim.run.fence is not None
    await store.request_rerun(claim.run.id)
    result = await store.finalize(
        claim.run.id,
        fence=claim.run.fence,
        state=RunState.SUCCEEDED,
        exit_code=0,
        reserve_rerun_for="cli-1",
    )
    assert result.rerun_item is not None and result.rerun_item.lease_owner == "cli-1"
    assert await store.claim("s1", lease_seconds=LEASE, limit=10) == []


async def test_a_reserved_item_that_is_rejected_is_not_reserved(store: Store) -> None:
    await store.sync_project([AgentSpec("a", 0, 10)], scale_cap=None, max_attempts=2, max_reruns=2)
    result = await store.enqueue_reserved(manual(), owner="cli-1", seconds=30)
    assert result.item.state is ItemState.REJECTED and result.item.lease_owner is None
