"""The event streams that keep pages live without reloading.

``/dashboard/events/{view}`` pushes a view's fragment (fleet, queue, locks, an agent)
whenever the shared snapshot changes. ``/dashboard/runs/{id}/events`` pushes the run's
status panel and the new lines of its log while the run is live, then ``done``. Each
stream checks the session when it opens and every ``RECHECK_SECONDS`` after; a stream
whose token was revoked ends, and the browser's reconnect is refused (401), upon which
the page's script sends it to the login form.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Query, Request
from markupsafe import escape
from starlette.responses import Response

from corral.gateway.dashboard._context import Dashboard, Signed
from corral.gateway.dashboard._logtail import LogTail
from corral.gateway.dashboard._runlist import BadQuery, RunList, runs_view
from corral.gateway.dashboard._sse import KEEPALIVE, KEEPALIVE_SECONDS, EventStream, sse_event
from corral.gateway.dashboard._views import LiveView, live_view, run_html, run_record

__all__ = ["stream_routes", "ticking_stream"]

#: How often a run page's stream looks for new log lines.
LOG_POLL = 0.25
#: Tells the browser how soon to reconnect a dropped stream (ms).
RETRY = "retry: 2000\n\n"
#: The text of the ages in a fragment (``<time ...>3s</time>``): the page's script ticks
#: them, so a fragment that changed in its ages alone is not sent again.
_AGES = re.compile(r"(<time [^>]*>)[^<]*(</time>)")
#: Enough chunks for the largest log (the run log is capped at 16 MiB).
MAX_CHUNKS = 300


def stream_routes(dash: Dashboard) -> APIRouter:
    router = APIRouter(prefix="/dashboard", include_in_schema=False)

    @router.get("/events/runs")
    async def runs_events(request: Request, operator: Signed) -> Response:
        """The runs list named by the query string, again whenever the fleet changes."""
        try:
            view = RunList.parse(request.query_params)
        except BadQuery as exc:
            return Response(str(exc), status_code=400, media_type="text/plain")
        return EventStream(_view_stream(dash, request, runs_view(dash, view)))

    @router.get("/events/{name}")
    async def view_events(
        name: str,
        request: Request,
        operator: Signed,
        agent: Annotated[str | None, Query(max_length=200)] = None,
    ) -> Response:
        view = live_view(dash, name, agent)
        if view is None:
            return Response("no such view", status_code=404, media_type="text/plain")
        return EventStream(_view_stream(dash, request, view))

    @router.get("/runs/{run_id}/events")
    async def run_events(
        run_id: str,
        request: Request,
        operator: Signed,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> Response:
        resume = request.headers.get("last-event-id", "")
        start = int(resume) if resume.isascii() and resume.isdigit() else offset
        if await dash.scheduler.store.get_run(run_id) is None:
            return Response("no such run", status_code=404, media_type="text/plain")
        return EventStream(_run_stream(dash, request, run_id, start))

    return router


class _Session:
    """Re-checks the stream's session now and then (a revoked token ends it)."""

    def __init__(self, dash: Dashboard, request: Request) -> None:
        self._dash = dash
        self._request = request
        self._checked = time.monotonic()

    async def valid(self) -> bool:
        if time.monotonic() - self._checked < self._dash.recheck:
            return True
        self._checked = time.monotonic()
        return await self._dash.gate.operator(self._request) is not None


async def _view_stream(dash: Dashboard, request: Request, view: LiveView) -> AsyncIterator[str]:
    yield RETRY
    session = _Session(dash, request)
    last: str | None = None
    sent = time.monotonic()
    async for snap in dash.feed.updates(keepalive=min(KEEPALIVE_SECONDS, dash.recheck)):
        if not await session.valid():
            return
        if snap is not None:
            html = await snap.memo(view.key, lambda: view.render(snap))  # noqa: B023
            if html == last:
                continue
            last = html
            yield sse_event(view.event, html)
        elif time.monotonic() - sent >= KEEPALIVE_SECONDS:
            yield KEEPALIVE
        else:
            continue
        sent = time.monotonic()


async def ticking_stream(
    dash: Dashboard,
    request: Request,
    event: str,
    render: Callable[[], Awaitable[str]],
    every: float,
) -> AsyncIterator[str]:
    """A fragment that changes with what the shared snapshot does not watch (the fleet
    pages': heartbeats, anomalies): rendered on each new snapshot and every ``every``
    seconds, and sent when it changed other than in its ages."""
    yield RETRY
    session = _Session(dash, request)
    last: str | None = None
    sent = time.monotonic()
    async for _ in dash.feed.updates(keepalive=min(every, dash.recheck)):
        if not await session.valid():
            return
        html = await render()
        shape = _AGES.sub(r"\1\2", html)
        if shape != last:
            last = shape
            yield sse_event(event, html)
        elif time.monotonic() - sent >= KEEPALIVE_SECONDS:
            yield KEEPALIVE
        else:
            continue
        sent = time.monotonic()


async def _run_stream(
    dash: Dashboard, request: Request, run_id: str, offset: int
) -> AsyncIterator[str]:
    yield RETRY
    session = _Session(dash, request)
    tail = LogTail(dash.scheduler.executor.log_path(run_id), offset)
    last_status: str | None = None
    sent = time.monotonic()
    async for snap in dash.feed.updates(keepalive=LOG_POLL):
        if not await session.valid():
            return
        events: list[str] = []
        ended = False
        if snap is not None:
            run = await run_record(dash, snap, run_id)
            if run is None:
                return
            html = await run_html(dash, snap, run)
            if html != last_status:
                last_status = html
                events.append(sse_event("status", html))
            ended = run.state.is_terminal
        # While the run is live, a few chunks per tick; once it ended, the rest.
        for _ in range(MAX_CHUNKS if ended else 4):
            lines = tail.read(final=ended)
            if not lines:
                break
            events.append(_log_event(lines, tail.offset))
        if ended:
            events.append(sse_event("done", ""))
        elif not events and time.monotonic() - sent > KEEPALIVE_SECONDS:
            events.append(KEEPALIVE)
        for event in events:
            yield event
            sent = time.monotonic()
        if ended:
            return


def _log_event(lines: list[str], offset: int) -> str:
    text = "".join(f"{escape(line)}\n" for line in lines)
    return sse_event("log", f'<span class="chunk">{text}</span>', event_id=str(offset))
