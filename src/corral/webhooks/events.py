"""A verified delivery read into an :class:`Event`: its name, delivery id and trigger JSON."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from corral.project import WebhookSource
from corral.webhooks._json import Node, PayloadError, load_object
from corral.webhooks._trigger import Fields, trigger_json
from corral.webhooks.delivery import Delivery
from corral.webhooks.github import github_event, github_fields
from corral.webhooks.messaging import Reading, discord_read, slack_read, twitter_read
from corral.webhooks.providers import (
    generic_fields,
    linear_event,
    linear_fields,
    mintlify_fields,
    sentry_fields,
)

__all__ = ["DEFAULT_EVENT", "Event", "body_id", "parse"]

#: The event name of a delivery that names none (generic senders without an event).
DEFAULT_EVENT = "event"

# Senders whose payloads we define or know exactly are read strictly (see _json).
_STRICT = frozenset({"github", "generic"})


@dataclass(frozen=True, slots=True)
class Event:
    """What a delivery means: enough to route it, and the trigger JSON a run is given.

    ``source`` is the ``[webhooks.NAME]`` it came through; ``kind`` the event name
    (GitHub: ``X-GitHub-Event``); ``ping`` marks GitHub's hook check, which is answered
    and queues nothing. ``trigger`` has no ``receiptId`` yet: the intake adds it.
    """

    source: str
    kind: str
    delivery_id: str | None
    ping: bool
    trigger: dict[str, Any]
    #: A sender's check answered with what it expects (Slack's ``{"challenge": ...}``,
    #: Discord's PONG ``{"type": 1}``); ``None`` for GitHub's ping and for events.
    reply: dict[str, Any] | None = None


def parse(source: WebhookSource, delivery: Delivery) -> Event:
    """Read a delivery (already verified) from ``source``; :class:`PayloadError` if the
    body is not a JSON object, not UTF-8, or not shaped as its sender documents."""
    payload = Node(load_object(delivery.body), strict=source.type in _STRICT)
    reader = _MESSAGING.get(source.type)
    if reader is not None:
        reading = reader(payload)
        kind, fields, delivery_id = reading.kind, reading.fields, reading.delivery_id
        ping, reply = reading.idle or reading.reply is not None, reading.reply
        if source.type == "twitter":
            delivery_id = body_id(delivery.body)
    else:
        kind = _event_name(source, delivery, payload)
        fields = _fields(source, kind, payload)
        delivery_id = _header(delivery, source.delivery_header)
        ping, reply = source.type == "github" and kind == "ping", None
    kind = _bounded("event name", kind)
    received = delivery.received.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return Event(
        source=delivery.source,
        kind=kind,
        delivery_id=None if delivery_id is None else _bounded("delivery id", delivery_id),
        ping=ping,
        trigger=trigger_json(source.type, delivery.source, kind, fields, received[:-4] + "Z"),
        reply=reply,
    )


def body_id(body: bytes) -> str:
    """The delivery id of an X delivery: X sends none, so a captured delivery could be
    replayed for ever (its signature covers the body alone, with no timestamp). The
    SHA-256 of the body stands in: the same body again, from X retrying or from anyone
    replaying it, is a duplicate. Action Llama takes each one as new."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


_MESSAGING: dict[str, Callable[[Node], Reading]] = {
    "slack": slack_read,
    "discord": discord_read,
    "twitter": twitter_read,
}


#: The longest event name or delivery id taken (GitHub's are a few dozen characters):
#: both are stored and indexed, and an index entry has a size limit.
MAX_ID_LENGTH = 200


def _bounded(what: str, value: str) -> str:
    if len(value) > MAX_ID_LENGTH:
        raise PayloadError(
            f"the {what} is {len(value)} characters long; corral takes at most {MAX_ID_LENGTH}"
        )
    return value


def _header(delivery: Delivery, name: str | None) -> str | None:
    value = delivery.header(name) if name else None
    if value is None or not value.strip():
        return None
    return value.strip()


def _event_name(source: WebhookSource, delivery: Delivery, payload: Node) -> str:
    named = _header(delivery, source.event_header)
    if source.type == "github":
        return github_event(named)
    if named:
        return named
    if source.type == "linear":
        return linear_event(payload) or DEFAULT_EVENT
    if source.type in ("generic", "mintlify"):
        fallback = "build" if source.type == "mintlify" else DEFAULT_EVENT
        return payload.text("event") or fallback
    return DEFAULT_EVENT


def _fields(source: WebhookSource, kind: str, payload: Node) -> Fields:
    if source.type == "github":
        return github_fields(kind, payload)
    if source.type == "sentry":
        return sentry_fields(kind, payload)
    if source.type == "linear":
        return linear_fields(payload)
    if source.type == "mintlify":
        return mintlify_fields(payload)
    return generic_fields(payload)
