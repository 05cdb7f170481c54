"""Webhook intake: ``POST /webhooks/{source}``, durable before it is acknowledged.

Each delivery goes through the same steps, and every one of them ends in a receipt in
the store (``corral webhook receipts``), whatever the outcome:

1. An unknown source is answered 404.
2. The body is read with a hard cap (the source's ``maxBodyBytes``): a larger declared
   ``Content-Length`` is refused before reading anything, a longer stream as soon as it
   passes the cap; 413, and the connection is closed rather than drained.
3. The signature is verified before anything else is done with the body (401 when it
   fails; nothing is parsed, de-duplicated or queued).
4. The body is parsed (400 when it is not what the sender documents).
5. A ping is answered 200 ``{"ok":true,"pong":true}``.
6. The event is routed against the project's agents, and the receipt and one queue item
   per matching agent are written in ONE transaction (``Store.record_delivery``); only
   then does the sender get 202, so a crash after the answer loses nothing it was told
   was accepted. A delivery id already taken by an earlier verified delivery of the
   source is answered 200 ``{"ok":true,"duplicate":true}`` and queues nothing.

The route needs no operator token: a delivery is authenticated by its signature. The
gateway listens on loopback unless ``corral start --expose`` (or a reverse proxy in
front of it) makes it reachable from the sender.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.credentials import CredentialError, CredentialStore
from corral.errors import StoreError
from corral.gateway.metrics import count_delivery
from corral.project import Project, WebhookSource
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
from corral.webhooks import (
    Delivery,
    Event,
    PayloadError,
    Verification,
    parse,
    route,
    signing_secret,
    verify,
    with_receipt,
)

if TYPE_CHECKING:
    from corral.scheduler.service import Scheduler

__all__ = [
    "ReplayRefused",
    "WebhookFastPath",
    "WebhookIntake",
    "dedupe_key",
    "install_webhooks",
    "plan_items",
    "replay_receipt",
    "webhook_router",
]

log = logging.getLogger("corral.webhooks")

_JSON = "application/json"


@dataclass(frozen=True)
class Answer:
    """An HTTP answer to a delivery: status and JSON body (and whether to close)."""

    status: int
    body: dict[str, Any]
    close: bool = False

    def response(self) -> JSONResponse:
        headers = {"connection": "close"} if self.close else None
        return JSONResponse(self.body, status_code=self.status, headers=headers)


#: How an HTTP refusal is counted in ``corral_webhook_deliveries_total``.
_REFUSALS = {401: "refused", 404: "unknown_source", 413: "too_large", 503: "no_secret"}


def _metric_outcome(answer: Answer) -> str:
    """The delivery's outcome label for the metrics, from the answer it got."""
    if answer.status == 202:
        return "accepted"
    if answer.status == 200:
        if answer.body.get("duplicate"):
            return "duplicate"
        return "ping" if answer.body.get("pong") else "accepted"
    if answer.status == 400:
        return "invalid"
    return _REFUSALS.get(answer.status, "error")


class ClientGone(Exception):
    """The sender disconnected before its body was read: nothing to answer or record."""


@dataclass
class _Body:
    """What was read of a request body: the bytes, the size, and whether it was too big."""

    data: bytes
    size: int
    too_big: bool
    declared: int | None = None


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


@dataclass
class WebhookIntake:
    """The intake of one gateway: the project's sources, their secrets, the store."""

    project: Project
    store: Store
    credentials: CredentialStore = field(default_factory=CredentialStore)
    #: Called once a delivery's items are durable (the scheduler's wake-up).
    on_queued: Callable[[], None] | None = None
    #: How long a signing secret read from the credential store is used before it is
    #: read again: a secret rotated with `corral creds add --force` is in use within it.
    secret_ttl: float = 10.0
    _secrets: dict[str, tuple[float, str | None]] = field(default_factory=dict)

    def sources(self) -> Mapping[str, WebhookSource]:
        return self.project.config.webhooks

    def secret_for(self, name: str, source: WebhookSource) -> str | None:
        """The source's signing secret, read at most every ``secret_ttl`` seconds; a
        failure is not kept, so a secret stored after a refused delivery is found by the
        next one."""
        now = time.monotonic()
        kept = self._secrets.get(name)
        if kept is None or now - kept[0] >= self.secret_ttl:
            kept = (now, signing_secret(source, self.credentials))
            self._secrets[name] = kept
        return kept[1]

    def forget_secrets(self) -> None:
        """Read every signing secret again at its next use (after a configuration change)."""
        self._secrets.clear()

    async def receive(
        self,
        name: str,
        headers: Mapping[str, str],
        chunks: AsyncIterator[bytes],
    ) -> Answer:
        """Handle one delivery to ``/webhooks/{name}``; see the module docstring."""
        answer = await self._receive(name, headers, chunks)
        count_delivery(name if name in self.sources() else "unknown", _metric_outcome(answer))
        return answer

    async def _receive(
        self,
        name: str,
        headers: Mapping[str, str],
        chunks: AsyncIterator[bytes],
    ) -> Answer:
        receipt_id = new_receipt_id()
        source = self.sources().get(name)
        if source is None:
            refusal = _Refusal(receipt_id, name, headers, None, b"", _content_length(headers) or 0)
            error = (
                f"unknown webhook source '{name}': the project's config.toml has no "
                f"[webhooks.{name}]"
            )
            return await self._refuse(refusal, 404, error)
        body = await _read_capped(chunks, source.max_body_bytes, _content_length(headers))
        refusal = _Refusal(receipt_id, name, headers, source, body.data, body.size)
        if body.too_big:
            return await self._refuse(refusal, 413, _too_big(name, source, body), close=True)
        delivery = Delivery(source=name, headers=headers, body=body.data)
        try:
            verification = verify(source, self.secret_for(name, source), delivery)
        except CredentialError as exc:
            detail = f"the signing secret of source {name} cannot be read: {exc}"
            return await self._refuse(refusal, 503, detail, verification=detail)
        if not verification.ok:
            detail = verification.detail
            return await self._refuse(refusal, 401, detail, verification=detail)
        return await self._verified(receipt_id, source, delivery, verification)

    async def _verified(
        self, receipt_id: str, source: WebhookSource, delivery: Delivery, verification: Verification
    ) -> Answer:
        base = _receipt_base(receipt_id, delivery, verification)
        try:
            event = parse(source, delivery)
        except PayloadError as exc:
            kind, delivery_id = _claimed(source, delivery.headers)
            new = NewReceipt(
                **base,
                outcome=ReceiptOutcome.INVALID,
                event=kind,
                delivery_id=delivery_id,
                error=str(exc),
            )
            stored = await self._record(new, ())
            if isinstance(stored, Answer):
                return stored
            log.warning(
                "webhook %s: invalid payload (%s), receipt %s", delivery.source, exc, receipt_id
            )
            return Answer(400, {"ok": False, "error": str(exc), "receiptId": receipt_id})
        base |= {"event": event.kind, "delivery_id": event.delivery_id}
        if event.ping:
            stored = await self._record(NewReceipt(**base, outcome=ReceiptOutcome.PING), ())
            if isinstance(stored, Answer):
                return stored
            receipt, _ = stored
            if receipt.outcome is ReceiptOutcome.DUPLICATE:
                return _duplicate(receipt)
            return Answer(200, {"ok": True, "pong": True, "receiptId": receipt.id})
        results, items = plan_items(self.project, event, receipt_id)
        new = NewReceipt(**base, outcome=ReceiptOutcome.ACCEPTED, results=results)
        stored = await self._record(new, items)
        if isinstance(stored, Answer):
            return stored
        receipt, enqueued = stored
        if receipt.outcome is ReceiptOutcome.DUPLICATE:
            return _duplicate(receipt)
        log_dropped(enqueued)
        if enqueued and self.on_queued is not None:
            self.on_queued()
        return Answer(202, accepted_json(receipt))

    async def _refuse(
        self,
        refusal: _Refusal,
        status: int,
        error: str,
        *,
        verification: str | None = None,
        close: bool = False,
    ) -> Answer:
        event, delivery_id = _claimed(refusal.source, refusal.headers)
        new = NewReceipt(
            id=refusal.receipt_id,
            source=refusal.name,
            outcome=ReceiptOutcome.REFUSED,
            headers=dict(refusal.headers),
            body=refusal.body,
            body_size=refusal.size,
            verified=False,
            verification=verification,
            event=event,
            delivery_id=delivery_id,
            error=error,
        )
        stored = await self._record(new, ())
        if isinstance(stored, Answer):
            return stored
        log.warning("webhook %s refused (%d): %s; receipt %s", refusal.name, status, error, new.id)
        return Answer(status, {"ok": False, "error": error, "receiptId": new.id}, close)

    async def _record(
        self, new: NewReceipt, items: Sequence[NewItem]
    ) -> tuple[Receipt, list[EnqueueResult]] | Answer:
        try:
            return await self.store.record_delivery(new, items)
        except StoreError as exc:
            log.error("webhook %s: cannot record the delivery: %s", new.source, exc)
            error = "the delivery could not be recorded, so it was not accepted; retry it"
            return Answer(503, {"ok": False, "error": error})


@dataclass(frozen=True)
class _Refusal:
    """A delivery about to be refused: what its receipt keeps."""

    receipt_id: str
    name: str
    headers: Mapping[str, str]
    source: WebhookSource | None
    body: bytes
    size: int


def _claimed(
    source: WebhookSource | None, headers: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """The event and delivery id the headers claim (recorded for the operator's sake on a
    refused or invalid delivery; never used to de-duplicate one)."""
    if source is None:
        return None, None
    found = []
    for name in (source.event_header, source.delivery_header):
        value = headers.get(name.lower()) if name else None
        found.append(value.strip()[:200] if value and value.strip() else None)
    return found[0], found[1]


def _receipt_base(
    receipt_id: str, delivery: Delivery, verification: Verification
) -> dict[str, Any]:
    return {
        "id": receipt_id,
        "source": delivery.source,
        "headers": dict(delivery.headers),
        "body": delivery.body,
        "body_size": len(delivery.body),
        "verified": True,
        "verification": verification.detail,
    }


def accepted_json(receipt: Receipt) -> dict[str, Any]:
    """The 202 answer: the receipt id and what became of the delivery for each agent."""
    return {
        "ok": True,
        "receiptId": receipt.id,
        "event": receipt.event,
        "deliveryId": receipt.delivery_id,
        "queued": receipt.queued,
        "agents": [r.to_json() for r in receipt.results],
    }


def _duplicate(receipt: Receipt) -> Answer:
    return Answer(
        200,
        {
            "ok": True,
            "duplicate": True,
            "receiptId": receipt.id,
            "duplicateOf": receipt.duplicate_of,
            "deliveryId": receipt.delivery_id,
        },
    )


def _too_big(name: str, source: WebhookSource, body: _Body) -> str:
    limit = source.max_body_bytes
    size = f"{body.declared} bytes" if body.declared is not None else f"more than {limit} bytes"
    return f"payload is {size}; the limit for source {name} is {limit} (maxBodyBytes)"


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


async def _read_capped(chunks: AsyncIterator[bytes], limit: int, declared: int | None) -> _Body:
    """Read at most ``limit`` bytes: a declared larger length is refused unread, a longer
    stream as soon as it passes the limit (nothing past it is buffered)."""
    if declared is not None and declared > limit:
        return _Body(b"", declared, too_big=True, declared=declared)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return _Body(b"".join(parts), size, too_big=True)
        parts.append(chunk)
    return _Body(b"".join(parts), size, too_big=False)


# -- replay ----------------------------------------------------------------------------


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
    delivery = Delivery(source=original.source, headers=original.headers, body=original.body)
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


# -- the route ---------------------------------------------------------------------------

_SIGNED_HEADERS = [
    ("X-GitHub-Event", "GitHub: the event name (issues, pull_request, ping, …)"),
    ("X-GitHub-Delivery", "GitHub: the delivery id (redeliveries share it)"),
    ("X-Hub-Signature-256", 'GitHub: "sha256=" and the HMAC-SHA256 of the body, in hex'),
    ("X-Signature-256", 'generic sources: "sha256=" and the HMAC-SHA256 of the body'),
    ("X-Delivery-Id", "generic sources: the delivery id"),
]

_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": name,
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": description,
        }
        for name, description in _SIGNED_HEADERS
    ],
    "requestBody": {
        "required": True,
        "content": {_JSON: {"schema": {"type": "object", "additionalProperties": True}}},
    },
}

_ERROR = {"content": {_JSON: {"schema": {"type": "object"}}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "a ping answered, or a duplicate delivery (nothing queued)"},
    202: {"description": "recorded; the matching agents' runs are queued"},
    400: {"description": "verified, but the payload is not what the sender documents", **_ERROR},
    401: {"description": "missing or wrong signature: recorded, nothing queued", **_ERROR},
    404: {"description": "no such webhook source", **_ERROR},
    413: {"description": "the body is larger than the source's maxBodyBytes", **_ERROR},
    503: {"description": "the delivery could not be recorded: not accepted, retry", **_ERROR},
}


def install_webhooks(app: FastAPI, scheduler: Scheduler) -> WebhookIntake:
    """Give ``app`` (the gateway of ``scheduler``) its webhook intake: the route, and the
    fast path that answers it ahead of FastAPI's machinery (see ``WebhookFastPath``)."""
    intake = WebhookIntake(
        scheduler.project,
        scheduler.store,
        credentials=scheduler.executor.credentials or CredentialStore(),
        on_queued=scheduler.wake,
    )
    app.include_router(webhook_router(intake))
    app.add_middleware(WebhookFastPath, intake=intake)
    app.state.webhook_intake = intake
    return intake


def webhook_router(intake: WebhookIntake) -> APIRouter:
    """``POST /webhooks/{source}``, over ``intake``."""
    router = APIRouter()

    @router.post(
        "/webhooks/{source}",
        status_code=202,
        openapi_extra=_OPENAPI,
        responses=_RESPONSES,
        summary="Deliver a webhook event (authenticated by its signature)",
    )
    async def deliver(source: str, request: Request) -> Response:
        headers = {name: value for name, value in request.headers.items()}
        try:
            answer = await intake.receive(source, headers, request.stream())
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening for it
        return answer.response()

    return router


_PREFIX = "/webhooks/"


class WebhookFastPath:
    """ASGI middleware answering ``POST /webhooks/{source}`` without FastAPI's routing,
    dependency and exception machinery, which was most of a delivery's CPU on the event
    loop (docs/decisions.md). The intake, and so every answer, is the one the FastAPI
    route uses (the route remains: it makes the OpenAPI document, and serves any request
    this does not take)."""

    def __init__(self, app: ASGIApp, intake: WebhookIntake) -> None:
        self.app = app
        self.intake = intake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = None
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(_PREFIX) and "/" not in path[len(_PREFIX) :]:
                name = path[len(_PREFIX) :]
        if not name:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            answer = await self.intake.receive(name, headers, _chunks(receive))
        except ClientGone:
            return
        response = answer.response()
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives, chunk by chunk."""
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
