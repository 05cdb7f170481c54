"""Task streaming end to end on both stores: real schedulers start real runs of an agent
with a ``[[tasks]]`` trigger as matching tasks become claimable, and the runs claim them
through the installed ``task-claim`` over the real gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from corral.store import Store, open_store
from corral.tasks._model import TaskSpec, TaskStatus
from tests.gateway.fleet import Fleet, running_fleet
from tests.scheduler.helpers import all_runs, max_overlap, wait_for

#: Claim with the trigger's filter (task-claim without flags), hold the task until
#: $OUT/go exists, then complete it. A run that finds nothing to claim ends at once.
HOLD_AND_COMPLETE = (
    'task-claim --lease 30 > "$OUT/$CORRAL_RUN_ID.claim" || exit 0; '
    "ID=$(python3 -c \"import json,sys; print(json.load(open(sys.argv[1]))['id'])\" "
    '"$OUT/$CORRAL_RUN_ID.claim"); '
    'touch "$OUT/$CORRAL_RUN_ID.claimed"; '
    'while [ ! -e "$OUT/go" ]; do sleep 0.05; done; '
    'task-complete "$ID" > /dev/null'
)

API_TRIGGER = '[[tasks]]\nproject = "web"\nlabels = ["api"]\n'


def spec(task_id: str, **fields: Any) -> TaskSpec:
    return TaskSpec(id=task_id, project="web", title=f"do {task_id}", **fields)


def claims(fleet: Fleet) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((fleet.root / "out").glob("*.claim"))]


def claimed(fleet: Fleet) -> int:
    return len(list((fleet.root / "out").glob("*.claimed")))


async def test_three_tasks_with_scale_two_start_two_runs_then_a_third(
    tmp_path: Path, store: Store
) -> None:
    await store.add_tasks(
        [spec(t, labels=("api",)) for t in "abc"] + [spec("ui", labels=("ui",), priority=10)]
    )
    agents = {"dev": {"scale": 2, "command": HOLD_AND_COMPLETE}}
    async with running_fleet(tmp_path / "p", store, agents, tables={"dev": API_TRIGGER}) as f:
        await wait_for(lambda: claimed(f) == 2, timeout=30)
        await asyncio.sleep(1.5)  # ticks go on: scale 2 is reached, nothing more starts
        assert len(await all_runs(store, "dev")) == 2
        f.out("go").touch()
        await f.finished("dev", 3)

        async def all_done() -> bool:
            board = {t.id: t.status for t in await store.list_tasks(project="web")}
            return all(board[t] is TaskStatus.DONE for t in "abc")

        await wait_for(all_done, timeout=30)
        await asyncio.sleep(1.5)  # nothing claimable: no more runs
        runs = await all_runs(store, "dev")
    assert len(runs) == 3
    assert max_overlap(runs) <= 2
    got = claims(f)
    assert sorted(c["id"] for c in got) == ["a", "b", "c"]  # the trigger's filter: never ui
    assert all(c["labels"] == ["api"] and c["project"] == "web" for c in got)
    assert all(r.trigger.value == "schedule" for r in runs)
    assert all((r.trigger_detail or {}).get("source") == "tasks" for r in runs)
    ui = await store.get_task("web", "ui")
    assert ui is not None and ui.status is TaskStatus.OPEN


async def test_a_task_whose_requirement_completes_starts_a_run(
    tmp_path: Path, store: Store
) -> None:
    await store.add_tasks(
        [
            spec("base", labels=("db",)),
            spec("top", labels=("api",), requires=("base",)),
            spec("other", labels=("ui",)),
        ]
    )
    agents = {"dev": {"scale": 3, "command": HOLD_AND_COMPLETE}}
    async with running_fleet(tmp_path / "p", store, agents, tables={"dev": API_TRIGGER}) as f:
        f.out("go").touch()
        await asyncio.sleep(2.0)  # top waits for base; other does not match
        assert await all_runs(store, "dev") == []
        held = await store.claim_task(claimer="human", project="web", labels=["db"])
        assert held is not None and held.id == "base"
        await store.finish_task("web", "base", held.token, TaskStatus.DONE)
        (run,) = await f.finished("dev", 1)
    assert [c["id"] for c in claims(f)] == ["top"]
    top = await store.get_task("web", "top")
    assert top is not None and top.status is TaskStatus.DONE and top.run_id == run.id


async def test_a_run_that_claims_nothing_is_not_restarted_in_a_storm(
    tmp_path: Path, store: Store
) -> None:
    """The skill never claims (or someone else always wins): the task stays claimable,
    and the runs come 1 s, then 2 s after the one before ended, one at a time."""
    await store.add_tasks([spec("a", labels=("api",))])
    agents = {"dev": {"scale": 2, "command": "true"}}
    async with running_fleet(tmp_path / "p", store, agents, tables={"dev": API_TRIGGER}) as f:
        runs = await f.finished("dev", 3, timeout=60)
    first, second, third = runs[:3]
    assert first.ended_at is not None and second.ended_at is not None
    assert (second.created_at - first.ended_at).total_seconds() >= 0.95
    assert (third.created_at - second.ended_at).total_seconds() >= 1.95
    assert max_overlap(runs) == 1  # one run tries again, not scale of them


#: Claim with the trigger's filter, complete the task, then claim again and keep the
#: second answer and its exit code (and the run's CORRAL_TASK_MIN_PRIORITY).
CLAIM_TWICE = (
    'printf %s "$CORRAL_TASK_MIN_PRIORITY" > "$OUT/$CORRAL_RUN_ID.min"; '
    'task-claim > "$OUT/$CORRAL_RUN_ID.claim" || exit 0; '
    "ID=$(python3 -c \"import json,sys; print(json.load(open(sys.argv[1]))['id'])\" "
    '"$OUT/$CORRAL_RUN_ID.claim"); '
    'task-complete "$ID" > /dev/null; '
    'task-claim > "$OUT/$CORRAL_RUN_ID.second"; echo $? > "$OUT/$CORRAL_RUN_ID.rc"'
)


async def test_a_streamed_run_claims_nothing_below_the_triggers_min_priority(
    tmp_path: Path, store: Store
) -> None:
    """The trigger counts only tasks of minPriority or more; plain ``task-claim`` in the
    run it starts claims with the same minimum, so a lower task is never taken."""
    await store.add_tasks([spec("hi", labels=("api",), priority=8), spec("lo", labels=("api",))])
    agents = {"dev": {"scale": 1, "command": CLAIM_TWICE}}
    trigger = API_TRIGGER + "minPriority = 7\n"
    async with running_fleet(tmp_path / "p", store, agents, tables={"dev": trigger}) as f:
        (run,) = await f.finished("dev", 1)
        await asyncio.sleep(1.5)  # nothing of priority 7 or more is left: no more runs
        assert len(await all_runs(store, "dev")) == 1
    out = f.root / "out"
    assert (out / f"{run.id}.min").read_text() == "7"
    assert [c["id"] for c in claims(f)] == ["hi"]
    assert (out / f"{run.id}.rc").read_text().strip() == "1"
    assert json.loads((out / f"{run.id}.second").read_text())["reason"] == "no task to claim"
    lo = await store.get_task("web", "lo")
    assert lo is not None and lo.status is TaskStatus.OPEN and lo.attempts == 0


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
async def test_two_schedulers_on_postgresql_do_not_over_start(
    tmp_path: Path, store_url: str
) -> None:
    async with await open_store(store_url) as one, await open_store(store_url) as two:
        await one.add_tasks([spec(t, labels=("api",)) for t in "abc"])
        agents = {"dev": {"scale": 5, "command": HOLD_AND_COMPLETE}}
        tables = {"dev": API_TRIGGER}
        async with contextlib.AsyncExitStack() as stack:
            fleets = [
                await stack.enter_async_context(
                    running_fleet(tmp_path / name, store, agents, tables=tables)
                )
                for name, store in (("one", one), ("two", two))
            ]
            await wait_for(lambda: sum(claimed(f) for f in fleets) == 3, timeout=30)
            await asyncio.sleep(2.0)  # both schedulers tick on: still three runs
            assert len(await all_runs(one, "dev")) == 3
            for fleet in fleets:
                fleet.out("go").touch()
            await fleets[0].finished("dev", 3)
        got = [c["id"] for f in fleets for c in claims(f)]
    assert sorted(got) == ["a", "b", "c"]
