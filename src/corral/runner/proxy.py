"""The agent API of a run on a runner: a Unix socket in the run's reach, forwarded to the
control plane.

A run on a runner talks to the control plane as a run on the control plane does: its
in-run commands (``rlock``, ``al-subagent``, ``al-status``, …) send HTTP requests to
``GATEWAY_URL``. On a runner that URL is ``unix:/path``, a socket this module serves, so a
run without a network (``network = "none"``) still reaches it, and the run never needs
the control plane's address or the runner's credential. Each request is forwarded as it
came (the run's own secret still authenticates it at the control plane) with the
runner's headers added, and the answer goes back whole.

What a run can send is bounded before anything is forwarded: the request head (16 KiB),
the body (``max_body``; the control plane applies each route's own, smaller cap), one
request per connection, and a header read deadline. Headers naming the runner that a run
sends itself are dropped, so a run cannot speak as its runner. A control plane that
cannot be reached answers 502 with a JSON error the in-run commands show; the next
address in the list is tried first when a connection cannot even be opened (nothing was
sent, so nothing runs twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import httpx

__all__ = ["MAX_HEAD", "RUNNER_HEADER_PREFIX", "AgentApiProxy"]

log = logging.getLogger("corral.runner.proxy")

#: The most bytes of request line and headers a run may send.
MAX_HEAD = 16 * 1024
#: A run's request must arrive (head and body) within this many seconds of connecting.
READ_DEADLINE = 30.0
#: Headers with this prefix are the runner's own: a run's copies are dropped.
RUNNER_HEADER_PREFIX = "x-corral-runner"
#: Not forwarded: they describe one connection, not the request.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"})


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AgentApiProxy:
    """Serves ``path`` and forwards what arrives to the first reachable of ``upstreams``.

    ``headers`` are added to every forwarded request (the runner's credential). The
    client may be shared between the proxies of one runner (one connection pool).
    """

    def __init__(
        self,
        path: Path,
        upstreams: Sequence[str],
        *,
        headers: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
        max_body: int = 8 * 1024 * 1024,
        mode: int = 0o600,
        read_deadline: float = READ_DEADLINE,
        on_answer: Callable[[str, str, int, bytes], Awaitable[None]] | None = None,
    ) -> None:
        if not upstreams:
            raise ValueError("an agent API proxy needs at least one control plane address")
        self.path = path
        self.upstreams = [url.rstrip("/") for url in upstreams]
        self.headers = dict(headers or {})
        self.max_body = max_body
        self.mode = mode
        self.read_deadline = read_deadline
        #: Told of each forwarded request's answer (method, target, status, body): the
        #: runner acts on what only it can do (``al-exit`` ends a run it executes).
        self.on_answer = on_answer
        self._client = client
        self._own_client = client is None
        self._server: asyncio.base_events.Server | None = None
        self._preferred = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._client is None:
            # no overall timeout: long polls (rlock --wait, al-subagent-wait) last as long
            # as the run asked; connecting is bounded
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0))
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_HEAD
        )
        os.chmod(self.path, self.mode)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        self.path.unlink(missing_ok=True)
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> AgentApiProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            try:
                method, target, headers, body = await asyncio.wait_for(
                    self._read(reader), self.read_deadline
                )
            except TimeoutError:
                await _answer(
                    writer, 408, {"ok": False, "error": "the request did not arrive in time"}
                )
                return
            except _BadRequest as bad:
                await _answer(writer, bad.status, {"ok": False, "error": bad.message})
                return
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            status, answer_headers, content = await self._forward(method, target, headers, body)
            await _write(writer, status, answer_headers, content)
            if self.on_answer is not None:
                await self.on_answer(method, target, status, content)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def _read(
        self, reader: asyncio.StreamReader
    ) -> tuple[str, str, list[tuple[str, str]], bytes]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "the request's header fields are too large") from None
        if len(head) > MAX_HEAD:
            raise _BadRequest(431, "the request's header fields are too large")
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[0] not in _METHODS or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "not an HTTP/1.x request")
        method, target = parts[0], parts[1]
        if not target.startswith("/") or target.startswith("//"):
            raise _BadRequest(400, "the request target must be a path")
        headers: list[tuple[str, str]] = []
        length = 0
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or _CONTROL.search(line):
                raise _BadRequest(400, "a header line is malformed")
            lowered = name.lower()
            value = value.strip()
            if lowered == "transfer-encoding":
                raise _BadRequest(411, "send the body with a Content-Length")
            if lowered == "content-length":
                if not value.isdigit():
                    raise _BadRequest(400, "Content-Length is not a number")
                length = int(value)
            if lowered in _HOP_BY_HOP or lowered.startswith(RUNNER_HEADER_PREFIX):
                continue
            headers.append((name, value))
        if length > self.max_body:
            raise _BadRequest(413, f"the request body is over {self.max_body} bytes")
        body = await reader.readexactly(length) if length else b""
        return method, target, headers, body

    async def _forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        assert self._client is not None
        sent = [*headers, *self.headers.items()]
        problem = ""
        for step in range(len(self.upstreams)):
            index = (self._preferred + step) % len(self.upstreams)
            url = self.upstreams[index] + target
            try:
                response = await self._client.request(method, url, headers=sent, content=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                problem = f"{self.upstreams[index]}: {type(exc).__name__}"
                continue  # nothing was sent: the next address may take it
            except httpx.HTTPError as exc:
                log.warning("forwarding %s %s failed: %s", method, target, type(exc).__name__)
                return _json(502, f"the control plane did not answer ({type(exc).__name__})")
            self._preferred = index
            kept = [
                (name, value)
                for name, value in response.headers.multi_items()
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-encoding"
            ]
            return response.status_code, kept, response.content
        return _json(502, f"no control plane is reachable from this runner ({problem})")


def _json(status: int, error: str) -> tuple[int, list[tuple[str, str]], bytes]:
    content = json.dumps({"ok": False, "error": error}).encode()
    return status, [("content-type", "application/json")], content


async def _answer(writer: asyncio.StreamWriter, status: int, payload: object) -> None:
    content = json.dumps(payload).encode()
    with contextlib.suppress(ConnectionError):
        await _write(writer, status, [("content-type", "application/json")], content)


async def _write(
    writer: asyncio.StreamWriter, status: int, headers: list[tuple[str, str]], content: bytes
) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"content-length: {len(content)}", "connection: close", "", ""]
    writer.write("\r\n".join(lines).encode("latin-1") + content)
    await writer.drain()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
