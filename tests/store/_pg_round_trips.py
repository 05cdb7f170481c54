"""A PostgreSQL wire-protocol proxy that counts a client's round trips.

``RoundTripProxy`` listens on loopback and forwards every connection to the real server,
reading the frontend's byte stream as it passes: each simple ``Query`` message and each
``Sync`` (the end of an extended-protocol exchange: Parse/Bind/Execute/Sync) is one round
trip, since the client then waits for the server's ReadyForQuery. Counting on the wire
sees everything the store sends: BEGIN and COMMIT, the pool's connection check, the
statements themselves, with nothing in the store patched or mocked.

A store reaches the proxy through ``proxy.url(store_url)`` (host and port replaced,
``sslmode=disable`` so the stream is plain).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from urllib.parse import urlsplit, urlunsplit

__all__ = ["RoundTripProxy"]

_ROUND_TRIP_MESSAGES = frozenset(b"QS")


class RoundTripProxy:
    """Forward loopback connections to ``host:port``; count the clients' round trips."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5432) -> None:
        self.target = (host, port)
        self.round_trips = 0
        #: The SQL of each simple Query message (``BEGIN``, ``COMMIT``, ``""``), in order.
        self.simple_queries: list[str] = []
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

    def reset(self) -> int:
        """The round trips counted so far; start counting again from zero."""
        counted, self.round_trips = self.round_trips, 0
        self.simple_queries.clear()
        return counted

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
        while True:
            head = await reader.readexactly(5)
            (length,) = struct.unpack("!I", head[1:])
            body = await reader.readexactly(length - 4)
            if head[0] in _ROUND_TRIP_MESSAGES:
                self.round_trips += 1
                if head[0] == ord("Q"):
                    self.simple_queries.append(body.rstrip(b"\0").decode())
            writer.write(head + body)
            await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
