"""Lock requests that arrive together: on PostgreSQL they go to the server as one call of
``corral_lock_batch`` (one round trip, one commit); on SQLite as one batch of bodies on
the worker thread (D10). Either way each request gets the answer it would have got
alone, in some order of the requests, and no key is ever granted to two runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from corral.errors import StoreConflict
from corral.store import Deadlock, LockGrant, LockHeld, RunState, Store, open_store
from tests.conftest import UrlFactory
from tests.store._roundtrips import RoundTripProxy
from tests.store.conftest import live_run

TTL = 60.0


async def test_one_key_asked_by_many_runs_at_once_goes_to_one(store: Store) -> None:
    runs = [await live_run(store) for _ in range(12)]
    answers = await asyncio.gather(
        *(store.acquire_lock("db://k", r.id, ttl_seconds=TTL) for r in runs)
    )
    grants = [a for a in answers if isinstance(a, LockGrant)]
    assert len(grants) == 1
    holder = grants[0].run_id
    refused = [a for a in answers if not isinstance(a, LockGrant)]
    assert len(refused) == 11
    assert all(isinstance(a, LockHeld) and a.holder == holder for a in refused)
    lock = await store.get_lock("db://k")
    assert lock is not None and lock.run_id == holder and lock.token == grants[0].token
    # every refused run now wants the key (its want recorded in the same batch)
    wants = await store.list_lock_wants()
    assert sorted(w.run_id for w in wants) == sorted(r.id for r in runs if r.id != holder)


async def test_a_release_and_takers_at_once_hand_the_key_on_in_token_order(
    store: Store,
) -> None:
    runs = [await live_run(store) for _ in range(6)]
    first = await store.acquire_lock("db://k", runs[0].id, ttl_seconds=TTL)
    assert isinstance(first, LockGrant)
    tokens = [first.token]
    holder = runs[0].id
    for _ in range(5):
        others = [r.id for r in runs if r.id != holder]
        release, *takes = await asyncio.gather(
            store.release_lock("db://k", holder),
            *(store.acquire_lock("db://k", r, ttl_seconds=TTL) for r in others),
        )
        assert release is True
        grants = [a for a in takes if isinstance(a, LockGrant)]
        # the release went first (submitted first) or not: at most one taker got the key
        assert len(grants) <= 1
        lock = await store.get_lock("db://k")
        if not grants:
            assert lock is None
            grant = await store.acquire_lock("db://k", others[0], ttl_seconds=TTL)
            assert isinstance(grant, LockGrant)
            grants = [grant]
        assert grants[0].token > tokens[-1]
        tokens.append(grants[0].token)
        holder = grants[0].run_id
        lock = await store.get_lock("db://k")
        assert lock is not None and lock.run_id == holder and lock.token == tokens[-1]


async def test_each_request_of_a_batch_gets_its_own_answer(store: Store) -> None:
    a, b, ended = await live_run(store), await live_run(store), await live_run(store)
    assert isinstance(await store.acquire_lock("db://held", b.id, ttl_seconds=TTL), LockGrant)
    assert isinstance(await store.acquire_lock("db://mine", a.id, ttl_seconds=TTL), LockGrant)
    await store.finish_run(ended.id, state=RunState.SUCCEEDED, exit_code=0)
    answers = await asyncio.gather(
        store.acquire_lock("db://free", a.id, ttl_seconds=TTL),
        store.acquire_lock("db://held", a.id, ttl_seconds=TTL),
        store.acquire_lock("db://mine", a.id, ttl_seconds=TTL),
        store.acquire_lock("db://other", ended.id, ttl_seconds=TTL),
        store.heartbeat_lock("db://held", b.id, ttl_seconds=TTL),
        store.heartbeat_lock("db://held", a.id, ttl_seconds=TTL),
        store.release_lock("db://nobody", a.id),
        return_exceptions=True,
    )
    free, held, mine, other, beat, lost, nothing = answers
    assert isinstance(free, LockGrant) and not free.refreshed
    assert isinstance(held, LockHeld) and held.holder == b.id
    assert isinstance(mine, LockGrant) and mine.refreshed
    assert isinstance(other, StoreConflict) and "has ended" in str(other)
    assert beat is not None and not isinstance(beat, BaseException)
    assert lost is None
    assert nothing is False
    assert await store.get_lock("db://other") is None


async def test_two_runs_closing_one_cycle_at_once_one_is_told(store: Store) -> None:
    for _ in range(5):
        a, b = await live_run(store), await live_run(store)
        k1, k2 = f"db://{a.id}/1", f"db://{a.id}/2"
        assert isinstance(await store.acquire_lock(k1, a.id, ttl_seconds=TTL), LockGrant)
        assert isinstance(await store.acquire_lock(k2, b.id, ttl_seconds=TTL), LockGrant)
        first, second = await asyncio.gather(
            store.acquire_lock(k2, a.id, ttl_seconds=TTL),
            store.acquire_lock(k1, b.id, ttl_seconds=TTL),
        )
        told = [x for x in (first, second) if isinstance(x, Deadlock)]
        assert len(told) == 1
        assert sum(isinstance(x, LockHeld) for x in (first, second)) == 1


async def test_a_caller_that_stops_waiting_before_its_batch_is_not_served(store: Store) -> None:
    a, b, c = await live_run(store), await live_run(store), await live_run(store)
    tasks = [
        asyncio.create_task(store.acquire_lock(f"db://{r.id}", r.id, ttl_seconds=TTL))
        for r in (a, b, c)
    ]
    await asyncio.sleep(0)  # each has asked; the batch has not been sent yet
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[0], LockGrant) and isinstance(done[2], LockGrant)
    assert isinstance(done[1], asyncio.CancelledError)
    assert await store.get_lock(f"db://{b.id}") is None


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
async def test_requests_at_once_are_one_round_trip_on_postgresql(
    make_store_url: UrlFactory,
) -> None:
    async with RoundTripProxy() as proxy, await open_store(proxy.url(make_store_url())) as store:
        runs = [await live_run(store) for _ in range(16)]

        def pairs(n: int) -> list[Any]:
            return [store.acquire_lock(f"db://{r.id}/{n}", r.id, ttl_seconds=TTL) for r in runs]

        for n in range(8):  # past psycopg's prepare on the 6th run of a statement
            await asyncio.gather(*pairs(n))
        with proxy.counting() as seen:
            grants = await asyncio.gather(*pairs(99))
        assert seen.statements == 1, seen.queries
        assert all(isinstance(g, LockGrant) for g in grants)
        assert len({g.token for g in grants if isinstance(g, LockGrant)}) == 16
        with proxy.counting() as seen:
            mixed = await asyncio.gather(
                *(store.release_lock(f"db://{r.id}/99", r.id) for r in runs[:8]),
                *(store.heartbeat_lock(f"db://{r.id}/99", r.id, ttl_seconds=TTL) for r in runs[8:]),
            )
        assert seen.statements == 1, seen.queries
        assert mixed[:8] == [True] * 8 and all(m is not None for m in mixed[8:])
        # no BEGIN or COMMIT: one statement, autocommit
        assert not [q for q in seen.queries if q.strip().upper() in {"BEGIN", "COMMIT"}]


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
async def test_a_batch_that_fails_is_sent_again_one_request_at_a_time(
    store: Store, store_url: str, raw_sql: Callable[[str, str], Any]
) -> None:
    runs = [await live_run(store) for _ in range(4)]
    # Without the batch function every batch fails whole (nothing of it happened) ...
    raw_sql(store_url, "DROP FUNCTION corral_lock_batch")
    grants = await asyncio.gather(
        *(store.acquire_lock("db://k", r.id, ttl_seconds=TTL) for r in runs),
        store.acquire_lock("db://j", runs[0].id, ttl_seconds=TTL),
    )
    # ... and each request is then answered alone, as if it had come alone.
    assert sum(isinstance(g, LockGrant) for g in grants[:4]) == 1
    assert sum(isinstance(g, LockHeld) for g in grants[:4]) == 3
    assert isinstance(grants[4], LockGrant)
    holder = next(g.run_id for g in grants[:4] if isinstance(g, LockGrant))
    released = await asyncio.gather(
        store.release_lock("db://k", holder), store.release_lock("db://j", runs[0].id)
    )
    assert released == [True, True]
    assert await store.list_locks() == []


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
async def test_a_lone_call_chosen_as_a_deadlock_victim_is_sent_again(
    store: Store, store_url: str
) -> None:
    """The order another process's batch can take the advisory locks in (the wait-for
    graph's, then a key's), against a lone try-lock of that key that wants it (the key's,
    then the graph's): PostgreSQL's deadlock detector rolls the lone call back, and the
    store sends it again instead of failing the caller."""
    holder, wanter = await live_run(store), await live_run(store)
    assert isinstance(await store.acquire_lock("db://k", holder.id, ttl_seconds=TTL), LockGrant)
    other = await psycopg.AsyncConnection.connect(store_url)
    try:
        await other.execute(
            "SELECT pg_advisory_xact_lock(hashtext('corral_wait_graph'), "
            "hashtext(current_schema()))"
        )
        asked = asyncio.create_task(store.acquire_lock("db://k", wanter.id, ttl_seconds=TTL))
        await asyncio.sleep(0.3)  # the lone call holds the key's lock, waits for the graph
        assert not asked.done()
        # now the other side wants the key: a cycle; the lone call waited first, so the
        # server's check (after deadlock_timeout) finds it and rolls it back
        await other.execute(
            "SELECT pg_advisory_xact_lock(hashtext('corral_locks'), "
            "hashtext(current_schema() || ':' || 'db://k'))"
        )
        await other.commit()
        answer = await asyncio.wait_for(asked, 30)
    finally:
        await other.close()
    assert isinstance(answer, LockHeld) and answer.holder == holder.id


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
async def test_a_batch_takes_its_keys_before_the_wait_for_graph(
    store: Store, store_url: str
) -> None:
    """A batch whose first try-lock is refused (its want takes the wait-for graph's lock)
    and whose second key is held by another transaction, which then wants the graph (a
    lone try-lock of that key, refused): no deadlock, because the batch takes every key's
    lock before it runs any operation, so it never holds the graph while it waits for a
    key. Batches sent at once by one gateway rely on it."""
    holder, asker = await live_run(store), await live_run(store)
    assert isinstance(await store.acquire_lock("db://a", holder.id, ttl_seconds=TTL), LockGrant)
    batch = await psycopg.AsyncConnection.connect(store_url, autocommit=True)
    other = await psycopg.AsyncConnection.connect(store_url)
    try:
        await other.execute(
            "SELECT pg_advisory_xact_lock(hashtext('corral_locks'), "
            "hashtext(current_schema() || ':' || 'db://b'))"
        )
        sent = asyncio.create_task(
            batch.execute(
                "SELECT * FROM corral_lock_batch(%s::text[], %s::text[], %s::text[], "
                "%s::timestamptz[], %s::float8[], %s::float8[])",
                (
                    ["rlock", "rlock"],
                    ["db://a", "db://b"],
                    [asker.id, asker.id],
                    [None, None],
                    [TTL, TTL],
                    [30.0, 30.0],
                ),
            )
        )
        await asyncio.sleep(0.3)  # the batch waits for db://b
        assert not sent.done()
        # the other side now wants the graph, as a refused lone try-lock of db://b does
        await asyncio.wait_for(
            other.execute(
                "SELECT pg_advisory_xact_lock(hashtext('corral_wait_graph'), "
                "hashtext(current_schema()))"
            ),
            0.8,  # under deadlock_timeout (1 s): it must not wait for the batch at all
        )
        await other.commit()
        cursor = await asyncio.wait_for(sent, 30)
        rows = await cursor.fetchall()
    finally:
        await other.close()
        await batch.close()
    outcomes = {row[0]: row[1] for row in rows}
    assert outcomes == {1: "held", 2: "granted"}
