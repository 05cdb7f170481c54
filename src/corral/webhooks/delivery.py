"""A delivery as it arrived, and whether the sender signed it with the source's secret.

Verification comes first, before the body is parsed or anything is de-duplicated or
recorded as an event: a delivery id or an event name in an unsigned body is the
sender's claim, not a fact (Action Llama de-duplicates first, so a forged
delivery id could suppress a genuine event).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from corral.credentials import (
    CredentialError,
    CredentialProblem,
    CredentialRef,
    CredentialStore,
    webhook_secret_ref,
)
from corral.project import WebhookSource
from corral.webhooks.schemes import SCHEMES

__all__ = [
    "Delivery",
    "Verification",
    "signing_credential",
    "signing_kind",
    "signing_secret",
    "verify",
]

_DIGESTS: Mapping[str, Callable[..., Any]] = {
    "sha256": hashlib.sha256,
    "sha1": hashlib.sha1,
    "sha512": hashlib.sha512,
}
_HEX = re.compile(r"[0-9a-fA-F]+")
UNSIGNED_ALLOWED = "unsigned; allowed by allowUnsigned"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One POST to ``/webhooks/{source}``: the source's name (from the URL), headers, body.

    Header names are lower-cased here, whatever the caller passed: HTTP field names are
    case-insensitive, and one rule in one place means no lookup can miss.
    """

    source: str
    headers: Mapping[str, str]
    body: bytes
    #: When the gateway received it (a replay: when the original was received); the
    #: trigger's ``timestamp``.
    received: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        lowered = {str(name).lower(): value for name, value in self.headers.items()}
        object.__setattr__(self, "headers", MappingProxyType(lowered))

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case), or ``None``."""
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True)
class Verification:
    """Whether to accept a delivery, and why, in words fit for a receipt or a 401 body."""

    ok: bool
    detail: str
    #: False when accepted without a checked signature (``allowUnsigned``): nothing but
    #: the request itself says who sent it, so the intake also refuses what a web page
    #: could send (see ``corral.gateway.webhooks.intake``).
    signed: bool = True


def verify(
    source: WebhookSource, secret: str | None, delivery: Delivery, *, now: float | None = None
) -> Verification:
    """Check the delivery's signature: an HMAC of the raw body with ``secret``.

    The header, digest and prefix are the source's (GitHub: ``X-Hub-Signature-256:
    sha256=<hex>``). With ``allowUnsigned`` a delivery without the header is accepted,
    and so is a signed one when there is no secret to check it with; a signature that
    is checked and wrong is refused either way. Never raises on what a sender sent.
    Slack, Discord and X sign in schemes of their own (:mod:`corral.webhooks.schemes`);
    ``now`` (Unix time) is the clock Slack's timestamp is checked against.
    """
    header = source.signature_header
    given = delivery.header(header)
    if not secret:
        if source.allow_unsigned:
            if given is None:
                return Verification(True, UNSIGNED_ALLOWED, signed=False)
            return Verification(
                True,
                "signature not checked (no signing secret); allowed by allowUnsigned",
                signed=False,
            )
        name = delivery.source
        kind = signing_kind(source)
        return Verification(
            False,
            f"source '{name}' has no signing secret (set credential = \"INSTANCE\" in "
            f"[webhooks.{name}] and store it with `corral creds add {kind}:INSTANCE`, "
            "or set allowUnsigned = true)",
        )
    if given is None:
        if source.allow_unsigned:
            return Verification(True, UNSIGNED_ALLOWED, signed=False)
        return Verification(False, f"no {header} header")
    scheme = SCHEMES.get(source.type)
    if scheme is not None:
        ok, detail = scheme(secret, delivery, time.time() if now is None else now)
        return Verification(ok, detail)
    return _check(source, secret, delivery.body, given)


def _check(source: WebhookSource, secret: str, body: bytes, given: str) -> Verification:
    digest = _DIGESTS[source.algorithm]
    width = digest().digest_size * 2
    prefix = source.signature_prefix
    text = given.strip()
    digits = text[len(prefix) :]
    shaped = (
        text[: len(prefix)].lower() == prefix.lower()
        and len(digits) == width
        and _HEX.fullmatch(digits) is not None
    )
    if not shaped:
        return Verification(
            False,
            f'malformed {source.signature_header} header: expected "{prefix}<{width} hex '
            f'digits>" ({source.algorithm.upper()} HMAC of the body)',
        )
    expected = hmac.new(secret.encode(), body, digest).hexdigest()
    if hmac.compare_digest(expected, digits.lower()):
        return Verification(True, "valid signature")
    return Verification(False, "signature does not match")


#: Where Discord's and X's sources find what they check with, as in Action Llama: a bare
#: instance names the application's credential (``discord_bot:MyBot``'s ``public_key``,
#: ``x_twitter_api:MyXApp``'s ``consumer_secret``).
_APP_CREDENTIALS = {
    "discord": ("discord_bot", "public_key"),
    "twitter": ("x_twitter_api", "consumer_secret"),
}


def signing_kind(source: WebhookSource) -> str:
    """The credential type a bare ``credential = "INSTANCE"`` of ``source`` names
    (``x_twitter_api`` for X, ``discord_bot`` for Discord, else ``webhook_secret``)."""
    return _APP_CREDENTIALS.get(source.type, ("webhook_secret", ""))[0]


def signing_credential(source: WebhookSource) -> tuple[CredentialRef, str] | None:
    """The credential and field a source's deliveries are checked with; ``None`` when it
    names none. ``webhook_secret:NAME`` (written so) is always a webhook secret."""
    if source.credential is None:
        return None
    ref = webhook_secret_ref(source.credential)
    app = _APP_CREDENTIALS.get(source.type)
    if app is not None and ":" not in source.credential:
        return CredentialRef(app[0], ref.instance), app[1]
    return ref, "secret"


def signing_secret(source: WebhookSource, credentials: CredentialStore) -> str | None:
    """The source's signing secret (Discord: the public key) from the credential store;
    ``None`` when it names none.

    A credential that is named but cannot be read (not stored, unsafe permissions) is a
    :class:`CredentialError` naming the source and the command that fixes it.
    """
    whose = f"webhook source '{source.name}'" if source.name else "a webhook source"
    try:
        found = signing_credential(source)
        if found is None:
            return None
        ref, field_name = found
        loaded = credentials.resolve([str(ref)])
    except CredentialError as exc:
        raise CredentialError(
            [
                CredentialProblem(p.ref, f"{p.message} (the signing secret of {whose})", p.fix)
                for p in exc.problems
            ]
        ) from None
    value = loaded[0].values.get(field_name)
    if not value:
        raise CredentialError(
            [
                CredentialProblem(
                    str(ref),
                    f"has no {field_name} (the signing secret of {whose})",
                    f"store it with `corral creds add {ref} --force`",
                )
            ]
        )
    return value
