"""Runs of the built-in harness on a runner host share their provider's budget with the
runs on the control plane (issue 17, D127), on both stores: a real `corral start`
control plane and a real `corral runner start` process, the fake provider over real
HTTP. Two runs on the runner and one on the control plane make 4 requests each; the
provider allows 4 a second (the project says 3.5): at the provider, never more requests
within a second than the bucket lets go, every run succeeds, and each agent gets its
share. With a limit above what the provider allows, the 429s of the runner's runs
throttle the shared bucket too (every refusal is counted on it) and no run fails."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from corral.store import ProviderBucket, Run, RunState, open_store
from tests.fleet.fleetkit import control_plane, join_runner, start_runner, wait_for
from tests.llm.ratelimited import RateLimitedProvider, most_in_window
from tests.scheduler.helpers import write_project

pytestmark = pytest.mark.slow

TURNS = 4
ON_RUNNER = ("r1", "r2")
ON_PLANE = "cp"


@contextmanager
def provider(rate: float, capacity: float) -> Iterator[RateLimitedProvider]:
    """The fake provider, served by an event loop of its own in a thread (the test's
    waits block)."""
    loop = asyncio.new_event_loop()
    fake = RateLimitedProvider(rate=rate, period=1.0, capacity=capacity, turns=TURNS)
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with fake:
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield fake
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def _read(store_url: str) -> tuple[list[Run], list[ProviderBucket], dict[str, int]]:
    async def read() -> tuple[list[Run], list[ProviderBucket], dict[str, int]]:
        async with await open_store(store_url) as store:
            buckets = await store.provider_buckets()
            shares = await store.provider_shares(buckets[0].bucket) if buckets else {}
            return await store.list_runs(limit=50), buckets, shares

    return asyncio.run(read())


def fleet_runs(
    tmp_path: Path, store_url: str, fake: RateLimitedProvider, per_minute: int
) -> tuple[list[Run], ProviderBucket, dict[str, int]]:
    """Two runs on a runner (2 slots) and one on the control plane, to their end."""
    root = tmp_path / "project"
    toml = (
        "[fleet]\nheartbeatSeconds = 1\nofflineAfterSeconds = 4\n"
        f'[models.first]\nprovider = "anthropic"\nmodel = "claude-test"\nbaseUrl = "{fake.url}"\n'
        f"[providers.anthropic]\nrequestsPerMinute = {per_minute}\n"
    )
    agents: dict[str, dict[str, object]] = {
        name: {"command": "unused", "models": ["first"], "runsOn": ["linux"]} for name in ON_RUNNER
    }
    agents[ON_PLANE] = {"command": "unused", "models": ["first"]}
    write_project(root, agents, toml, dict.fromkeys(agents, 'type = "builtin"\n'))
    with control_plane(root, store_url, tmp_path / "start.log") as plane:
        plane.push()
        runner = start_runner(join_runner(plane, tmp_path, "rr", ["linux"], 2))
        try:
            for name in (*ON_RUNNER, ON_PLANE):
                plane.trigger(name)

            def ended() -> list[Run]:
                runs = _read(store_url)[0]
                done = [r for r in runs if r.state.is_terminal]
                return done if len(done) == 3 else []

            runs = wait_for(ended, 120)
        finally:
            runner.stop()
    _, buckets, shares = _read(store_url)
    assert len(buckets) == 1, buckets
    return runs, buckets[0], shares


def test_runs_on_a_runner_and_the_control_plane_share_one_budget(
    tmp_path: Path, store_url: str
) -> None:
    with provider(rate=4, capacity=1) as fake:
        runs, bucket, shares = fleet_runs(tmp_path, store_url, fake, per_minute=210)
    assert [r.state for r in runs] == [RunState.SUCCEEDED] * 3, [r.error for r in runs]
    on_runner = sorted(r.agent for r in runs if r.runner_id is not None)
    assert on_runner == list(ON_RUNNER), [(r.agent, r.runner_id) for r in runs]
    # never more requests in a second at the provider than the bucket lets go (3.5 a
    # second after one at once); on a loaded machine two may reach it closer together
    # than they left (it refuses one, and that run waits): at most once, no run fails
    assert most_in_window(fake.arrivals, 1.0) <= 5, sorted(fake.arrivals)
    assert fake.granted == 3 * TURNS and fake.refused <= 1
    assert bucket.granted == 3 * TURNS + fake.refused and bucket.throttles == fake.refused
    assert sorted(shares) == sorted([*ON_RUNNER, ON_PLANE])
    assert all(TURNS <= n <= TURNS + fake.refused for n in shares.values()), shares


def test_the_providers_429s_on_a_runner_slow_everyone_and_no_run_fails(
    tmp_path: Path, store_url: str
) -> None:
    with provider(rate=3, capacity=1) as fake:
        runs, bucket, shares = fleet_runs(tmp_path, store_url, fake, per_minute=6000)
    assert [r.state for r in runs] == [RunState.SUCCEEDED] * 3, [r.error for r in runs]
    assert fake.granted == 3 * TURNS and fake.refused > 0
    # every 429, the runner's runs' too, closed the shared bucket for everyone
    assert bucket.throttles == fake.refused
    assert sum(shares.values()) == 3 * TURNS + fake.refused
