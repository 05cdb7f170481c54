"""Warm instances: workspaces prepared (``hooks.warm``) before work arrives.

An agent with ``[scale] warm = N`` has up to N workspaces, ready or in use by a run, on
each host whose scheduler executes its runs. Each lives under the project's state, at a
path that never changes (so whatever ``hooks.warm`` built, a virtual environment with
absolute paths say, keeps working), with a marker file beside it that says what it is
doing::

    .corral/warm/AGENT/KEY/          the workspace (the run's working directory)
    .corral/warm/AGENT/KEY.prep      being prepared (hooks.warm running)
    .corral/warm/AGENT/KEY.ready     prepared, free: {"created": ..., "runs": ..., "config": ...}
    .corral/warm/AGENT/KEY.busy      taken by a run

A run takes a workspace by renaming its ``.ready`` marker to ``.busy``: a rename is
atomic, so of two runs (or two schedulers on one project directory) that try the same
workspace only one succeeds. After the run, the workspace is given back (``.ready``
again, with one more run counted) when the run succeeded and the workspace is under
``warmMaxRuns`` and ``warmMaxAge``, and its agent's configuration is the one it was
prepared for; otherwise it is deleted. A run that finds none ready starts cold. The
pool is replenished in the background (up to N), one preparation at a time per agent; a
preparation that fails is logged (``.corral/logs/warm-AGENT.log``) and retried with
exponential backoff. Nothing here
ever blocks or fails a run: without a ready workspace a run starts cold.

The same pool serves runner hosts (``corral.runner.agent``): a runner keeps one per
agent it has run (``serves``), under its own work directory, prepared from the agent's
bundle in the runtime its runs use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.locate import private_dirs
from corral.project import Agent, Project
from corral.project._models import ScaleConfig

__all__ = [
    "Serves",
    "WarmInstance",
    "WarmPool",
    "config_fingerprint",
    "runs_here",
    "warm_settings",
]

log = logging.getLogger("corral.warm")

#: Longest wait between two attempts at preparing a workspace after failures.
MAX_BACKOFF = 300.0
#: The first wait after a failure; doubled with each failure in a row.
FIRST_BACKOFF = 2.0

#: Prepare ``agent``'s workspace at ``path`` (hooks.warm in its runtime); True if it worked.
Preparer = Callable[[Agent, Path, str], Awaitable[bool]]
#: Whether this host keeps ``agent`` warm (a scheduler: the agents it runs itself).
Serves = Callable[[Agent], bool]


def runs_here(agent: Agent) -> bool:
    """A scheduler's agents: those that do not run on the fleet's runners."""
    return agent.config.runs_on is None


def warm_settings(agent: Agent) -> ScaleConfig | None:
    """The agent's ``[scale]`` table when it asks for warm workspaces, else None."""
    scale = agent.config.scale
    if isinstance(scale, ScaleConfig) and scale.warm > 0:
        return scale
    return None


def config_fingerprint(agent: Agent) -> str:
    """What a workspace was prepared for: a change of the agent's config discards it."""
    text = agent.config.model_dump_json()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WarmInstance:
    """A workspace a run has taken."""

    agent: str
    key: str
    path: Path
    created: float
    #: Runs it has served before this one.
    runs: int
    config: str

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.created


class WarmPool:
    """The warm workspaces of one project on this host, and their upkeep."""

    def __init__(self, project: Project, preparer: Preparer, *, serves: Serves = runs_here) -> None:
        self.project = project
        self._preparer = preparer
        self._serves = serves
        self._preparing: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Deletions of renamed-away trees, running in threads (never on the loop).
        self._cleaning: set[asyncio.Future[None]] = set()
        self.root = project.root / ".corral" / "warm"

    # -- the workspaces on disk ------------------------------------------------------------

    def _dir(self, agent: str) -> Path:
        return self.root / agent

    def ready(self, agent: str) -> list[str]:
        """The keys of ``agent``'s free workspaces, oldest first."""
        try:
            names = os.listdir(self._dir(agent))
        except FileNotFoundError:
            return []
        return sorted(name[: -len(".ready")] for name in names if name.endswith(".ready"))

    def instances(self, agent: str) -> int:
        """``agent``'s workspaces on this host: ready, taken by a run, being prepared."""
        try:
            names = os.listdir(self._dir(agent))
        except FileNotFoundError:
            return 0
        return sum(1 for name in names if name.endswith((".ready", ".busy", ".prep")))

    def counts(self) -> dict[str, int]:
        """Ready workspaces per agent that asks for them."""
        return {
            name: len(self.ready(name))
            for name, agent in self.project.agents.items()
            if warm_settings(agent) is not None and self._serves(agent)
        }

    def take(self, agent: Agent) -> WarmInstance | None:
        """A ready workspace of ``agent``, now this caller's alone; None when none is."""
        settings = warm_settings(agent)
        if settings is None:
            return None
        folder = self._dir(agent.name)
        fingerprint = config_fingerprint(agent)
        current = self.project.agents.get(agent.name)
        if current is None or config_fingerprint(current) != fingerprint:
            # Not the configuration the pool prepares for (a rollout's canary, say): the
            # run starts cold, the pool's workspaces stay (reload discards stale ones).
            return None
        now = time.time()
        taken: WarmInstance | None = None
        for key in self.ready(agent.name):
            marker = folder / f"{key}.busy"
            try:
                os.rename(folder / f"{key}.ready", marker)
            except FileNotFoundError:
                continue  # another run took it first
            meta = _read(marker)
            instance = WarmInstance(
                agent.name,
                key,
                folder / key,
                float(meta.get("created", 0.0)),
                int(meta.get("runs", 0)),
                str(meta.get("config", "")),
            )
            if instance.config != fingerprint:  # prepared for another config: left alone
                with contextlib.suppress(FileNotFoundError):
                    os.rename(marker, folder / f"{key}.ready")
                continue
            if instance.age(now) >= settings.warm_max_age or not instance.path.is_dir():
                self._delete(folder, key, "it is too old or gone")
                continue
            _write(marker, {**meta, "pid": os.getpid()})
            taken = instance
            break
        self._kick.set()
        return taken

    def give_back(self, agent: Agent | None, instance: WarmInstance, succeeded: bool) -> bool:
        """After the run: the workspace is free again (True) or deleted (False)."""
        folder = self._dir(instance.agent)
        settings = warm_settings(agent) if agent is not None else None
        runs = instance.runs + 1
        why = None
        if not succeeded:
            why = "its run did not succeed"
        elif agent is None or settings is None:
            why = "its agent no longer asks for warm workspaces"
        elif config_fingerprint(agent) != instance.config:
            why = "its agent's config changed"
        elif runs >= settings.warm_max_runs:
            why = f"it served warmMaxRuns = {settings.warm_max_runs} runs"
        elif instance.age() >= settings.warm_max_age:
            why = f"it is older than warmMaxAge = {settings.warm_max_age} s"
        elif self.instances(instance.agent) > settings.warm:
            why = f"the agent has more than its warm = {settings.warm} workspaces"
        if why is not None:
            self._delete(folder, instance.key, why)
            self._kick.set()
            return False
        # The run's own corral files (prompt, credential links, setenv file, scratch)
        # are not the next run's: renamed away, deleted in a thread.
        trash = folder / f".trash-{instance.key}-{secrets.token_hex(4)}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(instance.path / ".corral", trash)
            self._remove(trash)
        marker = folder / f"{instance.key}.busy"
        _write(marker, {"created": instance.created, "runs": runs, "config": instance.config})
        os.rename(marker, folder / f"{instance.key}.ready")
        return True

    def _delete(self, folder: Path, key: str, why: str) -> None:
        log.info(
            "warm workspace %s of %s deleted: %s",
            key,
            folder.name,
            why,
            extra={"action": "warm_deleted", "agent": folder.name},
        )
        # Renamed away first: a half-deleted workspace is never taken for a whole one.
        trash = folder / f".trash-{key}-{secrets.token_hex(4)}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(folder / key, trash)
            self._remove(trash)
        for suffix in (".busy", ".ready", ".prep"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / f"{key}{suffix}")

    def _remove(self, tree: Path) -> None:
        """Delete ``tree`` (a workspace renamed away: a virtual environment, node_modules)
        in a thread, never blocking the event loop; where no loop runs, at once. Should
        this process stop first, the next one's sweep deletes what is left."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            shutil.rmtree(tree, ignore_errors=True)
            return
        future = loop.run_in_executor(None, functools.partial(shutil.rmtree, tree, True))
        self._cleaning.add(future)
        future.add_done_callback(self._cleaning.discard)

    async def cleaned(self) -> None:
        """Wait for the deletions under way."""
        while self._cleaning:
            await asyncio.gather(*self._cleaning, return_exceptions=True)

    def discard(self, agent: str) -> int:
        """Delete every free workspace of ``agent``; how many went."""
        keys = self.ready(agent)
        folder = self._dir(agent)
        gone = 0
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                os.rename(folder / f"{key}.ready", folder / f"{key}.busy")
                self._delete(folder, key, "its agent was removed or changed")
                gone += 1
        return gone

    def sweep_abandoned(self) -> None:
        """Workspaces left taken or half-prepared by a process that is gone: deleted."""
        try:
            agents = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in agents:
            folder = self.root / name
            with contextlib.suppress(OSError):
                for entry in os.listdir(folder):
                    if entry.startswith(".trash-"):
                        self._remove(folder / entry)
                        continue
                    key, dot, suffix = entry.rpartition(".")
                    if not dot or suffix not in ("busy", "prep"):
                        continue
                    pid = _read(folder / entry).get("pid")
                    if not isinstance(pid, int) and _young(folder / entry):
                        continue  # just taken: its taker writes its pid next
                    if not isinstance(pid, int) or not _alive(pid):
                        self._delete(folder, key, "the process that held it is gone")

    # -- upkeep ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self.sweep_abandoned()
            self._task = asyncio.create_task(self._keep(), name="warm workspaces")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._preparing.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        self._preparing.clear()
        await self.cleaned()

    def reload(self, project: Project) -> None:
        """A new configuration: workspaces of removed or changed agents are discarded."""
        old, self.project = self.project, project
        for name, agent in old.agents.items():
            new = project.agents.get(name)
            if not self._serves(agent) and (new is None or not self._serves(new)):
                continue  # another pool's (a runner keeps one per agent in one folder)
            if new is None or config_fingerprint(new) != config_fingerprint(agent):
                task = self._preparing.pop(name, None)
                if task is not None:
                    task.cancel()
                self.discard(name)
        self._kick.set()

    def kick(self) -> None:
        self._kick.set()

    async def _keep(self) -> None:
        while True:
            self._kick.clear()
            try:
                self._tend()
            except OSError as exc:
                log.warning("warm workspaces: %s", exc, extra={"action": "warm_error"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=1.0)

    def _tend(self) -> None:
        now = time.monotonic()
        for name, agent in self.project.agents.items():
            settings = warm_settings(agent)
            if settings is None or not self._serves(agent):
                continue
            self._expire(agent, settings)
            if name in self._preparing or now < self._not_before.get(name, 0.0):
                continue
            if self.instances(name) < settings.warm:
                task = asyncio.create_task(self._prepare(agent), name=f"warm {name}")
                self._preparing[name] = task
                task.add_done_callback(functools.partial(self._done, name))

    def _done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._preparing.get(name) is task:
            del self._preparing[name]
        self._kick.set()

    def _expire(self, agent: Agent, settings: ScaleConfig) -> None:
        folder = self._dir(agent.name)
        fingerprint = config_fingerprint(agent)
        now = time.time()
        for key in self.ready(agent.name):
            meta = _read(folder / f"{key}.ready")
            old = now - float(meta.get("created", 0.0)) >= settings.warm_max_age
            if old or meta.get("config") != fingerprint:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(folder / f"{key}.ready", folder / f"{key}.busy")
                    self._delete(folder, key, "it is too old or its agent's config changed")

    async def _prepare(self, agent: Agent) -> None:
        folder = self._dir(agent.name)
        key = f"w{time.time_ns():x}{secrets.token_hex(3)}"
        path = folder / key
        marker = folder / f"{key}.prep"
        created = time.time()
        ok = False
        why = "its preparation did not finish"
        try:
            private_dirs(folder, self.project.root / ".corral")
            _write(marker, {"pid": os.getpid()})
            os.mkdir(path, 0o700)
            created = time.time()
            if await self._preparer(agent, path, key):
                meta = {"created": created, "runs": 0, "config": config_fingerprint(agent)}
                _write(marker, meta)
                os.rename(marker, folder / f"{key}.ready")
                ok = True
        except Exception as exc:  # a full disk, a permission: a failure like any other
            why = f"its preparation failed: {exc}"
        finally:
            if not ok:
                with contextlib.suppress(OSError):
                    self._delete(folder, key, why)
        if ok:
            self._failures.pop(agent.name, None)
            self._not_before.pop(agent.name, None)
            log.info(
                "warm workspace %s of %s ready in %.2f s",
                key,
                agent.name,
                time.time() - created,
                extra={"action": "warm_ready", "agent": agent.name},
            )
            return
        failures = self._failures.get(agent.name, 0) + 1
        self._failures[agent.name] = failures
        wait = min(FIRST_BACKOFF * 2 ** (failures - 1), MAX_BACKOFF)
        self._not_before[agent.name] = time.monotonic() + wait
        log.warning(
            "preparing a warm workspace of %s failed (%d in a row; %s; see "
            ".corral/logs/warm-%s.log); trying again in %.0f s",
            agent.name,
            failures,
            why,
            agent.name,
            wait,
            extra={"action": "warm_failed", "agent": agent.name},
        )


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, object]) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(data))
    os.replace(temp, path)


#: A marker without a pid younger than this may be one a run has just taken.
YOUNG = 60.0


def _young(path: Path) -> bool:
    """Renamed or written in the last ``YOUNG`` seconds (a rename sets its ctime)."""
    try:
        stat = path.stat()
    except OSError:
        return False
    return time.time() - max(stat.st_mtime, stat.st_ctime) < YOUNG


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
