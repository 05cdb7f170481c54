"""Fleet rollouts: `corral fleet upgrade` moves the runners to a corral version in steps.

A rollout is one row: what it rolls out (target version, channel, where the runners get
it), how (canary count, batch share, watch window) and its progress (``state`` and
``detail``, a JSON document of the steps and each runner's report). Every change is a
compare and set on ``revision``: of several control plane processes advancing the same
rollout at once, one wins and the others read it again.

Every heartbeat asks for the latest rollout (D130): ``latest_fleet_rollout(max_age=s)``
answers this store object's own copy while it is at most ``s`` seconds old. The copy is
the last one read or written through this object; a write through it replaces the copy
(a lost compare and set drops it), so this process sees its own changes at once and
other processes' (a newer rollout too) within ``s`` of its last read; while a read
renews it, the others wait for that read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from corral.errors import StoreConflict
from corral.store._core import Row, StoreCore

__all__ = ["WHEEL_PREFIX", "FleetRollout", "FleetRolloutOps"]

#: The key of a stored corral wheel in the bundles' table, before its sha256 in hex.
WHEEL_PREFIX = "wheel:sha256:"


@dataclass(frozen=True)
class FleetRollout:
    id: str
    target: str
    channel: str
    canary: int
    batch_share: float
    watch_seconds: float
    source: dict[str, Any]
    state: str
    revision: int
    detail: dict[str, Any]
    created_by: str
    created_at: datetime
    updated_at: datetime


class FleetRolloutOps(StoreCore):
    """Fleet rollouts; part of ``Store``."""

    #: The latest rollout as last read or written here (None: none yet), and when
    #: (``time.monotonic``, the start of the read); None: no copy held.
    _rollout_copy: tuple[FleetRollout | None, float] | None = None
    #: Writes through this object so far: a read that a write overtook keeps no copy.
    _rollout_writes: int = 0
    #: Held by the read that renews the copy: heartbeats arriving meanwhile wait for it
    #: rather than each send the same read.
    _rollout_reading: asyncio.Lock | None = None

    def _hold_rollout(self, rollout: FleetRollout | None, at: float) -> None:
        self._rollout_copy = (rollout, at)

    async def create_fleet_rollout(
        self,
        *,
        target: str,
        channel: str,
        canary: int,
        batch_share: float,
        watch_seconds: float,
        source: dict[str, Any],
        detail: dict[str, Any],
        actor: str,
    ) -> FleetRollout:
        """Record a running rollout. StoreConflict while another runs (the unique index
        on the running one: of two started at once, one is recorded)."""
        rollout_id = "ro_" + secrets.token_hex(6)
        params = {
            "id": rollout_id,
            "target": target,
            "channel": channel,
            "canary": canary,
            "batch_share": batch_share,
            "watch_seconds": watch_seconds,
            "source": json.dumps(source),
            "state": "running",
            "detail": json.dumps(detail),
            "created_by": actor,
            "now": self.encode_time(self.now()),
        }
        async with self.transaction() as tx:
            if await tx.fetch_one("insert_fleet_rollout", params) is None:
                raise StoreConflict(
                    "another fleet rollout is running: wait for it, or `corral fleet upgrade "
                    "halt` / `corral fleet upgrade rollback` first"
                )
            row = await tx.fetch_one("get_fleet_rollout", {"id": rollout_id})
            await self.audit_in(
                tx,
                actor=actor,
                action="fleet.upgrade.start",
                subject=rollout_id,
                detail={"target": target, "channel": channel},
            )
        assert row is not None
        made = self._rollout(row)
        self._rollout_writes += 1
        self._hold_rollout(made, time.monotonic())
        return made

    async def latest_fleet_rollout(self, *, max_age: float = 0.0) -> FleetRollout | None:
        """The newest rollout (None: none yet). With ``max_age`` > 0, this object's copy
        will do while it is at most that many seconds old (the copy of its last read or
        write; see the module's docstring)."""
        if max_age <= 0:
            return await self._read_latest_rollout()
        held = self._rollout_copy
        if held is not None and time.monotonic() - held[1] <= max_age:
            return held[0]
        if self._rollout_reading is None:
            self._rollout_reading = asyncio.Lock()
        async with self._rollout_reading:  # who waited for a read finds its copy
            held = self._rollout_copy
            if held is not None and time.monotonic() - held[1] <= max_age:
                return held[0]
            return await self._read_latest_rollout()

    async def _read_latest_rollout(self) -> FleetRollout | None:
        started = time.monotonic()
        writes = self._rollout_writes
        rows = await self.statement("latest_fleet_rollout")  # one round trip, no BEGIN
        found = self._rollout(rows[0]) if rows else None
        if writes == self._rollout_writes:  # no write of ours overtook the read
            self._hold_rollout(found, started)
        return found

    async def get_fleet_rollout(self, rollout_id: str) -> FleetRollout | None:
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("get_fleet_rollout", {"id": rollout_id})
        return None if row is None else self._rollout(row)

    async def update_fleet_rollout(
        self, rollout: FleetRollout, *, state: str, detail: dict[str, Any]
    ) -> FleetRollout | None:
        """Change ``rollout`` if nobody changed it since it was read (None: somebody did;
        read it again)."""
        params = {
            "id": rollout.id,
            "revision": rollout.revision,
            "state": state,
            "detail": json.dumps(detail),
            "now": self.encode_time(self.now()),
        }
        held = self._rollout_copy
        try:
            async with self.transaction() as tx:
                row = await tx.fetch_one("update_fleet_rollout", params)
        finally:
            self._rollout_writes += 1
            self._rollout_copy = None
        if row is None:  # another process moved it: the copy is stale too
            return None
        moved = self._rollout(row)
        if held is not None and held[0] is not None and held[0].id == moved.id:
            # the copy's age stays that of its read: the write proves this rollout's
            # state, not that no newer one was started elsewhere since
            self._hold_rollout(moved, held[1])
        return moved

    async def store_fleet_wheel(
        self, data: bytes, *, name: str, version: str, actor: str
    ) -> tuple[str, bool]:
        """Keep the corral wheel ``data`` (file name ``name``, of corral ``version``) by
        content; its sha256 in hex, and whether it was stored now (False: the same bytes
        were kept already)."""
        digest = hashlib.sha256(data).hexdigest()
        manifest = {"kind": "corral-wheel", "name": name, "version": version}
        params = {
            "hash": WHEEL_PREFIX + digest,
            "data": data,
            "size": len(data),
            "manifest": self.encode_json(manifest),
            "now": self.encode_time(self.now()),
            "actor": actor,
            "note": name,
        }
        async with self.transaction() as tx:
            stored = await tx.fetch_one("insert_bundle", params) is not None
            if stored:
                await self.audit_in(
                    tx,
                    actor=actor,
                    action="fleet.wheel.store",
                    subject=digest,
                    detail={"name": name, "version": version, "size": len(data)},
                )
        return digest, stored

    async def fleet_wheel(self, sha256: str) -> bytes | None:
        """The bytes of the stored corral wheel whose sha256 is ``sha256`` (hex), if kept."""
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("get_bundle_data", {"hash": WHEEL_PREFIX + sha256})
        return None if row is None else bytes(row["data"])

    async def runs_ended_by_runner(self, since: datetime) -> list[Row]:
        """Runs on runners ended since ``since``: ``runner_id``, ``state``, ``seconds``
        (None when the run never started)."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all(
                "runs_ended_by_runner_since", {"since": self.encode_time(since)}
            )
        found = []
        for row in rows:
            started = None if row["started_at"] is None else self.decode_time(row["started_at"])
            ended = self.decode_time(row["ended_at"])
            seconds = None if started is None else (ended - started).total_seconds()
            found.append({"runner_id": row["runner_id"], "state": row["state"], "seconds": seconds})
        return found

    def _rollout(self, row: Row) -> FleetRollout:
        return FleetRollout(
            id=row["id"],
            target=row["target"],
            channel=row["channel"],
            canary=int(row["canary"]),
            batch_share=float(row["batch_share"]),
            watch_seconds=float(row["watch_seconds"]),
            source=json.loads(row["source"]),
            state=row["state"],
            revision=int(row["revision"]),
            detail=json.loads(row["detail"]),
            created_by=row["created_by"],
            created_at=self.decode_time(row["created_at"]),
            updated_at=self.decode_time(row["updated_at"]),
        )
