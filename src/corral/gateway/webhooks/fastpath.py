"""The fast path: ``POST /webhooks/{source}`` answered ahead of FastAPI's machinery."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.gateway.webhooks.answers import ClientGone
from corral.gateway.webhooks.intake import WebhookIntake

__all__ = ["WebhookFastPath"]

_PREFIX = "/webhooks/"


class WebhookFastPath:
    """ASGI middleware answering ``POST /webhooks/{source}`` without FastAPI's routing,
    dependency and exception machinery, which was most of a delivery's CPU on the event
    loop (docs/decisions.md). The intake, and so every answer, is the one the FastAPI
    route uses (the route remains: it makes the OpenAPI document, and serves any request
    this does not take)."""

    def __init__(self, app: ASGIApp, intake: WebhookIntake) -> None:
        self.app = app
        self.intake = intake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = None
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(_PREFIX) and "/" not in path[len(_PREFIX) :]:
                name = path[len(_PREFIX) :]
        if not name:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            answer = await self.intake.receive(name, headers, _chunks(receive))
        except ClientGone:
            return
        response = answer.response()
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives, chunk by chunk."""
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
