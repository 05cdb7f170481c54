"""`corral tasks git ...` (the group is mounted by the tasks CLI; here it is called
directly): JSON answers and exit codes, against a local bare repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from corral.cli.commands.tasks_git import git_group
from corral.tasks import Task, TaskSpec, TaskStatus
from corral.tasks.seedfmt import read_board, write_board, write_task


@pytest.fixture
def remote(tmp_path: Path) -> str:
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    return str(bare)


def run(remote: str, claimer: str, cache: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(
        git_group,
        [*args[:1], "--claimer", claimer, "--cache", str(cache), *args[1:]],
        env={"CORRAL_TASKS_GIT": remote},
        catch_exceptions=False,
    )
    return result.exit_code, json.loads(result.output.strip().splitlines()[-1])


def test_the_commands_end_to_end(remote: str, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    write_board(
        seed,
        [
            Task(spec=TaskSpec(id="T-1", project="p", title="base", priority=3)),
            Task(
                spec=TaskSpec(id="T-2", project="p", title="next ✓", priority=9, requires=("T-1",))
            ),
        ],
    )
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(remote, "a", a, "init", str(seed)) == (
        0,
        {"ok": True, "ref": "refs/corral/tasks", "tasks": 2},
    )
    code, out = run(remote, "a", a, "init")
    assert code == 4 and "already has a board" in out["reason"]

    extra = tmp_path / "T-3.toon"
    extra.write_text(write_task(TaskSpec(id="T-3", project="q", title="other", priority=1)))
    assert run(remote, "a", a, "import", str(extra)) == (0, {"ok": True, "added": ["T-3"]})

    code, out = run(remote, "a", a, "claim", "--project", "p")
    assert code == 0 and out["ok"] is True
    assert out["task"]["id"] == "T-1" and out["generation"] == 1 and out["retries"] == 0
    assert out["task"]["status"] == "claimed" and out["task"]["assignee"] == "a"

    code, out = run(remote, "a", a, "heartbeat", "T-1", "--generation", "1")
    assert code == 0 and out["task"]["heartbeatAt"].endswith("Z")
    code, out = run(remote, "b", b, "complete", "T-1")
    assert code == 13 and out["reason"] == "claim lost" and "held by a" in out["detail"]
    code, out = run(remote, "a", a, "complete", "T-1", "--generation", "2")
    assert code == 13
    code, out = run(remote, "a", a, "complete", "T-1", "--generation", "1", "--result", "ok")
    assert code == 0 and out["task"]["status"] == "done" and out["task"]["result"] == "ok"

    code, out = run(remote, "b", b, "claim", "--project", "p")
    assert code == 0 and out["task"]["id"] == "T-2"
    code, out = run(remote, "a", a, "claim", "--project", "p")
    assert (code, out) == (1, {"ok": False, "reason": "no claimable task"})
    code, out = run(remote, "a", a, "release-stalled", "--max-age", "0")
    assert (code, out) == (0, {"ok": True, "released": ["T-2"]})
    code, out = run(remote, "a", a, "claim", "--project", "p")
    assert code == 0 and out["generation"] == 2
    assert run(remote, "a", a, "release", "T-2")[0] == 0
    code, out = run(remote, "b", b, "claim", "--label", "none")
    assert code == 1
    code, out = run(remote, "b", b, "claim")
    assert code == 0 and out["task"]["id"] == "T-2" and out["generation"] == 3
    code, out = run(remote, "b", b, "fail", "T-2", "--result", "broken")
    assert code == 0 and out["task"]["status"] == "failed"

    code, out = run(remote, "a", a, "ls")
    assert code == 0
    assert [(t["id"], t["status"]) for t in out["tasks"]] == [
        ("T-1", "done"),
        ("T-2", "failed"),
        ("T-3", "open"),
    ]
    code, out = run(remote, "a", a, "ls", "--status", "open")
    assert [t["id"] for t in out["tasks"]] == ["T-3"]

    dest = tmp_path / "out"
    assert run(remote, "a", a, "export", str(dest)) == (0, {"ok": True, "written": 3})
    assert {s.id: st for s, st in read_board(dest)} == {
        "T-1": TaskStatus.DONE,
        "T-2": TaskStatus.FAILED,
        "T-3": TaskStatus.OPEN,
    }

    code, out = run(remote, "a", a, "complete", "T-9")
    assert code == 2 and "no task T-9" in out["reason"]


def test_errors_are_json_with_their_exit_codes(tmp_path: Path) -> None:
    result = CliRunner().invoke(git_group, ["ls"], env={"CORRAL_TASKS_GIT": ""})
    assert result.exit_code == 4
    assert "CORRAL_TASKS_GIT" in json.loads(result.output)["reason"]
    code, out = run(str(tmp_path / "missing.git"), "a", tmp_path / "c", "ls")
    assert code == 6 and "cannot fetch" in out["reason"]
    bad = tmp_path / "bad.toon"
    bad.write_text("task:\n id: T-1\n project: p\n title: t\n priority: 12\n")
    code, out = run(str(tmp_path / "missing.git"), "a", tmp_path / "c", "import", str(bad))
    assert code == 4 and out["reason"].startswith(f"{bad}:5:")


def test_the_group_runs_in_its_own_process(remote: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(CORRAL_TASKS_GIT=remote, CORRAL_TASKS_CLAIMER="proc-1")
    code = "from corral.cli.commands.tasks_git import git_group; git_group(prog_name='git')"

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )

    spec = tmp_path / "T-1.toon"
    spec.write_text(write_task(TaskSpec(id="T-1", project="p", title="t")))
    done = call("init", str(spec), "--cache", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    done = call("claim", "--cache", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["task"]["assignee"] == "proc-1" and answer["generation"] == 1
