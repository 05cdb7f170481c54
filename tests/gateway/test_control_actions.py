"""Every operator action over real HTTP against a running gateway and scheduler: its
effect in the store, its audit entry, and its refusals."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis

from corral.engine.token import hash_token, new_token
from corral.store import ItemState, RunState, Store
from tests.gateway.fleet import TOKEN, Fleet, running_fleet
from tests.scheduler.helpers import wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ACTOR = "token:env"  # the fleet's token is accepted as $CORRAL_OPERATOR_TOKEN's
KEY = "repo://acme/app/deploy"
# "hooks" takes unsigned deliveries; "locked" has no secret, so it refuses every one.
HOOKS = """
[webhooks.hooks]
type = "generic"
allowUnsigned = true

[webhooks.locked]
type = "generic"
"""


@pytest.fixture
async def fleet(tmp_path: Path, store: Store) -> AsyncIterator[tuple[Fleet, httpx.AsyncClient]]:
    agents: dict[str, dict[str, object]] = {
        "dev": {"scale": 2, "command": "echo hi"},
        "sleeper": {"command": "sleep 30"},
        "holder": {"command": f'rlock "{KEY}" > /dev/null; touch "$OUT/holding"; sleep 30'},
        "hooked": {"command": "true"},
    }
    tables = {"hooked": '[[webhooks]]\nsource = "hooks"\n'}
    async with running_fleet(tmp_path / "p", store, agents, HOOKS, tables) as f:
        async with httpx.AsyncClient(base_url=f.url, headers=AUTH, timeout=30) as http:
            yield f, http


async def audit(store: Store) -> list[tuple[str, str, str]]:
    return [(e.actor, e.action, e.subject) for e in await store.list_audit()]


async def agent(store: Store, name: str) -> Any:
    return next(a for a in await store.agent_states() if a.agent == name)


async def test_trigger_queues_a_manual_run(fleet: tuple[Fleet, httpx.AsyncClient]) -> None:
    f, http = fleet
    response = await http.post("/control/runs", json={"agent": "dev", "prompt": "go"})
    assert response.status_code == 202, response.text
    item_id = response.json()["item"]["id"]
    [run] = await f.finished("dev", 1)
    assert run.item_id == item_id and run.state is RunState.SUCCEEDED
    assert run.prompt == "go"
    [entry] = await f.store.list_audit()
    assert (entry.actor, entry.action, entry.subject) == (ACTOR, "run.trigger", "dev")
    assert entry.detail == {"item": item_id, "state": "queued"}
    unknown = await http.post("/control/runs", json={"agent": "nobody"})
    assert unknown.status_code == 404 and unknown.json()["ok"] is False
    assert "unknown agent 'nobody'" in unknown.json()["error"]


async def test_pause_and_resume_the_project(fleet: tuple[Fleet, httpx.AsyncClient]) -> None:
    f, http = fleet
    paused = await http.post("/control/pause")
    assert paused.json() == {"ok": True, "paused": True}
    assert (await f.store.project_state()).paused
    await http.post("/control/runs", json={"agent": "dev"})
    queued = await http.get("/control/status")
    assert queued.json()["paused"] is True
    assert [a["queued"] for a in queued.json()["agents"] if a["agent"] == "dev"] == [1]
    resumed = await http.post("/control/resume")
    assert resumed.json() == {"ok": True, "paused": False}
    assert not (await f.store.project_state()).paused
    await f.finished("dev", 1)  # dispatched once resumed
    assert (await audit(f.store))[0] == (ACTOR, "project.resume", "project")
    assert (ACTOR, "project.pause", "project") in await audit(f.store)


async def test_pause_resume_enable_disable_an_agent(
    fleet: tuple[Fleet, httpx.AsyncClient],
) -> None:
    f, http = fleet
    answer = await http.post("/control/agents/dev/pause")
    assert answer.status_code == 200 and answer.json()["agent"]["paused"] is True
    assert (await agent(f.store, "dev")).paused
    answer = await http.post("/control/agents/dev/resume")
    assert answer.json()["agent"]["paused"] is False and not (await agent(f.store, "dev")).paused

    answer = await http.post("/control/agents/dev/disable")
    assert answer.json() == {
        "ok": True,
        "agent": {
            "agent": "dev",
            "scale": 2,
            "paused": False,
            "enabled": False,
            "queued": 0,
            "running": 0,
        },
    }
    refused = await http.post("/control/runs", json={"agent": "dev"})
    assert refused.status_code == 409 and refused.json()["item"]["state"] == "rejected"
    answer = await http.post("/control/agents/dev/enable")
    assert answer.json()["agent"]["enabled"] is True and (await agent(f.store, "dev")).enabled
    assert [a for a in await audit(f.store) if a[1] != "run.trigger"] == [
        (ACTOR, "agent.enable", "dev"),
        (ACTOR, "agent.disable", "dev"),
        (ACTOR, "agent.resume", "dev"),
        (ACTOR, "agent.pause", "dev"),
    ]
    for action in ("pause", "resume", "enable", "disable"):
        missing = await http.post(f"/control/agents/nobody/{action}")
        assert missing.status_code == 404, action
        assert missing.json()["ok"] is False and "nobody" in missing.json()["error"]


async def test_scale_is_live_and_saved(fleet: tuple[Fleet, httpx.AsyncClient]) -> None:
    f, http = fleet
    answer = await http.put("/control/agents/dev/scale", json={"scale": 5})
    assert answer.status_code == 200 and answer.json()["agent"]["scale"] == 5
    assert (await agent(f.store, "dev")).scale == 5
    config = (f.root / "agents" / "dev" / "config.toml").read_text()
    assert "scale = 5" in config and "[harness]" in config
    [entry] = await f.store.list_audit()
    assert (entry.actor, entry.action, entry.subject, entry.detail) == (
        ACTOR,
        "agent.scale",
        "dev",
        {"scale": 5, "was": 2},
    )
    for bad in ({"scale": -1}, {"scale": "many"}, {}, {"scale": 10**12}):
        refused = await http.put("/control/agents/dev/scale", json=bad)
        assert refused.status_code == 422, bad
        assert refused.json()["ok"] is False and "scale" in refused.json()["error"]
    missing = await http.put("/control/agents/nobody/scale", json={"scale": 1})
    assert missing.status_code == 404
    assert (await agent(f.store, "dev")).scale == 5


async def test_kill_a_running_run(fleet: tuple[Fleet, httpx.AsyncClient]) -> None:
    f, http = fleet
    await f.trigger("sleeper")

    async def running() -> bool:
        return bool(await f.store.list_runs(agent="sleeper", states=[RunState.RUNNING]))

    await wait_for(running)
    [run] = await f.store.list_runs(agent="sleeper")
    answer = await http.post(f"/control/runs/{run.id}/kill")
    assert answer.status_code == 202 and answer.json()["run"]["id"] == run.id
    [ended] = await f.finished("sleeper", 1)
    assert ended.state is RunState.KILLED
    assert (await audit(f.store))[0] == (ACTOR, "run.kill", run.id)
    again = await http.post(f"/control/runs/{run.id}/kill")
    assert again.status_code == 409 and "already ended as killed" in again.json()["error"]
    missing = await http.post("/control/runs/sleeper-000000000000/kill")
    assert missing.status_code == 404 and missing.json()["ok"] is False


async def test_list_and_force_release_locks(fleet: tuple[Fleet, httpx.AsyncClient]) -> None:
    f, http = fleet
    await f.trigger("holder")
    await wait_for(lambda: f.out("holding").exists())
    [run] = await f.store.list_runs(agent="holder")
    listed = (await http.get("/control/locks")).json()
    assert listed["ok"] is True
    [lock] = listed["locks"]
    assert (lock["key"], lock["holder"], lock["agent"], lock["waiting"]) == (
        KEY,
        run.id,
        "holder",
        [],
    )
    released = await http.delete(f"/control/locks/{KEY}")  # a key with slashes: a path
    assert released.status_code == 200, released.text
    assert released.json()["lock"]["holder"] == run.id
    assert await f.store.list_locks() == []
    [entry] = await f.store.list_audit()
    assert (entry.actor, entry.action, entry.subject) == (ACTOR, "lock.force_release", KEY)
    assert entry.detail is not None and entry.detail["holder"] == run.id
    missing = await http.delete(f"/control/locks/{KEY}")
    assert missing.status_code == 404 and "no lock on" in missing.json()["error"]
    await http.post(f"/control/runs/{run.id}/kill")


async def test_replay_a_webhook_receipt(fleet: tuple[Fleet, httpx.AsyncClient]) -> None:
    f, http = fleet
    body = json.dumps({"event": "deploy", "env": "prod"}).encode()
    headers = {"X-Delivery-Id": "d1", "Content-Type": "application/json"}
    delivered = await http.post("/webhooks/hooks", content=body, headers=headers)
    assert delivered.status_code == 202, delivered.text
    await f.finished("hooked", 1)
    [original] = await f.store.list_receipts()
    answer = await http.post(f"/control/webhooks/receipts/{original.id}/replay")
    assert answer.status_code == 202, answer.text
    replayed = answer.json()
    assert replayed["receipt"]["replayOf"] == original.id
    assert [item["agent"] for item in replayed["items"]] == ["hooked"]
    runs = await f.finished("hooked", 2)  # the replay ran the agent again
    assert len(runs) == 2
    [entry] = await f.store.list_audit()
    assert (entry.actor, entry.action, entry.subject) == (ACTOR, "webhook.replay", original.id)
    assert entry.detail == {"receipt": replayed["receipt"]["id"], "items": [runs[1].item_id]}

    forged = await http.post("/webhooks/locked", content=body)
    assert forged.status_code == 401
    refused = next(r for r in await f.store.list_receipts() if not r.verified)
    answer = await http.post(f"/control/webhooks/receipts/{refused.id}/replay")
    assert answer.status_code == 409 and "failed verification" in answer.json()["error"]
    missing = await http.post("/control/webhooks/receipts/wh_0000000000000000/replay")
    assert missing.status_code == 404


async def test_list_runs_and_the_audit_log(fleet: tuple[Fleet, httpx.AsyncClient]) -> None:
    f, http = fleet
    for _ in range(3):
        await f.trigger("dev")
    await f.trigger("hooked")
    await f.finished("dev", 3)
    await f.finished("hooked", 1)
    runs = (await http.get("/control/runs", params={"agent": "dev", "limit": 2})).json()
    assert runs["ok"] is True and [r["agent"] for r in runs["runs"]] == ["dev", "dev"]
    every = (await http.get("/control/runs", params={"state": "succeeded"})).json()["runs"]
    assert sorted(r["agent"] for r in every) == ["dev", "dev", "dev", "hooked"]
    none = (await http.get("/control/runs", params={"state": ["failed", "killed"]})).json()
    assert none["runs"] == []
    bad = await http.get("/control/runs", params={"state": "sleeping"})
    assert bad.status_code == 422 and bad.json()["ok"] is False

    await http.post("/control/pause")
    await http.post("/control/resume")
    entries = (await http.get("/control/audit", params={"limit": 1})).json()["entries"]
    assert [(e["actor"], e["action"], e["subject"]) for e in entries] == [
        (ACTOR, "project.resume", "project")
    ]
    assert entries[0]["at"] is not None


async def test_a_store_token_acts_under_its_own_name(
    fleet: tuple[Fleet, httpx.AsyncClient],
) -> None:
    f, http = fleet
    token = new_token()
    await f.store.create_operator_token("alice", hash_token(token), actor="cli:test@host")
    answer = await http.post(
        "/control/agents/dev/pause", headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200
    assert (await audit(f.store))[0] == ("token:alice", "agent.pause", "dev")
    [listed] = await f.store.list_operator_tokens()
    assert listed.last_used_at is not None


async def test_every_control_route_needs_a_token(
    fleet: tuple[Fleet, httpx.AsyncClient],
) -> None:
    f, _ = fleet
    async with httpx.AsyncClient(base_url=f.url) as anonymous:
        document = (await anonymous.get("/control/openapi.json")).json()
        calls = [
            (method, path)
            for path, operations in document["paths"].items()
            if path.startswith("/control/") or path == "/metrics"
            for method in operations
        ]
        assert len(calls) >= 17
        for method, path in calls:
            concrete = path.replace("{key}", "k").replace("{agent}", "dev")
            concrete = concrete.replace("{run_id}", "r").replace("{receipt_id}", "w")
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                response = await anonymous.request(method, concrete, headers=headers, json={})
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json()["ok"] is False
    assert await f.store.list_audit() == []
    assert not (await f.store.project_state()).paused
    assert [i for i in await f.store.list_items() if i.state is ItemState.QUEUED] == []


async def test_the_operator_openapi_document_validates(
    fleet: tuple[Fleet, httpx.AsyncClient],
) -> None:
    f, _ = fleet
    async with httpx.AsyncClient(base_url=f.url) as anonymous:
        document = (await anonymous.get("/control/openapi.json")).json()
        whole = (await anonymous.get("/openapi.json")).json()
    schemathesis.openapi.from_dict(document).validate()
    schemathesis.openapi.from_dict(whole).validate()
    broken = copy.deepcopy(document)
    broken["paths"]["/control/runs"]["post"]["responses"] = "none"
    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(broken).validate()

    paths = set(document["paths"])
    assert {
        "/control/runs",
        "/control/runs/{run_id}/kill",
        "/control/agents/{agent}/scale",
        "/control/locks/{key}",
        "/control/webhooks/receipts/{receipt_id}/replay",
        "/control/audit",
        "/metrics",
        "/health",
    } <= paths
    assert not [p for p in paths if p.startswith(("/agent", "/webhooks", "/dashboard"))]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            guarded = operation.get("security") == [{"operatorToken": []}]
            assert guarded == (path != "/health"), (method, path)
    assert document["components"]["securitySchemes"] == {
        "operatorToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "An operator token: `corral token create NAME` makes one.",
        }
    }
