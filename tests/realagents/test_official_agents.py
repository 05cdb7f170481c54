"""The official Action Llama agents (tests/fixtures/al-agents, unchanged) run under corral.

Each of the seven agents names ``github_token`` and ``git_ssh`` and one of the
collection's OpenAI models; the OpenAI key is implied by the model, as in Action Llama.
The models are pointed at a scripted OpenAI-compatible server on loopback that refuses
any request without the bearer key, through an environment overlay
(``$CORRAL_HOME/environments/local.toml``, ``corral -E local``): the collection's own
files stay as published. Every agent runs through the real ``corral run`` command (the
built-in harness its config implies), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.credentials import CredentialStore
from corral.llm import ToolUse
from tests.credentials.keys import fake_key, token
from tests.llm.fakeprovider import FakeProvider, Reply

FIXTURE = Path(__file__).parents[1] / "fixtures" / "al-agents"
KEY = "sk-proj-" + "0fficial" * 6

#: agent -> the model it names, and that model's id in the collection's config.toml.
AGENTS = {
    "dev": "gpt-5.4-mini",
    "planner": "gpt-5.4",
    "reviewer": "gpt-5.4-mini",
    "gh-actions-responder": "gpt-5.4",
    "mintlify-fixer": "gpt-5.4-nano",
    "unit-coverage-improver": "gpt-5.4-mini",
    "e2e-coverage-improver": "gpt-5.4-mini",
}

#: The collection's models, as config.toml names them.
MODELS = ("fast", "medium", "deep")
IDENTITY = "Dev Bot <dev-bot@example.com>"
#: What the agent's one tool call prints: its git identity (from git_ssh), and whether the
#: model key reached the run (it must not: the built-in harness keeps it in corral).
PROBE = (
    "git var GIT_AUTHOR_IDENT | cut -d'>' -f1; git var GIT_COMMITTER_IDENT | cut -d'>' -f1; "
    'echo "key chars: ${#OPENAI_API_KEY}"; echo "token set: ${GITHUB_TOKEN:+yes}"'
)


@dataclass
class Setup:
    project: Path
    home: Path
    env: dict[str, str]
    store: CredentialStore


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider(require_key=KEY) as server:
        yield server


@pytest.fixture
def setup(tmp_path: Path, store_url: str, fake: FakeProvider) -> Setup:
    project = tmp_path / "team"
    shutil.copytree(FIXTURE, project, ignore=shutil.ignore_patterns("README.md"))
    home = tmp_path / "home" / ".corral"
    overlay = home / "environments" / "local.toml"
    overlay.parent.mkdir(parents=True)
    overlay.write_text(
        "".join(f'[models.{name}]\nbaseUrl = "{fake.openai_url}"\n' for name in MODELS)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(
        {
            "HOME": str(tmp_path / "home"),
            "CORRAL_HOME": str(home),
            "CORRAL_STATE_URL": store_url,
            "COLUMNS": "200",
        }
    )
    return Setup(project, home, env, CredentialStore(home / "credentials"))


async def corral(setup: Setup, *args: str) -> tuple[int, str, str]:
    """`corral -E local ARGS` in the project, as a user types it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "corral",
        "-E",
        "local",
        *args,
        cwd=setup.project,
        env=setup.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def store_credentials(setup: Setup) -> None:
    setup.store.add("github_token", "default", {"token": token()})
    setup.store.add(
        "git_ssh",
        "default",
        {"id_rsa": fake_key(), "username": "Dev Bot", "email": "dev-bot@example.com"},
    )
    setup.store.add("webhook_secret", "default", {"secret": token("whsec_")})


@pytest.mark.slow
@pytest.mark.timeout(300)  # ten `corral` processes, each a second or more on a busy machine
async def test_every_official_agent_runs_with_the_key_its_model_implies(
    setup: Setup, fake: FakeProvider
) -> None:
    store_credentials(setup)
    # Without openai_key, doctor names it with the command that adds it, and --strict fails.
    code, out, _ = await corral(setup, "doctor", "--json", "--strict")
    check = {c["name"]: c for c in json.loads(out)}["credentials"]
    assert code == 1 and check["status"] == "warn", check
    assert "openai_key (the model key of agents dev, e2e-coverage-improver, " in check["detail"]
    assert "`corral creds add openai_key`" in check["fix"]

    # ... and the server refuses a run that goes out without it.
    code, out, err = await corral(setup, "run", "dev")
    assert code == 10, (out, err)  # the documented code for an authentication failure
    assert "no openai_key credential is stored; add it with `corral creds add openai_key`" in (
        out + err
    )
    assert "authorization" not in fake.requests[-1].headers

    setup.store.add("openai_key", "default", {"token": KEY})
    code, out, _ = await corral(setup, "doctor", "--json", "--strict")
    checks = {c["name"]: c for c in json.loads(out)}
    assert checks["credentials"]["status"] == "ok", checks["credentials"]

    refused = len(fake.requests)
    for agent, model in AGENTS.items():
        fake.script(
            "openai", Reply.tools(ToolUse("probe", "bash", {"command": PROBE})), Reply.text("ok")
        )
        before = len(fake.requests)
        code, out, err = await corral(setup, "run", agent)
        assert code == 0, (agent, out, err)
        mine = fake.requests[before:]
        assert [r.body["model"] for r in mine] == [model, model], agent
        assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in mine), agent
        tool = next(
            json.loads(line)
            for line in out.splitlines()
            if line.startswith("{") and json.loads(line).get("type") == "tool"
        )
        assert tool["output"].splitlines() == [
            IDENTITY.removesuffix(">"),
            IDENTITY.removesuffix(">"),
            "key chars: 0",
            "token set: yes",
        ], agent
        assert KEY not in out and KEY not in err
    assert len(fake.requests) == refused + 2 * len(AGENTS)
    assert fake.pending("openai") == 0
