"""`corral tasks git ...`: the task board kept on a coordination ref of a git remote, for
teams that run no corral server (see corral.tasks.gitboard).

The group is defined here and mounted under `corral tasks` by the tasks CLI. Every
subcommand prints one line of JSON, as the in-run commands do (``{"ok":true,...}``), and
exits 0 on success, 1 when there is nothing to claim, 2 for an unknown task, 4 for bad
input, 6 when the remote cannot be reached, 13 when the claim named is not current (a
stale generation: the task was released or taken by another claimer).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn

import click

from corral.agentcmd.client import (
    EXIT_BAD_REQUEST,
    EXIT_CONFLICT,
    EXIT_LOCK_LOST,
    EXIT_NOT_FOUND,
    EXIT_UNREACHABLE,
)
from corral.tasks import Task, TaskError, TaskStatus
from corral.tasks.gitboard import GitBoard, GitBoardError, StaleGeneration
from corral.tasks.seedfmt import read_board_tasks, read_task, write_board

__all__ = ["git_group", "task_json"]

ENV_REMOTE = "CORRAL_TASKS_GIT"
ENV_CLAIMER = "CORRAL_TASKS_CLAIMER"


def _stamp(at: float | None) -> str | None:
    if at is None:
        return None
    return (
        datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def task_json(task: Task) -> dict[str, Any]:
    spec = task.spec
    return {
        "id": spec.id,
        "project": spec.project,
        "title": spec.title,
        "priority": spec.priority,
        "status": task.status.value,
        "assignee": task.assignee,
        "generation": task.token,
        "requires": list(spec.requires),
        "blocks": list(spec.blocks),
        "labels": list(spec.labels),
        "claimedAt": _stamp(task.claimed_at),
        "heartbeatAt": _stamp(task.heartbeat_at),
        "result": task.result,
    }


def _say(value: dict[str, Any], code: int = 0) -> NoReturn:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    raise SystemExit(code)


def _default_claimer() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "host"
    return f"{host.lstrip('.-_') or 'host'}-{os.getpid()}"


def _board_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    @click.option(
        "--remote",
        envvar=ENV_REMOTE,
        help=f"The git remote (URL or path) holding the board. Env: {ENV_REMOTE}.",
    )
    @click.option(
        "--claimer",
        envvar=ENV_CLAIMER,
        help=f"Who claims (letters, digits, . _ -). Env: {ENV_CLAIMER}; default host-pid.",
    )
    @click.option(
        "--cache",
        type=click.Path(file_okay=False, path_type=Path),
        help="Private bare repository for fetches (default under ~/.cache/corral).",
    )
    @click.option(
        "--ref", default="refs/corral/tasks", show_default=True, help="The coordination ref."
    )
    @wraps(fn)
    def wrapper(
        remote: str | None, claimer: str | None, cache: Path | None, ref: str, **kw: Any
    ) -> None:
        if not remote:
            _say(
                {
                    "ok": False,
                    "reason": f"no remote: pass --remote URL or set {ENV_REMOTE}",
                },
                EXIT_BAD_REQUEST,
            )
        try:
            board = GitBoard(remote, claimer or _default_claimer(), cache=cache, ref=ref)
            fn(board, **kw)
        except StaleGeneration as exc:
            _say({"ok": False, "reason": "claim lost", "detail": str(exc)}, EXIT_LOCK_LOST)
        except GitBoardError as exc:
            text = str(exc)
            if text.startswith("no task "):
                _say({"ok": False, "reason": text}, EXIT_NOT_FOUND)
            if "cannot fetch" in text or "cannot push" in text:
                _say({"ok": False, "reason": text}, EXIT_UNREACHABLE)
            _say({"ok": False, "reason": text}, EXIT_BAD_REQUEST)
        except TaskError as exc:
            _say({"ok": False, "reason": str(exc)}, EXIT_BAD_REQUEST)

    return wrapper


@click.group("git")
def git_group() -> None:
    """The task board on a git remote's coordination ref, for teams with no server:
    claims are commits pushed atomically; your work tree is never touched."""


def _load(paths: tuple[Path, ...]) -> list[Task]:
    tasks: list[Task] = []
    for path in paths:
        if path.is_dir():
            tasks.extend(read_board_tasks(path))
        else:
            spec = read_task(path.read_text(encoding="utf-8"), path=path)
            tasks.append(Task(spec=spec, status=TaskStatus.OPEN))
    return tasks


_SOURCES = click.argument(
    "paths", nargs=-1, type=click.Path(exists=True, path_type=Path), required=False
)


@git_group.command("init")
@_SOURCES
@_board_options
def init_cmd(board: GitBoard, paths: tuple[Path, ...]) -> None:
    """Create the board (refused if the remote has one), from task files or folders in
    the git-native layout (a folder keeps each task's state)."""
    tasks = board.init(_load(paths))
    _say({"ok": True, "ref": board.ref, "tasks": len(tasks)})


@git_group.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@_board_options
def import_cmd(board: GitBoard, paths: tuple[Path, ...]) -> None:
    """Add tasks from task files, or folders in the git-native layout, to the board."""
    tasks = board.add(_load(paths))
    _say({"ok": True, "added": [t.id for t in tasks]})


@git_group.command("export")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@_board_options
def export_cmd(board: GitBoard, dest: Path) -> None:
    """Write the board into DEST in the git-native layout (.agents/...)."""
    written = write_board(dest, board.list())
    _say({"ok": True, "written": len(written)})


@git_group.command("claim")
@click.option("--project", help="Only tasks of this project.")
@click.option("--label", "labels", multiple=True, help="Only tasks with this label (repeat).")
@_board_options
def claim_cmd(board: GitBoard, project: str | None, labels: tuple[str, ...]) -> None:
    """Claim the highest-priority open task whose requirements are done."""
    got = board.claim(project=project, labels=labels)
    if got is None:
        _say({"ok": False, "reason": "no claimable task"}, EXIT_CONFLICT)
    _say(
        {
            "ok": True,
            "task": task_json(got.task),
            "generation": got.generation,
            "retries": got.retries,
        }
    )


def _held_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--project", help="The task's project, if its id is in several.")(fn)
    fn = click.option(
        "--generation",
        type=int,
        help="The generation your claim printed; refused if the claim is no longer it.",
    )(fn)
    return click.argument("task_id")(fn)


@git_group.command("heartbeat")
@_held_options
@_board_options
def heartbeat_cmd(
    board: GitBoard, task_id: str, generation: int | None, project: str | None
) -> None:
    """Record that you still work on the task you claimed."""
    task = board.heartbeat(task_id, generation=generation, project=project)
    _say({"ok": True, "task": task_json(task)})


@git_group.command("complete")
@_held_options
@click.option("--result", help="A line on what was done.")
@_board_options
def complete_cmd(
    board: GitBoard, task_id: str, generation: int | None, project: str | None, result: str | None
) -> None:
    """Mark the task you claimed done (its dependents become claimable)."""
    task = board.complete(task_id, result, generation=generation, project=project)
    _say({"ok": True, "task": task_json(task)})


@git_group.command("fail")
@_held_options
@click.option("--result", help="Why it failed.")
@_board_options
def fail_cmd(
    board: GitBoard, task_id: str, generation: int | None, project: str | None, result: str | None
) -> None:
    """Mark the task you claimed failed."""
    task = board.fail(task_id, result, generation=generation, project=project)
    _say({"ok": True, "task": task_json(task)})


@git_group.command("release")
@_held_options
@_board_options
def release_cmd(board: GitBoard, task_id: str, generation: int | None, project: str | None) -> None:
    """Give the task you claimed back to the board, open."""
    task = board.release(task_id, generation=generation, project=project)
    _say({"ok": True, "task": task_json(task)})


@git_group.command("ls")
@click.option("--project", help="Only this project.")
@click.option(
    "--status",
    type=click.Choice([s.value for s in TaskStatus]),
    help="Only tasks in this status.",
)
@_board_options
def ls_cmd(board: GitBoard, project: str | None, status: str | None) -> None:
    """List the board's tasks."""
    tasks = [
        t
        for t in board.list()
        if (project is None or t.project == project) and (status is None or t.status == status)
    ]
    tasks.sort(key=lambda t: (t.project, t.id))
    _say({"ok": True, "tasks": [task_json(t) for t in tasks]})


@git_group.command("release-stalled")
@click.option(
    "--max-age",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds since a claim's last heartbeat (by this machine's clock) after which it "
    "is released.",
)
@_board_options
def release_stalled_cmd(board: GitBoard, max_age: float) -> None:
    """Reopen claims whose heartbeat is older than --max-age (mind clock skew)."""
    released = board.release_stalled(max_age)
    _say({"ok": True, "released": [t.id for t in released]})
