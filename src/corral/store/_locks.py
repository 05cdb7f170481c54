"""Resource locks (``rlock``): try-lock, release, heartbeat, listing, operator release.

A key is one row of ``corral_locks``; its primary key is what makes a key held by at most
one run. These transactions never take the project lock: locks are hot and keys do not
contend with one another. Takers of one key are serialised by the query ``lock_key``
(PostgreSQL: a transaction-scoped advisory lock on the key; SQLite: ``BEGIN IMMEDIATE``
already serialises writers), so tokens are drawn in grant order and ``acquired_at`` is
read after the previous holder's release committed.

On PostgreSQL the hot requests, try-lock (``acquire_lock``), release and heartbeat, are
each ONE call of a server-side function installed by migration 0013 (``corral_rlock``,
``corral_runlock``, ``corral_rlock_heartbeat``), run in autocommit through
``Store.statement``: one round trip, where the same steps sent one at a time cost ten
(docs/decisions.md D47). The functions take the same advisory locks as the queries below,
so they serialise with the blocking waits and operator releases that still run as
transactions of several statements. SQLite runs the steps themselves, as one body on its
worker thread.

Requests that arrive while one is in flight go together in the next round trip
(``GroupCommit``): one call of ``corral_lock_batch`` (migration 0018) runs each of them
as the call it would have been alone, in one transaction, so a busy gateway pays one
round trip and one commit (one WAL flush) for a batch instead of one per request. Each
caller still gets its own answer, after the batch committed. A request alone is sent
alone.

Every lock of a run is released in the transaction that ends the run (``finalize``,
recovery, ``finish_run``), through ``release_run_locks_in``.

The wait-for graph has three kinds of edge: a run blocked in ``rlock --wait`` waits for
the key's holder (``corral_lock_waits``); a run whose plain try-lock was refused *wants*
the key for a short while (``corral_lock_wants``, see ``acquire_lock``); a caller in
``al-subagent-wait`` waits for its callee (``corral_calls``). Every check for a cycle
first takes the query ``lock_wait_graph`` (PostgreSQL: one transaction-scoped advisory
lock; SQLite: BEGIN IMMEDIATE already serialises writers), so two runs that close one
cycle at the same moment are checked one after the other: the second is told.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

from corral.errors import StoreBusy, StoreConflict, StoreError
from corral.store._batching import Failed, GroupCommit, Waiting
from corral.store._core import Row, StoreCore, Transaction
from corral.store._notify import lock_topic
from corral.store._time import utc_now
from corral.store.records import Deadlock, Lock, LockGrant, LockHeld, LockWaiter, RunState

__all__ = ["WANT_SECONDS", "LockOps"]

log = logging.getLogger("corral.store")

_LIVE = frozenset({RunState.STARTING.value, RunState.RUNNING.value})

#: How long a refused try-lock's want lasts (each refusal renews it): twice the 15 s an
#: agent's retry loop typically sleeps, so a run that retries stays in the graph while a
#: run that gave up (and neither took nor released a lock since) drops out of it soon.
WANT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class _LockCall:
    """One call of a PostgreSQL lock function, alone or in a batch."""

    op: str  # "rlock", "runlock" or "heartbeat"
    key: str
    run_id: str
    now: datetime | None
    ttl: float = 0.0
    want: float = 0.0


#: The outcome given to a batched call whose caller stopped waiting (it is not sent).
_GONE = Failed(asyncio.CancelledError())


class LockOps(StoreCore):
    """Resource locks; part of ``Store``."""

    _lock_calls: GroupCommit[_LockCall, Row] | None = None

    async def _lock_call(self, call: _LockCall) -> Row:
        """``call``'s answer, as a row of ``corral_rlock``'s shape (see ``lock_batch``):
        sent in the next batch of this store's lock calls."""
        if self._lock_calls is None:
            self._lock_calls = GroupCommit(self._run_lock_calls, name="corral-lock-calls")
        return await self._lock_calls.submit(call)

    async def _run_lock_calls(self, batch: list[Waiting[_LockCall, Row]]) -> list[Row | Failed]:
        """One round trip for the calls of ``batch`` (one alone when it is alone).

        Sorted by key, so that two processes' batches take the keys' advisory locks in
        one order. If the batch fails (nothing of it happened: one transaction), each call
        is sent again alone and gets its own answer or error; a busy store fails them all.
        """
        live = sorted((w for w in batch if not w.gone), key=lambda w: w.job.key)
        answers: dict[int, Row | Failed] = {}
        if len(live) > 1:
            calls = [w.job for w in live]
            params = {
                "ops": [c.op for c in calls],
                "keys": [c.key for c in calls],
                "run_ids": [c.run_id for c in calls],
                "nows": [c.now for c in calls],
                "ttls": [c.ttl for c in calls],
                "wants": [c.want for c in calls],
            }
            try:
                rows = await self.statement("lock_batch", params)
            except StoreBusy:
                raise
            except StoreError:
                rows = []
            if len(rows) == len(live):
                for waiting, row in zip(live, sorted(rows, key=lambda r: int(r["n"])), strict=True):
                    answers[id(waiting)] = row
        for waiting in live:
            if id(waiting) not in answers:
                try:
                    answers[id(waiting)] = await self._lock_call_alone(waiting.job)
                except StoreError as exc:
                    answers[id(waiting)] = Failed(exc)
        return [answers.get(id(waiting), _GONE) for waiting in batch]

    async def _lock_call_alone(self, call: _LockCall) -> Row:
        """``call`` as one statement of its own (the functions of migration 0013).

        On PostgreSQL a lone call could be the victim of the server's deadlock detector
        when a batch held the wait-for graph's advisory lock while it took a later key's
        lock (D81). Batches now take all their keys first (migration 0020), so that cycle
        no longer forms; the retry stays for any other: the victim's transaction was
        rolled back, nothing of it happened, so it is sent again (a few times: each try
        costs the server's ``deadlock_timeout``)."""
        for attempt in range(_DEADLOCK_TRIES):
            try:
                return await self._lock_call_once(call)
            except StoreBusy:
                raise
            except StoreError as exc:
                if attempt + 1 == _DEADLOCK_TRIES or not _deadlock_victim(exc):
                    raise
                log.info("lock call on %r was a deadlock victim; sent again", call.key)
        raise AssertionError("unreachable")

    async def _lock_call_once(self, call: _LockCall) -> Row:
        params: dict[str, object] = {"key": call.key, "run_id": call.run_id, "now": call.now}
        if call.op == "rlock":
            rows = await self.statement("rlock", params | {"ttl": call.ttl, "want": call.want})
            return self._returned(next(iter(rows), None), "rlock")
        if call.op == "runlock":
            rows = await self.statement("runlock", params)
            released = self._returned(next(iter(rows), None), "runlock")["released"]
            return {"outcome": "released" if released else "not_held"}
        rows = await self.statement("rlock_heartbeat", params | {"ttl": call.ttl})
        expiry = self._returned(next(iter(rows), None), "rlock_heartbeat")["expires_at"]
        return {"outcome": "lost" if expiry is None else "extended", "expires_at": expiry}

    async def acquire_lock(
        self, key: str, run_id: str, *, ttl_seconds: float, want_seconds: float = WANT_SECONDS
    ) -> LockGrant | LockHeld | Deadlock:
        """Try to lock ``key`` for ``run_id`` (a live run), in one transaction.

        Free or expired: granted with a new token, greater than every earlier one. Held
        by ``run_id`` itself (expired or not): refreshed, expiring ``ttl_seconds`` from
        now, with the same token (``refreshed=True``). An expired lock that runs are
        waiting for (``wait_for_lock``) goes to the first of them, not to a try-lock.
        A grant drops the run's want, if any.

        Held unexpired by another run: ``LockHeld`` naming it, and ``run_id`` now wants
        ``key`` (its one want, replacing an earlier one) for ``want_seconds``, unless
        that want would close a cycle in the wait-for graph: then ``Deadlock`` (the
        cycle, starting with ``run_id``), and the run wants nothing.
        StoreConflict for an unknown run or one that has ended.
        """
        _check_ttl(ttl_seconds)
        if self.dialect == "postgresql":
            return await self._acquire_in_one_call(key, run_id, ttl_seconds, want_seconds)

        async def body(tx: Transaction) -> LockGrant | LockHeld | Deadlock:
            await self._lock_key(tx, key)
            await self._require_live(tx, key, run_id)
            result = await self._acquire_locked(tx, key, run_id, ttl_seconds)
            if isinstance(result, LockGrant):
                return result
            return await self._want(tx, result, run_id, want_seconds)

        return await self.atomic(body)

    def _call_now(self) -> datetime | None:
        """The time the lock functions are given: the store's clock if a test installed
        one, else None, and the server reads its clock once the key's lock is held (as
        the steps on SQLite read it inside their transaction): a grant is then never dated
        before the previous holder's release, however long the call waited to get there."""
        return None if self.clock is utc_now else self.encode_time(self.now())

    async def _acquire_in_one_call(
        self, key: str, run_id: str, ttl_seconds: float, want_seconds: float
    ) -> LockGrant | LockHeld | Deadlock:
        """``acquire_lock`` on PostgreSQL: the same steps, in the same order, as one call of
        the server-side function ``corral_rlock`` (migration 0013), in autocommit: one
        round trip whatever the outcome, where the steps cost one each."""
        call = _LockCall(
            "rlock", key, run_id, self._call_now(), ttl_seconds, max(want_seconds, 0.0)
        )
        row = await self._lock_call(call)
        outcome = row["outcome"]
        if outcome in ("granted", "refreshed"):
            return LockGrant(
                key=key,
                run_id=run_id,
                token=int(row["token"]),
                acquired_at=self.decode_time(row["acquired_at"]),
                expires_at=self.decode_time(row["expires_at"]),
                refreshed=outcome == "refreshed",
            )
        if outcome == "held":
            return LockHeld(
                key=key, holder=row["holder"], held_since=self.decode_time(row["acquired_at"])
            )
        if outcome == "deadlock":
            edges: dict[str, list[tuple[str, str]]] = {}
            for waiter, via, holder in row["edges"]:
                edges.setdefault(waiter, []).append((via, holder))
            path = _path(edges, row["holder"], run_id)
            if path is None:  # the function found a cycle: so does the same search here
                raise StoreError(f"rlock {key!r}: a deadlock without a cycle on {self.url}")
            return Deadlock((run_id, key, row["holder"], *path))
        _raise_not_live(key, run_id, row["state"], self.url)

    async def _want(
        self, tx: Transaction, held: LockHeld, run_id: str, want_seconds: float
    ) -> LockHeld | Deadlock:
        """Record that ``run_id`` wants ``held.key``, or refuse with the cycle it closes."""
        cycle = await self.find_cycle(tx, run_id, held.key, held.holder)
        if cycle is not None:
            await tx.execute("delete_run_wants", {"run_id": run_id})
            return cycle
        now = self.now()
        params = {
            "run_id": run_id,
            "key": held.key,
            "now": self.encode_time(now),
            "expires_at": self.encode_time(now + timedelta(seconds=max(want_seconds, 0.0))),
        }
        await tx.execute("upsert_want", params)
        return held

    async def list_lock_wants(self) -> list[LockWaiter]:
        """Runs whose try-lock was refused a short while ago, as waiters (``deadline`` is
        when the want expires), by key; expired wants are left out."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_wants", {"now": self.encode_time(self.now())})
        return [
            LockWaiter(
                key=row["key"],
                run_id=row["run_id"],
                since=self.decode_time(row["since"]),
                deadline=self.decode_time(row["expires_at"]),
            )
            for row in rows
        ]

    async def wait_for_lock(
        self, key: str, run_id: str, *, ttl_seconds: float, wait_seconds: float
    ) -> LockGrant | LockHeld | Deadlock:
        """One step of a blocking acquire (``rlock --wait``); call it again until it is
        not ``LockHeld`` (or give up with ``cancel_lock_wait``).

        Granted when the key is free or expired and ``run_id`` is first in line (runs are
        served in the order they started waiting), or handed over by a release. While it
        is held by another run, ``run_id`` is recorded as waiting (its edge in the
        wait-for graph) for at most ``wait_seconds`` from its first step, and ``LockHeld``
        is returned. A wait that would close a cycle of runs waiting for one another
        (through locks and calls) is refused with ``Deadlock`` and leaves no edge.
        """
        _check_ttl(ttl_seconds)

        async def body(tx: Transaction) -> LockGrant | LockHeld | Deadlock:
            await self._lock_key(tx, key)
            await self._require_live(tx, key, run_id)
            result = await self._acquire_locked(tx, key, run_id, ttl_seconds)
            if isinstance(result, LockGrant):
                return result
            return await self._keep_waiting(tx, result, run_id, ttl_seconds, wait_seconds)

        return await self.atomic(body)

    async def _keep_waiting(
        self, tx: Transaction, held: LockHeld, run_id: str, ttl: float, wait_seconds: float
    ) -> LockHeld | Deadlock:
        now = self.now()
        params = {"key": held.key, "run_id": run_id}
        row = await tx.fetch_one("get_wait", params)
        waiting = row is not None
        if row is not None and self.decode_time(row["deadline"]) <= now:
            await tx.execute("delete_wait", params)  # a wait that lapsed: start again
            waiting = False
        cycle = await self.find_cycle(tx, run_id, held.key, held.holder)
        if cycle is not None:
            if waiting:
                await tx.execute("delete_wait", params)
            return cycle
        if not waiting:
            deadline = now + timedelta(seconds=max(wait_seconds, 0.0))
            await tx.execute(
                "insert_wait",
                params
                | {
                    "now": self.encode_time(now),
                    "deadline": self.encode_time(deadline),
                    "ttl_seconds": ttl,
                },
            )
        return held

    async def cancel_lock_wait(self, key: str, run_id: str) -> bool:
        """Stop waiting for ``key`` (timed out, or the request went away); False if the
        run was not waiting for it, which includes a release that handed it the key
        first: then it holds the key (see ``get_lock``).

        Serialised with the key's takers and releases (``lock_key``), so a release either
        committed its hand-over before (the wait is gone) or comes after (and passes the
        run over): never a hand-over to a run told its wait was cancelled."""

        async def body(tx: Transaction) -> int:
            await self._lock_key(tx, key)
            return await tx.execute("delete_wait", {"key": key, "run_id": run_id})

        return bool(await self.atomic(body))

    async def find_cycle(
        self, tx: Transaction, waiter: str, via: str, holder: str
    ) -> Deadlock | None:
        """The cycle ``waiter`` would close by waiting (for ``via``) on ``holder``, if any.

        Serialised with every other check (``lock_wait_graph``) until ``tx`` ends, so the
        edge ``tx`` then records is seen by the next check. SQLite's BEGIN IMMEDIATE
        already excludes every other writer, so there it costs no statement."""
        if self.dialect != "sqlite":
            await tx.execute("lock_wait_graph")
        now = {"now": self.encode_time(self.now())}
        edges: dict[str, list[tuple[str, str]]] = {}
        for query in ("lock_wait_edges", "lock_want_edges"):
            for row in await tx.fetch_all(query, now):
                edges.setdefault(row["waiter"], []).append((row["via"], row["holder"]))
        for row in await tx.fetch_all("call_wait_edges"):
            edges.setdefault(row["waiter"], []).append((f"call://{row['via']}", row["holder"]))
        path = _path(edges, holder, waiter)
        if path is None:
            return None
        return Deadlock((waiter, via, holder, *path))

    async def _acquire_locked(
        self, tx: Transaction, key: str, run_id: str, ttl_seconds: float
    ) -> LockGrant | LockHeld:
        """Grant or refresh ``key`` for ``run_id``, or say who holds it. A refusal writes
        nothing, except handing an expired lock to its first waiter."""
        # Twice at most: the holder's row can vanish between the two statements only when
        # its run ended meanwhile (that release does not serialise on the key).
        for _ in range(2):
            now = self.now()
            current = await tx.fetch_one("lock_holder", {"key": key})
            if current is not None and current["run_id"] != run_id:
                expired = self.decode_time(current["expires_at"]) <= now
                if not expired:
                    return self._held(current)
                successor = await self._next_in_line(tx, key, run_id)
                if successor is not None:
                    return self._held(successor)
            token_row = await tx.fetch_one("next_lock_token")
            token = int(self._returned(token_row, "next_lock_token")["token"])
            params = {
                "key": key,
                "run_id": run_id,
                "token": token,
                "now": self.encode_time(now),
                "expires_at": self.encode_time(now + timedelta(seconds=ttl_seconds)),
            }
            row = await tx.fetch_one("acquire_lock", params)
            if row is not None:
                await tx.execute("delete_wait", {"key": key, "run_id": run_id})
                await tx.execute("delete_run_wants", {"run_id": run_id})
                return self._grant(row, refreshed=int(row["token"]) != token)
        raise StoreError(f"cannot lock {key!r} for run {run_id}: the key kept changing hands")

    async def _next_in_line(self, tx: Transaction, key: str, run_id: str) -> Row | None:
        """Hand a free or expired ``key`` to the first run waiting for it, unless that is
        ``run_id`` (who then takes it itself); return the new lock row, if handed over."""
        now = self.now()
        head = await tx.fetch_one("head_waiter", {"key": key, "now": self.encode_time(now)})
        if head is None or head["run_id"] == run_id:
            return None
        return await self._hand_over(tx, key, head)

    async def _hand_over(self, tx: Transaction, key: str, waiter: Row) -> Row:
        now = self.now()
        token_row = await tx.fetch_one("next_lock_token")
        ttl = timedelta(seconds=float(waiter["ttl_seconds"]))
        params = {
            "key": key,
            "run_id": waiter["run_id"],
            "token": int(self._returned(token_row, "next_lock_token")["token"]),
            "now": self.encode_time(now),
            "expires_at": self.encode_time(now + ttl),
        }
        row = await tx.fetch_one("hand_over_lock", params)
        await tx.execute("delete_wait", {"key": key, "run_id": waiter["run_id"]})
        await tx.execute("delete_run_wants", {"run_id": waiter["run_id"]})
        return self._returned(row, "hand_over_lock")

    async def _serve_waiters(self, tx: Transaction, keys: list[str]) -> None:
        """Keys just released go to their first waiter, so a try-lock cannot overtake."""
        for key in keys:
            await self._next_in_line(tx, key, "")

    async def _lock_key(self, tx: Transaction, key: str) -> None:
        """Serialise the takers of ``key`` (PostgreSQL); SQLite's BEGIN IMMEDIATE already
        excludes every other writer, so there it costs no statement."""
        if self.dialect != "sqlite":
            await tx.execute("lock_key", {"key": key})

    def _held(self, row: Row) -> LockHeld:
        return LockHeld(
            key=row["key"], holder=row["run_id"], held_since=self.decode_time(row["acquired_at"])
        )

    async def _require_live(self, tx: Transaction, key: str, run_id: str) -> None:
        row = await tx.fetch_one("live_run_for_lock", {"run_id": run_id})
        if row is None:
            _raise_not_live(key, run_id, None, self.url)
        elif row["state"] not in _LIVE:
            _raise_not_live(key, run_id, row["state"], self.url)

    def _grant(self, row: Row, *, refreshed: bool) -> LockGrant:
        return LockGrant(
            key=row["key"],
            run_id=row["run_id"],
            token=int(row["token"]),
            acquired_at=self.decode_time(row["acquired_at"]),
            expires_at=self.decode_time(row["expires_at"]),
            refreshed=refreshed,
        )

    async def release_lock(self, key: str, run_id: str) -> bool:
        """Release ``key`` if ``run_id`` holds it (expired or not); False if it does not.
        A run waiting for the key gets it in the same transaction; ``run_id``'s want, if
        any, is dropped (it is doing something else now). On PostgreSQL one round trip
        (``corral_runlock``, migration 0013)."""
        if self.dialect == "postgresql":
            row = await self._lock_call(_LockCall("runlock", key, run_id, self._call_now()))
            return bool(row["outcome"] == "released")

        async def body(tx: Transaction) -> bool:
            await self._lock_key(tx, key)
            params = {"key": key, "run_id": run_id}
            released = await tx.fetch_one("release_lock_returning", params) is not None
            if released:
                await tx.execute("delete_run_wants", {"run_id": run_id})
                await self._serve_waiters(tx, [key])
            return released

        return await self.atomic(body)

    async def heartbeat_lock(self, key: str, run_id: str, *, ttl_seconds: float) -> datetime | None:
        """Make ``key`` expire ``ttl_seconds`` from now if ``run_id`` holds it (even if it
        expired and nobody took it); return the new expiry, or None if it does not. An
        expired lock that runs wait for goes to the first of them instead. On PostgreSQL
        one round trip (``corral_rlock_heartbeat``, migration 0013)."""
        _check_ttl(ttl_seconds)
        if self.dialect == "postgresql":
            call = _LockCall("heartbeat", key, run_id, self._call_now(), ttl_seconds)
            beat = await self._lock_call(call)
            expiry = beat["expires_at"] if beat["outcome"] == "extended" else None
            return None if expiry is None else self.decode_time(expiry)

        async def body(tx: Transaction) -> Row | None:
            await self._lock_key(tx, key)
            now = self.now()
            current = await tx.fetch_one("lock_holder", {"key": key})
            if current is None or current["run_id"] != run_id:
                return None
            if self.decode_time(current["expires_at"]) <= now:
                # Expired while others wait: the first of them gets it, not a late heartbeat.
                if await self._next_in_line(tx, key, run_id) is not None:
                    return None
            expires = now + timedelta(seconds=ttl_seconds)
            params = {"key": key, "run_id": run_id, "expires_at": self.encode_time(expires)}
            return await tx.fetch_one("heartbeat_lock", params)

        row = await self.atomic(body)
        return None if row is None else self.decode_time(row["expires_at"])

    async def list_locks(self) -> list[Lock]:
        """Every lock row, by key: unexpired ones and expired ones nobody took yet."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_locks")
        return sorted((self._lock_from_row(row) for row in rows), key=lambda lock: lock.key)

    async def get_lock(self, key: str) -> Lock | None:
        """The lock row of ``key``, if any (unexpired, or expired and not yet taken)."""

        async def body(tx: Transaction) -> Row | None:
            return await tx.fetch_one("get_lock", {"key": key})

        row = await self.atomic(body, write=False)
        return None if row is None else self._lock_from_row(row)

    async def list_lock_waiters(self) -> list[LockWaiter]:
        """Runs waiting in ``rlock --wait``, by key, first in line first."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_waits", {"now": self.encode_time(self.now())})
        return [
            LockWaiter(
                key=row["key"],
                run_id=row["run_id"],
                since=self.decode_time(row["since"]),
                deadline=self.decode_time(row["deadline"]),
            )
            for row in rows
        ]

    async def force_release_lock(self, key: str, *, actor: str = "operator") -> Lock | None:
        """Remove the lock on ``key`` whoever holds it (an operator's action, recorded in
        the audit log as ``actor``); return it. The first waiter, if any, gets it."""
        async with self.transaction() as tx:
            await self._lock_key(tx, key)
            row = await tx.fetch_one("get_lock", {"key": key})
            if row is None:
                return None
            lock = self._lock_from_row(row)
            await tx.execute("delete_lock", {"key": key, "token": lock.token})
            await self._serve_waiters(tx, [key])
            detail = {"holder": lock.run_id, "agent": lock.agent, "token": lock.token}
            await self.audit_in(
                tx, actor=actor, action="lock.force_release", subject=key, detail=detail
            )
        return lock

    async def release_run_locks(self, run_id: str) -> int:
        """Release every lock ``run_id`` holds; return how many."""
        notices: list[str] = []
        async with self.transaction() as tx:
            released = await self.release_run_locks_in(tx, run_id, notices)
        self._notify_committed(notices)
        return released

    async def release_run_locks_in(
        self, tx: Transaction, run_id: str, notices: list[str] | None = None
    ) -> int:
        """Inside ``tx``, which ends ``run_id``: release its locks (each to its first
        waiter, if any) and drop its edges in the wait-for graph (invariant 4). Each key's
        topic goes to ``notices``, for ``_notify_committed`` after the commit."""
        keys = sorted(
            row["key"] for row in await tx.fetch_all("release_run_locks", {"run_id": run_id})
        )
        if notices is not None:
            notices.extend(lock_topic(key) for key in keys)
        await tx.execute("delete_run_waits", {"run_id": run_id})
        await tx.execute("delete_run_wants", {"run_id": run_id})
        await tx.execute("clear_run_call_waits", {"run_id": run_id})
        await self._serve_waiters(tx, keys)
        return len(keys)

    def _lock_from_row(self, row: Row) -> Lock:
        decoded = self._decode_times(row, ("acquired_at", "expires_at"))
        decoded["token"] = int(decoded["token"])
        return Lock.from_row(decoded)


def _path(edges: dict[str, list[tuple[str, str]]], start: str, goal: str) -> list[str] | None:
    """A path from run ``start`` to run ``goal``, as [via, run, via, ...] after ``start``
    (ending with the via that reaches ``goal``); None if there is none."""
    if start == goal:
        return []
    seen = {start}
    stack: list[tuple[str, list[str]]] = [(start, [])]
    while stack:
        node, trail = stack.pop()
        for via, nxt in edges.get(node, ()):
            if nxt == goal:
                return [*trail, via]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*trail, via, nxt]))
    return None


def _raise_not_live(key: str, run_id: str, state: str | None, url: str) -> NoReturn:
    """StoreConflict for a lock asked by an unknown run (``state`` None) or an ended one."""
    if state is None:
        raise StoreConflict(f"cannot lock {key!r}: no run {run_id!r} in {url}")
    raise StoreConflict(
        f"cannot lock {key!r} for run {run_id}: the run has ended "
        f"({state}); its locks were released with it ({url})"
    )


def _check_ttl(ttl_seconds: float) -> None:
    if ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be > 0, got {ttl_seconds}")


#: How many times a lone lock call that lost to the server's deadlock detector is sent.
_DEADLOCK_TRIES = 5


def _deadlock_victim(exc: BaseException) -> bool:
    """Whether ``exc`` (a StoreError) is PostgreSQL's "deadlock detected" (SQLSTATE
    40P01): the statement's transaction was rolled back whole."""
    cause = exc.__cause__
    while cause is not None:
        if getattr(cause, "sqlstate", None) == "40P01":
            return True
        cause = cause.__cause__
    return False
