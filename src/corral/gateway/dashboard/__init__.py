"""The web dashboard: server-rendered pages (Jinja2, autoescaped), htmx for the buttons,
server-sent events for what changes, no build step. Mounted at ``/dashboard`` behind the
operator token (see ``_auth``); docs/dashboard.md is the user's page.

    _auth     the session cookie, the token check, CSRF and origin checks
    _host     the Host check (DNS rebinding)
    _feed     one shared producer of fleet snapshots for every open stream
    _views    the live fragments, rendered from a snapshot
    _pages    the pages (GET)
    _fleetpages  the runners and anomalies pages and their buttons (the fleet of runners)
    _taskboard   the task board and a task's page, live on the store's ``tasks`` notices
    _scaling  the pools, the runner fleet's autoscaler and their decision log
    _chart    the throughput chart's geometry (server-drawn SVG)
    _runlist  the runs list: filters from the query string, keyset pages, a live table
    _runpage  what a run's page shows besides its status and log (trigger, calls, reruns)
    _posts    login, logout and the buttons (POST), through corral.engine.actions
    _streams  the event streams
    _logtail  a run's log, tailed and rendered for people
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from corral.gateway.dashboard._auth import Gate
from corral.gateway.dashboard._context import Dashboard, LoginRequired, login_url
from corral.gateway.dashboard._feed import Feed
from corral.gateway.dashboard._fleetpages import fleet_routes
from corral.gateway.dashboard._host import HostCheck, served_names
from corral.gateway.dashboard._pages import page_routes
from corral.gateway.dashboard._posts import Refused, post_routes, refused_handler
from corral.gateway.dashboard._render import Renderer, security_headers
from corral.gateway.dashboard._scaling import scaling_routes
from corral.gateway.dashboard._streams import stream_routes
from corral.gateway.dashboard._taskboard import task_routes

if TYPE_CHECKING:
    from corral.scheduler.service import Scheduler

__all__ = ["Dashboard", "install_dashboard"]


def install_dashboard(app: FastAPI, scheduler: Scheduler) -> Dashboard:
    """Serve the dashboard of ``scheduler`` from ``app`` under ``/dashboard``; sessions are
    checked with the gateway's token verifier (``app.state.tokens``)."""
    dash = Dashboard(scheduler, Gate(lambda: app.state.tokens), Feed(scheduler), Renderer())
    app.include_router(page_routes(dash))
    app.include_router(post_routes(dash))
    app.include_router(fleet_routes(dash))
    app.include_router(task_routes(dash))
    app.include_router(scaling_routes(dash))
    app.include_router(stream_routes(dash))
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(Refused, refused_handler(dash))
    app.add_middleware(HostCheck, names=served_names(scheduler.project))
    app.state.dashboard = dash
    return dash


async def _login_required(request: Request, exc: Exception) -> Response:
    """No valid session: pages go to the login page; htmx requests are told to go there;
    streams, the session probe and POSTs get 401 and nothing else."""
    target = login_url(request)
    headers = security_headers()
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers=headers | {"HX-Redirect": target})
    if request.method == "GET" and not _is_api(request.url.path):
        return RedirectResponse(target, status_code=303, headers=headers)
    return PlainTextResponse("log in to the dashboard first", status_code=401, headers=headers)


def _is_api(path: str) -> bool:
    """An event stream or the session probe: answered 401, not sent to the login page."""
    if path.startswith("/dashboard/events/") or path == "/dashboard/session":
        return True
    if path in ("/dashboard/tasks/events", "/dashboard/scaling/events"):
        return True
    if path.startswith("/dashboard/tasks/") and path.count("/") == 5 and path.endswith("/events"):
        return True
    return path.startswith("/dashboard/runs/") and path.endswith("/events")
