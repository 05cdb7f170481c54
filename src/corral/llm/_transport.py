"""One streaming POST and its server-sent events, with every failure mapped to an error."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from corral.llm.errors import BadResponse, Unavailable, WhereKw, error_for_status

__all__ = ["DEFAULT_TIMEOUT", "Event", "Where", "post_events"]

#: Connect within 10 s; then at most 120 s between two reads of the stream.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=30.0, pool=30.0)


@dataclass(frozen=True)
class Where:
    provider: str
    model: str
    url: str

    def kw(self) -> WhereKw:
        return {"provider": self.provider, "model": self.model, "url": self.url}


@dataclass(frozen=True)
class Event:
    """One server-sent event: its ``event:`` name (if any) and its ``data:`` text."""

    name: str | None
    data: str

    def json(self, where: Where) -> dict[str, Any]:
        try:
            value = json.loads(self.data)
        except ValueError as exc:
            raise BadResponse(
                f"malformed event data {self.data[:200]!r}: {exc}", **where.kw()
            ) from None
        if not isinstance(value, dict):
            raise BadResponse(f"event data is not an object: {self.data[:200]!r}", **where.kw())
        return value


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    name: str | None = None
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield Event(name, "\n".join(data))
            name, data = None, []
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
    if data:
        yield Event(name, "\n".join(data))


def _transport_error(exc: httpx.TransportError, started: bool, timeout: httpx.Timeout) -> str:
    what = type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return f"could not connect within {timeout.connect} s"
    if isinstance(exc, httpx.ConnectError):
        return f"could not connect: {exc or what}"
    if isinstance(exc, httpx.ReadTimeout):
        return f"no data from the provider for {timeout.read} s"
    if started:
        return f"stream interrupted: the connection dropped mid-response ({what}: {exc})"
    return f"request failed: {what}: {exc}"


async def post_events(
    http: httpx.AsyncClient,
    where: Where,
    headers: dict[str, str],
    body: dict[str, Any],
    timeout: httpx.Timeout,
) -> AsyncGenerator[Event, None]:
    """POST ``body`` as JSON and yield the response's server-sent events.

    A non-200 answer raises the :func:`error_for_status` error; connection failures,
    timeouts and a stream cut short raise :class:`Unavailable`.
    """
    started = False
    try:
        async with http.stream(
            "POST", where.url, json=body, headers=headers, timeout=timeout
        ) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode("utf-8", "replace")
                raise error_for_status(resp.status_code, text, resp.headers, **where.kw())
            started = True
            async for event in _events(resp.aiter_lines()):
                yield event
    except httpx.TransportError as exc:
        raise Unavailable(_transport_error(exc, started, timeout), **where.kw()) from exc
