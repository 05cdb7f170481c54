"""corral.store: durable state behind one async interface, SQLite or PostgreSQL.

    store = await open_store("sqlite:////home/me/project/.corral/state.db")
    async with store:
        run = await store.create_run(NewRun(agent="triage", trigger=TriggerKind.MANUAL))

The URL scheme picks the backend: ``sqlite:///<absolute path>`` or ``postgresql://…``
(``postgres://`` also accepted).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from corral.errors import MigrationError, StoreError, StoreUnavailable
from corral.store._base import StaleFence, Store, Transaction, mask_url
from corral.store._fleet import TransitionRefused
from corral.store._fleet_rollouts import FleetRollout
from corral.store._fleetscale import FLEET, FleetDemand, FleetMember
from corral.store._rollouts import Rollout
from corral.store._stream import StreamTick, stream_prefix
from corral.store._webhooks import RECEIPT_BODY_CAP, new_receipt_id
from corral.store.records import (
    AgentResult,
    AgentSpec,
    AgentState,
    Anomaly,
    AnomalyKind,
    AppliedMigration,
    AuditEntry,
    BucketLimits,
    Bundle,
    BundleHead,
    Call,
    CallRefusal,
    CallState,
    Claim,
    Deadlock,
    EnqueueResult,
    FinalizeResult,
    FleetToken,
    ItemState,
    JoinRefusal,
    Lock,
    LockGrant,
    LockHeld,
    LockWaiter,
    MigrationStatus,
    NewItem,
    NewReceipt,
    NewRun,
    NewRunner,
    OperatorToken,
    PendingMigration,
    PoolDecision,
    PoolSnapshot,
    PoolState,
    ProjectState,
    ProviderBucket,
    Published,
    QueueItem,
    Receipt,
    ReceiptOutcome,
    Recovered,
    Run,
    RunCursor,
    RunFilter,
    Runner,
    RunnerState,
    RunPage,
    RunState,
    SchedulerInfo,
    SchedulerState,
    TriggerKind,
    UsageTotal,
)

__all__ = [
    "FLEET",
    "RECEIPT_BODY_CAP",
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


async def open_store(url: str, *, migrate: bool = True) -> Store:
    """Open the store at ``url``; with ``migrate`` bring its schema up to date first.

    Raises StoreUnavailable when it cannot be opened or reached, MigrationError when its
    schema cannot be brought up to date (or is newer than this corral). ``migrate=False``
    opens without reading or changing the schema (for ``migration_status`` tooling).
    """
    store = _store_for(url)
    await store.open()
    if migrate:
        try:
            await store.migrate()
        except BaseException:
            await store.close()
            raise
    return store


def _store_for(url: str) -> Store:
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        from corral.store._sqlite import SqliteStore

        return SqliteStore(url)
    if scheme in ("postgresql", "postgres"):
        from corral.store._postgres import PostgresStore

        return PostgresStore(url)
    raise StoreUnavailable(
        f"cannot open the store {mask_url(url)}: unknown scheme {scheme!r}; "
        "use sqlite:///<absolute path> or postgresql://user@host/database"
    )
