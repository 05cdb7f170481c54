"""The gateway's HTTP connections, bounded before a request reaches the app.

uvicorn bounds neither the time a client may take to send a request's head or body, nor
the size of the head (httptools buffers a header of any length), nor the number of open
connections: a stranger could hold many connections open by sending a byte a second, or
make the gateway buffer a 32 MiB header. ``GuardedProtocol`` is uvicorn's httptools
protocol with those bounds (``EdgeLimits``); ``GatewayServer`` serves every socket with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import resource
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["EdgeLimits", "GuardedProtocol", "default_limits", "guarded"]


@dataclass(frozen=True)
class EdgeLimits:
    """What a connection may cost before the app sees a request (docs/webhooks.md).

    uvicorn times out idle keep-alive connections only; these bound the rest: a client
    that has not sent a request's whole head within ``header_timeout`` (counted from the
    connection, or from a later request's first byte) is answered 408 and closed, and so
    is one that has not sent its whole body within ``body_timeout`` of its head. A head
    larger than ``max_header_bytes`` or with more than ``max_headers`` fields is answered
    431 and closed. At most ``max_connections`` connections are open: past that, the one
    that has waited longest without a request being answered is closed first (a slow
    stranger, not a client being served), or the new one if every connection is busy.
    """

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive: float = 5.0
    max_connections: int = 1000
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100


class _HeadTooLarge(Exception):
    """The request's head passed ``max_headers``: answered 431."""


_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 41\r\nconnection: close\r\n\r\n"
    b"the request was not sent within the time\n"
)
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 42\r\n"
    b"connection: close\r\n\r\nthe request's header fields are too large\n"
)
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 1\r\ncontent-length: 33\r\nconnection: close\r\n\r\n"
    b"too many connections; retry soon\n"
)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of ``EdgeLimits`` (set per server by
    ``guarded``)."""

    limits: ClassVar[EdgeLimits] = EdgeLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = True  # reading a request's head (or waiting for one)
        self._head_bytes = 0
        self._head_fields = 0
        self._waiting_since = self.loop.time()

    # -- the connection --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm(self.limits.header_timeout)
        if len(self.connections) > self.limits.max_connections:
            self._shed()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        try:
            super().data_received(data)
        except _HeadTooLarge:  # out of the parse, through send_400_response
            self._refuse(_TOO_LARGE)
            return
        # Still in the head after this read: every byte so far belongs to it.
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse(_TOO_LARGE)

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers a failed parse 400; a failure of ours inside it is a 431.
        error = self.parser_error()
        if isinstance(error, _HeadTooLarge):
            raise error
        super().send_400_response(msg)

    def parser_error(self) -> BaseException | None:
        current = sys.exc_info()[1]
        return None if current is None else current.__context__

    # -- the parser's callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._timer is None:  # a later request: its head is timed from its first byte
            self._arm(self.limits.header_timeout)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += 1
        if self._head_fields > self.limits.max_headers:
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.limits.body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes, self._head_fields = True, 0, 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._waiting_since = self.loop.time()
        super().on_response_complete()

    # -- the bounds ------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        started = self.cycle is not None and self.cycle.response_started
        self._refuse(b"" if started else _TIMEOUT)

    def _refuse(self, answer: bytes) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        if answer:
            self.transport.write(answer)
        self.transport.close()

    def _idle(self) -> bool:
        """Waiting for (the rest of) a request's head, or for a next request."""
        return self.cycle is None or (self.cycle.response_complete and self._in_head)

    def _shed(self) -> None:
        """Over the cap: close the connection that has waited longest for a request."""
        waiting = [
            c
            for c in self.connections
            if isinstance(c, GuardedProtocol) and c is not self and c._idle()
        ]
        if not waiting:
            self._refuse(_BUSY)
            return
        oldest = min(waiting, key=lambda c: c._waiting_since)
        oldest._refuse(b"" if oldest.cycle is not None else _TIMEOUT)


def default_limits() -> EdgeLimits:
    """``EdgeLimits()``, with room left under the process's file limit: connections may
    take at most half of it (the rest is for the store, logs and runs' pipes)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = EdgeLimits()
    if soft == resource.RLIM_INFINITY or soft // 2 >= limits.max_connections:
        return limits
    return dataclasses.replace(limits, max_connections=max(16, soft // 2))


def guarded(limits: EdgeLimits) -> type[GuardedProtocol]:
    """The protocol class of a server with ``limits``."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})
