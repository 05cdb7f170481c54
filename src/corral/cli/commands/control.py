"""Steering the fleet: pause, resume, enable, disable, scale, kill."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import click

from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import console, fmt_duration
from corral.cli.commands.runs import pick_agent
from corral.errors import UsageError
from corral.project import Project
from corral.scheduler.service import agent_specs
from corral.store import Store

_KILL_WAIT = 30.0


async def _synced(obj: CliContext, project: Project) -> Store:
    """The project's store, with every agent of the config known to it."""
    store = await obj.store(project)
    await store.sync_project(
        agent_specs(project),
        scale_cap=project.config.scale,
        max_attempts=project.config.max_attempts,
        max_reruns=project.config.max_reruns,
    )
    return store


def _set_paused(obj: CliContext, agent_name: str | None, paused: bool) -> None:
    project = obj.project()
    if agent_name is not None:
        pick_agent(project, agent_name, allow_disabled=True)

    async def go() -> None:
        async with await _synced(obj, project) as store:
            await store.set_paused(agent_name, paused)

    asyncio.run(go())
    what = f"agent {agent_name}" if agent_name else "every agent of the project"
    if paused:
        console.print(f"paused {what}: nothing new is dispatched; triggers are still queued")
    else:
        console.print(f"resumed {what}: queued work is dispatched again")


@cli.command("pause")
@click.argument("agent_name", metavar="[AGENT]", required=False)
@click.pass_obj
def pause_cmd(obj: CliContext, agent_name: str | None) -> None:
    """Stop dispatching new runs (of AGENT, or of the whole project); intake goes on."""
    _set_paused(obj, agent_name, True)


@cli.command("resume")
@click.argument("agent_name", metavar="[AGENT]", required=False)
@click.pass_obj
def resume_cmd(obj: CliContext, agent_name: str | None) -> None:
    """Dispatch again after `corral pause`."""
    _set_paused(obj, agent_name, False)


def _set_enabled(obj: CliContext, agent_name: str, enabled: bool) -> None:
    project = obj.project()
    pick_agent(project, agent_name, allow_disabled=True)

    async def go() -> None:
        async with await _synced(obj, project) as store:
            await store.set_enabled(agent_name, enabled)

    asyncio.run(go())
    if enabled:
        console.print(f"enabled agent {agent_name}: its triggers are accepted again")
    else:
        console.print(f"disabled agent {agent_name}: its triggers are refused and recorded")


@cli.command("enable")
@click.argument("agent_name", metavar="AGENT")
@click.pass_obj
def enable_cmd(obj: CliContext, agent_name: str) -> None:
    """Accept AGENT's triggers again after `corral disable`."""
    _set_enabled(obj, agent_name, True)


@cli.command("disable")
@click.argument("agent_name", metavar="AGENT")
@click.pass_obj
def disable_cmd(obj: CliContext, agent_name: str) -> None:
    """Refuse AGENT's triggers (each refusal recorded with the reason) until `corral enable`."""
    _set_enabled(obj, agent_name, False)


@cli.command("scale")
@click.argument("agent_name", metavar="AGENT")
@click.argument("scale", type=click.IntRange(min=0))
@click.pass_obj
def scale_cmd(obj: CliContext, agent_name: str, scale: int) -> None:
    """Set how many runs of AGENT may go at once, live, and save it in its config.toml."""
    project = obj.project()
    agent = pick_agent(project, agent_name, allow_disabled=True)

    async def go() -> None:
        async with await _synced(obj, project) as store:
            await store.set_agent_scale(agent_name, scale)

    asyncio.run(go())
    write_scale(agent.dir / "config.toml", scale)
    note = " (0 disables the agent)" if scale == 0 else ""
    console.print(
        f"agent {agent_name} now runs at most {scale} at once{note}; saved in config.toml"
    )


_SCALE_LINE = re.compile(r"^scale\s*=.*$", re.MULTILINE)
_TABLE = re.compile(r"^\s*\[", re.MULTILINE)


def write_scale(path: Path, scale: int) -> None:
    """Set the top-level `scale` of an agent's config.toml, keeping everything else as written."""
    text = path.read_text() if path.exists() else ""
    table = _TABLE.search(text)
    head_end = table.start() if table else len(text)
    head, rest = text[:head_end], text[head_end:]
    if _SCALE_LINE.search(head):
        head = _SCALE_LINE.sub(f"scale = {scale}", head, count=1)
    else:
        head = f"scale = {scale}\n" + ("\n" if head and not head.startswith("\n") else "") + head
    path.write_text(head + rest)


@cli.command("kill")
@click.argument("run_id", metavar="RUN")
@click.pass_obj
def kill_cmd(obj: CliContext, run_id: str) -> None:
    """Stop RUN: its process group gets SIGTERM, then SIGKILL after a grace period."""
    project = obj.project()

    async def go() -> None:
        async with await obj.store(project) as store:
            run = await store.get_run(run_id)
            if run is None:
                raise UsageError(f"no run {run_id}; `corral runs` lists the recent ones")
            await store.request_kill(run_id)
            console.print(f"asked run {run_id} to stop; waiting for its scheduler")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _KILL_WAIT
            while loop.time() < deadline:
                current = await store.get_run(run_id)
                if current is not None and current.state.is_terminal:
                    console.print(
                        f"run {run_id} {current.state.value} after {fmt_duration(current.duration)}"
                    )
                    return
                await asyncio.sleep(0.2)
            console.print(
                f"run {run_id} has not stopped yet; the kill request stays recorded. If its "
                "scheduler is gone, the run is marked lost when its lease lapses."
            )

    asyncio.run(go())
