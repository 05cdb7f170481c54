"""The control plane processes upgrade themselves, one at a time (`corral fleet upgrade
--control-plane`).

A rollout with a control plane phase (``detail["planes"]``) moves the `corral start`
processes sharing its store first, before any runner is told to upgrade. Each process
looks at the rollout every ``TICK`` seconds (``PlaneUpgrader``). The phase holds one
**turn**, ``{"id": "<host>:<pid>", "until": ...}``, taken and renewed by compare and set
on the rollout's revision: only the process holding it upgrades, so two never restart
together; a turn not renewed by ``until`` (its holder died) is taken by the next. A
process of the target version records itself ``done`` (with the version it came from)
and gives the turn back; once every live scheduler is done, the phase ends and the
runners' steps begin.

The holder installs the target beside the running version (``corral.engine.versions``,
as a runner does, under ``<project>/.corral/versions``), stops taking new work, waits
for its running runs to end (none is killed: a long run delays the upgrade; the others
take the queue), points ``current`` at the new version, starts the guard and re-executes
itself (same pid) with the new interpreter. The new process runs the smoke check before
its scheduler takes any work: a real run of the probe agent through a ``Scheduler`` over
a SQLite store of its own, then its gateway's ``/health``. Healthy, it goes on; failed,
it swaps ``current`` back and re-executes the old version, which records the failure:
the rollout stops (``failed``) and no other process upgrades.

The version window: a control plane process starts against a store only when its corral
lies within ``CORRAL_CONTROL_PLANE_VERSIONS="MIN,MAX"`` (either may be empty; unset,
every version), refused otherwise with an error naming both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from corral import __version__
from corral.engine.fleet import version_key
from corral.engine.fleet_upgrade import planes_pending, wheel_data
from corral.engine.versions import (
    START_TIMEOUT,
    UpgradeError,
    Versions,
    judge_trial,
    start_guard,
)
from corral.project import load_project
from corral.scheduler.service import Scheduler, SchedulerOptions, is_live
from corral.store import FleetRollout, NewItem, RunState, Store, TriggerKind, open_store
from corral.views import iso_time

__all__ = [
    "TICK",
    "PlaneUpgrader",
    "plane_key",
    "plane_smoke_check",
    "plane_version_window",
    "plane_window_refusal",
]

log = logging.getLogger("corral.upgrade")

#: How often a control plane process looks at the rollout.
TICK = 1.0
#: A turn lapses this long after its last renewal (the holder renews it every tick while
#: it drains; its new version must be healthy within START_TIMEOUT, then it is done).
TURN_SECONDS = START_TIMEOUT + 30.0
#: The probe's run through the smoke check's scheduler must end within this long.
PLANE_SMOKE_TIMEOUT = 30.0


def plane_key() -> str:
    """This process among the control plane processes: host and pid (the same across
    the re-exec of an upgrade)."""
    return f"{socket.gethostname()}:{os.getpid()}"


# -- the version window --------------------------------------------------------------


def plane_version_window() -> tuple[str | None, str | None]:
    given = os.environ.get("CORRAL_CONTROL_PLANE_VERSIONS", "").strip()
    low, _, high = given.partition(",")
    return low.strip() or None, high.strip() or None


def plane_window_refusal(version: str = __version__) -> str | None:
    """The error for a control plane process of ``version`` outside the window (None:
    inside it)."""
    low, high = plane_version_window()
    key = version_key(version)
    if (low is None or version_key(low) <= key) and (high is None or key <= version_key(high)):
        return None
    window = f"{low} and later" if low else f"up to {high}"
    if low and high:
        window = f"{low} to {high}"
    return (
        f"this control plane process runs corral {version}, outside the control plane "
        f"versions this store's fleet accepts, {window} (CORRAL_CONTROL_PLANE_VERSIONS): "
        "start it from a corral within them (`corral fleet upgrade --to VERSION "
        "--control-plane` moves the running ones), or widen the window"
    )


# -- the smoke check -----------------------------------------------------------------


async def plane_smoke_check(work_dir: Path, gateway_url: str | None = None) -> None:
    """A real run of the probe agent (``corral.runner.probe``) through a ``Scheduler``
    over a SQLite store of its own, then (given) the gateway's ``/health``.
    UpgradeError when either fails."""
    root = Path(tempfile.mkdtemp(dir=work_dir, prefix=".plane-smoke-"))
    try:
        folder = root / "agents" / "probe"
        folder.mkdir(parents=True)
        (root / "config.toml").write_text("")
        (folder / "SKILL.md").write_text("---\nname: probe\n---\n# probe\n")
        command = f'["{sys.executable}", "-m", "corral.runner.probe"]'
        (folder / "config.toml").write_text(
            f"timeout = {int(PLANE_SMOKE_TIMEOUT)}\n[harness]\ncommand = {command}\n"
        )
        project = load_project(root)
        async with await open_store(f"sqlite:///{root / 'probe.db'}") as store:
            scheduler = Scheduler(project, store, SchedulerOptions(drain_grace=2.0))
            scheduler.watcher = None
            scheduler.bundles = None
            stop = asyncio.Event()
            await scheduler.start()
            running = asyncio.create_task(scheduler.run(stop), name="smoke scheduler")
            try:
                await scheduler.submit(NewItem(agent="probe", trigger=TriggerKind.MANUAL))
                ended = await _probe_ended(store)
            finally:
                stop.set()
                await running
        if ended is None:
            raise UpgradeError(
                f"the smoke check's probe run did not end within {PLANE_SMOKE_TIMEOUT:g} s"
            )
        if ended[0] is not RunState.SUCCEEDED:
            raise UpgradeError(f"the smoke check's probe run ended {ended[0].value}: {ended[1]}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if gateway_url is not None:
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                answer = await client.get(f"{gateway_url}/health")
        except httpx.HTTPError as exc:
            raise UpgradeError(f"the gateway's /health did not answer: {exc}") from None
        if answer.status_code != 200:
            raise UpgradeError(f"the gateway's /health answered {answer.status_code}")


async def _probe_ended(store: Store) -> tuple[RunState, str] | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PLANE_SMOKE_TIMEOUT
    while loop.time() < deadline:
        runs = await store.list_runs(limit=5)
        done = [r for r in runs if r.state.is_terminal]
        if done:
            run = done[0]
            return run.state, f"exit {run.exit_code}, {run.error or 'no error given'}"
        await asyncio.sleep(0.1)
    return None


# -- the process's part --------------------------------------------------------------


class PlaneUpgrader:
    """One control plane process's part in a rollout's control plane phase."""

    def __init__(self, store: Store, scheduler: Scheduler, stop: asyncio.Event) -> None:
        self.store = store
        self.scheduler = scheduler
        self.stop = stop
        self.key = plane_key()
        self.versions = Versions(scheduler.project.root / ".corral", tag=str(os.getpid()))
        #: After the process stops: the interpreter and arguments to re-execute into.
        self.reexec: list[str] | None = None
        #: The version this process was upgraded from (its trial's), once healthy.
        self.came_from: str | None = None
        self.failure: dict[str, Any] | None = None
        self._upgrading = False
        #: Set when the rollout stopped (halted) while this process drained for its turn.
        self._abandon = asyncio.Event()

    # -- on start ---------------------------------------------------------------------

    def under_trial(self) -> dict[str, Any] | None:
        """The trial this process is the new version of (None: a plain start). Also
        takes a failure the previous version recorded, to report."""
        if self.versions.root.is_dir():  # made by this project's first upgrade here
            self.versions.adopt_running()
        self.failure = self.versions.take_failure()
        trial = self.versions.trial()
        if trial is None or trial.get("to") != __version__:
            return None
        return trial

    async def check(self, trial: dict[str, Any], gateway_url: str | None) -> bool:
        """The smoke check of the new version: healthy (True, the trial ends), or
        ``current`` is swapped back and ``reexec`` names the old version (False)."""
        back = await judge_trial(
            self.versions,
            trial,
            lambda: plane_smoke_check(self.versions.root.parent, gateway_url),
            log,
        )
        if back is not None:
            self.reexec = back
            return False
        self.came_from = str(trial["from"])
        return True

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                await self.tick()
            except Exception:  # the store failing now and then: look again next tick
                log.exception("the control plane upgrade tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), TICK)

    async def tick(self) -> None:  # noqa: C901 - the process's part, read in one place
        for _ in range(3):  # compare and set: another process may have moved it meanwhile
            rollout = await self.store.latest_fleet_rollout()
            if rollout is None:
                return
            if self.failure is not None and self.failure.get("version") == rollout.target:
                if await self._update(rollout, self._failed(rollout)):
                    self.versions.clear_failure()
                    self.failure = None
                continue
            stopped = rollout.state != "running" or not planes_pending(rollout.detail)
            if stopped and self._upgrading:
                # halted while this process installs or drains for its turn: it gives the
                # turn up and goes on serving its version (no restart)
                self._abandon.set()
                planes = _planes(rollout)
                given = planes.get("turn")
                if isinstance(given, dict) and given.get("id") == self.key:
                    planes["turn"] = None
                    note = f"{self.key} gave its turn up: the rollout is {rollout.state}"
                    _log(planes, self.store.now(), note)
                    if not await self._update(rollout, planes):
                        continue
                return
            if stopped:
                return
            planes = _planes(rollout)
            given = planes.get("turn")
            turn: dict[str, Any] | None = given if isinstance(given, dict) else None
            mine = turn is not None and turn.get("id") == self.key
            now = self.store.now()
            if __version__ == rollout.target:
                if self.key not in planes["done"]:
                    planes["done"][self.key] = {"from": self.came_from, "at": iso_time(now)}
                if mine:
                    planes["turn"] = None
                live = await self._live()
                # a process restarting into the target is not live meanwhile: its turn
                # holds the phase open until it is done (or the turn lapsed)
                held = planes["turn"] is not None and not _lapsed(planes["turn"], now)
                if not held and live and all(key in planes["done"] for key in live):
                    planes["state"] = "done"
                    names = ", ".join(live)
                    _log(planes, now, f"every control plane process ({names}) runs it")
                if planes != rollout.detail["planes"]:
                    if not await self._update(rollout, planes):
                        continue
                return
            if self._upgrading:
                if turn is not None and mine:  # renew the turn while draining
                    planes["turn"] = {**turn, "until": iso_time(now + _turn())}
                    if not await self._update(rollout, planes):
                        continue
                return
            if turn is not None and not mine:
                if not _lapsed(turn, now):
                    return  # another process's turn
                _log(planes, now, f"the turn of {turn['id']} lapsed")
            planes["turn"] = {"id": self.key, "at": iso_time(now), "until": iso_time(now + _turn())}
            _log(planes, now, f"{self.key} upgrades from {__version__}")
            if await self._update(rollout, planes):
                self._upgrading = True
                asyncio.create_task(self._upgrade(rollout), name="plane upgrade")  # noqa: RUF006
                return

    async def _live(self) -> list[str]:
        """The live control plane processes sharing the store, by key."""
        now = self.store.now()
        renew = self.scheduler.options.renew_every
        return sorted(
            {
                f"{s.host}:{s.pid}"
                for s in await self.store.list_schedulers(live_only=True)
                if is_live(s, now, renew)
            }
        )

    def _failed(self, rollout: FleetRollout) -> dict[str, Any]:
        assert self.failure is not None
        planes = _planes(rollout)
        planes["failed"] = {"id": self.key, **self.failure}
        planes["state"] = "failed"
        planes["turn"] = None
        _log(
            planes,
            self.store.now(),
            f"{self.key} could not run {rollout.target} ({self.failure.get('stage')}): "
            "it rolled back by itself; the rollout stops",
        )
        return planes

    async def _update(self, rollout: FleetRollout, planes: dict[str, Any]) -> bool:
        detail = {**rollout.detail, "planes": planes}
        state = "failed" if planes.get("state") == "failed" else rollout.state
        if state == "failed" and rollout.state == "running":
            log_entry = planes["log"][-1]
            detail["log"] = [*detail.get("log", []), log_entry][-50:]
        moved = await self.store.update_fleet_rollout(rollout, state=state, detail=detail)
        return moved is not None

    async def _upgrade(self, rollout: FleetRollout) -> None:
        version = rollout.target
        log.info("upgrading the control plane to corral %s", version)
        self._abandon.clear()
        try:
            python = await self._install(rollout)
        except Exception as exc:
            error = f"the install of corral {version} failed: {exc}"
            log.error("%s", error)
            self.failure = {"version": version, "stage": "install", "error": error}
            self._upgrading = False
            return
        # no new work; the running runs end first (none is killed); the others take the queue
        if not self._abandon.is_set():
            self.scheduler.draining = True
            self.scheduler.wake()
            running = len(self.scheduler.running)
            log.info("corral %s installed: draining %d run(s)", version, running)
        while self.scheduler.running and not self.stop.is_set() and not self._abandon.is_set():
            await asyncio.sleep(0.2)
        if self.stop.is_set():
            return  # stopped meanwhile (by the operator): no restart
        if self._abandon.is_set():  # the rollout was halted meanwhile: no restart either
            self.scheduler.resume()
            self._upgrading = False
            log.info(
                "the rollout stopped while this process drained for corral %s: it takes "
                "work again on corral %s",
                version,
                __version__,
            )
            return
        argv = ["-m", "corral", *sys.argv[1:]]
        self.versions.begin_trial(__version__, version, argv, START_TIMEOUT)
        self.versions.point_at(version)
        start_guard(self.versions.root.parent, os.getpid(), tag=str(os.getpid()))
        log.info("corral %s installed and current: restarting into it", version)
        self.reexec = [str(python), *argv]
        self.stop.set()

    async def _install(self, rollout: FleetRollout) -> Path:
        """The interpreter of the rollout's version, installed side by side from the wheel
        the store keeps (written to a private file first) or from the index."""
        version = rollout.target
        await asyncio.to_thread(self.versions.adopt_running)
        if version in self.versions.installed() and self.versions.python(version).exists():
            return self.versions.python(version)
        source = rollout.source
        if "sha256" not in source:
            index = str(source.get("index") or "")
            return await asyncio.to_thread(self.versions.install, version, None, index)
        found = await wheel_data(self.store, rollout, version)
        if found is None:
            raise UpgradeError(
                f"the wheel of corral {version} the rollout recorded is not in the store "
                "(or its sha256 differs): start the rollout again with --wheel"
            )
        name, data = found
        return await asyncio.to_thread(self._install_wheel, version, name, data)

    def _install_wheel(self, version: str, name: str, data: bytes) -> Path:
        self.versions.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.versions.root, prefix=".wheel-") as tmp:
            wheel = Path(tmp) / Path(name).name
            wheel.write_bytes(data)
            return self.versions.install(version, wheel)


def _lapsed(turn: dict[str, Any], now: datetime) -> bool:
    return datetime.fromisoformat(str(turn["until"])) <= now


def _turn() -> timedelta:
    return timedelta(seconds=TURN_SECONDS)


def _planes(rollout: FleetRollout) -> dict[str, Any]:
    planes = dict(rollout.detail.get("planes") or {})
    planes["done"] = dict(planes.get("done") or {})
    planes["log"] = list(planes.get("log") or [])
    return planes


def _log(planes: dict[str, Any], now: datetime, text: str) -> None:
    planes["log"] = [*planes.get("log", []), {"at": iso_time(now), "note": text}][-50:]
