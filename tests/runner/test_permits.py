"""A built-in run's provider permits while the buckets are out of reach (D127): on a
runner host they are asked of the control plane, which may be restarting. The run
waits and asks again within its own deadline instead of failing at once: asks that
fail are waited out and the run's requests go on once the buckets answer again (on
both stores); a runner whose control plane never answers ends the run as out of time
for a permit (RateLimited, the chain's rate-limit outcome), not with a store error."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime

import pytest

from corral.errors import StoreUnavailable
from corral.llm import AnthropicClient, Message, RateLimited, Text
from corral.llm.ratelimit import GatedClient
from corral.runner.agent import ControlClient, RemoteLedger
from corral.store import BucketLimits, Run, RunState, Store, TriggerKind
from tests.llm.ratelimited import RateLimitedProvider

HI = [Message("user", [Text("hi")])]
LIMITS = BucketLimits(requests_per_second=20.0, burst=1, window=10.0)


class Outage:
    """The store's buckets behind a link that is down for the first ``failures`` calls
    (as a control plane that restarts answers nothing for a while)."""

    def __init__(self, store: Store, failures: int) -> None:
        self.store = store
        self.failures = failures
        self.calls = 0

    def _link(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreUnavailable("no control plane is reachable (test outage)")

    async def take_provider_permit(
        self, bucket: str, provider: str, waiter: str, agent: str, limits: BucketLimits
    ) -> float:
        self._link()
        return await self.store.take_provider_permit(bucket, provider, waiter, agent, limits)

    async def charge_provider_tokens(
        self, bucket: str, provider: str, tokens: int, limits: BucketLimits
    ) -> None:
        self._link()
        await self.store.charge_provider_tokens(bucket, provider, tokens, limits)

    async def throttle_provider(
        self, bucket: str, provider: str, retry_after: float | None, limits: BucketLimits
    ) -> float:
        self._link()
        return await self.store.throttle_provider(bucket, provider, retry_after, limits)


async def test_an_outage_is_waited_out_and_the_requests_go_on(store: Store) -> None:
    async with RateLimitedProvider(rate=10, period=1.0, capacity=2) as fake:
        outage = Outage(store, failures=3)
        client = GatedClient(
            AnthropicClient(fake.url, "key"),
            outage,
            "anthropic:test",
            "anthropic",
            LIMITS,
            waiter="r1",
            agent="a",
            deadline=time.monotonic() + 30,
        )
        try:
            for _ in range(2):
                assert (await client.complete("m", "", HI, [], 16)).text == "Done."
        finally:
            await client.aclose()
    assert fake.granted == 2 and client.unreachable == 3
    assert 0.5 + 1.0 + 2.0 <= client.waited < 5  # 0.5 s, doubling
    assert await store.provider_shares("anthropic:test") == {"a": 2}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run() -> Run:
    now = datetime.now(UTC)
    return Run(
        "run-1", "a", TriggerKind.MANUAL, None, None, RunState.RUNNING, None, now, now,
        None, None, None, None, None, None, 1, 3, 1, "runner-1", False, None,
    )  # fmt: skip


async def test_a_control_plane_that_never_answers_ends_the_run_out_of_time() -> None:
    control = ControlClient([f"http://127.0.0.1:{_closed_port()}"], "credential")
    ledger = RemoteLedger(control, _run())
    async with RateLimitedProvider(rate=10, period=1.0) as fake:
        client = GatedClient(
            AnthropicClient(fake.url, "key"),
            ledger,
            "anthropic:test",
            "anthropic",
            LIMITS,
            waiter="run-1",
            agent="a",
            deadline=time.monotonic() + 2.0,
        )
        started = time.monotonic()
        try:
            with pytest.raises(RateLimited, match="could not be asked"):
                await client.complete("m", "", HI, [], 16)
        finally:
            await client.aclose()
            await control.close()
    assert client.unreachable >= 2  # it asked again before giving up
    assert 1.0 <= time.monotonic() - started <= 4.0
    assert fake.granted == 0 and fake.refused == 0  # no request went ungated
