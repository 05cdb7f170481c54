"""The task board: tasks with priorities, dependencies and labels, claimed with a fencing
token and a heartbeat lease.

A task is one row of ``corral_tasks`` keyed (project, id). Its dependencies are rows of
``corral_task_edges`` ("task requires other"; a spec's ``blocks`` are stored as edges the
other way, so a task read back lists all its requirements in ``requires`` and none in
``blocks``); its labels are rows of ``corral_task_labels``; the row also keeps both as
JSON copies so that a claim returns the whole task from its one statement. History is
``corral_task_events``.

A claim takes the highest-priority open task (ties: oldest, then id) whose every
requirement is done and that has every label asked for: ONE statement on PostgreSQL
(``FOR UPDATE SKIP LOCKED``, so concurrent claimers take different tasks, the event
written by the same statement), one ``BEGIN IMMEDIATE`` transaction on SQLite. Each claim
draws the task's next token; a heartbeat, a completion or a release must carry the
current claim's token, else ``StaleClaim`` names who holds the task now. A claim whose
lease lapsed (no heartbeat for ``lease`` seconds) or whose run ended goes back to open.

Changes to a project's graph (adding tasks, editing requirements) take the query
``lock_task_graph`` first (PostgreSQL: a per-project advisory lock; SQLite: BEGIN
IMMEDIATE serialises writers), so two of them never close a cycle together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from corral.errors import StoreError
from corral.store._batching import Failed, GroupCommit, Waiting
from corral.store._core import Row, StoreCore, Transaction
from corral.store._notify import TASKS
from corral.tasks._model import (
    PRIORITY_RANGE,
    StaleClaim,
    Task,
    TaskError,
    TaskEvent,
    TaskSpec,
    TaskStatus,
    UnknownTask,
    check_id,
)

__all__ = ["DEFAULT_LEASE", "TaskOps"]

_T = TypeVar("_T")

#: Fields ``edit_task`` changes.
EDITABLE = frozenset({"title", "description", "priority", "labels", "acceptance", "requires"})
#: Statuses in which a task can no longer gain a requirement.
_STARTED = frozenset({TaskStatus.CLAIMED.value, TaskStatus.DONE.value})
#: A claim's lease when none is given, in seconds.
DEFAULT_LEASE = 600.0
#: The largest page ``list_tasks`` returns.
LIST_MAX = 1000


#: The outcome of a batched claim whose caller stopped waiting (it is not sent).
_GONE = Failed(asyncio.CancelledError())


@dataclasses.dataclass(frozen=True, slots=True)
class _ClaimJob:
    """A claim waiting for the next batch (PostgreSQL, no project filter)."""

    claimer: str
    run_id: str | None
    labels: tuple[str, ...]
    min_priority: int
    lease: float

    @property
    def filter(self) -> tuple[tuple[str, ...], int, float]:
        """Claims with one filter and lease go in one statement."""
        return (self.labels, self.min_priority, self.lease)


class TaskOps(StoreCore):
    """The task board; part of ``Store``."""

    _claims: GroupCommit[_ClaimJob, Row | None] | None = None

    _finishes: GroupCommit[dict[str, Any], Row | None] | None = None
    _lookups: GroupCommit[tuple[str, str], list[Row]] | None = None

    async def _run_finishes(
        self, batch: list[Waiting[dict[str, Any], Row | None]]
    ) -> list[Row | Failed | None]:
        """The completions and failures of ``batch`` in one statement (D123); None for a
        claim that is no longer the task's (its caller refuses it as stale)."""
        live = [w for w in batch if not w.gone]
        if not live:
            return [_GONE for _ in batch]
        jobs = [w.job for w in live]
        params = {
            "projects": [j["project"] for j in jobs],
            "ids": [j["id"] for j in jobs],
            "tokens": [j["token"] for j in jobs],
            "statuses": [j["status"] for j in jobs],
            "results": [j["result"] for j in jobs],
            "now": self.encode_time(self.now()),
        }
        rows = await self.statement("finish_tasks_batch", params)
        by_n = {int(row["finish_n"]): row for row in rows}
        outcomes = {id(w): by_n.get(n) for n, w in enumerate(live, start=1)}
        return [outcomes.get(id(w), _GONE) for w in batch]

    async def _run_lookups(
        self, batch: list[Waiting[tuple[str, str], list[Row]]]
    ) -> list[list[Row] | Failed]:
        """The claims each (run, task id) of ``batch`` holds, in one statement (D123)."""
        params = {"run_ids": [w.job[0] for w in batch], "ids": [w.job[1] for w in batch]}
        rows = await self.statement("claimed_tasks_of_runs", params)
        found: list[list[Row] | Failed] = [[] for _ in batch]
        for row in rows:
            held = found[int(row["lookup_n"]) - 1]
            assert not isinstance(held, Failed)
            held.append(row)
        return found

    async def _run_claims(
        self, batch: list[Waiting[_ClaimJob, Row | None]]
    ) -> list[Row | Failed | None]:
        """The claims of ``batch``, one statement per filter (D123): ``claim_tasks_batch``
        gives the best eligible tasks to the claimers in the order they asked, as that
        many claims one after the other would. A claim whose caller stopped waiting is
        not sent (it would hold a task for a run that never hears of it)."""
        outcomes: dict[int, Row | Failed | None] = {}
        groups: dict[tuple[tuple[str, ...], int, float], list[Waiting[_ClaimJob, Row | None]]]
        groups = {}
        for waiting in batch:
            if not waiting.gone:
                groups.setdefault(waiting.job.filter, []).append(waiting)
        for (labels, min_priority, lease), group in groups.items():
            now = self.now()
            params: dict[str, Any] = {
                "claimers": [w.job.claimer for w in group],
                "run_ids": [w.job.run_id for w in group],
                "k": len(group),
                "now": self.encode_time(now),
                "expires_at": self.encode_time(now + timedelta(seconds=lease)),
                "labels": self.encode_list(labels),
                "min_priority": min_priority,
            }
            try:
                rows = await self.statement("claim_tasks_batch", params)
            except StoreError as exc:
                for waiting in group:
                    outcomes[id(waiting)] = Failed(exc)
                continue
            by_n = {int(row["claim_n"]): row for row in rows}
            for n, waiting in enumerate(group, start=1):
                outcomes[id(waiting)] = by_n.get(n)
        return [outcomes.get(id(waiting), _GONE) for waiting in batch]

    # -- adding and editing ---------------------------------------------------------------

    async def add_tasks(self, specs: Sequence[TaskSpec], *, actor: str | None = None) -> list[Task]:
        """Add ``specs`` to the board, all or nothing.

        Refused (TaskError naming the task): an id given twice or already on the board, a
        dependency (``requires`` or ``blocks``) on a task that is neither in this batch nor
        on the board in the same project, and a dependency cycle.
        """
        return await self.import_tasks([(spec, TaskStatus.OPEN) for spec in specs], actor=actor)

    async def import_tasks(
        self, items: Sequence[tuple[TaskSpec, TaskStatus]], *, actor: str | None = None
    ) -> list[Task]:
        """Add tasks with the status another board gave them (``corral tasks import``),
        all or nothing, refused as ``add_tasks`` refuses. A task that was claimed there
        comes in open: a claim belongs to its claimer and does not move between boards.
        Done, failed and cancelled tasks keep their status (so their dependents are
        ready at once)."""
        specs = [spec for spec, _ in items]
        final = {
            (spec.project, spec.id): status
            for spec, status in items
            if status in (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED)
        }
        seen = _batch_keys(specs)
        if not specs:
            return []

        async def body(tx: Transaction) -> list[Task]:
            now = self.encode_time(self.now())
            projects = sorted({spec.project for spec in specs})
            for project in projects:
                await tx.fetch_all("lock_task_graph", {"project": project})
            for spec in specs:
                if await tx.fetch_one("get_task", {"project": spec.project, "id": spec.id}):
                    raise TaskError(
                        f"task {spec.id} is already on the board in project {spec.project}; "
                        "edit it with `corral tasks edit` or choose another id"
                    )
            edges = await self._new_edges(tx, specs, seen)
            graphs = {project: await self._graph(tx, project) for project in projects}
            for project, task_id, other in edges:
                graphs[project].setdefault(task_id, set()).add(other)
            for project in projects:
                _refuse_cycle(graphs[project], project)
            added = [await self._insert_task(tx, spec, graphs[spec.project], now) for spec in specs]
            for project, task_id, other in edges:
                params = {"project": project, "task_id": task_id, "requires": other}
                await tx.execute("insert_task_edge", params)
            # Tasks already on the board that a new task blocks have gained a requirement.
            for project, task_id in sorted({(p, t) for p, t, _ in edges} - seen):
                params = {
                    "project": project,
                    "id": task_id,
                    "requires": self.encode_json(sorted(graphs[project][task_id])),
                    "now": now,
                }
                await tx.execute("set_task_requires", params)
            for spec in specs:
                await self._event(tx, spec.project, spec.id, "created", actor, None, None, now)
            await self._keep_imported_statuses(tx, added, final, actor, now)
            return added

        return await self._changing(body)

    async def _keep_imported_statuses(
        self,
        tx: Transaction,
        added: list[Task],
        final: Mapping[tuple[str, str], TaskStatus],
        actor: str | None,
        now: Any,
    ) -> None:
        """Inside an import: give the tasks that were done, failed or cancelled on the
        other board that status (``added`` is updated in place)."""
        for n, task in enumerate(added):
            status = final.get((task.project, task.id))
            if status is None:
                continue
            params = {"project": task.project, "id": task.id, "status": status.value, "now": now}
            row = await tx.fetch_one("set_imported_task_status", params)
            added[n] = self._task_from_row(self._returned(row, "set_imported_task_status"))
            detail = f"imported as {status.value}"
            await self._event(tx, task.project, task.id, "imported", actor, None, detail, now)

    async def _new_edges(
        self, tx: Transaction, specs: Sequence[TaskSpec], new: set[tuple[str, str]]
    ) -> list[tuple[str, str, str]]:
        """The edges (project, task, requirement) ``specs`` name, each end checked to be in
        the batch or on the board in the same project."""

        async def check(spec: TaskSpec, field: str, other: str) -> None:
            if (spec.project, other) in new:
                return
            row = await tx.fetch_one("get_task", {"project": spec.project, "id": other})
            if row is None:
                raise TaskError(_unknown_dependency(spec, field, other))
            if field == "blocks" and row["status"] in _STARTED:
                raise TaskError(
                    f"task {spec.id} blocks {other}, which is already {row['status']} in "
                    f"project {spec.project}: a task cannot gain a requirement once claimed "
                    "or done; drop it from blocks"
                )

        edges: list[tuple[str, str, str]] = []
        for spec in specs:
            for other in spec.requires:
                await check(spec, "requires", other)
                edges.append((spec.project, spec.id, other))
            for other in spec.blocks:
                await check(spec, "blocks", other)
                edges.append((spec.project, other, spec.id))
        return edges

    async def _insert_task(
        self, tx: Transaction, spec: TaskSpec, graph: Mapping[str, set[str]], now: Any
    ) -> Task:
        requires = sorted(graph.get(spec.id, set()))
        row = await tx.fetch_one("insert_task", self._spec_params(spec, requires, now))
        if row is None:  # a concurrent add took the id first
            raise TaskError(f"task {spec.id} is already on the board in project {spec.project}")
        for label in sorted(set(spec.labels)):
            params = {"project": spec.project, "task_id": spec.id, "label": label}
            await tx.execute("insert_task_label", params)
        return self._task_from_row(row)

    async def edit_task(
        self, project: str, task_id: str, *, actor: str | None = None, **changes: Any
    ) -> Task:
        """Change a task's title, description, priority, labels, acceptance or requires.

        Refused: an unknown field, a value the spec refuses, a requirement that is not on
        the board in the project, a cycle. A changed ``requires`` replaces the task's
        requirements (including those added by other tasks' ``blocks``).
        """
        unknown = sorted(set(changes) - EDITABLE)
        if unknown:
            raise TaskError(
                f"cannot edit {', '.join(unknown)} of task {task_id}: "
                f"editable fields are {', '.join(sorted(EDITABLE))}"
            )

        async def body(tx: Transaction) -> Task:
            now = self.encode_time(self.now())
            await tx.fetch_all("lock_task_graph", {"project": project})
            current = await self._require_task(tx, project, task_id)
            try:
                spec = dataclasses.replace(
                    current.spec, **_edited(changes), blocks=(), extra=current.spec.extra
                )
            except TypeError as exc:
                raise TaskError(f"cannot edit task {task_id}: {exc}") from exc
            if "requires" in changes:
                if current.status.value in _STARTED and set(spec.requires) - set(
                    current.spec.requires
                ):
                    raise TaskError(
                        f"cannot add requirements to task {task_id} of project {project}: "
                        f"it is already {current.status.value}"
                    )
                graph = await self._graph(tx, project)
                for other in spec.requires:
                    if not await tx.fetch_one("get_task", {"project": project, "id": other}):
                        raise TaskError(_unknown_dependency(spec, "requires", other))
                graph[task_id] = set(spec.requires)
                _refuse_cycle(graph, project)
                await tx.execute("delete_task_edges", {"project": project, "id": task_id})
                for other in spec.requires:
                    params = {"project": project, "task_id": task_id, "requires": other}
                    await tx.execute("insert_task_edge", params)
            if "labels" in changes:
                await tx.execute("delete_task_labels", {"project": project, "id": task_id})
                for label in spec.labels:
                    params = {"project": project, "task_id": task_id, "label": label}
                    await tx.execute("insert_task_label", params)
            params = self._spec_params(spec, sorted(spec.requires), now)
            row = await tx.fetch_one("update_task", params)
            detail = json.dumps(sorted(changes), ensure_ascii=False)
            await self._event(tx, project, task_id, "edited", actor, None, detail, now)
            return self._task_from_row(self._returned(row, "update_task"))

        return await self._changing(body)

    async def cancel_task(self, project: str, task_id: str, actor: str | None = None) -> Task:
        """Cancel an open, claimed or failed task (a claim on it is ended: its token is
        stale from now on). Refused for a done or already cancelled task."""

        async def body(tx: Transaction) -> Task:
            now = self.encode_time(self.now())
            row = await tx.fetch_one("cancel_task", {"project": project, "id": task_id, "now": now})
            if row is None:
                current = await self._require_task(tx, project, task_id)
                raise TaskError(
                    f"cannot cancel task {task_id} of project {project}: "
                    f"it is already {current.status.value}"
                )
            task = self._task_from_row(row)
            await self._event(tx, project, task_id, "cancelled", actor, task.token, None, now)
            return task

        return await self._changing(body)

    # -- claims ---------------------------------------------------------------------------

    async def claim_task(
        self,
        *,
        claimer: str,
        run_id: str | None = None,
        project: str | None = None,
        labels: Sequence[str] = (),
        lease: float = 600.0,
        min_priority: int = 1,
    ) -> Task | None:
        """Claim the highest-priority open task whose every requirement is done (ties: the
        oldest, then by id), in ``project`` if given, having every label in ``labels`` and
        a priority of ``min_priority`` or more; None when there is none. The claim's token
        is the task's next; its lease lapses ``lease`` seconds from now unless
        heartbeaten."""
        _check_lease(lease)
        if project is not None:
            check_id(project, "project")
        for label in labels:
            check_id(label, "label")
        if (
            isinstance(min_priority, bool)
            or not isinstance(min_priority, int)
            or min_priority not in PRIORITY_RANGE
        ):
            raise TaskError(f"minimum priority {min_priority!r} is not a whole number from 1 to 10")
        now = self.now()
        params: dict[str, Any] = {
            "claimer": claimer,
            "run_id": run_id,
            "now": self.encode_time(now),
            "expires_at": self.encode_time(now + timedelta(seconds=lease)),
            "labels": self.encode_list(sorted(set(labels))),
            "min_priority": min_priority,
        }
        name = "claim_task"
        if project is not None:
            name = "claim_project_task"
            params["project"] = project
        if self.dialect == "postgresql":
            if project is None:
                # Batched with the claims that arrive while one is in flight (D123).
                job = _ClaimJob(claimer, run_id, tuple(sorted(set(labels))), min_priority, lease)
                if self._claims is None:
                    self._claims = GroupCommit(self._run_claims, name="corral-task-claims")
                row = await self._claims.submit(job)
                rows = [] if row is None else [row]
            else:
                rows = await self.statement(name, params)
            if not rows:
                return None
            self._notify_here(TASKS)
            return self._task_from_row(rows[0])

        async def body(tx: Transaction) -> Task | None:
            row = await tx.fetch_one(name, params)
            if row is None:
                return None
            task = self._task_from_row(row)
            await self._event(
                tx, task.project, task.id, "claimed", claimer, task.token, run_id, params["now"]
            )
            return task

        return await self._changing(body)

    async def heartbeat_task(
        self, project: str, task_id: str, token: int, *, lease: float | None = None
    ) -> Task:
        """Extend the claim of ``token`` to ``lease`` seconds from now (None: by the
        claim's own lease, the one it was taken or last extended with); StaleClaim if that
        claim is no longer the task's, UnknownTask if there is no such task."""
        if lease is not None:
            _check_lease(lease)

        async def body(tx: Transaction) -> Task:
            now = self.now()
            extend = lease
            if extend is None:
                current = await tx.fetch_one("get_task", {"project": project, "id": task_id})
                extend = DEFAULT_LEASE if current is None else self._claim_lease(current)
            params = {
                "project": project,
                "id": task_id,
                "token": token,
                "now": self.encode_time(now),
                "expires_at": self.encode_time(now + timedelta(seconds=extend)),
            }
            row = await tx.fetch_one("heartbeat_task", params)
            if row is None:
                await self._refuse_stale(tx, project, task_id, token, "heartbeat")
            return self._task_from_row(self._returned(row, "heartbeat_task"))

        return await self.atomic(body)

    def _claim_lease(self, row: Row) -> float:
        """The lease a claim was taken or last extended with (its expiry less its last
        heartbeat); DEFAULT_LEASE for a row that holds no claim."""
        if row["expires_at"] is None or row["heartbeat_at"] is None:
            return DEFAULT_LEASE
        span = self.decode_time(row["expires_at"]) - self.decode_time(row["heartbeat_at"])
        seconds = span.total_seconds()
        return seconds if seconds > 0 else DEFAULT_LEASE

    async def finish_task(
        self,
        project: str,
        task_id: str,
        token: int,
        status: TaskStatus | str,
        result: str | None = None,
    ) -> Task:
        """End the claim of ``token`` as DONE or FAILED (with ``result``: what was done, or
        why it failed). A done task's dependents whose other requirements are done are
        claimable at once. StaleClaim for a claim that is no longer the task's."""
        status = TaskStatus(status)
        if status not in (TaskStatus.DONE, TaskStatus.FAILED):
            raise TaskError(
                f"finish_task takes done or failed, got {status.value}; "
                "use release_task to put a task back"
            )
        what = "complete" if status is TaskStatus.DONE else "fail"
        return await self._end_claim(
            "finish_task", project, task_id, token, what, status.value, result, status.value
        )

    async def release_task(self, project: str, task_id: str, token: int) -> Task:
        """Put the claimed task back to open (its claim ends); StaleClaim if the claim of
        ``token`` is no longer the task's."""
        return await self._end_claim(
            "release_task", project, task_id, token, "release", None, None, "released"
        )

    async def _end_claim(
        self,
        query: str,
        project: str,
        task_id: str,
        token: int,
        what: str,
        status: str | None,
        result: str | None,
        kind: str,
    ) -> Task:
        now = self.encode_time(self.now())
        params = {
            "project": project,
            "id": task_id,
            "token": token,
            "now": now,
            "status": status,
            "result": result,
        }

        if self.dialect == "postgresql" and query == "finish_task":
            # Batched with the completions that arrive while one is in flight (D123).
            if self._finishes is None:
                self._finishes = GroupCommit(self._run_finishes, name="corral-task-finishes")
            row = await self._finishes.submit(params)
            if row is None:
                async with self.transaction(write=False) as tx:
                    await self._refuse_stale(tx, project, task_id, token, what)
                raise AssertionError("unreachable: a stale claim is refused")
            self._notify_here(TASKS)
            return self._task_from_row(row)

        async def body(tx: Transaction) -> Task:
            before = await tx.fetch_one("get_task", {"project": project, "id": task_id})
            row = await tx.fetch_one(query, params)
            if row is None:
                await self._refuse_stale(tx, project, task_id, token, what)
            task = self._task_from_row(self._returned(row, query))
            actor = None if before is None else before["assignee"]
            await self._event(tx, project, task_id, kind, actor, token, result, now)
            return task

        return await self._changing(body)

    async def release_stalled_tasks(self) -> list[Task]:
        """Claims whose lease lapsed go back to open, each recorded as "stalled"."""
        return await self._release_many("release_stalled_tasks", {}, "stalled")

    async def release_tasks_of_run(self, run_id: str) -> list[Task]:
        """The claims ``run_id`` still holds go back to open (its run ended), each recorded
        as "run ended". Every transaction that ends a run does this itself
        (``release_run_tasks_in``); this is for a run the board's caller ends."""

        async def body(tx: Transaction) -> list[Task]:
            return await self.release_run_tasks_in(tx, run_id)

        return await self._changing(body)

    async def release_run_tasks_in(self, tx: Transaction, run_id: str) -> list[Task]:
        now = self.encode_time(self.now())
        rows = await tx.fetch_all("release_run_tasks", {"run_id": run_id, "now": now})
        tasks = [self._task_from_row(row) for row in rows]
        for task in tasks:
            await self._event(tx, task.project, task.id, "run ended", None, task.token, run_id, now)
        return tasks

    async def _release_many(self, query: str, extra: Mapping[str, Any], kind: str) -> list[Task]:
        now = self.encode_time(self.now())

        async def body(tx: Transaction) -> list[Task]:
            rows = await tx.fetch_all(query, {**extra, "now": now})
            tasks = [self._task_from_row(row) for row in rows]
            for task in tasks:
                await self._event(tx, task.project, task.id, kind, None, task.token, None, now)
            return tasks

        return await self._changing(body)

    async def claimed_tasks_of_run(self, run_id: str, task_id: str) -> list[Task]:
        """The tasks of id ``task_id`` that ``run_id`` holds a claim on (one per project):
        how the in-run commands find the claim's token from the run's identity."""
        params = {"run_id": run_id, "id": task_id}
        if self.dialect == "postgresql":
            # Batched with the lookups that arrive while one is in flight (D123).
            if self._lookups is None:
                self._lookups = GroupCommit(self._run_lookups, name="corral-task-lookups")
            rows = await self._lookups.submit((run_id, task_id))
        else:
            async with self.transaction(write=False) as tx:
                rows = await tx.fetch_all("claimed_task_of_run", params)
        return [self._task_from_row(row) for row in rows]

    # -- reading --------------------------------------------------------------------------

    async def get_task(self, project: str, task_id: str) -> Task | None:
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("get_task", {"project": project, "id": task_id})
        return None if row is None else self._task_from_row(row)

    async def list_tasks(
        self,
        *,
        project: str | None = None,
        status: TaskStatus | str | None = None,
        label: str | None = None,
        limit: int = 200,
        after: tuple[str, str] | None = None,
    ) -> list[Task]:
        """Tasks in (project, id) order, after the key ``after`` = (project, id) of the last
        task of the previous page; filtered by project, status and label."""
        if not 1 <= limit <= LIST_MAX:
            raise TaskError(f"limit must be from 1 to {LIST_MAX}, got {limit}")
        params = {
            "project": project,
            "status": None if status is None else TaskStatus(status).value,
            "label": label,
            "after_project": "" if after is None else after[0],
            "after_id": "" if after is None else after[1],
            "limit": limit,
        }
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_tasks", params)
        return [self._task_from_row(row) for row in rows]

    async def find_tasks(self, task_id: str) -> list[Task]:
        """The tasks of id ``task_id`` in every project (by project)."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("find_tasks", {"id": task_id})
        return [self._task_from_row(row) for row in rows]

    async def task_history(self, project: str, task_id: str) -> list[TaskEvent]:
        """The task's history, oldest first; UnknownTask if there is no such task."""
        async with self.transaction(write=False) as tx:
            await self._require_task(tx, project, task_id)
            rows = await tx.fetch_all("task_events", {"project": project, "id": task_id})
        return [
            TaskEvent(
                task_id=row["task_id"],
                project=row["project"],
                at=self.decode_time(row["at"]).timestamp(),
                kind=row["kind"],
                actor=row["actor"],
                token=None if row["token"] is None else int(row["token"]),
                detail=row["detail"],
            )
            for row in rows
        ]

    async def task_dependents(self, project: str, task_id: str) -> list[str]:
        """The ids of the tasks that require ``task_id`` (what it blocks)."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("task_dependents", {"project": project, "id": task_id})
        return [row["task_id"] for row in rows]

    # -- helpers --------------------------------------------------------------------------

    async def _changing(self, body: Callable[[Transaction], Awaitable[_T]]) -> _T:
        """``atomic(body)`` for a body that changes tasks: once it committed, and if it
        changed any (it returned a task or a non-empty list), this process's watchers of
        the board (topic ``tasks``) are woken to look again."""
        changed = await self.atomic(body)
        if changed:
            self._notify_here(TASKS)
        return changed

    def _task_from_row(self, row: Row) -> Task:
        spec = TaskSpec(
            id=row["id"],
            project=row["project"],
            title=row["title"],
            description=row["description"],
            priority=int(row["priority"]),
            requires=tuple(_json(row["requires"])),
            acceptance=tuple(_json(row["acceptance"])),
            labels=tuple(_json(row["labels"])),
            extra=dict(_json(row["extra"])),
        )
        return Task(
            spec=spec,
            status=TaskStatus(row["status"]),
            assignee=row["assignee"],
            run_id=row["run_id"],
            token=int(row["token"]),
            claimed_at=self._epoch(row["claimed_at"]),
            heartbeat_at=self._epoch(row["heartbeat_at"]),
            result=row["result"],
            created_at=self._epoch(row["created_at"]) or 0.0,
            updated_at=self._epoch(row["updated_at"]) or 0.0,
            attempts=int(row["attempts"]),
            expires_at=self._epoch(row["expires_at"]),
        )

    def _epoch(self, value: Any) -> float | None:
        return None if value is None else self.decode_time(value).timestamp()

    def _spec_params(self, spec: TaskSpec, requires: Iterable[str], now: Any) -> dict[str, Any]:
        return {
            "project": spec.project,
            "id": spec.id,
            "title": spec.title,
            "description": spec.description,
            "priority": spec.priority,
            "requires": self.encode_json(list(requires)),
            "labels": self.encode_json(list(dict.fromkeys(spec.labels))),
            "acceptance": self.encode_json(list(spec.acceptance)),
            "extra": self.encode_json(dict(spec.extra)),
            "now": now,
        }

    async def _graph(self, tx: Transaction, project: str) -> dict[str, set[str]]:
        graph: dict[str, set[str]] = {}
        for row in await tx.fetch_all("project_task_edges", {"project": project}):
            graph.setdefault(row["task_id"], set()).add(row["requires"])
        return graph

    async def _require_task(self, tx: Transaction, project: str, task_id: str) -> Task:
        row = await tx.fetch_one("get_task", {"project": project, "id": task_id})
        if row is None:
            raise UnknownTask(project, task_id, self.url)
        return self._task_from_row(row)

    async def _refuse_stale(
        self, tx: Transaction, project: str, task_id: str, token: int, what: str
    ) -> None:
        current = await self._require_task(tx, project, task_id)
        raise StaleClaim(
            project,
            task_id,
            token,
            status=current.status,
            holder=current.assignee,
            current=current.token,
            what=what,
        )

    async def _event(
        self,
        tx: Transaction,
        project: str,
        task_id: str,
        kind: str,
        actor: str | None,
        token: int | None,
        detail: str | None,
        now: Any,
    ) -> None:
        params = {
            "project": project,
            "task_id": task_id,
            "now": now,
            "kind": kind,
            "actor": actor,
            "token": token,
            "detail": detail,
        }
        await tx.execute("insert_task_event", params)


def _batch_keys(specs: Sequence[TaskSpec]) -> set[tuple[str, str]]:
    """The (project, id) of each of ``specs``; TaskError for a repeat or a non-spec."""
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        if not isinstance(spec, TaskSpec):
            raise TaskError(f"add_tasks takes TaskSpec values, got {type(spec).__name__}")
        if (spec.project, spec.id) in seen:
            raise TaskError(f"task {spec.id} is given twice in project {spec.project}")
        seen.add((spec.project, spec.id))
    return seen


def _edited(changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` as TaskSpec fields: lists as tuples, repeats dropped."""
    edited = dict(changes)
    for name in ("labels", "acceptance", "requires"):
        if name in edited:
            value = edited[name]
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise TaskError(f"{name} must be a list of strings, got {value!r}")
            edited[name] = tuple(dict.fromkeys(value))
    return edited


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _check_lease(lease: float) -> None:
    if not isinstance(lease, int | float) or not math.isfinite(lease) or lease <= 0:
        raise TaskError(f"a claim's lease must be a positive number of seconds, got {lease!r}")


def _unknown_dependency(spec: TaskSpec, field: str, other: str) -> str:
    return (
        f"task {spec.id} {field} {other}, which is not on the board in project "
        f"{spec.project} nor in this batch; add {other} first or drop it from {field}"
    )


def _refuse_cycle(graph: Mapping[str, set[str]], project: str) -> None:
    """TaskError naming a cycle of ``graph`` (task -> its requirements), if it has one."""
    white, grey, black = 0, 1, 2
    colour: dict[str, int] = {}
    for start in sorted(graph):
        if colour.get(start, white) != white:
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph.get(start, ())))]
        path = [start]
        colour[start] = grey
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                colour[node] = black
                continue
            nxt = todo.pop()
            state = colour.get(nxt, white)
            if state == grey:
                cycle = [*path[path.index(nxt) :], nxt]
                raise TaskError(
                    f"task {cycle[0]} would depend on itself in project {project}: "
                    f"{' requires '.join(cycle)}; remove one of these dependencies"
                )
            if state == white:
                colour[nxt] = grey
                path.append(nxt)
                stack.append((nxt, sorted(graph.get(nxt, ()))))
