"""The fleet on the gateway: the runner API (``/fleet/v1``: join, heartbeat; each later
call authenticated by ``require_runner``) and the fleet's part of the operator control
API (``/control/fleet``). ``FleetDoor`` bounds every /fleet/ request before the app reads
it (invariant 9). The runner API's own OpenAPI document is at ``RUNNER_OPENAPI_PATH``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from corral.engine.fleet import WarmReports
from corral.gateway.control import openapi_part
from corral.gateway.fleet._control import fleet_control_router
from corral.gateway.fleet._door import MAX_BODY, FleetDoor
from corral.gateway.fleet._runner_api import (
    RUNNER_SCOPE_KEY,
    Me,
    refusals,
    require_runner,
    runner_router,
)
from corral.gateway.fleet._runs_api import runs_router
from corral.scheduler.service import Scheduler

__all__ = [
    "MAX_BODY",
    "RUNNER_OPENAPI_PATH",
    "RUNNER_SCOPE_KEY",
    "FleetDoor",
    "Me",
    "install_fleet",
    "refusals",
    "require_runner",
    "runner_openapi_document",
]

#: Where the runner API's OpenAPI document is served (to anyone, as the control API's is).
RUNNER_OPENAPI_PATH = "/fleet/v1/openapi.json"


def install_fleet(app: FastAPI, scheduler: Scheduler) -> None:
    """Serve the runner API and the fleet's control routes in ``app`` (after
    ``install_control``, whose operator check and error answers they use)."""
    app.state.fleet_scheduler = scheduler
    #: The warm counts runners report in heartbeats to this process (/metrics, /runners).
    app.state.runner_warm = warm = WarmReports()
    app.include_router(runner_router(scheduler, warm))
    app.include_router(runs_router(scheduler))
    app.include_router(fleet_control_router(scheduler, warm))
    app.add_middleware(FleetDoor)
    cached: dict[str, Any] = {}

    @app.get(RUNNER_OPENAPI_PATH, include_in_schema=False)
    async def runner_openapi() -> JSONResponse:
        if "doc" not in cached:  # made on first use: the bundles' routes come later
            cached["doc"] = runner_openapi_document(app)
        return JSONResponse(cached["doc"])


def runner_openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of the runner API: every /fleet/v1 route."""
    return openapi_part(
        app,
        lambda path: path.startswith("/fleet/v1/"),
        title="corral runner API",
        description=(
            "What a runner host calls. `POST /fleet/v1/join` redeems an activation token "
            "(`corral fleet tokens create`) for the runner's credential; every other call "
            "carries it: `Authorization: Bearer <credential>`. A runner acts on its own "
            "runs only."
        ),
    )
