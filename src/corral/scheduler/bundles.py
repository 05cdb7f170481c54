"""Following the project's current bundle (`corral push`) without a restart.

Once a bundle has been pushed, the store's head names the project every control plane
runs. Each `corral start` follows it: at start, and whenever the head changes (on
PostgreSQL the notice ``bundle`` wakes it at once; the poll every ``interval`` seconds is
the fallback, and SQLite's only way), it

1. fetches the bundle's bytes from the store and checks them against their hash;
2. unpacks them into a directory of their own, ``.corral/bundles/<hex>/`` under the
   project directory (written under a temporary name and renamed into place, so a
   directory by that name is always complete; one already there is reused);
3. loads the project from it with the normal loader (the same checks as `corral start`);
4. applies it through the scheduler's hot reload (``Scheduler.reload``: the store learns
   the agents and limits, cron restarts on new schedules, the gateway's parts see the new
   agents; running runs go on with the files they started with).

A bundle that fails any step is reported once (the loader's errors, naming file and line)
and never replaces the running project; the next change of the head is tried. While it
follows bundles, the scheduler no longer reloads from the project directory's files (the
directory watcher is suspended): the store's head is the one source of the project, so
every control plane on the store converges on it. The store URL and ``[gateway]`` stay
those `corral start` began with, as on any reload. Runs claimed from then on record the
bundle hash they run.

The project directory's ``.env.toml`` does not travel in a bundle; the environment the
control plane was started with (`-E`, ``$CORRAL_ENV``) still applies to each bundle.
The last ``KEEP`` unpacked bundles are kept (runs that started on an older one still read
its files); older ones are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from corral.bundles import HASH_PREFIX, BundleError, unpack
from corral.errors import ConfigError, CorralError
from corral.inert import inert
from corral.project import Project, load_project, resolve_state_url
from corral.store import Store
from corral.store._bundles import BUNDLE

if TYPE_CHECKING:
    from corral.scheduler.service import Scheduler

__all__ = ["BundleFollower", "bundle_dir", "check_bundle", "load_bundle"]

log = logging.getLogger("corral.bundles")

#: The environment variable that overrides ``[state] url`` (as the loader reads it).
STATE_URL_VAR = "CORRAL_STATE_URL"
#: Unpacked bundles kept besides the running one.
KEEP = 5


def bundle_dir(root: Path, hash_: str) -> Path:
    """Where bundle ``hash_`` is unpacked for the project at ``root``."""
    return root / ".corral" / "bundles" / hash_.removeprefix(HASH_PREFIX)


async def load_bundle(store: Store, root: Path, hash_: str, env: str | None) -> Project:
    """The project of bundle ``hash_``, unpacked under ``root``'s state directory and
    loaded; BundleError or ConfigError when it cannot be."""
    target = bundle_dir(root, hash_)
    if not target.is_dir():
        data = await store.bundle_data(hash_)
        if data is None:
            raise BundleError(f"the store names bundle {hash_} as current but does not hold it")
        await asyncio.to_thread(_unpack_into, data, target, hash_)
    project = await asyncio.to_thread(load_project, target, env)
    # A relative SQLite path is the project directory's, not the unpacked bundle's.
    written = os.environ.get(STATE_URL_VAR) or project.config.state.url
    return dataclasses.replace(
        project,
        root=root,
        files=target,
        bundle=hash_,
        state_url=resolve_state_url(written, root),
    )


def check_bundle(data: bytes, hash_: str, env: str | None = None) -> Project:
    """Check that bundle ``data`` is what its hash says and that its project loads (the
    same checks as `corral start`), in a scratch directory; BundleError or ConfigError
    (with every issue) when not. Blocking: call it in a thread."""
    with tempfile.TemporaryDirectory(prefix="corral-bundle-") as scratch:
        tree = Path(scratch) / "project"
        unpack(data, tree, expect=hash_)
        return load_project(tree, env)


def _unpack_into(data: bytes, target: Path, hash_: str) -> None:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".part-", dir=target.parent))
    try:
        unpack(data, staging / "tree", expect=hash_)
        try:
            (staging / "tree").rename(target)
        except OSError:
            if not target.is_dir():  # not another process that got there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class BundleFollower:
    """Keeps ``scheduler`` on the store's current bundle."""

    def __init__(
        self, scheduler: Scheduler, *, interval: float = 2.0, settle: float = 0.25
    ) -> None:
        self.scheduler = scheduler
        self.root = scheduler.project.root
        self.env = scheduler.project.environment
        self.interval = interval
        #: The least time between two looks woken by notices. Every run's end wakes
        #: every waiter of the store's hub (its locks and its call may have moved on),
        #: so without it a busy scheduler read the bundle head once per run.
        self.settle = settle
        #: How many times the store's head was read (``check``).
        self.checks = 0
        #: The bundle running now (None: the project directory's files).
        self.applied: str | None = None
        #: When the running rollout was last read (``time.monotonic``).
        self._rollout_read = -float("inf")
        #: The last bundle that did not load, and why (until one does).
        self.failed: str | None = None
        self.error: str | None = None

    async def run(self) -> None:
        """Look at the head when a notice wakes it (``bundle``, or everything), at most
        once per ``settle`` seconds, and every ``interval`` seconds. A notice that comes
        while it looks or settles is kept: the next look follows the settling."""
        woken = asyncio.Event()
        unsubscribe = self.scheduler.store.changes.subscribe(BUNDLE, woken.set)
        try:
            while True:
                # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow the
                # cancellation of a shutdown that lands as the event is set.
                waiter = asyncio.ensure_future(woken.wait())
                try:
                    await asyncio.wait({waiter}, timeout=self.interval)
                finally:
                    waiter.cancel()
                woken.clear()
                await self.check()
                await asyncio.sleep(self.settle)
        finally:
            unsubscribe()

    async def check(self) -> bool:
        """Apply the store's current bundle if it is new; True when one was applied."""
        self.checks += 1
        await self._follow_rollout()
        head = await self.scheduler.store.bundle_head()
        if head is None or head.hash in (self.applied, self.failed):
            return False
        try:
            project = await load_bundle(self.scheduler.store, self.root, head.hash, self.env)
        except Exception as exc:  # any failure keeps the running project
            self.failed, self.error = head.hash, _describe(exc)
            log.error(
                "bundle %s does not load; the running project stays. %s",
                head.hash,
                self.error,
                extra={"action": "bundle_failed", "bundle": head.hash},
            )
            return False
        watcher = self.scheduler.watcher
        if watcher is not None:
            watcher.suspended = True
        await self.scheduler.reload(project)  # a store error propagates: tried again
        self.applied, self.failed, self.error = head.hash, None, None
        log.info(
            "running bundle %s (pushed by %s)",
            head.hash,
            head.set_by,
            extra={"action": "bundle_applied", "bundle": head.hash},
        )
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._prune)
        return True

    async def _follow_rollout(self) -> None:
        """Keep the scheduler on the store's running rollout, with its candidate bundle
        loaded for the runs the claims assign to it. A candidate that does not load is
        reported once and assigned no runs (the baseline runs them all)."""
        store = self.scheduler.store
        now = time.monotonic()
        if now - self._rollout_read < self.interval:
            return  # read at most once per interval: notices wake ``check`` far more often
        self._rollout_read = now
        rollout = await store.running_rollout()
        if rollout is None:
            self.scheduler.rollout = None
            return
        variants = self.scheduler.executor.variants
        if rollout.candidate not in variants:
            if rollout.candidate == self.failed:
                self.scheduler.rollout = None
                return
            try:
                project = await load_bundle(store, self.root, rollout.candidate, self.env)
            except Exception as exc:  # the baseline keeps every run
                self.failed, self.error = rollout.candidate, _describe(exc)
                self.scheduler.rollout = None
                log.error(
                    "the canary bundle %s of rollout %d does not load; its agents run the "
                    "baseline. %s",
                    rollout.candidate,
                    rollout.id,
                    self.error,
                    extra={"action": "bundle_failed", "bundle": rollout.candidate},
                )
                return
            for old in list(variants)[:-2]:  # runs of older canaries have long finished
                variants.pop(old, None)
            variants[rollout.candidate] = project
            log.info(
                "rollout %d: %.0f%% of the runs of %s run bundle %s",
                rollout.id,
                rollout.share * 100,
                ", ".join(rollout.agents),
                rollout.candidate,
                extra={"action": "rollout_followed", "bundle": rollout.candidate},
            )
        self.scheduler.rollout = rollout

    def _prune(self) -> None:
        """Remove unpacked bundles beyond the newest ``KEEP`` (never the running one)."""
        parent = self.root / ".corral" / "bundles"
        running = bundle_dir(self.root, self.applied) if self.applied else None
        found = [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
        found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in found[KEEP:]:
            if old != running:
                shutil.rmtree(old, ignore_errors=True)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ConfigError):
        return exc.render()
    if isinstance(exc, CorralError):
        return str(exc)
    return inert(f"{type(exc).__name__}: {exc}")
