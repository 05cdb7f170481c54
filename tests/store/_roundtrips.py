"""Counting the round trips a PostgreSQL client makes, on the wire.

``RoundTripProxy`` listens on loopback and forwards every connection to the real server,
reading the frontend's messages as they pass. A round trip ends where the client must
wait for the server: at a simple ``Query`` message, and at a ``Sync`` (the end of an
extended-protocol exchange: Parse/Bind/Execute…/Sync). A pipeline's several statements
followed by one Sync are one round trip, as the network sees them. Nothing in the store
is patched: a store reaches the proxy through ``proxy.url(store_url)``, and every
connection it opens is counted (pool, listener), its pool's connection check included
(an empty simple query, counted apart as ``checks``).

    async with counted_store(url) as (store, trips):
        with trips.counting() as seen:
            await store.finalize(...)
        assert seen.statements == 1, seen.queries

psycopg prepares a statement on its 6th run on a connection (an extra round trip, once
per connection); a count that must be exact warms the operation up past that first.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from corral.store import open_store
from corral.store._postgres import PostgresStore

__all__ = ["RoundTripProxy", "Seen", "counted_store"]

#: psycopg prepares a statement on its 6th run on a connection (one extra round trip,
#: once): warm an operation up this many times before counting it exactly.
WARM_UP = 8


@dataclass
class Seen:
    """What the client sent: ``statements`` round trips of the operation, ``checks`` of
    the pool's connection check, and the SQL sent (or ``prepared <name>``), for
    messages."""

    statements: int = 0
    checks: int = 0
    queries: list[str] = field(default_factory=list)


class RoundTripProxy:
    """Forward loopback connections to ``host:port``; count the clients' round trips."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5432) -> None:
        self.target = (host, port)
        self.seen = Seen()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RoundTripProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, store_url: str) -> str:
        """``store_url`` pointed at this proxy (query string kept), without TLS."""
        parts = urlsplit(store_url)
        user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        query = "&".join(filter(None, [parts.query, "sslmode=disable"]))
        return urlunsplit(
            (parts.scheme, f"{user}127.0.0.1:{self.port}", parts.path, query, parts.fragment)
        )

    def reset(self) -> Seen:
        """What was counted so far (pool checks included in ``statements`` + ``checks``);
        start counting again from zero."""
        seen, self.seen = self.seen, Seen()
        return seen

    @contextmanager
    def counting(self) -> Iterator[Seen]:
        """Count what the block sends, into the ``Seen`` it is given."""
        self.reset()
        seen = Seen()
        try:
            yield seen
        finally:
            counted = self.reset()
            seen.statements, seen.checks = counted.statements, counted.checks
            seen.queries.extend(counted.queries)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        server_r, server_w = await asyncio.open_connection(*self.target)
        try:
            await asyncio.gather(self._frontend(client_r, server_w), _pipe(server_r, client_w))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # either side hung up, or the proxy is closing
        finally:
            for writer in (client_w, server_w):
                writer.close()
            self._tasks.discard(task)

    async def _frontend(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client -> server: the startup packet (no type byte), then typed messages."""
        head = await reader.readexactly(4)
        (length,) = struct.unpack("!I", head)
        writer.write(head + await reader.readexactly(length - 4))
        await writer.drain()
        pending: list[str] = []  # the SQL of the round trip being sent
        while True:
            head = await reader.readexactly(5)
            (length,) = struct.unpack("!I", head[1:])
            body = await reader.readexactly(length - 4)
            self._read(head[0], body, pending)
            writer.write(head + body)
            await writer.drain()

    def _read(self, kind: int, body: bytes, pending: list[str]) -> None:
        if kind == ord("Q"):
            text = body.rstrip(b"\0").decode(errors="replace")
            if not text.strip() and not pending:
                self.seen.checks += 1
                return
            pending.append(text)
        elif kind == ord("P"):  # Parse: name \0 query \0 …
            pending.append(body.split(b"\0", 2)[1].decode(errors="replace"))
        elif kind == ord("B"):  # Bind: portal \0 statement \0 …
            statement = body.split(b"\0", 2)[1].decode(errors="replace")
            if statement:
                pending.append(f"prepared {statement}")
            return
        elif kind != ord("S"):
            return
        if kind in (ord("Q"), ord("S")):
            self.seen.statements += 1
            self.seen.queries.extend(pending)
            pending.clear()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@asynccontextmanager
async def counted_store(url: str) -> AsyncIterator[tuple[PostgresStore, RoundTripProxy]]:
    """A PostgreSQL store on ``url`` reached through a ``RoundTripProxy``."""
    async with RoundTripProxy() as proxy, await open_store(proxy.url(url)) as store:
        assert isinstance(store, PostgresStore)
        yield store, proxy
