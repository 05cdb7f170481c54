"""Change notices: who waits for what the store holds is woken when it may have changed.

``Changes`` is one store's hub of wake-ups by topic:

    queue          an item became ``queued``, a claimed item ended (a slot is free), or
                   an agent or the project was resumed, enabled or given more slots
    lock:<key>     the key was released, taken or handed over while a run waits for it
    call:<id>      the call ended (answered, or its callee failed)
    tasks          a task on the board changed (added, edited, claimed, completed,
                   failed, released, cancelled, its claim lapsed); this process only

Waiters (the dispatcher, ``rlock --wait``, ``al-subagent-wait``) wait for a topic with a
timeout and look at the store again when woken, or when the timeout passes: a notice
says only "look now", never what changed, so a lost or spurious one costs a poll at
worst. The timeout is therefore the fallback, and correctness never rests on a notice.

Sources of notices:

- In this process, whoever made the change (the gateway after a release, the executor
  when a run ends, an enqueue) calls ``notify``. This is all SQLite has: several
  processes on one SQLite file see one another's changes at their next poll.
- On PostgreSQL, triggers (migration 0014) ``pg_notify`` the topics on the store's
  channel when the rows change, whatever process changed them, and ``PgListener`` (one
  connection per store, outside the pool) turns them into ``notify`` calls here. The
  channel is ``corral_`` + md5 of the store's schema, so stores in separate schemas of
  one database never wake one another. If the connection drops, the listener reconnects
  with backoff and then wakes everyone once (``notify_all``): notices sent while it was
  away are lost, so every waiter looks again.

Coalescing: a topic's waiters share one ``asyncio.Event``; a notice sets it and forgets
it, so a burst of a thousand notices for ``queue`` while the dispatcher claims costs one
more claim, not a thousand. PostgreSQL already folds identical notices sent by one
transaction into one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "QUEUE",
    "RUN_ENDED",
    "TASKS",
    "ChangeOps",
    "Changes",
    "PgListener",
    "Watch",
    "call_topic",
    "lock_topic",
]

log = logging.getLogger("corral.store")

#: The dispatcher's topic: there may be something to claim.
QUEUE = "queue"
#: A run executed by this process ended (the dashboard's feed); notified in-process only.
RUN_ENDED = "run-ended"
#: A task on the board changed (the dashboard's board). Notified in-process only, by the
#: store right after the transaction that changed the task committed: no trigger sends it
#: on PostgreSQL, so that claims and completions (the board's hot path) do not take
#: NOTIFY's commit lock; other processes' changes are seen at the board's next poll.
TASKS = "tasks"
#: A notice for every waiter (a lock key too long for a notice's payload).
EVERYONE = "*"


def lock_topic(key: str) -> str:
    return f"lock:{key}"


def call_topic(call_id: str) -> str:
    return f"call:{call_id}"


class Changes:
    """Wake-ups by topic, plus a broadcast (``notify_all``) for everything.

    All methods run on the event loop's thread; ``notify`` and ``notify_all`` never block.
    """

    def __init__(self) -> None:
        self._topics: dict[str, asyncio.Event] = {}
        self._all = asyncio.Event()
        self._subscribers: dict[str, list[Callable[[], None]]] = {}
        #: True while notices from other processes arrive (PostgreSQL's listener is
        #: connected); False on SQLite, where only this process's changes wake waiters.
        self.remote = False

    def notify(self, topic: str) -> None:
        event = self._topics.pop(topic, None)
        if event is not None:
            event.set()
        for callback in self._subscribers.get(topic, ()):
            callback()

    def notify_many(self, topics: Iterable[str]) -> None:
        for topic in dict.fromkeys(topics):
            self.notify(topic)

    def notify_all(self) -> None:
        events, self._topics = list(self._topics.values()), {}
        for event in events:
            event.set()
        everything, self._all = self._all, asyncio.Event()
        everything.set()
        for callbacks in list(self._subscribers.values()):
            for callback in callbacks:
                callback()

    def subscribe(self, topic: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` on every notice of ``topic`` (and on ``notify_all``) until
        the returned function is called. For a loop that keeps its own event (the
        dispatcher's wake-up), so that no notice is missed between two waits."""
        callbacks = self._subscribers.setdefault(topic, [])
        callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                callbacks.remove(callback)

        return unsubscribe

    def watch(self, topics: Iterable[str]) -> Watch:
        """Start listening for ``topics`` (and everything) now; ``Watch.wait`` returns at
        once if a notice came in between. Made *before* a waiter looks at the store, so
        that a change landing while it looks is not missed (see ``Watch``)."""
        events = [self._topics.setdefault(topic, asyncio.Event()) for topic in topics]
        events.append(self._all)
        return Watch(events)

    async def wait(self, topics: list[str], timeout: float) -> bool:
        """Return when one of ``topics`` (or everything) is notified (True), or after
        ``timeout`` seconds (False). Only notices from now on count: a waiter that looks
        at the store first and waits after should ``watch`` before it looks."""
        return await self.watch(topics).wait(timeout)


class Watch:
    """Notices of some topics since the watch was made.

    A waiter's loop is: ``watch``, look at the store, then ``wait`` if it must. A notice
    that arrives while it looks sets one of the watch's events (a notice sets the topic's
    current event and forgets it; the watch keeps it), so ``wait`` returns at once and the
    waiter looks again, instead of sleeping until its timeout as it would if it started
    listening only after looking. A watch left without waiting costs nothing more: its
    events are dropped by the next notice of their topics.
    """

    __slots__ = ("_events",)

    def __init__(self, events: list[asyncio.Event]) -> None:
        self._events = events

    @property
    def fired(self) -> bool:
        """True once a notice of one of the topics (or everything) came."""
        return any(event.is_set() for event in self._events)

    async def wait(self, timeout: float) -> bool:
        """Return True as soon as a notice came since the watch was made (at once if one
        already did), or False after ``timeout`` seconds without one."""
        if self.fired:
            return True
        waiters = [asyncio.ensure_future(event.wait()) for event in self._events]
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=max(timeout, 0.0), return_when="FIRST_COMPLETED"
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        return bool(done)


class ChangeOps:
    """The store's change notices; part of ``Store``."""

    _changes_hub: Changes | None = None

    @property
    def changes(self) -> Changes:
        """This store's hub of wake-ups (see ``corral.store._notify``)."""
        hub = self._changes_hub
        if hub is None:
            hub = self._changes_hub = Changes()
        return hub

    async def wait_for_change(self, topics: list[str], timeout: float) -> bool:
        """Wait until one of ``topics`` may have changed (True) or ``timeout`` passed
        (False). On PostgreSQL changes by any process wake it; on SQLite only this
        process's."""
        return await self.changes.wait(topics, timeout)


#: Reconnection backoff of the listener: first delay, cap.
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 5.0

#: The listener's channel: the same expression as the triggers' (migration 0014), read
#: from the database so that both agree on the schema's name.
_CHANNEL_QUERY = "SELECT 'corral_' || md5(current_schema()) AS channel"


class PgListener:
    """One LISTEN connection of a PostgreSQL store, feeding ``changes``; see the module
    docstring. Not from the pool: a pooled connection is reset and lent to others."""

    def __init__(self, conninfo: str, changes: Changes, *, connect_timeout: float) -> None:
        self._conninfo = conninfo
        self._changes = changes
        self._connect_timeout = connect_timeout
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._ready = asyncio.Event()
        self.channel: str | None = None
        #: The backend pid of the current connection (tests end it to check reconnection).
        self.pid: int | None = None
        #: How many times a connection was made (1 after the first).
        self.connections = 0

    async def start(self) -> None:
        """Start listening; return once the first LISTEN is in place (or failed once:
        then it keeps retrying in the background and waiters fall back to polling)."""
        self._task = asyncio.create_task(self._run(), name="corral-store-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), self._connect_timeout)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop()

    async def _run(self) -> None:
        import psycopg  # here: SQLite users of this module never load the driver

        delay = BACKOFF_FIRST_S
        while True:
            try:
                await self._connect()
            except (psycopg.Error, OSError) as exc:
                self._ready.set()  # start() returns; waiters poll meanwhile
                log.warning(
                    "cannot listen for store changes (%s); retrying in %.2f s",
                    type(exc).__name__,
                    delay,
                    extra={"action": "store_listen_failed"},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            delay = BACKOFF_FIRST_S
            if self.connections > 1:
                self._changes.notify_all()  # notices sent while away were lost: look again
            self._ready.set()
            try:
                await self._listen()
            except (psycopg.Error, OSError) as exc:
                log.warning(
                    "the store's change listener lost its connection (%s); reconnecting",
                    type(exc).__name__,
                    extra={"action": "store_listen_lost"},
                )
            finally:
                self._changes.remote = False
                await self._drop()

    async def _connect(self) -> None:
        import psycopg
        from psycopg import sql

        conn = await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            connect_timeout=int(self._connect_timeout),
            # A peer that vanished without closing is noticed within ~25 s.
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        try:
            row = await (await conn.execute(_CHANNEL_QUERY)).fetchone()
            if row is None or row[0] is None:
                raise psycopg.OperationalError("the store's schema is not on the search_path")
            channel = str(row[0])
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except BaseException:
            await conn.close()
            raise
        self._conn, self.channel, self.pid = conn, channel, conn.info.backend_pid
        self.connections += 1
        self._changes.remote = True

    async def _listen(self) -> None:
        conn = self._conn
        assert conn is not None
        changes = self._changes
        async for notice in conn.notifies():
            if notice.payload == EVERYONE:
                changes.notify_all()
            else:
                changes.notify(notice.payload)

    async def _drop(self) -> None:
        import psycopg

        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()
