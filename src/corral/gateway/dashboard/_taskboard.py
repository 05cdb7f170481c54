"""The task board's pages: the board (a column per status, filtered by the query string)
and a task's page (its text, dependencies and history), both live, with the operator's
two buttons (cancel, change the priority).

Live updates come from the store's ``tasks`` topic (``corral.store._notify``): every
transaction of this process that changes a task (an add, an edit, a claim by an in-run
command, a completion, a stalled or run-ended release, a cancel) wakes the board's
streams once it has committed; a run of this process ending (``run-ended``) does too,
since it releases the run's claims. What other processes sharing the store change is
seen at the next look, every ``BOARD_TICK`` seconds. A stream sends its fragment again
only when it changed other than in its ages (which the page's script ticks).

Many viewers cost one read per change: a fragment is made once per (view, change) and
shared by every stream of that view (``_Shared``), as the fleet pages share theirs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Request
from starlette.responses import HTMLResponse, Response

from corral.errors import StoreError
from corral.gateway.dashboard._context import Dashboard, Signed
from corral.gateway.dashboard._posts import Checked, _flash, read_form
from corral.gateway.dashboard._sse import KEEPALIVE, KEEPALIVE_SECONDS, EventStream, sse_event
from corral.gateway.dashboard._streams import _AGES, RETRY, _Session
from corral.store._notify import RUN_ENDED, TASKS
from corral.tasks._model import Task, TaskError, TaskStatus, UnknownTask, check_id

__all__ = ["BOARD_LIMIT", "BOARD_TICK", "COLUMN_LIMIT", "BoardQuery", "task_routes"]

#: How often an open board looks at the store when nothing in this process changed a
#: task (changes by other processes sharing the store).
BOARD_TICK = 2.0
#: The most tasks the board reads (the first ones by project and id).
BOARD_LIMIT = 5000
#: The most cards a column shows.
COLUMN_LIMIT = 200
#: The columns, in order.
COLUMNS = (
    TaskStatus.OPEN,
    TaskStatus.CLAIMED,
    TaskStatus.DONE,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
)
#: The longest free-text filter (assignee, search).
TEXT_LIMIT = 200
#: How long a fragment serves every viewer when no change was noticed (seconds).
_FRESH = 1.0
#: Fewer renders in a burst of changes (a thousand tasks added one by one); a view that
#: costs more is made again at most every twice its cost.
_GAP = 0.1
#: The query parameters the board reads.
_KEYS = ("project", "label", "assignee", "q")


class BadBoardQuery(ValueError):
    """A filter of the board's query string that cannot be used."""


@dataclass(frozen=True)
class BoardQuery:
    """The board's filters, from the query string (so a filtered board is a bookmark)."""

    project: str = ""
    label: str = ""
    assignee: str = ""
    q: str = ""

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> BoardQuery:
        values = {key: (params.get(key) or "").strip() for key in _KEYS}
        for key in ("project", "label"):
            if values[key]:
                try:
                    check_id(values[key], f"the {key} filter")
                except TaskError as exc:
                    raise BadBoardQuery(str(exc)) from None
        for key in ("assignee", "q"):
            if len(values[key]) > TEXT_LIMIT:
                raise BadBoardQuery(
                    f"the {key} filter is {len(values[key])} characters; "
                    f"at most {TEXT_LIMIT}, shorten it"
                )
        unknown = sorted(set(params) - set(_KEYS))
        if unknown:
            raise BadBoardQuery(
                f"unknown filter {', '.join(unknown)}: the board filters by " + ", ".join(_KEYS)
            )
        return cls(**values)

    @property
    def filtered(self) -> bool:
        return any((self.project, self.label, self.assignee, self.q))

    def query(self) -> str:
        """The query string of these filters (empty ones left out)."""
        return urlencode({key: getattr(self, key) for key in _KEYS if getattr(self, key)})

    def matches(self, task: Task) -> bool:
        if self.label and self.label not in task.spec.labels:
            return False
        if self.assignee and task.assignee != self.assignee:
            return False
        if self.q:
            needle = self.q.casefold()
            spec = task.spec
            text = " ".join((spec.id, spec.title, spec.description, *spec.labels))
            return needle in text.casefold()
        return True


def _moment(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _card(task: Task, statuses: Mapping[tuple[str, str], TaskStatus]) -> dict[str, Any]:
    """What a card shows besides the task: its requirements not done yet (with their
    status, ``None`` for one not on the board), and its times."""
    blocked = [
        (other, statuses.get((task.project, other)))
        for other in task.spec.requires
        if statuses.get((task.project, other)) is not TaskStatus.DONE
    ]
    return {
        "t": task,
        "blocked": blocked,
        "created": _moment(task.created_at),
        "claimed": _moment(task.claimed_at),
        "updated": _moment(task.updated_at),
    }


def _order(status: TaskStatus) -> Callable[[Task], Any]:
    if status is TaskStatus.OPEN:  # the order claims take them in
        return lambda t: (-t.spec.priority, t.created_at, t.id, t.project)
    if status is TaskStatus.CLAIMED:
        return lambda t: (t.claimed_at or 0.0, t.id)
    return lambda t: (-t.updated_at, t.id)  # ended: the latest first


async def board_context(dash: Dashboard, query: BoardQuery) -> dict[str, Any]:
    """The board's columns for ``query``: every task read (up to ``BOARD_LIMIT``) for
    the statuses of requirements, the matching ones shown."""
    store = dash.scheduler.store
    tasks: list[Task] = []
    after: tuple[str, str] | None = None
    while len(tasks) < BOARD_LIMIT:
        page = await store.list_tasks(
            project=query.project or None, limit=min(1000, BOARD_LIMIT - len(tasks)), after=after
        )
        tasks += page
        if len(page) < 1000:
            break
        after = (page[-1].project, page[-1].id)
    statuses = {(t.project, t.id): t.status for t in tasks}
    shown = [t for t in tasks if query.matches(t)]
    columns = []
    for status in COLUMNS:
        found = sorted((t for t in shown if t.status is status), key=_order(status))
        columns.append(
            {
                "status": status.value,
                "count": len(found),
                "cards": [_card(t, statuses) for t in found[:COLUMN_LIMIT]],
            }
        )
    return {
        "columns": columns,
        "total": len(shown),
        "read": len(tasks),
        "capped": len(tasks) >= BOARD_LIMIT,
        "limit": BOARD_LIMIT,
        "column_limit": COLUMN_LIMIT,
        "projects": sorted({t.project for t in tasks}),
        "labels": sorted({label for t in tasks for label in t.spec.labels}),
        "assignees": sorted({t.assignee for t in tasks if t.assignee}),
        "several_projects": len({t.project for t in shown}) > 1,
        "now": datetime.now(UTC),
    }


async def task_context(dash: Dashboard, project: str, task_id: str) -> dict[str, Any] | None:
    """A task's page: the task, what it requires (with their statuses), what it blocks,
    its history; None if there is no such task."""
    store = dash.scheduler.store
    task = await store.get_task(project, task_id)
    if task is None:
        return None
    requires = []
    for other in task.spec.requires:
        found = await store.get_task(project, other)
        requires.append((other, None if found is None else found.status.value))
    try:
        history = await store.task_history(project, task_id)
    except UnknownTask:  # gone between the two reads
        return None
    return {
        "t": task,
        "requires": requires,
        "blocks": await store.task_dependents(project, task_id),
        "history": [(e, _moment(e.at)) for e in history],
        "created": _moment(task.created_at),
        "claimed": _moment(task.claimed_at),
        "heartbeat": _moment(task.heartbeat_at),
        "expires": _moment(task.expires_at),
        "updated": _moment(task.updated_at),
        "now": datetime.now(UTC),
    }


class _Shared:
    """Fragments made once per (view, change) and shared by every viewer: an entry
    serves until a ``tasks`` or ``run-ended`` notice comes, or ``_FRESH`` seconds pass
    (what other processes changed)."""

    def __init__(self, dash: Dashboard) -> None:
        self._made: dict[Hashable, tuple[int, float, asyncio.Future[str]]] = {}
        self._generation = 0
        changes = dash.scheduler.store.changes
        for topic in (TASKS, RUN_ENDED):
            changes.subscribe(topic, self._changed)

    def _changed(self) -> None:
        self._generation += 1
        self._made = {k: v for k, v in self._made.items() if not v[2].done()}

    async def get(self, key: Hashable, make: Callable[[], Awaitable[str]], fresh: bool) -> str:
        now = time.monotonic()
        found = self._made.get(key)
        # One read per view at a time: a fragment still being made is awaited, even if a
        # change came meanwhile (the streams' watches saw that notice; they look again).
        if found is not None and not found[2].done():
            return await asyncio.shield(found[2])
        if (
            fresh
            or found is None
            or found[0] != self._generation
            or now - found[1] >= _FRESH
            or _failed(found[2])
        ):
            found = (self._generation, now, asyncio.ensure_future(make()))
            self._made[key] = found
        return await asyncio.shield(found[2])


def _failed(future: asyncio.Future[str]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


class _Board:
    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.shared = _Shared(dash)

    async def board(self, query: BoardQuery, *, fresh: bool = False) -> str:
        async def make() -> str:
            context = await board_context(self.dash, query) | {"query": query}
            return self.dash.renderer.render("_tasks.html", context)

        return await self.shared.get(("board", query), make, fresh)

    async def task(self, project: str, task_id: str, *, fresh: bool = False) -> str | None:
        async def make() -> str:
            context = await task_context(self.dash, project, task_id)
            if context is None:
                return ""
            return self.dash.renderer.render("_task.html", context)

        html = await self.shared.get(("task", project, task_id), make, fresh)
        return html or None


async def board_stream(
    dash: Dashboard, request: Request, event: str, render: Callable[[], Awaitable[str]]
) -> AsyncIterator[str]:
    """``render()`` sent as ``event`` now, and again whenever it changed (other than in
    its ages) after a ``tasks`` or ``run-ended`` notice of this process or at the next
    ``BOARD_TICK``; a keep-alive on a quiet stream. Ends when the session is no longer
    valid or the dashboard shuts down."""
    yield RETRY
    session = _Session(dash, request)
    changes = dash.scheduler.store.changes
    last: str | None = None
    sent = time.monotonic()
    while not dash.feed.finished():
        if not await session.valid():
            return
        # Listening before reading: a change landing while the fragment is made is not
        # left to the tick.
        watch = changes.watch([TASKS, RUN_ENDED])
        began = time.monotonic()
        html = await render()
        took = time.monotonic() - began
        shape = _AGES.sub(r"\1\2", html)
        if shape != last:
            last = shape
            yield sse_event(event, html)
            sent = time.monotonic()
        elif time.monotonic() - sent >= KEEPALIVE_SECONDS:
            yield KEEPALIVE
            sent = time.monotonic()
        if await watch.wait(min(BOARD_TICK, dash.recheck)):
            # In a burst of changes (claims at full speed) a view is made again at most
            # every ``_GAP`` s, or twice its cost apart: a large board (0.4 s to read and
            # render at 5,000 tasks) takes at most a third of the gateway's loop.
            await asyncio.sleep(max(_GAP, 2 * took))


def task_routes(dash: Dashboard) -> APIRouter:
    router = APIRouter(prefix="/dashboard", include_in_schema=False)
    board = _Board(dash)
    _pages(router, dash, board)
    _posts(router, dash)
    return router


def _pages(router: APIRouter, dash: Dashboard, board: _Board) -> None:
    @router.get("/tasks")
    async def tasks(request: Request, operator: Signed) -> HTMLResponse:
        try:
            query = BoardQuery.parse(request.query_params)
        except BadBoardQuery as exc:
            context = {"query": BoardQuery(), "problem": f"This board cannot be shown: {exc}."}
            return dash.page(
                "tasks.html", operator, context, title="Tasks", nav="tasks", status=400
            )
        context = {
            "query": query,
            "problem": None,
            "qs": query.query(),
            "live": await board.board(query, fresh=True),
        }
        return dash.page("tasks.html", operator, context, title="Tasks", nav="tasks")

    @router.get("/tasks/events")
    async def tasks_events(request: Request, operator: Signed) -> Response:
        try:
            query = BoardQuery.parse(request.query_params)
        except BadBoardQuery as exc:
            return Response(str(exc), status_code=400, media_type="text/plain")
        render = lambda: board.board(query)  # noqa: E731
        return EventStream(board_stream(dash, request, "tasks", render))

    @router.get("/tasks/{project}/{task_id}")
    async def task(project: str, task_id: str, operator: Signed) -> HTMLResponse:
        html = await board.task(project, task_id, fresh=True)
        if html is None:
            message = f"There is no task {task_id!r} in project {project!r} on the board."
            return dash.page(
                "missing.html", operator, {"message": message}, title="Not found", status=404
            )
        context = {"project_id": project, "task_id": task_id, "live": html}
        return dash.page("task.html", operator, context, title=f"Task {task_id}", nav="tasks")

    @router.get("/tasks/{project}/{task_id}/events")
    async def task_events(
        project: str, task_id: str, request: Request, operator: Signed
    ) -> Response:
        if await dash.scheduler.store.get_task(project, task_id) is None:
            return Response("no such task", status_code=404, media_type="text/plain")

        async def render() -> str:
            html = await board.task(project, task_id)
            return html or '<p class="muted">This task is no longer on the board.</p>'

        return EventStream(board_stream(dash, request, "task", render))


def _posts(router: APIRouter, dash: Dashboard) -> None:
    store = dash.scheduler.store

    @router.post("/tasks/{project}/{task_id}/cancel")
    async def cancel(project: str, task_id: str, operator: Checked) -> HTMLResponse:
        async def work() -> str:
            task = await store.cancel_task(project, task_id, operator.actor)
            return f"Cancelled task {task.id} of project {task.project}."

        return await _task_act(dash, work())

    @router.post("/tasks/{project}/{task_id}/priority")
    async def priority(
        project: Annotated[str, Path(max_length=200)],
        task_id: Annotated[str, Path(max_length=200)],
        request: Request,
        operator: Checked,
    ) -> HTMLResponse:
        given = (await read_form(request)).get("priority", "").strip()
        if not given.isdigit() or not 1 <= int(given) <= 10:
            message = f"The priority must be a whole number from 1 to 10, not {given!r}."
            return _flash(dash, message, ok=False, status=400)

        async def work() -> str:
            task = await store.edit_task(
                project, task_id, actor=operator.actor, priority=int(given)
            )
            return f"Task {task.id} of project {task.project} has priority {task.spec.priority}."

        return await _task_act(dash, work())


async def _task_act(dash: Dashboard, work: Awaitable[str]) -> HTMLResponse:
    """Run a change of the board; say what it did, or why it was refused (with the status
    the control API gives: 404 no such task, 409 not in a state for it, 400 bad input)."""
    try:
        done = await work
    except UnknownTask as exc:
        return _flash(dash, str(exc), ok=False, status=404)
    except TaskError as exc:
        status = 409 if "already" in str(exc) else 400
        return _flash(dash, str(exc), ok=False, status=status)
    except StoreError:
        return _flash(
            dash, "The store failed; nothing was changed. Try again.", ok=False, status=503
        )
    return _flash(dash, done, ok=True)
