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
import html
import math
import os
import re
import statistics
import time
import weakref
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from corral import __version__
from corral.engine.actions import ActionError
from corral.engine.fleet import ONLINE_RATIO_WINDOW, FleetSettings, version_key
from corral.errors import StoreConflict, UsageError
from corral.pep440 import is_prerelease, is_version, sort_key
from corral.store import FleetRollout, Runner, RunnerState, Store
from corral.views import iso_time

__all__ = [
    "CHANNELS",
    "MAX_WHEEL_BYTES",
    "MIN_RUNNER_VERSION",
    "compare",
    "halt_rollout",
    "in_window",
    "index_versions",
    "keep_wheel",
    "on_heartbeat",
    "parse_duration",
    "parse_share",
    "pick_version",
    "planes_pending",
    "rollback_rollout",
    "rollout_answer",
    "rollout_json",
    "runner_version_window",
    "start_rollout",
    "version_figures",
    "wheel_data",
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
#: Per-version figures count the runs that ended within this window (seconds).
FIGURES_WINDOW = 3600.0
#: The release channels: ``stable`` takes final releases only, ``beta`` and ``pre`` (the
#: same) pre-releases and development releases too.
CHANNELS = ("stable", "beta", "pre")
#: The largest corral wheel the control plane keeps (as large as a bundle may be).
MAX_WHEEL_BYTES = 64 << 20
#: How many earlier versions' sources a rollout keeps, for a rollback to reinstall.
KEEP_BACK = 5
_WHEEL_NAME = re.compile(r"corral-([^-/\\]{1,64})-[A-Za-z0-9_.-]{1,150}\.whl")
_INDEX_FILE = re.compile(r"corral-([^-/]{1,64}?)(?:-[^/]*\.whl|\.tar\.gz|\.zip)", re.IGNORECASE)
_HREF = re.compile(r"""href\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_INDEX_TIMEOUT = 20.0
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


def planes_pending(detail: dict[str, Any]) -> bool:
    """Whether the rollout's control plane phase (``corral.engine.plane_upgrade``) still
    runs: until it ends, no runner is told to upgrade."""
    planes = detail.get("planes")
    return isinstance(planes, dict) and planes.get("state") == "running"


# -- starting and stopping -----------------------------------------------------------


async def start_rollout(
    store: Store,
    *,
    target: str | None,
    canary: int = 1,
    batch_share: float = 0.25,
    watch_seconds: float = 3600.0,
    channel: str | None = None,
    wheel: Path | None = None,
    stored_wheel: dict[str, str] | None = None,
    index: str | None = None,
    on_worse: str = "halt",
    control_plane: bool = False,
    actor: str,
) -> FleetRollout:
    """Record a rollout of ``target`` (None: the newest version of ``channel`` on
    ``index``). The runners get it from a wheel the store keeps (``wheel``: a file read
    here and kept; ``stored_wheel``: ``{name, sha256}`` of one uploaded already, see
    ``keep_wheel``) or from ``index``. 409 while another runs; 400 for a wheel that is not
    there or not of that version, a target that is no version or outside the window, a
    channel that does not take it or finds nothing."""
    target, channel = await _choose(target, channel, index)
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
    source = await _source(store, target, wheel, stored_wheel, index, actor)
    back = _back_sources(latest, target)
    if back:
        source["back"] = back
    detail: dict[str, Any] = {"steps": [], "runners": {}, "onWorse": on_worse, "log": []}
    if control_plane:  # the control plane processes first, one at a time
        detail["planes"] = {"state": "running", "turn": None, "done": {}, "log": []}
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


async def _choose(target: str | None, channel: str | None, index: str | None) -> tuple[str, str]:
    """The version to roll out and its channel: ``target``, or the newest version on
    ``index`` that ``channel`` takes; the channel, when not given, is the target's kind."""
    if channel is not None and channel not in CHANNELS:
        raise ActionError(400, f"bad --channel {channel!r}: {', '.join(CHANNELS)}")
    if target is None:
        if not index:
            raise ActionError(
                400, "say which version (--to VERSION), or name an --index for --channel to pick"
            )
        channel = channel or "stable"
        target = pick_version(await index_versions(index), channel, index)
    if not is_version(target):
        raise ActionError(
            400,
            f"--to {target!r} is not a corral version: give one as PEP 440 spells it, "
            "e.g. 1.2.0, 1.2.0rc1 or 1.2.0.post1",
        )
    if channel is None:
        channel = "beta" if is_prerelease(target) else "stable"
    elif channel == "stable" and is_prerelease(target):
        raise ActionError(
            400,
            f"corral {target} is a pre-release: the stable channel takes final releases "
            "only; say --channel beta to roll it out",
        )
    return target, channel


async def _source(
    store: Store,
    target: str,
    wheel: Path | None,
    stored_wheel: dict[str, str] | None,
    index: str | None,
    actor: str,
) -> dict[str, Any]:
    """Where the runners get ``target``: a wheel the store keeps, or the index."""
    if wheel is not None:
        path = wheel.expanduser().resolve()
        if not path.is_file() or path.suffix != ".whl":
            raise ActionError(400, f"--wheel {wheel}: no wheel file there")
        _wheel_version(path.name, target)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise ActionError(400, f"--wheel {path}: cannot read it ({exc})") from None
        kept = await keep_wheel(store, data, path.name, actor=actor)
        return {"name": kept["name"], "sha256": kept["sha256"], "stored": True}
    if stored_wheel is not None:
        name, digest = str(stored_wheel.get("name", "")), str(stored_wheel.get("sha256", ""))
        _wheel_version(name, target)
        known = re.fullmatch(r"[0-9a-f]{64}", digest) and await store.fleet_wheel(digest)
        if not known:
            raise ActionError(400, f"no corral wheel with sha256 {digest} is kept: upload it first")
        return {"name": name, "sha256": digest, "stored": True}
    if index:
        return {"index": index}
    raise ActionError(400, "say where the runners get it: --wheel FILE or --index URL")


def _wheel_version(name: str, target: str | None) -> str:
    """The version a corral wheel's file name says (400 when it is no corral wheel's
    name, or says another version than ``target``)."""
    match = _WHEEL_NAME.fullmatch(name)
    if match is None or not is_version(match.group(1)):
        raise ActionError(
            400, f"{name!r} is not the file name of a corral wheel (corral-VERSION-*.whl)"
        )
    if target is not None and match.group(1) != target:
        raise ActionError(
            400, f"--wheel {name} is not a wheel of corral {target} (corral-{target}-*.whl)"
        )
    return match.group(1)


def _back_sources(latest: FleetRollout | None, target: str) -> dict[str, dict[str, Any]]:
    """Where the runners get the versions rolled out before (by version, newest last, at
    most ``KEEP_BACK``): a rollback order names it, so a runner that no longer keeps the
    version it goes back to can install it again."""
    if latest is None:
        return {}
    back: dict[str, dict[str, Any]] = dict(latest.source.get("back") or {})
    back.pop(latest.target, None)
    back[latest.target] = {k: v for k, v in latest.source.items() if k != "back"}
    back.pop(target, None)
    return dict(list(back.items())[-KEEP_BACK:])


async def keep_wheel(
    store: Store, data: bytes, name: str, *, actor: str, sha256: str | None = None
) -> dict[str, Any]:
    """Keep a corral wheel in the store (by content: any control plane process serves
    it); 400 when ``name`` is no corral wheel's, the bytes are no zip, or they do not hash
    to ``sha256`` (the uploader's own hash of them, when given)."""
    version = _wheel_version(name, None)
    if len(data) > MAX_WHEEL_BYTES:
        raise ActionError(413, f"a corral wheel may be at most {MAX_WHEEL_BYTES} bytes")
    if not data.startswith(b"PK"):
        raise ActionError(400, f"{name}: these bytes are no wheel (a wheel is a zip)")
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and sha256.lower() != digest:
        raise ActionError(
            400,
            f"{name}: the bytes received hash to sha256 {digest}, not the {sha256} sent "
            "with them: the upload was damaged; send it again",
        )
    digest, stored = await store.store_fleet_wheel(data, name=name, version=version, actor=actor)
    return {"name": name, "version": version, "sha256": digest, "size": len(data), "stored": stored}


async def index_versions(index: str) -> list[str]:
    """The corral versions a package index offers: its PEP 503 page ``<index>/corral/``
    (``http(s)://``, or ``file://`` a directory laid out so, whose ``corral/`` holds an
    ``index.html`` or just the files). 400 when the index cannot be read."""
    try:
        parts = urlsplit(index)
    except ValueError as exc:
        raise ActionError(400, f"--index {index!r} is no URL: {exc}") from None
    names: list[str] = []
    if parts.scheme == "file":
        if not parts.path.startswith("/"):
            raise ActionError(400, f"--index {index!r}: a file:// URL names an absolute path")
        folder = Path(unquote(parts.path)) / "corral"
        page = folder / "index.html"
        try:
            if page.is_file():
                text = await asyncio.to_thread(page.read_text, "utf-8", "replace")
                names = [unquote(h) for h in _HREF.findall(html.unescape(text))]
            else:
                names = [p.name for p in await asyncio.to_thread(lambda: list(folder.iterdir()))]
        except OSError as exc:
            raise ActionError(400, f"cannot read the index {index}: {exc}") from None
    elif parts.scheme in ("http", "https"):
        where = index.rstrip("/") + "/corral/"
        try:
            async with httpx.AsyncClient(timeout=_INDEX_TIMEOUT, follow_redirects=True) as http:
                response = await http.get(where, headers={"Accept": "text/html"})
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            raise ActionError(400, f"cannot read the index at {where}: {exc}") from None
        if response.status_code != 200:
            raise ActionError(400, f"the index at {where} answered {response.status_code}")
        names = [unquote(h) for h in _HREF.findall(html.unescape(response.text))]
    else:
        raise ActionError(400, f"--index {index!r}: give an http(s):// or file:// URL")
    found = set()
    for name in names:
        base = name.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        match = _INDEX_FILE.fullmatch(base)
        if match is not None and is_version(match.group(1)):
            found.add(match.group(1))
    return sorted(found, key=sort_key)


def pick_version(versions: list[str], channel: str, index: str) -> str:
    """The newest of ``versions`` that ``channel`` takes (400 when none)."""
    taken = [v for v in versions if channel != "stable" or not is_prerelease(v)]
    if not taken:
        offered = ", ".join(versions[-5:]) or "none"
        raise ActionError(
            400,
            f"the index {index} offers no corral version for the {channel} channel "
            f"(its newest: {offered}); name one with --to VERSION"
            + (", or --channel beta for pre-releases" if channel == "stable" and versions else ""),
        )
    return max(taken, key=sort_key)


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
    if state != "running" or planes_pending(detail):
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
    if planes_pending(rollout.detail):
        return None
    if rollout.state == "running" and mine.get("state") in ("ordered", "draining"):
        if runner.version == rollout.target:
            return None
        order: dict[str, Any] = {"version": rollout.target, "rollout": rollout.id}
        return {**order, **_where(rollout.source)}
    if rollout.state == "rolled_back" and mine.get("state") == "upgraded":
        back = str(mine.get("from") or "")
        if back and runner.version != back:
            order = {"version": back, "rollout": rollout.id, "rollback": True}
            # where to get it again, for a runner that no longer keeps it
            return {**order, **_where((rollout.source.get("back") or {}).get(back) or {})}
    return None


def _where(source: dict[str, Any]) -> dict[str, Any]:
    """Where an order tells a runner to get its version: the wheel (name, sha256) the
    control plane serves, or the index."""
    if "sha256" in source:
        return {"wheel": {"name": source["name"], "sha256": source["sha256"]}}
    if source.get("index"):
        return {"index": source["index"]}
    return {}


def _source_for(rollout: FleetRollout, version: str) -> dict[str, Any] | None:
    if version == rollout.target:
        return rollout.source
    found = (rollout.source.get("back") or {}).get(version)
    return found if isinstance(found, dict) else None


async def wheel_data(
    store: Store, rollout: FleetRollout | None, version: str
) -> tuple[str, bytes] | None:
    """The wheel (file name, bytes) the control plane serves for ``version``: the latest
    rollout's target, or a version it rolls back to. Kept in the store; a rollout recorded
    before (``source.wheel``, a path on the control plane's disk) is read from there."""
    source = None if rollout is None else _source_for(rollout, version)
    if source is None or "sha256" not in source:
        return None
    if source.get("stored"):
        data = await store.fleet_wheel(str(source["sha256"]))
    else:
        path = await asyncio.to_thread(_legacy_wheel, source)
        data = None if path is None else await asyncio.to_thread(path.read_bytes)
    if data is None or hashlib.sha256(data).hexdigest() != source["sha256"]:
        return None
    return str(source["name"]), data


def _legacy_wheel(source: dict[str, Any]) -> Path | None:
    path = Path(str(source.get("wheel") or ""))
    return path if source.get("wheel") and path.is_file() else None


def _shown(source: dict[str, Any]) -> dict[str, Any]:
    """A rollout's source as shown: without a control plane path (an old rollout's)."""
    shown = {k: v for k, v in source.items() if k not in ("wheel", "back")}
    if source.get("back"):
        shown["back"] = {v: _shown(s) for v, s in source["back"].items()}
    return shown


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
        "source": _shown(rollout.source),
        "state": rollout.state,
        "onWorse": detail.get("onWorse", "halt"),
        "steps": steps,
        "runners": detail.get("runners", {}),
        "log": detail.get("log", []),
        "controlPlane": detail.get("planes"),
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


async def version_figures(store: Store) -> list[dict[str, Any]]:
    """Per corral version the runners run (revoked ones left out), oldest first: the
    runners, how many heartbeat in the last 3 minutes and that over the runners (the
    online ratio), the runs they ended in the last hour (per hour), the share of those
    that failed (failed, timed out, lost), and the open anomalies about them (whose
    subject is one of its runners, or whose evidence names one)."""
    now = store.now()
    live = [r for r in await store.list_runners() if r.state is not RunnerState.REVOKED]
    version_of = {r.id: r.version or "unknown" for r in live}
    ended = await store.runs_ended_by_runner(now - timedelta(seconds=FIGURES_WINDOW))
    anomalies = await store.list_anomalies(limit=1000)
    figures: dict[str, dict[str, Any]] = {}
    for runner in live:
        row = figures.setdefault(
            version_of[runner.id],
            {"runners": 0, "online": 0, "ended": 0, "failed": 0, "anomalies": 0},
        )
        row["runners"] += 1
        if now - runner.last_heartbeat_at <= ONLINE_RATIO_WINDOW:
            row["online"] += 1
    for run in ended:
        version = version_of.get(run["runner_id"])
        if version is not None:
            figures[version]["ended"] += 1
            figures[version]["failed"] += run["state"] in _FAILED_RUNS
    for anomaly in anomalies:
        named = {anomaly.subject}
        for key in ("runner", "runnerId", "runner_id"):
            if anomaly.evidence and isinstance(anomaly.evidence.get(key), str):
                named.add(anomaly.evidence[key])
        for version in {version_of[r] for r in named if r in version_of}:
            figures[version]["anomalies"] += 1
    hours = FIGURES_WINDOW / 3600
    return [
        {
            "version": version,
            "runners": row["runners"],
            "online": row["online"],
            "onlineRatio": round(row["online"] / row["runners"], 4),
            "runsPerHour": round(row["ended"] / hours, 3),
            "failureRate": round(row["failed"] / row["ended"], 4) if row["ended"] else None,
            "openAnomalies": row["anomalies"],
        }
        for version, row in sorted(figures.items(), key=lambda item: sort_key(item[0]))
    ]


async def rollout_answer(store: Store, rollout: FleetRollout) -> dict[str, Any]:
    """What `corral fleet upgrade status` and ``GET /control/fleet/upgrade`` show: the
    rollout, the fleet against its target, and the figures per version."""
    answer = rollout_json(rollout, await store.list_runners())
    answer["versions"] = await version_figures(store)
    return answer
