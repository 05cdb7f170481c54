"""The fleet's walls, on both stores, through a real `corral start` control plane: a
revoked runner is refused within 5 s on every route (the heartbeat's fast path too) and
its runs are taken back at once, its processes stopped by its `corral runner start`; a
runner's credential opens nothing but the runner API; bundles and run secrets only for
the runner whose run needs them."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.store import RunState, open_store
from tests.fleet.fleetkit import (
    Plane,
    control_plane,
    join_runner,
    run_processes,
    start_runner,
    wait_for,
)
from tests.scheduler.helpers import write_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PROJECT = """[fleet]
heartbeatSeconds = 1
offlineAfterSeconds = 4
"""


def _runs(store_url: str) -> list[Any]:
    async def read() -> list[Any]:
        async with await open_store(store_url) as store:
            return await store.list_runs(limit=50)

    return asyncio.run(read())


def _items(store_url: str) -> list[Any]:
    async def read() -> list[Any]:
        async with await open_store(store_url) as store:
            return await store.list_items(limit=50)

    return asyncio.run(read())


def _project(root: Path, marker: str) -> None:
    write_project(
        root,
        {"remote": {"command": ["/bin/sh", "-c", f"sleep 60 # {marker}"], "runsOn": ["linux"]}},
        PROJECT,
    )


def _caller(plane: Plane, credential: str) -> Any:
    def call(method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {credential}"} | kw.pop("headers", {})
        return httpx.request(method, f"{plane.url}{path}", headers=headers, timeout=60, **kw)

    return call


def test_a_revoked_runner_is_refused_and_loses_its_runs(tmp_path: Path, store_url: str) -> None:
    root = tmp_path / "project"
    marker = "fleetmark-revoked"
    _project(root, marker)
    with control_plane(root, store_url, tmp_path / "start.log") as plane:
        plane.push()
        runner = start_runner(join_runner(plane, tmp_path, "r1", ["linux"], 1))
        try:
            credential = json.loads(runner.config.read_text())["credential"]
            call = _caller(plane, credential)
            plane.trigger("remote")
            wait_for(lambda: run_processes(marker), 60)
            [run] = [r for r in _runs(store_url) if r.state is RunState.RUNNING]
            assert run.owner == runner.runner_id

            revoked = plane.control("POST", f"/fleet/runners/{runner.runner_id}/revoke")
            assert revoked.status_code == 200, revoked.text
            since = time.monotonic()
            # the very next request on every route: the heartbeat's fast path (an empty
            # body), the route's (runs reported), work, a run's routes, the bundles
            for method, path, body in (
                ("POST", "/fleet/v1/heartbeat", {}),
                ("POST", "/fleet/v1/heartbeat", {"running": [{"runId": run.id, "fence": 1}]}),
                ("POST", "/fleet/v1/work", {"free": 1, "wait": 0}),
                ("GET", f"/fleet/v1/runs/{run.id}", None),
                ("POST", f"/fleet/v1/runs/{run.id}/end", {"fence": run.fence, "state": "failed"}),
                ("GET", f"/fleet/v1/bundles/{run.bundle}", None),
            ):
                refused = call(method, path, json=body)
                assert refused.status_code == 403, (path, refused.text)
                assert "revoked" in refused.json()["error"]
            # its run is taken back at once (lost, its item queued again), and the runner,
            # refused, stops the run's process
            [lost] = [r for r in _runs(store_url) if r.id == run.id]
            assert lost.state is RunState.LOST and "was revoked" in (lost.error or "")
            [item] = [i for i in _items(store_url) if i.id == run.item_id]
            assert item.state.value == "queued" and item.lease_owner is None
            wait_for(lambda: not run_processes(marker), 10)
            assert time.monotonic() - since < 15  # the heartbeat every 1 s, loaded machine
            assert "refused this runner" in runner.output()
        finally:
            runner.stop()


def test_run_locally_false_sends_every_run_to_runners(
    tmp_path: Path, store_url: str, corral: Any
) -> None:
    root = tmp_path / "project"
    marker = "fleetmark-nolocal"
    write_project(
        root,
        {"dev": {"command": ["/bin/sh", "-c", f"echo ran-here-or-there # {marker}"]}},
        PROJECT + "runLocally = false\n",
    )
    env = {"CORRAL_STATE_URL": store_url}
    with control_plane(root, store_url, tmp_path / "start.log") as plane:
        plane.push()
        plane.trigger("dev")
        # the control plane runs nothing itself: the run waits, and `corral stat` says why
        time.sleep(1.5)
        assert [i.state.value for i in _items(store_url)] == ["queued"]
        assert _runs(store_url) == []
        shown = corral("stat", cwd=root, env=env)
        assert shown.returncode == 0, shown.stderr
        assert "runLocally = false" in shown.stdout
        assert "dev (1 queued, a runner with any labels)" in shown.stdout
        status = json.loads(corral("stat", "--json", cwd=root, env=env).stdout)
        assert status["runLocally"] is False
        assert [a["runsOn"] for a in status["agents"]] == [[]]
        # a runner without labels takes it
        runner = start_runner(join_runner(plane, tmp_path, "any", [], 1))
        try:
            wait_for(lambda: [r for r in _runs(store_url) if r.state is RunState.SUCCEEDED], 60)
            [run] = _runs(store_url)
            assert run.owner == runner.runner_id
        finally:
            runner.stop()


def test_run_locally_is_validated(tmp_path: Path, corral: Any) -> None:
    root = tmp_path / "project"
    write_project(root, {"dev": {"command": "true"}})
    (root / "config.toml").write_text('[fleet]\nrunLocally = "no"\n')
    shown = corral("stat", cwd=root)
    assert shown.returncode == 2
    assert "'fleet.runLocally' must be true or false" in shown.stderr


def test_corral_run_of_a_runners_agent_wants_here(tmp_path: Path, corral: Any) -> None:
    root = tmp_path / "project"
    write_project(
        root,
        {
            "gpu": {"command": ["/bin/sh", "-c", "echo gpu-ran-here"], "runsOn": ["gpu"]},
            "any": {"command": ["/bin/sh", "-c", "echo any-ran-here"], "runsOn": []},
            "dev": {"command": ["/bin/sh", "-c", "echo dev-ran-here"]},
        },
    )
    refused = corral("run", "gpu", cwd=root)
    assert refused.returncode == 2, refused.stderr
    assert "runs on a runner with labels gpu of the fleet" in refused.stderr
    assert "--here" in refused.stderr and "gpu-ran-here" not in refused.stdout
    assert "any runner" in corral("run", "any", "--foreground", cwd=root).stderr
    listed = corral("runs", "--json", cwd=root)
    assert json.loads(listed.stdout) == [], listed.stdout  # nothing ran, nothing queued
    here = corral("run", "gpu", "--here", cwd=root)
    assert here.returncode == 0, here.stderr
    assert "gpu-ran-here" in here.stdout and "running it on this host as asked" in here.stderr
    assert "dev-ran-here" in corral("run", "dev", cwd=root).stdout  # the others as before
    # under runLocally = false every agent is the runners'
    (root / "config.toml").write_text("[fleet]\nrunLocally = false\n")
    again = corral("run", "dev", cwd=root)
    assert again.returncode == 2 and "runs on any runner of the fleet" in again.stderr
