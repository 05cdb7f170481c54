"""The SQLite store: one file, stdlib ``sqlite3``, in WAL mode.

sqlite3 blocks, so every call runs on one dedicated worker thread per store (a
single-thread executor): the event loop never waits on the disk and the connection never
crosses threads. One connection means one transaction at a time per store; an asyncio
lock serialises them. Writers open with ``BEGIN IMMEDIATE`` so they take the file's write
lock up front (waiting up to the busy timeout) instead of failing at their first write.
Other processes on the same file are excluded by SQLite's own locking.

Waits are bounded: a transaction waits at most ``BUSY_TIMEOUT_MS`` in all, for its turn on
the connection and then for the file's write lock, and past that fails with ``StoreBusy``
before it began (nothing commits later); the gateway answers 503 with ``Retry-After``.

Encoding: timestamps are ISO-8601 TEXT in UTC with microseconds, fixed width, so text
order is time order; JSON is ``json.dumps`` text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

from corral.errors import StoreBusy, StoreError, StoreUnavailable
from corral.locate import STATE_DIR_MODE, STATE_FILE_MODE, open_private, private_dirs
from corral.store._base import Dialect, Row, Store, Transaction
from corral.store._batching import Failed, GroupCommit, Waiting

__all__ = ["SqliteStore"]

#: The longest a transaction waits for its turn and the file's write lock, in all.
BUSY_TIMEOUT_MS = 5000
#: What ``StoreBusy`` suggests a client waits before trying again, in seconds.
RETRY_AFTER_S = 2
#: SQLite's primary result codes for "another connection holds the lock".
_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
_T = TypeVar("_T")
#: The outcome of a body whose caller stopped waiting: never run, never delivered.
_GONE = Failed(asyncio.CancelledError())
_SCHEME = "sqlite:///"


def sqlite_path(url: str) -> Path:
    """The absolute file path in ``sqlite:////abs/path.db``."""
    path = url[len(_SCHEME) :] if url.startswith(_SCHEME) else ""
    if not path.startswith("/") or "?" in path:
        raise StoreUnavailable(
            f"cannot open the SQLite store {url}: expected sqlite:///<absolute path>, "
            "e.g. sqlite:////home/me/project/.corral/state.db"
        )
    return Path(path)


class SqliteTransaction(Transaction):
    _driver_errors = (sqlite3.Error,)

    def __init__(self, store: SqliteStore, conn: sqlite3.Connection) -> None:
        super().__init__(store.sql, store.url)
        self._store = store
        self._conn = conn

    async def _execute(self, sql: str, params: dict[str, Any]) -> tuple[list[Row], int]:
        return await self._store.call(_execute, self._conn, sql, params)

    async def _script(self, sql: str) -> None:
        await self._store.call(_script, self._conn, sql)

    def failure(self, what: str, exc: Exception) -> StoreError:
        return _failure(what, exc)


@dataclass(frozen=True)
class _Body:
    """A transaction body waiting for the worker thread (``atomic``)."""

    body: Callable[[Transaction], Awaitable[Any]]
    write: bool
    #: ``time.monotonic()`` by which its transaction must have begun (see the module
    #: docstring: a wait is bounded in all, queueing behind other batches included).
    deadline: float


_Pending = Waiting[_Body, Any]


class _InlineTransaction(Transaction):
    """A transaction whose statements run at once on the calling thread (the worker).

    Its awaitables never suspend, so a body that awaits only them can be driven to the end
    with one ``send`` on the worker thread (see ``SqliteStore.atomic``).
    """

    _driver_errors = (sqlite3.Error,)

    def __init__(self, store: SqliteStore, conn: sqlite3.Connection) -> None:
        super().__init__(store.sql, store.url)
        self._conn = conn

    async def _execute(self, sql: str, params: dict[str, Any]) -> tuple[list[Row], int]:
        return _execute(self._conn, sql, params)

    async def _script(self, sql: str) -> None:
        _script(self._conn, sql)

    def failure(self, what: str, exc: Exception) -> StoreError:
        return _failure(what, exc)


class SqliteStore(Store):
    """A store in one SQLite file; see the module docstring."""

    dialect: ClassVar[Dialect] = "sqlite"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = sqlite_path(url)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._batches = GroupCommit[_Body, Any](self._run_hop, name="corral-sqlite-batches")

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(*args)`` on this store's worker thread."""
        if self._executor is None:
            raise StoreError(f"the store {self.url} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corral-sqlite")
        try:
            self._conn = await self.call(_connect, self.path)
        except (OSError, sqlite3.Error) as exc:
            await self.close()
            raise StoreUnavailable(f"cannot open the SQLite store {self.url}: {exc}") from exc

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await self.call(conn.close)
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    @asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[Transaction]:
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        await self._take_turn(deadline)
        try:
            conn = self._conn
            if conn is None:
                raise StoreError(f"the store {self.url} is closed")
            busy_ms = max(1, int((deadline - time.monotonic()) * 1000))
            await self._guarded(_begin, conn, write, busy_ms, what="begin a transaction")
            try:
                yield SqliteTransaction(self, conn)
            except BaseException:
                await self.call(_rollback, conn)
                raise
            try:
                await self._guarded(_commit, conn, what="commit")
            except StoreError:  # SQLite keeps the transaction open: it must not commit later
                await self.call(_rollback, conn)
                raise
        finally:
            self._lock.release()

    async def _take_turn(self, deadline: float) -> None:
        """Take this store's connection (one transaction at a time) by ``deadline``, or
        fail with ``StoreBusy``: the transactions ahead are waiting for another process."""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._lock.acquire()
        except TimeoutError:
            raise StoreBusy(
                f"cannot begin a transaction on {self.url}: the store was busy for "
                f"{BUSY_TIMEOUT_MS / 1000:g} s (another process holds its write lock); "
                "nothing was changed, try again",
                retry_after=RETRY_AFTER_S,
            ) from None

    async def atomic(
        self, body: Callable[[Transaction], Awaitable[_T]], *, write: bool = True
    ) -> _T:
        """Run ``body`` in its own transaction on the worker thread, in one hop.

        Bodies submitted while the worker is busy are run together in the next hop, each in
        its own transaction: under load the cost of crossing threads is paid once per batch
        rather than once per statement (see docs/decisions.md).
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        return cast(_T, await self._batches.submit(_Body(body, write, deadline)))

    async def _run_hop(self, batch: list[_Pending]) -> list[Any]:
        """One hop to the worker thread for the whole batch (``GroupCommit`` queues it)."""
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError(f"the store {self.url} is closed")
            return await self.call(self._run_batch, conn, batch)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Pending]) -> list[Any]:
        """On the worker thread: the bodies one after another in ONE transaction, each
        inside its own savepoint (so each is still all or nothing), committed once.

        A commit per body was the largest cost of a busy lock service; a failed body rolls
        back to its savepoint and leaves the others alone. If the commit itself fails,
        every body of the batch fails with that error: none of them happened. A body whose
        transaction has not begun by its deadline (queued behind other batches, then waiting
        for the write lock) fails with ``StoreBusy`` and is never run, as ``transaction``.
        """
        now = time.monotonic()
        live = [pending for pending in batch if not pending.gone and pending.job.deadline >= now]
        if not live:
            return [_GONE if pending.gone else self._busy() for pending in batch]
        latest = max(pending.job.deadline for pending in live)
        busy_ms = max(1, int((latest - now) * 1000))
        try:
            _begin(conn, any(pending.job.write for pending in live), busy_ms)
        except sqlite3.Error as exc:
            error = _failure(f"cannot begin a transaction on {self.url}", exc)
            return [Failed(error)] * len(batch)
        begun = time.monotonic()
        outcomes: list[Any] = []
        try:
            for pending in batch:
                if pending.gone:
                    outcomes.append(_GONE)
                    continue
                if pending.job.deadline < begun:  # its wait (turn and write lock) ran out
                    outcomes.append(self._busy())
                    continue
                outcomes.append(self._in_savepoint(conn, pending))
        except BaseException:
            _rollback(conn)
            raise
        try:
            _commit(conn)
        except sqlite3.Error as exc:
            _rollback(conn)
            error = StoreError(f"cannot commit on {self.url}: {exc}")
            return [Failed(error)] * len(batch)
        return outcomes

    def _busy(self) -> Failed:
        """A body whose transaction did not begin by its deadline: not run, nor later."""
        return Failed(
            StoreBusy(
                f"cannot begin a transaction on {self.url}: the store was busy for "
                f"{BUSY_TIMEOUT_MS / 1000:g} s (another process holds its write lock); "
                "nothing was changed, try again",
                retry_after=RETRY_AFTER_S,
            )
        )

    def _in_savepoint(self, conn: sqlite3.Connection, pending: _Pending) -> Any:
        conn.execute("SAVEPOINT corral_body")
        try:
            result = _drive(pending.job.body(_InlineTransaction(self, conn)))
        except Exception as exc:
            conn.execute("ROLLBACK TO corral_body")
            conn.execute("RELEASE corral_body")
            return Failed(exc)
        conn.execute("RELEASE corral_body")
        return result

    async def _guarded(self, fn: Callable[..., None], *args: Any, what: str) -> None:
        try:
            await self.call(fn, *args)
        except sqlite3.Error as exc:
            raise _failure(f"cannot {what} on {self.url}", exc) from exc

    def encode_time(self, value: datetime) -> str:
        return value.astimezone(UTC).isoformat(timespec="microseconds")

    def decode_time(self, value: Any) -> datetime:
        return datetime.fromisoformat(value).astimezone(UTC)

    def encode_json(self, value: dict[str, Any] | list[Any] | None) -> str | None:
        return None if value is None else json.dumps(value, ensure_ascii=False)

    def decode_json(self, value: Any) -> dict[str, Any] | None:
        return None if value is None else dict(json.loads(value))

    def encode_list(self, values: Collection[str]) -> str:
        return json.dumps(list(values))


# -- on the worker thread ------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    _private_files(path)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.row_factory = _dict_row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _enter_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _private_files(path: Path) -> None:
    """The store's file, and the -wal, -shm and -journal files SQLite makes beside it with
    the file's own mode: only corral's user may read them (0600; a new directory 0700)."""
    if path.parent.name == ".corral":
        private_dirs(path.parent, path.parent)
    else:
        path.parent.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    os.close(open_private(path, os.O_RDWR))
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path.with_name(path.name + suffix), STATE_FILE_MODE)


def _enter_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL, retrying while another process holds it.

    Changing the journal mode of a fresh file needs an exclusive lock, and SQLite
    answers SQLITE_BUSY at once (without the busy handler) when several processes
    open a new store together; retry for as long as the busy timeout allows.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _drive(awaitable: Awaitable[_T]) -> _T:
    """Run a coroutine that never suspends to its end, synchronously."""
    coro = awaitable.__await__()
    try:
        yielded = coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise StoreError(
        f"a store transaction body awaited something other than its transaction ({yielded!r})"
    )


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


def _failure(what: str, exc: Exception) -> StoreError:
    """``StoreBusy`` when SQLite gave up waiting for another connection's lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    busy = (code is not None and code & 0xFF in _BUSY_CODES) or "database is locked" in str(exc)
    if busy:
        return StoreBusy(
            f"{what}: the store is busy (another process held its write lock past the "
            f"{BUSY_TIMEOUT_MS / 1000:g} s wait); nothing was changed, try again",
            retry_after=RETRY_AFTER_S,
        )
    return StoreError(f"{what}: {exc}")


def _begin(conn: sqlite3.Connection, write: bool, busy_ms: int) -> None:
    if conn.in_transaction:  # left open by a cancelled rollback
        conn.rollback()
    conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")


def _commit(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _execute(conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> tuple[list[Row], int]:
    cursor = conn.execute(sql, params)
    try:
        return cursor.fetchall(), cursor.rowcount
    finally:
        cursor.close()


def _script(conn: sqlite3.Connection, sql: str) -> None:
    # Not executescript(): it would COMMIT the open transaction first.
    for statement in _statements(sql):
        conn.execute(statement)


def _statements(sql: str) -> Iterator[str]:
    """Split a script into complete statements (sqlite3.complete_statement decides)."""
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if any(not line.strip().startswith("--") for line in buffer.splitlines() if line.strip()):
        raise StoreError(f"unterminated SQL statement at the end of a script: {buffer.strip()!r}")
