"""The JSON shapes of runs and queue items, shared by `--json` output and the HTTP API.

Keys are camelCase, as in the rest of corral's JSON answers. Fields may be
added; none is removed or renamed without a new API version.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from corral.store import AgentState, Bundle, BundleHead, Lock, LockWaiter, QueueItem, Run

__all__ = [
    "agent_json",
    "bundle_head_json",
    "bundle_json",
    "iso_time",
    "item_json",
    "lock_json",
    "run_json",
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
