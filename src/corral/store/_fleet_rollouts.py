"""Fleet rollouts: `corral fleet upgrade` moves the runners to a corral version in steps.

A rollout is one row: what it rolls out (target version, channel, where the runners get
it), how (canary count, batch share, watch window) and its progress (``state`` and
``detail``, a JSON document of the steps and each runner's report). Every change is a
compare and set on ``revision``: of several control plane processes advancing the same
rollout at once, one wins and the others read it again.
"""

from __future__ import annotations

import hashlib
import json
import secrets
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
        return self._rollout(row)

    async def latest_fleet_rollout(self) -> FleetRollout | None:
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("latest_fleet_rollout")
        return None if row is None else self._rollout(row)

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
        async with self.transaction() as tx:
            row = await tx.fetch_one("update_fleet_rollout", params)
        return None if row is None else self._rollout(row)

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
