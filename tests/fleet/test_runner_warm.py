"""Warm workspaces on runner hosts, end to end on both stores: a real `corral start`
control plane and a real `corral runner start` process. Once the runner has run an agent
with `[scale] warm`, it prepares a workspace of it in the background (hooks.warm, from
the agent's bundle); the next run starts in it (what hooks.warm made is there, the
refresh ran), it is kept for the next run and recycled after warmMaxRuns (a new one is
prepared); the runner reports its ready count in heartbeats, which the control plane
shows (`/control/fleet/runners`, `corral_warm_ready`). A failing hooks.warm fails no
run: they run cold."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import pytest

from corral.store import Run, RunState, open_store
from tests.fleet.fleetkit import (
    Plane,
    RunnerProcess,
    control_plane,
    join_runner,
    start_runner,
    wait_for,
)
from tests.scheduler.helpers import write_project

pytestmark = pytest.mark.slow

PROJECT = """[fleet]
heartbeatSeconds = 1
offlineAfterSeconds = 10
"""

#: The agent's command: what the workspace holds when it starts.
COMMAND = (
    'echo "made=$(cat made-by-warm 2>/dev/null | tr "\\n" " ")"; '
    'echo "refreshes=$(wc -l < refresh-log 2>/dev/null || echo 0)"; '
    'echo "cwd=$PWD"'
)


def _runs(store_url: str) -> list[Run]:
    async def read() -> list[Run]:
        async with await open_store(store_url) as store:
            return await store.list_runs(limit=50)

    return asyncio.run(read())


def _project(root: Path, warm_hook: str, max_runs: int) -> None:
    write_project(
        root,
        {"w": {"command": ["/bin/sh", "-c", COMMAND], "runsOn": []}},
        PROJECT,
        tables={
            "w": (
                "[hooks]\n"
                f"warm = [{warm_hook!r}]\n"
                "refresh = ['echo refreshed >> refresh-log']\n"
                "[scale]\nmax = 2\nwarm = 1\n"
                f"warmMaxRuns = {max_runs}\n"
            )
        },
    )


def _warm_dir(runner: RunnerProcess) -> Path:
    return runner.home / f"runner-{runner.runner_id}" / "work" / ".corral" / "warm" / "w"


def _ready(runner: RunnerProcess) -> list[str]:
    try:
        return sorted(p.name[: -len(".ready")] for p in _warm_dir(runner).glob("*.ready"))
    except OSError:
        return []


def _run_once(plane: Plane, store_url: str, runner: RunnerProcess, count: int) -> str:
    """Trigger a run of w, wait for it (the ``count``-th) to succeed; its log."""
    plane.trigger("w")

    def ended() -> list[Run]:
        runs = _runs(store_url)
        return runs if len(runs) == count and all(r.state.is_terminal for r in runs) else []

    try:
        runs = wait_for(ended, 90)
    except AssertionError:
        raise AssertionError(plane.process.output()[-3000:] + runner.output()[-3000:]) from None
    newest = max(runs, key=lambda r: r.created_at)
    log = (plane.root / ".corral" / "logs" / f"{newest.id}.log").read_text()
    assert newest.state is RunState.SUCCEEDED, log
    assert newest.runner_id == runner.runner_id
    return log


def _workspace(log: str) -> tuple[str, int]:
    found = re.search(r"warm start: workspace (\w+), prepared \d+ s ago, (\d+) runs", log)
    assert found is not None, log
    return found.group(1), int(found.group(2))


def test_runs_on_a_runner_start_in_its_warm_workspaces(tmp_path: Path, store_url: str) -> None:
    root = tmp_path / "project"
    _project(root, 'echo "prepared by $CORRAL_TRIGGER" >> made-by-warm', max_runs=2)
    with control_plane(root, store_url, tmp_path / "start.log") as plane:
        plane.push()
        runner = start_runner(join_runner(plane, tmp_path, "r1", [], 2))
        try:
            # the first run of the agent on this runner: cold (the runner learns the agent)
            first = _run_once(plane, store_url, runner, 1)
            assert "[corral] cold start" in first, first
            assert "made=prepared by manual" in first, first  # its own hooks.warm
            # then the runner prepares one in the background, and reports it
            key = wait_for(lambda: _ready(runner), 60)[0]

            def reported() -> bool:
                listed = plane.control("GET", "/fleet/runners").json()["runners"]
                return any(r["id"] == runner.runner_id and r["warm"] == {"w": 1} for r in listed)

            wait_for(reported, 30)
            metrics = httpx.get(
                f"{plane.url}/metrics",
                headers={"Authorization": f"Bearer {plane.operator}"},
                timeout=30,
            ).text
            assert 'corral_warm_ready{agent="w"} 1.0' in metrics, metrics

            # the second run starts in it: hooks.warm's file is there, the refresh ran
            second = _run_once(plane, store_url, runner, 2)
            assert _workspace(second) == (key, 0), second
            assert "made=prepared by warm" in second, second
            assert "refreshes=1" in second, second
            assert f"/warm/w/{key}" in second, second

            # kept for the next run (1 of warmMaxRuns = 2 served)
            wait_for(lambda: _ready(runner) == [key], 30)
            third = _run_once(plane, store_url, runner, 3)
            assert _workspace(third) == (key, 1), third
            assert "refreshes=2" in third, third

            # recycled after warmMaxRuns: a new workspace is prepared and the next run
            # starts in it
            fresh = wait_for(lambda: [k for k in _ready(runner) if k != key], 60)[0]
            assert not (_warm_dir(runner) / key).exists()
            fourth = _run_once(plane, store_url, runner, 4)
            assert _workspace(fourth) == (fresh, 0), fourth
            assert "made=prepared by warm" in fourth and "refreshes=1" in fourth, fourth
        finally:
            runner.stop()


def test_a_failing_warm_hook_on_a_runner_fails_no_run(tmp_path: Path, store_url: str) -> None:
    root = tmp_path / "project"
    _project(root, 'echo "warm hook of $CORRAL_TRIGGER fails"; exit 7', max_runs=20)
    with control_plane(root, store_url, tmp_path / "start.log") as plane:
        plane.push()
        runner = start_runner(join_runner(plane, tmp_path, "r1", [], 2))
        try:
            first = _run_once(plane, store_url, runner, 1)
            assert "[corral] cold start" in first, first
            # the runner tried to prepare one in the background, and failed
            wait_for(lambda: "preparing a warm workspace of w failed" in runner.output(), 60)
            warm_log = (
                runner.home / f"runner-{runner.runner_id}" / "work" / ".corral" / "logs"
            ) / "warm-w.log"
            assert "warm hook of warm fails" in warm_log.read_text()
            assert _ready(runner) == []
            # the next run is not failed by it: it runs cold
            second = _run_once(plane, store_url, runner, 2)
            assert "[corral] cold start" in second, second
            assert "made=" in second and "refreshes=0" in second, second
        finally:
            runner.stop()


def test_a_runner_with_a_ready_workspace_is_given_the_run(tmp_path: Path, store_url: str) -> None:
    """Of two runners waiting for work, the one that reported a ready workspace of the
    run's agent claims it (the other lets it go first)."""
    root = tmp_path / "project"
    _project(root, 'echo "prepared by $CORRAL_TRIGGER" >> made-by-warm', max_runs=100)
    with control_plane(root, store_url, tmp_path / "start.log") as plane:
        plane.push()
        warm = start_runner(join_runner(plane, tmp_path, "warm", [], 1))
        cold: RunnerProcess | None = None
        try:
            _run_once(plane, store_url, warm, 1)  # the warm runner learns the agent
            cold = start_runner(join_runner(plane, tmp_path, "cold", [], 1))

            def reported(runner: RunnerProcess, ready: dict[str, int] | None) -> bool:
                listed = plane.control("GET", "/fleet/runners").json()["runners"]
                return any(
                    r["id"] == runner.runner_id and r["online"] and r["warm"] == ready
                    for r in listed
                )

            wait_for(lambda: reported(cold, None), 60)
            for count in range(2, 10):
                wait_for(lambda: reported(warm, {"w": 1}), 60)
                time.sleep(0.5)  # both requests for work are waiting
                log = _run_once(plane, store_url, warm, count)
                assert "[corral] warm start" in log, log
        finally:
            if cold is not None:
                cold.stop()
            warm.stop()
