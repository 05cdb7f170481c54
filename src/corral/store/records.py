"""Frozen records the store hands out, and the enums for their states.

Records are plain values: build them with ``from_row()`` from a row whose values the
backend already decoded to Python types (aware UTC datetimes, dicts for JSON), and
derive a changed copy with ``evolve()``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Self

__all__ = [
    "AgentResult",
    "AgentSpec",
    "AgentState",
    "Anomaly",
    "AnomalyKind",
    "AppliedMigration",
    "BucketLimits",
    "Bundle",
    "BundleHead",
    "Claim",
    "EnqueueResult",
    "FinalizeResult",
    "FleetToken",
    "ItemState",
    "JoinRefusal",
    "Lock",
    "LockGrant",
    "LockHeld",
    "MigrationStatus",
    "NewItem",
    "NewReceipt",
    "NewRun",
    "NewRunner",
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
    "Run",
    "RunState",
    "Runner",
    "RunnerState",
    "SchedulerInfo",
    "SchedulerState",
    "TriggerKind",
    "UsageTotal",
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
    item_id: int | None
    fence: int | None
    attempt: int | None
    owner: str | None
    rerun_requested: bool
    kill_requested_at: datetime | None
    #: When ``status_text`` was last set (``al-status``).
    status_at: datetime | None = None
    #: The value the run returned with ``al-return`` (its call's answer).
    return_value: str | None = None
    #: The exit code the run asked to end with (``al-exit``), once it asked.
    exit_requested: int | None = None
    #: What a built-in harness run has used so far (None: not an LLM run, or unknown).
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    #: Its cost in US dollars, from the model price table.
    cost_usd: float | None = None
    #: The budget that stopped it ("turns", "tokens", "cost", "wall clock", "daily cost").
    budget: str | None = None
    #: The project bundle it ran (``sha256:…``), when its scheduler ran one (``corral push``).
    bundle: str | None = None
    #: The fleet's runner that ran it (``rnr-…``), or None when a control plane did.
    runner_id: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        """Build a run from a decoded ``corral_runs`` row (column ``trigger_kind``)."""
        values = _fields_from(cls, row)
        values["state"] = RunState(values["state"])
        values["rerun_requested"] = bool(values["rerun_requested"])
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

    @property
    def outcome(self) -> str:
        """The state, except that a run a budget stopped reads ``over_budget``."""
        return (
            "over_budget"
            if self.budget is not None and self.state.is_terminal
            else self.state.value
        )

    @property
    def tokens(self) -> int | None:
        """Every token the run's model calls used, or None when not known."""
        counts = (
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
        )
        if all(count is None for count in counts):
            return None
        return sum(count or 0 for count in counts)


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


def _fields_from(cls: type[Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's value for every field of ``cls`` except ``trigger`` (column trigger_kind)."""
    return {f.name: row[f.name] for f in dataclasses.fields(cls) if f.name != "trigger"}


# -- the queue ---------------------------------------------------------------------------


class ItemState(enum.StrEnum):
    """Where a queue item is: queued -> claimed -> done, or set aside with a reason.

    ``dropped`` (the queue was full and a newer item took its place), ``rejected`` (never
    accepted: unknown or disabled agent, full queue refusing) and ``failed`` (every
    attempt's run was lost) carry the reason in ``QueueItem.reason``.
    """

    QUEUED = "queued"
    CLAIMED = "claimed"
    DONE = "done"
    DROPPED = "dropped"
    REJECTED = "rejected"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        """True once the item will never be dispatched again."""
        return self not in (ItemState.QUEUED, ItemState.CLAIMED)


#: The earliest and latest times a run list may ask about (no bound given).
_FIRST = datetime(1970, 1, 1, tzinfo=UTC)
_LAST = datetime(9999, 12, 31, tzinfo=UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class RunCursor:
    """Where a page of the runs list ended: its last run's creation time and id. The next
    page starts after it (keyset paging: runs created meanwhile do not shift pages)."""

    created_at: datetime
    id: str

    @classmethod
    def after(cls, run: Run) -> RunCursor:
        return cls(run.created_at, run.id)

    def token(self) -> str:
        """The cursor in a URL: ``2026-12-06T13:00:00.123456Z~dev-3f9a0c1d2e4b``."""
        moment = self.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f"{moment}~{self.id}"

    @classmethod
    def parse(cls, text: str) -> RunCursor:
        """The cursor a ``token()`` wrote; ValueError saying what is wrong otherwise."""
        moment, sep, run_id = text.partition("~")
        try:
            created = datetime.fromisoformat(moment.replace("Z", "+00:00")) if sep else None
        except ValueError:
            created = None
        if created is None or created.tzinfo is None or not run_id or "\x00" in run_id:
            raise ValueError(
                f"not a runs-list cursor: {text[:80]!r}; pass the `next` value of the page "
                "before (TIME~RUN_ID, e.g. 2026-12-06T13:00:00.000000Z~dev-3f9a0c1d2e4b)"
            )
        return cls(created, run_id)


@dataclasses.dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs a runs list shows: all of them unless a field narrows it. ``search``
    matches a run id prefix, or text in the status, the trigger detail or the prompt
    (case-insensitive)."""

    agent: str | None = None
    states: tuple[RunState, ...] = ()
    triggers: tuple[TriggerKind, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    search: str = ""

    @property
    def first(self) -> datetime:
        return self.since or _FIRST

    @property
    def last(self) -> datetime:
        return self.until or _LAST


@dataclasses.dataclass(frozen=True, slots=True)
class RunPage:
    """One page of a runs list, newest first, and the cursor of the next (None: the last)."""

    runs: list[Run]
    next: RunCursor | None


@dataclasses.dataclass(frozen=True, slots=True)
class NewItem:
    """A trigger to queue for an agent; the store adds the rest."""

    agent: str
    trigger: TriggerKind
    trigger_detail: dict[str, Any] | None = None
    prompt: str | None = None
    parent_run_id: str | None = None
    rerun_count: int = 0
    #: Another item with the same key makes this one a duplicate (e.g. a webhook delivery id).
    dedupe_key: str | None = None
    #: Other keys the same trigger may be stored under (keys earlier versions wrote): an
    #: item under any of them makes this one a duplicate too. The item keeps ``dedupe_key``.
    dedupe_aliases: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class QueueItem:
    """One durable trigger in an agent's queue, and the lease of whoever runs it."""

    id: int
    agent: str
    trigger: TriggerKind
    trigger_detail: dict[str, Any] | None
    prompt: str | None
    parent_run_id: str | None
    rerun_count: int
    dedupe_key: str | None
    state: ItemState
    reason: str | None
    enqueued_at: datetime
    claimed_at: datetime | None
    finished_at: datetime | None
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    fence: int | None
    run_id: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        """Build an item from a decoded ``corral_queue`` row."""
        values = _fields_from(cls, row)
        values["state"] = ItemState(values["state"])
        return cls(trigger=TriggerKind(row["trigger_kind"]), **values)

    def evolve(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True, slots=True)
class EnqueueResult:
    """What ``enqueue`` did: the item (queued, or rejected with a reason), what it displaced.

    ``duplicate`` means an item with the same dedupe key existed; ``item`` is that one and
    nothing changed.
    """

    item: QueueItem
    dropped: tuple[QueueItem, ...] = ()
    duplicate: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """A claimed item and the run started for it (state starting, carrying the fence)."""

    item: QueueItem
    run: Run


@dataclasses.dataclass(frozen=True, slots=True)
class FinalizeResult:
    """A finalised run, its item (done), and the rerun queued for it, if any."""

    run: Run
    item: QueueItem
    rerun_item: QueueItem | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Recovered:
    """An item taken back from a lapsed or released lease: queued again, or failed.

    ``run`` is the run that lost the lease, now ``lost`` (None if it no longer exists).
    """

    item: QueueItem
    run: Run | None


# -- agents, the project, schedulers -------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class AgentSpec:
    """An agent as the project configuration declares it."""

    agent: str
    scale: int
    queue_size: int
    #: Dollars the agent's runs may spend per UTC day (None: no cap).
    daily_cost_cap: float | None = None
    #: A pool sized by the autoscaler ([scale] table): its min, the size it starts at
    #: (clamped into [min, scale] on every sync). None: ``scale`` alone bounds the agent.
    pool_min: int | None = None

    def __post_init__(self) -> None:
        if self.pool_min is not None and not 0 <= self.pool_min <= self.scale:
            raise ValueError(
                f"agent {self.agent!r}: pool_min must be in [0, scale = {self.scale}], "
                f"got {self.pool_min}"
            )
        if self.daily_cost_cap is not None and self.daily_cost_cap < 0:
            raise ValueError(
                f"agent {self.agent!r}: daily_cost_cap must be >= 0, got {self.daily_cost_cap}"
            )
        if self.scale < 0:
            raise ValueError(f"agent {self.agent!r}: scale must be >= 0, got {self.scale}")
        if self.queue_size < 1:
            raise ValueError(
                f"agent {self.agent!r}: queue_size must be >= 1, got {self.queue_size}"
            )


@dataclasses.dataclass(frozen=True, slots=True)
class AgentState:
    """An agent's control state in the store, with its queued and active item counts."""

    agent: str
    scale: int
    queue_size: int
    paused: bool
    enabled: bool
    present: bool
    queued: int
    active: int
    daily_cost_cap: float | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        values = {f.name: row[f.name] for f in dataclasses.fields(cls)}
        for flag in ("paused", "enabled", "present"):
            values[flag] = bool(values[flag])
        return cls(**values)


@dataclasses.dataclass(frozen=True, slots=True)
class ProjectState:
    """Project-wide control state: pause, the scale cap (None: no cap), retry limits."""

    paused: bool
    scale_cap: int | None
    max_attempts: int
    max_reruns: int
    #: Dollars all runs together may spend per UTC day (None: no cap).
    daily_cost_cap: float | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return cls(
            paused=bool(row["paused"]),
            scale_cap=row["scale_cap"],
            max_attempts=row["max_attempts"],
            max_reruns=row["max_reruns"],
            daily_cost_cap=row["daily_cost_cap"],
        )


@dataclasses.dataclass(frozen=True, slots=True)
class UsageTotal:
    """One agent's runs, tokens and dollars on one UTC day (``day`` is YYYY-MM-DD)."""

    day: str
    agent: str
    runs: int
    #: Runs whose cost is known (built-in harness runs with priced models).
    priced_runs: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return cls(
            day=str(row["day"]),
            agent=str(row["agent"]),
            runs=int(row["runs"]),
            priced_runs=int(row["priced_runs"]),
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
            cache_read_tokens=int(row["cache_read_tokens"]),
            cache_write_tokens=int(row["cache_write_tokens"]),
            cost_usd=float(row["cost_usd"]),
        )


class SchedulerState(enum.StrEnum):
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerInfo:
    """A scheduler process registered in the store; ``id`` is the owner of its leases."""

    id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    state: SchedulerState
    gateway_url: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        values = {f.name: row[f.name] for f in dataclasses.fields(cls)}
        values["state"] = SchedulerState(values["state"])
        return cls(**values)


# -- resource locks -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class LockGrant:
    """A lock granted (or, with ``refreshed``, renewed for the run already holding it).

    ``token`` is the fencing token: greater than every token granted earlier for ``key``;
    a refresh keeps the token it had.
    """

    key: str
    run_id: str
    token: int
    acquired_at: datetime
    expires_at: datetime
    refreshed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class LockHeld:
    """A try-lock refused: ``holder`` (a run id) holds ``key`` unexpired since ``held_since``."""

    key: str
    holder: str
    held_since: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Lock:
    """A lock row as stored: unexpired, or expired but not yet taken by anyone else."""

    key: str
    run_id: str
    agent: str
    token: int
    acquired_at: datetime
    expires_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        """Build a lock from a decoded ``corral_locks`` row joined with its run's agent."""
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True, slots=True)
class Deadlock:
    """A wait refused because it would close a cycle in the wait-for graph.

    ``cycle`` alternates a run and what it waits for (a lock key, or ``call://<id>`` for a
    call it waits on), starting with the run that asked: each run waits for the next one.
    """

    cycle: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class CallRefusal:
    """A call that was not made, and why (``{"ok":false,"error":reason}``)."""

    reason: str


class CallState(enum.StrEnum):
    """Where an agent-to-agent call is: pending (queued) -> running -> completed | error."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    ERROR = "error"

    @property
    def is_final(self) -> bool:
        return self in (CallState.COMPLETED, CallState.ERROR)


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """A call from one run to another agent (``al-subagent``), as stored."""

    id: str
    caller_run_id: str
    caller_agent: str
    target_agent: str
    depth: int
    context: str
    item_id: int | None
    callee_run_id: str | None
    state: CallState
    return_value: str | None
    error: str | None
    created_at: datetime
    ended_at: datetime | None
    waiting_since: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        values = {f.name: row[f.name] for f in dataclasses.fields(cls)}
        values["state"] = CallState(values["state"])
        values["depth"] = int(values["depth"])
        return cls(**values)


@dataclasses.dataclass(frozen=True, slots=True)
class LockWaiter:
    """A run blocked in ``rlock --wait`` on ``key``; waiters are served in arrival order."""

    key: str
    run_id: str
    since: datetime
    deadline: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEntry:
    """An operator's action, recorded (``corral locks release --force``, …)."""

    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    detail: dict[str, Any] | None


# -- webhook receipts ------------------------------------------------------------------------


class ReceiptOutcome(enum.StrEnum):
    """What became of a webhook delivery.

    ``accepted``: verified and parsed; each matching agent got an item (queued, or rejected
    with the reason). ``duplicate``: its delivery id was already taken by an earlier
    delivery of the source; nothing queued. ``refused``: not verified (bad or missing
    signature, unknown source, too large); nothing queued. ``invalid``: verified but not a
    payload corral understands; nothing queued. ``ping``: the sender's test delivery.
    """

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REFUSED = "refused"
    INVALID = "invalid"
    PING = "ping"


@dataclasses.dataclass(frozen=True, slots=True)
class AgentResult:
    """What one delivery did for one agent: whether its filters matched (and why), and the
    queue item made for it with that item's state then (``queued``, ``rejected``,
    ``duplicate``), or ``why`` not."""

    agent: str
    matched: bool
    reason: str
    item_id: int | None = None
    state: str | None = None
    why: str | None = None
    #: Older items of the agent dropped to make room for this one (queue full).
    dropped: tuple[int, ...] = ()

    @property
    def queued(self) -> bool:
        return self.state == ItemState.QUEUED.value

    def to_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "agent": self.agent,
            "matched": self.matched,
            "reason": self.reason,
            "itemId": self.item_id,
            "state": self.state,
            "why": self.why,
        }
        if self.dropped:
            answer["dropped"] = list(self.dropped)
        return answer

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Self:
        return cls(
            agent=str(value["agent"]),
            matched=bool(value["matched"]),
            reason=str(value["reason"]),
            item_id=value.get("itemId"),
            state=value.get("state"),
            why=value.get("why"),
            dropped=tuple(value.get("dropped", ())),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class NewReceipt:
    """A webhook delivery as the gateway saw it, before the store records it.

    ``body`` is what was read (the store keeps at most its cap of it); ``body_size`` the
    whole size, which may exceed ``len(body)`` when reading stopped at a limit. ``results``
    holds one entry per agent of the project as routing decided (matched or not, and why);
    the store adds each matched agent's queue item. ``id`` is chosen by the caller
    (``new_receipt_id()``) so that the items it queues can carry it.
    """

    id: str
    source: str
    outcome: ReceiptOutcome
    headers: Mapping[str, str]
    body: bytes
    body_size: int
    verified: bool
    verification: str | None = None
    event: str | None = None
    delivery_id: str | None = None
    error: str | None = None
    results: tuple[AgentResult, ...] = ()
    replay_of: str | None = None
    #: Set for a delivery from a sender not known to be trusted (refused before it could
    #: be verified, or unsigned and invalid): the kind it is counted under
    #: (``refused:<source>``). Such a receipt keeps little, is counted on a recent one of
    #: its kind when there are many, and is pruned after a day (see ``store._webhooks``).
    repeat_key: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Receipt:
    """One webhook delivery as recorded, whatever became of it."""

    id: str
    source: str
    event: str | None
    delivery_id: str | None
    received_at: datetime
    #: The request's headers, names lower-cased; Authorization and Cookie are not kept.
    headers: dict[str, str]
    #: The body as received, up to the store's cap (see ``body_truncated``).
    body: bytes
    body_size: int
    body_truncated: bool
    verified: bool
    verification: str | None
    outcome: ReceiptOutcome
    #: Why a delivery was refused or invalid (None when accepted, a ping or a duplicate).
    error: str | None
    results: tuple[AgentResult, ...]
    #: The receipt this one replayed (``corral webhook replay``).
    replay_of: str | None
    #: The receipt that took this delivery's id first (outcome ``duplicate``).
    duplicate_of: str | None
    #: A stranger's receipt (``NewReceipt.repeat_key``): how many more deliveries of its
    #: kind were counted on it rather than stored, and when the last one came.
    repeats: int = 0
    last_repeat_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        """Build a receipt from a decoded row (``results`` a list of dicts)."""
        values = {f.name: row[f.name] for f in dataclasses.fields(cls)}
        values["outcome"] = ReceiptOutcome(values["outcome"])
        values["body"] = bytes(values["body"])
        values["body_truncated"] = bool(values["body_truncated"])
        values["verified"] = bool(values["verified"])
        values["headers"] = {str(k): str(v) for k, v in dict(values["headers"]).items()}
        values["results"] = tuple(AgentResult.from_json(r) for r in values["results"])
        return cls(**values)

    @property
    def matched(self) -> list[str]:
        """The agents whose filters matched."""
        return [r.agent for r in self.results if r.matched]

    @property
    def item_ids(self) -> list[int]:
        """The queue items this delivery made, in agent order."""
        return [r.item_id for r in self.results if r.item_id is not None]

    @property
    def queued(self) -> list[str]:
        """The agents whose item was queued."""
        return [r.agent for r in self.results if r.queued]


# -- operator tokens -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class OperatorToken:
    """An operator token (``corral token create``); the store keeps only its hash."""

    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


# -- the fleet: activation tokens, runners, anomalies ----------------------------------


class RunnerState(enum.StrEnum):
    """A runner's membership: ``active`` takes work; ``cordoned`` takes none (its runs go
    on); ``draining`` takes none and is to stop once its runs end; ``revoked`` is refused
    on every request, for good."""

    ACTIVE = "active"
    CORDONED = "cordoned"
    DRAINING = "draining"
    REVOKED = "revoked"


class AnomalyKind(enum.StrEnum):
    """What an anomaly is about (``corral fleet anomalies``)."""

    RUNNER_OFFLINE = "runner_offline"
    TOKEN_REUSED = "token_reused"
    CRASH_LOOP = "crash_loop"
    LOCK_EXPIRED = "lock_expired"
    HOOK_FAILED = "hook_failed"
    BUDGET_OVERRUN = "budget_overrun"
    RUN_STUCK = "run_stuck"


@dataclasses.dataclass(frozen=True, slots=True)
class FleetToken:
    """A single-use activation token (``corral fleet tokens create``); the store keeps
    only its hash."""

    id: str
    labels: tuple[str, ...]
    note: str | None
    created_by: str
    created_at: datetime
    expires_at: datetime
    redeemed_at: datetime | None
    redeemed_by: str | None
    revoked_at: datetime | None

    def status(self, now: datetime) -> str:
        """``redeemed``, ``revoked``, ``expired`` or ``unused``."""
        if self.redeemed_at is not None:
            return "redeemed"
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        return "unused"


@dataclasses.dataclass(frozen=True, slots=True)
class Runner:
    """A host that joined the fleet with an activation token."""

    id: str
    name: str
    hostname: str
    labels: tuple[str, ...]
    slots: int
    version: str
    state: RunnerState
    joined_at: datetime
    last_heartbeat_at: datetime
    offline_since: datetime | None
    revoked_at: datetime | None
    address: str | None
    token_id: str | None

    def online(self, now: datetime, offline_after: float) -> bool:
        """Heartbeating within ``offline_after`` seconds (a revoked runner never is)."""
        if self.state is RunnerState.REVOKED:
            return False
        return (now - self.last_heartbeat_at).total_seconds() <= offline_after


@dataclasses.dataclass(frozen=True, slots=True)
class NewRunner:
    """What a runner says of itself when it joins."""

    name: str
    hostname: str
    labels: tuple[str, ...] = ()
    slots: int = 1
    version: str = ""
    address: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class JoinRefusal:
    """A join that was refused, and why: ``reason`` is one of ``unknown_token``,
    ``expired``, ``revoked``, ``reused`` (the token was redeemed already; an anomaly is
    recorded), ``fleet_full``; ``message`` says it in words."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class Anomaly:
    """Something an operator should look at, listed until resolved."""

    id: int
    kind: AnomalyKind
    subject: str
    at: datetime
    evidence: dict[str, Any] | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None

    @property
    def open(self) -> bool:
        return self.resolved_at is None


# -- bundles -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Bundle:
    """A pushed project bundle (``corral push``), named by the SHA-256 of its bytes."""

    hash: str
    size: int
    #: Each agent's name -> the hash of its own bundle (what a runner fetches for it).
    agents: dict[str, str]
    files: int
    created_at: datetime
    created_by: str
    note: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class BundleHead:
    """The project's current bundle: the one every control plane on the store runs."""

    hash: str
    set_at: datetime
    set_by: str


@dataclasses.dataclass(frozen=True, slots=True)
class Published:
    """What ``publish_bundle`` did: stored the bytes (``stored``: they were new), and made
    them current (``moved``: the head pointed elsewhere before)."""

    bundle: Bundle
    head: BundleHead
    stored: bool
    moved: bool

    @property
    def unchanged(self) -> bool:
        return not self.stored and not self.moved


@dataclasses.dataclass(frozen=True, slots=True)
class PoolState:
    """An agent's pool as the store holds it (migration 0022): ``size`` bounds its claims
    (with ``scale``, its max); ``owner`` is the scheduler deciding the size (None: none
    yet, or it stopped); ``queued`` and ``running`` are the agent's counters."""

    agent: str
    scale: int
    size: int
    queued: int
    running: int
    owner: str | None = None
    lease_until: datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """What the store shows of an agent's pool for one autoscaler tick."""

    #: The live runs (busy instances): (run id, when it was claimed), oldest first.
    busy: tuple[tuple[str, datetime], ...]
    #: Items of the agent queued after ``since``.
    arrivals: int
    #: Seconds each run that ended after ``since`` took (from its claim to its end).
    durations: tuple[float, ...]
    #: The project cap's room for this agent (the cap less the other agents' runs), or None.
    cap_room: int | None
    #: Why new runs are refused today (a daily cost cap reached), or None.
    budget_stop: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class PoolDecision:
    """One recorded autoscaler decision, with the inputs it used."""

    id: int
    agent: str
    decided_at: datetime
    scheduler_id: str
    policy: str
    size: int
    desired: int
    direction: str
    reason: str
    inputs: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class BucketLimits:
    """A provider key's limits (``[providers.<name>]``), in per-second rates.

    ``None``: that dimension is not limited (a bucket with neither still shares the
    provider's 429 throttles between runs). ``window`` is the provider's period (60 s for
    "per minute"): the token capacity is one window's tokens, and a repeated 429 within a
    window lowers the rate.
    """

    requests_per_second: float | None = None
    tokens_per_second: float | None = None
    #: Requests that may go at once after a quiet spell.
    burst: int = 1
    window: float = 60.0

    def __post_init__(self) -> None:
        for name in ("requests_per_second", "tokens_per_second"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {self.burst}")
        if not self.window > 0:
            raise ValueError(f"window must be > 0, got {self.window}")

    @property
    def token_capacity(self) -> float:
        """The most tokens the bucket holds: one window's worth (0 when unlimited)."""
        return 0.0 if self.tokens_per_second is None else self.tokens_per_second * self.window


#: Seconds after which a bucket nobody used (its key rotated away, its pools empty) no
#: longer counts as saturated.
PROVIDER_IDLE = 600.0


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderBucket:
    """A (provider, key)'s shared bucket as it stands."""

    bucket: str
    provider: str
    requests: float
    tokens: float
    #: The share of the configured rate in force (below 1 after repeated 429s).
    factor: float
    #: Seconds until a 429's throttle ends (0: not throttled).
    throttled_for: float
    #: Runs asking for a permit now.
    waiting: int
    granted: int
    throttles: int
    #: Seconds since anyone last asked for a permit, was charged or throttled.
    idle_for: float = 0.0

    @property
    def saturated(self) -> str | None:
        """Why no more runs should be started on this provider now, or None."""
        if self.idle_for > PROVIDER_IDLE:
            return None
        if self.throttled_for > 0:
            return f"throttled by the provider for {self.throttled_for:.1f} s more"
        if self.waiting > 0:
            return f"{self.waiting} runs waiting for a permit"
        if self.factor < 1:
            return f"rate lowered to {self.factor:.0%} after repeated 429s"
        return None
