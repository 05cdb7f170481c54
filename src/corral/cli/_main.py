from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from corral._version import __version__
from corral.cli._context import CliContext
from corral.cli._instances import live_instances
from corral.cli._render import configure_logging, err_console, safe, safe_lines
from corral.errors import ConfigError, CorralError, UsageError
from corral.inert import inert
from corral.locate import resolve_project_root

#: Exit codes of the CLI itself (a run's own exit code is passed through by `corral run`).
EXIT_ERROR = 1
EXIT_USAGE = 2


class CorralGroup(click.Group):
    """Turns corral's own errors into a clear message and an exit code, never a traceback.

    Every subcommand also takes ``-E/--env`` and ``-p/--project`` after its name
    (``corral stat -E production``, as in Action Llama), besides before it."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            add_common_options(command)
        return name, command, rest

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            report = escape(render_config_error(exc)) + safe_lines(_still_running(ctx))
            err_console.print(f"[bold red]error:[/] {report}", markup=True, soft_wrap=True)
            raise SystemExit(EXIT_USAGE) from None
        except UsageError as exc:  # one line: a newline in a name must not forge a line
            err_console.print(f"[bold red]error:[/] {safe(exc)}", markup=True, soft_wrap=True)
            raise SystemExit(EXIT_USAGE) from None
        except CorralError as exc:
            err_console.print(f"[bold red]error:[/] {safe(exc)}", markup=True, soft_wrap=True)
            raise SystemExit(EXIT_ERROR) from None


def render_config_error(exc: ConfigError) -> str:
    """``exc.render()`` with each issue made inert on its own line: a newline in a file or
    folder name (an agent's folder can be named anything) is shown escaped, never as a
    line of its own."""
    head = exc.render().split("\n", 1)[0]
    return "\n".join([head, *(f"  {inert(issue)}" for issue in exc.issues)])


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


def _still_running(ctx: click.Context) -> str:
    """After a configuration error: which schedulers of the project keep running their last
    good configuration (hot reload keeps it until the files load again)."""
    found = ctx.find_object(CliContext)
    try:
        root = resolve_project_root(found.project_dir if found else None)
    except CorralError:
        return ""
    pids = ", ".join(str(i.pid) for i in live_instances(root))
    if not pids:
        return ""
    return (
        f"\nthe scheduler of this project running here (pid {pids}) keeps its last good "
        "configuration until the files load again"
    )


def _set_context(field: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A callback that puts a subcommand's ``-E``/``-p`` into the shared CliContext
    (given after the subcommand, it wins over the same option given before it)."""

    def store(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        found = ctx.find_object(CliContext)
        if value is not None and found is not None:
            setattr(found, field, value)
        return value

    return store


_COMMON = (
    ("-p", "--project", "project_dir", "Project directory (as before the subcommand)."),
    ("-E", "--env", "env", "Environment overlay (as before the subcommand)."),
)


def add_common_options(command: click.Command) -> None:
    """Give ``command`` (and every command under it) ``-p/--project`` and ``-E/--env``,
    unless it has an option of that name already; a group too when it runs by itself
    (`corral fleet upgrade --to V -E NAME`). Idempotent."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_common_options(sub)
        if not command.invoke_without_command:
            return
    taken = {opt for param in command.params for opt in param.opts}
    for short, long, field, help_text in _COMMON:
        if short in taken or long in taken:
            continue
        kind = click.Path(file_okay=False, path_type=Path) if field == "project_dir" else None
        command.params.append(
            click.Option(
                [short, long],
                type=kind,
                expose_value=False,
                is_eager=True,
                callback=_set_context(field),
                help=help_text,
            )
        )


def main() -> None:
    from corral.cli import commands  # noqa: F401  (registers the subcommands)

    configure_logging(logging.WARNING)  # as Python's default, but inert (docs/watching.md)
    cli()
