"""Importing this package registers every subcommand on the `corral` group."""

from corral.cli.commands import (
    control,
    creds,
    db,
    demo,
    fleet,
    locks,
    logs,
    project,
    runs,
    stat,
    tokens,
    usage,
    webhook,
)

__all__ = [
    "control",
    "creds",
    "db",
    "demo",
    "fleet",
    "locks",
    "logs",
    "project",
    "runs",
    "stat",
    "tokens",
    "usage",
    "webhook",
]
