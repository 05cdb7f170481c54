"""The scaling page, on both stores, against a real scheduler and gateway: an agent with a
``[scale]`` table whose pool the scheduler's own autoscaler sizes while runs arrive, and
the runner fleet's autoscaler configured (a ``command`` provider it never needs to call:
nothing waits for a runner). The page shows each pool with its settings, its numbers and
its last decision, the fleet's autoscaler, the chart of the pools' sizes and the decision
log with each decision's inputs and reason, filtered by agent and paged; what came from
outside is escaped; without a session it is refused as every page is; its stream pushes
the pools; /metrics counts the decisions by agent and direction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from markupsafe import escape

from corral.gateway.dashboard._scaling import HISTORY_HOURS, LOG_PAGE, pool_history
from corral.store import FLEET, AgentSpec, Store
from tests.dashboard.support import TOKEN, DashFleet, Events, dashboard_fleet, login
from tests.gateway.test_metrics import parse, value
from tests.scheduler.helpers import wait_for

POOLED = {"burst": {"command": "sleep 0.3"}}
TABLES = {"burst": "[scale]\nmin = 0\nmax = 3\ntarget = 0.5\nstabilization = 1\n"}
FLEET_TOML = (
    '\n[fleet.autoscale]\nprovider = "command"\nmin = 0\nmax = 2\nlabels = ["auto"]\n'
    'start = ["true"]\nstop = ["true"]\n'
)
SCRIPT = '<script>alert("scale")</script>'


@pytest.fixture
async def pooled(tmp_path: Path, store: Store) -> AsyncIterator[DashFleet]:
    running = dashboard_fleet(tmp_path / "p", store, POOLED, tables=TABLES, project_toml=FLEET_TOML)
    async with running as fleet:
        yield fleet


async def _grown(fleet: DashFleet) -> None:
    """Three runs of ``burst`` arrive; the scheduler's autoscaler grows its pool."""
    for _ in range(3):
        await fleet.trigger("burst")

    async def grew() -> bool:
        return any(d.direction == "grow" for d in await fleet.store.pool_decisions("burst"))

    await wait_for(grew, timeout=20)


async def test_the_scaling_page_shows_pools_the_fleet_and_their_decisions(
    pooled: DashFleet,
) -> None:
    await _grown(pooled)
    store = pooled.store
    await store.record_fleet_decision(
        "test",
        size=0,
        desired=1,
        policy="reactive",
        reason=f"start failed {SCRIPT}",
        inputs={"error": "<img src=x onerror=alert(1)>", "queued": 2},
    )
    peak = max(d.desired for d in await store.pool_decisions("burst", limit=500))
    async with httpx.AsyncClient(base_url=pooled.url, timeout=15) as http:
        await login(http)
        page = (await http.get("/dashboard/scaling")).text
        assert '<a href="/dashboard/scaling" aria-current="page">Scaling</a>' in page
        row = _between(page, '<tr data-agent="burst">', "</tr>")
        assert '<td data-label="Policy">reactive</td>' in row
        assert "0 / 3" in row and "50%" in row  # min / max, target
        assert 'class="badge b-' in row  # its last decision
        last = (await store.pool_decisions("burst", limit=1))[0]
        assert str(escape(last.reason)) in row
        assert f"{last.size} → {last.desired}" in row
        fleet_row = _between(page, '<table class="t" id="fleet-scale">', "</table>")
        assert ">command</td>" in fleet_row and "0 / 2" in fleet_row
        assert "grow</span> 0 → 1" in fleet_row  # its last decision, the one recorded here
        # The chart: burst's largest size this hour, from the decisions.
        chart = _between(page, '<figure class="chart" id="pool-chart">', "</figure>")
        drawn = int(_between(chart, "<title>burst: at most ", " instance"))
        assert peak <= drawn <= 3
        # The log: every decision with its inputs and reason, newest first, escaped.
        log = _between(page, '<table class="t" id="decision-log">', "</table>")
        assert SCRIPT not in page and "<img src=x" not in page
        assert str(escape(f"start failed {SCRIPT}")) in log
        assert str(escape("<img src=x onerror=alert(1)>")) in log
        shown = [int(n) for n in _all(log, 'data-decision="', '"')]
        assert shown == sorted(shown, reverse=True)
        grow = next(
            d for d in await store.pool_decisions("burst", limit=500) if d.direction == "grow"
        )
        if grow.id in shown:
            entry = _between(log, f'data-decision="{grow.id}"', "</tr>")
            assert "<dt>queued</dt>" in entry and str(escape(grow.reason)) in entry

        # The filter: one agent's decisions only; the fleet's under :fleet.
        only = (await http.get("/dashboard/scaling", params={"agent": "burst"})).text
        agents = set(_all(_between(only, 'id="decision-log">', "</table>"), 'data-agent="', '"'))
        assert agents == {"burst"}
        fleet_only = (await http.get("/dashboard/scaling", params={"agent": FLEET})).text
        fleet_log = _between(fleet_only, 'id="decision-log">', "</table>")
        assert set(_all(fleet_log, 'data-agent="', '"')) == {FLEET}
        none = (await http.get("/dashboard/scaling", params={"agent": "dev"})).text
        assert "No decision recorded for dev." in none
        hostile = (await http.get("/dashboard/scaling", params={"agent": SCRIPT})).text
        assert SCRIPT not in hostile
        assert f"No decision recorded for {escape(SCRIPT)}." in hostile
        long = await http.get("/dashboard/scaling", params={"agent": "x" * 201})
        assert long.status_code == 422

        # The agent page links to it when the agent has a pool.
        assert (
            "/dashboard/scaling?agent=burst#decisions"
            in (await http.get("/dashboard/agents/burst")).text
        )
        assert 'id="agent-scaling"' not in (await http.get("/dashboard/agents/dev")).text

    # /metrics counts the decisions by agent and direction.
    async with httpx.AsyncClient(base_url=pooled.url, timeout=15) as http:
        scraped = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        samples = parse(scraped.text)
        grows = [d for d in await store.pool_decisions("burst", limit=500) if d.direction == "grow"]
        counted = value(samples, "corral_pool_decisions_total", agent="burst", direction="grow")
        assert counted == len(grows)
        fleet_grows = value(samples, "corral_pool_decisions_total", agent=FLEET, direction="grow")
        assert fleet_grows == 1


async def test_the_decision_log_is_paged_newest_first(pooled: DashFleet) -> None:
    store = pooled.store
    for n in range(LOG_PAGE + 5):
        await store.record_fleet_decision(
            "test", size=0, desired=1, policy="reactive", reason=f"number {n}", inputs={}
        )
    async with httpx.AsyncClient(base_url=pooled.url, timeout=15) as http:
        await login(http)
        first = (await http.get("/dashboard/scaling", params={"agent": FLEET})).text
        ids = [int(n) for n in _all(first, '<tr data-decision="', '"')]
        assert len(ids) == LOG_PAGE and ids == sorted(ids, reverse=True)
        first_log = _between(first, 'id="decision-log">', "</table>")
        assert "number 54<" in first_log and "number 4<" not in first_log
        older = _between(first, '<a rel="next" href="', '"').replace("&amp;", "&")
        assert older == f"/dashboard/scaling?agent=%3Afleet&before={ids[-1]}#decisions"
        second = (await http.get(older.split("#")[0])).text
        rest = [int(n) for n in _all(second, '<tr data-decision="', '"')]
        assert rest and max(rest) < ids[-1]
        second_log = _between(second, 'id="decision-log">', "</table>")
        assert "number 0<" in second_log and "number 54<" not in second_log
        assert 'rel="next"' not in second  # the last page
        assert "Newest</a>" in second
        past = (await http.get("/dashboard/scaling", params={"before": 1})).text
        assert "No older decisions." in past
        assert (await http.get("/dashboard/scaling", params={"before": 0})).status_code == 422


async def test_without_a_session_the_scaling_page_is_refused(pooled: DashFleet) -> None:
    async with httpx.AsyncClient(base_url=pooled.url, timeout=15) as http:
        page = await http.get("/dashboard/scaling")
        assert page.status_code == 303
        assert page.headers["location"] == "/dashboard/login?next=/dashboard/scaling"
        stream = await http.get("/dashboard/scaling/events")
        assert stream.status_code == 401
        http.cookies.set("corral_dashboard", "not-a-token")
        assert (await http.get("/dashboard/scaling")).status_code == 303


async def test_the_scaling_stream_pushes_the_pools(pooled: DashFleet) -> None:
    async with httpx.AsyncClient(base_url=pooled.url, timeout=15) as http:
        await login(http)
        async with http.stream("GET", "/dashboard/scaling/events") as response:
            assert response.status_code == 200
            events = Events(response)
            first = await events.until("scaling", 'data-agent="burst"')
            assert "burst: at most" not in first  # no bar before it grows
            assert 'id="fleet-scale"' in first
            assert "b-grow" not in first and "b-shrink" not in first
            await _grown(pooled)

            async def resized() -> None:  # its last decision, pushed: grown, or shrunk since
                while True:
                    data = await events.until("scaling", 'data-agent="burst"', timeout=20)
                    if "b-grow" in data or "b-shrink" in data:
                        return

            await asyncio.wait_for(resized(), 20)


async def test_the_chart_rebuilds_each_hours_largest_size_from_the_decisions(
    store: Store,
) -> None:
    await store.sync_project(
        [
            AgentSpec("burst", scale=6, queue_size=10, pool_min=1),
            AgentSpec("quiet", scale=3, queue_size=10, pool_min=2),
        ],
        scale_cap=None,
        max_attempts=3,
        max_reruns=10,
    )
    assert await store.take_pool_lease("burst", "a", lease_seconds=60) is not None
    clock = store.clock
    for hours_ago, previous, size in ((5, 1, 3), (2, 3, 2), (0, 2, 4)):
        store.clock = lambda h=hours_ago: clock() - timedelta(hours=h)
        try:
            await store.set_pool_size(
                "burst",
                "a",
                size=size,
                previous=previous,
                policy="reactive",
                reason="test",
                inputs={},
                record=True,
            )
        finally:
            store.clock = clock
    await store.record_fleet_decision("a", size=0, desired=9, policy="p", reason="r", inputs={})
    now = datetime.now(UTC)
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HISTORY_HOURS - 1)
    history = await pool_history(store, first)
    assert history == {
        # size 1 until five hours ago, 3 from then, 2 from two hours ago, 4 now
        "burst": [1] * (HISTORY_HOURS - 6) + [3, 3, 3, 3, 2, 4],
        "quiet": [2] * HISTORY_HOURS,  # no decision: its size now
    }  # and the runner fleet's decisions are not a pool's


def _between(text: str, start: str, end: str) -> str:
    at = text.index(start) + len(start)
    return text[at : text.index(end, at)]


def _all(text: str, start: str, end: str) -> list[str]:
    found = []
    at = text.find(start)
    while at >= 0:
        at += len(start)
        stop = text.index(end, at)
        found.append(text[at:stop])
        at = text.find(start, stop)
    return found
