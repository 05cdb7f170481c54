"""The anomalies found by looking, not at a run's end: a run still live past its timeout
(``run_stuck``) and a lock whose lease expired without release (``lock_expired``).

``sweep`` runs in the scheduler's supervision loop with the recovery of lapsed leases
(every ``recover_every``, 2 s): two reads of small indexed sets (live runs, lock rows),
nothing on a run's path. Each occurrence is recorded once while its anomaly is open,
whichever control plane process sees it first (``Store.record_episode``).

- ``run_stuck``: a run starting or running ``timeout + kill_grace + STUCK_MARGIN``
  seconds after it started, whether a control plane or a runner runs it: the one
  running it meant to stop it at its timeout and it did not end. Subject: the run.
- ``lock_expired``: a lock row past its expiry: its holder stopped renewing it and did
  not release it (a run's end and ``runlock`` delete the row). Subject: the resource;
  one anomaly per grant (its fencing token).

The anomalies found at a run's end (crash loop, failed hook, budget overrun) are
recorded by the store's ``finalize`` (``corral.store._anomalies``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from corral.errors import StoreError
from corral.project import Project
from corral.store import Anomaly, AnomalyKind, Lock, Run, RunState, Store
from corral.store._anomalies import hook_failure

__all__ = ["LOG_LINES", "STUCK_MARGIN", "hook_markers", "hooks_from_log", "sweep"]

log = logging.getLogger("corral.scheduler")

#: How many of the run log's last lines a ``hook_failed`` anomaly keeps.
LOG_LINES = 10
#: How much of the end of a run log is read for its hooks' lines.
_TAIL_BYTES = 64 * 1024

#: Seconds past its timeout and kill grace before a live run counts as stuck.
STUCK_MARGIN = 5.0

_LIVE = frozenset({RunState.STARTING, RunState.RUNNING})


async def sweep(store: Store, project: Project, *, kill_grace: float) -> list[Anomaly]:
    """Record the stuck runs and expired locks of the moment; the anomalies opened."""
    now = store.now()
    opened: list[Anomaly] = []
    for run in await store.list_runs(states=_LIVE, limit=10_000):
        timeout = _timeout(project, run)
        if run.started_at is None or timeout is None:
            continue
        due = run.started_at + timedelta(seconds=timeout + kill_grace + STUCK_MARGIN)
        if now >= due:
            opened += await _stuck(store, run, timeout, now)
    for lock in await store.list_locks():
        if lock.expires_at <= now:
            opened += await _expired(store, lock, now)
    for anomaly in opened:
        log.warning(
            "anomaly %s: %s",
            anomaly.kind.value,
            anomaly.subject,
            extra={"action": "anomaly", "kind": anomaly.kind.value},
        )
    return opened


def _timeout(project: Project, run: Run) -> int | None:
    agent = project.agents.get(run.agent)
    return None if agent is None else agent.config.timeout


async def _stuck(store: Store, run: Run, timeout: int, now: datetime) -> list[Anomaly]:
    assert run.started_at is not None
    evidence = {
        "run": run.id,
        "agent": run.agent,
        "state": run.state.value,
        "started": run.started_at.isoformat(),
        "timeoutSeconds": timeout,
        "overdueSeconds": round((now - run.started_at).total_seconds() - timeout, 1),
        "runner": run.runner_id,
        "host": run.host,
        "pid": run.pid,
    }
    anomaly, new = await store.record_episode(AnomalyKind.RUN_STUCK, run.id, evidence, same="run")
    return [anomaly] if new else []


async def _expired(store: Store, lock: Lock, now: datetime) -> list[Anomaly]:
    holder = await store.get_run(lock.run_id)
    evidence = {
        "resource": lock.key,
        "run": lock.run_id,
        "agent": lock.agent,
        "token": lock.token,
        "runner": None if holder is None else holder.runner_id,
        "host": None if holder is None else holder.host,
        "runState": None if holder is None else holder.state.value,
        "heldSince": lock.acquired_at.isoformat(),
        "expiredAt": lock.expires_at.isoformat(),
        "seenAt": now.isoformat(),
    }
    anomaly, new = await store.record_episode(
        AnomalyKind.LOCK_EXPIRED, lock.key, evidence, same="token"
    )
    return [anomaly] if new else []


def hook_markers(data: bytes) -> bool:
    """Whether a piece of a run log may hold a failed hook's line (a cheap test, for each
    piece of a runner's log as it arrives)."""
    return b"[corral] " in data and b" hook " in data


async def hooks_from_log(store: Store, run: Run, log_path: Path) -> None:
    """What the end of a run's log says of its hooks (the log is on the control plane
    for runners' runs too): the last lines are added to the ``hook_failed`` anomaly a
    failed pre hook opened at the run's end, and a failed post hook, which changes
    nothing of the run, opens (or updates) one of its own. A file read, and a round trip
    only when a hook failed; a failure to read or record is logged, not raised."""
    try:
        lines = await asyncio.to_thread(_tail, log_path)
        failed = [found for line in lines if (found := _marker(line)) is not None]
        if not failed:
            return
        last = [line for line in lines if line.strip()][-LOG_LINES:]
        for hook in failed:
            subject = f"{run.agent}:{hook['hook']}"
            if hook["hook"].startswith("pre "):
                extra = {"lastLines": last}
                await store.add_anomaly_evidence(AnomalyKind.HOOK_FAILED, subject, run.id, extra)
                continue
            evidence = {
                "run": run.id,
                "agent": run.agent,
                **hook,
                "runState": run.state.value,
                "runner": run.runner_id,
                "host": run.host,
                "lastLines": last,
            }
            await store.record_episode(AnomalyKind.HOOK_FAILED, subject, evidence, same="run")
    except (OSError, StoreError) as exc:
        log.warning(
            "could not read run %s's log for failed hooks: %s",
            run.id,
            exc,
            extra={"action": "anomaly_unrecorded", "run_id": run.id},
        )


def _marker(line: str) -> dict[str, Any] | None:
    """A failed hook, from the line corral writes to the run log for it."""
    if not line.startswith("[corral] "):
        return None
    return hook_failure(line.removeprefix("[corral] "), anchored=True)


def _tail(path: Path) -> list[str]:
    if not path.exists():
        return []
    with path.open("rb") as file:
        size = file.seek(0, 2)
        file.seek(max(size - _TAIL_BYTES, 0))
        data = file.read()
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[1:] if size > _TAIL_BYTES else lines  # the first may be cut
