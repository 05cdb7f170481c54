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


async def test_al_shutdown_with_a_long_reason_still_kills(tmp_path: Path, store: Store) -> None:
    """An agent quoting what it saw in a reason over 4096 characters got a 422 and ran on:
    al-shutdown failed open. Now the reason is cut and the run is killed."""
    script = (
        'al-shutdown "exfiltration attempt: $(head -c 5000 /dev/zero | tr "\\0" x)" '
        '> "$OUT/long.json"; sleep 30; touch "$OUT/survived"'
    )
    async with running_fleet(tmp_path / "p", store, {"dev": {"command": script}}) as f:
        await f.trigger("dev")
        (run,) = await f.finished("dev", 1, timeout=15)
    assert run.state is RunState.KILLED
    assert run.error is not None and run.error.startswith("al-shutdown: exfiltration attempt: xx")
    assert run.error.endswith("…") and len(run.error) < 4096 + 20
    assert json.loads(f.out("long.json").read_text())["killed"] is True
    assert not f.out("survived").exists()


BODIES: dict[str, tuple[bytes, str]] = {
    "number": (b'{"reason": 42}', "42"),
    "listed": (b'{"reason": ["a", 1]}', '["a", 1]'),
    "text": (b"plain words, not JSON", "plain words, not JSON"),
    "array": (b"[1, 2]", "[1, 2]"),
    "null": (b'{"reason": null}', "agent requested shutdown"),
    "huge": (b'{"reason": "' + b"y" * 70_000 + b'"}', "(al-shutdown with a body over 64 KiB"),
}


async def test_al_shutdown_with_any_body_kills(tmp_path: Path, store: Store) -> None:
    """Any authenticated request kills: a non-string reason, a body that is not JSON, and
    one over the agent API's 64 KiB cap (answered, then the connection is closed)."""
    agents = {name: {"command": f'touch "$OUT/{name}"; sleep 30'} for name in BODIES}
    async with running_fleet(tmp_path / "p", store, agents) as f:
        for name in BODIES:
            await f.trigger(name)
        await wait_for(lambda: all(f.out(name).exists() for name in BODIES))
        async with httpx.AsyncClient(base_url=f.url) as http:
            for name, (body, _) in BODIES.items():
                (run,) = await store.list_runs(agent=name)
                response = await http.post(
                    "/agent/shutdown",
                    content=body,
                    headers={
                        "Authorization": f"Bearer {_secret_of(f.root, run.id)}",
                        "Content-Type": "application/json",
                    },
                )
                assert response.status_code == 200, (name, response.text)
                assert response.json() == {"ok": True, "killed": True, "runId": run.id}
        for name, (_, reason) in BODIES.items():
            (ended,) = await f.finished(name, 1, timeout=15)
            assert ended.state is RunState.KILLED, name
            assert ended.error is not None and ended.error.startswith(f"al-shutdown: {reason}")
