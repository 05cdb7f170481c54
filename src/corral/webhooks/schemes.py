"""The signature schemes of Slack, Discord and X, which are not an HMAC of the body alone.

- Slack: ``X-Slack-Signature: v0=<hex>``, the HMAC-SHA256 of ``v0:<timestamp>:<body>`` with
  the app's signing secret, where ``X-Slack-Request-Timestamp`` must be within 5 minutes
  of now (so a captured delivery cannot be replayed later).
- Discord: ``X-Signature-Ed25519: <hex>``, an Ed25519 signature of
  ``<X-Signature-Timestamp><body>`` by the application's key; the "secret" is the
  application's public key (64 hex digits), as the Developer Portal shows it; the
  timestamp must be within 5 minutes of now too (corral's addition), and a public key of
  small order is refused.
- X: ``X-Twitter-Webhooks-Signature: sha256=<base64>``, the HMAC-SHA256 of the body with
  the app's consumer secret; the CRC check (a GET with ``crc_token``) is answered with the
  same HMAC of the token.

Each check returns ``(accepted, detail)``; none raises on what a sender sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

if TYPE_CHECKING:
    from corral.webhooks.delivery import Delivery

__all__ = ["DISCORD_WINDOW", "SCHEMES", "SLACK_WINDOW", "crc_response", "crc_token_problem"]

#: How far Slack's request timestamp may be from now, in seconds (Slack's own advice).
SLACK_WINDOW = 300
#: How far Discord's X-Signature-Timestamp may be from now, in seconds. Action Llama does
#: not check it; corral refuses a stale one, so a captured interaction cannot be replayed
#: days later (Discord sends each interaction once, within seconds).
DISCORD_WINDOW = 300

#: A Unix time as a sender writes it: ASCII digits only (``str.isdigit`` also takes "²",
#: which ``int`` refuses), at most 12 of them.
_UNIX_TIME = re.compile(r"[0-9]{1,12}")
#: The encodings of the Ed25519 points of small order (libsodium's blocklist), compared
#: with the sign bit (the top bit of the last byte) cleared. A "public key" among them
#: (all zeros, say, a placeholder) makes any signature whose R is such a point check,
#: whatever was signed: refused before any signature is looked at.
_SMALL_ORDER = frozenset(
    bytes.fromhex(h)
    for h in (
        "00" * 32,  # 0 (order 4)
        "01" + "00" * 31,  # 1 (order 1)
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
        "ec" + "ff" * 30 + "7f",  # p - 1 (order 2)
        "ed" + "ff" * 30 + "7f",  # p, that is 0 (order 4)
        "ee" + "ff" * 30 + "7f",  # p + 1, that is 1 (order 1)
    )
)

_HEX = re.compile(r"[0-9a-fA-F]+")
#: What an X CRC token may hold: X sends a short base64-like token. Anything else is
#: refused, so the answer (an HMAC with the consumer secret, the very key that signs
#: deliveries) can never be the signature of a body corral would accept, which is a
#: JSON object and so holds a "{".
_CRC_TOKEN = re.compile(r"[A-Za-z0-9+/=_.-]{1,256}")

Check = Callable[[str, "Delivery", float], tuple[bool, str]]


def _slack(secret: str, delivery: Delivery, now: float) -> tuple[bool, str]:
    stamp = (delivery.header("X-Slack-Request-Timestamp") or "").strip()
    if not stamp:
        return False, "no X-Slack-Request-Timestamp header"
    stale = _stale("X-Slack-Request-Timestamp", "Slack", stamp, now, SLACK_WINDOW)
    if stale is not None:
        return False, stale
    given = (delivery.header("X-Slack-Signature") or "").strip()
    digits = given[3:]
    if not (given[:3] == "v0=" and len(digits) == 64 and _HEX.fullmatch(digits)):
        return False, 'malformed X-Slack-Signature header: expected "v0=<64 hex digits>"'
    base = b"v0:" + stamp.encode() + b":" + delivery.body
    expected = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    if hmac.compare_digest(expected, digits.lower()):
        return True, "valid signature"
    return False, "signature does not match"


def _stale(header: str, sender: str, stamp: str, now: float, window: int) -> str | None:
    """Why the Unix time ``stamp`` in ``header`` is refused (malformed, or more than
    ``window`` seconds from ``now``), or ``None``."""
    if not _UNIX_TIME.fullmatch(stamp):
        return f"malformed {header} header: expected a Unix time (ASCII digits)"
    age = now - int(stamp)
    if abs(age) <= window:
        return None
    when = f"{int(age)} s old" if age > 0 else f"{int(-age)} s in the future"
    return (
        f"{header} is {when}; {sender} deliveries more than {window // 60} minutes from now "
        "are refused (replay protection: check the gateway's clock)"
    )


def _discord(secret: str, delivery: Delivery, now: float) -> tuple[bool, str]:
    key = secret.strip()
    if len(key) != 64 or not _HEX.fullmatch(key):
        return False, (
            f"the public key of source '{delivery.source}' is not 64 hex digits: store the "
            "application's Public Key from the Discord Developer Portal as its secret"
        )
    raw = bytearray(bytes.fromhex(key))
    raw[31] &= 0x7F
    if bytes(raw) in _SMALL_ORDER:
        return False, (
            f"the public key of source '{delivery.source}' is a weak key (a point of small "
            "order, such as all zeros) that any forged signature would match: store the "
            "application's Public Key from the Discord Developer Portal"
        )
    stamp = delivery.header("X-Signature-Timestamp")
    if stamp is None:
        return False, "no X-Signature-Timestamp header"
    stale = _stale("X-Signature-Timestamp", "Discord", stamp.strip(), now, DISCORD_WINDOW)
    if stale is not None:
        return False, stale
    given = (delivery.header("X-Signature-Ed25519") or "").strip()
    if len(given) != 128 or not _HEX.fullmatch(given):
        return False, "malformed X-Signature-Ed25519 header: expected 128 hex digits"
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key))
    try:
        public.verify(bytes.fromhex(given), stamp.encode() + delivery.body)
    except InvalidSignature:
        return False, "signature does not match"
    return True, "valid signature"


def _twitter(secret: str, delivery: Delivery, now: float) -> tuple[bool, str]:
    given = (delivery.header("X-Twitter-Webhooks-Signature") or "").strip()
    digest = given[7:]
    try:
        raw = base64.b64decode(digest, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if given[:7] != "sha256=" or len(raw) != 32:
        return False, (
            'malformed X-Twitter-Webhooks-Signature header: expected "sha256=<base64 '
            'HMAC-SHA256 of the body>"'
        )
    expected = hmac.new(secret.encode(), delivery.body, hashlib.sha256).digest()
    if hmac.compare_digest(expected, raw):
        return True, "valid signature"
    return False, "signature does not match"


#: The source types with a scheme of their own; the others sign an HMAC of the body.
SCHEMES: Mapping[str, Check] = {"slack": _slack, "discord": _discord, "twitter": _twitter}


def crc_token_problem(token: str | None) -> str | None:
    """Why ``token`` is not a CRC token corral answers, or ``None``."""
    if token is None or token == "":
        return "no crc_token query parameter (X sends one with its CRC check)"
    if not _CRC_TOKEN.fullmatch(token):
        return (
            "the crc_token is not a token X sends (up to 256 letters, digits and + / = _ . -): "
            "refused, since its answer is signed with the key that signs deliveries"
        )
    return None


def crc_response(secret: str, token: str) -> str:
    """The ``response_token`` of an X CRC check: ``sha256=`` and the base64 HMAC-SHA256 of
    the token with the consumer secret."""
    digest = hmac.new(secret.encode(), token.encode(), hashlib.sha256).digest()
    return "sha256=" + base64.b64encode(digest).decode()
