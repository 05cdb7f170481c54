"""Control state: the agents and their caps, the project row, the scheduler registry.

Changes to agents and to the project take the project lock (see ``_base``), so a claim
never sees half of a change and never counts against a cap that is being changed.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import timedelta

from corral.errors import StoreConflict, StoreError
from corral.store._core import StoreCore
from corral.store.records import AgentSpec, AgentState, ProjectState, SchedulerInfo, SchedulerState

__all__ = ["ControlOps"]


class ControlOps(StoreCore):
    """Agents, the project and schedulers; part of ``Store``."""

    # -- the project and its agents ----------------------------------------------------

    async def sync_project(
        self,
        specs: Sequence[AgentSpec],
        *,
        scale_cap: int | None,
        max_attempts: int,
        max_reruns: int,
        daily_cost_cap: float | None = None,
    ) -> None:
        """Make the store's agents and limits those of the configuration.

        Every agent in ``specs`` gets its scale and queue size (its paused and enabled
        flags are kept) and is present; agents not in ``specs`` are marked not present
        (their queued items stay, undispatched). The project's pause flag is kept.
        """
        _check_limits(scale_cap=scale_cap, max_attempts=max_attempts, max_reruns=max_reruns)
        if daily_cost_cap is not None and daily_cost_cap < 0:
            raise ValueError(f"daily_cost_cap must be None or >= 0, got {daily_cost_cap}")
        names = [spec.agent for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"sync_project: an agent is named twice in {names}")
        async with self.transaction() as tx:
            await self.lock_project(tx)
            now = self.encode_time(self.now())
            for spec in specs:
                params = {
                    "agent": spec.agent,
                    "scale": spec.scale,
                    "queue_size": spec.queue_size,
                    "daily_cost_cap": spec.daily_cost_cap,
                    "pool_min": spec.pool_min,
                }
                await tx.execute("upsert_agent", params | {"now": now})
            await tx.execute("mark_absent_agents", {"agents": self.encode_list(names), "now": now})
            limits = {
                "scale_cap": scale_cap,
                "max_attempts": max_attempts,
                "max_reruns": max_reruns,
                "daily_cost_cap": daily_cost_cap,
            }
            await tx.execute("update_project", limits | {"now": now})

    async def set_agent_scale(self, agent: str, scale: int) -> AgentState:
        """Change an agent's scale now; running runs above a lowered scale finish normally."""
        if scale < 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        return await self._set_agent(agent, "set_agent_scale", {"scale": scale}, "scale")

    async def set_enabled(self, agent: str, enabled: bool) -> AgentState:
        """Enable or disable an agent (an operator's switch; a disabled agent's triggers
        are rejected with a reason)."""
        return await self._set_agent(agent, "set_agent_enabled", {"enabled": enabled}, "enable")

    async def set_paused(self, agent: str | None, paused: bool) -> None:
        """Pause or resume dispatch of one agent, or of the whole project (``None``).

        Pausing stops dispatch, never intake: paused agents still accept items.
        """
        if agent is None:
            async with self.transaction() as tx:
                await self.lock_project(tx)
                now = self.encode_time(self.now())
                await tx.execute("set_project_paused", {"paused": paused, "now": now})
            return
        await self._set_agent(agent, "set_agent_paused", {"paused": paused}, "pause")

    async def agent_states(self) -> list[AgentState]:
        """Every agent the store knows, by name, with its queued and active counts."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("agent_states")
        return [AgentState.from_row(row) for row in rows]

    async def project_state(self) -> ProjectState:
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("get_project")
        return ProjectState.from_row(self._returned(row, "get_project"))

    async def _set_agent(
        self, agent: str, query: str, params: dict[str, object], what: str
    ) -> AgentState:
        async with self.transaction() as tx:
            await self.lock_project(tx)
            now = self.encode_time(self.now())
            if not await tx.execute(query, {"agent": agent, "now": now} | params):
                raise StoreConflict(
                    f"cannot {what} agent {agent!r}: no such agent in {self.url} "
                    "(agents are recorded when a scheduler starts with the project)"
                )
            row = await tx.fetch_one("agent_state", {"agent": agent})
        return AgentState.from_row(self._returned(row, "agent_state"))

    # -- schedulers --------------------------------------------------------------------

    async def register_scheduler(
        self, *, host: str, pid: int, gateway_url: str | None
    ) -> SchedulerInfo:
        """Record a starting scheduler (state running); its id owns the leases it takes."""
        params = {
            "id": f"{host}-{pid}-{secrets.token_hex(3)}",
            "host": host,
            "pid": pid,
            "gateway_url": gateway_url,
            "now": self.encode_time(self.now()),
        }
        async with self.transaction() as tx:
            row = await tx.fetch_one("register_scheduler", params)
        return self.scheduler_from_row(self._returned(row, "register_scheduler"))

    async def set_scheduler_state(self, scheduler_id: str, state: SchedulerState | str) -> None:
        """Record a scheduler's state (running, draining, stopped); also a heartbeat."""
        params = {
            "id": scheduler_id,
            "state": SchedulerState(state).value,
            "now": self.encode_time(self.now()),
        }
        async with self.transaction() as tx:
            changed = await tx.execute("set_scheduler_state", params)
        if not changed:
            raise StoreError(f"no scheduler {scheduler_id!r} in {self.url}")

    async def list_schedulers(
        self, *, live_only: bool = False, heartbeat_within: float = 300.0
    ) -> list[SchedulerInfo]:
        """Registered schedulers, oldest first.

        ``live_only``: only those running or draining whose last heartbeat is at most
        ``heartbeat_within`` seconds old (a killed scheduler stops heartbeating).
        """
        async with self.transaction(write=False) as tx:
            if live_only:
                since = self.now() - timedelta(seconds=heartbeat_within)
                since_param = {"since": self.encode_time(since)}
                rows = await tx.fetch_all("list_live_schedulers", since_param)
            else:
                rows = await tx.fetch_all("list_schedulers")
        return [self.scheduler_from_row(row) for row in rows]


def _check_limits(*, scale_cap: int | None, max_attempts: int, max_reruns: int) -> None:
    if scale_cap is not None and scale_cap < 0:
        raise ValueError(f"scale_cap must be None or >= 0, got {scale_cap}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    if max_reruns < 0:
        raise ValueError(f"max_reruns must be >= 0, got {max_reruns}")
