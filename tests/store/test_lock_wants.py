"""Wants: a refused plain try-lock (``rlock`` without ``--wait``) is an edge of the
wait-for graph for a short while, on both stores.

Agents written for Action Llama retry a refused ``rlock`` in a loop, and its docs promise
them deadlock detection: a want that would close a cycle is answered ``Deadlock``. Unlike
Action Llama, wants expire (after ``WANT_SECONDS``, renewed by each refusal) and end when
the run takes or releases a lock or ends, so a run that gave up is never named in a cycle.
Two runs closing one cycle at the same moment: exactly one of them, the later, is told.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.store import (
    Deadlock,
    LockGrant,
    LockHeld,
    NewRun,
    Run,
    RunState,
    Store,
    TriggerKind,
    open_store,
)
from corral.store._locks import WANT_SECONDS
from tests.conftest import UrlFactory
from tests.store.conftest import Clock, live_run

TTL = 3600.0


async def grant(store: Store, key: str, run: Run) -> LockGrant:
    got = await store.acquire_lock(key, run.id, ttl_seconds=TTL)
    assert isinstance(got, LockGrant), got
    return got


async def refuse(store: Store, key: str, run: Run) -> LockHeld:
    got = await store.acquire_lock(key, run.id, ttl_seconds=TTL)
    assert isinstance(got, LockHeld), got
    return got


async def try_lock(store: Store, key: str, run: Run) -> LockGrant | LockHeld | Deadlock:
    return await store.acquire_lock(key, run.id, ttl_seconds=TTL)


async def wants(store: Store) -> list[tuple[str, str]]:
    return [(w.run_id, w.key) for w in await store.list_lock_wants()]


async def crossed(store: Store) -> tuple[Run, Run]:
    """a holds k1, b holds k2."""
    a, b = await live_run(store, "a"), await live_run(store, "b")
    await grant(store, "k1", a)
    await grant(store, "k2", b)
    return a, b


async def test_a_want_that_closes_a_cycle_is_a_deadlock(store: Store, clock: Clock) -> None:
    a, b = await crossed(store)
    held = await refuse(store, "k2", a)
    assert held.holder == b.id
    [want] = await store.list_lock_wants()
    assert (want.run_id, want.key, want.since) == (a.id, "k2", clock.now)
    assert want.deadline == clock.now + timedelta(seconds=WANT_SECONDS)

    assert await try_lock(store, "k1", b) == Deadlock((b.id, "k1", a.id, "k2"))
    # The run told records no want, and nothing else changed.
    assert await wants(store) == [(a.id, "k2")]
    assert [(lock.key, lock.run_id) for lock in await store.list_locks()] == [
        ("k1", a.id),
        ("k2", b.id),
    ]


async def test_a_three_run_cycle_of_wants_is_named_in_order(store: Store) -> None:
    a, b, c = [await live_run(store, name) for name in "abc"]
    await grant(store, "k1", a)
    await grant(store, "k2", b)
    await grant(store, "k3", c)
    await refuse(store, "k2", a)  # a -> b
    await refuse(store, "k3", b)  # b -> c
    assert await try_lock(store, "k1", c) == Deadlock((c.id, "k1", a.id, "k2", b.id, "k3"))


async def test_a_want_and_a_blocking_wait_make_one_graph(store: Store) -> None:
    a, b = await crossed(store)
    waiting = await store.wait_for_lock("k2", a.id, ttl_seconds=TTL, wait_seconds=600)
    assert isinstance(waiting, LockHeld)
    assert await try_lock(store, "k1", b) == Deadlock((b.id, "k1", a.id, "k2"))


async def test_a_retry_loop_keeps_its_want(store: Store, clock: Clock) -> None:
    a, b = await crossed(store)
    first = clock.now
    for _ in range(4):  # a retries every 20 s: each refusal renews the want
        await refuse(store, "k2", a)
        clock.advance(20)
    [want] = await store.list_lock_wants()
    assert want.since == first  # the same want, renewed
    assert isinstance(await try_lock(store, "k1", b), Deadlock)


async def test_an_expired_want_is_never_in_a_cycle(store: Store, clock: Clock) -> None:
    a, b = await crossed(store)
    await refuse(store, "k2", a)
    clock.advance(WANT_SECONDS - 1)
    assert await wants(store) == [(a.id, "k2")]
    clock.advance(1)  # a gave up retrying
    assert await wants(store) == []
    held = await refuse(store, "k1", b)
    assert held.holder == a.id
    clock.advance(WANT_SECONDS)  # b gave up too; a tries again: a new want, from now
    await refuse(store, "k2", a)
    [want] = await store.list_lock_wants()
    assert (want.run_id, want.since) == (a.id, clock.now)


async def test_taking_a_lock_ends_the_want(store: Store) -> None:
    a, b = await crossed(store)
    await refuse(store, "k2", a)
    await grant(store, "k3", a)  # a moved on to other work
    assert await wants(store) == []
    assert isinstance(await try_lock(store, "k1", b), LockHeld)


async def test_refreshing_a_held_lock_ends_the_want(store: Store) -> None:
    a, b = await crossed(store)
    await refuse(store, "k2", a)
    assert (await grant(store, "k1", a)).refreshed
    assert isinstance(await try_lock(store, "k1", b), LockHeld)


async def test_releasing_a_lock_ends_the_want(store: Store) -> None:
    a, b = await crossed(store)
    await grant(store, "k3", a)
    await refuse(store, "k2", a)
    assert await store.release_lock("k3", a.id)
    assert await wants(store) == []
    assert isinstance(await try_lock(store, "k1", b), LockHeld)


async def test_a_failed_release_keeps_the_want(store: Store) -> None:
    a, b = await crossed(store)
    await refuse(store, "k2", a)
    assert not await store.release_lock("k9", a.id)  # released nothing
    assert isinstance(await try_lock(store, "k1", b), Deadlock)


async def test_being_handed_a_lock_ends_the_want(store: Store) -> None:
    a, b = await crossed(store)
    c = await live_run(store, "c")
    await grant(store, "k3", c)
    await refuse(store, "k3", a)  # a wants c's k3
    await store.wait_for_lock("k2", a.id, ttl_seconds=TTL, wait_seconds=600)
    assert await store.release_lock("k2", b.id)  # handed to a, who waited for it
    assert await wants(store) == []


async def test_one_want_per_run_the_latest(store: Store) -> None:
    a, b = await crossed(store)
    c = await live_run(store, "c")
    await grant(store, "k3", c)
    await refuse(store, "k2", a)
    await refuse(store, "k3", a)  # a now tries something else: it wants k3, not k2
    assert await wants(store) == [(a.id, "k3")]
    assert isinstance(await try_lock(store, "k1", b), LockHeld)


@pytest.mark.parametrize("end", [RunState.SUCCEEDED, RunState.LOST])
async def test_the_end_of_a_run_ends_its_want(store: Store, end: RunState) -> None:
    a, b = await crossed(store)
    await refuse(store, "k2", a)
    await store.finish_run(a.id, state=end, exit_code=None)
    assert await wants(store) == []
    assert isinstance(await try_lock(store, "k1", b), LockGrant)  # a's k1 went with it


async def test_a_run_holding_nothing_closes_no_cycle(store: Store) -> None:
    a, b = await crossed(store)
    idle = await live_run(store, "idle")
    await refuse(store, "k1", idle)
    await refuse(store, "k2", idle)
    await refuse(store, "k2", a)
    assert isinstance(await try_lock(store, "k1", b), Deadlock)  # a and b still do


# -- two runs closing one cycle at once ----------------------------------------------------

ROUNDS = 20


async def test_two_runs_closing_a_cycle_at_once_exactly_one_is_told(
    store: Store, store_url: str
) -> None:
    """Each run's try-lock through its own store (its own connections), both at once, for
    several rounds: every time, exactly one answer is a deadlock and the other a plain
    refusal, whose want is the one recorded."""
    async with await open_store(store_url, migrate=False) as other:
        for _ in range(ROUNDS):
            a = await store.create_run(NewRun(agent="a", trigger=TriggerKind.MANUAL))
            b = await store.create_run(NewRun(agent="b", trigger=TriggerKind.MANUAL))
            await grant(store, "k1", a)
            await grant(store, "k2", b)
            got_a, got_b = await asyncio.gather(try_lock(store, "k2", a), try_lock(other, "k1", b))
            told = [got for got in (got_a, got_b) if isinstance(got, Deadlock)]
            assert len(told) == 1, (got_a, got_b)
            refused = a if isinstance(got_a, LockHeld) else b
            assert [w.run_id for w in await store.list_lock_wants()] == [refused.id]
            for run in (a, b):
                await store.finish_run(run.id, state=RunState.SUCCEEDED, exit_code=None)


# -- a property: whatever the order, only unexpired wants make cycles -------------------

RUNS = 3
KEYS = ("k0", "k1")
STEP = st.one_of(
    st.tuples(st.just("try"), st.integers(0, RUNS - 1), st.sampled_from(KEYS)),
    st.tuples(st.just("release"), st.integers(0, RUNS - 1), st.sampled_from(KEYS)),
    st.tuples(
        st.just("advance"),
        st.sampled_from([1.0, WANT_SECONDS - 1, WANT_SECONDS, WANT_SECONDS + 1]),
        st.just(""),
    ),
)


class WantModel:
    """Locks that never expire (TTL far beyond the steps), one want per run."""

    def __init__(self) -> None:
        self.now = 0.0
        self.holder: dict[str, int] = {}
        self.want: dict[int, tuple[str, float]] = {}  # run -> (key, expires)

    def cycles(self, run: int, key: str) -> list[tuple[int, ...]]:
        """The runs of each cycle ``run`` closes by wanting ``key`` (unexpired wants only)."""
        found: list[tuple[int, ...]] = []

        def walk(node: int, trail: tuple[int, ...]) -> None:
            wanted = self.want.get(node)
            if wanted is None or wanted[1] <= self.now or wanted[0] not in self.holder:
                return
            nxt = self.holder[wanted[0]]
            if nxt == run:
                found.append(trail)
            elif nxt not in trail and nxt != node:
                walk(nxt, (*trail, nxt))

        first = self.holder[key]
        walk(first, (first,))
        return found


@pytest.mark.slow
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(STEP, min_size=1, max_size=40))
def test_only_unexpired_wants_are_reported_in_cycles(
    make_store_url: UrlFactory, steps: list[tuple[str, object, str]]
) -> None:
    asyncio.run(_check_steps(make_store_url(), steps))


async def _check_steps(url: str, steps: list[tuple[str, object, str]]) -> None:
    async with await open_store(url) as store:
        clock = Clock()
        store.clock = clock
        runs = [await live_run(store, f"r{i}") for i in range(RUNS)]
        model = WantModel()
        for kind, arg, key in steps:
            if kind == "advance":
                assert isinstance(arg, float)
                clock.advance(arg)
                model.now += arg
            elif kind == "release":
                assert isinstance(arg, int)
                await _release(store, model, runs, arg, key)
            else:
                assert isinstance(arg, int)
                await _try(store, model, runs, arg, key)


async def _release(store: Store, model: WantModel, runs: list[Run], run: int, key: str) -> None:
    mine = model.holder.get(key) == run
    assert await store.release_lock(key, runs[run].id) is mine
    if mine:
        del model.holder[key]
        model.want.pop(run, None)


async def _try(store: Store, model: WantModel, runs: list[Run], run: int, key: str) -> None:
    got = await try_lock(store, key, runs[run])
    holder = model.holder.get(key)
    if holder is None or holder == run:
        assert isinstance(got, LockGrant), got
        model.holder[key] = run
        model.want.pop(run, None)
        return
    cycles = model.cycles(run, key)
    if not cycles:
        assert got == LockHeld(key, runs[holder].id, got.held_since), got
        model.want[run] = (key, model.now + WANT_SECONDS)
        return
    assert isinstance(got, Deadlock), got
    named = got.cycle[0::2]  # the runs, starting with the one told
    assert named[0] == runs[run].id
    assert named[1:] in [tuple(runs[i].id for i in cycle) for cycle in cycles], got
    model.want.pop(run, None)
