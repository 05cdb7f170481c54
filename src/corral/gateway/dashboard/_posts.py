"""Logging in and out, and the buttons. Every change goes through
``corral.engine.actions``, the code the control API and the CLI use too, recorded in the
audit log as ``dashboard:<token name>``. An answer is a message for the page's flash
area, with the action's status (404, 409, ...) when it was refused."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from corral.engine import actions
from corral.errors import CorralError, StoreError
from corral.gateway.dashboard._auth import COOKIE, Operator, csrf_ok, safe_next, same_origin
from corral.gateway.dashboard._context import Dashboard, signed_in
from corral.gateway.dashboard._render import security_headers

__all__ = ["Refused", "post_routes", "refused_handler"]

T = TypeVar("T")

#: The largest form accepted (a trigger's prompt is the big one).
FORM_LIMIT = 1_100_000
#: How long the browser keeps the session cookie; the token itself is checked on every
#: request regardless.
COOKIE_SECONDS = 12 * 3600

log = logging.getLogger(__name__)


class Refused(CorralError):
    """A POST refused before any action ran (no CSRF token, a form too large)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def post_routes(dash: Dashboard) -> APIRouter:
    router = APIRouter(prefix="/dashboard", include_in_schema=False)
    _session_routes(router, dash)
    _project_routes(router, dash)
    _agent_routes(router, dash)
    return router


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body, read with a size cap (413 past it)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_LIMIT:
            raise Refused(413, "Refused: the form is too large.")
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


async def checked(request: Request) -> Operator:
    """The dependency of every button: a session, and the request is from its page."""
    operator = await signed_in(request)
    if not csrf_ok(request, operator):
        raise Refused(
            403, "Refused: the request did not come from this dashboard; reload the page."
        )
    return operator


Checked = Annotated[Operator, Depends(checked)]


async def _act(dash: Dashboard, work: Awaitable[T], done: Callable[[T], str]) -> HTMLResponse:
    """Run an action; say what it did, or why it was refused (with its status)."""
    try:
        result = await work
    except actions.ActionError as exc:
        return _flash(dash, exc.message, ok=False, status=exc.status)
    except StoreError as exc:
        log.error("a dashboard action failed in the store: %s", exc)
        return _flash(
            dash, "The store failed; nothing was changed. Try again.", ok=False, status=503
        )
    dash.feed.poke()
    return _flash(dash, done(result), ok=True)


def _session_routes(router: APIRouter, dash: Dashboard) -> None:

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await read_form(request)
        target = safe_next(form.get("next"))
        if not same_origin(request):
            return _login_again(dash, target, "Log in from the dashboard's own page.", 403)
        token = form.get("token", "").strip()
        if await dash.gate.identify(token) is None:
            return _login_again(dash, target, "That is not a valid operator token.", 401)
        response = RedirectResponse(target, status_code=303, headers=security_headers())
        response.set_cookie(
            COOKIE,
            token,
            max_age=COOKIE_SECONDS,
            path="/dashboard",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/logout")
    async def logout(operator: Checked) -> Response:
        headers = security_headers() | {"HX-Redirect": "/dashboard/login"}
        response = Response(status_code=204, headers=headers)
        response.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="strict")
        return response


def _project_routes(router: APIRouter, dash: Dashboard) -> None:
    scheduler = dash.scheduler

    @router.post("/pause")
    async def pause_project(operator: Checked) -> HTMLResponse:
        work = actions.pause(scheduler, None, actor=operator.actor)
        return await _act(dash, work, lambda _: "Paused the project: no new runs start.")

    @router.post("/resume")
    async def resume_project(operator: Checked) -> HTMLResponse:
        work = actions.resume(scheduler, None, actor=operator.actor)
        return await _act(dash, work, lambda _: "Resumed the project.")

    @router.post("/runs/{run_id}/kill")
    async def kill(run_id: str, operator: Checked) -> HTMLResponse:
        work = actions.kill(scheduler, run_id, actor=operator.actor)
        return await _act(dash, work, lambda _: f"Asked run {run_id} to stop.")

    @router.post("/locks/release")
    async def release(request: Request, operator: Checked) -> HTMLResponse:
        key = (await read_form(request)).get("key", "")
        work = actions.release_lock(scheduler, key, actor=operator.actor)
        return await _act(dash, work, lambda lock: f"Released {key} (run {lock.run_id} held it).")

    @router.post("/receipts/{receipt_id}/replay")
    async def replay(receipt_id: str, operator: Checked) -> HTMLResponse:
        work = actions.replay(scheduler, receipt_id, actor=operator.actor)
        return await _act(dash, work, lambda result: _replayed(receipt_id, result))


def _agent_routes(router: APIRouter, dash: Dashboard) -> None:
    scheduler = dash.scheduler

    @router.post("/agents/{name}/trigger")
    async def trigger(name: str, request: Request, operator: Checked) -> HTMLResponse:
        prompt = (await read_form(request)).get("prompt", "").strip() or None
        work = actions.trigger(scheduler, name, prompt, actor=operator.actor)
        return await _act(dash, work, lambda item: f"Queued a run of {name} (item {item.id}).")

    @router.post("/agents/{name}/pause")
    async def pause(name: str, operator: Checked) -> HTMLResponse:
        work = actions.pause(scheduler, name, actor=operator.actor)
        return await _act(dash, work, lambda _: f"Paused {name}: its queued runs wait.")

    @router.post("/agents/{name}/resume")
    async def resume(name: str, operator: Checked) -> HTMLResponse:
        work = actions.resume(scheduler, name, actor=operator.actor)
        return await _act(dash, work, lambda _: f"Resumed {name}.")

    @router.post("/agents/{name}/enable")
    async def enable(name: str, operator: Checked) -> HTMLResponse:
        work = actions.enable(scheduler, name, actor=operator.actor)
        return await _act(dash, work, lambda _: f"Enabled {name}: it takes triggers again.")

    @router.post("/agents/{name}/disable")
    async def disable(name: str, operator: Checked) -> HTMLResponse:
        work = actions.disable(scheduler, name, actor=operator.actor)
        return await _act(dash, work, lambda _: f"Disabled {name}: its triggers are refused.")

    @router.post("/agents/{name}/scale")
    async def scale(name: str, request: Request, operator: Checked) -> HTMLResponse:
        given = (await read_form(request)).get("scale", "").strip()
        if not (given.isascii() and given.isdigit() and len(given) <= 9):
            return _flash(
                dash, f"Scale must be a whole number >= 0, not {given!r}.", ok=False, status=400
            )
        work = actions.scale(scheduler, name, int(given), actor=operator.actor)
        return await _act(dash, work, lambda state: f"{name} now runs up to {state.scale} at once.")


def _replayed(receipt_id: str, result: Any) -> str:
    receipt, queued = result
    items = [f"{r.item.id} ({r.item.agent}, {r.item.state.value})" for r in queued]
    what = "items " + ", ".join(items) if items else "no agent matched"
    return f"Replayed {receipt_id} as {receipt.id}: {what}."


def _flash(dash: Dashboard, message: str, *, ok: bool, status: int = 200) -> HTMLResponse:
    html = dash.renderer.render("_flash.html", {"message": message, "ok": ok})
    return HTMLResponse(html, status_code=status, headers=security_headers())


def _login_again(dash: Dashboard, target: str, error: str, status: int) -> HTMLResponse:
    context = {"next": target, "error": error, "title": "Log in"}
    return dash.renderer.page("login.html", context, status)


def refused_handler(dash: Dashboard) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        return _flash(dash, exc.message, ok=False, status=exc.status)

    return handle
