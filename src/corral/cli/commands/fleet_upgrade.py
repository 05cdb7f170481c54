"""`corral fleet upgrade`: roll a corral version out across the runners (canary, then
batches, each watched and compared with the rest), and its status, halt and rollback.
These work on the project's store (which the control plane processes share)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from corral.cli._context import CliContext
from corral.cli._render import console, print_json, safe
from corral.cli.commands.fleet_admin import fleet_group
from corral.engine import actions, fleet_upgrade
from corral.engine.actions import ActionError
from corral.errors import UsageError
from corral.store import Store

__all__ = ["upgrade_group"]


def _with_store(
    obj: CliContext, work: Callable[[Store], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    project = obj.project()

    async def go() -> dict[str, Any]:
        async with await obj.store(project) as store:
            return await work(store)

    try:
        return asyncio.run(go())
    except ActionError as exc:
        if exc.status in (400, 404, 422):
            raise UsageError(exc.message) from None
        raise


def _show(answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(answer)
        return
    console.print(
        f"[bold]rollout {safe(answer['id'])}[/]  to corral {safe(answer['target'])} "
        f"({safe(answer['channel'])}): [bold]{safe(answer['state'])}[/]"
    )
    planes = answer.get("controlPlane")
    if planes:
        turn = (planes.get("turn") or {}).get("id")
        said = f", upgrading: {turn}" if turn else ""
        console.print(
            f"  control plane: {safe(planes.get('state'))}, {len(planes.get('done', {}))} "
            f"process(es) run it{safe(said)}"
        )
        failed = planes.get("failed")
        if failed:
            console.print(f"  {safe(failed.get('id'))} failed: {safe(failed.get('error'))}")
    fleet = answer.get("fleet")
    if fleet:
        console.print(f"  {fleet['atTarget']} of {fleet['runners']} runner(s) run it")
    for number, step in enumerate(answer["steps"], 1):
        verdict = step.get("verdict") or {}
        said = "watching" if step.get("upgradedAt") else "upgrading"
        if verdict:
            said = "worse: " + verdict["why"] if verdict.get("worse") else "fine"
        names = [answer["runners"].get(r, {}).get("name", r) for r in step["runners"]]
        console.print(f"  step {number} ({step['kind']}): {safe(', '.join(names))}: {safe(said)}")
    for rid, runner in answer["runners"].items():
        if runner.get("state") == "failed":
            console.print(f"  {safe(runner.get('name', rid))} failed: {safe(runner.get('error'))}")


@fleet_group.group("upgrade", invoke_without_command=True)
@click.option("--to", "target", help="The corral version to roll out.")
@click.option("--canary", default=1, show_default=True, help="Runners upgraded first, alone.")
@click.option("--batch", default="25%", show_default=True, help="Then this share at a time.")
@click.option("--watch", default="1h", show_default=True, help="Each step is watched this long.")
@click.option("--channel", default="stable", show_default=True, help="The release channel.")
@click.option(
    "--wheel",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A corral wheel the control plane serves to the runners (a path every control "
    "plane process can read).",
)
@click.option("--index", help="Or: a package index URL the runners install from.")
@click.option(
    "--on-worse",
    type=click.Choice(["halt", "rollback"]),
    default="halt",
    show_default=True,
    help="What a step compared worse than the rest does.",
)
@click.option(
    "--control-plane",
    is_flag=True,
    help="Upgrade the control plane processes (`corral start`) first, one at a time, "
    "then the runners.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def upgrade_group(
    ctx: click.Context,
    target: str | None,
    canary: int,
    batch: str,
    watch: str,
    channel: str,
    wheel: Path | None,
    index: str | None,
    on_worse: str,
    control_plane: bool,
    as_json: bool,
) -> None:
    """Roll corral VERSION out across the runners (with --control-plane, the control
    plane processes first, one at a time): `--canary` runner(s) first, then
    batches of `--batch`, each watched `--watch` and compared with the rest; a runner
    rolls itself back on a failed install, start or smoke check (docs/upgrades.md)."""
    if ctx.invoked_subcommand is not None:
        return
    if not target:
        raise UsageError("say which version: `corral fleet upgrade --to VERSION --wheel FILE`")
    share = fleet_upgrade.parse_share(batch)
    seconds = fleet_upgrade.parse_duration(watch)
    obj: CliContext = ctx.obj

    async def work(store: Store) -> dict[str, Any]:
        made = await fleet_upgrade.start_rollout(
            store,
            target=target,
            canary=canary,
            batch_share=share,
            watch_seconds=seconds,
            channel=channel,
            wheel=wheel,
            index=index,
            on_worse=on_worse,
            control_plane=control_plane,
            actor=actions.cli_actor(),
        )
        return fleet_upgrade.rollout_json(made, await store.list_runners())

    _show(_with_store(obj, work), as_json)


@upgrade_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status_cmd(obj: CliContext, as_json: bool) -> None:
    """The latest rollout: its steps, each runner's state, the comparisons."""

    async def work(store: Store) -> dict[str, Any]:
        latest = await store.latest_fleet_rollout()
        if latest is None:
            raise ActionError(404, "no rollout yet; `corral fleet upgrade --to VERSION` starts one")
        return fleet_upgrade.rollout_json(latest, await store.list_runners())

    _show(_with_store(obj, work), as_json)


@upgrade_group.command("halt")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def halt_cmd(obj: CliContext, as_json: bool) -> None:
    """Stop the rollout: no more runner is told to upgrade; the upgraded stay."""

    async def work(store: Store) -> dict[str, Any]:
        done = await fleet_upgrade.halt_rollout(store, actor=actions.cli_actor())
        return fleet_upgrade.rollout_json(done, await store.list_runners())

    _show(_with_store(obj, work), as_json)


@upgrade_group.command("rollback")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def rollback_cmd(obj: CliContext, as_json: bool) -> None:
    """Tell every runner the rollout upgraded to go back to its previous version."""

    async def work(store: Store) -> dict[str, Any]:
        done = await fleet_upgrade.rollback_rollout(store, actor=actions.cli_actor())
        return fleet_upgrade.rollout_json(done, await store.list_runners())

    _show(_with_store(obj, work), as_json)
