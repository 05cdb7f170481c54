"""The gateway's control API, in process over ASGI, against a real scheduler and store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral import __version__
from corral.engine.token import operator_token
from corral.gateway.app import create_app
from corral.scheduler.service import Scheduler, SchedulerOptions
from corral.store import ItemState, Store
from tests.scheduler.helpers import write_project

TOKEN = "s3cret-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(
    tmp_path: Path, store: Store
) -> AsyncIterator[tuple[httpx.AsyncClient, Scheduler]]:
    project = write_project(
        tmp_path / "p",
        {"dev": {"scale": 2, "command": "echo hi"}, "off": {"scale": 0, "command": "true"}},
    )
    scheduler = Scheduler(project, store, SchedulerOptions(poll_interval=0.05))
    await scheduler.start()
    transport = httpx.ASGITransport(app=create_app(scheduler, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield http, scheduler


async def test_health_needs_no_token(client: tuple[httpx.AsyncClient, Scheduler]) -> None:
    http, scheduler = client
    response = await http.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "ok": True,
        "scheduler": scheduler.id,
        "draining": False,
        "version": __version__,
    }


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
async def test_control_needs_the_operator_token(
    client: tuple[httpx.AsyncClient, Scheduler], headers: dict[str, str]
) -> None:
    http, scheduler = client
    response = await http.post("/control/runs", json={"agent": "dev"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert await scheduler.store.list_items() == []  # nothing changed


async def test_queue_a_run_and_read_it_back(client: tuple[httpx.AsyncClient, Scheduler]) -> None:
    http, scheduler = client
    response = await http.post("/control/runs", json={"agent": "dev", "prompt": "go"}, headers=AUTH)
    assert response.status_code == 202
    body = response.json()
    assert body["ok"] is True and body["item"]["state"] == "queued" and body["dropped"] == []
    [claim] = await scheduler.store.claim("t", lease_seconds=30, limit=5)
    run = await http.get(f"/control/runs/{claim.run.id}", headers=AUTH)
    assert run.status_code == 200
    assert run.json()["agent"] == "dev" and run.json()["itemId"] == body["item"]["id"]
    missing = await http.get("/control/runs/dev-000000000000", headers=AUTH)
    assert missing.status_code == 404


async def test_a_refused_run_says_why(client: tuple[httpx.AsyncClient, Scheduler]) -> None:
    http, scheduler = client
    response = await http.post("/control/runs", json={"agent": "off"}, headers=AUTH)
    assert response.status_code == 409
    body = response.json()
    assert body["ok"] is False and "scale = 0" in body["error"]
    [item] = await scheduler.store.list_items()
    assert item.state is ItemState.REJECTED


async def test_status_lists_the_agents(client: tuple[httpx.AsyncClient, Scheduler]) -> None:
    http, _ = client
    await http.post("/control/runs", json={"agent": "dev"}, headers=AUTH)
    body = (await http.get("/control/status", headers=AUTH)).json()
    agents = {a["agent"]: a for a in body["agents"]}
    assert agents["dev"] == {
        "agent": "dev",
        "scale": 2,
        "paused": False,
        "enabled": True,
        "queued": 1,
        "running": 0,
        "state": "idle",
        "triggers": ["manual", "call"],
        "spentToday": 0.0,
        "dailyCap": None,
        "runsOn": None,
    }
    assert body["paused"] is False and body["scaleCap"] is None and body["runLocally"] is True


async def test_invalid_bodies_are_422(client: tuple[httpx.AsyncClient, Scheduler]) -> None:
    http, _ = client
    for bad in [{}, {"agent": ""}, {"agent": 5}, {"agent": "dev", "prompt": ["x"]}]:
        response = await http.post("/control/runs", json=bad, headers=AUTH)
        assert response.status_code == 422, bad


def test_the_operator_token_file_is_private_and_stable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CORRAL_OPERATOR_TOKEN", raising=False)
    first = operator_token(tmp_path)
    assert operator_token(tmp_path) == first and len(first) >= 40
    assert (tmp_path / ".corral" / "operator-token").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("CORRAL_OPERATOR_TOKEN", "from-env")
    assert operator_token(tmp_path) == "from-env"
