from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from corral._version import __version__
from corral.cli._context import CliContext
from corral.cli._render import configure_logging, err_console, safe_lines
from corral.errors import ConfigError, CorralError, UsageError

#: Exit codes of the CLI itself (a run's own exit code is passed through by `corral run`).
EXIT_ERROR = 1
EXIT_USAGE = 2


class CorralGroup(click.Group):
    """Turns corral's own errors into a clear message and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            err_console.print(
                f"[bold red]error:[/] {safe_lines(exc.render())}", markup=True, soft_wrap=True
            )
            raise SystemExit(EXIT_USAGE) from None
        except UsageError as exc:
            err_console.print(f"[bold red]error:[/] {safe_lines(exc)}", markup=True, soft_wrap=True)
            raise SystemExit(EXIT_USAGE) from None
        except CorralError as exc:
            err_console.print(f"[bold red]error:[/] {safe_lines(exc)}", markup=True, soft_wrap=True)
            raise SystemExit(EXIT_ERROR) from None


@click.group(cls=CorralGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="corral")
@click.option(
    "-p",
    "--project",
    "project_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CORRAL_PROJECT",
    help="Project directory (default: the nearest one at or above the current directory).",
)
@click.option(
    "-E",
    "--env",
    "env",
    envvar="CORRAL_ENV",
    help="Environment overlay: ~/.corral/environments/NAME.toml merged over config.toml.",
)
@click.pass_context
def cli(ctx: click.Context, project_dir: Path | None, env: str | None) -> None:
    """corral runs fleets of AI coding agents."""
    ctx.obj = CliContext(project_dir=project_dir, env=env)


def main() -> None:
    from corral.cli import commands  # noqa: F401  (registers the subcommands)

    configure_logging(logging.WARNING)  # as Python's default, but inert (docs/watching.md)
    cli()
