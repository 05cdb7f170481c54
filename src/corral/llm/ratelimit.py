"""Provider-aware concurrency: a client that asks the fleet's shared bucket before every
request and waits out the provider's 429s instead of failing.

    client = GatedClient(inner, permits, bucket_for(config, key), config.provider,
                         limits, waiter=run_id, agent=agent, deadline=loop_deadline)

Before each request :meth:`Permits.take_provider_permit` grants a permit or says how
long to wait (the run keeps its place in the queue while it keeps asking). A 429 from
the provider throttles the bucket for everyone (``Retry-After``, or a doubling default)
and the request is asked for again after the throttle; a run fails for a rate limit only
when the wait would pass its ``deadline`` (the run's wall clock), with the provider's
:class:`RateLimited`. The tokens each answer used are charged to the bucket afterwards.

The buckets may be out of reach for a while (a run on a runner host asks the control
plane, which may be restarting; a store that is failing over): a
:class:`~corral.errors.StoreUnavailable` is waited out like a refused permit (0.5 s,
doubling to 5 s) and asked again, within the same deadline; a 429 whose throttle cannot
be reported is waited out here (its ``Retry-After``, or 1 s); tokens that could not be
charged are charged with the next answer's.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from corral.errors import StoreUnavailable
from corral.llm.errors import RateLimited
from corral.llm.types import Completion, LLMClient, Message, ToolSpec
from corral.project import ProviderLimitsConfig
from corral.store import BucketLimits

__all__ = ["GatedClient", "Permits", "bucket_for", "limits_for"]


#: Waits while the buckets are out of reach: the first, and the longest.
UNREACHABLE_FIRST = 0.5
UNREACHABLE_MOST = 5.0


@runtime_checkable
class Permits(Protocol):
    """The shared buckets (the store, or the control plane on its behalf: a run on a
    runner host asks through the runner API, ``corral.runner.agent.RemoteLedger``)."""

    async def take_provider_permit(
        self, bucket: str, provider: str, waiter: str, agent: str, limits: BucketLimits
    ) -> float: ...

    async def charge_provider_tokens(
        self, bucket: str, provider: str, tokens: int, limits: BucketLimits
    ) -> None: ...

    async def throttle_provider(
        self, bucket: str, provider: str, retry_after: float | None, limits: BucketLimits
    ) -> float: ...


def limits_for(config: ProviderLimitsConfig) -> BucketLimits:
    """``[providers.<name>]`` as per-second rates over a one-minute window."""
    return BucketLimits(
        requests_per_second=(
            None if config.requests_per_minute is None else config.requests_per_minute / 60
        ),
        tokens_per_second=(
            None if config.tokens_per_minute is None else config.tokens_per_minute / 60
        ),
        burst=config.burst,
        window=60.0,
    )


def bucket_for(provider: str, base_url: str | None, api_key: str) -> str:
    """The bucket of one provider key: ``provider:<digest>`` (the key itself is never
    stored; the URL is in the digest, so two servers of a ``custom`` provider differ)."""
    digest = hashlib.sha256(f"{base_url or ''}\n{api_key}".encode()).hexdigest()[:16]
    return f"{provider}:{digest}"


class GatedClient:
    """An :class:`LLMClient` whose requests go through a shared bucket; see the module."""

    def __init__(
        self,
        inner: LLMClient,
        permits: Permits,
        bucket: str,
        provider: str,
        limits: BucketLimits,
        *,
        waiter: str,
        agent: str,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.inner = inner
        self.permits = permits
        self.bucket = bucket
        self.provider = provider
        self.limits = limits
        self.waiter = waiter
        self.agent = agent
        self.deadline = deadline
        self._clock = clock
        self._sleep = sleep
        #: Seconds spent waiting for permits and throttles, and the 429s seen.
        self.waited = 0.0
        self.throttled = 0
        #: Times the buckets could not be reached (each waited out and asked again).
        self.unreachable = 0
        #: Tokens used but not charged yet (the buckets were out of reach).
        self._owed = 0
        self._backoff = UNREACHABLE_FIRST

    def _reached(self) -> None:
        self._backoff = UNREACHABLE_FIRST

    async def _unreachable(self, exc: StoreUnavailable) -> None:
        """Wait before asking again; past the deadline, the run is out of time."""
        self.unreachable += 1
        pause, self._backoff = self._backoff, min(self._backoff * 2, UNREACHABLE_MOST)
        if self.deadline is not None and self._clock() + pause > self.deadline:
            raise RateLimited(
                f"the provider's shared rate limit could not be asked before the run's time "
                f"ran out ({exc})",
                provider=self.provider,
                retry_after=pause,
            )
        self.waited += pause
        await self._sleep(pause)

    async def _charge(self) -> None:
        """Charge what is owed; if the buckets are out of reach, it stays owed."""
        if self._owed <= 0:
            return
        try:
            await self.permits.charge_provider_tokens(
                self.bucket, self.provider, self._owed, self.limits
            )
        except StoreUnavailable:
            self.unreachable += 1
            return
        self._owed = 0

    async def _wait(self, seconds: float, cause: RateLimited | None) -> None:
        if self.deadline is not None and self._clock() + seconds > self.deadline:
            if cause is not None:
                raise cause
            raise RateLimited(
                f"no request permit before the run's time ran out (waited {self.waited:.1f} s)",
                provider=self.provider,
                retry_after=seconds,
            )
        self.waited += seconds
        await self._sleep(seconds)

    async def complete(
        self,
        model: str,
        system: str,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        max_tokens: int,
        thinking_level: str | None = None,
    ) -> Completion:
        while True:
            try:
                wait = await self.permits.take_provider_permit(
                    self.bucket, self.provider, self.waiter, self.agent, self.limits
                )
            except StoreUnavailable as exc:
                await self._unreachable(exc)
                continue
            self._reached()
            if wait > 0:
                await self._wait(wait, None)
                continue
            try:
                completion = await self.inner.complete(
                    model, system, messages, tools, max_tokens, thinking_level
                )
            except RateLimited as exc:
                self.throttled += 1
                try:
                    pause = await self.permits.throttle_provider(
                        self.bucket, self.provider, exc.retry_after, self.limits
                    )
                except StoreUnavailable:
                    # nobody else can be told: this run waits out the provider's word
                    self.unreachable += 1
                    pause = 1.0 if exc.retry_after is None else exc.retry_after
                await self._wait(max(pause, 0.001), exc)
                continue
            u = completion.usage
            self._owed += (
                u.input_tokens + u.output_tokens + u.cache_read_tokens + u.cache_write_tokens
            )
            await self._charge()
            return completion

    async def aclose(self) -> None:
        await self.inner.aclose()
