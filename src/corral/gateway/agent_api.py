"""The agent API: what the in-run commands (``corral.agentcmd``) talk to.

Every request carries the run's secret (``Authorization: Bearer <secret>``); a wrong or
missing one is answered 403 and changes nothing. A run acts only for itself: the run is
whoever the secret names, never a field of the request.

Answers are the documented JSON of the commands; the HTTP status picks the command's exit
code (200 -> 0, 409 -> 1, 404 -> 2, 403 -> 3, 400/413 -> 4). Waiting requests
(``rlock --wait``, ``al-subagent-wait``) are long polls: they answer as soon as what they
wait for happens in this process (``Changes``), and poll the store for what other
processes do.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.gateway.metrics import count_lock
from corral.project import Project
from corral.scheduler.agentlink import AgentLink, RunRef, hash_secret
from corral.store import (
    Call,
    CallRefusal,
    CallState,
    Deadlock,
    LockGrant,
    LockHeld,
    RunState,
    Store,
    StoreError,
)

__all__ = [
    "MAX_CONTEXT_BYTES",
    "MAX_RETURN_BYTES",
    "AgentApi",
    "AgentApiError",
    "LockFastPath",
    "agent_router",
    "install_error_handlers",
    "validate_key",
]

#: The largest ``al-return`` value, and the largest call context: 1 MiB of UTF-8.
MAX_RETURN_BYTES = 1024 * 1024
MAX_CONTEXT_BYTES = 1024 * 1024
MAX_KEY_LENGTH = 1024
DEFAULT_LOCK_WAIT = 300.0
DEFAULT_CALL_WAIT = 900.0
MAX_WAIT = 86_400.0
#: How often a waiting request looks at the store for changes made by other processes.
POLL_SECONDS = 0.5

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f]")
_LIVE = (RunState.STARTING, RunState.RUNNING)


class AgentApiError(Exception):
    """An answer other than success: its JSON body and HTTP status."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


def validate_key(key: str) -> str:
    """A lock key is a URI (``scheme:rest``, e.g. ``github://acme/app/issues/42``)."""
    example = "a lock key is a URI such as github://acme/app/issues/42 or deploy://api-prod"
    if len(key) > MAX_KEY_LENGTH:
        raise AgentApiError(
            400,
            {
                "ok": False,
                "error": f"resource key is {len(key)} characters; {example}, "
                f"at most {MAX_KEY_LENGTH} characters",
            },
        )
    match = _SCHEME.match(key)
    if match is None or match.end() == len(key):
        raise AgentApiError(400, {"ok": False, "error": f"invalid resource key {key!r}: {example}"})
    bad = _BAD_CHARS.search(key)
    if bad is not None:
        raise AgentApiError(
            400,
            {
                "ok": False,
                "error": f"invalid resource key {key!r}: it contains whitespace or a control "
                f"character at position {bad.start()}; {example}",
            },
        )
    return key


# -- request bodies (their schemas are the OpenAPI document) ---------------------------


class LockBody(BaseModel):
    key: str = Field(min_length=1, max_length=MAX_KEY_LENGTH * 4)


class AcquireBody(LockBody):
    wait: bool = False
    timeout: float | None = Field(default=None, ge=0, le=MAX_WAIT)


class CallBody(BaseModel):
    agent: str = Field(min_length=1, max_length=200)
    context: str = Field(default="", max_length=MAX_CONTEXT_BYTES)


class WaitBody(BaseModel):
    callIds: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        min_length=1, max_length=100
    )
    timeout: float = Field(default=DEFAULT_CALL_WAIT, ge=0, le=MAX_WAIT)


class ReturnBody(BaseModel):
    value: str = Field(max_length=MAX_RETURN_BYTES * 2)


class StatusBody(BaseModel):
    text: str = Field(min_length=1, max_length=4096)


class ExitBody(BaseModel):
    code: int = Field(default=15, ge=0, le=255)


class EmptyBody(BaseModel):
    pass


# -- the router ------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _answer(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def _held(held: LockHeld) -> dict[str, Any]:
    return {"ok": False, "holder": held.holder, "heldSince": _iso(held.held_since)}


def _grant(grant: LockGrant) -> dict[str, Any]:
    return {
        "ok": True,
        "key": grant.key,
        "token": grant.token,
        "expiresAt": _iso(grant.expires_at),
        "refreshed": grant.refreshed,
    }


def _deadlock(deadlock: Deadlock) -> dict[str, Any]:
    return {"ok": False, "reason": "possible deadlock detected", "cycle": list(deadlock.cycle)}


def _call_status(call: Call) -> dict[str, Any]:
    answer: dict[str, Any] = {"status": call.state.value}
    if call.state is CallState.COMPLETED:
        answer["returnValue"] = call.return_value
    elif call.state is CallState.ERROR:
        answer["error"] = call.error
        answer["errorMessage"] = call.error
    return answer


_NOT_FOUND_CALL = {"status": "error", "error": "call not found", "errorMessage": "call not found"}


_bearer = HTTPBearer(auto_error=False, description="The run's secret (CORRAL_RUN_SECRET)")


async def current_run(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> RunRef:
    """The run whose secret the request carries; 403 when there is none or it is wrong."""
    if credentials is None or not credentials.credentials.strip():
        raise AgentApiError(
            403, {"ok": False, "error": "missing run secret (Authorization: Bearer ...)"}
        )
    api: AgentApi = request.app.state.agent_api
    return await api.authenticate(credentials.credentials.strip())


Caller = Annotated[RunRef, Depends(current_run)]


class AgentApi:
    """The agent API's handlers over ``store`` for runs of ``project`` in ``link``."""

    def __init__(self, project: Project, store: Store, link: AgentLink) -> None:
        self.project = project
        self.store = store
        self.link = link
        self.ttl = float(project.config.resource_lock_timeout)

    async def authenticate(self, secret: str) -> RunRef:
        ref = self.link.lookup(secret)
        if ref is not None:
            return dataclasses.replace(ref, secret=secret)
        digest = hash_secret(secret)
        run = await self.store.run_for_secret(digest)
        if run is None or run.state not in _LIVE:
            raise AgentApiError(403, {"ok": False, "error": "invalid run secret"})
        return RunRef(run.id, run.agent, run.trigger.value, digest, secret)

    # -- locks -------------------------------------------------------------------------

    async def acquire(self, body: AcquireBody, run: Caller) -> JSONResponse:
        key = validate_key(body.key)
        if body.wait:
            timeout = DEFAULT_LOCK_WAIT if body.timeout is None else body.timeout
            return await self._wait_for_lock(key, run.run_id, timeout)
        result = await self.store.acquire_lock(key, run.run_id, ttl_seconds=self.ttl)
        if isinstance(result, LockGrant):
            count_lock("acquire", "refreshed" if result.refreshed else "granted")
            return _answer(200, _grant(result))
        count_lock("acquire", "held")
        return _answer(409, _held(result))

    async def release(self, body: LockBody, run: Caller) -> JSONResponse:
        key = validate_key(body.key)
        if await self.store.release_lock(key, run.run_id):
            self.link.changes.notify(f"lock:{key}")
            count_lock("release", "released")
            return _answer(200, {"ok": True})
        return await self._not_holder("release", key)

    async def heartbeat(self, body: LockBody, run: Caller) -> JSONResponse:
        key = validate_key(body.key)
        expires = await self.store.heartbeat_lock(key, run.run_id, ttl_seconds=self.ttl)
        if expires is not None:
            count_lock("heartbeat", "extended")
            return _answer(200, {"ok": True, "key": key, "expiresAt": _iso(expires)})
        return await self._not_holder("heartbeat", key)

    async def my_locks(self, run: Caller) -> JSONResponse:
        mine = [lock for lock in await self.store.list_locks() if lock.run_id == run.run_id]
        locks = [
            {
                "key": lock.key,
                "token": lock.token,
                "heldSince": _iso(lock.acquired_at),
                "expiresAt": _iso(lock.expires_at),
            }
            for lock in mine
        ]
        return _answer(200, {"ok": True, "locks": locks})

    async def _not_holder(self, op: str, key: str) -> JSONResponse:
        if await self.store.get_lock(key) is None:
            count_lock(op, "not_found")
            return _answer(404, {"ok": False, "reason": "lock not found"})
        count_lock(op, "not_holder")
        return _answer(409, {"ok": False, "reason": "not the lock holder"})

    async def _wait_for_lock(self, key: str, run_id: str, timeout: float) -> JSONResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # The store's deadline outlives ours a little: a stale waiter is skipped by handovers.
        wait_seconds = timeout + 2 * POLL_SECONDS
        finished = False
        try:
            while True:
                result = await self.store.wait_for_lock(
                    key, run_id, ttl_seconds=self.ttl, wait_seconds=wait_seconds
                )
                if not isinstance(result, LockHeld):
                    finished = True
                    if isinstance(result, Deadlock):
                        count_lock("acquire", "deadlock")
                        return _answer(409, _deadlock(result))
                    count_lock("acquire", "refreshed" if result.refreshed else "granted")
                    return _answer(200, _grant(result))
                left = deadline - loop.time()
                if left <= 0:
                    count_lock("acquire", "timed_out")
                    answer = _held(result)
                    answer["reason"] = f"timed out after {timeout:g} s waiting for the lock"
                    return _answer(409, answer)
                await self.link.changes.wait([f"lock:{key}"], min(left, POLL_SECONDS))
        finally:
            if not finished:
                with contextlib.suppress(StoreError):
                    await asyncio.shield(self.store.cancel_lock_wait(key, run_id))

    # -- calls -------------------------------------------------------------------------

    async def call(self, body: CallBody, run: Caller) -> JSONResponse:
        _limit("the call context", body.context, MAX_CONTEXT_BYTES, "write it to a file")
        depth = self.project.config.max_call_depth
        made = await self.store.create_call(run.run_id, body.agent, body.context, max_depth=depth)
        if isinstance(made, CallRefusal):
            return _answer(409, {"ok": False, "error": made.reason})
        if self.link.on_queued is not None:
            self.link.on_queued()
        return _answer(200, {"ok": True, "callId": made.id})

    async def check(self, call_id: str, run: Caller) -> JSONResponse:
        found = await self.store.get_call(call_id, caller_run_id=run.run_id)
        if found is None:
            return _answer(404, dict(_NOT_FOUND_CALL))
        return _answer(200, _call_status(found))

    async def wait(self, body: WaitBody, run: Caller) -> JSONResponse:
        ids = list(dict.fromkeys(body.callIds))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + body.timeout
        topics = [f"call:{call_id}" for call_id in ids]
        try:
            while True:
                calls = [await self.store.get_call(c, caller_run_id=run.run_id) for c in ids]
                answer = {
                    call_id: dict(_NOT_FOUND_CALL) if call is None else _call_status(call)
                    for call_id, call in zip(ids, calls, strict=True)
                }
                if any(call is None for call in calls):
                    return _answer(404, answer)
                if all(call is not None and call.state.is_final for call in calls):
                    return _answer(200, answer)
                left = deadline - loop.time()
                if left <= 0:
                    return _answer(202, answer)
                deadlock = await self.store.wait_on_calls(run.run_id, ids, waiting=True)
                if deadlock is not None:
                    return _answer(409, _deadlock(deadlock))
                await self.link.changes.wait(topics, min(left, POLL_SECONDS))
        finally:
            with contextlib.suppress(StoreError):
                await asyncio.shield(self.store.wait_on_calls(run.run_id, ids, waiting=False))

    # -- signals -----------------------------------------------------------------------

    async def give_back(self, body: ReturnBody, run: Caller) -> JSONResponse:
        _limit("the al-return value", body.value, MAX_RETURN_BYTES, "write it to a file")
        await self.store.set_return_value(run.run_id, self.link.redact(run, body.value))
        answer: dict[str, Any] = {"ok": True}
        if run.trigger != "call":
            answer["note"] = "this run was not called by an agent; the value is kept on it"
        return _answer(200, answer)

    async def status(self, body: StatusBody, run: Caller) -> JSONResponse:
        await self.store.set_status(run.run_id, self.link.redact(run, body.text))
        return _answer(200, {"ok": True})

    async def rerun(self, run: Caller, body: EmptyBody | None = None) -> JSONResponse:
        await self.store.request_rerun(run.run_id)
        if run.trigger in ("schedule", "manual"):
            return _answer(200, {"ok": True})
        note = f"{run.trigger} runs are not rerun; only scheduled and manual runs are"
        return _answer(200, {"ok": True, "rerun": False, "note": note})

    async def exit(self, run: Caller, body: ExitBody | None = None) -> JSONResponse:
        code = 15 if body is None else body.code
        await self.store.request_exit(run.run_id, code)
        if self.link.on_exit is not None:
            await self.link.on_exit(run.run_id, code)
        return _answer(200, {"ok": True, "code": code})


def _limit(what: str, text: str, limit: int, instead: str) -> None:
    size = len(text.encode("utf-8"))
    if size > limit:
        raise AgentApiError(
            413,
            {
                "ok": False,
                "error": f"{what} is {size} bytes; the limit is {limit} bytes (1 MiB): "
                f"{instead} and pass its path instead",
            },
        )


def agent_router(api: AgentApi) -> APIRouter:
    """The routes of ``api`` under /agent; the app must hold ``api`` in
    ``app.state.agent_api``."""
    router = APIRouter(prefix="/agent", tags=["agent"])
    routes: list[tuple[str, str, Callable[..., Awaitable[JSONResponse]], str]] = [
        ("POST", "/locks/acquire", api.acquire, "rlock: take a resource lock"),
        ("POST", "/locks/release", api.release, "runlock: release a resource lock"),
        ("POST", "/locks/heartbeat", api.heartbeat, "rlock-heartbeat: reset a lock's TTL"),
        ("GET", "/locks", api.my_locks, "The locks this run holds"),
        ("POST", "/calls", api.call, "al-subagent: call another agent"),
        ("POST", "/calls/wait", api.wait, "al-subagent-wait: wait for calls to end"),
        ("GET", "/calls/{call_id}", api.check, "al-subagent-check: where a call is"),
        ("POST", "/return", api.give_back, "al-return: the value this run answers with"),
        ("POST", "/status", api.status, "al-status: the text shown while this run works"),
        ("POST", "/rerun", api.rerun, "al-rerun: run again after this run succeeds"),
        ("POST", "/exit", api.exit, "al-exit: end this run with an exit code"),
    ]
    for method, path, handler, summary in routes:
        router.add_api_route(path, handler, methods=[method], summary=summary)
    return router


def _bad_request(errors: Sequence[Any]) -> JSONResponse:
    return _answer(400, {"ok": False, "error": _problems(errors)})


def _problems(errors: Sequence[Any]) -> str:
    problems = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        problems.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "bad request: " + "; ".join(problems)


class LockFastPath:
    """ASGI middleware answering the lock requests (``rlock``, ``runlock``,
    ``rlock-heartbeat``) without FastAPI's routing, dependency and validation machinery.

    They are most of a fleet's gateway traffic, and that machinery was most of their CPU
    cost (docs/decisions.md D16). The handlers, the body models and every answer are the
    ones the FastAPI routes use (those routes remain, and make the OpenAPI document).
    """

    MAX_BODY = 64 * 1024

    def __init__(self, app: ASGIApp, api: AgentApi) -> None:
        self.app = app
        self.api = api
        self.routes: dict[str, tuple[type[BaseModel], Callable[..., Awaitable[JSONResponse]]]] = {
            "/agent/locks/acquire": (AcquireBody, api.acquire),
            "/agent/locks/release": (LockBody, api.release),
            "/agent/locks/heartbeat": (LockBody, api.heartbeat),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self.routes.get(scope["path"])
        if route is None:
            await self.app(scope, receive, send)
            return
        response = await self._answer(scope, receive, *route)
        # The rendered answer, sent as is: no second pass through Starlette's Response.
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        model: type[BaseModel],
        handler: Callable[..., Awaitable[JSONResponse]],
    ) -> JSONResponse:
        body = await _read_body(receive, self.MAX_BODY)
        try:
            run = await self.api.authenticate(_bearer_secret(scope))
            if body is None:
                raise AgentApiError(
                    413, {"ok": False, "error": f"request body over {self.MAX_BODY} bytes"}
                )
            try:
                parsed = model.model_validate_json(body or b"null")
            except ValidationError as exc:
                return _bad_request(exc.errors())
            return await handler(parsed, run)
        except AgentApiError as exc:
            return _answer(exc.status, exc.body)
        except StoreError as exc:
            return _answer(409, {"ok": False, "error": str(exc)})


def _bearer_secret(scope: Scope) -> str:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            scheme, _, secret = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return secret.strip()
            break
    raise AgentApiError(
        403, {"ok": False, "error": "missing run secret (Authorization: Bearer ...)"}
    )


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None when it is longer than ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if size <= limit else None


def install_error_handlers(app: Any) -> None:
    """Agent API refusals and bad requests answer the commands' JSON shape."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AgentApiError)
        return _answer(exc.status, exc.body)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        if request.url.path.startswith("/agent/"):
            return _bad_request(exc.errors())
        if request.url.path.startswith("/control/"):
            body = {"ok": False, "error": _problems(exc.errors())}
            return _answer(422, body | {"detail": jsonable_encoder(exc.errors())})
        return await request_validation_exception_handler(request, exc)

    async def store_failed(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StoreError)
        if request.url.path.startswith("/agent/"):
            return _answer(409, {"ok": False, "error": str(exc)})
        if request.url.path.startswith("/control/"):
            return _answer(503, {"ok": False, "error": str(exc)})
        return _answer(503, {"detail": str(exc)})

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[JSONResponse]]] = {
        AgentApiError: api_error,
        RequestValidationError: invalid,
        StoreError: store_failed,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
