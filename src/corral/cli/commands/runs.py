"""`corral run` (queue or run one now) and `corral runs` (history)."""

from __future__ import annotations

import asyncio
import difflib
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.table import Table

from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import (
    cell,
    console,
    err_console,
    fmt_cost,
    fmt_duration,
    fmt_time,
    fmt_tokens,
    parse_since,
    print_json,
    safe,
)
from corral.cli.commands.logs import read_from
from corral.cli.remote_run import remote_gateway, run_remote
from corral.engine.actions import cli_actor
from corral.engine.fleet_runs import runner_labels
from corral.errors import RunError, UsageError
from corral.inert import OutputFilter, inert
from corral.project import Agent, Project
from corral.runtime._children import use_pidfd_child_watcher
from corral.scheduler.foreground import run_in_foreground
from corral.scheduler.service import SchedulerOptions, is_live
from corral.store import (
    ItemState,
    NewItem,
    QueueItem,
    Run,
    RunCursor,
    RunFilter,
    RunPage,
    RunState,
    SchedulerInfo,
    Store,
    TriggerKind,
)
from corral.views import item_json, run_json

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
_FOLLOW_POLL = 0.2


def pick_agent(project: Project, name: str, *, allow_disabled: bool = False) -> Agent:
    agent = project.agents.get(name)
    if agent is None:
        names = sorted(project.agents)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        known = ", ".join(names) if names else "none (add one under agents/)"
        raise UsageError(f"unknown agent '{name}': {hint}agents in {project.root}: {known}")
    if not agent.enabled and not allow_disabled:
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


async def live_scheduler(store: Store) -> SchedulerInfo | None:
    now = datetime.now(UTC)
    options = SchedulerOptions()
    for info in await store.list_schedulers(live_only=True):
        if is_live(info, now, options.renew_every):
            return info
    return None


@cli.command("run")
@click.argument("agent_name", metavar="AGENT")
@click.argument("prompt", required=False)
@click.option(
    "-w", "--wait", is_flag=True, help="With a scheduler running: follow the run to its end."
)
@click.option(
    "--foreground",
    is_flag=True,
    help="Run here even when a scheduler is running (the item is reserved for this command).",
)
@click.option(
    "--here",
    is_flag=True,
    help="Run an agent that runs on the fleet's runners (runsOn) on this host all the same.",
)
@click.option("-q", "--quiet", is_flag=True, help="Do not stream the run's output.")
@click.option("--json", "as_json", is_flag=True, help="Print the finished (or queued) run as JSON.")
@click.pass_obj
def run_cmd(
    obj: CliContext,
    agent_name: str,
    prompt: str | None,
    wait: bool,
    foreground: bool,
    here: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Run AGENT once.

    With a scheduler running (`corral start`), the run is queued through it like
    any other trigger (`--wait` follows it to the end). Without one, it runs
    here in the foreground with its output streamed, and `corral run` exits with
    its outcome; its item is reserved for this command, so no scheduler takes it.
    PROMPT, when given, is the task (`-` reads it from stdin); without it the
    agent gets the manual-trigger instruction to look for work.

    An agent that runs on the fleet's runners (`runsOn`, or every agent under
    `[fleet] runLocally = false`) is queued for them through the scheduler; this
    host runs it only with `--here` (it may lack what the runners have).
    """
    project = obj.project()
    agent = pick_agent(project, agent_name)
    if prompt == "-":
        prompt = sys.stdin.read()
    for warning in project.warnings:
        err_console.print(f"[yellow]warning:[/] {safe(warning)}")
    remote = remote_gateway(project)
    if remote is not None:  # queued there under an idempotency key (retries are safe)
        here = wait or foreground
        raise SystemExit(
            run_remote(project, remote, agent.name, prompt, here=here, as_json=as_json)
        )
    stream = not (quiet or as_json)
    placed = _Placement(runner_labels(project, agent), here)
    try:
        code = asyncio.run(
            _run(obj, project, agent, prompt, stream, wait, foreground, as_json, placed)
        )
    except KeyboardInterrupt:
        err_console.print("run stopped by the operator and recorded as killed")
        raise SystemExit(130) from None
    raise SystemExit(code)


async def _run(
    obj: CliContext,
    project: Project,
    agent: Agent,
    prompt: str | None,
    stream: bool,
    wait: bool,
    foreground: bool,
    as_json: bool,
    placed: _Placement,
) -> int:
    # A run in the foreground serves the agent API itself; the gateway is imported only
    # here (see `corral start`), so the other commands start without it.
    from corral.gateway.server import serve_agent_api

    use_pidfd_child_watcher()
    async with await obj.store(project) as store:
        scheduler = None if foreground else await live_scheduler(store)
        if scheduler is None:
            placed.check_here(agent.name)
            output = _Output()
            async with serve_agent_api(project, store) as link:
                results = await run_in_foreground(
                    project,
                    store,
                    agent,
                    prompt,
                    output.sink if stream else None,
                    on_wait=_waiting,
                    link=link,
                )
            output.flush()
            runs = [r.run for r in results]
        else:
            item = await _queue(store, agent, prompt, scheduler, as_json and not wait)
            if placed.labels is not None:
                err_console.print(f"it runs on {placed.where()} of the fleet")
            if not wait:
                return 0
            runs = [await _follow(store, project, item, stream)]
    for run in runs:
        if as_json:
            print_json(run_json(run))
        else:
            _summary(run, project)
    return outcome_exit_code(runs[-1])


class _Placement:
    """Where an agent runs: ``labels`` a runner needs (None: on the control plane), and
    whether the user asked for this host all the same (``--here``)."""

    def __init__(self, labels: tuple[str, ...] | None, here: bool) -> None:
        self.labels = labels
        self.here = here

    def where(self) -> str:
        if not self.labels:
            return "any runner"
        return f"a runner with labels {', '.join(self.labels)}"

    def check_here(self, agent: str) -> None:
        """Refuse to run an agent of the runners on this host unless ``--here``; with it,
        say so."""
        if self.labels is None:
            return
        if not self.here:
            raise UsageError(
                f"agent '{agent}' runs on {self.where()} of the fleet (runsOn, or [fleet] "
                "runLocally = false), not on this host: start the control plane (`corral "
                "start`) and `corral run` queues it for the runners, or pass --here to run "
                "it on this host all the same"
            )
        err_console.print(
            f"[yellow]note:[/] agent '{agent}' runs on {self.where()} of the fleet; running "
            "it on this host as asked (--here)"
        )


async def _queue(
    store: Store, agent: Agent, prompt: str | None, scheduler: SchedulerInfo, as_json: bool
) -> QueueItem:
    # queued with its audit entry and a key of its own, as POST /control/runs queues
    new = NewItem(agent=agent.name, trigger=TriggerKind.MANUAL, prompt=prompt)
    result = await store.enqueue_request(new, actor=cli_actor(), key=f"cli-{uuid.uuid4()}")
    item = result.item
    if item.state is ItemState.REJECTED:
        raise UsageError(inert(item.reason or f"agent '{agent.name}' refused the run"))
    for dropped in result.dropped:
        err_console.print(
            f"[yellow]warning:[/] dropped queue item {dropped.id}: {safe(dropped.reason)}"
        )
    if as_json:
        print_json(item_json(item))
    else:
        err_console.print(
            f"queued a run of {agent.name} (item {item.id}) for scheduler {safe(scheduler.id)}"
        )
    return item


async def _follow(store: Store, project: Project, item: QueueItem, stream: bool) -> Run:
    """Wait for ``item``'s run to end, streaming its log when it is on this machine."""
    offset = 0
    output = _Output()
    while True:
        current = await store.get_item(item.id)
        if current is None:
            raise RunError(f"queue item {item.id} disappeared from the store")
        run = await store.get_run(current.run_id) if current.run_id else None
        if run is not None and stream:
            log = project.root / ".corral" / "logs" / f"{run.id}.log"
            offset = _copy_log(log, offset, output)
        if current.state in (ItemState.DROPPED, ItemState.REJECTED, ItemState.FAILED):
            output.flush()
            reason = inert(current.reason)
            raise RunError(f"queue item {item.id} was {current.state.value}: {reason}")
        if run is not None and run.state.is_terminal and current.state is not ItemState.CLAIMED:
            if current.state is ItemState.QUEUED:  # lost, and queued for another attempt
                await asyncio.sleep(_FOLLOW_POLL)
                continue
            output.flush()
            return run
        await asyncio.sleep(_FOLLOW_POLL)


def _copy_log(path: Path, offset: int, output: _Output) -> int:
    chunk = read_from(path, offset)
    if chunk:
        output.write(chunk)
    return offset + len(chunk)


def _waiting(item: QueueItem) -> None:
    err_console.print(
        f"waiting for a free slot: agent {item.agent} (or the project) is at its scale or paused"
    )


class _Output:
    """A run's output on stdout, made inert as `corral logs` shows it (colours stay;
    other escape sequences and controls are shown escaped): docs/watching.md."""

    def __init__(self) -> None:
        self._filter = OutputFilter()

    async def sink(self, chunk: bytes) -> None:
        self.write(chunk)

    def write(self, chunk: bytes) -> None:
        _stdout(self._filter.feed(chunk))

    def flush(self) -> None:
        _stdout(self._filter.flush())


def _stdout(text: str) -> None:
    if text:
        sys.stdout.buffer.write(text.encode("utf-8", errors="replace"))
        sys.stdout.buffer.flush()


def _summary(run: Run, project: Project) -> None:
    style = _STATE_STYLE.get(run.state, "white")
    code = "-" if run.exit_code is None else str(run.exit_code)
    log = project.root / ".corral" / "logs" / f"{run.id}.log"
    took = fmt_duration(run.duration)
    err_console.print(
        f"run [bold]{safe(run.id)}[/] [{style}]{run.state.value}[/] in {took} (exit {code})"
        + (f": {safe(run.error)}" if run.error else "")
    )
    err_console.print(f"log: {safe(log)}", style="dim")


@cli.group("runs", invoke_without_command=True)
@click.option("-a", "--agent", "agent_name", help="Only runs of this agent.")
@click.option(
    "-s",
    "--state",
    "state_names",
    multiple=True,
    type=click.Choice([*(state.value for state in RunState), "over_budget"]),
    help="Only runs in this state (repeatable); over_budget: runs a budget stopped.",
)
@click.option(
    "-t",
    "--trigger",
    "trigger_names",
    multiple=True,
    type=click.Choice([kind.value for kind in TriggerKind]),
    help="Only runs started this way (repeatable).",
)
@click.option(
    "-q",
    "--search",
    help="Only runs whose id starts with this, or whose status, trigger or prompt holds it.",
)
@click.option("--since", help="Only runs created since: 15m, 2h, 3d, 1w, or an ISO date/time.")
@click.option("--until", help="Only runs created until then (as --since).")
@click.option(
    "--before",
    metavar="CURSOR",
    help="The next page: the cursor the page before printed (keyset paging).",
)
@click.option("-n", "--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def runs_cmd(
    obj: CliContext,
    agent_name: str | None,
    state_names: tuple[str, ...],
    trigger_names: tuple[str, ...],
    search: str | None,
    since: str | None,
    until: str | None,
    before: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List runs, newest first, with the tokens and dollars of built-in runs.

    `corral runs show RUN` shows one run.
    """
    if click.get_current_context().invoked_subcommand is not None:
        return
    project = obj.project()
    wanted = set(state_names)
    try:
        cursor = None if before is None else RunCursor.parse(before)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--before'") from None
    where = RunFilter(
        agent=agent_name,
        states=tuple(_states_for(wanted) or ()),
        triggers=tuple(TriggerKind(kind) for kind in trigger_names),
        since=None if since is None else parse_since(since),
        until=None if until is None else parse_since(until, param="--until"),
        search=(search or "").strip(),
    )

    async def go() -> RunPage:
        async with await obj.store(project) as store:
            return await store.page_runs(where, before=cursor, limit=limit)

    page = asyncio.run(go())
    runs = page.runs if not wanted else [r for r in page.runs if _wanted(r, wanted)]
    if as_json:
        print_json([run_json(r) for r in runs])
        return
    narrowed = wanted or since or until or agent_name or trigger_names or search or before
    if not runs:
        console.print("no runs match" if narrowed else _NO_RUNS)
    else:
        console.print(_runs_table(runs))
    if page.next is not None:
        console.print(f"more: corral runs ... --before {page.next.token()}", style="dim")


def _runs_table(runs: list[Run]) -> Table:
    table = Table(
        "run",
        "agent",
        "trigger",
        "state",
        "exit",
        "started",
        "duration",
        "tokens",
        "cost",
        box=None,
    )
    for r in runs:
        style = "red" if r.outcome == "over_budget" else _STATE_STYLE.get(r.state, "white")
        outcome = r.outcome + (f" ({r.budget})" if r.outcome == "over_budget" else "")
        table.add_row(
            cell(r.id),
            cell(r.agent),
            cell(r.trigger.value),
            cell(outcome, style=style),
            "-" if r.exit_code is None else str(r.exit_code),
            fmt_time(r.started_at or r.created_at),
            fmt_duration(r.duration),
            fmt_tokens(r.tokens),
            fmt_cost(r.cost_usd),
        )
    return table


_NO_RUNS = "no runs yet; start one with `corral run AGENT`"


def _states_for(wanted: set[str]) -> list[RunState] | None:
    """The store states to ask for (over_budget runs are failed or timed out)."""
    if not wanted:
        return None
    states = {RunState(name) for name in wanted if name != "over_budget"}
    if "over_budget" in wanted:
        states |= {RunState.FAILED, RunState.TIMED_OUT}
    return sorted(states)


def _wanted(run: Run, wanted: set[str]) -> bool:
    if run.outcome == "over_budget":
        return "over_budget" in wanted or run.state.value in wanted
    return run.state.value in wanted


@runs_cmd.command("show")
@click.argument("run_id", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def run_show_cmd(obj: CliContext, run_id: str, as_json: bool) -> None:
    """One run: its agent, trigger, state, times, host, the bundle it ran and its runner."""
    project = obj.project_for_store()

    async def go() -> Run | None:
        async with await obj.store(project) as store:
            return await store.get_run(run_id)

    run = asyncio.run(go())
    if run is None:
        raise UsageError(f"no run {run_id!r} (`corral runs` lists the recent ones)")
    if as_json:
        print_json(run_json(run))
        return
    rows = [
        ("run", run.id),
        ("agent", run.agent),
        ("trigger", run.trigger.value),
        ("state", run.outcome + (f" ({run.budget})" if run.outcome == "over_budget" else "")),
        ("exit", "-" if run.exit_code is None else str(run.exit_code)),
        ("created", fmt_time(run.created_at)),
        ("started", fmt_time(run.started_at)),
        ("duration", fmt_duration(run.duration)),
        ("attempt", "-" if run.attempt is None else str(run.attempt)),
        ("host", run.host or "-"),
        ("bundle", run.bundle or "- (the project directory)"),
        ("runner", run.runner_id or "- (a control plane)"),
        ("status", run.status_text or "-"),
        ("error", run.error or "-"),
    ]
    for label, value in rows:
        console.print(f"{label:<9}{safe(value)}", soft_wrap=True)
