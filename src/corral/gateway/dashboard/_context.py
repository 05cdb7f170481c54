"""What every part of the dashboard shares: the scheduler, the gate, the feed, templates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from starlette.responses import HTMLResponse

from corral.errors import CorralError
from corral.gateway.dashboard._auth import RECHECK_SECONDS, Gate, Operator
from corral.gateway.dashboard._feed import Feed
from corral.gateway.dashboard._render import Renderer

if TYPE_CHECKING:
    from corral.scheduler.service import Scheduler

__all__ = ["Dashboard", "LoginRequired", "Signed", "login_url", "signed_in"]


class LoginRequired(CorralError):
    """The request carries no valid session (answered by a redirect to the login page, or
    401: see ``install_dashboard``)."""


def login_url(request: Request) -> str:
    """The login page, coming back to where the visitor was going."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.headers.get("hx-request"):
        current = request.headers.get("hx-current-url", "")
        path = current.split("://", 1)[-1]
        target = path[path.find("/") :] if "/" in path else "/dashboard"
    return f"/dashboard/login?next={quote(target, safe='/')}"


@dataclass
class Dashboard:
    scheduler: Scheduler
    gate: Gate
    feed: Feed
    renderer: Renderer
    #: How often an open event stream checks that its session is still valid.
    recheck: float = RECHECK_SECONDS

    @property
    def project_name(self) -> str:
        project = self.scheduler.project
        return project.config.project_name or project.root.name

    async def operator(self, request: Request) -> Operator:
        """The signed-in operator; LoginRequired when there is none."""
        found = await self.gate.operator(request)
        if found is None:
            raise LoginRequired()
        return found

    def page(
        self,
        template: str,
        operator: Operator,
        context: dict[str, Any],
        *,
        title: str,
        nav: str = "",
        status: int = 200,
    ) -> HTMLResponse:
        values = {
            "operator": operator,
            "project": self.project_name,
            "title": title,
            "nav": nav,
            **context,
        }
        return self.renderer.page(template, values, status)


async def signed_in(request: Request) -> Operator:
    """The dependency of every page and stream: the operator of a valid session."""
    dash: Dashboard = request.app.state.dashboard
    return await dash.operator(request)


#: A route parameter that is the signed-in operator (LoginRequired without one).
Signed = Annotated[Operator, Depends(signed_in)]
