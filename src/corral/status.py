"""The fleet at a glance, as one JSON document: what `corral stat` prints, what
``GET /control/status`` answers, and what the dashboard and `corral top` draw.

Agents with their trigger kinds, state, running / scale, queue depth and today's spend;
the running instances with their ``al-status`` text and age; the active locks with their
holder and how long they have been held; the latest drops and refusals; the live
schedulers. Keys are camelCase like corral's other JSON answers; fields may be added,
none is removed or renamed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from corral.project import Agent, Project
from corral.scheduler.service import SchedulerOptions, is_live
from corral.store import AgentState, ItemState, RunState, Store
from corral.views import agent_json, iso_time

__all__ = ["agent_state_text", "fleet_status", "trigger_kinds"]

#: How many recent drops and refusals the status shows.
RECENT_PROBLEMS = 10


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
    store: Store, project: Project, *, now: datetime | None = None
) -> dict[str, Any]:
    """The status document for ``project`` as ``store`` has it now."""
    moment = now or datetime.now(UTC)
    project_state = await store.project_state()
    states = {state.agent: state for state in await store.agent_states() if state.present}
    live = await store.list_runs(states=[RunState.STARTING, RunState.RUNNING], limit=1000)
    locks = await store.list_locks()
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
        agent = project.agents.get(name)
        agents.append(
            agent_json(state)
            | {
                "state": agent_state_text(state, project_state.paused),
                "triggers": [] if agent is None else trigger_kinds(agent),
                "spentToday": spent[name],
                "dailyCap": state.daily_cost_cap,
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
        "scaleCap": project_state.scale_cap,
        "spentToday": sum(today.values()),  # every run's, as the project's cap counts
        "dailyCap": project_state.daily_cost_cap,
        "agents": agents,
        "running": [
            {
                "id": run.id,
                "agent": run.agent,
                "trigger": run.trigger.value,
                "status": run.status_text,
                "statusAt": iso_time(run.status_at),
                "startedAt": iso_time(run.started_at),
                "ageSeconds": (moment - (run.started_at or run.created_at)).total_seconds(),
                "tokens": run.tokens,
                "costUsd": run.cost_usd,
            }
            for run in sorted(live, key=lambda r: r.created_at)
        ],
        "locks": [
            {
                "key": lock.key,
                "holder": lock.run_id,
                "agent": lock.agent,
                "heldSince": iso_time(lock.acquired_at),
                "heldSeconds": (moment - lock.acquired_at).total_seconds(),
                "expiresAt": iso_time(lock.expires_at),
            }
            for lock in sorted(locks, key=lambda lock: lock.acquired_at)
        ],
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
