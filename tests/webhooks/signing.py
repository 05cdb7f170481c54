"""Signing deliveries the way their senders do, for tests of the intake.

Stable helpers: the HTTP intake tests use them too. Each returns the headers a real
sender would put on the request, names in their usual case (``X-GitHub-Event``);
:class:`corral.webhooks.Delivery` lower-cases them.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

__all__ = ["SECRET", "github_signature", "sign_generic", "sign_github"]

#: A signing secret long enough for the credential store (which refuses short ones).
SECRET = "whsec-test-0123456789abcdef"


def github_signature(body: bytes, secret: str) -> str:
    """The value of ``X-Hub-Signature-256``: ``sha256=`` and the hex HMAC of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def sign_github(
    body: bytes,
    secret: str,
    *,
    event: str = "issues",
    delivery_id: str | None = None,
) -> dict[str, str]:
    """The headers GitHub sends with ``body`` for a hook whose secret is ``secret``.

    ``delivery_id`` defaults to a fresh UUID, as GitHub's ``X-GitHub-Delivery`` is.
    """
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/7a2c9f1",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "470001",
        "X-Hub-Signature-256": github_signature(body, secret),
    }


def sign_generic(
    body: bytes,
    secret: str,
    *,
    header: str = "X-Signature-256",
    algorithm: str = "sha256",
    prefix: str | None = None,
    event: str | None = None,
    event_header: str | None = None,
    delivery_id: str | None = None,
    delivery_header: str = "X-Delivery-Id",
) -> dict[str, str]:
    """The headers of a ``type = "generic"`` sender with these settings (the defaults are
    the source's). ``prefix`` defaults to ``"<algorithm>="`` as the source's does; pass
    ``""`` for a bare hex digest. ``event`` goes in ``event_header`` when both are given."""
    digest = hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).hexdigest()
    headers = {
        "Content-Type": "application/json",
        header: (f"{algorithm}=" if prefix is None else prefix) + digest,
        delivery_header: delivery_id or str(uuid.uuid4()),
    }
    if event is not None and event_header is not None:
        headers[event_header] = event
    return headers
