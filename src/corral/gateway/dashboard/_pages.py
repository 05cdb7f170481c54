"""The pages (GET): each behind the session, each rendered with autoescape."""

from __future__ import annotations

import mimetypes
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from starlette.responses import FileResponse, HTMLResponse, Response

from corral.gateway.dashboard._auth import Operator, safe_next
from corral.gateway.dashboard._context import Dashboard, Signed
from corral.gateway.dashboard._logtail import LogTail
from corral.gateway.dashboard._render import STATIC_DIR, security_headers
from corral.gateway.dashboard._runlist import (
    PAGE,
    STATE_CHOICES,
    TRIGGER_CHOICES,
    WINDOWS,
    BadQuery,
    RunList,
    render_runs,
    runs_view,
)
from corral.gateway.dashboard._runpage import run_details
from corral.gateway.dashboard._views import FIXED_VIEWS, live_view, run_html, run_record
from corral.project import Agent, ScaleConfig, TaskTrigger
from corral.status import RUNNING_PAGE, RUNNING_PAGE_MAX, fleet_status

__all__ = ["page_routes"]

#: How many calls and receipts their pages list.
LIST_LIMIT = 100
#: The most of a webhook body the receipt page shows.
BODY_LIMIT = 64 * 1024


def page_routes(dash: Dashboard) -> APIRouter:
    router = APIRouter(prefix="/dashboard", include_in_schema=False)
    _open_routes(router, dash)
    _live_pages(router, dash)
    _detail_pages(router, dash)
    _list_pages(router, dash)
    return router


def _open_routes(router: APIRouter, dash: Dashboard) -> None:
    """What a visitor without a session may have: the login form and the static files."""

    @router.get("/login")
    async def login_form(next: str | None = None) -> HTMLResponse:
        return dash.renderer.page(
            "login.html", {"next": safe_next(next), "error": None, "title": "Log in"}
        )

    @router.get("/static/{name:path}")
    async def static(name: str) -> Response:
        if name not in dash.renderer.versions:
            return Response("not found", status_code=404, media_type="text/plain")
        media = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if name.startswith("vendor/LICENSE"):
            media = "text/plain"
        headers = security_headers(cache=True) | {"Cache-Control": "public, max-age=86400"}
        return FileResponse(STATIC_DIR / name, media_type=media, headers=headers)


def _live_pages(router: APIRouter, dash: Dashboard) -> None:
    """The fleet, the queue and the locks: a live fragment in a page."""

    @router.get("/session")
    async def session(operator: Signed) -> Response:
        """204 while the session is valid (the page's script asks when a stream fails)."""
        return Response(status_code=204, headers=security_headers())

    async def show(name: str, title: str, operator: Operator) -> HTMLResponse:
        html = await FIXED_VIEWS[name](dash).render(await dash.feed.snapshot())
        return dash.page(f"{name}.html", operator, {"live": html}, title=title, nav=name)

    @router.get("")
    @router.get("/")
    async def fleet(operator: Signed) -> HTMLResponse:
        return await show("fleet", "Fleet", operator)

    @router.get("/queue")
    async def queue(operator: Signed) -> HTMLResponse:
        return await show("queue", "Queue", operator)

    @router.get("/locks")
    async def locks(operator: Signed) -> HTMLResponse:
        return await show("locks", "Locks", operator)


def _detail_pages(router: APIRouter, dash: Dashboard) -> None:
    """An agent and a run."""

    @router.get("/agents/{name}")
    async def agent(name: str, operator: Signed) -> HTMLResponse:
        found = dash.scheduler.project.agents.get(name)
        view = live_view(dash, "agent", name)
        if found is None or view is None:
            return _missing(dash, operator, f"The project has no agent {name!r}.")
        snap = await dash.feed.snapshot()
        context = {
            "name": name,
            "live": await view.render(snap),
            "config": _config(found),
            "pooled": isinstance(found.config.scale, ScaleConfig),
        }
        return dash.page("agent.html", operator, context, title=name)

    @router.get("/runs/{run_id}")
    async def run(run_id: str, operator: Signed) -> HTMLResponse:
        snap = await dash.feed.snapshot()
        record = await run_record(dash, snap, run_id)
        if record is None:
            return _missing(dash, operator, f"There is no run {run_id!r}.")
        path = dash.scheduler.executor.log_path(run_id)
        tail, lines, omitted = LogTail.at_end(path)
        context = {
            "run": record,
            "status": await run_html(dash, snap, record),
            "lines": lines,
            "omitted": omitted,
            "offset": tail.offset,
            "live": not record.state.is_terminal,
            "has_log": path.exists(),
            "d": await run_details(dash, record),
        }
        return dash.page("run.html", operator, context, title=f"Run {run_id}")


def _list_pages(router: APIRouter, dash: Dashboard) -> None:
    """Calls and webhook receipts: read when the page loads."""

    @router.get("/calls")
    async def calls(operator: Signed) -> HTMLResponse:
        found = await dash.scheduler.store.list_calls(limit=LIST_LIMIT)
        return dash.page("calls.html", operator, {"calls": found}, title="Calls", nav="calls")

    @router.get("/runs")
    async def runs(request: Request, operator: Signed) -> HTMLResponse:
        """Every run of every agent, newest first, filtered by the query string."""
        context: dict[str, Any] = {
            "agents": sorted(dash.scheduler.project.agents),
            "states": STATE_CHOICES,
            "triggers": TRIGGER_CHOICES,
            "windows": WINDOWS,
            "window_values": [value for value, _ in WINDOWS],
            "page_size": PAGE,
        }
        try:
            view = RunList.parse(request.query_params)
        except BadQuery as exc:
            context |= {"view": RunList(), "problem": f"This list cannot be shown: {exc}."}
            return dash.page("runs.html", operator, context, title="Runs", nav="runs", status=400)
        snap = await dash.feed.snapshot()
        live = await snap.memo(runs_view(dash, view).key, lambda: render_runs(dash, view, snap.at))
        context |= {"view": view, "problem": None, "query": view.query(), "live": live}
        return dash.page("runs.html", operator, context, title="Runs", nav="runs")

    @router.get("/running")
    async def running(
        operator: Signed,
        offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
        limit: Annotated[int, Query(ge=1, le=RUNNING_PAGE_MAX)] = RUNNING_PAGE,
        agent: Annotated[str | None, Query(max_length=64)] = None,
    ) -> HTMLResponse:
        """Every live run, a page at a time (the fleet page lists the first ones)."""
        status = await fleet_status(
            dash.scheduler.store, dash.scheduler.project, limit=limit, offset=offset, agent=agent
        )
        query = {"limit": str(limit)} | ({} if agent is None else {"agent": agent})
        context = {
            "s": status,
            "now": datetime.now(UTC),
            "base": f"/dashboard/running?{urlencode(query)}&",
        }
        return dash.page("running.html", operator, context, title="Running", nav="fleet")

    @router.get("/receipts")
    async def receipts(
        operator: Signed, source: Annotated[str | None, Query(max_length=200)] = None
    ) -> HTMLResponse:
        found = await dash.scheduler.store.list_receipts(source=source or None, limit=LIST_LIMIT)
        context = {"receipts": found, "source": source or ""}
        return dash.page("receipts.html", operator, context, title="Webhooks", nav="receipts")

    @router.get("/receipts/{receipt_id}")
    async def receipt(receipt_id: str, operator: Signed) -> HTMLResponse:
        found = await dash.scheduler.store.get_receipt(receipt_id)
        if found is None:
            return _missing(dash, operator, f"There is no webhook receipt {receipt_id!r}.")
        body = found.body[:BODY_LIMIT].decode("utf-8", errors="replace")
        context = {"r": found, "body": body, "body_cut": len(found.body) > BODY_LIMIT}
        title = f"Receipt {receipt_id}"
        return dash.page("receipt.html", operator, context, title=title, nav="receipts")


def _missing(dash: Dashboard, operator: Operator, message: str) -> HTMLResponse:
    return dash.page("missing.html", operator, {"message": message}, title="Not found", status=404)


def _board_trigger(trigger: TaskTrigger) -> str:
    """A ``[[tasks]]`` trigger in a line: its project, labels and minimum priority."""
    text = trigger.project or "the project's board"
    if trigger.labels:
        text += " with " + ", ".join(trigger.labels)
    if trigger.min_priority > 1:
        text += f", priority {trigger.min_priority}+"
    return text


def _config(agent: Agent) -> list[tuple[str, str]]:
    """What the agent page says about the agent's configuration; no secret values
    (credentials, harness environment and params by name only)."""
    config = agent.config
    harness = config.harness
    command = harness.command
    cap = config.budget.daily_cost
    rows: list[tuple[str, Any]] = [
        ("description", agent.skill.description),
        ("harness", harness.type or "command"),
        ("preset", harness.preset),
        ("command", command if isinstance(command, str) else " ".join(command or ())),
        ("models", ", ".join(config.models)),
        ("runtime", f"{config.runtime.type}, network {config.runtime.network}"),
        ("schedule", config.schedule),
        ("webhooks", ", ".join(w.source for w in config.webhooks)),
        ("task board", "; ".join(_board_trigger(t) for t in config.tasks)),
        ("task lease", None if config.task_lease is None else f"{config.task_lease} s"),
        ("scale (config)", agent.effective_scale),
        ("queue size", config.max_work_queue_size),
        ("timeout", f"{config.timeout} s"),
        ("credentials", ", ".join(config.credentials)),
        ("environment", ", ".join(sorted(harness.env))),
        ("params", ", ".join(sorted(config.params))),
        ("daily cost cap", None if cap is None else f"${cap}"),
        ("hooks", f"{len(config.hooks.pre)} pre, {len(config.hooks.post)} post"),
    ]
    return [(label, str(value)) for label, value in rows if value not in (None, "")]
