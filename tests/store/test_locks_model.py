"""A model of the lock manager, checked against both stores.

Hypothesis drives random sequences of acquire, release, heartbeat, operator release, clock
moves and runs ending; the model predicts every outcome (grant, refresh, refusal naming
the holder, refusal of an ended run) and after every step the invariants are checked:
at most one unexpired holder per key, tokens strictly increasing per key, the store's
locks equal to the model's. One fresh store and one event loop per example.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

from hypothesis import Phase, settings
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
from corral.store import LockGrant, LockHeld, NewRun, RunState, Store, TriggerKind, open_store
from tests.store.conftest import Clock

KEYS = ["k1", "k2", "k3"]
TTLS = st.sampled_from([5.0, 10.0, 30.0])
_T = TypeVar("_T")


@dataclasses.dataclass
class ModelLock:
    run_id: str
    token: int
    acquired_at: datetime
    expires_at: datetime


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

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self.runner.run(coro)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.runner.close()

    def runs(self) -> list[str]:
        return self.live + self.ended

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
        now = self.clock.now
        if run_id in self.ended:
            try:
                self.run(self.store.acquire_lock(key, run_id, ttl_seconds=ttl))
            except StoreError as exc:
                assert "the run has ended" in str(exc)
                return
            raise AssertionError(f"ended run {run_id} acquired {key}")
        got = self.run(self.store.acquire_lock(key, run_id, ttl_seconds=ttl))
        held = self.locks.get(key)
        expires = now + timedelta(seconds=ttl)
        if held is not None and held.run_id != run_id and held.expires_at > now:
            assert got == LockHeld(key, held.run_id, held.acquired_at)
            return
        assert isinstance(got, LockGrant)
        assert (got.key, got.run_id, got.expires_at) == (key, run_id, expires)
        if held is not None and held.run_id == run_id:
            assert got.refreshed and (got.token, got.acquired_at) == (held.token, held.acquired_at)
            held.expires_at = expires
            return
        assert not got.refreshed and got.acquired_at == now
        assert got.token > self.last_token.get(key, 0)
        assert all(got.token > token for token in self.last_token.values())
        self.last_token[key] = got.token
        self.locks[key] = ModelLock(run_id, got.token, now, expires)

    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def release(self, data: st.DataObject, key: str) -> None:
        run_id = data.draw(st.sampled_from(self.runs()))
        held = self.locks.get(key)
        mine = held is not None and held.run_id == run_id
        assert self.run(self.store.release_lock(key, run_id)) is mine
        if mine:
            del self.locks[key]

    @rule(data=st.data(), key=st.sampled_from(KEYS), ttl=TTLS)
    def heartbeat(self, data: st.DataObject, key: str, ttl: float) -> None:
        run_id = data.draw(st.sampled_from(self.runs()))
        held = self.locks.get(key)
        got = self.run(self.store.heartbeat_lock(key, run_id, ttl_seconds=ttl))
        if held is None or held.run_id != run_id:
            assert got is None
            return
        held.expires_at = self.clock.now + timedelta(seconds=ttl)
        assert got == held.expires_at

    @rule(key=st.sampled_from(KEYS))
    def force_release(self, key: str) -> None:
        held = self.locks.pop(key, None)
        got = self.run(self.store.force_release_lock(key))
        if held is None:
            assert got is None
        else:
            assert got is not None and (got.run_id, got.token) == (held.run_id, held.token)

    @rule(seconds=st.sampled_from([1.0, 4.0, 5.0, 10.0, 31.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), state=st.sampled_from([RunState.SUCCEEDED, RunState.LOST]))
    def end_run(self, data: st.DataObject, state: RunState) -> None:
        run_id = data.draw(st.sampled_from(self.live))
        self.run(self.store.finish_run(run_id, state=state, exit_code=None))
        self.live.remove(run_id)
        self.ended.append(run_id)
        self.locks = {k: lock for k, lock in self.locks.items() if lock.run_id != run_id}

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


PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
if os.environ.get("CORRAL_TEST_SHRINK") == "1":
    PHASES.append(Phase.shrink)


def test_locks_behave_like_their_model(make_store_url: Callable[[], str]) -> None:
    class Machine(LockModel):
        make_url = staticmethod(make_store_url)

    run_state_machine_as_test(
        Machine,
        settings=settings(max_examples=25, stateful_step_count=40, deadline=None, phases=PHASES),
    )
