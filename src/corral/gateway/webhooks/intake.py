"""The intake of one gateway: a delivery read with a cap, verified, parsed, routed and
recorded (see the package docstring for the steps)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from corral.credentials import CredentialError, CredentialStore
from corral.engine.deliveries import plan_items
from corral.errors import StoreError
from corral.gateway.metrics import count_delivery
from corral.gateway.webhooks.answers import (
    Answer,
    accepted_json,
    duplicate_answer,
    metric_outcome,
)
from corral.project import Project, WebhookSource
from corral.scheduler.service import log_dropped
from corral.store import (
    EnqueueResult,
    NewItem,
    NewReceipt,
    Receipt,
    ReceiptOutcome,
    new_receipt_id,
)
from corral.store.protocols import WebhookStore
from corral.webhooks import (
    Delivery,
    PayloadError,
    Verification,
    parse,
    signing_kind,
    signing_secret,
    verify,
)
from corral.webhooks.schemes import crc_response, crc_token_problem

__all__ = ["WebhookIntake"]

log = logging.getLogger("corral.webhooks")

#: An unknown source's name (from the URL) is cut to this in its receipt and answer.
_MAX_NAME = 100


@dataclass
class _Body:
    """What was read of a request body: the bytes, the size, and whether it was too big."""

    data: bytes
    size: int
    too_big: bool
    declared: int | None = None


@dataclass
class WebhookIntake:
    """The intake of one gateway: the project's sources, their secrets, the store."""

    project: Project
    store: WebhookStore
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

    def crc(self, name: str, token: str | None) -> Answer:
        """X's CRC check (``GET /webhooks/{name}?crc_token=...``): 200 with
        ``{"response_token": "sha256=<base64 HMAC of the token>"}``, signed with the
        source's consumer secret. Nothing is recorded: it is not a delivery."""
        source = self.sources().get(name)
        if source is None or source.type != "twitter":
            shown = name if len(name) <= _MAX_NAME else name[:_MAX_NAME] + "…"
            why = "no such source" if source is None else f"a {source.type} source"
            error = f"CRC checks are answered for twitter sources only; {shown!r} is {why}"
            return Answer(404, {"ok": False, "error": error})
        problem = crc_token_problem(token)
        if problem is not None or token is None:
            return Answer(400, {"ok": False, "error": problem})
        try:
            secret = self.secret_for(name, source)
        except CredentialError as exc:
            error = f"the consumer secret of source {name} cannot be read: {exc}"
            return Answer(503, {"ok": False, "error": error})
        if not secret:
            kind = signing_kind(source)
            error = (
                f"source '{name}' has no consumer secret to answer the CRC check with (set "
                f'credential = "INSTANCE" in [webhooks.{name}] and store the consumer secret '
                f"with `corral creds add {kind}:INSTANCE`)"
            )
            return Answer(400, {"ok": False, "error": error})
        log.info("webhook %s: CRC check answered", name)
        return Answer(200, {"response_token": crc_response(secret, token)})

    async def receive(
        self,
        name: str,
        headers: Mapping[str, str],
        chunks: AsyncIterator[bytes],
    ) -> Answer:
        """Handle one delivery to ``/webhooks/{name}``; see the module docstring."""
        answer = await self._receive(name, headers, chunks)
        count_delivery(name if name in self.sources() else "unknown", metric_outcome(answer))
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
            name = name if len(name) <= _MAX_NAME else name[:_MAX_NAME] + "…"
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
            secret = self.secret_for(name, source)
        except CredentialError as exc:
            detail = f"the signing secret of source {name} cannot be read: {exc}"
            return await self._refuse(refusal, 503, detail, verification=detail)
        try:
            verification = verify(source, secret, delivery)
        except Exception as exc:  # a stranger's bytes never earn a 500 (invariant 9)
            log.exception("webhook %s: the signature check failed on what was sent", name)
            detail = f"the signature could not be checked ({type(exc).__name__}): refused"
            return await self._refuse(refusal, 401, detail, verification=detail)
        if not verification.ok:
            detail = verification.detail
            return await self._refuse(refusal, 401, detail, verification=detail)
        if not verification.signed and (why := browser_sent(headers)) is not None:
            error = (
                f"source {name} takes deliveries without a signature (allowUnsigned), so it "
                f"refuses what a web page could send: {why}; send the delivery from a server "
                "with Content-Type: application/json, or sign it"
            )
            return await self._refuse(refusal, 403, error, verification=verification.detail)
        return await self._verified(receipt_id, source, delivery, verification)

    async def _verified(
        self, receipt_id: str, source: WebhookSource, delivery: Delivery, verification: Verification
    ) -> Answer:
        base = _receipt_base(receipt_id, delivery, verification)
        try:
            event = parse(source, delivery)
        except Exception as exc:  # any failure to read a payload is the payload's: a 400
            error = _unreadable(delivery.source, exc)
            kind, delivery_id = _claimed(source, delivery.headers)
            new = NewReceipt(
                **base,
                outcome=ReceiptOutcome.INVALID,
                event=kind,
                delivery_id=delivery_id,
                error=error,
                # Unsigned: anyone may have sent it, so it is kept as a stranger's.
                repeat_key=None if verification.signed else f"invalid:{delivery.source}",
            )
            stored = await self._record(new, ())
            if isinstance(stored, Answer):
                return stored
            kept = stored[0].id
            log.warning(
                "webhook %s: invalid payload (%s), receipt %s", delivery.source, error, kept
            )
            return Answer(400, {"ok": False, "error": error, "receiptId": kept})
        base |= {"event": event.kind, "delivery_id": event.delivery_id}
        if event.ping:
            stored = await self._record(NewReceipt(**base, outcome=ReceiptOutcome.PING), ())
            if isinstance(stored, Answer):
                return stored
            receipt, _ = stored
            if receipt.outcome is ReceiptOutcome.DUPLICATE:
                return duplicate_answer(receipt)
            if event.reply is not None:  # Slack's challenge, Discord's PONG: exactly that
                return Answer(200, dict(event.reply), metric="ping")
            return Answer(200, {"ok": True, "pong": True, "receiptId": receipt.id})
        results, items = plan_items(self.project, event, receipt_id)
        new = NewReceipt(**base, outcome=ReceiptOutcome.ACCEPTED, results=results)
        stored = await self._record(new, items)
        if isinstance(stored, Answer):
            return stored
        receipt, enqueued = stored
        if receipt.outcome is ReceiptOutcome.DUPLICATE:
            return duplicate_answer(receipt)
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
            repeat_key=f"refused:{refusal.name}" if refusal.source else "refused:unknown source",
        )
        stored = await self._record(new, ())
        if isinstance(stored, Answer):
            return stored
        kept = stored[0].id  # an earlier receipt of the kind, when this one was counted on it
        log.warning("webhook %s refused (%d): %s; receipt %s", refusal.name, status, error, kept)
        return Answer(status, {"ok": False, "error": error, "receiptId": kept}, close)

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


def _unreadable(name: str, exc: Exception) -> str:
    """The error of a payload ``parse`` failed on: a :class:`PayloadError` says what was
    wrong; anything else is a reader's oversight, logged with its traceback."""
    if isinstance(exc, PayloadError):
        return str(exc)
    log.error("webhook %s: the payload could not be read", name, exc_info=exc)
    return f"the payload could not be read ({type(exc).__name__}); it is refused"


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


def _too_big(name: str, source: WebhookSource, body: _Body) -> str:
    limit = source.max_body_bytes
    size = f"{body.declared} bytes" if body.declared is not None else f"more than {limit} bytes"
    return f"payload is {size}; the limit for source {name} is {limit} (maxBodyBytes)"


#: What a web page can POST to another site without asking it first (a CORS "simple
#: request") has one of these content types, or none.
_JSON_TYPES = ("application/json",)


def browser_sent(headers: Mapping[str, str]) -> str | None:
    """Why the request may come from a web page on another site, or None.

    A page can make the browser POST to any address, the gateway's on loopback included,
    but without asking the server first only with a "simple" content type (text/plain, a
    form) and no custom header. So an unsigned delivery must declare JSON (which a page
    cannot send without the server's consent, and the gateway gives none), and must not
    carry a browser's ``Origin`` or ``Sec-Fetch-Site`` naming another site."""
    kind = headers.get("content-type", "").partition(";")[0].strip().lower()
    if not (kind in _JSON_TYPES or (kind.startswith("application/") and kind.endswith("+json"))):
        return f"its Content-Type is {_shown(kind) if kind else 'missing'}, not application/json"
    site = headers.get("sec-fetch-site", "").strip().lower()
    if site and site not in ("none", "same-origin"):
        return f"the browser says it comes from another site (Sec-Fetch-Site: {_shown(site)})"
    origin = headers.get("origin")
    if origin is not None:
        host = headers.get("host", "").strip().lower()
        if origin.strip().lower() in ("", "null") or urlsplit(origin).netloc.lower() != host:
            return f"it comes from a web page at {_shown(origin)} (Origin)"
    return None


def _shown(text: str) -> str:
    """Header text quoted in an answer: short, printable ASCII."""
    shown = "".join(c if " " <= c <= "~" else "?" for c in text[:80])
    return repr(shown + ("…" if len(text) > 80 else ""))


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length")
    # isdigit() alone takes "²", which int() refuses: ASCII digits only.
    if value is None or not (value.strip().isascii() and value.strip().isdigit()):
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
