"""Runs on the fleet's runners: which agents go where, and the wire form of a claim.

An agent whose config says ``runsOn = [labels]`` (even ``[]``: any runner) runs on the
fleet's runners only: the control plane's own dispatcher never claims its items
(``scheduler.service.local_agents``), and a runner is handed the items of the agents
whose labels it has (``runner_agents``). Both claim with the same statement (``Store.claim`` with
``agents``), so an agent's scale and the project's cap hold across the whole fleet.

A claim travels from the control plane to a runner as JSON (``claim_json``); the runner
rebuilds it (``claim_from_json``) and hands it to the same ``RunExecutor`` the control
plane uses.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from corral.credentials import LoadedCredential
from corral.project import Agent, Project
from corral.scheduler.prepare import implied_keys
from corral.store import Claim, QueueItem, Run

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "FENCE_SHARE",
    "LEASE_BOUNDS",
    "LEASE_SECONDS",
    "MAX_WAIT",
    "claim_from_json",
    "claim_json",
    "credentials_json",
    "implied_keys",
    "item_from_wire",
    "item_wire",
    "lease_seconds",
    "run_from_wire",
    "run_wire",
    "runner_agents",
    "runner_labels",
]

log = logging.getLogger("corral.fleet")

#: The lease of a run on a runner, by default: its heartbeat (every 5 s) renews it; a
#: runner that stops heartbeating loses its runs after this long (plus the recovery
#: period, 2 s).
DEFAULT_LEASE_SECONDS = 12.0
#: The bounds of ``CORRAL_FLEET_LEASE_SECONDS``.
LEASE_BOUNDS = (3.0, 600.0)
#: A runner fences itself off this share of the lease after its last acknowledged
#: heartbeat (7 s of 12 s): the other 5/12 is the margin for clock rates and the kill.
FENCE_SHARE = 7.0 / 12.0


def lease_seconds(environ: Mapping[str, str] | None = None) -> float:
    """The lease of runs on runners: ``CORRAL_FLEET_LEASE_SECONDS`` when set (read once,
    when the control plane starts; a value out of bounds is refused with a warning), else
    12 s. Runners adopt it from the control plane's answers (``leaseSeconds``)."""
    raw = (os.environ if environ is None else environ).get("CORRAL_FLEET_LEASE_SECONDS")
    if raw is None or not raw.strip():
        return DEFAULT_LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    low, high = LEASE_BOUNDS
    if not low <= value <= high:  # NaN fails too
        log.warning(
            "CORRAL_FLEET_LEASE_SECONDS=%r is not a number of seconds from %g to %g: "
            "runs on runners keep the %g s lease",
            raw,
            low,
            high,
            DEFAULT_LEASE_SECONDS,
        )
        return DEFAULT_LEASE_SECONDS
    return value


#: The lease of a run on a runner, as this process started with it.
LEASE_SECONDS = lease_seconds()
#: The longest a runner's request for work is held open, in seconds.
MAX_WAIT = 25.0

_RUN_TIMES = frozenset({"created_at", "started_at", "ended_at", "kill_requested_at", "status_at"})
_ITEM_TIMES = frozenset({"enqueued_at", "claimed_at", "finished_at", "lease_expires_at"})


def on_runners(agent: Agent) -> bool:
    """True when ``agent`` runs on the fleet's runners only (``runsOn``)."""
    return agent.config.runs_on is not None


def runner_labels(project: Project, agent: Agent) -> tuple[str, ...] | None:
    """The labels a runner needs to run ``agent``; None: it runs on the control plane
    only. Under ``[fleet] runLocally = false`` an agent without ``runsOn`` goes to any
    runner (as ``runsOn = []``)."""
    if agent.config.runs_on is not None:
        return tuple(agent.config.runs_on)
    return None if project.config.fleet.run_locally else ()


def runner_agents(project: Project, labels: Collection[str]) -> list[str]:
    """The agents a runner with ``labels`` may run: those whose ``runsOn`` labels it has
    (every agent's, under ``[fleet] runLocally = false``)."""
    have = set(labels)
    wanted = {name: runner_labels(project, agent) for name, agent in project.agents.items()}
    return sorted(name for name, need in wanted.items() if need is not None and set(need) <= have)


def _plain(record: Any, times: frozenset[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if field.name == "trigger":
            out["trigger_kind"] = value.value
        elif field.name == "state":
            out["state"] = value.value
        elif field.name in times and isinstance(value, datetime):
            out[field.name] = value.isoformat()
        else:
            out[field.name] = value
    return out


def _decoded(data: Mapping[str, Any], times: frozenset[str]) -> dict[str, Any]:
    row = dict(data)
    for name in times:
        if isinstance(row.get(name), str):
            row[name] = datetime.fromisoformat(row[name])
    return row


def run_wire(run: Run) -> dict[str, Any]:
    """A run as JSON, every field (``run_from_wire`` reads it back)."""
    return _plain(run, _RUN_TIMES)


def item_wire(item: QueueItem) -> dict[str, Any]:
    """A queue item as JSON, every field (``item_from_wire`` reads it back)."""
    return _plain(item, _ITEM_TIMES)


def run_from_wire(data: Mapping[str, Any]) -> Run:
    return Run.from_row(_decoded(data, _RUN_TIMES))


def item_from_wire(data: Mapping[str, Any]) -> QueueItem:
    return QueueItem.from_row(_decoded(data, _ITEM_TIMES))


def claim_json(claim: Claim) -> dict[str, Any]:
    """A claim as JSON: its run and its item, every field."""
    return {"run": run_wire(claim.run), "item": item_wire(claim.item)}


def claim_from_json(data: Mapping[str, Any]) -> Claim:
    """The claim ``claim_json`` wrote; ValueError/KeyError/TypeError for anything else."""
    run = run_from_wire(data["run"])
    item = item_from_wire(data["item"])
    if run.item_id != item.id or run.fence is None:
        raise ValueError(f"claim of run {run.id}: its item or fence does not match")
    return Claim(item, run)


def credentials_json(loaded: Collection[LoadedCredential]) -> list[dict[str, Any]]:
    """The credentials' values, for a runner (in one answer only; never logged)."""
    return [
        {"type": cred.ref.type, "instance": cred.ref.instance, "values": dict(cred.values)}
        for cred in loaded
    ]
