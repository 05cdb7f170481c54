"""Importing this package registers every subcommand on the `corral` group."""

from corral.cli.commands import (
    bundles,
    control,
    creds,
    db,
    demo,
    fleet,
    locks,
    logs,
    mcp,
    project,
    runs,
    stat,
    stats,
    tokens,
    usage,
    webhook,
)

__all__ = [
    "bundles",
    "control",
    "creds",
    "db",
    "demo",
    "fleet",
    "locks",
    "logs",
    "mcp",
    "project",
    "runs",
    "stat",
    "stats",
    "tokens",
    "usage",
    "webhook",
]
