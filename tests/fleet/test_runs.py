"""Runs on runners, end to end, on both stores: a real `corral start` control plane and
real `corral runner start` processes with HOMEs and configs of their own. Runs spread
over runners by labels and slots, the in-run commands work from a runner, a run records
its runner and bundle, its log is on the control plane (one runner in a simulated
host); a runner killed mid-run loses
its run to the other runner within 15 s, never two live processes for one item, scale
never exceeded; runners act only on their own runs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.store import RunState, open_store
from tests.fleet.fleetkit import (
    Plane,
    RunnerProcess,
    clean_env,
    control_plane,
    join_runner,
    run_processes,
    start_runner,
    wait_for,
)
from tests.hosts import hosts
from tests.scheduler.helpers import write_project

pytestmark = pytest.mark.slow

PROJECT = """[fleet]
heartbeatSeconds = 1
offlineAfterSeconds = 4
"""


def remote_command(marker: str, out: Path, seconds: float) -> str:
    """The runner agent: output, a lock, a status, a return (in a call), its pid."""
    return (
        f'echo "hello from $CORRAL_RUN_ID"; '
        f'rlock "repo:$CORRAL_RUN_ID" && echo "locked"; '
        f'al-status "working on $CORRAL_ITEM_ID"; '
        f'echo "$CORRAL_RUN_ID $$" >> "{out}/pids"; '
        f"sleep {seconds} # {marker}\n"
        f'al-return "answer-$CORRAL_ITEM_ID" >/dev/null 2>&1; true'
    )


def _runs(store_url: str) -> list:  # type: ignore[type-arg]
    async def read() -> list:  # type: ignore[type-arg]
        async with await open_store(store_url) as store:
            return await store.list_runs(limit=200)

    return asyncio.run(read())


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    return tmp_path / "project"


def _fleet_project(root: Path, out: Path, marker: str, seconds: float, scale: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_project(
        root,
        {
            "remote": {
                "command": ["/bin/sh", "-c", remote_command(marker, out, seconds)],
                "runsOn": ["linux"],
                "scale": scale,
            },
            "gpu": {"command": ["/bin/sh", "-c", "echo gpu"], "runsOn": ["gpu"]},
            "quitter": {
                "command": ["/bin/sh", "-c", f"echo bye; al-exit 3; sleep 30 # {marker}"],
                "runsOn": [],
            },
            "boss": {
                "command": [
                    "/bin/sh",
                    "-c",
                    "id=$(echo ctx | al-subagent remote | "
                    """sed -n 's/.*"callId":"\\([^"]*\\)".*/\\1/p'); """
                    'al-subagent-wait "$id" --timeout 120',
                ]
            },
        },
        PROJECT,
    )


@pytest.fixture
def fleet(tmp_path: Path, store_url: str) -> Iterator[tuple[Plane, list[RunnerProcess], Path]]:
    """A control plane listening on every address, a runner on this host and one in a
    simulated host (reaching the control plane at ``host.peer``)."""
    root = tmp_path / "project"
    out = tmp_path / "out"
    _fleet_project(root, out, "fleetmark-e2e", 1.5, 2)
    runners: list[RunnerProcess] = []
    with (
        hosts("r2") as made,
        control_plane(root, store_url, tmp_path / "start.log", "--expose") as plane,
    ):
        plane.push()
        host = made["r2"]
        try:
            runners.append(start_runner(join_runner(plane, tmp_path, "r1", ["linux"], 1)))
            url = f"http://{host.peer}:{plane.port}"
            r2 = join_runner(plane, tmp_path, "r2", ["linux"], 1, host=host, url=url)
            # several control plane URLs: the first one is down
            config = json.loads(r2.config.read_text())
            r2.config.write_text(json.dumps(config | {"urls": ["http://127.0.0.1:9", url]}))
            runners.append(start_runner(r2))
            yield plane, runners, out
        finally:
            for runner in runners:
                runner.stop()


def test_runs_spread_over_runners_with_in_run_commands(
    fleet: tuple[Plane, list[RunnerProcess], Path], store_url: str
) -> None:
    plane, runners, _ = fleet
    for _ in range(4):
        plane.trigger("remote")
    plane.trigger("gpu")  # no runner has the label: it waits
    plane.trigger("boss")  # local, calls remote through the fleet
    plane.trigger("quitter")  # al-exit 3 on a runner

    def finished() -> bool:
        runs = [r for r in _runs(store_url) if r.agent in ("remote", "boss", "quitter")]
        return len(runs) >= 7 and all(r.state.is_terminal for r in runs)

    try:
        wait_for(finished, 120)
    except AssertionError:
        raise AssertionError(
            plane.process.output()[-4000:] + "\n".join(r.output()[-3000:] for r in runners)
        ) from None
    runs = _runs(store_url)
    remote = [r for r in runs if r.agent == "remote"]
    assert len(remote) == 5 and all(r.state is RunState.SUCCEEDED for r in remote), [
        (r.id, r.state, r.error) for r in remote
    ]
    ids = {runner.runner_id for runner in runners}
    assert {r.runner_id for r in remote} == ids  # both runners took runs
    assert all(r.owner in ids and r.bundle and r.bundle.startswith("sha256:") for r in remote)
    assert all(r.status_text and r.status_text.startswith("working on") for r in remote)
    assert all(r.host and "(runner r" in r.host for r in remote)
    # never more than the two slots at once (scale 2)
    spans = sorted((r.started_at, r.ended_at) for r in remote if r.started_at and r.ended_at)
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2
    # the call through the fleet answered the boss
    [boss] = [r for r in runs if r.agent == "boss"]
    assert boss.state is RunState.SUCCEEDED, boss.error
    boss_log = (plane.root / ".corral" / "logs" / f"{boss.id}.log").read_text()
    assert "answer-" in boss_log, boss_log
    # al-exit on a runner ends the run there with its code, at once
    [quitter] = [r for r in runs if r.agent == "quitter"]
    assert quitter.state is RunState.FAILED and quitter.exit_code == 3, quitter
    assert quitter.ended_at and quitter.started_at
    assert (quitter.ended_at - quitter.started_at).total_seconds() < 20
    # the gpu agent's item waits: no runner has the label, the control plane never runs it
    assert not [r for r in runs if r.agent == "gpu"]
    # the log of a runner's run is on the control plane: `corral logs` shows it
    shown = subprocess.run(
        [sys.executable, "-m", "corral", "logs", remote[0].id],
        cwd=plane.root,
        env=clean_env(plane.root.parent) | {"CORRAL_STATE_URL": store_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"hello from {remote[0].id}" in shown.stdout, shown.stdout + shown.stderr
    assert "locked" in shown.stdout
    show = subprocess.run(
        [sys.executable, "-m", "corral", "runs", "show", remote[0].id],
        cwd=plane.root,
        env=clean_env(plane.root.parent) | {"CORRAL_STATE_URL": store_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"runner   {remote[0].runner_id}" in show.stdout, show.stdout + show.stderr


def test_a_killed_runner_loses_its_run_to_the_other(tmp_path: Path, store_url: str) -> None:
    root = tmp_path / "project"
    out = tmp_path / "out"
    marker = "fleetmark-kill"
    _fleet_project(root, out, marker, 6, 1)
    runners: list[RunnerProcess] = []
    with control_plane(root, store_url, tmp_path / "start.log") as plane:
        plane.push()
        try:
            for name in ("k1", "k2"):
                runners.append(start_runner(join_runner(plane, tmp_path, name, ["linux"], 1)))
            seen: list[dict[str, list[int]]] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    seen.append(run_processes(marker))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            plane.trigger("remote")
            first = wait_for(lambda: [r for r in _runs(store_url) if r.started_at], 60)[0]
            victim = next(r for r in runners if r.runner_id == first.runner_id)
            wait_for(lambda: run_processes(marker), 30)
            victim.kill9()
            killed_at = time.monotonic()
            # its run's processes do not outlive it: the watchdog kills them
            wait_for(lambda: not run_processes(marker), 10)
            gone_after = time.monotonic() - killed_at

            def rerun() -> object:
                runs = _runs(store_url)
                again = [r for r in runs if r.id != first.id]
                return again and again[0]

            second = wait_for(rerun, 30, interval=0.05)  # claimed by the other runner
            took = time.monotonic() - killed_at
            assert took < 15, took
            assert gone_after < took
            print(
                f"kill -9: processes gone after {gone_after:.2f} s, re-claimed after {took:.2f} s"
            )
            started = wait_for(
                lambda: next(r for r in _runs(store_url) if r.id == second.id).started_at, 30
            )
            assert started is not None
            assert second.runner_id != first.runner_id
            lost = next(r for r in _runs(store_url) if r.id == first.id)
            assert lost.state is RunState.LOST, lost
            wait_for(
                lambda: next(r for r in _runs(store_url) if r.id == second.id).state.is_terminal,
                60,
            )
            stop.set()
            sampler.join(5)
            assert all(len(pids) <= 1 for sample in seen for pids in sample.values())
            assert all(sum(len(p) for p in sample.values()) <= 1 for sample in seen)
        finally:
            for runner in runners:
                runner.stop()


def test_runners_act_only_on_their_own_runs(tmp_path: Path, store_url: str) -> None:
    root = tmp_path / "project"
    out = tmp_path / "out"
    _fleet_project(root, out, "fleetmark-own", 30, 1)
    with control_plane(root, store_url, tmp_path / "start.log") as plane:
        plane.push()
        a = join_runner(plane, tmp_path, "a", ["linux"], 1)
        b = join_runner(plane, tmp_path, "b", ["linux"], 1)
        cred = {r.name: json.loads(r.config.read_text())["credential"] for r in (a, b)}

        def call(who: str, method: str, path: str, **kw: object) -> httpx.Response:
            headers = {"Authorization": f"Bearer {cred[who]}"}
            return httpx.request(
                method, f"{plane.url}/fleet/v1{path}", headers=headers, timeout=60, **kw
            )

        plane.trigger("remote")
        answer = call("a", "POST", "/work", json={"free": 1, "wait": 10}).json()
        [given] = answer["runs"]
        run_id, fence = given["run"]["id"], given["run"]["fence"]
        assert given["bundle"].startswith("sha256:") and given["agentBundle"]
        assert isinstance(given["credentials"], list)
        # b may not report on, log to, end or read a's run
        for path, body in (
            ("/running", {"fence": fence, "pid": 1}),
            ("/secret", {"fence": fence, "hash": "0" * 64}),
            ("/end", {"fence": fence, "state": "succeeded"}),
            ("/release", {"fence": fence, "reason": "x"}),
        ):
            refused = call("b", "POST", f"/runs/{run_id}{path}", json=body)
            assert refused.status_code == 403, (path, refused.text)
            assert "is not a run of runner" in refused.json()["error"]
        logged = call("b", "POST", f"/runs/{run_id}/log", params={"fence": fence}, content=b"x")
        assert logged.status_code == 403
        assert call("b", "GET", f"/runs/{run_id}").status_code == 403
        # b gets no credentials of a's run: a second request for work hands out nothing
        assert call("b", "POST", "/work", json={"free": 1, "wait": 0}).json()["runs"] == []
        # a stale fence is refused 409
        stale = call("a", "POST", f"/runs/{run_id}/running", json={"fence": fence + 99, "pid": 1})
        assert stale.status_code == 409 and "no longer this runner's" in stale.json()["error"]
        # a's heartbeat renews it; reporting a run it does not hold answers it gone
        beat = call(
            "a",
            "POST",
            "/heartbeat",
            json={"running": [{"runId": run_id, "fence": fence}, {"runId": "x-1", "fence": 1}]},
        ).json()
        assert beat["gone"] == ["x-1"]
        # revoked: refused on its next call
        revoke = plane.control("POST", f"/fleet/runners/{a.runner_id}/revoke")
        assert revoke.status_code == 200
        late = call("a", "POST", f"/runs/{run_id}/end", json={"fence": fence, "state": "succeeded"})
        assert late.status_code == 403 and "revoked" in late.json()["error"]


def test_an_operator_kill_and_a_drain_reach_the_runner(tmp_path: Path, store_url: str) -> None:
    root = tmp_path / "project"
    marker = "fleetmark-drain"
    _fleet_project(root, tmp_path / "out", marker, 60, 2)
    with control_plane(root, store_url, tmp_path / "start.log") as plane:
        plane.push()
        runner = join_runner(plane, tmp_path, "d1", ["linux"], 2)
        config = json.loads(runner.config.read_text())
        runner.config.write_text(json.dumps(config | {"drainSeconds": 1}))
        start_runner(runner)
        try:
            plane.trigger("remote")
            plane.trigger("remote")
            started = wait_for(
                lambda: [r for r in _runs(store_url) if r.started_at][1:] and _runs(store_url), 90
            )
            wait_for(lambda: len(run_processes(marker)) == 2, 30)
            one, two = sorted((r for r in started if r.agent == "remote"), key=lambda r: r.id)
            assert plane.control("POST", f"/runs/{one.id}/kill").status_code in (200, 202)
            killed = wait_for(
                lambda: [r for r in _runs(store_url) if r.id == one.id and r.state.is_terminal],
                20,
            )[0]
            assert killed.state is RunState.KILLED and "operator" in (killed.error or "")
            runner.stop()  # SIGTERM: drains for 1 s, then gives the run back
            assert runner.proc is not None and runner.proc.returncode == 0, runner.output()
            [after] = [r for r in _runs(store_url) if r.id == two.id]
            assert after.state is RunState.KILLED and "queued again" in (after.error or "")
            wait_for(lambda: not run_processes(marker), 5)  # its processes are exiting
        finally:
            runner.stop()
