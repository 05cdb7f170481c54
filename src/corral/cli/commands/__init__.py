"""Importing this package registers every subcommand on the `corral` group."""

from corral.cli.commands import control, db, fleet, locks, project, runs

__all__ = ["control", "db", "fleet", "locks", "project", "runs"]
