"""The gateway: one ASGI app for the scheduler's HTTP surface.

It carries /health, the agent API (``agent_api``: locks, calls and signals for running
agents, authenticated by each run's secret), webhook intake (``webhooks``: each source's
signature), the operator control API (``control``: every operator action, with its own
OpenAPI document at /control/openapi.json), /metrics (``metrics``) and the web dashboard
(``dashboard``), all three authenticated by an operator token (``token``), and the
runner API of the fleet (``fleet``: join, heartbeat; runners' own credentials).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Depends, FastAPI

from corral import __version__
from corral.engine.fleet import WarmReports
from corral.engine.token import ENV_TOKEN_NAME, TokenVerifier
from corral.gateway.agent_api import AgentApi, install_agent_api
from corral.gateway.bundles import install_bundles
from corral.gateway.control import install_control, operator
from corral.gateway.dashboard import install_dashboard
from corral.gateway.fleet import install_fleet
from corral.gateway.metrics import FleetMetrics, metrics_router
from corral.gateway.webhooks import install_webhooks
from corral.project import Project
from corral.scheduler.agentlink import AgentLink
from corral.scheduler.service import Scheduler
from corral.store import Store

__all__ = ["create_agent_app", "create_app"]


def create_app(
    scheduler: Scheduler,
    token: str | None = None,
    *,
    fixed_tokens: Mapping[str, str] | None = None,
    public_metrics: bool = False,
) -> FastAPI:
    """The gateway of ``scheduler``.

    Operator tokens are those in the store; besides them ``token`` is accepted under the
    name ``env`` (what ``$CORRAL_OPERATOR_TOKEN`` gives), and each of ``fixed_tokens``
    (name -> token) under its name. ``public_metrics``: /metrics without a token.
    """
    app = FastAPI(title="corral gateway", version="1", docs_url=None, redoc_url=None)
    install_agent_api(app, AgentApi(scheduler.project, scheduler.store, scheduler.link))
    install_webhooks(app, scheduler)
    fixed = dict(fixed_tokens or {})
    if token:
        fixed[ENV_TOKEN_NAME] = token
    install_control(app, scheduler, TokenVerifier(scheduler.store, fixed))
    install_fleet(app, scheduler)
    install_bundles(app, scheduler)
    install_dashboard(app, scheduler)
    runner_warm: WarmReports = app.state.runner_warm

    def warm_ready() -> dict[str, int]:
        """Ready warm workspaces by agent: this host's and its runners' (as reported)."""
        counts = scheduler.warm.counts()
        for agent, count in runner_warm.by_agent(scheduler.project.agents).items():
            counts[agent] = counts.get(agent, 0) + count
        return counts

    app.state.metrics = FleetMetrics(
        scheduler.store, project=lambda: scheduler.project, warm=warm_ready
    )
    guard = [] if public_metrics else [Depends(operator)]
    app.include_router(metrics_router(app.state.metrics), dependencies=guard)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        info = scheduler.info
        return {
            "ok": True,
            "scheduler": info.id if info else None,
            "draining": scheduler.draining,
            "version": __version__,
        }

    return app


def create_agent_app(project: Project, store: Store, link: AgentLink) -> FastAPI:
    """The agent API alone: what `corral run` serves for the run it starts itself."""
    app = FastAPI(title="corral gateway (agent API)", version="1", docs_url=None, redoc_url=None)
    install_agent_api(app, AgentApi(project, store, link))
    return app
