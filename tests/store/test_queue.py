"""Conformance suite for the queue: control state, enqueue and claim, on both stores."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest

from corral.errors import StoreError
from corral.store import (
    AgentSpec,
    AgentState,
    ItemState,
    NewItem,
    ProjectState,
    RunState,
    Store,
    TriggerKind,
)
from tests.store.conftest import Clock

LEASE = 60.0


async def setup(
    store: Store,
    *specs: tuple[str, int, int],
    cap: int | None = None,
    max_attempts: int = 3,
    max_reruns: int = 2,
) -> None:
    await store.sync_project(
        [AgentSpec(name, scale, size) for name, scale, size in specs],
        scale_cap=cap,
        max_attempts=max_attempts,
        max_reruns=max_reruns,
    )


async def put(store: Store, agent: str = "a", **fields: object) -> int:
    trigger = fields.pop("trigger", TriggerKind.WEBHOOK)
    result = await store.enqueue(NewItem(agent=agent, trigger=trigger, **fields))  # type: ignore[arg-type]
    return result.item.id


async def states(store: Store) -> dict[str, AgentState]:
    return {state.agent: state for state in await store.agent_states()}


# -- control state -------------------------------------------------------------------


async def test_a_fresh_store_has_defaults(store: Store) -> None:
    assert await store.agent_states() == []
    assert await store.project_state() == ProjectState(
        paused=False, scale_cap=None, max_attempts=3, max_reruns=10
    )


async def test_sync_project_upserts_agents_and_keeps_operator_flags(store: Store) -> None:
    await setup(store, ("a", 1, 5), ("b", 2, 3), cap=4, max_attempts=2, max_reruns=7)
    await store.set_paused("a", True)
    await store.set_enabled("b", False)
    await store.set_paused(None, True)
    await setup(store, ("a", 3, 9), ("c", 1, 1), cap=None, max_attempts=5, max_reruns=1)

    assert await store.agent_states() == [
        AgentState("a", 3, 9, paused=True, enabled=True, present=True, queued=0, active=0),
        AgentState("b", 2, 3, paused=False, enabled=False, present=False, queued=0, active=0),
        AgentState("c", 1, 1, paused=False, enabled=True, present=True, queued=0, active=0),
    ]
    assert await store.project_state() == ProjectState(
        paused=True, scale_cap=None, max_attempts=5, max_reruns=1
    )
    await setup(store, ("b", 1, 1))
    assert [(s.agent, s.present) for s in await store.agent_states()] == [
        ("a", False),
        ("b", True),
        ("c", False),
    ]


async def test_sync_project_validates(store: Store) -> None:
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        await setup(store, ("a", 1, 1), max_attempts=0)
    with pytest.raises(ValueError, match="named twice"):
        await setup(store, ("a", 1, 1), ("a", 2, 2))
    with pytest.raises(ValueError, match="queue_size must be >= 1"):
        AgentSpec("a", 1, 0)
    with pytest.raises(ValueError, match="scale must be >= 0"):
        AgentSpec("a", -1, 1)


async def test_set_agent_scale_paused_enabled(store: Store) -> None:
    await setup(store, ("a", 1, 5))
    await put(store)
    changed = await store.set_agent_scale("a", 4)
    assert (changed.scale, changed.queued, changed.active) == (4, 1, 0)
    assert (await store.set_enabled("a", False)).enabled is False
    assert (await store.set_enabled("a", True)).enabled is True
    await store.set_paused("a", True)
    assert (await states(store))["a"].paused is True
    with pytest.raises(ValueError, match="scale must be >= 0"):
        await store.set_agent_scale("a", -1)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.set_agent_scale("ghost", 1),
        lambda s: s.set_enabled("ghost", True),
        lambda s: s.set_paused("ghost", True),
    ],
)
async def test_changing_an_unknown_agent_is_refused(store: Store, change: object) -> None:
    with pytest.raises(StoreError, match=r"agent 'ghost': no such agent"):
        await change(store)  # type: ignore[operator]


# -- enqueue -------------------------------------------------------------------------


async def test_enqueue_records_a_queued_item(store: Store, clock: Clock) -> None:
    await setup(store, ("a", 1, 5), max_attempts=4)
    detail = {"issue": 7, "title": "Ünïcödé"}
    result = await store.enqueue(
        NewItem(agent="a", trigger=TriggerKind.WEBHOOK, trigger_detail=detail, prompt="fix it")
    )
    item = result.item
    assert (result.dropped, result.duplicate) == ((), False)
    assert item.state is ItemState.QUEUED and item.reason is None
    assert (item.agent, item.trigger, item.trigger_detail, item.prompt) == (
        "a",
        TriggerKind.WEBHOOK,
        detail,
        "fix it",
    )
    assert (item.attempts, item.max_attempts, item.rerun_count) == (0, 4, 0)
    assert item.enqueued_at == clock.now
    assert (item.claimed_at, item.finished_at, item.lease_owner, item.fence, item.run_id) == (
        None,
    ) * 5
    assert await store.get_item(item.id) == item
    assert await store.get_item(item.id + 1000) is None


async def test_enqueue_ids_are_fifo(store: Store) -> None:
    await setup(store, ("a", 1, 50), ("b", 1, 50))
    ids = [await put(store, agent) for agent in "abab"]
    assert ids == sorted(ids) and len(set(ids)) == 4


@pytest.mark.parametrize(
    ("prepare", "reason"),
    [
        (
            None,
            "unknown agent 'ghost': the project has no agents/ghost/; "
            "check the trigger's agent name",
        ),
        (
            "absent",
            "unknown agent 'ghost': it is no longer in the project (agents/ghost/ was removed); "
            "restore it or retarget the trigger",
        ),
        (
            "disabled",
            "agent 'ghost' was disabled by an operator; `corral enable ghost` to accept "
            "triggers again",
        ),
        (
            "scale0",
            "agent 'ghost' is disabled (scale = 0); set scale to 1 or more in "
            "agents/ghost/config.toml to accept triggers",
        ),
    ],
)
async def test_enqueue_rejections_are_recorded_with_the_reason(
    store: Store, prepare: str | None, reason: str
) -> None:
    await setup(store, ("other", 1, 5))
    if prepare is not None:
        await setup(store, ("ghost", 0 if prepare == "scale0" else 1, 5), ("other", 1, 5))
    if prepare == "absent":
        await setup(store, ("other", 1, 5))
    if prepare == "disabled":
        await store.set_enabled("ghost", False)
    result = await store.enqueue(NewItem(agent="ghost", trigger=TriggerKind.MANUAL))
    assert result.item.state is ItemState.REJECTED
    assert result.item.reason == reason
    assert result.item.finished_at is not None
    assert await store.list_items(states=[ItemState.REJECTED]) == [result.item]


async def test_paused_agents_and_projects_still_accept_items(store: Store) -> None:
    await setup(store, ("a", 1, 5))
    await store.set_paused("a", True)
    await store.set_paused(None, True)
    assert (await store.enqueue(NewItem("a", TriggerKind.SCHEDULE))).item.state is ItemState.QUEUED


async def test_a_full_queue_drops_the_oldest(store: Store) -> None:
    await setup(store, ("a", 1, 3), ("b", 1, 3))
    first = [await put(store, "a") for _ in range(3)]
    other = await put(store, "b")
    result = await store.enqueue(NewItem("a", TriggerKind.SCHEDULE))
    assert result.item.state is ItemState.QUEUED
    assert [d.id for d in result.dropped] == first[:1]
    dropped = result.dropped[0]
    assert dropped.state is ItemState.DROPPED
    assert dropped.reason == "queue full (3 items): dropped for a newer item"
    assert dropped.finished_at is not None
    queued = await store.list_items(agent="a", states=[ItemState.QUEUED])
    assert [i.id for i in queued] == [result.item.id, first[2], first[1]]
    assert (await store.get_item(other)).state is ItemState.QUEUED  # type: ignore[union-attr]


async def test_a_shrunk_queue_drops_as_many_as_needed(store: Store) -> None:
    await setup(store, ("a", 1, 5))
    ids = [await put(store) for _ in range(5)]
    await setup(store, ("a", 1, 2))
    result = await store.enqueue(NewItem("a", TriggerKind.WEBHOOK))
    assert [d.id for d in result.dropped] == ids[:4]
    assert (await states(store))["a"].queued == 2


async def test_a_full_queue_refuses_when_asked(store: Store) -> None:
    await setup(store, ("a", 1, 2))
    ids = [await put(store) for _ in range(2)]
    result = await store.enqueue(NewItem("a", TriggerKind.CALL), overflow="refuse")
    assert result.item.state is ItemState.REJECTED
    assert result.item.reason == "queue full"
    assert result.dropped == ()
    queued = await store.list_items(states=[ItemState.QUEUED])
    assert sorted(i.id for i in queued) == ids
    with pytest.raises(ValueError, match="overflow"):
        await store.enqueue(NewItem("a", TriggerKind.CALL), overflow="evict")  # type: ignore[arg-type]


async def test_claimed_items_do_not_count_against_the_queue(store: Store) -> None:
    await setup(store, ("a", 2, 1))
    await put(store)
    await store.claim("s", lease_seconds=LEASE, limit=5)
    result = await store.enqueue(NewItem("a", TriggerKind.WEBHOOK))
    assert result.dropped == () and result.item.state is ItemState.QUEUED


async def test_dedupe_key_returns_the_existing_item(store: Store) -> None:
    await setup(store, ("a", 1, 5))
    first = await store.enqueue(NewItem("a", TriggerKind.WEBHOOK, dedupe_key="delivery-1"))
    again = await store.enqueue(NewItem("a", TriggerKind.WEBHOOK, dedupe_key="delivery-1"))
    assert again.duplicate and again.item == first.item and again.dropped == ()
    assert len(await store.list_items()) == 1
    other = await store.enqueue(NewItem("a", TriggerKind.WEBHOOK, dedupe_key="delivery-2"))
    assert not other.duplicate and other.item.id != first.item.id


async def test_a_rejected_item_does_not_hold_its_dedupe_key(store: Store) -> None:
    await setup(store, ("a", 1, 5))
    await store.set_enabled("a", False)
    rejected = await store.enqueue(NewItem("a", TriggerKind.WEBHOOK, dedupe_key="d"))
    assert rejected.item.state is ItemState.REJECTED and rejected.item.dedupe_key is None
    await store.set_enabled("a", True)
    accepted = await store.enqueue(NewItem("a", TriggerKind.WEBHOOK, dedupe_key="d"))
    assert accepted.item.state is ItemState.QUEUED and not accepted.duplicate


async def test_list_items_filters_newest_first(store: Store) -> None:
    await setup(store, ("a", 1, 5), ("b", 1, 5))
    ids = [await put(store, agent) for agent in "abab"]
    await store.claim("s", lease_seconds=LEASE, limit=1)
    assert [i.id for i in await store.list_items()] == ids[::-1]
    assert [i.id for i in await store.list_items(limit=2)] == ids[:1:-1]
    assert [i.id for i in await store.list_items(agent="b")] == [ids[3], ids[1]]
    assert [i.id for i in await store.list_items(states=[ItemState.CLAIMED])] == [ids[0]]
    assert await store.list_items(states=[]) == []
    with pytest.raises(ValueError, match="limit"):
        await store.list_items(limit=-1)


# -- claim ---------------------------------------------------------------------------


async def test_claim_leases_fences_and_starts_a_run(store: Store, clock: Clock) -> None:
    await setup(store, ("a", 1, 5), max_attempts=3)
    item_id = await put(store, trigger=TriggerKind.MANUAL, prompt="go", trigger_detail={"k": 1})
    [claim] = await store.claim("sched-1", lease_seconds=30, limit=5)
    item, run = claim.item, claim.run
    assert item.id == item_id and item.state is ItemState.CLAIMED
    assert (item.attempts, item.lease_owner, item.claimed_at) == (1, "sched-1", clock.now)
    assert item.lease_expires_at == clock.now + timedelta(seconds=30)
    assert item.fence is not None and item.fence >= 1 and item.run_id == run.id
    assert run.state is RunState.STARTING and run.created_at == clock.now
    assert (run.item_id, run.fence, run.attempt, run.owner) == (item_id, item.fence, 1, "sched-1")
    assert (run.agent, run.trigger, run.prompt, run.trigger_detail) == (
        "a",
        TriggerKind.MANUAL,
        "go",
        {"k": 1},
    )
    assert run.id.startswith("a-") and not run.rerun_requested and run.kill_requested_at is None
    assert await store.get_run(run.id) == run
    assert await store.get_item(item_id) == item


async def test_claim_respects_agent_scale_fifo_and_limit(store: Store) -> None:
    await setup(store, ("a", 2, 10), ("b", 1, 10))
    a = [await put(store, "a") for _ in range(4)]
    b = [await put(store, "b") for _ in range(2)]
    first = await store.claim("s", lease_seconds=LEASE, limit=2)
    # Round robin across agents: each agent's oldest first, not one FIFO by id.
    assert [c.item.id for c in first] == [a[0], b[0]]
    second = await store.claim("s", lease_seconds=LEASE, limit=10)
    assert [c.item.id for c in second] == a[1:2]
    assert await store.claim("s", lease_seconds=LEASE, limit=10) == []
    counts = await states(store)
    assert (counts["a"].active, counts["a"].queued, counts["b"].active) == (2, 2, 1)


async def test_claim_across_agents_is_in_id_order(store: Store) -> None:
    await setup(store, ("a", 5, 10), ("b", 5, 10))
    ids = [await put(store, agent) for agent in "babba"]
    claims = await store.claim("s", lease_seconds=LEASE, limit=3)
    assert [c.item.id for c in claims] == ids[:3]


async def test_claim_respects_the_project_cap(store: Store) -> None:
    await setup(store, ("a", 3, 10), ("b", 3, 10), cap=4)
    for agent in "aaabbb":
        await put(store, agent)
    claims = await store.claim("s", lease_seconds=LEASE, limit=10)
    assert len(claims) == 4
    assert await store.claim("t", lease_seconds=LEASE, limit=10) == []
    await setup(store, ("a", 3, 10), ("b", 3, 10), cap=0)
    assert await store.claim("t", lease_seconds=LEASE, limit=10) == []


async def test_claim_skips_paused_disabled_absent_and_scale_zero(store: Store) -> None:
    await setup(store, ("p", 1, 5), ("d", 1, 5), ("x", 1, 5), ("z", 1, 5), ("ok", 1, 5))
    for agent in ["p", "d", "x", "z", "ok"]:
        await put(store, agent)
    await store.set_paused("p", True)
    await store.set_enabled("d", False)
    await store.set_agent_scale("z", 0)
    await setup(store, ("p", 1, 5), ("d", 1, 5), ("z", 0, 5), ("ok", 1, 5))  # x is gone
    claims = await store.claim("s", lease_seconds=LEASE, limit=10)
    assert [c.item.agent for c in claims] == ["ok"]
    await store.set_paused("p", False)
    assert [c.item.agent for c in await store.claim("s", lease_seconds=LEASE, limit=9)] == ["p"]


async def test_a_paused_project_claims_nothing(store: Store) -> None:
    await setup(store, ("a", 1, 5))
    await put(store)
    await store.set_paused(None, True)
    assert await store.claim("s", lease_seconds=LEASE, limit=5) == []
    await store.set_paused(None, False)
    assert len(await store.claim("s", lease_seconds=LEASE, limit=5)) == 1


async def test_lowering_scale_holds_claims_until_below(store: Store) -> None:
    await setup(store, ("a", 3, 10))
    for _ in range(5):
        await put(store)
    claims = await store.claim("s", lease_seconds=LEASE, limit=10)
    assert len(claims) == 3
    await store.set_agent_scale("a", 1)
    for claim in claims[:2]:
        await store.finalize(
            claim.run.id, fence=claim.run.fence or 0, state=RunState.SUCCEEDED, exit_code=0
        )
    assert await store.claim("s", lease_seconds=LEASE, limit=10) == []
    await store.finalize(
        claims[2].run.id, fence=claims[2].run.fence or 0, state=RunState.FAILED, exit_code=1
    )
    assert len(await store.claim("s", lease_seconds=LEASE, limit=10)) == 1


async def test_claim_a_given_item(store: Store) -> None:
    await setup(store, ("a", 1, 5), ("b", 1, 5))
    a1, a2, b1 = await put(store, "a"), await put(store, "a"), await put(store, "b")
    [claim] = await store.claim("s", lease_seconds=LEASE, limit=5, item_id=a2)
    assert claim.item.id == a2  # it may overtake a1: it was asked for
    assert await store.claim("s", lease_seconds=LEASE, limit=5, item_id=a1) == []  # a is full
    assert await store.claim("s", lease_seconds=LEASE, limit=5, item_id=a2) == []  # claimed
    assert await store.claim("s", lease_seconds=LEASE, limit=5, item_id=9999) == []
    assert await store.claim("s", lease_seconds=LEASE, limit=0, item_id=b1) == []
    assert [c.item.id for c in await store.claim("s", lease_seconds=1, limit=1, item_id=b1)] == [b1]


async def test_fences_strictly_increase_across_the_store(store: Store) -> None:
    await setup(store, ("a", 3, 20), ("b", 3, 20))
    for agent in "ab" * 6:
        await put(store, agent)
    fences: list[int] = []
    for _ in range(4):
        for claim in await store.claim("s", lease_seconds=LEASE, limit=2):
            assert claim.item.fence == claim.run.fence
            fences.append(claim.run.fence or 0)
            await store.finalize(
                claim.run.id, fence=claim.run.fence or 0, state=RunState.SUCCEEDED, exit_code=0
            )
    assert fences == sorted(fences) and len(set(fences)) == len(fences) == 8


async def test_claim_validates(store: Store) -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        await store.claim("s", lease_seconds=0, limit=1)
    with pytest.raises(ValueError, match="limit"):
        await store.claim("s", lease_seconds=1, limit=-1)


async def test_concurrent_claims_on_one_store_never_share_an_item(store: Store) -> None:
    await setup(store, ("a", 3, 50), ("b", 2, 50), cap=4)
    for agent in "ab" * 10:
        await put(store, agent)
    batches = await asyncio.gather(
        *(store.claim(f"s{i}", lease_seconds=LEASE, limit=3) for i in range(6))
    )
    claimed = [c.item.id for batch in batches for c in batch]
    assert len(claimed) == len(set(claimed)) == 4


async def test_an_item_given_back_is_outside_the_queue_bound(store: Store, clock: Clock) -> None:
    await setup(store, ("a", 1, 1))
    retried = await put(store)
    await store.claim("s", lease_seconds=LEASE, limit=1)
    fresh = await put(store)
    clock.advance(LEASE + 1)
    await store.recover_lapsed()
    assert (await states(store))["a"].queued == 2  # one over the bound: the retry
    newer = await store.enqueue(NewItem("a", TriggerKind.WEBHOOK))
    assert [d.id for d in newer.dropped] == [fresh]  # never the retry
    queued = await store.list_items(states=[ItemState.QUEUED])
    assert [i.id for i in queued] == [newer.item.id, retried]
    [claim] = await store.claim("s", lease_seconds=LEASE, limit=1)
    assert claim.item.id == retried and claim.item.attempts == 2


@pytest.mark.parametrize("scale", [50, 100])
async def test_a_burst_of_one_agent_holds_no_other_agent_back(store: Store, scale: int) -> None:
    """Claims are round robin across agents: 500 items of a then one of b, and the first
    batch takes b's item (with scale 100, one FIFO by id took 64 of a's first)."""
    await setup(store, ("a", scale, 1000), ("b", 1, 10))
    for _ in range(500):
        await put(store, "a")
    b_item = await put(store, "b")
    first = await store.claim("s", lease_seconds=LEASE, limit=64)
    assert b_item in [c.item.id for c in first]
    taken = min(scale, 63)
    assert Counter(c.item.agent for c in first) == {"a": taken, "b": 1}
    counts = await states(store)
    assert (counts["a"].active, counts["a"].queued, counts["b"].active) == (taken, 500 - taken, 1)


async def test_agents_take_turns_oldest_item_first(store: Store) -> None:
    """Each round takes every agent's oldest item, agents by their oldest item's age."""
    await setup(store, ("a", 9, 10), ("b", 9, 10), ("c", 9, 10))
    ids = {agent: [await put(store, agent) for _ in range(3)] for agent in "cab"}
    claims = await store.claim("s", lease_seconds=LEASE, limit=4)
    # Round one: c, a, b (in order of their oldest items); round two starts with c.
    assert sorted(c.item.id for c in claims) == sorted(
        [ids["c"][0], ids["a"][0], ids["b"][0], ids["c"][1]]
    )


async def test_claims_keep_the_counters(store: Store) -> None:
    """agent_states reads the counters the queue's triggers keep: claim, finish, lose."""
    await setup(store, ("a", 2, 3))
    for _ in range(5):
        await put(store, "a")  # the bound is 3: two dropped
    counts = await states(store)
    assert (counts["a"].queued, counts["a"].active) == (3, 0)
    [one, two] = await store.claim("s", lease_seconds=LEASE, limit=5)
    counts = await states(store)
    assert (counts["a"].queued, counts["a"].active) == (1, 2)
    await store.finalize(
        one.run.id, fence=one.run.fence or 0, state=RunState.SUCCEEDED, exit_code=0
    )
    await store.release(two.run.id, fence=two.run.fence or 0, reason="shutdown")
    counts = await states(store)
    assert (counts["a"].queued, counts["a"].active) == (2, 0)
