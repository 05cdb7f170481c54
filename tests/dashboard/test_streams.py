"""The event streams: pushes when something changes, a run's log tailed live, one store
reader however many watch, and streams that end when the scheduler stops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from corral.store import RunState, Store
from tests.dashboard.support import DashFleet, Events, dashboard_fleet, login
from tests.scheduler.helpers import wait_for

Client = tuple[httpx.AsyncClient, dict[str, str]]


async def test_the_fleet_stream_shows_a_run_started_elsewhere(
    fleet: DashFleet, signed_in: Client
) -> None:
    http, _ = signed_in
    async with http.stream("GET", "/dashboard/events/fleet") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = Events(stream)
        first = await events.until("fleet")
        assert "Nothing is running." in first
        await fleet.trigger("dev")
        run = await fleet.running("dev")
        shown = await events.until("fleet", f'data-run="{run.id}"')
        assert "step &lt;b&gt;one&lt;/b&gt;" in shown
        fleet.out("stop").touch()
        await events.until("fleet", "Nothing is running.")


async def test_the_run_stream_tails_the_log_until_the_run_ends(
    fleet: DashFleet, signed_in: Client
) -> None:
    http, _ = signed_in
    await fleet.trigger("dev")
    run = await fleet.running("dev")
    log = fleet.scheduler.executor.log_path(run.id)
    # the talker's last words before it listens: al-status's answer
    await wait_for(lambda: log.exists() and b'{"ok":true}' in log.read_bytes())
    offset = log.stat().st_size
    async with http.stream("GET", f"/dashboard/runs/{run.id}/events?offset={offset}") as stream:
        events = Events(stream)
        status = await events.until("status")
        assert "b-running" in status and "step &lt;b&gt;one&lt;/b&gt;" in status
        fleet.say("first <b>line</b>\n")
        line = await events.until("log", "first")
        assert line == '<span class="chunk">first &lt;b&gt;line&lt;/b&gt;\n</span>'
        fleet.say("partial ")  # a line is sent once it is whole
        await asyncio.sleep(0.3)
        fleet.say("then the rest\n")
        assert "partial then the rest" in await events.until("log", "partial")
        fleet.out("stop").touch()
        final = await events.until("status", "b-succeeded")
        assert "/kill" not in final
        await events.until("done")
    logged = [data for name, data in events.seen if name == "log"]
    assert "script" not in "".join(logged)  # only what came after the offset


async def test_a_reconnecting_stream_resumes_after_the_last_event(
    fleet: DashFleet, signed_in: Client
) -> None:
    http, _ = signed_in
    await fleet.trigger("dev")
    run = await fleet.running("dev")
    fleet.say("one\n")
    log = fleet.scheduler.executor.log_path(run.id)
    await wait_for(lambda: "one" in log.read_text())
    resume = {"Last-Event-ID": str(log.stat().st_size)}
    async with http.stream("GET", f"/dashboard/runs/{run.id}/events", headers=resume) as stream:
        events = Events(stream)
        fleet.say("two\n")
        assert "two" in await events.until("log")
    assert not any("one" in data for name, data in events.seen if name == "log")


async def test_many_viewers_share_one_reader_of_the_store(
    fleet: DashFleet, signed_in: Client
) -> None:
    http, _ = signed_in
    feed = fleet.dashboard.feed
    async with asyncio.TaskGroup() as group:
        ready = [group.create_task(_watch(http, "/dashboard/events/fleet")) for _ in range(20)]
    streams = [task.result() for task in ready]
    try:
        before = feed.builds
        await asyncio.sleep(2.0)
        # about one read a second (the poll), whatever the number of viewers
        assert feed.builds - before <= 4
        await fleet.store.set_paused("hooked", True)  # from outside the gateway
        for _, events in streams:
            await events.until("fleet", "b-paused")
    finally:
        for stream, _ in streams:
            await stream.aclose()
    await wait_for(lambda: feed._task is None)  # the last viewer gone: the reader stops


async def _watch(http: httpx.AsyncClient, path: str) -> tuple[httpx.Response, Events]:
    stream = await http.send(http.build_request("GET", path), stream=True)
    events = Events(stream)
    await events.until("fleet")
    return stream, events


async def test_open_streams_end_when_the_scheduler_stops(tmp_path: Path, store: Store) -> None:
    running = dashboard_fleet(tmp_path / "p", store)
    fleet = await running.__aenter__()
    async with httpx.AsyncClient(base_url=fleet.url, timeout=15) as http:
        await login(http)
        await fleet.trigger("dev")
        run = await fleet.running("dev")
        fleet_stream = await http.send(
            http.build_request("GET", "/dashboard/events/fleet"), stream=True
        )
        run_stream = await http.send(
            http.build_request("GET", f"/dashboard/runs/{run.id}/events"), stream=True
        )
        fleet_events, run_events = Events(fleet_stream), Events(run_stream)
        await fleet_events.until("fleet")
        await run_events.until("status")
        await asyncio.wait_for(running.__aexit__(None, None, None), timeout=15)
        for events in (fleet_events, run_events):
            try:
                await events.until("never", timeout=5)
            except EOFError:
                pass
        await fleet_stream.aclose()
        await run_stream.aclose()
    stopped = await store.get_run(run.id)
    assert stopped is not None and stopped.state is not RunState.RUNNING
