"""`corral rollout status|promote|rollback`: agent changes pushed as canaries.

`corral push --canary 10%` starts a rollout; these commands compare its two versions
(runs, success rate, duration, tokens and cost per run, al-status/al-return outcomes,
and the four numbers: live runs, throughput, anomalies, runners) and end it by hand.
Through an environment whose file sets ``[gateway] url`` they use the control API
(``/control/rollouts``); otherwise the store directly.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click
from rich.table import Table

from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import cell, console, print_json, safe
from corral.cli.commands.bundles import _call, _short, _token
from corral.cli.remote_run import remote_gateway
from corral.engine import actions
from corral.errors import UsageError
from corral.scheduler import rollouts

__all__ = ["rollout_group"]


@cli.group("rollout", invoke_without_command=True)
@click.pass_context
def rollout_group(ctx: click.Context) -> None:
    """Canary rollouts of pushed bundles: status (the default), promote, rollback."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(status_cmd)


@rollout_group.command("status")
@click.argument("agent", required=False)
@click.option("-n", "--limit", default=3, show_default=True, type=click.IntRange(1, 100))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status_cmd(
    obj: CliContext, agent: str | None = None, limit: int = 3, as_json: bool = False
) -> None:
    """The running rollout and the last ones (of AGENT), the two versions side by side."""
    project = obj.project_for_store()
    remote = remote_gateway(project)
    if remote is not None:
        params: dict[str, Any] = {"limit": limit}
        if agent:
            params["agent"] = agent
        answer = asyncio.run(
            _call(
                "GET",
                f"{remote}/control/rollouts",
                params=params,
                headers={"Authorization": f"Bearer {_token(project)}"},
            )
        )
    else:

        async def go() -> dict[str, Any]:
            async with await obj.store(project) as store:
                return await rollouts.status(store, agent, limit=limit)

        answer = asyncio.run(go())
    if as_json:
        print_json(answer)
        return
    if not answer["rollouts"]:
        console.print("no rollouts yet; `corral push --canary 10%` starts one")
        return
    for shown in answer["rollouts"]:
        _print(shown)


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _print(shown: dict[str, Any]) -> None:
    r = shown["rollout"]
    state = r["state"].replace("_", " ")
    console.print(
        f"rollout {r['id']} ({state}): {safe(_short(r['candidate']))} against "
        f"{safe(_short(r['baseline']))}, {r['share']:.0%} of the runs of "
        f"{safe(', '.join(r['agents']))}; started {safe(r['createdAt'][:19])} by "
        f"{safe(r['createdBy'])}"
    )
    table = Table(
        "version",
        "runs",
        "success",
        "p50 s",
        "tokens/run",
        "cost/run",
        "live",
        "runs/h",
        "anomalies",
        "al-status",
        "al-return",
        box=None,
    )
    for name, v in shown["versions"].items():
        table.add_row(
            name,
            str(v["runs"]),
            _num(v["successRate"], ".0%"),
            _num(v["durationP50"], ".1f"),
            _num(v["tokensPerRun"], ".0f"),
            "-" if v["costPerRun"] is None else f"${v['costPerRun']:.4f}",
            str(v["live"]),
            f"{v['throughputPerHour']:.1f}",
            str(v["anomalies"]),
            cell(", ".join(f"{k} x{n}" for k, n in v["statuses"].items())),
            cell(", ".join(f"{k} x{n}" for k, n in v["returns"].items())),
        )
    console.print(table)
    if r["state"] == "running":
        d = shown["decision"]
        console.print(f"rule: {safe(d['action'])}: {safe(d['reason'])}")
    elif r["reason"]:
        console.print(f"ended by {safe(r['endedBy'] or '?')}: {safe(r['reason'])}")


@rollout_group.command("promote")
@click.argument("rollout_id", required=False, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def promote_cmd(obj: CliContext, rollout_id: int | None = None, as_json: bool = False) -> None:
    """Make the running rollout's canary the current bundle for every run."""
    _end(obj, rollout_id, "promote", as_json)


@rollout_group.command("rollback")
@click.argument("rollout_id", required=False, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def rollback_cmd(obj: CliContext, rollout_id: int | None = None, as_json: bool = False) -> None:
    """Stop the canary: new runs run the current bundle; runs in flight finish."""
    _end(obj, rollout_id, "rollback", as_json)


def _end(obj: CliContext, rollout_id: int | None, verb: str, as_json: bool) -> None:
    project = obj.project_for_store()
    remote = remote_gateway(project)
    if remote is not None:
        ref = "running" if rollout_id is None else str(rollout_id)
        answer = asyncio.run(
            _call(
                "POST",
                f"{remote}/control/rollouts/{ref}/{verb}",
                headers={"Authorization": f"Bearer {_token(project)}"},
            )
        )
    else:
        state = "promoted" if verb == "promote" else "rolled_back"

        async def go() -> dict[str, Any]:
            async with await obj.store(project) as store:
                try:
                    ended = await rollouts.end_by_hand(
                        store, rollout_id, state, actor=actions.cli_actor()
                    )
                except LookupError as exc:
                    raise UsageError(str(exc.args[0])) from None
            return {"ok": True, "rollout": ended.to_json()}

        answer = asyncio.run(go())
    if as_json:
        print_json(answer)
        return
    r = answer["rollout"]
    if r["state"] == "promoted":
        console.print(f"rollout {r['id']} promoted: {safe(r['candidate'])} is current")
    elif r["state"] == "halted":
        console.print(f"rollout {r['id']} halted: {safe(r['reason'] or '')}")
    else:
        console.print(
            f"rollout {r['id']} rolled back: new runs run {safe(r['baseline'])}; "
            "runs in flight finish"
        )
