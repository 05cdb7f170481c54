"""Agents' pools (migration 0022): the size the autoscaler decided, its decider's lease,
and the decisions with their inputs.

Every claim reads ``corral_agents.pool_size`` (at most ``min(scale, pool_size)`` runs of
the agent at once), so the size is exact across processes the way ``scale`` is. One
scheduler decides an agent's size: the one holding the pool's lease (``take_pool_lease``),
which it renews at every tick; a stopped or dead scheduler's lease lapses and the next
scheduler to tick takes it. Only the holder's write of a size lands (``set_pool_size``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from corral.store._time import require_aware
from corral.store._usage import UsageOps
from corral.store.records import AgentState, PoolDecision, PoolSnapshot, PoolState, ProjectState

__all__ = ["DIRECTIONS", "PoolOps"]

DIRECTIONS = ("grow", "shrink", "hold")
#: Above every decision's id (``pool_decisions`` without ``before``).
_NO_ID = 2**63 - 1
#: Before every decision (``pool_decisions`` without ``since``).
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class PoolOps(UsageOps):
    """Pool sizes, their leases and their decision log; part of ``Store``."""

    async def take_pool_lease(
        self, agent: str, owner: str, *, lease_seconds: float
    ) -> PoolState | None:
        """Take or renew the lease on ``agent``'s pool for ``owner``; the pool as it is
        now, or None when another live scheduler holds it (or the agent has no pool)."""
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        now = self.now()
        params = {
            "agent": agent,
            "owner": owner,
            "now": self.encode_time(now),
            "until": self.encode_time(now + timedelta(seconds=lease_seconds)),
        }
        async with self.transaction() as tx:
            row = await tx.fetch_one("take_pool_lease", params)
        if row is None:
            return None
        return PoolState(
            agent=row["agent"],
            scale=int(row["scale"]),
            size=int(row["pool_size"]),
            queued=int(row["queued"]),
            running=int(row["running"]),
            owner=owner,
            lease_until=now + timedelta(seconds=lease_seconds),
        )

    async def observe_pool(self, agent: str, since: datetime, until: datetime) -> PoolSnapshot:
        """``agent``'s live runs, what arrived and ended in (``since``, ``until``], the
        project cap's room and whether a daily cost cap stops new runs: one autoscaler
        tick's reading (consecutive ticks pass the previous ``until`` as ``since``, so an
        arrival is counted once)."""
        at = {
            "agent": agent,
            "since": self.encode_time(require_aware(since, "since")),
            "until": self.encode_time(require_aware(until, "until")),
        }
        async with self.transaction(write=False) as tx:
            busy = await tx.fetch_all("pool_busy_runs", {"agent": agent})
            arrived = await tx.fetch_one("pool_arrivals", at)
            ended = await tx.fetch_all("pool_completions", at)
            room = await tx.fetch_one("pool_project_room", {"agent": agent})
            project = ProjectState.from_row(
                self._returned(await tx.fetch_one("get_project"), "get_project")
            )
            state = await tx.fetch_one("agent_state", {"agent": agent})
            budget = None
            if state is not None:
                budget = await self.cost_cap_refusal(tx, project, AgentState.from_row(state))
        durations = []
        for row in ended:
            began = row["started_at"] or row["created_at"]
            if began is not None and row["ended_at"] is not None:
                took = self.decode_time(row["ended_at"]) - self.decode_time(began)
                durations.append(max(took.total_seconds(), 0.0))
        cap_room = None
        if room is not None and room["scale_cap"] is not None:
            cap_room = int(room["scale_cap"]) - int(room["others"])
        return PoolSnapshot(
            busy=tuple((row["id"], self.decode_time(row["created_at"])) for row in busy),
            arrivals=int(arrived["n"]) if arrived is not None else 0,
            durations=tuple(durations),
            cap_room=cap_room,
            budget_stop=budget,
        )

    async def set_pool_size(
        self,
        agent: str,
        owner: str,
        *,
        size: int,
        previous: int,
        policy: str,
        reason: str,
        inputs: Mapping[str, Any],
        record: bool,
    ) -> int | None:
        """Write ``owner``'s decided ``size`` for ``agent`` (never above its scale) and,
        with ``record``, the decision (from ``previous``, with its reason and inputs), in
        one transaction. The size now in force, or None when ``owner`` no longer holds
        the pool's lease (nothing was written)."""
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        async with self.transaction() as tx:
            row = await tx.fetch_one(
                "set_pool_size", {"agent": agent, "owner": owner, "size": size}
            )
            if row is None:
                return None
            now = int(row["pool_size"])
            if record:
                direction = "grow" if now > previous else "shrink" if now < previous else "hold"
                params = {
                    "agent": agent,
                    "decided_at": self.encode_time(self.now()),
                    "scheduler_id": owner,
                    "policy": policy,
                    "size": previous,
                    "desired": now,
                    "direction": direction,
                    "reason": reason,
                    "inputs": self.encode_json(dict(inputs)),
                }
                await tx.execute("insert_pool_decision", params)
            return now

    async def release_pool_leases(self, owner: str) -> int:
        """Give up every pool lease ``owner`` holds (a scheduler stopping); how many."""
        async with self.transaction() as tx:
            return await tx.execute("release_pool_leases", {"owner": owner})

    async def pool_states(self) -> list[PoolState]:
        """Every agent with a pool (a ``[scale]`` table), by name."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("pool_states")
        return [
            PoolState(
                agent=row["agent"],
                scale=int(row["scale"]),
                size=int(row["pool_size"]),
                queued=int(row["queued"]),
                running=int(row["running"]),
                owner=row["pool_owner"],
                lease_until=(
                    None
                    if row["pool_lease_until"] is None
                    else self.decode_time(row["pool_lease_until"])
                ),
            )
            for row in rows
        ]

    async def pool_decisions(
        self,
        agent: str | None = None,
        *,
        limit: int = 50,
        before: int | None = None,
        since: datetime | None = None,
    ) -> list[PoolDecision]:
        """The recorded decisions, newest first (of ``agent`` only, if given): those with
        an id below ``before`` (the next page after a decision), recorded at ``since`` or
        later."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        params: dict[str, Any] = {
            "limit": limit,
            "before": _NO_ID if before is None else before,
            "since": self.encode_time(_EPOCH if since is None else require_aware(since, "since")),
        }
        async with self.transaction(write=False) as tx:
            if agent is None:
                rows = await tx.fetch_all("list_pool_decisions", params)
            else:
                rows = await tx.fetch_all("list_agent_pool_decisions", params | {"agent": agent})
        decisions = []
        for row in rows:
            inputs = row["inputs"]
            if isinstance(inputs, str | bytes):
                inputs = json.loads(inputs)
            decisions.append(
                PoolDecision(
                    id=int(row["id"]),
                    agent=row["agent"],
                    decided_at=self.decode_time(row["decided_at"]),
                    scheduler_id=row["scheduler_id"],
                    policy=row["policy"],
                    size=int(row["size"]),
                    desired=int(row["desired"]),
                    direction=row["direction"],
                    reason=row["reason"],
                    inputs=dict(inputs or {}),
                )
            )
        return decisions

    async def pool_decision_counts(self) -> dict[tuple[str, str], int]:
        """Decisions kept (within the retention), by (agent, direction)."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("pool_decision_counts")
        return {(row["agent"], row["direction"]): int(row["n"]) for row in rows}

    async def prune_pool_decisions(self, older_than: datetime) -> int:
        """Delete decisions recorded before ``older_than``; how many."""
        params = {"older_than": self.encode_time(require_aware(older_than, "older_than"))}
        async with self.transaction() as tx:
            return await tx.execute("prune_pool_decisions", params)
