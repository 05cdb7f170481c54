"""The in-run commands end to end: real runs, the installed commands, the real gateway."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import httpx
import pytest

from corral.credentials import CredentialStore
from corral.store import CallState, RunState, Store
from tests.gateway.fleet import TOKEN, running_fleet
from tests.scheduler.helpers import wait_for

KEY = "github://acme/app/issues/42"


async def test_a_try_lock_admits_one_run_and_names_the_holder(tmp_path: Path, store: Store) -> None:
    script = (
        f'if rlock "{KEY}" > "$OUT/$CORRAL_RUN_ID.json"; then '
        'touch "$OUT/$CORRAL_RUN_ID.held"; sleep 1.5; '
        f'runlock "{KEY}" >> "$OUT/$CORRAL_RUN_ID.json"; '
        'else echo "exit=$?" > "$OUT/$CORRAL_RUN_ID.refused"; fi'
    )
    async with running_fleet(tmp_path / "p", store, {"dev": {"scale": 3, "command": script}}) as f:
        for _ in range(3):
            await f.trigger("dev")
        runs = await f.finished("dev", 3)
    assert all(run.state is RunState.SUCCEEDED for run in runs)
    held = [run for run in runs if f.out(f"{run.id}.held").exists()]
    refused = [run for run in runs if f.out(f"{run.id}.refused").exists()]
    assert len(held) == 1 and len(refused) == 2
    winner = held[0]
    granted, released = f.out(f"{winner.id}.json").read_text().splitlines()
    grant = json.loads(granted)
    assert grant["ok"] is True and grant["key"] == KEY and isinstance(grant["token"], int)
    assert json.loads(released) == {"ok": True}
    for run in refused:
        answer = json.loads(f.out(f"{run.id}.json").read_text())
        assert answer["ok"] is False and answer["holder"] == winner.id and answer["heldSince"]
        assert f.out(f"{run.id}.refused").read_text().strip() == "exit=1"
    assert await store.list_locks() == []


async def test_waiting_runs_take_the_lock_in_turn(tmp_path: Path, store: Store) -> None:
    script = (
        f'rlock --wait --timeout 30 "{KEY}" > /dev/null || exit 9; '
        'python3 -c "import time,sys; print(time.time())" >> "$OUT/$CORRAL_RUN_ID.t"; '
        "sleep 0.3; "
        'python3 -c "import time,sys; print(time.time())" >> "$OUT/$CORRAL_RUN_ID.t"; '
        f'runlock "{KEY}" > /dev/null'
    )
    async with running_fleet(tmp_path / "p", store, {"dev": {"scale": 3, "command": script}}) as f:
        for _ in range(3):
            await f.trigger("dev")
        runs = await f.finished("dev", 3)
    assert [run.state for run in runs] == [RunState.SUCCEEDED] * 3
    spans = sorted(tuple(map(float, f.out(f"{r.id}.t").read_text().split())) for r in runs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end  # never two holders at once


async def test_a_call_returns_the_callees_value(tmp_path: Path, store: Store) -> None:
    caller = (
        "ID=$(echo 'Review PR #17 on acme/app' | al-subagent reviewer "
        '| sed -n \'s/.*"callId":"\\([^"]*\\)".*/\\1/p\'); '
        '[ -n "$ID" ] || exit 7; echo "$ID" > "$OUT/call-id"; '
        'al-subagent-check "$ID" > "$OUT/check.json"; '
        'al-subagent-wait "$ID" --timeout 30 > "$OUT/wait.json"; echo "exit=$?" >> "$OUT/exit"'
    )
    callee = (
        'grep -q "Review PR #17" "$CORRAL_PROMPT_FILE" || exit 3; '
        'al-return "$(printf \'approved\\nwith "quotes" and \\\\ backslash\')" > /dev/null'
    )
    agents = {"dev": {"command": caller}, "reviewer": {"command": callee}}
    async with running_fleet(tmp_path / "p", store, agents) as f:
        await f.trigger("dev")
        (dev,) = await f.finished("dev", 1)
        (reviewer,) = await f.finished("reviewer", 1)
    assert dev.state is RunState.SUCCEEDED, dev.error
    assert reviewer.state is RunState.SUCCEEDED and reviewer.trigger.value == "call"
    call_id = f.out("call-id").read_text().strip()
    assert json.loads(f.out("check.json").read_text())["status"] in ("pending", "running")
    assert json.loads(f.out("wait.json").read_text()) == {
        call_id: {"status": "completed", "returnValue": 'approved\nwith "quotes" and \\ backslash'}
    }
    assert f.out("exit").read_text().strip() == "exit=0"
    assert reviewer.trigger_detail == {"caller": "dev", "context": "Review PR #17 on acme/app\n"}


async def test_a_failed_callee_answers_an_error(tmp_path: Path, store: Store) -> None:
    caller = (
        'ID=$(echo ctx | al-subagent reviewer | sed -n \'s/.*"callId":"\\([^"]*\\)".*/\\1/p\'); '
        'al-subagent-wait "$ID" --timeout 30 > "$OUT/wait.json"'
    )
    agents = {"dev": {"command": caller}, "reviewer": {"command": "exit 4"}}
    async with running_fleet(tmp_path / "p", store, agents) as f:
        await f.trigger("dev")
        await f.finished("dev", 1)
    answer = next(iter(json.loads(f.out("wait.json").read_text()).values()))
    assert answer["status"] == "error"
    assert "failed" in answer["error"] and "exited with code 4" in answer["error"]


async def test_call_refusals(tmp_path: Path, store: Store) -> None:
    script = (
        'echo x | al-subagent dev > "$OUT/self.json"; echo "$?" > "$OUT/self.code"; '
        'echo x | al-subagent nobody > "$OUT/unknown.json"; echo "$?" > "$OUT/unknown.code"'
    )
    async with running_fleet(tmp_path / "p", store, {"dev": {"command": script}}) as f:
        await f.trigger("dev")
        await f.finished("dev", 1)
    assert json.loads(f.out("self.json").read_text()) == {
        "ok": False,
        "error": "self-call not allowed",
    }
    assert f.out("self.code").read_text().strip() == "1"
    unknown = json.loads(f.out("unknown.json").read_text())
    assert unknown["ok"] is False and "unknown agent 'nobody'" in unknown["error"]
    assert f.out("unknown.code").read_text().strip() == "1"


async def test_call_depth_is_enforced(tmp_path: Path, store: Store) -> None:
    # a -> b -> c with maxCallDepth = 1: b's call to c is refused.
    def chain(target: str) -> str:
        return (
            f'echo go | al-subagent {target} > "$OUT/$CORRAL_AGENT.json"; '
            "al-return done > /dev/null"
        )

    agents = {"a": {"command": chain("b")}, "b": {"command": chain("c")}, "c": {"command": "true"}}
    async with running_fleet(tmp_path / "p", store, agents, "maxCallDepth = 1\n") as f:
        await f.trigger("a")
        await f.finished("b", 1)
    assert json.loads(f.out("a.json").read_text())["ok"] is True
    refused = json.loads(f.out("b.json").read_text())
    assert refused["ok"] is False and "maxCallDepth 1" in refused["error"]
    assert await store.list_runs(agent="c") == []


async def test_status_exit_rerun_and_setenv(tmp_path: Path, store: Store) -> None:
    script = (
        'al-status "working on #42" > /dev/null; '
        "bash -c 'setenv ISSUE 42 > /dev/null'; "
        'bash -c \'echo "issue=$ISSUE" > "$OUT/env"\'; '
        'touch "$OUT/started"; sleep 30'
    )
    agents = {
        "dev": {"command": script},
        "quitter": {"command": 'al-exit 3 > "$OUT/exit.json"; sleep 30'},
        "again": {
            "command": '[ -e "$OUT/again" ] || { touch "$OUT/again"; al-rerun > /dev/null; }'
        },
    }
    async with running_fleet(tmp_path / "p", store, agents) as f:
        await f.trigger("dev")
        await wait_for(lambda: f.out("started").exists())
        (dev,) = await store.list_runs(agent="dev")
        assert dev.status_text == "working on #42" and dev.status_at is not None
        assert f.out("env").read_text().strip() == "issue=42"
        await f.scheduler.executor.stop(dev.id, "test over")

        await f.trigger("quitter")
        (quitter,) = await f.finished("quitter", 1, timeout=10)
        assert quitter.state is RunState.FAILED and quitter.exit_code == 3
        assert quitter.error == "al-exit 3"
        assert json.loads(f.out("exit.json").read_text()) == {"ok": True, "code": 3}

        await f.trigger("again")
        first, second = await f.finished("again", 2)
        assert second.parent_run_id == first.id


async def test_a_run_acts_only_for_itself(tmp_path: Path, store: Store) -> None:
    holder = f'rlock "{KEY}" > /dev/null; touch "$OUT/holding"; sleep 30'
    other = (
        f'runlock "{KEY}" > "$OUT/release.json"; echo "$?" > "$OUT/release.code"; '
        f'rlock-heartbeat "{KEY}" > "$OUT/heartbeat.json"; '
        'CORRAL_RUN_SECRET=not-a-secret runlock "' + KEY + '" > "$OUT/forged.json"; '
        'echo "$?" > "$OUT/forged.code"'
    )
    agents = {"holder": {"command": holder}, "other": {"command": other}}
    async with running_fleet(tmp_path / "p", store, agents) as f:
        await f.trigger("holder")
        await wait_for(lambda: f.out("holding").exists())
        await f.trigger("other")
        await f.finished("other", 1)
        (lock,) = await store.list_locks()
        assert lock.agent == "holder"
        (run,) = await store.list_runs(agent="holder")
        await f.scheduler.executor.stop(run.id, "test over")
    assert json.loads(f.out("release.json").read_text()) == {
        "ok": False,
        "reason": "not the lock holder",
    }
    assert f.out("release.code").read_text().strip() == "1"
    assert json.loads(f.out("heartbeat.json").read_text())["reason"] == "lock lost"
    assert json.loads(f.out("forged.json").read_text()) == {
        "ok": False,
        "error": "invalid run secret",
    }
    assert f.out("forged.code").read_text().strip() == "3"
    assert await store.list_locks() == []  # released when the holder's run ended


async def test_a_lock_and_call_cycle_is_a_deadlock(tmp_path: Path, store: Store) -> None:
    dev = (
        f'rlock "{KEY}" > /dev/null; '
        'ID=$(echo go | al-subagent reviewer | sed -n \'s/.*"callId":"\\([^"]*\\)".*/\\1/p\'); '
        'echo "$ID" > "$OUT/call-id"; '
        'al-subagent-wait "$ID" --timeout 30 > "$OUT/wait.json"'
    )
    reviewer = (
        'while [ ! -s "$OUT/call-id" ]; do sleep 0.05; done; sleep 0.5; '
        f'rlock --wait --timeout 20 "{KEY}" > "$OUT/rlock.json"; echo "$?" > "$OUT/rlock.code"'
    )
    agents = {"dev": {"command": dev}, "reviewer": {"command": reviewer}}
    async with running_fleet(tmp_path / "p", store, agents) as f:
        await f.trigger("dev")
        (dev_run,) = await f.finished("dev", 1)
        (reviewer_run,) = await f.finished("reviewer", 1)
    call_id = f.out("call-id").read_text().strip()
    answer = json.loads(f.out("rlock.json").read_text())
    assert answer == {
        "ok": False,
        "reason": "possible deadlock detected",
        "cycle": [reviewer_run.id, KEY, dev_run.id, f"call://{call_id}"],
        "deadlock": True,
    }
    assert f.out("rlock.code").read_text().strip() == "1"
    call = await store.get_call(call_id, caller_run_id=dev_run.id)
    assert call is not None and call.state is CallState.COMPLETED


async def test_a_run_without_network_reaches_the_gateway_over_a_unix_socket(
    tmp_path: Path, store: Store
) -> None:
    script = f'echo "$GATEWAY_URL" > "$OUT/url"; rlock "{KEY}" > "$OUT/lock.json"'
    tables = {"dev": '[runtime]\nnetwork = "none"\n'}
    async with running_fleet(
        tmp_path / "p", store, {"dev": {"command": script}}, tables=tables
    ) as f:
        await f.trigger("dev")
        (run,) = await f.finished("dev", 1)
    assert run.state is RunState.SUCCEEDED
    url = f.out("url").read_text().strip()
    assert url.startswith("unix:/") and url.endswith(".sock")
    assert json.loads(f.out("lock.json").read_text())["ok"] is True


async def test_no_secret_reaches_a_log_or_the_store(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    script = (
        'printf %s "$CORRAL_RUN_SECRET" > "$OUT/secret"; echo "mine=$CORRAL_RUN_SECRET"; '
        f'rlock "{KEY}"; al-status "busy"; runlock "{KEY}"; rlock "not a uri"; '
        "echo done"
    )
    async with running_fleet(tmp_path / "p", store, {"dev": {"command": script}}) as f:
        await f.trigger("dev")
        (run,) = await f.finished("dev", 1)
    secret = f.out("secret").read_text()
    assert len(secret) >= 32
    assert secret not in caplog.text
    logs = list((tmp_path / "p" / ".corral" / "logs").glob("*.log"))
    assert logs and all(secret not in log.read_text() for log in logs)
    assert "done" in logs[0].read_text()
    assert "mine=[REDACTED]" in logs[0].read_text()  # even the run printing it
    state = (tmp_path / "p" / ".corral").rglob("*")
    for path in state:
        if path.is_file() and path.suffix in (".db", ".log", ".md", ".sh", ".json"):
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in repr(run)


async def test_status_text_and_locks_are_visible_over_the_control_api(
    tmp_path: Path, store: Store
) -> None:
    script = f'al-status "triaging #42" > /dev/null; rlock "{KEY}" > /dev/null; sleep 30'
    async with running_fleet(tmp_path / "p", store, {"dev": {"command": script}}) as f:
        await f.trigger("dev")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=f.url, headers=headers) as http:

            async def seen() -> bool:
                body = (await http.get("/control/status")).json()
                return bool(body["locks"]) and body["running"][0]["status"] == "triaging #42"

            await wait_for(seen)
            body = (await http.get("/control/status")).json()
        (running,) = body["running"]
        assert running["agent"] == "dev" and running["statusAt"] is not None
        assert body["locks"][0]["key"] == KEY and body["locks"][0]["holder"] == running["id"]
        await f.scheduler.executor.stop(running["id"], "test over")


async def test_a_sandboxed_run_is_isolated_and_still_takes_locks(
    tmp_path: Path, store: Store
) -> None:
    probe = Path("/var/tmp") / f"corral-sandbox-probe-{tmp_path.name}"
    script = (
        f'rlock "{KEY}" > /tmp/lock.json; cp /tmp/lock.json "$CORRAL_WORKDIR/lock.json"; '
        f'(echo x > "{probe}") 2> /dev/null; echo "write=$?" > "$CORRAL_WORKDIR/report"; '
        '(echo x > "$CORRAL_AGENT_DIR/probe") 2> /dev/null; '
        'echo "agent=$?" >> "$CORRAL_WORKDIR/report"; '
        f'echo $(ls "{tmp_path / "p" / ".corral"}") >> "$CORRAL_WORKDIR/report"; '
        'echo "cwd=$PWD" >> "$CORRAL_WORKDIR/report"; '
        "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 53), 2)\" "
        '2> /dev/null; echo "net=$?" >> "$CORRAL_WORKDIR/report"'
    )
    tables = {"dev": '[runtime]\ntype = "sandbox"\nnetwork = "none"\n'}
    async with running_fleet(
        tmp_path / "p", store, {"dev": {"command": script}}, tables=tables
    ) as f:
        await f.trigger("dev")
        (run,) = await f.finished("dev", 1)
        workdir = f.scheduler.executor.workdir(run.id)
    assert run.state is RunState.SUCCEEDED, run.error
    assert json.loads((workdir / "lock.json").read_text())["ok"] is True
    lines = (workdir / "report").read_text().splitlines()
    assert lines[0] != "write=0" and not probe.exists()  # the root is read-only
    assert lines[1] != "agent=0" and not (tmp_path / "p" / "agents" / "dev" / "probe").exists()
    listed = lines[2].split()
    assert "logs" not in listed and "runs" not in listed  # the state dir is hidden
    assert "cwd=/tmp/work" in lines
    assert "net=1" in lines


async def test_status_and_return_values_never_show_a_secret(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a run sends the gateway is shown to operators (stat, the control API, the
    # dashboard): its own secret and its credentials' values are redacted there as in
    # its log.
    token = "ghp_" + "Sx7q" * 9
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    CredentialStore(tmp_path / "home" / "credentials").add(
        "github_token", "default", {"token": token}
    )
    leak = (
        'al-status "token $GITHUB_TOKEN secret $CORRAL_RUN_SECRET" && '
        'al-return "secret=$CORRAL_RUN_SECRET token=$GITHUB_TOKEN" && '
        'al-status "$CORRAL_RUN_SECRET" && sleep 30'
    )
    agents: dict[str, dict[str, object]] = {
        "dev": {"command": leak, "credentials": ["github_token"]}
    }
    async with running_fleet(tmp_path / "p", store, agents) as f:
        await f.trigger("dev")

        async def shown() -> bool:
            runs = await store.list_runs(agent="dev")
            return bool(runs) and runs[0].status_text == "[REDACTED]"

        await wait_for(shown, timeout=30)
        (run,) = await store.list_runs(agent="dev")
        async with httpx.AsyncClient(base_url=f.url) as http:
            status = (
                await http.get("/control/status", headers={"Authorization": f"Bearer {TOKEN}"})
            ).text
        await store.request_kill(run.id)
    assert run.return_value == "secret=[REDACTED] token=[REDACTED]"
    assert token not in status and "[REDACTED]" in status
