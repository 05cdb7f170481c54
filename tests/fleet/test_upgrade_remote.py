"""`corral fleet upgrade` through the control API, as from another machine (`-E NAME`
whose environment sets the gateway URL), against a real `corral start` on both stores:
the wheel uploaded into the store and served to a runner after the uploader's file is
gone, the per-version figures in the status, halt, rollback, a channel's pick on an
index, and the refusals (a damaged upload, a second rollout, a wrong token)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.conftest import Corral
from tests.fleet.wheels import build_wheel
from tests.processes import wait_until
from tests.scheduler.helpers import write_project
from tests.scheduler.procs import SchedulerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def ok(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    return str(result.stdout)


def test_upgrade_through_the_control_api(corral: Corral, tmp_path: Path, store_url: str) -> None:
    root = tmp_path / "project"
    write_project(
        root,
        {"dev": {"command": "true"}},
        "maxRunners = 5\n[fleet]\nheartbeatSeconds = 60\nofflineAfterSeconds = 600\n",
    )
    elsewhere = tmp_path / "laptop"  # the operator's machine: no wheel on the control plane
    wheel = build_wheel("0.1.1", elsewhere)
    data = wheel.read_bytes()
    with SchedulerProcess(root, store_url, tmp_path / "start.log") as process:
        wait_until(lambda: "started; gateway on" in process.output(), 60)
        found = re.search(r"gateway on (http://127\.0\.0\.1:\d+)", process.output())
        assert found is not None
        url = found.group(1)
        operator = (root / ".corral" / "operator-token").read_text().strip()
        environments = tmp_path / "home" / ".corral" / "environments"
        environments.mkdir(parents=True)
        (environments / "remote.toml").write_text(f'[gateway]\nurl = "{url}"\n')
        # a store this command cannot open: it can only go through the gateway
        no_store = {"CORRAL_STATE_URL": "postgresql://127.0.0.1:1/nothing?connect_timeout=1"}
        env = {"CORRAL_OPERATOR_TOKEN": operator}

        def upgrade(*args: str, token: dict[str, str] = env) -> Any:
            return corral("fleet", "upgrade", *args, "-E", "remote", cwd=root, env=token | no_store)

        # a runner at 0.1.0
        control = {"Authorization": f"Bearer {operator}"}
        made = httpx.post(f"{url}/control/fleet/tokens", json={}, headers=control)
        body = {"token": made.json()["token"], "name": "r1", "hostname": "r1.example"}
        joined = httpx.post(f"{url}/fleet/v1/join", json=body | {"version": "0.1.0"})
        assert joined.status_code == 201, joined.text
        runner = {"Authorization": f"Bearer {joined.json()['credential']}"}

        started = upgrade("--to", "0.1.1", "--wheel", str(wheel), "--watch", "1h", "--json")
        answer = json.loads(ok(started))
        digest = hashlib.sha256(data).hexdigest()
        assert answer["state"] == "running" and answer["channel"] == "stable"
        assert answer["source"] == {"name": wheel.name, "sha256": digest, "stored": True}
        wheel.unlink()

        # the runner is told, and the control plane serves the wheel from its store
        beat = httpx.post(f"{url}/fleet/v1/heartbeat", json={"version": "0.1.0"}, headers=runner)
        order = beat.json()["upgrade"]
        assert order["version"] == "0.1.1" and order["wheel"] == {
            "name": wheel.name,
            "sha256": digest,
        }
        served = httpx.get(
            f"{url}/fleet/v1/upgrade/wheel", params={"version": "0.1.1"}, headers=runner
        )
        assert served.status_code == 200 and served.content == data

        # the status, per version, through the gateway
        status = json.loads(ok(upgrade("status", "--json")))
        assert status["id"] == answer["id"]
        [row] = status["versions"]
        assert row["version"] == "0.1.0" and row["runners"] == 1 and row["onlineRatio"] == 1.0
        assert row["runsPerHour"] == 0 and row["failureRate"] is None
        human = ok(upgrade("status"))
        assert "per version" in human and "0.1.0" in human and "100%" in human

        again = upgrade("--to", "0.1.1", "--index", "https://example.invalid/simple")
        assert again.returncode == 1 and "is running: wait for it" in again.stderr
        refused = upgrade("status", token={"CORRAL_OPERATOR_TOKEN": "nope"})
        assert refused.returncode == 2 and "refused the operator token" in refused.stderr

        halted = json.loads(ok(upgrade("halt", "--json")))
        assert halted["state"] == "halted"
        back = json.loads(ok(upgrade("rollback", "--json")))
        assert back["state"] == "rolled_back"

        # a damaged upload is refused, and nothing is kept under its name
        damaged = httpx.post(
            f"{url}/control/fleet/wheels",
            params={"name": wheel.name, "sha256": "0" * 64},
            content=data,
            headers=control,
        )
        assert damaged.status_code == 400 and "damaged" in damaged.json()["error"]

        junk = elsewhere / "corral-0.1.9-py3-none-any.whl"
        junk.write_bytes(b"not a zip")
        refused_upload = upgrade("--to", "0.1.9", "--wheel", str(junk))
        assert refused_upload.returncode == 2 and "these bytes are no wheel" in (
            refused_upload.stderr
        )

        # a channel picks the version on an index the control plane reads
        index = tmp_path / "simple"
        (index / "corral").mkdir(parents=True)
        for name in ("corral-0.1.2-py3-none-any.whl", "corral-0.1.3b1-py3-none-any.whl"):
            (index / "corral" / name).write_bytes(b"")
        beta = upgrade("--index", index.as_uri(), "--channel", "beta", "--json")
        picked = json.loads(ok(beta))
        assert (picked["target"], picked["channel"]) == ("0.1.3b1", "beta")
        assert picked["source"]["back"]["0.1.1"]["sha256"] == digest
        ok(upgrade("halt"))
        none = upgrade("--index", (tmp_path / "empty").as_uri())
        assert none.returncode == 2 and "cannot read the index" in none.stderr
