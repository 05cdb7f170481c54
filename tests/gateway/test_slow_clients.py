"""Slow and numerous strangers against a real gateway over real sockets: a connection that
trickles its headers or its body is closed within the bound, idle ones too, the count of
connections is capped, and a normal request is served all the while."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from corral.gateway.server import EdgeLimits, GatewayServer, bind
from corral.store import Store
from tests.gateway.fleet import running_fleet

pytestmark = pytest.mark.slow

LIMITS = EdgeLimits(header_timeout=3.0, body_timeout=4.0, max_connections=40)
#: A fresh client's GET /health must answer within this while strangers trickle: well
#: under both deadlines, so an answer queued behind the trickling connections fails it,
#: and loose enough for a loaded machine (client set-up included).
HEALTH_BOUND = 2.0
#: How late a close may come after its deadline (timer granularity, a loaded machine).
SLACK = 2.0

PROJECT = '[webhooks.open]\ntype = "generic"\nallowUnsigned = true\n'
TABLES = {"ops": '[[webhooks]]\nsource = "open"\n'}


@dataclass
class Edge:
    host: str
    port: int

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)

    async def health_seconds(self) -> float:
        """How long a fresh client's GET /health takes (it must succeed)."""
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=f"http://{self.host}:{self.port}") as http:
            response = await http.get("/health", timeout=5)
        assert response.status_code == 200
        return time.monotonic() - started


@pytest.fixture
async def edge(tmp_path: Path, store: Store) -> AsyncIterator[Edge]:
    """The real gateway app of a running fleet, served with small limits."""
    agents: dict[str, dict[str, object]] = {"ops": {"command": "true"}}
    async with running_fleet(tmp_path / "p", store, agents, PROJECT, TABLES) as fleet:
        sock = bind("127.0.0.1", 0)
        server = GatewayServer.for_app(fleet.app, limits=LIMITS)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            yield Edge("127.0.0.1", sock.getsockname()[1])
        finally:
            server.should_exit = True
            await serving


async def _closed_after(reader: asyncio.StreamReader, limit: float) -> tuple[float, bytes]:
    """Read until the server closes the connection; how long it took, and what it said."""
    started = time.monotonic()
    said = b""
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                said += chunk
    return time.monotonic() - started, said


async def _trickle(writer: asyncio.StreamWriter, data: bytes, every: float = 1.0) -> None:
    """Send ``data`` one byte at a time, ``every`` seconds apart, until the peer closes."""
    with contextlib.suppress(ConnectionError, OSError):
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every)


def _hang_up(
    tasks: list[asyncio.Task[None]],
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
) -> None:
    for task in tasks:
        task.cancel()
    for _, writer in conns:
        writer.transport.abort()  # a reset: the server must not wait on these to stop


async def test_trickled_headers_are_closed_within_the_header_timeout(edge: Edge) -> None:
    head = b"POST /webhooks/open HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"X-Slow: " + b"a" * 100
    conns = [await edge.connect() for _ in range(30)]
    trickles = [asyncio.create_task(_trickle(w, head)) for _, w in conns]
    try:
        await asyncio.sleep(0.5)
        assert await edge.health_seconds() < HEALTH_BOUND  # served while they trickle
        bound = LIMITS.header_timeout + SLACK
        results = await asyncio.gather(*(_closed_after(r, bound + 5) for r, _ in conns))
        for took, said in results:
            assert took < bound, f"a trickling connection stayed open {took:.1f} s"
            assert said == b"" or said.startswith(b"HTTP/1.1 408"), said[:80]
    finally:
        _hang_up(trickles, conns)


async def test_a_silent_connection_is_closed_within_the_header_timeout(edge: Edge) -> None:
    reader, writer = await edge.connect()
    try:
        took, _ = await _closed_after(reader, LIMITS.header_timeout + SLACK + 5)
        assert took < LIMITS.header_timeout + SLACK
    finally:
        writer.close()


async def test_a_trickled_body_is_closed_within_the_body_timeout(edge: Edge) -> None:
    conns = []
    for _ in range(10):
        reader, writer = await edge.connect()
        writer.write(
            b"POST /webhooks/open HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        await writer.drain()
        conns.append((reader, writer))
    trickles = [asyncio.create_task(_trickle(w, b'"a": "' + b"b" * 900)) for _, w in conns]
    try:
        await asyncio.sleep(0.5)
        assert await edge.health_seconds() < HEALTH_BOUND
        bound = LIMITS.body_timeout + SLACK
        results = await asyncio.gather(*(_closed_after(r, bound + 5) for r, _ in conns))
        for took, said in results:
            assert took < bound, f"a trickling body stayed open {took:.1f} s"
            assert said == b"" or said.startswith(b"HTTP/1.1 408"), said[:80]
    finally:
        _hang_up(trickles, conns)


async def test_a_long_answer_is_not_cut_by_the_body_timeout(edge: Edge) -> None:
    """The body deadline covers reading the request, not the time the app takes."""
    reader, writer = await edge.connect()
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    line = await reader.readline()
    assert line.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_the_connection_count_is_capped_and_requests_still_get_through(
    edge: Edge,
) -> None:
    """More idle connections than the cap: the oldest idle ones are shed so that a new
    client still gets its answer, and at no time are more than the cap open."""
    conns = [await edge.connect() for _ in range(LIMITS.max_connections + 30)]
    try:
        await asyncio.sleep(0.3)
        closed = 0
        for reader, _ in conns:
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                async with asyncio.timeout(0.05):
                    said = await reader.read()  # until the server closes it
                    assert said == b"" or said.startswith(b"HTTP/1.1 408"), said[:80]
                    closed += 1
        open_now = len(conns) - closed
        assert open_now <= LIMITS.max_connections, f"{open_now} connections open"
        assert await edge.health_seconds() < HEALTH_BOUND
    finally:
        _hang_up([], conns)


def test_the_default_limits_are_bounded() -> None:
    limits = EdgeLimits()
    assert 0 < limits.header_timeout <= 30 and 0 < limits.body_timeout <= 120
    assert 0 < limits.max_connections <= 4096
    assert 0 < limits.max_header_bytes <= 128 * 1024 and 0 < limits.max_headers <= 200


async def test_past_the_cap_with_every_connection_busy_a_new_one_gets_503(edge: Edge) -> None:
    """Connections in the middle of a request are never shed for a newcomer."""
    conns = [await edge.connect() for _ in range(LIMITS.max_connections)]
    try:
        for _, writer in conns:  # each one's head sent, its body still to come: busy
            writer.write(b"POST /webhooks/open HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n")
            await writer.drain()
        await asyncio.sleep(0.3)
        reader, writer = await edge.connect()
        conns.append((reader, writer))
        took, said = await _closed_after(reader, 5)
        assert said.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in said, said[:80]
        assert took < 1.0
    finally:
        _hang_up([], conns)
