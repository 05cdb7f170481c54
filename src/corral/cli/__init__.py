"""The `corral` command line: thin click commands that call services and render."""

from corral.cli._main import cli, main

__all__ = ["cli", "main"]
