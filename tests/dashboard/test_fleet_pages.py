"""The fleet's pages, on both stores, against a real scheduler and gateway: runners joined
through the store, runs claimed by them with the bundle they run, runs ended in earlier
hours (recorded by a second store object whose clock is set back). The runners page shows
the four numbers, the runners table with what each one runs, and the throughput chart;
the buttons cordon, drain and revoke; the anomalies page lists the open ones with their
evidence and resolves them with a note, refused without the CSRF token or a session.
/metrics carries the same numbers. Plus the numbers themselves (``fleet_overview``)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from corral import __version__
from corral.bundles import pack
from corral.engine import fleet
from corral.engine.token import hash_token
from corral.gateway.dashboard._chart import COLOURS, stacked_chart
from corral.store import (
    AgentSpec,
    AnomalyKind,
    NewItem,
    NewRunner,
    Run,
    Runner,
    RunnerState,
    RunState,
    Store,
    TriggerKind,
    open_store,
)
from tests.dashboard.support import ACTOR, TOKEN, DashFleet, Events, dashboard_fleet, login
from tests.scheduler.helpers import wait_for, write_project

Client = tuple[httpx.AsyncClient, dict[str, str]]

#: A bundle no control plane runs any more (the runs that started on it keep it).
OLD = "sha256:" + "ab" * 32
REMOTE = {"remote": {"scale": 6, "command": "true", "runsOn": []}}


async def join(store: Store, name: str, *, version: str, labels: tuple[str, ...] = ()) -> Runner:
    token, _ = await fleet.create_token(store, actor="test")
    joined = await store.redeem_fleet_token(
        hash_token(token),
        hash_token(fleet.new_runner_credential()),
        NewRunner(name=name, hostname=f"{name}.lan", labels=labels, slots=3, version=version),
    )
    assert isinstance(joined, Runner), joined
    return joined


async def claim(store: Store, runner: Runner, bundle: str | None) -> tuple[Run, int]:
    await store.enqueue(NewItem(agent="remote", trigger=TriggerKind.MANUAL))
    [got] = await store.claim(
        runner.id, lease_seconds=600, limit=1, agents=["remote"], runner=True, bundle=bundle
    )
    assert got.run.fence is not None
    return got.run, got.run.fence


async def finish(store: Store, runner: Runner, bundle: str | None) -> None:
    run, fence = await claim(store, runner, bundle)
    await store.finalize(run.id, fence=fence, state=RunState.SUCCEEDED, exit_code=0)


@contextmanager
def back_in_time(store: Store, hours: float) -> Iterator[None]:
    clock = store.clock
    store.clock = lambda: clock() - timedelta(hours=hours)
    try:
        yield
    finally:
        store.clock = clock


# -- the numbers -----------------------------------------------------------------------


async def test_the_overview_has_bundles_and_an_hourly_series(tmp_path: Path, store: Store) -> None:
    project = write_project(tmp_path / "p", {"here": {"command": "true"}, **REMOTE})
    await store.sync_project(
        [AgentSpec("here", 1, 100), AgentSpec("remote", 6, 100)],
        scale_cap=None,
        max_attempts=3,
        max_reruns=0,
    )
    old = await join(store, "old-box", version="0.0.1")
    new = await join(store, "new-box", version=__version__)
    packed = pack(project.root)
    await store.publish_bundle(packed.hash, packed.data, {"agents": packed.agents}, actor="test")
    before = await fleet.fleet_overview(store, project)
    assert before["bundles"]["runnersBehind"] == 0 and before["bundles"]["byRunner"] == {}
    await claim(store, old, OLD)  # started before the push: still on the old bundle
    await claim(store, old, packed.hash)
    await claim(store, new, packed.hash)
    with back_in_time(store, 5):
        await finish(store, new, packed.hash)
        await finish(store, new, packed.hash)
    with back_in_time(store, 30):  # outside the day: in no number
        await finish(store, old, OLD)
    await finish(store, old, packed.hash)

    o = await fleet.fleet_overview(store, project)
    bundles = o["bundles"]
    assert bundles["current"] == packed.hash
    assert bundles["runnersBehind"] == 1 and bundles["liveRunsBehind"] == 1
    assert bundles["byRunner"][old.id] == [
        {"bundle": packed.hash, "live": 1, "current": True},
        {"bundle": OLD, "live": 1, "current": False},
    ]
    assert bundles["byRunner"][new.id] == [{"bundle": packed.hash, "live": 1, "current": True}]
    skew = {r["id"]: r for r in o["versions"]["runners"]}
    assert skew[old.id]["current"] is False and skew[new.id]["current"] is True
    assert skew[old.id]["bundles"] == bundles["byRunner"][old.id]
    hourly = o["throughput"]["hourly"]
    assert len(hourly["hours"]) == 24
    assert datetime.fromisoformat(hourly["hours"][-1]) <= store.now()
    assert store.now() - datetime.fromisoformat(hourly["hours"][-1]) < timedelta(hours=1)
    expected_agent = [0] * 24
    expected_agent[23 - 5] += 2
    expected_agent[23] += 1
    assert hourly["perAgent"] == {"remote": expected_agent}
    assert hourly["perRunner"][new.id][23 - 5] == 2 and sum(hourly["perRunner"][new.id]) == 2
    assert hourly["perRunner"][old.id][23] == 1 and sum(hourly["perRunner"][old.id]) == 1
    assert o["throughput"]["completed"] == 3


def test_the_chart_stacks_hours_and_folds_small_series() -> None:
    hours = [f"2026-01-01T{h:02d}:00:00+00:00" for h in range(24)]
    many = {f"agent-{i}": [i + 1 if h == 20 else 0 for h in range(24)] for i in range(10)}
    chart = stacked_chart(hours, many)
    names = [s.name for s in chart.series]
    assert len(names) == COLOURS and names[-1] == "other" and names[0] == "agent-9"
    assert chart.total == sum(range(1, 11)) and chart.peak == chart.total
    assert {s.name: s.total for s in chart.series}["other"] == 1 + 2 + 3
    bars = [b for b in chart.bars]
    assert len(bars) == COLOURS and len({b.x for b in bars}) == 1  # one stack, in hour 20
    top = min(b.y for b in bars)
    assert top >= 10 and max(b.y + b.height for b in bars) == pytest.approx(220 - 24)
    assert chart.hours[-1][1] == "23:00"
    empty = stacked_chart(hours, {"idle": [0] * 24})
    assert empty.bars == [] and empty.series == [] and empty.total == 0


# -- the pages -------------------------------------------------------------------------


@pytest.fixture
async def remote_fleet(tmp_path: Path, store: Store) -> AsyncIterator[DashFleet]:
    async with dashboard_fleet(tmp_path / "p", store, REMOTE) as running:
        yield running


@pytest.fixture
async def client(remote_fleet: DashFleet) -> AsyncIterator[Client]:
    async with httpx.AsyncClient(base_url=remote_fleet.url, timeout=15) as http:
        yield http, await login(http)


async def seed(dash: DashFleet, store_url: str) -> tuple[Runner, Runner, str]:
    """Two runners (one named with markup), a pushed bundle, runs live on both (one on
    the old bundle), runs ended five hours ago and now."""
    store = dash.store
    old = await join(store, "gpu-<b>1</b>", version="0.0.1", labels=("big", "gpu"))
    new = await join(store, "cpu-2", version=__version__)
    packed = pack(dash.root)
    async with httpx.AsyncClient(base_url=dash.url, timeout=30) as control:
        pushed = await control.post(
            "/control/bundles",
            content=packed.data,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-tar"},
        )
    assert pushed.status_code == 200, pushed.text
    current = packed.hash
    # the scheduler follows the push (a reload); claims are made once it runs the bundle
    await wait_for(lambda: dash.scheduler.project.bundle == current)
    await claim(store, old, OLD)
    await claim(store, new, current)
    async with await open_store(store_url) as earlier:
        with back_in_time(earlier, 5):
            for _ in range(3):
                await finish(earlier, new, current)
    await finish(store, old, current)
    return old, new, current


async def test_the_runners_page(remote_fleet: DashFleet, client: Client, store_url: str) -> None:
    http, _ = client
    empty = await http.get("/dashboard/runners")
    assert empty.status_code == 200 and "No runner has joined" in empty.text
    assert '<a href="/dashboard/runners" aria-current="page">Runners</a>' in empty.text
    old, new, current = await seed(remote_fleet, store_url)
    page = await http.get("/dashboard/runners")
    assert page.status_code == 200
    text = page.text
    numbers = _between(text, 'id="fleet-numbers"', "</dl>")
    assert "2 of 2 (100%)" in numbers  # both heartbeated on joining
    assert f"Behind corral {__version__}" in numbers
    assert re.search(r'id="versions-behind">1<', numbers)
    assert "1 runner, 1 live run" in numbers
    assert current[:19] in numbers
    assert re.search(r'id="throughput">4 \(', numbers)
    row = _between(text, f'data-runner="{old.id}"', "</tr>")
    assert "gpu-&lt;b&gt;1&lt;/b&gt;" in row and "<b>1</b>" not in row
    assert "big, gpu" in row and "0.0.1" in row and "b-behind" in row
    assert OLD[:19] in row and "b-stale" in row and ">1</td>" in row  # busy 1
    assert "/dashboard/runners/" + old.id + "/cordon" in row
    other = _between(text, f'data-runner="{new.id}"', "</tr>")
    assert current[:19] in other and "b-stale" not in other and "b-behind" not in other
    chart = _between(text, 'id="throughput-chart"', "</figure>")
    assert chart.count("<rect ") == 2 + 1  # two hours of one agent, and its swatch
    assert "remote: 3 runs ended" in chart and "remote: 1 run ended" in chart
    assert "4 runs ended, at most 3 in an hour" in chart
    per_runner = (await http.get("/dashboard/runners?by=runner")).text
    legend = _between(per_runner, '<ul class="legend">', "</ul>")
    assert 'data-series="cpu-2"' in legend and "gpu-&lt;b&gt;1&lt;/b&gt;" in legend
    assert (await http.get("/dashboard/runners?by=nobody")).status_code == 422


async def test_runner_buttons(remote_fleet: DashFleet, client: Client) -> None:
    http, headers = client
    store = remote_fleet.store
    box = await join(store, "box", version=__version__)

    async def state() -> RunnerState:
        found = await store.get_runner(box.id)
        assert found is not None
        return found.state

    base = f"/dashboard/runners/{box.id}"
    refused = await http.post(f"{base}/cordon", headers={"HX-Request": "true"})
    assert refused.status_code == 403 and await state() is RunnerState.ACTIVE
    async with httpx.AsyncClient(base_url=remote_fleet.url, timeout=15) as stranger:
        assert (await stranger.post(f"{base}/cordon", headers=headers)).status_code == 401
    assert await state() is RunnerState.ACTIVE
    for verb, expected in (
        ("cordon", RunnerState.CORDONED),
        ("uncordon", RunnerState.ACTIVE),
        ("drain", RunnerState.DRAINING),
        ("revoke", RunnerState.REVOKED),
    ):
        answer = await http.post(f"{base}/{verb}", headers=headers)
        assert answer.status_code == 200, (verb, answer.text)
        assert await state() is expected, verb
    again = await http.post(f"{base}/cordon", headers=headers)
    assert again.status_code == 409 and "revoked" in again.text
    assert (await http.post(f"{base}/explode", headers=headers)).status_code == 404
    assert (
        await http.post("/dashboard/runners/rnr-none/drain", headers=headers)
    ).status_code == 404
    mine = [(e.actor, e.action) for e in await store.list_audit() if e.subject == box.id]
    assert mine == [
        (ACTOR, "fleet.runner.revoke"),
        (ACTOR, "fleet.runner.drain"),
        (ACTOR, "fleet.runner.uncordon"),
        (ACTOR, "fleet.runner.cordon"),
        (f"runner:{box.id}", "fleet.runner.join"),
    ]
    page = (await http.get("/dashboard/runners")).text
    assert f'data-runner="{box.id}"' not in page  # revoked runners leave the table


async def test_the_anomalies_page_and_resolving(remote_fleet: DashFleet, client: Client) -> None:
    http, headers = client
    store = remote_fleet.store
    box = await join(store, "box", version=__version__)
    gone = await store.record_anomaly(
        AnomalyKind.RUNNER_OFFLINE,
        box.id,
        {"lastHeartbeatAt": "2026-01-01T00:00:00+00:00", "note": "<script>x()</script>"},
    )
    reused = await store.record_anomaly(AnomalyKind.TOKEN_REUSED, "tok-1", {"ports": [1, 2]})
    page = (await http.get("/dashboard/anomalies")).text
    row = _between(page, f'data-anomaly="{gone.id}"', "</tr>")
    assert "b-runner_offline" in row and box.id in row and ">box</span>" in row
    assert "&lt;script&gt;x()&lt;/script&gt;" in row and "<script>x()" not in row
    assert f'hx-post="/dashboard/anomalies/{gone.id}/resolve"' in row
    assert "[1, 2]" in _between(page, f'data-anomaly="{reused.id}"', "</tr>")
    numbers = (await http.get("/dashboard/runners")).text
    assert re.search(r'id="anomalies-open"><a href="/dashboard/anomalies">2</a>', numbers)

    url = f"/dashboard/anomalies/{gone.id}/resolve"
    note = {"note": "cable pulled; plugged back in"}
    no_csrf = await http.post(url, data=note, headers={"HX-Request": "true"})
    assert no_csrf.status_code == 403
    async with httpx.AsyncClient(base_url=remote_fleet.url, timeout=15) as stranger:
        assert (await stranger.post(url, data=note, headers=headers)).status_code == 401
    blank = await http.post(url, data={"note": "   "}, headers=headers)
    assert blank.status_code == 400 and "note is required" in blank.text
    long = await http.post(url, data={"note": "x" * 2001}, headers=headers)
    assert long.status_code == 400
    assert {a.id for a in await store.list_anomalies()} == {gone.id, reused.id}

    done = await http.post(url, data=note, headers=headers)
    assert done.status_code == 200 and f"Resolved anomaly {gone.id}" in done.text
    [left] = await store.list_anomalies()
    assert left.id == reused.id
    [resolved] = [a for a in await store.list_anomalies(include_resolved=True) if a.id == gone.id]
    assert resolved.resolution == note["note"] and resolved.resolved_by == ACTOR
    twice = await http.post(url, data=note, headers=headers)
    assert twice.status_code == 200 and "resolved already" in twice.text
    missing = await http.post("/dashboard/anomalies/999999/resolve", data=note, headers=headers)
    assert missing.status_code == 404

    page = (await http.get("/dashboard/anomalies")).text
    assert f'data-anomaly="{gone.id}"' not in page and f'data-anomaly="{reused.id}"' in page
    everything = (await http.get("/dashboard/anomalies?all=1")).text
    row = _between(everything, f'data-anomaly="{gone.id}"', "</tr>")
    assert "cable pulled; plugged back in" in row and "b-resolved" in row and ACTOR in row


async def test_metrics_carry_the_four_numbers(
    remote_fleet: DashFleet, client: Client, store_url: str
) -> None:
    http, _ = client
    old, _, _ = await seed(remote_fleet, store_url)
    await remote_fleet.store.record_anomaly(AnomalyKind.TOKEN_REUSED, "tok-1", {})
    scraped = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert scraped.status_code == 200
    text = scraped.text
    assert "corral_fleet_online_ratio 1.0" in text
    assert "corral_fleet_runners_behind 1.0" in text
    assert "corral_fleet_runners_stale_bundle 1.0" in text
    assert "corral_fleet_live_runs_stale_bundle 1.0" in text
    assert 'corral_fleet_anomalies_open{kind="token_reused"} 1.0' in text
    # the run that ended since the gateway started (the others ended "five hours ago")
    assert f'corral_runner_runs_total{{outcome="succeeded",runner="{old.id}"}} 1.0' in text
    assert 'corral_runs_total{agent="remote",outcome="succeeded"} 1.0' in text


def _between(text: str, start: str, end: str) -> str:
    at = text.index(start)
    return text[at : text.index(end, at)]


# -- live ------------------------------------------------------------------------------


async def test_the_runners_page_is_live(remote_fleet: DashFleet, client: Client) -> None:
    """The runners page follows the fleet without a reload: a runner that joins, and one
    whose heartbeats stop (nothing the shared snapshot of runs and locks watches)."""
    http, _ = client
    page = (await http.get("/dashboard/runners")).text
    assert 'sse-connect="/dashboard/runners/events?by=agent"' in page
    assert 'id="runners-live" sse-swap="runners"' in page
    store = remote_fleet.store
    async with http.stream("GET", "/dashboard/runners/events?by=agent") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = Events(stream)
        assert "No runner has joined" in await events.until("runners")
        box = await join(store, "box-<i>", version=__version__)
        shown = await events.until("runners", f'data-runner="{box.id}"')
        assert "box-&lt;i&gt;" in shown and "b-online" in shown
        with back_in_time(store, 1):  # its last heartbeat an hour ago: it went silent
            await store.runner_heartbeat(box.id, version=__version__)
        gone = await events.until("runners", "b-offline")
        assert "0 of 1 (0%)" in _between(gone, 'id="online-ratio">', "</dd>")
    async with http.stream("GET", "/dashboard/runners/events?by=nobody") as refused:
        assert refused.status_code == 422
    async with httpx.AsyncClient(base_url=remote_fleet.url, timeout=15) as stranger:
        async with stranger.stream("GET", "/dashboard/runners/events") as anonymous:
            assert anonymous.status_code in (401, 303)


async def test_the_anomalies_page_is_live(remote_fleet: DashFleet, client: Client) -> None:
    http, headers = client
    page = (await http.get("/dashboard/anomalies")).text
    assert 'sse-connect="/dashboard/anomalies/events"' in page
    store = remote_fleet.store
    async with http.stream("GET", "/dashboard/anomalies/events") as stream:
        events = Events(stream)
        assert "No open anomaly." in await events.until("anomalies")
        found = await store.record_anomaly(AnomalyKind.TOKEN_REUSED, "tok-9", {"tries": 2})
        assert found is not None
        shown = await events.until("anomalies", f'data-anomaly="{found.id}"')
        assert "b-token_reused" in shown and "tok-9" in shown
        url = f"/dashboard/anomalies/{found.id}/resolve"
        done = await http.post(url, data={"note": "a copy in CI; revoked"}, headers=headers)
        assert done.status_code == 200
        await events.until("anomalies", "No open anomaly.")
    async with http.stream("GET", "/dashboard/anomalies/events?all=1") as stream:
        everything = await Events(stream).until("anomalies", f'data-anomaly="{found.id}"')
        assert "a copy in CI; revoked" in everything
