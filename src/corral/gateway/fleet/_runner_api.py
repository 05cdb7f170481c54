"""The runner API: what a runner host calls, under /fleet/v1.

``POST /fleet/v1/join`` redeems a single-use activation token (in the body) for a new
runner and its credential, shown once. Every later call carries that credential
(``Authorization: Bearer <credential>``) and goes through ``require_runner``: a missing
or unknown credential is a 401, a revoked runner's a 403, on the very next request (no
cache). A runner acts only for itself: the runner is whoever the credential names, never
a field of the request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from corral import __version__
from corral.engine import fleet, fleet_runs, fleet_upgrade
from corral.engine.actions import ActionError
from corral.engine.token import hash_token
from corral.gateway.edge import WholeNumber, json_response
from corral.scheduler.service import Scheduler
from corral.store import JoinRefusal, NewRunner, Runner, RunnerState, Store

__all__ = [
    "RUNNER_SCOPE_KEY",
    "HeartbeatBody",
    "Me",
    "heartbeat_answer",
    "heartbeat_with_runs",
    "refusals",
    "require_runner",
    "runner_router",
]

RUNNER_SCOPE_KEY = "corral.runner"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_LABEL = r"^[a-z0-9][a-z0-9_.-]{0,62}$"

_runner_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="runnerCredential",
    description="A runner's credential: what POST /fleet/v1/join answers, once.",
)


async def require_runner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_runner_bearer)],
) -> Runner:
    """The runner a request comes from; 401 without a known credential, 403 when that
    runner was revoked. Everything runner-facing depends on this."""
    given = credentials.credentials.strip() if credentials is not None else ""
    if not given:
        raise ActionError(
            401,
            "a runner credential is required (Authorization: Bearer <credential>); "
            "`corral runner join URL --token T` gets one",
        )
    scheduler: Scheduler = request.app.state.fleet_scheduler
    runner = await scheduler.store.runner_by_credential(hash_token(given))
    if runner is None:
        raise ActionError(
            401,
            "unknown runner credential: this runner is not (or no longer) a member of the "
            "fleet; join again with a new token (`corral runner join URL --token T`)",
        )
    if runner.state is RunnerState.REVOKED:
        when = runner.revoked_at.isoformat() if runner.revoked_at else "?"
        raise ActionError(
            403,
            f"runner {runner.id} ({runner.name}) was revoked at {when}; it may not act for "
            "the fleet any more. Join again with a new token if it should.",
        )
    request.scope[RUNNER_SCOPE_KEY] = runner
    return runner


Me = Annotated[Runner, Depends(require_runner)]


class JoinBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=200, description="The activation token")
    name: str = Field(pattern=_NAME, description="The runner's name (default: its host's)")
    hostname: str = Field(min_length=1, max_length=253)
    labels: list[Annotated[str, Field(pattern=_LABEL)]] = Field(default=[], max_length=32)
    slots: WholeNumber = Field(default=1, ge=1, le=1024, description="Runs it takes at once")
    version: str = Field(default="", max_length=64, description="Its corral version")


class RunningRun(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    run_id: str = Field(alias="runId", min_length=1, max_length=200)
    fence: WholeNumber = Field(ge=0, le=2**62)


class HeartbeatBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(default="", max_length=64)
    running: list[RunningRun] = Field(default=[], max_length=1024)
    bundles: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default=[], max_length=256
    )
    upgrade: dict[str, Any] | None = Field(
        default=None, description="What the runner reports of an upgrade (state, version, error)"
    )
    warm: dict[Annotated[str, Field(max_length=64)], WholeNumber] | None = Field(
        default=None,
        max_length=256,
        description="Its ready warm workspaces, by agent (agents with [scale] warm it ran)",
    )


class JoinAnswer(BaseModel):
    ok: Literal[True]
    runnerId: str
    name: str
    credential: str
    labels: list[str]
    slots: int
    state: str
    heartbeatSeconds: int
    offlineAfterSeconds: int
    controlPlaneVersion: str


class HeartbeatAnswer(BaseModel):
    ok: Literal[True]
    gone: list[str] = Field(description="Reported runs this runner no longer holds: stop them")
    upgrade: dict[str, Any] | None = Field(
        default=None, description="Upgrade (or roll back) to this corral version: how"
    )
    kill: list[str] = Field(description="Its runs an operator asked to kill")
    leaseSeconds: float
    runnerId: str
    state: str
    heartbeatSeconds: int
    offlineAfterSeconds: int
    controlPlaneVersion: str


class RefusalBody(BaseModel):
    ok: Literal[False]
    error: str
    reason: str | None = None


_REFUSALS = {
    400: "a malformed request (a bad hash, a body that is no JSON)",
    401: "missing or unknown runner credential",
    403: "the activation token cannot be redeemed (unknown, expired, revoked, or "
    "redeemed already), or the runner was revoked, or the run is another runner's",
    404: "no such run or bundle",
    409: "the fleet is full (maxRunners), or the run is no longer this runner's (its "
    "lease lapsed, or it ended): stop it",
    413: "the request body is too large",
    422: "a body that does not validate",
    503: "the store is busy or failed: retry after Retry-After",
}


def refusals(*statuses: int, **words: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of the refusals a route answers (``{ok: false, error}``);
    ``words`` (``e409="..."``) say what a status means on that route."""
    return {
        s: {"model": RefusalBody, "description": words.get(f"e{s}", _REFUSALS[s])} for s in statuses
    }


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return refusals(*statuses)


def runner_router(scheduler: Scheduler, warm: fleet.WarmReports | None = None) -> APIRouter:
    """The runner API's routes over ``scheduler`` (its project and store); heartbeats'
    warm counts go to ``warm``."""
    router = APIRouter(prefix="/fleet/v1", tags=["fleet"])
    store = scheduler.store

    @router.post(
        "/join",
        status_code=201,
        summary="Redeem an activation token: a new runner and its credential (shown once)",
        response_model=JoinAnswer,
        responses=_errors(403, 409, 413, 422, 503),
    )
    async def join(body: JoinBody, request: Request) -> Any:
        settings = fleet.fleet_settings(scheduler.project)
        refused = fleet_upgrade.window_refusal(body.version)
        if refused is not None:
            return json_response({"ok": False, "error": refused, "reason": "version"}, 409)
        credential = fleet.new_runner_credential()
        new = NewRunner(
            name=body.name,
            hostname=body.hostname,
            labels=fleet.parse_labels(body.labels),
            slots=body.slots,
            version=body.version,
            address=request.client.host if request.client else None,
        )
        joined = await store.redeem_fleet_token(
            hash_token(body.token.strip()),
            hash_token(credential),
            new,
            max_runners=settings.max_runners,
        )
        if isinstance(joined, JoinRefusal):
            status = 409 if joined.reason == "fleet_full" else 403
            answer = {"ok": False, "error": joined.message, "reason": joined.reason}
            return json_response(answer, status)
        answer = {
            "ok": True,
            "runnerId": joined.id,
            "name": joined.name,
            "credential": credential,
            "labels": list(joined.labels),
            "slots": joined.slots,
            "state": joined.state.value,
            "heartbeatSeconds": settings.heartbeat_seconds,
            "offlineAfterSeconds": settings.offline_after_seconds,
            "controlPlaneVersion": __version__,
        }
        return json_response(answer, 201)

    @router.post(
        "/heartbeat",
        summary="A runner is alive: record it, and answer its state and the timings",
        response_model=HeartbeatAnswer,
        responses=_errors(401, 403, 413, 422, 503),
    )
    async def heartbeat(body: HeartbeatBody, me: Me) -> Any:
        settings = fleet.fleet_settings(scheduler.project)
        refused = fleet_upgrade.window_refusal(body.version)
        if refused is not None:
            return json_response({"ok": False, "error": refused, "reason": "version"}, 409)
        beat = await store.runner_heartbeat(me.id, version=body.version or me.version)
        if beat is None:  # revoked between the check and the write
            raise ActionError(403, f"runner {me.id} was revoked; it may not act for the fleet")
        return await heartbeat_with_runs(store, beat, body, settings, warm)

    @router.get(
        "/upgrade/wheel",
        summary="The corral wheel of the running rollout (GET ?version=V)",
        responses=_errors(401, 403, 404),
    )
    async def upgrade_wheel(version: str, me: Me) -> Any:
        rollout = await store.latest_fleet_rollout()
        found = await fleet_upgrade.wheel_data(store, rollout, version)
        if found is None:
            raise ActionError(
                404,
                f"no wheel of corral {version} is being rolled out (or rolled back to) here",
            )
        name, data = found
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    return router


async def heartbeat_with_runs(
    store: Store,
    runner: Runner,
    body: HeartbeatBody,
    settings: fleet.FleetSettings,
    warm: fleet.WarmReports | None = None,
) -> dict[str, Any]:
    """The answer of a recorded heartbeat (the route's and ``FleetDoor``'s alike): the
    leases of the runs it still holds are renewed (one statement, no project row lock);
    the ones it reports but no longer holds are answered, so it stops them, with those
    an operator asked to kill. Its warm counts go to ``warm`` (this process's memory)."""
    if warm is not None and body.warm is not None:
        warm.record(runner.id, body.warm)
    answer = heartbeat_answer(runner, settings)
    if body.running:
        reported = {run.run_id: run.fence for run in body.running}
        renewal = await store.renew_runner_runs(
            runner.id, reported, lease_seconds=fleet_runs.LEASE_SECONDS
        )
        answer["gone"], answer["kill"] = list(renewal.gone), list(renewal.kill)
    order, recorded = await fleet_upgrade.on_heartbeat(store, runner, body.upgrade, settings)
    if order is not None:
        answer["upgrade"] = order
    if body.upgrade is not None:
        answer["upgradeRecorded"] = recorded  # False: the runner reports it again
    return answer


def heartbeat_answer(runner: Runner, settings: fleet.FleetSettings) -> dict[str, Any]:
    """What a heartbeat answers (the route's and ``FleetDoor``'s fast path alike)."""
    return {
        "ok": True,
        "runnerId": runner.id,
        "state": runner.state.value,
        "heartbeatSeconds": settings.heartbeat_seconds,
        "offlineAfterSeconds": settings.offline_after_seconds,
        "controlPlaneVersion": __version__,
        "leaseSeconds": fleet_runs.LEASE_SECONDS,
        "gone": [],
        "kill": [],
    }
