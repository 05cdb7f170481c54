"""Importing this package registers every subcommand on the `corral` group."""

from corral.cli.commands import control, creds, db, fleet, locks, project, runs

__all__ = ["control", "creds", "db", "fleet", "locks", "project", "runs"]
