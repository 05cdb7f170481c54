"""A run ending while other work touches its rows, on both stores, with the real Store
API and real concurrency (two transactions in flight on separate connections).

Found by an outside review of the PostgreSQL claim and finalise paths: a lock handed to a
waiter whose run was being ended was kept by the ended run until its TTL; a batch claim
and a finalise deadlocked (agent rows against call rows); a claim of one given item and an
intake dropping that item deadlocked (item row against agent row).
"""

from __future__ import annotations

import asyncio

from corral.store import AgentSpec, NewItem, RunState, Store, TriggerKind

ROUNDS = 40


async def _setup(store: Store, *agents: str) -> None:
    specs = [AgentSpec(agent, 1000, 10000) for agent in agents]
    await store.sync_project(specs, scale_cap=None, max_attempts=3, max_reruns=0)


async def test_a_lock_released_to_a_waiter_that_is_ending_is_not_left_with_it(
    store: Store,
) -> None:
    """H releases a key that W waits for while W's run ends: either W got it and its end
    released it, or W's end came first and it was passed over; never an ended holder."""
    await _setup(store, "a")
    for i in range(ROUNDS):
        for j in range(2):
            await store.enqueue(NewItem("a", TriggerKind.MANUAL, prompt=f"{i}-{j}"))
        holder, waiter = await store.claim("s1", lease_seconds=600, limit=2)
        key = f"k{i}"
        await store.acquire_lock(key, holder.run.id, ttl_seconds=1800)
        await store.wait_for_lock(key, waiter.run.id, ttl_seconds=1800, wait_seconds=60)
        assert waiter.item.fence is not None and holder.item.fence is not None
        await asyncio.gather(
            store.release_lock(key, holder.run.id),
            store.finalize(
                waiter.run.id,
                fence=waiter.item.fence,
                state=RunState.TIMED_OUT,
                exit_code=None,
                error="t",
            ),
        )
        lock = await store.get_lock(key)
        if lock is not None:
            run = await store.get_run(lock.run_id)
            assert run is not None and not run.state.is_terminal, (i, lock, run)
        await store.finalize(
            holder.run.id, fence=holder.item.fence, state=RunState.SUCCEEDED, exit_code=0
        )


async def test_a_batch_claim_and_the_end_of_a_waiting_caller_do_not_deadlock(
    store: Store,
) -> None:
    """A caller waiting on its call ends while another scheduler claims a batch holding
    the callee's item and more of the caller's agent: both succeed."""
    await _setup(store, "a", "c")
    for i in range(ROUNDS):
        queued = await store.enqueue(NewItem("a", TriggerKind.MANUAL, prompt=f"{i}"))
        [caller] = await store.claim("s1", lease_seconds=600, limit=1, item_id=queued.item.id)
        call = await store.create_call(caller.run.id, "c", "ctx", max_depth=3)
        await store.wait_on_calls(caller.run.id, [call.id], waiting=True)
        await store.enqueue(NewItem("a", TriggerKind.MANUAL, prompt=f"more {i}"))
        assert caller.item.fence is not None
        ended, claims = await asyncio.gather(
            store.finalize(
                caller.run.id,
                fence=caller.item.fence,
                state=RunState.TIMED_OUT,
                exit_code=None,
                error="t",
            ),
            store.claim("s2", lease_seconds=600, limit=10),
        )
        assert ended.run.state is RunState.TIMED_OUT
        for claim in claims:
            assert claim.item.fence is not None
            await store.finalize(
                claim.run.id, fence=claim.item.fence, state=RunState.SUCCEEDED, exit_code=0
            )


async def test_claiming_a_given_item_and_an_intake_dropping_it_do_not_deadlock(
    store: Store,
) -> None:
    """``claim(item_id=…)`` of the oldest item of a full queue, while an intake drops the
    oldest to make room: one of them wins, neither fails."""
    await store.sync_project([AgentSpec("a", 1, 1)], scale_cap=None, max_attempts=3, max_reruns=0)
    for i in range(ROUNDS):
        oldest = (await store.enqueue(NewItem("a", TriggerKind.MANUAL, prompt=f"{i}"))).item
        claims, intake = await asyncio.gather(
            store.claim("s1", lease_seconds=600, limit=1, item_id=oldest.id),
            store.enqueue(NewItem("a", TriggerKind.MANUAL, prompt=f"newer {i}")),
        )
        dropped = [item.id for item in intake.dropped]
        assert (len(claims) == 1) != (oldest.id in dropped), (claims, dropped)
        for claim in claims:
            assert claim.item.fence is not None
            await store.finalize(
                claim.run.id, fence=claim.item.fence, state=RunState.SUCCEEDED, exit_code=0
            )
        for item in await store.list_items(agent="a", states=["queued"]):
            taken = await store.claim("s1", lease_seconds=600, limit=1, item_id=item.id)
            for claim in taken:
                assert claim.item.fence is not None
                await store.finalize(
                    claim.run.id, fence=claim.item.fence, state=RunState.SUCCEEDED, exit_code=0
                )
