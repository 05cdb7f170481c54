"""``FleetDoor``: the edge of the runner API. A request to /fleet/ is read with a cap
(``MAX_BODY``): a body declared longer is refused 413 unread, one that turns out longer
is cut off at the cap, and both answers close the connection. A request to a route that
needs a runner's credential and carries no bearer token at all is refused 401 from its
headers, its body unread. So a stranger costs the gateway at most ``MAX_BODY`` bytes of
body (and the guard's bounds on the head, time and connections)."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                await _refuse(send, 413, _too_large(None))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


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
