"""What runs spend: token counts and dollars per run, totals per agent and day, caps.

A built-in harness run writes its running totals after every model turn
(``record_usage``), so a day's spend counts runs still going. A run's spend belongs to
the UTC day it was created on. The daily caps (an agent's, the project's) are checked
when a trigger is queued, inside the enqueue transaction: once a day's spend reaches a
cap, new items are rejected with a reason that says which cap, how much was spent, and
when the day turns.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from corral.store._core import StoreCore, Transaction
from corral.store.records import AgentState, ProjectState, Run, UsageTotal

__all__ = ["UsageOps", "cap_refusal", "day_start", "project_cap_refusal"]


def day_start(moment: datetime) -> datetime:
    """Midnight UTC at the start of ``moment``'s UTC day."""
    utc = moment.astimezone(UTC)
    return utc.replace(hour=0, minute=0, second=0, microsecond=0)


def _until(now: datetime) -> str:
    left = day_start(now) + timedelta(days=1) - now
    minutes = max(1, int(left.total_seconds() // 60))
    return f"{minutes // 60}h {minutes % 60:02d}m"


class UsageOps(StoreCore):
    """Token and cost accounting and the daily caps; part of ``Store``."""

    async def record_usage(
        self,
        run_id: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int,
        cache_write_tokens: int,
        cost_usd: float | None,
        budget: str | None = None,
    ) -> Run | None:
        """Set a run's totals so far (absolute values) and, once one stopped it, the
        budget. None when there is no such run."""
        params = {
            "id": run_id,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_tokens": cache_read_tokens,
            "cache_write_tokens": cache_write_tokens,
            "cost_usd": cost_usd,
            "budget": budget,
        }
        async with self.transaction() as tx:
            row = await tx.fetch_one("record_usage", params)
        return None if row is None else self.run_from_row(row)

    async def spent_today(self, agent: str | None = None) -> float:
        """Dollars spent since midnight UTC, by ``agent``'s runs or by all of them."""
        async with self.transaction(write=False) as tx:
            return await self._spent_since(tx, day_start(self.now()), agent)

    async def usage_by_day(self, *, days: int = 7, agent: str | None = None) -> list[UsageTotal]:
        """Totals per agent and UTC day, newest day first, for today and the
        ``days - 1`` days before it."""
        if days < 1:
            raise ValueError(f"days must be >= 1, got {days}")
        since = day_start(self.now()) - timedelta(days=days - 1)
        params = {"since": self.encode_time(since), "agent": agent}
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("usage_by_day", params)
        return [UsageTotal.from_row(row) for row in rows]

    async def _spent_since(self, tx: Transaction, since: datetime, agent: str | None) -> float:
        params = {"since": self.encode_time(since), "agent": agent}
        row = self._returned(await tx.fetch_one("spend_since", params), "spend_since")
        return float(row["cost"])

    async def daily_cap_refusal(self, agent: str) -> str | None:
        """Why a run of ``agent`` may not start today, if a daily cost cap is reached
        (for items queued before it was)."""
        async with self.transaction(write=False) as tx:
            project = ProjectState.from_row(
                self._returned(await tx.fetch_one("get_project"), "get_project")
            )
            row = await tx.fetch_one("agent_state", {"agent": agent})
            if row is None:
                return None
            return await self.cost_cap_refusal(tx, project, AgentState.from_row(row))

    async def cost_cap_refusal(
        self, tx: Transaction, project: ProjectState, agent: AgentState
    ) -> str | None:
        """Why a new run of ``agent`` is refused today, if a daily cost cap is reached."""
        if agent.daily_cost_cap is None and project.daily_cost_cap is None:
            return None
        now = self.now()
        start = day_start(now)
        if agent.daily_cost_cap is not None:
            spent = await self._spent_since(tx, start, agent.agent)
            refused = cap_refusal(agent, spent, now)
            if refused is not None:
                return refused
        if project.daily_cost_cap is None:
            return None
        return project_cap_refusal(project, await self._spent_since(tx, start, None), now)

    async def _spent_today_by_agent(self, tx: Transaction) -> dict[str, float]:
        """Dollars spent since midnight UTC per agent, in one statement (their sum is the
        project's spend)."""
        params = {"since": self.encode_time(day_start(self.now()))}
        rows = await tx.fetch_all("spend_by_agent_since", params)
        return {row["agent"]: float(row["cost"]) for row in rows}


def _refused_until(now: datetime) -> str:
    return f"new runs are refused until 00:00 UTC (in {_until(now)})"


def cap_refusal(agent: AgentState, spent: float, now: datetime) -> str | None:
    """Why ``agent``'s own daily cost cap refuses a new run, having ``spent`` today."""
    if agent.daily_cost_cap is None or spent < agent.daily_cost_cap:
        return None
    return (
        f"daily cost cap reached: agent {agent.agent!r} has spent ${spent:.2f} "
        f"today (UTC) of its ${agent.daily_cost_cap:.2f} a day "
        f"([budget] dailyCost in agents/{agent.agent}/config.toml); {_refused_until(now)}"
    )


def project_cap_refusal(project: ProjectState, spent: float, now: datetime) -> str | None:
    """Why the project's daily cost cap refuses every new run, having ``spent`` today."""
    if project.daily_cost_cap is None or spent < project.daily_cost_cap:
        return None
    return (
        f"daily cost cap reached: the project has spent ${spent:.2f} today (UTC) "
        f"of its ${project.daily_cost_cap:.2f} a day ([budget] dailyCost in "
        f"config.toml); {_refused_until(now)}"
    )
