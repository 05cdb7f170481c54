"""The one store interface, and everything about it that does not depend on the dialect.

A backend (``_sqlite``, ``_postgres``) supplies: opening and closing, a ``transaction()``
context manager yielding a ``Transaction`` that runs named queries, and how Python values
are encoded for its columns. The rules (which state may follow which, what a refusal
says) live here, once, and are written as single SQL statements so that they hold when
several processes share the store.

Clock: timestamps are taken from Python (``datetime.now(UTC)``) and passed as query
parameters, never from the database clock. One code path serves both dialects (SQLite has
no microsecond UTC clock), the values are identical on both stores, and tests can reason
about them. Hosts sharing a PostgreSQL store must keep their clocks in sync (NTP); lease
expiry, when it comes, may prefer the database clock and will say so where it does.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from corral.errors import StoreError
from corral.store._migrator import Migrator
from corral.store._sqlfiles import SqlFiles, load_sql_files
from corral.store._time import require_aware, utc_now
from corral.store.records import MigrationStatus, NewRun, Run, RunState

__all__ = ["Dialect", "Row", "Store", "Transaction", "mask_url"]

Dialect = Literal["sqlite", "postgresql"]
Row = dict[str, Any]
Params = Mapping[str, Any]

_TIME_COLUMNS = ("created_at", "started_at", "ended_at")


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

    async def execute_script(self, sql: str, *, what: str) -> None:
        """Run a parameterless multi-statement script (schema, migration)."""
        try:
            await self._script(sql)
        except self._driver_errors as exc:
            raise StoreError(f"{what} failed on {self._url}: {exc}") from exc

    async def _run(self, name: str, params: Params | None) -> tuple[list[Row], int]:
        sql = self._queries[name]
        try:
            return await self._execute(sql, dict(params or {}))
        except self._driver_errors as exc:
            raise StoreError(f"query {name} failed on {self._url}: {exc}") from exc

    @abstractmethod
    async def _execute(self, sql: str, params: dict[str, Any]) -> tuple[list[Row], int]:
        """Run one statement; return its rows (if any) and its row count."""

    @abstractmethod
    async def _script(self, sql: str) -> None:
        """Run several statements without parameters."""


class Store(ABC):
    """Durable state of a corral project. Open with ``corral.store.open_store(url)``."""

    dialect: ClassVar[Dialect]
    #: Named query taken first in every migration transaction, or None when the
    #: transaction itself already excludes other writers (SQLite's BEGIN IMMEDIATE).
    migration_lock_query: ClassVar[str | None] = None

    def __init__(self, url: str) -> None:
        self.url = mask_url(url)
        self.sql = load_sql_files(self.dialect)

    # -- lifecycle -------------------------------------------------------------------

    @abstractmethod
    async def open(self) -> None:
        """Connect; raise StoreUnavailable (naming ``self.url``) when that is impossible."""

    @abstractmethod
    async def close(self) -> None:
        """Release every connection and thread; safe to call twice."""

    @abstractmethod
    def transaction(self, *, write: bool = True) -> AbstractAsyncContextManager[Transaction]:
        """A transaction: committed on normal exit, rolled back on an exception.

        ``write=False`` declares a read: SQLite then takes a deferred ``BEGIN`` instead of
        ``BEGIN IMMEDIATE``; PostgreSQL treats both alike.
        """

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- value encoding (per dialect) ---------------------------------------------------

    @abstractmethod
    def encode_time(self, value: datetime) -> Any: ...

    @abstractmethod
    def decode_time(self, value: Any) -> datetime: ...

    @abstractmethod
    def encode_json(self, value: dict[str, Any] | None) -> Any: ...

    @abstractmethod
    def decode_json(self, value: Any) -> dict[str, Any] | None: ...

    @abstractmethod
    def encode_states(self, states: Collection[RunState]) -> Any: ...

    def run_from_row(self, row: Row) -> Run:
        decoded = dict(row)
        for column in _TIME_COLUMNS:
            if decoded[column] is not None:
                decoded[column] = self.decode_time(decoded[column])
        decoded["trigger_detail"] = self.decode_json(decoded["trigger_detail"])
        return Run.from_row(decoded)

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
            "created_at": self.encode_time(utc_now()),
        }
        async with self.transaction() as tx:
            row = await tx.fetch_one("create_run", params)
        return self.run_from_row(self._returned(row, "create_run"))

    async def mark_run_running(self, run_id: str, *, pid: int | None, host: str | None) -> Run:
        """STARTING -> RUNNING; refused for a run in any other state."""
        params = {"id": run_id, "pid": pid, "host": host, "started_at": self.encode_time(utc_now())}
        async with self.transaction() as tx:
            row = await tx.fetch_one("mark_run_running", params)
            if row is None:
                current = await self._require_run(tx, run_id)
                raise StoreError(
                    f"cannot mark run {run_id} running: it is {current.state.value}, "
                    f"not {RunState.STARTING.value} ({self.url})"
                )
        return self.run_from_row(row)

    async def finish_run(
        self, run_id: str, *, state: RunState, exit_code: int | None, error: str | None = None
    ) -> Run:
        """STARTING/RUNNING -> ``state`` (terminal), in one conditional UPDATE."""
        if not state.is_terminal:
            raise ValueError(f"finish_run needs a terminal state, got {state.value!r}")
        params = {
            "id": run_id,
            "state": state.value,
            "exit_code": exit_code,
            "error": error,
            "ended_at": self.encode_time(utc_now()),
        }
        async with self.transaction() as tx:
            row = await tx.fetch_one("finish_run", params)
            if row is None:
                current = await self._require_run(tx, run_id)
                raise StoreError(_finish_refusal(current, state, self.url))
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
    ) -> list[Run]:
        """Runs, newest first (created_at, then id, descending)."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        params: dict[str, Any] = {
            "limit": limit,
            "states": self.encode_states(list(RunState) if states is None else states),
        }
        name = "list_runs" if agent is None else "list_agent_runs"
        if agent is not None:
            params["agent"] = agent
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all(name, params)
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

    async def prune_runs(self, older_than: datetime) -> int:
        """Delete runs that ended before ``older_than``; return how many."""
        cutoff = self.encode_time(require_aware(older_than, "older_than"))
        async with self.transaction() as tx:
            return await tx.execute("prune_runs", {"older_than": cutoff})

    # -- helpers -----------------------------------------------------------------------

    async def _require_run(self, tx: Transaction, run_id: str) -> Run:
        row = await tx.fetch_one("get_run", {"id": run_id})
        if row is None:
            raise StoreError(f"no run {run_id!r} in {self.url}")
        return self.run_from_row(row)

    def _returned(self, row: Row | None, name: str) -> Row:
        if row is None:
            raise StoreError(f"query {name} returned no row on {self.url}")
        return row


def _finish_refusal(current: Run, wanted: RunState, url: str) -> str:
    if current.state.is_terminal:
        why = f"it already ended as {current.state.value}"
    else:
        why = f"it is {current.state.value}, not starting or running"
    return f"cannot finish run {current.id} as {wanted.value}: {why} ({url})"
