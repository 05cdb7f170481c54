"""The JSON shapes of runs and queue items, shared by `--json` output and the HTTP API.

Keys are camelCase, as in the rest of corral's JSON answers. Fields may be
added; none is removed or renamed without a new API version.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from corral.store import (
    AgentState,
    Bundle,
    BundleHead,
    Lock,
    LockWaiter,
    PoolDecision,
    PoolState,
    QueueItem,
    Run,
    RunFilter,
    RunState,
    TriggerKind,
)
from corral.tasks._model import Task, TaskEvent

__all__ = [
    "agent_json",
    "bundle_head_json",
    "bundle_json",
    "iso_time",
    "item_json",
    "lock_json",
    "parse_moment",
    "pool_decision_json",
    "pool_json",
    "run_filter",
    "run_json",
    "task_event_json",
    "task_json",
]


def iso_time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def run_json(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "agent": run.agent,
        "trigger": run.trigger.value,
        "state": run.state.value,
        "exitCode": run.exit_code,
        "error": run.error,
        "status": run.status_text,
        "statusAt": iso_time(run.status_at),
        "returnValue": run.return_value,
        "createdAt": iso_time(run.created_at),
        "startedAt": iso_time(run.started_at),
        "endedAt": iso_time(run.ended_at),
        "durationSeconds": run.duration.total_seconds() if run.duration else None,
        "parentRunId": run.parent_run_id,
        "itemId": run.item_id,
        "attempt": run.attempt,
        "pid": run.pid,
        "host": run.host,
        "outcome": run.outcome,
        "budget": run.budget,
        "tokens": None
        if run.tokens is None
        else {
            "input": run.input_tokens,
            "output": run.output_tokens,
            "cacheRead": run.cache_read_tokens,
            "cacheWrite": run.cache_write_tokens,
            "total": run.tokens,
        },
        "costUsd": run.cost_usd,
        "bundle": run.bundle,
        "runner": run.runner_id,
    }


def item_json(item: QueueItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "agent": item.agent,
        "trigger": item.trigger.value,
        "state": item.state.value,
        "reason": item.reason,
        "attempts": item.attempts,
        "runId": item.run_id,
        "enqueuedAt": iso_time(item.enqueued_at),
    }


def lock_json(
    lock: Lock, waiters: list[LockWaiter], now: datetime, wants: Sequence[LockWaiter] = ()
) -> dict[str, Any]:
    """A held lock with the runs waiting for it (`rlock --wait`) and the runs retrying it
    (a refused plain `rlock` a short while ago: a want), for `corral locks --json` and the
    control API."""
    return {
        "key": lock.key,
        "holder": lock.run_id,
        "agent": lock.agent,
        "token": lock.token,
        "heldSince": iso_time(lock.acquired_at),
        "expiresAt": iso_time(lock.expires_at),
        "expired": lock.expires_at <= now,
        "waiting": [w.run_id for w in waiters if w.key == lock.key],
        "wanting": [w.run_id for w in wants if w.key == lock.key],
    }


def agent_json(state: AgentState) -> dict[str, Any]:
    """An agent's control state and counts, as the control API answers them."""
    return {
        "agent": state.agent,
        "scale": state.scale,
        "paused": state.paused,
        "enabled": state.enabled,
        "queued": state.queued,
        "running": state.active,
    }


def pool_json(pool: PoolState, now: datetime) -> dict[str, Any]:
    """An agent's pool as the autoscaler sized it (`corral pools --json`, the control API).

    ``desired`` bounds the agent's claims (with ``max``); ``size`` counts its instances,
    above ``desired`` while runs that were busy when it shrank finish. ``decidedBy`` is
    the scheduler holding the pool's lease (None when none holds it now)."""
    held = pool.owner is not None and pool.lease_until is not None and pool.lease_until > now
    return {
        "agent": pool.agent,
        "max": pool.scale,
        "desired": pool.size,
        "size": max(pool.size, pool.running),
        "busy": pool.running,
        "queued": pool.queued,
        "decidedBy": pool.owner if held else None,
    }


def pool_decision_json(decision: PoolDecision) -> dict[str, Any]:
    """One autoscaler decision with its inputs (`corral pools log --json`, the API)."""
    return {
        "id": decision.id,
        "agent": decision.agent,
        "decidedAt": iso_time(decision.decided_at),
        "scheduler": decision.scheduler_id,
        "policy": decision.policy,
        "direction": decision.direction,
        "from": decision.size,
        "to": decision.desired,
        "reason": decision.reason,
        "inputs": decision.inputs,
    }


def bundle_json(bundle: Bundle, head: BundleHead | None) -> dict[str, Any]:
    """A pushed bundle; ``current``: it is the store's head."""
    return {
        "hash": bundle.hash,
        "size": bundle.size,
        "files": bundle.files,
        "agents": dict(bundle.agents),
        "createdAt": iso_time(bundle.created_at),
        "createdBy": bundle.created_by,
        "note": bundle.note,
        "current": head is not None and head.hash == bundle.hash,
    }


def bundle_head_json(head: BundleHead | None) -> dict[str, Any] | None:
    if head is None:
        return None
    return {"hash": head.hash, "setAt": iso_time(head.set_at), "setBy": head.set_by}


_SPAN = re.compile(r"^(\d+)([smhdw])$")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
#: The longest search text a runs list takes.
SEARCH_MAX = 200


def parse_moment(text: str, name: str, now: datetime | None = None) -> datetime:
    """A time bound of a runs list: a span back from now (``90s``, ``15m``, ``2h``, ``3d``,
    ``1w``) or an ISO 8601 date or time (UTC when it names no zone). ValueError naming
    ``name`` and what it takes otherwise."""
    value = text.strip()
    span = _SPAN.match(value)
    try:
        if span is not None:
            back = timedelta(**{_UNIT[span.group(2)]: int(span.group(1))})
            return (now or datetime.now(UTC)) - back
        moment = datetime.fromisoformat(value)
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        pass
    raise ValueError(
        f"{name}={text[:40]!r} is neither a span back from now (15m, 2h, 3d, 1w) nor an ISO "
        "date or time (2026-03-10, 2026-03-10T14:30, UTC unless it names a zone)"
    )


def run_filter(
    *,
    agent: str | None = None,
    states: Sequence[str] = (),
    triggers: Sequence[str] = (),
    since: str | None = None,
    until: str | None = None,
    search: str | None = None,
    now: datetime | None = None,
) -> RunFilter:
    """The runs list's filter from the texts of a query string (the control API, the
    dashboard); ValueError saying which value is wrong and what it takes."""
    try:
        wanted = tuple(RunState(state) for state in states if state)
    except ValueError:
        known = ", ".join(state.value for state in RunState)
        raise ValueError(f"state must be one of {known}; got {list(states)!r}") from None
    try:
        kinds = tuple(TriggerKind(kind) for kind in triggers if kind)
    except ValueError:
        known = ", ".join(kind.value for kind in TriggerKind)
        raise ValueError(f"trigger must be one of {known}; got {list(triggers)!r}") from None
    given = {"agent": agent, "since": since, "until": until, "q": search}
    for name, value in given.items():
        if value is not None and "\x00" in value:
            raise ValueError(f"{name} holds a NUL character; no run has one in it")
    text = (search or "").strip()
    if len(text) > SEARCH_MAX:
        raise ValueError(f"q is {len(text)} characters long; search for at most {SEARCH_MAX}")
    return RunFilter(
        agent=agent or None,
        states=wanted,
        triggers=kinds,
        since=None if not since else parse_moment(since, "since", now),
        until=None if not until else parse_moment(until, "until", now),
        search=text,
    )


def task_json(task: Task) -> dict[str, Any]:
    """A task as `corral tasks --json` and the control API show it."""

    def when(epoch: float | None) -> str | None:
        return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()

    return {
        "id": task.id,
        "project": task.project,
        "title": task.spec.title,
        "description": task.spec.description,
        "priority": task.spec.priority,
        "requires": list(task.spec.requires),
        "labels": list(task.spec.labels),
        "acceptance": list(task.spec.acceptance),
        "extra": dict(task.spec.extra),
        "status": task.status.value,
        "assignee": task.assignee,
        "runId": task.run_id,
        "token": task.token,
        "attempts": task.attempts,
        "result": task.result,
        "claimedAt": when(task.claimed_at),
        "heartbeatAt": when(task.heartbeat_at),
        "expiresAt": when(task.expires_at),
        "createdAt": when(task.created_at),
        "updatedAt": when(task.updated_at),
    }


def task_event_json(event: TaskEvent) -> dict[str, Any]:
    return {
        "at": datetime.fromtimestamp(event.at, UTC).isoformat(),
        "kind": event.kind,
        "actor": event.actor,
        "token": event.token,
        "detail": event.detail,
    }
