"""Counting the round trips a PostgreSQL store makes, from libpq's own protocol trace.

``traced_store(url)`` opens a ``PostgresStore`` whose pooled connections are
``TracingConnection``s; ``RoundTrips`` then records what they send during a block:

    async with traced_store(url) as (store, trips):
        with trips.counting() as seen:
            await store.finalize(...)
        assert seen.statements == 1

A round trip is the client sending messages and then waiting for the server's answer:
in the trace, a run of frontend (``F``) lines followed by backend (``B``) lines. That
counts what the network sees, whatever the driver batches (a pipeline's several
statements followed by one Sync are one round trip). The pool's connection check (an
empty query, ``Query ""``) is counted apart (``checks``), as it is the pool's, not the
operation's.
"""

from __future__ import annotations

import tempfile
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import psycopg
import pytest
from psycopg import pq
from psycopg_pool import AsyncConnectionPool

import corral.store._postgres as postgres_module
from corral.store import open_store
from corral.store._postgres import PostgresStore

__all__ = ["RoundTrips", "Seen", "TracingConnection", "count", "traced_store"]

_LIVE: weakref.WeakSet[TracingConnection] = weakref.WeakSet()


class TracingConnection(psycopg.AsyncConnection[Any]):
    """A connection whose libpq protocol trace can be switched on and read back."""

    _trace: IO[bytes] | None = None

    @classmethod
    async def connect(cls, *args: Any, **kwargs: Any) -> TracingConnection:
        conn = await super().connect(*args, **kwargs)
        assert isinstance(conn, TracingConnection)
        # Never prepared: each statement carries its text (so a count can tell them apart),
        # and no one-off round trip to prepare a statement lands in a count.
        conn.prepare_threshold = None
        _LIVE.add(conn)
        return conn

    def start_trace(self) -> None:
        self.stop_trace()
        self._trace = tempfile.TemporaryFile()
        self.pgconn.trace(self._trace.fileno())
        self.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def stop_trace(self) -> list[str]:
        """Stop tracing; the trace's lines so far."""
        trace, self._trace = self._trace, None
        if trace is None:
            return []
        if not self.closed:
            self.pgconn.untrace()  # flushes libpq's stream
        trace.seek(0)
        lines = trace.read().decode(errors="replace").splitlines()
        trace.close()
        return lines


@dataclass
class Seen:
    """What one counted block sent: ``statements`` round trips of the operation,
    ``checks`` of the pool's connection check, and the queries, for messages."""

    statements: int = 0
    checks: int = 0
    queries: list[str] = field(default_factory=list)


def count(lines: list[str], seen: Seen) -> None:
    """Add the round trips of one connection's trace ``lines`` to ``seen``."""
    messages: list[str] = []
    for line in lines:  # a query's text may span lines: those continue the message
        if line.startswith(("F\t", "B\t")) or not messages:
            messages.append(line)
        else:
            messages[-1] += "\n" + line
    sent: list[str] = []
    for line in [*messages, "B\tend"]:
        direction, _, rest = line.partition("\t")
        if direction == "F":
            sent.append(rest)
        elif direction == "B" and sent:
            queries = [_query(part) for part in sent if _query(part)]
            if queries == ['""']:
                seen.checks += 1
            else:
                seen.statements += 1
                seen.queries.extend(queries)
            sent = []


def _query(message: str) -> str:
    """The text of a Query or Parse message (``<length> Query "text"``), or the name of
    the prepared statement a Bind runs; empty for other messages."""
    parts = message.split("\t", 2)
    if len(parts) < 3:
        return ""
    kind, text = parts[1], parts[2].strip()
    if kind == "Query":
        return text
    if kind == "Parse":
        return text.split('" "', 1)[-1] if text.startswith('"') else text
    if kind == "Bind":
        name = text.split(" ")[1]
        return f"prepared {name}" if name != '""' else ""
    return ""


class RoundTrips:
    """Switches the trace of every pooled connection on for a block and counts."""

    @contextmanager
    def counting(self) -> Iterator[Seen]:
        """Count what the block sends, into the ``Seen`` it is given."""
        seen = Seen()
        connections = list(_LIVE)
        for conn in connections:
            conn.start_trace()
        try:
            yield seen
        finally:
            for conn in connections:
                count(conn.stop_trace(), seen)


class _TracingPool(AsyncConnectionPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["connection_class"] = TracingConnection
        super().__init__(*args, **kwargs)


@asynccontextmanager
async def traced_store(url: str) -> AsyncIterator[tuple[PostgresStore, RoundTrips]]:
    """A PostgreSQL store on ``url`` whose round trips can be counted, with one pooled
    connection (so every operation goes over the one traced connection)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(postgres_module, "AsyncConnectionPool", _TracingPool)
        patch.setattr(postgres_module, "POOL_MAX_SIZE", 1)
        async with await open_store(url) as store:
            assert isinstance(store, PostgresStore)
            yield store, RoundTrips()
