"""`corral new`, `corral config` and `corral doctor`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
from rich.table import Table

from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import cell, console, err_console, print_json, safe, safe_lines
from corral.doctor import Check, run_checks
from corral.scaffold import create_project


@cli.command("new")
@click.argument("directory", type=click.Path(path_type=Path))
def new_cmd(directory: Path) -> None:
    """Create a working project in DIRECTORY, with one example agent."""
    written = create_project(directory)
    for path in written:
        console.print(f"  created {safe(path)}")
    console.print(
        f"\nA project is ready in {safe(directory)}. Next:\n"
        f"  cd {safe(directory)}\n"
        "  corral run hello                 # run the example agent once\n"
        '  corral run hello "say hi"        # ... with a task\n'
        "  corral runs                      # see the history"
    )


@cli.command("config")
@click.option("-a", "--agent", "agent_name", help="Only this agent's settings.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def config_cmd(obj: CliContext, agent_name: str | None, as_json: bool) -> None:
    """Print the resolved configuration and where each value came from."""
    project = obj.project()
    values = project.explain()
    if agent_name is not None:
        prefix = f"agents.{agent_name}."
        values = [v for v in values if v.key.startswith(prefix)]
    if as_json:
        print_json([{"key": v.key, "value": v.value, "source": v.source} for v in values])
        return
    console.print(f"project  {safe(project.root)}")
    if project.environment:
        console.print(f"environment  {safe(project.environment)}")
    table = Table("key", "value", "source", box=None)
    for v in values:
        table.add_row(
            cell(v.key),
            cell(repr(v.value) if not isinstance(v.value, str) else v.value),
            cell(v.source),
        )
    console.print(table)
    for warning in project.warnings:
        err_console.print(f"[yellow]warning:[/] {safe(warning)}")


_MARK = {"ok": "[green]  ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--strict", is_flag=True, help="Exit non-zero on warnings too (e.g. a missing model key)."
)
@click.pass_obj
def doctor_cmd(obj: CliContext, as_json: bool, strict: bool) -> None:
    """Check the project, its credentials, the store and the runtimes, and say what to fix.

    Exits 1 when a check fails; with --strict, also when one warns."""
    checks: list[Check] = asyncio.run(run_checks(obj.project_dir, obj.env))
    if as_json:
        print_json(
            [{"name": c.name, "status": c.status, "detail": c.detail, "fix": c.fix} for c in checks]
        )
    else:
        for c in checks:
            console.print(f"{_MARK[c.status]}  {safe(c.name)}: {safe_lines(c.detail)}")
            if c.fix:
                console.print(f"{'':>6}fix: {safe(c.fix)}", style="dim")
    failing = {"fail", "warn"} if strict else {"fail"}
    if any(c.status in failing for c in checks):
        raise SystemExit(1)
