"""``LockFastPath``: the door of the agent API. It authenticates every /agent/ request
before reading its body, reads the body with a cap, and answers the lock requests itself.

Authentication first: a request without a valid run secret is answered 403 from its
headers alone, and its body is never read. A body longer than its route allows is
refused 413, unread when ``Content-Length`` says so, cut off at the cap otherwise. Both
answers close the connection, so a sender cannot keep streaming into it. The most the
gateway holds of one authenticated request is its route's cap (``body_limit``).

The lock requests (``rlock``, ``runlock``, ``rlock-heartbeat``) are most of a fleet's
gateway traffic, and FastAPI's routing, dependency and validation machinery was most of
their CPU cost (docs/decisions.md D16): they are answered here, with the handlers, body
models and answers the FastAPI routes use (those routes remain, and make the OpenAPI
document). The task board's requests (``task-claim``, ``task-complete``, ``task-fail``,
``task-heartbeat``, ``task-release``) are answered here as well (D123), with a full
authentication each. Every other /agent/ request goes on to FastAPI with its body and its run
(``RUN_SCOPE_KEY``), so it is not authenticated twice.

The middleware is part of the app (``install_agent_api``); wrapping the app in it once
more (as ``GatewayServer`` does, to answer locks before Starlette's own middleware) is
harmless: the inner one sees the run already in the scope and steps aside.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.gateway.agent_api._errors import (
    AgentApiError,
    RunEnded,
    answer,
    bad_request,
    store_failure,
)
from corral.gateway.agent_api._handlers import RUN_SCOPE_KEY, AgentApi, missing_secret
from corral.gateway.agent_api._models import (
    MAX_CONTEXT_BYTES,
    MAX_RETURN_BYTES,
    AcquireBody,
    LockBody,
)
from corral.gateway.agent_api._tasks import (
    TaskBody,
    TaskClaimBody,
    TaskCompleteBody,
    TaskFailBody,
    TaskRoutes,
)
from corral.store import StoreError

__all__ = ["LARGE_BODY", "SMALL_BODY", "LockFastPath", "body_limit"]

#: The cap on a request body of the routes that carry no large text.
SMALL_BODY = 64 * 1024
#: The cap on a call's and an ``al-return`` body: a 1 MiB text with every character
#: escaped by JSON (``\u0000`` is six bytes for one), plus room for the other fields.
LARGE_BODY = 6 * max(MAX_CONTEXT_BYTES, MAX_RETURN_BYTES) + SMALL_BODY
_LARGE_ROUTES = frozenset({"/agent/calls", "/agent/return"})


def body_limit(path: str) -> int:
    """The most bytes of body a request to ``path`` may carry."""
    return LARGE_BODY if path in _LARGE_ROUTES else SMALL_BODY


#: The shutdown reason of an al-shutdown whose body was too big to read.
_UNREAD_REASON = f"(al-shutdown with a body over {SMALL_BODY // 1024} KiB; its reason was not read)"


class LockFastPath:
    """ASGI middleware: authenticate, then read with a cap, every /agent/ request, and
    answer the lock requests without FastAPI's machinery."""

    MAX_BODY = SMALL_BODY

    def __init__(self, app: ASGIApp, api: AgentApi) -> None:
        self.app = app
        self.api = api
        self.routes: dict[str, tuple[type[BaseModel], Callable[..., Awaitable[JSONResponse]]]] = {
            "/agent/locks/acquire": (AcquireBody, api.acquire),
            "/agent/locks/release": (LockBody, api.release),
            "/agent/locks/heartbeat": (LockBody, api.heartbeat),
        }
        tasks = TaskRoutes(api)
        #: The task board's routes, answered here too (D123): a claim and a completion
        #: are what every claimer sends, and FastAPI's machinery was most of their cost.
        #: Unlike a lock request, the run is authenticated in full (an ended run's
        #: claim would hold a task that nothing releases until its lease lapses).
        self.task_routes: dict[
            str, tuple[type[BaseModel], Callable[..., Awaitable[JSONResponse]]]
        ] = {
            "/agent/tasks/claim": (TaskClaimBody, tasks.claim),
            "/agent/tasks/heartbeat": (TaskBody, tasks.heartbeat),
            "/agent/tasks/complete": (TaskCompleteBody, tasks.complete),
            "/agent/tasks/fail": (TaskFailBody, tasks.fail),
            "/agent/tasks/release": (TaskBody, tasks.release),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or RUN_SCOPE_KEY in scope
            or not str(scope["path"]).startswith("/agent/")
        ):
            await self.app(scope, receive, send)
            return
        run = None
        lock = self.routes.get(scope["path"]) if scope["method"] == "POST" else None
        route = lock or (self.task_routes.get(scope["path"]) if scope["method"] == "POST" else None)
        unchecked = False
        try:
            secret = _bearer_secret(scope)
            if lock is None:
                run = await self.api.authenticate(secret)
            else:
                run, unchecked = await self.api.authenticate_lock_request(secret)
            body = await _capped_body(scope, receive, body_limit(scope["path"]))
        except AgentApiError as exc:
            if isinstance(exc, RunEnded) and scope["path"] == "/agent/locks/heartbeat":
                exc = exc.lock_lost()
            if run is not None and scope["path"] == "/agent/shutdown":
                # An authenticated al-shutdown kills, however long its reason.
                await _send(send, await self.api.shut_down(run, _UNREAD_REASON), close=True)
                return
            # The body was not read (or not all of it): close the connection after the
            # answer rather than read and discard what is left of it.
            refused = answer(exc.status, exc.body)
            if unchecked:  # a body over its cap from a run that may have ended
                refused = await self._ended_or(refused, secret, scope["path"])
            await _send(send, refused, close=True)
            return
        except StoreError as exc:
            await _send(send, store_failure(exc), close=True)
            return
        if route is None:
            await self.app({**scope, RUN_SCOPE_KEY: run}, _replay(body, receive), send)
            return
        response = await self._answer(run, body, *route)
        if unchecked and response.status_code != 200:
            # A run known from an earlier request, its liveness not read for this one: a
            # refusal may be because it has ended, which is answered as it always was.
            response = await self._ended_or(response, secret, scope["path"])
        await _send(send, response)

    async def _ended_or(self, response: JSONResponse, secret: str, path: str) -> JSONResponse:
        """``response``, unless the run of ``secret`` has ended: then the answer an ended
        run's request gets (403; 410 "lock lost" for a heartbeat)."""
        try:
            await self.api.authenticate(secret)
        except AgentApiError as exc:
            if isinstance(exc, RunEnded) and path == "/agent/locks/heartbeat":
                exc = exc.lock_lost()
            return answer(exc.status, exc.body)
        except StoreError as exc:
            return store_failure(exc)
        return response

    async def _answer(
        self,
        run: Any,
        body: bytes,
        model: type[BaseModel],
        handler: Callable[..., Awaitable[JSONResponse]],
    ) -> JSONResponse:
        try:
            try:
                parsed = model.model_validate_json(body or b"null")
            except ValidationError as exc:
                return bad_request(exc.errors())
            return await handler(parsed, run)
        except AgentApiError as exc:
            return answer(exc.status, exc.body)
        except StoreError as exc:
            return store_failure(exc)


async def _send(send: Send, response: JSONResponse, *, close: bool = False) -> None:
    """The rendered answer, sent as is: no second pass through Starlette's Response."""
    headers = list(response.raw_headers)
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


def _bearer_secret(scope: Scope) -> str:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            scheme, _, secret = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return secret.strip()
            break
    raise missing_secret()


def _too_large(limit: int, size: int | None = None) -> AgentApiError:
    told = "" if size is None else f" ({size} bytes)"
    return AgentApiError(
        413,
        {
            "ok": False,
            "error": f"request body over {limit} bytes{told}: a call context and an "
            "al-return value may hold 1 MiB of text, anything else much less",
        },
    )


def _declared_length(scope: Scope) -> int | None:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            if not text.isdigit() or not text.isascii():
                raise AgentApiError(
                    400, {"ok": False, "error": f"bad request: Content-Length {text!r}"}
                )
            return int(text)
    return None


async def _capped_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body; 413 when it is longer than ``limit`` (unread when declared so)."""
    declared = _declared_length(scope)
    if declared is not None and declared > limit:
        raise _too_large(limit, declared)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for an app downstream: the body already read, then what follows it
    (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
