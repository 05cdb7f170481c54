"""`corral demo`: a real fleet working end to end, offline, on the embedded store."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from corral.cli._main import cli

__all__ = ["demo_cmd"]


@cli.command("demo")
@click.argument("directory", type=click.Path(path_type=Path), default=Path("corral-demo"))
@click.option(
    "--duration",
    type=click.FloatRange(min=5),
    default=60.0,
    show_default=True,
    help="Seconds the fleet runs before it drains.",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, help="Gateway port (default: a free one)."
)
def demo_cmd(directory: Path, duration: float, port: int) -> None:
    """Lay out a demo project in DIRECTORY and run its fleet for about a minute: signed
    webhooks, agents contending for issue locks and calling each other, a schedule and a
    rerun; then print `corral stat` and what happened."""
    from corral.cli.commands.stat import render_status
    from corral.demo import main

    sys.exit(main(directory, duration, port, render_status))
