"""One shared producer of fleet snapshots for every open dashboard stream.

However many browsers watch, one task reads the store: on a change notice from this
process (``scheduler.link.changes``: a run of it ended, or every waiter was woken), on
``poke()`` (a
dashboard action), and every ``interval`` seconds for what other processes sharing the
store did. A snapshot that differs from the last one is published with a new version;
streams wait for the next version and render fragments from it. A fragment is rendered
once per snapshot and shared (``Snapshot.memo``), so N viewers of a page cost one
render and at most one extra query per change, not N query loops.

The producer runs only while someone subscribes. When the scheduler has drained and no
run of this process is left, the feed closes and every stream ends, so the gateway can
shut down (uvicorn waits for open responses).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from corral.status import fleet_status, lock_entry
from corral.store import ItemState, LockWaiter, QueueItem, Run, RunState
from corral.store._notify import RUN_ENDED, Watch

if TYPE_CHECKING:
    from corral.scheduler.service import Scheduler

__all__ = ["Feed", "Snapshot"]

T = TypeVar("T")

log = logging.getLogger("corral.dashboard")

#: Keys of the status document that change with the clock alone.
_VOLATILE = frozenset({"ageSeconds", "heldSeconds"})
QUEUE_LIMIT = 500


@dataclass(eq=False)
class Snapshot:
    """What the fleet looked like at ``at``; ``version`` grows with every change."""

    version: int
    at: datetime
    status: dict[str, Any]
    live: dict[str, Run]
    queue: list[QueueItem]
    waiters: list[LockWaiter]
    #: Every held lock, oldest first (the status document lists only the first ones).
    locks: list[dict[str, Any]] = field(default_factory=list)
    _memo: dict[Hashable, asyncio.Future[Any]] = field(default_factory=dict, repr=False)

    async def memo(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        """``compute()``'s answer for ``key``, computed once for this snapshot however
        many streams ask (a rendered fragment, a run read from the store)."""
        future = self._memo.get(key)
        if future is None:
            future = asyncio.ensure_future(compute())
            self._memo[key] = future
        result: T = await asyncio.shield(future)
        return result

    def agent(self, name: str) -> dict[str, Any] | None:
        return next((a for a in self.status["agents"] if a["agent"] == name), None)


class Feed:
    """Snapshots of the fleet for many subscribers, produced by one task."""

    def __init__(self, scheduler: Scheduler, *, interval: float = 1.0, gap: float = 0.1) -> None:
        self._scheduler = scheduler
        self.interval = interval
        self._gap = gap
        self._current: Snapshot | None = None
        self._version = 0
        self._published = asyncio.Event()
        self._poke = asyncio.Event()
        self._subscribers = 0
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        #: How many snapshots were read from the store (what many viewers cost).
        self.builds = 0

    # -- for pages and streams ----------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        """The latest snapshot when the producer runs, else a fresh one (not published)."""
        if self._current is not None and self._task is not None:
            return self._current
        return await self._build(self._version)

    def finished(self) -> bool:
        """True once the scheduler has drained and no run of this process is left: the
        streams that do not read snapshots (the task board's) end then too."""
        return self.closed or self._finished()

    def poke(self) -> None:
        """Something changed here (an operator action): look now, not at the next poll."""
        self._poke.set()

    async def updates(self, keepalive: float) -> AsyncIterator[Snapshot | None]:
        """Each new snapshot, the current one first; None after ``keepalive`` seconds
        without one (time for a keep-alive). Ends when the feed closes."""
        self._subscribers += 1
        self._start()
        seen = 0
        try:
            while not self.closed:
                current = self._current
                if current is not None and current.version > seen:
                    seen = current.version
                    yield current
                    continue
                published = self._published
                try:
                    await asyncio.wait_for(published.wait(), keepalive)
                except TimeoutError:
                    yield None
        finally:
            self._subscribers -= 1
            if self._subscribers == 0:
                self._stop()

    # -- the producer ---------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None and not self.closed:
            self._task = asyncio.create_task(self._produce(), name="dashboard-feed")
            self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """No silent death: a producer that failed (a bug) is logged, and a new one starts
        after ``interval`` while anyone still watches."""
        if task.cancelled():
            return
        failure = task.exception()
        if failure is not None:
            log.error(
                "the dashboard's snapshot producer failed",
                exc_info=failure,
                extra={"action": "dashboard_feed_crashed"},
            )
            asyncio.get_running_loop().call_later(self.interval, self._restart, task)

    def _restart(self, failed: asyncio.Task[None]) -> None:
        if self._task is failed:
            self._task = None
            if self._subscribers:
                self._start()

    def _stop(self) -> None:
        task, self._task = self._task, None
        self._current = None
        if task is not None:
            task.cancel()

    async def _produce(self) -> None:
        last: str | None = None
        while True:
            if self._finished():
                self.closed = True
                self._publish()
                return
            self._poke.clear()
            # Listening before reading, so that a run ending while the snapshot is built
            # is not left to the interval.
            watch = self._scheduler.link.changes.watch([RUN_ENDED])
            try:
                snapshot = await self._build(self._version + 1)
            except Exception:
                log.warning(
                    "the dashboard could not read the store; retrying",
                    exc_info=True,
                    extra={"action": "dashboard_feed_failed"},
                )
            else:
                fingerprint = _fingerprint(snapshot)
                if fingerprint != last:
                    last = fingerprint
                    self._version = snapshot.version
                    self._current = snapshot
                    self._publish()
                    await asyncio.sleep(self._gap)
            await self._wait_for_change(watch)

    def _publish(self) -> None:
        published, self._published = self._published, asyncio.Event()
        published.set()

    def _finished(self) -> bool:
        return self._scheduler.draining and not self._scheduler.running

    async def _wait_for_change(self, watch: Watch) -> None:
        changed = asyncio.ensure_future(watch.wait(self.interval))
        poked = asyncio.ensure_future(self._poke.wait())
        try:
            await asyncio.wait({changed, poked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (changed, poked):
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter

    async def _build(self, version: int) -> Snapshot:
        self.builds += 1
        store = self._scheduler.store
        status = await fleet_status(store, self._scheduler.project)
        live = await store.list_runs(states=[RunState.STARTING, RunState.RUNNING], limit=1000)
        queue = await store.list_items(
            states=[ItemState.QUEUED, ItemState.CLAIMED], limit=QUEUE_LIMIT
        )
        waiters = await store.list_lock_waiters()
        at = datetime.now(UTC)
        locks = sorted(await store.list_locks(), key=lambda lock: lock.acquired_at)
        return Snapshot(
            version=version,
            at=at,
            status=status,
            live={run.id: run for run in live},
            queue=sorted(queue, key=lambda item: item.id),
            waiters=waiters,
            locks=[lock_entry(lock, at) for lock in locks],
        )


def _fingerprint(snapshot: Snapshot) -> str:
    """What the snapshot says, without what only the clock changed."""
    return repr(
        (
            _stable(snapshot.status),
            sorted(snapshot.live.items()),
            snapshot.queue,
            snapshot.waiters,
            _stable(snapshot.locks),
        )
    )


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value
