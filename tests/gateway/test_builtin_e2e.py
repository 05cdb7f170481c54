"""A built-in harness run end to end: the tool loop in the scheduler, the model a scripted
fake provider over real HTTP, the tools in the run's runtime, the in-run commands through
the bash tool against the real gateway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.credentials import CredentialStore
from corral.llm import ToolUse
from corral.store import RunState, Store
from tests.gateway.fleet import running_fleet
from tests.llm.fakeprovider import FakeProvider, Reply, Status

KEY = "github://acme/app/issues/7"
MODEL_KEY = "sk-ant-" + "k3y" * 10


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as server:
        yield server


def project_toml(fake: FakeProvider) -> str:
    return (
        f'[models.first]\nprovider = "anthropic"\nmodel = "claude-test"\nbaseUrl = "{fake.url}"\n'
        f'[models.second]\nprovider = "custom"\nmodel = "local-test"\n'
        f'baseUrl = "{fake.openai_url}"\n'
    )


def bash(call_id: str, command: str) -> Reply:
    return Reply.tools(ToolUse(call_id, "bash", {"command": command}))


async def test_a_builtin_run_locks_calls_and_returns(
    tmp_path: Path, store: Store, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    CredentialStore(tmp_path / "home" / "credentials").add(
        "anthropic_key", "default", {"api_key": MODEL_KEY}
    )
    fake.script(
        "anthropic",
        bash(
            "t1", f'rlock "{KEY}" && al-status "on it" && echo "key=${{ANTHROPIC_API_KEY:-none}}"'
        ),
        Status(429, {"type": "error", "error": {"message": "slow down"}}),
    )
    # After the rate limit the second model carries on (and the first stays skipped).
    fake.script(
        "openai",
        bash("t2", "echo 'review this' | al-subagent reviewer"),
        bash("t3", 'al-return "shipped"'),
        Reply.text("Done."),
    )
    agents: dict[str, dict[str, object]] = {
        "dev": {
            "command": "unused",
            "models": ["first", "second"],
            "credentials": ["anthropic_key"],
        },
        "reviewer": {"command": "true"},
    }
    tables = {"dev": 'type = "builtin"\n'}
    async with running_fleet(tmp_path / "p", store, agents, project_toml(fake), tables) as f:
        await f.trigger("dev")
        (run,) = await f.finished("dev", 1, timeout=60)
        await f.finished("reviewer", 1, timeout=60)
        log = f.scheduler.executor.log_path(run.id).read_text()
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.return_value == "shipped" and run.status_text == "on it"
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    tools = [e for e in entries if e["type"] == "tool"]
    assert json.loads(tools[0]["output"].splitlines()[0])["ok"] is True  # the lock
    assert json.loads(tools[1]["output"])["ok"] is True  # the call was queued
    assert [e["model"] for e in entries if e["type"] == "turn"] == [
        "first",
        "second",
        "second",
        "second",
    ]
    # The model's key reached the provider, and never the run's environment or its log.
    assert fake.requests[0].headers["x-api-key"] == MODEL_KEY
    assert tools[0]["output"].splitlines()[-1] == "key=none"
    assert MODEL_KEY not in log
    assert await store.list_locks() == []  # released when the run ended


async def test_a_builtin_run_with_a_bad_key_fails_with_the_auth_code(
    tmp_path: Path, store: Store, fake: FakeProvider
) -> None:
    fake.script("anthropic", Status(401, {"type": "error", "error": {"message": "bad key"}}))
    agents: dict[str, dict[str, object]] = {"dev": {"command": "unused", "models": ["first"]}}
    tables = {"dev": 'type = "builtin"\n'}
    async with running_fleet(tmp_path / "p", store, agents, project_toml(fake), tables) as f:
        await f.trigger("dev")
        (run,) = await f.finished("dev", 1, timeout=60)
    assert run.state is RunState.FAILED and run.exit_code == 10
    assert run.error is not None and run.error.startswith("auth: ")
