"""Mixed versions in one fleet: a runner of this version asks for work with hashes of
run secrets made ahead (``secretHashes``, one request less per run); a control plane of
the version before refused that field (422, as it refuses any field it does not know).
The runner then asks again without it, and keeps doing so for a while (its runs' secrets
are set with a request each, as that version expects); a runner of the version before
(no ``secretHashes``) is served by this control plane as ever."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from corral.bundles import pack
from corral.runner.agent import Runner, RunnerSettings
from tests.served import ServedGateway, serve_gateway

OPERATOR = "versions-operator-token"
#: What a control plane without ``secretHashes`` answered a body naming it (its model
#: forbids fields it does not know; the answer is the runner API's 422).
_REFUSED = {"ok": False, "error": "bad request: secretHashes: Extra inputs are not permitted"}


class OlderWork:
    """The control plane of the version before, for ``POST /fleet/v1/work``: a body with
    ``secretHashes`` is refused 422 as that version refused it; the rest goes on to
    this version's gateway, which serves a body without the field as that one did."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/fleet/v1/work":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if "secretHashes" in json.loads(body or b"{}"):
            OLDER.append(self)
            self.refused += 1
            data = json.dumps(_REFUSED).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(data)),
            ]
            await send({"type": "http.response.start", "status": 422, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        sent = False

        async def again() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, again, send)


#: The OlderWork layer of the served gateway (the app makes it when it first serves).
OLDER: list[OlderWork] = []


def _older(app: FastAPI) -> None:
    app.add_middleware(OlderWork)


def _gateway(root: Path, older: bool) -> Iterator[ServedGateway]:
    agents: dict[str, dict[str, object]] = {"remote": {"command": "true", "runsOn": [], "scale": 4}}
    adjust = _older if older else None
    with serve_gateway(root, agents, operator=OPERATOR, adjust=adjust) as gateway:
        operator = {"Authorization": f"Bearer {OPERATOR}"}
        pushed = httpx.post(
            f"{gateway.url}/control/bundles",
            content=pack(root).data,
            headers=operator | {"Content-Type": "application/x-tar"},
            timeout=60,
        )
        assert pushed.status_code == 200, pushed.text
        gateway.call(gateway.scheduler.bundles.check)
        yield gateway


@pytest.fixture
def older(tmp_path: Path) -> Iterator[ServedGateway]:
    OLDER.clear()
    yield from _gateway(tmp_path / "p", older=True)


@pytest.fixture
def current(tmp_path: Path) -> Iterator[ServedGateway]:
    yield from _gateway(tmp_path / "p", older=False)


def _join(gateway: ServedGateway, tmp_path: Path) -> Runner:
    operator = {"Authorization": f"Bearer {OPERATOR}"}
    made = httpx.post(f"{gateway.url}/control/fleet/tokens", json={}, headers=operator)
    assert made.status_code == 201, made.text
    body = {"token": made.json()["token"], "name": "r1", "hostname": "r1.example", "slots": 4}
    joined = httpx.post(f"{gateway.url}/fleet/v1/join", json=body, timeout=30)
    assert joined.status_code == 201, joined.text
    settings = RunnerSettings(
        urls=[gateway.url],
        runner_id=joined.json()["runnerId"],
        credential=joined.json()["credential"],
        name="r1",
        work_dir=tmp_path / "work",
        slots=4,
    )
    return Runner(settings)


def _queue(gateway: ServedGateway) -> None:
    operator = {"Authorization": f"Bearer {OPERATOR}"}
    queued = httpx.post(f"{gateway.url}/control/runs", json={"agent": "remote"}, headers=operator)
    assert queued.status_code == 202, queued.text


async def test_a_runner_falls_back_when_the_control_plane_refuses_secret_hashes(
    older: ServedGateway, tmp_path: Path
) -> None:
    runner = _join(older, tmp_path)
    try:
        _queue(older)
        answer, offered = await runner._ask_for_work(1)
        [given] = answer["runs"]
        assert offered == []  # its secret is set with a request of its own
        assert given.get("secretHash") is None
        [layer] = set(OLDER)
        assert layer.refused == 1
        # the next requests offer no hashes: no more refusals
        _queue(older)
        answer, offered = await runner._ask_for_work(1)
        assert len(answer["runs"]) == 1 and offered == []
        assert layer.refused == 1
        # after the window it offers them again (an upgraded control plane takes them)
        runner._plain_work_until = 0.0
        _queue(older)
        answer, offered = await runner._ask_for_work(1)
        assert len(answer["runs"]) == 1 and offered == []
        assert layer.refused == 2
    finally:
        await runner.client.close()


async def test_this_control_plane_takes_both_versions_of_runners(
    current: ServedGateway, tmp_path: Path
) -> None:
    runner = _join(current, tmp_path)
    try:
        _queue(current)
        answer, offered = await runner._ask_for_work(1)
        [given] = answer["runs"]
        assert [digest for digest, _ in offered] == [given["secretHash"]]
        # a runner of the version before: no secretHashes
        _queue(current)
        plain = await runner.client.call("POST", "/fleet/v1/work", json={"free": 1, "wait": 5})
        [given] = plain["runs"]
        assert given.get("secretHash") is None
    finally:
        await runner.client.close()
