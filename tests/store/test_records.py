"""Records and the public surface of corral.store (no database needed)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

import corral.store
from corral.store import Run, RunState, TriggerKind
from corral.store._base import mask_url
from corral.store._sqlfiles import parse_named_queries

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_row(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": "triage-0123456789ab",
        "agent": "triage",
        "trigger_kind": "webhook",
        "trigger_detail": {"issue": 1},
        "prompt": None,
        "state": "running",
        "parent_run_id": None,
        "created_at": T0,
        "started_at": T0 + timedelta(seconds=1),
        "ended_at": None,
        "exit_code": None,
        "error": None,
        "pid": 7,
        "host": "h",
        "status_text": None,
        "item_id": None,
        "fence": None,
        "attempt": None,
        "owner": None,
        "rerun_requested": 0,
        "kill_requested_at": None,
        "status_at": None,
        "return_value": None,
        "exit_requested": None,
        "input_tokens": None,
        "output_tokens": None,
        "cache_read_tokens": None,
        "cache_write_tokens": None,
        "cost_usd": None,
        "budget": None,
        "bundle": None,
        "runner_id": None,
    }
    return row | overrides


def test_public_surface_is_pinned() -> None:
    assert sorted(corral.store.__all__) == [
        "AgentResult",
        "AgentSpec",
        "AgentState",
        "Anomaly",
        "AnomalyKind",
        "AppliedMigration",
        "AuditEntry",
        "BucketLimits",
        "Bundle",
        "BundleHead",
        "Call",
        "CallRefusal",
        "CallState",
        "Claim",
        "Deadlock",
        "EnqueueResult",
        "FLEET",
        "FinalizeResult",
        "FleetDemand",
        "FleetMember",
        "FleetRollout",
        "FleetToken",
        "ItemState",
        "JoinRefusal",
        "Lock",
        "LockGrant",
        "LockHeld",
        "LockWaiter",
        "MigrationError",
        "MigrationStatus",
        "NewItem",
        "NewReceipt",
        "NewRun",
        "NewRunner",
        "OperatorToken",
        "PendingMigration",
        "PoolDecision",
        "PoolSnapshot",
        "PoolState",
        "ProjectState",
        "ProviderBucket",
        "Published",
        "QueueItem",
        "RECEIPT_BODY_CAP",
        "Receipt",
        "ReceiptOutcome",
        "Recovered",
        "Rollout",
        "Run",
        "RunCursor",
        "RunFilter",
        "RunPage",
        "RunState",
        "Runner",
        "RunnerState",
        "SchedulerInfo",
        "SchedulerState",
        "StaleFence",
        "Store",
        "StoreError",
        "StoreUnavailable",
        "StreamTick",
        "Transaction",
        "TransitionRefused",
        "TriggerKind",
        "UsageTotal",
        "new_receipt_id",
        "open_store",
        "stream_prefix",
    ]


def test_enum_values_are_the_documented_ones() -> None:
    assert [s.value for s in RunState] == [
        "queued",
        "starting",
        "running",
        "succeeded",
        "failed",
        "timed_out",
        "killed",
        "lost",
    ]
    assert [s for s in RunState if s.is_terminal] == [
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.TIMED_OUT,
        RunState.KILLED,
        RunState.LOST,
    ]
    assert [t.value for t in TriggerKind] == ["schedule", "manual", "webhook", "call"]


def test_run_from_row_evolve_and_duration() -> None:
    run = Run.from_row(make_row())
    assert run.trigger is TriggerKind.WEBHOOK and run.state is RunState.RUNNING
    assert run.duration is None
    ended = run.evolve(state=RunState.SUCCEEDED, ended_at=T0 + timedelta(seconds=61))
    assert ended.duration == timedelta(seconds=60)
    assert run.state is RunState.RUNNING
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.state = RunState.LOST  # type: ignore[misc]


def test_run_from_row_rejects_unknown_states() -> None:
    with pytest.raises(ValueError, match="'sleeping'"):
        Run.from_row(make_row(state="sleeping"))


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:pw@h:5432/db?x=1", "postgresql://u:***@h:5432/db?x=1"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgres://:p%40ss@h/db", "postgres://:***@h/db"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_parse_named_queries() -> None:
    text = "-- header\n-- name: one\nSELECT 1\n\n-- name: two\n-- a comment\nSELECT 2;\n"
    assert parse_named_queries(text) == {"one": "SELECT 1", "two": "-- a comment\nSELECT 2;"}
    with pytest.raises(ValueError, match="'one' is defined twice"):
        parse_named_queries("-- name: one\nSELECT 1\n-- name: one\nSELECT 2")
