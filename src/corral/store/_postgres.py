"""The PostgreSQL store: psycopg 3 (async) over a small ``AsyncConnectionPool``.

Each transaction borrows one pooled connection (autocommit off for its duration via
``conn.transaction()``), so concurrent coroutines run concurrent transactions. Tables are
unqualified and live in the first schema of the connection's search_path; a URL such as
``postgresql://u@h/db?options=-csearch_path%3Dmy_schema`` therefore puts a whole store,
its migration bookkeeping included, in ``my_schema``.

Waits are bounded: a transaction that finds no pooled connection free within
``POOL_WAIT_S`` fails with ``StoreBusy`` (nothing ran, so nothing commits later), as does a
request transaction that waits longer than its lock timeout for a row another writer holds
(``bound_lock_waits``). The gateway answers both 503 with ``Retry-After``.

Encoding: timestamps are ``timestamptz`` (aware datetimes, read back as UTC); JSON is
``jsonb``.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import time
import weakref
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from corral.errors import StoreBusy, StoreError, StoreUnavailable
from corral.store._base import Dialect, Row, Store, Transaction
from corral.store._core import Params
from corral.store._notify import PgListener

__all__ = ["PostgresStore"]

CONNECT_TIMEOUT_S = 10
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 8
#: The longest a transaction waits for a pooled connection before ``StoreBusy``: a few
#: seconds, so a client is answered (503, retry) before it gives up and retries itself.
POOL_WAIT_S = 5.0
#: What ``StoreBusy`` suggests a client waits before trying again, in seconds.
RETRY_AFTER_S = 2
#: A pooled connection handed out less than this many seconds ago, with nothing unread on
#: its socket, is handed out again without a check query (see ``_ConnectionCheck``).
POOL_CHECK_IDLE_S = 5.0


class _ConnectionCheck:
    """The pool's check of a connection it hands out, free on a busy pool.

    psycopg_pool's own check sends an empty query on every checkout: one round trip per
    transaction, as many as a lock request's whole work (D48). A server that ends a
    connection (a restart, ``pg_terminate_backend``, an idle timeout) sends its error and
    closes the socket, which then reads as ready with no request outstanding: such a
    connection, and one idle for ``POOL_CHECK_IDLE_S`` or more (where a vanished server
    host may have said nothing), get the real check. A check that fails makes the pool
    check its other idle connections too (they usually died together, and the pool would
    otherwise find them one checkout and one back-off sleep at a time).
    """

    def __init__(self) -> None:
        self.pool: AsyncConnectionPool | None = None
        self._handed: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
            weakref.WeakKeyDictionary()
        )
        self._sweep: asyncio.Task[None] | None = None

    async def __call__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        now = time.monotonic()
        last = self._handed.get(conn)
        self._handed[conn] = now
        if last is not None and now - last < POOL_CHECK_IDLE_S and not _has_input(conn):
            return
        try:
            await AsyncConnectionPool.check_connection(conn)
        except psycopg.Error:
            self._handed.pop(conn, None)
            if self.pool is not None and (self._sweep is None or self._sweep.done()):
                self._sweep = asyncio.create_task(_check_idle(self.pool))
            raise


def _has_input(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server sent something to an idle connection (or it is closed)."""
    if conn.closed or conn.broken:
        return True
    poller = select.poll()
    try:
        poller.register(conn.fileno(), select.POLLIN)
    except (psycopg.Error, OSError, ValueError):
        return True
    return bool(poller.poll(0))


async def _check_idle(pool: AsyncConnectionPool) -> None:
    with contextlib.suppress(Exception):
        await pool.check()


def _text_safe(value: Any) -> Any:
    """PostgreSQL's text cannot hold U+0000 (SQLite's can): it is stored as U+FFFD, so a
    run's status text or a webhook's field with one is kept, not refused. A batched
    statement's list of texts too: one caller's text must not fail the others'."""
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list) and any(isinstance(v, str) and "\x00" in v for v in value):
        return [_text_safe(v) for v in value]
    return value


def _json_safe(value: Any) -> Any:
    """``_text_safe`` through a JSON value (jsonb refuses ``\\u0000`` too)."""
    if isinstance(value, str):
        return _text_safe(value)
    if isinstance(value, dict):
        return {_text_safe(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


class PostgresTransaction(Transaction):
    _driver_errors = (psycopg.Error,)

    def __init__(self, store: PostgresStore, conn: psycopg.AsyncConnection[Any]) -> None:
        super().__init__(store.sql, store.url)
        self._conn = conn

    async def _execute(self, sql: str, params: dict[str, Any]) -> tuple[list[Row], int]:
        safe = {name: _text_safe(value) for name, value in params.items()}
        async with self._conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(sql, safe)
            rows = await cursor.fetchall() if cursor.description is not None else []
            return rows, cursor.rowcount

    async def _script(self, sql: str) -> None:
        # Without parameters psycopg sends the text as one simple query: many statements.
        await self._conn.execute(sql)

    def failure(self, what: str, exc: Exception) -> StoreError:
        return _failure(what, exc)


class PipelinedTransaction(PostgresTransaction):
    """A transaction in pipeline mode (``PostgresStore.pipelined_transaction``): a
    statement whose rows are read costs a round trip as usual (sent, then a Sync);
    ``fetch_many`` sends its statements together and syncs once; ``execute_with_commit``
    syncs not at all (its outcome arrives with the COMMIT's)."""

    def __init__(
        self,
        store: PostgresStore,
        conn: psycopg.AsyncConnection[Any],
        pipeline: psycopg.AsyncPipeline,
    ) -> None:
        super().__init__(store, conn)
        self._pipeline = pipeline

    async def _execute(self, sql: str, params: dict[str, Any]) -> tuple[list[Row], int]:
        cursor = await self._send_sql(sql, params)
        await self._pipeline.sync()
        rows = await cursor.fetchall() if cursor.description is not None else []
        return rows, cursor.rowcount

    async def fetch_many(self, steps: Sequence[tuple[str, Params | None]]) -> list[list[Row]]:
        names = ", ".join(name for name, _ in steps)
        try:
            cursors = [await self._send_sql(self._queries[n], dict(p or {})) for n, p in steps]
            await self._pipeline.sync()
            return [
                await cursor.fetchall() if cursor.description is not None else []
                for cursor in cursors
            ]
        except psycopg.Error as exc:
            raise self.failure(f"queries {names} failed on {self._url}", exc) from exc

    async def execute_with_commit(self, name: str, params: Params | None = None) -> None:
        try:
            await self._send_sql(self._queries[name], dict(params or {}))
        except psycopg.Error as exc:
            raise self.failure(f"query {name} failed on {self._url}", exc) from exc

    async def _send_sql(
        self, sql: str, params: dict[str, Any]
    ) -> psycopg.AsyncCursor[dict[str, Any]]:
        safe = {key: _text_safe(value) for key, value in params.items()}
        cursor = self._conn.cursor(row_factory=dict_row)
        await cursor.execute(sql, safe)
        return cursor


def _failure(what: str, exc: Exception) -> StoreError:
    """``StoreBusy`` when a wait for another writer's row ran out, else ``StoreError``."""
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return StoreBusy(
            f"{what}: the store is busy (another writer held a row it needs past the "
            "lock timeout); nothing was changed, try again",
            retry_after=RETRY_AFTER_S,
        )
    return StoreError(f"{what}: {exc}")


class PostgresStore(Store):
    """A store in one PostgreSQL schema; see the module docstring."""

    dialect: ClassVar[Dialect] = "postgresql"
    migration_lock_query: ClassVar[str | None] = "lock_migrations"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._conninfo = url
        self._pool: AsyncConnectionPool | None = None
        self.listener: PgListener | None = None

    async def open(self) -> None:
        await self._probe()
        check = _ConnectionCheck()
        pool = AsyncConnectionPool(
            self._conninfo,
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            timeout=POOL_WAIT_S,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            check=check,
            name="corral-store",
            open=False,
        )
        check.pool = pool
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except PoolTimeout as exc:
            await pool.close()
            raise StoreUnavailable(f"cannot connect to the PostgreSQL store {self.url}") from exc
        self._pool = pool
        # Change notices (store/_notify.py): one LISTEN connection beside the pool.
        self.listener = PgListener(self._conninfo, self.changes, connect_timeout=CONNECT_TIMEOUT_S)
        await self.listener.start()

    async def _probe(self) -> None:
        """Connect once, directly, so an unreachable server fails fast with libpq's reason."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, connect_timeout=CONNECT_TIMEOUT_S
            )
        except psycopg.Error as exc:
            reason = str(exc).strip() or type(exc).__name__
            raise StoreUnavailable(
                f"cannot connect to the PostgreSQL store {self.url}: {reason}"
            ) from exc
        await conn.close()

    async def close(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            await listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[Transaction]:
        pool = self._pool
        if pool is None:
            raise StoreError(f"the store {self.url} is closed")
        try:
            async with pool.connection() as conn, conn.transaction():
                yield PostgresTransaction(self, conn)
        except PoolTimeout as exc:
            raise self._no_connection() from exc
        except psycopg.Error as exc:
            raise StoreError(f"transaction failed on {self.url}: {exc}") from exc

    @asynccontextmanager
    async def pipelined_transaction(self) -> AsyncIterator[Transaction]:
        """``transaction()`` in pipeline mode: BEGIN goes with the first statements, the
        COMMIT with the last (see ``PipelinedTransaction``); both are sent as statements
        of the pipeline, since psycopg's transaction block would wait for each alone. A
        failure (of a statement, of the commit, of the body) rolls the lot back."""
        pool = self._pool
        if pool is None:
            raise StoreError(f"the store {self.url} is closed")
        try:
            async with pool.connection() as conn:
                try:
                    async with conn.pipeline() as pipeline:
                        await conn.execute("BEGIN")
                        yield PipelinedTransaction(self, conn, pipeline)
                        await conn.execute("COMMIT")
                finally:
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        # A broken connection cannot roll back; the pool discards it.
                        with contextlib.suppress(psycopg.Error):
                            await conn.rollback()
        except PoolTimeout as exc:
            raise self._no_connection() from exc
        except psycopg.Error as exc:
            raise _failure(f"transaction failed on {self.url}", exc) from exc

    async def statement(self, name: str, params: Params | None = None) -> list[Row]:
        """One named statement in autocommit: its own transaction, one round trip."""
        pool = self._pool
        if pool is None:
            raise StoreError(f"the store {self.url} is closed")
        try:
            async with pool.connection() as conn:
                tx = PostgresTransaction(self, conn)
                return await tx.fetch_all(name, params)
        except PoolTimeout as exc:
            raise self._no_connection() from exc

    async def statements(self, steps: Sequence[tuple[str, Params]]) -> list[Row]:
        """The statements in one transaction, pipelined: one round trip (see ``StoreCore``)."""
        pool = self._pool
        if pool is None:
            raise StoreError(f"the store {self.url} is closed")
        queries = self.sql.queries
        try:
            async with pool.connection() as conn:
                # BEGIN and COMMIT as statements of the pipeline (a transaction block
                # would wait for BEGIN on its own). After a failed statement PostgreSQL
                # skips the rest; the COMMIT of the failed transaction rolls it back,
                # and leaving the pipeline raises the error.
                async with conn.pipeline():
                    await conn.execute("BEGIN")
                    cursors = []
                    for name, params in steps:
                        cursor = conn.cursor(row_factory=dict_row)
                        safe = {key: _text_safe(value) for key, value in params.items()}
                        await cursor.execute(queries[name], safe)
                        cursors.append(cursor)
                    await conn.execute("COMMIT")
                last = cursors[-1]
                return await last.fetchall() if last.description is not None else []
        except PoolTimeout as exc:
            raise self._no_connection() from exc
        except psycopg.Error as exc:
            names = ", ".join(name for name, _ in steps)
            raise _failure(f"statements {names} failed on {self.url}", exc) from exc

    def _no_connection(self) -> StoreBusy:
        """What a transaction that found no pooled connection in time raises."""
        return StoreBusy(
            f"no free connection to {self.url} within {POOL_WAIT_S:g} s (the store is "
            "busy); nothing was changed, try again",
            retry_after=RETRY_AFTER_S,
        )

    def encode_time(self, value: datetime) -> datetime:
        return value.astimezone(UTC)

    def decode_time(self, value: Any) -> datetime:
        if not isinstance(value, datetime):
            raise StoreError(f"expected a timestamptz from {self.url}, got {value!r}")
        return value.astimezone(UTC)

    def encode_json(self, value: dict[str, Any] | list[Any] | None) -> Jsonb | None:
        return None if value is None else Jsonb(_json_safe(value))

    def decode_json(self, value: Any) -> dict[str, Any] | None:
        return None if value is None else dict(value)

    def encode_list(self, values: Collection[str]) -> list[str]:
        return list(values)
