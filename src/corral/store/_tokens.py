"""Operator tokens: the bearer tokens of the control API, the dashboard and /metrics.

The store keeps a token's name and the SHA-256 of the token (hex), never the token; a
presented token is hashed and looked up by its hash (``corral.engine.token`` does the
hashing and caches answers briefly). Names are never reused, even once revoked, so the
audit log's ``token:<name>`` names one token for good. Making and revoking a token are
recorded in the audit log in the same transaction.
"""

from __future__ import annotations

import dataclasses

from corral.errors import StoreError
from corral.store._core import Row, StoreCore
from corral.store.records import OperatorToken

__all__ = ["TokenOps"]

_TOKEN_TIMES = ("created_at", "last_used_at", "revoked_at")


class TokenOps(StoreCore):
    """Operator tokens; part of ``Store``."""

    async def create_operator_token(
        self, name: str, token_hash: str, *, actor: str
    ) -> OperatorToken:
        """Record token ``name`` by its hash; StoreError when the name was ever used."""
        params = {"name": name, "token_hash": token_hash, "now": self.encode_time(self.now())}
        async with self.transaction() as tx:
            row = await tx.fetch_one("insert_operator_token", params)
            if row is None:
                raise StoreError(
                    f"an operator token named {name!r} exists already in {self.url} (a "
                    "revoked token keeps its name); choose another name"
                )
            await self.audit_in(tx, actor=actor, action="token.create", subject=name)
        return self._token_from_row(row)

    async def revoke_operator_token(self, name: str, *, actor: str) -> OperatorToken | None:
        """Revoke token ``name`` (None: no such token). Revoking a revoked token changes
        nothing and returns it as it is."""
        params = {"name": name, "now": self.encode_time(self.now())}
        async with self.transaction() as tx:
            row = await tx.fetch_one("revoke_operator_token", params)
            if row is None:
                row = await tx.fetch_one("get_operator_token", {"name": name})
                return None if row is None else self._token_from_row(row)
            await self.audit_in(tx, actor=actor, action="token.revoke", subject=name)
        return self._token_from_row(row)

    async def use_operator_token(
        self, token_hash: str, *, touch_every: float = 60.0
    ) -> OperatorToken | None:
        """The unrevoked token whose hash is ``token_hash``, or None. Its ``last_used_at``
        is brought up to date when it is ``touch_every`` seconds old or more (a write at
        most once a minute per token, not one per request)."""
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("find_operator_token", {"token_hash": token_hash})
        if row is None:
            return None
        token = self._token_from_row(row)
        if token.revoked:
            return None
        now = self.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() >= touch_every:
            params = {"name": token.name, "now": self.encode_time(now)}
            async with self.transaction() as tx:
                await tx.execute("touch_operator_token", params)
            token = dataclasses.replace(token, last_used_at=now)
        return token

    async def list_operator_tokens(self) -> list[OperatorToken]:
        """Every token, revoked ones too, oldest first."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_operator_tokens")
        return [self._token_from_row(row) for row in rows]

    async def count_live_operator_tokens(self) -> int:
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("count_live_operator_tokens")
        return int(self._returned(row, "count_live_operator_tokens")["n"])

    def _token_from_row(self, row: Row) -> OperatorToken:
        return OperatorToken.from_row(self._decode_times(row, _TOKEN_TIMES))
