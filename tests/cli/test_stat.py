"""`corral stat` and `corral top` against a real scheduler: agents with their triggers,
state, running / scale and queue depth; running instances with their status text; locks;
recent refusals; and the same document from a remote gateway with `-E`."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Corral
from tests.cli.test_fleet import runs, started
from tests.cli.test_walking_skeleton import set_command
from tests.processes import corral_process, wait_until

pytestmark = pytest.mark.slow

HOLD = 'rlock "github://acme/app/issues/7" >/dev/null && al-status "fixing #7" && sleep 30'


def stat(corral: Corral, project: Path, *before: str, env: dict[str, str] | None = None) -> Any:
    result = corral(*before, "stat", "--json", cwd=project, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_stat_shows_the_fleet_as_it_runs(corral: Corral, project: Path, tmp_path: Path) -> None:
    before = stat(corral, project)
    (hello,) = before["agents"]
    assert (hello["state"], hello["running"], hello["scale"], hello["queued"]) == ("idle", 0, 1, 0)
    assert hello["triggers"] == ["schedule", "manual", "call"]
    assert before["schedulers"] == [] and before["running"] == []

    set_command(project, HOLD)
    with started(corral, project, tmp_path):
        assert corral("run", "hello", cwd=project).returncode == 0
        wait_until(lambda: stat(corral, project)["locks"], 30)
        assert corral("run", "hello", cwd=project).returncode == 0  # waits: scale 1
        assert corral("disable", "hello", cwd=project).returncode == 0
        assert corral("run", "hello", cwd=project).returncode == 2  # refused
        wait_until(lambda: stat(corral, project)["running"][0]["status"] == "fixing #7", 30)
        now = stat(corral, project)
        text = corral("stat", cwd=project).stdout
        top = corral("top", "--once", cwd=project).stdout
        assert corral("stop", "--now", cwd=project).returncode == 0

    (agent,) = now["agents"]
    assert (agent["state"], agent["running"], agent["scale"], agent["queued"]) == (
        "disabled",
        1,
        1,
        1,
    )
    (scheduler,) = now["schedulers"]
    assert now["scheduler"] == scheduler["id"]
    (run,) = now["running"]
    holder = runs(corral, project)[-1]["id"]
    assert (run["id"], run["agent"], run["status"]) == (holder, "hello", "fixing #7")
    assert run["ageSeconds"] >= 0
    (lock,) = now["locks"]
    assert (lock["key"], lock["holder"], lock["agent"]) == (
        "github://acme/app/issues/7",
        holder,
        "hello",
    )
    (refused,) = now["recent"]
    assert (refused["agent"], refused["state"]) == ("hello", "rejected")
    assert "disabled by an operator" in refused["reason"]

    for view in (text, top):
        lines = view.splitlines()
        row = next(line.split() for line in lines if line.split()[:1] == ["hello"])
        assert row[:5] == ["hello", "schedule", "disabled", "1/1", "1"]
        assert any(holder in line and "fixing #7" in line for line in lines)
        assert any("github://acme/app/issues/7" in line and holder in line for line in lines)
        assert "recent drops and refusals" in view and "disabled by an operator" in view


def test_stat_of_a_remote_environment_asks_its_gateway(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    with started(corral, project, tmp_path) as scheduler:
        url = next(
            word for word in scheduler.output().split() if word.startswith("http://127.0.0.1:")
        ).rstrip(";")
        home = tmp_path / "home" / ".corral" / "environments"
        home.mkdir(parents=True, exist_ok=True)
        (home / "remote.toml").write_text(f'[gateway]\nurl = "{url}"\n')
        token = (project / ".corral" / "operator-token").read_text().strip()

        local = stat(corral, project)
        remote = stat(corral, project, env={"CORRAL_OPERATOR_TOKEN": token})
        assert remote["agents"] == local["agents"]
        through = stat(corral, project, "-E", "remote", env={"CORRAL_OPERATOR_TOKEN": token})
        assert through["scheduler"] == local["scheduler"]
        refused = corral("-E", "remote", "stat", cwd=project, env={"CORRAL_OPERATOR_TOKEN": "bad"})
        assert corral("stop", cwd=project).returncode == 0
    assert refused.returncode == 2
    assert f"the gateway at {url} refused the operator token" in refused.stderr


def test_logs_follow_a_run_until_it_ends(corral: Corral, project: Path, tmp_path: Path) -> None:
    set_command(project, "for i in 1 2 3 4; do echo line $i; sleep 0.5; done")
    with started(corral, project, tmp_path):
        assert corral("run", "hello", cwd=project).returncode == 0
        # Running, or (on a loaded machine, between two polls) already ended: -f follows
        # a run until it ends either way.
        live_or_done = ("running", "succeeded")
        wait_until(lambda: any(r["state"] in live_or_done for r in runs(corral, project)), 30)
        run_id = str(runs(corral, project)[0]["id"])
        followed = corral("logs", run_id, "-f", cwd=project)  # returns when the run ends
        ended = runs(corral, project)[0]
        assert corral("stop", cwd=project).returncode == 0
    assert followed.returncode == 0, followed.stderr
    assert [ln for ln in followed.stdout.splitlines() if ln.startswith("line ")] == [
        "line 1",
        "line 2",
        "line 3",
        "line 4",
    ]
    assert ended["state"] == "succeeded"


def test_top_redraws_until_interrupted(project: Path, tmp_path: Path) -> None:
    with corral_process("top", "-n", "0.2", cwd=project, home=tmp_path / "home") as proc:
        # Several redraws, each reading the store again, before the interrupt: wait for
        # them on the output rather than for a fixed time, which a loaded machine can
        # spend importing the CLI (an interrupt then lands in the import).
        assert proc.stdout is not None
        seen, deadline = b"", time.monotonic() + 60
        while seen.count(b" hello ") < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                assert chunk, "corral top ended before redrawing"
                seen += chunk
        assert seen.count(b" hello ") >= 3, seen
        assert proc.poll() is None  # still redrawing
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
        out = seen.decode(errors="replace") + rest
    assert proc.returncode == 0, err
    assert re.search(r"^ hello +schedule +idle +0/1 +0", out, re.M), out
