"""Model requests through the fleet's shared buckets, against a fake provider over real
HTTP that allows N requests per period and answers 429 with Retry-After otherwise, on
both stores: clients sharing a budget all succeed without the provider refusing any; a
429 makes them wait and retry instead of failing; a run out of time fails with the
provider's error; two processes share one bucket without over-granting."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from corral.llm import AnthropicClient, Message, RateLimited, Text
from corral.llm.ratelimit import GatedClient, bucket_for, limits_for
from corral.project import ProviderLimitsConfig
from corral.store import BucketLimits, Store
from tests.llm.ratelimited import RateLimitedProvider
from tests.store._processes import run_together, spawn

HI = [Message("user", [Text("hi")])]
WORKER = Path(__file__).with_name("_permit_worker.py")


def gated(
    fake: RateLimitedProvider,
    store: Store,
    limits: BucketLimits,
    waiter: str,
    agent: str,
    deadline: float | None = None,
) -> GatedClient:
    return GatedClient(
        AnthropicClient(fake.url, "key"),
        store,
        "anthropic:test",
        "anthropic",
        limits,
        waiter=waiter,
        agent=agent,
        deadline=deadline,
    )


async def requests(client: GatedClient, n: int) -> int:
    try:
        for _ in range(n):
            completion = await client.complete("m", "", HI, [], 16)
            assert completion.text == "Done."
    finally:
        await client.aclose()
    return n


async def test_clients_sharing_a_budget_all_succeed_unrefused(store: Store) -> None:
    """Six clients of three agents, 30 requests at 10/s: none refused by the provider,
    and the bucket kept them at the rate (not faster than the provider allows)."""
    limits = BucketLimits(requests_per_second=9.5, burst=1, window=10.0)
    async with RateLimitedProvider(rate=10, period=1.0, capacity=2) as fake:
        clients = [gated(fake, store, limits, f"r{i}", f"agent{i % 3}") for i in range(6)]
        started = time.monotonic()
        done = await asyncio.gather(*(requests(c, 5) for c in clients))
        took = time.monotonic() - started
    assert sum(done) == 30 and fake.granted == 30
    assert fake.refused == 0
    assert took >= 29 / 9.5 * 0.95  # 29 gaps after the first permit
    assert await store.provider_shares("anthropic:test") == {
        "agent0": 10,
        "agent1": 10,
        "agent2": 10,
    }


async def test_a_429_makes_every_client_wait_and_retry(store: Store) -> None:
    """No configured rate (the bucket only shares throttles): the provider's 429s slow
    the clients down and every request still succeeds."""
    limits = BucketLimits(window=10.0)
    async with RateLimitedProvider(rate=8, period=1.0, capacity=1) as fake:
        clients = [gated(fake, store, limits, f"r{i}", "a") for i in range(4)]
        done = await asyncio.gather(*(requests(c, 3) for c in clients))
    assert sum(done) == 12 and fake.granted == 12
    assert fake.refused > 0
    assert sum(c.throttled for c in clients) == fake.refused
    (bucket,) = await store.provider_buckets()
    assert bucket.throttles == fake.refused


async def test_a_run_out_of_time_fails_with_the_providers_429(store: Store) -> None:
    limits = BucketLimits(window=10.0)
    async with RateLimitedProvider(rate=1, period=30.0, capacity=1) as fake:
        client = gated(fake, store, limits, "r1", "a", deadline=time.monotonic() + 2.0)
        assert await requests(client, 1) == 1
        client = gated(fake, store, limits, "r1", "a", deadline=time.monotonic() + 2.0)
        with pytest.raises(RateLimited, match="HTTP 429"):
            await requests(client, 1)
    assert fake.refused == 1  # it did not hammer the provider while waiting


async def test_two_processes_share_one_bucket_without_over_granting(
    store: Store, store_url: str
) -> None:
    """Two worker processes (two clients each) against one provider key: the provider
    counts every request and refuses none; the rate held across processes."""
    async with RateLimitedProvider(rate=8, period=1.0, capacity=2) as fake:
        procs = [await spawn(WORKER, store_url, fake.url, agent, 10, 7.5) for agent in "ab"]
        started = time.monotonic()
        results = await run_together(procs)
        took = time.monotonic() - started
    assert [r["done"] for r in results] == [10, 10]
    assert fake.granted == 20 and fake.refused == 0
    assert took >= 19 / 7.5 * 0.95
    assert await store.provider_shares("anthropic:shared") == {"a": 10, "b": 10}


def test_config_limits_are_per_second_over_a_minute() -> None:
    config = ProviderLimitsConfig.model_validate(
        {"requestsPerMinute": 120, "tokensPerMinute": 6000}
    )
    limits = limits_for(config)
    assert limits.requests_per_second == 2.0 and limits.tokens_per_second == 100.0
    assert limits.window == 60.0 and limits.burst == 1 and limits.token_capacity == 6000


def test_a_bucket_is_per_key_and_never_holds_the_key() -> None:
    one = bucket_for("anthropic", None, "sk-secret-1")
    assert one.startswith("anthropic:") and "sk-secret" not in one
    assert one != bucket_for("anthropic", None, "sk-secret-2")
    assert one == bucket_for("anthropic", None, "sk-secret-1")
    assert one != bucket_for("anthropic", "http://proxy", "sk-secret-1")
