"""A lock request of a run another process started: who the run is is read from the store
once, whether it is live on every request (by the lock call itself), so an ended run is
refused at once, with the answers it always had."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from corral.gateway.app import create_agent_app
from corral.scheduler.agentlink import AgentLink, hash_secret
from corral.store import NewRun, RunState, Store, TriggerKind
from tests.scheduler.helpers import write_project


async def _post(app: Any, path: str, secret: str, body: dict[str, Any]) -> tuple[int, Any]:
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
            (b"authorization", f"Bearer {secret}".encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])


async def test_a_foreign_runs_lock_requests_read_its_secret_once_and_its_end_at_once(
    tmp_path: Path, store: Store
) -> None:
    project = write_project(tmp_path / "p", {"dev": {"command": "true"}})
    run = await store.create_run(NewRun(agent="dev", trigger=TriggerKind.MANUAL))
    other = await store.create_run(NewRun(agent="dev", trigger=TriggerKind.MANUAL))
    secret, other_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await store.set_run_secret(run.id, hash_secret(secret))
    await store.set_run_secret(other.id, hash_secret(other_secret))
    reads: list[str] = []
    read_secret = store.run_for_secret

    async def counted(digest: str) -> Any:
        reads.append(digest)
        return await read_secret(digest)

    store.run_for_secret = counted  # type: ignore[method-assign]
    app = create_agent_app(project, store, AgentLink("http://127.0.0.1:1"))
    key = {"key": "db://k"}

    assert (await _post(app, "/agent/locks/acquire", secret, key))[0] == 200
    for _ in range(3):
        assert (await _post(app, "/agent/locks/heartbeat", secret, key))[0] == 200
        assert (await _post(app, "/agent/locks/acquire", secret, key))[0] == 200
    assert (await _post(app, "/agent/locks/release", secret, key))[0] == 200
    assert (await _post(app, "/agent/locks/acquire", secret, key))[0] == 200
    assert len(reads) == 1  # the first request only

    # A refusal that is not about the run is answered as ever, after one read.
    held = await _post(app, "/agent/locks/acquire", other_secret, key)
    assert held[0] == 409 and held[1]["holder"] == run.id
    assert (await _post(app, "/agent/locks/release", other_secret, key))[0] == 409
    assert len(reads) == 3

    # The run ends (in another process, as far as this gateway knows): refused at once.
    await store.finish_run(run.id, state=RunState.SUCCEEDED, exit_code=0)
    refused = {"ok": False, "error": "invalid run secret"}
    assert await _post(app, "/agent/locks/acquire", secret, key) == (403, refused)
    assert await _post(app, "/agent/locks/release", secret, key) == (403, refused)
    status, lost = await _post(app, "/agent/locks/heartbeat", secret, key)
    assert status == 410 and lost["reason"] == "lock lost" and "has ended" in lost["error"]
    too_long = {"key": "db://" + "x" * 70_000}  # over the cap: refused before it is read
    assert await _post(app, "/agent/locks/acquire", secret, too_long) == (403, refused)
    assert (await _post(app, "/agent/locks/acquire", other_secret, too_long))[0] == 413
    # and the other run takes the key its end released
    assert (await _post(app, "/agent/locks/acquire", other_secret, key))[0] == 200


async def test_an_ended_foreign_run_is_refused_on_its_first_request_too(
    tmp_path: Path, store: Store
) -> None:
    project = write_project(tmp_path / "p", {"dev": {"command": "true"}})
    run = await store.create_run(NewRun(agent="dev", trigger=TriggerKind.MANUAL))
    secret = secrets.token_urlsafe(32)
    await store.set_run_secret(run.id, hash_secret(secret))
    await store.finish_run(run.id, state=RunState.FAILED, exit_code=1)
    app = create_agent_app(project, store, AgentLink("http://127.0.0.1:1"))
    refused = (403, {"ok": False, "error": "invalid run secret"})
    assert await _post(app, "/agent/locks/acquire", secret, {"key": "db://k"}) == refused
    status, _ = await _post(app, "/agent/locks/heartbeat", secret, {"key": "db://k"})
    assert status == 410
