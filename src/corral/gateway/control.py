"""The operator control API: every operator action over HTTP, under /control.

Each request carries an operator token (``Authorization: Bearer <token>``; see
``corral.engine.token``); a missing, unknown or revoked one is answered 401 with
``WWW-Authenticate: Bearer`` and changes nothing. The actions are those of
``corral.engine.actions`` (the CLI and the dashboard call the same ones), recorded in the
audit log as ``token:<name>``. A refusal answers ``{"ok": false, "error": "..."}`` with
its status: 400 bad input, 401 no valid token, 404 unknown agent/run/lock/receipt,
409 refused by the current state, 422 a body or query that does not validate, 503 the
store failed.

The operator's OpenAPI document (this API, /health and /metrics; not the agent API nor
webhook intake, which are for runs and senders) is served at /control/openapi.json.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.engine import actions
from corral.engine.actions import MAX_SCALE, ActionError
from corral.engine.token import TokenVerifier
from corral.errors import StoreBusy, StoreError
from corral.gateway.edge import WholeNumber, json_response, problems
from corral.scheduler.service import Scheduler
from corral.status import RUNNING_PAGE, RUNNING_PAGE_MAX, fleet_status
from corral.store import AuditEntry, ItemState, RunCursor, RunState, TriggerKind
from corral.tasks._model import TaskError, TaskSpec, TaskStatus, UnknownTask
from corral.views import (
    SEARCH_MAX,
    agent_json,
    iso_time,
    item_json,
    lock_json,
    pool_decision_json,
    pool_json,
    run_filter,
    run_json,
    task_event_json,
    task_json,
)

__all__ = [
    "OPENAPI_PATH",
    "Operator",
    "agent_json",
    "audit_json",
    "control_router",
    "install_control",
    "lock_json",
    "openapi_part",
    "operator",
]

OPENAPI_PATH = "/control/openapi.json"
#: The paths whose refusals answer ``{"ok": false, "error": ...}``: the control API and
#: the fleet's runner API.
_OWN = ("/control/", "/fleet/")
#: The largest page of runs or audit entries one request may ask for.
MAX_LIMIT = 1000
#: The largest scale the API sets (the store's column is a 32-bit integer).

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="operatorToken",
    description="An operator token: `corral token create NAME` makes one.",
)


async def operator(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The actor of a request (``token:<name>``); 401 without a valid operator token."""
    verifier: TokenVerifier = request.app.state.tokens
    given = credentials.credentials.strip() if credentials is not None else None
    name = await verifier.verify(given)
    if name is None:
        raise ActionError(
            401,
            "a valid operator token is required (Authorization: Bearer <token>); "
            "`corral token create NAME` makes one",
        )
    return actions.token_actor(name)


Operator = Annotated[str, Depends(operator)]


# -- bodies and answers ----------------------------------------------------------------


#: An idempotency key: 1 to 200 visible ASCII characters (a UUID is a good one).
REQUEST_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"


class RunRequestBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    agent: str = Field(min_length=1, max_length=64)
    prompt: str | None = Field(default=None, max_length=1_000_000)
    idempotency_key: str | None = Field(
        default=None,
        alias="idempotencyKey",
        pattern=REQUEST_KEY_PATTERN,
        description="The same as the Idempotency-Key header (give either, or both alike)",
    )


class ScaleBody(BaseModel):
    scale: WholeNumber = Field(ge=0, le=MAX_SCALE, description="Runs at once; 0 disables the agent")


class ErrorBody(BaseModel):
    ok: Literal[False]
    error: str


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    words = {
        400: "bad input",
        401: "missing, unknown or revoked operator token",
        404: "no such agent, run, lock or receipt",
        409: "refused in the current state",
        422: "a body that does not validate, or an idempotency key sent with another request",
        503: "the store is busy or failed; nothing was changed: retry after Retry-After",
    }
    return {status: {"model": ErrorBody, "description": words[status]} for status in statuses}


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": iso_time(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "subject": entry.subject,
        "detail": entry.detail,
    }


# -- the routes ------------------------------------------------------------------------


def control_router(scheduler: Scheduler) -> APIRouter:
    """The control API's routes over ``scheduler`` (its project and store)."""
    router = APIRouter(
        prefix="/control",
        tags=["control"],
        dependencies=[Depends(operator)],
        responses=_errors(401),
    )
    _run_routes(router, scheduler)
    _agent_routes(router, scheduler)
    _lock_routes(router, scheduler)
    _task_routes(router, scheduler)
    _pool_routes(router, scheduler)
    return router


def _run_routes(router: APIRouter, scheduler: Scheduler) -> None:
    store = scheduler.store

    # runs

    @router.post(
        "/runs",
        status_code=202,
        summary="Queue a manual run of an agent",
        description=(
            "With an `Idempotency-Key` header (or `idempotencyKey` in the body), a retry "
            "of the same request within a day answers the first one's item and status "
            "(with `Idempotent-Replayed: true`) and queues nothing; the same key with a "
            "different request is a 422. A busy store answers 503 with `Retry-After`, "
            "having changed nothing: retry with the same key."
        ),
        responses=_errors(400, 404, 409, 422, 503),
    )
    async def queue_run(
        body: RunRequestBody,
        actor: Operator,
        idempotency_key: Annotated[
            str | None, Header(pattern=REQUEST_KEY_PATTERN, alias="Idempotency-Key")
        ] = None,
    ) -> Any:
        key = _request_key(idempotency_key, body.idempotency_key)
        result = await actions.queue_run(scheduler, body.agent, body.prompt, actor=actor, key=key)
        headers = {"Idempotent-Replayed": "true"} if result.duplicate else None
        if result.item.state is ItemState.REJECTED:
            return JSONResponse(
                {"ok": False, "error": result.item.reason or "", "item": item_json(result.item)},
                status_code=409,
                headers=headers,
            )
        answer = {
            "ok": True,
            "item": item_json(result.item),
            "dropped": [item_json(d) for d in result.dropped],
        }
        return JSONResponse(answer, status_code=202, headers=headers)

    @router.get(
        "/runs",
        summary="Runs, newest first, a page at a time",
        description=(
            "Every run of every agent, newest first. Filters: `agent`, `state` and "
            "`trigger` (each repeatable), `since` and `until` (a span back from now such "
            "as `2h` or `3d`, or an ISO time, UTC unless it names a zone), `q` (a run id "
            "prefix, or text in the status, the trigger detail or the prompt; any case). "
            "`next` is the cursor of the next page: pass it as `before` (null on the last "
            "page)."
        ),
        responses=_errors(400),
    )
    async def list_runs(
        agent: Annotated[str | None, Query(max_length=64)] = None,
        state: Annotated[list[RunState] | None, Query()] = None,
        trigger: Annotated[list[TriggerKind] | None, Query()] = None,
        q: Annotated[str | None, Query(max_length=SEARCH_MAX)] = None,
        since: Annotated[str | None, Query(max_length=64)] = None,
        until: Annotated[str | None, Query(max_length=64)] = None,
        before: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    ) -> dict[str, Any]:
        try:
            where = run_filter(
                agent=agent,
                states=state or (),
                triggers=trigger or (),
                since=since,
                until=until,
                search=q,
            )
            cursor = None if not before else RunCursor.parse(before)
        except ValueError as exc:
            raise ActionError(400, str(exc)) from None
        page = await store.page_runs(where, before=cursor, limit=limit)
        return {
            "ok": True,
            "runs": [run_json(run) for run in page.runs],
            "next": None if page.next is None else page.next.token(),
        }

    @router.get("/runs/{run_id}", summary="One run", responses=_errors(404))
    async def get_run(run_id: str) -> dict[str, Any]:
        run = await store.get_run(run_id)
        if run is None:
            raise ActionError(404, f"no run {run_id}")
        return run_json(run)

    @router.post(
        "/runs/{run_id}/kill",
        status_code=202,
        summary="Stop a run (SIGTERM to its process group, SIGKILL after a grace period)",
        responses=_errors(404, 409),
    )
    async def kill_run(run_id: str, actor: Operator) -> dict[str, Any]:
        run = await actions.kill(scheduler, run_id, actor=actor)
        return {"ok": True, "run": run_json(run)}


def _agent_routes(router: APIRouter, scheduler: Scheduler) -> None:
    store = scheduler.store

    async def agent_answer(agent: str) -> dict[str, Any]:
        state = next((a for a in await store.agent_states() if a.agent == agent), None)
        if state is None:  # the action found it a moment ago
            raise ActionError(404, f"unknown agent {agent!r}")
        return {"ok": True, "agent": agent_json(state)}

    @router.get(
        "/status",
        summary="The fleet now: agents, a page of the running runs, locks",
        description=(
            "Every agent is summarised; `running` lists `limit` live runs from `offset`, "
            "oldest first (of `agent` only when given). `runningTotal` counts them all and "
            "`runningNext` is the offset of the next page, or null."
        ),
    )
    async def fleet_status(
        limit: Annotated[int, Query(ge=0, le=RUNNING_PAGE_MAX)] = RUNNING_PAGE,
        offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
        agent: Annotated[str | None, Query(max_length=64)] = None,
    ) -> dict[str, Any]:
        return await _status(scheduler, limit=limit, offset=offset, agent=agent)

    @router.post("/pause", summary="Stop dispatching runs of every agent (intake goes on)")
    async def pause_project(actor: Operator) -> dict[str, Any]:
        await actions.pause(scheduler, None, actor=actor)
        return {"ok": True, "paused": True}

    @router.post("/resume", summary="Dispatch again after /control/pause")
    async def resume_project(actor: Operator) -> dict[str, Any]:
        await actions.resume(scheduler, None, actor=actor)
        return {"ok": True, "paused": False}

    @router.post(
        "/agents/{agent}/pause",
        summary="Stop dispatching runs of one agent (its triggers are still queued)",
        responses=_errors(404),
    )
    async def pause_agent(agent: str, actor: Operator) -> dict[str, Any]:
        await actions.pause(scheduler, agent, actor=actor)
        return await agent_answer(agent)

    @router.post(
        "/agents/{agent}/resume",
        summary="Dispatch an agent's runs again",
        responses=_errors(404),
    )
    async def resume_agent(agent: str, actor: Operator) -> dict[str, Any]:
        await actions.resume(scheduler, agent, actor=actor)
        return await agent_answer(agent)

    @router.post(
        "/agents/{agent}/enable",
        summary="Accept an agent's triggers again",
        responses=_errors(404),
    )
    async def enable_agent(agent: str, actor: Operator) -> dict[str, Any]:
        return {
            "ok": True,
            "agent": agent_json(await actions.enable(scheduler, agent, actor=actor)),
        }

    @router.post(
        "/agents/{agent}/disable",
        summary="Refuse an agent's triggers (each refusal recorded with the reason)",
        responses=_errors(404),
    )
    async def disable_agent(agent: str, actor: Operator) -> dict[str, Any]:
        state = await actions.disable(scheduler, agent, actor=actor)
        return {"ok": True, "agent": agent_json(state)}

    @router.put(
        "/agents/{agent}/scale",
        summary="Set how many runs of an agent may go at once (saved in its config.toml)",
        responses=_errors(400, 404, 409),
    )
    async def scale_agent(agent: str, body: ScaleBody, actor: Operator) -> dict[str, Any]:
        state = await actions.scale(scheduler, agent, body.scale, actor=actor)
        return {"ok": True, "agent": agent_json(state)}


def _lock_routes(router: APIRouter, scheduler: Scheduler) -> None:
    store = scheduler.store

    @router.get("/locks", summary="The resource locks held now")
    async def list_locks() -> dict[str, Any]:
        locks, waiters = await store.list_locks(), await store.list_lock_waiters()
        wants = await store.list_lock_wants()
        now = datetime.now(UTC)
        return {"ok": True, "locks": [lock_json(lock, waiters, now, wants) for lock in locks]}

    @router.delete(
        "/locks/{key:path}",
        summary="Take a lock from whichever run holds it (the first waiter gets it)",
        responses=_errors(400, 404),
    )
    async def release_lock(key: str, actor: Operator) -> dict[str, Any]:
        lock = await actions.release_lock(scheduler, key, actor=actor)
        return {"ok": True, "lock": lock_json(lock, [], datetime.now(UTC))}

    # webhook receipts and the audit log

    @router.post(
        "/webhooks/receipts/{receipt_id}/replay",
        status_code=202,
        summary="Deliver a recorded webhook delivery again, routed as configured now",
        responses=_errors(404, 409),
    )
    async def replay_receipt(receipt_id: str, actor: Operator) -> dict[str, Any]:
        receipt, results = await actions.replay(scheduler, receipt_id, actor=actor)
        return {
            "ok": True,
            "receipt": {
                "id": receipt.id,
                "replayOf": receipt.replay_of,
                "outcome": receipt.outcome.value,
            },
            "items": [item_json(result.item) for result in results],
            "dropped": [item_json(d) for result in results for d in result.dropped],
        }

    @router.get("/audit", summary="Operators' recorded actions, newest first")
    async def list_audit(
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    ) -> dict[str, Any]:
        entries = await store.list_audit(limit=limit)
        return {"ok": True, "entries": [audit_json(entry) for entry in entries]}


class TaskIn(BaseModel):
    """A task to add (the fields of a task file's entry)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    project: str
    title: str
    description: str = ""
    priority: int = 5
    requires: list[str] = Field(default_factory=list)
    blocks: list[str] = Field(default_factory=list)
    acceptance: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)


class TasksIn(BaseModel):
    tasks: list[TaskIn] = Field(min_length=1, max_length=10_000)


class TaskEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = None
    description: str | None = None
    priority: int | None = None
    requires: list[str] | None = None
    labels: list[str] | None = None
    acceptance: list[str] | None = None


def _task_refusal(exc: TaskError) -> ActionError:
    if isinstance(exc, UnknownTask):
        return ActionError(404, str(exc))
    if "already" in str(exc):
        return ActionError(409, str(exc))
    return ActionError(400, str(exc))


def _task_routes(router: APIRouter, scheduler: Scheduler) -> None:
    store = scheduler.store

    @router.get("/tasks", summary="Tasks on the board, by project and id")
    async def list_tasks(
        project: str | None = None,
        status: TaskStatus | None = None,
        label: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 200,
        after_project: str | None = None,
        after_id: str | None = None,
    ) -> dict[str, Any]:
        after = (after_project, after_id) if after_project and after_id else None
        tasks = await store.list_tasks(
            project=project, status=status, label=label, limit=limit, after=after
        )
        return {"ok": True, "tasks": [task_json(task) for task in tasks]}

    @router.post(
        "/tasks",
        summary="Add tasks to the board, all or nothing",
        responses=_errors(400, 409),
    )
    async def add_tasks(body: TasksIn, actor: Operator) -> dict[str, Any]:
        try:
            specs = [
                TaskSpec(
                    id=t.id,
                    project=t.project,
                    title=t.title,
                    description=t.description,
                    priority=t.priority,
                    requires=tuple(t.requires),
                    blocks=tuple(t.blocks),
                    acceptance=tuple(t.acceptance),
                    labels=tuple(t.labels),
                    extra=t.extra,
                )
                for t in body.tasks
            ]
            added = await store.add_tasks(specs, actor=actor)
        except TaskError as exc:
            raise _task_refusal(exc) from None
        return {"ok": True, "tasks": [task_json(task) for task in added]}

    @router.get(
        "/tasks/{project}/{task_id}",
        summary="One task, what waits for it, and its history",
        responses=_errors(404),
    )
    async def show_task(project: str, task_id: str) -> dict[str, Any]:
        task = await store.get_task(project, task_id)
        if task is None:
            raise _task_refusal(UnknownTask(project, task_id))
        blocks = await store.task_dependents(project, task_id)
        history = await store.task_history(project, task_id)
        body = task_json(task) | {
            "blocks": blocks,
            "history": [task_event_json(e) for e in history],
        }
        return {"ok": True, "task": body}

    @router.patch(
        "/tasks/{project}/{task_id}",
        summary="Change a task's title, description, priority, requirements, labels",
        responses=_errors(400, 404, 409),
    )
    async def edit_task(
        project: str, task_id: str, body: TaskEdit, actor: Operator
    ) -> dict[str, Any]:
        changes = body.model_dump(exclude_none=True)
        if not changes:
            raise ActionError(400, "nothing to change: give title, priority, requires...")
        try:
            task = await store.edit_task(project, task_id, actor=actor, **changes)
        except TaskError as exc:
            raise _task_refusal(exc) from None
        return {"ok": True, "task": task_json(task)}

    @router.post(
        "/tasks/{project}/{task_id}/cancel",
        summary="Cancel a task (a run holding it learns at its next task command)",
        responses=_errors(404, 409),
    )
    async def cancel_task(project: str, task_id: str, actor: Operator) -> dict[str, Any]:
        try:
            task = await store.cancel_task(project, task_id, actor)
        except TaskError as exc:
            raise _task_refusal(exc) from None
        return {"ok": True, "task": task_json(task)}


def _pool_routes(router: APIRouter, scheduler: Scheduler) -> None:
    store = scheduler.store

    @router.get("/pools", summary="The agents' pools as the autoscaler sized them")
    async def list_pools() -> dict[str, Any]:
        now = datetime.now(UTC)
        return {"ok": True, "pools": [pool_json(p, now) for p in await store.pool_states()]}

    @router.get("/pools/log", summary="The autoscaler's decisions with their inputs, newest first")
    async def pool_log(
        agent: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    ) -> dict[str, Any]:
        decisions = await store.pool_decisions(agent, limit=limit)
        return {"ok": True, "decisions": [pool_decision_json(d) for d in decisions]}


async def _status(
    scheduler: Scheduler, *, limit: int = RUNNING_PAGE, offset: int = 0, agent: str | None = None
) -> dict[str, Any]:
    status = await fleet_status(
        scheduler.store, scheduler.project, limit=limit, offset=offset, agent=agent
    )
    if scheduler.info is not None:  # the one answering, even before its first heartbeat
        status["scheduler"] = scheduler.info.id
    return status


# -- installing it ---------------------------------------------------------------------


def install_control(app: FastAPI, scheduler: Scheduler, tokens: TokenVerifier) -> None:
    """Give ``app`` the control API, its error answers and its OpenAPI document."""
    app.state.tokens = tokens
    app.include_router(control_router(scheduler))

    async def refused(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ActionError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return json_response({"ok": False, "error": exc.message}, exc.status, headers)

    app.add_exception_handler(ActionError, refused)
    _install_busy_handler(app)
    _install_invalid_handler(app)
    cached: dict[str, Any] = {}

    @app.get(OPENAPI_PATH, include_in_schema=False)
    async def operator_openapi() -> JSONResponse:
        if "doc" not in cached:
            cached["doc"] = operator_openapi_document(app)
        return JSONResponse(cached["doc"])


def _install_invalid_handler(app: FastAPI) -> None:
    """A body or query of /control/* that does not validate is a 422 naming each field;
    the answer encodes whatever input it echoes (a lone surrogate included). Other paths
    keep the handler installed before this one."""
    earlier = app.exception_handlers.get(RequestValidationError)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if request.url.path.startswith(_OWN) or earlier is None:
            errors = exc.errors()
            body = {"ok": False, "error": problems(errors), "detail": jsonable_encoder(errors)}
            return json_response(body, 422)
        answer = earlier(request, exc)
        return await answer if inspect.isawaitable(answer) else answer

    app.add_exception_handler(RequestValidationError, invalid)
    earlier_http = app.exception_handlers.get(StarletteHTTPException)

    async def http_error(request: Request, exc: Exception) -> Response:
        """FastAPI's own refusals (a body it cannot parse: 400) in the API's shape."""
        assert isinstance(exc, StarletteHTTPException)
        if request.url.path.startswith(_OWN) or earlier_http is None:
            body = {"ok": False, "error": f"bad request: {exc.detail}"}
            if exc.status_code != 400:
                body = {"ok": False, "error": str(exc.detail)}
            return json_response(body, exc.status_code, dict(exc.headers or {}))
        answer = earlier_http(request, exc)
        return await answer if inspect.isawaitable(answer) else answer

    app.add_exception_handler(StarletteHTTPException, http_error)


def _request_key(header: str | None, field: str | None) -> str | None:
    """The idempotency key of a request: the header's or the body's (400 if they differ)."""
    if header is not None and field is not None and header != field:
        raise ActionError(
            400,
            "the Idempotency-Key header and the body's idempotencyKey differ; "
            "send one key (either place, or both alike)",
        )
    return header if header is not None else field


def _install_busy_handler(app: FastAPI) -> None:
    """A store that did not answer within its wait bound (``StoreBusy``: no pooled
    connection, a row or the SQLite file locked by another writer) is a 503 with
    ``Retry-After``; nothing was changed, so a retry is safe. Paths outside /control/
    keep the answer of the store-failure handler installed before this one, with the
    header added."""
    earlier = app.exception_handlers.get(StoreError)

    async def busy(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StoreBusy)
        retry_after = str(exc.retry_after)
        if request.url.path.startswith(_OWN) or earlier is None:
            body = {"ok": False, "error": str(exc)}
            return JSONResponse(body, status_code=503, headers={"Retry-After": retry_after})
        answer = earlier(request, exc)
        response: Response = await answer if inspect.isawaitable(answer) else answer
        if response.status_code == 503:
            response.headers["Retry-After"] = retry_after
        return response

    app.add_exception_handler(StoreBusy, busy)


def operator_openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of the operator's routes: /control/*, /health and /metrics."""
    return openapi_part(
        app,
        lambda path: path.startswith("/control/") or path in ("/health", "/metrics"),
        title="corral control API",
        description=(
            "Operator actions and fleet state. Authenticate with an operator token "
            "(`corral token create NAME`): `Authorization: Bearer <token>`."
        ),
    )


def openapi_part(
    app: FastAPI, keep: Callable[[str], bool], *, title: str, description: str
) -> dict[str, Any]:
    """A part of the app's whole OpenAPI document: the paths ``keep`` accepts, and the
    components they refer to."""
    full = copy.deepcopy(app.openapi())
    paths = {path: item for path, item in full.get("paths", {}).items() if keep(path)}
    components = full.get("components", {})
    kept: dict[str, dict[str, Any]] = {}
    pending = _refs(paths)
    while pending:
        kind, name = pending.pop()
        if name in kept.setdefault(kind, {}):
            continue
        found = components.get(kind, {}).get(name)
        if found is not None:
            kept[kind][name] = found
            pending |= _refs(found)
    schemes = {
        name
        for item in paths.values()
        for operation in item.values()
        for requirement in operation.get("security", [])
        for name in requirement
    }
    if schemes:
        kept["securitySchemes"] = {
            name: components["securitySchemes"][name] for name in sorted(schemes)
        }
    document: dict[str, Any] = {
        "openapi": full["openapi"],
        "info": {"title": title, "version": full["info"]["version"], "description": description},
        "paths": paths,
    }
    kept = {kind: dict(sorted(values.items())) for kind, values in kept.items() if values}
    if kept:
        document["components"] = kept
    return document


def _refs(value: Any) -> set[tuple[str, str]]:
    """Every ``#/components/<kind>/<name>`` that ``value`` refers to, as (kind, name)."""
    found: set[tuple[str, str]] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "$ref" and isinstance(inner, str) and inner.startswith("#/components/"):
                _, _, kind, name = inner.split("/", 3)
                found.add((kind, name))
            else:
                found |= _refs(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= _refs(inner)
    return found
