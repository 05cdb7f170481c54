"""The task board's store operations, on both stores: adding (all or nothing; duplicate
ids, unknown dependencies and cycles refused), claims in priority order behind their
dependencies and labels, fencing of heartbeats, completions and releases, stalled and
run-ended releases, editing, cancelling, listing and history."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from corral.store import AgentSpec, NewItem, NewRun, RunState, Store, TriggerKind
from corral.tasks._model import StaleClaim, TaskError, TaskSpec, TaskStatus, UnknownTask
from tests.store.conftest import Clock


def spec(task_id: str, project: str = "p", **fields: Any) -> TaskSpec:
    return TaskSpec(id=task_id, project=project, title=f"title of {task_id}", **fields)


async def test_claims_follow_priority_then_age_then_id(store: Store, clock: Clock) -> None:
    await store.add_tasks([spec("b", priority=5), spec("a", priority=5)])
    clock.advance(1)
    await store.add_tasks([spec("old-low", priority=2), spec("high", priority=9)])
    order = []
    while (task := await store.claim_task(claimer="x")) is not None:
        order.append(task.id)
        assert task.status is TaskStatus.CLAIMED
        assert task.assignee == "x"
        assert task.token == 1
        assert task.attempts == 1
    assert order == ["high", "a", "b", "old-low"]


async def test_a_task_waits_for_its_requirements(store: Store) -> None:
    await store.add_tasks(
        [spec("base", priority=1), spec("top", priority=10, requires=("base",)),
         spec("gate", priority=1, blocks=("top",))]
    )  # fmt: skip
    top = await store.get_task("p", "top")
    assert top is not None and set(top.spec.requires) == {"base", "gate"}
    first = await store.claim_task(claimer="x")
    second = await store.claim_task(claimer="y")
    assert first is not None and second is not None
    assert {first.id, second.id} == {"base", "gate"}
    assert await store.claim_task(claimer="z") is None
    await store.finish_task("p", first.id, first.token, TaskStatus.DONE, "ok")
    assert await store.claim_task(claimer="z") is None
    await store.finish_task("p", second.id, second.token, "done")
    third = await store.claim_task(claimer="z")
    assert third is not None and third.id == "top"


async def test_labels_and_projects_filter_claims(store: Store) -> None:
    await store.add_tasks(
        [spec("a", priority=9, labels=("backend",)),
         spec("b", priority=5, labels=("backend", "db")),
         spec("c", project="q", priority=10)]
    )  # fmt: skip
    got = await store.claim_task(claimer="x", labels=["db", "backend"])
    assert got is not None and got.id == "b"
    assert await store.claim_task(claimer="x", labels=["db"]) is None
    got = await store.claim_task(claimer="x", project="p")
    assert got is not None and got.id == "a"
    got = await store.claim_task(claimer="x")
    assert got is not None and (got.project, got.id) == ("q", "c")


async def test_a_minimum_priority_filters_claims(store: Store) -> None:
    """``min_priority``: only tasks of that priority or more, in or out of a project; out
    of 1 to 10 is refused."""
    await store.add_tasks(
        [spec("hi", priority=8), spec("mid", priority=5), spec("lo", priority=3),
         spec("q-lo", project="q", priority=4)]
    )  # fmt: skip
    got = await store.claim_task(claimer="x", project="p", min_priority=5)
    assert got is not None and got.id == "hi"
    got = await store.claim_task(claimer="x", min_priority=5)
    assert got is not None and got.id == "mid"
    assert await store.claim_task(claimer="x", project="p", min_priority=5) is None
    assert await store.claim_task(claimer="x", min_priority=5) is None
    for bad in (0, 11):
        with pytest.raises(TaskError, match="priority"):
            await store.claim_task(claimer="x", min_priority=bad)
    got = await store.claim_task(claimer="x", min_priority=4)
    assert got is not None and got.id == "q-lo"
    got = await store.claim_task(claimer="x")
    assert got is not None and got.id == "lo"


async def test_adding_is_all_or_nothing(store: Store) -> None:
    await store.add_tasks([spec("a")])
    with pytest.raises(TaskError, match="task a is already on the board"):
        await store.add_tasks([spec("new"), spec("a")])
    with pytest.raises(TaskError, match="task x requires nope"):
        await store.add_tasks([spec("x", requires=("nope",))])
    with pytest.raises(TaskError, match="given twice"):
        await store.add_tasks([spec("d"), spec("d")])
    with pytest.raises(TaskError, match="depend on itself"):
        await store.add_tasks([spec("c1", requires=("c2",)), spec("c2", requires=("c1",))])
    with pytest.raises(TaskError, match="depend on itself"):
        await store.add_tasks([spec("c3", requires=("c4",)), spec("c4", blocks=("c3",)),
                               spec("c5", requires=("c3",), blocks=("c4",))])  # fmt: skip
    assert [t.id for t in await store.list_tasks()] == ["a"]
    # the same id in another project is another task
    await store.add_tasks([spec("a", project="q")])
    with pytest.raises(TaskError, match="not on the board in project q"):
        await store.add_tasks([spec("b", project="q", requires=("zz",))])


async def test_a_stale_token_is_refused_and_names_the_holder(store: Store, clock: Clock) -> None:
    await store.add_tasks([spec("a")])
    first = await store.claim_task(claimer="alice", lease=10)
    assert first is not None
    clock.advance(11)
    released = await store.release_stalled_tasks()
    assert [t.id for t in released] == ["a"]
    second = await store.claim_task(claimer="bob", lease=10)
    assert second is not None and second.token == first.token + 1 and second.attempts == 2
    with pytest.raises(StaleClaim, match="claimed by bob with token 2") as refused:
        await store.finish_task("p", "a", first.token, "done")
    assert refused.value.holder == "bob" and refused.value.current == 2
    with pytest.raises(StaleClaim):
        await store.heartbeat_task("p", "a", first.token)
    with pytest.raises(StaleClaim):
        await store.release_task("p", "a", first.token)
    done = await store.finish_task("p", "a", second.token, "done", "merged")
    assert done.status is TaskStatus.DONE and done.result == "merged"
    with pytest.raises(StaleClaim, match="it is done"):
        await store.finish_task("p", "a", second.token, "failed")
    with pytest.raises(UnknownTask):
        await store.finish_task("p", "nope", 1, "done")
    kinds = [(e.kind, e.actor, e.token) for e in await store.task_history("p", "a")]
    assert kinds == [
        ("created", None, None), ("claimed", "alice", 1), ("stalled", None, 1),
        ("claimed", "bob", 2), ("done", "bob", 2),
    ]  # fmt: skip


async def test_heartbeats_keep_a_claim(store: Store, clock: Clock) -> None:
    await store.add_tasks([spec("a")])
    task = await store.claim_task(claimer="x", lease=10)
    assert task is not None
    for _ in range(3):
        clock.advance(8)
        assert await store.release_stalled_tasks() == []
        beat = await store.heartbeat_task("p", "a", task.token, lease=10)
        assert beat.heartbeat_at == clock.now.timestamp()
    clock.advance(10.5)
    assert [t.id for t in await store.release_stalled_tasks()] == ["a"]
    back = await store.get_task("p", "a")
    assert back is not None and back.status is TaskStatus.OPEN and back.assignee is None


async def test_a_run_that_ends_releases_its_claims(store: Store) -> None:
    await store.add_tasks([spec("a"), spec("b"), spec("c")])
    a = await store.claim_task(claimer="x", run_id="run-1")
    b = await store.claim_task(claimer="x", run_id="run-1")
    c = await store.claim_task(claimer="y", run_id="run-2")
    assert a and b and c
    assert [t.id for t in await store.claimed_tasks_of_run("run-1", "b")] == ["b"]
    await store.finish_task("p", "a", a.token, "done")
    released = await store.release_tasks_of_run("run-1")
    assert [t.id for t in released] == ["b"]
    statuses = {t.id: t.status for t in await store.list_tasks()}
    assert statuses == {"a": TaskStatus.DONE, "b": TaskStatus.OPEN, "c": TaskStatus.CLAIMED}
    last = (await store.task_history("p", "b"))[-1]
    assert (last.kind, last.detail) == ("run ended", "run-1")


async def test_release_and_fail_and_cancel(store: Store) -> None:
    await store.add_tasks([spec("a"), spec("b", requires=("a",))])
    a = await store.claim_task(claimer="x")
    assert a is not None
    opened = await store.release_task("p", "a", a.token)
    assert opened.status is TaskStatus.OPEN
    assert (await store.task_history("p", "a"))[-1].actor == "x"
    a = await store.claim_task(claimer="x")
    assert a is not None and a.token == 2
    failed = await store.finish_task("p", "a", a.token, TaskStatus.FAILED, "tests fail")
    assert failed.status is TaskStatus.FAILED and failed.result == "tests fail"
    assert await store.claim_task(claimer="y") is None  # b waits for a, which failed
    with pytest.raises(TaskError, match="use release_task"):
        await store.finish_task("p", "a", a.token, TaskStatus.OPEN)
    cancelled = await store.cancel_task("p", "b", actor="ops")
    assert cancelled.status is TaskStatus.CANCELLED
    with pytest.raises(TaskError, match="already cancelled"):
        await store.cancel_task("p", "b")
    with pytest.raises(UnknownTask):
        await store.cancel_task("p", "zz")


async def test_edit_changes_fields_and_refuses_cycles(store: Store) -> None:
    await store.add_tasks([spec("a"), spec("b", requires=("a",)), spec("c")])
    edited = await store.edit_task("p", "c", title="new", priority=9, labels=["ui"], requires=["b"])
    assert (edited.spec.title, edited.spec.priority, edited.spec.labels) == ("new", 9, ("ui",))
    assert edited.spec.requires == ("b",)
    assert await store.task_dependents("p", "b") == ["c"]
    with pytest.raises(TaskError, match="depend on itself"):
        await store.edit_task("p", "a", requires=["c"])
    with pytest.raises(TaskError, match="editable fields"):
        await store.edit_task("p", "a", status="done")
    with pytest.raises(TaskError, match="priority"):
        await store.edit_task("p", "a", priority=11)
    assert [t.id for t in await store.list_tasks(label="ui")] == ["c"]
    got = await store.claim_task(claimer="x")
    assert got is not None and got.id == "a"


async def test_list_pages_and_filters(store: Store) -> None:
    await store.add_tasks([spec(f"t{i:02d}") for i in range(5)])
    await store.add_tasks([spec("z", project="q")])
    first = await store.list_tasks(limit=4)
    rest = await store.list_tasks(limit=4, after=(first[-1].project, first[-1].id))
    assert [t.id for t in first + rest] == ["t00", "t01", "t02", "t03", "t04", "z"]
    assert [t.id for t in await store.list_tasks(project="q")] == ["z"]
    await store.claim_task(claimer="x", project="p")
    assert [t.id for t in await store.list_tasks(status="claimed")] == ["t00"]


async def test_a_claimed_or_done_task_gains_no_requirement(store: Store) -> None:
    await store.add_tasks([spec("a"), spec("b")])
    a = await store.claim_task(claimer="x")
    assert a is not None
    with pytest.raises(TaskError, match="blocks a, which is already claimed"):
        await store.add_tasks([spec("c", blocks=("a",))])
    with pytest.raises(TaskError, match="already claimed"):
        await store.edit_task("p", "a", requires=["b"])
    await store.edit_task("p", "a", title="still editable")


# -- a run's claims end with the run ------------------------------------------------------


async def _claimed_run(store: Store) -> tuple[str, int]:
    await store.enqueue(NewItem(agent="a", trigger=TriggerKind.MANUAL))
    (claim,) = await store.claim("sched-1", lease_seconds=30, limit=1)
    return claim.run.id, claim.item.fence or 0


async def _holding(store: Store, run_id: str, *ids: str) -> None:
    for task_id in ids:
        got = await store.claim_task(claimer="a", run_id=run_id, project="p")
        assert got is not None and got.id == task_id


@pytest.mark.parametrize(
    "end", ["succeeded", "failed", "shutdown", "lost", "unqueued", "unqueued-killed"]
)
async def test_every_end_of_a_run_releases_its_claims(store: Store, clock: Clock, end: str) -> None:
    await store.sync_project([AgentSpec("a", 2, 10)], scale_cap=None, max_attempts=3, max_reruns=1)
    await store.add_tasks([spec("t1", priority=9), spec("t2", priority=8), spec("t3")])
    if end.startswith("unqueued"):
        run = await store.create_run(NewRun(agent="a", trigger=TriggerKind.MANUAL))
        run_id = run.id
        await _holding(store, run_id, "t1", "t2")
        state = RunState.SUCCEEDED if end == "unqueued" else RunState.KILLED
        await store.finish_run(run_id, state=state, exit_code=0)
    else:
        run_id, fence = await _claimed_run(store)
        await _holding(store, run_id, "t1", "t2")
        done = await store.claim_task(claimer="other", run_id="elsewhere", project="p")
        assert done is not None and done.id == "t3"
        if end in ("succeeded", "failed"):
            state = RunState(end)
            await store.finalize(run_id, fence=fence, state=state, exit_code=0)
        elif end == "shutdown":
            await store.release(run_id, fence=fence, reason="shutting down")
        else:
            clock.advance(31)
            assert [r.run.id for r in await store.recover_lapsed() if r.run] == [run_id]
    board = {t.id: t for t in await store.list_tasks()}
    assert board["t1"].status is TaskStatus.OPEN and board["t2"].status is TaskStatus.OPEN
    assert board["t1"].assignee is None and board["t1"].run_id is None
    if not end.startswith("unqueued"):
        assert board["t3"].status is TaskStatus.CLAIMED  # another run's claim stays
    last = (await store.task_history("p", "t1"))[-1]
    assert (last.kind, last.detail, last.token) == ("run ended", run_id, 1)
    again = await store.claim_task(claimer="b", project="p")
    assert again is not None and again.id == "t1" and again.token == 2


async def test_concurrent_claims_and_completions_act_as_if_one_after_the_other(
    store: Store,
) -> None:
    """Claims that arrive together (PostgreSQL sends them as one statement, D123) give
    the best tasks to the claimers in the order they asked, each task once; completions
    and claim lookups that arrive together each get their own answer, a stale one its
    refusal."""
    await store.add_tasks([spec(f"t{i:02d}", priority=1 + i % 10) for i in range(30)])
    expected = [
        t.id
        for t in sorted(
            (await store.list_tasks(project="p")), key=lambda t: (-t.spec.priority, t.spec.id)
        )
    ]
    claims = await asyncio.gather(
        *(store.claim_task(claimer=f"c{n:02d}", run_id=f"run-{n:02d}") for n in range(34))
    )
    got = [task for task in claims if task is not None]
    assert [task.id for task in claims[:30] if task is not None] == expected
    assert claims[30:] == [None] * 4
    assert [(t.assignee, t.run_id, t.token) for t in got] == [
        (f"c{n:02d}", f"run-{n:02d}", 1) for n in range(30)
    ]

    found = await asyncio.gather(
        *(store.claimed_tasks_of_run(t.run_id or "", t.id) for t in got),
        store.claimed_tasks_of_run("run-00", got[1].id),
    )
    assert [[task.id for task in held] for held in found] == [[t.id] for t in got] + [[]]

    stale = asyncio.ensure_future(store.finish_task("p", got[0].id, 7, "done"))
    finished = await asyncio.gather(
        *(store.finish_task("p", t.id, t.token, "done", f"by {t.assignee}") for t in got[1:]),
        store.finish_task("p", got[0].id, got[0].token, "failed", "no"),
    )
    with pytest.raises(StaleClaim):
        await stale
    assert [t.status for t in finished] == [TaskStatus.DONE] * 29 + [TaskStatus.FAILED]
    assert finished[0].result == f"by {got[1].assignee}"
    history = await store.task_history("p", got[1].id)
    assert [(e.kind, e.actor, e.token, e.detail) for e in history][1:] == [
        ("claimed", "c01", 1, "run-01"),
        ("done", "c01", 1, f"by {got[1].assignee}"),
    ]


async def test_a_nul_in_one_result_does_not_fail_the_completions_sent_with_it(
    store: Store,
) -> None:
    """A run's result with U+0000 (which PostgreSQL's text cannot hold) is kept with
    U+FFFD in its place, and the completions and look-ups that go in the same
    statement as it (D123) are answered as if it were not there."""
    await store.add_tasks([spec(f"t{i}") for i in range(6)])
    got = [await store.claim_task(claimer=f"c{n}", run_id=f"run-{n}") for n in range(6)]
    held = [t for t in got if t is not None]
    assert len(held) == 6
    found = await asyncio.gather(
        store.claimed_tasks_of_run("run-0\x00", held[0].id),
        *(store.claimed_tasks_of_run(t.run_id or "", t.id) for t in held[1:]),
    )
    assert [[task.id for task in f] for f in found] == [[]] + [[t.id] for t in held[1:]]
    finished = await asyncio.gather(
        *(
            store.finish_task("p", t.id, t.token, "done", "nul\x00here" if n == 0 else "ok")
            for n, t in enumerate(held)
        )
    )
    assert [t.status for t in finished] == [TaskStatus.DONE] * 6
    assert finished[0].result in ("nul\x00here", "nul\ufffdhere")  # SQLite keeps it
    assert [t.result for t in finished[1:]] == ["ok"] * 5
