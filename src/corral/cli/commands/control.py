"""Steering the fleet: pause, resume, enable, disable, scale, kill.

Each command is an action of ``corral.engine.actions`` (the control API and the dashboard
call the same ones) against the store, with no scheduler needed: a running one sees the
change at its next poll. Each is recorded in the audit log as ``cli:<user>@<host>``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from corral.cli._context import CliContext, is_agent_of
from corral.cli._main import cli
from corral.cli._render import console, fmt_duration, safe
from corral.cli.commands.runs import pick_agent
from corral.engine import actions
from corral.engine.actions import ActionError, Offline, write_scale
from corral.errors import UsageError
from corral.project import Project
from corral.scheduler.service import sync_config
from corral.store import RunState, Store

__all__ = ["write_scale"]

_KILL_WAIT = 30.0
T = TypeVar("T")


async def _synced(obj: CliContext, project: Project) -> Store:
    """The project's store, with every agent of the config known to it."""
    store = await obj.store(project)
    await sync_config(store, project)
    return store


def _act(obj: CliContext, project: Project, action: Callable[[Offline, str], Awaitable[T]]) -> T:
    """Run ``action`` on the project's (synced) store as this user. Bad input and unknown
    names are usage errors (exit 2); a refusal is an error (exit 1)."""

    async def go() -> T:
        async with await _synced(obj, project) as store:
            return await action(Offline(project, store), actions.cli_actor())

    try:
        return asyncio.run(go())
    except ActionError as exc:
        if exc.status in (400, 404):
            raise UsageError(exc.message) from None
        raise


def _set_paused(obj: CliContext, agent_name: str | None, paused: bool) -> None:
    project = obj.project()
    if agent_name is not None:
        pick_agent(project, agent_name, allow_disabled=True)

    change = actions.pause if paused else actions.resume
    _act(obj, project, lambda target, actor: change(target, agent_name, actor=actor))
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

    change = actions.enable if enabled else actions.disable
    _act(obj, project, lambda target, actor: change(target, agent_name, actor=actor))
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


class _ScaleCommand(click.Command):
    """`corral scale AGENT N`, and `corral scale log [AGENT]`: the decision log of pools
    and of the runner fleet, as `corral pools log`. `log` followed by a number still
    scales an agent named `log`."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        if args and args[0] == "log" and not (len(args) > 1 and args[1].isdigit()):
            from corral.cli.commands.pools import log_cmd

            return log_cmd.make_context(f"{info_name} log", args[1:], parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


@cli.command("scale", cls=_ScaleCommand)
@click.argument("agent_name", metavar="AGENT")
@click.argument("scale", type=click.IntRange(min=0))
@click.pass_obj
def scale_cmd(obj: CliContext, agent_name: str, scale: int) -> None:
    """Set how many runs of AGENT may go at once, live, and save it in its config.toml.

    `corral scale log [AGENT]` lists the autoscaler's decisions (as `corral pools log`),
    the runner fleet's under the name :fleet."""
    project = obj.project()
    pick_agent(project, agent_name, allow_disabled=True)
    _act(obj, project, lambda target, actor: actions.scale(target, agent_name, scale, actor=actor))
    note = " (0 disables the agent)" if scale == 0 else ""
    console.print(
        f"agent {agent_name} now runs at most {scale} at once{note}; saved in config.toml"
    )


@cli.command("kill")
@click.argument("target", metavar="AGENT|RUN")
@click.pass_obj
def kill_cmd(obj: CliContext, target: str) -> None:
    """Stop every running run of agent AGENT, or the one run RUN: each run's process group
    gets SIGTERM, then SIGKILL after a grace period. Queued work stays queued (`corral
    pause AGENT` stops it being dispatched)."""
    project = obj.project_for_store()

    async def go() -> None:
        async with await obj.store(project) as store:
            target_ids = await _kill_targets(store, project, target)
            offline = Offline(project, store)
            asked: list[str] = []
            for run_id in target_ids:
                try:
                    await actions.kill(offline, run_id, actor=actions.cli_actor())
                except ActionError as exc:
                    if exc.status != 409:  # 409: it ended meanwhile
                        raise
                    continue
                asked.append(run_id)
            is_agent = is_agent_of(project, target)
            if not asked:
                what = "has no running runs" if is_agent else "has already ended"
                console.print(f"{'agent' if is_agent else 'run'} {safe(target)} {what}")
                return
            what = f"{len(asked)} run(s) of agent {target}" if is_agent else f"run {target}"
            console.print(f"asked {safe(what)} to stop; waiting for the scheduler")
            await _wait_ended(store, asked)

    asyncio.run(go())


_LIVE_STATES = (RunState.STARTING, RunState.RUNNING)


async def _kill_targets(store: Store, project: Project, target: str) -> list[str]:
    """The runs ``target`` names: an agent's live runs (an agent name is tried first, as in
    Action Llama), else the run with that id."""
    if is_agent_of(project, target):
        runs = await store.list_runs(agent=target, limit=10_000, states=_LIVE_STATES)
        return [r.id for r in runs]
    if await store.get_run(target) is None:
        raise UsageError(
            f"{target!r} is neither an agent of this project nor a run id; "
            "`corral runs` lists the recent runs, `corral config` the agents"
        )
    return [target]


async def _wait_ended(store: Store, run_ids: list[str]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _KILL_WAIT
    waiting = list(run_ids)
    while waiting and loop.time() < deadline:
        for run_id in list(waiting):
            current = await store.get_run(run_id)
            if current is not None and current.state.is_terminal:
                took = fmt_duration(current.duration)
                console.print(f"run {safe(run_id)} {current.state.value} after {took}")
                waiting.remove(run_id)
        if waiting:
            await asyncio.sleep(0.2)
    for run_id in waiting:
        console.print(
            f"run {safe(run_id)} has not stopped yet; the kill request stays recorded. If its "
            "scheduler is gone, the run is marked lost when its lease lapses."
        )
