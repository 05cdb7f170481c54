"""`corral usage`: tokens and dollars per agent and day, and today's spend against the caps."""

from __future__ import annotations

import asyncio
from typing import Any

import click
from rich.table import Table

from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import cell, console, fmt_cost, fmt_tokens, print_json, safe
from corral.project import Project
from corral.store import UsageTotal

__all__ = ["usage_cmd"]


@cli.command("usage")
@click.option("-a", "--agent", "agent_name", help="Only this agent.")
@click.option(
    "-d",
    "--days",
    default=7,
    show_default=True,
    type=click.IntRange(1, 366),
    help="Today and the days before it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def usage_cmd(obj: CliContext, agent_name: str | None, days: int, as_json: bool) -> None:
    """Tokens and dollars per agent and UTC day, with today's spend against the caps."""
    project = obj.project()

    async def go() -> tuple[list[UsageTotal], dict[str | None, float]]:
        async with await obj.store(project) as store:
            totals = await store.usage_by_day(days=days, agent=agent_name)
            by_agent = {t.agent: t.cost_usd for t in await store.usage_by_day(days=1)}
            today: dict[str | None, float] = {
                name: by_agent.get(name, 0.0) for name in sorted(project.agents)
            }
            today[None] = sum(by_agent.values())
        return totals, today

    totals, today = asyncio.run(go())
    caps = _caps(project, today)
    if agent_name is not None:
        caps = [cap for cap in caps if cap["agent"] in (agent_name, None)]
    if as_json:
        print_json({"days": [_total_json(t) for t in totals], "today": caps})
        return
    if not totals:
        console.print(f"no runs in the last {days} day(s)")
    else:
        table = Table(
            "day (UTC)", "agent", "runs", "input", "output", "cache read", "cost", box=None
        )
        for t in totals:
            table.add_row(
                cell(t.day),
                cell(t.agent),
                str(t.runs),
                fmt_tokens(t.input_tokens),
                fmt_tokens(t.output_tokens),
                fmt_tokens(t.cache_read_tokens),
                fmt_cost(t.cost_usd) if t.priced_runs else "-",
            )
        console.print(table)
        spent = sum(t.cost_usd for t in totals)
        console.print(f"total: {fmt_cost(spent)} over {sum(t.runs for t in totals)} runs")
    for cap in caps:
        if cap["dailyCap"] is None:
            continue
        who = "project" if cap["agent"] is None else f"agent {safe(cap['agent'])}"
        line = f"today: {who} spent {fmt_cost(cap['spent'])} of {fmt_cost(cap['dailyCap'])}"
        reached = cap["spent"] >= cap["dailyCap"]
        console.print(line + (" [red](cap reached: new runs refused)[/]" if reached else ""))


def _caps(project: Project, today: dict[str | None, float]) -> list[dict[str, Any]]:
    """Today's spend for the project and every agent, with the cap that applies."""
    rows: list[dict[str, Any]] = [
        {"agent": None, "spent": today[None], "dailyCap": project.config.budget.daily_cost}
    ]
    for name in sorted(project.agents):
        cap = project.agents[name].config.budget.daily_cost
        rows.append({"agent": name, "spent": today[name], "dailyCap": cap})
    return rows


def _total_json(total: UsageTotal) -> dict[str, Any]:
    return {
        "day": total.day,
        "agent": total.agent,
        "runs": total.runs,
        "pricedRuns": total.priced_runs,
        "inputTokens": total.input_tokens,
        "outputTokens": total.output_tokens,
        "cacheReadTokens": total.cache_read_tokens,
        "cacheWriteTokens": total.cache_write_tokens,
        "costUsd": total.cost_usd,
    }
