"""Conformance suite for resource locks: try-lock, release, heartbeat, listing, operator
release, and release with the run that ends (invariant 4), on both stores."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from corral.errors import StoreError
from corral.store import (
    AgentSpec,
    Lock,
    LockGrant,
    LockHeld,
    NewItem,
    Run,
    RunState,
    Store,
    TriggerKind,
)
from tests.store.conftest import Clock, live_run

TTL = 60.0
RawSql = Callable[[str, str], list[tuple[Any, ...]]]


async def granted(store: Store, key: str, run: Run, ttl: float = TTL) -> LockGrant:
    result = await store.acquire_lock(key, run.id, ttl_seconds=ttl)
    assert isinstance(result, LockGrant), result
    return result


async def test_a_free_key_is_granted(store: Store, clock: Clock) -> None:
    run = await live_run(store)
    grant = await granted(store, "github://acme/app/issues/42", run)
    assert grant == LockGrant(
        key="github://acme/app/issues/42",
        run_id=run.id,
        token=grant.token,
        acquired_at=clock.now,
        expires_at=clock.now + timedelta(seconds=TTL),
        refreshed=False,
    )
    assert await store.list_locks() == [
        Lock(grant.key, run.id, "a", grant.token, clock.now, grant.expires_at)
    ]


async def test_the_same_run_refreshes_with_the_same_token(store: Store, clock: Clock) -> None:
    run = await live_run(store)
    first = await granted(store, "k", run)
    clock.advance(10)
    again = await granted(store, "k", run, ttl=30)
    assert again == LockGrant(
        "k",
        run.id,
        first.token,
        first.acquired_at,
        clock.now + timedelta(seconds=30),
        refreshed=True,
    )


async def test_another_run_is_refused_and_nothing_is_written(
    store: Store, store_url: str, clock: Clock, raw_sql: RawSql
) -> None:
    holder, other = await live_run(store), await live_run(store, "b")
    grant = await granted(store, "k", holder)
    before = raw_sql(store_url, "SELECT * FROM corral_locks")
    counter = raw_sql(store_url, "SELECT fence_counter FROM corral_project")
    clock.advance(5)
    refusal = await store.acquire_lock("k", other.id, ttl_seconds=TTL)
    assert refusal == LockHeld(key="k", holder=holder.id, held_since=grant.acquired_at)
    assert raw_sql(store_url, "SELECT * FROM corral_locks") == before
    assert raw_sql(store_url, "SELECT fence_counter FROM corral_project") == counter
    assert await store.list_locks() == [
        Lock("k", holder.id, "a", grant.token, grant.acquired_at, grant.expires_at)
    ]


async def test_an_expired_lock_goes_to_the_next_taker_with_a_greater_token(
    store: Store, clock: Clock
) -> None:
    first, second = await live_run(store), await live_run(store, "b")
    old = await granted(store, "k", first, ttl=10)
    clock.advance(9)
    assert isinstance(await store.acquire_lock("k", second.id, ttl_seconds=TTL), LockHeld)
    clock.advance(1)  # expires_at <= now: expired
    new = await granted(store, "k", second)
    assert new.token > old.token and not new.refreshed
    assert (new.run_id, new.acquired_at) == (second.id, clock.now)
    assert not await store.release_lock("k", first.id)
    assert await store.heartbeat_lock("k", first.id, ttl_seconds=TTL) is None


async def test_tokens_strictly_increase_across_keys_and_regrants(
    store: Store, clock: Clock
) -> None:
    runs = [await live_run(store) for _ in range(3)]
    tokens = []
    for round_ in range(3):
        for n, run in enumerate(runs):
            tokens.append((await granted(store, f"k{(n + round_) % 3}", run, ttl=1)).token)
        for n, run in enumerate(runs):
            if n % 2:
                assert await store.release_lock(f"k{(n + round_) % 3}", run.id)
        clock.advance(1)
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
async def test_lock_tokens_exceed_earlier_fences_on_sqlite(store: Store) -> None:
    """SQLite draws lock tokens from the fence counter; PostgreSQL from a sequence."""
    await store.sync_project([AgentSpec("a", 1, 5)], scale_cap=None, max_attempts=1, max_reruns=0)
    await store.enqueue(NewItem("a", TriggerKind.MANUAL))
    [claim] = await store.claim("s", lease_seconds=TTL, limit=1)
    assert (await granted(store, "k", claim.run)).token > (claim.run.fence or 0)


async def test_release_only_by_the_holder(store: Store) -> None:
    holder, other = await live_run(store), await live_run(store)
    await granted(store, "k", holder)
    assert not await store.release_lock("k", other.id)
    assert not await store.release_lock("nope", holder.id)
    assert await store.release_lock("k", holder.id)
    assert not await store.release_lock("k", holder.id)
    assert await store.list_locks() == []
    assert (await granted(store, "k", other)).run_id == other.id


async def test_the_holder_releases_its_expired_lock(store: Store, clock: Clock) -> None:
    run = await live_run(store)
    await granted(store, "k", run, ttl=1)
    clock.advance(100)
    assert [lock.key for lock in await store.list_locks()] == ["k"]  # expired, kept
    assert await store.release_lock("k", run.id)
    assert await store.list_locks() == []


async def test_heartbeat_resets_the_expiry_even_after_it_passed(store: Store, clock: Clock) -> None:
    run, other = await live_run(store), await live_run(store)
    grant = await granted(store, "k", run, ttl=10)
    clock.advance(15)
    expires = await store.heartbeat_lock("k", run.id, ttl_seconds=20)
    assert expires == clock.now + timedelta(seconds=20)
    assert await store.heartbeat_lock("k", other.id, ttl_seconds=20) is None
    assert await store.heartbeat_lock("nope", run.id, ttl_seconds=20) is None
    [lock] = await store.list_locks()
    assert (lock.token, lock.acquired_at, lock.expires_at) == (
        grant.token,
        grant.acquired_at,
        expires,
    )
    clock.advance(19)
    assert isinstance(await store.acquire_lock("k", other.id, ttl_seconds=TTL), LockHeld)


async def test_only_a_live_run_may_lock(store: Store) -> None:
    run = await live_run(store)
    await store.finish_run(run.id, state=RunState.SUCCEEDED, exit_code=0)
    with pytest.raises(StoreError, match=rf"cannot lock 'k' for run {run.id}: the run has ended"):
        await store.acquire_lock("k", run.id, ttl_seconds=TTL)
    with pytest.raises(StoreError, match=r"no run 'ghost'"):
        await store.acquire_lock("k", "ghost", ttl_seconds=TTL)
    running = await live_run(store)
    await store.mark_run_running(running.id, pid=1, host="h")
    assert (await granted(store, "k", running)).run_id == running.id
    assert [lock.key for lock in await store.list_locks()] == ["k"]


async def test_ttl_must_be_positive(store: Store) -> None:
    run = await live_run(store)
    with pytest.raises(ValueError, match="ttl_seconds"):
        await store.acquire_lock("k", run.id, ttl_seconds=0)
    with pytest.raises(ValueError, match="ttl_seconds"):
        await store.heartbeat_lock("k", run.id, ttl_seconds=-1)


async def test_list_locks_by_key_with_agent(store: Store, clock: Clock) -> None:
    a, b = await live_run(store, "alpha"), await live_run(store, "beta")
    gb = await granted(store, "z", b)
    ga = await granted(store, "m", a, ttl=5)
    assert await store.list_locks() == [
        Lock("m", a.id, "alpha", ga.token, ga.acquired_at, ga.expires_at),
        Lock("z", b.id, "beta", gb.token, gb.acquired_at, gb.expires_at),
    ]


async def test_force_release_returns_what_it_removed(store: Store) -> None:
    run = await live_run(store)
    grant = await granted(store, "k", run)
    assert await store.force_release_lock("k") == Lock(
        "k", run.id, "a", grant.token, grant.acquired_at, grant.expires_at
    )
    assert await store.force_release_lock("k") is None
    assert await store.list_locks() == []
    assert not await store.release_lock("k", run.id)


async def test_release_run_locks(store: Store) -> None:
    run, other = await live_run(store), await live_run(store)
    for key in ("a", "b", "c"):
        await granted(store, key, run)
    await granted(store, "d", other)
    assert await store.release_run_locks(run.id) == 3
    assert await store.release_run_locks(run.id) == 0
    assert [lock.key for lock in await store.list_locks()] == ["d"]


# -- a run's locks end with it (invariant 4) --------------------------------------------


async def setup_queue(store: Store) -> None:
    await store.sync_project([AgentSpec("a", 5, 5)], scale_cap=None, max_attempts=2, max_reruns=0)


async def claimed_run(store: Store, owner: str = "s1", lease: float = TTL) -> Run:
    await store.enqueue(NewItem("a", TriggerKind.MANUAL))
    [claim] = await store.claim(owner, lease_seconds=lease, limit=1)
    return claim.run


async def test_finish_run_releases_the_runs_locks(store: Store) -> None:
    run, other = await live_run(store), await live_run(store)
    await granted(store, "k1", run)
    await granted(store, "k2", run)
    await granted(store, "k3", other)
    await store.finish_run(run.id, state=RunState.FAILED, exit_code=1)
    assert [lock.key for lock in await store.list_locks()] == ["k3"]


async def test_a_refused_finish_keeps_the_locks(store: Store) -> None:
    await setup_queue(store)
    run = await claimed_run(store)
    await granted(store, "k", run)
    with pytest.raises(StoreError, match="finalize"):
        await store.finish_run(run.id, state=RunState.FAILED, exit_code=1)
    assert [lock.key for lock in await store.list_locks()] == ["k"]


async def test_finalize_releases_the_runs_locks(store: Store) -> None:
    await setup_queue(store)
    run, other = await claimed_run(store), await claimed_run(store)
    await granted(store, "k1", run)
    await granted(store, "k2", other)
    await store.finalize(run.id, fence=run.fence or 0, state=RunState.SUCCEEDED, exit_code=0)
    assert [lock.key for lock in await store.list_locks()] == ["k2"]
    with pytest.raises(StoreError, match="the run has ended"):
        await store.acquire_lock("k1", run.id, ttl_seconds=TTL)


async def test_a_stale_finalize_keeps_the_locks(store: Store, clock: Clock) -> None:
    await setup_queue(store)
    run = await claimed_run(store)
    await granted(store, "k", run)
    with pytest.raises(StoreError):
        await store.finalize(
            run.id, fence=(run.fence or 0) + 99, state=RunState.FAILED, exit_code=1
        )
    assert [lock.key for lock in await store.list_locks()] == ["k"]


async def test_recovery_releases_the_lost_runs_locks(store: Store, clock: Clock) -> None:
    await setup_queue(store)
    lapsing = await claimed_run(store, "s1", lease=10)
    released = await claimed_run(store, "s2")
    kept = await claimed_run(store, "s3")
    await granted(store, "lapsing", lapsing, ttl=1000)
    await granted(store, "released", released)
    await granted(store, "kept", kept)
    clock.advance(11)
    await store.renew_leases("s2", lease_seconds=TTL)
    await store.renew_leases("s3", lease_seconds=TTL)
    [recovered] = await store.recover_lapsed()
    assert recovered.run is not None and recovered.run.id == lapsing.id
    assert sorted(lock.key for lock in await store.list_locks()) == ["kept", "released"]
    await store.release_owner("s2", reason="gone")
    assert [lock.key for lock in await store.list_locks()] == ["kept"]
