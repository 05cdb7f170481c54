"""`corral fleet ...`: the fleet's membership. Activation tokens, runners, the four
numbers, anomalies.

Each command works on the project's store (which may be a shared PostgreSQL), or, with
an environment (`-E NAME`) whose file sets ``[gateway] url``, through that control
plane's control API (``/control/fleet/...``), authenticated by ``$CORRAL_OPERATOR_TOKEN``
or the credential ``operator_token:NAME`` (as `corral stat` does). Both roads run the
same actions (``corral.engine.fleet``) and print the same JSON.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import click
import httpx
from rich.table import Table

from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import cell, console, err_console, print_json, safe
from corral.engine import actions, fleet
from corral.engine.actions import ActionError
from corral.errors import UsageError
from corral.project import Project
from corral.store import RunnerState, Store

__all__ = ["fleet_group"]

_TIMEOUT = 30.0
Local = Callable[[Store, Project], Awaitable[dict[str, Any]]]


def _remote(project: Project) -> tuple[str, str] | None:
    from corral.cli.commands.stat import _remote_token, _remote_url

    url = _remote_url(project)
    return None if url is None else (url, _remote_token(project).strip())


def _do(
    obj: CliContext,
    method: str,
    path: str,
    local: Local,
    *,
    body: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The answer of ``method path`` on the control plane the environment names, else of
    ``local`` on the project's store. A refusal is a usage error (400, 404, 422: exit 2)
    or an error (409 and the rest: exit 1)."""
    project = obj.project()
    remote = _remote(project)
    try:
        if remote is not None:
            return asyncio.run(_http(remote, method, path, body, params))

        async def go() -> dict[str, Any]:
            async with await obj.store(project) as store:
                return await local(store, project)

        return asyncio.run(go())
    except ActionError as exc:
        if exc.status in (400, 404, 422):
            raise UsageError(exc.message) from None
        raise


async def _http(
    remote: tuple[str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    params: dict[str, Any] | None,
) -> dict[str, Any]:
    url, token = remote
    where = f"{url}/control/fleet{path}"
    try:
        async with httpx.AsyncClient(timeout=_TIMEOUT) as http:
            response = await http.request(
                method,
                where,
                json=body,
                params=params,
                headers={"Authorization": f"Bearer {token}"},
            )
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach the control plane at {where}: {exc}") from None
    if response.status_code == 401:
        raise UsageError(f"the gateway at {url} refused the operator token (401)")
    try:
        answer: dict[str, Any] = response.json()
    except ValueError:
        answer = {"ok": False, "error": response.text[:300]}
    if response.status_code >= 300:
        raise ActionError(response.status_code, str(answer.get("error") or answer))
    return answer


@cli.group("fleet")
def fleet_group() -> None:
    """The fleet's runners: activation tokens, runners, status, anomalies (docs/fleet.md)."""


# -- tokens ------------------------------------------------------------------------------


@fleet_group.group("tokens")
def tokens_group() -> None:
    """Single-use activation tokens: one per runner that is to join."""


@tokens_group.command("create")
@click.option("--ttl", default="14d", show_default=True, help="How long it may be redeemed.")
@click.option("--labels", default=None, help="Labels the runner gets, e.g. gpu,big.")
@click.option("--note", default=None, help="What it is for (shown by `tokens ls`).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the token).")
@click.pass_obj
def tokens_create(
    obj: CliContext, ttl: str, labels: str | None, note: str | None, as_json: bool
) -> None:
    """Mint an activation token and print it, once: only its hash is kept.

    On the runner host: `corral runner join URL --token TOKEN`.
    """
    lifetime = fleet.parse_ttl(ttl)
    wanted = fleet.parse_labels(labels)

    async def local(store: Store, _: Project) -> dict[str, Any]:
        token, made = await fleet.create_token(
            store, ttl=lifetime, labels=wanted, note=note, actor=actions.cli_actor()
        )
        return {"ok": True, "token": token, **fleet.fleet_token_json(made, store.now())}

    body = {"ttlSeconds": int(lifetime.total_seconds()), "labels": list(wanted), "note": note}
    made = _do(obj, "POST", "/tokens", local, body=body)
    if as_json:
        print_json(made)
        return
    click.echo(made["token"])
    err_console.print(
        f"made activation token {safe(made['id'])} (expires {safe(made['expiresAt'])}"
        + (f", labels {safe(','.join(made['labels']))}" if made["labels"] else "")
        + "). It is shown only now and works once. On the runner host:\n"
        "  corral runner join <control plane URL> --token <the token above>",
        soft_wrap=True,
    )


@tokens_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def tokens_ls(obj: CliContext, as_json: bool) -> None:
    """List the activation tokens: unused, redeemed (by which runner), expired, revoked."""

    async def local(store: Store, _: Project) -> dict[str, Any]:
        now = store.now()
        tokens = await store.list_fleet_tokens()
        return {"ok": True, "tokens": [fleet.fleet_token_json(t, now) for t in tokens]}

    tokens = _do(obj, "GET", "/tokens", local)["tokens"]
    if as_json:
        print_json(tokens)
        return
    if not tokens:
        console.print("no activation tokens; `corral fleet tokens create` mints one")
        return
    table = Table("id", "status", "labels", "expires", "redeemed by", "note", box=None)
    for token in tokens:
        table.add_row(
            cell(token["id"]),
            cell(token["status"]),
            cell(",".join(token["labels"]) or None),
            cell(token["expiresAt"]),
            cell(token["redeemedBy"]),
            cell(token["note"]),
        )
    console.print(table)


@tokens_group.command("revoke")
@click.argument("token_id", metavar="ID")
@click.pass_obj
def tokens_revoke(obj: CliContext, token_id: str) -> None:
    """Revoke the unused activation token ID: it can no longer be redeemed."""

    async def local(store: Store, _: Project) -> dict[str, Any]:
        token, changed = await fleet.revoke_token(store, token_id, actor=actions.cli_actor())
        return {"ok": True, "changed": changed, "token": fleet.fleet_token_json(token, store.now())}

    answer = _do(obj, "POST", f"/tokens/{token_id}/revoke", local)
    if answer["changed"]:
        console.print(f"revoked activation token {safe(token_id)}")
    else:
        console.print(f"activation token {safe(token_id)} was already revoked")


# -- runners -----------------------------------------------------------------------------


@fleet_group.group("runners")
def runners_group() -> None:
    """The runners that joined: list them, revoke, drain, cordon or uncordon one."""


def _runners(obj: CliContext) -> list[dict[str, Any]]:
    async def local(store: Store, project: Project) -> dict[str, Any]:
        settings = fleet.fleet_settings(project)
        await fleet.check_offline(store, settings)
        now = store.now()
        runners = await store.list_runners()
        return {"ok": True, "runners": [fleet.runner_json(r, now, settings) for r in runners]}

    runners: list[dict[str, Any]] = _do(obj, "GET", "/runners", local)["runners"]
    return runners


@runners_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def runners_ls(obj: CliContext, as_json: bool) -> None:
    """List the runners: state, online or offline, last heartbeat, version, labels, slots,
    ready warm workspaces by agent (as the control plane last heard them)."""
    runners = _runners(obj)
    if as_json:
        print_json(runners)
        return
    if not runners:
        console.print(
            "no runners; `corral fleet tokens create` mints a token, then on the runner "
            "host `corral runner join URL --token TOKEN`"
        )
        return
    table = Table("id", "name", "host", "state", "status", "last heartbeat", "version", "labels",
                  "slots", "warm ready", box=None)  # fmt: skip
    styles = {"online": "green", "offline": "red", "revoked": "dim"}
    for runner in runners:
        table.add_row(
            cell(runner["id"]),
            cell(runner["name"]),
            cell(runner["hostname"]),
            cell(runner["state"]),
            cell(runner["status"], style=styles.get(runner["status"], "")),
            cell(f"{runner['secondsSinceHeartbeat']:g}s ago"),
            cell(runner["version"] or None),
            cell(",".join(runner["labels"]) or None),
            cell(runner["slots"]),
            cell(_warm_cell(runner.get("warm"))),
        )
    console.print(table)


def _warm_cell(warm: Any) -> str | None:
    """``agent=N`` per agent a runner keeps warm workspaces of (None: not reported)."""
    if not isinstance(warm, dict) or not warm:
        return None
    return ",".join(f"{agent}={count}" for agent, count in sorted(warm.items()))


_CHANGES = {
    "revoke": (RunnerState.REVOKED, "revoked: its next request is refused"),
    "drain": (RunnerState.DRAINING, "draining: it takes no new work"),
    "cordon": (RunnerState.CORDONED, "cordoned: it takes no new work until uncordoned"),
    "uncordon": (RunnerState.ACTIVE, "active: it takes work again"),
}


def _change_command(verb: str) -> None:
    state, said = _CHANGES[verb]

    @runners_group.command(verb, help=f"Mark runner ID (or its name) {said}.")
    @click.argument("ref", metavar="ID")
    @click.pass_obj
    def change(obj: CliContext, ref: str) -> None:
        async def local(store: Store, project: Project) -> dict[str, Any]:
            after, changed = await fleet.change_runner(store, ref, state, actor=actions.cli_actor())
            json = fleet.runner_json(after, store.now(), fleet.fleet_settings(project))
            return {"ok": True, "changed": changed, "runner": json}

        answer = _do(obj, "POST", f"/runners/{ref}/{verb}", local)
        runner = answer["runner"]
        what = f"runner {safe(runner['id'])} ({safe(runner['name'])})"
        if answer["changed"]:
            console.print(f"{what} is now {said}")
        else:
            console.print(f"{what} was already {safe(runner['state'])}")


for _verb in _CHANGES:
    _change_command(_verb)


# -- status ------------------------------------------------------------------------------


@fleet_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status_cmd(obj: CliContext, as_json: bool) -> None:
    """The four numbers: online ratio, job throughput, open anomalies, version skew."""

    async def local(store: Store, project: Project) -> dict[str, Any]:
        return await fleet.fleet_overview(store, project)

    status = _do(obj, "GET", "/status", local)
    if as_json:
        print_json(status)
        return
    runners = status["runners"]
    ratio = status["onlineRatio"]
    shown = "-" if ratio is None else f"{ratio:.0%}"
    console.print(
        f"[bold]online ratio[/]  {shown}  ({runners['heartbeatingLast3Minutes']} of "
        f"{runners['registered']} registered runners heartbeating in the last 3 minutes; "
        f"{runners['online']} online now, {runners['offline']} offline)"
    )
    throughput = status["throughput"]
    console.print(
        f"[bold]throughput[/]    {throughput['perHour']:g} runs/hour over the last day "
        f"({throughput['completed']} completed)"
    )
    if throughput["perAgent"]:
        table = Table("agent", "completed", "per hour", box=None, padding=(0, 2))
        for agent, numbers in throughput["perAgent"].items():
            table.add_row(cell(agent), cell(numbers["completed"]), cell(numbers["perHour"]))
        console.print(table)
    anomalies = status["anomalies"]
    kinds = ", ".join(f"{safe(k)} {n}" for k, n in anomalies["byKind"].items())
    console.print(
        f"[bold]anomalies[/]     {anomalies['open']} open" + (f" ({kinds})" if kinds else "")
    )
    versions = status["versions"]
    console.print(
        f"[bold]version skew[/]  {versions['behind']} runner(s) behind {safe(versions['newest'])}"
        f" (control plane {safe(versions['controlPlane'])})"
    )
    for runner in versions["runners"]:
        if not runner["current"]:
            console.print(
                f"  {safe(runner['name'])} ({safe(runner['id'])}) runs {safe(runner['version'])}"
            )
    bundles = status.get("bundles")  # None from a control plane before the bundle skew
    if bundles is not None:
        current = bundles["current"]
        against = f"the current {safe(current[:19])}" if current else "(no bundle pushed)"
        console.print(
            f"[bold]bundle skew[/]   {bundles['runnersBehind']} runner(s) running another "
            f"bundle than {against}; {bundles['liveRunsBehind']} live run(s) on one"
        )
        for where, found in bundles["byRunner"].items():
            for bundle in found:
                if not bundle["current"]:
                    name = safe((bundle["bundle"] or "no bundle")[:19])
                    console.print(f"  {safe(where)} runs {name} ({bundle['live']} live)")


# -- anomalies ---------------------------------------------------------------------------


@fleet_group.group("anomalies", invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Resolved ones too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def anomalies_group(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """Anomalies (runner offline, token reused, ...), listed until resolved."""
    if ctx.invoked_subcommand is None:
        _list_anomalies(ctx.obj, show_all, as_json)


@anomalies_group.command("ls")
@click.option("--all", "show_all", is_flag=True, help="Resolved ones too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def anomalies_ls(obj: CliContext, show_all: bool, as_json: bool) -> None:
    """List the open anomalies (with --all, the resolved ones too), newest first."""
    _list_anomalies(obj, show_all, as_json)


def _list_anomalies(obj: CliContext, show_all: bool, as_json: bool) -> None:
    async def local(store: Store, project: Project) -> dict[str, Any]:
        await fleet.check_offline(store, fleet.fleet_settings(project))
        found = await store.list_anomalies(include_resolved=show_all)
        return {"ok": True, "anomalies": [fleet.anomaly_json(a) for a in found]}

    params = {"all": "true"} if show_all else None
    anomalies = _do(obj, "GET", "/anomalies", local, params=params)["anomalies"]
    if as_json:
        print_json(anomalies)
        return
    if not anomalies:
        console.print("no open anomalies" if not show_all else "no anomalies")
        return
    table = Table("id", "kind", "subject", "at", "evidence", "resolved", box=None)
    for anomaly in anomalies:
        evidence = anomaly["evidence"] or {}
        table.add_row(
            cell(anomaly["id"]),
            cell(anomaly["kind"]),
            cell(anomaly["subject"]),
            cell(anomaly["at"]),
            cell(", ".join(f"{k}={v}" for k, v in evidence.items() if v is not None) or None),
            cell(anomaly["resolution"] if not anomaly["open"] else None),
        )
    console.print(table)


@anomalies_group.command("resolve")
@click.argument("anomaly_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--note", required=True, help="What was found and what was done.")
@click.pass_obj
def anomalies_resolve(obj: CliContext, anomaly_id: int, note: str) -> None:
    """Resolve anomaly ID with a note; it leaves the open list."""

    async def local(store: Store, _: Project) -> dict[str, Any]:
        found, changed = await fleet.resolve_anomaly(
            store, anomaly_id, note, actor=actions.cli_actor()
        )
        return {"ok": True, "changed": changed, "anomaly": fleet.anomaly_json(found)}

    answer = _do(obj, "POST", f"/anomalies/{anomaly_id}/resolve", local, body={"note": note})
    if answer["changed"]:
        console.print(f"resolved anomaly {anomaly_id}")
    else:
        console.print(f"anomaly {anomaly_id} was already resolved")
