"""The fleet's membership: activation tokens, runners, their liveness, and anomalies.

An activation token (``corral fleet tokens create``) and a runner's credential are kept
by their SHA-256 only (``corral.engine.fleet`` makes and hashes them); a presented one is
hashed and looked up by that hash, never compared as text.

Redeeming a token is one statement (``redeem_fleet_token``): of two redemptions at once,
exactly one claims it. The loser is refused (``JoinRefusal``, reason ``reused``) and a
``token_reused`` anomaly records who tried, from where and when, in a transaction of its
own, so the refusal is kept even though the join is not. With ``max_runners``, the join
takes the project row first (``lock_project``): joins under a cap run one at a time, so
the count of registered runners stays under it.

Liveness: a runner is online while its last heartbeat is within the offline window.
``mark_offline_runners`` records each runner that went silent once per outage (it sets
``offline_since``, which a heartbeat clears) with a ``runner_offline`` anomaly, in one
transaction: several control plane processes may run it at once and each outage is
recorded once.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta
from typing import Any

from corral.errors import StoreError
from corral.store._anomalies import record_episode_in
from corral.store._batching import Failed, GroupCommit, Waiting
from corral.store._core import Row, StoreCore, Transaction
from corral.store.records import (
    Anomaly,
    AnomalyKind,
    FleetToken,
    JoinRefusal,
    NewRunner,
    Runner,
    RunnerState,
)

__all__ = ["FleetOps", "TransitionRefused"]

_TOKEN_TIMES = ("created_at", "expires_at", "redeemed_at", "revoked_at")
_RUNNER_TIMES = ("joined_at", "last_heartbeat_at", "offline_since", "revoked_at")
_ANOMALY_TIMES = ("at", "resolved_at")

#: PostgreSQL: how long a runner's heartbeat that finds none in flight waits for others
#: to share its statement (a fleet heartbeats every few seconds; offline is 15 s).
HEARTBEAT_LINGER = 0.02

#: Which states each operator change may start from.
_CHANGES: dict[RunnerState, frozenset[RunnerState]] = {
    RunnerState.REVOKED: frozenset(
        {RunnerState.ACTIVE, RunnerState.CORDONED, RunnerState.DRAINING}
    ),
    RunnerState.DRAINING: frozenset({RunnerState.ACTIVE, RunnerState.CORDONED}),
    RunnerState.CORDONED: frozenset({RunnerState.ACTIVE}),
    RunnerState.ACTIVE: frozenset({RunnerState.CORDONED, RunnerState.DRAINING}),
}
_VERBS = {
    RunnerState.REVOKED: "revoke",
    RunnerState.DRAINING: "drain",
    RunnerState.CORDONED: "cordon",
    RunnerState.ACTIVE: "uncordon",
}


class FleetOps(StoreCore):
    """Activation tokens, runners and anomalies; part of ``Store``."""

    #: PostgreSQL: runners' heartbeats that arrive together share one statement.
    _heartbeats: GroupCommit[dict[str, Any], list[Row]] | None = None

    # -- activation tokens -------------------------------------------------------------

    async def create_fleet_token(
        self,
        token_hash: str,
        *,
        ttl: timedelta,
        labels: tuple[str, ...] = (),
        note: str | None = None,
        actor: str,
    ) -> FleetToken:
        """Record an activation token by its hash, valid for ``ttl`` from now."""
        now = self.now()
        params = {
            "id": f"tok-{secrets.token_hex(5)}",
            "token_hash": token_hash,
            "labels": json.dumps(list(labels)),
            "note": note,
            "created_by": actor,
            "now": self.encode_time(now),
            "expires_at": self.encode_time(now + ttl),
        }
        async with self.transaction() as tx:
            row = await tx.fetch_one("insert_fleet_token", params)
            made = self._fleet_token(self._returned(row, "insert_fleet_token"))
            detail = {"labels": list(labels), "expiresAt": made.expires_at.isoformat()}
            await self.audit_in(
                tx, actor=actor, action="fleet.token.create", subject=made.id, detail=detail
            )
        return made

    async def list_fleet_tokens(self) -> list[FleetToken]:
        """Every activation token, oldest first (the tokens themselves are not kept)."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_fleet_tokens")
        return [self._fleet_token(row) for row in rows]

    async def revoke_fleet_token(self, token_id: str, *, actor: str) -> FleetToken | None:
        """Revoke an unredeemed token (None: no such token). A token already revoked or
        redeemed is returned as it is, unchanged."""
        params = {"id": token_id, "now": self.encode_time(self.now())}
        async with self.transaction() as tx:
            row = await tx.fetch_one("revoke_fleet_token", params)
            if row is None:
                row = await tx.fetch_one("get_fleet_token", {"id": token_id})
                return None if row is None else self._fleet_token(row)
            await self.audit_in(tx, actor=actor, action="fleet.token.revoke", subject=token_id)
        return self._fleet_token(row)

    # -- joining -----------------------------------------------------------------------

    async def _redeem(
        self,
        token_hash: str,
        credential_hash: str,
        runner: NewRunner,
        *,
        max_runners: int | None = None,
    ) -> Runner | JoinRefusal:
        """Claim the token whose hash is ``token_hash`` for a new runner that will
        authenticate with the credential whose hash is ``credential_hash``.

        Refused (``JoinRefusal``) when the token is unknown, expired, revoked or already
        redeemed (then a ``token_reused`` anomaly is recorded), or when ``max_runners``
        runners (not revoked) are registered already; nothing else changes then."""
        runner_id = f"rnr-{secrets.token_hex(6)}"
        now = self.now()
        encoded_now = self.encode_time(now)
        async with self.transaction() as tx:
            if max_runners is not None:
                await self.lock_project(tx)
            row = await tx.fetch_one(
                "redeem_fleet_token",
                {"token_hash": token_hash, "runner_id": runner_id, "now": encoded_now},
            )
            if row is not None:
                token = self._fleet_token(row)
                if max_runners is not None:
                    count = await tx.fetch_one("count_live_runners")
                    registered = int(self._returned(count, "count_live_runners")["n"])
                    if registered >= max_runners:
                        raise _Full(registered, max_runners)  # rolls the redemption back
                params = {
                    "id": runner_id,
                    "name": runner.name,
                    "hostname": runner.hostname,
                    "credential_hash": credential_hash,
                    "labels": json.dumps(sorted({*token.labels, *runner.labels})),
                    "slots": runner.slots,
                    "version": runner.version,
                    "now": encoded_now,
                    "address": runner.address,
                    "token_id": token.id,
                }
                made = await tx.fetch_one("insert_runner", params)
                joined = self._runner(self._returned(made, "insert_runner"))
                await self.audit_in(
                    tx,
                    actor=f"runner:{runner_id}",
                    action="fleet.runner.join",
                    subject=runner_id,
                    detail={"token": token.id, "name": runner.name, "host": runner.hostname},
                )
                return joined
        return await self._join_refused(token_hash, runner, now)

    async def redeem_fleet_token(
        self,
        token_hash: str,
        credential_hash: str,
        runner: NewRunner,
        *,
        max_runners: int | None = None,
    ) -> Runner | JoinRefusal:
        """Claim the token whose hash is ``token_hash`` for a new runner (see ``_redeem``);
        a full fleet is a ``JoinRefusal`` too (reason ``fleet_full``)."""
        try:
            return await self._redeem(token_hash, credential_hash, runner, max_runners=max_runners)
        except _Full as full:
            return JoinRefusal(
                "fleet_full",
                f"the fleet is full: {full.registered} runner(s) registered and maxRunners "
                f"is {full.cap} in the project's config.toml; revoke a runner (`corral "
                "fleet runners revoke ID`) or raise maxRunners, then join again with the "
                "same token (it was not used)",
            )

    async def _join_refused(self, token_hash: str, runner: NewRunner, now: datetime) -> JoinRefusal:
        """Why the token whose hash is ``token_hash`` could not be redeemed; a token
        redeemed already is recorded as a ``token_reused`` anomaly."""
        async with self.transaction() as tx:
            row = await tx.fetch_one("find_fleet_token", {"token_hash": token_hash})
            if row is None:
                return JoinRefusal(
                    "unknown_token",
                    "unknown activation token: check that it was copied whole, or mint a "
                    "new one with `corral fleet tokens create`",
                )
            token = self._fleet_token(row)
            if token.redeemed_at is not None:
                evidence = {
                    "tokenId": token.id,
                    "redeemedAt": token.redeemed_at.isoformat(),
                    "redeemedBy": token.redeemed_by,
                    "at": now.isoformat(),
                    "name": runner.name,
                    "hostname": runner.hostname,
                    "address": runner.address,
                    "version": runner.version,
                }
                await self._anomaly_in(tx, AnomalyKind.TOKEN_REUSED, token.id, evidence)
                return JoinRefusal(
                    "reused",
                    f"activation token {token.id} was already redeemed (by runner "
                    f"{token.redeemed_by} at {token.redeemed_at.isoformat()}); tokens are "
                    "single-use: mint one per runner with `corral fleet tokens create`. "
                    "This attempt is recorded as an anomaly.",
                )
            if token.revoked_at is not None:
                return JoinRefusal(
                    "revoked",
                    f"activation token {token.id} was revoked at "
                    f"{token.revoked_at.isoformat()}; mint a new one with `corral fleet "
                    "tokens create`",
                )
            return JoinRefusal(
                "expired",
                f"activation token {token.id} expired at {token.expires_at.isoformat()}; "
                "mint a new one with `corral fleet tokens create` (--ttl sets how long it "
                "is valid)",
            )

    # -- runners -----------------------------------------------------------------------

    async def runner_by_credential(self, credential_hash: str) -> Runner | None:
        """The runner whose credential hashes to ``credential_hash`` (revoked or not)."""
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one(
                "find_runner_by_credential", {"credential_hash": credential_hash}
            )
        return None if row is None else self._runner(row)

    async def get_runner(self, runner_id: str) -> Runner | None:
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("get_runner", {"id": runner_id})
        return None if row is None else self._runner(row)

    async def list_runners(self) -> list[Runner]:
        """Every runner, revoked ones too, in the order they joined."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_runners")
        return [self._runner(row) for row in rows]

    async def runner_heartbeat(self, runner_id: str, *, version: str) -> Runner | None:
        """Record a heartbeat of ``runner_id`` (None: no such runner, or revoked)."""
        params = {"id": runner_id, "version": version, "now": self.encode_time(self.now())}
        rows = await self.statement("heartbeat_runner", params)
        return self._runner(rows[0]) if rows else None

    async def heartbeat_by_credential(self, credential_hash: str, *, version: str) -> Runner | None:
        """Record a heartbeat of the runner whose credential hashes to
        ``credential_hash``, in one statement (``version`` empty: unchanged). None: no
        such runner, or revoked."""
        params = {
            "credential_hash": credential_hash,
            "version": version,
            "now": self.encode_time(self.now()),
        }
        if self.dialect == "sqlite":
            rows = await self.statement("heartbeat_by_credential", params)
        else:
            if self._heartbeats is None:
                self._heartbeats = GroupCommit(
                    self._record_heartbeats, name="corral-heartbeats", linger=HEARTBEAT_LINGER
                )
            rows = await self._heartbeats.submit(params)
        return self._runner(rows[0]) if rows else None

    async def _record_heartbeats(
        self, batch: list[Waiting[dict[str, Any], list[Row]]]
    ) -> list[list[Row] | Failed]:
        """PostgreSQL: the heartbeats of ``batch`` as one statement
        (``heartbeats_by_credential``); each gets its runner's row, or none (unknown or
        revoked). A runner heard twice in one batch keeps its last version. Should that
        statement fail (a deadlock with a statement that marks runners offline, say), each
        heartbeat is sent alone, with its own outcome."""
        live = [w for w in batch if not w.gone]
        if len(live) <= 1:
            return [[] if w.gone else await self._heartbeat_alone(w.job) for w in batch]
        versions: dict[str, str] = {}
        for waiting in live:
            job = waiting.job
            if job["version"] or job["credential_hash"] not in versions:
                versions[job["credential_hash"]] = job["version"]
        hashes = sorted(versions)
        params = {
            "hashes": hashes,
            "versions": [versions[h] for h in hashes],
            "now": max(w.job["now"] for w in live),
        }
        try:
            rows = await self.statement("heartbeats_by_credential", params)
        except StoreError:
            return [[] if w.gone else await self._heartbeat_alone(w.job) for w in batch]
        by_hash = {row["credential_hash"]: row for row in rows}
        return [
            [by_hash[w.job["credential_hash"]]] if w.job["credential_hash"] in by_hash else []
            for w in batch
        ]

    async def _heartbeat_alone(self, job: dict[str, Any]) -> list[Row] | Failed:
        try:
            return await self.statement("heartbeat_by_credential", job)
        except StoreError as exc:
            return Failed(exc)

    async def set_runner_state(
        self, runner_id: str, state: RunnerState, *, actor: str
    ) -> tuple[Runner | None, bool]:
        """Move ``runner_id`` to ``state`` (revoke, drain, cordon, uncordon): the runner
        as it is after, and whether it changed. A runner already in ``state`` is returned
        unchanged; StoreError when the change is not allowed from its state (a revoked
        runner stays revoked)."""
        async with self.transaction() as tx:
            row = await tx.fetch_one("get_runner", {"id": runner_id})
            if row is None:
                return None, False
            current = self._runner(row)
            if current.state is state:
                return current, False
            if current.state not in _CHANGES[state]:
                raise TransitionRefused(
                    f"runner {runner_id} is {current.state.value}: it cannot be "
                    f"{_VERBS[state]}ed from there"
                    + (
                        "; a revoked runner must join again with a new token"
                        if current.state is RunnerState.REVOKED
                        else ""
                    )
                )
            params = {
                "id": runner_id,
                "state": state.value,
                "expected": current.state.value,
                "now": self.encode_time(self.now()),
            }
            changed = await tx.fetch_one("set_runner_state", params)
            if changed is None:  # changed meanwhile (PostgreSQL): say what it is now
                again = await tx.fetch_one("get_runner", {"id": runner_id})
                return (None if again is None else self._runner(again)), False
            await self.audit_in(
                tx,
                actor=actor,
                action=f"fleet.runner.{_VERBS[state]}",
                subject=runner_id,
                detail={"from": current.state.value},
            )
        return self._runner(changed), True

    async def mark_offline_runners(self, offline_after: float) -> list[Runner]:
        """Runners (not revoked) whose last heartbeat is more than ``offline_after``
        seconds old and that were not marked yet: each is marked offline and recorded as
        a ``runner_offline`` anomaly, once per outage, in one transaction. Returns those
        marked now (whoever runs this at the same moment gets none of them)."""
        now = self.now()
        params = {
            "now": self.encode_time(now),
            "cutoff": self.encode_time(now - timedelta(seconds=offline_after)),
        }
        async with self.transaction(write=False) as tx:  # most looks end here: a read
            if await tx.fetch_one("any_runner_silent", {"cutoff": params["cutoff"]}) is None:
                return []
        async with self.transaction() as tx:
            rows = await tx.fetch_all("mark_runners_offline", params)
            gone = [self._runner(row) for row in rows]
            for runner in gone:
                evidence = {
                    "name": runner.name,
                    "hostname": runner.hostname,
                    "address": runner.address,
                    "lastHeartbeatAt": runner.last_heartbeat_at.isoformat(),
                    "offlineAfterSeconds": offline_after,
                    "markedAt": now.isoformat(),
                }
                await self._anomaly_in(tx, AnomalyKind.RUNNER_OFFLINE, runner.id, evidence)
        return gone

    async def fleet_throughput(self, since: datetime) -> list[Row]:
        """Runs ended since ``since`` by agent and runner (None: the control plane):
        rows of ``agent``, ``runner_id``, ``ended``, ``succeeded``."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all(
                "runs_ended_by_agent_and_runner", {"since": self.encode_time(since)}
            )
        return [
            {
                "agent": row["agent"],
                "runner_id": row["runner_id"],
                "ended": int(row["ended"]),
                "succeeded": int(row["succeeded"] or 0),
            }
            for row in rows
        ]

    async def fleet_throughput_hourly(self, since: datetime) -> list[Row]:
        """Runs ended since ``since`` by UTC hour, agent and runner (None: the control
        plane): rows of ``hour`` (``YYYY-MM-DDTHH``), ``agent``, ``runner_id``, ``ended``."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("runs_ended_by_hour", {"since": self.encode_time(since)})
        return [
            {
                "hour": str(row["hour"]),
                "agent": row["agent"],
                "runner_id": row["runner_id"],
                "ended": int(row["ended"]),
            }
            for row in rows
        ]

    async def live_bundles(self) -> list[Row]:
        """Runs starting or running now by runner (None: the control plane) and the bundle
        they run (None: no bundle was pushed): rows of ``runner_id``, ``bundle``, ``live``."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("live_runs_by_runner_and_bundle")
        return [
            {"runner_id": row["runner_id"], "bundle": row["bundle"], "live": int(row["live"])}
            for row in rows
        ]

    # -- anomalies ---------------------------------------------------------------------

    async def record_anomaly(
        self, kind: AnomalyKind, subject: str, evidence: dict[str, Any] | None = None
    ) -> Anomaly:
        async with self.transaction() as tx:
            return await self._anomaly_in(tx, kind, subject, evidence)

    async def record_episode(
        self,
        kind: AnomalyKind,
        subject: str,
        evidence: dict[str, Any],
        *,
        same: str | None = None,
    ) -> tuple[Anomaly, bool]:
        """Record an occurrence of ``kind`` about ``subject`` once per episode: a new
        anomaly, or the open one's evidence updated (left as it is when ``same`` names an
        evidence key whose value did not change). The anomaly, and whether it is new."""
        async with self.transaction() as tx:
            row, new = await record_episode_in(self, tx, kind, subject, evidence, same=same)
        return self._anomaly(row), new

    async def add_anomaly_evidence(
        self, kind: AnomalyKind, subject: str, run_id: str, extra: dict[str, Any]
    ) -> Anomaly | None:
        """Add ``extra`` to the evidence of the open anomaly of ``kind`` about ``subject``
        if its latest occurrence is run ``run_id``'s; the anomaly after, or None."""
        async with self.transaction() as tx:
            row = await tx.fetch_one("open_anomaly_of", {"kind": kind.value, "subject": subject})
            evidence = None if row is None else self.decode_json(row["evidence"]) or {}
            if row is None or evidence is None or evidence.get("run") != run_id:
                return None
            params = {"id": row["id"], "evidence": self.encode_json({**evidence, **extra})}
            row = await tx.fetch_one("update_anomaly_evidence", params)
        return self._anomaly(self._returned(row, "update_anomaly_evidence"))

    async def list_anomalies(
        self, *, include_resolved: bool = False, limit: int = 100
    ) -> list[Anomaly]:
        """Anomalies, newest first: the open ones, or every one."""
        params = {"include_resolved": include_resolved, "limit": limit}
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_anomalies", params)
        return [self._anomaly(row) for row in rows]

    async def resolve_anomaly(
        self, anomaly_id: int, *, note: str, actor: str
    ) -> tuple[Anomaly | None, bool]:
        """Resolve an open anomaly with ``note``: the anomaly after, and whether it was
        open (None: no such anomaly)."""
        params = {
            "id": anomaly_id,
            "note": note,
            "actor": actor,
            "now": self.encode_time(self.now()),
        }
        async with self.transaction() as tx:
            row = await tx.fetch_one("resolve_anomaly", params)
            if row is None:
                found = await tx.fetch_one("get_anomaly", {"id": anomaly_id})
                return (None if found is None else self._anomaly(found)), False
            await self.audit_in(
                tx,
                actor=actor,
                action="fleet.anomaly.resolve",
                subject=str(anomaly_id),
                detail={"note": note},
            )
        return self._anomaly(row), True

    async def count_open_anomalies(self) -> dict[str, int]:
        """Open anomalies by kind."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("count_open_anomalies")
        return {str(row["kind"]): int(row["n"]) for row in rows}

    async def _anomaly_in(
        self, tx: Transaction, kind: AnomalyKind, subject: str, evidence: dict[str, Any] | None
    ) -> Anomaly:
        params = {
            "kind": kind.value,
            "subject": subject,
            "now": self.encode_time(self.now()),
            "evidence": self.encode_json(evidence),
        }
        row = await tx.fetch_one("insert_anomaly", params)
        return self._anomaly(self._returned(row, "insert_anomaly"))

    # -- rows to records ---------------------------------------------------------------

    def _fleet_token(self, row: Row) -> FleetToken:
        decoded = self._decode_times(row, _TOKEN_TIMES)
        return FleetToken(
            id=decoded["id"],
            labels=tuple(json.loads(decoded["labels"] or "[]")),
            note=decoded["note"],
            created_by=decoded["created_by"],
            created_at=decoded["created_at"],
            expires_at=decoded["expires_at"],
            redeemed_at=decoded["redeemed_at"],
            redeemed_by=decoded["redeemed_by"],
            revoked_at=decoded["revoked_at"],
        )

    def _runner(self, row: Row) -> Runner:
        decoded = self._decode_times(row, _RUNNER_TIMES)
        return Runner(
            id=decoded["id"],
            name=decoded["name"],
            hostname=decoded["hostname"],
            labels=tuple(json.loads(decoded["labels"] or "[]")),
            slots=int(decoded["slots"]),
            version=decoded["version"],
            state=RunnerState(decoded["state"]),
            joined_at=decoded["joined_at"],
            last_heartbeat_at=decoded["last_heartbeat_at"],
            offline_since=decoded["offline_since"],
            revoked_at=decoded["revoked_at"],
            address=decoded["address"],
            token_id=decoded["token_id"],
        )

    def _anomaly(self, row: Row) -> Anomaly:
        decoded = self._decode_times(row, _ANOMALY_TIMES)
        return Anomaly(
            id=int(decoded["id"]),
            kind=AnomalyKind(decoded["kind"]),
            subject=decoded["subject"],
            at=decoded["at"],
            evidence=self.decode_json(decoded["evidence"]),
            resolved_at=decoded["resolved_at"],
            resolved_by=decoded["resolved_by"],
            resolution=decoded["resolution"],
        )


class TransitionRefused(StoreError):
    """A runner's state cannot change that way (a revoked runner stays revoked)."""


class _Full(Exception):
    """Raised inside a join's transaction to roll its redemption back: the fleet is full."""

    def __init__(self, registered: int, cap: int) -> None:
        super().__init__(f"{registered} >= {cap}")
        self.registered = registered
        self.cap = cap
