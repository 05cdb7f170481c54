"""The runner fleet's autoscaler (migration 0027): the lease of the one scheduler that
sizes the fleet, the runners it started through its provider, and what it reads each
tick (runs waiting per agent that may start now, and those held back with why; busy
slots per runner). Its decisions go to the pool decision log (0022) under the name
``FLEET``."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from corral.store._time import require_aware
from corral.store._usage import UsageOps, cap_refusal, project_cap_refusal
from corral.store.records import AgentState, ProjectState

__all__ = ["FLEET", "MEMBER_STATES", "FleetDemand", "FleetMember", "FleetScaleOps"]

#: The name the fleet's decisions are recorded under in the pool decision log.
FLEET = ":fleet"

MEMBER_STATES = ("starting", "active", "draining", "stopped", "failed")


@dataclasses.dataclass(frozen=True, slots=True)
class FleetMember:
    """A runner the fleet autoscaler started through its provider."""

    name: str
    provider: str
    host: str
    handle: str | None
    token_id: str | None
    runner_id: str | None
    state: str
    started_at: datetime
    ended_at: datetime | None
    detail: str | None

    @property
    def live(self) -> bool:
        return self.state in ("starting", "active", "draining")


@dataclasses.dataclass(frozen=True, slots=True)
class FleetDemand:
    """One reading of the work for the fleet's runners: what the fleet autoscaler (and
    the pools of agents that run on runners) size themselves by."""

    #: Items waiting per agent whose runs may start now.
    queued: dict[str, int]
    #: Items waiting per agent whose runs may not start now: (how many, why): the
    #: project or the agent paused, the agent disabled or gone, a daily cost cap reached.
    held: dict[str, tuple[int, str]]
    #: Live runs per runner id (its busy slots) ...
    busy: dict[str, int]
    #: ... and per runner id and agent.
    busy_by_agent: dict[str, dict[str, int]]
    #: Why no run of any agent may start now (the project paused, or its daily cost cap
    #: reached), or None.
    stop: str | None = None
    #: True when ``stop`` is the project's daily cost cap.
    budget_stop: bool = False
    #: The agents in ``held`` that a daily cost cap (theirs or the project's) holds back.
    budget_held: frozenset[str] = frozenset()

    def held_by_budget(self, agents: Collection[str]) -> dict[str, tuple[int, str]]:
        """The held items of ``agents`` that a daily cost cap holds back."""
        return {a: h for a, h in self.held.items() if a in agents and a in self.budget_held}


class FleetScaleOps(UsageOps):
    """The fleet autoscaler's lease, members and readings; part of ``Store``."""

    async def take_fleet_scaler_lease(self, owner: str, *, lease_seconds: float) -> bool:
        """Take or renew the fleet autoscaler's lease for ``owner``; False when another
        live scheduler holds it."""
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        now = self.now()
        params = {
            "owner": owner,
            "now": self.encode_time(now),
            "until": self.encode_time(now + timedelta(seconds=lease_seconds)),
        }
        async with self.transaction() as tx:
            row = await tx.fetch_one("take_fleet_scaler_lease", params)
        return row is not None and row["owner"] == owner

    async def release_fleet_scaler_lease(self, owner: str) -> int:
        async with self.transaction() as tx:
            return await tx.execute("release_fleet_scaler_lease", {"owner": owner})

    async def fleet_scaler_owner(self) -> str | None:
        """The scheduler holding the lease now (None: nobody, or it lapsed)."""
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("fleet_scaler_lease")
        if row is None or row["owner"] is None or row["lease_until"] is None:
            return None
        if self.decode_time(row["lease_until"]) < self.now():
            return None
        return str(row["owner"])

    async def fleet_demand(self) -> FleetDemand:
        """The items waiting per agent, split into those whose runs may start now and
        those held back (with why, as a claim would refuse them: paused, disabled or
        gone, over a daily cost cap), and the live runs per runner: one reading (one
        statement for the day's spend, whatever the number of agents)."""
        async with self.transaction(write=False) as tx:
            project = ProjectState.from_row(
                self._returned(await tx.fetch_one("get_project"), "get_project")
            )
            agents = [AgentState.from_row(r) for r in await tx.fetch_all("fleet_queued_by_agent")]
            busy_rows = await tx.fetch_all("fleet_busy_by_runner")
            capped = project.daily_cost_cap is not None or any(
                a.daily_cost_cap is not None for a in agents
            )
            spent = await self._spent_today_by_agent(tx) if capped else {}
        now = self.now()
        budget = project_cap_refusal(project, sum(spent.values()), now)
        stop = "the project is paused" if project.paused else budget
        queued: dict[str, int] = {}
        held: dict[str, tuple[int, str]] = {}
        by_budget: set[str] = set()
        for agent in agents:
            why = stop or _held(agent)
            if why is None:
                why = cap_refusal(agent, spent.get(agent.agent, 0.0), now)
                if why is not None:
                    by_budget.add(agent.agent)
            elif budget is not None and why == budget:
                by_budget.add(agent.agent)
            if why is None:
                queued[agent.agent] = agent.queued
            else:
                held[agent.agent] = (agent.queued, why)
        busy: dict[str, int] = {}
        by_agent: dict[str, dict[str, int]] = {}
        for row in busy_rows:
            n = int(row["n"])
            busy[row["runner_id"]] = busy.get(row["runner_id"], 0) + n
            by_agent.setdefault(row["runner_id"], {})[row["agent"]] = n
        budget_stop = stop is not None and stop == budget
        return FleetDemand(queued, held, busy, by_agent, stop, budget_stop, frozenset(by_budget))

    async def add_fleet_member(
        self, name: str, *, provider: str, host: str, token_id: str | None
    ) -> FleetMember:
        params = {
            "name": name,
            "provider": provider,
            "host": host,
            "token_id": token_id,
            "now": self.encode_time(self.now()),
        }
        async with self.transaction() as tx:
            await tx.execute("insert_fleet_member", params)
        found = [m for m in await self.fleet_members() if m.name == name]
        return found[0]

    async def update_fleet_member(
        self,
        name: str,
        *,
        state: str,
        handle: str | None = None,
        runner_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        if state not in MEMBER_STATES:
            raise ValueError(f"state must be one of {', '.join(MEMBER_STATES)}; got {state!r}")
        ended = self.encode_time(self.now()) if state in ("stopped", "failed") else None
        params = {
            "name": name,
            "state": state,
            "handle": handle,
            "runner_id": runner_id,
            "ended_at": ended,
            "detail": detail,
        }
        async with self.transaction() as tx:
            await tx.execute("update_fleet_member", params)

    async def fleet_members(self, *, live_only: bool = False) -> list[FleetMember]:
        """The runners the autoscaler started, oldest first."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_fleet_members")
        members = [
            FleetMember(
                name=row["name"],
                provider=row["provider"],
                host=row["host"],
                handle=row["handle"],
                token_id=row["token_id"],
                runner_id=row["runner_id"],
                state=row["state"],
                started_at=self.decode_time(row["started_at"]),
                ended_at=None if row["ended_at"] is None else self.decode_time(row["ended_at"]),
                detail=row["detail"],
            )
            for row in rows
        ]
        return [m for m in members if m.live] if live_only else members

    async def record_fleet_decision(
        self,
        owner: str,
        *,
        size: int,
        desired: int,
        policy: str,
        reason: str,
        inputs: Mapping[str, Any],
    ) -> None:
        """Record one fleet autoscaler decision (runners ``size`` -> ``desired``) in the
        pool decision log, under ``FLEET``."""
        direction = "grow" if desired > size else "shrink" if desired < size else "hold"
        params = {
            "agent": FLEET,
            "decided_at": self.encode_time(self.now()),
            "scheduler_id": owner,
            "policy": policy,
            "size": max(size, 0),
            "desired": max(desired, 0),
            "direction": direction,
            "reason": reason,
            "inputs": self.encode_json(dict(inputs)),
        }
        async with self.transaction() as tx:
            await tx.execute("insert_pool_decision", params)

    async def prune_fleet_members(self, older_than: datetime) -> int:
        """Forget the members that ended (stopped or failed) before ``older_than``."""
        params = {"older_than": self.encode_time(require_aware(older_than, "older_than"))}
        async with self.transaction() as tx:
            return await tx.execute("prune_fleet_members", params)


def _held(agent: AgentState) -> str | None:
    """Why no run of ``agent`` may be claimed now (paused, disabled, gone), or None."""
    if not agent.present:
        return f"agent {agent.agent!r} is no longer in the project"
    if not agent.enabled:
        return f"agent {agent.agent!r} is disabled by an operator"
    if agent.scale == 0:
        return f"agent {agent.agent!r} is disabled (scale = 0)"
    if agent.paused:
        return f"agent {agent.agent!r} is paused"
    return None
