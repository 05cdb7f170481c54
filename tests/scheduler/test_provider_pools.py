"""The pool decider reads the model provider's headroom (scheduler/pools.py): a pool of
built-in harness runs does not grow while its provider's shared bucket is throttled or
waited for, and the decision log says why; it grows again once the provider recovers.
Both stores, the real scheduler's PoolSizer, the real buckets."""

from __future__ import annotations

import asyncio
from pathlib import Path

from corral.scheduler.service import Scheduler, SchedulerOptions
from corral.store import BucketLimits, NewItem, Store, TriggerKind
from tests.scheduler.helpers import write_project
from tests.store.conftest import Clock

OPTIONS = SchedulerOptions(poll_interval=0.05, supervise_every=0.05, pool_tick=0.2)
PROJECT = (
    '[models.first]\nprovider = "anthropic"\nmodel = "claude-test"\n'
    'baseUrl = "http://127.0.0.1:9"\n'
    "[providers.anthropic]\nrequestsPerMinute = 60\n"
)
SCALE = 'type = "builtin"\n[scale]\nmin = 0\nmax = 4\npolicy = "reactive"\n'
LIMITS = BucketLimits(requests_per_second=1.0, window=60.0)


async def test_a_pool_does_not_grow_while_its_provider_is_throttled(
    tmp_path: Path, store: Store
) -> None:
    agents: dict[str, dict[str, object]] = {
        "dev": {"command": "unused", "models": ["first"]},
        "other": {"command": "true"},
    }
    tables = {"dev": SCALE, "other": '[scale]\nmin = 0\nmax = 4\npolicy = "reactive"\n'}
    project = write_project(tmp_path / "p", agents, PROJECT, tables)
    scheduler = Scheduler(project, store, OPTIONS)
    await scheduler.start()
    scheduler.pools.hold_every = 0.0  # record every decision, holds too
    for agent in ("dev", "other"):
        for _ in range(6):
            await store.enqueue(NewItem(agent, TriggerKind.MANUAL))
    await store.throttle_provider("anthropic:k", "anthropic", 1.5, LIMITS)

    await scheduler.pools.tick_all()
    sizes = {p.agent: p.size for p in await store.pool_states()}
    assert sizes == {"dev": 0, "other": 4}  # the command agent is not held back
    (decision,) = await store.pool_decisions("dev")
    assert decision.direction == "hold" and decision.desired == 0
    assert "provider: anthropic throttled by the provider" in decision.reason
    assert str(decision.inputs["provider_stop"]).startswith("anthropic throttled")
    assert int(decision.inputs["recommended"]) > 0

    # A run waiting for a permit also means the provider cannot feed more runs (the
    # bucket starts empty when the throttle ends: one permit a second from then).
    await asyncio.sleep(2.7)
    assert await store.take_provider_permit("anthropic:k", "anthropic", "r1", "dev", LIMITS) == 0
    assert await store.take_provider_permit("anthropic:k", "anthropic", "r2", "dev", LIMITS) > 0
    await scheduler.pools.tick_all()
    assert {p.agent: p.size for p in await store.pool_states()}["dev"] == 0
    newest = (await store.pool_decisions("dev"))[0]
    assert "1 runs waiting for a permit" in str(newest.inputs.get("provider_stop"))

    # Nobody waiting (the waiter stopped asking), not throttled: the pool grows.
    await asyncio.sleep(5.2)
    await scheduler.pools.tick_all()
    assert {p.agent: p.size for p in await store.pool_states()}["dev"] == 4
    grown = (await store.pool_decisions("dev"))[0]
    assert grown.direction == "grow" and "provider_stop" not in grown.inputs


async def test_a_provider_slowed_by_429s_recovers_for_the_decider_without_asks(
    tmp_path: Path, store: Store
) -> None:
    """Two 429s lower the bucket's rate; nobody asks for it any more (the key rotated, or
    the pool down to none). As time passes the decider sees the rate climb back (0.1 per
    60 s window) and stops holding the provider's pools."""
    agents: dict[str, dict[str, object]] = {"dev": {"command": "unused", "models": ["first"]}}
    project = write_project(tmp_path / "p", agents, PROJECT, {"dev": SCALE})
    store.clock = clock = Clock()
    scheduler = Scheduler(project, store, OPTIONS)
    await store.throttle_provider("anthropic:k", "anthropic", 1.0, LIMITS)
    clock.advance(1.5)
    await store.throttle_provider("anthropic:k", "anthropic", 1.0, LIMITS)  # rate: 75 %
    clock.advance(60.0)
    saturated = await scheduler.pools.saturated_providers(project)
    assert saturated["anthropic"].startswith("anthropic rate lowered to 85%")
    clock.advance(2 * 60.0)
    assert await scheduler.pools.saturated_providers(project) == {}
