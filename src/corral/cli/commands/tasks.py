"""The task board for operators: `corral tasks add|ls|show|edit|cancel|import|export`,
and `corral tasks git ...` for the git-native board.

Tasks live in the store, keyed by (board project, id). A board project is a name of the
team's choosing (``web``, ``api``...); commands that take a task id find its project when
only one project has that id, else ask for ``--project``. ``add`` without ``--project``
puts tasks in the board project named after the corral project's directory.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.table import Table

from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import cell, console, print_json, safe
from corral.cli.commands.tasks_git import git_group
from corral.engine import actions
from corral.errors import UsageError
from corral.store import Store
from corral.tasks._model import Task, TaskError, TaskEvent, TaskSpec, TaskStatus, check_id
from corral.tasks.seedfmt import SeedFormatError, read_board_tasks, write_board
from corral.views import task_event_json, task_json

_T = TypeVar("_T")

#: The fields a task file may give; anything else must go under ``extra``.
FILE_FIELDS = frozenset(
    {
        "id",
        "project",
        "title",
        "description",
        "priority",
        "requires",
        "blocks",
        "acceptance",
        "labels",
        "extra",
    }
)


def _run(obj: CliContext, work: Callable[[Store], Awaitable[_T]]) -> _T:
    project = obj.project()

    async def go() -> _T:
        async with await obj.store(project) as store:
            return await work(store)

    try:
        return asyncio.run(go())
    except TaskError as exc:
        raise UsageError(str(exc)) from None


def _default_project(obj: CliContext) -> str:
    name = obj.project().root.name
    try:
        return check_id(name, "project")
    except TaskError:
        raise UsageError(
            f"the project directory's name {name!r} is not a valid board project; "
            "give one with --project"
        ) from None


async def _locate(store: Store, task_id: str, project: str | None) -> Task:
    """The task ``task_id`` (in ``project`` if given); UsageError when there is none or
    when several projects have it."""
    if project is not None:
        task = await store.get_task(project, task_id)
        if task is None:
            raise UsageError(f"no task {task_id!r} in project {project!r}; see `corral tasks ls`")
        return task
    found = await store.find_tasks(task_id)
    if not found:
        raise UsageError(f"no task {task_id!r}; see `corral tasks ls`")
    if len(found) > 1:
        projects = ", ".join(task.project for task in found)
        raise UsageError(f"task {task_id!r} is in projects {projects}; choose with --project")
    return found[0]


# -- reading task files -------------------------------------------------------------------


def read_task_file(path: Path, default_project: str) -> list[TaskSpec]:
    """The tasks of a TOML file (``[[tasks]]`` tables) or a JSON file (a list of tasks, or
    ``{"tasks": [...]}``); UsageError naming the file and the task for anything wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise UsageError(f"{path}: give a .toml or .json file of tasks")
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON: line {exc.lineno}: {exc.msg}") from None
    entries = data.get("tasks") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise UsageError(
            f"{path}: expected a non-empty list of tasks ([[tasks]] tables in TOML, "
            'a list or {"tasks": [...]} in JSON)'
        )
    return [_spec(path, n, entry, default_project) for n, entry in enumerate(entries, 1)]


def _spec(path: Path, n: int, entry: Any, default_project: str) -> TaskSpec:
    where = f"{path}: task {n}"
    if not isinstance(entry, dict):
        raise UsageError(f"{where}: expected a table of fields, got {type(entry).__name__}")
    if "id" in entry:
        where = f"{path}: task {n} ({entry['id']!r})"
    unknown = sorted(set(entry) - FILE_FIELDS)
    if unknown:
        raise UsageError(
            f"{where}: unknown field(s) {', '.join(unknown)}; the fields are "
            f"{', '.join(sorted(FILE_FIELDS))} (put anything else under extra)"
        )
    for name in ("id", "title"):
        if not isinstance(entry.get(name), str):
            raise UsageError(f"{where}: {name} must be given as text")
    lists = {}
    for name in ("requires", "blocks", "acceptance", "labels"):
        value = entry.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{where}: {name} must be a list of strings")
        lists[name] = tuple(value)
    extra = entry.get("extra", {})
    if not isinstance(extra, dict):
        raise UsageError(f"{where}: extra must be a table")
    try:
        return TaskSpec(
            id=entry["id"],
            project=entry.get("project", default_project),
            title=entry["title"],
            description=entry.get("description", ""),
            priority=entry.get("priority", 5),
            extra=extra,
            **lists,
        )
    except TaskError as exc:
        raise UsageError(f"{where}: {exc}") from None


# -- commands -----------------------------------------------------------------------------


@cli.group("tasks", invoke_without_command=True)
@click.option("--project", help="Only this board project.")
@click.option(
    "--status", type=click.Choice([s.value for s in TaskStatus]), help="Only this status."
)
@click.option("--label", help="Only tasks with this label.")
@click.option("--limit", type=click.IntRange(1, 1000), default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def tasks_group(
    ctx: click.Context,
    project: str | None,
    status: str | None,
    label: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The task board: tasks agents claim with task-claim. Without a subcommand, list them
    (same as `corral tasks ls`)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(
            ls_cmd, project=project, status=status, label=label, limit=limit, as_json=as_json
        )


@tasks_group.command("ls")
@click.option("--project", help="Only this board project.")
@click.option(
    "--status", type=click.Choice([s.value for s in TaskStatus]), help="Only this status."
)
@click.option("--label", help="Only tasks with this label.")
@click.option("--limit", type=click.IntRange(1, 1000), default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def ls_cmd(
    obj: CliContext,
    project: str | None,
    status: str | None,
    label: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List tasks: id, project, priority, status, assignee, labels, title."""
    tasks = _run(
        obj, lambda s: s.list_tasks(project=project, status=status, label=label, limit=limit)
    )
    if as_json:
        print_json([task_json(task) for task in tasks])
        return
    if not tasks:
        console.print("no tasks on the board")
        return
    table = Table("id", "project", "prio", "status", "assignee", "labels", "title", box=None)
    for task in tasks:
        table.add_row(
            cell(task.id),
            cell(task.project),
            str(task.spec.priority),
            task.status.value,
            cell(task.assignee or "-"),
            cell(",".join(task.spec.labels) or "-"),
            cell(task.spec.title),
        )
    console.print(table)


@tasks_group.command("add")
@click.argument("file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--id", "task_id", help="The task's id (e.g. TASK-001).")
@click.option("--title", help="A one-line title.")
@click.option("--description", default="", help="What to do, in more words.")
@click.option("--priority", type=click.IntRange(1, 10), default=5, show_default=True)
@click.option("--requires", multiple=True, help="A task this one waits for (repeatable).")
@click.option("--blocks", multiple=True, help="A task that waits for this one (repeatable).")
@click.option("--label", "labels", multiple=True, help="A label claimers can ask for.")
@click.option("--acceptance", multiple=True, help="An acceptance criterion (repeatable).")
@click.option("--project", help="The board project (default: the project directory's name).")
@click.option("--json", "as_json", is_flag=True, help="Print the added tasks as JSON.")
@click.pass_obj
def add_cmd(
    obj: CliContext,
    file: Path | None,
    task_id: str | None,
    title: str | None,
    description: str,
    priority: int,
    requires: tuple[str, ...],
    blocks: tuple[str, ...],
    labels: tuple[str, ...],
    acceptance: tuple[str, ...],
    project: str | None,
    as_json: bool,
) -> None:
    """Add a task (--id and --title), or every task of FILE (.toml with [[tasks]] tables,
    or .json), all or nothing."""
    board = project or _default_project(obj)
    if file is not None:
        if task_id or title:
            raise UsageError("give either FILE or --id/--title, not both")
        specs = read_task_file(file, board)
    else:
        if not task_id or not title:
            raise UsageError("give --id and --title (or a FILE of tasks)")
        try:
            specs = [
                TaskSpec(
                    id=task_id,
                    project=board,
                    title=title,
                    description=description,
                    priority=priority,
                    requires=requires,
                    blocks=blocks,
                    labels=labels,
                    acceptance=acceptance,
                )
            ]
        except TaskError as exc:
            raise UsageError(str(exc)) from None
    actor = actions.cli_actor()
    added = _run(obj, lambda s: s.add_tasks(specs, actor=actor))
    if as_json:
        print_json([task_json(task) for task in added])
        return
    for task in added:
        console.print(f"added {safe(task.id)} to {safe(task.project)}: {safe(task.spec.title)}")


@tasks_group.command("show")
@click.argument("task_id")
@click.option("--project", help="The board project, when several have this id.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def show_cmd(obj: CliContext, task_id: str, project: str | None, as_json: bool) -> None:
    """A task, what it waits for, what waits for it, and its history."""

    async def work(store: Store) -> tuple[Task, list[str], list[TaskEvent]]:
        task = await _locate(store, task_id, project)
        dependents = await store.task_dependents(task.project, task.id)
        return task, dependents, await store.task_history(task.project, task.id)

    task, dependents, history = _run(obj, work)
    if as_json:
        body = task_json(task) | {
            "blocks": dependents,
            "history": [task_event_json(e) for e in history],
        }
        print_json(body)
        return
    console.print(f"{safe(task.project)}/{safe(task.id)}: {safe(task.spec.title)}")
    console.print(
        f"  status    {task.status.value}" + (f" ({task.assignee})" if task.assignee else "")
    )
    console.print(
        f"  priority  {task.spec.priority}   token {task.token}   attempts {task.attempts}"
    )
    for name, values in (
        ("requires", task.spec.requires),
        ("blocks", tuple(dependents)),
        ("labels", task.spec.labels),
    ):
        console.print(f"  {name:<9} {safe(', '.join(values)) or '-'}")
    if task.spec.description:
        console.print(f"  {safe(task.spec.description)}")
    for criterion in task.spec.acceptance:
        console.print(f"  - {safe(criterion)}")
    if task.result:
        console.print(f"  result    {safe(task.result)}")
    console.print("history:")
    for event in history:
        at = datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        who = f" by {event.actor}" if event.actor else ""
        token = f" token {event.token}" if event.token is not None else ""
        detail = f" ({event.detail})" if event.detail else ""
        console.print(f"  {at} {safe(event.kind)}{safe(who)}{token}{safe(detail)}")


@tasks_group.command("edit")
@click.argument("task_id")
@click.option("--project", help="The board project, when several have this id.")
@click.option("--title")
@click.option("--description")
@click.option("--priority", type=click.IntRange(1, 10))
@click.option("--requires", multiple=True, help="Replace the requirements (repeatable).")
@click.option("--no-requires", is_flag=True, help="Drop every requirement.")
@click.option("--label", "labels", multiple=True, help="Replace the labels (repeatable).")
@click.option("--no-labels", is_flag=True, help="Drop every label.")
@click.option("--acceptance", multiple=True, help="Replace the acceptance criteria.")
@click.pass_obj
def edit_cmd(
    obj: CliContext,
    task_id: str,
    project: str | None,
    title: str | None,
    description: str | None,
    priority: int | None,
    requires: tuple[str, ...],
    no_requires: bool,
    labels: tuple[str, ...],
    no_labels: bool,
    acceptance: tuple[str, ...],
) -> None:
    """Change a task's title, description, priority, requirements, labels or acceptance."""
    changes: dict[str, Any] = {}
    for name, value in (("title", title), ("description", description), ("priority", priority)):
        if value is not None:
            changes[name] = value
    if requires or no_requires:
        changes["requires"] = list(requires)
    if labels or no_labels:
        changes["labels"] = list(labels)
    if acceptance:
        changes["acceptance"] = list(acceptance)
    if not changes:
        raise UsageError("nothing to change: give --title, --priority, --requires, --label...")
    actor = actions.cli_actor()

    async def work(store: Store) -> Task:
        task = await _locate(store, task_id, project)
        return await store.edit_task(task.project, task.id, actor=actor, **changes)

    task = _run(obj, work)
    console.print(f"edited {safe(task.project)}/{safe(task.id)}: {', '.join(sorted(changes))}")


@tasks_group.command("cancel")
@click.argument("task_id")
@click.option("--project", help="The board project, when several have this id.")
@click.pass_obj
def cancel_cmd(obj: CliContext, task_id: str, project: str | None) -> None:
    """Cancel a task; a run holding it learns at its next task command (exit 13)."""
    actor = actions.cli_actor()

    async def work(store: Store) -> Task:
        task = await _locate(store, task_id, project)
        return await store.cancel_task(task.project, task.id, actor)

    task = _run(obj, work)
    console.print(f"cancelled {safe(task.project)}/{safe(task.id)}")


@tasks_group.command("import")
@click.argument("root", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the imported tasks as JSON.")
@click.pass_obj
def import_cmd(obj: CliContext, root: Path, as_json: bool) -> None:
    """Move a git-native board into corral: every task file under ROOT/.agents (open,
    claimed and completed folders). Done tasks stay done; claimed ones come in open."""
    try:
        found = read_board_tasks(root)
    except SeedFormatError as exc:
        raise UsageError(str(exc)) from None
    if not found:
        raise UsageError(
            f"no task files under {root / '.agents'}: expected "
            ".agents/projects/<project>/tasks/TASK-*.toon (and claimed/, completed/)"
        )
    actor = actions.cli_actor()
    items = [(task.spec, task.status) for task in found]
    added = _run(obj, lambda store: store.import_tasks(items, actor=actor))
    if as_json:
        print_json([task_json(task) for task in added])
        return
    counts: dict[str, int] = {}
    for task in added:
        counts[task.status.value] = counts.get(task.status.value, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    console.print(f"imported {len(added)} tasks from {safe(str(root))} ({summary})")


@tasks_group.command("export")
@click.argument("root", type=click.Path(path_type=Path, file_okay=False))
@click.option("--project", help="Only this board project.")
@click.pass_obj
def export_cmd(obj: CliContext, root: Path, project: str | None) -> None:
    """Write the board into ROOT/.agents in the git-native layout (strict TOON)."""

    async def work(store: Store) -> list[Task]:
        tasks: list[Task] = []
        after: tuple[str, str] | None = None
        while True:
            page = await store.list_tasks(project=project, limit=1000, after=after)
            tasks.extend(page)
            if len(page) < 1000:
                return tasks
            after = (page[-1].project, page[-1].id)

    tasks = _run(obj, work)
    written = write_board(root, tasks)
    console.print(f"exported {len(written)} tasks to {safe(str(root / '.agents'))}")


tasks_group.add_command(git_group)
