"""Bad input at the gateway's edge, in process over ASGI against a real scheduler and store:
text that is not text, a boolean given for a number, and a Host the gateway is not served
under (DNS rebinding)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.gateway.app import create_app
from corral.scheduler.service import Scheduler, SchedulerOptions
from corral.store import Store
from tests.scheduler.helpers import write_project

TOKEN = "s3cret-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@pytest.fixture
async def scheduler(tmp_path: Path, store: Store) -> AsyncIterator[Scheduler]:
    project = write_project(tmp_path / "p", {"dev": {"scale": 2, "command": "echo hi"}})
    running = Scheduler(project, store, SchedulerOptions(poll_interval=0.05))
    await running.start()
    yield running


@pytest.fixture
async def http(scheduler: Scheduler) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(scheduler, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
        yield client


# -- item 8: a lone surrogate in a control API body -----------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"agent": "\\ud800"}',
        b'{"agent": "dev", "prompt": "fix \\udc00 it"}',
        # too long as well: the 422 that echoes the input must still encode it
        b'{"agent": "' + b"x" * 70 + b'\\ud800"}',
    ],
    ids=["agent", "prompt", "echoed"],
)
async def test_a_lone_surrogate_in_a_control_body_is_422(
    http: httpx.AsyncClient, store: Store, raw: bytes
) -> None:
    response = await http.post("/control/runs", content=raw, headers=AUTH)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["ok"] is False and answer["error"]
    assert await store.list_items() == []


@pytest.mark.parametrize(
    "raw", [b'{"agent": "\xff\xfe"}', b'{"agent": "dev", "prompt": "\xed\xa0\x80"}', b"\x00"]
)
async def test_bytes_that_are_not_utf8_in_a_control_body_are_a_4xx(
    http: httpx.AsyncClient, store: Store, raw: bytes
) -> None:
    response = await http.post("/control/runs", content=raw, headers=AUTH)
    assert response.status_code in (400, 422), response.text
    answer = response.json()
    assert answer["ok"] is False and answer["error"]
    assert await store.list_items() == []


async def test_a_surrogate_pair_is_text(http: httpx.AsyncClient, store: Store) -> None:
    raw = b'{"agent": "dev", "prompt": "smile \\ud83d\\ude00"}'
    response = await http.post("/control/runs", content=raw, headers=AUTH)
    assert response.status_code == 202, response.text
    [item] = await store.list_items()
    assert item.prompt == "smile \U0001f600"


# -- item 12: a boolean is not a number ------------------------------------------------------


@pytest.mark.parametrize("value", ["true", "false"])
async def test_a_boolean_scale_is_422(
    http: httpx.AsyncClient, scheduler: Scheduler, value: str
) -> None:
    raw = f'{{"scale": {value}}}'.encode()
    response = await http.put("/control/agents/dev/scale", content=raw, headers=AUTH)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert "scale" in error and "boolean" in error
    assert scheduler.project.agents["dev"].config.scale == 2  # unchanged


async def test_a_whole_number_scale_is_taken(http: httpx.AsyncClient) -> None:
    response = await http.put("/control/agents/dev/scale", json={"scale": 3}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["agent"]["scale"] == 3


# -- item 12: the dashboard answers only under the names corral is served under -------------


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8080", "localhost.evil.example", "127.0.0.1.nip.io"]
)
async def test_the_dashboard_refuses_a_foreign_host(http: httpx.AsyncClient, host: str) -> None:
    for path in ("/dashboard/login", "/dashboard", "/dashboard/static/dashboard.js"):
        response = await http.get(path, headers={"Host": host})
        assert response.status_code == 421, (path, response.status_code)
        assert "Host" in response.text
    posted = await http.post("/dashboard/login", data={"token": TOKEN}, headers={"Host": host})
    assert posted.status_code == 421
    assert "set-cookie" not in posted.headers


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:8080", "10.1.2.3"]
)
async def test_the_dashboard_answers_its_own_names(http: httpx.AsyncClient, host: str) -> None:
    response = await http.get("/dashboard/login", headers={"Host": host})
    assert response.status_code == 200, response.text


async def test_the_dashboard_answers_the_configured_url(tmp_path: Path, store: Store) -> None:
    project = write_project(
        tmp_path / "q",
        {"dev": {"command": "true"}},
        '[gateway]\nurl = "https://corral.example.com/"\n',
    )
    scheduler = Scheduler(project, store, SchedulerOptions(poll_interval=0.05))
    await scheduler.start()
    transport = httpx.ASGITransport(app=create_app(scheduler, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
        named = await client.get("/dashboard/login", headers={"Host": "corral.example.com"})
        assert named.status_code == 200
        other = await client.get("/dashboard/login", headers={"Host": "other.example.com"})
        assert other.status_code == 421
