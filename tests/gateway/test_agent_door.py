"""The agent API checks the run secret before it reads a body, and reads bodies with a
cap: a real gateway process, real sockets, its memory measured from /proc."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from corral.agentcmd import install
from corral.gateway.app import create_agent_app
from corral.scheduler.agentlink import AgentLink
from corral.store import NewRun, Store, TriggerKind
from tests.gateway._agent_gateway import AgentGateway, agent_gateway
from tests.scheduler.helpers import write_project

MIB = 1024 * 1024
CHUNK = b"x" * (256 * 1024)


@dataclass
class Answer:
    status: int
    seconds: float
    sent: int
    body: bytes


def post(
    url: str,
    path: str,
    size: int,
    *,
    secret: str | None = None,
    declare: bool = True,
    timeout: float = 20.0,
) -> Answer:
    """POST ``size`` bytes to ``path``, streaming, and read the answer as soon as there
    is one (the gateway may answer before the body is sent, and then close)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    if secret is not None:
        head.append(f"Authorization: Bearer {secret}")
    head.append(f"Content-Length: {size}" if declare else "Transfer-Encoding: chunked")
    started = time.monotonic()
    sent = 0
    received = b""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sock.setblocking(False)
        deadline = started + timeout
        writing = True
        while time.monotonic() < deadline:
            wlist = [sock] if writing else []
            readable, writable, _ = select.select([sock], wlist, [], 0.5)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    break
                received += data
                if _complete(received):
                    break
            elif writable:
                piece = CHUNK[: min(len(CHUNK), size - sent)]
                if not declare:
                    piece = b"%x\r\n%s\r\n" % (len(piece), piece) if piece else b"0\r\n\r\n"
                try:
                    sent += sock.send(piece) if declare else _send_all(sock, piece)
                except (BrokenPipeError, ConnectionResetError):
                    writing = False
                if sent >= size and (declare or not piece):
                    writing = False
    seconds = time.monotonic() - started
    assert received, f"no answer to POST {path} within {timeout} s ({sent} bytes sent)"
    status = int(received.split(b" ", 2)[1])
    return Answer(status, seconds, sent, received.partition(b"\r\n\r\n")[2])


def _send_all(sock: socket.socket, data: bytes) -> int:
    sock.setblocking(True)
    try:
        sock.sendall(data)
    finally:
        sock.setblocking(False)
    return len(data) - 8 if data != b"0\r\n\r\n" else 0


def _complete(data: bytes) -> bool:
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


@pytest.fixture
def gateway(tmp_path: Path, store_url: str) -> Iterator[AgentGateway]:
    root = tmp_path / "p"
    write_project(root, {"dev": {"command": "true"}, "reviewer": {"command": "true"}})
    bin_dir = install(tmp_path / "bin")
    with agent_gateway(store_url, root, bin_dir) as served:
        yield served


@pytest.mark.slow
def test_unauthenticated_bodies_are_refused_unread(gateway: AgentGateway) -> None:
    # Three parallel 200 MiB posts without a secret, and three with a wrong one: each is
    # answered 403 at once, from its headers, and the gateway's memory stays flat.
    before = gateway.peak_rss()
    attacks = [
        ("/agent/return", None),
        ("/agent/calls", None),
        ("/agent/locks/acquire", None),
        ("/agent/return", "not-the-secret"),
        ("/agent/calls", "not-the-secret"),
        ("/agent/status", "not-the-secret"),
    ]
    with ThreadPoolExecutor(len(attacks)) as pool:
        answers = list(pool.map(lambda a: post(gateway.url, a[0], 200 * MIB, secret=a[1]), attacks))
    grown = gateway.peak_rss() - before
    for (path, _), answer in zip(attacks, answers, strict=True):
        assert answer.status == 403, (path, answer)
        assert answer.seconds < 5, (path, answer.seconds)
        # The connection is closed after the answer: the sender could not push on.
        assert answer.sent < 64 * MIB, (path, answer.sent)
        assert json.loads(answer.body)["ok"] is False
    assert grown < 40 * MIB, f"the gateway's peak RSS grew by {grown / MIB:.0f} MiB"
    # And it still serves its run.
    assert gateway.command("al-status", "still here").returncode == 0


def test_an_authenticated_body_over_its_cap_is_refused(gateway: AgentGateway) -> None:
    before = gateway.peak_rss()
    # Declared too long: refused before a byte of it is read.
    declared = post(gateway.url, "/agent/return", 200 * MIB, secret=gateway.secret)
    assert declared.status == 413 and declared.seconds < 5
    assert declared.sent < 64 * MIB
    assert "over" in json.loads(declared.body)["error"]
    # Not declared (chunked): cut off where it passes the cap.
    streamed = post(gateway.url, "/agent/calls", 40 * MIB, secret=gateway.secret, declare=False)
    assert streamed.status == 413 and streamed.seconds < 10
    # A route without large text has a small cap.
    small = post(gateway.url, "/agent/status", 64 * 1024 + 1, secret=gateway.secret)
    assert small.status == 413
    assert gateway.peak_rss() - before < 60 * MIB
    # Within the caps, the largest documented values still go through.
    value = "é" * (512 * 1024)  # 1 MiB of UTF-8
    assert gateway.command("al-return", input=value.encode()).returncode == 0
    control = "\x01" * (1024 * 1024)  # 1 MiB whose JSON is six times as long
    done = gateway.command("al-subagent", "reviewer", input=control.encode())
    assert done.returncode == 0, done.stdout


async def test_the_app_itself_authenticates_before_reading(tmp_path: Path, store: Store) -> None:
    # Served by any ASGI server, not only ours (which puts the door in front once more):
    # the app does not ask for the body of a request without a valid secret.
    project = write_project(tmp_path / "p", {"dev": {"command": "true"}})
    link = AgentLink("http://127.0.0.1:1")
    run = await store.create_run(NewRun(agent="dev", trigger=TriggerKind.MANUAL))
    secret, _ = link.issue(run.id, "dev", "manual")
    app = create_agent_app(project, store, link)
    for path in ["/agent/return", "/agent/calls", "/agent/locks/acquire", "/agent/status"]:
        for headers in ([], [(b"authorization", b"Bearer wrong")]):
            status, reads = await _asgi_post(app, path, headers, 200 * MIB)
            assert status == 403 and reads == 0, (path, headers, status, reads)
    mine = [(b"authorization", f"Bearer {secret}".encode())]
    status, reads = await _asgi_post(app, "/agent/status", mine, 200 * MIB)
    assert status == 413 and reads == 0
    status, reads = await _asgi_post(app, "/agent/status", mine, 0, body=b'{"text":"hi"}')
    assert status == 200 and reads == 1


async def _asgi_post(
    app: Any, path: str, headers: list[tuple[bytes, bytes]], size: int, body: bytes = b""
) -> tuple[int, int]:
    """POST to ``app`` directly: the answer's status, and how often it read the body."""
    length = size or len(body)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(length).encode()),
            *headers,
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    reads = 0
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0], reads
