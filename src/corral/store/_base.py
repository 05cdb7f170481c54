"""The one store interface: ``Store``, assembled from its parts, plus runs and migrations.

A backend (``_sqlite``, ``_postgres``) supplies: opening and closing, a ``transaction()``
context manager yielding a ``Transaction`` that runs named queries, and how Python values
are encoded for its columns. The rules (which state may follow which, what a refusal
says) live in the parts, once, for both dialects:

    _core      Transaction, encoding, the clock, rows to records
    _control   agents, the project row, the scheduler registry
    _queue     enqueue (bounds, rejections, dedupe) and claim (caps, FIFO, fences)
    _leases    renewing, finalising (fencing, reruns), recovering lapsed leases
    _locks     resource locks: try-lock, blocking waits and the wait-for graph, release,
               heartbeat, operator release
    _calls     agent-to-agent calls, and the signals a run sends about itself
    _webhooks  webhook receipts: a delivery recorded with the items it queued, at once
    _tokens    operator tokens, kept by their hash
    _fleet     the fleet's membership: activation tokens, runners, liveness, anomalies
    _metrics   what /metrics reads: runs and set-aside items since a time
    _bundles   pushed project bundles by content hash, and the current one
    _tasks     the task board: tasks, dependencies, labels, fenced claims, history
    _base      this module: lifecycle, migrations, plain run operations

Clock: timestamps are taken from Python (``self.clock()``, by default
``datetime.now(UTC)``) and passed as query parameters, never from the database clock.
One code path serves both dialects (SQLite has no microsecond UTC clock), the values are
identical on both stores, and tests can move the clock to expire leases. Hosts sharing a
PostgreSQL store must keep their clocks in sync (NTP): a lease lapses when the clock of
whoever recovers passes its expiry.

Serialisation (docs/decisions.md D42-D43): on SQLite ``BEGIN IMMEDIATE`` serialises
writers. On PostgreSQL a claim or an intake takes the rows of the agents it touches
(``FOR UPDATE``; a claim ``SKIP LOCKED``, so schedulers take different agents at once)
and reads the per-agent counters there (``queued``, ``running``, kept by triggers on
``corral_queue``); the project row (``lock_project``) is taken only where a project-wide
count must stay true until commit: a claim under a project scale cap, an operator's
request with an idempotency key, recovery and release.
"""

from __future__ import annotations

import asyncio
import secrets
from abc import abstractmethod
from collections.abc import Collection
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from corral.errors import StoreError
from corral.store._batching import Failed, GroupCommit, Waiting
from corral.store._calls import CallOps
from corral.store._control import ControlOps
from corral.store._core import Dialect, Row, StaleFence, Transaction, mask_url
from corral.store._fleet import FleetOps
from corral.store._fleet_rollouts import FleetRolloutOps
from corral.store._fleet_runs import FleetRunOps
from corral.store._fleetscale import FleetScaleOps
from corral.store._leases import LeaseOps
from corral.store._locks import LockOps
from corral.store._metrics import MetricsOps
from corral.store._migrator import Migrator
from corral.store._notify import ChangeOps
from corral.store._pools import PoolOps
from corral.store._providers import ProviderOps
from corral.store._rollouts import RolloutOps
from corral.store._stream import StreamOps
from corral.store._tasks import TaskOps
from corral.store._time import require_aware
from corral.store._tokens import TokenOps
from corral.store._webhooks import WebhookOps
from corral.store.records import (
    MigrationStatus,
    NewRun,
    Run,
    RunCursor,
    RunFilter,
    RunPage,
    RunState,
    TriggerKind,
)

__all__ = ["Dialect", "Row", "StaleFence", "Store", "Transaction", "mask_url"]


#: Earlier than any run: ``list_runs`` without ``since``.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Later than any run: a first page's keyset bound.
_AFTER_ALL = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)

#: States a run is live in: ``list_runs`` for these alone reads the live-runs index.
_LIVE = frozenset({RunState.QUEUED, RunState.STARTING, RunState.RUNNING})


#: The outcome of a batched mark whose caller stopped waiting (it is not sent).
_GONE = Failed(asyncio.CancelledError())


class Store(
    TaskOps,
    StreamOps,
    PoolOps,
    FleetScaleOps,
    ProviderOps,
    FleetRunOps,
    LeaseOps,
    CallOps,
    LockOps,
    ControlOps,
    WebhookOps,
    TokenOps,
    FleetOps,
    RolloutOps,
    MetricsOps,
    FleetRolloutOps,
    ChangeOps,
):
    """Durable state of a corral project. Open with ``corral.store.open_store(url)``."""

    #: PostgreSQL: marks of runs as running that arrive while one is in flight go
    #: together in the next statement (``mark_run_running``).
    _running_marks: GroupCommit[dict[str, Any], list[Row]] | None = None

    def _notify_committed(self, topics: Collection[str]) -> None:
        """Wake this process's waiters of ``topics``, which a transaction of this process
        has just changed: a run's end releases its keys (``lock:<key>``) and answers its
        call (``call:<id>``). On SQLite this is the only notice of those changes. On
        PostgreSQL the tables' triggers send the same topics to every process (migration
        0014), so this is skipped while the listener is connected (``changes.remote``)
        and no waiter is woken twice for one change; while it is not, this process's
        waiters still hear of their own process's changes."""
        if topics and not self.changes.remote:
            self.changes.notify_many(topics)

    def _notify_here(self, topic: str) -> None:
        self.changes.notify(topic)

    # -- lifecycle -------------------------------------------------------------------

    @abstractmethod
    async def open(self) -> None:
        """Connect; raise StoreUnavailable (naming ``self.url``) when that is impossible."""

    @abstractmethod
    async def close(self) -> None:
        """Release every connection and thread; safe to call twice."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- migrations --------------------------------------------------------------------

    async def migrate(self, *, install_schema: bool = True) -> list[int]:
        """Bring the schema up to date; return the versions applied now.

        An empty database gets ``schema.sql`` in one transaction and every version
        recorded; with ``install_schema=False`` it gets every numbered migration instead
        (the tests use this to check that both roads lead to the same schema).
        """
        return await Migrator(self).migrate(install_schema=install_schema)

    async def migration_status(self) -> MigrationStatus:
        return await Migrator(self).status()

    # -- runs --------------------------------------------------------------------------

    async def create_run(self, new: NewRun) -> Run:
        params = {
            "id": f"{new.agent}-{secrets.token_hex(6)}",
            "agent": new.agent,
            "trigger_kind": new.trigger.value,
            "trigger_detail": self.encode_json(new.trigger_detail),
            "prompt": new.prompt,
            "state": RunState.STARTING.value,
            "parent_run_id": new.parent_run_id,
            "created_at": self.encode_time(self.now()),
        }
        async with self.transaction() as tx:
            row = await tx.fetch_one("create_run", params)
        return self.run_from_row(self._returned(row, "create_run"))

    async def mark_run_running(self, run_id: str, *, pid: int | None, host: str | None) -> Run:
        """STARTING -> RUNNING; refused for a run in any other state."""
        params = {
            "id": run_id,
            "pid": pid,
            "host": host,
            "started_at": self.encode_time(self.now()),
        }
        # PostgreSQL: one statement in autocommit, one round trip, shared by the marks
        # that wait while one is in flight (``_running_marks``). SQLite: its own
        # transaction (as an ``atomic`` body it measured slower per run in
        # bench/claims.py --steps run). The run is read only when refused.
        if self.dialect == "sqlite":
            async with self.transaction() as tx:
                rows = await tx.fetch_all("mark_run_running", params)
        else:
            if self._running_marks is None:
                self._running_marks = GroupCommit(self._mark_runs_running, name="corral-marks")
            rows = await self._running_marks.submit(params)
        if not rows:
            async with self.transaction(write=False) as tx:
                current = await self._require_run(tx, run_id)
            raise StoreError(
                f"cannot mark run {run_id} running: it is {current.state.value}, "
                f"not {RunState.STARTING.value} ({self.url})"
            )
        return self.run_from_row(rows[0])

    async def _mark_runs_running(
        self, batch: list[Waiting[dict[str, Any], list[Row]]]
    ) -> list[list[Row] | Failed]:
        """PostgreSQL: the marks of ``batch`` as one statement (``mark_runs_running``);
        each gets its run's row, or none when refused. Should that statement fail (a
        deadlock with a run's end, say), each mark is sent alone, with its own outcome."""
        live = sorted((w for w in batch if not w.gone), key=lambda w: str(w.job["id"]))
        if len(live) <= 1:
            return [_GONE if w.gone else await self._mark_alone(w.job) for w in batch]
        params = {  # in run id order: the rows are taken in one order
            "ids": [w.job["id"] for w in live],
            "pids": [w.job["pid"] for w in live],
            "hosts": [w.job["host"] for w in live],
            "started": [w.job["started_at"] for w in live],
        }
        try:
            rows = await self.statement("mark_runs_running", params)
        except StoreError:
            return [_GONE if w.gone else await self._mark_alone(w.job) for w in batch]
        by_id = {row["id"]: row for row in rows}
        return [[by_id[w.job["id"]]] if w.job["id"] in by_id else [] for w in batch]

    async def _mark_alone(self, job: dict[str, Any]) -> list[Row] | Failed:
        try:
            return await self.statement("mark_run_running", job)
        except StoreError as exc:
            return Failed(exc)

    async def finish_run(
        self, run_id: str, *, state: RunState, exit_code: int | None, error: str | None = None
    ) -> Run:
        """STARTING/RUNNING -> ``state`` (terminal), in one conditional UPDATE.

        For runs outside the queue; a run claimed from it ends with ``finalize``, which
        also ends its item and its lease. The run's locks are released in the same
        transaction.
        """
        if not state.is_terminal:
            raise ValueError(f"finish_run needs a terminal state, got {state.value!r}")
        params = {
            "id": run_id,
            "state": state.value,
            "exit_code": exit_code,
            "error": error,
            "ended_at": self.encode_time(self.now()),
        }
        notices: list[str] = []
        async with self.transaction() as tx:
            row = await tx.fetch_one("finish_unqueued_run", params)
            if row is None:
                current = await self._require_run(tx, run_id)
                raise StoreError(_finish_refusal(current, state, self.url))
            await self.release_run_locks_in(tx, run_id, notices)
            await self.release_run_tasks_in(tx, run_id)
        self._notify_committed(notices)
        return self.run_from_row(row)

    async def get_run(self, run_id: str) -> Run | None:
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("get_run", {"id": run_id})
        return None if row is None else self.run_from_row(row)

    async def list_runs(
        self,
        *,
        agent: str | None = None,
        limit: int = 50,
        states: Collection[RunState] | None = None,
        since: datetime | None = None,
    ) -> list[Run]:
        """Runs, newest first (created_at, then id, descending); ``since``: only runs
        created at or after it."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        params: dict[str, Any] = {
            "limit": limit,
            "states": self.encode_states(list(RunState) if states is None else states),
            "since": self.encode_time(since or _EPOCH),
        }
        if agent is not None:
            name = "list_agent_runs"
            params["agent"] = agent
        elif states is not None and set(states) <= _LIVE:
            name = "list_live_runs"  # the status document's and the dashboard's read
        else:
            name = "list_runs"
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all(name, params)
        return [self.run_from_row(row) for row in rows]

    async def page_runs(
        self, where: RunFilter, *, before: RunCursor | None = None, limit: int = 50
    ) -> RunPage:
        """A page of the runs ``where`` selects, newest first (created_at, then id,
        descending), after the cursor ``before``; its ``next`` cursor is None on the last
        page. The walk follows the creation-time index (the agent's, with ``agent``), so a
        page costs the rows it reads however long the history."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        states = where.states or tuple(RunState)
        triggers = where.triggers or tuple(TriggerKind)
        params: dict[str, Any] = {
            "since": self.encode_time(require_aware(where.first, "since")),
            "until": self.encode_time(require_aware(where.last, "until")),
            "before_at": self.encode_time(where.last if before is None else before.created_at),
            "before_id": "" if before is None else before.id,
            "states": self.encode_states(states),
            "triggers": self.encode_states(triggers),
            "search": where.search.strip().lower(),
            "limit": limit + 1,
        }
        if before is None:  # nothing after the cursor to leave out: every run up to until
            params["before_at"] = self.encode_time(_AFTER_ALL)
        name = "page_runs"
        if where.agent is not None:
            name = "page_agent_runs"
            params["agent"] = where.agent
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all(name, params)
        runs = [self.run_from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return RunPage(runs, RunCursor.after(runs[-1]) if more else None)

    async def list_child_runs(self, run_id: str, *, limit: int = 100) -> list[Run]:
        """The runs ``run_id`` queued (its reruns, the runs answering its calls), oldest
        first."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("child_runs", {"run_id": run_id, "limit": limit})
        return [self.run_from_row(row) for row in rows]

    async def count_runs(self, *, agent: str | None = None) -> int:
        name, params = (
            ("count_runs", {}) if agent is None else ("count_agent_runs", {"agent": agent})
        )
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one(name, params)
        return int(self._returned(row, name)["n"])

    async def set_run_status(self, run_id: str, text: str) -> None:
        """Record the run's live status line (``al-status``); StoreError if no such run."""
        async with self.transaction() as tx:
            changed = await tx.execute("set_run_status", {"id": run_id, "status_text": text})
        if not changed:
            raise StoreError(f"cannot set the status of run {run_id}: no such run ({self.url})")

    #: Rows deleted per retention transaction: small enough that one batch holds the
    #: writer for a few milliseconds, however long the history (docs/benchmarks.md).
    prune_batch: int = 500
    #: Pause between retention batches, so writers waiting for the store get it in turn.
    prune_pause: float = 0.005

    async def prune_runs(self, older_than: datetime) -> int:
        """Delete runs that ended before ``older_than``; return how many.

        In batches of ``prune_batch``, each its own transaction: a large history never
        holds the writer for long. Rows that refer to a deleted run lose the reference
        (ON DELETE SET NULL) or go with it (its locks, waits and calls).
        """
        return await self._prune("prune_runs", older_than)

    async def prune_items(self, older_than: datetime) -> int:
        """Delete finished queue items (done, dropped, rejected, failed) that finished
        before ``older_than``, in batches as ``prune_runs``; return how many.

        A deleted item's dedupe key is free again, as a pruned webhook receipt's
        delivery id is.
        """
        return await self._prune("prune_items", older_than)

    async def _prune(self, name: str, older_than: datetime) -> int:
        params = {
            "older_than": self.encode_time(require_aware(older_than, "older_than")),
            "batch": self.prune_batch,
        }
        total = 0
        while True:
            async with self.transaction() as tx:
                deleted = await tx.execute(name, params)
            total += deleted
            if deleted < self.prune_batch:
                return total
            await asyncio.sleep(self.prune_pause)


def _finish_refusal(current: Run, wanted: RunState, url: str) -> str:
    if current.state.is_terminal:
        why = f"it already ended as {current.state.value}"
    elif current.item_id is not None:
        why = (
            f"it holds queue item {current.item_id}; end it with finalize(fence={current.fence}) "
            "so that the item and its lease end with it"
        )
    else:
        why = f"it is {current.state.value}, not starting or running"
    return f"cannot finish run {current.id} as {wanted.value}: {why} ({url})"
