"""The durable queue: intake (bounds, rejections, dedupe) and claiming (caps, fairness,
fences).

Counts are never counted: ``corral_agents.queued / requeued / running`` are kept by
triggers on ``corral_queue`` (migration 0012), exact at every commit whatever moved an
item. Intake and claims of one agent take turns on that agent's row (``FOR UPDATE`` on
PostgreSQL; ``BEGIN IMMEDIATE`` serialises every writer on SQLite), so the counts they
read cannot change before they commit, and schedulers claiming at once on PostgreSQL
wait for one another per agent row, for one statement each (agent rows are taken in
name order), instead of queueing on the project row. The
project row is locked only by a claim under a project scale cap, which is what keeps that
cap exact across processes (docs/decisions.md, D43).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from corral.errors import RequestKeyReused, StoreError
from corral.store._core import _ITEM_TIMES, Row, Transaction
from corral.store._usage import UsageOps
from corral.store.records import (
    AgentState,
    Claim,
    EnqueueResult,
    ItemState,
    NewItem,
    ProjectState,
    QueueItem,
    TriggerKind,
)

__all__ = ["REQUEST_KEY_TTL", "Overflow", "QueueOps", "request_fingerprint"]

Overflow = Literal["drop_oldest", "refuse"]
QUEUE_FULL = "queue full"
#: How long an idempotency key is kept: a retry within it answers the first request.
REQUEST_KEY_TTL = timedelta(hours=24)
#: The longest an operator's request waits for a row another writer holds (PostgreSQL;
#: SQLite bounds the whole transaction by its busy timeout) before ``StoreBusy``.
REQUEST_LOCK_WAIT_MS = 3000


def request_fingerprint(new: NewItem) -> str:
    """SHA-256 (hex) of what ``new`` asks for: a key sent again must ask the same."""
    asked = {
        "agent": new.agent,
        "trigger": new.trigger.value,
        "trigger_detail": new.trigger_detail,
        "prompt": new.prompt,
        "parent_run_id": new.parent_run_id,
    }
    text = json.dumps(asked, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class QueueOps(UsageOps):
    """Queue intake and claiming; part of ``Store``."""

    # -- intake ------------------------------------------------------------------------

    async def enqueue(self, new: NewItem, *, overflow: Overflow = "drop_oldest") -> EnqueueResult:
        """Record a trigger for an agent, in one transaction.

        - An item with the same ``dedupe_key`` exists: nothing changes; that item is
          returned with ``duplicate=True``.
        - The agent is unknown, disabled by an operator, or has scale 0, or its or the
          project's daily cost cap is reached: the item is recorded ``rejected`` with a
          reason saying why and what to do.
        - The agent's queue is full: ``drop_oldest`` drops its oldest queued items (state
          ``dropped``, with the reason) so this one fits; ``refuse`` records this one
          ``rejected`` with the reason "queue full". Items given back after a lost lease
          (attempts > 0) neither count against the bound nor are dropped for newer ones:
          the work was accepted, and our failure lost it, not an overload.
        - Otherwise the item is ``queued``. Paused agents accept items too.
        """
        if overflow not in ("drop_oldest", "refuse"):
            raise ValueError(f"overflow must be 'drop_oldest' or 'refuse', got {overflow!r}")
        if self.dialect == "postgresql":
            # One round trip: corral_enqueue in autocommit is the transaction. An item it
            # leaves to Python ('fallback': nothing changed) takes the transaction below.
            rows = await self.statement("enqueue_items", self._enqueue_params([new], overflow))
            done = self._enqueued(rows)
            if done:
                return done[0]
        async with self.transaction() as tx:
            # The project row is read, not locked: intake needs only the agent's row.
            row = await tx.fetch_one("get_project")
            project = ProjectState.from_row(self._returned(row, "get_project"))
            return await self._enqueue_locked(tx, project, new, overflow)

    async def enqueue_request(
        self,
        new: NewItem,
        *,
        actor: str,
        key: str | None = None,
        action: str = "run.trigger",
        overflow: Overflow = "drop_oldest",
    ) -> EnqueueResult:
        """Queue an operator's request (``POST /control/runs``, ``corral run``) as ``enqueue``
        does, in ONE transaction with its audit entry and, given ``key``, its idempotency
        key: either all of it is recorded or none of it.

        - ``key`` was recorded (within ``REQUEST_KEY_TTL``) for the same request: nothing
          changes; the item that request queued is returned (as it is now) with the items
          it displaced then, and ``duplicate=True``.
        - ``key`` was recorded for a different request: ``RequestKeyReused``.
        - Waits for a row another writer holds at most ``REQUEST_LOCK_WAIT_MS``, then
          ``StoreBusy`` (so a request answered "busy" never commits afterwards).
        """
        fingerprint = request_fingerprint(new)
        if self.dialect == "postgresql":
            # One round trip (corral_enqueue_request); a key already recorded, or an item
            # left to Python, takes the transaction below (nothing was queued).
            now = self.now()
            params = {
                "item": self.encode_json(_item_json(new)),
                "overflow": overflow,
                "now": self.encode_time(now),
                "key": key,
                "fingerprint": fingerprint,
                "expires_at": self.encode_time(now + REQUEST_KEY_TTL),
                "actor": actor,
                "action": action,
                "lock_wait": f"{REQUEST_LOCK_WAIT_MS}ms",
            }
            done = self._enqueued(await self.statement("enqueue_request", params))
            if done:
                return done[0]
        async with self.transaction() as tx:
            await tx.execute("bound_lock_waits", {"timeout": f"{REQUEST_LOCK_WAIT_MS}ms"})
            project = await self.lock_project(tx)
            if key is not None:
                earlier = await self._earlier_request(tx, key, fingerprint, new)
                if earlier is not None:
                    return earlier
            result = await self._enqueue_locked(tx, project, new, overflow)
            item = result.item
            if key is not None:
                await self._record_request_key(tx, key, fingerprint, result)
            detail: dict[str, Any] = {"item": item.id, "state": item.state.value}
            if item.reason:
                detail["reason"] = item.reason
            if result.dropped:
                detail["dropped"] = [d.id for d in result.dropped]
            if key is not None:
                detail["key"] = key
            await self.audit_in(tx, actor=actor, action=action, subject=new.agent, detail=detail)
            return result

    async def _earlier_request(
        self, tx: Transaction, key: str, fingerprint: str, new: NewItem
    ) -> EnqueueResult | None:
        """The result of the request ``key`` named before, or None if it names none yet."""
        await tx.execute("prune_request_keys", {"now": self.encode_time(self.now())})
        row = await tx.fetch_one("find_request_key", {"key": key})
        if row is None:
            return None
        if row["fingerprint"] != fingerprint:
            when = self.decode_time(row["created_at"]).isoformat(timespec="seconds")
            raise RequestKeyReused(
                f"idempotency key {key!r} was first sent at {when} with a different request "
                f"(a run of {row['agent']!r}); this request (a run of {new.agent!r}) was not "
                "queued: send a new key with a new request"
            )
        item_row = await tx.fetch_one("get_item", {"id": row["item_id"]})
        item = self.item_from_row(self._returned(item_row, "get_item"))
        dropped = []
        for dropped_id in (self.decode_json(row["dropped"]) or {}).get("ids", []):
            dropped_row = await tx.fetch_one("get_item", {"id": dropped_id})
            if dropped_row is not None:
                dropped.append(self.item_from_row(dropped_row))
        return EnqueueResult(item, tuple(dropped), duplicate=True)

    async def _record_request_key(
        self, tx: Transaction, key: str, fingerprint: str, result: EnqueueResult
    ) -> None:
        now = self.now()
        params = {
            "key": key,
            "fingerprint": fingerprint,
            "agent": result.item.agent,
            "item_id": result.item.id,
            "dropped": self.encode_json({"ids": [d.id for d in result.dropped]}),
            "now": self.encode_time(now),
            "expires_at": self.encode_time(now + REQUEST_KEY_TTL),
        }
        await tx.execute("insert_request_key", params)

    async def _enqueue_many_locked(
        self,
        tx: Transaction,
        project: ProjectState | None,
        items: Sequence[NewItem],
        overflow: Overflow,
        *,
        sent: Sequence[Row] | None = None,
    ) -> list[EnqueueResult]:
        """``_enqueue_locked`` for each of ``items`` in order, inside ``tx``.

        On PostgreSQL the lot is one statement (``corral_enqueue``, migration 0017), one
        round trip whatever the count; an item it leaves to Python (an agent that takes no
        triggers, a cost cap: it stops there, having changed nothing for that item) is
        enqueued by ``_enqueue_locked`` and the rest go in another call. ``project`` is
        read when None and that is needed. ``sent``: the rows of an ``enqueue_items`` of
        all ``items`` the caller already ran in ``tx`` (sent with other statements).
        """
        results: list[EnqueueResult] = []
        start = 0
        # Under a project cost cap every item is Python's (the function would hand each back).
        at_once = self.dialect == "postgresql" and (
            project is None or project.daily_cost_cap is None
        )
        while start < len(items):
            if at_once:
                rows: Sequence[Row]
                if sent is None:
                    params = self._enqueue_params(items[start:], overflow)
                    rows = await tx.fetch_all("enqueue_items", params)
                else:
                    rows, sent = sent, None
                done = self._enqueued(rows)
                results += done
                start += len(done)
                if start >= len(items):
                    break
            if project is None:
                row = await tx.fetch_one("get_project")
                project = ProjectState.from_row(self._returned(row, "get_project"))
            results.append(await self._enqueue_locked(tx, project, items[start], overflow))
            start += 1
        return results

    def _enqueue_params(self, items: Sequence[NewItem], overflow: Overflow) -> dict[str, Any]:
        """The parameters of ``enqueue_items`` (PostgreSQL) for ``items``."""
        encoded = [_item_json(new) for new in items]
        return {
            "items": self.encode_json(encoded),
            "overflow": overflow,
            "now": self.encode_time(self.now()),
        }

    def _enqueued(self, rows: Sequence[Row]) -> list[EnqueueResult]:
        """What ``enqueue_items`` did, item by item, up to the first it left to Python."""
        results: list[EnqueueResult] = []
        dropped: list[QueueItem] = []
        for row in rows:
            outcome = row["outcome"]
            if outcome == "fallback":
                break
            item = self.item_from_row(row)
            if outcome == "dropped":
                dropped.append(item)
                continue
            duplicate = outcome == "duplicate"
            results.append(EnqueueResult(item, tuple(dropped), duplicate=duplicate))
            dropped = []
        return results

    async def _enqueue_locked(
        self, tx: Transaction, project: ProjectState, new: NewItem, overflow: Overflow
    ) -> EnqueueResult:
        """``enqueue`` inside ``tx``. Locks the agent's row first: a racing intake of the
        same agent (the same dedupe key: keys name their agent) waits for this one, then
        finds its item as the duplicate."""
        agent_row = await tx.fetch_one("lock_agent_state", {"agent": new.agent})
        duplicate = await self._find_duplicate(tx, new)
        if duplicate is not None:
            return EnqueueResult(duplicate, duplicate=True)
        agent = None if agent_row is None else AgentState.from_row(agent_row)
        refusal = _unknown(new.agent) if agent is None else _refusal(agent)
        if refusal is None and agent is not None:
            refusal = await self.cost_cap_refusal(tx, project, agent)
        if refusal is not None or agent is None:
            return EnqueueResult(self._returned_item(await self._insert(tx, project, new, refusal)))
        dropped: list[QueueItem] = []
        # The never-tried queued items (the counter; agent_row is locked): items given
        # back after a lost lease neither count against the bound nor are dropped.
        waiting = int(self._returned(agent_row, "lock_agent_state")["bound"])
        if waiting >= agent.queue_size:
            if overflow == "refuse":
                refused = await self._insert(tx, project, new, QUEUE_FULL)
                return EnqueueResult(self._returned_item(refused))
            dropped = await self._drop_oldest(tx, agent, waiting - agent.queue_size + 1)
        item = await self._insert(tx, project, new, None)
        if item is None:
            # Another transaction committed the same key meanwhile (only possible across
            # agents, which never share keys in practice): it is the duplicate.
            duplicate = await self._find_duplicate(tx, new)
            return EnqueueResult(self._returned_item(duplicate), duplicate=True)
        return EnqueueResult(item, tuple(dropped))

    async def _find_duplicate(self, tx: Transaction, new: NewItem) -> QueueItem | None:
        """The item already stored under ``new``'s dedupe key or one of its aliases."""
        if new.dedupe_key is None:
            return None
        if new.dedupe_aliases:
            keys = self.encode_list([new.dedupe_key, *new.dedupe_aliases])
            row = await tx.fetch_one("find_dedupe_any", {"keys": keys})
        else:
            row = await tx.fetch_one("find_dedupe", {"dedupe_key": new.dedupe_key})
        return None if row is None else self.item_from_row(row)

    def _returned_item(self, item: QueueItem | None) -> QueueItem:
        if item is None:
            raise StoreError(f"enqueue: the dedupe key's item vanished ({self.url})")
        return item

    async def _drop_oldest(self, tx: Transaction, agent: AgentState, n: int) -> list[QueueItem]:
        params = {
            "agent": agent.agent,
            "n": n,
            "reason": f"queue full ({agent.queue_size} items): dropped for a newer item",
            "now": self.encode_time(self.now()),
        }
        rows = await tx.fetch_all("drop_oldest", params)
        dropped = sorted((self.item_from_row(row) for row in rows), key=lambda item: item.id)
        for item in dropped:
            await self.fail_calls_in(tx, item, f"the call was dropped: {params['reason']}")
        return dropped

    async def _insert(
        self, tx: Transaction, project: ProjectState, new: NewItem, rejected: str | None
    ) -> QueueItem | None:
        """The new item; None when its dedupe key was taken meanwhile (ON CONFLICT)."""
        now = self.encode_time(self.now())
        params = {
            "agent": new.agent,
            "trigger_kind": new.trigger.value,
            "trigger_detail": self.encode_json(new.trigger_detail),
            "prompt": new.prompt,
            "parent_run_id": new.parent_run_id,
            "rerun_count": new.rerun_count,
            # A rejected item holds no dedupe key: a retry once the cause is fixed is new.
            "dedupe_key": new.dedupe_key if rejected is None else None,
            "state": (ItemState.QUEUED if rejected is None else ItemState.REJECTED).value,
            "reason": rejected,
            "now": now,
            "finished_at": None if rejected is None else now,
            "max_attempts": project.max_attempts,
        }
        row = await tx.fetch_one("insert_item", params)
        return None if row is None else self.item_from_row(row)

    # -- claiming ----------------------------------------------------------------------

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
    ) -> list[Claim]:
        """Claim up to ``limit`` queued items for ``owner``, in one transaction.

        Fair across agents: round robin, each agent's oldest item first, agents in the
        order of their oldest waiting item; never more active claims for an agent than
        its scale, nor for the project than its scale cap; nothing for paused, disabled
        or absent agents or while the project is paused. Each claim gets a lease of
        ``lease_seconds``, a fencing token greater than every earlier one of its item,
        and a new run (state starting). With ``item_id``: only that item, if its agent
        and the project have a free slot now (it may overtake older items: it was asked
        for). On PostgreSQL a batch claim waits for the rows of the agents it chose
        (held for one statement by another claim, an intake or a run's end), taken in
        name order; under a project cap (the transaction below), an agent another
        scheduler is claiming for right now is skipped.

        ``secret_hashes``: the hashes of secrets the caller made for the runs it may
        start; the i-th claim (in item id order) keeps the i-th as its run's
        ``secret_hash``, so the run needs no write of its own to get one. Claims past
        the end of the list get none (``set_run_secret`` later). Each must be unused.

        On PostgreSQL a batch (no ``item_id``) of a project without a scale cap is ONE
        statement in autocommit (``claim_batch``): one round trip. Under a cap, the
        transaction below, which takes the project lock.

        ``bundle``: the project bundle the runs will run (recorded on each run).

        ``agents``: only items of these agents (a control plane leaves the agents that run
        on runners alone; a runner takes only those whose labels it has); the same rules
        either way, so caps hold across the fleet (such a claim is the transaction below).
        ``runner``: ``owner`` is a runner of the fleet, recorded as each run's ``runner_id``.
        """
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        hashes = list(secret_hashes)
        if len(set(hashes)) != len(hashes):
            raise ValueError("claim: secret_hashes names a hash twice; each run needs its own")
        if limit == 0:
            return []
        if item_id is None and agents is None and not runner and self.dialect == "postgresql":
            claims = await self._claim_batch(owner, lease_seconds, limit, hashes, bundle)
            if claims is not None:
                return claims

        async with self.transaction() as tx:
            return await self._claim_in(
                tx, owner, lease_seconds, limit, item_id, hashes, bundle, agents, runner
            )

    async def _claim_in(
        self,
        tx: Transaction,
        owner: str,
        lease_seconds: float,
        limit: int,
        item_id: int | None,
        hashes: list[str],
        bundle: str | None = None,
        agents: Collection[str] | None = None,
        runner: bool = False,
    ) -> list[Claim]:
        """``claim`` inside ``tx``: every case, on both stores."""
        limit = await self._claim_limit(tx, limit)
        if limit <= 0:
            return []
        now = self.encode_time(self.now())
        if item_id is None:
            only = {
                "restricted": agents is not None,
                "agents": self.encode_list(sorted(agents or ())),
            }
            chosen = await tx.fetch_all("claimable", {"limit": limit, "now": now, **only})
        else:
            # The agent's row before the item's, as intake and batch claims take
            # them (the other way round deadlocks with an intake dropping the item).
            item_row = await tx.fetch_one("get_item", {"id": item_id})
            if item_row is not None:
                await tx.fetch_one("lock_agent_state", {"agent": item_row["agent"]})
            params = {"item_id": item_id, "owner": owner, "now": now}
            chosen = await tx.fetch_all("claimable_item", params)
        if not chosen:
            return []
        return await self._claim_items(tx, owner, chosen, lease_seconds, bundle, hashes, runner)

    async def _claim_batch(
        self,
        owner: str,
        lease_seconds: float,
        limit: int,
        hashes: list[str],
        bundle: str | None = None,
    ) -> list[Claim] | None:
        """PostgreSQL: a batch claim as the one statement ``claim_batch``; None, having
        claimed nothing, when the project has a scale cap (``claim`` then takes the
        project lock in its transaction, as every claim under a cap must)."""
        now = self.now()
        params = {
            "limit": limit,
            "owner": owner,
            "now": self.encode_time(now),
            "expires_at": self.encode_time(now + timedelta(seconds=lease_seconds)),
            "secret_hashes": hashes,
            "bundle": bundle,
        }
        rows = await self.statement("claim_batch", params)
        head = self._returned(rows[0] if rows else None, "claim_batch")
        if head["capped"] and not head["paused"]:
            return None
        claims = []
        for row in rows:
            if row["id"] is None:
                continue
            run = dict(row)
            item = run.pop("claimed_item")
            for column in ("capped", "paused", "calls_started"):
                run.pop(column)
            for column in _ITEM_TIMES:
                if isinstance(item.get(column), str):
                    item[column] = datetime.fromisoformat(item[column])
            claims.append(Claim(self.item_from_row(item), self.run_from_row(run)))
        return sorted(claims, key=lambda claim: claim.item.id)

    async def _claim_limit(self, tx: Transaction, limit: int) -> int:
        """How many items this claim may take as far as the project goes.

        Without a project scale cap the project row is only read: claims of different
        agents share nothing. With one, it is locked (``lock_project``) and the running
        total read in a statement after it: every claim under a cap takes that lock, so
        the total cannot grow before this transaction commits and the cap is exact.
        """
        project = ProjectState.from_row(
            self._returned(await tx.fetch_one("get_project"), "get_project")
        )
        if project.paused or limit <= 0:
            return 0
        if project.scale_cap is None:
            return limit
        project = await self.lock_project(tx)
        if project.paused or project.scale_cap is None:
            return 0 if project.paused else limit
        active = self._returned(await tx.fetch_one("count_active"), "count_active")
        return min(limit, project.scale_cap - int(active["n"]))

    async def _claim_items(
        self,
        tx: Transaction,
        owner: str,
        chosen: list[Row],
        lease_seconds: float,
        bundle: str | None = None,
        hashes: Sequence[str] = (),
        runner: bool = False,
    ) -> list[Claim]:
        """Claim ``chosen`` (rows with id, agent, trigger_kind) set-wise: one statement
        inserts every run (the i-th with ``hashes[i]`` as its secret hash, if there is
        one), one claims every item, one starts their calls (and, for a runner, one
        records it on the runs)."""
        ordered = sorted(chosen, key=lambda row: int(row["id"]))
        fences = await self._next_fences(tx, len(ordered))
        plan = [
            {
                "item_id": int(row["id"]),
                "run_id": f"{row['agent']}-{secrets.token_hex(6)}",
                "fence": fence,
                "secret_hash": hashes[i] if i < len(hashes) else None,
            }
            for i, (row, fence) in enumerate(zip(ordered, fences, strict=True))
        ]
        now = self.now()
        params = {
            "plan": json.dumps(plan),
            "owner": owner,
            "now": self.encode_time(now),
            "expires_at": self.encode_time(now + timedelta(seconds=lease_seconds)),
            "bundle": bundle,
        }
        # The runs first: the items' run_id refers to them.
        runs = {
            row["item_id"]: self.run_from_row(row)
            for row in await tx.fetch_all("insert_claim_runs", params)
        }
        items = [self.item_from_row(row) for row in await tx.fetch_all("claim_items", params)]
        if len(runs) != len(plan) or len(items) != len(plan):
            raise StoreError(
                f"claim: {len(plan)} items chosen but {len(runs)} runs and {len(items)} claims "
                f"made; nothing was changed ({self.url})"
            )
        if any(row["trigger_kind"] == TriggerKind.CALL.value for row in ordered):
            await tx.execute("start_claimed_calls", params)
        if runner:
            await tx.execute("claimed_for_runner", params)
            runs = {key: run.evolve(runner_id=owner) for key, run in runs.items()}
        return [Claim(item, runs[item.id]) for item in sorted(items, key=lambda item: item.id)]

    async def _next_fences(self, tx: Transaction, count: int) -> list[int]:
        """``count`` fencing tokens, increasing. PostgreSQL draws them from a sequence (one
        row each, not contiguous); SQLite reserves a contiguous range on the project row."""
        rows = await tx.fetch_all("next_fences", {"n": count})
        if rows and "fence" in rows[0]:
            return sorted(int(row["fence"]) for row in rows)
        last = int(self._returned(rows[0] if rows else None, "next_fences")["fence_counter"])
        return list(range(last - count + 1, last + 1))

    # -- reading -----------------------------------------------------------------------

    async def list_items(
        self,
        *,
        agent: str | None = None,
        states: Collection[ItemState] | None = None,
        limit: int = 100,
    ) -> list[QueueItem]:
        """Queue items, newest first (by id)."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        chosen = list(ItemState) if states is None else [ItemState(s) for s in states]
        params: dict[str, Any] = {"limit": limit, "states": self.encode_states(chosen)}
        if agent is not None:
            name = "list_agent_items"
            params["agent"] = agent
        else:
            name = _items_query(set(chosen))
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all(name, params)
        return [self.item_from_row(row) for row in rows]

    async def get_item(self, item_id: int) -> QueueItem | None:
        async with self.transaction(write=False) as tx:
            row = await tx.fetch_one("get_item", {"id": item_id})
        return None if row is None else self.item_from_row(row)


#: Item states with a partial index of their own, and the query that reads it.
_OPEN = frozenset({ItemState.QUEUED, ItemState.CLAIMED})
_SET_ASIDE = frozenset({ItemState.DROPPED, ItemState.REJECTED})


def _items_query(states: set[ItemState]) -> str:
    """The query for ``list_items`` of ``states``: one that reads only the open (or only
    the set-aside) rows when that is all it asks for, not every item ever queued."""
    if states <= _OPEN:
        return "list_open_items"
    if states <= _SET_ASIDE:
        return "list_set_aside_items"
    return "list_items"


def _item_json(new: NewItem) -> dict[str, Any]:
    """``new`` as the enqueue functions of PostgreSQL take it (migration 0017)."""
    fields: dict[str, Any] = {
        "agent": new.agent,
        "trigger_kind": new.trigger.value,
        "rerun_count": new.rerun_count,
    }
    optional = {
        "trigger_detail": new.trigger_detail,
        "prompt": new.prompt,
        "parent_run_id": new.parent_run_id,
        "dedupe_key": new.dedupe_key,
    }
    fields.update({name: value for name, value in optional.items() if value is not None})
    if new.dedupe_aliases:
        fields["dedupe_aliases"] = list(new.dedupe_aliases)
    return fields


def _unknown(name: str) -> str:
    return (
        f"unknown agent {name!r}: the project has no agents/{name}/; check the trigger's agent name"
    )


def _refusal(agent: AgentState) -> str | None:
    """Why ``agent`` takes no triggers now, with what to do; None when it does."""
    name = agent.agent
    if not agent.present:
        return (
            f"unknown agent {name!r}: it is no longer in the project "
            f"(agents/{name}/ was removed); restore it or retarget the trigger"
        )
    if not agent.enabled:
        return (
            f"agent {name!r} was disabled by an operator; "
            f"`corral enable {name}` to accept triggers again"
        )
    if agent.scale == 0:
        return (
            f"agent {name!r} is disabled (scale = 0); set scale to 1 or more in "
            f"agents/{name}/config.toml to accept triggers"
        )
    return None
