"""Bundles: pushed projects kept by content hash, and the project's current one.

A bundle is stored once, under the SHA-256 of its bytes (``sha256:<hex>``); pushing the
same bytes again stores nothing. The head (one row) names the current bundle: every
control plane on the store runs it (scheduler/bundles.py follows it: on PostgreSQL a
change of the head sends the notice ``bundle``, on SQLite they see it at their next poll).
Pushing and moving the head are recorded in the audit log in the same transaction.
"""

from __future__ import annotations

import hashlib
from typing import Any

from corral.errors import StoreConflict, StoreError
from corral.store._core import Row, StoreCore, Transaction
from corral.store._notify import ChangeOps
from corral.store.records import Bundle, BundleHead, Published

__all__ = ["BUNDLE", "BundleOps"]

#: The notice topic of a change of the current bundle.
BUNDLE = "bundle"

_HASH_PREFIX = "sha256:"


class BundleOps(StoreCore, ChangeOps):
    """Project bundles; part of ``Store``."""

    async def publish_bundle(
        self,
        hash_: str,
        data: bytes,
        manifest: dict[str, Any],
        *,
        actor: str,
        note: str | None = None,
    ) -> Published:
        """Store bundle ``data`` (named ``hash_``, the caller's SHA-256 of it) unless it is
        stored already, and make it the current bundle; both in one transaction."""
        _check_hash(hash_)
        _check_manifest(manifest)
        if _HASH_PREFIX + hashlib.sha256(data).hexdigest() != hash_:
            raise ValueError(f"the bytes given for bundle {hash_} do not hash to it")
        now = self.encode_time(self.now())
        params = {
            "hash": hash_,
            "data": data,
            "size": len(data),
            "manifest": self.encode_json(manifest),
            "now": now,
            "actor": actor,
            "note": note,
        }
        async with self.transaction() as tx:
            row = await tx.fetch_one("insert_bundle", params)
            stored = row is not None
            if row is None:
                row = self._returned(await tx.fetch_one("get_bundle", params), "get_bundle")
            before = await tx.fetch_one("get_bundle_head")
            moved = before is None or before["hash"] != hash_
            if stored:
                detail = {"size": len(data), "note": note}
                await self.audit_in(
                    tx, actor=actor, action="bundle.push", subject=hash_, detail=detail
                )
            if moved:
                await self._supersede_rollout(tx, f"superseded by push of {hash_}", actor)
                head_row = await tx.fetch_one("set_bundle_head", params)
                await self.audit_in(tx, actor=actor, action="bundle.apply", subject=hash_)
            else:
                head_row = before
        published = Published(
            bundle=self._bundle_from_row(row),
            head=self._head_from_row(self._returned(head_row, "set_bundle_head")),
            stored=stored,
            moved=moved,
        )
        if moved:
            self.changes.notify(BUNDLE)
        return published

    async def set_bundle_head(self, hash_: str, *, actor: str) -> BundleHead:
        """Make the stored bundle ``hash_`` the current one (a rollback, or an apply);
        StoreConflict when no such bundle is stored."""
        _check_hash(hash_)
        params = {"hash": hash_, "now": self.encode_time(self.now()), "actor": actor}
        async with self.transaction() as tx:
            if await tx.fetch_one("get_bundle", params) is None:
                raise StoreConflict(
                    f"no bundle {hash_} in {self.url}; `corral bundles ls` lists the "
                    "pushed ones (`corral push` publishes the project)"
                )
            before = await tx.fetch_one("get_bundle_head")
            if before is None or before["hash"] != hash_:
                await self._supersede_rollout(tx, f"superseded by apply of {hash_}", actor)
            row = await tx.fetch_one("set_bundle_head", params)
            await self.audit_in(tx, actor=actor, action="bundle.apply", subject=hash_)
        self.changes.notify(BUNDLE)
        return self._head_from_row(self._returned(row, "set_bundle_head"))

    async def _supersede_rollout(self, tx: Transaction, reason: str, actor: str) -> None:
        """Halt the running rollout, if any, in ``tx`` (which moves the head past it): a
        later promotion would otherwise put its candidate over the newer bundle."""
        running = await tx.fetch_one("running_rollout")
        if running is None:
            return
        params = {
            "id": running["id"],
            "state": "halted",
            "now": self.encode_time(self.now()),
            "actor": actor,
            "reason": reason,
        }
        if await tx.fetch_one("end_rollout", params) is not None:  # None: ended meanwhile
            await self.audit_in(
                tx,
                actor=actor,
                action="rollout.halt",
                subject=str(running["id"]),
                detail={"candidate": running["candidate"], "reason": reason},
            )

    async def bundle_head(self) -> BundleHead | None:
        """The current bundle, or None before the first push."""
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("get_bundle_head")
        return None if row is None else self._head_from_row(row)

    async def get_bundle(self, hash_: str) -> Bundle | None:
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("get_bundle", {"hash": hash_})
        return None if row is None else self._bundle_from_row(row)

    async def bundle_data(self, hash_: str) -> bytes | None:
        """The bytes of bundle ``hash_``, or None when no such bundle is stored."""
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("get_bundle_data", {"hash": hash_})
        return None if row is None else bytes(row["data"])

    async def list_bundles(self, *, limit: int = 50) -> list[Bundle]:
        """Pushed bundles, newest first."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_bundles", {"limit": limit})
        return [self._bundle_from_row(row) for row in rows]

    async def find_bundles(self, prefix: str) -> list[str]:
        """Up to five stored hashes that start with ``prefix`` (``sha256:`` included)."""
        params = {"prefix": prefix, "prefix_end": prefix + "\U0010ffff"}
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("find_bundles", params)
        return [str(row["hash"]) for row in rows]

    def _bundle_from_row(self, row: Row) -> Bundle:
        manifest = self.decode_json(row["manifest"]) or {}
        agents = manifest.get("agents") or {}
        return Bundle(
            hash=str(row["hash"]),
            size=int(row["size"]),
            agents={str(k): str(v) for k, v in dict(agents).items()},
            files=int(manifest.get("files") or 0),
            created_at=self.decode_time(row["created_at"]),
            created_by=str(row["created_by"]),
            note=row["note"],
        )

    def _head_from_row(self, row: Row) -> BundleHead:
        return BundleHead(
            hash=str(row["hash"]), set_at=self.decode_time(row["set_at"]), set_by=row["set_by"]
        )


def _check_hash(hash_: str) -> None:
    hexpart = hash_.removeprefix(_HASH_PREFIX)
    if (
        not hash_.startswith(_HASH_PREFIX)
        or len(hexpart) != 64
        or any(c not in "0123456789abcdef" for c in hexpart)
    ):
        raise ValueError(f"a bundle hash is sha256: and 64 lowercase hex digits, got {hash_!r}")


def _check_manifest(manifest: dict[str, Any]) -> None:
    agents = manifest.get("agents")
    if not isinstance(agents, dict):
        raise StoreError("a bundle manifest needs 'agents' (agent name -> bundle hash)")
    for value in agents.values():
        _check_hash(str(value))
