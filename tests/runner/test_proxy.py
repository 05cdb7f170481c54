"""A run on a runner reaches the control plane's agent API through a Unix socket the
runner serves: real in-run commands, a real gateway process, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from corral.agentcmd import install
from corral.runner.proxy import MAX_HEAD, AgentApiProxy
from tests.gateway._agent_gateway import AgentGateway, agent_gateway
from tests.scheduler.helpers import write_project


@pytest.fixture
def gateway(tmp_path: Path, store_url: str) -> Iterator[AgentGateway]:
    root = tmp_path / "p"
    write_project(root, {"dev": {"command": "true"}})
    bin_dir = install(tmp_path / "bin")
    with agent_gateway(store_url, root, bin_dir) as served:
        yield served


async def _command(
    gateway: AgentGateway, socket_path: Path, name: str, *args: str
) -> tuple[int, dict[str, object]]:
    env = {
        "PATH": f"{gateway.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "GATEWAY_URL": f"unix:{socket_path}",
        "CORRAL_RUN_SECRET": gateway.secret,
    }
    process = await asyncio.create_subprocess_exec(
        str(gateway.bin_dir / name),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    text = out.decode().strip() or err.decode().strip()
    try:
        return process.returncode, json.loads(text)
    except json.JSONDecodeError:
        return process.returncode, {"text": text}


class Recorder:
    """A control plane stand-in that records what reaches it and answers 200 ``{"ok":true}``
    (after ``delay`` seconds): the peer the proxy forwards to, to see the forwarded bytes."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.server: asyncio.base_events.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((head[0], headers, body))
        await asyncio.sleep(self.delay)
        payload = b'{"ok":true}'
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    found = Recorder()
    yield found
    await found.close()


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def _raw(path: Path, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return answer


async def test_in_run_commands_work_through_the_runner(
    gateway: AgentGateway, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.sock"
    async with AgentApiProxy(path, [gateway.url]):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        code, answer = await _command(gateway, path, "rlock", "github://acme/app/main")
        assert (code, answer["ok"]) == (0, True), answer
        code, answer = await _command(gateway, path, "al-status", "working on it")
        assert code == 0, answer
        code, answer = await _command(gateway, path, "runlock", "github://acme/app/main")
        assert (code, answer["ok"]) == (0, True), answer
    assert not path.exists()


async def test_a_wrong_secret_is_still_refused_by_the_control_plane(
    gateway: AgentGateway, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.sock"
    async with AgentApiProxy(path, [gateway.url]):
        forged = AgentGateway(gateway.url, "not-the-secret", gateway.run_id, 0, gateway.bin_dir)
        code, answer = await _command(forged, path, "rlock", "github://acme/app/main")
    assert code == 3, answer  # 403: the proxy adds no authority of its own to a run


async def test_the_runner_speaks_for_itself_and_a_run_cannot(
    recorder: Recorder, tmp_path: Path
) -> None:
    url = await recorder.start()
    path = tmp_path / "gateway.sock"
    async with AgentApiProxy(path, [url], headers={"X-Corral-Runner": "runner-credential"}):
        answer = await _raw(
            path,
            b"POST /agent/locks?x=1 HTTP/1.1\r\nHost: whatever\r\n"
            b"Authorization: Bearer run-secret\r\nX-Corral-Runner: forged\r\n"
            b'X-Corral-Runner-Id: forged\r\nContent-Length: 7\r\n\r\n{"a":1}',
        )
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b'{"ok":true}')
    (line, headers, body) = recorder.requests[0]
    assert line == "POST /agent/locks?x=1 HTTP/1.1"
    assert headers["authorization"] == "Bearer run-secret"
    assert headers["x-corral-runner"] == "runner-credential"
    assert "x-corral-runner-id" not in headers
    assert body == b'{"a":1}'


async def test_an_unreachable_address_is_skipped_for_the_next(
    recorder: Recorder, tmp_path: Path
) -> None:
    url = await recorder.start()
    path = tmp_path / "gateway.sock"
    proxy = AgentApiProxy(path, [_closed_port(), url])
    async with proxy:
        for _ in range(2):
            answer = await _raw(path, b"GET /agent/ping HTTP/1.1\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200 ")
    assert len(recorder.requests) == 2
    assert proxy.upstreams[proxy._preferred] == url  # later requests go straight there


async def test_no_reachable_control_plane_is_a_clear_error_for_the_run(
    gateway: AgentGateway, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.sock"
    async with AgentApiProxy(path, [_closed_port(), _closed_port()]):
        code, answer = await _command(gateway, path, "rlock", "github://acme/app/main")
    assert code != 0
    assert "no control plane is reachable from this runner" in json.dumps(answer), answer


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /agent/ping HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n", b"431"),
        (b"POST /agent/return HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", b"413"),
        (b"POST /agent/return HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"411"),
        (b"HELLO\r\n\r\n", b"400"),
        (b"GET http://elsewhere/ HTTP/1.1\r\n\r\n", b"400"),
        (b"GET /agent/ping HTTP/1.1\r\nX-A: b\nInjected: c\r\n\r\n", b"400"),
        (b"POST /agent/x HTTP/1.1\r\nContent-Length: ten\r\n\r\n", b"400"),
    ],
)
async def test_bad_requests_are_refused_before_anything_is_forwarded(
    recorder: Recorder, tmp_path: Path, request_bytes: bytes, status: bytes
) -> None:
    url = await recorder.start()
    path = tmp_path / "gateway.sock"
    async with AgentApiProxy(path, [url], max_body=1024 * 1024):
        answer = await _raw(path, request_bytes)
    assert answer.split(b" ")[1] == status, answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["ok"] is False
    assert recorder.requests == []


async def test_a_silent_client_is_cut_off(recorder: Recorder, tmp_path: Path) -> None:
    url = await recorder.start()
    path = tmp_path / "gateway.sock"
    async with AgentApiProxy(path, [url], read_deadline=0.5):
        answer = await _raw(path, b"POST /agent/x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    assert answer.split(b" ")[1] == b"408"
    assert recorder.requests == []


async def test_a_long_poll_is_answered_when_the_control_plane_answers(tmp_path: Path) -> None:
    slow = Recorder(delay=1.5)
    url = await slow.start()
    path = tmp_path / "gateway.sock"
    try:
        async with AgentApiProxy(path, [url]):
            loop = asyncio.get_running_loop()
            started = loop.time()
            answer = await _raw(path, b"GET /agent/calls/1/wait HTTP/1.1\r\n\r\n")
            assert loop.time() - started >= 1.4
        assert answer.startswith(b"HTTP/1.1 200 ")
    finally:
        await slow.close()


async def test_many_runs_at_once(recorder: Recorder, tmp_path: Path) -> None:
    url = await recorder.start()
    path = tmp_path / "gateway.sock"
    async with AgentApiProxy(path, [url]):
        answers = await asyncio.gather(
            *(_raw(path, f"GET /agent/n/{i} HTTP/1.1\r\n\r\n".encode()) for i in range(50))
        )
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
    assert sorted(r[0] for r in recorder.requests) == sorted(
        f"GET /agent/n/{i} HTTP/1.1" for i in range(50)
    )
