"""`corral run` (one run, in the foreground) and `corral runs` (history)."""

from __future__ import annotations

import asyncio
import difflib
import sys

import click
from rich.markup import escape
from rich.table import Table

from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import console, err_console, fmt_duration, fmt_time, print_json
from corral.errors import UsageError
from corral.project import Agent, Project
from corral.runtime import Sink
from corral.scheduler.executor import RunExecutor, RunRequest
from corral.store import Run, RunState, TriggerKind

_STATE_STYLE = {
    RunState.SUCCEEDED: "green",
    RunState.FAILED: "red",
    RunState.TIMED_OUT: "red",
    RunState.KILLED: "yellow",
    RunState.LOST: "magenta",
    RunState.RUNNING: "cyan",
    RunState.STARTING: "cyan",
    RunState.QUEUED: "dim",
}


def pick_agent(project: Project, name: str) -> Agent:
    agent = project.agents.get(name)
    if agent is None:
        names = sorted(project.agents)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        known = ", ".join(names) if names else "none (add one under agents/)"
        raise UsageError(f"unknown agent '{name}': {hint}agents in {project.root}: {known}")
    if not agent.enabled:
        raise UsageError(
            f"agent '{name}' is disabled (scale = 0 in agents/{name}/config.toml); "
            "set scale to 1 or more to run it"
        )
    return agent


def outcome_exit_code(run: Run) -> int:
    """The exit code `corral run` ends with: the run's own, or one that names the outcome."""
    if run.state is RunState.SUCCEEDED:
        return 0
    if run.exit_code:
        return run.exit_code
    return 1


@cli.command("run")
@click.argument("agent_name", metavar="AGENT")
@click.argument("prompt", required=False)
@click.option("-q", "--quiet", is_flag=True, help="Do not stream the run's output.")
@click.option("--json", "as_json", is_flag=True, help="Print the finished run as JSON.")
@click.pass_obj
def run_cmd(
    obj: CliContext, agent_name: str, prompt: str | None, quiet: bool, as_json: bool
) -> None:
    """Run AGENT once now, in the foreground, and exit with its outcome.

    PROMPT, when given, is the task (`-` reads it from stdin); without it the
    agent gets the manual-trigger instruction to look for work.
    """
    project = obj.project()
    agent = pick_agent(project, agent_name)
    if prompt == "-":
        prompt = sys.stdin.read()
    for warning in project.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(str(warning))}")
    stream = None if quiet or as_json else _stdout_sink
    try:
        run = asyncio.run(_execute(obj, project, agent, prompt, stream))
    except KeyboardInterrupt:
        err_console.print("run stopped by the operator and recorded as killed")
        raise SystemExit(130) from None
    if as_json:
        print_json(run_json(run))
    else:
        _summary(run, project)
    raise SystemExit(outcome_exit_code(run))


async def _stdout_sink(chunk: bytes) -> None:
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


async def _execute(
    obj: CliContext, project: Project, agent: Agent, prompt: str | None, sink: Sink | None
) -> Run:
    async with await obj.store(project) as store:
        executor = RunExecutor(project, store)
        request = RunRequest(agent=agent, trigger=TriggerKind.MANUAL, prompt=prompt)
        return await executor.execute(request, sink)


def _summary(run: Run, project: Project) -> None:
    style = _STATE_STYLE.get(run.state, "white")
    code = "-" if run.exit_code is None else str(run.exit_code)
    log = project.root / ".corral" / "logs" / f"{run.id}.log"
    err_console.print(
        f"run [bold]{run.id}[/] [{style}]{run.state.value}[/] in {fmt_duration(run.duration)} "
        f"(exit {code})" + (f": {escape(run.error)}" if run.error else "")
    )
    err_console.print(f"log: {log}", style="dim")


def run_json(run: Run) -> dict[str, object]:
    return {
        "id": run.id,
        "agent": run.agent,
        "trigger": run.trigger.value,
        "state": run.state.value,
        "exitCode": run.exit_code,
        "error": run.error,
        "createdAt": run.created_at.isoformat(),
        "startedAt": run.started_at.isoformat() if run.started_at else None,
        "endedAt": run.ended_at.isoformat() if run.ended_at else None,
        "durationSeconds": run.duration.total_seconds() if run.duration else None,
        "parentRunId": run.parent_run_id,
        "pid": run.pid,
        "host": run.host,
    }


@cli.command("runs")
@click.option("-a", "--agent", "agent_name", help="Only runs of this agent.")
@click.option("-n", "--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def runs_cmd(obj: CliContext, agent_name: str | None, limit: int, as_json: bool) -> None:
    """List recent runs, newest first."""
    project = obj.project()

    async def go() -> list[Run]:
        async with await obj.store(project) as store:
            return await store.list_runs(agent=agent_name, limit=limit)

    runs = asyncio.run(go())
    if as_json:
        print_json([run_json(r) for r in runs])
        return
    if not runs:
        console.print("no runs yet; start one with `corral run AGENT`")
        return
    table = Table("run", "agent", "trigger", "state", "exit", "started", "duration", box=None)
    for r in runs:
        style = _STATE_STYLE.get(r.state, "white")
        table.add_row(
            r.id,
            r.agent,
            r.trigger.value,
            f"[{style}]{r.state.value}[/]",
            "-" if r.exit_code is None else str(r.exit_code),
            fmt_time(r.started_at or r.created_at),
            fmt_duration(r.duration),
        )
    console.print(table)
