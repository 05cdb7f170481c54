"""`corral start` with the commands that talk to it: run --wait, pause, scale, kill, stop."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.cli.conftest import Corral
from tests.cli.test_walking_skeleton import set_command
from tests.processes import popen_corral, wait_until
from tests.scheduler.procs import SchedulerProcess

pytestmark = pytest.mark.slow


def state_url(project: Path) -> str:
    return f"sqlite:///{project / '.corral' / 'state.db'}"


def runs(corral: Corral, project: Path) -> list[dict[str, object]]:
    result = corral("runs", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def started(corral: Corral, project: Path, tmp_path: Path) -> SchedulerProcess:
    scheduler = SchedulerProcess(project, state_url(project), tmp_path / "scheduler.log")
    wait_until(lambda: "started; gateway on" in scheduler.output(), 30)
    return scheduler


def test_run_goes_through_the_scheduler_and_wait_follows_it(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    with started(corral, project, tmp_path) as scheduler:
        result = corral("run", "hello", "through the scheduler", "--wait", cwd=project)
        assert result.returncode == 0, result.stderr
        assert "queued a run of hello" in result.stderr
        assert "through the scheduler" in result.stdout
        assert "succeeded" in result.stderr

        set_command(project, "exit 5")  # queued without waiting, whatever the run does
        quick = corral("run", "hello", cwd=project)
        assert quick.returncode == 0
        wait_until(lambda: len(runs(corral, project)) == 2)
        assert scheduler.stop() == 0
    assert "stopped" in scheduler.output()


def test_pause_scale_disable_and_kill(corral: Corral, project: Path, tmp_path: Path) -> None:
    set_command(project, "sleep 30")
    with started(corral, project, tmp_path) as scheduler:
        assert corral("pause", "hello", cwd=project).returncode == 0
        assert corral("run", "hello", cwd=project).returncode == 0
        time.sleep(1.0)
        assert runs(corral, project) == []  # queued, not dispatched

        assert corral("scale", "hello", "2", cwd=project).returncode == 0
        config = (project / "agents" / "hello" / "config.toml").read_text()
        assert "scale = 2" in config and "scale = 1" not in config
        assert corral("run", "hello", cwd=project).returncode == 0
        assert corral("resume", "hello", cwd=project).returncode == 0
        wait_until(lambda: len([r for r in runs(corral, project) if r["state"] == "running"]) == 2)

        assert corral("disable", "hello", cwd=project).returncode == 0
        refused = corral("run", "hello", cwd=project)
        assert refused.returncode == 2
        assert "disabled by an operator" in refused.stderr
        assert corral("enable", "hello", cwd=project).returncode == 0

        victim = runs(corral, project)[0]["id"]
        killed = corral("kill", str(victim), cwd=project)
        assert killed.returncode == 0, killed.stderr
        assert f"run {victim} killed" in killed.stdout

        stopped = corral("stop", "--now", cwd=project)
        assert stopped.returncode == 0, stopped.stderr
        assert scheduler.proc.wait(30) == 0
    states = sorted(str(r["state"]) for r in runs(corral, project))
    assert states == ["killed", "killed"]


def test_stop_without_a_scheduler_says_so(corral: Corral, project: Path) -> None:
    result = corral("stop", cwd=project)
    assert result.returncode == 1
    assert "no scheduler of this project runs here" in result.stderr


def test_kill_reaches_a_foreground_run(corral: Corral, project: Path, tmp_path: Path) -> None:
    set_command(project, "sleep 30")
    proc = popen_corral("run", "hello", cwd=project, home=tmp_path / "home")
    try:
        wait_until(lambda: [r for r in runs(corral, project) if r["state"] == "running"], 30)
        victim = str(runs(corral, project)[0]["id"])
        killed = corral("kill", victim, cwd=project)
        assert killed.returncode == 0, killed.stderr
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143  # SIGTERM reached the agent's process group
    assert "killed" in err and "killed by an operator" in err
    assert runs(corral, project)[0]["state"] == "killed"
