"""The agent API's task-board routes: ``task-claim``, ``task-heartbeat``, ``task-complete``,
``task-fail`` and ``task-release``.

The run's identity is the claimer: the claim's assignee is the run's agent and its run id
is the run's, so a claim ends with the run that took it (``release_tasks_of_run``). The
fencing token stays on the server: a command names only the task, and the token is the
one of the claim this run holds on it. A run that no longer holds its claim (the lease
lapsed and the task went to another run, or an operator cancelled it) is told so with
410 (exit 13, "claim lost"), naming who holds the task now; a run that never claimed the
task gets 409 (exit 1), an unknown task 404 (exit 2). Nothing to claim is 409 (exit 1),
as a refused ``rlock`` is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from corral.gateway.agent_api._errors import AgentApiError, answer
from corral.gateway.agent_api._models import iso
from corral.project._models import TASK_LEASE_MAX, TASK_LEASE_MIN
from corral.scheduler.agentlink import RunRef
from corral.tasks._model import StaleClaim, Task, TaskError, TaskStatus

if TYPE_CHECKING:
    from corral.gateway.agent_api._handlers import AgentApi

__all__ = [
    "TASK_LEASE",
    "TaskBody",
    "TaskClaimBody",
    "TaskCompleteBody",
    "TaskFailBody",
    "TaskRoutes",
    "task_answer",
]

#: How long a claim made by a run lasts without a heartbeat. A run's claims also end
#: when the run ends, so this only matters for a run that lives on and forgets its task.
TASK_LEASE = 600.0
_NAME = 128
_TEXT = 64 * 1024


class TaskClaimBody(BaseModel):
    project: str | None = Field(default=None, min_length=1, max_length=_NAME)
    labels: list[str] = Field(default_factory=list, max_length=32)
    #: Seconds the claim lasts without a heartbeat (None: the agent's taskLease or 600).
    lease: int | None = None
    #: Only tasks of this priority or more (the store checks 1 to 10).
    min_priority: int = Field(default=1, alias="minPriority")


class TaskBody(BaseModel):
    id: str = Field(min_length=1, max_length=_NAME)
    project: str | None = Field(default=None, min_length=1, max_length=_NAME)


class TaskCompleteBody(TaskBody):
    result: str | None = Field(default=None, max_length=_TEXT)


class TaskFailBody(TaskBody):
    reason: str | None = Field(default=None, max_length=_TEXT)


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else iso(datetime.fromtimestamp(epoch, UTC))


def task_answer(task: Task) -> dict[str, Any]:
    """A task as the commands print it."""
    return {
        "ok": True,
        "id": task.id,
        "project": task.project,
        "title": task.spec.title,
        "description": task.spec.description,
        "priority": task.spec.priority,
        "labels": list(task.spec.labels),
        "acceptance": list(task.spec.acceptance),
        "requires": list(task.spec.requires),
        "status": task.status.value,
        "token": task.token,
        "expiresAt": _iso(task.expires_at),
    }


def _lost(stale: StaleClaim) -> AgentApiError:
    body: dict[str, Any] = {
        "ok": False,
        "reason": "claim lost",
        "id": stale.task_id,
        "project": stale.project,
        "status": stale.status.value,
        "error": str(stale),
    }
    if stale.status is TaskStatus.CLAIMED:
        body |= {"holder": stale.holder, "token": stale.current}
    return AgentApiError(410, body)


class TaskRoutes:
    """The task routes of ``api`` (its store, its redaction of what a run sends)."""

    def __init__(self, api: AgentApi) -> None:
        self.api = api

    def lease_of(self, body: TaskClaimBody, run: RunRef) -> int | float:
        """The claim's lease: ``--lease``, else the agent's ``taskLease``, else
        TASK_LEASE; AgentApiError (400) for a lease out of bounds."""
        if body.lease is None:
            agent = self.api.project.agents.get(run.agent)
            configured = None if agent is None else agent.config.task_lease
            return TASK_LEASE if configured is None else configured
        if not TASK_LEASE_MIN <= body.lease <= TASK_LEASE_MAX:
            raise AgentApiError(
                400,
                {
                    "ok": False,
                    "error": f"--lease {body.lease} is out of bounds: a claim's lease is "
                    f"{TASK_LEASE_MIN} to {TASK_LEASE_MAX} seconds (24 h); heartbeat with "
                    "task-heartbeat to hold a task longer",
                },
            )
        return body.lease

    async def claim(self, body: TaskClaimBody, run: RunRef) -> JSONResponse:
        lease = self.lease_of(body, run)
        try:
            task = await self.api.store.claim_task(
                claimer=run.agent,
                run_id=run.run_id,
                project=body.project,
                labels=body.labels,
                lease=lease,
                min_priority=body.min_priority,
            )
        except TaskError as exc:
            return answer(400, {"ok": False, "error": str(exc)})
        if task is None:
            where = f" in project {body.project}" if body.project else ""
            labels = f" with labels {', '.join(body.labels)}" if body.labels else ""
            if body.min_priority > 1:
                labels += f" of priority {body.min_priority} or more"
            return answer(
                409,
                {
                    "ok": False,
                    "reason": "no task to claim",
                    "error": f"no open task{where}{labels} has every requirement done",
                },
            )
        return answer(200, task_answer(task))

    async def heartbeat(self, body: TaskBody, run: RunRef) -> JSONResponse:
        task = await self._held(body, run)
        try:
            # Extended by the claim's own lease (--lease, taskLease or the default).
            beat = await self.api.store.heartbeat_task(task.project, task.id, task.token)
        except StaleClaim as stale:
            raise _lost(stale) from None
        return answer(200, task_answer(beat))

    async def complete(self, body: TaskCompleteBody, run: RunRef) -> JSONResponse:
        result = None if body.result is None else self.api.redact(run, body.result)
        return await self._finish(body, run, TaskStatus.DONE, result)

    async def fail(self, body: TaskFailBody, run: RunRef) -> JSONResponse:
        reason = None if body.reason is None else self.api.redact(run, body.reason)
        return await self._finish(body, run, TaskStatus.FAILED, reason)

    async def release(self, body: TaskBody, run: RunRef) -> JSONResponse:
        task = await self._held(body, run)
        try:
            released = await self.api.store.release_task(task.project, task.id, task.token)
        except StaleClaim as stale:
            raise _lost(stale) from None
        return answer(200, task_answer(released))

    async def _finish(
        self, body: TaskBody, run: RunRef, status: TaskStatus, text: str | None
    ) -> JSONResponse:
        task = await self._held(body, run)
        try:
            done = await self.api.store.finish_task(task.project, task.id, task.token, status, text)
        except StaleClaim as stale:
            raise _lost(stale) from None
        return answer(200, task_answer(done))

    async def _held(self, body: TaskBody, run: RunRef) -> Task:
        """The claim ``run`` holds on task ``body.id``; else the refusal that says why."""
        store = self.api.store
        held = await store.claimed_tasks_of_run(run.run_id, body.id)
        if body.project is not None:
            held = [task for task in held if task.project == body.project]
        if len(held) == 1:
            return held[0]
        if held:
            projects = ", ".join(task.project for task in held)
            raise AgentApiError(
                400,
                {
                    "ok": False,
                    "error": f"this run holds task {body.id} in projects {projects}: "
                    "say which with --project",
                },
            )
        found = [
            task
            for task in await store.find_tasks(body.id)
            if body.project is None or task.project == body.project
        ]
        if not found:
            where = f" in project {body.project}" if body.project else ""
            raise AgentApiError(
                404,
                {"ok": False, "reason": "task not found", "error": f"no task {body.id}{where}"},
            )
        for task in found:
            history = await store.task_history(task.project, task.id)
            if any(e.kind == "claimed" and e.detail == run.run_id for e in history):
                raise _lost(
                    StaleClaim(
                        task.project,
                        task.id,
                        max(e.token or 0 for e in history if e.detail == run.run_id),
                        status=task.status,
                        holder=task.assignee,
                        current=task.token,
                        what="use",
                    )
                )
        task = found[0]
        holder = f"it is claimed by {task.assignee}" if task.assignee else f"it is {task.status}"
        raise AgentApiError(
            409,
            {
                "ok": False,
                "reason": "not the task holder",
                "id": task.id,
                "project": task.project,
                "status": task.status.value,
                "error": f"this run never claimed task {task.id}: {holder}",
            },
        )
