"""`corral push` and `corral bundles`: the project travels through the store.

`corral push` checks the project (the same loader as `corral start`: an invalid project is
refused with its errors and nothing is published), packs it into a bundle (corral.bundles:
deterministic, named by its SHA-256), checks that the bundle itself loads, and publishes
it as the project's current bundle; every control plane on the store applies it without
a restart. With an environment (`-E NAME`) whose file sets ``[gateway] url`` it uploads
through that gateway's control API (``POST /control/bundles``, an operator token);
otherwise it writes to the store directly.

`corral bundles ls|show|apply` list the pushed bundles and make an earlier one current
again (a rollback); `corral push --bundle HASH` does the same as `apply`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click
import httpx
from rich.table import Table

from corral.bundles import HASH_PREFIX, BundleError, Packed, normalize_hash, pack
from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import cell, console, err_console, print_json, safe
from corral.cli.remote_run import remote_gateway
from corral.engine import actions
from corral.errors import ConfigError, ConfigIssue, StoreConflict, UsageError
from corral.inert import inert
from corral.project import Project
from corral.rollouts import Rule, parse_share
from corral.scheduler.bundles import check_bundle
from corral.store import Store
from corral.views import bundle_head_json, bundle_json

__all__ = ["bundles_group", "push_cmd"]

_TIMEOUT_S = 120.0


@cli.command("push")
@click.option("--note", default=None, help="A note kept with the bundle (what changed).")
@click.option(
    "--bundle",
    "bundle_ref",
    default=None,
    metavar="HASH",
    help="Make an earlier pushed bundle current again instead (a rollback).",
)
@click.option(
    "--canary",
    default=None,
    metavar="SHARE",
    help="Roll out to this share of the changed agents' runs first (like 10%), not current.",
)
@click.option(
    "--min-runs",
    default=20,
    show_default=True,
    type=click.IntRange(1, 100000),
    help="With --canary: finished canary (and baseline) runs before the rule judges.",
)
@click.option(
    "--promote-after",
    default=None,
    type=click.IntRange(1, 100000),
    help="With --canary: promote after this many canary runs without a regression.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def push_cmd(
    obj: CliContext,
    note: str | None,
    bundle_ref: str | None,
    as_json: bool,
    canary: str | None = None,
    min_runs: int = 20,
    promote_after: int | None = None,
) -> None:
    """Publish the project (config.toml, agents/, shared/) as the current bundle.

    The control plane applies it without a restart; each run records the bundle it ran.
    With --canary, the bundle runs a share of the changed agents' runs until it is
    promoted (by hand or by the rule) or rolled back (`corral rollout status`).
    """
    if bundle_ref is not None:
        _apply(obj, bundle_ref, as_json)
        return
    if canary is not None:
        _push_canary(obj, canary, min_runs, promote_after, note, as_json)
        return
    project = obj.project()  # an invalid project stops here, with the loader's errors
    packed = _pack(project)
    remote = remote_gateway(project)
    if remote is not None:
        answer = asyncio.run(_push_remote(remote, _token(project), packed, note))
    else:
        answer = asyncio.run(_push_store(obj, project, packed, note))
    if as_json:
        print_json(answer | {"skipped": list(packed.skipped)})
        return
    bundle = answer["bundle"]
    agents = ", ".join(sorted(bundle["agents"])) or "no agents"
    what = f"{bundle['files']} files, {bundle['size']} bytes; {agents}"
    if answer["unchanged"]:
        console.print(f"bundle {bundle['hash']} is already current: nothing changed ({what})")
    elif answer["stored"]:
        console.print(f"pushed bundle {bundle['hash']} ({what}); it is now current")
    else:
        console.print(f"bundle {bundle['hash']} was pushed before ({what}); it is current again")
    if packed.skipped:
        err_console.print(
            "not in the bundle (local state, secrets, caches): "
            + ", ".join(safe(path) for path in packed.skipped),
            soft_wrap=True,
        )


def _push_canary(
    obj: CliContext,
    canary: str,
    min_runs: int,
    promote_after: int | None,
    note: str | None,
    as_json: bool,
) -> None:
    try:
        share = parse_share(canary)
        rule = Rule(min_runs=min_runs, promote_after=promote_after)
    except ValueError as exc:
        raise UsageError(f"--canary: {exc}") from None
    project = obj.project()
    packed = _pack(project)
    remote = remote_gateway(project)
    if remote is not None:
        params: dict[str, Any] = {"canary": canary, "min_runs": min_runs}
        if promote_after is not None:
            params["promote_after"] = promote_after
        if note:
            params["note"] = note
        headers = {
            "Authorization": f"Bearer {_token(project)}",
            "Content-Type": "application/x-tar",
        }
        answer = asyncio.run(
            _call(
                "POST",
                f"{remote}/control/bundles",
                headers=headers,
                params=params,
                content=packed.data,
            )
        )
    else:

        async def go() -> dict[str, Any]:
            async with await obj.store(project) as store:
                try:
                    rollout = await store.publish_canary(
                        packed.hash,
                        packed.data,
                        packed.manifest(),
                        share=share,
                        rule=rule.to_json(),
                        actor=actions.cli_actor(),
                        note=note,
                    )
                except StoreConflict as exc:
                    raise UsageError(str(exc)) from None
            return {"ok": True, "rollout": rollout.to_json()}

        answer = asyncio.run(go())
    if as_json:
        print_json(answer)
        return
    r = answer["rollout"]
    console.print(
        f"rollout {r['id']}: bundle {safe(r['candidate'])} runs {r['share']:.0%} of the runs "
        f"of {safe(', '.join(r['agents']))}; the current bundle {safe(r['baseline'])} the "
        "rest. `corral rollout status` compares them"
    )


def _pack(project: Project) -> Packed:
    try:
        packed = pack(project.root)
        check_bundle(packed.data, packed.hash, project.environment)
    except BundleError as exc:
        raise UsageError(f"cannot bundle the project at {project.root}: {exc}") from None
    except ConfigError as exc:
        why = (
            "the project loads from its directory but not as a bundle: a file it needs is "
            "left out of bundles (local state, .env.toml, or a secret-looking name); "
            "nothing was pushed"
        )
        raise ConfigError([ConfigIssue("(bundle)", None, why), *exc.issues]) from None
    return packed


async def _push_store(
    obj: CliContext, project: Project, packed: Packed, note: str | None
) -> dict[str, Any]:
    async with await obj.store(project) as store:
        published = await store.publish_bundle(
            packed.hash, packed.data, packed.manifest(), actor=actions.cli_actor(), note=note
        )
    return {
        "ok": True,
        "bundle": bundle_json(published.bundle, published.head),
        "stored": published.stored,
        "moved": published.moved,
        "unchanged": published.unchanged,
    }


async def _push_remote(url: str, token: str, packed: Packed, note: str | None) -> dict[str, Any]:
    params = {"note": note} if note else {}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-tar"}
    return await _call(
        "POST", f"{url}/control/bundles", headers=headers, params=params, content=packed.data
    )


async def _call(method: str, where: str, **kwargs: Any) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(timeout=_TIMEOUT_S) as http:
            response = await http.request(method, where, **kwargs)
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach the gateway at {where}: {exc}") from None
    if response.status_code in (401, 403):
        raise UsageError(f"the gateway at {where} refused the operator token")
    if response.status_code != 200:
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None
        raise UsageError(
            f"the gateway at {where} answered {response.status_code}: "
            f"{inert(error or response.text[:300])}"
        )
    body: dict[str, Any] = response.json()
    return body


def _token(project: Project) -> str:
    from corral.cli.commands.stat import _remote_token

    return _remote_token(project)


# -- corral bundles ---------------------------------------------------------------------


@cli.group("bundles", invoke_without_command=True)
@click.pass_context
def bundles_group(ctx: click.Context) -> None:
    """The pushed project bundles: ls (the default), show HASH, apply HASH."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(ls_cmd)


@bundles_group.command("ls")
@click.option("-n", "--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def ls_cmd(obj: CliContext, limit: int = 20, as_json: bool = False) -> None:
    """The pushed bundles, newest first; the current one is marked."""
    project = obj.project_for_store()
    remote = remote_gateway(project)
    if remote is not None:
        answer = asyncio.run(
            _call(
                "GET",
                f"{remote}/control/bundles",
                params={"limit": limit},
                headers={"Authorization": f"Bearer {_token(project)}"},
            )
        )
    else:

        async def go() -> dict[str, Any]:
            async with await obj.store(project) as store:
                head = await store.bundle_head()
                found = await store.list_bundles(limit=limit)
            return {
                "current": bundle_head_json(head),
                "bundles": [bundle_json(b, head) for b in found],
            }

        answer = asyncio.run(go())
    if as_json:
        print_json(answer)
        return
    if not answer["bundles"]:
        console.print("no bundles yet; `corral push` publishes the project")
        return
    table = Table("", "bundle", "pushed", "by", "files", "size", "agents", "note", box=None)
    for b in answer["bundles"]:
        table.add_row(
            "*" if b["current"] else "",
            cell(_short(b["hash"])),
            cell(b["createdAt"][:19].replace("T", " ")),
            cell(b["createdBy"]),
            str(b["files"]),
            str(b["size"]),
            cell(", ".join(sorted(b["agents"]))),
            cell(b["note"] or ""),
        )
    console.print(table)
    current = answer["current"]
    if current is not None:
        console.print(f"current: {safe(current['hash'])} (set by {safe(current['setBy'])})")


@bundles_group.command("show")
@click.argument("ref", metavar="HASH")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def show_cmd(obj: CliContext, ref: str, as_json: bool) -> None:
    """One pushed bundle: size, files, and each agent's own bundle hash."""
    project = obj.project_for_store()
    remote = remote_gateway(project)
    if remote is not None:
        wanted = normalize_or_usage(ref)
        answer = asyncio.run(
            _call(
                "GET",
                f"{remote}/control/bundles/{wanted}",
                headers={"Authorization": f"Bearer {_token(project)}"},
            )
        )
        shown = answer["bundle"]
    else:

        async def go() -> dict[str, Any]:
            async with await obj.store(project) as store:
                wanted = await resolve(store, ref)
                found = await store.get_bundle(wanted)
                if found is None:
                    raise UsageError(f"no bundle {wanted} (`corral bundles ls` lists them)")
                return bundle_json(found, await store.bundle_head())

        shown = asyncio.run(go())
    if as_json:
        print_json(shown)
        return
    console.print(f"bundle   {safe(shown['hash'])}" + ("  (current)" if shown["current"] else ""))
    console.print(f"pushed   {safe(shown['createdAt'])} by {safe(shown['createdBy'])}")
    console.print(f"size     {shown['size']} bytes, {shown['files']} files")
    if shown["note"]:
        console.print(f"note     {safe(shown['note'])}")
    for name, agent_hash in sorted(shown["agents"].items()):
        console.print(f"agent    {safe(name)}  {safe(agent_hash)}")


@bundles_group.command("apply")
@click.argument("ref", metavar="HASH")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def apply_cmd(obj: CliContext, ref: str, as_json: bool) -> None:
    """Make pushed bundle HASH current again (a rollback); the control plane applies it."""
    _apply(obj, ref, as_json)


def _apply(obj: CliContext, ref: str, as_json: bool) -> None:
    project = obj.project_for_store()
    remote = remote_gateway(project)
    if remote is not None:
        wanted = normalize_or_usage(ref)
        answer = asyncio.run(
            _call(
                "POST",
                f"{remote}/control/bundles/{wanted}/apply",
                headers={"Authorization": f"Bearer {_token(project)}"},
            )
        )
        current = answer["current"]
    else:

        async def go() -> dict[str, Any] | None:
            async with await obj.store(project) as store:
                wanted = await resolve(store, ref)
                try:
                    head = await store.set_bundle_head(wanted, actor=actions.cli_actor())
                except StoreConflict as exc:
                    raise UsageError(str(exc)) from None
                return bundle_head_json(head)

        current = asyncio.run(go())
    if as_json:
        print_json({"ok": True, "current": current})
        return
    assert current is not None
    console.print(f"bundle {safe(current['hash'])} is current; the control plane applies it")


def normalize_or_usage(ref: str) -> str:
    try:
        return normalize_hash(ref)
    except BundleError as exc:
        raise UsageError(str(exc)) from None


async def resolve(store: Store, ref: str) -> str:
    """The full hash of a bundle given by its hash or a prefix of it (8 hex digits or more)."""
    text = ref.strip().lower().removeprefix(HASH_PREFIX)
    if len(text) == 64:
        return normalize_or_usage(ref)
    if len(text) < 8 or any(c not in "0123456789abcdef" for c in text):
        raise UsageError(
            f"{ref!r} is not a bundle hash: give its hash, or its first 8 hex digits or "
            "more (`corral bundles ls` lists them)"
        )
    found = await store.find_bundles(HASH_PREFIX + text)
    if not found:
        raise UsageError(f"no bundle starts with {ref!r} (`corral bundles ls` lists them)")
    if len(found) > 1:
        raise UsageError(f"{ref!r} names several bundles ({', '.join(found)}); give more digits")
    return found[0]


def _short(hash_: str) -> str:
    return hash_[: len(HASH_PREFIX) + 12]
