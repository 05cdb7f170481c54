"""Frozen records the store hands out, and the enums for their states.

Records are plain values: build them with ``from_row()`` from a row whose values the
backend already decoded to Python types (aware UTC datetimes, dicts for JSON), and
derive a changed copy with ``evolve()``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Self

__all__ = [
    "AppliedMigration",
    "MigrationStatus",
    "NewRun",
    "PendingMigration",
    "Run",
    "RunState",
    "TriggerKind",
]


class RunState(enum.StrEnum):
    """Where a run is in its life: queued -> starting -> running -> one terminal state."""

    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    KILLED = "killed"
    LOST = "lost"

    @property
    def is_terminal(self) -> bool:
        """True once the run has ended; a terminal state never changes again."""
        return self not in _LIVE_STATES


_LIVE_STATES = frozenset({RunState.QUEUED, RunState.STARTING, RunState.RUNNING})


class TriggerKind(enum.StrEnum):
    """What started a run."""

    SCHEDULE = "schedule"
    MANUAL = "manual"
    WEBHOOK = "webhook"
    CALL = "call"


@dataclasses.dataclass(frozen=True, slots=True)
class NewRun:
    """What the caller decides about a run before it exists; the store adds the rest."""

    agent: str
    trigger: TriggerKind
    trigger_detail: dict[str, Any] | None = None
    prompt: str | None = None
    parent_run_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """One attempt at running an agent, as recorded in the store."""

    id: str
    agent: str
    trigger: TriggerKind
    trigger_detail: dict[str, Any] | None
    prompt: str | None
    state: RunState
    parent_run_id: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    exit_code: int | None
    error: str | None
    pid: int | None
    host: str | None
    status_text: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        """Build a run from a decoded ``corral_runs`` row (column ``trigger_kind``)."""
        values = {
            field.name: row[field.name]
            for field in dataclasses.fields(cls)
            if field.name != "trigger"
        }
        values["state"] = RunState(values["state"])
        return cls(trigger=TriggerKind(row["trigger_kind"]), **values)

    def evolve(self, **changes: Any) -> Self:
        """A copy of this run with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def duration(self) -> timedelta | None:
        """How long the run ran: from start to end, or None until both are known."""
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


class AppliedMigration(NamedTuple):
    """A migration recorded in ``corral_migrations``."""

    version: int
    name: str
    applied_at: datetime


class PendingMigration(NamedTuple):
    """A migration the code knows and the database has not applied yet."""

    version: int
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class MigrationStatus:
    """The schema version of a database against the version this code knows."""

    current: int
    latest: int
    applied: list[AppliedMigration]
    pending: list[PendingMigration]

    @property
    def up_to_date(self) -> bool:
        return not self.pending and self.current == self.latest
