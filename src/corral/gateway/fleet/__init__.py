"""The fleet on the gateway: the runner API (``/fleet/v1``: join, heartbeat; each later
call authenticated by ``require_runner``) and the fleet's part of the operator control
API (``/control/fleet``). ``FleetDoor`` bounds every /fleet/ request before the app reads
it (invariant 9)."""

from __future__ import annotations

from fastapi import FastAPI

from corral.gateway.fleet._control import fleet_control_router
from corral.gateway.fleet._door import MAX_BODY, FleetDoor
from corral.gateway.fleet._runner_api import RUNNER_SCOPE_KEY, Me, require_runner, runner_router
from corral.gateway.fleet._runs_api import runs_router
from corral.scheduler.service import Scheduler

__all__ = [
    "MAX_BODY",
    "RUNNER_SCOPE_KEY",
    "FleetDoor",
    "Me",
    "install_fleet",
    "require_runner",
]


def install_fleet(app: FastAPI, scheduler: Scheduler) -> None:
    """Serve the runner API and the fleet's control routes in ``app`` (after
    ``install_control``, whose operator check and error answers they use)."""
    app.state.fleet_scheduler = scheduler
    app.include_router(runner_router(scheduler))
    app.include_router(runs_router(scheduler))
    app.include_router(fleet_control_router(scheduler))
    app.add_middleware(FleetDoor)
