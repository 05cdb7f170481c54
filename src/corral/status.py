"""The fleet at a glance, as one JSON document: what `corral stat` prints, what
``GET /control/status`` answers, and what the dashboard and `corral top` draw.

Agents with their trigger kinds, state, running / scale, queue depth and today's spend;
the running instances with their ``al-status`` text and age; the active locks with their
holder and how long they have been held; the latest drops and refusals; the live
schedulers. Keys are camelCase like corral's other JSON answers; fields may be added,
none is removed or renamed.

The document stays small however many runs are live: every agent is summarised (its
running and queued counts), but ``running`` lists one page of the live runs, oldest
first (``limit``, default `RUNNING_PAGE`, from ``offset``, optionally of one ``agent``),
with ``runningTotal`` and ``runningNext`` (the offset of the next page, or null) to reach
the rest; ``locks`` lists the `LOCKS_SHOWN` oldest held locks, with ``locksTotal``
(``GET /control/locks`` lists them all). At 1,000 live runs the whole list was 196 KB.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from corral.project import Agent, Project
from corral.scheduler.service import SchedulerOptions, is_live
from corral.store import AgentState, ItemState, Lock, Run, RunState, Store
from corral.views import agent_json, iso_time

__all__ = [
    "LOCKS_SHOWN",
    "RUNNING_PAGE",
    "RUNNING_PAGE_MAX",
    "agent_state_text",
    "fleet_status",
    "lock_entry",
    "running_entry",
    "trigger_kinds",
]

#: How many recent drops and refusals the status shows.
RECENT_PROBLEMS = 10
#: How many live runs one status document lists by default, and at most.
RUNNING_PAGE = 50
RUNNING_PAGE_MAX = 500
#: How many held locks the status document lists (the oldest first).
LOCKS_SHOWN = 50
#: No scheduler holds more live runs than this many (what one read fetches).
_LIVE_READ = 1_000_000


def trigger_kinds(agent: Agent) -> list[str]:
    """What starts the agent: ``schedule``, ``webhook`` (from its config) and always
    ``manual`` (a person, the API) and ``call`` (another agent)."""
    kinds = []
    if agent.config.schedule:
        kinds.append("schedule")
    if agent.config.webhooks:
        kinds.append("webhook")
    return [*kinds, "manual", "call"]


def agent_state_text(state: AgentState, project_paused: bool) -> str:
    """One word: ``disabled``, ``paused``, ``running`` or ``idle``."""
    if not state.enabled or state.scale == 0:
        return "disabled"
    if state.paused or project_paused:
        return "paused"
    return "running" if state.active else "idle"


async def fleet_status(
    store: Store,
    project: Project,
    *,
    now: datetime | None = None,
    limit: int = RUNNING_PAGE,
    offset: int = 0,
    agent: str | None = None,
) -> dict[str, Any]:
    """The status document for ``project`` as ``store`` has it now, listing the live runs
    ``offset`` to ``offset + limit`` (oldest first; of ``agent`` only when given)."""
    if not 0 <= limit <= RUNNING_PAGE_MAX or offset < 0:
        raise ValueError(f"need 0 <= limit <= {RUNNING_PAGE_MAX} and offset >= 0")
    moment = now or datetime.now(UTC)
    project_state = await store.project_state()
    states = {state.agent: state for state in await store.agent_states() if state.present}
    live = await store.list_runs(
        agent=agent, states=[RunState.STARTING, RunState.RUNNING], limit=_LIVE_READ
    )
    live.sort(key=lambda r: (r.created_at, r.id))
    page = live[offset : offset + limit]
    after = offset + len(page)
    locks = sorted(await store.list_locks(), key=lambda lock: lock.acquired_at)
    problems = await store.list_items(
        states=[ItemState.DROPPED, ItemState.REJECTED], limit=RECENT_PROBLEMS
    )
    today = {total.agent: total.cost_usd for total in await store.usage_by_day(days=1)}
    spent = {name: today.get(name, 0.0) for name in states}
    renew_every = SchedulerOptions().renew_every
    schedulers = [
        info
        for info in await store.list_schedulers(live_only=True)
        if is_live(info, moment, renew_every)
    ]
    for name, configured in project.agents.items():  # not synced to the store yet
        states.setdefault(name, _unsynced(configured))
        spent.setdefault(name, 0.0)
    agents = []
    for name, state in sorted(states.items()):
        known = project.agents.get(name)
        agents.append(
            agent_json(state)
            | {
                "state": agent_state_text(state, project_state.paused),
                "triggers": [] if known is None else trigger_kinds(known),
                "spentToday": spent[name],
                "dailyCap": state.daily_cost_cap,
                "runsOn": _runs_on(project, known),
            }
        )
    return {
        "project": project.config.project_name or project.root.name,
        "scheduler": schedulers[0].id if schedulers else None,
        "schedulers": [
            {
                "id": s.id,
                "host": s.host,
                "pid": s.pid,
                "state": s.state.value,
                "gateway": s.gateway_url,
            }
            for s in schedulers
        ],
        "paused": project_state.paused,
        "runLocally": project.config.fleet.run_locally,
        "scaleCap": project_state.scale_cap,
        "spentToday": sum(today.values()),  # every run's, as the project's cap counts
        "dailyCap": project_state.daily_cost_cap,
        "agents": agents,
        "running": [running_entry(run, moment) for run in page],
        "runningTotal": len(live),
        "runningOffset": offset,
        "runningLimit": limit,
        "runningAgent": agent,
        "runningNext": after if after < len(live) else None,
        "locks": [lock_entry(lock, moment) for lock in locks[:LOCKS_SHOWN]],
        "locksTotal": len(locks),
        "recent": [
            {
                "item": item.id,
                "agent": item.agent,
                "trigger": item.trigger.value,
                "state": item.state.value,
                "reason": item.reason,
                "at": iso_time(item.finished_at or item.enqueued_at),
            }
            for item in problems
        ],
    }


def _runs_on(project: Project, agent: Agent | None) -> list[str] | None:
    """The labels a runner needs to run ``agent`` (``[]``: any runner); None when it runs
    on the control plane (``[fleet] runLocally = false`` sends every agent to runners)."""
    if agent is None:
        return None
    if agent.config.runs_on is not None:
        return sorted(agent.config.runs_on)
    return None if project.config.fleet.run_locally else []


def running_entry(run: Run, now: datetime) -> dict[str, Any]:
    """A live run as the status document lists it."""
    return {
        "id": run.id,
        "agent": run.agent,
        "trigger": run.trigger.value,
        "status": run.status_text,
        "statusAt": iso_time(run.status_at),
        "startedAt": iso_time(run.started_at),
        "ageSeconds": (now - (run.started_at or run.created_at)).total_seconds(),
        "tokens": run.tokens,
        "costUsd": run.cost_usd,
    }


def lock_entry(lock: Lock, now: datetime) -> dict[str, Any]:
    """A held lock as the status document lists it."""
    return {
        "key": lock.key,
        "holder": lock.run_id,
        "agent": lock.agent,
        "heldSince": iso_time(lock.acquired_at),
        "heldSeconds": (now - lock.acquired_at).total_seconds(),
        "expiresAt": iso_time(lock.expires_at),
    }


def _unsynced(agent: Agent) -> AgentState:
    """An agent of the configuration that no scheduler has told the store about yet."""
    return AgentState(
        agent=agent.name,
        scale=agent.effective_scale,
        queue_size=agent.config.max_work_queue_size,
        paused=False,
        enabled=True,
        present=True,
        queued=0,
        active=0,
        daily_cost_cap=agent.config.budget.daily_cost,
    )
