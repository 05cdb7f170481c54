"""Agents' pools in the store (migration 0022): the size bounds claims on both stores,
one lease holder decides it, and its decisions are kept with their inputs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from corral.store import AgentSpec, NewItem, RunState, Store, TriggerKind


async def _sync(store: Store, *specs: AgentSpec, cap: int | None = None) -> None:
    await store.sync_project(list(specs), scale_cap=cap, max_attempts=3, max_reruns=10)


POOLED = AgentSpec("burst", scale=4, queue_size=100, pool_min=1)
FIXED = AgentSpec("plain", scale=2, queue_size=100)


async def _set(store: Store, size: int, owner: str = "a", previous: int = 0) -> int | None:
    return await store.set_pool_size(
        "burst",
        owner,
        size=size,
        previous=previous,
        policy="reactive",
        reason="test",
        inputs={"queued": 3},
        record=True,
    )


async def test_a_pool_starts_at_min_and_is_clamped_on_every_sync(store: Store) -> None:
    await _sync(store, POOLED, FIXED)
    assert [(p.agent, p.size, p.scale) for p in await store.pool_states()] == [("burst", 1, 4)]
    assert await store.take_pool_lease("burst", "a", lease_seconds=30) is not None
    assert await _set(store, 3) == 3
    await _sync(store, POOLED, FIXED)  # a reload keeps the decided size
    assert (await store.pool_states())[0].size == 3
    await _sync(store, AgentSpec("burst", scale=2, queue_size=100, pool_min=1))
    assert (await store.pool_states())[0].size == 2  # a lower max lowers it
    await _sync(store, AgentSpec("burst", scale=6, queue_size=100, pool_min=5))
    assert (await store.pool_states())[0].size == 5  # a higher min raises it
    await _sync(store, AgentSpec("burst", scale=6, queue_size=100))  # now `scale = 6`
    assert await store.pool_states() == []
    assert await store.take_pool_lease("burst", "a", lease_seconds=30) is None


async def test_claims_take_at_most_the_pool_size(store: Store) -> None:
    await _sync(store, POOLED, FIXED)
    items = [await store.enqueue(NewItem("burst", TriggerKind.MANUAL)) for _ in range(4)]
    for _ in range(2):
        await store.enqueue(NewItem("plain", TriggerKind.MANUAL))
    claims = await store.claim("s", lease_seconds=30, limit=10)
    assert sorted(c.run.agent for c in claims) == ["burst", "plain", "plain"]  # pool of 1
    assert await store.take_pool_lease("burst", "a", lease_seconds=30) is not None
    assert await _set(store, 3) == 3
    more = await store.claim("s", lease_seconds=30, limit=10)
    assert [c.run.agent for c in more] == ["burst", "burst"]
    assert await _set(store, 1) == 1  # shrinking stops new claims, takes nothing back
    assert await store.claim("s", lease_seconds=30, limit=10) == []
    assert (await store.pool_states())[0].running == 3
    # A run asked for in the foreground (one given item) is bounded by max alone.
    last = items[3].item.id
    assert [c.item.id for c in await store.claim("f", lease_seconds=30, limit=1, item_id=last)]


async def test_one_lease_holder_decides_a_pool(store: Store) -> None:
    await _sync(store, POOLED)
    held = await store.take_pool_lease("burst", "a", lease_seconds=0.5)
    assert held is not None and held.owner == "a" and held.size == 1
    assert await store.take_pool_lease("burst", "b", lease_seconds=30) is None
    assert await _set(store, 3, owner="b") is None  # not the holder: nothing written
    assert (await store.pool_states())[0].size == 1
    assert await store.take_pool_lease("burst", "a", lease_seconds=0.5) is not None  # renewed
    await asyncio.sleep(0.7)  # a stops renewing: its lease lapses
    taken = await store.take_pool_lease("burst", "b", lease_seconds=30)
    assert taken is not None and taken.owner == "b"
    assert await _set(store, 9, owner="b") == 4  # never above max
    assert await _set(store, 2, owner="a") is None
    assert await store.release_pool_leases("b") == 1
    assert (await store.pool_states())[0].owner is None
    assert await store.take_pool_lease("burst", "a", lease_seconds=30) is not None


async def test_decisions_are_kept_with_their_inputs_and_pruned(store: Store) -> None:
    await _sync(store, POOLED)
    assert await store.take_pool_lease("burst", "a", lease_seconds=30) is not None
    await _set(store, 3, previous=1)
    await _set(store, 3, previous=3)
    await _set(store, 2, previous=3)
    quiet = await store.set_pool_size(
        "burst", "a", size=2, previous=2, policy="p", reason="r", inputs={}, record=False
    )
    assert quiet == 2
    log = await store.pool_decisions("burst")
    assert [(d.direction, d.size, d.desired) for d in log] == [
        ("shrink", 3, 2),
        ("hold", 3, 3),
        ("grow", 1, 3),
    ]
    assert log[0].inputs == {"queued": 3} and log[0].scheduler_id == "a"
    assert await store.pool_decisions("other") == []
    assert await store.pool_decision_counts() == {
        ("burst", "grow"): 1,
        ("burst", "hold"): 1,
        ("burst", "shrink"): 1,
    }
    assert await store.prune_pool_decisions(datetime.now(UTC) - timedelta(days=1)) == 0
    assert await store.prune_pool_decisions(datetime.now(UTC) + timedelta(seconds=1)) == 3
    assert await store.pool_decisions() == []


async def test_decisions_are_read_in_pages_and_from_a_time(store: Store) -> None:
    """The dashboard's log pages by id (``before``) and its chart reads from a time."""
    await _sync(store, POOLED)
    assert await store.take_pool_lease("burst", "a", lease_seconds=30) is not None
    clock = store.clock
    store.clock = lambda: clock() - timedelta(hours=3)
    try:
        await _set(store, 2, previous=1)  # three hours ago
    finally:
        store.clock = clock
    for size in (3, 4, 2):
        await _set(store, size, previous=size - 1)
    await store.record_fleet_decision("a", size=0, desired=1, policy="p", reason="r", inputs={})
    everything = await store.pool_decisions()
    assert [d.agent for d in everything] == [":fleet", "burst", "burst", "burst", "burst"]
    first = await store.pool_decisions("burst", limit=2)
    assert [d.desired for d in first] == [2, 4]
    second = await store.pool_decisions("burst", limit=2, before=first[-1].id)
    assert [d.desired for d in second] == [3, 2]
    assert await store.pool_decisions("burst", limit=2, before=second[-1].id) == []
    assert [d.agent for d in await store.pool_decisions(limit=1, before=everything[0].id)] == [
        "burst"
    ]
    recent = await store.pool_decisions("burst", since=datetime.now(UTC) - timedelta(hours=1))
    assert [d.desired for d in recent] == [2, 4, 3]
    since = await store.pool_decisions(since=datetime.now(UTC) - timedelta(hours=1), limit=10)
    assert len(since) == 4


async def test_an_observation_counts_each_arrival_and_end_once(store: Store) -> None:
    await _sync(store, POOLED, FIXED, cap=5)
    t0 = store.now()
    for _ in range(3):
        await store.enqueue(NewItem("burst", TriggerKind.MANUAL))
    await store.enqueue(NewItem("plain", TriggerKind.MANUAL))
    t1 = store.now()
    claims = await store.claim("s", lease_seconds=30, limit=10)  # burst 1 (pool), plain 1
    assert sorted(c.run.agent for c in claims) == ["burst", "plain"]
    first = await store.observe_pool("burst", t0, t1)
    assert first.arrivals == 3 and first.durations == ()
    assert [run_id for run_id, _ in first.busy] == [
        c.run.id for c in claims if c.run.agent == "burst"
    ]
    assert first.cap_room == 4  # the cap of 5 less plain's run
    assert first.budget_stop is None
    burst = next(c for c in claims if c.run.agent == "burst")
    await store.mark_run_running(burst.run.id, pid=None, host=None)
    fence = burst.run.fence or 0
    await store.finalize(burst.run.id, fence=fence, state=RunState.SUCCEEDED, exit_code=0)
    t2 = store.now()
    second = await store.observe_pool("burst", t1, t2)
    assert second.arrivals == 0 and second.busy == ()
    assert len(second.durations) == 1 and 0 <= second.durations[0] < 30
