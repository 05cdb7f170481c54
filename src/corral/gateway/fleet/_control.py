"""The fleet in the operator control API, under /control/fleet (operator token, like the
rest of /control): activation tokens, runners, the four numbers, anomalies. Each change
is an action of ``corral.engine.fleet``, recorded in the audit log as ``token:<name>``;
the CLI's `corral fleet ...` calls these, or the same actions on the store."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from corral.engine import fleet, fleet_upgrade
from corral.engine.actions import ActionError
from corral.errors import UsageError
from corral.gateway.control import Operator, operator
from corral.gateway.edge import WholeNumber, read_body
from corral.scheduler.service import Scheduler
from corral.store import RunnerState

__all__ = ["fleet_control_router"]

_LABEL = r"^[a-z0-9][a-z0-9_.-]{0,62}$"


class TokenBody(BaseModel):
    ttlSeconds: WholeNumber = Field(
        default=int(fleet.DEFAULT_TTL.total_seconds()),
        ge=1,
        le=int(fleet.MAX_TTL.total_seconds()),
        description="How long the token may be redeemed (default 14 days)",
    )
    labels: list[Annotated[str, Field(pattern=_LABEL)]] = Field(default=[], max_length=32)
    note: str | None = Field(default=None, max_length=500)


class ResolveBody(BaseModel):
    note: str = Field(min_length=1, max_length=2000, description="What was found and done")


class WheelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255, description="corral-VERSION-*.whl")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="As POST /wheels answered it")


class UpgradeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str | None = Field(
        default=None, max_length=64, description="The version (default: --channel's newest)"
    )
    canary: WholeNumber = Field(default=1, ge=0, le=10000)
    batchShare: float = Field(default=0.25, gt=0, le=1)
    watchSeconds: float = Field(default=3600.0, ge=0, le=30 * 86400)
    channel: str | None = Field(default=None, max_length=32, description="stable, beta or pre")
    wheel: WheelRef | None = Field(default=None, description="A wheel uploaded to /wheels")
    index: str | None = Field(default=None, max_length=2000, description="Or a package index")
    onWorse: str = Field(default="halt", pattern="^(halt|rollback)$")
    controlPlane: bool = Field(
        default=False,
        description="Upgrade the control plane processes first, one at a time, then the runners",
    )


_VERBS = {
    "revoke": RunnerState.REVOKED,
    "drain": RunnerState.DRAINING,
    "cordon": RunnerState.CORDONED,
    "uncordon": RunnerState.ACTIVE,
}


def fleet_control_router(scheduler: Scheduler, warm: fleet.WarmReports | None = None) -> APIRouter:
    router = APIRouter(prefix="/control/fleet", tags=["fleet"], dependencies=[Depends(operator)])
    store = scheduler.store

    def settings() -> fleet.FleetSettings:
        return fleet.fleet_settings(scheduler.project)

    @router.post("/tokens", status_code=201, summary="Mint a single-use activation token")
    async def create_token(body: TokenBody, actor: Operator) -> dict[str, Any]:
        try:
            labels = fleet.parse_labels(body.labels)
        except UsageError as exc:
            raise ActionError(400, str(exc)) from None
        token, made = await fleet.create_token(
            store,
            ttl=timedelta(seconds=body.ttlSeconds),
            labels=labels,
            note=body.note,
            actor=actor,
        )
        return {"ok": True, "token": token, **fleet.fleet_token_json(made, store.now())}

    @router.get("/tokens", summary="Activation tokens (the tokens themselves are not kept)")
    async def list_tokens() -> dict[str, Any]:
        now = store.now()
        tokens = await store.list_fleet_tokens()
        return {"ok": True, "tokens": [fleet.fleet_token_json(t, now) for t in tokens]}

    @router.post("/tokens/{token_id}/revoke", summary="Revoke an unused activation token")
    async def revoke_token(token_id: str, actor: Operator) -> dict[str, Any]:
        token, changed = await fleet.revoke_token(store, token_id, actor=actor)
        return {"ok": True, "changed": changed, "token": fleet.fleet_token_json(token, store.now())}

    @router.get("/runners", summary="Every runner: state, online or not, version, labels")
    async def list_runners() -> dict[str, Any]:
        await fleet.check_offline(store, settings())
        now = store.now()
        runners = await store.list_runners()
        return {
            "ok": True,
            "runners": [
                fleet.runner_json(r, now, settings(), None if warm is None else warm.of(r.id))
                for r in runners
            ],
        }

    @router.post(
        "/runners/{runner}/{verb}",
        summary="Revoke, drain, cordon or uncordon a runner (by id, or by its name)",
    )
    async def change_runner(runner: str, verb: str, actor: Operator) -> dict[str, Any]:
        state = _VERBS.get(verb)
        if state is None:
            raise ActionError(404, f"no runner action {verb!r}: use {', '.join(_VERBS)}")
        after, changed = await fleet.change_runner(store, runner, state, actor=actor)
        return {
            "ok": True,
            "changed": changed,
            "runner": fleet.runner_json(after, store.now(), settings()),
        }

    @router.get(
        "/status",
        summary="The four numbers: online ratio, job throughput, open anomalies, version skew",
    )
    async def status() -> dict[str, Any]:
        return await fleet.fleet_overview(store, scheduler.project)

    @router.get("/anomalies", summary="Anomalies, newest first: the open ones, or all")
    async def list_anomalies(
        all: Annotated[bool, Query(description="Resolved ones too")] = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        await fleet.check_offline(store, settings())
        found = await store.list_anomalies(include_resolved=all, limit=limit)
        return {"ok": True, "anomalies": [fleet.anomaly_json(a) for a in found]}

    @router.post("/anomalies/{anomaly_id}/resolve", summary="Resolve an anomaly with a note")
    async def resolve(
        anomaly_id: Annotated[int, Path(ge=1, le=2**62)], body: ResolveBody, actor: Operator
    ) -> dict[str, Any]:
        found, changed = await fleet.resolve_anomaly(store, anomaly_id, body.note, actor=actor)
        return {"ok": True, "changed": changed, "anomaly": fleet.anomaly_json(found)}

    _upgrade_routes(router, scheduler)
    return router


def _upgrade_routes(router: APIRouter, scheduler: Scheduler) -> None:
    """`corral fleet upgrade` through the control API: a wheel uploaded into the store,
    a rollout started, its status with the figures per version, halt and rollback."""
    store = scheduler.store

    @router.post(
        "/wheels",
        status_code=201,
        summary="Keep a corral wheel in the store for a fleet upgrade (the body: its bytes)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def upload_wheel(
        request: Request,
        actor: Operator,
        name: Annotated[str, Query(min_length=1, max_length=255)],
        sha256: Annotated[str | None, Query(pattern=r"^[0-9a-fA-F]{64}$")] = None,
    ) -> dict[str, Any]:
        data = await _wheel_body(request)
        kept = await fleet_upgrade.keep_wheel(store, data, name, actor=actor, sha256=sha256)
        return {"ok": True, "wheel": kept}

    @router.post("/upgrade", status_code=201, summary="Start rolling a corral version out")
    async def start_upgrade(body: UpgradeBody, actor: Operator) -> dict[str, Any]:
        made = await fleet_upgrade.start_rollout(
            store,
            target=body.to,
            canary=body.canary,
            batch_share=body.batchShare,
            watch_seconds=body.watchSeconds,
            channel=body.channel,
            stored_wheel=body.wheel.model_dump() if body.wheel else None,
            index=body.index,
            on_worse=body.onWorse,
            control_plane=body.controlPlane,
            actor=actor,
        )
        return {"ok": True, **await fleet_upgrade.rollout_answer(store, made)}

    @router.get("/upgrade", summary="The latest fleet upgrade, and the figures per version")
    async def upgrade_status() -> dict[str, Any]:
        await fleet.check_offline(store, fleet.fleet_settings(scheduler.project))
        latest = await store.latest_fleet_rollout()
        if latest is None:
            raise ActionError(404, "no rollout yet; `corral fleet upgrade --to VERSION` starts one")
        return {"ok": True, **await fleet_upgrade.rollout_answer(store, latest)}

    @router.post("/upgrade/halt", summary="Stop the fleet upgrade (the upgraded runners stay)")
    async def halt_upgrade(actor: Operator) -> dict[str, Any]:
        done = await fleet_upgrade.halt_rollout(store, actor=actor)
        return {"ok": True, **await fleet_upgrade.rollout_answer(store, done)}

    @router.post("/upgrade/rollback", summary="Send the upgraded runners back")
    async def rollback_upgrade(actor: Operator) -> dict[str, Any]:
        done = await fleet_upgrade.rollback_rollout(store, actor=actor)
        return {"ok": True, **await fleet_upgrade.rollout_answer(store, done)}


async def _wheel_body(request: Request) -> bytes:
    return await read_body(
        request, fleet_upgrade.MAX_WHEEL_BYTES, "a corral wheel", "the wheel's bytes"
    )
