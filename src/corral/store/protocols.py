"""The store's concerns, each a protocol: what a caller that needs one concern may call.

``Store`` is one object assembled from parts (``_queue``, ``_leases``, ``_locks`` …, see
``corral.store._base``); this module says which of its public methods belong to which
concern, so that a caller can ask for only what it uses and a reader can see the shape:

    QueueStore     intake and claims: enqueue (bounds, dedupe, rejections), claim, items
    LeaseStore     a claimed item's life: reserve, renew, release, finalise, recover,
                   kill and rerun requests (the scheduler's supervisor)
    RunStore       run records and what a run says about itself (status, exit, return
                   value, its secret), history and its retention
    LockStore      resource locks: try-lock, waits, heartbeat, release, operator release
    CallStore      agent-to-agent calls and waits on them
    WebhookStore   webhook receipts: a delivery recorded with the items it queued
    UsageStore     tokens and dollars per run and day, and the daily caps
    ControlStore   the project's live control state (agents, scale, pause, enable), the
                   scheduler registry, and the operators' audit log
    TokenStore     operator tokens, kept by their hash
    FleetStore     the fleet's membership: activation tokens, runners and their
                   liveness, anomalies
    BundleStore    pushed project bundles by content hash, and the current one
    TaskStore      the task board: tasks, dependencies, labels, fenced claims, history
    MetricsStore   what /metrics reads since its previous scrape
    ChangeStore    wake-ups: wait until a topic may have changed
    PoolStore      agents' pools: the autoscaler's size, its decider's lease, its log
    FleetScaleStore  the runner fleet's autoscaler: its lease, the runners it started,
                   what it reads, its decisions (in the pools' decision log)
    ProviderStore  model providers' shared rate-limit buckets, their throttles and turns
    RolloutStore   bundle rollouts: canary bundles, their assignment and their end
    FleetRolloutStore  fleet upgrades: one rollout row advanced by compare and set
    StoreLifecycle opening, closing, migrating

Two more protocols describe what the concern parts are written over and how they reach
one another; no caller outside the store should need them:

    StoreBackend      transactions, named statements, value encoding, the clock, rows to
                      records, the project lock and the in-transaction audit entry
    TransactionHooks  steps one part runs inside another part's transaction: a run's
                      locks released when it ends (locks, called by leases and runs),
                      the wait-for graph searched (locks, called by calls), a call
                      started, re-queued, failed or settled with its callee (calls,
                      called by queue and leases), a claim's cost cap (usage, called by
                      queue). These are the seams between parts: each is listed here,
                      once, with its signature, instead of as an abstract method
                      declared in one part and implemented in another.

Every public method of ``Store`` belongs to exactly one of these protocols
(tests/store/test_protocols.py checks that, and that both backends satisfy each with
the same signatures), so a new store method has to be placed in one. The protocols are
``runtime_checkable``; their annotations are real imports, so ``inspect.signature(...,
eval_str=True)`` resolves them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, runtime_checkable

from corral.store._core import Params, Row, Transaction
from corral.store._fleet_rollouts import FleetRollout
from corral.store._fleet_runs import Holding, Renewal
from corral.store._fleetscale import FleetDemand, FleetMember
from corral.store._locks import WANT_SECONDS
from corral.store._notify import Changes
from corral.store._queue import Overflow
from corral.store._rollouts import Rollout
from corral.store._stream import StreamTick
from corral.store.records import (
    AgentSpec,
    AgentState,
    Anomaly,
    AnomalyKind,
    AuditEntry,
    BucketLimits,
    Bundle,
    BundleHead,
    Call,
    CallRefusal,
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
    UsageTotal,
)
from corral.tasks._model import Task, TaskEvent, TaskSpec, TaskStatus

__all__ = [
    "CONCERNS",
    "BundleStore",
    "CallStore",
    "ChangeStore",
    "ControlStore",
    "FleetRolloutStore",
    "FleetScaleStore",
    "FleetStore",
    "LeaseStore",
    "LockStore",
    "MetricsStore",
    "PoolStore",
    "ProviderStore",
    "QueueStore",
    "RolloutStore",
    "RunStore",
    "StoreBackend",
    "StoreLifecycle",
    "TokenStore",
    "TransactionHooks",
    "UsageStore",
    "WebhookStore",
]

_T = TypeVar("_T")


@runtime_checkable
class QueueStore(Protocol):
    """Intake and claims (``_queue``): one bounded FIFO per agent."""

    async def enqueue(
        self, new: NewItem, *, overflow: Overflow = "drop_oldest"
    ) -> EnqueueResult: ...

    async def enqueue_request(
        self,
        new: NewItem,
        *,
        actor: str,
        key: str | None = None,
        action: str = "run.trigger",
        overflow: Overflow = "drop_oldest",
    ) -> EnqueueResult: ...

    async def claim(
        self,
        owner: str,
        *,
        lease_seconds: float,
        limit: int,
        item_id: int | None = None,
        bundle: str | None = None,
        secret_hashes: Sequence[str] = (),
        agents: Collection[str] | None = None,
        runner: bool = False,
    ) -> list[Claim]: ...

    async def get_item(self, item_id: int) -> QueueItem | None: ...

    async def list_items(
        self,
        *,
        agent: str | None = None,
        states: Collection[ItemState] | None = None,
        limit: int = 100,
    ) -> list[QueueItem]: ...

    async def prune_items(self, older_than: datetime) -> int: ...


@runtime_checkable
class LeaseStore(Protocol):
    """A claimed item's life under its lease (``_leases``): the supervisor's concern."""

    async def reserve(self, item_id: int, owner: str, *, seconds: float) -> QueueItem | None: ...

    async def enqueue_reserved(
        self, new: NewItem, *, owner: str, seconds: float
    ) -> EnqueueResult: ...

    async def renew_leases(
        self, owner: str, *, lease_seconds: float, run_ids: Collection[str] | None = None
    ) -> int: ...

    async def release(self, run_id: str, *, fence: int, reason: str) -> Run: ...

    async def release_owner(self, owner: str, *, reason: str) -> list[Recovered]: ...

    async def recover_lapsed(self) -> list[Recovered]: ...

    async def finalize(
        self,
        run_id: str,
        *,
        fence: int,
        state: RunState,
        exit_code: int | None,
        error: str | None = None,
        reserve_rerun_for: str | None = None,
    ) -> FinalizeResult: ...

    async def kill_requests(self, owner: str) -> list[Run]: ...

    async def request_kill(self, run_id: str) -> Run: ...

    async def request_rerun(self, run_id: str) -> Run: ...


@runtime_checkable
class RunStore(Protocol):
    """Run records (``_base``) and what a run says about itself (``_calls``: status,
    exit, return value; its secret's hash), history and its retention."""

    async def create_run(self, new: NewRun) -> Run: ...

    async def mark_run_running(self, run_id: str, *, pid: int | None, host: str | None) -> Run: ...

    async def finish_run(
        self, run_id: str, *, state: RunState, exit_code: int | None, error: str | None = None
    ) -> Run: ...

    async def get_run(self, run_id: str) -> Run | None: ...

    async def list_runs(
        self,
        *,
        agent: str | None = None,
        limit: int = 50,
        states: Collection[RunState] | None = None,
        since: datetime | None = None,
    ) -> list[Run]: ...

    async def page_runs(
        self, where: RunFilter, *, before: RunCursor | None = None, limit: int = 50
    ) -> RunPage: ...

    async def list_child_runs(self, run_id: str, *, limit: int = 100) -> list[Run]: ...

    async def count_runs(self, *, agent: str | None = None) -> int: ...

    async def set_run_status(self, run_id: str, text: str) -> None: ...

    async def prune_runs(self, older_than: datetime) -> int: ...

    async def set_run_secret(self, run_id: str, secret_hash: str) -> Run: ...

    async def run_for_secret(self, secret_hash: str) -> Run | None: ...

    async def set_status(self, run_id: str, text: str) -> Run: ...

    async def request_exit(self, run_id: str, code: int) -> Run: ...

    async def set_return_value(self, run_id: str, value: str) -> Run: ...


@runtime_checkable
class LockStore(Protocol):
    """Resource locks (``_locks``): at most one unexpired holder per key, fenced."""

    async def acquire_lock(
        self, key: str, run_id: str, *, ttl_seconds: float, want_seconds: float = WANT_SECONDS
    ) -> LockGrant | LockHeld | Deadlock: ...

    async def wait_for_lock(
        self, key: str, run_id: str, *, ttl_seconds: float, wait_seconds: float
    ) -> LockGrant | LockHeld | Deadlock: ...

    async def cancel_lock_wait(self, key: str, run_id: str) -> bool: ...

    async def release_lock(self, key: str, run_id: str) -> bool: ...

    async def heartbeat_lock(
        self, key: str, run_id: str, *, ttl_seconds: float
    ) -> datetime | None: ...

    async def get_lock(self, key: str) -> Lock | None: ...

    async def list_locks(self) -> list[Lock]: ...

    async def list_lock_waiters(self) -> list[LockWaiter]: ...

    async def list_lock_wants(self) -> list[LockWaiter]: ...

    async def release_run_locks(self, run_id: str) -> int: ...

    async def force_release_lock(self, key: str, *, actor: str = "operator") -> Lock | None: ...


@runtime_checkable
class CallStore(Protocol):
    """Agent-to-agent calls (``_calls``) and the caller's waits on them."""

    async def create_call(
        self, caller_run_id: str, target_agent: str, context: str, *, max_depth: int
    ) -> Call | CallRefusal: ...

    async def get_call(self, call_id: str, *, caller_run_id: str) -> Call | None: ...

    async def list_calls(self, *, limit: int = 100) -> list[Call]: ...

    async def calls_of_run(
        self, run_id: str, *, limit: int = 100
    ) -> tuple[list[Call], Call | None]: ...

    async def wait_on_calls(
        self, caller_run_id: str, call_ids: Collection[str], *, waiting: bool
    ) -> Deadlock | None: ...


@runtime_checkable
class WebhookStore(Protocol):
    """Webhook receipts (``_webhooks``): a delivery and the items it queued, at once."""

    async def record_delivery(
        self, receipt: NewReceipt, items: Sequence[NewItem] = ()
    ) -> tuple[Receipt, list[EnqueueResult]]: ...

    async def get_receipt(self, receipt_id: str) -> Receipt | None: ...

    async def list_receipts(
        self,
        *,
        source: str | None = None,
        outcome: ReceiptOutcome | str | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[Receipt]: ...

    async def prune_receipts(self, older_than: datetime) -> int: ...


@runtime_checkable
class UsageStore(Protocol):
    """Tokens and dollars (``_usage``) and the daily caps they are held to."""

    async def record_usage(
        self,
        run_id: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int,
        cache_write_tokens: int,
        cost_usd: float | None,
        budget: str | None = None,
    ) -> Run | None: ...

    async def spent_today(self, agent: str | None = None) -> float: ...

    async def usage_by_day(
        self, *, days: int = 7, agent: str | None = None
    ) -> list[UsageTotal]: ...

    async def daily_cap_refusal(self, agent: str) -> str | None: ...


@runtime_checkable
class ControlStore(Protocol):
    """Live control state (``_control``: agents, the project row, the scheduler
    registry) and the operators' audit log (``_calls``)."""

    async def sync_project(
        self,
        specs: Sequence[AgentSpec],
        *,
        scale_cap: int | None,
        max_attempts: int,
        max_reruns: int,
        daily_cost_cap: float | None = None,
    ) -> None: ...

    async def project_state(self) -> ProjectState: ...

    async def agent_states(self) -> list[AgentState]: ...

    async def set_agent_scale(self, agent: str, scale: int) -> AgentState: ...

    async def set_enabled(self, agent: str, enabled: bool) -> AgentState: ...

    async def set_paused(self, agent: str | None, paused: bool) -> None: ...

    async def register_scheduler(
        self, *, host: str, pid: int, gateway_url: str | None
    ) -> SchedulerInfo: ...

    async def list_schedulers(
        self, *, live_only: bool = False, heartbeat_within: float = 300.0
    ) -> list[SchedulerInfo]: ...

    async def set_scheduler_state(self, scheduler_id: str, state: SchedulerState | str) -> None: ...

    async def audit(
        self, actor: str, action: str, subject: str, detail: dict[str, Any] | None = None
    ) -> None: ...

    async def list_audit(self, *, limit: int = 100) -> list[AuditEntry]: ...


@runtime_checkable
class TokenStore(Protocol):
    """Operator tokens (``_tokens``), kept by their SHA-256 only."""

    async def create_operator_token(
        self, name: str, token_hash: str, *, actor: str
    ) -> OperatorToken: ...

    async def list_operator_tokens(self) -> list[OperatorToken]: ...

    async def revoke_operator_token(self, name: str, *, actor: str) -> OperatorToken | None: ...

    async def use_operator_token(
        self, token_hash: str, *, touch_every: float = 60.0
    ) -> OperatorToken | None: ...

    async def count_live_operator_tokens(self) -> int: ...


@runtime_checkable
class FleetStore(Protocol):
    """The fleet's membership (``_fleet``): activation tokens and runner credentials kept
    by their SHA-256, runners and their liveness, anomalies."""

    async def create_fleet_token(
        self,
        token_hash: str,
        *,
        ttl: timedelta,
        labels: tuple[str, ...] = (),
        note: str | None = None,
        actor: str,
    ) -> FleetToken: ...

    async def list_fleet_tokens(self) -> list[FleetToken]: ...

    async def revoke_fleet_token(self, token_id: str, *, actor: str) -> FleetToken | None: ...

    async def redeem_fleet_token(
        self,
        token_hash: str,
        credential_hash: str,
        runner: NewRunner,
        *,
        max_runners: int | None = None,
    ) -> Runner | JoinRefusal: ...

    async def runner_by_credential(self, credential_hash: str) -> Runner | None: ...

    async def get_runner(self, runner_id: str) -> Runner | None: ...

    async def list_runners(self) -> list[Runner]: ...

    async def runner_heartbeat(self, runner_id: str, *, version: str) -> Runner | None: ...

    async def heartbeat_by_credential(
        self, credential_hash: str, *, version: str
    ) -> Runner | None: ...

    async def set_runner_state(
        self, runner_id: str, state: RunnerState, *, actor: str
    ) -> tuple[Runner | None, bool]: ...

    async def mark_offline_runners(self, offline_after: float) -> list[Runner]: ...

    async def fleet_throughput(self, since: datetime) -> list[Row]: ...

    async def fleet_throughput_hourly(self, since: datetime) -> list[Row]: ...

    async def live_bundles(self) -> list[Row]: ...

    async def record_anomaly(
        self, kind: AnomalyKind, subject: str, evidence: dict[str, Any] | None = None
    ) -> Anomaly: ...

    async def record_episode(
        self,
        kind: AnomalyKind,
        subject: str,
        evidence: dict[str, Any],
        *,
        same: str | None = None,
    ) -> tuple[Anomaly, bool]: ...

    async def add_anomaly_evidence(
        self, kind: AnomalyKind, subject: str, run_id: str, extra: dict[str, Any]
    ) -> Anomaly | None: ...

    async def list_anomalies(
        self, *, include_resolved: bool = False, limit: int = 100
    ) -> list[Anomaly]: ...

    async def resolve_anomaly(
        self, anomaly_id: int, *, note: str, actor: str
    ) -> tuple[Anomaly | None, bool]: ...

    async def count_open_anomalies(self) -> dict[str, int]: ...

    async def runner_holdings(self, runner_id: str) -> dict[str, Holding]: ...

    async def renew_runner_runs(
        self, runner_id: str, running: Mapping[str, int], *, lease_seconds: float
    ) -> Renewal: ...

    async def runner_holds(self, runner_id: str, run_id: str, fence: int | None) -> bool: ...


@runtime_checkable
class BundleStore(Protocol):
    """Project bundles (``_bundles``): pushed projects by content hash, the current one."""

    async def publish_bundle(
        self,
        hash_: str,
        data: bytes,
        manifest: dict[str, Any],
        *,
        actor: str,
        note: str | None = None,
    ) -> Published: ...

    async def set_bundle_head(self, hash_: str, *, actor: str) -> BundleHead: ...

    async def bundle_head(self) -> BundleHead | None: ...

    async def get_bundle(self, hash_: str) -> Bundle | None: ...

    async def bundle_data(self, hash_: str) -> bytes | None: ...

    async def list_bundles(self, *, limit: int = 50) -> list[Bundle]: ...

    async def find_bundles(self, prefix: str) -> list[str]: ...


@runtime_checkable
class TaskStore(Protocol):
    """The task board (``_tasks``): tasks with priorities, dependencies and labels,
    claimed with a fencing token and a heartbeat lease."""

    async def add_tasks(
        self, specs: Sequence[TaskSpec], *, actor: str | None = None
    ) -> list[Task]: ...

    async def import_tasks(
        self, items: Sequence[tuple[TaskSpec, TaskStatus]], *, actor: str | None = None
    ) -> list[Task]: ...

    async def edit_task(
        self, project: str, task_id: str, *, actor: str | None = None, **changes: Any
    ) -> Task: ...

    async def cancel_task(self, project: str, task_id: str, actor: str | None = None) -> Task: ...

    async def claim_task(
        self,
        *,
        claimer: str,
        run_id: str | None = None,
        project: str | None = None,
        labels: Sequence[str] = (),
        lease: float = 600.0,
        min_priority: int = 1,
    ) -> Task | None: ...

    async def heartbeat_task(
        self, project: str, task_id: str, token: int, *, lease: float | None = None
    ) -> Task: ...

    async def stream_tasks(
        self,
        agent: str,
        trigger: int,
        *,
        project: str,
        labels: Sequence[str] = (),
        min_priority: int = 1,
        scale: int,
        detail: dict[str, object] | None = None,
    ) -> StreamTick: ...

    async def finish_task(
        self,
        project: str,
        task_id: str,
        token: int,
        status: TaskStatus | str,
        result: str | None = None,
    ) -> Task: ...

    async def release_task(self, project: str, task_id: str, token: int) -> Task: ...

    async def release_stalled_tasks(self) -> list[Task]: ...

    async def release_tasks_of_run(self, run_id: str) -> list[Task]: ...

    async def claimed_tasks_of_run(self, run_id: str, task_id: str) -> list[Task]: ...

    async def get_task(self, project: str, task_id: str) -> Task | None: ...

    async def list_tasks(
        self,
        *,
        project: str | None = None,
        status: TaskStatus | str | None = None,
        label: str | None = None,
        limit: int = 200,
        after: tuple[str, str] | None = None,
    ) -> list[Task]: ...

    async def find_tasks(self, task_id: str) -> list[Task]: ...

    async def task_history(self, project: str, task_id: str) -> list[TaskEvent]: ...

    async def task_dependents(self, project: str, task_id: str) -> list[str]: ...


@runtime_checkable
class MetricsStore(Protocol):
    """What /metrics reads (``_metrics``): what changed since the previous scrape."""

    async def runs_moved_since(self, since: datetime) -> list[tuple[Run, datetime | None]]: ...

    async def items_set_aside_since(self, since: datetime) -> list[QueueItem]: ...


@runtime_checkable
class ChangeStore(Protocol):
    """Wake-ups (``_notify``): wait until a topic may have changed, then look again."""

    @property
    def changes(self) -> Changes: ...

    async def wait_for_change(self, topics: list[str], timeout: float) -> bool: ...


@runtime_checkable
class PoolStore(Protocol):
    """Agents' pools (``_pools``): the decided size, its decider's lease, the decisions."""

    async def take_pool_lease(
        self, agent: str, owner: str, *, lease_seconds: float
    ) -> PoolState | None: ...

    async def observe_pool(self, agent: str, since: datetime, until: datetime) -> PoolSnapshot: ...

    async def set_pool_size(
        self,
        agent: str,
        owner: str,
        *,
        size: int,
        previous: int,
        policy: str,
        reason: str,
        inputs: Mapping[str, Any],
        record: bool,
    ) -> int | None: ...

    async def release_pool_leases(self, owner: str) -> int: ...

    async def prune_fleet_members(self, older_than: datetime) -> int: ...

    async def pool_states(self) -> list[PoolState]: ...

    async def pool_decisions(
        self,
        agent: str | None = None,
        *,
        limit: int = 50,
        before: int | None = None,
        since: datetime | None = None,
    ) -> list[PoolDecision]: ...

    async def pool_decision_counts(self) -> dict[tuple[str, str], int]: ...

    async def prune_pool_decisions(self, older_than: datetime) -> int: ...


@runtime_checkable
class FleetScaleStore(Protocol):
    """The runner fleet's autoscaler (``_fleetscale``): its lease, its members, its
    readings and its decisions (recorded in the pools' decision log under ``:fleet``)."""

    async def take_fleet_scaler_lease(self, owner: str, *, lease_seconds: float) -> bool: ...

    async def release_fleet_scaler_lease(self, owner: str) -> int: ...

    async def fleet_scaler_owner(self) -> str | None: ...

    async def fleet_demand(self) -> FleetDemand: ...

    async def add_fleet_member(
        self, name: str, *, provider: str, host: str, token_id: str | None
    ) -> FleetMember: ...

    async def update_fleet_member(
        self,
        name: str,
        *,
        state: str,
        handle: str | None = None,
        runner_id: str | None = None,
        detail: str | None = None,
    ) -> None: ...

    async def fleet_members(self, *, live_only: bool = False) -> list[FleetMember]: ...

    async def record_fleet_decision(
        self,
        owner: str,
        *,
        size: int,
        desired: int,
        policy: str,
        reason: str,
        inputs: Mapping[str, Any],
    ) -> None: ...


@runtime_checkable
class ProviderStore(Protocol):
    """Model providers' rate limits (``_providers``): one shared bucket per (provider,
    key), its permits, tokens, throttles and fair turns between agents."""

    async def take_provider_permit(
        self, bucket: str, provider: str, waiter: str, agent: str, limits: BucketLimits
    ) -> float: ...

    async def charge_provider_tokens(
        self, bucket: str, provider: str, tokens: int, limits: BucketLimits
    ) -> None: ...

    async def throttle_provider(
        self, bucket: str, provider: str, retry_after: float | None, limits: BucketLimits
    ) -> float: ...

    async def provider_buckets(
        self, limits: Mapping[str, BucketLimits] | None = None
    ) -> list[ProviderBucket]: ...

    async def provider_shares(self, bucket: str) -> dict[str, int]: ...


@runtime_checkable
class RolloutStore(Protocol):
    """Bundle rollouts (``_rollouts``): a canary bundle run by a share of its agents' runs,
    judged and ended by one statement."""

    async def publish_canary(
        self,
        hash_: str,
        data: bytes,
        manifest: dict[str, Any],
        *,
        share: float,
        rule: dict[str, Any],
        actor: str,
        note: str | None = None,
    ) -> Rollout: ...

    async def running_rollout(self) -> Rollout | None: ...

    async def get_rollout(self, rollout_id: int) -> Rollout | None: ...

    async def list_rollouts(self, *, limit: int = 20) -> list[Rollout]: ...

    async def assign_canary(self, rollout_id: int, run_ids: Collection[str]) -> set[str]: ...

    async def end_rollout(
        self, rollout_id: int, state: str, *, actor: str, reason: str
    ) -> Rollout | None: ...

    async def rollout_runs(self, rollout: Rollout) -> list[Row]: ...

    async def anomalies_since(self, since: datetime) -> Sequence[Row]: ...


@runtime_checkable
class FleetRolloutStore(Protocol):
    """Fleet upgrades (``_fleet_rollouts``): `corral fleet upgrade` as one row advanced by
    compare and set on its revision."""

    async def create_fleet_rollout(
        self,
        *,
        target: str,
        channel: str,
        canary: int,
        batch_share: float,
        watch_seconds: float,
        source: dict[str, Any],
        detail: dict[str, Any],
        actor: str,
    ) -> FleetRollout: ...

    async def latest_fleet_rollout(self, *, max_age: float = 0.0) -> FleetRollout | None: ...

    async def get_fleet_rollout(self, rollout_id: str) -> FleetRollout | None: ...

    async def update_fleet_rollout(
        self, rollout: FleetRollout, *, state: str, detail: dict[str, Any]
    ) -> FleetRollout | None: ...

    async def runs_ended_by_runner(self, since: datetime) -> list[Row]: ...

    async def store_fleet_wheel(
        self, data: bytes, *, name: str, version: str, actor: str
    ) -> tuple[str, bool]: ...

    async def fleet_wheel(self, sha256: str) -> bytes | None: ...


@runtime_checkable
class StoreLifecycle(Protocol):
    """Opening, closing and migrating a store (``_base``)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def migrate(self, *, install_schema: bool = True) -> list[int]: ...

    async def migration_status(self) -> MigrationStatus: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class StoreBackend(Protocol):
    """What the concern parts are written over (``_core`` and a backend)."""

    def transaction(self, *, write: bool = True) -> AbstractAsyncContextManager[Transaction]: ...

    def pipelined_transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    async def atomic(
        self, body: Callable[[Transaction], Awaitable[_T]], *, write: bool = True
    ) -> _T: ...

    async def statement(self, name: str, params: Params | None = None) -> list[Row]: ...

    async def statements(self, steps: Sequence[tuple[str, Params]]) -> list[Row]: ...

    def encode_time(self, value: datetime) -> Any: ...

    def decode_time(self, value: Any) -> datetime: ...

    def encode_json(self, value: dict[str, Any] | list[Any] | None) -> Any: ...

    def decode_json(self, value: Any) -> dict[str, Any] | None: ...

    def encode_list(self, values: Collection[str]) -> Any: ...

    def encode_states(self, states: Collection[str]) -> Any: ...

    def now(self) -> datetime: ...

    def run_from_row(self, row: Row) -> Run: ...

    def item_from_row(self, row: Row) -> QueueItem: ...

    def scheduler_from_row(self, row: Row) -> SchedulerInfo: ...

    def receipt_from_row(self, row: Row) -> Receipt: ...

    async def lock_project(self, tx: Transaction) -> ProjectState: ...

    async def audit_in(
        self,
        tx: Transaction,
        *,
        actor: str,
        action: str,
        subject: str,
        detail: dict[str, Any] | None = None,
    ) -> None: ...


@runtime_checkable
class TransactionHooks(Protocol):
    """Steps one part runs inside another part's transaction (the seams between parts)."""

    async def release_run_locks_in(
        self, tx: Transaction, run_id: str, notices: list[str] | None = None
    ) -> int:
        """Locks: release every lock ``run_id`` holds (each to its first waiter) and drop
        its wait edges; the topics to wake after the commit are added to ``notices``.
        Called when a run ends (leases ``finalize``, recovery, ``finish_run``)."""
        ...

    async def release_run_tasks_in(self, tx: Transaction, run_id: str) -> list[Task]:
        """Tasks: a run ended; its task claims go back to open (leases, runs)."""
        ...

    async def find_cycle(
        self, tx: Transaction, waiter: str, via: str, holder: str
    ) -> Deadlock | None:
        """Locks: the wait-for cycle that ``waiter`` waiting on ``holder`` (through
        ``via``: a lock key or a call) would close. Called by locks and by calls."""
        ...

    async def start_calls_in(self, tx: Transaction, item: QueueItem, run_id: str) -> None:
        """Calls: the call behind a claimed call item now runs as ``run_id`` (queue)."""
        ...

    async def requeue_calls_in(self, tx: Transaction, item: QueueItem) -> None:
        """Calls: the call behind a re-delivered item waits again (leases recovery)."""
        ...

    async def fail_calls_in(self, tx: Transaction, item: QueueItem, error: str) -> None:
        """Calls: the call behind an item that will never run fails with ``error``
        (queue: dropped or rejected; leases: out of attempts)."""
        ...

    async def settle_calls_in(
        self, tx: Transaction, run: Run, notices: list[str] | None = None
    ) -> None:
        """Calls: a called run ended; answer its caller (leases ``finalize``); the call's
        topic is added to ``notices``."""
        ...

    async def cost_cap_refusal(
        self, tx: Transaction, project: ProjectState, agent: AgentState
    ) -> str | None:
        """Usage: why a claim of ``agent`` is refused by the daily cost caps (queue)."""
        ...


#: Every protocol, by the name the docs use; each public ``Store`` method is in one.
CONCERNS: tuple[type, ...] = (
    QueueStore,
    LeaseStore,
    RunStore,
    LockStore,
    CallStore,
    WebhookStore,
    UsageStore,
    ControlStore,
    TokenStore,
    FleetStore,
    BundleStore,
    TaskStore,
    MetricsStore,
    ChangeStore,
    PoolStore,
    FleetScaleStore,
    ProviderStore,
    RolloutStore,
    FleetRolloutStore,
    StoreLifecycle,
    StoreBackend,
    TransactionHooks,
)
