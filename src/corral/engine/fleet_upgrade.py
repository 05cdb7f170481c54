"""Rolling corral out across the runners: canary, batches, comparison, rollback.

`corral fleet upgrade --to VERSION` records a rollout (``Store.create_fleet_rollout``).
The rollout advances on the runners' heartbeats (``on_heartbeat``, whichever control
plane process hears one; every change is a compare and set on the rollout's revision):

1. A step picks its runners: first ``canary`` of them, then batches of ``batch_share``
   of the fleet, among the runners online and active that do not run the target yet.
2. Each heartbeat of a runner of the current step answers ``upgrade`` (the version,
   where to get it: the wheel the control plane serves with its sha256, or an index).
   The runner drains, installs, swaps, restarts, smoke-checks, and reports.
3. Once every runner of the step runs the target, the step is watched for
   ``watch_seconds``; then the upgraded runners are compared with the rest over that
   window (``compare``). Not worse: the next step. Worse: the rollout halts (or, with
   ``on_worse = "rollback"``, rolls back).
4. A runner that reports a failed install, start or smoke check rolled itself back;
   the rollout then stops (state ``failed``) and no other runner is told to upgrade.
5. Rolled back (by the comparison or by `corral fleet upgrade rollback`): each runner
   the rollout upgraded is told to go back to the version it ran before.

The version window: a control plane serves runners whose corral version lies within
``runner_version_window()`` (``CORRAL_FLEET_RUNNER_VERSIONS="MIN,MAX"``; open by
default); a runner outside it is refused with an error naming both versions.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import statistics
import time
import weakref
from datetime import datetime
from pathlib import Path
from typing import Any

from corral import __version__
from corral.engine.actions import ActionError
from corral.engine.fleet import FleetSettings, version_key
from corral.errors import StoreConflict, UsageError
from corral.pep440 import is_version
from corral.store import FleetRollout, Runner, RunnerState, Store
from corral.views import iso_time

__all__ = [
    "MIN_RUNNER_VERSION",
    "compare",
    "halt_rollout",
    "in_window",
    "on_heartbeat",
    "parse_duration",
    "parse_share",
    "rollback_rollout",
    "rollout_json",
    "runner_version_window",
    "start_rollout",
    "wheel_of",
    "window_refusal",
]

#: The oldest runner version this control plane speaks with (None: no floor yet).
MIN_RUNNER_VERSION: str | None = None
#: Comparison: the upgraded runners are worse when their failure rate exceeds the rest's
#: by this much, over at least ``MIN_RUNS`` of their runs ...
FAILURE_MARGIN = 0.2
MIN_RUNS = 3
#: ... or their median run lasts more than this many times the rest's (plus 1 s).
DURATION_FACTOR = 1.5
#: A runner restarting into a new version is silent for a while (the re-exec, the smoke
#: check): silent past the offline window plus this, it counts as lost to its upgrade.
RESTART_GRACE = 60.0
_FAILED_RUNS = ("failed", "timed_out", "lost")
_DURATION = re.compile(r"(\d{1,7}(?:\.\d+)?)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_share(text: str) -> float:
    """``25%`` or ``0.25`` as a share of the fleet, more than 0 and at most 1."""
    spelled = text.strip()
    try:
        share = float(spelled[:-1]) / 100 if spelled.endswith("%") else float(spelled)
    except ValueError:
        share = -1.0
    if not 0 < share <= 1:
        raise UsageError(f"bad --batch {text!r}: give a share of the fleet, e.g. 25% or 0.25")
    return share


def parse_duration(text: str, what: str = "--watch") -> float:
    """``10s``, ``5m``, ``1h`` (or seconds) as seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise UsageError(f"bad {what} {text!r}: give a number and a unit, s m h or d (e.g. 1h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def runner_version_window() -> tuple[str | None, str | None]:
    """The runner versions this control plane serves, lowest and highest (inclusive;
    None: unbounded), from ``CORRAL_FLEET_RUNNER_VERSIONS="MIN,MAX"`` (either may be
    empty). Unset, every version is served: corral has one runner protocol so far, and
    its changes are negotiated per field (a refused field is sent again without it)."""
    given = os.environ.get("CORRAL_FLEET_RUNNER_VERSIONS", "").strip()
    low, _, high = given.partition(",")
    return low.strip() or MIN_RUNNER_VERSION, high.strip() or None


def _window_text() -> str:
    low, high = runner_version_window()
    if low and high:
        return f"{low} to {high}"
    return f"{low} and later" if low else f"up to {high}"


def in_window(version: str) -> bool:
    low, high = runner_version_window()
    key = version_key(version)
    return (low is None or version_key(low) <= key) and (high is None or key <= version_key(high))


def window_refusal(version: str) -> str | None:
    """The error for a runner of ``version`` outside the window (None: inside it, or a
    runner that did not say its version)."""
    if not version or in_window(version):
        return None
    return (
        f"this runner's corral {version} is outside the runner versions this control plane "
        f"(corral {__version__}) serves, {_window_text()}: install a corral within them on "
        f"the runner, or roll the fleet to one (`corral fleet upgrade --to {__version__}`), "
        "or widen the window (CORRAL_FLEET_RUNNER_VERSIONS on the control plane)"
    )


# -- starting and stopping -----------------------------------------------------------


async def start_rollout(
    store: Store,
    *,
    target: str,
    canary: int = 1,
    batch_share: float = 0.25,
    watch_seconds: float = 3600.0,
    channel: str = "stable",
    wheel: Path | None = None,
    index: str | None = None,
    on_worse: str = "halt",
    actor: str,
) -> FleetRollout:
    """Record a rollout of ``target``. 409 while another runs; 400 for a wheel that is
    not there or not of that version, a target that is no version or is outside the
    version window."""
    if not is_version(target):
        raise ActionError(
            400,
            f"--to {target!r} is not a corral version: give one as PEP 440 spells it, "
            "e.g. 1.2.0, 1.2.0rc1 or 1.2.0.post1",
        )
    latest = await store.latest_fleet_rollout()
    if latest is not None and latest.state == "running":
        raise ActionError(
            409,
            f"rollout {latest.id} to {latest.target} is running: wait for it, or "
            "`corral fleet upgrade halt` / `corral fleet upgrade rollback` first",
        )
    if not in_window(target):
        raise ActionError(
            400,
            f"corral {target} is outside the runner versions this control plane "
            f"({__version__}) serves, {_window_text()}: upgrade the control plane first",
        )
    if on_worse not in ("halt", "rollback"):
        raise ActionError(400, f"bad --on-worse {on_worse!r}: halt or rollback")
    if canary < 0:
        raise ActionError(400, "--canary is a number of runners, 0 or more")
    source: dict[str, Any]
    if wheel is not None:
        path = wheel.expanduser().resolve()
        if not path.is_file() or path.suffix != ".whl":
            raise ActionError(400, f"--wheel {wheel}: no wheel file there")
        if not path.name.startswith(f"corral-{target}-"):
            raise ActionError(
                400,
                f"--wheel {path.name} is not a wheel of corral {target} (corral-{target}-*.whl)",
            )
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise ActionError(400, f"--wheel {path}: cannot read it ({exc})") from None
        source = {"wheel": str(path), "name": path.name, "sha256": digest}
    elif index:
        source = {"index": index}
    else:
        raise ActionError(400, "say where the runners get it: --wheel FILE or --index URL")
    detail = {"steps": [], "runners": {}, "onWorse": on_worse, "log": []}
    try:
        return await store.create_fleet_rollout(
            target=target,
            channel=channel,
            canary=canary,
            batch_share=batch_share,
            watch_seconds=watch_seconds,
            source=source,
            detail=detail,
            actor=actor,
        )
    except StoreConflict as exc:  # another was started meanwhile
        raise ActionError(409, str(exc)) from None


async def _latest(store: Store) -> FleetRollout:
    latest = await store.latest_fleet_rollout()
    if latest is None:
        raise ActionError(404, "no rollout yet; `corral fleet upgrade --to VERSION` starts one")
    return latest


async def halt_rollout(store: Store, *, actor: str) -> FleetRollout:
    """Stop ordering upgrades; the upgraded runners stay as they are."""
    while True:
        latest = await _latest(store)
        if latest.state != "running":
            raise ActionError(409, f"rollout {latest.id} is {latest.state}, not running")
        detail = _note(latest.detail, store.now(), f"halted by {actor}")
        done = await store.update_fleet_rollout(latest, state="halted", detail=detail)
        if done is not None:
            return done


async def rollback_rollout(store: Store, *, actor: str) -> FleetRollout:
    """Tell every runner the rollout upgraded to go back to the version it ran before."""
    while True:
        latest = await _latest(store)
        if latest.state == "rolled_back":
            return latest
        detail = _note(latest.detail, store.now(), f"rolled back by {actor}")
        done = await store.update_fleet_rollout(latest, state="rolled_back", detail=detail)
        if done is not None:
            return done


def _note(detail: dict[str, Any], now: datetime, text: str) -> dict[str, Any]:
    fresh = dict(detail)
    fresh["log"] = [*detail.get("log", []), {"at": iso_time(now), "note": text}][-50:]
    return fresh


# -- the heartbeat's part ------------------------------------------------------------


async def on_heartbeat(
    store: Store, runner: Runner, report: dict[str, Any] | None, settings: FleetSettings
) -> tuple[dict[str, Any] | None, bool]:
    """Record what ``runner`` reports of its upgrade, advance the rollout, and answer
    its order (None: nothing to do) and whether the report is recorded (False: every
    compare and set was lost to other processes; the runner reports it again).

    It acts on copies at most ``COPY_SECONDS`` old (D130): the latest rollout as this
    process last read or wrote it, and, while one runs, the runner list. A change is
    still a compare and set on the rollout's revision, so a decision taken on a stale
    copy is never recorded: the write fails and the rollout is read again."""
    rollout = await store.latest_fleet_rollout(max_age=COPY_SECONDS)
    if rollout is None or not _active(rollout):
        return None, True
    recorded = False
    for _ in range(3):  # compare and set: another process may have moved it meanwhile
        fleet = await _fleet_copy(store) if rollout.state == "running" else _Fleet([])
        state, detail = _advance(rollout, runner, report, fleet, store.now(), settings)
        if state == "watch":
            state, detail = await _judge(store, rollout, detail, settings)
        if state == rollout.state and detail == rollout.detail:
            recorded = True
            break
        moved = await store.update_fleet_rollout(rollout, state=state, detail=detail)
        if moved is not None:
            rollout, recorded = moved, True
            break
        again = await store.latest_fleet_rollout()
        if again is None:
            return None, True
        rollout = again
    return _order(rollout, runner), recorded


#: How old the copies a heartbeat acts on may be (s): the latest rollout and the runner
#: list (D130). An order reaches a runner at most this much (and one heartbeat) later.
COPY_SECONDS = 1.0
_actives: dict[tuple[str, int], bool] = {}


def _active(rollout: FleetRollout) -> bool:
    """Whether heartbeats still have a part in ``rollout``: it runs, or it was rolled
    back and a runner it upgraded has not gone back yet."""
    if rollout.state == "running":
        return True
    if rollout.state != "rolled_back":
        return False
    key = (rollout.id, rollout.revision)  # the answer of a revision never changes
    known = _actives.get(key)
    if known is None:
        runners = rollout.detail.get("runners", {}).values()
        known = any(r.get("state") == "upgraded" for r in runners)
        _actives.clear()
        _actives[key] = known
    return known


class _Fleet:
    """The runners not revoked, in the store's order, and by id."""

    def __init__(self, runners: list[Runner]) -> None:
        self.runners = runners
        self.by_id = {r.id: r for r in runners}


_fleets: weakref.WeakKeyDictionary[Store, tuple[float, _Fleet]] = weakref.WeakKeyDictionary()
_fleet_reads: weakref.WeakKeyDictionary[Store, asyncio.Lock] = weakref.WeakKeyDictionary()


async def _fleet(store: Store) -> list[Runner]:
    return [r for r in await store.list_runners() if r.state is not RunnerState.REVOKED]


async def _fleet_copy(store: Store) -> _Fleet:
    """The runner list, read again once the copy is ``COPY_SECONDS`` old (by one
    heartbeat: the others arriving meanwhile wait for its read)."""
    held = _fleets.get(store)
    if held is not None and time.monotonic() - held[0] <= COPY_SECONDS:
        return held[1]
    reading = _fleet_reads.setdefault(store, asyncio.Lock())
    async with reading:
        held = _fleets.get(store)
        started = time.monotonic()
        if held is not None and started - held[0] <= COPY_SECONDS:
            return held[1]
        fleet = _Fleet(await _fleet(store))
        _fleets[store] = (started, fleet)
        return fleet


def _advance(  # noqa: C901 - the rollout's state machine, read in one place
    rollout: FleetRollout,
    runner: Runner,
    report: dict[str, Any] | None,
    fleet: _Fleet,
    now: datetime,
    settings: FleetSettings,
) -> tuple[str, dict[str, Any]]:
    """The rollout's next state and detail after this heartbeat (pure). ``watch``: the
    current step's window passed, judge it. ``fleet`` may be a little older than
    ``runner``, which stands for itself in it. While a step is open this looks at the
    step's runners only; the whole fleet is read to pick the next step."""
    detail = {**rollout.detail, "runners": dict(rollout.detail.get("runners", {}))}
    detail["steps"] = [dict(step) for step in rollout.detail.get("steps", [])]
    runners: dict[str, dict[str, Any]] = detail["runners"]
    state = rollout.state
    mine = runners.get(runner.id)
    if mine is not None:
        mine = runners[runner.id] = dict(mine)
        if report and str(report.get("version")) == rollout.target:
            if report.get("state") == "failed" and mine.get("state") != "failed":
                mine.update(state="failed", stage=report.get("stage"), error=report.get("error"))
                mine["at"] = iso_time(now)
                if state == "running":
                    state = "failed"
                    detail = _note(
                        detail,
                        now,
                        f"runner {runner.name} could not run {rollout.target} "
                        f"({report.get('stage')}): it rolled back by itself; the rollout stops",
                    )
            elif report.get("state") == "draining" and mine.get("state") == "ordered":
                mine["state"] = "draining"
        if runner.version == rollout.target and mine.get("state") in ("ordered", "draining"):
            mine.update(state="upgraded", at=iso_time(now))
        if (
            state == "rolled_back"
            and mine.get("state") == "upgraded"
            and runner.version == mine.get("from")
        ):
            mine.update(state="rolled_back", at=iso_time(now))
    if state != "running":
        return state, detail
    steps: list[dict[str, Any]] = detail["steps"]
    if steps and steps[-1].get("verdict") is None:
        step = steps[-1]
        lost = [
            r
            for rid in dict.fromkeys(step["runners"])
            if (r := runner if rid == runner.id else fleet.by_id.get(rid)) is not None
            and r.state is not RunnerState.REVOKED
            and runners.get(rid, {}).get("state") in ("ordered", "draining")
            and not r.online(now, settings.offline_after_seconds + RESTART_GRACE)
        ]
        if lost:  # heartbeat health: a runner went silent during its upgrade
            names = ", ".join(r.name for r in lost)
            for r in lost:
                runners[r.id] = {**runners[r.id], "state": "failed", "stage": "offline"}
                runners[r.id]["error"] = "went offline during its upgrade"
            step["verdict"] = {"worse": True, "why": f"runner(s) offline while upgrading: {names}"}
            return "halted", _note(detail, now, f"runner(s) {names} went offline upgrading; halted")
        if step.get("upgradedAt") is None:
            if all(runners.get(rid, {}).get("state") == "upgraded" for rid in step["runners"]):
                step["upgradedAt"] = iso_time(now)
            return state, detail
        since = datetime.fromisoformat(step["upgradedAt"])
        if (now - since).total_seconds() >= rollout.watch_seconds:
            return "watch", detail
        return state, detail
    chosen = {rid for step in steps for rid in step["runners"]}
    everyone = [runner if r.id == runner.id else r for r in fleet.runners]
    online = [
        r
        for r in everyone
        if r.state is RunnerState.ACTIVE and r.online(now, settings.offline_after_seconds)
    ]
    waiting = [r for r in online if r.version != rollout.target and r.id not in chosen]
    if not waiting:
        behind = [r for r in everyone if r.version != rollout.target and r.id not in chosen]
        if not behind:
            return "completed", _note(detail, now, f"every runner runs {rollout.target}")
        return state, detail  # the rest are offline or cordoned: wait for them
    if not steps:
        count, kind = max(1, rollout.canary), "canary"
    else:
        count, kind = max(1, math.ceil(rollout.batch_share * len(everyone))), "batch"
    picked = waiting[:count]
    steps.append(
        {
            "kind": kind,
            "runners": [r.id for r in picked],
            "startedAt": iso_time(now),
            "upgradedAt": None,
            "verdict": None,
        }
    )
    for r in picked:
        runners[r.id] = {"state": "ordered", "from": r.version, "name": r.name, "at": iso_time(now)}
    return state, detail


async def _judge(
    store: Store, rollout: FleetRollout, detail: dict[str, Any], settings: FleetSettings
) -> tuple[str, dict[str, Any]]:
    step = detail["steps"][-1]
    since = datetime.fromisoformat(step["upgradedAt"])
    runs = await store.runs_ended_by_runner(since)
    upgraded = {rid for rid, r in detail["runners"].items() if r.get("state") == "upgraded"}
    fleet = await _fleet(store)
    verdict = compare(runs, upgraded, fleet, store.now(), settings)
    step["verdict"] = verdict
    now = store.now()
    if verdict["worse"]:
        state = "rolled_back" if detail.get("onWorse") == "rollback" else "halted"
        text = f"step {len(detail['steps'])} ({step['kind']}) is worse: {verdict['why']}; {state}"
        return state, _note(detail, now, text)
    return "running", _note(detail, now, f"step {len(detail['steps'])} ({step['kind']}) is fine")


def compare(
    runs: list[dict[str, Any]],
    upgraded: set[str],
    fleet: list[Runner],
    now: datetime,
    settings: FleetSettings,
) -> dict[str, Any]:
    """The upgraded runners against the rest over the watch window. Worse when

    - failure rate: the upgraded runners ended at least ``MIN_RUNS`` runs and their
      share of failed (failed, timed out, lost) runs exceeds the rest's by more than
      ``FAILURE_MARGIN`` (the rest's is 0 when they ended none);
    - run duration: both ended at least ``MIN_RUNS`` runs and the upgraded runners'
      median exceeds ``DURATION_FACTOR`` times the rest's plus 1 s;
    - heartbeat health: an upgraded runner is offline (silent past the offline window).
    """

    def stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
        failed = sum(1 for r in rows if r["state"] in _FAILED_RUNS)
        seconds = [r["seconds"] for r in rows if r["seconds"] is not None]
        return {
            "runs": len(rows),
            "failed": failed,
            "failureRate": round(failed / len(rows), 4) if rows else None,
            "medianSeconds": round(statistics.median(seconds), 3) if seconds else None,
        }

    new = stats([r for r in runs if r["runner_id"] in upgraded])
    rest = stats([r for r in runs if r["runner_id"] not in upgraded])
    silent = [
        r.name
        for r in fleet
        if r.id in upgraded and not r.online(now, settings.offline_after_seconds)
    ]
    why = []
    if new["runs"] >= MIN_RUNS:
        margin = (new["failureRate"] or 0) - (rest["failureRate"] or 0)
        if margin > FAILURE_MARGIN:
            why.append(
                f"failure rate {new['failureRate']:.0%} on the upgraded runners against "
                f"{(rest['failureRate'] or 0):.0%} on the rest"
            )
    if new["runs"] >= MIN_RUNS and rest["runs"] >= MIN_RUNS:
        if new["medianSeconds"] is not None and rest["medianSeconds"] is not None:
            if new["medianSeconds"] > DURATION_FACTOR * rest["medianSeconds"] + 1:
                why.append(
                    f"median run {new['medianSeconds']:g} s on the upgraded runners against "
                    f"{rest['medianSeconds']:g} s on the rest"
                )
    if silent:
        why.append(f"upgraded runner(s) offline: {', '.join(silent)}")
    return {"worse": bool(why), "why": "; ".join(why), "upgraded": new, "rest": rest}


def _order(rollout: FleetRollout, runner: Runner) -> dict[str, Any] | None:
    mine = rollout.detail.get("runners", {}).get(runner.id)
    if mine is None:
        return None
    if rollout.state == "running" and mine.get("state") in ("ordered", "draining"):
        if runner.version == rollout.target:
            return None
        order: dict[str, Any] = {"version": rollout.target, "rollout": rollout.id}
        if "wheel" in rollout.source:
            order["wheel"] = {"name": rollout.source["name"], "sha256": rollout.source["sha256"]}
        else:
            order["index"] = rollout.source["index"]
        return order
    if rollout.state == "rolled_back" and mine.get("state") == "upgraded":
        back = str(mine.get("from") or "")
        if back and runner.version != back:
            return {"version": back, "rollout": rollout.id, "rollback": True}
    return None


def wheel_of(rollout: FleetRollout | None, version: str) -> Path | None:
    """The wheel the control plane serves for ``version`` (the latest rollout's). None
    also when this process cannot read the file at the recorded path, or it is no longer
    the wheel recorded (its sha256 differs): the path is the one `corral fleet upgrade
    --wheel` resolved, read by every control plane process from its own disk."""
    if rollout is None or rollout.target != version or "wheel" not in rollout.source:
        return None
    path = Path(rollout.source["wheel"])
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return path if hashlib.sha256(data).hexdigest() == rollout.source.get("sha256") else None


def rollout_json(rollout: FleetRollout, fleet: list[Runner] | None = None) -> dict[str, Any]:
    detail = rollout.detail
    steps = detail.get("steps", [])
    answer: dict[str, Any] = {
        "id": rollout.id,
        "target": rollout.target,
        "channel": rollout.channel,
        "canary": rollout.canary,
        "batch": rollout.batch_share,
        "watchSeconds": rollout.watch_seconds,
        "source": {k: v for k, v in rollout.source.items() if k != "wheel"},
        "state": rollout.state,
        "onWorse": detail.get("onWorse", "halt"),
        "steps": steps,
        "runners": detail.get("runners", {}),
        "log": detail.get("log", []),
        "createdBy": rollout.created_by,
        "createdAt": iso_time(rollout.created_at),
        "updatedAt": iso_time(rollout.updated_at),
    }
    if fleet is not None:
        live = [r for r in fleet if r.state is not RunnerState.REVOKED]
        answer["fleet"] = {
            "runners": len(live),
            "atTarget": sum(1 for r in live if r.version == rollout.target),
            "versions": sorted({r.version for r in live}, key=version_key),
        }
    return answer
