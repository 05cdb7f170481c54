"""`corral stat`: the fleet at a glance, from the local store or a remote gateway.

Locally it reads the project's store (which may itself be a shared PostgreSQL). With an
environment (`-E NAME`) whose file sets ``[gateway] url``, it asks that gateway's control
API instead (``GET /control/status``), authenticated by ``$CORRAL_OPERATOR_TOKEN`` or
the credential ``operator_token:NAME``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import click
import httpx
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import (
    cell,
    console,
    fmt_cost,
    fmt_duration_seconds,
    fmt_tokens,
    print_json,
    safe,
)
from corral.credentials import CredentialError, CredentialStore
from corral.errors import UsageError
from corral.project import Project
from corral.status import RUNNING_PAGE, RUNNING_PAGE_MAX, fleet_status

__all__ = ["Page", "load_status", "render_status", "stat_cmd", "status_view", "top_cmd"]

_TOKEN_ENV = "CORRAL_OPERATOR_TOKEN"
_STATE_STYLE = {"running": "cyan", "idle": "white", "paused": "yellow", "disabled": "dim"}


@cli.command("stat")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--limit",
    default=RUNNING_PAGE,
    show_default=True,
    type=click.IntRange(0, RUNNING_PAGE_MAX),
    help="How many running instances to list.",
)
@click.option(
    "--offset",
    default=0,
    type=click.IntRange(min=0),
    help="List the running instances from this one on (oldest first).",
)
@click.option("--agent", default=None, help="List only this agent's running instances.")
@click.pass_obj
def stat_cmd(obj: CliContext, as_json: bool, limit: int, offset: int, agent: str | None) -> None:
    """Agents, queues, running instances, locks and recent refusals.

    Every agent is summarised; the running instances are listed a page at a time.
    """
    project = obj.project()
    page = Page(limit, offset, agent)
    status = asyncio.run(load_status(obj, project, page))
    if as_json:
        print_json(status)
        return
    render_status(status)


@dataclass(frozen=True)
class Page:
    """Which live runs a status document lists (see corral.status)."""

    limit: int = RUNNING_PAGE
    offset: int = 0
    agent: str | None = None


async def load_status(
    obj: CliContext, project: Project, page: Page | None = None
) -> dict[str, Any]:
    """The status document, from the remote gateway the environment names, else the store."""
    page = page or Page()
    remote = _remote_url(project)
    if remote is not None:
        return await _fetch(remote, _remote_token(project), page)
    async with await obj.store(project) as store:
        return await fleet_status(
            store, project, limit=page.limit, offset=page.offset, agent=page.agent
        )


def _remote_url(project: Project) -> str | None:
    """``[gateway] url`` when the selected environment (not the project) sets it."""
    if project.environment is None:
        return None
    for value in project.resolved:
        if value.key == "gateway.url" and value.source.startswith("environment:"):
            return None if value.value is None else str(value.value).rstrip("/")
    return None


def _remote_token(project: Project) -> str:
    given = os.environ.get(_TOKEN_ENV)
    if given:
        return given
    name = f"operator_token:{project.environment}"
    try:
        (loaded,) = CredentialStore().resolve([name])
    except CredentialError as exc:
        raise UsageError(
            f"environment {project.environment!r} points at a remote gateway, which needs an "
            f"operator token: set ${_TOKEN_ENV}, or store it with `corral creds add {name}` "
            f"({exc})"
        ) from None
    return loaded.values["token"]


async def _fetch(url: str, token: str, page: Page) -> dict[str, Any]:
    where = f"{url}/control/status"
    params: dict[str, str | int] = {"limit": page.limit, "offset": page.offset}
    if page.agent is not None:
        params["agent"] = page.agent
    try:
        async with httpx.AsyncClient(timeout=10.0) as http:
            response = await http.get(
                where, params=params, headers={"Authorization": f"Bearer {token}"}
            )
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach the gateway at {where}: {exc}") from None
    if response.status_code in (401, 403):
        raise UsageError(
            f"the gateway at {url} refused the operator token ({response.status_code})"
        )
    if response.status_code != 200:
        raise UsageError(
            f"the gateway at {where} answered {response.status_code}: {response.text[:200]}"
        )
    body: dict[str, Any] = response.json()
    return body


def render_status(status: dict[str, Any]) -> None:
    """Print the human view of a status document."""
    console.print(status_view(status))


def status_view(status: dict[str, Any]) -> Group:
    """The human view of a status document, as one renderable (`corral top` redraws it)."""
    schedulers = status.get("schedulers") or []
    where = (
        ", ".join(f"{safe(s['id'])} on {safe(s['host'])}" for s in schedulers)
        if schedulers
        else "[yellow]no scheduler running[/] (`corral start`)"
    )
    spent = fmt_cost(status.get("spentToday"))
    cap = status.get("dailyCap")
    money = f"spent today {spent}" + ("" if cap is None else f" of {fmt_cost(cap)}")
    paused = " · [yellow]paused[/]" if status.get("paused") else ""
    if status.get("runLocally") is False:
        paused += " · [yellow]runs on runners only[/] ([fleet] runLocally = false)"
    parts: list[RenderableType] = [
        Text.from_markup(
            f"[bold]{safe(status.get('project'))}[/] · {where} · {safe(money)}{paused}"
        )
    ]
    agents = Table("agent", "trigger", "state", "running", "queue", "today", box=None)
    for agent in status["agents"]:
        kinds = [k for k in agent.get("triggers", []) if k not in ("manual", "call")]
        state = agent.get("state", "")
        agents.add_row(
            cell(agent["agent"]),
            cell(",".join(map(str, kinds)) or "manual"),
            cell(state, style=_STATE_STYLE.get(state, "white")),
            cell(f"{agent['running']}/{agent['scale']}"),
            cell(agent["queued"]),
            cell(_today(agent)),
        )
    parts.append(agents)
    waiting = _waiting_for_runners(status)
    if waiting:
        parts.append(Text(waiting, style="yellow"))
    if status["running"]:
        runs = Table(
            *("run", "agent", "age", "tokens", "cost", "status"),
            box=None,
            title="running",
            title_justify="left",
        )
        for run in status["running"]:
            runs.add_row(
                cell(run["id"]),
                cell(run["agent"]),
                fmt_duration_seconds(run["ageSeconds"]),
                fmt_tokens(run.get("tokens")),
                fmt_cost(run.get("costUsd")),
                cell(run["status"] or "-"),
            )
        parts.append(runs)
    more = _more_running(status)
    if more:
        parts.append(Text(more, style="dim"))
    if status["locks"]:
        locks = Table("key", "holder", "held", box=None, title="locks", title_justify="left")
        for lock in status["locks"]:
            locks.add_row(
                cell(lock["key"]), cell(lock["holder"]), fmt_duration_seconds(lock["heldSeconds"])
            )
        parts.append(locks)
    held = status.get("locksTotal", len(status["locks"]))
    if held > len(status["locks"]):
        parts.append(
            Text(
                f"{held - len(status['locks'])} more locks held: `corral locks` lists them all",
                style="dim",
            )
        )
    if status.get("recent"):
        recent = Table(
            "item",
            "agent",
            "trigger",
            "what",
            "why",
            box=None,
            title="recent drops and refusals",
            title_justify="left",
        )
        for item in status["recent"]:
            recent.add_row(
                cell(item["item"]),
                cell(item["agent"]),
                cell(item["trigger"]),
                cell(item["state"]),
                cell(item["reason"] or "-"),
            )
        parts.append(recent)
    return Group(*parts)


@cli.command("top")
@click.option(
    "-n",
    "--interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.2),
    help="Seconds between refreshes.",
)
@click.option("--once", is_flag=True, help="Draw once and exit (for scripts and tests).")
@click.pass_obj
def top_cmd(obj: CliContext, interval: float, once: bool) -> None:
    """A live view of `corral stat`, redrawn every second until Ctrl-C.

    Into a pipe or a file, each frame is written in turn instead."""
    project = obj.project()

    async def go() -> None:
        status = await load_status(obj, project)
        if once:
            console.print(status_view(status))
            return
        if not console.is_terminal:
            # Into a pipe or a file, as `top -b` does: each frame in turn, as it is drawn
            # (a live display would show nothing there until Ctrl-C).
            while True:
                console.print(status_view(status))
                console.file.flush()
                await asyncio.sleep(interval)
                status = await load_status(obj, project)
        with Live(status_view(status), console=console, screen=False, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(interval)
                live.update(status_view(await load_status(obj, project)), refresh=True)

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass


def _waiting_for_runners(status: dict[str, Any]) -> str:
    """Why queued runs of agents that run on runners wait: for a runner with the labels
    (`corral fleet runners ls` lists those that joined)."""
    waits = []
    for agent in status["agents"]:
        labels = agent.get("runsOn")
        if labels is None or not agent.get("queued"):
            continue
        need = f"labels {', '.join(map(str, labels))}" if labels else "any labels"
        waits.append(f"{safe(agent['agent'])} ({agent['queued']} queued, a runner with {need})")
    if not waits:
        return ""
    return (
        "waiting for runners, as they run on the fleet's runners only: "
        + "; ".join(waits)
        + " (`corral fleet runners ls`)"
    )


def _more_running(status: dict[str, Any]) -> str:
    """How many live runs this page does not list, and the command that lists them."""
    total = status.get("runningTotal")
    if total is None:  # a gateway from before paging lists them all
        return ""
    offset = status.get("runningOffset", 0)
    shown = len(status["running"])
    if shown == total:
        return ""
    agent = status.get("runningAgent")
    whose = "" if agent is None else f" --agent {agent}"
    text = (
        f"runs {offset + 1}-{offset + shown} of {total} running"
        if shown
        else (f"{total} running, none from {offset + 1}")
    )
    nxt = status.get("runningNext")
    if nxt is not None:
        text += f"; {total - nxt} more: `corral stat{whose} --offset {nxt}`"
    return text + " (`--agent NAME` lists one agent's)"


def _today(agent: dict[str, Any]) -> str:
    spent, cap = agent.get("spentToday"), agent.get("dailyCap")
    if not spent and cap is None:
        return "-"
    return fmt_cost(spent) + ("" if cap is None else f" / {fmt_cost(cap)}")
