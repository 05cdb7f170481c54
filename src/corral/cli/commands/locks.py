"""Resource locks for operators: `corral locks`, `corral locks release KEY --force`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import click
from rich.table import Table

from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import cell, console, fmt_duration, print_json, safe
from corral.engine import actions
from corral.engine.actions import ActionError, Offline
from corral.errors import UsageError
from corral.store import Lock, LockWaiter
from corral.views import lock_json


@cli.group("locks", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def locks_group(ctx: click.Context, as_json: bool) -> None:
    """List the resource locks held now: key, holder, held for, expires in."""
    if ctx.invoked_subcommand is not None:
        return
    obj: CliContext = ctx.obj
    project = obj.project()

    async def go() -> tuple[list[Lock], list[LockWaiter], list[LockWaiter]]:
        async with await obj.store(project) as store:
            locks = await store.list_locks()
            return locks, await store.list_lock_waiters(), await store.list_lock_wants()

    locks, waiters, wants = asyncio.run(go())
    now = datetime.now(UTC)
    if as_json:
        print_json([lock_json(lock, waiters, now, wants) for lock in locks])
        return
    if not locks:
        console.print("no locks are held")
        return
    table = Table(
        "key", "holder", "agent", "held for", "expires in", "waiting", "retrying", box=None
    )
    for lock in locks:
        left = lock.expires_at - now
        expires = "expired" if left.total_seconds() <= 0 else fmt_duration(left)
        queue = sum(1 for w in waiters if w.key == lock.key)
        retrying = sum(1 for w in wants if w.key == lock.key)
        table.add_row(
            cell(lock.key),
            cell(lock.run_id),
            cell(lock.agent),
            fmt_duration(now - lock.acquired_at),
            expires,
            str(queue) if queue else "-",
            str(retrying) if retrying else "-",
        )
    console.print(table)


@locks_group.command("release")
@click.argument("key")
@click.option("--force", is_flag=True, help="Required: the holder is not asked, only told.")
@click.pass_obj
def release_cmd(obj: CliContext, key: str, force: bool) -> None:
    """Take the lock on KEY away from whichever run holds it (recorded in the audit log).

    The holder is not stopped: it learns the lock is gone at its next rlock-heartbeat or
    runlock. A run waiting for KEY (rlock --wait) gets it at once.
    """
    if not force:
        raise UsageError(
            f"releasing {key!r} takes it away from the run that holds it; "
            "add --force to do so (`corral locks` shows the holder)"
        )
    project = obj.project()
    actor = actions.cli_actor()

    async def go() -> Lock:
        async with await obj.store(project) as store:
            return await actions.release_lock(Offline(project, store), key, actor=actor)

    try:
        lock = asyncio.run(go())
    except ActionError as exc:
        if exc.status == 404:
            raise UsageError(
                f"no lock on {key!r}; `corral locks` lists the locks held now"
            ) from None
        raise UsageError(exc.message) from None
    console.print(
        f"released {safe(key)} (held by run {safe(lock.run_id)} of {safe(lock.agent)}, "
        f"token {lock.token}); recorded as {safe(actor)}"
    )
