"""The task board's in-run commands end to end, on both stores: real runs of a real
scheduler call the installed ``task-claim``, ``task-complete``, ``task-fail``,
``task-release`` and ``task-heartbeat`` through the real gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corral.store import RunState, Store
from corral.tasks._model import TaskSpec, TaskStatus
from tests.gateway.fleet import running_fleet
from tests.scheduler.helpers import wait_for

#: The id in a task-claim answer (read from $OUT/$CORRAL_RUN_ID.claim).
ID_OF = (
    "python3 -c \"import json,sys; print(json.load(open(sys.argv[1]))['id'])\" "
    '"$OUT/$CORRAL_RUN_ID.claim"'
)


def spec(task_id: str, **fields: Any) -> TaskSpec:
    return TaskSpec(id=task_id, project="web", title=f"do {task_id}", **fields)


def read(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


async def test_runs_claim_different_tasks_and_unblock_dependents(
    tmp_path: Path, store: Store
) -> None:
    script = (
        'task-claim --label api > "$OUT/$CORRAL_RUN_ID.claim"; '
        'echo $? > "$OUT/$CORRAL_RUN_ID.code"; '
        '[ -s "$OUT/$CORRAL_RUN_ID.code" ] && grep -q "^0$" "$OUT/$CORRAL_RUN_ID.code" || exit 0; '
        "sleep 0.5; "
        f'task-complete "$({ID_OF})" --result "merged" > "$OUT/$CORRAL_RUN_ID.done"'
    )
    await store.add_tasks(
        [
            spec("a", priority=9, labels=("api",)),
            spec("b", priority=8, labels=("api",)),
            spec("c", priority=10, labels=("api",), requires=("a", "b")),
            spec("ui", priority=10, labels=("ui",)),
        ]
    )
    async with running_fleet(tmp_path / "p", store, {"dev": {"scale": 2, "command": script}}) as f:
        await f.trigger("dev")
        await f.trigger("dev")
        first = await f.finished("dev", 2)
        await f.trigger("dev")
        third = (await f.finished("dev", 3))[-1]
        await f.trigger("dev")
        fourth = (await f.finished("dev", 4))[-1]
    assert all(run.state is RunState.SUCCEEDED for run in [*first, third, fourth])
    claimed = [read(f.out(f"{run.id}.claim")) for run in first]
    assert sorted(c["id"] for c in claimed) == ["a", "b"]  # two runs, two tasks
    for answer in claimed:
        assert answer["ok"] is True and answer["token"] == 1 and answer["expiresAt"]
        assert answer["project"] == "web" and answer["labels"] == ["api"]
    done = read(f.out(f"{first[0].id}.done"))
    assert done["ok"] is True and done["status"] == "done"
    assert read(f.out(f"{third.id}.claim"))["id"] == "c"  # a and b done: c is claimable
    assert f.out(f"{fourth.id}.code").read_text().strip() == "1"
    nothing = read(f.out(f"{fourth.id}.claim"))
    assert nothing["ok"] is False and nothing["reason"] == "no task to claim"
    board = {t.id: t for t in await store.list_tasks()}
    assert board["a"].assignee == "dev" and board["a"].result == "merged"
    assert {board[i].status for i in "abc"} == {TaskStatus.DONE}
    assert board["ui"].status is TaskStatus.OPEN


async def test_a_killed_runs_task_goes_back_to_the_board(tmp_path: Path, store: Store) -> None:
    script = 'task-claim > "$OUT/claim.json" && touch "$OUT/claimed"; sleep 60'
    await store.add_tasks([spec("a")])
    async with running_fleet(tmp_path / "p", store, {"dev": {"command": script}}) as f:
        await f.trigger("dev")
        await wait_for(lambda: f.out("claimed").exists(), timeout=30)
        held = await store.get_task("web", "a")
        assert held is not None and held.status is TaskStatus.CLAIMED
        (run,) = await store.list_runs(agent="dev")
        assert held.run_id == run.id
        await store.request_kill(run.id)
        (ended,) = await f.finished("dev", 1)
    assert ended.state is RunState.KILLED
    task = await store.get_task("web", "a")
    assert task is not None and task.status is TaskStatus.OPEN and task.assignee is None
    last = (await store.task_history("web", "a"))[-1]
    assert (last.kind, last.detail) == ("run ended", run.id)


async def test_a_stale_complete_is_refused(tmp_path: Path, store: Store) -> None:
    script = (
        'task-claim > "$OUT/claim.json" && touch "$OUT/claimed"; '
        'while [ ! -e "$OUT/go" ]; do sleep 0.05; done; '
        'task-complete a --result late > "$OUT/complete.json"; echo $? > "$OUT/complete.code"; '
        'task-heartbeat a > "$OUT/beat.json"; echo $? > "$OUT/beat.code"; '
        'task-release b > "$OUT/other.json"; echo $? > "$OUT/other.code"; '
        'task-fail nope > "$OUT/missing.json"; echo $? > "$OUT/missing.code"; '
        'task-complete > "$OUT/usage.json"; echo $? > "$OUT/usage.code"'
    )
    await store.add_tasks([spec("a", priority=9), spec("b")])
    async with running_fleet(tmp_path / "p", store, {"dev": {"command": script}}) as f:
        await f.trigger("dev")
        await wait_for(lambda: f.out("claimed").exists(), timeout=30)
        mine = await store.get_task("web", "a")
        assert mine is not None and mine.status is TaskStatus.CLAIMED
        # The claim lapses (as the stalled release would do) and another claimer takes it.
        await store.release_task("web", "a", mine.token)
        intruder = await store.claim_task(claimer="intruder", project="web")
        assert intruder is not None and intruder.id == "a" and intruder.token == 2
        f.out("go").touch()
        await f.finished("dev", 1)
    assert f.out("complete.code").read_text().strip() == "13"
    lost = read(f.out("complete.json"))
    assert lost["ok"] is False and lost["reason"] == "claim lost"
    assert (lost["holder"], lost["token"]) == ("intruder", 2)
    assert f.out("beat.code").read_text().strip() == "13"
    assert f.out("other.code").read_text().strip() == "1"
    assert read(f.out("other.json"))["reason"] == "not the task holder"
    assert f.out("missing.code").read_text().strip() == "2"
    assert f.out("usage.code").read_text().strip() == "9"
    task = await store.get_task("web", "a")
    assert task is not None and task.status is TaskStatus.CLAIMED and task.assignee == "intruder"


async def test_the_scheduler_puts_a_lapsed_claim_back(tmp_path: Path, store: Store) -> None:
    await store.add_tasks([spec("a")])
    async with running_fleet(tmp_path / "p", store, {"dev": {"command": "true"}}):
        claim = await store.claim_task(claimer="gone", lease=0.2)
        assert claim is not None

        async def reopened() -> bool:
            task = await store.get_task("web", "a")
            return task is not None and task.status is TaskStatus.OPEN

        await wait_for(reopened, timeout=15)
    kinds = [event.kind for event in await store.task_history("web", "a")]
    assert kinds == ["created", "claimed", "stalled"]
