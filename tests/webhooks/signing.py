"""Signing deliveries the way their senders do, for tests of the intake.

Stable helpers: the HTTP intake tests use them too. Each returns the headers a real
sender would put on the request, names in their usual case (``X-GitHub-Event``);
:class:`corral.webhooks.Delivery` lower-cases them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "SECRET",
    "discord_keys",
    "github_signature",
    "sign_discord",
    "sign_generic",
    "sign_github",
    "sign_slack",
    "sign_twitter",
    "twitter_signature",
]

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


# --- Slack, Discord and X, each in its own scheme ----------------------------------------


def sign_slack(body: bytes, secret: str, *, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack sends: ``v0=`` and the hex HMAC-SHA256 of ``v0:<ts>:<body>``."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    base = b"v0:" + stamp.encode() + b":" + body
    return {
        "Content-Type": "application/json",
        "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest(),
    }


def discord_keys() -> tuple[Ed25519PrivateKey, str]:
    """A fresh application key pair: the private key, and the public key in hex as the
    Discord Developer Portal shows it."""
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, public.hex()


def sign_discord(
    body: bytes, private: Ed25519PrivateKey, *, timestamp: str | None = None
) -> dict[str, str]:
    """The headers Discord sends: the Ed25519 signature of ``<timestamp><body>``."""
    stamp = str(int(time.time())) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        "User-Agent": "Discord-Interactions/1.0 (+https://discord.com)",
        "X-Signature-Timestamp": stamp,
        "X-Signature-Ed25519": private.sign(stamp.encode() + body).hex(),
    }


def twitter_signature(data: bytes, consumer_secret: str) -> str:
    """``sha256=`` and the base64 HMAC-SHA256 of ``data`` (a body, or a CRC token)."""
    digest = hmac.new(consumer_secret.encode(), data, hashlib.sha256).digest()
    return "sha256=" + base64.b64encode(digest).decode()


def sign_twitter(body: bytes, consumer_secret: str) -> dict[str, str]:
    """The headers X's Account Activity API sends with ``body``."""
    return {
        "Content-Type": "application/json",
        "X-Twitter-Webhooks-Signature": twitter_signature(body, consumer_secret),
    }
