"""The runner API and /control/fleet through a real `corral start` process, on both
stores: join, heartbeat, a second redemption refused and recorded, a revoked runner
refused on its next request, wrong credentials, a runner acting only for itself, the
cap, bounded bodies, offline detection by the running scheduler, and /metrics."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import wait_until
from tests.scheduler.helpers import write_project
from tests.scheduler.procs import SchedulerProcess

# each test starts a `corral start` (seconds on a busy machine) and waits on its timings
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PROJECT = """maxRunners = 3

[fleet]
heartbeatSeconds = 1
offlineAfterSeconds = 2
"""


@dataclass
class ControlPlane:
    url: str
    operator: str
    process: SchedulerProcess

    def control(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.operator}"}
        return httpx.request(method, f"{self.url}/control/fleet{path}", headers=headers, **kw)

    def token(self, **body: Any) -> str:
        made = self.control("POST", "/tokens", json=body)
        assert made.status_code == 201, made.text
        return str(made.json()["token"])

    def join(self, token: str, name: str, **extra: Any) -> httpx.Response:
        body = {"token": token, "name": name, "hostname": f"{name}.example", "version": "1.0"}
        return httpx.post(f"{self.url}/fleet/v1/join", json=body | extra)

    def beat(self, credential: str, **body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {credential}"}
        return httpx.post(f"{self.url}/fleet/v1/heartbeat", json=body, headers=headers)


@pytest.fixture
def plane(tmp_path: Path, store_url: str) -> Iterator[ControlPlane]:
    root = tmp_path / "project"
    write_project(root, {"dev": {"command": "true"}}, PROJECT)
    with SchedulerProcess(root, store_url, tmp_path / "start.log") as process:
        wait_until(lambda: "started; gateway on" in process.output(), 60)
        found = re.search(r"gateway on (http://127\.0\.0\.1:\d+)", process.output())
        assert found is not None, process.output()
        operator = (root / ".corral" / "operator-token").read_text().strip()
        yield ControlPlane(found.group(1), operator, process)
        process.stop()


def test_join_heartbeat_reuse_revoke(plane: ControlPlane) -> None:
    token = plane.token(labels=["gpu"])
    joined = plane.join(token, "alpha", labels=["big"], slots=4)
    assert joined.status_code == 201, joined.text
    body = joined.json()
    credential = body["credential"]
    assert body["labels"] == ["big", "gpu"] and body["slots"] == 4
    assert (body["heartbeatSeconds"], body["offlineAfterSeconds"]) == (1, 2)
    beat = plane.beat(credential, version="1.1", running=[], bundles=[])
    assert beat.status_code == 200 and beat.json()["state"] == "active"

    # the same token again: refused, and recorded with who tried
    again = plane.join(token, "beta")
    assert again.status_code == 403
    assert "already redeemed" in again.json()["error"] and again.json()["reason"] == "reused"
    [anomaly] = plane.control("GET", "/anomalies").json()["anomalies"]
    assert anomaly["kind"] == "token_reused" and anomaly["evidence"]["name"] == "beta"
    assert anomaly["evidence"]["address"] == "127.0.0.1"

    # cordoned: the heartbeat says so; revoked: the very next request is refused
    runner_id = body["runnerId"]
    assert plane.control("POST", f"/runners/{runner_id}/cordon").json()["changed"]
    assert plane.beat(credential).json()["state"] == "cordoned"
    revoked = plane.control("POST", f"/runners/{runner_id}/revoke")
    assert revoked.status_code == 200 and revoked.json()["runner"]["state"] == "revoked"
    refused = plane.beat(credential)
    assert refused.status_code == 403 and "was revoked" in refused.json()["error"]
    back = plane.control("POST", f"/runners/{runner_id}/uncordon")
    assert back.status_code == 409 and "revoked" in back.json()["error"]
    [runner] = plane.control("GET", "/runners").json()["runners"]
    assert runner["state"] == "revoked" and runner["version"] == "1.1"


def test_wrong_credentials_and_acting_as_another(plane: ControlPlane) -> None:
    a = plane.join(plane.token(), "a").json()
    b = plane.join(plane.token(), "b").json()
    missing = httpx.post(f"{plane.url}/fleet/v1/heartbeat", json={})
    assert missing.status_code == 401 and "credential is required" in missing.json()["error"]
    wrong = plane.beat("crr_not-a-credential")
    assert wrong.status_code == 401 and "unknown runner credential" in wrong.json()["error"]
    operator = plane.beat(plane.operator)  # an operator token is no runner credential
    assert operator.status_code == 401
    # a runner names itself by its credential only: a field naming another is refused
    posing = plane.beat(a["credential"], runnerId=b["runnerId"])
    assert posing.status_code == 422
    before = {r["id"]: r for r in plane.control("GET", "/runners").json()["runners"]}
    time.sleep(0.05)
    assert plane.beat(a["credential"], version="9.9").status_code == 200
    after = {r["id"]: r for r in plane.control("GET", "/runners").json()["runners"]}
    assert after[a["runnerId"]]["version"] == "9.9"
    assert after[b["runnerId"]] == before[b["runnerId"]] | {
        "secondsSinceHeartbeat": after[b["runnerId"]]["secondsSinceHeartbeat"],
        "status": after[b["runnerId"]]["status"],
        "online": after[b["runnerId"]]["online"],
        "offlineSince": after[b["runnerId"]]["offlineSince"],
    }
    assert after[b["runnerId"]]["version"] == "1.0"
    # the control API wants an operator token, not a runner's credential
    as_runner = httpx.get(
        f"{plane.url}/control/fleet/runners",
        headers={"Authorization": f"Bearer {a['credential']}"},
    )
    assert as_runner.status_code == 401
    unknown = plane.join("cft_never-made", "c")
    assert unknown.status_code == 403 and unknown.json()["reason"] == "unknown_token"


def test_the_cap_and_bounded_bodies(plane: ControlPlane) -> None:
    for name in ("a", "b", "c"):
        assert plane.join(plane.token(), name).status_code == 201
    token = plane.token()
    full = plane.join(token, "d")
    assert full.status_code == 409 and "maxRunners is 3" in full.json()["error"]
    listed = {t["id"]: t for t in plane.control("GET", "/tokens").json()["tokens"]}
    assert sum(t["status"] == "unused" for t in listed.values()) == 1  # d's, still usable
    # a body over the cap is refused unread
    big = httpx.post(
        f"{plane.url}/fleet/v1/join",
        content=b"{" + b" " * (70 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert big.status_code == 413 and "request body over" in big.json()["error"]
    # no credential: refused from the headers, whatever the body
    blind = httpx.post(f"{plane.url}/fleet/v1/heartbeat", content=b"x" * (70 * 1024))
    assert blind.status_code == 401
    bad = httpx.post(f"{plane.url}/fleet/v1/join", json={"token": "t", "name": "bad name!"})
    assert bad.status_code == 422 and bad.json()["ok"] is False


def test_a_silent_runner_goes_offline_with_one_anomaly(plane: ControlPlane) -> None:
    joined = plane.join(plane.token(), "quiet").json()
    assert plane.beat(joined["credential"]).status_code == 200

    def offline() -> bool:
        kinds = [a["kind"] for a in plane.control("GET", "/anomalies").json()["anomalies"]]
        return "runner_offline" in kinds

    # found by the scheduler's own supervisor: nothing reads the fleet meanwhile
    time.sleep(4.5)
    assert "is offline" in plane.process.output()
    wait_until(offline, 10)
    [runner] = plane.control("GET", "/runners").json()["runners"]
    assert runner["status"] == "offline" and runner["offlineSince"] is not None
    time.sleep(2.5)  # more ticks, more reads: still one anomaly for this outage
    anomalies = plane.control("GET", "/anomalies").json()["anomalies"]
    assert [a["kind"] for a in anomalies] == ["runner_offline"]
    assert anomalies[0]["subject"] == joined["runnerId"]
    status = plane.control("GET", "/status").json()
    assert status["runners"]["offline"] == 1 and status["anomalies"]["open"] == 1
    assert status["onlineRatio"] == 1.0  # heartbeating within 3 minutes still
    metrics = httpx.get(
        f"{plane.url}/metrics", headers={"Authorization": f"Bearer {plane.operator}"}
    ).text
    assert 'corral_fleet_runners{state="offline"} 1.0' in metrics
    assert 'corral_fleet_anomalies_open{kind="runner_offline"} 1.0' in metrics
    assert "corral_fleet_online_ratio 1.0" in metrics
    # it comes back: online again, and the anomaly stays until resolved
    assert plane.beat(joined["credential"]).status_code == 200
    [runner] = plane.control("GET", "/runners").json()["runners"]
    assert runner["status"] == "online"
    resolved = plane.control(
        "POST", f"/anomalies/{anomalies[0]['id']}/resolve", json={"note": "rebooted"}
    )
    assert resolved.status_code == 200 and resolved.json()["anomaly"]["resolution"] == "rebooted"
    assert plane.control("GET", "/anomalies").json()["anomalies"] == []
