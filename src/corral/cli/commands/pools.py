"""Agents' pools as the autoscaler sizes them: `corral pools`, `corral pools log [AGENT]`.

A command group of its own, not `corral scale ...`: `corral scale AGENT N` takes an
agent's name first, so a subcommand there (`corral scale log`) would shadow an agent
named `log` (docs/decisions.md, D104).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import click
from rich.table import Table

from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import cell, console, fmt_duration, print_json
from corral.cli.commands.runs import pick_agent
from corral.store import FLEET, PoolDecision, PoolState
from corral.views import pool_decision_json, pool_json

#: The inputs `corral pools log` shows in its table (--json shows them all).
SHOWN_INPUTS = (
    "queued",
    "budget_held",
    "busy",
    "arrivals",
    "completions",
    "recommended",
    "ceiling",
    "cap",
    "slots",
    "runners",
    "busy_slots",
    "started",
    "drained",
    "error",
)


@cli.group("pools", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def pools_group(ctx: click.Context, as_json: bool) -> None:
    """List the agents whose pools the autoscaler sizes ([scale] tables): the size it
    decided, the runs going and queued, and which scheduler decides it."""
    if ctx.invoked_subcommand is not None:
        return
    obj: CliContext = ctx.obj
    project = obj.project()

    async def go() -> list[PoolState]:
        async with await obj.store(project) as store:
            return await store.pool_states()

    pools = asyncio.run(go())
    now = datetime.now(UTC)
    if as_json:
        print_json([pool_json(pool, now) for pool in pools])
        return
    if not pools:
        console.print(
            "no agent has a pool: give one a [scale] table (min, max, policy) in its "
            "config.toml (docs/scaling.md)"
        )
        return
    table = Table("agent", "desired", "max", "busy", "queued", "decided by", box=None)
    for pool in pools:
        shown = pool_json(pool, now)
        table.add_row(
            cell(pool.agent),
            str(pool.size),
            str(pool.scale),
            str(pool.running),
            str(pool.queued),
            cell(shown["decidedBy"] or "-"),
        )
    console.print(table)


@pools_group.command("log")
@click.argument("agent_name", metavar="[AGENT]", required=False)
@click.option("--limit", type=click.IntRange(1, 10_000), default=30, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every input) instead.")
@click.pass_obj
def log_cmd(obj: CliContext, agent_name: str | None, limit: int, as_json: bool) -> None:
    """The autoscaler's decisions, newest first (of AGENT only, if given): each change of a
    pool's size, and a "hold" at most once a minute per agent, with the reason and the
    inputs it used. The runner fleet's decisions ([fleet.autoscale]) are under :fleet."""
    project = obj.project()
    if agent_name is not None and agent_name != FLEET:
        pick_agent(project, agent_name, allow_disabled=True)

    async def go() -> list[PoolDecision]:
        async with await obj.store(project) as store:
            return await store.pool_decisions(agent_name, limit=limit)

    decisions = asyncio.run(go())
    if as_json:
        print_json([pool_decision_json(d) for d in decisions])
        return
    if not decisions:
        console.print("no decisions recorded" + (f" for {agent_name}" if agent_name else ""))
        return
    now = datetime.now(UTC)
    table = Table("ago", "agent", "change", "reason", "inputs", box=None)
    for d in decisions:
        inputs = {k: d.inputs[k] for k in SHOWN_INPUTS if d.inputs.get(k) is not None}
        table.add_row(
            fmt_duration(now - d.decided_at),
            cell(d.agent),
            f"{d.direction} {d.size}->{d.desired}",
            cell(d.reason),
            cell(json.dumps(inputs, separators=(",", ":"))),
        )
    console.print(table)
