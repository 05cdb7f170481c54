"""PostgreSQL: what a lock request costs on the wire, and the pool check that makes a
checkout free without handing out a dead connection.

Counted by ``RoundTripProxy`` (tests/store/_roundtrips.py: a real proxy between the
store and the server, reading the protocol): rlock (granted, refreshed, refused with its
want, refused as a deadlock), runlock and rlock-heartbeat are one round trip each, the
pool's check included. Before the lock functions (migration 0013) and the cheap check: a
grant 10, a refusal with its want 11-12, a release 7, a heartbeat 6-7.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

import psycopg
import pytest

import corral.store._postgres as postgres_module
from corral.store import Deadlock, LockGrant, LockHeld, open_store
from tests.conftest import PG_BASE_URL, UrlFactory
from tests.store._roundtrips import WARM_UP, RoundTripProxy, counted_store
from tests.store.conftest import live_run

pytestmark = pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)

TTL = 60.0


async def trips(proxy: RoundTripProxy, request: object) -> int:
    """Round trips of ``request``, the pool's check of its connection included."""
    with proxy.counting() as seen:
        await request  # type: ignore[misc]
    return seen.statements + seen.checks


async def test_each_lock_request_is_one_round_trip(make_store_url: UrlFactory) -> None:
    async with counted_store(make_store_url()) as (store, proxy):
        a, b = await live_run(store), await live_run(store)
        for i in range(WARM_UP):
            await store.acquire_lock(f"warm{i}", a.id, ttl_seconds=TTL)
            await store.acquire_lock(f"warm{i}", b.id, ttl_seconds=TTL)
            await store.heartbeat_lock(f"warm{i}", a.id, ttl_seconds=TTL)
            await store.release_lock(f"warm{i}", a.id)
            await store.release_lock(f"warm{i}", b.id)

        grant = store.acquire_lock("k1", a.id, ttl_seconds=TTL)
        assert await trips(proxy, grant) == 1
        assert await trips(proxy, store.acquire_lock("k1", a.id, ttl_seconds=TTL)) == 1
        assert await trips(proxy, store.acquire_lock("k2", b.id, ttl_seconds=TTL)) == 1
        # refused: b now wants k1 (recorded, and the wait-for graph checked)
        assert await trips(proxy, store.acquire_lock("k1", b.id, ttl_seconds=TTL)) == 1
        assert [(w.run_id, w.key) for w in await store.list_lock_wants()] == [(b.id, "k1")]
        # a wanting k2 would close a -> k2 -> b -> k1 -> a: refused as a deadlock
        with proxy.counting() as seen:
            deadlock = await store.acquire_lock("k2", a.id, ttl_seconds=TTL)
        assert seen.statements + seen.checks == 1
        assert deadlock == Deadlock((a.id, "k2", b.id, "k1"))
        assert await trips(proxy, store.heartbeat_lock("k1", a.id, ttl_seconds=TTL)) == 1
        assert await trips(proxy, store.heartbeat_lock("k1", b.id, ttl_seconds=TTL)) == 1
        assert await trips(proxy, store.release_lock("k1", b.id)) == 1
        assert await trips(proxy, store.release_lock("k1", a.id)) == 1
        with proxy.counting() as seen:
            await store.heartbeat_lock("k1", a.id, ttl_seconds=TTL)
            await store.acquire_lock("k3", a.id, ttl_seconds=TTL)
            await store.release_lock("k3", a.id)
        assert (seen.statements, seen.checks) == (3, 0), seen.queries  # no BEGIN, COMMIT
        assert not {"BEGIN", "COMMIT"} & set(seen.queries), seen.queries
        # and the answers are the store's usual ones
        assert isinstance(await store.acquire_lock("k1", b.id, ttl_seconds=TTL), LockGrant)
        held = await store.acquire_lock("k1", a.id, ttl_seconds=TTL)
        assert isinstance(held, LockHeld) and held.holder == b.id


async def test_a_connection_idle_for_a_while_is_checked_first(
    make_store_url: UrlFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with counted_store(make_store_url()) as (store, proxy):
        run = await live_run(store)
        for i in range(WARM_UP):
            await store.acquire_lock(f"warm{i}", run.id, ttl_seconds=TTL)
        monkeypatch.setattr(postgres_module, "POOL_CHECK_IDLE_S", 0.0)
        assert await trips(proxy, store.acquire_lock("k", run.id, ttl_seconds=TTL)) == 2
        monkeypatch.setattr(postgres_module, "POOL_CHECK_IDLE_S", 60.0)
        assert await trips(proxy, store.acquire_lock("k", run.id, ttl_seconds=TTL)) == 1


async def test_the_next_call_succeeds_after_the_server_ends_every_connection(
    make_store_url: UrlFactory,
) -> None:
    """The server ends the store's connections (as a restart does) right after they were
    used: the next calls get live connections, not errors, and in good time."""
    name = f"corral_h3_{secrets.token_hex(4)}"
    url = f"{make_store_url()}&application_name={name}"
    async with await open_store(url) as store:
        run = await live_run(store)
        # Several connections in the pool, each just handed out (so no idle check is due).
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(4):
                tx = await stack.enter_async_context(store.transaction(write=False))
                await tx.fetch_all("list_locks")
        assert isinstance(await store.acquire_lock("k", run.id, ttl_seconds=TTL), LockGrant)
        killed = _terminate(name)
        assert len(killed) >= 4

        started = time.monotonic()
        again = await store.acquire_lock("k", run.id, ttl_seconds=TTL)
        assert isinstance(again, LockGrant) and again.refreshed
        assert [lock.key for lock in await store.list_locks()] == ["k"]
        assert await store.release_lock("k", run.id)
        results = await asyncio.gather(*(store.list_locks() for _ in range(8)))
        assert results == [[]] * 8
        assert time.monotonic() - started < postgres_module.POOL_WAIT_S
        assert not set(killed) & set(_backends(name))


def _backends(application_name: str) -> list[int]:
    with psycopg.connect(PG_BASE_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application_name,)
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def _terminate(application_name: str) -> list[int]:
    """End every backend of ``application_name`` and wait until each has exited."""
    pids = _backends(application_name)
    with psycopg.connect(PG_BASE_URL, autocommit=True) as conn:
        for pid in pids:
            assert conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone() == (
                True,
            )
    return pids


async def test_the_functions_are_alike_on_both_roads(make_store_url: UrlFactory) -> None:
    """The functions of 0013 (which the schema comparison of test_migrations does not
    see): a fresh schema and the road of migrations install the same ones."""
    fresh, migrated = make_store_url(), make_store_url()
    async with await open_store(fresh):
        pass
    async with await open_store(migrated, migrate=False) as store:
        await store.migrate(install_schema=False)
    assert _functions(fresh) == _functions(migrated)
    assert {name for name, _ in _functions(fresh)} >= {
        "corral_lock_serve",
        "corral_rlock",
        "corral_runlock",
        "corral_rlock_heartbeat",
    }


def _functions(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p "
            "WHERE p.pronamespace = current_schema()::regnamespace ORDER BY 1"
        ).fetchall()
        schema = conn.execute("SELECT current_schema()").fetchone()
    assert schema is not None
    return [(str(name), str(body).replace(f"{schema[0]}.", "")) for name, body in rows]
