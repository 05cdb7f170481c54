"""ModelChain against the fake provider over real HTTP, with a fake clock and sleep."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from corral.llm import (
    AnthropicClient,
    AuthFailed,
    BadRequest,
    Message,
    OpenAIClient,
    ProviderError,
    Text,
)
from corral.llm.fallback import AllModelsFailed, Attempt, Breaker, ChainEntry, ModelChain
from tests.llm.fakeprovider import FakeProvider, Reply, Status, StreamError

HELLO = [Message("user", [Text("hello")])]
OVERLOADED = Status(
    529, {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
)


def rate_limited(retry_after: str | None = None) -> Status:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    body = {"error": {"type": "rate_limit_error", "message": "slow down"}}
    return Status(429, body, headers)


class Clock:
    """A fake monotonic clock whose sleep advances it and records each delay."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
async def sonnet(fake: FakeProvider) -> AsyncIterator[AnthropicClient]:
    async with AnthropicClient(fake.url, "sk-ant") as c:
        yield c


@pytest.fixture
async def gpt(fake: FakeProvider) -> AsyncIterator[OpenAIClient]:
    async with OpenAIClient(fake.openai_url, "sk-oai") as c:
        yield c


@pytest.fixture
async def local() -> AsyncIterator[OpenAIClient]:
    """An OpenAI-shaped endpoint where nothing listens (connection refused)."""
    async with OpenAIClient(f"http://127.0.0.1:{unused_port()}/v1", "") as c:
        yield c


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_chain(
    clock: Clock, *entries: tuple[str, str, AnthropicClient | OpenAIClient], **kw: Any
) -> ModelChain:
    return ModelChain(
        [ChainEntry(n, m, c) for n, m, c in entries],
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(7),
        **kw,
    )


def apis(fake: FakeProvider) -> list[str | None]:
    return [r.api for r in fake.requests]


async def test_first_model_answers(
    fake: FakeProvider, sonnet: AnthropicClient, gpt: OpenAIClient, clock: Clock
) -> None:
    fake.script("anthropic", Reply.text("hi from sonnet"))
    chain = make_chain(clock, ("sonnet", "claude-x", sonnet), ("gpt", "gpt-x", gpt))

    out, name = await chain.complete("be terse", HELLO, [], 100)

    assert (out.text, out.model, name) == ("hi from sonnet", "claude-x", "sonnet")
    assert apis(fake) == ["anthropic"]
    assert fake.requests[0].body["model"] == "claude-x"
    assert chain.attempts == [Attempt("sonnet", "ok")]
    assert clock.slept == []


async def test_rate_limit_opens_breaker_then_half_open_trial_closes_it(
    fake: FakeProvider, sonnet: AnthropicClient, gpt: OpenAIClient, clock: Clock
) -> None:
    fake.script("anthropic", rate_limited())
    fake.script("openai", Reply.text("gpt 1"), Reply.text("gpt 2"))
    chain = make_chain(clock, ("sonnet", "claude-x", sonnet), ("gpt", "gpt-x", gpt))

    out, name = await chain.complete("", HELLO, [], 100)
    assert (out.text, name) == ("gpt 1", "gpt")
    assert [(a.entry, a.outcome) for a in chain.attempts] == [
        ("sonnet", "rate_limited"),
        ("gpt", "ok"),
    ]
    assert "HTTP 429" in chain.attempts[0].error
    assert clock.slept == []  # no sleeping on a rate limit: straight to the next model
    breaker = chain.breakers["sonnet"]
    assert breaker.open_until == 1060.0
    assert breaker.failures == 1

    clock.now += 59.0  # still open: sonnet is skipped without a request
    out, name = await chain.complete("", HELLO, [], 100)
    assert (out.text, name) == ("gpt 2", "gpt")
    assert apis(fake) == ["anthropic", "openai", "openai"]
    assert chain.attempts[0] == Attempt("sonnet", "skipped_open", "circuit open until 1 s from now")

    clock.now += 1.0  # cooldown over: half-open, one trial, success closes the breaker
    fake.script("anthropic", Reply.text("sonnet again"))
    out, name = await chain.complete("", HELLO, [], 100)
    assert (out.text, name) == ("sonnet again", "sonnet")
    assert apis(fake) == ["anthropic", "openai", "openai", "anthropic"]
    assert breaker.failures == 0
    assert breaker.open_until is None


async def test_overloaded_opens_breaker_and_failed_trial_reopens_it(
    fake: FakeProvider, sonnet: AnthropicClient, gpt: OpenAIClient, clock: Clock
) -> None:
    # the OpenAI-shaped model first this time; overload both as 529 and as an in-stream error
    fake.script("openai", OVERLOADED, StreamError("overloaded_error", "try later"))
    fake.script("anthropic", Reply.text("a1"), Reply.text("a2"), Reply.text("a3"))
    chain = make_chain(clock, ("gpt", "gpt-x", gpt), ("sonnet", "claude-x", sonnet), cooldown=30)

    assert (await chain.complete("", HELLO, [], 100))[1] == "sonnet"
    assert [a.outcome for a in chain.attempts] == ["overloaded", "ok"]
    assert chain.breakers["gpt"].open_until == 1030.0

    clock.now += 10
    assert (await chain.complete("", HELLO, [], 100))[1] == "sonnet"
    assert [a.outcome for a in chain.attempts] == ["skipped_open", "ok"]

    clock.now += 20  # half-open trial fails: open again for a full cooldown
    assert (await chain.complete("", HELLO, [], 100))[1] == "sonnet"
    assert [a.outcome for a in chain.attempts] == ["overloaded", "ok"]
    assert chain.breakers["gpt"].open_until == clock.now + 30
    assert apis(fake) == ["openai", "anthropic", "anthropic", "openai", "anthropic"]


async def test_only_one_half_open_trial_at_a_time(
    fake: FakeProvider, sonnet: AnthropicClient, gpt: OpenAIClient, clock: Clock
) -> None:
    breakers = {"sonnet": Breaker()}
    breakers["sonnet"].fail(clock.now - 61, 60.0, rate_limited=True)  # open, cooldown now over
    fake.script("anthropic", Reply.text("trial"))
    fake.script("openai", Reply.text("other"))
    chain = make_chain(
        clock, ("sonnet", "claude-x", sonnet), ("gpt", "gpt-x", gpt), breakers=breakers
    )

    results = await asyncio.gather(
        chain.complete("", HELLO, [], 100), chain.complete("", HELLO, [], 100)
    )

    assert sorted(name for _, name in results) == ["gpt", "sonnet"]
    assert sorted(apis(fake), key=str) == ["anthropic", "openai"]
    assert breakers["sonnet"].open_until is None


async def test_retry_after_extends_the_breaker(
    fake: FakeProvider, sonnet: AnthropicClient, gpt: OpenAIClient, clock: Clock
) -> None:
    fake.script("anthropic", rate_limited("120"))
    fake.script("openai", Reply.text("g"), Reply.text("g"))
    chain = make_chain(clock, ("sonnet", "claude-x", sonnet), ("gpt", "gpt-x", gpt))

    await chain.complete("", HELLO, [], 100)
    assert chain.breakers["sonnet"].open_until == 1120.0

    clock.now += 100  # past the 60 s cooldown, but the provider asked for 120 s
    await chain.complete("", HELLO, [], 100)
    assert chain.attempts[0].outcome == "skipped_open"
    assert apis(fake) == ["anthropic", "openai", "openai"]


async def test_short_retry_after_keeps_the_cooldown(
    fake: FakeProvider, sonnet: AnthropicClient, gpt: OpenAIClient, clock: Clock
) -> None:
    fake.script("anthropic", rate_limited("5"))
    fake.script("openai", Reply.text("g"))
    chain = make_chain(clock, ("sonnet", "claude-x", sonnet), ("gpt", "gpt-x", gpt))
    await chain.complete("", HELLO, [], 100)
    assert chain.breakers["sonnet"].open_until == 1060.0


async def test_dropped_stream_is_retried_with_backoff_and_jitter_then_falls_back(
    fake: FakeProvider, sonnet: AnthropicClient, gpt: OpenAIClient, clock: Clock
) -> None:
    cut = Reply.text("a long answer that gets cut", cut_after=3)
    fake.script("anthropic", *[cut] * 5)
    fake.script("openai", Reply.text("fallback"))
    chain = make_chain(
        clock,
        ("sonnet", "claude-x", sonnet),
        ("gpt", "gpt-x", gpt),
        max_retries=4,
        base_delay=1.0,
        max_delay=3.0,
    )

    out, name = await chain.complete("", HELLO, [], 100)

    assert (out.text, name) == ("fallback", "gpt")
    assert apis(fake) == ["anthropic"] * 5 + ["openai"]
    outcomes = [(a.entry, a.outcome) for a in chain.attempts]
    assert outcomes == [("sonnet", "unavailable")] * 5 + [("gpt", "ok")]
    delays = [a.delay for a in chain.attempts[:4]]
    assert delays == clock.slept
    assert chain.attempts[4].delay == 0.0  # no sleep after the last try
    caps = [1.0, 2.0, 3.0, 3.0]  # base * 2**n, capped at max_delay
    assert all(0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    seeded = random.Random(7)
    assert delays == [seeded.uniform(0, cap) for cap in caps]  # full jitter, seeded rng
    breaker = chain.breakers["sonnet"]
    assert (breaker.failures, breaker.open_until) == (1, None)  # 3 needed to open


async def test_connection_refused_retries_then_opens_after_three_failed_calls(
    fake: FakeProvider, local: OpenAIClient, sonnet: AnthropicClient, clock: Clock
) -> None:
    fake.script("anthropic", *[Reply.text(f"s{i}") for i in range(4)])
    chain = make_chain(clock, ("local", "llama", local), ("sonnet", "claude-x", sonnet))

    for call in range(3):
        out, name = await chain.complete("", HELLO, [], 100)
        assert (out.text, name) == (f"s{call}", "sonnet")
        assert [a.outcome for a in chain.attempts] == ["unavailable"] * 3 + ["ok"]
        assert "could not connect" in chain.attempts[0].error
    assert len(clock.slept) == 6
    assert all(0 <= d <= 0.5 for d in clock.slept[0::2])
    assert all(0 <= d <= 1.0 for d in clock.slept[1::2])
    assert chain.breakers["local"].failures == 3
    assert chain.breakers["local"].open_until == clock.now + 60

    await chain.complete("", HELLO, [], 100)
    assert [a.outcome for a in chain.attempts] == ["skipped_open", "ok"]
    assert len(clock.slept) == 6


async def test_auth_failure_raises_at_once(
    fake: FakeProvider, sonnet: AnthropicClient, gpt: OpenAIClient, clock: Clock
) -> None:
    fake.script("anthropic", Status(401, {"error": {"type": "authentication_error"}}))
    fake.script("openai", Reply.text("never"))
    chain = make_chain(clock, ("sonnet", "claude-x", sonnet), ("gpt", "gpt-x", gpt))

    with pytest.raises(AuthFailed):
        await chain.complete("", HELLO, [], 100)

    assert apis(fake) == ["anthropic"]
    assert fake.pending("openai") == 1
    assert [a.outcome for a in chain.attempts] == ["auth"]
    assert chain.breakers["sonnet"].open_until is None


async def test_bad_request_raises_at_once(
    fake: FakeProvider, sonnet: AnthropicClient, gpt: OpenAIClient, clock: Clock
) -> None:
    fake.script("openai", Status(400, {"error": {"message": "max_tokens too large"}}))
    fake.script("anthropic", Reply.text("never"))
    chain = make_chain(clock, ("gpt", "gpt-x", gpt), ("sonnet", "claude-x", sonnet))

    with pytest.raises(BadRequest, match="max_tokens too large"):
        await chain.complete("", HELLO, [], 100)

    assert apis(fake) == ["openai"]
    assert fake.pending("anthropic") == 1
    assert [a.outcome for a in chain.attempts] == ["bad_request"]
    assert clock.slept == []


async def test_all_failing_lists_each_reason_and_earliest_retry(
    fake: FakeProvider, sonnet: AnthropicClient, gpt: OpenAIClient, clock: Clock
) -> None:
    breakers = {"local": Breaker()}
    breakers["local"].open_until = clock.now + 42
    fake.script("anthropic", rate_limited("90"))
    fake.script("openai", OVERLOADED)
    chain = make_chain(
        clock,
        ("sonnet", "claude-x", sonnet),
        ("gpt", "gpt-x", gpt),
        ("local", "llama", gpt),
        breakers=breakers,
    )

    with pytest.raises(AllModelsFailed) as info:
        await chain.complete("", HELLO, [], 100)

    err = info.value
    assert isinstance(err, ProviderError)
    assert err.reasons == {
        "sonnet": "rate limited (retry after 90 s)",
        "gpt": "overloaded",
        "local": "circuit open until 42 s from now",
    }
    assert str(err) == (
        "model chain: all models failed: sonnet: rate limited (retry after 90 s); "
        "gpt: overloaded; local: circuit open until 42 s from now"
    )
    assert err.retry_after == 42.0  # local closes first (sonnet in 90 s, gpt in 60 s)
    assert [a.outcome for a in err.attempts] == ["rate_limited", "overloaded", "skipped_open"]
    assert apis(fake) == ["anthropic", "openai"]


async def test_all_failing_without_open_breakers_can_retry_at_once(
    local: OpenAIClient, clock: Clock
) -> None:
    chain = make_chain(clock, ("local", "llama", local), max_retries=1)
    with pytest.raises(AllModelsFailed, match=r"local: unavailable after 2 tries \(") as info:
        await chain.complete("", HELLO, [], 100)
    assert info.value.retry_after == 0.0
    assert len(clock.slept) == 1


async def test_breakers_shared_across_chains(
    fake: FakeProvider, sonnet: AnthropicClient, gpt: OpenAIClient, clock: Clock
) -> None:
    shared: dict[str, Breaker] = {}
    fake.script("anthropic", rate_limited())
    fake.script("openai", Reply.text("run 1"), Reply.text("run 2"))
    run1 = make_chain(clock, ("sonnet", "claude-x", sonnet), ("gpt", "gpt-x", gpt), breakers=shared)
    async with (
        AnthropicClient(fake.url, "sk-ant") as sonnet2,
        OpenAIClient(fake.openai_url, "sk-oai") as gpt2,
    ):
        run2 = make_chain(
            clock, ("sonnet", "claude-x", sonnet2), ("gpt", "gpt-x", gpt2), breakers=shared
        )
        assert (await run1.complete("", HELLO, [], 100))[1] == "gpt"
        assert (await run2.complete("", HELLO, [], 100))[1] == "gpt"

    assert run2.attempts[0].outcome == "skipped_open"
    assert apis(fake) == ["anthropic", "openai", "openai"]
    assert run1.breakers is run2.breakers is shared


async def test_entries_must_be_named_uniquely(gpt: OpenAIClient) -> None:
    with pytest.raises(ValueError, match="at least one"):
        ModelChain([])
    with pytest.raises(ValueError, match="unique"):
        ModelChain([ChainEntry("a", "m", gpt), ChainEntry("a", "n", gpt)])
