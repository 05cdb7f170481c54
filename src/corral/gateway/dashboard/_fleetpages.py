"""The fleet's pages: the runners (the four numbers, the runners table, the throughput
chart) and the anomalies, with their buttons. Read when the page loads, through
``corral.engine.fleet``: the numbers are the ones ``corral fleet status`` and
``GET /control/fleet/status`` give, and every change is the one the control API and the
CLI make, audited as ``dashboard:<token name>``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import HTMLResponse

from corral.engine import fleet
from corral.gateway.dashboard._chart import stacked_chart
from corral.gateway.dashboard._context import Dashboard, Signed
from corral.gateway.dashboard._posts import Checked, _act, _flash, read_form
from corral.store import RunnerState

__all__ = ["NOTE_LIMIT", "fleet_routes"]

#: The longest resolution note (as the control API takes).
NOTE_LIMIT = 2000
#: How many anomalies the page lists.
ANOMALY_LIMIT = 200
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
    _pages(router, dash)
    _posts(router, dash)
    return router


def _pages(router: APIRouter, dash: Dashboard) -> None:
    scheduler = dash.scheduler

    @router.get("/runners")
    async def runners(
        operator: Signed, by: Annotated[str, Query(pattern="^(agent|runner)$")] = "agent"
    ) -> HTMLResponse:
        context = await runners_context(dash, by)
        return dash.page("runners.html", operator, context, title="Runners", nav="runners")

    @router.get("/anomalies")
    async def anomalies(operator: Signed, all: str | None = None) -> HTMLResponse:
        everything = all not in (None, "", "0")
        store = scheduler.store
        await fleet.check_offline(store, fleet.fleet_settings(scheduler.project))
        found = await store.list_anomalies(include_resolved=everything, limit=ANOMALY_LIMIT)
        names = {r.id: r.name for r in await store.list_runners()}
        context = {
            "anomalies": found,
            "everything": everything,
            "limit": ANOMALY_LIMIT,
            "runner_names": names,
            "note_limit": NOTE_LIMIT,
        }
        return dash.page("anomalies.html", operator, context, title="Anomalies", nav="anomalies")


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
