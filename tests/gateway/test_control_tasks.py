"""The task board over the control API, against a running gateway and scheduler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.store import Store
from tests.gateway.fleet import TOKEN, Fleet, running_fleet

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def fleet(tmp_path: Path, store: Store) -> AsyncIterator[tuple[Fleet, httpx.AsyncClient]]:
    async with running_fleet(tmp_path / "p", store, {"dev": {"command": "true"}}) as f:
        async with httpx.AsyncClient(base_url=f.url, headers=AUTH, timeout=30) as http:
            yield f, http


async def test_add_list_show_edit_cancel(fleet: tuple[Fleet, httpx.AsyncClient]) -> None:
    f, http = fleet
    tasks = [
        {"id": "A", "project": "web", "title": "first", "priority": 9, "labels": ["api"]},
        {"id": "B", "project": "web", "title": "second", "requires": ["A"]},
    ]
    added = await http.post("/control/tasks", json={"tasks": tasks})
    assert added.status_code == 200, added.text
    assert [t["id"] for t in added.json()["tasks"]] == ["A", "B"]
    listed = (await http.get("/control/tasks", params={"label": "api"})).json()
    assert [t["id"] for t in listed["tasks"]] == ["A"]
    shown = (await http.get("/control/tasks/web/A")).json()["task"]
    assert shown["blocks"] == ["B"] and shown["history"][0]["actor"] == "token:env"
    edited = await http.patch("/control/tasks/web/B", json={"priority": 3, "labels": ["ui"]})
    assert edited.status_code == 200 and edited.json()["task"]["labels"] == ["ui"]
    cycle = await http.patch("/control/tasks/web/A", json={"requires": ["B"]})
    assert cycle.status_code == 400 and "depend on itself" in cycle.json()["error"]
    cancelled = await http.post("/control/tasks/web/B/cancel")
    assert cancelled.json()["task"]["status"] == "cancelled"
    again = await http.post("/control/tasks/web/B/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]
    missing = await http.get("/control/tasks/web/Z")
    assert missing.status_code == 404 and "no task 'Z'" in missing.json()["error"]
    duplicate = await http.post("/control/tasks", json={"tasks": tasks[:1]})
    assert duplicate.status_code == 409 and "already on the board" in duplicate.json()["error"]
    bad = await http.post(
        "/control/tasks", json={"tasks": [{"id": "C", "project": "web", "title": "x", "prio": 1}]}
    )
    assert bad.status_code == 422 and "prio" in bad.text
    assert (await f.store.get_task("web", "C")) is None


async def test_the_board_needs_an_operator_token(fleet: tuple[Fleet, httpx.AsyncClient]) -> None:
    f, _ = fleet
    async with httpx.AsyncClient(base_url=f.url) as anonymous:
        assert (await anonymous.get("/control/tasks")).status_code == 401
