"""``al-shutdown`` end to end: a real run, the installed command, the real gateway, both
stores. The run asks to be killed now (Action Llama's agents are told to when they detect
credential exfiltration): it ends killed with its reason, at once, without its post hook;
its locks go with it; the request is logged as an error and audited."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from corral.store import RunState, Store
from tests.gateway.fleet import running_fleet
from tests.scheduler.helpers import wait_for

KEY = "github://acme/app/issues/42"


async def test_al_shutdown_kills_the_run_now_with_its_reason(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "p"
    script = (
        f'rlock "{KEY}" > /dev/null || exit 3; '
        'al-shutdown "exfiltration detected" > "$OUT/shutdown.json"; '
        'echo "$?" > "$OUT/shutdown.code"; '
        # Killed before it gets here; were it not, the run would end well after the test.
        'sleep 30; touch "$OUT/survived"'
    )
    tables = {"dev": f'\n[hooks]\npost = ["touch {root / "out" / "post-hook"}"]\n'}
    caplog.set_level(logging.ERROR, logger="corral")
    async with running_fleet(root, store, {"dev": {"command": script}}, tables=tables) as f:
        await f.trigger("dev")
        (run,) = await f.finished("dev", 1, timeout=15)
    assert run.state is RunState.KILLED
    assert run.error == "al-shutdown: exfiltration detected"
    assert run.duration is not None and run.duration.total_seconds() < 10
    assert json.loads(f.out("shutdown.json").read_text()) == {
        "ok": True,
        "killed": True,
        "runId": run.id,
    }
    assert f.out("shutdown.code").read_text().strip() == "0"
    assert not f.out("survived").exists()
    assert not f.out("post-hook").exists()  # killed: a stop means stop
    assert await store.list_locks() == []
    [entry] = [e for e in await store.list_audit() if e.action == "run.shutdown"]
    assert (entry.actor, entry.subject) == (f"run:{run.id}", run.id)
    assert entry.detail == {"agent": "dev", "reason": "exfiltration detected"}
    assert any(
        record.levelno == logging.ERROR and "exfiltration detected" in record.getMessage()
        for record in caplog.records
    )


async def test_al_shutdown_without_a_reason_and_with_a_secret_in_it(
    tmp_path: Path, store: Store
) -> None:
    agents = {
        "plain": {"command": 'al-shutdown > "$OUT/plain.json"; sleep 30'},
        "leaky": {"command": 'al-shutdown "saw $CORRAL_RUN_SECRET in a comment"; sleep 30'},
    }
    async with running_fleet(tmp_path / "p", store, agents) as f:
        await f.trigger("plain")
        await f.trigger("leaky")
        (plain,) = await f.finished("plain", 1, timeout=15)
        (leaky,) = await f.finished("leaky", 1, timeout=15)
    assert plain.state is RunState.KILLED
    assert plain.error == "al-shutdown: agent requested shutdown"  # Action Llama's words
    assert leaky.state is RunState.KILLED
    assert leaky.error == "al-shutdown: saw [REDACTED] in a comment"
    reasons = {
        e.subject: e.detail["reason"]
        for e in await store.list_audit()
        if e.action == "run.shutdown" and e.detail is not None
    }
    assert reasons == {
        plain.id: "agent requested shutdown",
        leaky.id: "saw [REDACTED] in a comment",
    }


async def test_al_shutdown_with_a_wrong_secret_kills_nothing(tmp_path: Path, store: Store) -> None:
    script = (
        'CORRAL_RUN_SECRET=forged al-shutdown "not mine" > "$OUT/forged.json"; '
        'echo "$?" > "$OUT/forged.code"'
    )
    async with running_fleet(tmp_path / "p", store, {"dev": {"command": script}}) as f:
        await f.trigger("dev")
        (run,) = await f.finished("dev", 1)
    assert run.state is RunState.SUCCEEDED
    assert json.loads(f.out("forged.json").read_text()) == {
        "ok": False,
        "error": "invalid run secret",
    }
    assert f.out("forged.code").read_text().strip() == "3"
    assert [e for e in await store.list_audit() if e.action == "run.shutdown"] == []


async def test_al_shutdown_of_a_run_another_process_executes_asks_its_scheduler(
    tmp_path: Path, store: Store
) -> None:
    """The gateway that hears al-shutdown does not execute the run (no ``on_shutdown``
    for it): the kill request goes through the store to the run's own scheduler."""
    script = 'touch "$OUT/started"; sleep 30'
    async with running_fleet(tmp_path / "p", store, {"dev": {"command": script}}) as f:
        await f.trigger("dev")
        await wait_for(lambda: f.out("started").exists())
        (run,) = await store.list_runs(agent="dev")
        link = f.app.state.agent_api.link
        saved, link.on_shutdown = link.on_shutdown, None
        try:
            secret = _secret_of(f.root, run.id)
            status, answer = await _post_shutdown(f.url, secret, "seen elsewhere")
        finally:
            link.on_shutdown = saved
        assert (status, answer) == (200, {"ok": True, "killed": True, "runId": run.id})
        (ended,) = await f.finished("dev", 1, timeout=15)
    assert ended.state is RunState.KILLED
    assert ended.kill_requested_at is not None


def _secret_of(root: Path, run_id: str) -> str:
    """The run's secret, read from its process's environment (as the run itself sees it)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        values = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if values.get(b"CORRAL_RUN_ID") == run_id.encode() and b"CORRAL_RUN_SECRET" in values:
            return values[b"CORRAL_RUN_SECRET"].decode()
    raise AssertionError(f"no process of run {run_id} under {root}")


async def _post_shutdown(url: str, secret: str, reason: str) -> tuple[int, object]:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/agent/shutdown",
            json={"reason": reason},
            headers={"Authorization": f"Bearer {secret}"},
        )
    return response.status_code, response.json()
