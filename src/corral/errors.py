"""The one exception tree of corral.

    CorralError
    ├── ConfigError        a project, agent or overlay file is wrong (carries every issue)
    ├── StoreError         the state store failed or refused
    │   ├── StoreConflict       what the store holds refuses the change
    │   │   └── RequestKeyReused    an idempotency key sent with a different request
    │   ├── StoreUnavailable    cannot connect / open
    │   │   └── StoreBusy           not within the wait bound; retry later
    │   ├── MigrationError      schema migrations could not be applied
    │   └── StaleFence          a run acted on a queue item it no longer holds
    ├── RunError           a run could not be started or recorded
    └── UsageError         a command was called wrongly (unknown agent, bad argument)

Every error a user can cause says what was wrong, where, and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "CorralError",
    "MigrationError",
    "RequestKeyReused",
    "RunError",
    "StaleFence",
    "StoreBusy",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "UsageError",
]


class CorralError(Exception):
    """Base of every error corral raises on purpose."""


@dataclass(frozen=True, order=True)
class ConfigIssue:
    """One problem found in a project: the file, where in it, and what to do.

    ``file`` is relative to the project root where possible; ``field`` is a dotted
    path (``webhooks[0].source``); ``line`` is 1-based when the source gives one.
    """

    file: str
    field: str | None
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"


class ConfigError(CorralError):
    """One or more configuration problems, all reported together."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line or 0, i.field or ""))
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.issues)
        head = "1 problem" if count == 1 else f"{count} problems"
        lines = [f"{head} in the project configuration:"]
        lines += [f"  {issue}" for issue in self.issues]
        return "\n".join(lines)


class StoreError(CorralError):
    """The state store failed; the message names the store and the operation."""


class StoreConflict(StoreError):
    """What the store holds now refuses the change (no such agent, the run has ended);
    nothing was changed. Not a failure of the store: retrying will not help."""


class StoreUnavailable(StoreError):
    """The store cannot be opened or reached."""


class StoreBusy(StoreUnavailable):
    """The store did not take the change within the bound corral waits for it (no pooled
    connection free, a row or the SQLite file locked by another writer). Nothing was
    changed; trying again after ``retry_after`` seconds may succeed."""

    def __init__(self, message: str, *, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestKeyReused(StoreConflict):
    """An idempotency key came again with a different request; nothing was changed."""


class MigrationError(StoreError):
    """Schema migrations could not be applied."""


class StaleFence(StoreError):
    """A run tried to act on an item it no longer holds: its lease was lost and handed on.

    Nothing was changed. The run's process should stop; its work may be done again by the
    run that holds the item now.
    """


class RunError(CorralError):
    """A run could not be started or finished as asked."""


class UsageError(CorralError):
    """A command was called with something that does not exist or does not fit."""
