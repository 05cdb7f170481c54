"""`corral fleet ...` and `corral runner ...` as a user runs them, against a real
`corral start`: on the project's store, and through the control API (`-E NAME` whose
environment sets the gateway URL)."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Corral
from tests.processes import wait_until
from tests.scheduler.helpers import write_project
from tests.scheduler.procs import SchedulerProcess

pytestmark = pytest.mark.slow


def ok(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    return str(result.stdout)


@pytest.mark.timeout(300)  # twenty `corral` processes, each seconds on a busy machine
def test_tokens_join_status_revoke_and_remote(corral: Corral, tmp_path: Path) -> None:
    root = tmp_path / "project"
    write_project(
        root,
        {"dev": {"command": "true"}},
        "maxRunners = 5\n[fleet]\nheartbeatSeconds = 60\nofflineAfterSeconds = 600\n",
    )
    home = tmp_path / "home" / ".corral"

    def fleet(*args: str, env: dict[str, str] | None = None) -> Any:
        return corral("fleet", *args, cwd=root, env=env)

    made = fleet("tokens", "create", "--labels", "gpu", "--note", "the gpu box")
    token = ok(made).strip()
    assert token.startswith("cft_") and "corral runner join" in made.stderr
    [listed] = json.loads(ok(fleet("tokens", "ls", "--json")))
    assert listed["status"] == "unused" and listed["labels"] == ["gpu"]
    assert token not in json.dumps(listed)
    bad = fleet("tokens", "create", "--labels", "GPU!")
    assert bad.returncode == 2 and "bad label 'GPU!'" in bad.stderr

    state_url = f"sqlite:///{root / '.corral' / 'state.db'}"
    with SchedulerProcess(root, state_url, tmp_path / "start.log") as process:
        wait_until(lambda: "started; gateway on" in process.output(), 60)
        found = re.search(r"gateway on (http://127\.0\.0\.1:\d+)", process.output())
        assert found is not None
        url = found.group(1)

        # the token from the environment (kept off the command line, where ps shows it)
        joined = corral(
            "runner", "join", url, "--name", "gpu1", "--slots", "2",
            env={"CORRAL_RUNNER_TOKEN": token},
        )  # fmt: skip
        ok(joined)
        config = home / "runner.json"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        saved = json.loads(config.read_text())
        assert saved["url"] == url and saved["credential"].startswith("crr_")
        status = json.loads(ok(corral("runner", "status", "--json")))
        assert status["state"] == "active" and status["runnerId"] == saved["runnerId"]
        assert ok(corral("runner", "heartbeat-once")).strip() == "active"

        # the token again, from another config: refused, exit 1, recorded
        other = home / "other.json"
        again = corral("runner", "join", url, "--token", token, "--config", str(other))
        assert again.returncode == 1 and "already redeemed" in again.stderr
        assert not other.exists()
        replace = corral("runner", "join", url, "--token", token)
        assert replace.returncode == 2 and "--force" in replace.stderr

        [runner] = json.loads(ok(fleet("runners", "ls", "--json")))
        assert runner["name"] == "gpu1" and runner["labels"] == ["gpu"] and runner["slots"] == 2
        view = ok(fleet("runners", "ls"))
        assert "gpu1" in view and "online" in view
        [anomaly] = json.loads(ok(fleet("anomalies", "--json")))
        assert anomaly["kind"] == "token_reused"

        # through the control API, as from another machine
        environments = home / "environments"
        environments.mkdir(parents=True, exist_ok=True)
        (environments / "remote.toml").write_text(f'[gateway]\nurl = "{url}"\n')
        token_file = root / ".corral" / "operator-token"
        operator = {"CORRAL_OPERATOR_TOKEN": token_file.read_text().strip()}
        remote = json.loads(ok(fleet("status", "--json", "-E", "remote", env=operator)))
        local = json.loads(ok(fleet("status", "--json")))
        assert remote["runners"] == local["runners"] and remote["anomalies"]["open"] == 1
        assert remote["onlineRatio"] == 1.0
        human = ok(fleet("status"))
        assert "online ratio" in human and "version skew" in human and "bundle skew" in human
        assert remote["bundles"] == local["bundles"] and remote["bundles"]["runnersBehind"] == 0
        refused = fleet("runners", "ls", "-E", "remote", env={"CORRAL_OPERATOR_TOKEN": "nope"})
        assert refused.returncode == 2 and "refused the operator token" in refused.stderr
        resolved = fleet(
            "anomalies", "resolve", str(anomaly["id"]), "--note", "my retry", "-E", "remote",
            env=operator,
        )  # fmt: skip
        assert "resolved anomaly" in ok(resolved)
        assert json.loads(ok(fleet("anomalies", "ls", "--json"))) == []

        # revoked through the control API: the runner's next request is refused
        ok(fleet("runners", "revoke", "gpu1", "-E", "remote", env=operator))
        gone = corral("runner", "status")
        assert gone.returncode == 1 and "was revoked" in gone.stderr
        cordon = fleet("runners", "cordon", saved["runnerId"])
        assert cordon.returncode == 1 and "revoked" in cordon.stderr
        missing = fleet("runners", "drain", "nobody")
        assert missing.returncode == 2 and "no runner 'nobody'" in missing.stderr
        process.stop()


def test_runner_commands_say_what_is_wrong(corral: Corral, tmp_path: Path) -> None:
    nothing = corral("runner", "status")
    assert nothing.returncode == 2 and "join a fleet first" in nothing.stderr
    bad_url = corral("runner", "join", "example.com", "--token", "t")
    assert bad_url.returncode == 2 and "bad control plane URL" in bad_url.stderr
    unreachable = corral("runner", "join", "http://127.0.0.1:9", "--token", "t")
    assert unreachable.returncode == 1 and "cannot reach the control plane" in unreachable.stderr


def test_fleet_settings_are_validated(corral: Corral, tmp_path: Path) -> None:
    root = tmp_path / "project"
    write_project(root, {"dev": {"command": "true"}})
    (root / "config.toml").write_text(
        "maxRunners = 0\n[fleet]\nheartbeatSeconds = 10\nofflineAfterSeconds = 15\n"
    )
    result = corral("fleet", "status", cwd=root)
    assert result.returncode == 2
    assert "config.toml:1: 'maxRunners' must be an integer >= 1" in result.stderr
    assert "offlineAfterSeconds (15) must be at least twice heartbeatSeconds (10)" in (
        result.stderr
    )
