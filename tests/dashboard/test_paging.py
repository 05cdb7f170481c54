"""With a thousand live runs the status document and the fleet pages stay small, and
their pages reach every live run exactly once (the control API, the dashboard, `stat`)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
from rich.console import Console

from corral.cli.commands.stat import status_view
from corral.store import NewRun, Run, RunState, Store, TriggerKind
from tests.dashboard.support import TOKEN, DashFleet

Client = tuple[httpx.AsyncClient, dict[str, str]]

LIVE = 1000
_ROW = re.compile(r'<tr data-run="([^"]+)"')
_NEXT = re.compile(r'<a rel="next" href="([^"]+)"')


async def _many_live_runs(store: Store) -> list[Run]:
    """``LIVE`` runs of ``dev`` marked running (as if another scheduler ran them)."""
    runs = []
    for i in range(LIVE):
        run = await store.create_run(NewRun(agent="dev", trigger=TriggerKind.MANUAL))
        run = await store.mark_run_running(run.id, pid=None, host="elsewhere")
        if i % 7 == 0:
            await store.set_status(run.id, f"step {i} of a fairly long status text ...")
        runs.append(run)
    live = await store.list_runs(states=[RunState.RUNNING], limit=LIVE + 10)
    assert len(live) == LIVE
    return runs


async def _status(http: httpx.AsyncClient, **params: str | int) -> dict[str, Any]:
    answer = await http.get(
        "/control/status", params=params, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_status_and_pages_stay_small_and_page_through_every_run(
    fleet: DashFleet, signed_in: Client
) -> None:
    http, _ = signed_in
    runs = await _many_live_runs(fleet.store)
    ids = {run.id for run in runs}

    # The status document: every agent summarised, the first page of runs, a count.
    first = await _status(http)
    assert len(json.dumps(first)) < 32 * 1024
    assert first["runningTotal"] == LIVE and first["runningNext"] == 50
    assert len(first["running"]) == 50
    dev = next(a for a in first["agents"] if a["agent"] == "dev")
    assert dev["running"] >= 0  # the agent's own count is the store's (its runs are foreign)

    # `corral stat` (and `top`) draw it: the summary, one page, how many more and how.
    console = Console(record=True, width=200)
    console.print(status_view(first))
    text = console.export_text()
    assert "runs 1-50 of 1000 running; 950 more: `corral stat --offset 50`" in text
    assert text.count("dev ") >= 50 and len(text) < 32 * 1024

    # Its pages reach every live run exactly once, oldest first.
    for limit in (50, 333, 500):
        seen: list[str] = []
        offset: int | None = 0
        while offset is not None:
            page = await _status(http, limit=limit, offset=offset)
            assert len(json.dumps(page)) < (limit + 50) * 400
            seen += [r["id"] for r in page["running"]]
            offset = page["runningNext"]
        assert len(seen) == LIVE and set(seen) == ids, limit
    one = await _status(http, agent="dev", limit=10, offset=995)
    assert one["runningTotal"] == LIVE and len(one["running"]) == 5
    assert one["runningNext"] is None
    none = await _status(http, agent="locker")
    assert (none["runningTotal"], none["running"]) == (0, [])
    bad = await http.get(
        "/control/status", params={"limit": 501}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert bad.status_code == 422  # as every control route answers a bad query

    # The dashboard's fleet page: the same first page, the count, a link to the rest.
    fleet_page = (await http.get("/dashboard")).text
    assert len(fleet_page.encode()) < 64 * 1024
    assert len(_ROW.findall(fleet_page)) == 50
    assert f'id="running-count">{LIVE}' in fleet_page
    assert "/dashboard/running?offset=50" in fleet_page

    # The running pages, followed link by link, list every live run exactly once.
    seen = []
    url: str | None = "/dashboard/running"
    while url is not None:
        answer = await http.get(url.replace("&amp;", "&"))
        assert answer.status_code == 200
        assert len(answer.content) < 64 * 1024
        seen += _ROW.findall(answer.text)
        found = _NEXT.search(answer.text)
        url = found.group(1) if found else None
    assert len(seen) == LIVE and set(seen) == ids

    # The agent's page lists the oldest of its live runs and links to the rest.
    agent_page = (await http.get("/dashboard/agents/dev")).text
    assert len(agent_page.encode()) < 64 * 1024
    assert "/dashboard/running?agent=dev&amp;offset=50" in agent_page
