"""A scripted gateway (records each request, answers what the test chose) and a runner for
the installed in-run commands as real subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import socketserver
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from corral.agentcmd import install

SECRET = "s3cr3t-run-token-QZX"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any = None


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok":true}'
    chunked: bool = False
    content_type: str = "application/json"


@dataclass
class Script:
    """What the scripted gateway answers next and what it has been asked."""

    requests: list[Recorded] = field(default_factory=list)
    reply: Reply = field(default_factory=Reply)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, status: int = 200, body: str | bytes = '{"ok":true}', **kw: Any) -> None:
        self.reply = Reply(status, body.encode() if isinstance(body, str) else body, **kw)

    @property
    def last(self) -> Recorded:
        assert self.requests, "the gateway got no request"
        return self.requests[-1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def address_string(self) -> str:
        return "test-client"

    def _serve(self) -> None:
        script: Script = self.server.script
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        record = Recorded(
            self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, raw
        )
        if raw:
            record.body = json.loads(raw.decode("utf-8"))
        with script.lock:
            script.requests.append(record)
            reply = script.reply
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Connection", "close")
        if reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            pieces = [reply.body[i : i + 7] for i in range(0, len(reply.body), 7)]
            for piece in pieces:
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = _serve


class TcpGateway(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, script: Script) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script = script


class UnixGateway(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, script: Script) -> None:
        super().__init__(path, Handler)
        self.script = script


@contextlib.contextmanager
def serve(server: socketserver.BaseServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Gateway:
    url: str
    script: Script


@pytest.fixture(scope="session")
def _tcp_gateway() -> Iterator[Gateway]:
    script = Script()
    server = TcpGateway(script)
    host, port = server.server_address[:2]
    url = f"http://{host!s}:{port}"
    with serve(server):
        yield Gateway(url, script)


@pytest.fixture
def gateway(_tcp_gateway: Gateway) -> Gateway:
    """The scripted gateway, emptied and answering 200 {"ok":true}."""
    _tcp_gateway.script.requests.clear()
    _tcp_gateway.script.answer()
    return _tcp_gateway


@pytest.fixture
def unix_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # A short path: AF_UNIX paths are limited to ~100 bytes.
    directory = Path(tmp_path_factory.mktemp("sock", numbered=True))
    path = str(directory / "gw.sock")
    script = Script()
    server = UnixGateway(path, script)
    with serve(server):
        yield Gateway(f"unix:{path}", script)


@pytest.fixture(scope="session")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install(tmp_path_factory.mktemp("bin"))


Run = Callable[..., subprocess.CompletedProcess[bytes]]


def base_env(bin_dir: Path) -> dict[str, str]:
    return {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "LC_ALL": "C.UTF-8"}


@pytest.fixture
def run(bin_dir: Path, gateway: Gateway) -> Run:
    """``run("rlock", "x", input=b"...", env={...})``: the installed command, in a subprocess,
    against the scripted gateway (``env`` overrides; a None value removes the variable)."""

    def invoke(
        command: str,
        *args: str,
        input: bytes | None = None,
        env: dict[str, str | None] | None = None,
        stdin: int | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        full: dict[str, str | None] = {
            **base_env(bin_dir),
            "GATEWAY_URL": gateway.url,
            "CORRAL_RUN_SECRET": SECRET,
        }
        full.update(env or {})
        return subprocess.run(
            [str(bin_dir / command), *args],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL if stdin is None else stdin,
            capture_output=True,
            env={k: v for k, v in full.items() if v is not None},
            timeout=30,
        )

    return invoke
