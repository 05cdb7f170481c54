"""What a run costs the store between its item being queued and its end, as a scheduler
makes it: the claim (which stores the run's secret hash), marking it running with its
pid and host, and finalising it.

PostgreSQL: one round trip each, counted on the wire (tests/store/_roundtrips.py), the
pool's check included: 3 per run. Before: the claim 7 (BEGIN, get_project, claimable,
next_fences, insert_claim_runs, claim_items, COMMIT), the secret 3 (BEGIN, UPDATE,
COMMIT), running 3, finalise 1: 14. SQLite: one write transaction each, 3 per run
(before: 4, the secret's own).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from corral.errors import StoreError
from corral.store import (
    AgentSpec,
    ItemState,
    NewItem,
    Run,
    RunState,
    Store,
    TriggerKind,
    open_store,
)
from corral.store._sqlite import SqliteStore
from tests.store._roundtrips import WARM_UP, counted_store

LEASE = 60.0
BATCH = 64  # the dispatcher's claim batch


def _hash(n: int) -> str:
    return hashlib.sha256(f"secret {n}".encode()).hexdigest()


async def _setup(store: Store) -> None:
    await store.sync_project(
        [AgentSpec("a", 4, 1000), AgentSpec("b", 4, 1000)],
        scale_cap=None,
        max_attempts=2,
        max_reruns=2,
    )


@asynccontextmanager
async def _counted(dialect: str, url: str) -> AsyncIterator[tuple[Store, Callable[[], int]]]:
    """The store and a function returning its cost so far (round trips + pool checks on
    PostgreSQL; BEGINs on SQLite)."""
    if dialect == "postgresql":
        async with counted_store(url) as (store, proxy):
            yield store, lambda: proxy.seen.statements + proxy.seen.checks
        return
    async with await open_store(url) as store:
        assert isinstance(store, SqliteStore)
        begins: list[str] = []

        def trace(sql: str) -> None:
            if sql.lstrip().upper().startswith("BEGIN"):
                begins.append(sql)

        conn = store._conn
        assert isinstance(conn, sqlite3.Connection)
        await store.call(conn.set_trace_callback, trace)
        yield store, lambda: len(begins)


async def _one_run(store: Store, cost: Callable[[], int], n: int) -> tuple[int, int, int]:
    """Enqueue (not counted), then claim, mark running and finalise one run as the
    dispatcher and the executor do; what each step cost."""
    await store.enqueue(NewItem("a" if n % 2 else "b", TriggerKind.MANUAL, prompt="p"))
    hashes = [_hash(n * BATCH + i) for i in range(BATCH)]
    before = cost()
    [claim] = await store.claim("s1", lease_seconds=LEASE, limit=BATCH, secret_hashes=hashes)
    claiming = cost() - before
    found = await store.run_for_secret(hashes[0])  # the claim stored the run's secret hash
    assert found is not None and found.id == claim.run.id
    before = cost()
    await store.mark_run_running(claim.run.id, pid=1000 + n, host="h")
    running = cost() - before
    assert claim.run.fence is not None
    before = cost()
    done = await store.finalize(
        claim.run.id, fence=claim.run.fence, state=RunState.SUCCEEDED, exit_code=0
    )
    finishing = cost() - before
    assert (done.run.state, done.item.state) == (RunState.SUCCEEDED, ItemState.DONE)
    assert (done.run.pid, done.run.host) == (1000 + n, "h")
    return claiming, running, finishing


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_run_costs_one_round_trip_to_claim_one_to_start_and_one_to_end(
    dialect: str, store_url: str
) -> None:
    async with _counted(dialect, store_url) as (store, cost):
        await _setup(store)
        for n in range(WARM_UP):  # past psycopg's one-time prepare of each statement
            await _one_run(store, cost, n)
        costs = [await _one_run(store, cost, WARM_UP + n) for n in range(5)]
    assert costs == [(1, 1, 1)] * 5


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_claim_gives_each_run_its_own_secret_hash_in_item_order(store: Store) -> None:
    await _setup(store)
    for n in range(5):
        await store.enqueue(NewItem("a" if n % 2 else "b", TriggerKind.MANUAL, prompt="p"))
    hashes = [_hash(i) for i in range(BATCH)]
    claims = await store.claim("s1", lease_seconds=LEASE, limit=BATCH, secret_hashes=hashes)
    assert [c.item.id for c in claims] == sorted(c.item.id for c in claims)
    assert len(claims) == 5
    for claim, digest in zip(claims, hashes, strict=False):
        found = await store.run_for_secret(digest)
        assert found is not None and found.id == claim.run.id
    assert await store.run_for_secret(hashes[5]) is None  # unused: kept by no run
    # Without hashes a claim stores none (the run's start sets one).
    await store.enqueue(NewItem("a", TriggerKind.MANUAL, prompt="p"))
    [plain] = await store.claim("s1", lease_seconds=LEASE, limit=BATCH)
    await store.set_run_secret(plain.run.id, _hash(999))
    assert (await store.run_for_secret(_hash(999))) is not None


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_claim_refuses_a_hash_given_twice(store: Store) -> None:
    await _setup(store)
    await store.enqueue(NewItem("a", TriggerKind.MANUAL, prompt="p"))
    with pytest.raises(ValueError, match="names a hash twice"):
        await store.claim("s1", lease_seconds=LEASE, limit=2, secret_hashes=[_hash(1)] * 2)
    assert (await store.list_items())[0].state is ItemState.QUEUED


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_runs_marked_running_together_each_get_their_own_outcome(store: Store) -> None:
    """Sixteen marks at once, as a claim's runs start: each run gets its own pid, host
    and start; one already running and one unknown are refused alone, as one at a time."""
    await _setup(store)
    for n in range(17):
        await store.enqueue(NewItem("a" if n % 2 else "b", TriggerKind.MANUAL, prompt="p"))
    claims = await store.claim("s1", lease_seconds=LEASE, limit=BATCH)
    assert len(claims) == 8  # scale 4 each
    first = claims[0].run.id
    await store.mark_run_running(first, pid=1, host="h0")
    ids = [c.run.id for c in claims] + ["ghost-1"]
    outcomes = await asyncio.gather(
        *(
            store.mark_run_running(run_id, pid=2000 + n, host=f"h{n}")
            for n, run_id in enumerate(ids)
        ),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], StoreError) and "it is running" in str(outcomes[0])
    assert isinstance(outcomes[-1], StoreError) and "no run 'ghost-1'" in str(outcomes[-1])
    for n, (run_id, outcome) in enumerate(zip(ids[1:-1], outcomes[1:-1], strict=True), 1):
        assert isinstance(outcome, Run), outcome
        assert (outcome.id, outcome.state, outcome.pid, outcome.host) == (
            run_id,
            RunState.RUNNING,
            2000 + n,
            f"h{n}",
        )
        assert outcome.started_at is not None
        assert await store.get_run(run_id) == outcome
    kept = await store.get_run(first)
    assert kept is not None and (kept.pid, kept.host) == (1, "h0")


@pytest.mark.postgres
@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
async def test_marks_sent_together_share_a_round_trip(store_url: str) -> None:
    """PostgreSQL: marks that arrive while one is in flight go in one statement; 32
    runs starting at once cost a few round trips, not 32."""
    async with counted_store(store_url) as (store, proxy):
        await store.sync_project(
            [AgentSpec("a", 64, 1000)], scale_cap=None, max_attempts=2, max_reruns=2
        )
        for _ in range(32):
            await store.enqueue(NewItem("a", TriggerKind.MANUAL, prompt="p"))
        claims = await store.claim("s1", lease_seconds=LEASE, limit=BATCH)
        assert len(claims) == 32
        with proxy.counting() as seen:
            done = await asyncio.gather(
                *(store.mark_run_running(c.run.id, pid=n, host="h") for n, c in enumerate(claims))
            )
        assert [run.pid for run in done] == list(range(32))
        assert seen.statements <= 4, seen.queries
