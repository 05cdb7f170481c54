"""Model providers' rate limits (migration 0026): one token bucket per (provider, key),
shared by every scheduler and runner host through the store.

A bucket holds request permits (``requests``, at most ``burst``, refilled at the
configured rate) and tokens (refilled at the tokens rate; a request needs a positive
balance, and its tokens are charged after the answer, so the balance may go below zero
and the next requests wait for it to come back). Every grant is one short transaction
that locks the bucket's row (PostgreSQL ``FOR UPDATE``; SQLite's writers are serialised).

Fair turns: when permits are short, the runs asking are queued in
``corral_provider_waiters``; a permit goes to the first of them in this order: the
k-th waiting run of each agent before any agent's (k+1)-th, and among equals the agent
served longest ago first, then the run waiting longest. So each agent that keeps asking
gets an equal share of a contended bucket, however many runs it has. A waiter that stops
asking for ``WAITER_STALE`` seconds loses its place. The rule never leaves a permit idle:
one that the run whose turn it is has not come for within a quarter of the gap between
permits (``_grace``) goes to whoever asks next (runs ask again when their estimated turn
comes, and the order may have changed meanwhile).

A 429 (``throttle_provider``) empties the bucket and stops every grant until the
provider's ``Retry-After`` has passed (when it gave none: 1 s, doubled for each lowering
of the rate in force, at most ``window``). A 429 that arrives after the previous
throttle ended, within ``window`` seconds of it, also lowers the bucket's rate
(``factor`` times 0.75, at least 0.1): the configured limit was too high. The factor
recovers by 0.1 per ``window`` without a 429.

Reading the buckets (``provider_buckets``, what the pool decider asks) computes the same
recovery and the throttle's end from the stored state and the time, without writing: a
bucket nobody asks for any more still climbs back. A bucket nobody used for 10 minutes
(its key rotated away) does not count as saturated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from corral.store._core import StoreCore
from corral.store.records import BucketLimits, ProviderBucket

__all__ = ["WAITER_STALE", "ProviderOps"]

#: Seconds after which a waiter that stopped asking loses its place.
WAITER_STALE = 5.0
#: How much a repeated 429 lowers the rate, the floor, and the recovery per window.
_BACKOFF = 0.75
_FLOOR = 0.1
_RECOVERY = 0.1
#: The longest a caller is told to wait before asking again (it keeps its place).
_MAX_WAIT = 1.0


def _grace(rate: float) -> float:
    """How long a permit waits for the run whose turn it is before anyone may take it:
    a quarter of the gap between permits, within [10 ms, 500 ms]."""
    return min(max(0.25 / rate, 0.01), 0.5)


@dataclass
class _Bucket:
    requests: float
    tokens: float
    refilled_at: datetime
    throttled_until: datetime | None
    last_throttle_at: datetime | None
    #: Since when a whole permit has been lying in the bucket (None: less than one).
    available_since: datetime | None
    factor: float
    granted: int
    throttles: int


class ProviderOps(StoreCore):
    """Providers' shared token buckets; part of ``Store``."""

    async def _bucket(self, tx: Any, bucket: str, provider: str, limits: BucketLimits) -> _Bucket:
        row = await tx.fetch_one("lock_provider_bucket", {"bucket": bucket})
        if row is None:  # first use: a full bucket
            await tx.execute(
                "ensure_provider_bucket",
                {
                    "bucket": bucket,
                    "provider": provider,
                    "requests": float(limits.burst),
                    "tokens": float(limits.token_capacity),
                    "now": self.encode_time(self.now()),
                },
            )
            row = self._returned(
                await tx.fetch_one("lock_provider_bucket", {"bucket": bucket}),
                "lock_provider_bucket",
            )
        return _Bucket(
            requests=float(row["requests"]),
            tokens=float(row["tokens"]),
            refilled_at=self.decode_time(row["refilled_at"]),
            throttled_until=self._time_or_none(row["throttled_until"]),
            last_throttle_at=self._time_or_none(row["last_throttle_at"]),
            available_since=self._time_or_none(row["available_since"]),
            factor=float(row["factor"]),
            granted=int(row["granted"]),
            throttles=int(row["throttles"]),
        )

    def _time_or_none(self, value: Any) -> datetime | None:
        return None if value is None else self.decode_time(value)

    def _refill(self, b: _Bucket, limits: BucketLimits, now: datetime) -> None:
        """Add what accrued since the last refill; nothing accrues while throttled."""
        start = b.refilled_at
        if b.throttled_until is not None and b.throttled_until > start:
            start = min(b.throttled_until, now)
        elapsed = max((now - start).total_seconds(), 0.0)
        if elapsed > 0 and (b.throttled_until is None or now >= b.throttled_until):
            b.factor = min(1.0, b.factor + elapsed * _RECOVERY / limits.window)
        if limits.requests_per_second is not None:
            rate = limits.requests_per_second * b.factor
            old = b.requests
            b.requests = min(float(limits.burst), old + elapsed * rate)
            if b.requests < 1.0 - 1e-9:
                b.available_since = None
            elif old < 1.0 - 1e-9 or b.available_since is None:
                b.available_since = start + timedelta(seconds=max(1.0 - old, 0.0) / rate)
        if limits.tokens_per_second is not None:
            rate = limits.tokens_per_second * b.factor
            b.tokens = min(float(limits.token_capacity), b.tokens + elapsed * rate)
        b.refilled_at = max(now, b.refilled_at)

    async def _save(self, tx: Any, bucket: str, b: _Bucket) -> None:
        await tx.execute(
            "update_provider_bucket",
            {
                "bucket": bucket,
                "requests": b.requests,
                "tokens": b.tokens,
                "refilled_at": self.encode_time(b.refilled_at),
                "throttled_until": (
                    None if b.throttled_until is None else self.encode_time(b.throttled_until)
                ),
                "last_throttle_at": (
                    None if b.last_throttle_at is None else self.encode_time(b.last_throttle_at)
                ),
                "available_since": (
                    None if b.available_since is None else self.encode_time(b.available_since)
                ),
                "factor": b.factor,
                "granted": b.granted,
                "throttles": b.throttles,
            },
        )

    async def take_provider_permit(
        self, bucket: str, provider: str, waiter: str, agent: str, limits: BucketLimits
    ) -> float:
        """One request permit of ``bucket`` for ``waiter`` (a run of ``agent``): 0.0 when
        granted, else the seconds to wait before asking again (the waiter keeps its place
        in the queue while it keeps asking)."""
        now = self.now()
        at = self.encode_time(now)
        async with self.transaction() as tx:
            b = await self._bucket(tx, bucket, provider, limits)
            self._refill(b, limits, now)
            # Refilling is a function of the stored state and the time, so an answer that
            # grants nothing writes only the waiter's row (fewer round trips under the
            # bucket's lock).
            await tx.execute(
                "upsert_provider_waiter",
                {"bucket": bucket, "waiter": waiter, "agent": agent, "now": at},
            )
            if b.throttled_until is not None and now < b.throttled_until:
                return min((b.throttled_until - now).total_seconds(), _MAX_WAIT) or 0.001
            stale = now - timedelta(seconds=WAITER_STALE)
            rows = [
                row
                for row in await tx.fetch_all("list_provider_waiters", {"bucket": bucket})
                if self.decode_time(row["seen_at"]) >= stale
            ]
            position = self._position(rows, waiter)
            available = (
                math.inf if limits.requests_per_second is None else math.floor(b.requests + 1e-9)
            )
            tokens_ok = limits.tokens_per_second is None or b.tokens > 0
            overdue = (
                limits.requests_per_second is not None
                and b.available_since is not None
                and (now - b.available_since).total_seconds()
                > _grace(limits.requests_per_second * b.factor)
            )
            if (position < available or overdue) and tokens_ok:
                if limits.requests_per_second is not None:
                    b.requests -= 1.0
                    # The permits left wait from now for the runs whose turn they are (a
                    # permit that lay here before this grant has not been left idle).
                    b.available_since = None if b.requests < 1.0 - 1e-9 else now
                b.granted += 1
                await tx.execute("delete_provider_waiter", {"bucket": bucket, "waiter": waiter})
                params = {"bucket": bucket, "stale": self.encode_time(stale)}
                await tx.execute("prune_provider_waiters", params)
                await tx.execute(
                    "record_provider_share", {"bucket": bucket, "agent": agent, "now": at}
                )
                await self._save(tx, bucket, b)
                return 0.0
        wait = 0.0
        if limits.requests_per_second is not None:
            rate = limits.requests_per_second * b.factor
            wait = max(wait, (position + 1 - b.requests) / rate)
        if not tokens_ok and limits.tokens_per_second is not None:
            wait = max(wait, -b.tokens / (limits.tokens_per_second * b.factor) + 0.001)
        return min(max(wait, 0.001), _MAX_WAIT)

    def _position(self, rows: list[Any], waiter: str) -> int:
        """``waiter``'s place among ``rows`` in the fair order (module docstring)."""
        floor = datetime.min.isoformat()
        by_agent: dict[str, list[Any]] = {}
        for row in rows:
            by_agent.setdefault(row["agent"], []).append(row)
        keyed = []
        for agent_rows in by_agent.values():
            agent_rows.sort(key=lambda r: (self._iso(r["since"]), r["waiter"]))
            for rank, row in enumerate(agent_rows):
                served = row["last_granted_at"]
                keyed.append(
                    (
                        rank,
                        floor if served is None else self._iso(served),
                        self._iso(row["since"]),
                        row["waiter"],
                    )
                )
        keyed.sort()
        for index, key in enumerate(keyed):
            if key[3] == waiter:
                return index
        return len(keyed)

    def _iso(self, value: Any) -> str:
        """A stored time as sortable ISO text (both dialects)."""
        return self.decode_time(value).isoformat()

    async def charge_provider_tokens(
        self, bucket: str, provider: str, tokens: int, limits: BucketLimits
    ) -> None:
        """Take the ``tokens`` a finished request used from ``bucket`` (may go below 0)."""
        if limits.tokens_per_second is None or tokens <= 0:
            return
        now = self.now()
        async with self.transaction() as tx:
            b = await self._bucket(tx, bucket, provider, limits)
            self._refill(b, limits, now)
            b.tokens -= tokens
            await self._save(tx, bucket, b)

    async def throttle_provider(
        self, bucket: str, provider: str, retry_after: float | None, limits: BucketLimits
    ) -> float:
        """The provider answered 429 (asking to wait ``retry_after`` seconds, if it said):
        stop every grant of ``bucket`` until then. The seconds until the bucket opens."""
        now = self.now()
        async with self.transaction() as tx:
            b = await self._bucket(tx, bucket, provider, limits)
            self._refill(b, limits, now)
            throttled = b.throttled_until is not None and now < b.throttled_until
            recent = (
                b.last_throttle_at is not None
                and (now - b.last_throttle_at).total_seconds() < limits.window
            )
            if not throttled and recent:
                b.factor = max(_FLOOR, b.factor * _BACKOFF)
            if retry_after is None:
                # 1 s, doubled for each lowering of the rate still in force.
                lowered = round(math.log(b.factor) / math.log(_BACKOFF)) if b.factor < 1 else 0
                retry_after = min(limits.window, 2.0 ** max(lowered, 0))
            until = now + timedelta(seconds=max(retry_after, 0.0))
            if b.throttled_until is None or until > b.throttled_until:
                b.throttled_until = until
            if not throttled:
                b.last_throttle_at = now
            b.requests = min(b.requests, 0.0)
            b.available_since = None
            b.throttles += 1
            await self._save(tx, bucket, b)
            assert b.throttled_until is not None
            return max((b.throttled_until - now).total_seconds(), 0.0)

    async def provider_buckets(
        self, limits: Mapping[str, BucketLimits] | None = None
    ) -> list[ProviderBucket]:
        """Every bucket as it stands now (its throttle, its rate factor recovered since it
        was last written, runs waiting now, seconds since it was last used). ``limits``:
        each provider's, to compute the refill and recovery with (default: the default
        limits, a 60 s window)."""
        now = self.now()
        live = self.encode_time(now - timedelta(seconds=WAITER_STALE))
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_provider_buckets", {"live": live})
        out = []
        for row in rows:
            b = _Bucket(
                requests=float(row["requests"]),
                tokens=float(row["tokens"]),
                refilled_at=self.decode_time(row["refilled_at"]),
                throttled_until=self._time_or_none(row["throttled_until"]),
                last_throttle_at=self._time_or_none(row["last_throttle_at"]),
                available_since=self._time_or_none(row["available_since"]),
                factor=float(row["factor"]),
                granted=int(row["granted"]),
                throttles=int(row["throttles"]),
            )
            # Every grant, charge and throttle writes refilled_at; an ask that is not
            # granted writes its waiter's seen_at.
            used = b.refilled_at
            asked = self._time_or_none(row["asked_at"])
            if asked is not None and asked > used:
                used = asked
            self._refill(b, (limits or {}).get(row["provider"], BucketLimits()), now)
            until = b.throttled_until
            out.append(
                ProviderBucket(
                    bucket=row["bucket"],
                    provider=row["provider"],
                    requests=b.requests,
                    tokens=b.tokens,
                    factor=b.factor,
                    throttled_for=(
                        0.0 if until is None else max((until - now).total_seconds(), 0.0)
                    ),
                    waiting=int(row["waiting"]),
                    granted=b.granted,
                    throttles=b.throttles,
                    idle_for=max((now - used).total_seconds(), 0.0),
                )
            )
        return out

    async def provider_shares(self, bucket: str) -> dict[str, int]:
        """Permits granted to each agent from ``bucket`` (since it was created)."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("list_provider_shares", {"bucket": bucket})
        return {row["agent"]: int(row["granted"]) for row in rows}
