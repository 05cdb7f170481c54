"""``FleetDoor``: the edge of the runner API. A request to /fleet/ is read with a cap
(``MAX_BODY``): a body declared longer is refused 413 unread, one that turns out longer
is cut off at the cap, and both answers close the connection. A request to a route that
needs a runner's credential and carries no bearer token at all is refused 401 from its
headers, its body unread. So a stranger costs the gateway at most ``MAX_BODY`` bytes of
body (and the guard's bounds on the head, time and connections).

Heartbeats, most of a fleet's traffic, are answered here (as ``LockFastPath`` answers
locks, decision D16): the body is validated with the route's model, and the runner is
authenticated and its heartbeat recorded in one statement (``heartbeat_by_credential``),
and the leases of the runs it reports renewed in one more (``renew_runner_runs``).
Anything else (a body that does not validate, an unknown or revoked credential, a store
failure) goes on to the FastAPI route, which answers it as documented."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.engine import fleet, fleet_upgrade
from corral.engine.token import hash_token
from corral.errors import StoreError
from corral.gateway.fleet._runner_api import HeartbeatBody, heartbeat_with_runs

__all__ = ["MAX_BODY", "FleetDoor"]

#: The most bytes of body a request to /fleet/ may carry.
MAX_BODY = 64 * 1024
#: The routes anyone may call (the token is in the body).
_OPEN = frozenset({"/fleet/v1/join"})


class FleetDoor:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith("/fleet/"):
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        declared: int | None = None
        bearer = False
        credential = ""
        for name, value in headers:
            if name == b"content-length":
                text = value.decode("latin-1").strip()
                if not text.isascii() or not text.isdigit():
                    await _refuse(send, 400, f"bad request: Content-Length {text!r}")
                    return
                declared = int(text)
            elif name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                bearer = scheme.lower() == "bearer" and bool(token.strip())
                credential = token.strip() if bearer else ""
        if scope["path"] not in _OPEN and scope["method"] != "GET" and not bearer:
            await _refuse(
                send,
                401,
                "a runner credential is required (Authorization: Bearer <credential>); "
                "`corral runner join URL --token T` gets one",
                {"www-authenticate": "Bearer"},
            )
            return
        if declared is not None and declared > MAX_BODY:
            await _refuse(send, 413, _too_large(declared))
            return
        body = await _capped(receive)
        if body is None:
            await _refuse(send, 413, _too_large(None))
            return
        if scope["path"] == _HEARTBEAT and scope["method"] == "POST":
            answer = await _fast_heartbeat(scope, body, credential)
            if answer is not None:
                await _send_json(send, 200, answer)
                return
        await self.app(scope, _replay(body, receive), send)


_HEARTBEAT = "/fleet/v1/heartbeat"


async def _capped(receive: Receive) -> bytes | None:
    """The request's body, or None once it passes ``MAX_BODY`` (the rest unread)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _fast_heartbeat(scope: Scope, body: bytes, credential: str) -> dict[str, Any] | None:
    """The answer of a heartbeat from a known, unrevoked runner with a valid body; None
    for anything the route should answer instead."""
    scheduler = getattr(scope["app"].state, "fleet_scheduler", None) if "app" in scope else None
    if scheduler is None:
        return None
    try:
        parsed = HeartbeatBody.model_validate_json(body or b"null")
    except ValidationError:
        return None
    if fleet_upgrade.window_refusal(parsed.version) is not None:
        return None  # the route refuses it, naming the versions
    try:
        runner = await scheduler.store.heartbeat_by_credential(
            hash_token(credential), version=parsed.version
        )
        if runner is None:
            return None
        settings = fleet.fleet_settings(scheduler.project)
        warm = getattr(scope["app"].state, "runner_warm", None)
        return await heartbeat_with_runs(scheduler.store, runner, parsed, settings, warm)
    except StoreError:
        return None


async def _send_json(send: Send, status: int, answer: dict[str, Any]) -> None:
    body = json.dumps(answer, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _too_large(size: int | None) -> str:
    told = "" if size is None else f" ({size} bytes)"
    return f"request body over {MAX_BODY} bytes{told}: a runner's requests are small"


async def _refuse(send: Send, status: int, error: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"ok": False, "error": error}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the app: the body already read, then what follows (a disconnect)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again
