"""What every part of the store shares: the transaction, value encoding, the clock.

``Store`` (in ``_base``) is assembled from parts that each hold one group of rules
(runs, the queue, leases, control state); they all build on ``StoreCore`` here, which a
backend (``_sqlite``, ``_postgres``) completes with its connection handling and how
Python values are encoded for its columns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from corral.errors import StaleFence, StoreError
from corral.store._sqlfiles import SqlFiles, load_sql_files
from corral.store._time import utc_now
from corral.store.records import Deadlock, ProjectState, QueueItem, Run, SchedulerInfo

__all__ = ["Dialect", "Params", "Row", "StaleFence", "StoreCore", "Transaction", "mask_url"]

Dialect = Literal["sqlite", "postgresql"]
Row = dict[str, Any]
Params = Mapping[str, Any]
_T = TypeVar("_T")

_RUN_TIMES = ("created_at", "started_at", "ended_at", "kill_requested_at", "status_at")
_ITEM_TIMES = ("enqueued_at", "claimed_at", "finished_at", "lease_expires_at")
_SCHEDULER_TIMES = ("started_at", "heartbeat_at")


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


class Transaction(ABC):
    """One open transaction; runs the dialect's named queries by name."""

    _driver_errors: ClassVar[tuple[type[Exception], ...]] = ()

    def __init__(self, sql: SqlFiles, url: str) -> None:
        self._queries = sql.queries
        self._url = url

    async def fetch_one(self, name: str, params: Params | None = None) -> Row | None:
        rows, _ = await self._run(name, params)
        return rows[0] if rows else None

    async def fetch_all(self, name: str, params: Params | None = None) -> list[Row]:
        rows, _ = await self._run(name, params)
        return rows

    async def execute(self, name: str, params: Params | None = None) -> int:
        """Run a statement; return the number of rows it changed."""
        _, rowcount = await self._run(name, params)
        return rowcount

    async def fetch_many(self, steps: Sequence[tuple[str, Params | None]]) -> list[list[Row]]:
        """The rows of each of ``steps``, run in order. In a pipelined transaction
        (``StoreCore.pipelined_transaction``) they are sent together and waited for once:
        one round trip for the lot (with the transaction's BEGIN, if they come first)."""
        return [await self.fetch_all(name, params) for name, params in steps]

    async def execute_with_commit(self, name: str, params: Params | None = None) -> None:
        """Run a statement whose result is not read, as the transaction's last. In a
        pipelined transaction it is sent with the COMMIT (one round trip for both), and
        its failure is the commit's: the transaction raises and nothing of it happened."""
        await self.execute(name, params)

    async def execute_script(self, sql: str, *, what: str) -> None:
        """Run a parameterless multi-statement script (schema, migration)."""
        try:
            await self._script(sql)
        except self._driver_errors as exc:
            raise self.failure(f"{what} failed on {self._url}", exc) from exc

    async def _run(self, name: str, params: Params | None) -> tuple[list[Row], int]:
        sql = self._queries[name]
        try:
            return await self._execute(sql, dict(params or {}))
        except self._driver_errors as exc:
            raise self.failure(f"query {name} failed on {self._url}", exc) from exc

    def failure(self, what: str, exc: Exception) -> StoreError:
        """The store error for driver error ``exc``: ``StoreBusy`` where the backend says
        the wait for another writer ran out (the caller may retry), else ``StoreError``."""
        return StoreError(f"{what}: {exc}")

    @abstractmethod
    async def _execute(self, sql: str, params: dict[str, Any]) -> tuple[list[Row], int]:
        """Run one statement; return its rows (if any) and its row count."""

    @abstractmethod
    async def _script(self, sql: str) -> None:
        """Run several statements without parameters."""


class StoreCore(ABC):
    """The connection, encoding and clock every part of ``Store`` builds on."""

    dialect: ClassVar[Dialect]
    #: Named query taken first in every migration transaction, or None when the
    #: transaction itself already excludes other writers (SQLite's BEGIN IMMEDIATE).
    migration_lock_query: ClassVar[str | None] = None

    def __init__(self, url: str) -> None:
        self.url = mask_url(url)
        self.sql = load_sql_files(self.dialect)
        #: Every "now" the store records comes from here; tests move it forward.
        self.clock: Callable[[], datetime] = utc_now

    async def atomic(
        self, body: Callable[[Transaction], Awaitable[_T]], *, write: bool = True
    ) -> _T:
        """Run ``body(tx)`` in one transaction and return what it returns.

        The same as ``async with self.transaction() as tx: return await body(tx)``, for
        bodies that await nothing but ``tx`` and other store helpers over it. SQLite runs
        such a body whole on its worker thread (one hop instead of one per statement),
        which is what makes hot paths such as lock requests cheap there.
        """
        async with self.transaction(write=write) as tx:
            return await body(tx)

    async def statement(self, name: str, params: Params | None = None) -> list[Row]:
        """Run ONE named statement as a transaction of its own and return its rows.

        For hot operations written as a single statement (or a call of a server-side
        function): PostgreSQL runs it on a pooled connection in autocommit, one round
        trip with no BEGIN and COMMIT around it; SQLite runs it as a one-statement
        ``atomic`` body (batched with its neighbours on the worker thread).
        """

        async def body(tx: Transaction) -> list[Row]:
            return await tx.fetch_all(name, params)

        return await self.atomic(body)

    async def statements(self, steps: Sequence[tuple[str, Params]]) -> list[Row]:
        """Run named statements in order in ONE transaction; return the last one's rows.

        PostgreSQL sends them together (pipeline mode: BEGIN, the statements and COMMIT,
        then one wait), so they cost one round trip, yet each takes its own snapshot: a
        statement sees what was committed while an earlier one waited for a row lock,
        which a single statement (one snapshot, taken before it waited) does not.
        """

        async def body(tx: Transaction) -> list[Row]:
            rows: list[Row] = []
            for name, params in steps:
                rows = await tx.fetch_all(name, params)
            return rows

        return await self.atomic(body)

    def pipelined_transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A write transaction for a body that groups its statements with
        ``Transaction.fetch_many`` and ends with ``Transaction.execute_with_commit``:
        PostgreSQL sends each group as one round trip (pipeline mode), BEGIN with the
        first and COMMIT with the last. Elsewhere it is ``transaction()``."""
        return self.transaction()

    @abstractmethod
    def transaction(self, *, write: bool = True) -> AbstractAsyncContextManager[Transaction]:
        """A transaction: committed on normal exit, rolled back on an exception.

        ``write=False`` declares a read: SQLite then takes a deferred ``BEGIN`` instead of
        ``BEGIN IMMEDIATE``; PostgreSQL treats both alike.
        """

    # -- value encoding (per dialect) ---------------------------------------------------

    @abstractmethod
    def encode_time(self, value: datetime) -> Any: ...

    @abstractmethod
    def decode_time(self, value: Any) -> datetime: ...

    @abstractmethod
    def encode_json(self, value: dict[str, Any] | list[Any] | None) -> Any: ...

    @abstractmethod
    def decode_json(self, value: Any) -> dict[str, Any] | None: ...

    @abstractmethod
    def encode_list(self, values: Collection[str]) -> Any:
        """A list of strings as one parameter (for ``= ANY(…)`` / ``IN json_each(…)``)."""

    def encode_states(self, states: Collection[str]) -> Any:
        return self.encode_list([str(state) for state in states])

    def now(self) -> datetime:
        return self.clock()

    # -- rows to records ---------------------------------------------------------------

    def run_from_row(self, row: Row) -> Run:
        decoded = self._decode_times(row, _RUN_TIMES)
        decoded["trigger_detail"] = self.decode_json(decoded["trigger_detail"])
        return Run.from_row(decoded)

    def item_from_row(self, row: Row) -> QueueItem:
        decoded = self._decode_times(row, _ITEM_TIMES)
        decoded["trigger_detail"] = self.decode_json(decoded["trigger_detail"])
        return QueueItem.from_row(decoded)

    def scheduler_from_row(self, row: Row) -> SchedulerInfo:
        return SchedulerInfo.from_row(self._decode_times(row, _SCHEDULER_TIMES))

    def _decode_times(self, row: Row, columns: tuple[str, ...]) -> Row:
        decoded = dict(row)
        for column in columns:
            if decoded[column] is not None:
                decoded[column] = self.decode_time(decoded[column])
        return decoded

    # -- helpers -----------------------------------------------------------------------

    async def lock_project(self, tx: Transaction) -> ProjectState:
        """Take the project lock in ``tx`` (see ``_base``) and read the project row."""
        row = await tx.fetch_one("lock_project")
        return ProjectState.from_row(self._returned(row, "lock_project"))

    @abstractmethod
    async def release_run_locks_in(
        self, tx: Transaction, run_id: str, notices: list[str] | None = None
    ) -> int:
        """Release every lock of ``run_id`` inside ``tx`` (see ``_locks``): each transaction
        that ends a run calls this, so a run's locks end with it (invariant 4). The topic
        of each key released is added to ``notices`` (see ``_notify_committed``)."""

    @abstractmethod
    def _notify_committed(self, topics: Collection[str]) -> None:
        """Wake this process's waiters of ``topics``, changed by a transaction that has
        just committed (see ``Store``)."""

    @abstractmethod
    def _notify_here(self, topic: str) -> None:
        """Wake this process's waiters of ``topic`` after a commit of this process, whether
        or not PostgreSQL's listener is connected (a topic no trigger sends: ``tasks``)."""

    @abstractmethod
    async def release_run_tasks_in(self, tx: Transaction, run_id: str) -> list[Any]:
        """Release every task claim of ``run_id`` inside ``tx`` (see ``_tasks``): each
        transaction that ends a run calls this, so a run's claims end with it."""

    @abstractmethod
    async def find_cycle(
        self, tx: Transaction, waiter: str, via: str, holder: str
    ) -> Deadlock | None:
        """The wait-for cycle ``waiter`` would close by waiting on ``holder`` (see ``_locks``)."""

    @abstractmethod
    async def start_calls_in(self, tx: Transaction, item: QueueItem, run_id: str) -> None:
        """Inside the claim of ``item``: its call, if any, is now running (``_calls``)."""

    @abstractmethod
    async def requeue_calls_in(self, tx: Transaction, item: QueueItem) -> None:
        """Inside ``tx``, which queued ``item`` again: its call is pending again."""

    @abstractmethod
    async def fail_calls_in(self, tx: Transaction, item: QueueItem, error: str) -> None:
        """Inside ``tx``, which gave ``item`` up: its call, if any, answers ``error``."""

    @abstractmethod
    async def settle_calls_in(
        self, tx: Transaction, run: Run, notices: list[str] | None = None
    ) -> None:
        """Inside ``tx``, which ended ``run``: answer the call it was running for, if any
        (see ``_calls``), adding the call's topic to ``notices``."""

    async def audit_in(
        self,
        tx: Transaction,
        *,
        actor: str,
        action: str,
        subject: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Record an operator's action in ``corral_audit``, inside ``tx``."""
        params = {
            "now": self.encode_time(self.now()),
            "actor": actor,
            "action": action,
            "subject": subject,
            "detail": self.encode_json(detail),
        }
        await tx.execute("insert_audit", params)

    async def _require_run(self, tx: Transaction, run_id: str) -> Run:
        row = await tx.fetch_one("get_run", {"id": run_id})
        if row is None:
            raise StoreError(f"no run {run_id!r} in {self.url}")
        return self.run_from_row(row)

    def _returned(self, row: Row | None, name: str) -> Row:
        if row is None:
            raise StoreError(f"query {name} returned no row on {self.url}")
        return row
