"""Rollouts: a pushed bundle run by a share of its agents' runs before it is current.

``publish_canary`` stores a bundle without moving the head and starts a rollout from the
current bundle (the baseline) to it (the candidate), for the agents whose own bundle
differs. While it runs, ``assign_canary`` moves the runs a claim chose for the canary to
the candidate bundle, in one statement that assigns nothing once the rollout has ended
(so a rollback leaves the baseline the only version for new runs; runs already started
finish). ``end_rollout`` ends it in one statement (only one of several evaluators, or an
operator, wins); promoting moves the head to the candidate in the same transaction, only
while the head is still the baseline (else it halts). A plain push or apply while a rollout
runs halts it (``_bundles.py``), so a promotion never puts back an older bundle.
Every step is in the audit log: ``rollout.start``, ``rollout.promote``,
``rollout.rollback``, ``rollout.halt``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from corral.errors import StoreConflict
from corral.store._bundles import BUNDLE, BundleOps, _check_hash, _check_manifest
from corral.store._core import Row

__all__ = ["ROLLOUT_STATES", "Rollout", "RolloutOps"]

ROLLOUT_STATES = ("running", "promoted", "rolled_back", "halted")
_ENDINGS = {
    "promoted": "rollout.promote",
    "rolled_back": "rollout.rollback",
    "halted": "rollout.halt",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Rollout:
    id: int
    baseline: str
    candidate: str
    agents: tuple[str, ...]
    share: float
    rule: dict[str, Any]
    state: str
    created_at: datetime
    created_by: str
    ended_at: datetime | None = None
    ended_by: str | None = None
    reason: str | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "agents": list(self.agents),
            "share": self.share,
            "rule": self.rule,
            "state": self.state,
            "createdAt": self.created_at.isoformat(),
            "createdBy": self.created_by,
            "endedAt": self.ended_at.isoformat() if self.ended_at else None,
            "endedBy": self.ended_by,
            "reason": self.reason,
        }


class RolloutOps(BundleOps):
    """Canary rollouts of bundles; part of ``Store``."""

    async def publish_canary(
        self,
        hash_: str,
        data: bytes,
        manifest: dict[str, Any],
        *,
        share: float,
        rule: dict[str, Any],
        actor: str,
        note: str | None = None,
    ) -> Rollout:
        """Store bundle ``data`` (unless stored) and start a rollout of it to ``share`` of
        the runs of the agents whose bundle it changes. StoreConflict when no bundle is
        current yet, when it changes no agent, or while another rollout runs."""
        _check_hash(hash_)
        _check_manifest(manifest)
        if not 0 < share <= 1:
            raise ValueError(f"a canary share is above 0 and at most 1, got {share}")
        if "sha256:" + hashlib.sha256(data).hexdigest() != hash_:
            raise ValueError(f"the bytes given for bundle {hash_} do not hash to it")
        now = self.encode_time(self.now())
        params: dict[str, Any] = {
            "hash": hash_,
            "data": data,
            "size": len(data),
            "manifest": self.encode_json(manifest),
            "now": now,
            "actor": actor,
            "note": note,
        }
        async with self.transaction() as tx:
            running = await tx.fetch_one("running_rollout")
            if running is not None:
                raise StoreConflict(
                    f"rollout {running['id']} is running; `corral rollout promote` or "
                    "`corral rollout rollback` ends it before another canary starts"
                )
            head = await tx.fetch_one("get_bundle_head")
            if head is None:
                raise StoreConflict(
                    "no bundle is current yet: a canary is compared with the current "
                    "bundle, so `corral push` (without --canary) the first one"
                )
            baseline = self._bundle_from_row(
                self._returned(await tx.fetch_one("get_bundle", {"hash": head["hash"]}), "get")
            )
            agents = manifest.get("agents") or {}
            changed = sorted(
                name for name, h in agents.items() if baseline.agents.get(name) != str(h)
            )
            if baseline.hash == hash_ or not changed:
                raise StoreConflict(
                    f"bundle {hash_} changes no agent of the current bundle "
                    f"{baseline.hash}: nothing to roll out"
                )
            stored = await tx.fetch_one("insert_bundle", params) is not None
            if stored:
                await self.audit_in(
                    tx,
                    actor=actor,
                    action="bundle.push",
                    subject=hash_,
                    detail={"size": len(data), "note": note},
                )
            row = await tx.fetch_one(
                "insert_rollout",
                {
                    "baseline": baseline.hash,
                    "candidate": hash_,
                    "agents": self.encode_json(changed),
                    "share": share,
                    "rule": self.encode_json(rule),
                    "now": now,
                    "actor": actor,
                },
            )
            rollout = self._rollout_from_row(self._returned(row, "insert_rollout"))
            await self.audit_in(
                tx,
                actor=actor,
                action="rollout.start",
                subject=str(rollout.id),
                detail={
                    "baseline": baseline.hash,
                    "candidate": hash_,
                    "agents": changed,
                    "share": share,
                    "rule": rule,
                },
            )
        self.changes.notify(BUNDLE)
        return rollout

    async def running_rollout(self) -> Rollout | None:
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("running_rollout")
        return None if row is None else self._rollout_from_row(row)

    async def get_rollout(self, rollout_id: int) -> Rollout | None:
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("get_rollout", {"id": rollout_id})
        return None if row is None else self._rollout_from_row(row)

    async def list_rollouts(self, *, limit: int = 20) -> list[Rollout]:
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_rollouts", {"limit": limit})
        return [self._rollout_from_row(row) for row in rows]

    async def assign_canary(self, rollout_id: int, run_ids: Collection[str]) -> set[str]:
        """Record the canary as the bundle of runs ``run_ids`` (just claimed) while rollout
        ``rollout_id`` runs; the ids it did assign (none once it has ended)."""
        if not run_ids:
            return set()
        params = {"rollout": rollout_id, "ids": self.encode_list(sorted(run_ids))}
        rows = await self.statement("assign_canary", params)
        return {str(row["id"]) for row in rows}

    async def end_rollout(
        self, rollout_id: int, state: str, *, actor: str, reason: str
    ) -> Rollout | None:
        """End rollout ``rollout_id`` as ``state`` (promoted: the candidate becomes the
        current bundle, in the same transaction, if the head is still the baseline; else
        the rollout is halted, its state says so); None when it was not running (another
        evaluator or operator, or a push, ended it first)."""
        if state not in _ENDINGS:
            raise ValueError(f"a rollout ends promoted, rolled_back or halted, not {state!r}")
        params = {
            "id": rollout_id,
            "state": state,
            "now": self.encode_time(self.now()),
            "actor": actor,
            "reason": reason,
        }
        async with self.transaction() as tx:
            if state == "promoted":
                # Only over its baseline: a head moved since (by any path) stays current.
                found = await tx.fetch_one("get_rollout", {"id": rollout_id})
                head = await tx.fetch_one("get_bundle_head")
                if found is not None and (head is None or head["hash"] != found["baseline"]):
                    current = None if head is None else head["hash"]
                    state = params["state"] = "halted"
                    params["reason"] = (
                        f"not promoted: the current bundle is {current}, no longer the "
                        f"baseline {found['baseline']}"
                    )
            row = await tx.fetch_one("end_rollout", params)
            if row is None:
                return None
            rollout = self._rollout_from_row(row)
            await self.audit_in(
                tx,
                actor=actor,
                action=_ENDINGS[state],
                subject=str(rollout_id),
                detail={"candidate": rollout.candidate, "reason": params["reason"]},
            )
            if state == "promoted":
                head = {"hash": rollout.candidate, "now": params["now"], "actor": actor}
                await tx.fetch_one("set_bundle_head", head)
                await self.audit_in(
                    tx, actor=actor, action="bundle.apply", subject=rollout.candidate
                )
        self.changes.notify(BUNDLE)
        return rollout

    async def rollout_runs(self, rollout: Rollout) -> list[Row]:
        """The runs of ``rollout``'s agents on its two bundles since it started."""
        params = {
            "since": self.encode_time(rollout.created_at),
            "baseline": rollout.baseline,
            "candidate": rollout.candidate,
        }
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("rollout_runs", params)
        agents = set(rollout.agents)
        return [row for row in rows if row["agent"] in agents]

    async def anomalies_since(self, since: datetime) -> Sequence[Row]:
        async with self.transaction(write=False) as tx:
            return await tx.fetch_all("anomalies_since", {"since": self.encode_time(since)})

    def _rollout_from_row(self, row: Row) -> Rollout:
        agents = row["agents"]
        if isinstance(agents, str):
            import json

            agents = json.loads(agents)
        rule = self.decode_json(row["rule"]) or {}
        return Rollout(
            id=int(row["id"]),
            baseline=str(row["baseline"]),
            candidate=str(row["candidate"]),
            agents=tuple(str(a) for a in agents),
            share=float(row["share"]),
            rule=dict(rule),
            state=str(row["state"]),
            created_at=self.decode_time(row["created_at"]),
            created_by=str(row["created_by"]),
            ended_at=None if row["ended_at"] is None else self.decode_time(row["ended_at"]),
            ended_by=row["ended_by"],
            reason=row["reason"],
        )
