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
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from corral.llm.errors import RateLimited
from corral.llm.types import Completion, LLMClient, Message, ToolSpec
from corral.project import ProviderLimitsConfig
from corral.store import BucketLimits

__all__ = ["GatedClient", "Permits", "bucket_for", "limits_for"]


class Permits(Protocol):
    """The shared buckets (the store, or the control plane on its behalf)."""

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
            wait = await self.permits.take_provider_permit(
                self.bucket, self.provider, self.waiter, self.agent, self.limits
            )
            if wait > 0:
                await self._wait(wait, None)
                continue
            try:
                completion = await self.inner.complete(
                    model, system, messages, tools, max_tokens, thinking_level
                )
            except RateLimited as exc:
                self.throttled += 1
                pause = await self.permits.throttle_provider(
                    self.bucket, self.provider, exc.retry_after, self.limits
                )
                await self._wait(max(pause, 0.001), exc)
                continue
            u = completion.usage
            used = u.input_tokens + u.output_tokens + u.cache_read_tokens + u.cache_write_tokens
            await self.permits.charge_provider_tokens(self.bucket, self.provider, used, self.limits)
            return completion

    async def aclose(self) -> None:
        await self.inner.aclose()
