"""`corral tasks add|ls|show|edit|cancel` against the project's own store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Corral

# Each command is a process of its own (seconds each on a loaded machine).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def listed(corral: Corral, project: Path, *args: str) -> list[dict[str, Any]]:
    result = corral("tasks", "ls", "--json", *args, cwd=project)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_add_list_show_edit_cancel(corral: Corral, project: Path, tmp_path: Path) -> None:
    added = corral(
        "tasks", "add", "--id", "API-1", "--title", "Add the endpoint", "--priority", "8",
        "--label", "backend", "--project", "web", "--acceptance", "returns 200", cwd=project,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "added API-1 to web" in added.stdout
    tasks_file = tmp_path / "tasks.toml"
    tasks_file.write_text(
        '[[tasks]]\nid = "UI-1"\nproject = "web"\ntitle = "Show it"\nrequires = ["API-1"]\n'
        'labels = ["frontend"]\n\n'
        '[[tasks]]\nid = "DOC-1"\nproject = "web"\ntitle = "Document it"\npriority = 2\n'
        'blocks = ["UI-1"]\n[tasks.extra]\ntype = "docs"\n'
    )
    from_file = corral("tasks", "add", str(tasks_file), "--json", cwd=project)
    assert from_file.returncode == 0, from_file.stderr
    assert [t["id"] for t in json.loads(from_file.stdout)] == ["UI-1", "DOC-1"]

    board = {t["id"]: t for t in listed(corral, project)}
    assert sorted(board) == ["API-1", "DOC-1", "UI-1"]
    assert board["UI-1"]["requires"] == ["API-1", "DOC-1"]
    assert board["DOC-1"]["extra"] == {"type": "docs"}
    table = corral("tasks", "--label", "frontend", cwd=project).stdout
    assert "UI-1" in table and "open" in table and "Show it" in table and "API-1" not in table

    shown = corral("tasks", "show", "API-1", "--json", cwd=project)
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["blocks"] == ["UI-1"] and body["acceptance"] == ["returns 200"]
    assert [e["kind"] for e in body["history"]] == ["created"]

    edited = corral("tasks", "edit", "UI-1", "--priority", "9", "--label", "ui", cwd=project)
    assert edited.returncode == 0, edited.stderr
    board = {t["id"]: t for t in listed(corral, project)}
    assert board["UI-1"]["priority"] == 9 and board["UI-1"]["labels"] == ["ui"]
    refused = corral("tasks", "edit", "API-1", "--requires", "UI-1", cwd=project)
    assert refused.returncode != 0 and "depend on itself" in refused.stderr

    cancelled = corral("tasks", "cancel", "DOC-1", cwd=project)
    assert cancelled.returncode == 0 and "cancelled web/DOC-1" in cancelled.stdout
    shown = corral("tasks", "show", "DOC-1", cwd=project)
    assert "status    cancelled" in shown.stdout and "history:" in shown.stdout


def test_bad_input_is_named(corral: Corral, project: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[tasks]]\nid = "A"\ntitle = "x"\npriorty = 3\n')
    result = corral("tasks", "add", str(bad), "--project", "web", cwd=project)
    assert result.returncode != 0
    assert str(bad) in result.stderr and "task 1 ('A')" in result.stderr
    assert "priorty" in result.stderr
    missing = corral("tasks", "add", "--id", "B", "--title", "y", "--requires", "Z",
                     "--project", "web", cwd=project)  # fmt: skip
    assert missing.returncode != 0 and "task B requires Z" in missing.stderr
    unknown = corral("tasks", "show", "NOPE", cwd=project)
    assert unknown.returncode != 0 and "no task 'NOPE'" in unknown.stderr


def _seed_task(task_id: str, priority: int, required: list[str], status: str = "ready") -> str:
    lines = [
        "task:",
        f" id: {task_id}",
        " project: shop",
        f" title: Build {task_id.lower()}",
        " type: backend",
        f" priority: {priority}",
        f" status: {status}",
        "",
        "description:",
        f" summary: The {task_id} part",
        " details: |",
        "  First line of the details.",
        "  Second line.",
        "",
        "acceptance_criteria[1]:",
        " It works",
        "",
        "dependencies:",
        f" required[{len(required)}]:",
        *[f"  {r}" for r in required],
        " blocks[0]:",
        "",
    ]
    return "\n".join(lines)


def test_a_git_native_board_moves_in_and_back_out(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    (repo / ".agents/completed/shop").mkdir(parents=True)
    (repo / ".agents/claimed/shop").mkdir(parents=True)
    (repo / ".agents/projects/shop/tasks").mkdir(parents=True)
    (repo / ".agents/completed/shop/TASK-001.toon").write_text(_seed_task("TASK-001", 10, []))
    (repo / ".agents/claimed/shop/TASK-002.toon").write_text(
        _seed_task("TASK-002", 7, ["TASK-001"], "in_progress")
    )
    (repo / ".agents/projects/shop/tasks/TASK-003.toon").write_text(
        _seed_task("TASK-003", 5, ["TASK-001", "TASK-002"])
    )
    imported = corral("tasks", "import", str(repo), "--json", cwd=project)
    assert imported.returncode == 0, imported.stderr
    board = {t["id"]: t for t in listed(corral, project, "--project", "shop")}
    # Done stays done; a claim held on the other board comes in open (claims don't move).
    assert {k: v["status"] for k, v in board.items()} == {
        "TASK-001": "done",
        "TASK-002": "open",
        "TASK-003": "open",
    }
    assert board["TASK-003"]["requires"] == ["TASK-001", "TASK-002"]
    assert board["TASK-002"]["description"].startswith("The TASK-002 part")

    again = corral("tasks", "import", str(repo), cwd=project)
    assert again.returncode != 0 and "already on the board" in again.stderr

    out = tmp_path / "out"
    exported = corral("tasks", "export", str(out), "--project", "shop", cwd=project)
    assert exported.returncode == 0, exported.stderr
    assert "exported 3 tasks" in exported.stdout
    assert (out / ".agents/completed/shop/TASK-001.toon").is_file()
    assert (out / ".agents/projects/shop/tasks/TASK-003.toon").is_file()

    from corral.tasks.seedfmt import read_board_tasks

    back = {t.id: t for t in read_board_tasks(out)}
    before = {t.id: t for t in read_board_tasks(repo)}
    assert sorted(back) == sorted(before)
    for task_id, task in back.items():
        assert task.spec.title == before[task_id].spec.title
        assert set(task.spec.requires) == set(before[task_id].spec.requires)
        assert task.spec.priority == before[task_id].spec.priority
    assert back["TASK-001"].status.value == "done"

    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = corral("tasks", "import", str(empty), cwd=project)
    assert nothing.returncode != 0 and "no task files under" in nothing.stderr


def test_the_git_board_commands_are_under_tasks(corral: Corral, project: Path) -> None:
    helped = corral("tasks", "git", "--help", cwd=project)
    assert helped.returncode == 0, helped.stderr
    for sub in ("claim", "complete", "release-stalled"):
        assert sub in helped.stdout
