"""What each page shows, over HTTP from a running gateway; what a run or a webhook sender
wrote is always shown as text."""

from __future__ import annotations

import httpx

from corral.store import CallState, RunState
from tests.dashboard.support import DashFleet
from tests.scheduler.helpers import wait_for

Client = tuple[httpx.AsyncClient, dict[str, str]]


async def test_the_fleet_at_a_glance(fleet: DashFleet, signed_in: Client) -> None:
    http, _ = signed_in
    await fleet.trigger("dev")
    await fleet.trigger("locker")
    await fleet.trigger("off")  # refused: scale 0
    run = await fleet.running("dev")
    locker = await fleet.running("locker")
    page = (await http.get("/dashboard")).text
    for agent in ("dev", "locker", "hooked", "caller", "off"):
        assert f'data-agent="{agent}"' in page
    assert "webhook, manual, call" in page  # hooked's trigger kinds
    assert f'data-run="{run.id}"' in page and f'data-run="{locker.id}"' in page
    assert "step &lt;b&gt;one&lt;/b&gt;" in page and "<b>one" not in page
    assert "deploy://api-prod" in page  # the lock locker holds
    assert "rejected" in page and "scale = 0" in page  # off's refusal, with its reason
    assert f"/dashboard/runs/{run.id}/kill" in page


async def test_a_run_page_shows_its_log_as_text(fleet: DashFleet, signed_in: Client) -> None:
    http, _ = signed_in
    await fleet.trigger("dev", prompt="do <u>it</u>")
    run = await fleet.running("dev")
    fleet.say("hello <img src=x onerror=alert(1)>\n")
    log = fleet.scheduler.executor.log_path(run.id)
    await wait_for(lambda: "hello" in log.read_text())
    page = (await http.get(f"/dashboard/runs/{run.id}")).text
    assert "&lt;script&gt;alert(&#34;from the log&#34;)&lt;/script&gt;" in page
    assert "hello &lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "step &lt;b&gt;one&lt;/b&gt;" in page and "do &lt;u&gt;it&lt;/u&gt;" in page
    assert f'sse-connect="/dashboard/runs/{run.id}/events?offset=' in page
    assert f"/dashboard/runs/{run.id}/kill" in page
    fleet.out("stop").touch()
    await wait_for(lambda: _ended(fleet, run.id))
    ended = (await http.get(f"/dashboard/runs/{run.id}")).text
    assert "sse-connect" not in ended and "/kill" not in ended
    assert "b-succeeded" in ended and "exit code" in ended


async def _ended(fleet: DashFleet, run_id: str) -> bool:
    run = await fleet.store.get_run(run_id)
    return run is not None and run.state is RunState.SUCCEEDED


async def test_an_agent_page(fleet: DashFleet, signed_in: Client) -> None:
    http, _ = signed_in
    await fleet.trigger("hooked")
    await wait_for(lambda: _done(fleet, "hooked"))
    page = (await http.get("/dashboard/agents/hooked")).text
    assert "webhooks</dt><dd" in page and "open" in page  # config: its webhook source
    assert "task board</dt><dd" in page and "web with api" in page  # its [[tasks]] trigger
    assert 'id="runs"' in page and "b-succeeded" in page  # recent runs, with the outcome
    for action in ("trigger", "pause", "disable", "scale"):
        assert f"/dashboard/agents/hooked/{action}" in page
    assert 'sse-connect="/dashboard/events/agent?agent=hooked"' in page
    missing = await http.get("/dashboard/agents/nobody")
    assert missing.status_code == 404 and "no agent &#39;nobody&#39;" in missing.text


async def _done(fleet: DashFleet, agent: str) -> bool:
    return any(r.state.is_terminal for r in await fleet.store.list_runs(agent=agent))


async def test_queue_locks_and_calls(fleet: DashFleet, signed_in: Client) -> None:
    http, headers = signed_in
    await http.post("/dashboard/agents/hooked/pause", headers=headers)
    await fleet.trigger("hooked", prompt="first <job>")
    await fleet.trigger("hooked")
    queue = (await http.get("/dashboard/queue")).text
    assert queue.count("<tr data-item=") == 2 and "first &lt;job&gt;" in queue
    await fleet.trigger("locker")
    locker = await fleet.running("locker")
    locks = (await http.get("/dashboard/locks")).text
    assert (
        'data-key="deploy://api-prod"' in locks and locker.id in locks and "Force release" in locks
    )
    await fleet.trigger("caller")
    await http.post("/dashboard/agents/hooked/resume", headers=headers)

    async def answered() -> bool:
        calls = await fleet.store.list_calls()
        return bool(calls) and calls[0].state is CallState.COMPLETED

    await wait_for(answered)
    calls = (await http.get("/dashboard/calls")).text
    assert 'data-call="' in calls and "caller" in calls and "b-completed" in calls


async def test_webhook_receipts(fleet: DashFleet, signed_in: Client) -> None:
    http, _ = signed_in
    sent = await http.post("/webhooks/open", json={"title": "<script>x()</script>"})
    receipt_id = sent.json()["receiptId"]
    listed = (await http.get("/dashboard/receipts")).text
    assert f'data-receipt="{receipt_id}"' in listed and "hooked" in listed
    assert f"/dashboard/receipts/{receipt_id}/replay" in listed
    other = (await http.get("/dashboard/receipts?source=elsewhere")).text
    assert receipt_id not in other
    detail = (await http.get(f"/dashboard/receipts/{receipt_id}")).text
    assert "&lt;script&gt;x()&lt;/script&gt;" in detail and "<script>x()" not in detail
    assert "content-type" in detail  # the headers as received
    missing = await http.get("/dashboard/receipts/wh_nope")
    assert missing.status_code == 404


async def test_a_missing_run(signed_in: Client) -> None:
    http, _ = signed_in
    answer = await http.get("/dashboard/runs/dev-000000000000")
    assert answer.status_code == 404 and "There is no run" in answer.text
    stream = await http.get("/dashboard/runs/dev-000000000000/events")
    assert stream.status_code == 404
