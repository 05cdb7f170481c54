"""A stateful model of one agent's pool: random arrivals, runs ending, instances becoming
ready, budgets running out, and the autoscaler's decisions applied as the scheduler will
apply them. After every decision:

* the pool is never above max, the project cap or the fleet's slots; the fleet's slots
  change as runners join, drain and take other agents' runs, and a decision never
  starts an instance past the slots it saw, and leaves no idle instance above them;
* never below min (where the limits leave room for min);
* no busy or warming instance is removed; idle ones go oldest first;
* the budget stop starts nothing;
* a smaller size is taken only when every recommendation of the stabilisation window
  allowed it.

The real policies run, and so does one that recommends sizes hypothesis draws, to push
the shared bounds and stabilisation beyond what the real policies would ask.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from corral.autoscale import (
    Autoscaler,
    Decision,
    Instance,
    Limits,
    Observation,
    Recommendation,
    Settings,
    make_policy,
)


class Drawn:
    """A policy whose wishes are drawn: any size, including absurd ones."""

    def __init__(self) -> None:
        self.next = 0

    def recommend(self, observation: Observation) -> Recommendation:
        return Recommendation(self.next, f"drawn {self.next}")


@dataclass
class _Inst:
    id: str
    state: str
    started_at: float


class PoolModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.queued = 0
        self.pool: dict[str, _Inst] = {}
        self.serial = 0
        self.arrivals = 0
        self.completions = 0
        self.durations: list[float] = []
        self.budget_stop = False
        self.wishes: list[tuple[float, int]] = []
        self.decisions = 0

    @initialize(
        low=st.integers(0, 5),
        extra=st.integers(0, 10),
        stabilization=st.sampled_from([0.0, 15.0, 60.0, 300.0]),
        policy=st.sampled_from(["fixed", "reactive", "predictive", "drawn"]),
        cap=st.none() | st.integers(0, 12),
        slots=st.none() | st.integers(0, 12),
        utilisation=st.sampled_from([0.3, 0.6, 0.7]),
        fleet=st.booleans(),
    )
    def setup(
        self,
        low: int,
        extra: int,
        stabilization: float,
        policy: str,
        cap: int | None,
        slots: int | None,
        utilisation: float,
        fleet: bool,
    ) -> None:
        high = max(low + extra, 1)
        if policy == "fixed":
            low = high
        self.settings = Settings(
            min=low,
            max=high,
            target=utilisation,
            stabilization=stabilization,
            policy="reactive" if policy == "drawn" else policy,  # type: ignore[arg-type]
        )
        self.drawn = Drawn() if policy == "drawn" else None
        self.scaler = Autoscaler(self.settings, self.drawn or make_policy(self.settings))
        self.cap, self.slots = cap, slots
        self.ceiling = min(x for x in (high, cap, slots) if x is not None)
        #: The pool runs on runners whose slots change between decisions.
        self.fleet = fleet and slots is not None
        #: The pool's size after the last decision (only a decision starts instances).
        self.decided = 0

    # --- the world ----------------------------------------------------------------

    @rule(count=st.integers(1, 30))
    def arrive(self, count: int) -> None:
        self.queued += count
        self.arrivals += count

    @precondition(lambda self: any(i.state == "warming" for i in self.pool.values()))
    @rule(data=st.data())
    def warmed(self, data: st.DataObject) -> None:
        warming = sorted(i.id for i in self.pool.values() if i.state == "warming")
        self.pool[data.draw(st.sampled_from(warming))].state = "idle"

    @rule()
    def all_ready(self) -> None:
        for inst in self.pool.values():
            if inst.state == "warming":
                inst.state = "idle"

    @precondition(lambda self: any(i.state == "busy" for i in self.pool.values()))
    @rule(data=st.data(), took=st.floats(1, 3600))
    def finish(self, data: st.DataObject, took: float) -> None:
        busy = sorted(i.id for i in self.pool.values() if i.state == "busy")
        self.pool[data.draw(st.sampled_from(busy))].state = "idle"
        self.completions += 1
        self.durations.append(took)

    @precondition(lambda self: self.queued > 0)
    @rule()
    def dispatch(self) -> None:
        for inst in self.pool.values():
            if inst.state == "idle" and self.queued:
                inst.state = "busy"
                self.queued -= 1

    @rule()
    def toggle_budget(self) -> None:
        self.budget_stop = not self.budget_stop

    @precondition(lambda self: self.fleet)
    @rule(slots=st.integers(0, 12))
    def fleet_changes(self, slots: int) -> None:
        """Runners join or drain, other agents' runs take or free their slots."""
        self.slots = slots
        self.ceiling = min(x for x in (self.settings.max, self.cap, slots) if x is not None)

    # --- the autoscaler -----------------------------------------------------------

    @rule(dt=st.sampled_from([1.0, 5.0, 15.0, 60.0, 400.0]), wish=st.integers(-5, 40))
    def tick(self, dt: float, wish: int) -> None:
        self.now += dt
        if self.drawn is not None:
            self.drawn.next = wish
        before = {i.id: _Inst(i.id, i.state, i.started_at) for i in self.pool.values()}
        observation = Observation(
            now=self.now,
            queued=self.queued,
            instances=tuple(
                Instance(i.id, i.state, i.started_at)  # type: ignore[arg-type]
                for i in self.pool.values()
            ),
            arrivals=self.arrivals,
            completions=self.completions,
            durations=tuple(self.durations),
            limits=Limits(cap=self.cap, slots=self.slots, budget_stop=self.budget_stop),
        )
        self.arrivals = self.completions = 0
        self.durations = []
        decision = self.scaler.decide(observation)
        self.wishes.append((self.now, int(decision.inputs["recommended"])))  # type: ignore[arg-type]
        self._check(before, decision)
        for inst_id in decision.remove:
            del self.pool[inst_id]
        for _ in range(decision.add):
            self.serial += 1
            self.pool[f"i{self.serial}"] = _Inst(f"i{self.serial}", "warming", self.now)
        self._check_after(len(before), decision)
        self.decisions += 1
        # Above the slots it saw (they fell since the last decision) the pool keeps only
        # its busy and warming instances, which are never stopped: no idle one.
        working = sum(1 for i in before.values() if i.state != "idle")
        assert len(self.pool) <= max(self.ceiling, working), (len(self.pool), working, decision)
        self.decided = len(self.pool)

    def _check(self, before: dict[str, _Inst], decision: Decision) -> None:
        assert decision.add == 0 or not decision.remove, decision
        assert len(set(decision.remove)) == len(decision.remove)
        for inst_id in decision.remove:
            assert before[inst_id].state == "idle", (inst_id, before[inst_id], decision)
        kept = [i for i in before.values() if i.state == "idle" and i.id not in decision.remove]
        for gone in decision.remove:
            for stay in kept:
                assert (before[gone].started_at, gone) <= (stay.started_at, stay.id), (
                    "an idle instance went before an older one",
                    before[gone],
                    stay,
                )
        if self.budget_stop:
            assert decision.add == 0, decision

    def _check_after(self, size_before: int, decision: Decision) -> None:
        size = len(self.pool)
        assert size <= max(self.ceiling, size_before - 0), (size, self.ceiling, decision)
        if decision.add:
            assert size <= self.ceiling, (size, self.ceiling, decision)
        floor = min(self.settings.min, self.ceiling)
        if not self.budget_stop:
            assert size >= floor, (size, floor, decision)
        if size < size_before:
            window = [w for t, w in self.wishes if t > self.now - self.settings.stabilization]
            held = max([*window, decision.inputs["recommended"]])  # type: ignore[type-var]
            assert size >= min(size_before, self.ceiling, max(held, floor)), (  # type: ignore[call-overload]
                "shrank during the stabilisation window",
                size,
                size_before,
                window,
                decision,
            )

    @invariant()
    def within_the_ceiling(self) -> None:
        if not hasattr(self, "ceiling"):
            return
        # Only a decision starts instances.
        assert len(self.pool) <= self.decided
        if not self.fleet:
            # Fixed limits and a pool that starts empty: never above them.
            assert len(self.pool) <= self.ceiling


PoolModel.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPoolModel = PoolModel.TestCase
