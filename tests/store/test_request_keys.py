"""Operator requests: idempotency keys and bounded waits, on both stores.

``enqueue_request`` records the item, its audit entry and its idempotency key in one
transaction; a busy store fails fast with ``StoreBusy`` and commits nothing afterwards.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from corral.errors import RequestKeyReused, StoreBusy
from corral.store import (
    AgentSpec,
    EnqueueResult,
    ItemState,
    NewItem,
    Store,
    TriggerKind,
    open_store,
)
from tests.store._busy_holder import held_busy
from tests.store._roundtrips import counted_store
from tests.store.conftest import Clock


def manual(agent: str = "a", prompt: str | None = "fix it") -> NewItem:
    return NewItem(agent=agent, trigger=TriggerKind.MANUAL, prompt=prompt)


async def setup(store: Store, *agents: str, scale: int = 1) -> None:
    specs = [AgentSpec(name, scale=scale, queue_size=100) for name in agents or ("a",)]
    await store.sync_project(specs, scale_cap=None, max_attempts=3, max_reruns=10)


async def test_a_key_sent_again_answers_the_first_item(store: Store) -> None:
    await setup(store)
    first = await store.enqueue_request(manual(), actor="token:ci", key="k-1")
    again = await store.enqueue_request(manual(), actor="token:ci", key="k-1")
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.item.id == first.item.id
    other = await store.enqueue_request(manual(), actor="token:ci", key="k-2")
    assert other.item.id != first.item.id and not other.duplicate
    assert len(await store.list_items()) == 2
    audit = await store.list_audit()
    assert [(e.action, e.detail and e.detail["key"]) for e in audit] == [
        ("run.trigger", "k-2"),
        ("run.trigger", "k-1"),
    ]  # one entry per queued item, written with it


async def test_a_key_with_another_request_is_refused(store: Store) -> None:
    await setup(store, "a", "b")
    await store.enqueue_request(manual("a", "one"), actor="token:ci", key="k")
    for different in (manual("a", "two"), manual("b", "one"), manual("a", None)):
        with pytest.raises(RequestKeyReused, match="idempotency key 'k' was first sent"):
            await store.enqueue_request(different, actor="token:ci", key="k")
    assert len(await store.list_items()) == 1
    assert len(await store.list_audit()) == 1


async def test_a_rejected_request_answers_the_same_rejection(store: Store) -> None:
    await setup(store)
    await store.set_enabled("a", False)
    first = await store.enqueue_request(manual(), actor="token:ci", key="k")
    again = await store.enqueue_request(manual(), actor="token:ci", key="k")
    assert first.item.state is ItemState.REJECTED
    assert again.duplicate and again.item.id == first.item.id


async def test_a_replay_names_the_items_the_first_request_displaced(store: Store) -> None:
    specs = [AgentSpec("a", scale=1, queue_size=1)]
    await store.sync_project(specs, scale_cap=None, max_attempts=3, max_reruns=10)
    await store.enqueue(manual())
    first = await store.enqueue_request(manual(), actor="token:ci", key="k")
    again = await store.enqueue_request(manual(), actor="token:ci", key="k")
    assert len(first.dropped) == 1
    assert [d.id for d in again.dropped] == [d.id for d in first.dropped]


async def test_keys_are_kept_a_day(store: Store, clock: Clock) -> None:
    await setup(store)
    first = await store.enqueue_request(manual(), actor="token:ci", key="k")
    clock.advance(23 * 3600)
    assert (await store.enqueue_request(manual(), actor="token:ci", key="k")).duplicate
    clock.advance(2 * 3600)
    later = await store.enqueue_request(manual(), actor="token:ci", key="k")
    assert not later.duplicate and later.item.id != first.item.id


async def _until_answered(store: Store, key: str) -> EnqueueResult:
    """A client that retries a busy store with the same key until it is answered."""
    for _ in range(50):
        try:
            return await store.enqueue_request(manual(), actor="token:ci", key=key)
        except StoreBusy:
            await asyncio.sleep(0.1)
    raise AssertionError(f"{key}: the store stayed busy")


async def test_concurrent_requests_with_one_key_queue_one_item(store_url: str) -> None:
    stores = [await open_store(store_url) for _ in range(3)]
    try:
        await setup(stores[0])
        asks = [_until_answered(s, f"k-{n % 5}") for n in range(30) for s in stores]
        results = await asyncio.gather(*asks)
        items = await stores[0].list_items(limit=1000)
    finally:
        for s in stores:
            await s.close()
    assert len(items) == 5
    assert len({r.item.id for r in results}) == 5
    assert sum(not r.duplicate for r in results) == 5


@pytest.mark.slow
async def test_a_busy_store_fails_fast_and_commits_nothing_later(store_url: str) -> None:
    async with await open_store(store_url) as store:
        await setup(store)
        with held_busy(store_url):
            began = time.monotonic()
            asks = [
                store.enqueue_request(manual(), actor="token:ci", key=f"k-{n}") for n in range(6)
            ]
            outcomes = await asyncio.gather(*asks, return_exceptions=True)
            waited = time.monotonic() - began
        assert all(isinstance(o, StoreBusy) for o in outcomes), outcomes
        assert all(o.retry_after >= 1 for o in outcomes if isinstance(o, StoreBusy))
        assert waited < 10, f"the store answered busy only after {waited:.1f} s"
        await asyncio.sleep(1)
        assert await store.list_items() == []  # none of them committed after the refusal
        retried = [
            await store.enqueue_request(manual(), actor="token:ci", key=f"k-{n}") for n in range(6)
        ]
        assert not any(r.duplicate for r in retried)
        assert len(await store.list_items()) == 6


async def test_the_audit_entry_names_what_the_request_did(store: Store) -> None:
    """The audit entry of a request that displaced items names them, with its key (the
    same on both stores, whichever code wrote it)."""
    await store.sync_project(
        [AgentSpec("a", scale=1, queue_size=1)], scale_cap=None, max_attempts=3, max_reruns=0
    )
    first = await store.enqueue_request(manual(), actor="op", key="k-1")
    second = await store.enqueue_request(manual(prompt="again"), actor="op", key="k-2")
    full = await store.enqueue_request(manual(prompt="more"), actor="op", overflow="refuse")
    assert [d.id for d in second.dropped] == [first.item.id]
    assert full.item.state is ItemState.REJECTED and full.item.reason == "queue full"
    details = [e.detail for e in reversed(await store.list_audit())]
    assert details == [
        {"item": first.item.id, "state": "queued", "key": "k-1"},
        {"item": second.item.id, "state": "queued", "dropped": [first.item.id], "key": "k-2"},
        {"item": full.item.id, "state": "rejected", "reason": "queue full"},
    ]
    replay = await store.enqueue_request(manual(prompt="again"), actor="op", key="k-2")
    assert replay.duplicate and [d.id for d in replay.dropped] == [first.item.id]


@pytest.mark.parametrize(
    "dialect", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_an_operator_request_is_one_round_trip_on_postgresql(store_url: str) -> None:
    """A keyed request (its item, key and audit entry; before: 10 round trips) is one
    call of corral_enqueue_request; a replay of its key is answered the longer way."""
    async with counted_store(store_url) as (store, trips):
        await setup(store)
        with trips.counting() as seen:
            first = await store.enqueue_request(manual(), actor="op", key="k")
        assert seen.statements == 1, seen.queries
        again = await store.enqueue_request(manual(), actor="op", key="k")
        assert again.duplicate and again.item.id == first.item.id
