"""Serving the gateway inside the scheduler's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from corral.agentcmd import install as install_commands
from corral.errors import UsageError
from corral.gateway.agent_api import LockFastPath
from corral.gateway.guard import EdgeLimits, default_limits, guarded
from corral.locate import private_dirs
from corral.project import Project
from corral.scheduler.agentlink import AgentLink
from corral.store import Store

__all__ = [
    "EdgeLimits",
    "GatewayServer",
    "bind",
    "bind_unix",
    "serve_agent_api",
    "unix_socket_path",
]


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


#: sun_path holds 108 bytes on Linux; keep clear of the limit.
_MAX_SOCKET_PATH = 100


def unix_socket_path(project_root: Path, pid: int | None = None) -> Path:
    """Where this process's gateway listens for runs without a network:
    ``.corral/gateway-<pid>.sock`` (several schedulers may serve one project), or, when
    that path is too long for a Unix socket, a short one under the temp dir."""
    name = f"gateway-{os.getpid() if pid is None else pid}.sock"
    preferred = project_root / ".corral" / name
    if len(os.fsencode(preferred)) <= _MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha256(os.fsencode(project_root.resolve())).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"corral-{os.getuid()}" / f"{digest}-{name}"


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` (mode 0600: only this user's runs connect).

    A socket file left by a process that died is replaced; one that answers means another
    gateway serves this project here, which is a clear error.
    """
    _private_parent(path.parent)
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: nobody listens
        else:
            raise UsageError(f"another process already listens on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on the Unix socket {path}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _private_parent(directory: Path) -> None:
    """The socket's directory: a project's ``.corral`` or corral's own under the temporary
    directory, 0700 and this user's (one made by someone else is refused)."""
    if directory.name == ".corral":
        private_dirs(directory, directory)
        return
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise UsageError(
            f"cannot listen in {directory}: it is not a directory of this user's "
            "(someone else made it); remove it, or choose a shorter project path"
        )
    os.chmod(directory, 0o700)


class GatewayServer(uvicorn.Server):
    """uvicorn, minus its own signal handling: `corral start` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    @classmethod
    def for_app(cls, app: FastAPI, limits: EdgeLimits | None = None) -> GatewayServer:
        # httptools parses HTTP several times faster than h11; the loop stays asyncio's
        # (uvloop forks slowly, and runs are spawned from this loop): docs/decisions.md.
        # Lock requests are answered in front of the app (LockFastPath, decision D16).
        # Every connection is bounded in time, head size and number (gateway.guard).
        edge = limits or default_limits()
        api = getattr(app.state, "agent_api", None)
        asgi: ASGIApp = app if api is None else LockFastPath(app, api)
        config = uvicorn.Config(
            asgi,
            log_level="warning",
            # no handlers of uvicorn's own: its records reach corral's (escaping) log setup
            log_config=None,
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http=guarded(edge),
            timeout_keep_alive=max(1, int(edge.keep_alive)),
        )
        return cls(config)


@contextlib.asynccontextmanager
async def serve_agent_api(project: Project, store: Store) -> AsyncIterator[AgentLink]:
    """Serve the agent API on a free loopback port while the block runs (`corral run`
    without a scheduler); yields the link to hand to the runs' executor."""
    from corral.gateway.app import create_agent_app

    sock = bind("127.0.0.1", 0)
    # Runs without a network (``network = "none"``) reach it over a Unix socket, as they
    # reach a scheduler's gateway.
    socket_path = unix_socket_path(project.root)
    unix_sock = bind_unix(socket_path)
    link = AgentLink(
        f"http://127.0.0.1:{sock.getsockname()[1]}",
        bin_dir=project.root / ".corral" / "bin",
        unix_url=f"unix:{socket_path}",
        changes=store.changes,
    )
    if link.bin_dir is not None:
        install_commands(link.bin_dir)
    server = GatewayServer.for_app(create_agent_app(project, store, link))
    serving = asyncio.create_task(server.serve(sockets=[sock, unix_sock]))
    try:
        yield link
    finally:
        server.should_exit = True
        await serving
        socket_path.unlink(missing_ok=True)
