"""Upgrading corral across three real runner processes on PostgreSQL, with wheels of
corral made in the test: a good version rolls out canary then batches with no run killed;
one whose smoke check fails rolls back on the canary alone; one that fails to start rolls
back by itself (its guard notices); one that fails more runs is halted by the comparison."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import __version__
from corral.store import Run, Runner, open_store
from tests.fleet.fleetkit import (
    Plane,
    RunnerProcess,
    clean_env,
    control_plane,
    join_runner,
    start_runner,
    wait_for,
)
from tests.fleet.test_runs import PROJECT
from tests.fleet.wheels import build_wheel
from tests.scheduler.helpers import write_project

pytestmark = pytest.mark.slow

NEW = "0.1.1"


def _project(root: Path, done: Path) -> None:
    command = f'echo "start $CORRAL_RUN_ID"; sleep 1; touch {done}/$CORRAL_RUN_ID; echo done'
    write_project(
        root,
        {"work": {"command": ["/bin/sh", "-c", command], "runsOn": ["edge"], "scale": 3}},
        PROJECT,
    )


def _read(store_url: str) -> tuple[list[Run], list[Runner]]:
    async def read() -> tuple[list[Run], list[Runner]]:
        async with await open_store(store_url) as store:
            return await store.list_runs(limit=1000), await store.list_runners()

    return asyncio.run(read())


def _versions(store_url: str) -> dict[str, str]:
    return {r.name: r.version for r in _read(store_url)[1]}


def _rollout(plane: Plane, store_url: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "corral", "fleet", "upgrade", "status", "--json"],
        cwd=plane.root,
        env=clean_env(plane.root.parent) | {"CORRAL_STATE_URL": store_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _upgrade(plane: Plane, store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", "fleet", "upgrade", *args],
        cwd=plane.root,
        env=clean_env(plane.root.parent) | {"CORRAL_STATE_URL": store_url},
        capture_output=True,
        text=True,
        timeout=60,
    )


class Load:
    """Triggers a run of ``work`` every ``every`` seconds, in a thread."""

    def __init__(self, plane: Plane, every: float = 0.7) -> None:
        self.plane, self.every = plane, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(Exception):
                self.plane.trigger("work")


def _stop(runner: RunnerProcess) -> None:
    runner.stop()
    work = runner.home / f"runner-{runner.runner_id}"
    pidfile = work / "runner.pid"  # a guard that started the old version in its place
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


@contextlib.contextmanager
def fleet(tmp_path: Path, store_url: str) -> Iterator[tuple[Plane, list[RunnerProcess], Path]]:
    root, done = tmp_path / "project", tmp_path / "done"
    done.mkdir()
    _project(root, done)
    runners: list[RunnerProcess] = []
    with control_plane(root, store_url, tmp_path / "start.log") as plane:
        plane.push()
        try:
            for name in ("r1", "r2", "r3"):
                runners.append(start_runner(join_runner(plane, tmp_path, name, ["edge"], 1)))
            wait_for(lambda: len([v for v in _versions(store_url).values() if v]) == 3, 60)
            yield plane, runners, done
        finally:
            for runner in runners:
                _stop(runner)


def _no_run_killed(store_url: str, done: Path) -> list[Run]:
    runs = _read(store_url)[0]
    ended = [r for r in runs if r.state.is_terminal]
    bad = [(r.id, r.state.value, r.error) for r in ended if r.state.value != "succeeded"]
    assert not bad, bad
    # from the host: every run that succeeded ran to its end (its file written)
    assert {r.id for r in ended} <= {p.name for p in done.iterdir()}
    return ended


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_good_version_rolls_out_canary_then_batches_with_no_run_killed(
    tmp_path: Path, store_url: str
) -> None:
    wheel = build_wheel(NEW, tmp_path / "wheels")
    with fleet(tmp_path, store_url) as (plane, runners, done):
        with Load(plane):
            wait_for(lambda: any(p for p in done.iterdir()), 60)
            started = _upgrade(
                plane, store_url, "--to", NEW, "--wheel", str(wheel), "--watch", "2s"
            )
            assert started.returncode == 0, started.stderr
            wait_for(lambda: _rollout(plane, store_url)["state"] == "completed", 240, interval=1)
        assert set(_versions(store_url).values()) == {NEW}
        rollout = _rollout(plane, store_url)
        kinds = [step["kind"] for step in rollout["steps"]]
        assert kinds == ["canary", "batch", "batch"], rollout
        assert all(len(step["runners"]) == 1 for step in rollout["steps"])
        assert all(not step["verdict"]["worse"] for step in rollout["steps"])
        for runner in runners:  # the same processes, re-executed into the new version
            assert runner.proc is not None and runner.proc.poll() is None
            assert f"corral {NEW} is healthy" in runner.output()
        # the runs queued meanwhile end before the runners are stopped
        wait_for(lambda: all(r.state.is_terminal for r in _read(store_url)[0]), 60)
        ended = _no_run_killed(store_url, done)
        assert len(ended) >= 3


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_version_whose_smoke_check_fails_rolls_back_on_the_canary_alone(
    tmp_path: Path, store_url: str
) -> None:
    broken = {"runner/probe.py": ('print(f"corral probe ok', 'raise SystemExit(f"broken probe')}
    wheel = build_wheel(NEW, tmp_path / "wheels", patch=broken)
    with fleet(tmp_path, store_url) as (plane, runners, _done):
        started = _upgrade(plane, store_url, "--to", NEW, "--wheel", str(wheel), "--watch", "2s")
        assert started.returncode == 0, started.stderr
        wait_for(lambda: _rollout(plane, store_url)["state"] == "failed", 180, interval=1)
        rollout = _rollout(plane, store_url)
        [step] = rollout["steps"]
        assert step["kind"] == "canary"
        [canary] = step["runners"]
        assert rollout["runners"][canary]["stage"] == "smoke"
        assert "broken probe" in rollout["runners"][canary]["error"]
        # every runner runs the old version, the canary again
        wait_for(lambda: set(_versions(store_url).values()) == {__version__}, 30)
        for runner in runners:
            assert runner.proc is not None and runner.proc.poll() is None
            if runner.runner_id != canary:
                assert "upgrading to corral" not in runner.output()


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_version_that_fails_to_start_rolls_back_by_itself(tmp_path: Path, store_url: str) -> None:
    broken = {
        "cli/commands/runner.py": (
            "settings = RunnerSettings.from_config(",
            'raise SystemExit("this corral cannot start")\n'
            "    settings = RunnerSettings.from_config(",
        )
    }
    wheel = build_wheel(NEW, tmp_path / "wheels", patch=broken)
    with fleet(tmp_path, store_url) as (plane, _runners, _done):
        started = _upgrade(plane, store_url, "--to", NEW, "--wheel", str(wheel), "--watch", "2s")
        assert started.returncode == 0, started.stderr
        wait_for(lambda: _rollout(plane, store_url)["state"] == "failed", 180, interval=1)
        rollout = _rollout(plane, store_url)
        [step] = rollout["steps"]
        [canary] = step["runners"]
        assert rollout["runners"][canary]["stage"] == "start"
        wait_for(lambda: set(_versions(store_url).values()) == {__version__}, 30)


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_version_that_fails_more_runs_is_halted_by_the_comparison(
    tmp_path: Path, store_url: str
) -> None:
    broken = {
        "runner/agent.py": (
            "project = await self._project(given, run.agent)",
            'raise BundleError("this corral fails its runs")',
        )
    }
    wheel = build_wheel(NEW, tmp_path / "wheels", patch=broken)
    with fleet(tmp_path, store_url) as (plane, _runners, _done), Load(plane, every=0.4):
        started = _upgrade(plane, store_url, "--to", NEW, "--wheel", str(wheel), "--watch", "6s")
        assert started.returncode == 0, started.stderr
        wait_for(lambda: _rollout(plane, store_url)["state"] == "halted", 180, interval=1)
        rollout = _rollout(plane, store_url)
        [step] = rollout["steps"]
        assert step["verdict"]["worse"] and "failure rate" in step["verdict"]["why"]
        versions = _versions(store_url)
        assert sorted(versions.values()) == sorted([NEW, __version__, __version__])
        # the operator rolls it back: the canary goes back to the version it ran before
        back = _upgrade(plane, store_url, "rollback", "--json")
        assert back.returncode == 0, back.stderr
        wait_for(lambda: set(_versions(store_url).values()) == {__version__}, 120, interval=1)
        rollout = _rollout(plane, store_url)
        [canary] = step["runners"]
        assert rollout["state"] == "rolled_back"
        wait_for(
            lambda: _rollout(plane, store_url)["runners"][canary]["state"] == "rolled_back", 30
        )


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_runner_outside_the_version_window_is_refused(tmp_path: Path, store_url: str) -> None:
    root = tmp_path / "project"
    _project(root, tmp_path)
    window = {"CORRAL_FLEET_RUNNER_VERSIONS": "0.2.0,0.3.0"}
    with control_plane(root, store_url, tmp_path / "start.log", env=window) as plane:
        home = tmp_path / "runner-old"
        home.mkdir()
        argv = [sys.executable, "-m", "corral", "runner", "join", plane.url]
        argv += ["--token", plane.token(["edge"]), "--config", str(home / "runner.json")]
        done = subprocess.run(argv, env=clean_env(home), capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        said = done.stderr + done.stdout
        assert f"corral {__version__} is outside" in said, said
        assert "0.2.0 to 0.3.0" in said, said
