"""Serving the gateway inside the scheduler's event loop."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from corral.errors import UsageError

__all__ = ["GatewayServer", "bind"]


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
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        return cls(config)
