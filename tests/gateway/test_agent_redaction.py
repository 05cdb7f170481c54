"""What a run sends the gateway is redacted before it is stored or forwarded: the call
context (kept in the call, its queue item and the callee's run, and put in the callee's
prompt), the status text and the al-return value. The run's secret and its
credentials' values become [REDACTED]; a lock key holding one is refused."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from corral.agentcmd import install
from corral.credentials import CredentialStore
from corral.store import RunState, Store
from tests.gateway._agent_gateway import AgentGateway, agent_gateway
from tests.gateway.fleet import running_fleet
from tests.scheduler.helpers import write_project

TOKEN = "ghp_" + "Zq8r" * 9


def stored_text(store_url: str) -> str:
    """Every row of every table of the store, as text (a test reads around the store)."""
    if store_url.startswith("sqlite:///"):
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            tables = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            return "\n".join(
                repr(row) for table in tables for row in conn.execute(f'SELECT * FROM "{table}"')
            )
        finally:
            conn.close()
    with psycopg.connect(store_url, autocommit=True) as pg:
        tables = [
            r[0]
            for r in pg.execute(
                b"SELECT table_name FROM information_schema.tables "
                b"WHERE table_schema = current_schema()"
            )
        ]
        return "\n".join(
            str(row[0])
            for table in tables
            for row in pg.execute(f'SELECT t::text FROM "{table}" t'.encode())
        )


def sqlite_files(store_url: str) -> list[Path]:
    if not store_url.startswith("sqlite:///"):
        return []
    path = Path(store_url.removeprefix("sqlite:///"))
    return [p for p in path.parent.iterdir() if p.name.startswith(path.name)]


@pytest.fixture
def gateway(tmp_path: Path, store_url: str) -> Iterator[AgentGateway]:
    root = tmp_path / "p"
    write_project(root, {"dev": {"command": "true"}, "reviewer": {"command": "true"}})
    with agent_gateway(store_url, root, install(tmp_path / "bin"), protect=[TOKEN]) as served:
        yield served


def test_call_context_status_and_return_are_redacted_before_they_are_stored(
    gateway: AgentGateway, store_url: str
) -> None:
    secret = gateway.secret
    context = f"review this; token {TOKEN} and my secret {secret}\n".encode()
    made = gateway.command("al-subagent", "reviewer", input=context)
    assert made.returncode == 0, made.stdout
    call_id = json.loads(made.stdout)["callId"]
    called = stored_text(store_url)
    assert call_id in called and "review this; token [REDACTED]" in called
    assert secret not in called and TOKEN not in called
    # An agent name is recorded with its refusal (an unknown agent): redacted as well.
    refused = gateway.command("al-subagent", f"x{secret}", input=b"ctx")
    assert refused.returncode == 1 and secret.encode() not in refused.stdout
    assert gateway.command("al-status", f"using {TOKEN}").returncode == 0
    assert gateway.command("al-return", f"{secret} / {TOKEN}").returncode == 0
    # The whole store, read around it: neither value is anywhere, in any table.
    everything = stored_text(store_url)
    assert call_id in everything and "review this; token [REDACTED]" in everything
    assert "my secret [REDACTED]" in everything and "using [REDACTED]" in everything
    assert secret not in everything and TOKEN not in everything
    for path in sqlite_files(store_url):  # nor in the database's files (its journal too)
        data = path.read_bytes()
        assert secret.encode() not in data and TOKEN.encode() not in data, path


async def test_the_callee_never_sees_the_callers_secret_or_credentials(
    tmp_path: Path, store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    CredentialStore(tmp_path / "home" / "credentials").add(
        "github_token", "default", {"token": TOKEN}
    )
    caller = (
        'printf %s "$CORRAL_RUN_SECRET" > "$OUT/secret"; '
        'echo "ctx $GITHUB_TOKEN $CORRAL_RUN_SECRET" | al-subagent reviewer > "$OUT/call.json"'
    )
    callee = 'cp "$CORRAL_PROMPT_FILE" "$OUT/prompt.md"; al-return ok'
    agents: dict[str, dict[str, object]] = {
        "dev": {"command": caller, "credentials": ["github_token"]},
        "reviewer": {"command": callee},
    }
    async with running_fleet(tmp_path / "p", store, agents) as f:
        await f.trigger("dev")
        (dev,) = await f.finished("dev", 1)
        (reviewer,) = await f.finished("reviewer", 1)
    secret = f.out("secret").read_text()
    assert dev.state is RunState.SUCCEEDED and reviewer.state is RunState.SUCCEEDED
    assert len(secret) >= 32 and json.loads(f.out("call.json").read_text())["ok"] is True
    prompt = f.out("prompt.md").read_text()
    assert "ctx [REDACTED] [REDACTED]" in prompt
    assert secret not in prompt and TOKEN not in prompt
    assert reviewer.trigger_detail == {"caller": "dev", "context": "ctx [REDACTED] [REDACTED]\n"}
    everything = stored_text(store_url)
    assert secret not in everything and TOKEN not in everything
    state = tmp_path / "p" / ".corral"
    for path in state.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert secret.encode() not in data and TOKEN.encode() not in data, path


def test_a_run_started_by_another_process_is_redacted_too(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The gateway knows such a run from the store alone: it reads the run's agent's
    # credentials itself, to redact their values from what the run sends.
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    CredentialStore(tmp_path / "home" / "credentials").add(
        "github_token", "default", {"token": TOKEN}
    )
    root = tmp_path / "p"
    agents: dict[str, dict[str, object]] = {
        "dev": {"command": "true", "credentials": ["github_token"]},
        "reviewer": {"command": "true"},
    }
    write_project(root, agents)
    with agent_gateway(store_url, root, install(tmp_path / "bin"), foreign=True) as gateway:
        secret = gateway.secret
        made = gateway.command("al-subagent", "reviewer", input=f"{TOKEN} {secret}".encode())
        assert made.returncode == 0, made.stdout
        assert gateway.command("al-status", f"using {TOKEN}").returncode == 0
        assert gateway.command("al-return", f"{secret}/{TOKEN}").returncode == 0
        everything = stored_text(store_url)
    assert "[REDACTED] [REDACTED]" in everything and "using [REDACTED]" in everything
    assert "[REDACTED]/[REDACTED]" in everything
    assert secret not in everything and TOKEN not in everything


def test_a_foreign_runs_implied_model_key_is_redacted_too(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway of another process read only the agent's named credentials: the model
    key its models imply (anthropic_key, in the run's environment) was stored as sent."""
    model_key = "sk-ant-" + "impl1ed" * 5
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    CredentialStore(tmp_path / "home" / "credentials").add(
        "anthropic_key", "default", {"token": model_key}
    )
    root = tmp_path / "p"
    agents: dict[str, dict[str, object]] = {
        "dev": {"command": "true", "models": ["first"]},
        "reviewer": {"command": "true"},
    }
    models = '[models.first]\nprovider = "anthropic"\nmodel = "claude-x"\n'
    write_project(root, agents, models)
    with agent_gateway(store_url, root, install(tmp_path / "bin"), foreign=True) as gateway:
        assert gateway.command("al-status", f"model={model_key}").returncode == 0
        everything = stored_text(store_url)
    assert "model=[REDACTED]" in everything and model_key not in everything
