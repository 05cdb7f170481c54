"""`corral token create|ls|revoke`, and `corral start --expose` guarded by them."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import httpx
import pytest

from corral.engine.token import hash_token, local_token
from tests.cli.conftest import Corral
from tests.processes import wait_until
from tests.scheduler.procs import SchedulerProcess

pytestmark = pytest.mark.slow


def state_url(project: Path) -> str:
    return f"sqlite:///{project / '.corral' / 'state.db'}"


def tokens(corral: Corral, project: Path) -> list[dict[str, object]]:
    result = corral("token", "ls", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def gateway_url(scheduler: SchedulerProcess) -> str:
    wait_until(lambda: "started; gateway on" in scheduler.output(), 30)
    found = re.search(r"gateway on (http://\S+)", scheduler.output())
    assert found is not None
    return found.group(1)


def status(url: str, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.get(f"{url}/control/status", headers=headers, timeout=10).status_code


def test_create_list_and_revoke(corral: Corral, project: Path) -> None:
    assert corral("token", "ls", cwd=project).stdout.strip().startswith("no operator tokens")
    made = corral("token", "create", "ci", cwd=project)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert re.fullmatch(r"crl_[A-Za-z0-9_-]{43}", token)
    assert "shown only now" in made.stderr
    rows = sqlite3.connect(project / ".corral" / "state.db").execute(
        "SELECT name, token_hash FROM corral_operator_tokens"
    )
    assert list(rows) == [("ci", hash_token(token))]

    [listed] = tokens(corral, project)
    assert (listed["name"], listed["revoked"], listed["lastUsedAt"]) == ("ci", False, None)
    table = corral("token", "ls", cwd=project).stdout
    assert "ci" in table and token not in table

    again = corral("token", "create", "ci", cwd=project)
    assert again.returncode == 1 and "exists already" in again.stderr
    bad = corral("token", "create", "not a name", cwd=project)
    assert bad.returncode == 2 and "bad token name" in bad.stderr
    as_json = json.loads(corral("token", "create", "prom", "--json", cwd=project).stdout)
    assert as_json["name"] == "prom" and as_json["token"].startswith("crl_")

    revoked = corral("token", "revoke", "ci", cwd=project)
    assert revoked.returncode == 0 and "revoked token ci" in revoked.stdout
    assert corral("token", "revoke", "ci", cwd=project).stdout.startswith("token ci was already")
    missing = corral("token", "revoke", "nobody", cwd=project)
    assert missing.returncode == 2 and "no operator token named 'nobody'" in missing.stderr
    assert [(t["name"], t["revoked"]) for t in tokens(corral, project)] == [
        ("ci", True),
        ("prom", False),
    ]
    audit = sqlite3.connect(project / ".corral" / "state.db").execute(
        "SELECT actor, action, subject FROM corral_audit ORDER BY id"
    )
    entries = list(audit)
    assert [(a, s) for _, a, s in entries] == [
        ("token.create", "ci"),
        ("token.create", "prom"),
        ("token.revoke", "ci"),
    ]
    assert all(actor.startswith("cli:") and "@" in actor for actor, _, _ in entries)


def test_expose_refuses_to_start_without_a_token(corral: Corral, project: Path) -> None:
    refused = corral("start", "--expose", "--headless", "--port", "0", cwd=project)
    assert refused.returncode == 2
    assert "--expose needs an operator token" in refused.stderr
    assert "corral token create NAME" in refused.stderr

    config = project / "config.toml"
    config.write_text(config.read_text() + '\n[gateway]\nhost = "0.0.0.0"\n')
    wide = corral("start", "--headless", "--port", "0", cwd=project)
    assert wide.returncode == 2
    assert "not a loopback address: add --expose" in wide.stderr


def test_exposed_gateway_takes_store_tokens_only(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    token = corral("token", "create", "ops", cwd=project).stdout.strip()
    local = local_token(project)  # the file a loopback gateway would accept
    log = tmp_path / "exposed.log"
    with SchedulerProcess(project, state_url(project), log, "--expose") as scheduler:
        url = gateway_url(scheduler)
        assert status(url, token) == 200
        assert status(url, local) == 401  # the local token file is for loopback only
        assert corral("token", "revoke", "ops", cwd=project).returncode == 0
        wait_until(lambda: status(url, token) == 401, 10)
        assert scheduler.stop() == 0


def test_loopback_gateway_takes_the_local_token_file(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    with SchedulerProcess(project, state_url(project), tmp_path / "local.log") as scheduler:
        url = gateway_url(scheduler)
        assert url.startswith("http://127.0.0.1:")
        local = (project / ".corral" / "operator-token").read_text().strip()
        assert status(url, local) == 200
        assert status(url, "wrong") == 401
        assert scheduler.stop() == 0
    entries = sqlite3.connect(project / ".corral" / "state.db").execute(
        "SELECT count(*) FROM corral_audit"
    )
    assert list(entries) == [(0,)]
