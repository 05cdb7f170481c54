"""The dashboard answers only under the names corral is served under (DNS rebinding).

A page on another site can make its own name resolve to the gateway's address (DNS
rebinding); the browser then treats the gateway as that site, same-origin with the page,
and its requests carry that name in ``Host``. So the dashboard answers a request only
when its ``Host`` is one corral is served under: an IP address (a rebinding attack needs a
name), ``localhost``, this machine's host name, ``[gateway] host``, or the host of
``[gateway] url``. Any other gets 421 (Misdirected Request) and nothing else.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from corral.project import Project

__all__ = ["HostCheck", "served_names"]

_PREFIX = "/dashboard"


def served_names(project: Project) -> frozenset[str]:
    """The host names the dashboard answers under, besides IP addresses."""
    gateway = project.config.gateway
    names = {"localhost", socket.gethostname(), gateway.host}
    if gateway.url:
        names.add(urlsplit(gateway.url).hostname or "")
    return frozenset(_normal(name) for name in names if name)


def _normal(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _host_name(value: str) -> str:
    """The name of a ``Host`` header: its port and IPv6 brackets taken off."""
    value = value.strip()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, _, port = value.rpartition(":")
    return _normal(name if name and port.isdigit() else value)


def host_allowed(value: str | None, names: Iterable[str]) -> bool:
    if value is None:
        return True  # HTTP/1.0 without a Host: no browser sends that
    name = _host_name(value)
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name in names
    return True


class HostCheck:
    """ASGI middleware: requests under /dashboard with a foreign ``Host`` get 421."""

    def __init__(self, app: ASGIApp, names: frozenset[str]) -> None:
        self.app = app
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_dashboard(scope["path"]):
            host = None
            for key, value in scope["headers"]:
                if key == b"host":
                    host = value.decode("latin-1")
                    break
            if not host_allowed(host, self.names):
                await _misdirected(send)
                return
        await self.app(scope, receive, send)


def _is_dashboard(path: str) -> bool:
    return path == _PREFIX or path.startswith(_PREFIX + "/")


async def _misdirected(send: Send) -> None:
    body = (
        b"421 Misdirected Request: this Host is not a name corral serves the dashboard "
        b"under; use its address, localhost, or the host of [gateway] url in config.toml\n"
    )
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": 421, "headers": headers})
    await send({"type": "http.response.body", "body": body})
