"""Importing this package registers every subcommand on the `corral` group."""

from corral.cli.commands import db, project, runs

__all__ = ["db", "project", "runs"]
