"""The buttons, over HTTP as htmx sends them: each changes the store through
corral.engine.actions and is recorded in the audit log as dashboard:<token name>."""

from __future__ import annotations

import httpx

from corral.store import ItemState, NewRun, RunState, Store, TriggerKind
from tests.dashboard.support import ACTOR, DashFleet
from tests.scheduler.helpers import wait_for

Client = tuple[httpx.AsyncClient, dict[str, str]]


async def audit(store: Store) -> list[tuple[str, str, str]]:
    return [(e.actor, e.action, e.subject) for e in await store.list_audit()]


async def agent_state(store: Store, name: str) -> tuple[bool, bool, int]:
    [state] = [a for a in await store.agent_states() if a.agent == name]
    return state.paused, state.enabled, state.scale


async def test_trigger_a_run(fleet: DashFleet, signed_in: Client) -> None:
    http, headers = signed_in
    answer = await http.post(
        "/dashboard/agents/hooked/trigger", data={"prompt": "  fix it  "}, headers=headers
    )
    assert answer.status_code == 200 and "Queued a run of hooked" in answer.text
    [item] = await fleet.store.list_items(agent="hooked")
    assert item.prompt == "fix it" and f"item {item.id}" in answer.text
    assert await audit(fleet.store) == [(ACTOR, "run.trigger", "hooked")]
    refused = await http.post("/dashboard/agents/off/trigger", headers=headers)
    assert refused.status_code == 409 and "scale = 0" in refused.text
    assert 'class="flash error"' in refused.text
    unknown = await http.post("/dashboard/agents/nobody/trigger", headers=headers)
    assert unknown.status_code == 404 and "unknown agent &#39;nobody&#39;" in unknown.text


async def test_pause_resume_enable_disable_scale(fleet: DashFleet, signed_in: Client) -> None:
    http, headers = signed_in
    store = fleet.store
    steps = [
        ("pause", (True, True, 2)),
        ("resume", (False, True, 2)),
        ("disable", (False, False, 2)),
        ("enable", (False, True, 2)),
    ]
    for action, expected in steps:
        answer = await http.post(f"/dashboard/agents/dev/{action}", headers=headers)
        assert answer.status_code == 200, answer.text
        assert await agent_state(store, "dev") == expected, action
    answer = await http.post("/dashboard/agents/dev/scale", data={"scale": "4"}, headers=headers)
    assert answer.status_code == 200 and "up to 4 at once" in answer.text
    assert await agent_state(store, "dev") == (False, True, 4)
    assert "scale = 4" in (fleet.root / "agents" / "dev" / "config.toml").read_text()
    for bad in ("-1", "x", ""):
        wrong = await http.post("/dashboard/agents/dev/scale", data={"scale": bad}, headers=headers)
        assert wrong.status_code == 400, bad
    assert await agent_state(store, "dev") == (False, True, 4)
    assert [a[1] for a in await audit(store)] == [
        "agent.scale",
        "agent.enable",
        "agent.disable",
        "agent.resume",
        "agent.pause",
    ]


async def test_pause_and_resume_the_project(fleet: DashFleet, signed_in: Client) -> None:
    http, headers = signed_in
    assert (await http.post("/dashboard/pause", headers=headers)).status_code == 200
    assert (await fleet.store.project_state()).paused
    await fleet.trigger("hooked")
    page = (await http.get("/dashboard")).text
    assert "b-paused" in page and "Resume project" in page
    assert (await http.post("/dashboard/resume", headers=headers)).status_code == 200
    assert not (await fleet.store.project_state()).paused

    async def ran() -> bool:
        return bool(await fleet.store.list_runs(agent="hooked"))

    await wait_for(ran)


async def test_kill_a_run(fleet: DashFleet, signed_in: Client) -> None:
    http, headers = signed_in
    await fleet.trigger("dev")
    run = await fleet.running("dev")
    answer = await http.post(f"/dashboard/runs/{run.id}/kill", headers=headers)
    assert answer.status_code == 200 and f"Asked run {run.id} to stop" in answer.text

    async def killed() -> bool:
        current = await fleet.store.get_run(run.id)
        return current is not None and current.state is RunState.KILLED

    await wait_for(killed)
    assert (ACTOR, "run.kill", run.id) in await audit(fleet.store)
    again = await http.post(f"/dashboard/runs/{run.id}/kill", headers=headers)
    assert again.status_code == 409
    missing = await http.post("/dashboard/runs/dev-000000000000/kill", headers=headers)
    assert missing.status_code == 404


async def test_force_release_a_lock(fleet: DashFleet, signed_in: Client) -> None:
    http, headers = signed_in
    await fleet.trigger("locker")
    run = await fleet.running("locker")
    answer = await http.post(
        "/dashboard/locks/release", data={"key": "deploy://api-prod"}, headers=headers
    )
    assert answer.status_code == 200 and f"run {run.id} held it" in answer.text
    assert await fleet.store.list_locks() == []
    assert (ACTOR, "lock.force_release", "deploy://api-prod") in await audit(fleet.store)
    again = await http.post(
        "/dashboard/locks/release", data={"key": "deploy://api-prod"}, headers=headers
    )
    assert again.status_code == 404


async def test_replay_a_webhook_delivery(fleet: DashFleet, signed_in: Client) -> None:
    http, headers = signed_in
    sent = await http.post("/webhooks/open", json={"n": 1})
    original = sent.json()["receiptId"]
    answer = await http.post(f"/dashboard/receipts/{original}/replay", headers=headers)
    assert answer.status_code == 200, answer.text
    assert f"Replayed {original} as" in answer.text and "hooked" in answer.text
    newest = (await fleet.store.list_receipts())[0]
    assert newest.replay_of == original
    items = await fleet.store.list_items(agent="hooked", limit=10)
    assert len(items) == 2 and all(i.state is not ItemState.REJECTED for i in items)
    assert (ACTOR, "webhook.replay", original) in await audit(fleet.store)
    missing = await http.post("/dashboard/receipts/wh_nope/replay", headers=headers)
    assert missing.status_code == 404


async def test_a_scale_that_is_not_a_small_whole_number_is_refused(
    fleet: DashFleet, signed_in: Client
) -> None:
    http, headers = signed_in
    config = (fleet.root / "agents" / "dev" / "config.toml").read_text()
    for bad in ("²", "99999999999", "-1", "2.5", "10001"):
        answer = await http.post(
            "/dashboard/agents/dev/scale", data={"scale": bad}, headers=headers
        )
        assert answer.status_code == 400, (bad, answer.text)
    assert (fleet.root / "agents" / "dev" / "config.toml").read_text() == config


async def test_a_run_stream_ignores_a_resume_id_that_is_not_a_number(
    fleet: DashFleet, signed_in: Client
) -> None:
    http, headers = signed_in
    run = await fleet.store.create_run(NewRun(agent="dev", trigger=TriggerKind.MANUAL))
    stream = {**headers, "Last-Event-ID": "\xb2".encode("latin-1")}
    async with http.stream("GET", f"/dashboard/runs/{run.id}/events", headers=stream) as answer:
        assert answer.status_code == 200
