"""Conformance suite for webhook receipts, on both stores: a delivery and its items in one
transaction, dedupe by delivery id after verification, replays, listing and pruning, and
concurrent redeliveries from several processes giving exactly one acceptance."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from corral.errors import StoreError
from corral.store import (
    RECEIPT_BODY_CAP,
    AgentResult,
    AgentSpec,
    ItemState,
    NewItem,
    NewReceipt,
    ReceiptOutcome,
    Store,
    TriggerKind,
    new_receipt_id,
)
from tests.store._processes import run_together, spawn
from tests.store._roundtrips import counted_store
from tests.store.conftest import Clock

WORKER = Path(__file__).with_name("_webhook_worker.py")
HEADERS = {
    "content-type": "application/json",
    "x-github-event": "issues",
    "x-github-delivery": "d-1",
    "x-hub-signature-256": "sha256=abc",
    "authorization": "Bearer not-for-receipts",
    "cookie": "session=nope",
}


async def setup(store: Store, *specs: tuple[str, int, int]) -> None:
    await store.sync_project(
        [AgentSpec(name, scale, size) for name, scale, size in specs],
        scale_cap=None,
        max_attempts=3,
        max_reruns=0,
    )


def receipt(
    *,
    outcome: ReceiptOutcome = ReceiptOutcome.ACCEPTED,
    source: str = "gh",
    delivery_id: str | None = "d-1",
    matched: tuple[str, ...] = ("a",),
    unmatched: tuple[str, ...] = (),
    body: bytes = b'{"action":"opened"}',
    body_size: int | None = None,
    replay_of: str | None = None,
    receipt_id: str | None = None,
) -> NewReceipt:
    verified = outcome is not ReceiptOutcome.REFUSED
    results = tuple(AgentResult(a, True, "events: issues") for a in matched) + tuple(
        AgentResult(a, False, "events: issues is not push") for a in unmatched
    )
    return NewReceipt(
        id=receipt_id or new_receipt_id(),
        source=source,
        outcome=outcome,
        headers=HEADERS,
        body=body,
        body_size=len(body) if body_size is None else body_size,
        verified=verified,
        verification="signature verified" if verified else "signature does not match",
        event="issues",
        delivery_id=delivery_id,
        error=None if verified else "bad signature",
        results=results,
        replay_of=replay_of,
    )


def items_for(new: NewReceipt) -> list[NewItem]:
    return [
        NewItem(
            agent=r.agent,
            trigger=TriggerKind.WEBHOOK,
            trigger_detail={"event": "issues", "receiptId": new.id},
            dedupe_key=None
            if new.replay_of
            else f"webhook:{new.source}:{new.delivery_id}:{r.agent}",
        )
        for r in new.results
        if r.matched
    ]


async def test_a_delivery_and_its_items_are_recorded_together(store: Store, clock: Clock) -> None:
    await setup(store, ("a", 1, 5), ("b", 1, 5), ("c", 1, 5))
    new = receipt(matched=("a", "b"), unmatched=("c",))

    stored, enqueued = await store.record_delivery(new, items_for(new))

    assert stored.id == new.id and stored.id.startswith("wh_") and len(stored.id) == 19
    assert stored.outcome is ReceiptOutcome.ACCEPTED
    assert (stored.source, stored.event, stored.delivery_id) == ("gh", "issues", "d-1")
    assert stored.received_at == clock.now
    assert stored.verified and stored.verification == "signature verified"
    assert stored.body == new.body and stored.body_size == len(new.body)
    assert not stored.body_truncated
    assert "authorization" not in stored.headers and "cookie" not in stored.headers
    assert stored.headers["x-hub-signature-256"] == "sha256=abc"
    assert [e.item.agent for e in enqueued] == ["a", "b"]
    assert {e.item.state for e in enqueued} == {ItemState.QUEUED}
    assert [(r.agent, r.matched, r.state, r.item_id) for r in stored.results] == [
        ("a", True, "queued", enqueued[0].item.id),
        ("b", True, "queued", enqueued[1].item.id),
        ("c", False, None, None),
    ]
    assert stored.matched == ["a", "b"] and stored.queued == ["a", "b"]
    assert stored.item_ids == [e.item.id for e in enqueued]
    items = await store.list_items()
    assert {i.id: i.trigger_detail for i in items} == {
        e.item.id: {"event": "issues", "receiptId": new.id} for e in enqueued
    }
    assert await store.get_receipt(new.id) == stored
    assert await store.get_receipt("wh_0000000000000000") is None


async def test_the_body_is_kept_up_to_the_cap(store: Store) -> None:
    big = b"x" * (RECEIPT_BODY_CAP + 10)
    stored, _ = await store.record_delivery(receipt(matched=(), body=big, delivery_id=None))
    assert len(stored.body) == RECEIPT_BODY_CAP and stored.body == big[:RECEIPT_BODY_CAP]
    assert stored.body_size == RECEIPT_BODY_CAP + 10 and stored.body_truncated

    # Reading stopped at a limit: the size is what the sender announced, more than was read.
    refused = receipt(outcome=ReceiptOutcome.REFUSED, matched=(), body=b"", body_size=5 << 20)
    stored, _ = await store.record_delivery(refused)
    assert (stored.body, stored.body_size, stored.body_truncated) == (b"", 5 << 20, True)
    assert stored.outcome is ReceiptOutcome.REFUSED and not stored.verified
    assert stored.error == "bad signature"


async def test_a_redelivery_is_a_duplicate_and_queues_nothing(store: Store) -> None:
    await setup(store, ("a", 1, 5))
    first = receipt()
    stored, _ = await store.record_delivery(first, items_for(first))

    again = receipt()
    duplicate, enqueued = await store.record_delivery(again, items_for(again))

    assert enqueued == []
    assert duplicate.id == again.id and duplicate.outcome is ReceiptOutcome.DUPLICATE
    assert duplicate.duplicate_of == stored.id and duplicate.results == ()
    assert len(await store.list_items()) == 1
    # The same id from another source is another delivery.
    other = receipt(source="gh2")
    accepted, enqueued = await store.record_delivery(other, items_for(other))
    assert accepted.outcome is ReceiptOutcome.ACCEPTED and len(enqueued) == 1


async def test_only_verified_deliveries_take_a_delivery_id(store: Store) -> None:
    await setup(store, ("a", 1, 5))
    for outcome in (ReceiptOutcome.REFUSED, ReceiptOutcome.INVALID):
        stored, _ = await store.record_delivery(receipt(outcome=outcome, matched=()))
        assert stored.outcome is outcome
    ok = receipt()
    stored, enqueued = await store.record_delivery(ok, items_for(ok))
    assert stored.outcome is ReceiptOutcome.ACCEPTED and len(enqueued) == 1
    # A refused redelivery after the acceptance is still recorded as refused.
    late, _ = await store.record_delivery(receipt(outcome=ReceiptOutcome.REFUSED, matched=()))
    assert late.outcome is ReceiptOutcome.REFUSED
    # A ping takes its id too.
    ping = receipt(outcome=ReceiptOutcome.PING, matched=(), delivery_id="p-1")
    assert (await store.record_delivery(ping))[0].outcome is ReceiptOutcome.PING
    repeat = receipt(outcome=ReceiptOutcome.PING, matched=(), delivery_id="p-1")
    assert (await store.record_delivery(repeat))[0].outcome is ReceiptOutcome.DUPLICATE


async def test_replays_take_no_delivery_id(store: Store) -> None:
    await setup(store, ("a", 1, 5))
    first = receipt()
    original, _ = await store.record_delivery(first, items_for(first))
    for _ in range(2):
        replay = receipt(replay_of=original.id)
        stored, enqueued = await store.record_delivery(replay, items_for(replay))
        assert stored.outcome is ReceiptOutcome.ACCEPTED and stored.replay_of == original.id
        assert stored.delivery_id == "d-1" and len(enqueued) == 1
    assert len(await store.list_items()) == 3


async def test_disabled_unknown_and_full_agents_are_recorded_with_the_reason(
    store: Store,
) -> None:
    await setup(store, ("off", 0, 5), ("full", 1, 1))
    await store.enqueue(NewItem(agent="full", trigger=TriggerKind.SCHEDULE))
    new = receipt(matched=("off", "ghost", "full"))

    stored, enqueued = await store.record_delivery(new, items_for(new))

    by_agent = {r.agent: r for r in stored.results}
    assert by_agent["off"].state == "rejected" and "scale = 0" in (by_agent["off"].why or "")
    assert by_agent["ghost"].state == "rejected"
    assert "unknown agent 'ghost'" in (by_agent["ghost"].why or "")
    assert by_agent["full"].state == "queued" and len(by_agent["full"].dropped) == 1
    assert stored.queued == ["full"]
    assert [e.item.state for e in enqueued] == [
        ItemState.REJECTED,
        ItemState.REJECTED,
        ItemState.QUEUED,
    ]
    dropped = await store.get_item(by_agent["full"].dropped[0])
    assert dropped is not None and dropped.state is ItemState.DROPPED


async def test_items_must_belong_to_matched_agents_of_an_accepted_receipt(store: Store) -> None:
    await setup(store, ("a", 1, 5))
    refused = receipt(outcome=ReceiptOutcome.REFUSED)
    with pytest.raises(ValueError, match="refused receipt queues nothing"):
        await store.record_delivery(refused, items_for(receipt()))
    with pytest.raises(ValueError, match="does not match"):
        await store.record_delivery(receipt(matched=(), unmatched=("a",)), items_for(receipt()))
    twice = items_for(receipt()) * 2
    with pytest.raises(ValueError, match="two items"):
        await store.record_delivery(receipt(), twice)
    assert await store.list_receipts() == [] and await store.list_items() == []


async def test_a_failed_record_queues_nothing(store: Store) -> None:
    """The receipt and its items are one transaction: when the receipt cannot be written
    (here its id is taken), the items enqueued before it are rolled back with it."""
    await setup(store, ("a", 1, 5))
    taken, _ = await store.record_delivery(receipt(matched=(), delivery_id=None))
    clash = receipt(receipt_id=taken.id, delivery_id="d-9")
    with pytest.raises(StoreError, match="insert_receipt"):
        await store.record_delivery(clash, items_for(clash))
    assert await store.list_items() == []
    assert [r.id for r in await store.list_receipts()] == [taken.id]


async def test_a_failed_delivery_among_concurrent_ones_fails_alone(store: Store) -> None:
    """Concurrent deliveries share transactions; one that fails (its id is taken) is
    rolled back alone, and the others are recorded with their items."""
    await setup(store, ("a", 1, 100))
    taken, _ = await store.record_delivery(receipt(matched=(), delivery_id=None))
    good = [receipt(delivery_id=f"g-{n}") for n in range(10)]
    clash = receipt(receipt_id=taken.id, delivery_id="d-clash")
    news = [*good[:5], clash, *good[5:]]

    done = await asyncio.gather(
        *(store.record_delivery(n, items_for(n)) for n in news), return_exceptions=True
    )

    assert isinstance(done[5], StoreError)
    stored = [d for d in done if not isinstance(d, BaseException)]
    assert [r.id for r, _ in stored] == [n.id for n in good]
    items = await store.list_items(limit=100)
    assert sorted(i.id for i in items) == sorted(r.item_ids[0] for r, _ in stored)
    assert {str((i.trigger_detail or {})["receiptId"]) for i in items} == {n.id for n in good}


async def test_list_receipts_filters_newest_first(store: Store, clock: Clock) -> None:
    await setup(store, ("a", 1, 50))
    ids = []
    for n, (source, outcome) in enumerate(
        [
            ("gh", ReceiptOutcome.ACCEPTED),
            ("gh", ReceiptOutcome.REFUSED),
            ("sentry", ReceiptOutcome.ACCEPTED),
            ("gh", ReceiptOutcome.INVALID),
        ]
    ):
        clock.advance(1)
        new = receipt(source=source, outcome=outcome, delivery_id=f"d-{n}", matched=())
        ids.append((await store.record_delivery(new))[0].id)

    assert [r.id for r in await store.list_receipts()] == ids[::-1]
    assert [r.id for r in await store.list_receipts(limit=2)] == ids[:1:-1]
    assert [r.id for r in await store.list_receipts(source="gh")] == [ids[3], ids[1], ids[0]]
    assert [r.id for r in await store.list_receipts(outcome="accepted")] == [ids[2], ids[0]]
    found = await store.list_receipts(source="gh", outcome=ReceiptOutcome.REFUSED)
    assert [r.id for r in found] == [ids[1]]
    since = clock.now - timedelta(seconds=1)
    assert [r.id for r in await store.list_receipts(since=since)] == [ids[3], ids[2]]
    with pytest.raises(ValueError, match="not-an-outcome"):
        await store.list_receipts(outcome="not-an-outcome")
    with pytest.raises(ValueError, match="limit"):
        await store.list_receipts(limit=-1)


async def test_prune_receipts(store: Store, clock: Clock) -> None:
    await setup(store, ("a", 1, 5))
    old = receipt()
    original, _ = await store.record_delivery(old, items_for(old))
    clock.advance(3600)
    for _ in range(2):  # replays of it (no foreign key: pruning the original leaves them)
        replay = receipt(replay_of=original.id)
        await store.record_delivery(replay, items_for(replay))

    assert await store.prune_receipts(clock.now - timedelta(seconds=60)) == 1
    left = await store.list_receipts()
    assert len(left) == 2 and {r.replay_of for r in left} == {original.id}
    assert len(await store.list_items()) == 3  # items and runs have their own retention


async def test_concurrent_redeliveries_in_one_process_accept_once(store: Store) -> None:
    await setup(store, ("a", 1, 100))
    news = [receipt(delivery_id=f"d-{n % 5}") for n in range(40)]

    done = await asyncio.gather(*(store.record_delivery(n, items_for(n)) for n in news))

    outcomes = Counter((r.delivery_id, r.outcome) for r, _ in done)
    for n in range(5):
        assert outcomes[(f"d-{n}", ReceiptOutcome.ACCEPTED)] == 1
        assert outcomes[(f"d-{n}", ReceiptOutcome.DUPLICATE)] == 7
    items = await store.list_items(limit=100)
    assert len(items) == 5
    assert sum(len(enqueued) for _, enqueued in done) == 5


async def test_redeliveries_of_an_id_with_a_nul_character_are_duplicates(store: Store) -> None:
    """A delivery id with U+0000 (PostgreSQL keeps it as U+FFFD) is still taken once,
    against a receipt already stored and within a batch of concurrent ones."""
    await setup(store, ("a", 1, 100))
    earlier = receipt(delivery_id="old\x00id")
    first, _ = await store.record_delivery(earlier, items_for(earlier))
    news = [receipt(delivery_id=f"{name}\x00id") for name in ("old", "new", "old", "new")]

    done = await asyncio.gather(*(store.record_delivery(n, items_for(n)) for n in news))

    outcomes = [stored.outcome for stored, _ in done]
    assert (
        outcomes
        == [ReceiptOutcome.DUPLICATE, ReceiptOutcome.ACCEPTED] + [ReceiptOutcome.DUPLICATE] * 2
    )
    assert [stored.duplicate_of for stored, _ in done] == [first.id, None, first.id, done[1][0].id]
    assert len(await store.list_items(limit=100)) == 2


async def test_redeliveries_from_several_processes_accept_exactly_once(
    store: Store, store_url: str
) -> None:
    await setup(store, ("a", 1, 1000))
    procs = [await spawn(WORKER, store_url, 30) for _ in range(4)]

    results = await run_together(procs)

    accepted = [d for r in results for d in r["accepted"]]
    duplicates = [d for r in results for d in r["duplicates"]]
    assert sorted(accepted) == sorted(f"d-{n}" for n in range(30))  # each id accepted once
    assert len(duplicates) == 3 * 30
    receipts = await store.list_receipts(limit=1000)
    assert Counter(r.outcome for r in receipts) == {
        ReceiptOutcome.ACCEPTED: 30,
        ReceiptOutcome.DUPLICATE: 90,
    }
    items = await store.list_items(limit=1000)
    assert len(items) == 30
    assert sorted(str(i.trigger_detail and i.trigger_detail["delivery"]) for i in items) == sorted(
        accepted
    )
    firsts = {r.id for r in receipts if r.outcome is ReceiptOutcome.ACCEPTED}
    assert {r.duplicate_of for r in receipts if r.duplicate_of} == firsts


# -- round trips on PostgreSQL -----------------------------------------------------------


@pytest.mark.parametrize(
    "dialect", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_batch_of_deliveries_costs_two_round_trips_on_postgresql(store_url: str) -> None:
    """Deliveries recorded together (one transaction, see ``_DeliveryBatches``) cost two
    round trips whatever their number: BEGIN, the project lock, the query for delivery
    ids already taken and ONE enqueue for every item of the batch sent together, then one
    insert for every receipt sent with the COMMIT (before: six, each statement alone)."""
    async with counted_store(store_url) as (store, trips):
        await setup(store, ("a", 1, 100))
        earlier = receipt(delivery_id="d-earlier")
        await store.record_delivery(earlier, items_for(earlier))
        news = [receipt(delivery_id=f"d-{n}") for n in range(20)]
        with trips.counting() as seen:
            recorded = await asyncio.gather(*(store.record_delivery(n, items_for(n)) for n in news))
        transactions = seen.queries.count("BEGIN")
        assert 1 <= transactions <= 3
        assert seen.queries.count("COMMIT") == transactions, seen.queries
        assert seen.statements == transactions * 2, seen.queries
        enqueues = [query for query in seen.queries if "corral_enqueue" in query]
        assert len(enqueues) == transactions, seen.queries
        assert all(stored.outcome is ReceiptOutcome.ACCEPTED for stored, _ in recorded)
        for stored, enqueued in recorded:
            assert (await store.get_receipt(stored.id)) == stored
            assert [e.item.id for e in enqueued] == list(stored.item_ids)
        queued = await store.list_items(agent="a", states=[ItemState.QUEUED])
        assert len(queued) == 21


@pytest.mark.parametrize(
    "dialect", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_batch_of_deliveries_reads_and_writes_its_receipts_together_on_postgresql(
    store_url: str,
) -> None:
    """A batch with redeliveries (within the batch, and of a delivery recorded before)
    still costs a constant whatever its number: the hopeful first round trip (the
    enqueue sent with the lookup of taken ids) finds a taken id and is rolled back, and
    the batch runs again with the enqueue after the lookup. The redeliveries are
    duplicates, and nothing the rolled-back enqueue did remains."""
    async with counted_store(store_url) as (store, trips):
        await setup(store, ("a", 1, 100))
        earlier = receipt(delivery_id="d-0")
        await store.record_delivery(earlier, items_for(earlier))
        news = [receipt(delivery_id=f"d-{n % 12}") for n in range(20)]  # d-0..d-11, some twice
        with trips.counting() as seen:
            recorded = await asyncio.gather(*(store.record_delivery(n, items_for(n)) for n in news))
        commits = seen.queries.count("COMMIT")
        on_receipts = [query for query in seen.queries if "corral_webhook_receipts" in query]
        assert 1 <= commits <= 3
        assert len(on_receipts) <= 4 * commits, on_receipts
        assert seen.statements <= commits * 8, seen.queries
        outcomes = [stored.outcome for stored, _ in recorded]
        assert outcomes.count(ReceiptOutcome.ACCEPTED) == 11  # d-1 .. d-11, once each
        assert outcomes.count(ReceiptOutcome.DUPLICATE) == 9
        by_delivery = {s.delivery_id: s.id for s, _ in recorded if s.outcome == "accepted"}
        for stored, enqueued in recorded:
            assert (await store.get_receipt(stored.id)) == stored
            if stored.outcome is ReceiptOutcome.DUPLICATE:
                first = (
                    earlier.id if stored.delivery_id == "d-0" else by_delivery[stored.delivery_id]
                )
                assert (stored.duplicate_of, enqueued) == (first, [])
        queued = await store.list_items(agent="a", states=[ItemState.QUEUED])
        assert len(queued) == 12


async def test_a_batch_with_refusals_and_a_full_queue_queues_as_one_at_a_time(
    store: Store,
) -> None:
    """Concurrent deliveries (recorded together on PostgreSQL, by one statement for all
    their items) queue as if one at a time, in the order they came: each takes the
    bound of the queue as the deliveries before it left it (the oldest dropped and named
    in the receipt that displaced it), and an agent that takes no triggers is recorded
    rejected with its reason wherever it falls in the batch."""
    await setup(store, ("a", 1, 2), ("off", 0, 5))
    news = [
        receipt(delivery_id=f"d-{n}", matched=("off", "a") if n % 3 == 1 else ("a",))
        for n in range(9)
    ]
    news.append(receipt(delivery_id="d-ghost", matched=("ghost", "a")))

    recorded = await asyncio.gather(*(store.record_delivery(n, items_for(n)) for n in news))

    a_items = [next(r for r in s.results if r.agent == "a") for s, _ in recorded]
    ids = [r.item_id for r in a_items]
    assert ids == sorted(ids) and all(r.state == "queued" for r in a_items)
    # Each delivery from the third on dropped the oldest, named once, in order.
    assert [r.dropped for r in a_items] == [(), (), *((i,) for i in ids[:-2])]
    queued = await store.list_items(agent="a", states=[ItemState.QUEUED])
    assert sorted(i.id for i in queued) == ids[-2:]
    for stored, enqueued in recorded:
        assert (await store.get_receipt(stored.id)) == stored
        for result in stored.results:
            if result.agent == "off":
                assert result.state == "rejected" and "scale = 0" in (result.why or "")
            if result.agent == "ghost":
                assert "unknown agent 'ghost'" in (result.why or "")
        assert [e.item.id for e in enqueued] == [r.item_id for r in stored.results]
    dropped = await store.list_items(agent="a", states=[ItemState.DROPPED])
    assert sorted(i.id for i in dropped) == ids[:-2]
    assert all("queue full (2 items)" in (i.reason or "") for i in dropped)
    counted = {state.agent: state.queued for state in await store.agent_states()}
    assert counted["a"] == 2


def _receipt_params(store: Store, receipt_id: str) -> dict[str, object]:
    """The parameters of ``insert_receipt`` for a bare accepted receipt ``receipt_id``."""
    return {
        "repeat_key": None,
        "id": receipt_id,
        "source": "gh",
        "event": "issues",
        "delivery_id": None,
        "received_at": store.encode_time(store.now()),
        "headers": store.encode_json({}),
        "body": b"{}",
        "body_size": 2,
        "body_truncated": False,
        "verified": True,
        "verification": "signature verified",
        "outcome": ReceiptOutcome.ACCEPTED.value,
        "error": None,
        "results": store.encode_json([]),
        "replay_of": None,
        "duplicate_of": None,
    }


async def test_a_pipelined_transaction_answers_each_statement_and_commits_all_or_nothing(
    store: Store,
) -> None:
    """``pipelined_transaction`` (a batch's transaction): ``fetch_many`` answers each of
    its statements, in order; a last statement sent with the COMMIT that fails fails the
    transaction, and nothing done before it in the transaction stays."""
    await setup(store, ("a", 1, 5))
    first, _ = await store.record_delivery(receipt(matched=(), delivery_id=None))
    async with store.pipelined_transaction() as tx:
        locked, found, missing = await tx.fetch_many(
            [
                ("lock_project", None),
                ("get_receipt", {"id": first.id}),
                ("get_receipt", {"id": "wh_none"}),
            ]
        )
    assert len(locked) == 1
    assert [row["id"] for row in found] == [first.id]
    assert missing == []

    later = store.now() + timedelta(days=1)
    with pytest.raises(StoreError):
        async with store.pipelined_transaction() as tx:
            pruned = await tx.execute(
                "prune_receipts",
                {
                    "older_than": store.encode_time(later),
                    "strangers_before": store.encode_time(later),
                },
            )
            assert pruned == 1
            await tx.execute("insert_receipt", _receipt_params(store, "wh_twice"))
            await tx.execute_with_commit("insert_receipt", _receipt_params(store, "wh_twice"))
    assert await store.get_receipt(first.id) == first
    assert await store.get_receipt("wh_twice") is None
    # The connection went back clean: the next transaction works.
    again, _ = await store.record_delivery(receipt(matched=(), delivery_id=None))
    assert await store.get_receipt(again.id) == again
