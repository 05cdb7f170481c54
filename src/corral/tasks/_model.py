"""A task on the board: plain frozen data, shared by the store, the git backend and the
file format.

A :class:`TaskSpec` is what a person (or an importer) writes; a :class:`Task` is a spec
with the board's state around it: its status, who holds it, the fencing token of the
current claim, and when it was last heard of. Dependencies are edges "X requires Y";
the seed's ``blocks`` lists are the same edges seen from the other end, so a spec may
name either and the board keeps one set.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CLAIMABLE",
    "FINAL",
    "StaleClaim",
    "Task",
    "TaskError",
    "TaskEvent",
    "TaskSpec",
    "TaskStatus",
    "UnknownTask",
    "check_id",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
PRIORITY_RANGE = range(1, 11)
TITLE_MAX = 500


class TaskError(ValueError):
    """A task, or a change to one, that the board refuses; the message says why."""


class UnknownTask(TaskError):
    """No task of that id in that project."""

    def __init__(self, project: str, task_id: str, where: str = "") -> None:
        self.project = project
        self.task_id = task_id
        suffix = f" ({where})" if where else ""
        super().__init__(
            f"no task {task_id!r} in project {project!r}{suffix}; "
            "list the board with `corral tasks ls`"
        )


class StaleClaim(TaskError):
    """A heartbeat, completion or release whose claim is no longer the task's current one:
    the token is stale (the claim lapsed and the task was claimed again, or released), or
    the task is not claimed at all. Says who holds the task now and with which token."""

    def __init__(
        self,
        project: str,
        task_id: str,
        token: int,
        *,
        status: TaskStatus,
        holder: str | None,
        current: int,
        what: str,
    ) -> None:
        self.project = project
        self.task_id = task_id
        self.token = token
        self.status = status
        self.holder = holder
        self.current = current
        if status is TaskStatus.CLAIMED:
            now = f"it is claimed by {holder} with token {current}"
        else:
            now = f"it is {status.value} (last token {current})"
        super().__init__(
            f"cannot {what} task {task_id} of project {project} with token {token}: {now}; "
            "your claim is gone, claim a task again"
        )


class TaskStatus(enum.StrEnum):
    OPEN = "open"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: Statuses a task never leaves by itself (an operator may reopen a failed one).
FINAL = frozenset({TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED})
#: The only status a claim takes a task from (and then only if every requirement is done).
CLAIMABLE = TaskStatus.OPEN


def check_id(value: str, what: str = "task id") -> str:
    """Return ``value`` if it is a valid task or project id, else raise TaskError."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise TaskError(
            f"{what} {value!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. TASK-001)"
        )
    return value


@dataclass(frozen=True)
class TaskSpec:
    """What a task asks for. ``extra`` keeps fields the board does not interpret (the
    seed's ``type``, ``context``, ``technical_details``, ``metadata``, ``notes``...) so an
    import followed by an export gives the same file back."""

    id: str
    project: str
    title: str
    description: str = ""
    priority: int = 5
    requires: tuple[str, ...] = ()
    blocks: tuple[str, ...] = ()
    acceptance: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_id(self.id)
        check_id(self.project, "project")
        if not isinstance(self.title, str) or not self.title.strip():
            raise TaskError(f"task {self.id}: title is empty; give a one-line title")
        if len(self.title) > TITLE_MAX:
            raise TaskError(
                f"task {self.id}: title is {len(self.title)} characters; at most {TITLE_MAX}"
            )
        if (
            isinstance(self.priority, bool)
            or not isinstance(self.priority, int)
            or self.priority not in PRIORITY_RANGE
        ):
            raise TaskError(
                f"task {self.id}: priority {self.priority!r} is not a whole number from 1 to 10"
            )
        for name in ("requires", "blocks"):
            for other in getattr(self, name):
                check_id(other, f"task {self.id}: {name} entry")
                if other == self.id:
                    raise TaskError(f"task {self.id} lists itself in {name}")
        both = set(self.requires) & set(self.blocks)
        if both:
            raise TaskError(
                f"task {self.id} both requires and blocks {', '.join(sorted(both))}: "
                "that is a cycle of two"
            )
        for label in self.labels:
            check_id(label, f"task {self.id}: label")


@dataclass(frozen=True)
class Task:
    """A task as the board holds it."""

    spec: TaskSpec
    status: TaskStatus = TaskStatus.OPEN
    #: Who holds the claim (an agent name, or the git backend's claimer id).
    assignee: str | None = None
    #: The run that holds the claim, when a corral run claimed it.
    run_id: str | None = None
    #: Fencing token of the current (or last) claim: grows with every claim of this task.
    token: int = 0
    claimed_at: float | None = None
    heartbeat_at: float | None = None
    result: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    #: Claims so far (a released or stalled claim counts).
    attempts: int = 0
    #: When the current claim's lease lapses unless heartbeaten (None when not claimed).
    expires_at: float | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def project(self) -> str:
        return self.spec.project


@dataclass(frozen=True)
class TaskEvent:
    """One line of a task's history: created, claimed, heartbeat lapsed, completed..."""

    task_id: str
    project: str
    at: float
    kind: str
    actor: str | None = None
    token: int | None = None
    detail: str | None = None
