"""The fleet in the operator control API, under /control/fleet (operator token, like the
rest of /control): activation tokens, runners, the four numbers, anomalies. Each change
is an action of ``corral.engine.fleet``, recorded in the audit log as ``token:<name>``;
the CLI's `corral fleet ...` calls these, or the same actions on the store."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from corral.engine import fleet
from corral.engine.actions import ActionError
from corral.errors import UsageError
from corral.gateway.control import Operator, operator
from corral.gateway.edge import WholeNumber
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

    return router
