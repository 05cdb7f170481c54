"""The fleet's pages: the runners (the four numbers, the runners table, the throughput
chart), the rollouts (a canary bundle against the current one, scheduler/rollouts.py;
and the latest corral upgrade of the runners with its figures per corral version,
engine/fleet_upgrade.py) and the anomalies, with their buttons. Read through
``corral.engine.fleet``: the numbers are the ones ``corral fleet status`` and
``GET /control/fleet/status`` give, and every change is the one the control API and the
CLI make, audited as ``dashboard:<token name>``.

Both pages are live: their content is a fragment that ``/dashboard/runners/events`` and
``/dashboard/anomalies/events`` push again when it changes. What they show changes with
heartbeats and anomalies, which the shared snapshot does not watch, so their streams
look every ``FLEET_TICK`` seconds as well as on each new snapshot; a fragment is read
from the store at most once per ``_FRESH`` seconds however many viewers look."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import HTMLResponse, Response

from corral.engine import fleet, fleet_upgrade
from corral.gateway.dashboard._chart import stacked_chart
from corral.gateway.dashboard._context import Dashboard, Signed
from corral.gateway.dashboard._posts import Checked, _act, _flash, read_form
from corral.gateway.dashboard._sse import EventStream
from corral.gateway.dashboard._streams import ticking_stream
from corral.scheduler import rollouts
from corral.store import RunnerState

__all__ = ["FLEET_TICK", "NOTE_LIMIT", "fleet_routes"]

#: The longest resolution note (as the control API takes).
NOTE_LIMIT = 2000
#: How many anomalies the page lists.
ANOMALY_LIMIT = 200
#: How often a fleet page's stream looks again (seconds): heartbeats and anomalies are
#: not in the shared snapshot.
FLEET_TICK = 2.0
#: How long a fragment read from the store serves every viewer of it (seconds).
_FRESH = 1.0
#: The runner actions, by the last part of their URL.
RUNNER_VERBS = {
    "cordon": RunnerState.CORDONED,
    "drain": RunnerState.DRAINING,
    "uncordon": RunnerState.ACTIVE,
    "revoke": RunnerState.REVOKED,
}
_DONE = {
    "cordon": "cordoned: it takes no new runs",
    "drain": "draining: it finishes its runs and takes no new ones",
    "uncordon": "active again",
    "revoke": "revoked: its credential no longer works",
}


def fleet_routes(dash: Dashboard) -> APIRouter:
    router = APIRouter(prefix="/dashboard", include_in_schema=False)
    fragments = _Fragments(dash)
    _pages(router, dash, fragments)
    _streams(router, dash, fragments)
    _posts(router, dash)
    return router


class _Fragments:
    """The fleet pages' fragments, each read at most once per ``_FRESH`` seconds and
    shared by every viewer (as ``Snapshot.memo`` shares the other pages')."""

    def __init__(self, dash: Dashboard) -> None:
        self._dash = dash
        self._made: dict[Hashable, tuple[float, asyncio.Future[str]]] = {}

    async def _shared(self, key: Hashable, make: Callable[[], Awaitable[str]], fresh: bool) -> str:
        """The fragment under ``key``: made anew when ``fresh`` (a page load reads the
        store as it is), when the last one is older than ``_FRESH`` or failed."""
        now = time.monotonic()
        found = self._made.get(key)
        if fresh or found is None or now - found[0] >= _FRESH or _failed(found[1]):
            found = (now, asyncio.ensure_future(make()))
            self._made[key] = found
        return await asyncio.shield(found[1])

    async def runners(self, by: str, *, fresh: bool = False) -> str:
        async def make() -> str:
            context = await runners_context(self._dash, by) | {"now": _now(self._dash)}
            return self._dash.renderer.render("_runners.html", context)

        return await self._shared(("runners", by), make, fresh)

    async def anomalies(self, everything: bool, *, fresh: bool = False) -> str:
        async def make() -> str:
            context = await anomalies_context(self._dash, everything) | {"now": _now(self._dash)}
            return self._dash.renderer.render("_anomalies.html", context)

        return await self._shared(("anomalies", everything), make, fresh)


def _failed(future: asyncio.Future[str]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


def _now(dash: Dashboard) -> Any:
    return dash.scheduler.store.now()


def _pages(router: APIRouter, dash: Dashboard, fragments: _Fragments) -> None:
    @router.get("/runners")
    async def runners(
        operator: Signed, by: Annotated[str, Query(pattern="^(agent|runner)$")] = "agent"
    ) -> HTMLResponse:
        context = {"by": by, "live": await fragments.runners(by, fresh=True)}
        return dash.page("runners.html", operator, context, title="Runners", nav="runners")

    @router.get("/rollouts")
    async def rollout_page(operator: Signed) -> HTMLResponse:
        store = dash.scheduler.store
        shown = await rollouts.status(store, limit=5)
        latest = await store.latest_fleet_rollout()
        upgrade = None if latest is None else await fleet_upgrade.rollout_answer(store, latest)
        context = {"rollouts": shown["rollouts"], "upgrade": upgrade}
        return dash.page("rollouts.html", operator, context, title="Rollouts", nav="rollouts")

    @router.get("/anomalies")
    async def anomalies(operator: Signed, all: str | None = None) -> HTMLResponse:
        everything = all not in (None, "", "0")
        live = await fragments.anomalies(everything, fresh=True)
        context = {"everything": everything, "live": live}
        return dash.page("anomalies.html", operator, context, title="Anomalies", nav="anomalies")


def _streams(router: APIRouter, dash: Dashboard, fragments: _Fragments) -> None:
    @router.get("/runners/events")
    async def runners_events(
        request: Request,
        operator: Signed,
        by: Annotated[str, Query(pattern="^(agent|runner)$")] = "agent",
    ) -> Response:
        render = lambda: fragments.runners(by)  # noqa: E731
        return EventStream(ticking_stream(dash, request, "runners", render, FLEET_TICK))

    @router.get("/anomalies/events")
    async def anomalies_events(
        request: Request, operator: Signed, all: str | None = None
    ) -> Response:
        everything = all not in (None, "", "0")
        render = lambda: fragments.anomalies(everything)  # noqa: E731
        return EventStream(ticking_stream(dash, request, "anomalies", render, FLEET_TICK))


async def anomalies_context(dash: Dashboard, everything: bool) -> dict[str, Any]:
    """What the anomalies page shows: the open ones (or all), newest first, with the
    names of the runners they are about; runners gone silent are looked for first."""
    scheduler = dash.scheduler
    store = scheduler.store
    await fleet.check_offline(store, fleet.fleet_settings(scheduler.project))
    found = await store.list_anomalies(include_resolved=everything, limit=ANOMALY_LIMIT)
    names = {r.id: r.name for r in await store.list_runners()}
    return {
        "anomalies": found,
        "everything": everything,
        "limit": ANOMALY_LIMIT,
        "runner_names": names,
        "note_limit": NOTE_LIMIT,
    }


async def runners_context(dash: Dashboard, by: str) -> dict[str, Any]:
    """What the runners page shows: the overview, the runners (not revoked) with what
    they run now, and the chart per agent or per runner."""
    scheduler = dash.scheduler
    store = scheduler.store
    overview = await fleet.fleet_overview(store, scheduler.project)
    settings = fleet.fleet_settings(scheduler.project)
    now = store.now()
    by_runner: dict[str, list[dict[str, Any]]] = overview["bundles"]["byRunner"]
    current = {v["id"]: v["current"] for v in overview["versions"]["runners"]}
    names: dict[str, str] = {}
    rows = []
    revoked = 0
    for runner in await store.list_runners():
        names[runner.id] = runner.name
        if runner.state is RunnerState.REVOKED:
            revoked += 1
            continue
        row = fleet.runner_json(runner, now, settings)
        bundles = by_runner.get(runner.id, [])
        row |= {
            "bundles": bundles,
            "busy": sum(b["live"] for b in bundles),
            "versionCurrent": current.get(runner.id, True),
        }
        rows.append(row)
    hourly = overview["throughput"]["hourly"]
    if by == "runner":
        series = {names.get(key, key): values for key, values in hourly["perRunner"].items()}
    else:
        series = hourly["perAgent"]
    return {
        "o": overview,
        "runners": rows,
        "revoked": revoked,
        "control_plane": by_runner.get(fleet.CONTROL_PLANE, []),
        "by": by,
        "chart": stacked_chart(hourly["hours"], series),
    }


def _posts(router: APIRouter, dash: Dashboard) -> None:
    store = dash.scheduler.store

    @router.post("/runners/{runner_id}/{verb}")
    async def change_runner(runner_id: str, verb: str, operator: Checked) -> HTMLResponse:
        state = RUNNER_VERBS.get(verb)
        if state is None:
            return _flash(dash, f"There is no runner action {verb!r}.", ok=False, status=404)
        work = fleet.change_runner(store, runner_id, state, actor=operator.actor)
        return await _act(dash, work, lambda done: _changed(verb, *done))

    @router.post("/anomalies/{anomaly_id}/resolve")
    async def resolve(
        anomaly_id: Annotated[int, Path(ge=1, le=2**62)], request: Request, operator: Checked
    ) -> HTMLResponse:
        note = (await read_form(request)).get("note", "")
        if len(note) > NOTE_LIMIT:
            message = f"The note is too long: at most {NOTE_LIMIT} characters."
            return _flash(dash, message, ok=False, status=400)
        work = fleet.resolve_anomaly(store, anomaly_id, note, actor=operator.actor)
        return await _act(dash, work, lambda done: _resolved(anomaly_id, *done))


def _changed(verb: str, runner: Any, changed: bool) -> str:
    if not changed:
        return f"Runner {runner.name} ({runner.id}) is {runner.state.value} already."
    return f"Runner {runner.name} ({runner.id}) is {_DONE[verb]}."


def _resolved(anomaly_id: int, anomaly: Any, changed: bool) -> str:
    if not changed:
        return f"Anomaly {anomaly_id} was resolved already (by {anomaly.resolved_by})."
    return f"Resolved anomaly {anomaly_id} ({anomaly.kind.value}, {anomaly.subject})."
