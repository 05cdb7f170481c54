"""`corral start`: what it prints (the dashboard, how to log in, its log), a second start
of the same project, a restart after kill -9, `corral logs` of the scheduler, and
`corral kill AGENT`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import Corral
from tests.cli.test_walking_skeleton import set_command
from tests.processes import wait_until

pytestmark = pytest.mark.slow


class Start:
    """`corral start ARGS` in the background, with the `corral` fixture's environment."""

    def __init__(self, project: Path, tmp_path: Path, log: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        home = tmp_path / "home"
        env.update({"HOME": str(home), "CORRAL_HOME": str(home / ".corral"), "COLUMNS": "200"})
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "corral", "start", *args],
                cwd=project,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def started(self) -> Start:
        wait_until(lambda: "started; gateway on" in self.output() or self.proc.poll(), 30)
        assert self.proc.poll() is None, self.output()
        return self

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def __enter__(self) -> Start:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_start_says_where_the_dashboard_is_and_how_to_log_in(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    port = free_port()
    with Start(project, tmp_path, tmp_path / "a.log", "-H", "--port", str(port)) as first:
        first.started()
        out = first.output()
        assert f"dashboard: http://127.0.0.1:{port}/dashboard" in out
        token_file = project / ".corral" / "operator-token"
        assert f"cat {token_file}" in out
        assert token_file.read_text().strip() not in out  # the token itself is not printed
        assert f"pid {first.proc.pid}" in out

        second = corral("start", "-H", "--port", str(port), cwd=project)
        assert second.returncode == 2
        assert "a scheduler of this project is already running here" in second.stderr
        assert f"pid {first.proc.pid}" in second.stderr
        assert "pass --port with a free port" not in second.stderr
        # From inside an agent's folder it is the same project, and the same answer.
        inside = corral("start", "-H", "--port", str(port), cwd=project / "agents" / "hello")
        assert inside.returncode == 2 and f"pid {first.proc.pid}" in inside.stderr

        assert first.stop() == 0
    records = list((project / ".corral").glob("start-*.json"))
    assert records == []  # removed on a clean stop


def test_a_scheduler_killed_with_sigkill_does_not_block_a_restart(
    project: Path, tmp_path: Path
) -> None:
    port = free_port()
    with Start(project, tmp_path, tmp_path / "a.log", "-H", "--port", str(port)) as first:
        first.started()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    stale = project / ".corral" / f"start-{first.proc.pid}.json"
    assert stale.exists()  # left behind: nobody removed it
    with Start(project, tmp_path, tmp_path / "b.log", "-H", "--port", str(port)) as again:
        again.started()
        assert "already running" not in again.output()
        assert not stale.exists()  # found stale and removed
        assert again.stop() == 0


def test_logs_without_an_argument_shows_the_scheduler_log(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    with Start(project, tmp_path, tmp_path / "a.log", "-H", "--port", "0") as first:
        first.started()
        followed = tmp_path / "followed.txt"
        with followed.open("w") as out:
            following = subprocess.Popen(
                [sys.executable, "-m", "corral", "logs", "-f", "-n", "1"],
                cwd=project,
                env={**os.environ, "HOME": str(tmp_path / "home")},
                stdout=out,
            )
        try:
            wait_until(lambda: followed.read_text(), 30)  # the last line so far
            assert first.stop() == 0
            wait_until(lambda: "stopped" in followed.read_text(), 30)  # and what came after
        finally:
            following.kill()
            following.wait(10)
    result = corral("logs", cwd=project)
    assert result.returncode == 0, result.stderr
    assert f"[{first.proc.pid}] corral.scheduler: scheduler " in result.stdout
    assert "started" in result.stdout and "stopped" in result.stdout
    named = corral("logs", "scheduler", "-n", "1", cwd=project)
    assert len(named.stdout.splitlines()) == 1 and "stopped" in named.stdout
    log = project / ".corral" / "logs" / "scheduler.log"
    assert log.stat().st_mode & 0o777 == 0o600


def test_kill_agent_stops_all_its_running_runs(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    set_command(project, "sleep 60")
    config = project / "agents" / "hello" / "config.toml"
    config.write_text(config.read_text().replace("scale = 1", "scale = 2"))
    with Start(project, tmp_path, tmp_path / "a.log", "-H", "--port", "0", "--grace", "0") as first:
        first.started()
        for _ in range(3):
            assert corral("run", "hello", cwd=project).returncode == 0

        def running() -> list[dict[str, object]]:
            listed = corral("runs", "--json", cwd=project)
            return [r for r in json.loads(listed.stdout) if r["state"] == "running"]

        wait_until(lambda: len(running()) == 2, 30)
        result = corral("kill", "hello", cwd=project)
        assert result.returncode == 0, result.stderr
        assert "asked 2 run(s) of agent hello to stop" in result.stdout
        assert result.stdout.count("killed after") == 2
        missing = corral("kill", "nobody", cwd=project)
        assert missing.returncode == 2 and "neither an agent" in missing.stderr
        assert first.stop() == 0
