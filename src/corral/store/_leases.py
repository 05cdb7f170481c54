"""Leases after the claim: renewing, finalising (fencing, reruns), recovering lapsed ones.

Every change here to an item takes the project lock first (see ``_base``), except a
``finalize`` that queues no rerun: it only frees a slot. Requests on a run alone (kill,
rerun) are one conditional UPDATE of that run's row.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from datetime import datetime, timedelta

from corral.errors import StoreConflict, StoreError
from corral.store._anomalies import note_run_end
from corral.store._core import _ITEM_TIMES, StaleFence, Transaction
from corral.store._queue import QueueOps
from corral.store.records import (
    EnqueueResult,
    FinalizeResult,
    ItemState,
    NewItem,
    ProjectState,
    QueueItem,
    Recovered,
    Run,
    RunState,
    TriggerKind,
)

__all__ = ["LeaseOps"]

_RERUN_TRIGGERS = frozenset({TriggerKind.SCHEDULE, TriggerKind.MANUAL})
#: How long a rerun of a foreground `corral run` stays reserved for it before anyone
#: may run it (the command claims it at once, or renews the reservation while it waits).
_RESERVE_SECONDS = 30.0


class LeaseOps(QueueOps):
    """Renew, finalise, recover; part of ``Store``."""

    async def renew_leases(
        self, owner: str, *, lease_seconds: float, run_ids: Collection[str] | None = None
    ) -> int:
        """Extend the leases ``owner`` holds to now + ``lease_seconds``; return how many.

        With ``run_ids``, only the leases of those runs: a scheduler passes the runs it
        still executes, so the lease of a run it gave up on (its finalisation failed past
        every retry) lapses and recovery hands its item on. Without, every lease of
        ``owner``. Also the scheduler's heartbeat. A lease that lapsed but was not yet
        recovered is renewed too: nobody else holds its item.
        """
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        async with self.transaction() as tx:
            await self.lock_project(tx)
            now = self.now()
            expires = self.encode_time(now + timedelta(seconds=lease_seconds))
            params: dict[str, object] = {"owner": owner, "expires_at": expires}
            if run_ids is None:
                renewed = await tx.execute("renew_leases", params)
            elif run_ids:
                params["run_ids"] = self.encode_list(sorted(run_ids))
                renewed = await tx.execute("renew_run_leases", params)
            else:
                renewed = 0
            await tx.execute("heartbeat_scheduler", {"id": owner, "now": self.encode_time(now)})
        return renewed

    async def finalize(
        self,
        run_id: str,
        *,
        fence: int,
        state: RunState,
        exit_code: int | None,
        error: str | None = None,
        reserve_rerun_for: str | None = None,
    ) -> FinalizeResult:
        """End a claimed run and its item in one transaction, and queue its rerun if due.

        Refused with StaleFence, changing nothing, unless the run's item is still claimed
        with ``fence``. The run gets ``state`` (terminal), the item becomes done, the run's
        locks are released. A rerun
        is queued when the run asked for one, succeeded, was started by a schedule or by
        hand, and its chain has had fewer than ``max_reruns`` reruns; with
        ``reserve_rerun_for``, the rerun is reserved for that owner (see ``reserve``), as
        `corral run` in the foreground runs its reruns itself.
        """
        if not state.is_terminal:
            raise ValueError(f"finalize needs a terminal state, got {state.value!r}")
        done = None
        if self.dialect == "postgresql":
            # (a run that holds no key anyone waits for: no lock notice is due)
            done = await self._finalize_plain(run_id, fence, state, exit_code, error)
        notices: list[str] = []

        async def body(tx: Transaction) -> FinalizeResult:
            del notices[:]  # of an earlier try of this body, if any
            return await self._finalize_in(
                tx, run_id, fence, state, exit_code, error, reserve_rerun_for, notices
            )

        if done is None:
            done = await self.atomic(body)
            self._notify_committed(notices)
        if state is not RunState.SUCCEEDED:  # a success costs nothing more
            await note_run_end(self, done.run)
        return done

    async def _finalize_plain(
        self, run_id: str, fence: int, state: RunState, exit_code: int | None, error: str | None
    ) -> FinalizeResult | None:
        """PostgreSQL: ``finalize`` as the statement ``finalize_run`` after the two that lock
        its item and run rows, pipelined (one round trip instead of nine; the locks come
        first so that finalize_run's snapshot holds a lock grant that was in flight), for
        a run that queues no
        rerun and holds no lock a run waits for; None, having changed nothing, for any
        other run (a rerun, a lock to hand over, a stale fence, an ended run): ``finalize``
        then runs its transaction, so every refusal is worded as it always was (D45).
        """
        params = {
            "run_id": run_id,
            "fence": fence,
            "state": state.value,
            "exit_code": exit_code,
            "error": error,
            "now": self.encode_time(self.now()),
        }
        steps = [
            ("lock_item_to_end", {"run_id": run_id}),
            ("lock_run_to_end", {"run_id": run_id}),
            ("lock_agent_to_end", {"run_id": run_id}),
            ("finalize_run", params),
        ]
        rows = await self.statements(steps)
        if not rows:
            return None
        row = dict(rows[0])
        item = row.pop("finished_item")
        for column in _ITEM_TIMES:
            if isinstance(item.get(column), str):
                item[column] = datetime.fromisoformat(item[column])
        return FinalizeResult(self.run_from_row(row), self.item_from_row(item), None)

    async def _finalize_in(
        self,
        tx: Transaction,
        run_id: str,
        fence: int,
        state: RunState,
        exit_code: int | None,
        error: str | None,
        reserve_rerun_for: str | None,
        notices: list[str] | None = None,
    ) -> FinalizeResult:
        """``finalize`` inside ``tx``: every case, on both stores; the topics it changed
        go to ``notices``."""
        run = await self._require_run(tx, run_id)
        # Ending a claim only frees a slot, so it cannot break a cap: the project lock
        # is taken only when a rerun may be queued. The fence check is the conditional
        # UPDATE of the item; recovery locks the same item row first (FOR UPDATE), so
        # the two cannot both act on one claim, and both lock item before run.
        rerun_possible = (
            run.rerun_requested and state is RunState.SUCCEEDED and run.trigger in _RERUN_TRIGGERS
        )
        project = await self.lock_project(tx) if rerun_possible else None
        now = self.encode_time(self.now())
        params = {"item_id": run.item_id, "fence": fence, "now": now}
        item_row = await tx.fetch_one("finish_item", params)
        if item_row is None:
            raise StaleFence(await self._stale(tx, run, fence))
        ended = await self._end_run(tx, run, state, exit_code, error)
        await self.release_run_locks_in(tx, run.id, notices)
        await self.release_run_tasks_in(tx, run.id)
        await self.settle_calls_in(tx, ended, notices)
        item = self.item_from_row(item_row)
        rerun = None if project is None else await self._rerun(tx, project, ended, item)
        if rerun is not None and reserve_rerun_for is not None:
            rerun = await self._reserve_in(tx, rerun.id, reserve_rerun_for, _RESERVE_SECONDS)
        return FinalizeResult(ended, item, rerun)

    async def release(self, run_id: str, *, fence: int, reason: str) -> Run:
        """End a claimed run as killed with ``reason`` and give its item back to the queue,
        in one transaction: a run interrupted by a shutdown is work to do again.

        The item keeps its place (its id, so it comes before anything queued after it);
        the attempt counts, as a lost one does, so it stays outside the queue bound. The
        run's locks are released and a call it was answering is pending again. Refused
        with StaleFence, changing nothing, unless the item is still claimed with ``fence``.
        """
        notices: list[str] = []
        async with self.transaction() as tx:
            await self.lock_project(tx)
            run = await self._require_run(tx, run_id)
            params = {"item_id": run.item_id, "fence": fence}
            item_row = await tx.fetch_one("release_item", params)
            if item_row is None:
                raise StaleFence(await self._stale(tx, run, fence))
            ended = await self._end_run(tx, run, RunState.KILLED, None, reason)
            await self.release_run_locks_in(tx, run.id, notices)
            await self.release_run_tasks_in(tx, run.id)
            await self.requeue_calls_in(tx, self.item_from_row(item_row))
        self._notify_committed(notices)
        return ended

    async def reserve(self, item_id: int, owner: str, *, seconds: float) -> QueueItem | None:
        """Keep queued item ``item_id`` for ``owner`` for ``seconds`` more: no one else may
        claim it until then (``claim`` with ``item_id``). None when it is no longer queued.

        `corral run` in the foreground reserves the item it queued, in the transaction
        that queues it (``enqueue_reserved``), and renews the reservation while it waits
        for a slot; if it dies, the reservation lapses and any scheduler runs the item.
        """
        async with self.transaction() as tx:
            return await self._reserve_in(tx, item_id, owner, seconds)

    async def enqueue_reserved(self, new: NewItem, *, owner: str, seconds: float) -> EnqueueResult:
        """``enqueue``, and ``reserve`` the new item for ``owner``, in one transaction."""
        async with self.transaction() as tx:
            project = await self.lock_project(tx)
            result = await self._enqueue_locked(tx, project, new, "drop_oldest")
            if result.item.state is not ItemState.QUEUED:
                return result
            reserved = await self._reserve_in(tx, result.item.id, owner, seconds)
        return result if reserved is None else replace(result, item=reserved)

    async def _reserve_in(
        self, tx: Transaction, item_id: int, owner: str, seconds: float
    ) -> QueueItem | None:
        if seconds <= 0:
            raise ValueError(f"a reservation needs seconds > 0, got {seconds}")
        expires = self.encode_time(self.now() + timedelta(seconds=seconds))
        params = {"id": item_id, "owner": owner, "expires_at": expires}
        row = await tx.fetch_one("reserve_item", params)
        return None if row is None else self.item_from_row(row)

    async def _stale(self, tx: Transaction, run: Run, fence: int) -> str:
        what = f"run {run.id} (fence {fence}) may not finish"
        if run.item_id is None:
            return f"{what}: it was not claimed from the queue; nothing was changed ({self.url})"
        row = await tx.fetch_one("get_item", {"id": run.item_id})
        item = None if row is None else self.item_from_row(row)
        now = "gone" if item is None else f"{item.state.value}, fence {item.fence}"
        return (
            f"{what} item {run.item_id}: the run's lease was lost and the item was handed on "
            f"(it is now {now}); nothing was changed ({self.url})"
        )

    async def _end_run(
        self,
        tx: Transaction,
        run: Run,
        state: RunState,
        exit_code: int | None,
        error: str | None,
    ) -> Run:
        params = {
            "id": run.id,
            "state": state.value,
            "exit_code": exit_code,
            "error": error,
            "ended_at": self.encode_time(self.now()),
        }
        row = await tx.fetch_one("finish_run", params)
        if row is None:
            raise StoreError(
                f"cannot finish run {run.id} as {state.value}: it already ended as "
                f"{run.state.value} ({self.url})"
            )
        return self.run_from_row(row)

    async def _rerun(
        self, tx: Transaction, project: ProjectState, run: Run, item: QueueItem
    ) -> QueueItem | None:
        due = (
            run.rerun_requested
            and run.state is RunState.SUCCEEDED
            and item.trigger in _RERUN_TRIGGERS
            and item.rerun_count < project.max_reruns
        )
        if not due:
            return None
        new = NewItem(
            agent=item.agent,
            trigger=item.trigger,
            trigger_detail=item.trigger_detail,
            prompt=item.prompt,
            parent_run_id=run.id,
            rerun_count=item.rerun_count + 1,
        )
        return (await self._enqueue_locked(tx, project, new, "drop_oldest")).item

    # -- requests on a live run ----------------------------------------------------------

    async def request_rerun(self, run_id: str) -> Run:
        """Ask for the run to be run again once it succeeds (``al-rerun``)."""
        return await self._request(run_id, "request_rerun", "request a rerun of")

    async def request_kill(self, run_id: str) -> Run:
        """Ask the scheduler that owns the run to stop it (seen in ``kill_requests``)."""
        return await self._request(run_id, "request_kill", "kill")

    async def _request(self, run_id: str, query: str, what: str) -> Run:
        params = {"id": run_id, "now": self.encode_time(self.now())}
        async with self.transaction() as tx:
            row = await tx.fetch_one(query, params)
            if row is None:
                current = await self._require_run(tx, run_id)
                raise StoreConflict(f"cannot {what} run {run_id}: {_how_it_ended(current)}")
        return self.run_from_row(row)

    async def kill_requests(self, owner: str) -> list[Run]:
        """Live runs of ``owner`` that someone asked to kill, oldest first."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("kill_requests", {"owner": owner})
        return [self.run_from_row(row) for row in rows]

    # -- taking leases back --------------------------------------------------------------

    async def recover_lapsed(self) -> list[Recovered]:
        """Take back every lease that expired: its run becomes lost (its locks released),
        its item is queued again (or failed once it has had ``max_attempts`` attempts).
        One transaction, taken only when a lease has lapsed: the common case (none)
        reads one index entry without the project row. The items are selected again
        under their row locks, so a lease renewed meanwhile is not taken."""
        now = {"now": self.encode_time(self.now())}
        async with self.transaction(write=False) as tx:
            if await tx.fetch_one("any_lapsed", now) is None:
                return []
        notices: list[str] = []
        async with self.transaction() as tx:
            await self.lock_project(tx)
            items = [self.item_from_row(row) for row in await tx.fetch_all("lapsed_items", now)]
            taken = [
                await self._take_back(tx, item, _lapsed_error(item.lease_owner), notices)
                for item in items
            ]
        self._notify_committed(notices)
        return taken

    async def release_owner(self, owner: str, *, reason: str) -> list[Recovered]:
        """Take back every lease ``owner`` holds now, as ``recover_lapsed`` does on expiry;
        ``reason`` becomes the error of each run it loses."""
        notices: list[str] = []
        async with self.transaction() as tx:
            await self.lock_project(tx)
            rows = await tx.fetch_all("owner_items", {"owner": owner})
            items = [self.item_from_row(row) for row in rows]
            taken = [await self._take_back(tx, item, reason, notices) for item in items]
        self._notify_committed(notices)
        return taken

    async def _take_back(
        self, tx: Transaction, item: QueueItem, error: str, notices: list[str] | None = None
    ) -> Recovered:
        now = self.encode_time(self.now())
        run_row = None
        if item.run_id is not None:
            params = {
                "id": item.run_id,
                "state": RunState.LOST.value,
                "exit_code": None,
                "error": error,
                "ended_at": now,
            }
            run_row = await tx.fetch_one("finish_run", params)
            await self.release_run_locks_in(tx, item.run_id, notices)
            await self.release_run_tasks_in(tx, item.run_id)
        if item.attempts < item.max_attempts:
            row = await tx.fetch_one("requeue_item", {"id": item.id})
            await self.requeue_calls_in(tx, item)
        else:
            reason = f"gave up after {item.attempts} attempts; the last run {item.run_id} was lost"
            row = await tx.fetch_one("fail_item", {"id": item.id, "reason": reason, "now": now})
            await self.fail_calls_in(tx, item, f"the call failed: {reason}")
        taken = self.item_from_row(self._returned(row, "requeue_item/fail_item"))
        return Recovered(taken, None if run_row is None else self.run_from_row(run_row))


def _lapsed_error(owner: str | None) -> str:
    return f"lease lapsed: scheduler {owner} stopped renewing it"


def _how_it_ended(run: Run) -> str:
    if not run.state.is_terminal:  # pragma: no cover - the UPDATE matched live runs
        return f"it is {run.state.value}"
    code = "" if run.exit_code is None else f", exit code {run.exit_code}"
    ended = "" if run.ended_at is None else f" at {run.ended_at.isoformat(timespec='seconds')}"
    return f"it already ended as {run.state.value}{code}{ended}"
