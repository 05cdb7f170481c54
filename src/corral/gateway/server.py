"""Serving the gateway inside the scheduler's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from fastapi import FastAPI

from corral.agentcmd import install as install_commands
from corral.errors import UsageError
from corral.project import Project
from corral.scheduler.agentlink import AgentLink
from corral.store import Store

__all__ = ["GatewayServer", "bind", "serve_agent_api"]


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, with a clear error when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it a response written in two parts waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"port {port} on {host} is already in use; pass --port with a free port "
                "(or set [gateway] port in config.toml)"
            ) from exc
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class GatewayServer(uvicorn.Server):
    """uvicorn, minus its own signal handling: `corral start` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    @classmethod
    def for_app(cls, app: FastAPI) -> GatewayServer:
        # httptools parses HTTP several times faster than h11; the loop stays asyncio's
        # (uvloop forks slowly, and runs are spawned from this loop): docs/decisions.md.
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="httptools",
        )
        return cls(config)


@contextlib.asynccontextmanager
async def serve_agent_api(project: Project, store: Store) -> AsyncIterator[AgentLink]:
    """Serve the agent API on a free loopback port while the block runs (`corral run`
    without a scheduler); yields the link to hand to the runs' executor."""
    from corral.gateway.app import create_agent_app

    sock = bind("127.0.0.1", 0)
    link = AgentLink(
        f"http://127.0.0.1:{sock.getsockname()[1]}", bin_dir=project.root / ".corral" / "bin"
    )
    if link.bin_dir is not None:
        install_commands(link.bin_dir)
    server = GatewayServer.for_app(create_agent_app(project, store, link))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield link
    finally:
        server.should_exit = True
        await serving
