"""Agent-to-agent calls (``al-subagent``) and the signals a run sends about itself.

A call is a ``corral_calls`` row plus a queue item for the callee, written in one
transaction under the project lock (it is an enqueue). The call follows its item: it is
``running`` once the item is claimed, answered in the transaction that finalises the
callee's run (``completed`` with the run's ``al-return`` value when the run succeeded,
``error`` with the reason otherwise), ``pending`` again when the run was lost and its item
queued again, and ``error`` when the item is dropped or given up.

Signals (status text, the return value, an exit request, the run's secret hash) are one
conditional UPDATE of a live run's row each.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping
from typing import Any

from corral.errors import StoreConflict, StoreError
from corral.store._core import Row, Transaction
from corral.store._notify import call_topic
from corral.store._queue import QUEUE_FULL, QueueOps
from corral.store.records import (
    AuditEntry,
    Call,
    CallRefusal,
    Deadlock,
    ItemState,
    NewItem,
    ProjectState,
    QueueItem,
    Run,
    RunState,
    TriggerKind,
)

__all__ = ["CallOps"]

_CALL_TIMES = ("created_at", "ended_at", "waiting_since")
_LIVE = (RunState.STARTING, RunState.RUNNING)


class CallOps(QueueOps):
    """Calls and run signals; part of ``Store``."""

    # -- calls ---------------------------------------------------------------------------

    async def create_call(
        self, caller_run_id: str, target_agent: str, context: str, *, max_depth: int
    ) -> Call | CallRefusal:
        """Call ``target_agent`` from a live run: a call row and a queue item, together.

        Refused (nothing queued): a call to the caller's own agent, and a call deeper than
        ``max_depth`` (a run that was not called is at depth 0; its callee at 1). Refused
        and recorded as a rejected item: an unknown or disabled agent, and a full queue
        ("queue full": a call never evicts queued work).
        """

        if self.dialect == "postgresql":
            # One round trip (corral_create_call); the cases it leaves to Python (the
            # callee takes no triggers or has a cost cap) run the transaction below.
            called = await self._create_call_at_once(
                caller_run_id, target_agent, context, max_depth=max_depth
            )
            if called is not None:
                return called

        async def body(tx: Transaction) -> Call | CallRefusal:
            # The project lock, the caller's state and agent, and its depth: one statement.
            row = await tx.fetch_one("lock_project_for_call", {"run_id": caller_run_id})
            locked = self._returned(row, "lock_project_for_call")
            project = ProjectState.from_row(locked)
            if locked["caller_state"] is None:
                raise StoreError(f"no run {caller_run_id!r} in {self.url}")
            caller_state, caller_agent = RunState(locked["caller_state"]), locked["caller_agent"]
            if caller_state not in _LIVE:
                raise StoreConflict(
                    f"run {caller_run_id} cannot call {target_agent!r}: it has ended "
                    f"({caller_state.value})"
                )
            if target_agent == caller_agent:
                return CallRefusal("self-call not allowed")
            called_at = locked["caller_depth"]
            depth = (0 if called_at is None else int(called_at)) + 1
            if depth > max_depth:
                return _too_deep(depth, max_depth, caller_agent)
            new = NewItem(
                agent=target_agent,
                trigger=TriggerKind.CALL,
                trigger_detail={"caller": caller_agent, "context": context},
                parent_run_id=caller_run_id,
            )
            queued = await self._enqueue_locked(tx, project, new, "refuse")
            if queued.item.state is ItemState.REJECTED:
                return _refused(queued.item.reason)
            params = {
                "id": secrets.token_hex(8),
                "caller_run_id": caller_run_id,
                "caller_agent": caller_agent,
                "target_agent": target_agent,
                "depth": depth,
                "context": context,
                "item_id": queued.item.id,
                "now": self.encode_time(self.now()),
            }
            return self._call(self._returned(await tx.fetch_one("insert_call", params), "call"))

        return await self.atomic(body)

    async def _create_call_at_once(
        self, caller_run_id: str, target_agent: str, context: str, *, max_depth: int
    ) -> Call | CallRefusal | None:
        """``create_call`` as one call of ``corral_create_call`` (PostgreSQL, migration
        0017), in autocommit; None when it left the call to Python, having changed nothing."""
        params = {
            "run_id": caller_run_id,
            "target": target_agent,
            "context": context,
            "max_depth": max_depth,
            "id": secrets.token_hex(8),
            "now": self.encode_time(self.now()),
        }
        row = self._returned(
            next(iter(await self.statement("create_call", params)), None), "create_call"
        )
        outcome = row["outcome"]
        if outcome == "no_run":
            raise StoreError(f"no run {caller_run_id!r} in {self.url}")
        if outcome == "ended":
            raise StoreConflict(
                f"run {caller_run_id} cannot call {target_agent!r}: it has ended "
                f"({row['caller_state']})"
            )
        if outcome == "self":
            return CallRefusal("self-call not allowed")
        if outcome == "too_deep":
            return _too_deep(int(row["depth"]), max_depth, row["caller_agent"])
        if outcome == "rejected":
            return _refused(row["reason"])
        if outcome == "called":
            return self._call(row)
        return None

    async def get_call(self, call_id: str, *, caller_run_id: str) -> Call | None:
        """The call ``call_id`` if ``caller_run_id`` made it; None otherwise (only the
        caller may see a call)."""

        async def body(tx: Transaction) -> Row | None:
            return await tx.fetch_one("get_call", {"id": call_id})

        row = await self.atomic(body, write=False)
        if row is None or row["caller_run_id"] != caller_run_id:
            return None
        return self._call(row)

    async def list_calls(self, *, limit: int = 100) -> list[Call]:
        """Calls, newest first."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_calls", {"limit": limit})
        return [self._call(row) for row in rows]

    async def calls_of_run(
        self, run_id: str, *, limit: int = 100
    ) -> tuple[list[Call], Call | None]:
        """The calls ``run_id`` made (oldest first), and the call it answers (None: it
        was not called)."""
        async with self.transaction(write=False) as tx:
            made = await tx.fetch_all("calls_made_by", {"run_id": run_id, "limit": limit})
            answered = await tx.fetch_one("call_answered_by", {"run_id": run_id})
        return [self._call(row) for row in made], None if answered is None else self._call(answered)

    async def wait_on_calls(
        self, caller_run_id: str, call_ids: Collection[str], *, waiting: bool
    ) -> Deadlock | None:
        """Record that the caller waits on its calls (edges of the wait-for graph), or no
        longer does. A wait that would close a cycle is refused with ``Deadlock`` and
        recorded on none of them."""

        async def body(tx: Transaction) -> Deadlock | None:
            since = self.encode_time(self.now()) if waiting else None
            if waiting:
                for call_id in call_ids:
                    row = await tx.fetch_one("get_call", {"id": call_id})
                    if row is None or row["callee_run_id"] is None:
                        continue
                    if row["state"] not in ("pending", "running"):
                        continue
                    via = f"call://{call_id}"
                    cycle = await self.find_cycle(tx, caller_run_id, via, row["callee_run_id"])
                    if cycle is not None:
                        return cycle
            for call_id in call_ids:
                params = {"id": call_id, "caller_run_id": caller_run_id, "since": since}
                await tx.execute("set_call_waiting", params)
            return None

        return await self.atomic(body)

    async def settle_calls_in(
        self, tx: Transaction, run: Run, notices: list[str] | None = None
    ) -> None:
        if run.trigger is not TriggerKind.CALL:
            return
        if run.state is RunState.SUCCEEDED:
            state, value, error = "completed", run.return_value, None
        else:
            detail = f": {run.error}" if run.error else ""
            state, value, error = "error", None, f"{run.agent} run {run.id} {run.state}{detail}"
        params = {
            "run_id": run.id,
            "state": state,
            "return_value": value,
            "error": error,
            "now": self.encode_time(self.now()),
        }
        answered = await tx.fetch_all("answer_call", params)
        if notices is not None:
            notices.extend(call_topic(str(row["id"])) for row in answered)

    async def start_calls_in(self, tx: Transaction, item: QueueItem, run_id: str) -> None:
        """The call whose item was just claimed is now running as ``run_id``."""
        if item.trigger is TriggerKind.CALL:
            await tx.execute("start_call", {"item_id": item.id, "run_id": run_id})

    async def requeue_calls_in(self, tx: Transaction, item: QueueItem) -> None:
        """The call's item was queued again after its run was lost: pending again."""
        if item.trigger is TriggerKind.CALL:
            await tx.execute("requeue_call", {"item_id": item.id})

    async def fail_calls_in(self, tx: Transaction, item: QueueItem, error: str) -> None:
        """The call's item will never run (dropped, given up): answer ``error``."""
        if item.trigger is TriggerKind.CALL:
            params = {"item_id": item.id, "error": error, "now": self.encode_time(self.now())}
            await tx.execute("fail_item_calls", params)

    def _call(self, row: Row) -> Call:
        return Call.from_row(self._decode_times(row, _CALL_TIMES))

    # -- signals from a run about itself -----------------------------------------------

    async def set_run_secret(self, run_id: str, secret_hash: str) -> Run:
        """Record the hash of the secret the live run ``run_id`` authenticates with."""
        return await self._signal(run_id, "set_run_secret", {"secret_hash": secret_hash}, "start")

    async def run_for_secret(self, secret_hash: str) -> Run | None:
        """The run whose secret hashes to ``secret_hash``, live or not."""

        async def body(tx: Transaction) -> Row | None:
            return await tx.fetch_one("run_by_secret", {"secret_hash": secret_hash})

        row = await self.atomic(body, write=False)
        return None if row is None else self.run_from_row(row)

    async def set_status(self, run_id: str, text: str) -> Run:
        """``al-status``: the live run's status text, shown while it works."""
        params = {"status_text": text, "now": self.encode_time(self.now())}
        return await self._signal(run_id, "set_run_status_live", params, "set the status of")

    async def set_return_value(self, run_id: str, value: str) -> Run:
        """``al-return``: the value the live run answers its call with."""
        params = {"return_value": value}
        return await self._signal(run_id, "set_return_value", params, "set the return value of")

    async def request_exit(self, run_id: str, code: int) -> Run:
        """``al-exit``: the live run asks to end with ``code``."""
        if not 0 <= code <= 255:
            raise ValueError(f"an exit code is 0..255, got {code}")
        return await self._signal(run_id, "request_exit", {"code": code}, "end")

    async def _signal(
        self, run_id: str, query: str, params: Mapping[str, object], what: str
    ) -> Run:
        async def body(tx: Transaction) -> Row | None:
            row = await tx.fetch_one(query, {"id": run_id, **params})
            if row is None:
                current = await self._require_run(tx, run_id)
                raise StoreConflict(
                    f"cannot {what} run {run_id}: it has ended ({current.state.value})"
                )
            return row

        return self.run_from_row(self._returned(await self.atomic(body), query))

    # -- the audit log -------------------------------------------------------------------

    async def audit(
        self, actor: str, action: str, subject: str, detail: dict[str, Any] | None = None
    ) -> None:
        """Record an operator's action (``corral.engine.actions``) in its own transaction."""
        async with self.transaction() as tx:
            await self.audit_in(tx, actor=actor, action=action, subject=subject, detail=detail)

    async def list_audit(self, *, limit: int = 100) -> list[AuditEntry]:
        """Operators' recorded actions, newest first."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_audit", {"limit": limit})
        entries = []
        for row in rows:
            decoded = self._decode_times(row, ("at",))
            decoded["detail"] = self.decode_json(decoded["detail"])
            entries.append(AuditEntry(**decoded))
        return entries


def _too_deep(depth: int, max_depth: int, caller_agent: str) -> CallRefusal:
    return CallRefusal(
        f"call depth {depth} exceeds maxCallDepth {max_depth}: {caller_agent} "
        f"was itself called at depth {depth - 1}; raise maxCallDepth in the "
        "project config.toml or do the work without another call"
    )


def _refused(reason: str | None) -> CallRefusal:
    """The refusal of a call whose item was recorded rejected with ``reason``."""
    reason = reason or "refused"
    return CallRefusal(QUEUE_FULL if reason == QUEUE_FULL else reason)
