"""The gateway: one ASGI app for the scheduler's HTTP surface.

It carries health, the agent API (``agent_api``: locks, calls and signals for
running agents, authenticated by each run's secret) and the operator control API
(queue a run, read the fleet's state; the operator token); webhooks, the
dashboard and /metrics join it in later work.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from corral.gateway.agent_api import (
    AgentApi,
    agent_router,
    install_error_handlers,
)
from corral.gateway.token import token_matches
from corral.project import Project
from corral.scheduler.agentlink import AgentLink
from corral.scheduler.service import Scheduler
from corral.store import ItemState, NewItem, RunState, Store, TriggerKind
from corral.views import iso_time, item_json, run_json

__all__ = ["create_agent_app", "create_app"]


class RunRequestBody(BaseModel):
    agent: str = Field(min_length=1, max_length=64)
    prompt: str | None = Field(default=None, max_length=1_000_000)


def create_app(scheduler: Scheduler, token: str) -> FastAPI:
    app = FastAPI(title="corral gateway", version="1", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.state.agent_api = AgentApi(scheduler.project, scheduler.store, scheduler.link)
    app.include_router(agent_router(app.state.agent_api))

    def operator(authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token_matches(given.strip(), token):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "a valid operator token is required")

    guarded = [Depends(operator)]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        info = scheduler.info
        return {"ok": True, "scheduler": info.id if info else None, "draining": scheduler.draining}

    @app.post("/control/runs", dependencies=guarded, status_code=status.HTTP_202_ACCEPTED)
    async def queue_run(body: RunRequestBody) -> Any:
        new = NewItem(agent=body.agent, trigger=TriggerKind.MANUAL, prompt=body.prompt)
        result = await scheduler.submit(new)
        if result.item.state is ItemState.REJECTED:
            return JSONResponse(
                {"ok": False, "error": result.item.reason, "item": item_json(result.item)},
                status_code=status.HTTP_409_CONFLICT,
            )
        return {
            "ok": True,
            "item": item_json(result.item),
            "dropped": [item_json(d) for d in result.dropped],
        }

    @app.get("/control/runs/{run_id}", dependencies=guarded)
    async def get_run(run_id: str) -> dict[str, Any]:
        run = await scheduler.store.get_run(run_id)
        if run is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id}")
        return run_json(run)

    @app.get("/control/status", dependencies=guarded)
    async def fleet_status() -> dict[str, Any]:
        store = scheduler.store
        project = await store.project_state()
        agents = await store.agent_states()
        live = await store.list_runs(states=[RunState.STARTING, RunState.RUNNING], limit=1000)
        locks = await store.list_locks()
        now = datetime.now(UTC)
        return {
            "scheduler": scheduler.info.id if scheduler.info else None,
            "paused": project.paused,
            "scaleCap": project.scale_cap,
            "agents": [
                {
                    "agent": a.agent,
                    "scale": a.scale,
                    "paused": a.paused,
                    "enabled": a.enabled,
                    "queued": a.queued,
                    "running": a.active,
                }
                for a in agents
                if a.present
            ],
            "running": [
                {
                    "id": run.id,
                    "agent": run.agent,
                    "trigger": run.trigger.value,
                    "status": run.status_text,
                    "statusAt": iso_time(run.status_at),
                    "startedAt": iso_time(run.started_at),
                    "ageSeconds": (now - (run.started_at or run.created_at)).total_seconds(),
                }
                for run in live
            ],
            "locks": [
                {
                    "key": lock.key,
                    "holder": lock.run_id,
                    "agent": lock.agent,
                    "heldSince": iso_time(lock.acquired_at),
                    "expiresAt": iso_time(lock.expires_at),
                }
                for lock in locks
            ],
        }

    return app


def create_agent_app(project: Project, store: Store, link: AgentLink) -> FastAPI:
    """The agent API alone: what `corral run` serves for the run it starts itself."""
    app = FastAPI(title="corral gateway (agent API)", version="1", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.state.agent_api = AgentApi(project, store, link)
    app.include_router(agent_router(app.state.agent_api))
    return app
