"""Providers' shared buckets (migration 0026) on both stores, on a standing clock: the
permits a rate allows and no more, fair turns between agents, tokens charged after the
answer, a 429's throttle for everyone and the rate lowered by repeated ones."""

from __future__ import annotations

import pytest

from corral.store import BucketLimits, Store
from tests.store.conftest import Clock

BUCKET = "anthropic:k1"
PER_SECOND_2 = BucketLimits(requests_per_second=2.0, burst=1, window=10.0)


async def take(store: Store, waiter: str, agent: str, limits: BucketLimits) -> float:
    return await store.take_provider_permit(BUCKET, "anthropic", waiter, agent, limits)


async def test_a_bucket_grants_its_burst_then_its_rate(store: Store, clock: Clock) -> None:
    limits = BucketLimits(requests_per_second=2.0, burst=3, window=10.0)
    granted = [await take(store, f"r{i}", "a", limits) for i in range(3)]
    assert granted == [0.0, 0.0, 0.0]
    wait = await take(store, "r3", "a", limits)
    assert wait == pytest.approx(0.5)  # one permit every half second
    clock.advance(0.25)
    assert await take(store, "r3", "a", limits) == pytest.approx(0.25)
    clock.advance(0.25)
    assert await take(store, "r3", "a", limits) == 0.0
    clock.advance(10)  # a quiet spell refills the burst, no more
    assert [await take(store, f"s{i}", "a", limits) for i in range(4)][:3] == [0.0] * 3
    (bucket,) = await store.provider_buckets()
    assert bucket.granted == 7 and bucket.provider == "anthropic"
    assert bucket.waiting == 1 and bucket.saturated == "1 runs waiting for a permit"


async def test_contended_permits_take_turns_between_agents(store: Store, clock: Clock) -> None:
    """Agent a has three runs waiting and b one: b is not starved behind a's queue."""
    await take(store, "warm", "a", PER_SECOND_2)  # empties the bucket
    for waiter, agent in (("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")):
        assert await take(store, waiter, agent, PER_SECOND_2) > 0
    order = []
    waiting = {"a1": "a", "a2": "a", "a3": "a", "b1": "b"}
    while waiting:
        clock.advance(0.5)  # one permit
        for waiter, agent in sorted(waiting.items()):
            if await take(store, waiter, agent, PER_SECOND_2) == 0.0:
                order.append(waiter)
                del waiting[waiter]
                break
        else:
            raise AssertionError(f"no one was granted the permit; order so far {order}")
    # b was served longest ago (never): its one run goes first, then a's in order.
    assert order == ["b1", "a1", "a2", "a3"]
    assert await store.provider_shares(BUCKET) == {"a": 4, "b": 1}


async def test_an_agent_with_many_runs_gets_its_share_not_more(store: Store, clock: Clock) -> None:
    """Two agents keep asking, a with four runs and b with one: they alternate."""
    granted = {"a": 0, "b": 0}
    runs = [("a1", "a"), ("a2", "a"), ("a3", "a"), ("a4", "a"), ("b1", "b")]
    for _ in range(40):
        clock.advance(0.5)
        for waiter, agent in runs:
            if await take(store, waiter, agent, PER_SECOND_2) == 0.0:
                granted[agent] += 1
    assert granted["a"] + granted["b"] == 40
    assert abs(granted["a"] - granted["b"]) <= 1, granted


async def test_tokens_are_charged_after_the_answer(store: Store, clock: Clock) -> None:
    limits = BucketLimits(tokens_per_second=100.0, window=10.0)  # 1000 tokens a window
    assert await take(store, "r1", "a", limits) == 0.0
    await store.charge_provider_tokens(BUCKET, "anthropic", 1500, limits)
    wait = await take(store, "r2", "a", limits)
    assert wait == pytest.approx(1.0, abs=0.01)  # 500 tokens in debt -> 5 s, asks within 1 s
    clock.advance(4.0)
    assert await take(store, "r2", "a", limits) == pytest.approx(1.0, abs=0.02)
    clock.advance(1.01)
    assert await take(store, "r2", "a", limits) == 0.0


async def test_a_429_throttles_everyone_and_repeats_lower_the_rate(
    store: Store, clock: Clock
) -> None:
    limits = BucketLimits(requests_per_second=10.0, burst=1, window=10.0)
    assert await take(store, "r1", "a", limits) == 0.0
    assert await store.throttle_provider(BUCKET, "anthropic", 3.0, limits) == 3.0
    clock.advance(1.0)
    assert await take(store, "r2", "b", limits) == pytest.approx(1.0)  # asks again in 1 s
    (bucket,) = await store.provider_buckets()
    assert bucket.throttled_for == pytest.approx(2.0) and bucket.factor == 1.0
    assert bucket.saturated is not None and bucket.saturated.startswith("throttled")
    # A second 429 from a request already in flight (still throttled): no lower rate.
    await store.throttle_provider(BUCKET, "anthropic", 1.0, limits)
    clock.advance(2.0)
    assert await take(store, "r2", "b", limits) == pytest.approx(0.1)  # throttle over, empty
    clock.advance(0.1)
    assert await take(store, "r2", "b", limits) == 0.0
    # A 429 after the throttle ended, within the window: the limit was too high.
    await store.throttle_provider(BUCKET, "anthropic", None, limits)
    (bucket,) = await store.provider_buckets()
    assert bucket.factor == pytest.approx(0.75) and bucket.throttles == 3
    clock.advance(bucket.throttled_for)
    # Recovery: 0.1 of the rate per window without a 429.
    clock.advance(10.0)
    await take(store, "r3", "b", limits)
    (bucket,) = await store.provider_buckets()
    assert bucket.factor == pytest.approx(0.85, abs=0.01)


async def test_a_waiter_that_stops_asking_loses_its_place(store: Store, clock: Clock) -> None:
    await take(store, "warm", "a", PER_SECOND_2)
    assert await take(store, "gone", "a", PER_SECOND_2) > 0  # first in line, then dies
    clock.advance(0.1)
    assert await take(store, "b1", "b", PER_SECOND_2) > 0
    clock.advance(6.0)  # past the stale limit; the bucket is full again
    assert await take(store, "b1", "b", PER_SECOND_2) == 0.0


async def test_a_bucket_without_limits_grants_at_once_but_shares_throttles(
    store: Store, clock: Clock
) -> None:
    limits = BucketLimits(window=10.0)
    assert [await take(store, f"r{i}", "a", limits) for i in range(5)] == [0.0] * 5
    await store.throttle_provider(BUCKET, "anthropic", 2.0, limits)
    assert await take(store, "r9", "b", limits) == pytest.approx(1.0)  # at most 1 s a wait


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="requests_per_second must be > 0"):
        BucketLimits(requests_per_second=0)
    with pytest.raises(ValueError, match="burst must be >= 1"):
        BucketLimits(burst=0)


async def test_a_permit_the_turn_holder_leaves_goes_to_the_next_asker(
    store: Store, clock: Clock
) -> None:
    """Fair turns never leave a permit idle: b's run is first in line, but once a
    permit has waited a quarter of a gap for it, a's run may take it."""
    await take(store, "warm", "a", PER_SECOND_2)
    assert await take(store, "b1", "b", PER_SECOND_2) > 0  # b never served: first in line
    assert await take(store, "a1", "a", PER_SECOND_2) > 0
    clock.advance(0.5)  # one permit, b1's
    assert await take(store, "a1", "a", PER_SECOND_2) > 0
    clock.advance(0.1)  # idle for less than the grace (0.125 s at 2/s)
    assert await take(store, "a1", "a", PER_SECOND_2) > 0
    clock.advance(0.05)
    assert await take(store, "a1", "a", PER_SECOND_2) == 0.0
    assert await store.provider_shares(BUCKET) == {"a": 2}


async def test_a_lowered_bucket_recovers_when_read_though_nobody_asks(
    store: Store, clock: Clock
) -> None:
    """The factor's climb back and the throttle's end are computed when the buckets are
    read, not only when a permit is asked for: a key nobody uses any more (rotated, or its
    pool down to nothing) does not stay saturated for good."""
    limits = BucketLimits(requests_per_second=10.0, burst=1, window=10.0)
    await store.throttle_provider(BUCKET, "anthropic", 1.0, limits)
    clock.advance(1.5)
    await store.throttle_provider(BUCKET, "anthropic", 1.0, limits)  # lowers: 0.75
    (bucket,) = await store.provider_buckets({"anthropic": limits})
    assert bucket.factor == pytest.approx(0.75) and bucket.saturated is not None
    clock.advance(1.0 + 20.0)  # the throttle ends, then two windows without a 429
    (bucket,) = await store.provider_buckets({"anthropic": limits})
    assert bucket.throttled_for == 0.0 and bucket.factor == pytest.approx(0.95)
    assert bucket.saturated is not None and bucket.saturated.startswith("rate lowered")
    clock.advance(5.0)
    (bucket,) = await store.provider_buckets({"anthropic": limits})
    assert bucket.factor == 1.0 and bucket.saturated is None
    # Nothing was written: the next ask refills from the stored state to the same result.
    assert await take(store, "r1", "a", limits) == 0.0


async def test_a_bucket_idle_for_ten_minutes_is_not_saturated(store: Store, clock: Clock) -> None:
    """A bucket lowered to the floor with a long window takes 90 minutes to climb back;
    one nobody asked for in 10 minutes (its key rotated away) no longer counts."""
    limits = BucketLimits(requests_per_second=10.0, burst=1, window=600.0)
    for _ in range(10):  # each 429 after the previous throttle ended lowers the rate
        wait = await store.throttle_provider(BUCKET, "anthropic", 0.5, limits)
        clock.advance(wait + 0.1)
    (bucket,) = await store.provider_buckets({"anthropic": limits})
    assert bucket.factor < 0.1 + 0.01 and bucket.saturated is not None
    clock.advance(8 * 60.0)
    (bucket,) = await store.provider_buckets({"anthropic": limits})
    assert bucket.factor < 0.2 and bucket.saturated is not None  # asked 8 minutes ago
    clock.advance(2 * 60.0 + 1.0)
    (bucket,) = await store.provider_buckets({"anthropic": limits})
    assert bucket.factor < 0.3 and bucket.idle_for > 600 and bucket.saturated is None


async def test_a_grant_does_not_open_the_remaining_permits_to_anyone(
    store: Store, clock: Clock
) -> None:
    """Two permits lie in a bucket for a while; the first run in line takes one. The
    second permit is the second run's turn: the third may not take it until it has been
    left a quarter of a gap since that grant."""
    limits = BucketLimits(requests_per_second=2.0, burst=3, window=10.0)
    assert [await take(store, f"w{i}", "a", limits) for i in range(3)] == [0.0] * 3
    for waiter in ("a1", "a2", "a3"):
        assert await take(store, waiter, "a", limits) > 0
    clock.advance(1.0)  # two permits, the first since 0.5 s
    assert await take(store, "a1", "a", limits) == 0.0
    assert await take(store, "a3", "a", limits) > 0  # a2's turn
    assert await take(store, "a2", "a", limits) == 0.0
    clock.advance(0.5)  # the next permit is a3's
    assert await take(store, "a3", "a", limits) == 0.0
