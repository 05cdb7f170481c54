"""Operator tokens: what guards the control API, the dashboard and /metrics.

Tokens are made by ``corral token create NAME`` (``new_token``: ``crl_`` and 32 random
bytes, URL-safe), shown once, and kept in the store by their SHA-256 only. A presented
token is hashed and looked up by that hash (``TokenVerifier``); a positive answer is
cached for ``CACHE_SECONDS``, so a revoked token stops working within that time.

Two more tokens may be accepted, each under a fixed name (the audit log records
``token:<name>``):

- ``$CORRAL_OPERATOR_TOKEN`` (name ``env``): set where the scheduler starts, for
  deployments that hand secrets through the environment.
- The project's ``.corral/operator-token`` file (name ``local``, made on first use, mode
  0600): accepted only while the gateway listens on loopback, so that whoever can read
  the project directory can drive a local fleet without making a token first. An exposed
  gateway (``corral start --expose``) does not accept it (docs/decisions.md).

Every comparison of a presented token with a known one is of SHA-256 digests, with
``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from corral.errors import UsageError
from corral.locate import state_dir
from corral.store.protocols import TokenStore

__all__ = [
    "CACHE_SECONDS",
    "ENV_TOKEN_NAME",
    "LOCAL_TOKEN_NAME",
    "TOKEN_ENV",
    "TOKEN_PREFIX",
    "TokenVerifier",
    "check_token_name",
    "env_token",
    "hash_token",
    "local_token",
    "new_token",
    "operator_token",
    "token_matches",
]

TOKEN_ENV = "CORRAL_OPERATOR_TOKEN"
TOKEN_PREFIX = "crl_"
ENV_TOKEN_NAME = "env"
LOCAL_TOKEN_NAME = "local"
#: How long a token found in the store is trusted without asking the store again.
CACHE_SECONDS = 2.0
_CACHE_LIMIT = 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_RESERVED = frozenset({ENV_TOKEN_NAME, LOCAL_TOKEN_NAME})


def new_token() -> str:
    """A fresh operator token: ``crl_`` and 32 random bytes, URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The SHA-256 of ``token`` in hex: what the store keeps and looks tokens up by."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_token_name(name: str) -> str:
    """``name`` if it may name a token (letters, digits, ``_.-``, at most 64, not one of
    the names reserved for the environment's and the local token); else UsageError."""
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"bad token name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (e.g. ci, alice, prometheus)"
        )
    if name in _RESERVED:
        raise UsageError(
            f"the token name {name!r} is reserved ({ENV_TOKEN_NAME}: ${TOKEN_ENV}; "
            f"{LOCAL_TOKEN_NAME}: .corral/operator-token); choose another"
        )
    return name


def env_token() -> str | None:
    """``$CORRAL_OPERATOR_TOKEN``, when set and not empty."""
    return os.environ.get(TOKEN_ENV) or None


def operator_token(root: Path) -> str:
    """``$CORRAL_OPERATOR_TOKEN``, else the project's token file (``local_token``)."""
    return env_token() or local_token(root)


def local_token(root: Path) -> str:
    """The project's ``.corral/operator-token`` (made on first use, mode 0600)."""
    path = root / ".corral" / "operator-token"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    state_dir(root)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made a moment ago by another process
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison (of the SHA-256 digests); a missing token never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(hash_token(given), hash_token(expected))


class TokenVerifier:
    """Says which operator token a request presents, if any.

    ``fixed`` maps names to tokens accepted besides the store's (``env``, ``local``).
    A token found in the store is cached for ``cache_seconds``; tokens not found are not
    cached, so a token made a moment ago works at once.
    """

    def __init__(
        self,
        store: TokenStore,
        fixed: Mapping[str, str] | None = None,
        *,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._fixed = [(name, hash_token(token)) for name, token in (fixed or {}).items() if token]
        self._cache: dict[str, tuple[str, float]] = {}

    @property
    def fixed_names(self) -> list[str]:
        return [name for name, _ in self._fixed]

    async def verify(self, presented: str | None) -> str | None:
        """The name of the token ``presented`` is, or None (missing, unknown, revoked)."""
        if not presented:
            return None
        digest = hash_token(presented)
        found = None
        for name, known in self._fixed:  # every one compared, in constant time
            if hmac.compare_digest(digest, known):
                found = name
        if found is not None:
            return found
        now = self.clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        token = await self.store.use_operator_token(digest)
        if token is None:
            self._cache.pop(digest, None)
            return None
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
        self._cache[digest] = (token.name, now + self.cache_seconds)
        return token.name

    def forget(self) -> None:
        """Drop every cached answer (a revocation made in this process takes effect now)."""
        self._cache.clear()
