"""`corral stats [AGENT] [--calls]`: what the fleet did over a window of time, from the store.

As Action Llama's `al stats`: without AGENT, totals and one line per agent; with AGENT, its
totals and its latest runs (``-n``); with ``--calls``, the call graph (who called whom, how
often, how deep, for how long). ``-s/--since`` is the window (7 days by default).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import fmean
from typing import Any

import click
from rich.table import Table

from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import (
    cell,
    console,
    fmt_cost,
    fmt_duration,
    fmt_duration_seconds,
    fmt_time,
    fmt_tokens,
    parse_since,
    print_json,
    safe,
)
from corral.store import Call, Run, RunState, Store

__all__ = ["AgentSummary", "CallEdge", "call_edges", "stats_cmd", "summarize_runs"]

#: How many rows of history one `corral stats` reads at most.
_HISTORY_LIMIT = 100_000


@dataclass(frozen=True)
class AgentSummary:
    agent: str
    runs: int
    ok: int
    errors: int
    avg_seconds: float | None
    tokens: int
    cost_usd: float

    def json(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "totalRuns": self.runs,
            "okRuns": self.ok,
            "errorRuns": self.errors,
            "avgDurationSeconds": self.avg_seconds,
            "totalTokens": self.tokens,
            "totalCostUsd": round(self.cost_usd, 6),
        }


@dataclass(frozen=True)
class CallEdge:
    caller: str
    target: str
    count: int
    avg_depth: float
    avg_seconds: float | None

    def json(self) -> dict[str, Any]:
        return {
            "callerAgent": self.caller,
            "targetAgent": self.target,
            "count": self.count,
            "avgDepth": self.avg_depth,
            "avgDurationSeconds": self.avg_seconds,
        }


def _tokens(run: Run) -> int:
    counts = (run.input_tokens, run.output_tokens, run.cache_read_tokens, run.cache_write_tokens)
    return sum(n or 0 for n in counts)


def summarize_runs(agent: str, runs: Sequence[Run]) -> AgentSummary:
    """Totals over ``runs`` (ended ones: a run still going has no outcome yet)."""
    ended = [r for r in runs if r.state.is_terminal]
    durations = [d.total_seconds() for r in ended if (d := r.duration) is not None]
    return AgentSummary(
        agent=agent,
        runs=len(ended),
        ok=sum(1 for r in ended if r.state is RunState.SUCCEEDED),
        errors=sum(1 for r in ended if r.state is not RunState.SUCCEEDED),
        avg_seconds=fmean(durations) if durations else None,
        tokens=sum(_tokens(r) for r in ended),
        cost_usd=sum(r.cost_usd or 0.0 for r in ended),
    )


def call_edges(calls: Sequence[Call], since: datetime) -> list[CallEdge]:
    """One edge per (caller agent, target agent) over the calls made since ``since``."""
    grouped: dict[tuple[str, str], list[Call]] = defaultdict(list)
    for call in calls:
        if call.created_at >= since:
            grouped[(call.caller_agent, call.target_agent)].append(call)
    edges = []
    for (caller, target), group in grouped.items():
        took = [(c.ended_at - c.created_at).total_seconds() for c in group if c.ended_at]
        edges.append(
            CallEdge(
                caller=caller,
                target=target,
                count=len(group),
                avg_depth=fmean(c.depth for c in group),
                avg_seconds=fmean(took) if took else None,
            )
        )
    return sorted(edges, key=lambda e: (-e.count, e.caller, e.target))


@cli.command("stats")
@click.argument("agent_name", metavar="[AGENT]", required=False)
@click.option(
    "-s",
    "--since",
    default="7d",
    show_default=True,
    help="The window: 24h, 7d, 30d (or an ISO date/time).",
)
@click.option(
    "-n",
    "recent",
    default=20,
    show_default=True,
    type=click.IntRange(0, 10_000),
    help="With AGENT: how many of its latest runs to list.",
)
@click.option("--calls", is_flag=True, help="The call graph: who called whom, how often.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def stats_cmd(
    obj: CliContext,
    agent_name: str | None,
    since: str,
    recent: int,
    calls: bool,
    as_json: bool,
) -> None:
    """Run statistics over a window of time: per agent, one agent's runs, or (--calls) the
    calls between agents."""
    project = obj.project()
    start = parse_since(since)

    async def go() -> None:
        async with await obj.store(project) as store:
            if calls:
                _show_calls(await store.list_calls(limit=_HISTORY_LIMIT), start, since, as_json)
            elif agent_name is not None:
                await _show_agent(store, agent_name, start, since, recent, as_json)
            else:
                await _show_all(store, start, since, as_json)

    asyncio.run(go())


def _show_calls(calls: list[Call], start: datetime, since: str, as_json: bool) -> None:
    edges = call_edges(calls, start)
    if as_json:
        print_json([e.json() for e in edges])
        return
    if not edges:
        console.print(f"no calls between agents in the last {safe(since)}")
        return
    table = Table("caller", "target", "count", "avg depth", "avg duration", box=None)
    for e in edges:
        table.add_row(
            cell(e.caller),
            cell(e.target),
            str(e.count),
            f"{e.avg_depth:.1f}",
            fmt_duration_seconds(e.avg_seconds),
        )
    console.print(table)


async def _show_agent(
    store: Store, agent: str, start: datetime, since: str, recent: int, as_json: bool
) -> None:
    runs = await store.list_runs(agent=agent, since=start, limit=_HISTORY_LIMIT)
    summary = summarize_runs(agent, runs)
    latest = runs[:recent]
    if as_json:
        print_json(
            {
                "summary": summary.json() if summary.runs else None,
                "runs": [_run_json(r) for r in latest],
            }
        )
        return
    if not runs:
        console.print(f"no runs of {safe(agent)} in the last {safe(since)}")
        return
    console.print(f"{safe(agent)} (last {safe(since)}): {_totals(summary)}")
    table = Table("run", "trigger", "result", "duration", "tokens", "cost", "started", box=None)
    for run in latest:
        table.add_row(
            cell(run.id),
            cell(run.trigger.value),
            cell(run.outcome),
            fmt_duration(run.duration),
            fmt_tokens(_tokens(run) or None),
            fmt_cost(run.cost_usd),
            fmt_time(run.started_at),
        )
    console.print(table)


async def _show_all(store: Store, start: datetime, since: str, as_json: bool) -> None:
    runs = await store.list_runs(since=start, limit=_HISTORY_LIMIT)
    by_agent: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_agent[run.agent].append(run)
    summaries = [summarize_runs(name, by_agent[name]) for name in sorted(by_agent)]
    total = summarize_runs("*", runs)
    if as_json:
        print_json({"global": total.json(), "agents": [s.json() for s in summaries]})
        return
    if not total.runs:
        console.print(f"no runs in the last {safe(since)}")
        return
    console.print(f"totals (last {safe(since)}): {_totals(total)}")
    table = Table("agent", "runs", "ok", "err", "avg duration", "tokens", "cost", box=None)
    for s in summaries:
        table.add_row(
            cell(s.agent),
            str(s.runs),
            str(s.ok),
            str(s.errors),
            fmt_duration_seconds(s.avg_seconds),
            fmt_tokens(s.tokens or None),
            fmt_cost(s.cost_usd),
        )
    console.print(table)


def _totals(summary: AgentSummary) -> str:
    return (
        f"{summary.runs} runs ({summary.ok} ok, {summary.errors} err) | "
        f"{fmt_tokens(summary.tokens or None)} tokens | {fmt_cost(summary.cost_usd)}"
    )


def _run_json(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "agent": run.agent,
        "trigger": run.trigger.value,
        "result": run.outcome,
        "durationSeconds": None if run.duration is None else run.duration.total_seconds(),
        "tokens": _tokens(run),
        "costUsd": run.cost_usd,
        "startedAt": None if run.started_at is None else run.started_at.isoformat(),
    }
