"""The scaling page: every agent's pool as the autoscaler sizes it (a ``[scale]`` table),
the runner fleet's autoscaler when ``[fleet.autoscale]`` is configured, a chart of the
pools' sizes over the last hours, and the decision log with each decision's inputs and
reason (what `corral pools` and `corral pools log` print; docs/scaling.md).

The pools and the fleet are live: ``/dashboard/scaling/events`` pushes their fragment
again when it changes (read at most once per ``_FRESH`` seconds however many viewers
look, every ``SCALING_TICK`` seconds and on each new snapshot: decisions are not in the
shared snapshot); the chart's hours, rebuilt from the decision log, are read at most
every ``HISTORY_FRESH`` seconds, the current hour completed with each pool's size
now. The log is read when the page loads, newest first, ``LOG_PAGE`` to a
page, by decision id (``?before=``), of one agent with ``?agent=`` (``:fleet``: the
runner fleet's).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse, Response

from corral.gateway.dashboard._chart import Chart, stacked_chart
from corral.gateway.dashboard._context import Dashboard, Signed
from corral.gateway.dashboard._sse import EventStream
from corral.gateway.dashboard._streams import ticking_stream
from corral.project import ScaleConfig
from corral.store import FLEET, PoolDecision, PoolState, Store
from corral.views import pool_json

__all__ = ["HISTORY_HOURS", "LOG_PAGE", "SCALING_TICK", "scaling_routes"]

#: Decisions on a page of the log.
LOG_PAGE = 50
#: Hours the pool-size chart covers (the current one last).
HISTORY_HOURS = 12
#: The most decisions the chart reads: past that (a day of holds for dozens of agents),
#: its earliest hours start from the oldest decision read.
HISTORY_LIMIT = 20_000
#: How often the page's stream looks again (seconds).
SCALING_TICK = 2.0
#: How long a fragment read from the store serves every viewer of it (seconds).
_FRESH = 1.0
#: How long the chart's hours read from the decision log serve (seconds): reading them
#: takes a while (a day of holds for 20 agents is 14,400 decisions, about 0.5 s on
#: SQLite), and an hour's bar moves little in a minute; the current hour also counts
#: each pool's size now, read with the fragment.
HISTORY_FRESH = 60.0
#: The inputs the log shows first, in this order (the rest follow by name).
FIRST_INPUTS = (
    "queued",
    "busy",
    "running",
    "pool",
    "arrivals",
    "completions",
    "recommended",
    "ceiling",
    "cap",
    "runners",
    "slots",
    "busy_slots",
)
#: The longest ``?agent=`` filter taken.
AGENT_FILTER_MAX = 200


def scaling_routes(dash: Dashboard) -> APIRouter:
    router = APIRouter(prefix="/dashboard", include_in_schema=False)
    live = _Live(dash)

    @router.get("/scaling")
    async def scaling(
        operator: Signed,
        agent: Annotated[str, Query(max_length=AGENT_FILTER_MAX)] = "",
        before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    ) -> HTMLResponse:
        context = {"live": await live.fragment(fresh=True)}
        context |= await log_context(dash, agent, before)
        return dash.page("scaling.html", operator, context, title="Scaling", nav="scaling")

    @router.get("/scaling/events")
    async def scaling_events(request: Request, operator: Signed) -> Response:
        return EventStream(ticking_stream(dash, request, "scaling", live.fragment, SCALING_TICK))

    return router


class _Live:
    """The live fragment, made at most once per ``_FRESH`` seconds for every viewer."""

    def __init__(self, dash: Dashboard) -> None:
        self._dash = dash
        self._made: tuple[float, asyncio.Future[str]] | None = None
        self._history: tuple[float, datetime, asyncio.Future[dict[str, list[int]]]] | None = None

    async def fragment(self, *, fresh: bool = False) -> str:
        now = time.monotonic()
        found = self._made
        if fresh or found is None or now - found[0] >= _FRESH or _failed(found[1]):
            found = (now, asyncio.ensure_future(self._make()))
            self._made = found
        return await asyncio.shield(found[1])

    async def _make(self) -> str:
        context = await pools_context(self._dash, self.history)
        return self._dash.renderer.render("_scaling.html", context)

    async def history(self, first: datetime) -> dict[str, list[int]]:
        """The pools' hourly sizes from ``first`` on, read at most every ``HISTORY_FRESH``
        seconds (and anew when the hours move on)."""
        now = time.monotonic()
        found = self._history
        stale = found is None or found[1] != first or now - found[0] >= HISTORY_FRESH
        if stale or found is None or _failed(found[2]):
            store = self._dash.scheduler.store
            found = (now, first, asyncio.ensure_future(pool_history(store, first)))
            self._history = found
        return await asyncio.shield(found[2])


def _failed(future: asyncio.Future[Any]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


#: The pools' hourly sizes from an hour on (``pool_history``, perhaps remembered).
History = Callable[[datetime], Awaitable[dict[str, list[int]]]]


async def pools_context(dash: Dashboard, history: History) -> dict[str, Any]:
    """The pools (by agent), the fleet's autoscaler and the chart of the pools' sizes."""
    scheduler = dash.scheduler
    store = scheduler.store
    project = scheduler.project
    now = store.now()
    warm = scheduler.warm.counts()
    pools = await store.pool_states()
    rows = []
    for pool in pools:
        agent = project.agents.get(pool.agent)
        scale = agent.config.scale if agent is not None else None
        last = await store.pool_decisions(pool.agent, limit=1)
        rows.append(
            {
                "p": pool_json(pool, now),
                "config": scale if isinstance(scale, ScaleConfig) else None,
                "idle": max(pool.size - pool.running, 0),
                "warm": warm.get(pool.agent),
                "last": last[0] if last else None,
            }
        )
    return {
        "pools": rows,
        "fleet": await fleet_context(dash),
        "chart": await size_chart(history, pools, now),
        "hours": HISTORY_HOURS,
        "now": now,
    }


async def fleet_context(dash: Dashboard) -> dict[str, Any] | None:
    """The runner fleet's autoscaler: its settings, its runners by state and its last
    decision's reading; None when it is not configured and never started a runner."""
    store = dash.scheduler.store
    config = dash.scheduler.project.config.fleet.autoscale
    members = await store.fleet_members()
    if config is None and not members:
        return None
    states: dict[str, int] = defaultdict(int)
    for member in members:
        states[member.state] += 1
    last = await store.pool_decisions(FLEET, limit=1)
    reading = last[0].inputs if last else {}
    slots = _count(reading.get("slots"))
    busy = _count(reading.get("busy_slots"))
    return {
        "config": config,
        "live": sum(1 for m in members if m.live),
        "states": dict(sorted(states.items())),
        "slots": slots,
        "busy": busy,
        "idle": None if slots is None or busy is None else max(slots - busy, 0),
        "queued": _count(reading.get("queued")),
        "last": last[0] if last else None,
        "owner": await store.fleet_scaler_owner(),
    }


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


async def size_chart(history: History, pools: list[PoolState], now: datetime) -> Chart:
    """Each pool's largest decided size in each of the last ``HISTORY_HOURS`` hours,
    stacked by agent; the current hour counts its size now too."""
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HISTORY_HOURS - 1)
    hours = [first + timedelta(hours=i) for i in range(HISTORY_HOURS)]
    read = await history(first)
    series = {}
    for pool in pools:
        values = list(read.get(pool.agent) or [0] * HISTORY_HOURS)
        values[-1] = max(values[-1], pool.size)
        series[pool.agent] = values
    return stacked_chart([h.isoformat() for h in hours], series, _instances)


async def pool_history(store: Store, first: datetime) -> dict[str, list[int]]:
    """Each pool's largest decided size in each hour from ``first`` (``HISTORY_HOURS``
    of them), by agent: rebuilt from the decisions (every change is recorded), starting
    from the size the first one changed; a pool without any in the hours keeps its size
    now (the runner fleet's, counted in runners, is left out)."""
    found = await store.pool_decisions(since=first, limit=HISTORY_LIMIT)
    by_agent: dict[str, list[PoolDecision]] = defaultdict(list)
    for decision in reversed(found):  # oldest first
        if decision.agent != FLEET:
            by_agent[decision.agent].append(decision)
    series = {}
    for pool in await store.pool_states():
        decisions = by_agent.get(pool.agent, [])
        level = decisions[0].size if decisions else pool.size
        values = []
        at = 0
        for i in range(HISTORY_HOURS):
            end = first + timedelta(hours=i + 1)
            peak = level
            while at < len(decisions) and decisions[at].decided_at < end:
                level = decisions[at].desired
                peak = max(peak, level)
                at += 1
            values.append(peak)
        series[pool.agent] = values
    return series


def _instances(count: int) -> str:
    return f"at most {count} instance{'s' if count != 1 else ''}"


async def log_context(dash: Dashboard, agent: str, before: int | None) -> dict[str, Any]:
    """One page of the decision log (of ``agent`` only, unless empty), newest first."""
    store = dash.scheduler.store
    page = await store.pool_decisions(agent or None, limit=LOG_PAGE + 1, before=before)
    more = len(page) > LOG_PAGE
    shown = page[:LOG_PAGE]
    choices = [name for name, _ in sorted(dash.scheduler.project.agents.items())]
    if dash.scheduler.project.config.fleet.autoscale is not None:
        choices.append(FLEET)
    if agent and agent not in choices:
        choices.append(agent)
    return {
        "decisions": [(d, _inputs(d.inputs)) for d in shown],
        "agent": agent,
        "before": before,
        "next_before": shown[-1].id if more and shown else None,
        "choices": choices,
        "page_size": LOG_PAGE,
    }


def _inputs(inputs: dict[str, Any]) -> list[tuple[str, Any]]:
    """A decision's inputs, the usual ones first, without the empty ones."""
    order = {name: i for i, name in enumerate(FIRST_INPUTS)}
    kept = [(k, v) for k, v in inputs.items() if v is not None and v != ""]
    return sorted(kept, key=lambda item: (order.get(item[0], len(order)), item[0]))
