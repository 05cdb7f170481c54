"""A model of the lock manager, checked against both stores.

Hypothesis drives random sequences of try-lock (a refused one records a short-lived
want, see ``WANT_SECONDS``), blocking wait (``wait_for_lock``), cancelled
waits, release, heartbeat, operator release, clock moves and runs ending. Besides the rules
drawing any run and key, a few aim at the interesting states: a holder waiting for another
holder's key (chains, cycles), a waiter polling again, a holder releasing or heartbeating
its own lock, an idle run taking a free key.

The model predicts every outcome: grant, refresh, refusal naming the holder, refusal of an
ended run; a wait recorded, kept (its deadline and TTL from its first step), or re-queued
at the back once its deadline passed; a deadlock and the cycle it names; every hand-over (a
released, force-released or ended run's key, or an expired key someone else asks for, goes
to the first live waiter whose deadline has not passed, with a new token and that waiter's
TTL, and its wait ends). After every step the invariants are checked: the store's locks and
waiters equal to the model's, at most one unexpired holder per key, tokens strictly
increasing, nobody waiting for a key it holds or for a free key, and no cycle in the
wait-for graph made only of edges a wait step checked. Wants are modelled too: recorded
by a refused try-lock (renewed by the next one, replaced by one for another key), gone
when the run takes, is handed or releases a lock, ends, or the want expires; a refused
try-lock or wait step whose edge would close a cycle through locks, waits and unexpired
wants is answered ``Deadlock`` naming one of those cycles, so an expired want is never
part of a reported cycle. One fresh store and one event loop per example.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

from hypothesis import Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from corral.errors import StoreError
from corral.store import (
    Deadlock,
    LockGrant,
    LockHeld,
    NewRun,
    RunState,
    Store,
    TriggerKind,
    open_store,
)
from corral.store._locks import WANT_SECONDS
from tests.store.conftest import Clock

KEYS = ["k1", "k2", "k3"]
TTLS = st.sampled_from([5.0, 10.0, 30.0, 300.0])
WAITS = st.sampled_from([0.0, 5.0, 10.0, 60.0])
_T = TypeVar("_T")


@dataclasses.dataclass
class ModelLock:
    run_id: str
    token: int
    acquired_at: datetime
    expires_at: datetime
    # Bumped when the lock comes back to life after expiring (its holder's heartbeat or
    # refresh): the edges of its waiters reappear without a wait step checking them.
    epoch: int = 0


@dataclasses.dataclass
class ModelWait:
    key: str
    run_id: str
    since: datetime
    deadline: datetime
    ttl: float
    # (token, epoch) of the lock this wait's edge last checked for a cycle: the edge is
    # "checked" while the key keeps that holder, continuously unexpired.
    checked: tuple[int, int] | None = None


@dataclasses.dataclass
class ModelWant:
    key: str
    since: datetime
    expires_at: datetime
    # As ``ModelWait.checked``: the lock the refusal that recorded (or renewed) it saw.
    checked: tuple[int, int] | None = None


class LockModel(RuleBasedStateMachine):
    make_url: ClassVar[Callable[[], str]]

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.clock = Clock()
        self.store: Store = self.run(open_store(type(self).make_url()))
        self.store.clock = self.clock
        self.live: list[str] = []
        self.ended: list[str] = []
        self.locks: dict[str, ModelLock] = {}
        self.last_token: dict[str, int] = {}
        self.max_token = 0
        # Every wait row, in arrival order (the store's wait ids), lapsed ones included.
        self.waits: list[ModelWait] = []
        # Each run's want (its latest refused try-lock), expired ones included.
        self.wants: dict[str, ModelWant] = {}
        # Keys handed over by the current step, in hand-over order: their tokens are read
        # from the store after the step (``settle``).
        self.handed: list[str] = []

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self.runner.run(coro)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.runner.close()

    def runs(self) -> list[str]:
        """Live runs, and the run that ended last (any ended run behaves alike)."""
        return self.live + self.ended[-1:]

    # -- the model's rules -------------------------------------------------------------

    def wait_of(self, key: str, run_id: str) -> ModelWait | None:
        return next((w for w in self.waits if (w.key, w.run_id) == (key, run_id)), None)

    def drop_wait(self, key: str, run_id: str) -> None:
        self.waits = [w for w in self.waits if (w.key, w.run_id) != (key, run_id)]

    def line(self, key: str) -> list[ModelWait]:
        """The runs waiting for ``key`` whose deadline has not passed, first in line first."""
        now = self.clock.now
        return [w for w in self.waits if w.key == key and w.deadline > now]

    def hand_over(self, key: str, waiter: ModelWait) -> None:
        now = self.clock.now
        expires = now + timedelta(seconds=waiter.ttl)
        self.locks[key] = ModelLock(waiter.run_id, 0, now, expires)
        self.waits.remove(waiter)
        self.wants.pop(waiter.run_id, None)
        self.handed.append(key)
        event("hand-over")

    def serve(self, key: str) -> None:
        """``key`` was just released: its first waiter, if any, gets it."""
        line = self.line(key)
        if line:
            self.hand_over(key, line[0])

    def settle(self) -> None:
        """Read the tokens of this step's hand-overs: each greater than every earlier one."""
        if not self.handed:
            return
        stored = {lock.key: lock for lock in self.run(self.store.list_locks())}
        for key in self.handed:
            lock, model = stored.get(key), self.locks[key]
            assert lock is not None and lock.run_id == model.run_id, (key, lock, model)
            assert lock.token > self.max_token
            model.token = self.last_token[key] = self.max_token = lock.token
        self.handed.clear()

    def refusal(self, key: str, run_id: str) -> LockHeld | None:
        """What a try-lock (or one wait step) of ``run_id`` is refused, if it is: an
        unexpired lock of another run, or an expired one handed to its first waiter."""
        held = self.locks.get(key)
        if held is None or held.run_id == run_id:
            return None
        if held.expires_at > self.clock.now:
            return LockHeld(key, held.run_id, held.acquired_at)
        line = self.line(key)
        if not line or line[0].run_id == run_id:
            return None
        self.hand_over(key, line[0])
        return LockHeld(key, line[0].run_id, self.clock.now)

    def check_grant(self, got: object, key: str, run_id: str, ttl: float) -> None:
        now = self.clock.now
        held = self.locks.get(key)
        expires = now + timedelta(seconds=ttl)
        assert isinstance(got, LockGrant), got
        assert (got.key, got.run_id, got.expires_at) == (key, run_id, expires)
        self.drop_wait(key, run_id)
        self.wants.pop(run_id, None)
        if held is not None and held.run_id == run_id:
            assert got.refreshed and (got.token, got.acquired_at) == (held.token, held.acquired_at)
            if held.expires_at <= now:
                held.epoch += 1
            held.expires_at = expires
            return
        assert not got.refreshed and got.acquired_at == now
        assert got.token > self.last_token.get(key, 0)
        assert got.token > self.max_token  # greater than every earlier token, of any key
        self.last_token[key] = self.max_token = got.token
        self.locks[key] = ModelLock(run_id, got.token, now, expires)

    def edges(self) -> list[tuple[ModelWait, str]]:
        """The wait-for graph: a live wait for a key held unexpired by another run."""
        now = self.clock.now
        found = []
        for wait in self.waits:
            lock = self.locks.get(wait.key)
            if (
                wait.deadline > now
                and lock is not None
                and lock.run_id != wait.run_id
                and lock.expires_at > now
            ):
                found.append((wait, lock.run_id))
        return found

    def want_edges(self) -> list[tuple[str, ModelWant, str]]:
        """The try-lock half: (run, want, holder) for an unexpired want of a live run
        naming a key another run holds unexpired."""
        now = self.clock.now
        found = []
        for run_id, want in self.wants.items():
            lock = self.locks.get(want.key)
            if (
                want.expires_at > now
                and run_id in self.live
                and lock is not None
                and lock.run_id != run_id
                and lock.expires_at > now
            ):
                found.append((run_id, want, lock.run_id))
        return found

    def cycles(self, waiter: str, via: str, holder: str) -> list[tuple[str, ...]]:
        """Every cycle ``waiter`` would close by waiting (for ``via``) on ``holder``, as
        ``Deadlock.cycle``: (waiter, via, holder, key, run, ..., key back to waiter)."""
        graph: dict[str, list[tuple[str, str]]] = {}
        for wait, to in self.edges():
            graph.setdefault(wait.run_id, []).append((wait.key, to))
        for run_id, want, to in self.want_edges():
            graph.setdefault(run_id, []).append((want.key, to))
        found: list[tuple[str, ...]] = []

        def walk(node: str, trail: tuple[str, ...], seen: frozenset[str]) -> None:
            for key, nxt in graph.get(node, ()):
                if nxt == waiter:
                    found.append((waiter, via, holder, *trail, key))
                elif nxt not in seen:
                    walk(nxt, (*trail, key, nxt), seen | {nxt})

        walk(holder, (), frozenset({holder}))
        return found

    # -- rules ---------------------------------------------------------------------------

    @initialize(count=st.integers(2, 3))
    def start(self, count: int) -> None:
        for _ in range(count):
            self.new_run()

    @precondition(lambda self: len(self.live) < 4)
    @rule()
    def new_run(self) -> None:
        run = self.run(self.store.create_run(NewRun(agent="a", trigger=TriggerKind.MANUAL)))
        self.live.append(run.id)

    @rule(data=st.data(), key=st.sampled_from(KEYS), ttl=TTLS)
    def acquire(self, data: st.DataObject, key: str, ttl: float) -> None:
        run_id = data.draw(st.sampled_from(self.runs()))
        if run_id in self.ended:
            try:
                self.run(self.store.acquire_lock(key, run_id, ttl_seconds=ttl))
            except StoreError as exc:
                assert "the run has ended" in str(exc)
                return
            raise AssertionError(f"ended run {run_id} acquired {key}")
        self.try_lock(run_id, key, ttl)

    def try_lock(self, run_id: str, key: str, ttl: float) -> None:
        refusal = self.refusal(key, run_id)
        got = self.run(self.store.acquire_lock(key, run_id, ttl_seconds=ttl))
        self.settle()
        if refusal is None:
            self.check_grant(got, key, run_id, ttl)
            return
        cycles = self.cycles(run_id, key, refusal.holder)
        if cycles:
            assert isinstance(got, Deadlock), got
            assert got.cycle in cycles, (got.cycle, cycles)
            event(f"try-lock: deadlock, {len(got.cycle) // 2} runs")
            self.wants.pop(run_id, None)
            return
        assert got == refusal
        now = self.clock.now
        mine = self.wants.get(run_id)
        since = now if mine is None or mine.key != key or mine.expires_at <= now else mine.since
        lock = self.locks[key]
        expires = now + timedelta(seconds=WANT_SECONDS)
        self.wants[run_id] = ModelWant(key, since, expires, (lock.token, lock.epoch))
        event("try-lock: held, wants" if mine is None else "try-lock: held, wanted before")

    @rule(data=st.data(), key=st.sampled_from(KEYS), ttl=TTLS, wait_seconds=WAITS)
    def wait(self, data: st.DataObject, key: str, ttl: float, wait_seconds: float) -> None:
        run_id = data.draw(st.sampled_from(self.runs()))
        self.wait_step(run_id, key, ttl, wait_seconds)

    def blocked(self) -> list[tuple[str, str]]:
        """(run, key): a live run holding a lock (expired or not) and a key another run
        holds unexpired: the waits that build chains and cycles."""
        now = self.clock.now
        holders = {lock.run_id for lock in self.locks.values()}
        return [
            (run_id, key)
            for key, lock in sorted(self.locks.items())
            if lock.expires_at > now
            for run_id in self.live  # in creation order: run ids are random
            if run_id in holders and run_id != lock.run_id
        ]

    def idle(self) -> list[tuple[str, str]]:
        """(run, key): a live run holding no unexpired lock, and a key nobody holds unexpired."""
        now = self.clock.now
        held = {key: lock.run_id for key, lock in self.locks.items() if lock.expires_at > now}
        return [
            (run_id, key)
            for run_id in self.live
            if run_id not in held.values()
            for key in KEYS
            if key not in held
        ]

    @precondition(lambda self: bool(self.idle()))
    @rule(data=st.data(), ttl=TTLS)
    def idle_run_locks(self, data: st.DataObject, ttl: float) -> None:
        """A try-lock by a run holding nothing of a key nobody holds (unexpired)."""
        run_id, key = data.draw(st.sampled_from(self.idle()))
        self.try_lock(run_id, key, ttl)

    @precondition(lambda self: bool(self.blocked()))
    @rule(data=st.data(), ttl=TTLS, wait_seconds=st.sampled_from([10.0, 60.0]))
    def holder_waits(self, data: st.DataObject, ttl: float, wait_seconds: float) -> None:
        """The same step, by a run holding a lock for a key another run holds."""
        run_id, key = data.draw(st.sampled_from(self.blocked()))
        self.wait_step(run_id, key, ttl, wait_seconds)

    @precondition(lambda self: bool(self.blocked()))
    @rule(data=st.data(), ttl=TTLS)
    def holder_try_locks(self, data: st.DataObject, ttl: float) -> None:
        """A try-lock by a run holding a lock of a key another run holds: a want that
        builds chains and cycles, as an agent's retry loop does."""
        run_id, key = data.draw(st.sampled_from(self.blocked()))
        self.try_lock(run_id, key, ttl)

    @precondition(lambda self: any(w.deadline > self.clock.now for w in self.waits))
    @rule(data=st.data(), ttl=TTLS, wait_seconds=WAITS)
    def waiter_polls(self, data: st.DataObject, ttl: float, wait_seconds: float) -> None:
        """The next step of a run that is waiting (``rlock --wait`` polls until served)."""
        now = self.clock.now
        mine = data.draw(st.sampled_from([w for w in self.waits if w.deadline > now]))
        self.wait_step(mine.run_id, mine.key, ttl, wait_seconds)

    def wait_step(self, run_id: str, key: str, ttl: float, wait_seconds: float) -> None:
        wait = self.store.wait_for_lock
        if run_id in self.ended:
            try:
                self.run(wait(key, run_id, ttl_seconds=ttl, wait_seconds=wait_seconds))
            except StoreError as exc:
                assert "the run has ended" in str(exc)
                return
            raise AssertionError(f"ended run {run_id} waited for {key}")
        refusal = self.refusal(key, run_id)
        got = self.run(wait(key, run_id, ttl_seconds=ttl, wait_seconds=wait_seconds))
        self.settle()
        if refusal is None:
            self.check_grant(got, key, run_id, ttl)
            event("wait: granted")
            return
        now = self.clock.now
        mine = self.wait_of(key, run_id)
        if mine is not None and mine.deadline <= now:
            self.waits.remove(mine)  # a wait that lapsed starts again, at the back
            mine = None
        cycles = self.cycles(run_id, key, refusal.holder)
        if cycles:
            # ``cycles`` holds every valid cycle: runs and keys alternating, each run
            # waiting for the key the next one holds, the last key held by the waiter.
            # With one path from the holder back to the waiter the store names exactly
            # that cycle; with several, its search order (edge rows in no set order) picks
            # one of them.
            assert isinstance(got, Deadlock), got
            assert got.cycle in cycles, (got.cycle, cycles)
            event(f"wait: deadlock, {len(got.cycle) // 2} runs, {min(len(cycles), 2)} paths")
            event(f"wait: deadlock, {'was' if mine else 'not'} waiting")
            if mine is not None:
                self.waits.remove(mine)
            return
        assert got == refusal
        event("wait: held, waiting" if mine is None else "wait: held, still waiting")
        if mine is None:
            deadline = now + timedelta(seconds=max(wait_seconds, 0.0))
            mine = ModelWait(key, run_id, now, deadline, ttl)
            self.waits.append(mine)
        lock = self.locks[key]
        mine.checked = (lock.token, lock.epoch)

    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def cancel_wait(self, data: st.DataObject, key: str) -> None:
        run_id = data.draw(st.sampled_from(self.runs()))
        mine = self.wait_of(key, run_id)
        assert self.run(self.store.cancel_lock_wait(key, run_id)) is (mine is not None)
        if mine is not None:
            self.waits.remove(mine)

    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def release(self, data: st.DataObject, key: str) -> None:
        self.release_step(data.draw(st.sampled_from(self.runs())), key)

    @precondition(lambda self: bool(self.locks))
    @rule(data=st.data())
    def holder_releases(self, data: st.DataObject) -> None:
        key, lock = data.draw(st.sampled_from(sorted(self.locks.items())))
        self.release_step(lock.run_id, key)

    def release_step(self, run_id: str, key: str) -> None:
        held = self.locks.get(key)
        mine = held is not None and held.run_id == run_id
        if mine:
            del self.locks[key]
            self.wants.pop(run_id, None)
            self.serve(key)
        assert self.run(self.store.release_lock(key, run_id)) is mine
        self.settle()

    @rule(data=st.data(), key=st.sampled_from(KEYS), ttl=TTLS)
    def heartbeat(self, data: st.DataObject, key: str, ttl: float) -> None:
        self.heartbeat_step(data.draw(st.sampled_from(self.runs())), key, ttl)

    @precondition(lambda self: bool(self.locks))
    @rule(data=st.data(), ttl=TTLS)
    def holder_heartbeats(self, data: st.DataObject, ttl: float) -> None:
        """A holder's heartbeat; one of a lock that expired brings its waiters' edges back."""
        key, lock = data.draw(st.sampled_from(sorted(self.locks.items())))
        self.heartbeat_step(lock.run_id, key, ttl)

    def heartbeat_step(self, run_id: str, key: str, ttl: float) -> None:
        held = self.locks.get(key)
        got = self.run(self.store.heartbeat_lock(key, run_id, ttl_seconds=ttl))
        if held is None or held.run_id != run_id:
            assert got is None
            return
        if held.expires_at <= self.clock.now and self.line(key):
            # Expired while others wait: the first waiter gets it, not the late heartbeat.
            self.serve(key)
            self.settle()
            assert got is None
            return
        if held.expires_at <= self.clock.now:
            held.epoch += 1
        held.expires_at = self.clock.now + timedelta(seconds=ttl)
        assert got == held.expires_at

    @rule(key=st.sampled_from(KEYS))
    def force_release(self, key: str) -> None:
        held = self.locks.pop(key, None)
        if held is not None:
            self.serve(key)
        got = self.run(self.store.force_release_lock(key))
        self.settle()
        if held is None:
            assert got is None
        else:
            assert got is not None and (got.run_id, got.token) == (held.run_id, held.token)
            assert (got.acquired_at, got.expires_at) == (held.acquired_at, held.expires_at)

    @rule(seconds=st.sampled_from([1.0, 4.0, 5.0, 10.0, 31.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), state=st.sampled_from([RunState.SUCCEEDED, RunState.LOST]))
    def end_run(self, data: st.DataObject, state: RunState) -> None:
        run_id = data.draw(st.sampled_from(self.live))
        keys = sorted(key for key, lock in self.locks.items() if lock.run_id == run_id)
        for key in keys:
            del self.locks[key]
        self.waits = [w for w in self.waits if w.run_id != run_id]
        self.wants.pop(run_id, None)
        for key in keys:  # served in key order, so their tokens increase in key order
            self.serve(key)
        self.run(self.store.finish_run(run_id, state=state, exit_code=None))
        self.settle()
        self.live.remove(run_id)
        self.ended.append(run_id)

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def store_matches_the_model(self) -> None:
        stored = self.run(self.store.list_locks())
        assert {
            lock.key: (lock.run_id, lock.token, lock.acquired_at, lock.expires_at)
            for lock in stored
        } == {
            key: (lock.run_id, lock.token, lock.acquired_at, lock.expires_at)
            for key, lock in self.locks.items()
        }
        assert all(lock.run_id in self.live for lock in stored)

    @invariant()
    def one_unexpired_holder_per_key(self) -> None:
        now = self.clock.now
        stored = self.run(self.store.list_locks())
        unexpired = [lock.key for lock in stored if lock.expires_at > now]
        assert len(unexpired) == len(set(unexpired))
        for lock in stored:
            assert lock.token <= self.last_token[lock.key]

    @invariant()
    def waiters_match_the_model(self) -> None:
        now = self.clock.now
        stored = self.run(self.store.list_lock_waiters())
        assert [(w.key, w.run_id, w.since, w.deadline) for w in stored] == [
            (w.key, w.run_id, w.since, w.deadline) for key in KEYS for w in self.line(key)
        ]
        assert all(w.run_id in self.live for w in self.waits)
        for wait in self.waits:
            lock = self.locks.get(wait.key)
            # Nobody waits for a key it holds; a free key has nobody waiting for it.
            assert lock is None or lock.run_id != wait.run_id
            assert lock is not None or wait.deadline <= now

    @invariant()
    def wants_match_the_model(self) -> None:
        now = self.clock.now
        stored = self.run(self.store.list_lock_wants())
        assert sorted((w.key, w.run_id, w.since, w.deadline) for w in stored) == sorted(
            (want.key, run_id, want.since, want.expires_at)
            for run_id, want in self.wants.items()
            if want.expires_at > now
        )

    @invariant()
    def no_wait_step_closed_a_cycle(self) -> None:
        """The store refuses a wait that would close a cycle, so the edges a wait step
        checked (still pointing at the holder they checked, continuously unexpired) form
        no cycle. A hand-over, or a lock coming back to life, can close one without a wait
        step; the next wait step of a run on it finds it."""
        checked: dict[str, set[str]] = {}
        every: dict[str, set[str]] = {}
        for wait, holder in self.edges():
            every.setdefault(wait.run_id, set()).add(holder)
            lock = self.locks[wait.key]
            if wait.checked == (lock.token, lock.epoch):
                checked.setdefault(wait.run_id, set()).add(holder)
        for run_id, want, holder in self.want_edges():
            every.setdefault(run_id, set()).add(holder)
            lock = self.locks[want.key]
            if want.checked == (lock.token, lock.epoch):
                checked.setdefault(run_id, set()).add(holder)
        assert not _has_cycle(checked), checked
        if _has_cycle(every):
            event("a cycle closed without a wait step")


def _has_cycle(graph: dict[str, set[str]]) -> bool:
    done: set[str] = set()

    def visit(node: str, path: frozenset[str]) -> bool:
        if node in path:
            return True
        if node in done:
            return False
        found = any(visit(nxt, path | {node}) for nxt in graph.get(node, ()))
        done.add(node)
        return found

    return any(visit(node, frozenset()) for node in list(graph))


PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
if os.environ.get("CORRAL_TEST_SHRINK") == "1":
    PHASES.append(Phase.shrink)


def test_locks_behave_like_their_model(make_store_url: Callable[[], str]) -> None:
    class Machine(LockModel):
        make_url = staticmethod(make_store_url)

    run_state_machine_as_test(
        Machine,
        settings=settings(max_examples=50, stateful_step_count=60, deadline=None, phases=PHASES),
    )
