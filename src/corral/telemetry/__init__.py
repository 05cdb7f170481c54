"""What the scheduler tells telemetry, and the OpenTelemetry exporter behind ``[telemetry]``.

The scheduler holds one ``RunObserver`` and calls it at four points: when it starts
(``open``), when a claim statement hands it items (``claimed``), when a run's end is
recorded (``finished``, or ``unrecorded`` when it could not be) and when it stops
(``close``). With telemetry off (the default) the observer is this module's no-op
base class: nothing of OpenTelemetry is imported and each call costs one method call.
With ``enabled = true`` and ``provider = "otel"``, ``observer_for`` returns the
exporter of ``corral.telemetry._otel`` (docs/telemetry.md says what it sends).
"""

from __future__ import annotations

from collections.abc import Sequence

from corral.project import Project, TelemetryConfig
from corral.store import Claim, Run, Store

__all__ = ["RunObserver", "observer_for", "telemetry_enabled"]


class RunObserver:
    """The scheduler's observer; this base class observes nothing."""

    async def open(self, store: Store, scheduler_id: str) -> None:
        """The scheduler ``scheduler_id`` has started on ``store``."""

    def claimed(self, claims: Sequence[Claim], started_ns: int, ended_ns: int) -> None:
        """One claim statement, which ran from ``started_ns`` to ``ended_ns`` (wall clock,
        nanoseconds since the epoch), claimed ``claims`` (never empty)."""

    def finished(self, run: Run) -> None:
        """``run`` ended and its end is recorded (``run`` is the recorded run)."""

    def unrecorded(self, run: Run, reason: str) -> None:
        """``run``'s end could not be recorded; its lease will lapse."""

    async def close(self) -> None:
        """The scheduler stopped: send what is left."""


def telemetry_enabled(config: TelemetryConfig) -> bool:
    """Whether ``[telemetry]`` asks for export (``enabled`` and an exporting provider)."""
    return config.enabled and config.provider == "otel"


def observer_for(project: Project) -> RunObserver:
    """The observer ``project``'s ``[telemetry]`` asks for (the no-op one when off)."""
    config = project.config.telemetry
    if not telemetry_enabled(config):
        return RunObserver()
    # Imported only here: a project without telemetry never loads the SDK.
    from corral.telemetry._otel import OtelObserver

    return OtelObserver(config, project)
