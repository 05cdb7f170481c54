"""`corral mcp serve`: the project's fleet as a Model Context Protocol server (stdio)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from corral.cli._context import CliContext
from corral.cli._main import cli

__all__ = ["mcp_group", "serve_cmd"]


@cli.group("mcp")
def mcp_group() -> None:
    """Model Context Protocol: let a coding agent steer this project's fleet."""


@mcp_group.command("serve")
@click.option(
    "-p",
    "--project",
    "project_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Project directory (as `corral -p`; MCP client configs tend to put it here).",
)
@click.option("-E", "--env", "env", help="Environment overlay (as `corral -E`).")
@click.pass_obj
def serve_cmd(obj: CliContext, project_dir: Path | None, env: str | None) -> None:
    """Serve the tools run, stat, logs, pause, resume and kill over stdin/stdout.

    Add it to an MCP client as the command `corral mcp serve -p DIR`. It acts on the
    project's store, as the CLI commands of the same names do, so it needs no running
    scheduler to answer; stdout carries the protocol, messages go to stderr.
    """
    chosen = CliContext(
        project_dir=project_dir if project_dir is not None else obj.project_dir,
        env=env if env is not None else obj.env,
    )
    project = chosen.project()
    # Imported here: the MCP SDK takes long to import, and no other command needs it.
    from corral.mcp import serve

    try:
        asyncio.run(serve(project))
    except KeyboardInterrupt:
        pass
