"""Answers other than success, in the in-run commands' JSON shape.

The HTTP status picks the command's exit code (docs/agent-commands.md): 409 is a real
conflict (the lock is held, the run has ended, a call refused), 503 a store that failed
or cannot be reached, which retrying may cure. The two must not be confused: a command
that reads 409 as "the lock is held" would give up on a lock nobody holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from corral.errors import StoreConflict, StoreError

__all__ = [
    "AgentApiError",
    "RunEnded",
    "answer",
    "bad_request",
    "install_error_handlers",
    "problems",
    "store_failure",
]


class AgentApiError(Exception):
    """An answer other than success: its JSON body and HTTP status."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


class RunEnded(AgentApiError):
    """The secret names a run that has ended: refused like any invalid secret, except
    that ``rlock-heartbeat`` learns its lock is lost (410, see `lock_lost`)."""

    def __init__(self, run_id: str, state: str) -> None:
        super().__init__(403, {"ok": False, "error": "invalid run secret"})
        self.run_id = run_id
        self.state = state

    def lock_lost(self) -> AgentApiError:
        why = f"run {self.run_id} has ended ({self.state}): its locks were released"
        return AgentApiError(410, {"ok": False, "reason": "lock lost", "error": why})


def answer(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def bad_request(errors: Sequence[Any]) -> JSONResponse:
    return answer(400, {"ok": False, "error": problems(errors)})


def problems(errors: Sequence[Any]) -> str:
    found = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        found.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "bad request: " + "; ".join(found)


def store_failure(exc: StoreError) -> JSONResponse:
    """409 when what the store holds refuses the request (the run has ended), else 503:
    the store failed, and the command exits 5 ("unavailable"), not 1 ("conflict")."""
    if isinstance(exc, StoreConflict):
        return answer(409, {"ok": False, "error": str(exc)})
    return answer(503, {"ok": False, "error": f"the corral store is unavailable: {exc}"})


def install_error_handlers(app: Any) -> None:
    """Agent API refusals and bad requests answer the commands' JSON shape."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AgentApiError)
        return answer(exc.status, exc.body)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        if request.url.path.startswith("/agent/"):
            return bad_request(exc.errors())
        if request.url.path.startswith("/control/"):
            body = {"ok": False, "error": problems(exc.errors())}
            return answer(422, body | {"detail": jsonable_encoder(exc.errors())})
        return await request_validation_exception_handler(request, exc)

    async def store_failed(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StoreError)
        if request.url.path.startswith("/agent/"):
            return store_failure(exc)
        if request.url.path.startswith("/control/"):
            return answer(503, {"ok": False, "error": str(exc)})
        return answer(503, {"detail": str(exc)})

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[JSONResponse]]] = {
        AgentApiError: api_error,
        RequestValidationError: invalid,
        StoreError: store_failed,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
