"""What a webhook delivery becomes: queue items for the agents it matches (``plan_items``,
used by the gateway's live intake) and, for a recorded one, a replay routed against the
project as it is now (``replay_receipt``, used by the control API, the dashboard and the
CLI through ``corral.engine.actions`` or directly)."""

from __future__ import annotations

from typing import Any

from corral.project import Project
from corral.scheduler.service import log_dropped
from corral.store import (
    AgentResult,
    EnqueueResult,
    NewItem,
    NewReceipt,
    Receipt,
    ReceiptOutcome,
    Store,
    TriggerKind,
    new_receipt_id,
)
from corral.webhooks import Delivery, Event, PayloadError, parse, route, with_receipt

__all__ = ["ReplayRefused", "dedupe_key", "plan_items", "replay_receipt"]


def dedupe_key(source: str, delivery_id: str | None, agent: str) -> str | None:
    """The queue dedupe key of a delivery's item for ``agent`` (None without an id)."""
    return None if delivery_id is None else f"webhook:{source}:{delivery_id}:{agent}"


def plan_items(
    project: Project, event: Event, receipt_id: str, *, replay: bool = False
) -> tuple[tuple[AgentResult, ...], list[NewItem]]:
    """Route ``event`` against the project's agents: one result per agent (matched or not,
    and why) and one webhook item per matched agent, whose trigger detail is the event's
    trigger JSON with ``receiptId``. A replay's items carry no dedupe key (they are new
    work by design)."""
    matches = route(project, event)
    results = tuple(AgentResult(m.agent, m.matched, m.reason) for m in matches)
    detail = with_receipt(event.trigger, receipt_id)
    items = [
        NewItem(
            agent=m.agent,
            trigger=TriggerKind.WEBHOOK,
            trigger_detail=detail,
            dedupe_key=None if replay else dedupe_key(event.source, event.delivery_id, m.agent),
        )
        for m in matches
        if m.matched
    ]
    return results, items


class ReplayRefused(Exception):
    """A receipt that cannot be replayed, and why (in words for the operator)."""


async def replay_receipt(
    project: Project, store: Store, receipt_id: str
) -> tuple[Receipt, list[EnqueueResult]]:
    """Deliver a recorded delivery again, routed against the project as configured now.

    The stored body is parsed again and matched against the current agents and filters;
    the items are queued through the store, and a new receipt (``replay_of`` naming the
    original) records it, in one transaction. No scheduler needs to run: one that does
    picks the items up at its next poll. Refused (``ReplayRefused``): an unknown receipt,
    one that failed verification, one whose body was stored truncated, and one whose
    source is no longer configured. A body that no longer parses is recorded as an
    ``invalid`` replay and refused.
    """
    original = await store.get_receipt(receipt_id)
    if original is None:
        raise ReplayRefused(
            f"no webhook receipt {receipt_id!r}; `corral webhook receipts` lists them"
        )
    _check_replayable(project, original)
    source = project.config.webhooks[original.source]
    # The trigger's timestamp is when the event was received, not when it was replayed.
    delivery = Delivery(
        source=original.source,
        headers=original.headers,
        body=original.body,
        received=original.received_at,
    )
    new_id = new_receipt_id()
    base: dict[str, Any] = {
        "id": new_id,
        "source": original.source,
        "headers": original.headers,
        "body": original.body,
        "body_size": original.body_size,
        "verified": True,
        "verification": f"replay of {original.id}, verified on receipt ({original.verification})",
        "replay_of": original.id,
    }
    try:
        event = parse(source, delivery)
    except PayloadError as exc:
        new = NewReceipt(**base, outcome=ReceiptOutcome.INVALID, error=str(exc))
        stored, _ = await store.record_delivery(new)
        raise ReplayRefused(
            f"receipt {original.id} does not parse as a {source.type} delivery: {exc} "
            f"(recorded as receipt {stored.id})"
        ) from exc
    base |= {"event": event.kind, "delivery_id": event.delivery_id}
    if event.ping:
        return await store.record_delivery(NewReceipt(**base, outcome=ReceiptOutcome.PING))
    results, items = plan_items(project, event, new_id, replay=True)
    new = NewReceipt(**base, outcome=ReceiptOutcome.ACCEPTED, results=results)
    recorded = await store.record_delivery(new, items)
    log_dropped(recorded[1])
    return recorded


def _check_replayable(project: Project, original: Receipt) -> None:
    if not original.verified:
        raise ReplayRefused(
            f"receipt {original.id} failed verification "
            f"({original.error or original.verification}); only deliveries whose signature "
            "was verified can be replayed"
        )
    if original.body_truncated:
        raise ReplayRefused(
            f"receipt {original.id} kept only the first {len(original.body)} of its "
            f"{original.body_size} bytes, so it cannot be replayed; ask the sender to "
            "redeliver it"
        )
    if original.source not in project.config.webhooks:
        raise ReplayRefused(
            f"receipt {original.id} came from source '{original.source}', which the "
            f"project no longer defines (no [webhooks.{original.source}] in config.toml)"
        )
