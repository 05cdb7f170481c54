"""Webhook receipts: every delivery recorded, with the items it queued, in one transaction.

``record_delivery`` writes a delivery's receipt and enqueues the items its matching agents
get in the same transaction (under the project lock, as every enqueue), so the gateway
answers 2xx only once both are durable: a crash after the answer loses nothing that was
acknowledged, and a crash before it leaves neither (the sender retries).

A delivery id is taken once per source, after verification: the first delivery with it
that verified (accepted, or a ping) holds it; a later one with the same id is recorded as
a ``duplicate`` of the first and queues nothing. The check reads under the project lock,
so concurrent redeliveries (several gateways, several processes) record exactly one
acceptance; a partial unique index makes that a constraint as well. Replays
(``replay_of``) take no delivery id.

A stranger's delivery (``NewReceipt.repeat_key`` set: refused before it could be trusted,
or unsigned and invalid) is what anyone can send at no cost, so what it may add to the
store is bounded: its receipt keeps ``REFUSED_BODY_CAP`` of the body and
``REFUSED_HEADERS_CAP`` of the headers; past ``REFUSED_PER_HOUR`` receipts of its kind in
an hour, it is counted on the newest of them (``repeats``) instead of stored; and such
receipts are pruned after ``REFUSED_RETENTION``, by the hourly prune and by the next
stranger's delivery. So strangers add at most ``REFUSED_PER_HOUR`` receipts of a few KiB an
hour for each kind (``refused:<source>``, ``refused:unknown source``, ``invalid:<source>``),
held a day, however many deliveries they send.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from corral.store._batching import Failed, GroupCommit, Waiting
from corral.store._core import Params, Row, Transaction
from corral.store._queue import QueueOps
from corral.store._time import require_aware
from corral.store.records import (
    AgentResult,
    EnqueueResult,
    NewItem,
    NewReceipt,
    ProjectState,
    Receipt,
    ReceiptOutcome,
)

__all__ = [
    "DROPPED_HEADERS",
    "RECEIPT_BODY_CAP",
    "REFUSED_BODY_CAP",
    "REFUSED_HEADERS_CAP",
    "REFUSED_PER_HOUR",
    "REFUSED_RETENTION",
    "WebhookOps",
    "kept_headers",
    "new_receipt_id",
]

#: How much of a delivery's body a receipt keeps; ``body_size`` records the whole size.
RECEIPT_BODY_CAP = 64 * 1024
#: Request headers a receipt never keeps (credentials of the sender's HTTP client, not of
#: the delivery). Signature headers are kept: they prove nothing without the secret.
DROPPED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})

#: What a stranger's receipt keeps of the body, and of the headers (as JSON), at most.
REFUSED_BODY_CAP = 1024
REFUSED_HEADERS_CAP = 4096
#: Receipts of one kind of stranger's delivery stored an hour; more are counted on the last.
REFUSED_PER_HOUR = 20
#: How long a stranger's receipt is kept.
REFUSED_RETENTION = timedelta(days=1)
_REPEAT_WINDOW = timedelta(hours=1)
#: A stranger's header value is cut to this many characters, its name to the next.
_STRANGER_VALUE = 256
_STRANGER_NAME = 64

_TAKES_DELIVERY_ID = (ReceiptOutcome.ACCEPTED, ReceiptOutcome.PING)


def new_receipt_id() -> str:
    """A fresh receipt id: ``wh_`` and 16 random hex digits."""
    return f"wh_{secrets.token_hex(8)}"


class WebhookOps(QueueOps):
    """Webhook receipts; part of ``Store``."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._deliveries = _DeliveryBatches(self)

    async def record_delivery(
        self, receipt: NewReceipt, items: Sequence[NewItem] = ()
    ) -> tuple[Receipt, list[EnqueueResult]]:
        """Record ``receipt`` and enqueue ``items`` (one per matched agent), in one
        transaction; return the receipt as stored and what each enqueue did.

        Each item belongs to an agent whose entry in ``receipt.results`` matched; the stored
        results gain that item's id and state (``queued``, or ``rejected`` with the reason
        for a disabled or unknown agent), and the items dropped to make room. Only an
        ``accepted`` receipt may carry items.

        When the receipt takes a delivery id (accepted or ping, not a replay) that an
        earlier delivery of its source already took, nothing is queued: the receipt is
        stored as ``duplicate`` with ``duplicate_of`` naming the earlier one, and returned
        with no enqueue results.
        """
        _check_items(receipt, items)
        if self.dialect == "sqlite":
            # SQLite's atomic() already runs concurrent bodies together, one commit each hop.
            async def body(tx: Transaction) -> tuple[Receipt, list[EnqueueResult]]:
                project = await self.lock_project(tx)
                return await self._record_in(tx, project, receipt, items)

            return await self.atomic(body)
        return await self._deliveries.submit(receipt, items)

    async def _record_in(
        self,
        tx: Transaction,
        project: ProjectState,
        receipt: NewReceipt,
        items: Sequence[NewItem],
    ) -> tuple[Receipt, list[EnqueueResult]]:
        """``record_delivery`` inside ``tx``, which holds the project lock (a batch of
        deliveries on PostgreSQL is recorded set-wise instead: ``_DeliveryBatches``)."""
        if _takes_delivery_id(receipt):
            first_id = await self._delivery_taken(tx, receipt)
            if first_id is not None:
                duplicate = await self._insert_receipt(
                    tx,
                    receipt,
                    outcome=ReceiptOutcome.DUPLICATE,
                    results=(),
                    duplicate_of=first_id,
                )
                return duplicate, []
        if receipt.repeat_key is not None:
            return await self._record_stranger(tx, receipt), []
        results, enqueued = await self._enqueue_matched(tx, project, receipt, items)
        stored = await self._insert_receipt(tx, receipt, outcome=receipt.outcome, results=results)
        return stored, enqueued

    async def _delivery_taken(self, tx: Transaction, receipt: NewReceipt) -> str | None:
        """The id of the receipt that took ``receipt``'s delivery id, if one did."""
        params = {"source": receipt.source, "delivery_id": receipt.delivery_id}
        first = await tx.fetch_one("find_receipt_delivery", params)
        return None if first is None else str(first["id"])

    async def _record_stranger(self, tx: Transaction, receipt: NewReceipt) -> Receipt:
        """A stranger's receipt, trimmed; or, past ``REFUSED_PER_HOUR`` of its kind this
        hour, one more delivery counted on the newest (see the module docstring)."""
        now = self.now()
        await tx.execute(
            "prune_stranger_receipts",
            {"strangers_before": self.encode_time(now - REFUSED_RETENTION)},
        )
        params = {"repeat_key": receipt.repeat_key, "since": self.encode_time(now - _REPEAT_WINDOW)}
        recent = await tx.fetch_one("recent_repeats", params)
        if recent is not None and int(recent["n"]) >= REFUSED_PER_HOUR:
            row = await tx.fetch_one("count_repeat", params | {"now": self.encode_time(now)})
            if row is not None:
                return self.receipt_from_row(row)
        trimmed = dataclasses.replace(
            receipt,
            headers=stranger_headers(receipt.headers),
            body=receipt.body[:REFUSED_BODY_CAP],
            body_size=max(receipt.body_size, len(receipt.body)),
        )
        return await self._insert_receipt(tx, trimmed, outcome=receipt.outcome, results=())

    async def _enqueue_matched(
        self,
        tx: Transaction,
        project: ProjectState,
        receipt: NewReceipt,
        items: Sequence[NewItem],
    ) -> tuple[tuple[AgentResult, ...], list[EnqueueResult]]:
        matched = _matched_items(receipt, items)
        done = await self._enqueue_many_locked(tx, project, matched, "drop_oldest")
        return _merged(receipt, items, done)

    async def _insert_receipt(
        self,
        tx: Transaction,
        receipt: NewReceipt,
        *,
        outcome: ReceiptOutcome,
        results: tuple[AgentResult, ...],
        duplicate_of: str | None = None,
        batch: _Batch | None = None,
    ) -> Receipt:
        """Insert the receipt (with ``batch``: add it to the batch's, inserted together at
        its end); return it as stored (built here, not read back: the body need not cross
        from the database again)."""
        size = max(receipt.body_size, len(receipt.body))
        stored = Receipt(
            id=receipt.id,
            source=receipt.source,
            event=receipt.event,
            delivery_id=receipt.delivery_id,
            received_at=self.now(),
            headers=kept_headers(receipt.headers),
            body=receipt.body[:RECEIPT_BODY_CAP],
            body_size=size,
            body_truncated=size > min(len(receipt.body), RECEIPT_BODY_CAP),
            verified=receipt.verified,
            verification=receipt.verification,
            outcome=outcome,
            error=receipt.error,
            results=results,
            replay_of=receipt.replay_of,
            duplicate_of=duplicate_of,
        )
        params = {
            "repeat_key": receipt.repeat_key,
            "id": stored.id,
            "source": stored.source,
            "event": stored.event,
            "delivery_id": stored.delivery_id,
            "received_at": self.encode_time(stored.received_at),
            "headers": self.encode_json(stored.headers),
            "body": stored.body,
            "body_size": stored.body_size,
            "body_truncated": stored.body_truncated,
            "verified": stored.verified,
            "verification": stored.verification,
            "outcome": outcome.value,
            "error": stored.error,
            "results": self.encode_json([r.to_json() for r in results]),
            "replay_of": stored.replay_of,
            "duplicate_of": duplicate_of,
        }
        if batch is None:
            await tx.execute("insert_receipt", params)
        else:
            batch.receipts.append(params)
        return stored

    async def get_receipt(self, receipt_id: str) -> Receipt | None:
        async def body(tx: Transaction) -> Row | None:
            return await tx.fetch_one("get_receipt", {"id": receipt_id})

        row = await self.atomic(body, write=False)
        return None if row is None else self.receipt_from_row(row)

    async def list_receipts(
        self,
        *,
        source: str | None = None,
        outcome: ReceiptOutcome | str | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[Receipt]:
        """Receipts, newest first; filtered by source, outcome and a received-since time."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        params = {
            "source": source,
            "outcome": None if outcome is None else ReceiptOutcome(outcome).value,
            "since": None if since is None else self.encode_time(require_aware(since, "since")),
            "limit": limit,
        }
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_receipts", params)
        return [self.receipt_from_row(row) for row in rows]

    async def prune_receipts(self, older_than: datetime) -> int:
        """Delete receipts received before ``older_than``, and a stranger's receipts older
        than ``REFUSED_RETENTION``; return how many.

        Their queue items and runs are not touched (runs have their own retention).
        """
        params = {
            "older_than": self.encode_time(require_aware(older_than, "older_than")),
            "strangers_before": self.encode_time(self.now() - REFUSED_RETENTION),
        }
        async with self.transaction() as tx:
            return await tx.execute("prune_receipts", params)

    def receipt_from_row(self, row: Row) -> Receipt:
        decoded = dict(row)
        decoded["received_at"] = self.decode_time(decoded["received_at"])
        last = decoded.get("last_repeat_at")
        decoded["last_repeat_at"] = None if last is None else self.decode_time(last)
        decoded.setdefault("repeats", 0)
        decoded["headers"] = self.decode_json(decoded["headers"]) or {}
        results = decoded["results"]
        decoded["results"] = json.loads(results) if isinstance(results, str | bytes) else results
        return Receipt.from_row(decoded)


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers a receipt keeps: names lower-cased, credentials dropped."""
    kept: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower not in DROPPED_HEADERS:
            kept[lower] = value
    return kept


def stranger_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """What a stranger's receipt keeps of the headers: those ``kept_headers`` keeps, each
    name and value cut short, as many as fit in ``REFUSED_HEADERS_CAP`` as JSON."""
    kept: dict[str, str] = {}
    room = REFUSED_HEADERS_CAP - 2  # the braces
    for name, value in kept_headers(headers).items():
        short_name = name[:_STRANGER_NAME]
        short = value if len(value) <= _STRANGER_VALUE else value[:_STRANGER_VALUE] + "…"
        cost = len(json.dumps({short_name: short})) - 1  # the pair and its comma
        if cost > room or short_name in kept:
            continue
        kept[short_name] = short
        room -= cost
    return kept


def _with_item(result: AgentResult, done: EnqueueResult) -> AgentResult:
    item = done.item
    why: str | None
    if done.duplicate:
        state, why = "duplicate", f"item {item.id} already holds this delivery for {item.agent}"
    else:
        state, why = item.state.value, item.reason
    return AgentResult(
        agent=result.agent,
        matched=True,
        reason=result.reason,
        item_id=item.id,
        state=state,
        why=why,
        dropped=tuple(d.id for d in done.dropped),
    )


def _takes_delivery_id(receipt: NewReceipt) -> bool:
    """Whether ``receipt`` takes its delivery id (see the module docstring)."""
    return (
        receipt.delivery_id is not None
        and receipt.replay_of is None
        and receipt.outcome in _TAKES_DELIVERY_ID
    )


def _matched_items(receipt: NewReceipt, items: Sequence[NewItem]) -> list[NewItem]:
    """The items ``receipt`` queues, in the order of its results."""
    by_agent = {item.agent: item for item in items}
    return [
        by_agent[result.agent]
        for result in receipt.results
        if result.matched and result.agent in by_agent
    ]


def _merged(
    receipt: NewReceipt, items: Sequence[NewItem], enqueued: Sequence[EnqueueResult]
) -> tuple[tuple[AgentResult, ...], list[EnqueueResult]]:
    """``receipt``'s results with what the enqueue of its matched items did (``enqueued``,
    in the order of ``_matched_items``), and those enqueue results."""
    queued = {item.agent for item in items}
    each = iter(enqueued)
    results = tuple(
        _with_item(result, next(each)) if result.matched and result.agent in queued else result
        for result in receipt.results
    )
    return results, list(enqueued)


def _check_items(receipt: NewReceipt, items: Sequence[NewItem]) -> None:
    if not items:
        return
    if receipt.outcome is not ReceiptOutcome.ACCEPTED:
        raise ValueError(
            f"a {receipt.outcome.value} receipt queues nothing, got {len(items)} items"
        )
    matched = {r.agent for r in receipt.results if r.matched}
    seen: set[str] = set()
    for item in items:
        if item.agent not in matched:
            raise ValueError(f"item for {item.agent!r}, which the receipt does not match")
        if item.agent in seen:
            raise ValueError(f"two items for {item.agent!r} in one delivery")
        seen.add(item.agent)


_Recorded = tuple[Receipt, list[EnqueueResult]]


@dataclass(frozen=True)
class _Delivery:
    receipt: NewReceipt
    items: Sequence[NewItem]


_Pending = Waiting[_Delivery, _Recorded]


class _DeliveryBatches:
    """Deliveries recorded together (PostgreSQL): those that arrive while a transaction is
    in flight wait, and go in the next one (``GroupCommit``): one connection, one project
    lock and one commit for the lot, each delivery all or nothing (see ``_run``).

    Every delivery takes the project lock anyway, so they never ran in parallel; what a
    batch saves is a transaction's round trips and commit per delivery. The batch runs
    first in two round trips (``_together``); if anything fails there, its commit
    included, none of it happened and it runs again with a savepoint per delivery, where
    a failed delivery rolls back to its savepoint and fails alone; a failed commit there
    fails the whole batch. So no sender is told a delivery was accepted unless it was.
    """

    def __init__(self, store: WebhookOps) -> None:
        self._store = store
        self._group = GroupCommit[_Delivery, _Recorded](self._run, name="corral-deliveries")

    async def submit(self, receipt: NewReceipt, items: Sequence[NewItem]) -> _Recorded:
        return await self._group.submit(_Delivery(receipt, items))

    async def _run(self, batch: list[_Pending]) -> list[_Recorded | Failed]:
        """The batch in one transaction. Deliveries rarely fail, so the batch first runs
        without savepoints (two round trips fewer per delivery); if one fails, that
        transaction is rolled back whole and the batch runs again with a savepoint each,
        so the failure stays the failed delivery's alone."""
        store = self._store
        try:
            return list(await self._transaction(store, batch, savepoints=False))
        except _BodyFailed:
            return await self._transaction(store, batch, savepoints=True)

    async def _transaction(
        self, store: WebhookOps, batch: list[_Pending], *, savepoints: bool
    ) -> list[_Recorded | Failed]:
        if not savepoints:
            return list(await self._together(store, batch))
        outcomes: list[_Recorded | Failed] = []
        async with store.transaction() as tx:
            project = await store.lock_project(tx)
            for pending in batch:
                await tx.execute_script("SAVEPOINT corral_delivery", what="a savepoint")
                try:
                    outcome = await store._record_in(
                        tx, project, pending.job.receipt, pending.job.items
                    )
                except Exception as exc:
                    await tx.execute_script(
                        "ROLLBACK TO SAVEPOINT corral_delivery", what="a rollback"
                    )
                    outcomes.append(Failed(exc))
                    continue
                await tx.execute_script("RELEASE SAVEPOINT corral_delivery", what="a release")
                outcomes.append(outcome)
        return outcomes

    async def _together(self, store: WebhookOps, batch: list[_Pending]) -> list[_Recorded]:
        """The batch without savepoints, its statements set-wise and pipelined
        (``_together_in``): two round trips for the lot. A failure anywhere, the commit
        included, rolls it all back: the batch runs again with savepoints."""
        try:
            try:
                return await self._pipelined(store, batch, hopeful=True)
            except _AlreadyTaken:
                return await self._pipelined(store, batch, hopeful=False)
        except Exception as exc:  # rolled back: the batch runs again with savepoints
            raise _BodyFailed from exc

    async def _pipelined(
        self, store: WebhookOps, batch: list[_Pending], *, hopeful: bool
    ) -> list[_Recorded]:
        async with store.pipelined_transaction() as tx:
            return await self._together_in(tx, store, batch, hopeful=hopeful)

    async def _together_in(
        self, tx: Transaction, store: WebhookOps, batch: list[_Pending], *, hopeful: bool
    ) -> list[_Recorded]:
        """The batch in ``tx``: the project lock, one query for the delivery ids already
        taken, ONE enqueue for every item of every delivery (``_enqueue_many_locked``),
        one insert for every receipt; a stranger's receipt alone is recorded as it comes
        (its hourly count reads the ones before).

        ``hopeful``: the lock, the query and the enqueue go in one round trip, on the
        hope that no delivery id of the batch was taken by an earlier transaction (a
        redelivery is rare); if one was, ``_AlreadyTaken`` is raised and the caller runs
        the batch again without hope: the enqueue then waits for the query's answer."""
        steps: list[tuple[str, Params | None]] = [("lock_project", None)]
        lookup = _Batch.lookup(batch)
        if lookup is not None:
            steps.append(("find_receipt_deliveries", lookup))
        plans, queue = _plan(batch, {})
        sent = hopeful and bool(queue)
        if sent:
            steps.append(("enqueue_items", store._enqueue_params(queue, "drop_oldest")))
        rows = await tx.fetch_many(steps)
        project = ProjectState.from_row(
            store._returned(rows[0][0] if rows[0] else None, "lock_project")
        )
        together = _Batch.taking(rows[1] if lookup is not None else [])
        if sent and together.taken:
            raise _AlreadyTaken
        if not sent:
            plans, queue = _plan(batch, together.taken)
        enqueued = await store._enqueue_many_locked(
            tx, project, queue, "drop_oldest", sent=rows[-1] if sent else None
        )
        outcomes: list[_Recorded] = []
        for pending, plan in zip(batch, plans, strict=True):
            receipt = pending.job.receipt
            if isinstance(plan, tuple):
                first, count = plan
                results, done = _merged(receipt, pending.job.items, enqueued[first : first + count])
                stored = await store._insert_receipt(
                    tx, receipt, outcome=receipt.outcome, results=results, batch=together
                )
                outcomes.append((stored, done))
            elif plan:
                duplicate = await store._insert_receipt(
                    tx,
                    receipt,
                    outcome=ReceiptOutcome.DUPLICATE,
                    results=(),
                    duplicate_of=plan,
                    batch=together,
                )
                outcomes.append((duplicate, []))
            else:
                outcomes.append((await store._record_stranger(tx, receipt), []))
        await together.insert(tx)
        return outcomes


def _plan(
    batch: list[_Pending], taken: dict[tuple[str, str], str]
) -> tuple[list[str | tuple[int, int]], list[NewItem]]:
    """What each delivery of ``batch`` needs, given the delivery ids ``taken`` before it
    (updated in place: the first of a batch to take an id holds it): the id of the receipt
    it duplicates, ``""`` for a stranger, or (first, count) of its items in the list of
    items to queue, which is returned with the plans."""
    plans: list[str | tuple[int, int]] = []
    queue: list[NewItem] = []
    for pending in batch:
        receipt = pending.job.receipt
        if _takes_delivery_id(receipt):
            first_id = taken.get(_Batch.key(receipt))
            if first_id is not None:
                plans.append(first_id)
                continue
            taken[_Batch.key(receipt)] = receipt.id
        if receipt.repeat_key is not None:
            plans.append("")
            continue
        matched = _matched_items(receipt, pending.job.items)
        plans.append((len(queue), len(matched)))
        queue += matched
    return plans, queue


@dataclass
class _Batch:
    """What the deliveries of one batch transaction share (PostgreSQL): the delivery ids
    taken (read once for the batch, then kept up to date by each delivery in turn, so a
    redelivery within the batch is a duplicate as it would be in the next transaction),
    and the receipts to insert, in one statement, once every delivery has been seen."""

    taken: dict[tuple[str, str], str] = field(default_factory=dict)
    receipts: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def key(receipt: NewReceipt) -> tuple[str, str]:
        """A receipt's (source, delivery id) as the database holds them (see ``_text``)."""
        return (_text(receipt.source), _text(str(receipt.delivery_id)))

    @classmethod
    def lookup(cls, batch: list[_Pending]) -> dict[str, list[str]] | None:
        """The parameters of ``find_receipt_deliveries`` for ``batch`` (None: no delivery
        of it has an id). Run inside the transaction that holds the project lock, so no
        other delivery takes an id before it commits."""
        pairs = sorted(
            {cls.key(p.job.receipt) for p in batch if p.job.receipt.delivery_id is not None}
        )
        if not pairs:
            return None
        return {
            "sources": [source for source, _ in pairs],
            "delivery_ids": [delivery_id for _, delivery_id in pairs],
        }

    @classmethod
    def taking(cls, rows: Sequence[Row]) -> _Batch:
        """The batch's shared state from the rows of ``find_receipt_deliveries``."""
        together = cls()
        for row in rows:
            together.taken[(row["source"], row["delivery_id"])] = str(row["id"])
        return together

    async def insert(self, tx: Transaction) -> None:
        """Insert the batch's receipts: one array of values per column."""
        if not self.receipts:
            return
        columns = {
            name: [_text(receipt[name]) for receipt in self.receipts] for name in self.receipts[0]
        }
        await tx.execute_with_commit("insert_receipts", columns)


def _text(value: Any) -> Any:
    """PostgreSQL's text cannot hold U+0000: stored as U+FFFD, as the store does for every
    single value (the arrays of ``_Batch`` pass through it element by element)."""
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


class _AlreadyTaken(Exception):
    """A delivery id of a batch sent in hope (see ``_together_in``) was taken before."""


class _BodyFailed(Exception):
    """A delivery of a batch run without savepoints failed: run the batch again with them."""
