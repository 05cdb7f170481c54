"""`corral fleet upgrade`: roll a corral version out across the runners (canary, then
batches, each watched and compared with the rest), and its status, halt and rollback.
These work on the project's store (which the control plane processes share), or, with an
environment (`-E NAME`) whose file sets ``[gateway] url``, through that control plane's
control API (``/control/fleet/upgrade``, an operator token): a ``--wheel`` is uploaded
first (``POST /control/fleet/wheels``, its sha256 checked there) and kept in the store."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import click
import httpx
from rich.table import Table

from corral.cli._context import CliContext
from corral.cli._render import cell, console, print_json, safe
from corral.cli.commands.fleet_admin import _do, _remote, fleet_group
from corral.engine import actions, fleet_upgrade
from corral.engine.actions import ActionError
from corral.errors import UsageError
from corral.inert import inert
from corral.project import Project
from corral.store import Store

__all__ = ["upgrade_group"]


_UPLOAD_TIMEOUT = 300.0


def _upload_wheel(remote: tuple[str, str], wheel: Path) -> dict[str, str]:
    """Send ``wheel`` to the control plane's store; its ``{name, sha256}``."""
    url, token = remote
    try:
        data = wheel.expanduser().read_bytes()
    except OSError as exc:
        raise UsageError(f"--wheel {wheel}: cannot read it ({exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    where = f"{url}/control/fleet/wheels"
    params = {"name": wheel.name, "sha256": digest}
    try:
        with httpx.Client(timeout=_UPLOAD_TIMEOUT) as http:
            response = http.post(
                where,
                params=params,
                content=data,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/octet-stream",
                },
            )
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach the control plane at {where}: {exc}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": response.text[:300]}
    if response.status_code in (401, 403):
        raise UsageError(
            f"the gateway at {url} refused the operator token ({response.status_code})"
        )
    if response.status_code != 201:
        said = inert(str(answer.get("error")))
        raise UsageError(
            f"the wheel upload to {where} was refused ({response.status_code}): {said}"
        )
    kept = answer["wheel"]
    if kept.get("sha256") != digest:  # what it kept is not what was sent
        raise UsageError(f"the control plane kept sha256 {kept.get('sha256')}, not {digest}")
    return {"name": str(kept["name"]), "sha256": digest}


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
    versions = answer.get("versions") or []
    if versions:
        table = Table(box=None, title="per version (runs: the last hour)", title_justify="left")
        for column in ("version", "runners", "online", "runs/h", "failed", "anomalies"):
            table.add_column(column, justify="left" if column == "version" else "right")
        for row in versions:
            rate = row.get("failureRate")
            table.add_row(
                cell(row["version"]),
                str(row["runners"]),
                f"{row['online']} ({row['onlineRatio']:.0%})",
                f"{row['runsPerHour']:g}",
                "-" if rate is None else f"{rate:.0%}",
                str(row["openAnomalies"]),
            )
        console.print(table)


@fleet_group.group("upgrade", invoke_without_command=True)
@click.option("--to", "target", help="The corral version to roll out.")
@click.option("--canary", default=1, show_default=True, help="Runners upgraded first, alone.")
@click.option("--batch", default="25%", show_default=True, help="Then this share at a time.")
@click.option("--watch", default="1h", show_default=True, help="Each step is watched this long.")
@click.option(
    "--channel",
    type=click.Choice(list(fleet_upgrade.CHANNELS)),
    help="stable: final releases only; beta (or pre): pre-releases too. With --index and "
    "no --to, the channel's newest version there. Default: the kind of --to.",
)
@click.option(
    "--wheel",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A corral wheel the control plane keeps in its store and serves to the runners "
    "(uploaded through the gateway with -E NAME).",
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
    channel: str | None,
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
    if not target and not index:
        raise UsageError(
            "say which version: `corral fleet upgrade --to VERSION --wheel FILE`, or "
            "`--index URL [--channel stable|beta]` for the channel's newest"
        )
    share = fleet_upgrade.parse_share(batch)
    seconds = fleet_upgrade.parse_duration(watch)
    obj: CliContext = ctx.obj
    project = obj.project()
    remote = _remote(project)
    body: dict[str, Any] = {
        "to": target,
        "canary": canary,
        "batchShare": share,
        "watchSeconds": seconds,
        "channel": channel,
        "index": index,
        "onWorse": on_worse,
        "controlPlane": control_plane,
    }
    if remote is not None and wheel is not None:
        body["wheel"] = _upload_wheel(remote, wheel)

    async def local(store: Store, _: Project) -> dict[str, Any]:
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
        return await fleet_upgrade.rollout_answer(store, made)

    _show(_do(obj, "POST", "/upgrade", local, body=body), as_json)


@upgrade_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status_cmd(obj: CliContext, as_json: bool) -> None:
    """The latest rollout: its steps, each runner's state, the comparisons."""

    async def local(store: Store, _: Project) -> dict[str, Any]:
        latest = await store.latest_fleet_rollout()
        if latest is None:
            raise ActionError(404, "no rollout yet; `corral fleet upgrade --to VERSION` starts one")
        return await fleet_upgrade.rollout_answer(store, latest)

    _show(_do(obj, "GET", "/upgrade", local), as_json)


@upgrade_group.command("halt")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def halt_cmd(obj: CliContext, as_json: bool) -> None:
    """Stop the rollout: no more runner is told to upgrade; the upgraded stay."""

    async def local(store: Store, _: Project) -> dict[str, Any]:
        done = await fleet_upgrade.halt_rollout(store, actor=actions.cli_actor())
        return await fleet_upgrade.rollout_answer(store, done)

    _show(_do(obj, "POST", "/upgrade/halt", local), as_json)


@upgrade_group.command("rollback")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def rollback_cmd(obj: CliContext, as_json: bool) -> None:
    """Tell every runner the rollout upgraded to go back to its previous version."""

    async def local(store: Store, _: Project) -> dict[str, Any]:
        done = await fleet_upgrade.rollback_rollout(store, actor=actions.cli_actor())
        return await fleet_upgrade.rollout_answer(store, done)

    _show(_do(obj, "POST", "/upgrade/rollback", local), as_json)
