"""Operator actions: one implementation for every surface (control API, dashboard, CLI).

Each action checks what it is given, changes the store, wakes the scheduler where that
matters, and records an audit entry (``corral_audit``) naming the actor: ``token:<name>``
for the control API, ``dashboard:<name>`` for the dashboard, ``cli:<user>@<host>`` for the
CLI (``cli_actor``).
A refusal is an ``ActionError`` carrying the HTTP status that describes it: 404 for an
unknown agent, run, lock or receipt; 409 for an action the current state refuses; 400 for
bad input.

The first argument is what the action works on: a running ``Scheduler`` (the gateway), or
an ``Offline`` project and store (the CLI, which needs no scheduler: one that runs sees
the change at its next poll).
"""

from __future__ import annotations

import getpass
import re
import socket
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar

from corral.engine.deliveries import ReplayRefused, replay_receipt
from corral.errors import CorralError, RequestKeyReused, StoreConflict
from corral.project import Project, ScaleConfig
from corral.scheduler.service import log_dropped
from corral.store import (
    AgentState,
    EnqueueResult,
    ItemState,
    Lock,
    NewItem,
    QueueItem,
    Receipt,
    Run,
    Store,
    TriggerKind,
)

__all__ = [
    "MAX_SCALE",
    "ActionError",
    "Offline",
    "Target",
    "cli_actor",
    "disable",
    "enable",
    "kill",
    "pause",
    "queue_run",
    "release_lock",
    "replay",
    "resume",
    "scale",
    "token_actor",
    "trigger",
    "write_scale",
]

Overflow = Literal["drop_oldest", "refuse"]
T = TypeVar("T")

#: The most runs of one agent at once that an operator may set.
MAX_SCALE = 10_000


class ActionError(CorralError):
    """An operator action refused: ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Target(Protocol):
    """What an action works on: a project, its store, and a dispatcher to wake.

    ``corral.scheduler.service.Scheduler`` is one; ``Offline`` is the other.
    """

    @property
    def project(self) -> Project: ...

    @property
    def store(self) -> Store: ...

    async def submit(self, new: NewItem, *, overflow: Overflow = "drop_oldest") -> EnqueueResult:
        """Queue ``new`` durably (and wake the dispatcher, if there is one)."""
        ...

    def wake(self) -> None:
        """Look at the queue now rather than at the next poll (no-op offline)."""
        ...


@dataclass(frozen=True)
class Offline:
    """A project and its store with no scheduler in this process (the CLI). A scheduler
    sharing the store sees every change at its next poll."""

    project: Project
    store: Store

    async def submit(self, new: NewItem, *, overflow: Overflow = "drop_oldest") -> EnqueueResult:
        return await self.store.enqueue(new, overflow=overflow)

    def wake(self) -> None:
        return None


def cli_actor() -> str:
    """The actor the CLI records: ``cli:<user>@<host>``."""
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


def token_actor(name: str) -> str:
    """The actor the control API records for operator token ``name``."""
    return f"token:{name}"


# -- runs ------------------------------------------------------------------------------


async def queue_run(
    scheduler: Target, agent: str, prompt: str | None, *, actor: str, key: str | None = None
) -> EnqueueResult:
    """Queue a manual run of ``agent``; the result says whether it was queued, rejected
    (with the reason) or pushed older items out. 404 for an agent the project lacks.

    The item, its audit entry and ``key`` (an idempotency key) are recorded in one
    transaction. A ``key`` sent before with the same request answers that request's item
    (``duplicate``), queueing nothing; with another request it is refused (422)."""
    _require_agent(scheduler, agent)
    new = NewItem(agent=agent, trigger=TriggerKind.MANUAL, prompt=prompt)
    try:
        result = await scheduler.store.enqueue_request(new, actor=actor, key=key)
    except RequestKeyReused as exc:
        raise ActionError(422, str(exc)) from None
    if not result.duplicate:
        log_dropped([result])
        scheduler.wake()
    return result


async def trigger(scheduler: Target, agent: str, prompt: str | None, *, actor: str) -> QueueItem:
    """Queue a manual run of ``agent``; 409 (with the reason) when the store rejects it."""
    item = (await queue_run(scheduler, agent, prompt, actor=actor)).item
    if item.state is ItemState.REJECTED:
        raise ActionError(409, item.reason or f"agent {agent} refused the run")
    return item


async def kill(scheduler: Target, run_id: str, *, actor: str) -> Run:
    """Ask the scheduler that runs ``run_id`` to stop it (SIGTERM, then SIGKILL after a
    grace period). Returns the run as recorded now: it may still be running."""
    store = scheduler.store
    if await store.get_run(run_id) is None:
        raise ActionError(404, f"no run {run_id}")
    try:
        run = await store.request_kill(run_id)
    except StoreConflict as exc:  # it has ended; a store failure is not this
        raise ActionError(409, str(exc)) from None
    await store.audit(actor, "run.kill", run_id, {"agent": run.agent})
    return run


# -- dispatch and intake ---------------------------------------------------------------


async def pause(scheduler: Target, agent: str | None, *, actor: str) -> None:
    """Stop dispatching runs of ``agent`` (None: of the whole project); intake goes on."""
    await _set_paused(scheduler, agent, True, actor)


async def resume(scheduler: Target, agent: str | None, *, actor: str) -> None:
    """Dispatch again after ``pause``."""
    await _set_paused(scheduler, agent, False, actor)
    scheduler.wake()


async def _set_paused(scheduler: Target, agent: str | None, paused: bool, actor: str) -> None:
    verb = "pause" if paused else "resume"
    if agent is None:
        await scheduler.store.set_paused(None, paused)
        await scheduler.store.audit(actor, f"project.{verb}", "project", None)
        return
    _require_agent(scheduler, agent)
    await _agent_change(scheduler.store.set_paused(agent, paused))
    await scheduler.store.audit(actor, f"agent.{verb}", agent, None)


async def enable(scheduler: Target, agent: str, *, actor: str) -> AgentState:
    """Accept ``agent``'s triggers again after ``disable``."""
    _require_agent(scheduler, agent)
    state = await _agent_change(scheduler.store.set_enabled(agent, True))
    await scheduler.store.audit(actor, "agent.enable", agent, None)
    scheduler.wake()
    return state


async def disable(scheduler: Target, agent: str, *, actor: str) -> AgentState:
    """Refuse ``agent``'s triggers (each refusal recorded with the reason); queued items
    stay queued and are not dispatched while it is disabled."""
    _require_agent(scheduler, agent)
    state = await _agent_change(scheduler.store.set_enabled(agent, False))
    await scheduler.store.audit(actor, "agent.disable", agent, None)
    return state


async def scale(scheduler: Target, agent: str, scale: int, *, actor: str) -> AgentState:
    """Set how many runs of ``agent`` may go at once, live in the store, and save it in
    the agent's ``config.toml`` (as ``corral scale`` does) so that a restart keeps it.
    0 disables the agent."""
    if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= MAX_SCALE:
        raise ActionError(
            400, f"scale must be a whole number from 0 to {MAX_SCALE:,}, got {scale!r}"
        )
    found = _require_agent(scheduler, agent)
    pool = scheduler.project.agents[agent].config.scale
    if isinstance(pool, ScaleConfig):  # `scale = N` beside the table would break the file
        raise ActionError(
            409,
            f"agent {agent!r} sizes its pool with a [scale] table in its config.toml "
            f"(policy {pool.policy!r}, min {pool.min}, max {pool.max}): change max there",
        )
    before = next((a.scale for a in await scheduler.store.agent_states() if a.agent == agent), None)
    state = await _agent_change(scheduler.store.set_agent_scale(agent, scale))
    write_scale(found / "config.toml", scale)
    await scheduler.store.audit(actor, "agent.scale", agent, {"scale": scale, "was": before})
    scheduler.wake()
    return state


# -- locks and webhooks ------------------------------------------------------------------


async def release_lock(scheduler: Target, key: str, *, actor: str) -> Lock:
    """Take the lock on ``key`` from whichever run holds it (the store records the audit
    entry in the same transaction); the first run waiting for it gets it."""
    if not key:
        raise ActionError(400, "a lock key is required")
    lock = await scheduler.store.force_release_lock(key, actor=actor)
    if lock is None:
        raise ActionError(404, f"no lock on {key!r}")
    return lock


async def replay(
    scheduler: Target, receipt_id: str, *, actor: str
) -> tuple[Receipt, list[EnqueueResult]]:
    """Deliver a recorded webhook delivery again (``corral.engine.deliveries.replay_receipt``):
    returns the new receipt and the enqueue results of its items. 404 for an unknown
    receipt; 409 for one that cannot be replayed (unverified, truncated, source gone)."""
    store = scheduler.store
    if await store.get_receipt(receipt_id) is None:
        raise ActionError(404, f"no webhook receipt {receipt_id!r}")
    try:
        receipt, results = await replay_receipt(scheduler.project, store, receipt_id)
    except ReplayRefused as exc:
        raise ActionError(409, str(exc)) from None
    detail = {"receipt": receipt.id, "items": [r.item.id for r in results]}
    await store.audit(actor, "webhook.replay", receipt_id, detail)
    scheduler.wake()
    return receipt, results


# -- helpers ------------------------------------------------------------------------------


def _require_agent(scheduler: Target, agent: str) -> Path:
    """The agent's directory; 404 when the project has no such agent."""
    found = scheduler.project.agents.get(agent)
    if found is None:
        known = ", ".join(sorted(scheduler.project.agents)) or "none"
        raise ActionError(404, f"unknown agent {agent!r} (agents: {known})")
    return found.dir


async def _agent_change(change: Awaitable[T]) -> T:
    try:
        return await change
    except StoreConflict as exc:  # the store does not know the agent (yet)
        raise ActionError(404, str(exc)) from None


_SCALE_LINE = re.compile(r"^scale\s*=.*$", re.MULTILINE)
_TABLE = re.compile(r"^\s*\[", re.MULTILINE)


def write_scale(path: Path, scale: int) -> None:
    """Set the top-level `scale` of an agent's config.toml, keeping everything else as written."""
    text = path.read_text() if path.exists() else ""
    table = _TABLE.search(text)
    head_end = table.start() if table else len(text)
    head, rest = text[:head_end], text[head_end:]
    if _SCALE_LINE.search(head):
        head = _SCALE_LINE.sub(f"scale = {scale}", head, count=1)
    else:
        head = f"scale = {scale}\n" + ("\n" if head and not head.startswith("\n") else "") + head
    path.write_text(head + rest)
