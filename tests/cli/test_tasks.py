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
