"""A model of the queue, its caps and its leases, checked against both stores.

Hypothesis drives random sequences of enqueue, claim, finalize, lease lapses, recovery and
operator changes; the model predicts every outcome exactly (which items are claimed, in
which order, which are dropped or rejected, which reruns follow) and the invariants are
checked against the store after every step. One fresh store and one event loop per
example.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections import Counter
from collections.abc import Callable, Coroutine
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

from corral.store import (
    AgentSpec,
    ItemState,
    NewItem,
    RunState,
    StaleFence,
    Store,
    TriggerKind,
    open_store,
)
from tests.store.conftest import Clock, _raw_sql

AGENTS = ["a", "b", "c"]
OWNERS = ["s1", "s2"]
LEASE = 10.0
RERUNNABLE = {TriggerKind.SCHEDULE, TriggerKind.MANUAL}
OUTCOMES = st.sampled_from(
    [RunState.SUCCEEDED, RunState.SUCCEEDED, RunState.FAILED, RunState.KILLED]
)
BATCHES = st.lists(
    st.tuples(
        st.sampled_from([*AGENTS, *AGENTS, *AGENTS, "ghost"]),
        st.sampled_from(list(TriggerKind)),
        st.sampled_from(["drop_oldest", "drop_oldest", "refuse"]),
    ),
    min_size=1,
    max_size=4,
)
_T = TypeVar("_T")


@dataclasses.dataclass
class ModelAgent:
    scale: int
    queue_size: int
    paused: bool = False
    enabled: bool = True
    #: Active claims above a lowered scale are allowed to finish; they may not grow.
    grace: int = 0


@dataclasses.dataclass
class ModelItem:
    id: int
    agent: str
    trigger: TriggerKind
    state: ItemState
    rerun_count: int = 0
    attempts: int = 0
    fence: int | None = None
    run_id: str | None = None
    owner: str | None = None
    expires: Any = None


class QueueModel(RuleBasedStateMachine):
    make_url: ClassVar[Callable[[], str]]

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.clock = Clock()
        self.url = self.make_url()
        self.store: Store = self.run(open_store(self.url))
        self.store.clock = self.clock
        self.agents: dict[str, ModelAgent] = {}
        self.items: dict[int, ModelItem] = {}
        self.paused = False
        self.cap: int | None = None
        self.max_attempts = self.max_reruns = 0
        self.last_fence = 0
        self.lost: list[tuple[str, int]] = []

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self.runner.run(coro)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.runner.close()

    # -- helpers ---------------------------------------------------------------------

    def with_state(self, state: ItemState, agent: str | None = None) -> list[ModelItem]:
        return sorted(
            (i for i in self.items.values() if i.state is state and agent in (None, i.agent)),
            key=lambda i: i.id,
        )

    def fresh(self, agent: str) -> list[ModelItem]:
        """Queued items never tried: the ones bounded by the queue size."""
        return [i for i in self.with_state(ItemState.QUEUED, agent) if i.attempts == 0]

    def active(self, agent: str | None = None) -> int:
        return len(self.with_state(ItemState.CLAIMED, agent))

    def predict_enqueue(self, agent: str, overflow: str) -> tuple[ItemState, str | None, list[int]]:
        """(state of the new item, start of its reason, ids dropped to make room)."""
        model = self.agents.get(agent)
        if model is None:
            return ItemState.REJECTED, f"unknown agent {agent!r}", []
        if not model.enabled:
            return ItemState.REJECTED, f"agent {agent!r} was disabled by an operator", []
        if model.scale == 0:
            return ItemState.REJECTED, f"agent {agent!r} is disabled (scale = 0)", []
        queued = self.fresh(agent)
        if len(queued) >= model.queue_size:
            if overflow == "refuse":
                return ItemState.REJECTED, "queue full", []
            return (
                ItemState.QUEUED,
                None,
                [i.id for i in queued[: len(queued) - model.queue_size + 1]],
            )
        return ItemState.QUEUED, None, []

    def record_enqueue(
        self, new: NewItem, overflow: str, got: Any, dropped: tuple[Any, ...]
    ) -> None:
        state, reason, to_drop = self.predict_enqueue(new.agent, overflow)
        assert got.state is state, (got, state)
        assert (got.reason or "").startswith(reason or ""), (got.reason, reason)
        assert [d.id for d in dropped] == to_drop
        assert got.id not in self.items and all(got.id > i for i in self.items)
        for item_id in to_drop:
            self.items[item_id].state = ItemState.DROPPED
        self.items[got.id] = ModelItem(got.id, new.agent, new.trigger, state, new.rerun_count)

    def predict_claim(self, limit: int) -> list[int]:
        if self.paused:
            return []
        room = limit if self.cap is None else min(limit, self.cap - self.active())
        # Round robin across agents: each agent's oldest first; within a round, agents in
        # the order of their oldest waiting item (its id).
        candidates: list[tuple[int, int]] = []
        for name, agent in self.agents.items():
            if agent.paused or not agent.enabled:
                continue
            free = max(agent.scale - self.active(name), 0)
            waiting = self.with_state(ItemState.QUEUED, name)[:free]
            candidates += [(position, i.id) for position, i in enumerate(waiting)]
        # The claims come back in id order, whichever round each was chosen in.
        return sorted(item_id for _, item_id in sorted(candidates)[: max(room, 0)])

    def take_back(self, item: ModelItem) -> None:
        assert item.run_id is not None and item.fence is not None
        self.lost.append((item.run_id, item.fence))
        item.state = ItemState.QUEUED if item.attempts < self.max_attempts else ItemState.FAILED
        item.owner = item.expires = None
        self.settle_grace(item.agent)

    def settle_grace(self, agent: str) -> None:
        model = self.agents.get(agent)
        if model is not None:
            model.grace = min(model.grace, self.active(agent))

    # -- rules -----------------------------------------------------------------------

    @initialize(
        specs=st.lists(
            st.tuples(st.sampled_from([1, 2, 3, 0]), st.integers(1, 3)), min_size=3, max_size=3
        ),
        cap=st.one_of(st.none(), st.integers(1, 4)),
        max_attempts=st.integers(1, 3),
        max_reruns=st.integers(0, 2),
        initial=BATCHES,
    )
    def sync(
        self,
        specs: list[tuple[int, int]],
        cap: int | None,
        max_attempts: int,
        max_reruns: int,
        initial: list[tuple[str, TriggerKind, Any]],
    ) -> None:
        """The project's configuration, and a first batch of items (so there is work)."""
        agent_specs = [AgentSpec(n, s, q) for n, (s, q) in zip(AGENTS, specs, strict=True)]
        self.run(
            self.store.sync_project(
                agent_specs, scale_cap=cap, max_attempts=max_attempts, max_reruns=max_reruns
            )
        )
        self.agents = {spec.agent: ModelAgent(spec.scale, spec.queue_size) for spec in agent_specs}
        self.cap, self.max_attempts, self.max_reruns = cap, max_attempts, max_reruns
        self.enqueue(initial)

    @rule(batch=BATCHES)
    def enqueue(self, batch: list[tuple[str, TriggerKind, Any]]) -> None:
        for agent, trigger, overflow in batch:
            new = NewItem(agent=agent, trigger=trigger)
            result = self.run(self.store.enqueue(new, overflow=overflow))
            assert not result.duplicate
            self.record_enqueue(new, overflow, result.item, result.dropped)

    @rule(owner=st.sampled_from(OWNERS), limit=st.integers(0, 4))
    def claim_again(self, owner: str, limit: int) -> None:
        """The same as ``claim``: rules are drawn evenly, and claims matter most."""
        self.claim(owner, limit)

    @rule(owner=st.sampled_from(OWNERS), limit=st.integers(0, 4))
    def claim(self, owner: str, limit: int) -> None:
        expected = self.predict_claim(limit)
        claims = self.run(self.store.claim(owner, lease_seconds=LEASE, limit=limit))
        assert [c.item.id for c in claims] == expected
        for claim in claims:
            assert claim.run.fence is not None and claim.run.fence > self.last_fence
            self.last_fence = claim.run.fence
            item = self.items[claim.item.id]
            item.state, item.attempts = ItemState.CLAIMED, item.attempts + 1
            item.fence, item.run_id, item.owner = claim.run.fence, claim.run.id, owner
            item.expires = self.clock.now.timestamp() + LEASE
            assert (claim.run.attempt, claim.item.attempts) == (item.attempts, item.attempts)

    @precondition(lambda self: self.active() > 0)
    @rule(data=st.data(), outcome=OUTCOMES, rerun=st.booleans())
    def finalize_again(self, data: st.DataObject, outcome: RunState, rerun: bool) -> None:
        """The same as ``finalize``: rules are drawn evenly, and this one matters."""
        self.finalize(data, outcome, rerun)

    @precondition(lambda self: self.active() > 0)
    @rule(data=st.data(), outcome=OUTCOMES, rerun=st.booleans())
    def finalize(self, data: st.DataObject, outcome: RunState, rerun: bool) -> None:
        item = data.draw(st.sampled_from(self.with_state(ItemState.CLAIMED)))
        assert item.run_id is not None and item.fence is not None
        if rerun:
            assert self.run(self.store.request_rerun(item.run_id)).rerun_requested
        result = self.run(
            self.store.finalize(item.run_id, fence=item.fence, state=outcome, exit_code=0)
        )
        assert result.item.id == item.id and result.item.state is ItemState.DONE
        item.state = ItemState.DONE
        self.settle_grace(item.agent)
        due = (
            rerun
            and outcome is RunState.SUCCEEDED
            and item.trigger in RERUNNABLE
            and item.rerun_count < self.max_reruns
        )
        if not due:
            assert result.rerun_item is None
            return
        got = result.rerun_item
        assert got is not None and got.parent_run_id == item.run_id
        new = NewItem(item.agent, item.trigger, rerun_count=item.rerun_count + 1)
        dropped = tuple(i for i in self.items.values() if i.state is ItemState.QUEUED)
        self.record_enqueue(new, "drop_oldest", got, self.dropped_since(dropped))

    def dropped_since(self, queued_before: tuple[ModelItem, ...]) -> tuple[Any, ...]:
        """The items among ``queued_before`` that the store now shows as dropped."""
        ids = [i.id for i in queued_before]
        now = [self.run(self.store.get_item(item_id)) for item_id in ids]
        return tuple(i for i in now if i is not None and i.state is ItemState.DROPPED)

    @rule(seconds=st.sampled_from([1.0, LEASE / 2, LEASE, LEASE + 1, 2 * LEASE]))
    def lapse_and_recover(self, seconds: float) -> None:
        self.clock.advance(seconds)
        now = self.clock.now.timestamp()
        expected = [i for i in self.with_state(ItemState.CLAIMED) if i.expires < now]
        recovered = self.run(self.store.recover_lapsed())
        assert sorted(r.item.id for r in recovered) == [i.id for i in expected]
        for item in expected:
            self.take_back(item)
        for entry in recovered:
            assert entry.item.state is self.items[entry.item.id].state
            assert entry.run is not None and entry.run.state is RunState.LOST

    @rule(owner=st.sampled_from(OWNERS), release=st.booleans())
    def renew_or_release(self, owner: str, release: bool) -> None:
        mine = [i for i in self.with_state(ItemState.CLAIMED) if i.owner == owner]
        if release:
            recovered = self.run(self.store.release_owner(owner, reason="released"))
            assert sorted(r.item.id for r in recovered) == [i.id for i in mine]
            for item in mine:
                self.take_back(item)
            return
        assert self.run(self.store.renew_leases(owner, lease_seconds=LEASE)) == len(mine)
        for item in mine:
            item.expires = self.clock.now.timestamp() + LEASE

    @precondition(lambda self: bool(self.lost))
    @rule(data=st.data())
    def stale_finalize(self, data: st.DataObject) -> None:
        run_id, fence = data.draw(st.sampled_from(self.lost))
        try:
            self.run(
                self.store.finalize(run_id, fence=fence, state=RunState.SUCCEEDED, exit_code=0)
            )
        except StaleFence:
            return
        raise AssertionError(f"run {run_id} finalised with the stale fence {fence}")

    @precondition(lambda self: bool(self.agents))
    @rule(
        agent=st.sampled_from(AGENTS),
        change=st.sampled_from(["scale", "scale", "pause", "pause project", "enable"]),
        scale=st.sampled_from([1, 2, 3, 0]),
        on=st.sampled_from([True, True, False]),
    )
    def operator(self, agent: str, change: str, scale: int, on: bool) -> None:
        """An operator's change; mostly towards a working fleet, so work keeps flowing."""
        model = self.agents[agent]
        flag = on if change == "enable" else not on
        if change == "scale":
            state = self.run(self.store.set_agent_scale(agent, scale))
            model.scale = scale
            model.grace = self.active(agent) if self.active(agent) > scale else 0
            assert (state.scale, state.active) == (scale, self.active(agent))
        elif change == "enable":
            assert self.run(self.store.set_enabled(agent, flag)).enabled is flag
            model.enabled = flag
        elif change == "pause project":
            self.run(self.store.set_paused(None, flag))
            self.paused = flag
        else:
            self.run(self.store.set_paused(agent, flag))
            model.paused = flag

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def items_match_the_model(self) -> None:
        stored = self.run(self.store.list_items(limit=100_000))
        assert {i.id: i.state for i in stored} == {i.id: i.state for i in self.items.values()}
        for item in stored:
            model = self.items[item.id]
            assert (item.attempts, item.rerun_count) == (model.attempts, model.rerun_count)
            if item.state is ItemState.CLAIMED:
                assert (item.fence, item.run_id, item.lease_owner) == (
                    model.fence,
                    model.run_id,
                    model.owner,
                )

    @invariant()
    def caps_and_bounds_hold(self) -> None:
        states = {s.agent: s for s in self.run(self.store.agent_states())}
        assert set(states) == set(self.agents)
        for name, model in self.agents.items():
            state = states[name]
            assert len(self.fresh(name)) <= state.queue_size
            assert state.queued == len(self.with_state(ItemState.QUEUED, name))
            assert state.active == self.active(name)
            assert state.active <= max(state.scale, model.grace)
        if self.cap is not None:
            assert sum(s.active for s in states.values()) <= self.cap

    @invariant()
    def counters_equal_counts(self) -> None:
        """The per-agent counters the queue's triggers keep equal count(*) of the rows."""
        rows = _raw_sql(
            self.url,
            "SELECT a.agent, a.queued, a.requeued, a.running,"
            " (SELECT count(*) FROM corral_queue q WHERE q.agent = a.agent"
            "  AND q.state = 'queued' AND q.attempts = 0),"
            " (SELECT count(*) FROM corral_queue q WHERE q.agent = a.agent"
            "  AND q.state = 'queued' AND q.attempts > 0),"
            " (SELECT count(*) FROM corral_queue q WHERE q.agent = a.agent"
            "  AND q.state = 'claimed')"
            " FROM corral_agents a",
        )
        for agent, *counts in rows:
            assert counts[:3] == counts[3:], (agent, counts)

    @invariant()
    def one_live_run_per_claimed_item(self) -> None:
        runs = self.run(self.store.list_runs(limit=100_000))
        live = Counter(r.item_id for r in runs if not r.state.is_terminal)
        assert all(count == 1 for count in live.values())
        assert set(live) == {i.id for i in self.with_state(ItemState.CLAIMED)}
        by_id = {r.id: r for r in runs}
        for item in self.run(self.store.list_items(limit=100_000)):
            if item.rerun_count == 0:
                continue
            parent = by_id[item.parent_run_id or ""]
            assert item.trigger in RERUNNABLE and item.rerun_count <= self.max_reruns
            assert parent.state is RunState.SUCCEEDED and parent.rerun_requested


#: Shrinking a failure replays hundreds of examples, each on a fresh store: minutes. By
#: default a failure is reported as found (every step is listed); CORRAL_TEST_SHRINK=1
#: shrinks it to a minimal sequence (run with --timeout 0).
PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
if os.environ.get("CORRAL_TEST_SHRINK") == "1":
    PHASES.append(Phase.shrink)


def test_the_queue_behaves_like_its_model(make_store_url: Callable[[], str]) -> None:
    class Machine(QueueModel):
        make_url = staticmethod(make_store_url)

    run_state_machine_as_test(
        Machine,
        settings=settings(max_examples=40, stateful_step_count=40, deadline=None, phases=PHASES),
    )
