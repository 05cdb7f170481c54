"""Group commit: work submitted while a batch is in flight waits, and goes in the next.

Both stores batch their busiest writes this way: SQLite runs every ``atomic`` body that
arrives while its worker thread is busy in the next hop, one transaction for the lot
(``_sqlite``); PostgreSQL records webhook deliveries that arrive while a transaction is
in flight in the next one (``_webhooks``). What the batch does is theirs; the queueing,
the one task that drains it, and telling each caller its own outcome is this module's,
written once.

A batch's ``run`` returns one outcome per job, in order: the job's result, or
``Failed(error)`` for a job that failed alone (the others of its batch stand). If ``run``
itself raises, every job of the batch fails with that error: none of them happened. A
caller that stops waiting (cancelled) leaves its job in the batch; ``run`` sees it as
``waiting.gone`` and may skip it, and its outcome is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from corral.errors import StoreError

__all__ = ["Failed", "GroupCommit", "Waiting"]

J = TypeVar("J")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Failed:
    """The outcome of a job that failed on its own: its caller gets ``error``."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class Waiting(Generic[J, R]):
    """A submitted job and the future its caller awaits."""

    job: J
    future: asyncio.Future[R]

    @property
    def gone(self) -> bool:
        """Its caller stopped waiting (cancelled): the job need not run."""
        return self.future.cancelled()


class GroupCommit(Generic[J, R]):
    """Jobs submitted while a batch runs wait and run together in the next batch.

    With ``linger`` (seconds), a job that finds nothing in flight waits that long for
    others before its batch is sent: for work that is frequent, cheap to delay and costly
    per statement (runners' heartbeats), where batches would otherwise hold one job."""

    def __init__(
        self,
        run: Callable[[list[Waiting[J, R]]], Awaitable[Sequence[R | Failed]]],
        *,
        name: str,
        linger: float = 0.0,
    ) -> None:
        self._run = run
        self._name = name
        self._linger = linger
        self._pending: list[Waiting[J, R]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def _wait_for_company(self) -> None:
        """The linger: jobs that arrive meanwhile join the first batch. Cancelled
        (closing), the jobs waiting fail: none of them ran."""
        try:
            await asyncio.sleep(self._linger)
        except asyncio.CancelledError:
            left, self._pending = self._pending, []
            for waiting in left:
                if not waiting.future.done():
                    waiting.future.set_exception(StoreError("the store is closing"))
            raise

    async def submit(self, job: J) -> R:
        """Run ``job`` in the next batch; its own outcome (result or error)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append(Waiting(job, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name=self._name)
        return await future

    async def _drain(self) -> None:
        if self._linger > 0:
            await self._wait_for_company()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                outcomes = await self._run(batch)
            except BaseException as exc:  # the whole batch failed (closed, cancelled)
                failure = exc if isinstance(exc, Exception) else StoreError(str(exc))
                for waiting in batch:
                    if not waiting.future.done():
                        waiting.future.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise
                continue
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if waiting.future.done():  # its caller gave up waiting
                    continue
                if isinstance(outcome, Failed):
                    waiting.future.set_exception(outcome.error)
                else:
                    waiting.future.set_result(outcome)
