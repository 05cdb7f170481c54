"""A delivery as it arrived, and whether the sender signed it with the source's secret.

Verification comes first, before the body is parsed or anything is de-duplicated or
recorded as an event: a delivery id or an event name in an unsigned body is the
sender's claim, not a fact (the described system de-duplicates first, so a forged
delivery id could suppress a genuine event).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from corral.credentials import (
    CredentialError,
    CredentialProblem,
    CredentialStore,
    webhook_secret_ref,
)
from corral.project import WebhookSource

__all__ = ["Delivery", "Verification", "signing_secret", "verify"]

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


def verify(source: WebhookSource, secret: str | None, delivery: Delivery) -> Verification:
    """Check the delivery's signature: an HMAC of the raw body with ``secret``.

    The header, digest and prefix are the source's (GitHub: ``X-Hub-Signature-256:
    sha256=<hex>``). With ``allowUnsigned`` a delivery without the header is accepted,
    and so is a signed one when there is no secret to check it with; a signature that
    is checked and wrong is refused either way. Never raises on what a sender sent.
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
        return Verification(
            False,
            f"source '{name}' has no signing secret (set credential = \"INSTANCE\" in "
            f"[webhooks.{name}] and store it with `corral creds add webhook_secret:INSTANCE`, "
            "or set allowUnsigned = true)",
        )
    if given is None:
        if source.allow_unsigned:
            return Verification(True, UNSIGNED_ALLOWED, signed=False)
        return Verification(False, f"no {header} header")
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


def signing_secret(source: WebhookSource, credentials: CredentialStore) -> str | None:
    """The source's signing secret from the credential store; ``None`` when it names none.

    A credential that is named but cannot be read (not stored, unsafe permissions) is a
    :class:`CredentialError` naming the source and the command that fixes it.
    """
    if source.credential is None:
        return None
    whose = f"webhook source '{source.name}'" if source.name else "a webhook source"
    try:
        ref = webhook_secret_ref(source.credential)
        loaded = credentials.resolve([str(ref)])
    except CredentialError as exc:
        raise CredentialError(
            [
                CredentialProblem(p.ref, f"{p.message} (the signing secret of {whose})", p.fix)
                for p in exc.problems
            ]
        ) from None
    return loaded[0].values["secret"]
