"""Resource locks (``rlock``): try-lock, release, heartbeat, listing, operator release.

A key is one row of ``corral_locks``; its primary key is what makes a key held by at most
one run. These transactions never take the project lock: locks are hot and keys do not
contend with one another. Takers of one key are serialised by the query ``lock_key``
(PostgreSQL: a transaction-scoped advisory lock on the key; SQLite: ``BEGIN IMMEDIATE``
already serialises writers), so tokens are drawn in grant order and ``acquired_at`` is
read after the previous holder's release committed.

Every lock of a run is released in the transaction that ends the run (``finalize``,
recovery, ``finish_run``), through ``release_run_locks_in``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from corral.errors import StoreError
from corral.store._core import Row, StoreCore, Transaction
from corral.store.records import Lock, LockGrant, LockHeld, RunState

__all__ = ["LockOps"]

_LIVE = frozenset({RunState.STARTING.value, RunState.RUNNING.value})


class _Refused(Exception):
    """Raised inside an acquiring transaction to roll it back: a refusal leaves no trace."""

    def __init__(self, held: LockHeld) -> None:
        super().__init__(held)
        self.held = held


class LockOps(StoreCore):
    """Resource locks; part of ``Store``."""

    async def acquire_lock(
        self, key: str, run_id: str, *, ttl_seconds: float
    ) -> LockGrant | LockHeld:
        """Try to lock ``key`` for ``run_id`` (a live run), in one transaction.

        Free or expired: granted with a new token, greater than every earlier one. Held
        by ``run_id`` itself (expired or not): refreshed, expiring ``ttl_seconds`` from
        now, with the same token (``refreshed=True``). Held unexpired by another run:
        ``LockHeld`` naming it, and nothing is written. StoreError for an unknown run or
        one that has ended.
        """
        _check_ttl(ttl_seconds)

        async def body(tx: Transaction) -> LockGrant:
            await tx.execute("lock_key", {"key": key})
            await self._require_live(tx, key, run_id)
            return await self._acquire_locked(tx, key, run_id, ttl_seconds)

        try:
            return await self.atomic(body)
        except _Refused as refused:
            return refused.held

    async def _acquire_locked(
        self, tx: Transaction, key: str, run_id: str, ttl_seconds: float
    ) -> LockGrant:
        # Twice at most: the holder's row can vanish between the two statements only when
        # its run ended meanwhile (that release does not serialise on the key).
        for _ in range(2):
            now = self.now()
            token_row = await tx.fetch_one("next_lock_token")
            token = int(self._returned(token_row, "next_lock_token")["token"])
            params = {
                "key": key,
                "run_id": run_id,
                "token": token,
                "now": self.encode_time(now),
                "expires_at": self.encode_time(now + timedelta(seconds=ttl_seconds)),
            }
            row = await tx.fetch_one("acquire_lock", params)
            if row is not None:
                return self._grant(row, refreshed=int(row["token"]) != token)
            holder = await tx.fetch_one("lock_holder", {"key": key})
            if holder is not None:
                since = self.decode_time(holder["acquired_at"])
                raise _Refused(LockHeld(key=key, holder=holder["run_id"], held_since=since))
        raise StoreError(f"cannot lock {key!r} for run {run_id}: the key kept changing hands")

    async def _require_live(self, tx: Transaction, key: str, run_id: str) -> None:
        row = await tx.fetch_one("live_run_for_lock", {"run_id": run_id})
        if row is None:
            raise StoreError(f"cannot lock {key!r}: no run {run_id!r} in {self.url}")
        if row["state"] not in _LIVE:
            raise StoreError(
                f"cannot lock {key!r} for run {run_id}: the run has ended "
                f"({row['state']}); its locks were released with it ({self.url})"
            )

    def _grant(self, row: Row, *, refreshed: bool) -> LockGrant:
        return LockGrant(
            key=row["key"],
            run_id=row["run_id"],
            token=int(row["token"]),
            acquired_at=self.decode_time(row["acquired_at"]),
            expires_at=self.decode_time(row["expires_at"]),
            refreshed=refreshed,
        )

    async def release_lock(self, key: str, run_id: str) -> bool:
        """Release ``key`` if ``run_id`` holds it (expired or not); False if it does not."""

        async def body(tx: Transaction) -> bool:
            await tx.execute("lock_key", {"key": key})
            return bool(await tx.execute("release_lock", {"key": key, "run_id": run_id}))

        return await self.atomic(body)

    async def heartbeat_lock(self, key: str, run_id: str, *, ttl_seconds: float) -> datetime | None:
        """Make ``key`` expire ``ttl_seconds`` from now if ``run_id`` holds it (even if it
        expired and nobody took it); return the new expiry, or None if it does not."""
        _check_ttl(ttl_seconds)

        async def body(tx: Transaction) -> Row | None:
            await tx.execute("lock_key", {"key": key})
            expires = self.now() + timedelta(seconds=ttl_seconds)
            params = {"key": key, "run_id": run_id, "expires_at": self.encode_time(expires)}
            return await tx.fetch_one("heartbeat_lock", params)

        row = await self.atomic(body)
        return None if row is None else self.decode_time(row["expires_at"])

    async def list_locks(self) -> list[Lock]:
        """Every lock row, by key: unexpired ones and expired ones nobody took yet."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_locks")
        return sorted((self._lock_from_row(row) for row in rows), key=lambda lock: lock.key)

    async def force_release_lock(self, key: str) -> Lock | None:
        """Remove the lock on ``key`` whoever holds it (an operator's action); return it."""
        async with self.transaction() as tx:
            await tx.execute("lock_key", {"key": key})
            row = await tx.fetch_one("get_lock", {"key": key})
            if row is None:
                return None
            lock = self._lock_from_row(row)
            await tx.execute("delete_lock", {"key": key, "token": lock.token})
        return lock

    async def release_run_locks(self, run_id: str) -> int:
        """Release every lock ``run_id`` holds; return how many."""
        async with self.transaction() as tx:
            return await self.release_run_locks_in(tx, run_id)

    def _lock_from_row(self, row: Row) -> Lock:
        decoded = self._decode_times(row, ("acquired_at", "expires_at"))
        decoded["token"] = int(decoded["token"])
        return Lock.from_row(decoded)


def _check_ttl(ttl_seconds: float) -> None:
    if ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be > 0, got {ttl_seconds}")
