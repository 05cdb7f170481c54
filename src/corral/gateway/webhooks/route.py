"""The FastAPI route of the intake (it makes the OpenAPI document) and its installation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from corral.credentials import CredentialStore
from corral.gateway.webhooks.fastpath import WebhookFastPath
from corral.gateway.webhooks.intake import WebhookIntake

if TYPE_CHECKING:
    from corral.scheduler.service import Scheduler

__all__ = ["install_webhooks", "webhook_router"]

_JSON = "application/json"


_SIGNED_HEADERS = [
    ("X-GitHub-Event", "GitHub: the event name (issues, pull_request, ping, …)"),
    ("X-GitHub-Delivery", "GitHub: the delivery id (redeliveries share it)"),
    ("X-Hub-Signature-256", 'GitHub: "sha256=" and the HMAC-SHA256 of the body, in hex'),
    ("X-Signature-256", 'generic sources: "sha256=" and the HMAC-SHA256 of the body'),
    ("X-Delivery-Id", "generic sources: the delivery id"),
    ("X-Slack-Signature", 'Slack: "v0=" and the HMAC-SHA256 of "v0:<timestamp>:<body>"'),
    ("X-Slack-Request-Timestamp", "Slack: the Unix time signed (within 5 minutes of now)"),
    ("X-Signature-Ed25519", "Discord: the Ed25519 signature of timestamp + body, in hex"),
    ("X-Signature-Timestamp", "Discord: the timestamp signed"),
    ("X-Twitter-Webhooks-Signature", 'X: "sha256=" and the base64 HMAC-SHA256 of the body'),
]

_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": name,
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": description,
        }
        for name, description in _SIGNED_HEADERS
    ],
    "requestBody": {
        "required": True,
        "content": {_JSON: {"schema": {"type": "object", "additionalProperties": True}}},
    },
}

_ERROR = {"content": {_JSON: {"schema": {"type": "object"}}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "a ping or a sender's check answered (Slack's challenge, Discord's "
        "PONG), or a duplicate delivery (nothing queued)"
    },
    202: {"description": "recorded; the matching agents' runs are queued"},
    400: {"description": "verified, but the payload is not what the sender documents", **_ERROR},
    401: {"description": "missing or wrong signature: recorded, nothing queued", **_ERROR},
    403: {
        "description": "an unsigned delivery a web page could have sent (allowUnsigned)",
        **_ERROR,
    },
    404: {"description": "no such webhook source", **_ERROR},
    413: {"description": "the body is larger than the source's maxBodyBytes", **_ERROR},
    503: {"description": "the delivery could not be recorded: not accepted, retry", **_ERROR},
}


def install_webhooks(app: FastAPI, scheduler: Scheduler) -> WebhookIntake:
    """Give ``app`` (the gateway of ``scheduler``) its webhook intake: the route, and the
    fast path that answers it ahead of FastAPI's machinery (see ``WebhookFastPath``)."""
    intake = WebhookIntake(
        scheduler.project,
        scheduler.store,
        credentials=scheduler.executor.credentials or CredentialStore(),
        on_queued=scheduler.wake,
    )
    app.include_router(webhook_router(intake))
    app.add_middleware(WebhookFastPath, intake=intake)
    app.state.webhook_intake = intake
    return intake


def webhook_router(intake: WebhookIntake) -> APIRouter:
    """``POST /webhooks/{source}``, over ``intake``."""
    router = APIRouter()

    @router.post(
        "/webhooks/{source}",
        status_code=202,
        openapi_extra=_OPENAPI,
        responses=_RESPONSES,
        summary="Deliver a webhook event (authenticated by its signature)",
    )
    async def deliver(source: str, request: Request) -> Response:
        headers = {name: value for name, value in request.headers.items()}
        try:
            answer = await intake.receive(source, headers, request.stream())
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening for it
        return answer.response()

    @router.get(
        "/webhooks/{source}",
        responses={
            200: {"description": 'the CRC answer: {"response_token": "sha256=<base64>"}'},
            400: {"description": "no usable crc_token, or no consumer secret", **_ERROR},
            404: {"description": "no such source, or not a twitter source", **_ERROR},
            503: {"description": "the consumer secret cannot be read", **_ERROR},
        },
        summary="Answer X's CRC check (twitter sources)",
    )
    async def crc(source: str, crc_token: str | None = None) -> Response:
        return intake.crc(source, crc_token).response()

    return router
