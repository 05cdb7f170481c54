"""`corral db migrate` and `corral db status`."""

from __future__ import annotations

import asyncio

import click
from rich.table import Table

from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import cell, console, fmt_time, print_json, safe
from corral.store import MigrationStatus, open_store


@cli.group()
def db() -> None:
    """Inspect and migrate the state store."""


@db.command("migrate")
@click.pass_obj
def migrate(obj: CliContext) -> None:
    """Apply every pending schema migration."""
    project = obj.project()

    async def go() -> list[int]:
        async with await open_store(project.state_url, migrate=False) as store:
            return await store.migrate()

    applied = asyncio.run(go())
    if applied:
        console.print(f"applied migrations {', '.join(map(str, applied))}")
    else:
        console.print("the store is up to date; nothing to apply")


@db.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(obj: CliContext, as_json: bool) -> None:
    """Show the store's URL, schema version and pending migrations."""
    project = obj.project()

    async def go() -> tuple[str, str, MigrationStatus]:
        async with await open_store(project.state_url, migrate=False) as store:
            return store.url, store.dialect, await store.migration_status()

    url, dialect, st = asyncio.run(go())
    if as_json:
        print_json(
            {
                "url": url,
                "dialect": dialect,
                "current": st.current,
                "latest": st.latest,
                "applied": [{"version": v, "name": n, "appliedAt": a} for v, n, a in st.applied],
                "pending": [{"version": v, "name": n} for v, n in st.pending],
            }
        )
        return
    console.print(f"store    {safe(url)} ({dialect})")
    console.print(f"version  {st.current} of {st.latest}")
    table = Table("version", "name", "applied", box=None)
    for version, name, applied_at in st.applied:
        table.add_row(str(version), cell(name), fmt_time(applied_at))
    for version, name in st.pending:
        table.add_row(str(version), cell(name), "[yellow]pending[/]")
    console.print(table)
    if st.pending:
        console.print("run `corral db migrate` to apply the pending migrations")
