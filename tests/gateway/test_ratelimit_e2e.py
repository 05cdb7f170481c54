"""Real runs of the built-in harness in a running fleet share their provider's budget
(``[providers.anthropic]``): the fake provider allows 10 requests a second (capacity 2;
the project says 9, as one sets a limit a little under the provider's), three agents'
runs make 3 requests each, and every run succeeds without the provider refusing a
request; with a rate above what the provider allows, its 429s slow the runs down instead
of failing them."""

from __future__ import annotations

from pathlib import Path

from corral.store import RunState, Store
from tests.gateway.fleet import running_fleet
from tests.llm.ratelimited import RateLimitedProvider

AGENTS = ("a", "b", "c")


def project_toml(fake: RateLimitedProvider, per_minute: int) -> str:
    return (
        f'[models.first]\nprovider = "anthropic"\nmodel = "claude-test"\nbaseUrl = "{fake.url}"\n'
        f"[providers.anthropic]\nrequestsPerMinute = {per_minute}\n"
    )


async def fleet_runs(
    tmp_path: Path, store: Store, fake: RateLimitedProvider, per_minute: int
) -> list[RunState]:
    agents: dict[str, dict[str, object]] = {
        name: {"command": "unused", "models": ["first"], "scale": 2} for name in AGENTS
    }
    tables = {name: 'type = "builtin"\n' for name in AGENTS}
    toml = project_toml(fake, per_minute)
    states = []
    async with running_fleet(tmp_path / "p", store, agents, toml, tables) as f:
        for name in AGENTS:
            for _ in range(2):
                await f.trigger(name)
        for name in AGENTS:
            runs = await f.finished(name, 2, timeout=90)
            assert all(r.state is RunState.SUCCEEDED for r in runs), [r.error for r in runs]
            states += [r.state for r in runs]
    return states


async def test_runs_share_the_providers_budget_and_all_succeed(
    tmp_path: Path, store: Store
) -> None:
    async with RateLimitedProvider(rate=10, period=1.0, capacity=2, turns=3) as fake:
        states = await fleet_runs(tmp_path, store, fake, per_minute=540)
    assert states == [RunState.SUCCEEDED] * 6
    # The bucket spaces the permits; on a loaded machine two requests may still reach
    # the provider closer together than they left (then it refuses one, and the run
    # waits): at most one such bunching here, never the run failing.
    assert fake.granted == 18 and fake.refused <= 1
    (bucket,) = await store.provider_buckets()
    assert bucket.granted == 18 + fake.refused and bucket.throttles == fake.refused
    shares = await store.provider_shares(bucket.bucket)  # a refused request asks again
    assert sorted(shares) == ["a", "b", "c"] and sum(shares.values()) == 18 + fake.refused
    assert all(6 <= n <= 6 + fake.refused for n in shares.values()), shares


async def test_a_limit_set_too_high_is_slowed_by_429s_not_failed(
    tmp_path: Path, store: Store
) -> None:
    async with RateLimitedProvider(rate=6, period=1.0, capacity=1, turns=3) as fake:
        states = await fleet_runs(tmp_path, store, fake, per_minute=6000)
    assert states == [RunState.SUCCEEDED] * 6
    assert fake.granted == 18 and fake.refused > 0
    (bucket,) = await store.provider_buckets()
    assert bucket.throttles == fake.refused
