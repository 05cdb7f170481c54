from __future__ import annotations

import click

from corral._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="corral")
def cli() -> None:
    """corral runs fleets of AI coding agents."""


def main() -> None:
    cli(auto_envvar_prefix="CORRAL")
