"""The live parts of the pages, rendered from a snapshot: what a page shows at load and
what its event stream pushes afterwards are the same templates over the same data."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import groupby

from corral.gateway.dashboard._context import Dashboard
from corral.gateway.dashboard._feed import Snapshot
from corral.store import ItemState, Run

__all__ = ["FIXED_VIEWS", "LiveView", "live_view", "run_html", "run_record"]

#: How many of an agent's runs its page lists.
AGENT_RUNS = 25
#: How many of an agent's live runs its page lists (the running page lists them all).
AGENT_LIVE = 50


@dataclass(frozen=True)
class LiveView:
    """One live fragment: its event name, the key it is memoised under, how to render."""

    event: str
    key: tuple[str, ...]
    render: Callable[[Snapshot], Awaitable[str]]


def live_view(dash: Dashboard, name: str, agent: str | None = None) -> LiveView | None:
    """The view a page streams (``fleet``, ``queue``, ``locks``, ``agent`` + a name)."""
    fixed = FIXED_VIEWS.get(name)
    if fixed is not None:
        return fixed(dash)
    if name == "agent" and agent is not None and agent in dash.scheduler.project.agents:
        return LiveView("agent", ("agent", agent), lambda snap: _agent(dash, snap, agent))
    return None


def _fleet_view(dash: Dashboard) -> LiveView:
    return LiveView("fleet", ("fleet",), lambda snap: _fleet(dash, snap))


def _queue_view(dash: Dashboard) -> LiveView:
    return LiveView("queue", ("queue",), lambda snap: _queue(dash, snap))


def _locks_view(dash: Dashboard) -> LiveView:
    return LiveView("locks", ("locks",), lambda snap: _locks(dash, snap))


#: The views that are one per project (the fleet, the queue, the locks).
FIXED_VIEWS: dict[str, Callable[[Dashboard], LiveView]] = {
    "fleet": _fleet_view,
    "queue": _queue_view,
    "locks": _locks_view,
}


async def _fleet(dash: Dashboard, snap: Snapshot) -> str:
    return dash.renderer.render("_fleet.html", {"s": snap.status, "now": snap.at})


async def _queue(dash: Dashboard, snap: Snapshot) -> str:
    by_agent = {
        agent: list(items)
        for agent, items in groupby(
            sorted(snap.queue, key=lambda item: (item.agent, item.id)), key=lambda i: i.agent
        )
    }
    context = {
        "by_agent": by_agent,
        "queued": ItemState.QUEUED,
        "recent": snap.status["recent"],
        "total": len(snap.queue),
        "now": snap.at,
    }
    return dash.renderer.render("_queue.html", context)


async def _locks(dash: Dashboard, snap: Snapshot) -> str:
    context = {"locks": snap.locks, "waiters": snap.waiters, "now": snap.at}
    return dash.renderer.render("_locks.html", context)


async def _agent(dash: Dashboard, snap: Snapshot, name: str) -> str:
    runs = await dash.scheduler.store.list_runs(agent=name, limit=AGENT_RUNS)
    live = sorted(
        (run for run in snap.live.values() if run.agent == name),
        key=lambda run: (run.created_at, run.id),
    )
    context = {
        "a": snap.agent(name),
        "name": name,
        "live": live[:AGENT_LIVE],
        "live_total": len(live),
        "runs": runs,
        "queued": [i for i in snap.queue if i.agent == name and i.state is ItemState.QUEUED],
        "now": snap.at,
    }
    return dash.renderer.render("_agent.html", context)


async def run_record(dash: Dashboard, snap: Snapshot, run_id: str) -> Run | None:
    """The run as of ``snap``: from the snapshot while it is live, else from the store."""
    live = snap.live.get(run_id)
    if live is not None:
        return live
    return await snap.memo(("run", run_id), lambda: dash.scheduler.store.get_run(run_id))


async def run_html(dash: Dashboard, snap: Snapshot, run: Run) -> str:
    async def render() -> str:
        locks = [lock for lock in snap.locks if lock["holder"] == run.id]
        return dash.renderer.render("_run.html", {"run": run, "now": snap.at, "locks": locks})

    return await snap.memo(("run-html", run.id), render)
