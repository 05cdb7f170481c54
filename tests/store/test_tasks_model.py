"""A model of the task board, checked against both stores.

Hypothesis drives random sequences of: adding batches of tasks (random priorities, labels,
``requires`` and ``blocks``, in two projects; some batches refused for a duplicate id, an
unknown dependency or a cycle, and then nothing of them is added), claims by several
claimers (any project or one, with labels asked for), heartbeats, completions, failures
and releases carrying the current token or a stale one, cancellations, clock moves, stalled
releases and runs ending.

The model predicts every outcome: which task a claim takes (the highest priority open task
whose every requirement is done and that has the labels asked for; ties: oldest, then id),
the token it draws, and which heartbeats, completions and releases are refused as stale.
After every step the store's board must equal the model's: every task present once, in
one status, with its holder, token and attempts. The invariants the issue names follow:
never two holders of one task (a claim of a claimed task would differ from the model's
prediction), never a task claimed while a requirement is not done, never a lost task (an
expired claim comes back with the stalled release), a claim always returns the best
eligible task, a completion with a stale token is refused. One fresh store and one event
loop per example.
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
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from corral.store import Store, open_store
from corral.tasks._model import StaleClaim, TaskError, TaskSpec, TaskStatus
from tests.store.conftest import Clock

_T = TypeVar("_T")
IDS = [f"T{i}" for i in range(10)]
PROJECTS = ["p", "q"]
LABELS = ["backend", "db"]
CLAIMERS = {"c1": "run-1", "c2": "run-2", "c3": "run-3"}
LEASES = st.sampled_from([5.0, 10.0, 30.0])


@dataclasses.dataclass
class ModelTask:
    project: str
    id: str
    priority: int
    created_at: datetime
    requires: set[str]
    labels: frozenset[str]
    status: TaskStatus = TaskStatus.OPEN
    holder: str | None = None
    run_id: str | None = None
    token: int = 0
    attempts: int = 0
    expires_at: datetime | None = None
    #: The lease the current claim was taken or last extended with.
    lease: float = 0.0


class BoardModel(RuleBasedStateMachine):
    make_url: ClassVar[Callable[[], str]]

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.clock = Clock()
        self.store: Store = self.run(open_store(type(self).make_url()))
        self.store.clock = self.clock
        self.tasks: dict[tuple[str, str], ModelTask] = {}

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self.runner.run(coro)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.runner.close()

    # -- the model ------------------------------------------------------------------------

    def ready(self, task: ModelTask) -> bool:
        return task.status is TaskStatus.OPEN and all(
            self.tasks[(task.project, other)].status is TaskStatus.DONE for other in task.requires
        )

    def best(self, project: str | None, labels: frozenset[str]) -> ModelTask | None:
        eligible = [
            t
            for t in self.tasks.values()
            if self.ready(t) and labels <= t.labels and project in (None, t.project)
        ]
        eligible.sort(key=lambda t: (-t.priority, t.created_at, t.id, t.project))
        return eligible[0] if eligible else None

    def cycle_in(self, project: str, extra: list[tuple[str, str]]) -> bool:
        graph: dict[str, set[str]] = {}
        for (p, task_id), task in self.tasks.items():
            if p == project:
                graph.setdefault(task_id, set()).update(task.requires)
        for task_id, other in extra:
            graph.setdefault(task_id, set()).add(other)
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

    def claimed(self) -> list[ModelTask]:
        return [t for t in self.tasks.values() if t.status is TaskStatus.CLAIMED]

    # -- rules ----------------------------------------------------------------------------

    @rule(data=st.data(), project=st.sampled_from(PROJECTS), size=st.integers(1, 3))
    def add(self, data: st.DataObject, project: str, size: int) -> None:
        ids = data.draw(st.lists(st.sampled_from(IDS), min_size=size, max_size=size))
        specs: list[TaskSpec] = []
        for n, task_id in enumerate(ids):
            known = sorted(
                {i for (p, i) in self.tasks if p == project} | set(ids[:n]) | {"T-missing"}
            )
            choices = [k for k in known if k != task_id]
            requires = data.draw(st.lists(st.sampled_from(choices), max_size=2, unique=True))
            rest = [k for k in choices if k not in requires]
            blocks = data.draw(st.lists(st.sampled_from(rest), max_size=1)) if rest else []
            specs.append(
                TaskSpec(
                    id=task_id,
                    project=project,
                    title=f"do {task_id}",
                    priority=data.draw(st.integers(1, 10)),
                    requires=tuple(requires),
                    blocks=tuple(blocks),
                    labels=tuple(data.draw(st.lists(st.sampled_from(LABELS), unique=True))),
                )
            )
        new_ids = {s.id for s in specs}
        edges = [(s.id, o) for s in specs for o in s.requires]
        edges += [(o, s.id) for s in specs for o in s.blocks]
        refused = (
            len(new_ids) < len(specs)
            or any((project, i) in self.tasks for i in new_ids)
            or any(
                (project, o) not in self.tasks and o not in new_ids
                for s in specs
                for o in (*s.requires, *s.blocks)
            )
        )
        if not refused:
            refused = any(
                (project, o) in self.tasks
                and self.tasks[(project, o)].status in (TaskStatus.CLAIMED, TaskStatus.DONE)
                for s in specs
                for o in s.blocks
            )
        if not refused:
            refused = self.cycle_in(project, edges)
        try:
            added = self.run(self.store.add_tasks(specs, actor="tester"))
        except TaskError:
            assert refused, f"refused a valid batch: {specs}"
            return
        assert not refused, f"accepted a batch the board must refuse: {specs}"
        assert [t.id for t in added] == [s.id for s in specs]
        for s in specs:
            self.tasks[(project, s.id)] = ModelTask(
                project, s.id, s.priority, self.clock.now, set(), frozenset(s.labels)
            )
        for task_id, other in edges:
            self.tasks[(project, task_id)].requires.add(other)

    @rule(
        claimer=st.sampled_from(sorted(CLAIMERS)),
        project=st.sampled_from([None, *PROJECTS]),
        labels=st.lists(st.sampled_from(LABELS), max_size=2, unique=True),
        lease=LEASES,
    )
    def claim(self, claimer: str, project: str | None, labels: list[str], lease: float) -> None:
        expected = self.best(project, frozenset(labels))
        got = self.run(
            self.store.claim_task(
                claimer=claimer,
                run_id=CLAIMERS[claimer],
                project=project,
                labels=labels,
                lease=lease,
            )
        )
        if expected is None:
            assert got is None, f"claimed {got} when nothing was eligible"
            return
        assert got is not None, f"nothing claimed; {expected.id} of {expected.project} was"
        assert (got.project, got.id) == (expected.project, expected.id)
        for other in expected.requires:
            assert self.tasks[(expected.project, other)].status is TaskStatus.DONE
        expected.status = TaskStatus.CLAIMED
        expected.holder = claimer
        expected.run_id = CLAIMERS[claimer]
        expected.token += 1
        expected.attempts += 1
        expected.expires_at = self.clock.now + timedelta(seconds=lease)
        expected.lease = lease
        assert got.token == expected.token

    def pick(self, data: st.DataObject, claimed_only: bool) -> tuple[ModelTask, int]:
        pool = self.claimed() if claimed_only else list(self.tasks.values())
        task = data.draw(st.sampled_from(sorted(pool, key=lambda t: (t.project, t.id))))
        token = data.draw(st.sampled_from(sorted({task.token, max(task.token - 1, 0)})))
        return task, token

    def current(self, task: ModelTask, token: int) -> bool:
        return task.status is TaskStatus.CLAIMED and token == task.token

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), lease=st.one_of(st.none(), LEASES), claimed_only=st.booleans())
    def heartbeat(self, data: st.DataObject, lease: float | None, claimed_only: bool) -> None:
        """An explicit lease replaces the claim's; none extends by the claim's own."""
        task, token = self.pick(data, claimed_only and bool(self.claimed()))
        try:
            self.run(self.store.heartbeat_task(task.project, task.id, token, lease=lease))
        except StaleClaim as stale:
            assert not self.current(task, token)
            assert stale.current == task.token and stale.holder == task.holder
            return
        assert self.current(task, token)
        task.lease = task.lease if lease is None else lease
        task.expires_at = self.clock.now + timedelta(seconds=task.lease)

    @precondition(lambda self: self.tasks)
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["done", "failed", "release"]),
        claimed_only=st.booleans(),
    )
    def end_claim(self, data: st.DataObject, outcome: str, claimed_only: bool) -> None:
        task, token = self.pick(data, claimed_only and bool(self.claimed()))
        try:
            if outcome == "release":
                got = self.run(self.store.release_task(task.project, task.id, token))
            else:
                got = self.run(self.store.finish_task(task.project, task.id, token, outcome))
        except StaleClaim as stale:
            assert not self.current(task, token), "the current claim was refused"
            assert stale.current == task.token and stale.holder == task.holder
            return
        assert self.current(task, token), f"a stale {outcome} of {task.id} was accepted"
        task.expires_at = None
        if outcome == "release":
            task.status, task.holder, task.run_id = TaskStatus.OPEN, None, None
        else:
            task.status = TaskStatus(outcome)
        assert got.status is task.status

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        task = data.draw(st.sampled_from(sorted(self.tasks.values(), key=lambda t: t.id)))
        try:
            self.run(self.store.cancel_task(task.project, task.id, "ops"))
        except TaskError:
            assert task.status in (TaskStatus.DONE, TaskStatus.CANCELLED)
            return
        assert task.status not in (TaskStatus.DONE, TaskStatus.CANCELLED)
        task.status = TaskStatus.CANCELLED
        task.expires_at = None

    @rule(seconds=st.sampled_from([1.0, 4.0, 6.0, 11.0, 31.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def release_stalled(self) -> None:
        now = self.clock.now
        lapsed = {
            (t.project, t.id)
            for t in self.claimed()
            if t.expires_at is not None and t.expires_at < now
        }
        released = self.run(self.store.release_stalled_tasks())
        assert {(t.project, t.id) for t in released} == lapsed
        for key in lapsed:
            task = self.tasks[key]
            task.status, task.holder, task.run_id, task.expires_at = (
                TaskStatus.OPEN,
                None,
                None,
                None,
            )

    @rule(claimer=st.sampled_from(sorted(CLAIMERS)))
    def run_ends(self, claimer: str) -> None:
        run_id = CLAIMERS[claimer]
        held = {(t.project, t.id) for t in self.claimed() if t.run_id == run_id}
        released = self.run(self.store.release_tasks_of_run(run_id))
        assert {(t.project, t.id) for t in released} == held
        for key in held:
            task = self.tasks[key]
            task.status, task.holder, task.run_id, task.expires_at = (
                TaskStatus.OPEN,
                None,
                None,
                None,
            )

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def the_board_matches_the_model(self) -> None:
        board = self.run(self.store.list_tasks(limit=1000))
        keys = [(t.project, t.id) for t in board]
        assert len(keys) == len(set(keys)), "a task is on the board twice"
        assert set(keys) == set(self.tasks), "a task was lost or appeared"
        for task in board:
            want = self.tasks[(task.project, task.id)]
            got = (task.status, task.assignee, task.run_id, task.token, task.attempts)
            assert got == (want.status, want.holder, want.run_id, want.token, want.attempts)
            assert set(task.spec.requires) == want.requires
            assert set(task.spec.labels) == want.labels

    @invariant()
    def no_claimed_task_waits_for_a_requirement_it_was_claimed_without(self) -> None:
        for task in self.claimed():
            for other in task.requires:
                assert self.tasks[(task.project, other)].status is TaskStatus.DONE


PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
if os.environ.get("CORRAL_TEST_SHRINK") == "1":
    PHASES.append(Phase.shrink)


def test_the_board_behaves_like_its_model(make_store_url: Callable[[], str]) -> None:
    class Machine(BoardModel):
        make_url = staticmethod(make_store_url)

    run_state_machine_as_test(
        Machine,
        settings=settings(max_examples=40, stateful_step_count=50, deadline=None, phases=PHASES),
    )
