"""Server-sent events: the wire format, and a response that always closes its stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from corral.gateway.dashboard._render import security_headers

__all__ = ["KEEPALIVE", "EventStream", "sse_event"]

#: A comment line: keeps proxies from timing the stream out, and finds dead clients.
KEEPALIVE = ": keep-alive\n\n"
#: Seconds between keep-alives on a quiet stream.
KEEPALIVE_SECONDS = 15.0


def sse_event(name: str, data: str, *, event_id: str | None = None) -> str:
    """One event; ``data`` may span lines (each becomes a ``data:`` line)."""
    lines = [] if event_id is None else [f"id: {event_id}"]
    lines.append(f"event: {name}")
    text = data.replace("\r\n", "\n").replace("\r", "\n")
    lines += [f"data: {line}" for line in text.split("\n")]
    return "\n".join(lines) + "\n\n"


class EventStream(StreamingResponse):
    """``text/event-stream`` over an async generator, closed however the response ends
    (a client that goes away cancels the send; the generator's ``finally`` still runs)."""

    def __init__(self, events: AsyncIterator[str]) -> None:
        headers = security_headers() | {"X-Accel-Buffering": "no"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            closer = getattr(self._events, "aclose", None)
            if closer is not None:
                await closer()
