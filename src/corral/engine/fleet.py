"""The fleet's membership as every operator surface sees it (the control API, the CLI).

- Activation tokens (``new_activation_token``: ``cft_`` and 32 random bytes) and runner
  credentials (``new_runner_credential``: ``crr_`` and 32 random bytes) are shown once
  and kept by their SHA-256 (``corral.engine.token.hash_token``).
- ``fleet_settings``: the project's ``maxRunners`` and ``[fleet]`` heartbeat and offline
  windows.
- ``check_offline``: mark the runners that went silent (one ``runner_offline`` anomaly
  per outage, whichever control plane process looks first); ``on_runners_offline`` is
  where the recovery of a dead runner's runs will hang once runs go to runners.
- ``fleet_overview``: the four numbers (online ratio, job throughput, open anomalies,
  version skew: each runner's corral version and the bundles its live runs run, against
  the newest version and the current bundle), with the throughput per hour over the
  last day (``throughput_series``, the dashboard's chart).
- The JSON of tokens, runners and anomalies, and the operator's changes, each audited.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from corral import __version__
from corral.engine.actions import ActionError
from corral.engine.token import hash_token
from corral.errors import UsageError
from corral.project import Project
from corral.store import Anomaly, FleetToken, Runner, RunnerState, Store, TransitionRefused
from corral.views import iso_time

__all__ = [
    "ACTIVATION_PREFIX",
    "CONTROL_PLANE",
    "CREDENTIAL_PREFIX",
    "DEFAULT_TTL",
    "ONLINE_RATIO_WINDOW",
    "FleetSettings",
    "WarmReports",
    "anomaly_json",
    "bundles_running",
    "change_runner",
    "check_offline",
    "create_token",
    "find_runner",
    "fleet_overview",
    "fleet_settings",
    "fleet_token_json",
    "new_activation_token",
    "new_runner_credential",
    "parse_labels",
    "parse_ttl",
    "resolve_anomaly",
    "revoke_token",
    "runner_json",
    "series_hours",
    "throughput_series",
    "version_key",
]

ACTIVATION_PREFIX = "cft_"
CREDENTIAL_PREFIX = "crr_"
DEFAULT_TTL = timedelta(days=14)
#: The longest an activation token may live.
MAX_TTL = timedelta(days=365)
#: The online ratio counts runners heartbeating within this window (the seeds' 3 minutes).
ONLINE_RATIO_WINDOW = timedelta(minutes=3)
#: Throughput is counted over this window.
THROUGHPUT_WINDOW = timedelta(days=1)
#: The throughput series has one point per hour over this many hours, the current one last.
SERIES_HOURS = 24
#: Where the runs no runner ran are counted (the control plane's own executor).
CONTROL_PLANE = "control-plane"
_LABEL = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_MAX_LABELS = 32
_TTL = re.compile(r"(\d{1,6})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def new_activation_token() -> str:
    return ACTIVATION_PREFIX + secrets.token_urlsafe(32)


def new_runner_credential() -> str:
    return CREDENTIAL_PREFIX + secrets.token_urlsafe(32)


def parse_ttl(text: str) -> timedelta:
    """``14d``, ``12h``, ``30m``, ``90s``, ``2w`` (or a plain number of seconds) as a
    duration; UsageError otherwise, or past a year."""
    spelled = text.strip().lower()
    if spelled.isdigit():
        spelled += "s"
    match = _TTL.fullmatch(spelled)
    if match is None:
        raise UsageError(
            f"bad --ttl {text!r}: give a number and a unit, s m h d or w (e.g. 14d, 12h)"
        )
    ttl = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    if ttl <= timedelta(0) or ttl > MAX_TTL:
        raise UsageError(f"bad --ttl {text!r}: a token lives more than 0 s and at most 365 days")
    return ttl


def parse_labels(values: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Labels from ``gpu,big`` (or a list of them): lowercase letters, digits, ``_.-``;
    sorted, without repeats. UsageError names the bad one."""
    if values is None:
        return ()
    items = values.split(",") if isinstance(values, str) else list(values)
    labels = {item.strip() for item in items if item.strip()}
    for label in sorted(labels):
        if not _LABEL.fullmatch(label):
            raise UsageError(
                f"bad label {label!r}: use 1-63 lowercase letters, digits, '_', '.' or '-', "
                "starting with a letter or digit (e.g. gpu, big, linux-x86_64)"
            )
    if len(labels) > _MAX_LABELS:
        raise UsageError(f"too many labels ({len(labels)}): at most {_MAX_LABELS}")
    return tuple(sorted(labels))


@dataclass(frozen=True)
class FleetSettings:
    heartbeat_seconds: int = 5
    offline_after_seconds: int = 15
    max_runners: int | None = None


def fleet_settings(project: Project) -> FleetSettings:
    config = project.config
    return FleetSettings(
        heartbeat_seconds=config.fleet.heartbeat_seconds,
        offline_after_seconds=config.fleet.offline_after_seconds,
        max_runners=config.max_runners,
    )


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key for a version string: numeric parts as numbers (1.10 after 1.9)."""
    parts = re.split(r"[.+-]", version.strip().lstrip("v"))
    # isascii: "²" is a digit to str.isdigit but not to int().
    return tuple((0, int(p)) if p.isascii() and p.isdigit() else (1, p) for p in parts if p)


# -- JSON ------------------------------------------------------------------------------


def fleet_token_json(token: FleetToken, now: datetime) -> dict[str, Any]:
    return {
        "id": token.id,
        "status": token.status(now),
        "labels": list(token.labels),
        "note": token.note,
        "createdBy": token.created_by,
        "createdAt": iso_time(token.created_at),
        "expiresAt": iso_time(token.expires_at),
        "redeemedAt": iso_time(token.redeemed_at),
        "redeemedBy": token.redeemed_by,
        "revokedAt": iso_time(token.revoked_at),
    }


class WarmReports:
    """The ready warm workspaces each runner reported in its last heartbeat (by agent),
    as this control plane process heard them: kept in memory, not in the store. A
    runner heartbeats to one control plane at a time, so the sum over control planes'
    ``corral_warm_ready`` counts each workspace once; a report older than ``max_age``
    (the runner went silent or moved to another control plane) counts for nothing."""

    def __init__(self, max_age: float = 30.0) -> None:
        self.max_age = max_age
        self._heard: dict[str, tuple[float, dict[str, int]]] = {}

    def record(self, runner_id: str, counts: Mapping[str, int]) -> None:
        self._heard[runner_id] = (time.monotonic(), dict(counts))

    def of(self, runner_id: str) -> dict[str, int] | None:
        """``runner_id``'s last report (None: none heard lately)."""
        heard = self._heard.get(runner_id)
        if heard is None or time.monotonic() - heard[0] > self.max_age:
            return None
        return dict(heard[1])

    def by_agent(self, agents: Collection[str] | None = None) -> dict[str, int]:
        """Ready workspaces on runners by agent, over the runners heard lately (only of
        ``agents``, when given: a runner names its agents, the project decides which
        exist). Reports too old to count are forgotten here, so a process that heard
        many short-lived runners keeps only the live ones."""
        now = time.monotonic()
        for runner_id, (at, _) in list(self._heard.items()):
            if now - at > self.max_age:
                del self._heard[runner_id]
        total: dict[str, int] = {}
        for _, counts in self._heard.values():
            for agent, count in counts.items():
                if agents is None or agent in agents:
                    total[agent] = total.get(agent, 0) + count
        return total


def runner_json(
    runner: Runner,
    now: datetime,
    settings: FleetSettings,
    warm: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """A runner as the control API and the CLI show it; ``warm``: its ready warm
    workspaces by agent, when this process heard them (``WarmReports``)."""
    online = runner.online(now, settings.offline_after_seconds)
    if runner.state is RunnerState.REVOKED:
        status = "revoked"
    else:
        status = "online" if online else "offline"
    return {
        "id": runner.id,
        "name": runner.name,
        "hostname": runner.hostname,
        "labels": list(runner.labels),
        "slots": runner.slots,
        "version": runner.version,
        "state": runner.state.value,
        "online": online,
        "status": status,
        "joinedAt": iso_time(runner.joined_at),
        "lastHeartbeatAt": iso_time(runner.last_heartbeat_at),
        "secondsSinceHeartbeat": round((now - runner.last_heartbeat_at).total_seconds(), 1),
        "offlineSince": iso_time(runner.offline_since),
        "revokedAt": iso_time(runner.revoked_at),
        "address": runner.address,
        "tokenId": runner.token_id,
        "warm": None if warm is None else dict(warm),
    }


def anomaly_json(anomaly: Anomaly) -> dict[str, Any]:
    return {
        "id": anomaly.id,
        "kind": anomaly.kind.value,
        "subject": anomaly.subject,
        "at": iso_time(anomaly.at),
        "evidence": anomaly.evidence,
        "open": anomaly.open,
        "resolvedAt": iso_time(anomaly.resolved_at),
        "resolvedBy": anomaly.resolved_by,
        "resolution": anomaly.resolution,
    }


# -- liveness --------------------------------------------------------------------------


async def check_offline(store: Store, settings: FleetSettings) -> list[Runner]:
    """Mark the runners silent past the offline window (an anomaly each, once per outage,
    whichever process looks first: this, on read, or the scheduler's supervisor); returns
    those marked now."""
    return await store.mark_offline_runners(float(settings.offline_after_seconds))


# -- the four numbers ------------------------------------------------------------------


async def fleet_overview(store: Store, project: Project) -> dict[str, Any]:
    """Online ratio, job throughput, open anomalies and version skew (``corral fleet
    status``, ``GET /control/fleet/status``); looks for runners gone offline first."""
    settings = fleet_settings(project)
    await check_offline(store, settings)
    now = store.now()
    runners = await store.list_runners()
    live = [r for r in runners if r.state is not RunnerState.REVOKED]
    recent = [r for r in live if now - r.last_heartbeat_at <= ONLINE_RATIO_WINDOW]
    online = [r for r in live if r.online(now, settings.offline_after_seconds)]
    by_state: dict[str, int] = {state.value: 0 for state in RunnerState}
    for runner in runners:
        by_state[runner.state.value] += 1
    rows = await store.fleet_throughput(now - THROUGHPUT_WINDOW)
    hours = THROUGHPUT_WINDOW.total_seconds() / 3600
    per_agent: dict[str, int] = {}
    per_runner: dict[str, int] = {}
    for row in rows:
        per_agent[row["agent"]] = per_agent.get(row["agent"], 0) + row["ended"]
        where = row["runner_id"] or CONTROL_PLANE
        per_runner[where] = per_runner.get(where, 0) + row["ended"]
    completed = sum(per_agent.values())
    anomalies = await store.count_open_anomalies()
    versions = {r.version for r in live if r.version} | {__version__}
    newest = max(versions, key=version_key)
    behind = [r for r in live if version_key(r.version) < version_key(newest)]
    bundles = await bundles_running(store)
    by_runner = bundles["byRunner"]
    return {
        "ok": True,
        "at": iso_time(now),
        "settings": {
            "heartbeatSeconds": settings.heartbeat_seconds,
            "offlineAfterSeconds": settings.offline_after_seconds,
            "maxRunners": settings.max_runners,
        },
        "runners": {
            "registered": len(live),
            "online": len(online),
            "offline": len(live) - len(online),
            "heartbeatingLast3Minutes": len(recent),
            "byState": by_state,
        },
        "onlineRatio": (len(recent) / len(live)) if live else None,
        "throughput": {
            "windowHours": hours,
            "completed": completed,
            "perHour": round(completed / hours, 3),
            "perAgent": {
                agent: {"completed": n, "perHour": round(n / hours, 3)}
                for agent, n in sorted(per_agent.items())
            },
            "perRunner": {
                runner: {"completed": n, "perHour": round(n / hours, 3)}
                for runner, n in sorted(per_runner.items())
            },
            "hourly": await throughput_series(store, now),
        },
        "anomalies": {"open": sum(anomalies.values()), "byKind": dict(sorted(anomalies.items()))},
        "versions": {
            "controlPlane": __version__,
            "newest": newest,
            "behind": len(behind),
            "runners": [
                {
                    "id": r.id,
                    "name": r.name,
                    "version": r.version,
                    "current": version_key(r.version) >= version_key(newest),
                    "bundles": by_runner.get(r.id, []),
                }
                for r in live
            ],
        },
        "bundles": bundles,
    }


async def bundles_running(store: Store) -> dict[str, Any]:
    """The bundles the live runs run, by runner, against the current bundle: a runner is
    behind while any of its live runs runs another bundle than the current one (its
    runs started before a push keep the bundle they started with)."""
    head = await store.bundle_head()
    current = None if head is None else head.hash
    by_runner: dict[str, list[dict[str, Any]]] = {}
    rows = await store.live_bundles()
    # by runner, then the current bundle first, then the others by name
    rows.sort(key=lambda r: (r["runner_id"] or "", r["bundle"] != current, r["bundle"] or ""))
    for row in rows:
        where = row["runner_id"] or CONTROL_PLANE
        by_runner.setdefault(where, []).append(
            {
                "bundle": row["bundle"],
                "live": row["live"],
                "current": current is None or row["bundle"] == current,
            }
        )
    stale = {
        where: sum(b["live"] for b in found if not b["current"])
        for where, found in by_runner.items()
    }
    return {
        "current": current,
        "setAt": None if head is None else iso_time(head.set_at),
        "runnersBehind": sum(1 for where, n in stale.items() if n and where != CONTROL_PLANE),
        "liveRunsBehind": sum(stale.values()),
        "byRunner": by_runner,
    }


def series_hours(now: datetime, hours: int = SERIES_HOURS) -> list[datetime]:
    """The starts of the last ``hours`` UTC hours, oldest first, the current one last."""
    top = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return [top - timedelta(hours=back) for back in range(hours - 1, -1, -1)]


async def throughput_series(store: Store, now: datetime) -> dict[str, Any]:
    """Runs ended per UTC hour over the last day, the current (partial) hour last: per
    agent and per runner (``control-plane`` for the runs no runner ran), each a list of
    counts in the order of ``hours``."""
    slots = series_hours(now)
    index = {slot.strftime("%Y-%m-%dT%H"): i for i, slot in enumerate(slots)}
    per_agent: dict[str, list[int]] = {}
    per_runner: dict[str, list[int]] = {}
    for row in await store.fleet_throughput_hourly(slots[0]):
        at = index.get(row["hour"])
        if at is None:
            continue
        where = row["runner_id"] or CONTROL_PLANE
        per_agent.setdefault(row["agent"], [0] * len(slots))[at] += row["ended"]
        per_runner.setdefault(where, [0] * len(slots))[at] += row["ended"]
    return {
        "hours": [iso_time(slot) for slot in slots],
        "perAgent": dict(sorted(per_agent.items())),
        "perRunner": dict(sorted(per_runner.items())),
    }


# -- the operator's changes -------------------------------------------------------------


async def create_token(
    store: Store,
    *,
    ttl: timedelta = DEFAULT_TTL,
    labels: tuple[str, ...] = (),
    note: str | None = None,
    actor: str,
) -> tuple[str, FleetToken]:
    """Mint an activation token: the token (shown once) and its record."""
    token = new_activation_token()
    made = await store.create_fleet_token(
        hash_token(token), ttl=ttl, labels=labels, note=note, actor=actor
    )
    return token, made


async def revoke_token(store: Store, token_id: str, *, actor: str) -> tuple[FleetToken, bool]:
    """Revoke an unused token: the token after, and whether it changed. 404 unknown; 409
    already redeemed (revoke the runner instead)."""
    before = {t.id: t for t in await store.list_fleet_tokens()}.get(token_id)
    if before is None:
        raise ActionError(404, f"no activation token {token_id}; `corral fleet tokens ls`")
    if before.redeemed_at is not None:
        raise ActionError(
            409,
            f"activation token {token_id} was redeemed by runner {before.redeemed_by}; "
            f"revoke the runner instead (`corral fleet runners revoke {before.redeemed_by}`)",
        )
    after = await store.revoke_fleet_token(token_id, actor=actor)
    if after is None:
        raise ActionError(404, f"no activation token {token_id}")
    return after, before.revoked_at is None and after.revoked_at is not None


async def find_runner(store: Store, ref: str) -> Runner:
    """The runner ``ref`` names: its id, or the name of exactly one runner not revoked."""
    found = await store.get_runner(ref)
    if found is not None:
        return found
    named = [r for r in await store.list_runners() if r.name == ref]
    live = [r for r in named if r.state is not RunnerState.REVOKED]
    if len(live) == 1:
        return live[0]
    if len(live) > 1:
        ids = ", ".join(r.id for r in live)
        raise ActionError(400, f"{len(live)} runners are named {ref!r} ({ids}); give an id")
    if len(named) == 1:
        return named[0]
    raise ActionError(404, f"no runner {ref!r}; `corral fleet runners ls` lists them")


async def change_runner(
    store: Store, ref: str, state: RunnerState, *, actor: str
) -> tuple[Runner, bool]:
    """Revoke, drain, cordon or uncordon (``state`` active) the runner ``ref`` names:
    the runner after, and whether it changed. 404 unknown, 409 not from its state. A
    revoked runner's runs are taken back at once (``Store.release_owner``)."""
    runner = await find_runner(store, ref)
    try:
        after, changed = await store.set_runner_state(runner.id, state, actor=actor)
    except TransitionRefused as exc:
        raise ActionError(409, str(exc)) from None
    if after is None:
        raise ActionError(404, f"no runner {ref!r}")
    if after.state is RunnerState.REVOKED:
        # A revoked runner may not act for its runs any more: they are taken back now
        # (lost, their items queued again), not when their leases lapse.
        await store.release_owner(
            after.id, reason=f"runner {after.id} ({after.name}) was revoked by {actor}"
        )
    return after, changed


async def resolve_anomaly(
    store: Store, anomaly_id: int, note: str, *, actor: str
) -> tuple[Anomaly, bool]:
    if not note.strip():
        raise ActionError(400, "a resolution note is required (what was found, what was done)")
    found, changed = await store.resolve_anomaly(anomaly_id, note=note.strip(), actor=actor)
    if found is None:
        raise ActionError(404, f"no anomaly {anomaly_id}; `corral fleet anomalies ls --all`")
    return found, changed
